"""The daily cap's Redis keys on one server and on a Redis Cluster: a member's counter and the
markers that vouch for it share a hash tag (one slot, so the script runs on a cluster), and a
counter another Redis instance wrote (an older snapshot) is never trusted over the ledger."""
from __future__ import annotations

import pytest
from redis.crc import key_slot

from app.domain import antiabuse, rules
from tests.conftest import shanghai

DAY = shanghai(2026, 11, 22, 8).date()


@pytest.mark.smoke
def test_a_members_counter_and_its_markers_are_in_one_slot_and_members_spread():
    slots = set()
    for member_id in (1, 2, 1023, 1024, 1025, 987_654_321):
        keys = (antiabuse.cap_key(member_id, DAY), antiabuse.cap_since_key(member_id),
                antiabuse.cap_run_key(member_id))
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
        slots.add(key_slot(keys[0].encode()))
    assert len({key_slot(antiabuse.cap_key(m, DAY).encode()) for m in range(antiabuse.CAP_SHARDS)}) > 900
    assert len(slots) == 5  # 1 and 1025 share a shard


async def test_a_counter_from_another_redis_run_counts_as_at_least_the_ledger(client, login, clock, redis):
    await rules.update({"points": {"daily_cap": 7}}, actor="test")
    clock.travel_to(shanghai(2026, 11, 22, 8))
    m = await login()
    assert (await (await m.post("/mp/checkin")).json())["points_awarded"] == 5
    assert await redis.get(antiabuse.cap_run_key(m.id))  # this shard is vouched for by this run
    # As if restored from a snapshot taken before the check-in, by another instance: 0 counted.
    await redis.hset(antiabuse.cap_key(m.id, DAY), mapping={"v": 0, "run": "0" * 40})
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=DAY, wanted=5, cap=7) == 2
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=DAY, wanted=5, cap=7) == 0
    # The shard's markers from another instance: a missing counter is not "nothing earned".
    await redis.set(antiabuse.cap_run_key(m.id), "0" * 40)
    await redis.delete(antiabuse.cap_key(m.id, DAY))
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=DAY, wanted=5, cap=7) == 2
