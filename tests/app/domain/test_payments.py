"""Purchase points, growth, tiers and refunds (app/domain/payments.py), on the database directly."""
import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

from app.domain import payments, points, rules
from app.domain.members import new_invite_code
from app.domain.rules import Rules, Tier, TiersRule
from app.models import LedgerEntry, Member, Payment, Refund, TierChange
from tests.conftest import assert_ledger_consistent

TZ = ZoneInfo("Asia/Shanghai")
APPID = "wx-test-mp"
MONDAY = datetime(2026, 11, 23, 10, 0, tzinfo=TZ)
THURSDAY = datetime(2026, 11, 26, 10, 0, tzinfo=TZ)


async def new_member(openid: str, **fields) -> Member:
    return await Member.create(appid=APPID, openid=openid, invite_code=new_invite_code(), **fields)


async def pay(redis, openid: str, fen: int, tid: str, *, paid_at=MONDAY):
    return await payments.record_payment(
        redis=redis, rules=await rules.load(), appid=APPID, transaction_id=tid, out_trade_no=f"o-{tid}",
        openid=openid, total_fen=fen, payer_total_fen=fen, paid_at=paid_at, now=paid_at, tz=TZ)


async def refund(tid: str, refund_id: str, fen: int):
    return await payments.record_refund(rules=await rules.load(), refund_id=refund_id, transaction_id=tid,
                                        refund_fen=fen, now=MONDAY)


def test_purchase_points_rules():
    r = Rules()
    assert payments.purchase_points(rules=r, payer_total_fen=12_899, tier="regular", paid_at=MONDAY, tz=TZ) == 128
    assert payments.purchase_points(rules=r, payer_total_fen=12_800, tier="silver", paid_at=MONDAY, tz=TZ) == 153
    assert payments.purchase_points(rules=r, payer_total_fen=12_800, tier="silver", paid_at=THURSDAY, tz=TZ) == 306
    assert payments.purchase_points(rules=r, payer_total_fen=99, tier="diamond", paid_at=THURSDAY, tz=TZ) == 0
    # Thursday 23:30 UTC is Friday in Shanghai: the business timezone decides.
    late = datetime(2026, 11, 26, 16, 30, tzinfo=ZoneInfo("UTC"))
    assert payments.purchase_points(rules=r, payer_total_fen=10_000, tier="regular", paid_at=late, tz=TZ) == 100
    # A multiplier whose float product falls just under the integer still rounds to it.
    odd = Rules(tiers=TiersRule(levels=(Tier(key="regular", name="普通", floor=0, multiplier=1.15),)))
    assert payments.purchase_points(rules=odd, payer_total_fen=10_000, tier="regular", paid_at=MONDAY, tz=TZ) == 115
    assert payments.purchase_growth(rules=r, payer_total_fen=12_899) == 128


async def test_member_day_and_tier_multiplier(db, redis):
    member = await new_member("o-md", tier="silver", growth=600)
    outcome = await pay(redis, "o-md", 12_800, "t-md", paid_at=THURSDAY)
    assert outcome.created and outcome.points == 306 and outcome.growth == 128
    fresh = await Member.get(id=member.id)
    assert fresh.points == 306 and fresh.growth == 728 and fresh.last_paid_at is not None
    assert (await pay(redis, "o-md", 12_800, "t-md", paid_at=THURSDAY)).created is False
    assert (await Member.get(id=member.id)).points == 306
    await assert_ledger_consistent()


async def test_partial_then_full_refund_is_exact(db, redis):
    member = await new_member("o-rf", tier="gold", growth=6000)
    await pay(redis, "o-rf", 10_001, "t-rf")  # 100 yuan × 1.5 = 150 points, 100 growth
    assert (await Member.get(id=member.id)).points == 150
    taken = [await refund("t-rf", "r1", 3_001), await refund("t-rf", "r2", 3_333), await refund("t-rf", "r3", 3_667)]
    assert sum(t.points_taken for t in taken) == 150 and sum(t.growth_taken for t in taken) == 100
    assert [t.points_taken for t in taken] == [45, 50, 55]
    fresh = await Member.get(id=member.id)
    assert fresh.points == 0 and fresh.growth == 6000
    again = await refund("t-rf", "r2", 3_333)
    assert again.created is False and (await Member.get(id=member.id)).points == 0
    await assert_ledger_consistent()


async def test_concurrent_partial_refunds_take_exactly_what_was_given(db, redis):
    member = await new_member("o-cr")
    await pay(redis, "o-cr", 9_999, "t-cr")  # 99 points
    results = await asyncio.gather(*(refund("t-cr", f"r-{i}", 1_111) for i in range(9)),
                                   *(refund("t-cr", "r-0", 1_111) for _ in range(5)))
    assert await Refund.all().count() == 9
    assert sum(r.points_taken for r in results[:9]) == 99
    assert (await Member.get(id=member.id)).points == 0
    await assert_ledger_consistent()


async def test_refund_of_spent_points_goes_negative_then_debt_is_repaid(db, redis):
    member = await new_member("o-neg")
    await pay(redis, "o-neg", 10_000, "t-neg")
    await points.spend(member_id=member.id, amount=80, reason="redeem", key="redeem:test", now=MONDAY)
    await refund("t-neg", "r-neg", 10_000)
    assert (await Member.get(id=member.id)).points == -80
    await assert_ledger_consistent()
    await pay(redis, "o-neg", 5_000, "t-neg-2")
    fresh = await Member.get(id=member.id)
    assert fresh.points == -30
    lot = await LedgerEntry.get(idempotency_key="pay:t-neg-2")
    assert lot.remaining == 0  # the whole earning paid the debt
    await pay(redis, "o-neg", 5_000, "t-neg-3")
    assert (await Member.get(id=member.id)).points == 20
    await assert_ledger_consistent()


async def test_growth_up_several_tiers_and_down_on_refund(db, redis):
    member = await new_member("o-tier")
    await pay(redis, "o-tier", 600_000, "t-tier")
    assert (await Member.get(id=member.id)).tier == "gold"
    await refund("t-tier", "r-tier", 600_000)
    fresh = await Member.get(id=member.id)
    assert fresh.tier == "regular" and fresh.growth == 0 and fresh.points == 0
    causes = await TierChange.filter(member_id=member.id).order_by("id").values_list("to_tier", "cause")
    assert causes == [("gold", "payment"), ("regular", "refund")]
    await assert_ledger_consistent()


async def test_pending_payment_credited_once(db, redis):
    await pay(redis, "o-pend", 30_000, "t-pend")
    payment = await Payment.get(transaction_id="t-pend")
    assert payment.member_id is None and not payment.credited
    member = await new_member("o-pend")
    counts = await asyncio.gather(*(payments.credit_pending(member=member, now=MONDAY, tz=TZ, redis=redis)
                                    for _ in range(5)))
    assert sum(counts) == 1
    fresh = await Member.get(id=member.id)
    assert fresh.points == 300 and fresh.growth == 300
    assert await LedgerEntry.filter(idempotency_key="pay:t-pend").count() == 1
    await assert_ledger_consistent()


async def test_refund_before_payment_is_retryable(db, redis):
    import pytest

    with pytest.raises(payments.PaymentNotRecorded):
        await refund("t-missing", "r-missing", 100)
    assert await Refund.all().count() == 0


async def test_blacklisted_payer_earns_nothing(db, redis):
    member = await new_member("o-bl", blacklisted=True)
    outcome = await pay(redis, "o-bl", 10_000, "t-bl")
    assert outcome.points == 0
    assert (await Member.get(id=member.id)).points == 0
    assert (await Payment.get(transaction_id="t-bl")).member_id == member.id
    await assert_ledger_consistent()


async def test_refund_while_pending_is_taken_back_at_credit(db, redis):
    await pay(redis, "o-pend-ref", 10_000, "t-pr")
    first = await refund("t-pr", "r-pr-1", 2_500)
    assert first.points_taken == 0  # nothing was given yet
    await refund("t-pr", "r-pr-2", 2_500)
    member = await new_member("o-pend-ref")
    assert await payments.credit_pending(member=member, now=MONDAY, tz=TZ, redis=redis) == 1
    fresh = await Member.get(id=member.id)
    assert fresh.points == 50 and fresh.growth == 50
    assert sorted(await Refund.all().values_list("points_taken", flat=True)) == [25, 25]
    await refund("t-pr", "r-pr-3", 5_000)
    assert (await Member.get(id=member.id)).points == 0
    await assert_ledger_consistent()


async def test_payment_row_carries_the_payers_tier_award(db, redis):
    """The payment INSERT finds the member and picks its tier's multiplier (one statement on
    PostgreSQL); an unknown tier earns as the first level; a stranger's payment waits uncredited."""
    expected = {"regular": 100, "silver": 120, "gold": 150, "diamond": 200, "retired": 100}
    for tier, want in expected.items():
        member = await new_member(f"o-tier-{tier}", tier=tier)
        outcome = await pay(redis, f"o-tier-{tier}", 10_099, f"t-tier-{tier}")
        assert (outcome.created, outcome.member_id, outcome.points, outcome.growth) == (True, member.id, want, 100)
        row = await Payment.get(transaction_id=f"t-tier-{tier}")
        assert row.credited and (row.points_awarded, row.growth_awarded) == (want, 100)
        fresh = await Member.get(id=member.id)
        assert (fresh.points, fresh.growth, fresh.last_paid_at) == (want, 100, MONDAY)
    stranger = await pay(redis, "o-nobody", 10_000, "t-nobody")
    assert (stranger.created, stranger.member_id, stranger.points, stranger.growth) == (True, None, 0, 0)
    row = await Payment.get(transaction_id="t-nobody")
    assert not row.credited and row.member_id is None and row.points_awarded == 0
    await assert_ledger_consistent()


async def _downgrade(on: datetime):
    from app.domain.downgrades import downgrade_inactive

    return await downgrade_inactive(rules=await rules.load(), today=on.date(), now=on, tz=TZ)


async def test_refund_after_a_downgrade_stops_at_the_tiers_floor(db, redis):
    member = await new_member("o-down")
    await pay(redis, "o-down", 600_000, "t-down")  # growth 6000: gold
    assert (await Member.get(id=member.id)).tier == "gold"
    march = datetime(2027, 3, 1, 9, 0, tzinfo=TZ)
    assert (await _downgrade(march))["downgraded"] == 1
    fresh = await Member.get(id=member.id)
    assert (fresh.tier, fresh.growth) == ("silver", 500)  # the downgrade took the growth above the floor
    await payments.record_refund(rules=await rules.load(), refund_id="r-down-1", transaction_id="t-down",
                                 refund_fen=300_000, now=march)
    await payments.record_refund(rules=await rules.load(), refund_id="r-down-2", transaction_id="t-down",
                                 refund_fen=300_000, now=march)
    fresh = await Member.get(id=member.id)
    assert (fresh.tier, fresh.growth, fresh.points) == ("silver", 500, 0)  # not pushed down a second time
    causes = await TierChange.filter(member_id=member.id).order_by("id").values_list("to_tier", "cause")
    assert causes == [("gold", "payment"), ("silver", "downgrade")]
    await assert_ledger_consistent()


async def test_refund_never_pushes_growth_below_zero(db, redis):
    member = await new_member("o-zero")
    await pay(redis, "o-zero", 60_000, "t-zero")  # growth 600: silver
    june = datetime(2027, 6, 1, 9, 0, tzinfo=TZ)
    assert (await _downgrade(june))["downgraded"] == 1  # silver → regular, growth 0
    await refund("t-zero", "r-zero", 60_000)
    fresh = await Member.get(id=member.id)
    assert (fresh.tier, fresh.growth, fresh.points) == ("regular", 0, 0)
    await assert_ledger_consistent()
