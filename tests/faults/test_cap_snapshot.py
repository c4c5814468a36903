"""The daily cap across Redis restarts: empty, and from an older snapshot (RDB)."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from redis.asyncio import Redis
from tortoise.transactions import in_transaction

from app.domain import antiabuse, points
from app.models import Member
from tests.conftest import assert_ledger_consistent

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)
CAP = 200


async def _earn(redis: Redis, member: Member, day: date, wanted: int, key: str) -> int:
    """Reserve under the cap and credit what was granted (as check-in, tasks and referral do)."""
    granted = await antiabuse.reserve_cap(redis=redis, member_id=member.id, day=day, wanted=wanted, cap=CAP)
    if granted:
        async with in_transaction() as conn:
            await points.credit(conn=conn, member_id=member.id, amount=granted, reason="task", key=key,
                                now=NOW, expiry_months=12, capped_on=day)
    return granted


@pytest.mark.parametrize("snapshot_day", ["yesterday", "earlier today"])
async def test_a_redis_restored_from_an_older_snapshot_does_not_reopen_the_cap(db, private_redis, snapshot_day):
    yesterday, today = date(2026, 11, 22), date(2026, 11, 23)
    member = await Member.create(appid="wx", openid="o-snap", invite_code="SNAP0001")
    redis = Redis.from_url(private_redis.url, decode_responses=True)
    try:
        assert await _earn(redis, member, yesterday, 50, "task:y") == 50
        if snapshot_day == "earlier today":
            assert await _earn(redis, member, today, 120, "task:t1") == 120
        old = await private_redis.snapshot("older.rdb")
        assert await _earn(redis, member, today, CAP, "task:t2") == CAP - (120 if snapshot_day != "yesterday" else 0)
        assert await _earn(redis, member, today, 10, "task:t3") == 0  # the day's 200 are earned
    finally:
        await redis.aclose()

    # Redis dies and comes back from the older dump: today's counter is missing or behind.
    await private_redis.kill()
    private_redis.restore(old)
    await private_redis.start()
    redis = Redis.from_url(private_redis.url, decode_responses=True)
    try:
        assert await _earn(redis, member, today, CAP, "task:t4") == 0
        # Tomorrow is a fresh day for this Redis, which has been counting since today.
        assert await _earn(redis, member, date(2026, 11, 24), 30, "task:n1") == 30
    finally:
        await redis.aclose()
    await member.refresh_from_db()
    assert member.points == 50 + CAP + 30
    await assert_ledger_consistent()


async def test_a_redis_restarted_empty_rebuilds_the_cap_from_the_ledger(db, private_redis):
    today = date(2026, 11, 23)
    member = await Member.create(appid="wx", openid="o-empty", invite_code="EMPT0001")
    redis = Redis.from_url(private_redis.url, decode_responses=True)
    try:
        assert await _earn(redis, member, today, 150, "task:1") == 150
    finally:
        await redis.aclose()
    await private_redis.kill()
    private_redis.restore(None)
    await private_redis.start()
    redis = Redis.from_url(private_redis.url, decode_responses=True)
    try:
        assert await _earn(redis, member, today, 100, "task:2") == 50
        assert await _earn(redis, member, today, 1, "task:3") == 0
    finally:
        await redis.aclose()
