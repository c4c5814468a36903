"""Pre-aggregated metrics days: the bitmap arithmetic, storage on PostgreSQL, and the triggers
that keep a stored day exact when a late write lands on it (make-ups, late payments, payers
credited at first login, re-dated rows), also under concurrent writes and builds."""
from __future__ import annotations

import asyncio
import contextlib
from datetime import date, datetime, timedelta, timezone

import pytest
from tortoise import connections
from tortoise.transactions import in_transaction

from app.domain import metrics, metrics_days
from app.domain.metrics_days import DayFigures, bitmap
from app.models import Checkin, LedgerEntry, MetricsDay, Payment
from pyroaring import BitMap
from tests.app.domain.metrics_world import FIRST, LAST, TIERS, TZ, _member, _pay
from tests.conftest import shanghai

NOW = shanghai(2026, 11, 22, 10, 0)


def _members(*ids: int) -> BitMap:
    return bitmap(ids)


def _folded(checked: list[int] = (), payers: list[tuple[int, int]] = ()) -> metrics.Fold:
    """Days from 2026-11-01 with these check-in bitmaps or (payers, repeat payers) bitmaps."""
    folded = metrics.Fold()
    for i, bits in enumerate(checked):
        folded.add(DayFigures(date(2026, 11, 1) + timedelta(days=i), checked_in=bits))
    for i, (paid, twice) in enumerate(payers):
        folded.add(DayFigures(date(2026, 11, 1) + timedelta(days=i), payers=paid, repeat_payers=twice))
    return folded


@pytest.mark.smoke
def test_streaks_are_the_longest_run_of_consecutive_days_per_member():
    # member 1: days 0-6 (7), member 2: days 0-1 and 3-5 (longest 3), member 3: day 2 only,
    # member 4: days 0-7 (8, so 7+), member 5: never.
    days = [_members(1, 2, 4), _members(1, 2, 4), _members(1, 3, 4), _members(1, 2, 4),
            _members(1, 2, 4), _members(1, 2, 4), _members(1, 4), _members(4)]
    folded = _folded(days)
    assert folded.streaks() == {"1": 1, "2": 0, "3": 1, "4": 0, "5": 0, "6": 0, "7+": 2}
    assert folded.checkins == 3 + 3 + 3 + 3 + 3 + 3 + 2 + 1 and len(folded.checked) == 4
    assert _folded([]).streaks() == dict.fromkeys(metrics.STREAK_BUCKETS, 0)
    assert _folded([_members(9)]).streaks() == {**dict.fromkeys(metrics.STREAK_BUCKETS, 0), "1": 1}
    # A gap day breaks every run; a run may end on the range's last day.
    assert _folded([_members(1), _members(), _members(1), _members(1)]).streaks()["2"] == 1


@pytest.mark.smoke
def test_repeat_payers_need_two_orders_on_one_day_or_on_two_days():
    folded = _folded(payers=[(_members(1, 2, 3), _members(3)), (_members(2, 4), _members()), (_members(5), _members())])
    assert len(folded.twice) == 2  # 2 (two days) and 3 (twice on one day)
    assert len(folded.payers) == 5


@pytest.mark.smoke
def test_a_bitmap_holds_exactly_its_ids():
    bits = bitmap([0, 7, 8, 1_000_003, 8])
    assert len(bits) == 4
    assert [i for i in (0, 7, 8, 9, 1_000_003) if i in bits] == [0, 7, 8, 1_000_003]
    assert len(bitmap([])) == 0


@pytest.mark.smoke
def test_a_stored_set_costs_what_its_members_do_not_the_highest_id():
    # Two members among ten million: a dense bitmap would store 1.25 MB for them.
    sparse = bitmap([3, 10_000_000])
    assert len(metrics_days.encode(sparse)) < 64
    assert metrics_days.decode(metrics_days.encode(sparse)) == sparse
    # A block of consecutive ids (members who joined together) is stored as a run.
    block = bitmap(range(1_000_000, 1_200_000))
    assert len(metrics_days.encode(block)) < 64
    assert metrics_days.decode(metrics_days.encode(block)) == block
    assert metrics_days.decode(metrics_days.encode(bitmap([]))) == bitmap([])


@pytest.mark.smoke
def test_a_dense_set_of_the_previous_release_still_reads():
    ids = [1, 7, 8, 9, 64, 1_000_003]
    dense = sum(1 << i for i in ids)
    assert metrics_days.decode(dense.to_bytes((dense.bit_length() + 7) // 8, "little")) == bitmap(ids)
    assert metrics_days.decode(b"") == bitmap([]) and metrics_days.decode(None) == bitmap([])


async def _fresh() -> dict:
    """The range computed with nothing stored: every day from the source tables."""
    await MetricsDay.all().delete()
    got = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    await MetricsDay.all().delete()
    return got


async def _stored_days() -> dict[date, tuple[int, int]]:
    """Each stored day's (version, built_version); a late write's stale mark counts as a version."""
    rows = await connections.get("default").execute_query_dict(
        "SELECT day, version + (SELECT count(*) FROM metrics_day_stale s WHERE s.day_id = m.id) AS version,"
        " built_version FROM metrics_day m WHERE tz = $1", [TZ.key])
    return {row["day"]: (int(row["version"]), row["built_version"]) for row in rows}


@pytest.mark.postgres
async def test_ended_days_are_stored_and_then_read_from_storage(world):
    first = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    stored = await _stored_days()
    assert sorted(stored) == [FIRST + timedelta(days=i) for i in range(7)]
    assert all(version == built for version, built in stored.values())
    # A stored day is what is read: alter one behind the triggers' back and it shows.
    await connections.get("default").execute_query(
        "UPDATE metrics_day SET issued = issued + 1000 WHERE day = $1", [date(2026, 11, 2)])
    again = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    assert again["points"]["issued"] == first["points"]["issued"] + 1000


@pytest.mark.postgres
async def test_stored_days_are_roaring_and_dense_ones_are_rebuilt_by_the_migration(world):
    from importlib import import_module

    first = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    day = await MetricsDay.get(tz=TZ.key, day=date(2026, 11, 2))
    assert day.active[:1] == metrics_days.ROARING and len(metrics_days.decode(day.active)) > 0
    # A day stored dense by the previous release reads the same, and migration 0015 marks
    # every stored day out of date so it is built again, roaring.
    dense = sum(1 << i for i in metrics_days.decode(day.active))
    await connections.get("default").execute_query(
        "UPDATE metrics_day SET active = $1 WHERE id = $2",
        [dense.to_bytes((dense.bit_length() + 7) // 8, "little"), day.id])
    assert await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW) == first
    migration = import_module("app.migrations.0014_metrics_roaring")

    class Editor:
        client = connections.get("default")

    await migration.rebuild(None, Editor())
    assert all(built == 0 for _, built in (await _stored_days()).values())
    assert await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW) == first
    assert (await MetricsDay.get(id=day.id)).active[:1] == metrics_days.ROARING


@pytest.mark.postgres
async def test_today_and_a_day_just_ended_are_computed_not_stored(world):
    today = date(2026, 11, 7)
    # 00:03 on the 8th: the 7th ended 3 minutes ago (inside GRACE), so it is not stored yet.
    await metrics.compute(first=FIRST, last=today, tz=TZ, tier_keys=TIERS, now=shanghai(2026, 11, 8, 0, 3))
    assert today not in await _stored_days() and date(2026, 11, 6) in await _stored_days()


async def _makeup(world) -> None:
    await Checkin.create(member=world[3], day=date(2026, 11, 4), makeup=True)


async def _late_payment(world) -> None:
    await _pay(90, world[3], 4000, shanghai(2026, 11, 5, 23, 0))


async def _payer_joins(world) -> None:
    payment = await Payment.get(transaction_id="tx-5")  # paid on the 5th by a non-member
    await Payment.filter(id=payment.id).update(member_id=world[4].id)


async def _ledger_redated(world) -> None:
    entry = await LedgerEntry.filter(member_id=world[5].id).first()  # on the 8th: outside
    await LedgerEntry.filter(id=entry.id).update(created_at=shanghai(2026, 11, 3, 8, 0))


async def _member_backdated(world) -> None:
    await _member(77, shanghai(2026, 11, 6, 9, 0))


async def _bulk_checkins(world) -> None:
    await Checkin.bulk_create([Checkin(member=world[4], day=date(2026, 11, d)) for d in (1, 2, 3)])


@pytest.mark.postgres
@pytest.mark.parametrize("late_write", [_makeup, _late_payment, _payer_joins, _ledger_redated,
                                        _member_backdated, _bulk_checkins])
async def test_a_late_write_on_a_stored_day_is_counted(world, late_write):
    before = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    versions = await _stored_days()
    await late_write(world)
    marked = await _stored_days()
    assert any(marked[day][0] > versions[day][0] for day in versions)  # the trigger marked it
    after = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    rebuilt = await _stored_days()
    assert all(version == built for version, built in rebuilt.values())  # and it was rebuilt
    assert after != before
    assert after == await _fresh()


@pytest.mark.postgres
async def test_writes_on_today_leave_the_stored_days_alone(world, db):
    await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    versions = await _stored_days()
    await Checkin.create(member=world[1], day=date(2026, 11, 22))
    await _pay(91, world[1], 100, NOW)  # NOW is on the 22nd: today
    await _member(78, NOW)
    assert await _stored_days() == versions


@contextlib.asynccontextmanager
async def _open_writer(world):
    """A make-up on the 6th inserted in a transaction kept open until the block ends."""
    started, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with in_transaction() as tx:
            await Checkin.create(member=world[3], day=date(2026, 11, 6), makeup=True, using_db=tx)
            started.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await started.wait()
    try:
        yield
    finally:
        release.set()
        await task


DAYS = [FIRST + timedelta(days=i) for i in range(7)]


@pytest.mark.postgres
async def test_a_build_waits_for_a_writer_that_started_before_the_day_was_stored(world):
    """The writer inserted before the day's row existed (no trigger could see it): the build
    must not read before it commits, or the stored day would miss it for good."""
    async with _open_writer(world):
        build = asyncio.create_task(metrics_days.build(TZ, DAYS, now=NOW, wait=30))
        await asyncio.sleep(0.3)
        assert not build.done()  # waiting for the writer
    assert await build == 7
    got = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    assert got["checkins"]["count"] == 14
    assert got == await _fresh()


@pytest.mark.postgres
async def test_a_writer_outlasting_the_wait_leaves_the_days_unbuilt_and_the_call_computes_them(world):
    async with _open_writer(world):
        assert await metrics_days.build(TZ, DAYS, now=NOW, wait=0.1) == 0
        during = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
        assert during["checkins"]["count"] == 13  # the open make-up is not committed yet
        assert not any(version == built for version, built in (await _stored_days()).values())
    after = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    assert after["checkins"]["count"] == 14
    assert all(version == built for version, built in (await _stored_days()).values())


@pytest.mark.postgres
async def test_concurrent_late_writes_and_builds_end_exact(world):
    """Dozens of make-ups and late payments on stored days race with repeated builds: what is
    stored at the end equals a computation from scratch."""
    members = [await _member(100 + i, shanghai(2026, 10, 1, 9, 0)) for i in range(30)]

    async def late(i: int) -> None:
        await asyncio.sleep(i * 0.003)
        if i % 2:
            await Checkin.create(member=members[i], day=FIRST + timedelta(days=i % 7), makeup=True)
        else:
            await _pay(200 + i, members[i], 100 + i, shanghai(2026, 11, 1 + i % 7, 12, 0))

    async def builds() -> None:
        for _ in range(10):
            await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)

    await asyncio.gather(builds(), builds(), *(late(i) for i in range(len(members))))
    stored = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    assert all(version == built for version, built in (await _stored_days()).values())
    fresh = await _fresh()
    assert stored == fresh
    assert fresh["checkins"]["count"] == 13 + 15 and fresh["orders"]["orders"] == 3 + 15


@pytest.mark.postgres
async def test_refresh_builds_the_missing_ended_days_once(world):
    now = shanghai(2026, 11, 9, 1, 0)
    first = await metrics_days.refresh(tz=TZ, now=now, days=10)
    assert first == {"days": 10, "current": 0, "built": 10}
    assert sorted(await _stored_days()) == [date(2026, 10, 30) + timedelta(days=i) for i in range(10)]
    await _makeup(world)
    assert await metrics_days.refresh(tz=TZ, now=now, days=10) == {"days": 10, "current": 9, "built": 1}


@pytest.mark.smoke
@pytest.mark.sqlite
async def test_on_sqlite_nothing_is_stored_and_refresh_is_a_no_op(world):
    await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    assert await MetricsDay.all().count() == 0
    assert await metrics_days.refresh(tz=TZ, now=NOW, days=30) == {"days": 0, "current": 0, "built": 0}
    await _makeup(world)
    got = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    assert got["checkins"]["count"] == 14


@pytest.mark.smoke
async def test_a_range_longer_than_a_chunk_reads_every_day_once(world):
    first, last = date(2026, 10, 1), date(2026, 12, 5)  # 66 days: three chunks of reading
    got = await metrics.compute(first=first, last=last, tz=TZ, tier_keys=TIERS, now=NOW)
    assert [d["date"] for d in got["new_members"]] == [
        (first + timedelta(days=i)).isoformat() for i in range(66)]
    assert got["members"]["new"] == 6  # every member of the fixture
    assert got["checkins"]["count"] == 14 and got["checkins"]["streaks"]["7+"] == 1  # m1: Oct 31-Nov 7
    assert got["points"]["issued"] == 200  # all ledger credits, Oct 31 and Nov 8 included


@pytest.mark.postgres
@pytest.mark.parametrize("late_write", [_makeup, _late_payment, _payer_joins])
async def test_a_money_write_never_waits_for_a_build(world, monkeypatch, late_write):
    """A build holds its days' locks while it aggregates them; a make-up, a late payment or a
    payer credited at first login landing on such a day completes at once, and is counted."""
    await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    # Out of date, every day: the build locks all seven.
    await connections.get("default").execute_query("UPDATE metrics_day SET built_version = 0")
    parked, release = asyncio.Event(), asyncio.Event()
    compute_days = metrics_days.compute_days

    async def slow(sql, days):
        if sql.tx is not None:  # inside the build's transaction, after its FOR UPDATE
            parked.set()
            await release.wait()
        return await compute_days(sql, days)

    monkeypatch.setattr(metrics_days, "compute_days", slow)
    build = asyncio.create_task(metrics_days.build(TZ, DAYS, now=NOW, wait=5))
    try:
        await asyncio.wait_for(parked.wait(), 10)
        await asyncio.wait_for(late_write(world), 2)  # waited for the build's lock before
    finally:
        release.set()
        await build
    monkeypatch.undo()
    after = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)
    assert after == await _fresh()
