import asyncio
from datetime import timedelta

import pytest

from tests.conftest import assert_ledger_consistent, shanghai


@pytest.mark.smoke
async def test_checkin_then_again_same_day(client, login, clock):
    clock.travel_to(shanghai(2026, 11, 22, 9, 0))
    m = await login()
    resp = await m.post("/mp/checkin")
    body = await resp.json()
    assert resp.status == 200, body
    assert body == {"date": "2026-11-22", "streak": 1, "points_awarded": 5, "balance": 5, "capped": False}
    again = await m.post("/mp/checkin")
    assert again.status == 409 and (await again.json())["error"]["code"] == "already_checked_in"
    me = await (await m.get("/mp/me")).json()
    assert me["points"] == 5 and me["growth"] == 5 and me["streak"] == 1
    ledger = await (await m.get("/mp/points")).json()
    assert [(i["delta"], i["reason"]) for i in ledger["items"]] == [(5, "checkin")]
    assert ledger["items"][0]["expires_at"].startswith("2027-11-22")
    await assert_ledger_consistent()


async def test_midnight_in_shanghai_is_two_days(client, login, clock):
    m = await login()
    clock.travel_to(shanghai(2026, 11, 22, 23, 59))
    assert (await (await m.post("/mp/checkin")).json())["date"] == "2026-11-22"
    clock.travel_to(shanghai(2026, 11, 23, 0, 1))
    body = await (await m.post("/mp/checkin")).json()
    assert body["date"] == "2026-11-23" and body["streak"] == 2


async def test_utc_evening_is_next_shanghai_day(client, login, clock):
    from datetime import datetime, timezone

    m = await login()
    # 16:30 UTC is 00:30 the next day in Shanghai.
    clock.travel_to(datetime(2026, 11, 30, 16, 30, tzinfo=timezone.utc))
    assert (await (await m.post("/mp/checkin")).json())["date"] == "2026-12-01"


async def test_streak_bonus_on_day_seven_then_starts_over(client, login, clock):
    m = await login()
    start = shanghai(2026, 12, 27, 8, 0)  # crosses the month and the year end
    awarded = []
    for day in range(8):
        clock.travel_to(start + timedelta(days=day))
        body = await (await m.post("/mp/checkin")).json()
        awarded.append((body["streak"], body["points_awarded"]))
    assert awarded == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5), (6, 5), (7, 25), (1, 5)]
    assert (await (await m.get("/mp/me")).json())["points"] == 7 * 5 + 20 + 5
    await assert_ledger_consistent()


async def test_a_missed_day_breaks_the_streak(client, login, clock):
    m = await login()
    clock.travel_to(shanghai(2026, 11, 1, 8))
    await m.post("/mp/checkin")
    clock.travel_to(shanghai(2026, 11, 2, 8))
    await m.post("/mp/checkin")
    clock.travel_to(shanghai(2026, 11, 4, 8))
    assert (await (await m.get("/mp/me")).json())["streak"] == 0
    assert (await (await m.post("/mp/checkin")).json())["streak"] == 1


async def test_makeup_restores_streak_costs_points_and_is_limited(client, login, clock):
    m = await login()
    days = [1, 2, 4, 6, 8, 9]  # missed 3, 5, 7 of November
    for d in days:
        clock.travel_to(shanghai(2026, 11, d, 8))
        assert (await m.post("/mp/checkin")).status == 200
    balance = 6 * 5
    resp = await m.post("/mp/checkin/makeup", json={"date": "2026-11-07"})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["streak"] == 4 and body["balance"] == balance - 10 and body["makeups_left"] == 1
    # Outside the 7-day window, in the future, today, or already checked in.
    for bad in ("2026-11-01", "2026-11-10", "2026-11-09", "not-a-date"):
        r = await m.post("/mp/checkin/makeup", json={"date": bad})
        assert r.status in (409, 422), bad
        assert (await r.json())["error"]["code"] in ("invalid_field", "already_checked_in")
    r = await m.post("/mp/checkin/makeup", json={"date": "2026-11-05"})
    assert r.status == 200 and (await r.json())["streak"] == 6
    r = await m.post("/mp/checkin/makeup", json={"date": "2026-11-03"})
    assert r.status == 429 and (await r.json())["error"]["code"] == "makeup_limit_reached"
    cal = await (await m.get("/mp/checkin/calendar?month=2026-11")).json()
    assert [d["date"][-2:] for d in cal["days"]] == ["01", "02", "04", "05", "06", "07", "08", "09"]
    assert cal["makeups_used"] == 2 and cal["makeups_left"] == 0
    # A new calendar month brings new make-ups.
    clock.travel_to(shanghai(2026, 12, 2, 8))
    r = await m.post("/mp/checkin/makeup", json={"date": "2026-11-30"})
    assert r.status == 200
    assert (await (await m.get("/mp/me")).json())["points"] == balance - 30
    await assert_ledger_consistent()


async def test_makeup_needs_points(client, login, clock):
    m = await login()
    clock.travel_to(shanghai(2026, 11, 10, 8))
    r = await m.post("/mp/checkin/makeup", json={"date": "2026-11-08"})
    assert r.status == 409 and (await r.json())["error"]["code"] == "insufficient_points"
    cal = await (await m.get("/mp/checkin/calendar?month=2026-11")).json()
    assert cal["days"] == [] and cal["makeups_used"] == 0
    assert (await m.get("/mp/checkin/calendar?month=2026-13")).status == 422


async def test_daily_cap_partial_then_zero(client, login, clock, redis):
    from app.domain import antiabuse

    clock.travel_to(shanghai(2026, 11, 22, 8))
    m = await login()
    day = shanghai(2026, 11, 22, 8).date()
    # 197 already earned today under the cap (e.g. tasks): the check-in gets 3 of its 5.
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=day, wanted=197, cap=200) == 197
    body = await (await m.post("/mp/checkin")).json()
    assert body["points_awarded"] == 3 and body["capped"] is True
    m2 = await login()
    await antiabuse.reserve_cap(redis=redis, member_id=m2.id, day=day, wanted=200, cap=200)
    r = await m2.post("/mp/checkin")
    assert r.status == 200
    assert await r.json() == {"date": "2026-11-22", "streak": 1, "points_awarded": 0, "balance": 0,
                              "capped": True}
    me = await (await m2.get("/mp/me")).json()
    assert (me["points"], me["growth"], me["streak"]) == (0, 5, 1)
    again = await m2.post("/mp/checkin")
    assert again.status == 409 and (await again.json())["error"]["code"] == "already_checked_in"
    await assert_ledger_consistent()


@pytest.mark.smoke
async def test_a_capped_checkin_keeps_the_streak_growth_and_calendar(client, login, clock, redis):
    """CONTRACT.md: a member whose daily cap is spent still checks in, with 0 points."""
    from app.domain import antiabuse
    from app.models import LedgerEntry

    m = await login()
    clock.travel_to(shanghai(2026, 11, 21, 8))
    assert (await (await m.post("/mp/checkin")).json())["streak"] == 1
    clock.travel_to(shanghai(2026, 11, 22, 8))
    day = shanghai(2026, 11, 22, 8).date()
    await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=day, wanted=200, cap=200)
    capped = await m.post("/mp/checkin")
    assert capped.status == 200
    assert await capped.json() == {"date": "2026-11-22", "streak": 2, "points_awarded": 0, "balance": 5,
                                   "capped": True}
    clock.travel_to(shanghai(2026, 11, 23, 8))
    body = await (await m.post("/mp/checkin")).json()
    assert (body["streak"], body["points_awarded"], body["capped"]) == (3, 5, False)
    me = await (await m.get("/mp/me")).json()
    assert (me["points"], me["growth"], me["streak"]) == (10, 15, 3)
    cal = await (await m.get("/mp/checkin/calendar?month=2026-11")).json()
    assert [(d["date"], d["points"]) for d in cal["days"]] == [
        ("2026-11-21", 5), ("2026-11-22", 0), ("2026-11-23", 5)]
    # the growth of the capped day is on the ledger, under the day's once-only key
    entry = await LedgerEntry.get(idempotency_key=f"checkin:{m.id}:2026-11-22")
    assert (entry.delta, entry.growth_delta, entry.remaining, entry.expires_at) == (0, 5, 0, None)
    assert sum(await LedgerEntry.filter(member_id=m.id).values_list("growth_delta", flat=True)) == 15
    await assert_ledger_consistent()


async def test_capped_checkins_at_once_count_once(client, login, clock, redis):
    from app.domain import antiabuse

    clock.travel_to(shanghai(2026, 11, 22, 8))
    m = await login()
    await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=shanghai(2026, 11, 22, 8).date(),
                                wanted=200, cap=200)
    responses = await asyncio.gather(*[m.post("/mp/checkin") for _ in range(30)])
    assert sorted(r.status for r in responses) == [200] + [409] * 29
    me = await (await m.get("/mp/me")).json()
    assert (me["points"], me["growth"], me["streak"]) == (0, 5, 1)
    await assert_ledger_consistent()


async def test_cap_survives_a_redis_restart(client, login, clock, redis):
    """The cap is rebuilt from the ledger, so losing Redis never doubles it."""
    from app.domain import antiabuse, rules

    await rules.update({"points": {"daily_cap": 7}, "checkin": {"daily_points": 5}}, actor="test")
    clock.travel_to(shanghai(2026, 11, 22, 8))
    m = await login()
    assert (await (await m.post("/mp/checkin")).json())["points_awarded"] == 5
    await redis.flushdb()  # Redis lost everything (sessions too: log in again)
    m = await login(m.data and None or "o-test-1")
    day = shanghai(2026, 11, 22, 8).date()
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=day, wanted=5, cap=7) == 2


@pytest.mark.smoke
async def test_fifty_concurrent_checkins_one_success(client, login, clock):
    clock.travel_to(shanghai(2026, 11, 22, 8))
    m = await login()
    responses = await asyncio.gather(*[m.post("/mp/checkin") for _ in range(50)])
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 49
    me = await (await m.get("/mp/me")).json()
    assert me["points"] == 5 and me["growth"] == 5
    await assert_ledger_consistent()


async def test_many_members_check_in_at_once(client, login, clock):
    clock.travel_to(shanghai(2026, 11, 22, 8))
    members = [await login() for _ in range(30)]
    responses = await asyncio.gather(*[m.post("/mp/checkin") for m in members])
    assert all(r.status == 200 for r in responses)
    await assert_ledger_consistent()


async def test_checkin_requires_login(client):
    r = await client.post("/mp/checkin")
    assert r.status == 401 and (await r.json())["error"]["code"] == "unauthenticated"


async def test_cap_counters_trusted_only_when_redis_predates_today(client, login, clock, redis):
    """A Redis that has counted since before today knows every cap counter of today; one that
    lost its data today reads the floor from the ledger instead."""
    from app.domain import antiabuse, rules

    await rules.update({"points": {"daily_cap": 7}}, actor="test")
    clock.travel_to(shanghai(2026, 11, 22, 8))
    m = await login()
    day = shanghai(2026, 11, 22, 8).date()
    assert (await (await m.post("/mp/checkin")).json())["points_awarded"] == 5
    assert await redis.get(antiabuse.cap_since_key(m.id)) == "2026-11-22"
    await redis.delete(antiabuse.cap_key(m.id, day))
    # Data lost today: the ledger says 5 were earned, so 2 remain.
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=day, wanted=5, cap=7) == 2
    # Tomorrow, with this Redis counting since today, a missing counter is a fresh day.
    tomorrow = shanghai(2026, 11, 23, 8).date()
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=tomorrow, wanted=5, cap=7) == 5
