"""The daily reconciliation against the simulator's trade bill: a lost notification is applied
(a recharge credited, a refund recorded), a payment WeChat does not know and an amount that
differs become items for operators and a counter; GET /admin/wallet/reconciliation shows them."""
from datetime import date

import pytest

from app import keys
from app.domain import reconciliation, rules, wallet
from app.models import Payment, ReconciliationItem, Recharge, Refund
from miniprogram_stub.simulator import pay as sim
from miniprogram_stub.simulator.merchant import merchant_state_key
from tests.conftest import ADMIN_TOKEN, MP_APPID, shanghai
from tests.handlers.mp.test_wallet_view import ADMIN, notification, package, paid_recharge
from tests.handlers.mp.test_wallet_view import settings  # noqa: F401 (the fixture: Pay configured)

pytestmark = pytest.mark.smoke

DAY = date(2026, 12, 1)


@pytest.fixture
def merchant(simulator):
    return simulator.app[merchant_state_key]


def test_parse_bill_reads_wechats_csv():
    from miniprogram_stub.simulator.merchant import MerchantState

    state = MerchantState()
    state.orders["rc1"] = {"appid": "wx", "mchid": sim.SANDBOX_MCHID, "out_trade_no": "rc1", "amount_fen": 12_345,
                           "openid": "o-1", "state": "SUCCESS", "transaction_id": "4200x",
                           "success_time": "2026-12-01T23:59:59+08:00", "description": "储值, 充值"}
    state.orders["rc2"] = {**state.orders["rc1"], "out_trade_no": "rc2", "transaction_id": "4200y",
                           "success_time": "2026-12-02T00:00:00+08:00"}
    state.refunds["r1"] = {"refund_id": "5030a", "out_refund_no": "r1", "transaction_id": "4200x",
                           "out_trade_no": "rc1", "amount": {"refund": 5, "total": 12_345},
                           "success_time": "2026-12-01T12:00:00+08:00"}
    lines = list(reconciliation.parse_bill(iter(state.trade_bill("2026-12-01").splitlines())))
    assert lines == [("payment", "4200x", "4200x", "rc1", "o-1", 12_345, "2026-12-01 23:59:59"),
                     ("refund", "5030a", "4200x", "rc1", "o-1", 5, "2026-12-01 12:00:00")]


async def test_a_day_reconciled(client, login, clock, merchant):
    clock.travel_to(shanghai(2026, 12, 1, 10, 0))
    pid = await package(client, pay_fen=10_000, bonus_fen=1_000)
    m = await login("o-recon")
    matched = await paid_recharge(client, clock, merchant, m, pid)

    # 1. Paid, but its notification was lost: the bill has it, we do not.
    lost = await (await m.post("/mp/wallet/recharge", json={"package_id": pid})).json()
    lost_resource = merchant.pay(lost["recharge"]["out_trade_no"], now=clock.now().timestamp())
    # 2. A notification of a payment WeChat has no record of (for this merchant and day).
    phantom = sim.transaction_resource(openid="o-recon", transaction_id="4200-phantom", out_trade_no="x-1",
                                       total_fen=700, appid=MP_APPID, success_time="2026-12-01T11:00:00+08:00")
    h, raw = notification(phantom, clock)
    assert (await client.post("/wechat/pay/notify", data=raw, headers=h)).status == 204
    # 3. An amount that differs: the bill says 99.99 where we recorded 100.00.
    differs = await paid_recharge(client, clock, merchant, m, pid)
    merchant.orders[differs["recharge"]["out_trade_no"]]["amount_fen"] = 9_999
    # 4. A refund of the first recharge that succeeded at WeChat, its notification lost too.
    first = await Recharge.get(out_trade_no=matched["recharge"]["out_trade_no"])
    assert (await client.post(f"/admin/wallet/recharges/{first.id}/refund", headers=ADMIN)).status == 200
    merchant.refund_succeeded(f"rr{first.id}", now=clock.now().timestamp())
    # Something of the next day is not today's business.
    clock.travel_to(shanghai(2026, 12, 2, 0, 0, 1))
    merchant.pay((await (await m.post("/mp/wallet/recharge", json={"package_id": pid})).json())["recharge"]
                 ["out_trade_no"], now=clock.now().timestamp())

    clock.travel_to(shanghai(2026, 12, 2, 10, 0))
    summary = await reconciliation.reconcile(bill_date=DAY, pay=client.app[keys.pay_client_key],
                                             redis=client.app[keys.redis_key], rules=await rules.load(),
                                             appid=MP_APPID, now=clock.now(), tz=client.app[keys.settings_key].tz)
    assert summary == {"lines": 4, "mismatched": 4, "applied": 2}
    lost_row = await Recharge.get(out_trade_no=lost["recharge"]["out_trade_no"])
    assert lost_row.status == "paid" and lost_row.transaction_id == lost_resource["transaction_id"]
    assert await Payment.filter(transaction_id=lost_resource["transaction_id"]).exists()
    assert await Refund.filter(refund_id=merchant.refunds[f"rr{first.id}"]["refund_id"]).exists()
    # Two recharges of 100 + 10 stand: the lost one (now credited) and the one whose amount differs.
    assert await wallet.balance(member_id=m.id) == wallet.Balance(20_000, 2_000)

    resp = await client.get("/admin/wallet/reconciliation?date=2026-12-01", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["run"]["lines"] == 4 and body["run"]["applied"] == 2 and body["run"]["matched"] == 1
    got = sorted((i["kind"], i["trade"], i["ours_fen"], i["theirs_fen"], i["resolved"]) for i in body["items"])
    assert got == [("amount_differs", "payment", 10_000, 9_999, False),
                   ("missing_ours", "payment", None, 10_000, True),
                   ("missing_ours", "refund", None, 10_000, True),
                   ("missing_theirs", "payment", 700, None, False)]
    metrics = await (await client.get("/metrics")).text()
    assert 'reconciliation_mismatches_total{kind="missing_theirs"}' in metrics

    # Run again: nothing left to apply, the same differences, not doubled.
    again = await reconciliation.reconcile(bill_date=DAY, pay=client.app[keys.pay_client_key],
                                           redis=client.app[keys.redis_key], rules=await rules.load(),
                                           appid=MP_APPID, now=clock.now(), tz=client.app[keys.settings_key].tz)
    assert again == {"lines": 4, "mismatched": 2, "applied": 0}
    assert await ReconciliationItem.filter(bill_date=DAY).count() == 2
    assert await wallet.check() == []


async def test_the_report_needs_a_date_and_an_operator(client):
    assert (await client.get("/admin/wallet/reconciliation?date=2026-12-01")).status == 401
    resp = await client.get("/admin/wallet/reconciliation?date=yesterday",
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "invalid_field"
    empty = await (await client.get("/admin/wallet/reconciliation?date=2026-12-01",
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).json()
    assert empty == {"date": "2026-12-01", "run": None, "items": []}
