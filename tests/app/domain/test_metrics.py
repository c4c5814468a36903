"""Metrics against a hand-computed fixture: 6 members, known check-ins, payments, refunds,
coupons, tier changes, ledger entries and referrals around the range 2026-11-01..07 (Shanghai).
"""
from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from app.domain import metrics, points
from app.errors import InvalidField
from app.models import (Checkin, Coupon, CouponTemplate, LedgerEntry, Member, Payment, Referral,
                        Refund, TierChange)
from tests.conftest import assert_ledger_consistent, shanghai

pytestmark = pytest.mark.smoke

TZ = ZoneInfo("Asia/Shanghai")
TIERS = ("regular", "silver", "gold", "diamond")
FIRST, LAST = date(2026, 11, 1), date(2026, 11, 7)


async def _member(n: int, created: datetime, tier: str = "regular") -> Member:
    return await Member.create(appid="wx-test", openid=f"o-{n}", invite_code=f"inv{n}",
                               tier=tier, created_at=created)


async def _ledger(member: Member, delta: int, reason: str, at: datetime) -> None:
    key = f"test:{member.id}:{reason}:{at.isoformat()}"
    if delta > 0:
        posting = await points.award(member_id=member.id, amount=delta, reason=reason, key=key,
                                     now=at, expiry_months=12)
    else:
        posting = await points.spend(member_id=member.id, amount=-delta, reason=reason, key=key,
                                     allow_negative=True)
    # The ledger stamps entries with the wall clock; the fixture places them in time.
    await LedgerEntry.filter(id=posting.entry.id).update(created_at=at)


async def _pay(n: int, member: Member | None, fen: int, at: datetime) -> Payment:
    return await Payment.create(transaction_id=f"tx-{n}", out_trade_no=f"o-{n}", openid=f"payer-{n}",
                                member=member, total_fen=fen, payer_total_fen=fen, paid_at=at)


async def _refund(n: int, payment: Payment, fen: int, at: datetime) -> None:
    await Refund.create(refund_id=f"rf-{n}", payment=payment, refund_fen=fen, created_at=at)


async def _coupon(n: int, template: CouponTemplate, member: Member, created: datetime,
                  used: datetime | None = None) -> None:
    await Coupon.create(code=f"C{n}", issue_key=f"test:{n}", template=template, member=member,
                        valid_from=created, expires_at=shanghai(2027, 1, 1, 0, 0), used_at=used,
                        created_at=created)


@pytest.fixture
async def world(db):
    m0 = await _member(0, shanghai(2026, 10, 31, 23, 50))           # the day before: not new
    m1 = await _member(1, shanghai(2026, 10, 1, 9, 0), tier="gold")
    m2 = await _member(2, shanghai(2026, 11, 1, 0, 30), tier="silver")  # Oct 31 16:30 UTC: Nov 1 here
    m3 = await _member(3, shanghai(2026, 11, 3, 12, 0))
    m4 = await _member(4, shanghai(2026, 11, 3, 23, 59))
    m5 = await _member(5, shanghai(2026, 11, 8, 0, 10))             # after the range

    for day in range(1, 8):
        await Checkin.create(member=m1, day=date(2026, 11, day))
    await Checkin.create(member=m1, day=date(2026, 10, 31))           # outside
    for day in (1, 2, 4, 5, 6):
        await Checkin.create(member=m2, day=date(2026, 11, day))
    await Checkin.create(member=m3, day=date(2026, 11, 3))

    await _ledger(m1, 100, "checkin", shanghai(2026, 11, 2, 10, 0))
    await _ledger(m1, -30, "redeem", shanghai(2026, 11, 3, 10, 0))
    await _ledger(m1, -10, "expire", shanghai(2026, 11, 5, 10, 0))
    await _ledger(m2, 50, "purchase", shanghai(2026, 11, 4, 10, 0))
    await _ledger(m2, -20, "refund", shanghai(2026, 11, 6, 10, 0))
    await _ledger(m0, 40, "checkin", shanghai(2026, 10, 31, 20, 0))  # outside
    await _ledger(m0, -5, "redeem", shanghai(2026, 11, 7, 23, 59))
    await _ledger(m5, 10, "checkin", shanghai(2026, 11, 8, 0, 10))   # outside

    await _pay(1, m1, 10000, shanghai(2026, 11, 2, 12, 0))
    await _pay(2, m1, 5000, shanghai(2026, 11, 6, 12, 0))
    p3 = await _pay(3, m2, 3000, shanghai(2026, 11, 4, 12, 0))
    p4 = await _pay(4, m3, 2000, shanghai(2026, 10, 30, 12, 0))      # outside; its refund is inside
    p5 = await _pay(5, None, 9999, shanghai(2026, 11, 5, 12, 0))     # not a member
    await _refund(1, p3, 1000, shanghai(2026, 11, 5, 12, 0))
    await _refund(2, p4, 500, shanghai(2026, 11, 2, 12, 0))
    await _refund(3, p5, 999, shanghai(2026, 11, 5, 12, 0))

    await TierChange.create(member=m1, from_tier="silver", to_tier="gold", cause="payment",
                            created_at=shanghai(2026, 11, 2, 12, 0))
    await TierChange.create(member=m2, from_tier="regular", to_tier="silver", cause="payment",
                            created_at=shanghai(2026, 11, 4, 12, 0))
    await TierChange.create(member=m2, from_tier="silver", to_tier="gold", cause="payment",
                            created_at=shanghai(2026, 11, 4, 13, 0))  # m2 counts once
    await TierChange.create(member=m4, from_tier="silver", to_tier="regular", cause="downgrade",
                            created_at=shanghai(2026, 11, 5, 3, 0))
    await TierChange.create(member=m0, from_tier="regular", to_tier="silver", cause="payment",
                            created_at=shanghai(2026, 10, 20, 3, 0))  # outside

    amount = await CouponTemplate.create(key="yuan20", name="20 yuan", kind="amount", amount_fen=2000)
    discount = await CouponTemplate.create(key="off10", name="10% off", kind="discount",
                                           discount_percent=90)
    await _coupon(1, amount, m1, shanghai(2026, 11, 1, 9, 0), used=shanghai(2026, 11, 2, 9, 0))
    await _coupon(2, amount, m2, shanghai(2026, 11, 2, 9, 0))
    await _coupon(3, discount, m3, shanghai(2026, 11, 3, 9, 0), used=shanghai(2026, 11, 4, 9, 0))
    await _coupon(4, amount, m0, shanghai(2026, 10, 25, 9, 0), used=shanghai(2026, 11, 5, 9, 0))
    await _coupon(5, amount, m4, shanghai(2026, 11, 6, 9, 0))

    await Referral.create(inviter=m1, invitee=m2, created_at=shanghai(2026, 11, 1, 0, 30),
                          paid_at=shanghai(2026, 11, 4, 12, 0), rewarded_at=shanghai(2026, 11, 4, 12, 0))
    await Referral.create(inviter=m1, invitee=m3, created_at=shanghai(2026, 11, 3, 12, 0))
    await Referral.create(inviter=m1, invitee=m4, created_at=shanghai(2026, 11, 3, 23, 59),
                          paid_at=shanghai(2026, 11, 5, 12, 0), reward_skipped="daily_limit")
    await Referral.create(inviter=m1, invitee=m0, created_at=shanghai(2026, 10, 31, 23, 50))  # outside
    return m0, m1, m2, m3, m4, m5


async def test_every_figure_matches_the_hand_computed_fixture(world):
    got = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS)

    new = {d["date"]: d["count"] for d in got["new_members"]}
    assert list(new) == [f"2026-11-0{d}" for d in range(1, 8)]
    assert new == {"2026-11-01": 1, "2026-11-02": 0, "2026-11-03": 2, "2026-11-04": 0,
                   "2026-11-05": 0, "2026-11-06": 0, "2026-11-07": 0}
    assert got["members"] == {"total": 5, "new": 3, "active": 4}  # m0 (spent), m1, m2, m3
    assert got["checkins"] == {"count": 13, "members": 3,
                               "streaks": {"1": 1, "2": 0, "3": 1, "4": 0, "5": 0, "6": 0, "7+": 1}}
    assert got["tiers"] == {"distribution": {"regular": 4, "silver": 1, "gold": 1, "diamond": 0},
                            "upgraded": 2, "downgraded": 1, "upgrade_rate": 0.4, "downgrade_rate": 0.2}
    assert got["points"] == {"issued": 150, "spent": 35, "expired": 10, "taken_back": 20,
                             "consumption_rate": round(35 / 150, 4)}
    assert got["coupons"] == {"issued": 4, "used": 2, "redemption_rate": 0.5, "face_value_used_fen": 4000}
    assert got["orders"] == {"payers": 2, "repeat_payers": 1, "orders": 3, "repurchase_rate": 0.5,
                             "spend_fen": 18000, "refunds_fen": 1500, "net_spend_fen": 16500}
    assert got["benefit"] == {"coupon_fen": 4000, "points_fen": 35, "fen_per_point": 1,
                              "cost_fen": 4035, "cost_ratio": round(4035 / 16500, 4)}
    assert got["referrals"] == {"invited": 3, "paid": 2, "rewarded": 1}
    await assert_ledger_consistent()


async def test_points_are_valued_at_the_given_fen_per_point(world):
    got = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, fen_per_point=2)
    assert got["benefit"]["points_fen"] == 70
    assert got["benefit"]["cost_ratio"] == round(4070 / 16500, 4)


async def test_one_day_range_and_an_empty_range(world):
    got = await metrics.compute(first=date(2026, 11, 3), last=date(2026, 11, 3), tz=TZ, tier_keys=TIERS)
    assert got["new_members"] == [{"date": "2026-11-03", "count": 2}]
    assert got["checkins"]["count"] == 2  # m1 and m3: m2 skipped the 3rd
    assert got["points"]["spent"] == 30
    empty = await metrics.compute(first=date(2025, 1, 1), last=date(2025, 1, 31), tz=TZ, tier_keys=TIERS)
    assert empty["members"] == {"total": 0, "new": 0, "active": 0}
    assert empty["points"]["consumption_rate"] is None
    assert empty["orders"]["repurchase_rate"] is None
    assert empty["benefit"]["cost_ratio"] is None


async def test_a_range_is_cached_for_a_minute(world, redis):
    now = shanghai(2026, 11, 22, 10, 0)
    first = await metrics.cached(redis=redis, first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=now)
    await Member.create(appid="wx-test", openid="o-late", invite_code="late",
                        created_at=shanghai(2026, 11, 2, 10, 0))
    again = await metrics.cached(redis=redis, first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=now)
    assert again == first and again["members"]["new"] == 3
    ttl = await redis.ttl(metrics.cache_key(first=FIRST, last=LAST, fen_per_point=1))
    assert 0 < ttl <= 60
    await redis.delete(metrics.cache_key(first=FIRST, last=LAST, fen_per_point=1))
    fresh = await metrics.cached(redis=redis, first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=now)
    assert fresh["members"]["new"] == 4


@pytest.mark.parametrize("first,last,field", [
    (None, "2026-11-07", "from"), ("2026-11-01", None, "to"), ("2026-13-01", "2026-11-07", "from"),
    ("2026-11-01", "yesterday", "to"), ("2026-11-08", "2026-11-07", "from"),
    ("2025-01-01", "2026-01-02", "to"),
])
def test_bad_ranges_name_the_field(first, last, field):
    with pytest.raises(InvalidField) as err:
        metrics.parse_range(first=first, last=last)
    assert err.value.field == field


def test_a_full_leap_year_is_allowed():
    assert metrics.parse_range(first="2028-01-01", last="2028-12-31") == (date(2028, 1, 1), date(2028, 12, 31))


async def test_a_cold_range_is_computed_once_for_concurrent_callers(world, redis, monkeypatch):
    import asyncio

    runs = []
    compute = metrics.compute

    async def counted(**kw):
        runs.append(1)
        return await compute(**kw)

    monkeypatch.setattr(metrics, "compute", counted)
    now = shanghai(2026, 11, 22, 10, 0)
    answers = await asyncio.gather(*[
        metrics.cached(redis=redis, first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=now)
        for _ in range(30)])
    assert len(runs) == 1
    assert all(a == answers[0] for a in answers) and answers[0]["members"]["new"] == 3
    assert await redis.get(metrics.cache_key(first=FIRST, last=LAST, fen_per_point=1) + ":lock") is None
