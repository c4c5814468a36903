"""Stored value as the member and the operator see it: packages, a recharge paid through the
simulated WeChat Pay and credited once by its notification, the principal cap, the card's balance
and the virtual-goods shipping upload through the outbox, and refunds of a recharge."""
import asyncio

import pytest
from tortoise.transactions import in_transaction

from app.domain import wallet
from app.models import Member, OutboxMessage, Payment, ReconciliationItem, Recharge, WalletEntry
from miniprogram_stub.simulator import pay as sim
from miniprogram_stub.simulator.merchant import merchant_state_key
from tests.conftest import ADMIN_TOKEN, MP_APPID, assert_ledger_consistent, drain_outbox, shanghai

pytestmark = pytest.mark.smoke

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
START = shanghai(2026, 12, 1, 10, 0)  # a Tuesday


@pytest.fixture
def settings(settings, simulator):
    return settings.with_(pay_mchid=sim.SANDBOX_MCHID, pay_private_key_path=str(sim.MERCHANT_PRIVATE_KEY_PATH),
                          pay_cert_serial=sim.SANDBOX_MERCHANT_SERIAL,
                          pay_api_base=str(simulator.make_url("")).rstrip("/"),
                          public_base_url="https://members.example.com",
                          pay_apiv3_key=sim.SANDBOX_APIV3_KEY.decode(), pay_public_key_id=sim.SANDBOX_PUBLIC_KEY_ID,
                          pay_public_key_path=str(sim.PLATFORM_PUBLIC_KEY_PATH))


@pytest.fixture
def merchant(simulator):
    return simulator.app[merchant_state_key]


async def package(client, pay_fen=50_000, bonus_fen=5_000, **kw) -> int:
    resp = await client.post("/admin/wallet/packages", headers=ADMIN,
                             json={"name": f"充{pay_fen // 100}送{bonus_fen // 100}", "pay_fen": pay_fen,
                                   "bonus_fen": bonus_fen, **kw})
    body = await resp.json()
    assert resp.status == 201, body
    return body["id"]


def notification(resource: dict, clock, event="TRANSACTION.SUCCESS"):
    return sim.build_v3_notification(event_type=event, resource=resource, timestamp=int(clock.now().timestamp()))


async def paid_recharge(client, clock, merchant, m, package_id: int) -> dict:
    resp = await m.post("/mp/wallet/recharge", json={"package_id": package_id})
    body = await resp.json()
    assert resp.status == 200, body
    resource = merchant.pay(body["recharge"]["out_trade_no"], now=clock.now().timestamp())
    headers, raw = notification(resource, clock)
    assert (await client.post("/wechat/pay/notify", data=raw, headers=headers)).status == 204
    return {**body, "resource": resource}


async def test_a_recharge_is_credited_once_with_its_bonus(client, login, clock, merchant, sim_state, oa_wechat,
                                                          settings):
    clock.travel_to(START)
    pid = await package(client)
    m = await login("o-rich")
    await Member.filter(id=m.id).update(card_code="card-rich", card_id="p-card")
    listed = await (await m.get("/mp/wallet/packages")).json()
    assert listed["items"] == [{"id": pid, "name": "充500送50", "pay_fen": 50_000, "bonus_fen": 5_000,
                                "bonus_valid_days": None, "active": True}]
    resp = await m.post("/mp/wallet/recharge", json={"package_id": pid})
    body = await resp.json()
    assert resp.status == 200, body
    out_trade_no = body["recharge"]["out_trade_no"]
    assert out_trade_no.startswith("rc") and body["recharge"]["status"] == "pending"
    order = merchant.orders[out_trade_no]
    assert order["amount_fen"] == 50_000 and order["openid"] == "o-rich"
    assert order["notify_url"] == "https://members.example.com/wechat/pay/notify"
    assert body["pay_params"]["package"] == f"prepay_id={order['prepay_id']}"
    assert (await (await m.get("/mp/wallet")).json())["balance_fen"] == 0  # nothing before the payment

    resource = merchant.pay(out_trade_no, now=clock.now().timestamp())
    deliveries = [notification(resource, clock) for _ in range(20)]
    resps = await asyncio.gather(*(client.post("/wechat/pay/notify", data=raw, headers=h) for h, raw in deliveries))
    assert [r.status for r in resps] == [204] * 20
    shown = await (await m.get("/mp/wallet")).json()
    assert (shown["balance_fen"], shown["principal_fen"], shown["bonus_fen"]) == (55_000, 50_000, 5_000)
    assert sorted((i["kind"], i["delta_fen"], i["reason"]) for i in shown["items"]) == \
        [("bonus", 5_000, "recharge"), ("principal", 50_000, "recharge")]
    assert (await Recharge.get(out_trade_no=out_trade_no)).status == "paid"
    assert await WalletEntry.filter(reason="recharge").count() == 2
    assert await OutboxMessage.filter(channel="shipping").count() == 1
    assert (await Member.get(id=m.id)).points == 500  # the cash paid in earns as any payment does

    await drain_outbox(oa_wechat, settings, clock.now())
    upload = sim_state.shipping_uploads[-1]
    assert upload["logistics_type"] == 3 and upload["payer"]["openid"] == "o-rich"
    assert upload["order_key"]["transaction_id"] == resource["transaction_id"]
    assert sim_state.card_balance["card-rich"] == 55_000
    assert any(u.get("record_balance") == "储值充值" for u in sim_state.card_updates)
    assert await wallet.check() == []
    await assert_ledger_consistent()


async def test_a_recharge_over_the_principal_cap_is_refused_before_payment(client, login, clock, merchant):
    clock.travel_to(START)
    big, small = await package(client, pay_fen=450_000, bonus_fen=0), await package(client, pay_fen=60_000)
    m = await login()
    await paid_recharge(client, clock, merchant, m, big)
    resp = await m.post("/mp/wallet/recharge", json={"package_id": small})
    got = await resp.json()
    assert resp.status == 409 and got["error"]["code"] == "principal_cap_exceeded", got
    assert len(merchant.orders) == 1
    exact = await package(client, pay_fen=50_000, bonus_fen=0)
    assert (await m.post("/mp/wallet/recharge", json={"package_id": exact})).status == 200  # 5,000 yuan: allowed


async def test_unknown_packages_and_bad_bodies(client, login, clock):
    m = await login()
    resp = await m.post("/mp/wallet/recharge", json={"package_id": 424242})
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "package_not_found"
    assert (await m.post("/mp/wallet/recharge", json={"package_id": "1"})).status == 422
    assert (await client.get("/mp/wallet")).status == 401


async def test_operator_refund_returns_unspent_principal_and_takes_back_bonus(client, login, clock, merchant):
    clock.travel_to(START)
    pid = await package(client)
    m = await login("o-refund")
    paid = await paid_recharge(client, clock, merchant, m, pid)
    async with in_transaction() as conn:  # a till spends 220 yuan: 200 principal + 20 bonus
        await wallet.debit(conn=conn, member_id=m.id, amount_fen=22_000, reason="spend", key="spend:T-1",
                           now=clock.now())
    recharge = await Recharge.get(out_trade_no=paid["recharge"]["out_trade_no"])
    resp = await client.post(f"/admin/wallet/recharges/{recharge.id}/refund", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200, body
    assert (body["refund_fen"], body["bonus_taken_back_fen"], body["principal_spent_fen"]) == (30_000, 3_000, 20_000)
    assert body["recharge"]["status"] == "refunded"
    refund = merchant.refunds[f"rr{recharge.id}"]
    assert refund["amount"] == {"refund": 30_000, "total": 50_000, "currency": "CNY"}
    assert await wallet.balance(member_id=m.id) == wallet.Balance(0, 0)
    # Again: the same answer, no second refund.
    again = await client.post(f"/admin/wallet/recharges/{recharge.id}/refund", headers=ADMIN)
    assert await again.json() == body and len(merchant.refunds) == 1
    # WeChat's REFUND.SUCCESS of it takes back the points of the refunded share, and nothing more of the wallet.
    resource = sim.refund_resource(transaction_id=recharge.transaction_id, out_trade_no=recharge.out_trade_no,
                                   refund_id=refund["refund_id"], out_refund_no=refund["out_refund_no"],
                                   refund_fen=30_000, total_fen=50_000)
    headers, raw = notification(resource, clock, event="REFUND.SUCCESS")
    assert (await client.post("/wechat/pay/notify", data=raw, headers=headers)).status == 204
    assert (await Member.get(id=m.id)).points == 200
    assert await wallet.balance(member_id=m.id) == wallet.Balance(0, 0)
    assert not await ReconciliationItem.all().exists()
    assert await wallet.check() == []
    await assert_ledger_consistent()


async def test_a_pay_refund_beyond_the_unspent_principal_is_never_hidden(client, login, clock, merchant):
    clock.travel_to(START)
    pid = await package(client, pay_fen=10_000, bonus_fen=1_000)
    m = await login("o-peer")
    paid = await paid_recharge(client, clock, merchant, m, pid)
    async with in_transaction() as conn:
        await wallet.debit(conn=conn, member_id=m.id, amount_fen=5_500, reason="spend", key="spend:T-2",
                           now=clock.now())
    recharge = await Recharge.get(out_trade_no=paid["recharge"]["out_trade_no"])
    # Refunded in full on the merchant platform: 100 yuan paid out, only 50 of it unspent.
    resource = sim.refund_resource(transaction_id=recharge.transaction_id, out_trade_no=recharge.out_trade_no,
                                   refund_id="5030-peer", out_refund_no="peer-1", refund_fen=10_000, total_fen=10_000)
    headers, raw = notification(resource, clock, event="REFUND.SUCCESS")
    assert (await client.post("/wechat/pay/notify", data=raw, headers=headers)).status == 204
    row = await Recharge.get(id=recharge.id)
    assert row.status == "refunded" and row.refunded_principal_fen == 5_000 and row.bonus_taken_back_fen == 500
    item = await ReconciliationItem.get(kind="overrefund")
    assert (item.reference, item.ours_fen, item.theirs_fen) == ("5030-peer", 5_000, 10_000)
    assert await wallet.balance(member_id=m.id) == wallet.Balance(0, 0)
    assert await Payment.get(transaction_id=recharge.transaction_id).values_list("refunded_fen", flat=True) == 10_000
    assert await wallet.check() == []


@pytest.mark.postgres
async def test_spends_racing_an_operator_refund_lose_nothing(client, login, clock, merchant):
    clock.travel_to(START)
    pid = await package(client, pay_fen=10_000, bonus_fen=1_000)
    m = await login()
    paid = await paid_recharge(client, clock, merchant, m, pid)
    recharge = await Recharge.get(out_trade_no=paid["recharge"]["out_trade_no"])

    async def spend(i):
        try:
            async with in_transaction() as conn:
                return (await wallet.debit(conn=conn, member_id=m.id, amount_fen=550, reason="spend",
                                           key=f"spend:race-{i}", now=clock.now())).total_fen
        except wallet.InsufficientBalance:
            return 0

    results = await asyncio.gather(client.post(f"/admin/wallet/recharges/{recharge.id}/refund", headers=ADMIN),
                                   *(spend(i) for i in range(20)))
    body = await results[0].json()
    spent = sum(results[1:])
    assert spent + body["refund_fen"] + body["bonus_taken_back_fen"] == 11_000
    # What WeChat Pay was asked to refund is what the answer says; when the spends took it all
    # first, nothing is left to refund and no refund is sent.
    sent = merchant.refunds.get(f"rr{recharge.id}")
    assert (sent["amount"]["refund"] if sent else 0) == body["refund_fen"]
    assert await wallet.check() == []
