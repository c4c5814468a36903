"""Check-in's rules through both of its paths: the one-statement SQL of PostgreSQL and the ORM
path (SQLite's, and PostgreSQL's for a check-in that moves a tier). The same scenario, the same
rows, the same answers."""
import asyncio
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest

from app import metrics
from app.domain import antiabuse, checkin, points, rules
from app.errors import Conflict
from app.models import Checkin, LedgerEntry, Member, OutboxMessage, TierChange
from tests.conftest import assert_ledger_consistent, shanghai

TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture(params=["sql", "orm"])
def path(request, monkeypatch):
    monkeypatch.setattr(checkin, "use_sql", request.param == "sql")
    return request.param


@pytest.mark.smoke
async def test_the_rules_are_the_same_on_both_paths(db, redis, path):
    current = await rules.load(fresh=True)
    start = shanghai(2026, 12, 27, 8)
    m = await Member.create(appid="wx", openid="o-1", invite_code="CODE0001", growth=460)
    # A debt first (a refund of spent points): the check-in pays it before it makes a lot.
    await points.spend(member_id=m.id, amount=3, reason="refund", key="refund:r1", now=start,
                       allow_negative=True)
    await Member.filter(id=m.id).update(card_code="card-1", card_id="p-1")
    answers = []
    for day in range(7):
        now = start + timedelta(days=day)
        if day == 5:  # the cap is spent: still a check-in, 0 points
            await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=now.date(), wanted=200, cap=200)
        r = await checkin.check_in(redis=redis, rules=current, member_id=m.id, now=now, tz=TZ)
        answers.append((r.day.isoformat(), r.streak, r.points_awarded, r.balance, r.capped))
        with pytest.raises(Conflict):
            await checkin.check_in(redis=redis, rules=current, member_id=m.id, now=now, tz=TZ)
    assert answers == [
        ("2026-12-27", 1, 5, 2, False), ("2026-12-28", 2, 5, 7, False), ("2026-12-29", 3, 5, 12, False),
        ("2026-12-30", 4, 5, 17, False), ("2026-12-31", 5, 5, 22, False), ("2027-01-01", 6, 0, 22, True),
        ("2027-01-02", 7, 25, 47, False),
    ]
    entries = await LedgerEntry.filter(member_id=m.id, reason="checkin").order_by("id").values_list(
        "delta", "growth_delta", "idempotency_key", "remaining", "capped_on", "note", "expires_at")
    assert [(d, g, k, r, c, n) for d, g, k, r, c, n, _ in entries] == [
        (5, 5, f"checkin:{m.id}:2026-12-27", 2, date(2026, 12, 27), ""),
        (5, 5, f"checkin:{m.id}:2026-12-28", 5, date(2026, 12, 28), ""),
        (5, 5, f"checkin:{m.id}:2026-12-29", 5, date(2026, 12, 29), ""),
        (5, 5, f"checkin:{m.id}:2026-12-30", 5, date(2026, 12, 30), ""),
        (5, 5, f"checkin:{m.id}:2026-12-31", 5, date(2026, 12, 31), ""),
        (0, 5, f"checkin:{m.id}:2027-01-01", 0, date(2027, 1, 1), "capped"),
        (25, 5, f"checkin:{m.id}:2027-01-02", 25, date(2027, 1, 2), ""),
    ]
    expiries = [e[-1] for e in entries]
    assert expiries[0] == shanghai(2027, 12, 27, 8) and expiries[5] is None
    days = await Checkin.filter(member_id=m.id).order_by("day").values_list("day", "points", "makeup")
    assert [p for _, p, _ in days] == [5, 5, 5, 5, 5, 0, 25] and not any(mk for *_, mk in days)
    # Every change of a card holder's balance is a card push, the capped one included.
    pushes = await OutboxMessage.filter(member_id=m.id, channel="card").order_by("id").values_list(
        "key", "payload", "status")
    ids = [e.id for e in await LedgerEntry.filter(member_id=m.id, reason="checkin").order_by("id")]
    assert pushes == [(f"card:{i}", {"add_bonus": d, "record_bonus": "签到奖励"}, "pending")
                      for i, d in zip(ids, [5, 5, 5, 5, 5, 0, 25])]
    # Growth 460 + 7 × 5 = 495: still regular; the next check-in crosses silver's floor of 500.
    member = await Member.get(id=m.id)
    assert (member.points, member.growth, member.streak, member.last_checkin, member.tier) == \
        (47, 495, 7, date(2027, 1, 2), "regular")
    now = start + timedelta(days=7)
    r = await checkin.check_in(redis=redis, rules=current, member_id=m.id, now=now, tz=TZ)
    assert (r.streak, r.points_awarded, r.balance) == (1, 5, 52)
    member = await Member.get(id=m.id)
    assert (member.growth, member.tier) == (500, "silver")
    assert await TierChange.filter(member_id=m.id).values_list("from_tier", "to_tier", "cause") == \
        [("regular", "silver", "checkin")]
    await assert_ledger_consistent()


async def test_thirty_at_once_check_in_once_on_both_paths(db, redis, path):
    current = await rules.load(fresh=True)
    now = shanghai(2026, 11, 22, 8)
    m = await Member.create(appid="wx", openid="o-1", invite_code="CODE0001")
    await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=now.date(), wanted=197, cap=200)

    async def one():
        try:
            return await checkin.check_in(redis=redis, rules=current, member_id=m.id, now=now, tz=TZ)
        except Conflict:
            return None

    hits = metrics.CAP_HITS._value.get()
    results = await asyncio.gather(*[one() for _ in range(30)])
    done = [r for r in results if r is not None]
    # The one that counts got what was left of the cap: its duplicates never spent it.
    assert [(r.points_awarded, r.capped) for r in done] == [(3, True)]
    assert metrics.CAP_HITS._value.get() - hits == 1  # one reservation cut short, not thirty
    assert await redis.hget(antiabuse.cap_key(m.id, now.date()), "v") == "200"  # 197 + the 3 it got
    assert (await Member.get(id=m.id)).points == 3
    await assert_ledger_consistent()
