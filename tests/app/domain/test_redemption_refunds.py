"""Points + cash orders against the simulated WeChat Pay: time_expire, closing on release, a late
payment refunded once, refunds of a paid redemption given back pro rata, and released points
returned into their own lots with their own expiry."""
import asyncio
from datetime import datetime, timedelta

import pytest

from app import keys
from app.domain import points, rewards
from app.domain.clock import add_months
from app.models import LedgerEntry, Member, Redemption, Reward
from miniprogram_stub.simulator import pay as sim
from miniprogram_stub.simulator.merchant import OrderNotPayable, merchant_state_key
from tests.conftest import ADMIN_TOKEN, assert_ledger_consistent, shanghai

START = shanghai(2026, 11, 20, 10, 0)


@pytest.fixture
def settings(settings, simulator):
    return settings.with_(pay_mchid=sim.SANDBOX_MCHID, pay_private_key_path=str(sim.MERCHANT_PRIVATE_KEY_PATH),
                          pay_cert_serial=sim.SANDBOX_MERCHANT_SERIAL,
                          pay_api_base=str(simulator.make_url("")).rstrip("/"),
                          public_base_url="https://members.example.com",
                          pay_apiv3_key=sim.SANDBOX_APIV3_KEY.decode(),
                          pay_public_key_id=sim.SANDBOX_PUBLIC_KEY_ID,
                          pay_public_key_path=str(sim.PLATFORM_PUBLIC_KEY_PATH))


@pytest.fixture
def merchant(simulator):
    return simulator.app[merchant_state_key]


@pytest.fixture
def pay(client):
    return client.app[keys.pay_client_key]


async def notify(client, clock, event_type, resource):
    headers, body = sim.build_v3_notification(event_type=event_type, resource=resource,
                                              timestamp=int(clock.now().timestamp()))
    return await client.post("/wechat/pay/notify", data=body, headers=headers)


def refund_of(payment: dict, refund_id: str, fen: int) -> dict:
    return sim.refund_resource(transaction_id=payment["transaction_id"], out_trade_no=payment["out_trade_no"],
                               refund_id=refund_id, out_refund_no=f"op-{refund_id}", refund_fen=fen,
                               total_fen=payment["amount"]["total"])


async def redeem_cash(login, clock, *, points_cost=200, cash_fen=1000, stock=5, fund=200):
    reward = await Reward.create(name="耳机", points=points_cost, cash_fen=cash_fen, stock=stock,
                                 per_member_limit=5)
    m = await login()
    await points.award(member_id=m.id, amount=fund, reason="gift", key=f"gift:{m.id}", now=clock.now(),
                       expiry_months=12)
    body = await (await m.post(f"/mp/rewards/{reward.id}/redeem")).json()
    assert body["redemption"]["status"] == "pending", body
    return m, reward, body["redemption"]


async def test_order_expires_with_the_hold_and_release_closes_it(client, login, clock, merchant, pay):
    clock.travel_to(START)
    m, reward, redemption = await redeem_cash(login, clock)
    order = merchant.orders[redemption["out_trade_no"]]
    assert datetime.fromisoformat(order["time_expire"]) == START + timedelta(minutes=15)
    assert await rewards.release_expired(now=START + timedelta(minutes=15), pay=pay) == 1
    assert merchant.closes == [redemption["out_trade_no"]] and order["state"] == "CLOSED"
    with pytest.raises(OrderNotPayable) as refused:
        merchant.pay(redemption["out_trade_no"], now=START.timestamp())
    assert refused.value.reason == "ORDER_CLOSED"
    # An order nobody closed is still not payable after its time_expire.
    _, _, other = await redeem_cash(login, clock)
    with pytest.raises(OrderNotPayable) as late:
        merchant.pay(other["out_trade_no"], now=(START + timedelta(minutes=15)).timestamp())
    assert late.value.reason == "ORDER_EXPIRED"
    await assert_ledger_consistent()


@pytest.mark.smoke
async def test_payment_after_release_is_refunded_once(client, login, clock, merchant, pay):
    clock.travel_to(START)
    m, reward, redemption = await redeem_cash(login, clock)
    trade_no = redemption["out_trade_no"]
    paid = merchant.pay(trade_no, now=(START + timedelta(minutes=14)).timestamp())  # paid as the hold ends
    clock.travel_to(START + timedelta(minutes=15))
    assert await rewards.release_expired(now=clock.now(), pay=pay) == 1  # its close answers ORDERPAID
    assert (await Member.get(id=m.id)).points == 200 and (await Reward.get(id=reward.id)).stock == 5
    replies = await asyncio.gather(*(notify(client, clock, "TRANSACTION.SUCCESS", paid) for _ in range(30)))
    assert [r.status for r in replies] == [204] * 30
    assert list(merchant.refunds) == [f"rl{redemption['id']}"]  # one refund, of the whole cash amount
    assert merchant.refunds[f"rl{redemption['id']}"]["amount"]["refund"] == 1000
    row = await Redemption.get(id=redemption["id"])
    assert (row.status, row.transaction_id, row.refund_no) == ("refunded", paid["transaction_id"],
                                                               f"rl{redemption['id']}")
    assert (await Member.get(id=m.id)).points == 200 + 10  # released points once; ¥10 purchase points
    # WeChat's REFUND.SUCCESS takes the purchase points back and leaves the released points alone.
    refund = refund_of(paid, merchant.refunds[row.refund_no]["refund_id"], 1000)
    assert (await notify(client, clock, "REFUND.SUCCESS", refund)).status == 204
    assert (await Member.get(id=m.id)).points == 200 and (await Reward.get(id=reward.id)).stock == 5
    # Operators see it.
    listed = await (await client.get("/admin/redemptions?status=refunded",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).json()
    assert [(i["id"], i["transaction_id"], i["refund_no"]) for i in listed["items"]] == [
        (row.id, paid["transaction_id"], row.refund_no)]
    await assert_ledger_consistent()


async def test_refund_refused_by_pay_is_retried_by_the_release_job(client, login, clock, merchant, pay):
    from jobs.registry import JobContext, load_all

    clock.travel_to(START)
    m, _, redemption = await redeem_cash(login, clock)
    paid = merchant.pay(redemption["out_trade_no"], now=START.timestamp())
    await rewards.release_expired(now=START + timedelta(minutes=15), pay=pay)
    merchant.fail_next_refund = {"status": 500}
    assert (await notify(client, clock, "TRANSACTION.SUCCESS", paid)).status == 204
    assert (await Redemption.get(id=redemption["id"])).status == "refund_due" and not merchant.refunds
    ctx = JobContext(settings=client.app[keys.settings_key], redis=client.app[keys.redis_key], wechat=None,
                     now=START + timedelta(minutes=16), today=START.date(), pay=pay)
    await load_all()["release_unpaid_redemptions"].run(ctx)
    assert (await Redemption.get(id=redemption["id"])).status == "refunded" and len(merchant.refunds) == 1


async def test_late_payments_racing_the_release_job(client, login, clock, merchant, pay):
    clock.travel_to(START)
    made = [await redeem_cash(login, clock, stock=1) for _ in range(15)]
    paid = [merchant.pay(r["out_trade_no"], now=START.timestamp()) for _, _, r in made]
    clock.travel_to(START + timedelta(minutes=15))
    results = await asyncio.gather(rewards.release_expired(now=clock.now(), pay=pay),
                                   *(notify(client, clock, "TRANSACTION.SUCCESS", p) for p in paid))
    assert [r.status for r in results[1:]] == [204] * 15
    rows = {r.out_trade_no: r for r in await Redemption.all()}
    done = [r for r in rows.values() if r.status == "done"]
    refunded = [r for r in rows.values() if r.status == "refunded"]
    assert len(done) + len(refunded) == 15 and results[0] == len(refunded)
    assert sorted(merchant.refunds) == sorted(r.refund_no for r in refunded)
    for m, reward, r in made:
        row = rows[r["out_trade_no"]]
        balance = (await Member.get(id=m.id)).points
        stock = (await Reward.get(id=reward.id)).stock
        # Paid in time: the item is theirs; released: points and stock back (and a refund on its way).
        assert (balance, stock) == ((0 + 10, 0) if row.status == "done" else (200 + 10, 1))
    await assert_ledger_consistent()


@pytest.mark.smoke
async def test_refund_of_a_paid_redemption_gives_back_its_share(client, login, clock, merchant):
    clock.travel_to(START)
    m, reward, redemption = await redeem_cash(login, clock, points_cost=301, cash_fen=1000, fund=301)
    paid = merchant.pay(redemption["out_trade_no"], now=START.timestamp())
    assert (await notify(client, clock, "TRANSACTION.SUCCESS", paid)).status == 204
    assert (await Redemption.get(id=redemption["id"])).status == "done"
    assert (await Member.get(id=m.id)).points == 10 and (await Reward.get(id=reward.id)).stock == 4
    # Half: 150 of the 301 points back (and 5 of the 10 purchase points taken), the item kept.
    for _ in range(2):
        assert (await notify(client, clock, "REFUND.SUCCESS", refund_of(paid, "5030half", 500))).status == 204
    row = await Redemption.get(id=redemption["id"])
    assert (row.status, row.points_returned, row.refunded_fen) == ("done", 150, 500)
    assert (await Member.get(id=m.id)).points == 10 - 5 + 150 and (await Reward.get(id=reward.id)).stock == 4
    # The rest: every point back, the stock back, the redemption reversed.
    assert (await notify(client, clock, "REFUND.SUCCESS", refund_of(paid, "5030rest", 500))).status == 204
    row = await Redemption.get(id=redemption["id"])
    assert (row.status, row.points_returned) == ("refunded", 301)
    assert (await Member.get(id=m.id)).points == 301 and (await Reward.get(id=reward.id)).stock == 5
    assert await LedgerEntry.filter(reason="unredeem").count() == 2
    await assert_ledger_consistent()


@pytest.mark.smoke
async def test_released_points_come_back_in_their_own_lots(client, login, clock, pay):
    clock.travel_to(START)
    reward = await Reward.create(name="耳机", points=150, cash_fen=1000, stock=5, per_member_limit=5)
    m = await login()
    old = await points.award(member_id=m.id, amount=100, reason="gift", key="old", now=START, expiry_months=12)
    later = START + timedelta(days=200)
    new = await points.award(member_id=m.id, amount=100, reason="gift", key="new", now=later, expiry_months=12)
    clock.travel_to(later)
    assert (await m.post(f"/mp/rewards/{reward.id}/redeem")).status == 200
    await rewards.release_expired(now=later + timedelta(minutes=15), pay=pay)
    lots = {e.idempotency_key: e for e in await LedgerEntry.filter(member_id=m.id, remaining__gt=0)}
    assert set(lots) == {"old", "new"}  # no fresh 12-month lot: the points keep their expiry
    assert lots["old"].remaining == 100 and lots["old"].expires_at == add_months(START, 12)
    assert lots["new"].remaining == 100 and lots["new"].expires_at == new.entry.expires_at
    assert old.entry.expires_at == add_months(START, 12)
    release = await LedgerEntry.get(idempotency_key=f"release:{(await Redemption.get(member_id=m.id)).id}")
    assert release.delta == 150 and release.remaining == 0
    await assert_ledger_consistent()


@pytest.mark.smoke
async def test_released_points_of_a_lot_expired_since_expire(client, login, clock, pay):
    from app.domain import expiry

    clock.travel_to(START)
    reward = await Reward.create(name="耳机", points=150, cash_fen=1000, stock=5)
    m = await login()
    await points.award(member_id=m.id, amount=100, reason="gift", key="old", now=START, expiry_months=12)
    await points.award(member_id=m.id, amount=100, reason="gift", key="new", now=START + timedelta(days=200),
                       expiry_months=12)
    eve = add_months(START, 12) - timedelta(minutes=5)  # 5 minutes before the old lot lapses
    clock.travel_to(eve)
    assert (await m.post(f"/mp/rewards/{reward.id}/redeem")).status == 200  # takes old 100 + new 50
    assert (await Member.get(id=m.id)).points == 50
    await rewards.release_expired(now=eve + timedelta(minutes=15), pay=pay)
    # The old lot's 100 lapsed meanwhile: they expire rather than being renewed; the 50 go back.
    assert (await Member.get(id=m.id)).points == 100
    entries = await LedgerEntry.filter(member_id=m.id).order_by("id").values_list("reason", "delta")
    assert entries[-2:] == [("release", 150), ("expire", -100)]
    lots = await LedgerEntry.filter(member_id=m.id, remaining__gt=0).values_list("idempotency_key", "remaining")
    assert lots == [("new", 100)]
    await assert_ledger_consistent()
    # The expiry job later finds nothing more to take from the old lot.
    await expiry.expire_due(now=eve + timedelta(days=1))
    assert (await Member.get(id=m.id)).points == 100
    await assert_ledger_consistent()
