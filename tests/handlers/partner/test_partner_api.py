"""/partner: the brand's mall and tills, signed with PARTNER_API_KEY (CONTRACT.md): orders that
earn like Pay payments, once per order_no and once with the Pay notification of the same
transaction; stored value spent and given back on refunds; events once per event_id."""
import asyncio
import json

import pytest
from tortoise.transactions import in_transaction

from app.domain import wallet
from app.models import LedgerEntry, Member, PartnerEvent, PartnerOrder, Payment, Recharge
from handlers.partner.auth import sign
from miniprogram_stub.simulator import pay as sim
from tests.conftest import MP_APPID, assert_ledger_consistent, shanghai

pytestmark = pytest.mark.smoke

KEY = "partner-test-key-0123456789"
MONDAY = shanghai(2026, 11, 23, 10, 0)


@pytest.fixture
def settings(settings):
    return settings.with_(partner_api_key=KEY, pay_apiv3_key=sim.SANDBOX_APIV3_KEY.decode(),
                          pay_public_key_id=sim.SANDBOX_PUBLIC_KEY_ID,
                          pay_public_key_path=str(sim.PLATFORM_PUBLIC_KEY_PATH))


def signed(body: dict, *, at: int, key: str = KEY) -> tuple[bytes, dict]:
    raw = json.dumps(body).encode()
    return raw, {"X-Partner-Timestamp": str(at), "X-Partner-Signature": sign(key, str(at), raw),
                 "Content-Type": "application/json"}


async def post(client, clock, path: str, body: dict, *, offset: int = 0, **kw):
    raw, headers = signed(body, at=int(clock.now().timestamp()) + offset, **kw)
    return await client.post(path, data=raw, headers=headers)


def order(order_no: str, **kw) -> dict:
    return {"order_no": order_no, "paid_fen": 10_000, "paid_at": "2026-11-23T10:00:00+08:00", "channel": "mall",
            **kw}


async def fund(member_id: int, principal: int, bonus: int, clock, n: int = 1) -> None:
    row = await Recharge.create(out_trade_no=f"rc-fund-{member_id}-{n}", member_id=member_id,
                                principal_fen=principal, bonus_fen=bonus, status="paid")
    wallet_id = await wallet.ensure(member_id=member_id)
    async with in_transaction() as conn:
        await wallet.credit(conn=conn, member_id=member_id, wallet_id=wallet_id, principal_fen=principal,
                            bonus_fen=bonus, reason="recharge", key=f"recharge:{row.id}", now=clock.now(),
                            recharge_id=row.id)


# -- the signature ------------------------------------------------------------------------------

async def test_a_signed_order_earns_like_a_pay_payment(client, login, clock):
    clock.travel_to(MONDAY)
    m = await login("o-mall")
    resp = await post(client, clock, "/partner/orders", order("M-1", member_id=m.id))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["points"] == 100 and body["growth"] == 100 and body["credited"] is True
    assert (await Member.get(id=m.id)).points == 100
    # A repeat (signed afresh) answers the first answer and changes nothing.
    clock.travel_to(MONDAY.replace(minute=5))
    again = await post(client, clock, "/partner/orders", order("M-1", member_id=m.id, paid_fen=99_999))
    assert again.status == 200 and await again.json() == body
    assert (await Member.get(id=m.id)).points == 100
    await assert_ledger_consistent()


async def test_member_day_and_openid_identify_as_for_pay(client, login, clock):
    clock.travel_to(shanghai(2026, 11, 26, 10, 0))  # a Thursday: the member day doubles
    await login("o-thu")
    resp = await post(client, clock, "/partner/orders",
                      order("T-1", openid="o-thu", paid_at="2026-11-26T10:00:00+08:00"))
    assert (await resp.json())["points"] == 200


@pytest.mark.parametrize("case", ["no_headers", "wrong_key", "stale", "future", "tampered", "replayed", "short_sig"])
async def test_refused_requests_are_401_and_store_nothing(client, login, clock, case):
    clock.travel_to(MONDAY)
    m = await login("o-forged")
    body = order("F-1", member_id=m.id)
    at = int(clock.now().timestamp())
    raw, headers = signed(body, at=at)
    if case == "no_headers":
        headers = {}
    elif case == "wrong_key":
        raw, headers = signed(body, at=at, key="another-key")
    elif case == "stale":
        raw, headers = signed(body, at=at - 301)
    elif case == "future":
        raw, headers = signed(body, at=at + 301)
    elif case == "tampered":
        raw = raw.replace(b"10000", b"90000")
    elif case == "short_sig":
        headers["X-Partner-Signature"] = headers["X-Partner-Signature"][:10]
    elif case == "replayed":
        first = await client.post("/partner/orders", data=raw, headers=headers)
        assert first.status == 200
        await PartnerOrder.all().delete()  # were it accepted again, it would be stored again
        points = (await Member.get(id=m.id)).points
    resp = await client.post("/partner/orders", data=raw, headers=headers)
    got = await resp.json()
    assert resp.status == 401 and got["error"]["code"] == "bad_signature", got
    assert await PartnerOrder.all().count() == 0
    if case != "replayed":
        assert await Payment.all().count() == 0 and (await Member.get(id=m.id)).points == 0
    else:
        assert (await Member.get(id=m.id)).points == points


async def test_window_edge_is_accepted(client, login, clock):
    clock.travel_to(MONDAY)
    m = await login()
    assert (await post(client, clock, "/partner/orders", order("E-1", member_id=m.id), offset=-300)).status == 200


async def test_without_a_key_the_partner_api_is_503(aiohttp_client, settings, redis_url, clock):
    from app.main import create_app
    from tests.conftest import reset_state

    off = await aiohttp_client(create_app(settings.with_(partner_api_key=None)))
    await reset_state(redis_url)
    raw, headers = signed(order("X-1", openid="o"), at=1)
    resp = await off.post("/partner/orders", data=raw, headers=headers)
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "partner_disabled"


async def test_bad_bodies_are_the_envelope(client, login, clock):
    clock.travel_to(MONDAY)
    m = await login()
    for body in ({"order_no": "B-1"}, order("B-2"), order("B-3", member_id=m.id, openid="o"),
                 order("B 4", member_id=m.id), order("B-5", member_id=m.id, paid_fen=-1)):
        resp = await post(client, clock, "/partner/orders", body)
        assert resp.status == 422 and (await resp.json())["error"]["code"] == "invalid_field", body
    raw = b"[1, 2]"
    at = str(int(clock.now().timestamp()))
    resp = await client.post("/partner/orders", data=raw, headers={"X-Partner-Timestamp": at,
                                                                 "X-Partner-Signature": sign(KEY, at, raw)})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "malformed_json"
    resp = await post(client, clock, "/partner/orders", order("B-6", member_id=999_999))
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "member_not_found"
    assert await PartnerOrder.all().count() == 0


# -- once per order_no, and once with Pay -------------------------------------------------------

async def test_twenty_concurrent_copies_of_an_order_credit_once(client, login, clock):
    clock.travel_to(MONDAY)
    m = await login()
    resps = await asyncio.gather(*(post(client, clock, "/partner/orders", order("C-1", member_id=m.id), offset=-i)
                                   for i in range(20)))
    bodies = [await r.json() for r in resps]
    assert sorted(r.status for r in resps) == [200] * 20, bodies
    assert all(b == bodies[0] for b in bodies)
    assert (await Member.get(id=m.id)).points == 100
    assert await LedgerEntry.filter(reason="purchase").count() == 1
    await assert_ledger_consistent()


@pytest.mark.parametrize("first", ["partner", "pay", "together"])
async def test_an_order_and_its_pay_notification_credit_once(client, login, clock, first):
    clock.travel_to(MONDAY)
    m = await login("o-both")
    tid = "4200000000000000000000000001"
    resource = sim.transaction_resource(openid="o-both", transaction_id=tid, out_trade_no="S-1", total_fen=10_000,
                                        appid=MP_APPID, success_time="2026-11-23T10:00:00+08:00")
    headers, body = sim.build_v3_notification(event_type="TRANSACTION.SUCCESS", resource=resource,
                                              timestamp=int(clock.now().timestamp()))

    async def by_pay():
        assert (await client.post("/wechat/pay/notify", data=body, headers=headers)).status == 204

    async def by_partner():
        resp = await post(client, clock, "/partner/orders", order("S-1", member_id=m.id, transaction_id=tid,
                                                                  channel="till"))
        assert resp.status == 200
        return await resp.json()

    if first == "partner":
        answer = await by_partner()
        await by_pay()
    elif first == "pay":
        await by_pay()
        answer = await by_partner()
    else:
        answer, _ = await asyncio.gather(by_partner(), by_pay())
    assert answer["points"] == 100
    assert await Payment.filter(transaction_id=tid).count() == 1
    assert (await Member.get(id=m.id)).points == 100
    await assert_ledger_consistent()


async def test_an_order_of_an_unknown_openid_is_credited_when_the_member_appears(client, login, clock):
    clock.travel_to(MONDAY)
    resp = await post(client, clock, "/partner/orders", order("U-1", openid="o-newcomer"))
    body = await resp.json()
    assert resp.status == 200 and body["credited"] is False and body["member_id"] is None
    m = await login("o-newcomer")
    assert (await Member.get(id=m.id)).points == 100
    await assert_ledger_consistent()


# -- stored value -------------------------------------------------------------------------------

async def test_wallet_spend_refund_in_the_proportions_taken(client, login, clock):
    clock.travel_to(MONDAY)
    m = await login()
    await fund(m.id, 50_000, 5_000, clock)
    resp = await post(client, clock, "/partner/orders", order("W-1", member_id=m.id, paid_fen=15_000,
                                                              wallet_fen=11_000))
    body = await resp.json()
    assert resp.status == 200, body
    # 110 yuan from stored value (100 principal + 10 bonus), 40 in cash: the cash earns (recharges earned).
    assert (body["wallet_principal_fen"], body["wallet_bonus_fen"], body["points"]) == (10_000, 1_000, 40)
    assert body["balance_fen"] == 44_000
    half = await post(client, clock, "/partner/orders/W-1/refunds", {"refund_no": "WR-1", "refund_fen": 7_500})
    got = await half.json()
    assert half.status == 200, got
    assert (got["wallet_principal_fen"], got["wallet_bonus_fen"], got["points_taken"]) == (5_000, 500, 20)
    rest = await post(client, clock, "/partner/orders/W-1/refunds", {"refund_no": "WR-2", "refund_fen": 7_500})
    got = await rest.json()
    assert (got["wallet_principal_fen"], got["wallet_bonus_fen"], got["points_taken"]) == (5_000, 500, 20)
    assert await wallet.balance(member_id=m.id) == wallet.Balance(50_000, 5_000)
    assert (await Member.get(id=m.id)).points == 0
    # Nothing left to refund: 409, and a repeat of a refund answers its first answer.
    over = await post(client, clock, "/partner/orders/W-1/refunds", {"refund_no": "WR-3", "refund_fen": 1})
    assert over.status == 409 and (await over.json())["error"]["code"] == "over_refund"
    again = await post(client, clock, "/partner/orders/W-1/refunds", {"refund_no": "WR-2", "refund_fen": 7_500},
                       offset=-1)  # signed afresh: the same signature again would be a replay
    assert again.status == 200 and await again.json() == got
    missing = await post(client, clock, "/partner/orders/NOPE/refunds", {"refund_no": "WR-4", "refund_fen": 1})
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "order_not_found"
    assert await wallet.check() == []
    await assert_ledger_consistent()


async def test_short_stored_value_is_409_and_stores_nothing(client, login, clock):
    clock.travel_to(MONDAY)
    m = await login()
    await fund(m.id, 1_000, 0, clock)
    resp = await post(client, clock, "/partner/orders", order("W-2", member_id=m.id, wallet_fen=1_001))
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "insufficient_balance"
    assert await PartnerOrder.all().count() == 0 and await Payment.all().count() == 0
    assert await wallet.balance(member_id=m.id) == wallet.Balance(1_000, 0)


@pytest.mark.postgres
async def test_fifty_concurrent_till_orders_never_overdraw_a_wallet(client, login, clock):
    clock.travel_to(MONDAY)
    m = await login()
    await fund(m.id, 9_000, 1_000, clock)
    resps = await asyncio.gather(*(post(client, clock, "/partner/orders",
                                        order(f"R-{i}", member_id=m.id, paid_fen=300, wallet_fen=300))
                                   for i in range(50)))
    statuses = sorted(r.status for r in resps)
    assert statuses == [200] * 33 + [409] * 17
    assert (await wallet.balance(member_id=m.id)).balance_fen == 100
    assert await wallet.check() == []


async def test_partial_refunds_of_a_small_wallet_order_add_up_exactly(client, login, clock):
    clock.travel_to(MONDAY)
    m = await login()
    await fund(m.id, 7, 3, clock)
    await post(client, clock, "/partner/orders", order("W-3", member_id=m.id, paid_fen=10, wallet_fen=10))
    given = [0, 0]
    for i in range(10):
        got = await (await post(client, clock, "/partner/orders/W-3/refunds",
                                {"refund_no": f"W3-{i}", "refund_fen": 1})).json()
        given[0] += got["wallet_principal_fen"]
        given[1] += got["wallet_bonus_fen"]
    assert given == [7, 3] and await wallet.balance(member_id=m.id) == wallet.Balance(7, 3)


# -- events -------------------------------------------------------------------------------------

async def test_an_event_is_recorded_once_and_pays_its_task_points(client, login, clock):
    from app.domain import rules
    from app.models import LedgerEntry

    await rules.update({"tasks": {"points": {"profile": 0, "review": 10}}}, actor="test")
    clock.travel_to(MONDAY)
    m = await login()
    resps = await asyncio.gather(*(post(client, clock, "/partner/events",
                                        {"event_id": "EV-1", "member_id": m.id, "kind": "review"}, offset=-i)
                                   for i in range(10)))
    assert sorted(r.status for r in resps) == [200] * 10
    assert {(await r.json())["points"] for r in resps} == {10}
    assert await PartnerEvent.all().count() == 1
    assert await LedgerEntry.filter(member_id=m.id, reason="task").values_list("delta", flat=True) == [10]
    bad = await post(client, clock, "/partner/events", {"event_id": "EV-2", "member_id": m.id, "kind": "x"})
    assert bad.status == 422
    unknown = await post(client, clock, "/partner/events", {"event_id": "EV-3", "openid": "o-nobody", "kind": "review"})
    assert unknown.status == 404
