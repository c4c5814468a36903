"""RFM quintiles and segments against a hand-computed fixture: 5 payers (one score each per
quintile) and 4 members who never paid, on 2026-11-22 (Shanghai)."""
from __future__ import annotations

from datetime import date

import pytest

from app.domain import segments
from app.models import Member, MemberScore, Payment, Refund
from tests.conftest import shanghai

pytestmark = pytest.mark.smoke

NOW = shanghai(2026, 11, 22, 10, 0)
TODAY = date(2026, 11, 22)
OLD = shanghai(2026, 1, 1, 9, 0)


async def _member(name: str, created=OLD, **extra) -> Member:
    return await Member.create(appid="wx-test", openid=f"o-{name}", invite_code=name, created_at=created,
                               **extra)


async def _payments(member: Member, amounts: list[int], last, *, refund: int = 0) -> None:
    """len(amounts) payments, the last at `last`, the others a day apart before it."""
    from datetime import timedelta

    for i, fen in enumerate(amounts):
        paid = last - timedelta(days=len(amounts) - 1 - i)
        payment = await Payment.create(transaction_id=f"tx-{member.openid}-{i}", out_trade_no=f"o{i}",
                                       openid=member.openid, member=member, total_fen=fen,
                                       payer_total_fen=fen, paid_at=paid)
        if refund and i == 0:
            await Refund.create(refund_id=f"rf-{member.openid}", payment=payment, refund_fen=refund)
    await Member.filter(id=member.id).update(last_paid_at=last)


@pytest.fixture
async def members(db):
    p1 = await _member("p1")
    await _payments(p1, [100], shanghai(2026, 11, 20, 12, 0))
    p2 = await _member("p2", phone="13812345678", tier="gold", points=321)
    await _payments(p2, [500, 500, 500, 500], shanghai(2026, 11, 10, 12, 0))
    p3 = await _member("p3")
    await _payments(p3, [150, 150], shanghai(2026, 11, 1, 12, 0))
    p4 = await _member("p4")
    await _payments(p4, [100, 150, 150], shanghai(2026, 10, 1, 12, 0))
    p5 = await _member("p5")
    await _payments(p5, [1000] * 5, shanghai(2026, 6, 1, 12, 0), refund=950)
    n1 = await _member("n1", created=shanghai(2026, 11, 10, 9, 0))
    n2 = await _member("n2", last_checkin=date(2026, 11, 20))
    n3 = await _member("n3")
    n4 = await _member("n4", last_checkin=date(2026, 8, 1))
    return {m.openid[2:]: m for m in (p1, p2, p3, p4, p5, n1, n2, n3, n4)}


async def _scores() -> dict[str, tuple]:
    rows = await MemberScore.all().prefetch_related("member")
    return {r.member.openid[2:]: (r.recency, r.frequency, r.monetary, r.segment) for r in rows}


async def test_quintiles_and_segments_by_the_rules(members):
    # Nets: p1 100, p2 2000, p3 300, p4 400, p5 5000 - 950 = 4050.
    # R by last payment: p5 Jun < p4 Oct < p3 Nov 1 < p2 Nov 10 < p1 Nov 20.
    # F by payments: p1 1 < p3 2 < p4 3 < p2 4 < p5 5.  M: p1 < p3 < p4 < p2 < p5.
    counts = await segments.recompute(now=NOW, today=TODAY)
    assert await _scores() == {
        "p1": (5, 1, 1, "active"),
        "p2": (4, 4, 4, "high_value"),
        "p3": (3, 2, 2, "active"),
        "p4": (2, 3, 3, "active"),       # paid 52 days ago: not silent
        "p5": (1, 5, 5, "silent"),       # last paid in June, no check-in since
        "n1": (0, 0, 0, "new"),          # joined 12 days ago
        "n2": (0, 0, 0, "active"),       # checked in 2 days ago
        "n3": (0, 0, 0, "silent"),
        "n4": (0, 0, 0, "silent"),       # last check-in 113 days ago
    }
    assert counts == {"new": 1, "active": 4, "silent": 3, "high_value": 1}


async def test_recompute_replaces_the_previous_scores(members):
    await segments.recompute(now=NOW, today=TODAY)
    await Member.filter(id=members["n1"].id).delete()
    later = shanghai(2027, 3, 1, 10, 0)
    counts = await segments.recompute(now=later, today=date(2027, 3, 1))
    assert await MemberScore.all().count() == 8
    # 99 days after Nov 22 nobody has paid or checked in within 90 days.
    assert counts == {"new": 0, "active": 0, "silent": 8, "high_value": 0}


async def test_segment_members_come_in_batches_with_phones_masked(members):
    await segments.recompute(now=NOW, today=TODAY)
    batches = [rows async for rows in segments.members_of(segment="silent", batch=2)]
    assert [len(b) for b in batches] == [2, 1]
    assert [r["openid"] for b in batches for r in b] == ["o-p5", "o-n3", "o-n4"]
    [[high]] = [rows async for rows in segments.members_of(segment="high_value")]
    assert high["phone"] == "138****5678"
    assert (high["tier"], int(high["points"]), high["recency"], high["frequency"], high["monetary"]) == \
        ("gold", 321, 4, 4, 4)
    assert high["last_paid_at"].startswith("2026-11-10")


def test_phone_masking():
    assert segments.mask_phone("13812345678") == "138****5678"
    assert segments.mask_phone(None) == ""
    assert segments.mask_phone("12345") == "*****"
