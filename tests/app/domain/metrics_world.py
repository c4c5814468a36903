"""The hand-computed metrics fixture (`world`): 6 members, known check-ins, payments, refunds,
coupons, tier changes, ledger entries and referrals around the range 2026-11-01..07 (Shanghai).
Used by test_metrics.py and test_metrics_days.py (registered in this folder's conftest.py)."""
from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from app.domain import points
from app.models import (Checkin, Coupon, CouponTemplate, LedgerEntry, Member, Payment, Referral,
                        Refund, TierChange)
from tests.conftest import shanghai

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
                                     now=at, allow_negative=True)
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
