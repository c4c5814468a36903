"""Task points and the weekly cap (app/domain/tasks.py, antiabuse weekly cap)."""
import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.domain import antiabuse, rules, tasks
from app.domain.members import new_invite_code
from app.domain.rules import PointsRule, TasksRule
from app.errors import Conflict, InvalidField
from app.models import LedgerEntry, Member, TaskCompletion
from tests.conftest import assert_ledger_consistent

TZ = ZoneInfo("Asia/Shanghai")
# Wednesday 2 December 2026, 10:00 Shanghai; its business week is Mon 30 Nov .. Sun 6 Dec.
NOW = datetime(2026, 12, 2, 10, 0, tzinfo=TZ)


async def configured(review=10, profile=20, daily_cap=200, weekly_cap=200):
    base = await rules.load()
    return base.model_copy(update={
        "tasks": TasksRule(points={"profile": profile, "review": review}, weekly_cap=weekly_cap),
        "points": PointsRule(daily_cap=daily_cap)})


async def member(openid="o-task", **fields) -> Member:
    return await Member.create(appid="wx-test-mp", openid=openid, invite_code=new_invite_code(),
                               created_at=NOW - timedelta(days=1), **fields)


async def event(redis, r, m, event_id, now=NOW, kind="review"):
    return await tasks.record_event(event_id=event_id, member_id=m.id, kind=kind, now=now, tz=TZ,
                                    redis=redis, rules=r)


@pytest.mark.smoke
async def test_an_event_pays_once_per_event_id(db, redis):
    r, m = await configured(), await member()
    first = await event(redis, r, m, "rev-1")
    again = await event(redis, r, m, "rev-1")
    assert (first.points_awarded, first.duplicate) == (10, False)
    assert (again.points_awarded, again.duplicate) == (10, True)
    assert (await Member.get(id=m.id)).points == 10
    entry = await LedgerEntry.get(idempotency_key="task:event:rev-1")
    assert (entry.reason, entry.capped_on) == ("task", NOW.date())
    await assert_ledger_consistent()


async def test_the_same_event_id_at_once_pays_once(db, redis):
    r, m = await configured(), await member()
    results = await asyncio.gather(*(event(redis, r, m, "rev-dup") for _ in range(20)))
    assert sorted(x.duplicate for x in results) == [False] + [True] * 19
    assert (await Member.get(id=m.id)).points == 10
    # The duplicates gave their reservations back: the whole week is left but those 10.
    assert await antiabuse.reserve_weekly_cap(redis=redis, member_id=m.id, day=NOW.date(),
                                              wanted=1000, cap=200) == 190


async def test_an_event_id_of_another_member_or_kind_is_refused(db, redis):
    r, a, b = await configured(), await member("o-a"), await member("o-b")
    await event(redis, r, a, "rev-x")
    with pytest.raises(Conflict) as caught:
        await event(redis, r, b, "rev-x")
    assert caught.value.code == "event_id_reused"
    assert (await Member.get(id=b.id)).points == 0


async def test_unknown_kinds_and_bad_event_ids_are_422(db, redis):
    r, m = await configured(), await member()
    with pytest.raises(InvalidField) as caught:
        await event(redis, r, m, "rev-1", kind="profile")  # profile is ours, never reported
    assert caught.value.field == "kind"
    with pytest.raises(InvalidField) as caught:
        await event(redis, r, m, "x" * 65)
    assert caught.value.field == "event_id"
    assert await TaskCompletion.all().count() == 0


async def test_out_of_the_box_tasks_pay_nothing(db, redis):
    m = await member()
    result = await event(redis, await rules.load(), m, "rev-0")
    assert (result.points_awarded, result.wanted) == (0, 0)
    assert (await Member.get(id=m.id)).points == 0
    assert await LedgerEntry.filter(member_id=m.id).count() == 0


@pytest.mark.postgres
async def test_the_weekly_cap_holds_under_50_concurrent_events(db, redis):
    # 20 points each, the daily cap out of the way: only the weekly cap (200) limits.
    r, m = await configured(review=20, daily_cap=100_000), await member()
    results = await asyncio.gather(*(event(redis, r, m, f"rev-{i}") for i in range(50)))
    assert sum(x.points_awarded for x in results) == 200
    assert (await Member.get(id=m.id)).points == 200
    assert await antiabuse.weekly_total(member_id=m.id, day=NOW.date()) == 200
    assert await TaskCompletion.filter(member_id=m.id).count() == 50  # every task is still done
    await assert_ledger_consistent()


@pytest.mark.smoke
async def test_the_weekly_cap_spans_the_days_of_one_week(db, redis):
    r, m = await configured(review=50, daily_cap=100_000), await member()
    monday = datetime(2026, 11, 30, 9, 0, tzinfo=TZ)
    for i in range(3):
        await event(redis, r, m, f"mon-{i}", now=monday)
    assert (await event(redis, r, m, "sun-1", now=datetime(2026, 12, 6, 23, 59, tzinfo=TZ))).points_awarded == 50
    capped = await event(redis, r, m, "sun-2", now=datetime(2026, 12, 6, 23, 59, 59, tzinfo=TZ))
    assert (capped.points_awarded, capped.capped) == (0, True)
    # Monday 00:00 Shanghai is a new business week.
    fresh = await event(redis, r, m, "mon-next", now=datetime(2026, 12, 7, 0, 0, tzinfo=TZ))
    assert fresh.points_awarded == 50
    assert (await Member.get(id=m.id)).points == 250


async def test_task_points_count_under_the_daily_cap_too(db, redis):
    r, m = await configured(review=30), await member()
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=NOW.date(), wanted=180, cap=200) == 180
    assert (await event(redis, r, m, "rev-d")).points_awarded == 20
    # What the daily cap refused is not taken from the week.
    assert await antiabuse.reserve_weekly_cap(redis=redis, member_id=m.id, day=NOW.date(),
                                              wanted=1000, cap=200) == 180


async def test_a_lost_weekly_counter_is_rebuilt_from_the_ledger(db, redis):
    r, m = await configured(review=50, daily_cap=100_000), await member()
    for i in range(3):
        await event(redis, r, m, f"rev-{i}")
    await redis.flushdb()  # Redis lost everything this week
    assert (await event(redis, r, m, "rev-after", now=NOW + timedelta(days=1))).points_awarded == 50
    assert (await event(redis, r, m, "rev-over", now=NOW + timedelta(days=1))).points_awarded == 0
    assert (await Member.get(id=m.id)).points == 200


async def test_profile_completion_pays_once_even_at_once(db, redis):
    r = await configured()
    m = await member(name="张三", phone="13800000000", birthday=datetime(1990, 1, 1).date(), card_activated=True)
    results = await asyncio.gather(*(tasks.complete_profile(member_id=m.id, now=NOW, tz=TZ, redis=redis, rules=r)
                                     for _ in range(10)))
    assert sum(1 for x in results if not x.duplicate) == 1
    assert (await Member.get(id=m.id)).points == 20
    incomplete = await member("o-bare", card_activated=True)
    assert await tasks.complete_profile(member_id=incomplete.id, now=NOW, tz=TZ, redis=redis, rules=r) is None


async def test_overview_shows_tasks_and_the_week(db, redis):
    r, m = await configured(), await member()
    await event(redis, r, m, "rev-1")
    await event(redis, r, m, "rev-2", now=NOW - timedelta(days=7))  # last week
    view = await tasks.overview(member_id=m.id, now=NOW, tz=TZ, rules=r)
    assert view["week"] == {"start": "2026-11-30", "end": "2026-12-06", "points": 10, "cap": 200, "left": 190}
    by_kind = {t["kind"]: t for t in view["tasks"]}
    assert by_kind["review"]["points"] == 10 and by_kind["review"]["done_this_week"] == 1
    assert by_kind["profile"] == {"kind": "profile", "points": 20, "repeat": "once", "done": False,
                                  "done_this_week": 0, "points_this_week": 0}
    assert "share" in by_kind
