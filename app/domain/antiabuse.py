"""Risk control (seed 004: points inflation, bulk registration): daily caps and rate limits.

Counters live in Redis and are updated atomically by Lua scripts; the daily cap is also
recorded in the ledger (`LedgerEntry.capped_on`), so a Redis restart rebuilds it, never doubles
it: empty, or restored from an older snapshot (each counter is tied to the Redis run_id that
wrote it, and one from another run counts as max(counter, ledger)).
"""
from __future__ import annotations

from datetime import date, timedelta

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from tortoise.functions import Sum

from app import metrics
from app.errors import RateLimited
from app.models import Blacklist, LedgerEntry

# KEYS[1] the counter (a hash: v = points reserved, run = run_id of the Redis that counted
# them), KEYS[2] the day this Redis started counting the counter's shard (cap:since), KEYS[3] the
# run_id of the Redis that set it (cap:run), all three in one slot;
# ARGV: wanted, cap, floor from the ledger ("" if not read yet), ttl, today.
# Every restart of Redis gets a new run_id, and a counter is trusted only if this very instance
# wrote it: one restored from an older snapshot (RDB or AOF) may be behind what was earned since.
# A counter this instance did not write means "nothing earned yet today" only when it is missing
# and this instance has been counting since before today; otherwise the script returns -1, the
# caller reads the floor from the ledger, and the counter becomes max(old counter, ledger).
# With KEYS[4] (a claim, ARGV[6] its ttl) the reservation is also a claim on one award: a
# second caller holding the same claim key gets -2 and touches no counter, so concurrent
# duplicates of one check-in never spend the cap of the one that wins.
# Returns the points granted (0..wanted).
_RESERVE_CAP = """
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then return -2 end
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local kind = redis.call('TYPE', KEYS[1]).ok
local v, r = nil, nil
if kind == 'hash' then
  v, r = redis.call('HGET', KEYS[1], 'v'), redis.call('HGET', KEYS[1], 'run')
elseif kind == 'string' then
  v = redis.call('GET', KEYS[1])  -- a counter of the old form: a floor, not the truth
  redis.call('DEL', KEYS[1])
end
if r ~= run then
  local since, since_run = redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3])
  if not v and since_run == run and since and since < ARGV[5] then
    v = 0
  elseif ARGV[3] == '' then
    return -1
  else
    v = math.max(tonumber(v or 0), tonumber(ARGV[3]))
    if since_run ~= run then
      redis.call('SET', KEYS[2], ARGV[5])
      redis.call('SET', KEYS[3], run)
    end
  end
  redis.call('HSET', KEYS[1], 'v', v, 'run', run)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
if KEYS[4] then redis.call('SET', KEYS[4], '1', 'EX', ARGV[6]) end
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - tonumber(v))
if grant <= 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'v', grant)
return grant
"""

# Gives back a reservation (and drops its claim, KEYS[2]); a counter of the old form (or none)
# is left to be rebuilt.
_RELEASE_CAP = """
if KEYS[2] then redis.call('DEL', KEYS[2]) end
if ARGV[1] == '0' then return 0 end
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  redis.call('HINCRBY', KEYS[1], 'v', -tonumber(ARGV[1]))
end
return 0
"""

# Fixed-window counter: INCR, set the window on first hit, return count and ttl.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""

CAP_TTL = 2 * 86400
# The business day from which this Redis holds every cap counter, and the run_id of the Redis
# that set it. Redis must not evict keys (maxmemory-policy noeviction), or a lost counter would
# reopen a member's cap. On a Redis Cluster each node has its own run_id and loses or restores
# its own slots, so both markers are kept per shard, in the slot of the counters they vouch for:
# a member's counter and its shard's markers share a hash tag, and the script touches one slot.
CAP_SHARDS = 1024


def cap_shard(member_id: int) -> str:
    """The hash tag of a member's cap counters and of the markers that vouch for them."""
    return "{cap:%d}" % (member_id % CAP_SHARDS)


def cap_since_key(member_id: int) -> str:
    return f"cap:since:{cap_shard(member_id)}"


def cap_run_key(member_id: int) -> str:
    return f"cap:run:{cap_shard(member_id)}"


# Scripts run by EVALSHA (the server loads them again by itself after a restart); the
# client is given per call, so these objects are shared by every Redis client.
_reserve_cap = AsyncScript(None, _RESERVE_CAP.encode())
_release_cap = AsyncScript(None, _RELEASE_CAP.encode())
_hit = AsyncScript(None, _HIT.encode())


def claim_key(member_id: int, name: str) -> str:
    """The claim of one award of the member (`reserve_cap(claim=...)`), in its cap counter's slot."""
    return f"claim:{cap_shard(member_id)}:{name}"


def cap_key(member_id: int, day: date) -> str:
    return f"cap:{cap_shard(member_id)}:{member_id}:{day.isoformat()}"


# How long a claim of `reserve_cap` outlives its holder: far longer than a request may take
# (DB_STATEMENT_TIMEOUT), short enough that a claim whose release was lost blocks nothing long.
CLAIM_TTL = 60


class Claimed(Exception):
    """Another request holds the claim of this award right now (`reserve_cap(claim=...)`)."""


async def reserve_cap(*, redis: Redis, member_id: int, day: date, wanted: int, cap: int,
                      claim: str | None = None, floor: int | None = None) -> int:
    """Reserve up to `wanted` of the member's daily cap (200 non-purchase points a day).

    Returns what was granted, possibly less than wanted (a partial award) or 0. With `claim`
    (a key naming the award) the same call also claims it for CLAIM_TTL seconds: a concurrent
    holder of the claim raises Claimed before any counter moves (`release_cap` drops it).
    `floor`: `capped_total` when the caller read it already (else read here when needed).
    """
    if wanted <= 0 and claim is None:
        return 0
    keys = (cap_key(member_id, day), cap_since_key(member_id), cap_run_key(member_id)) + ((claim,) if claim else ())
    today = day.isoformat()
    first = "" if floor is None else floor
    granted = int(await _reserve_cap(keys=keys, args=(wanted, cap, first, CAP_TTL, today, CLAIM_TTL),
                                     client=redis))
    if granted == -1:
        floor = await capped_total(member_id=member_id, day=day)
        granted = int(await _reserve_cap(keys=keys, args=(wanted, cap, floor, CAP_TTL, today, CLAIM_TTL),
                                         client=redis))
    if granted == -2:
        raise Claimed(claim)
    if granted < wanted:
        metrics.CAP_HITS.inc()
    return granted


async def release_cap(*, redis: Redis, member_id: int, day: date, amount: int,
                      claim: str | None = None) -> None:
    """Give back a reservation whose award did not happen (duplicate, rollback), and its claim."""
    if amount > 0 or claim:
        keys = (cap_key(member_id, day),) + ((claim,) if claim else ())
        await _release_cap(keys=keys, args=(max(0, amount),), client=redis)


async def capped_total(*, member_id: int, day: date) -> int:
    """What the ledger says the member earned under the cap on that day."""
    row = await LedgerEntry.filter(member_id=member_id, capped_on=day, delta__gt=0) \
        .annotate(total=Sum("delta")).values_list("total", flat=True)
    return int(row[0] or 0) if row else 0


# The weekly cap of task points (CONTRACT.md "tasks": 200 a Monday-to-Sunday business week),
# counted by the same script: a counter per member and week tied to the Redis run that wrote
# it, its own `since` (the Monday from which this Redis holds every weekly counter) and `run`,
# rebuilt from the ledger when lost or restored from an older snapshot.
WEEK_CAP_TTL = 9 * 86400
# The ledger reasons counted under the weekly cap: task points (tasks.py) and share claims (share.py).
WEEKLY_REASONS = ("task", "share")


def week_of(day: date) -> date:
    """The Monday of the business week `day` belongs to."""
    return day - timedelta(days=day.weekday())


def _week_keys(member_id: int, monday: date) -> tuple[str, str, str]:
    """The member's counter for the week and its shard's markers, in the daily cap's slot."""
    shard = cap_shard(member_id)
    return (f"wcap:{shard}:{member_id}:{monday.isoformat()}", f"wcap:since:{shard}", f"wcap:run:{shard}")


async def reserve_weekly_cap(*, redis: Redis, member_id: int, day: date, wanted: int, cap: int) -> int:
    """Reserve up to `wanted` of the member's weekly task cap (200 task points a business week,
    Monday to Sunday) for business day `day`; returns what was granted (0..wanted)."""
    if wanted <= 0:
        return 0
    monday = week_of(day)
    keys = _week_keys(member_id, monday)
    args = (wanted, cap, "", WEEK_CAP_TTL, monday.isoformat())
    granted = int(await _reserve_cap(keys=keys, args=args, client=redis))
    if granted == -1:
        floor = await weekly_total(member_id=member_id, day=day)
        args = (wanted, cap, floor, WEEK_CAP_TTL, monday.isoformat())
        granted = int(await _reserve_cap(keys=keys, args=args, client=redis))
    if granted < wanted:
        metrics.CAP_HITS.inc()
    return granted


async def release_weekly_cap(*, redis: Redis, member_id: int, day: date, amount: int) -> None:
    """Give back a weekly reservation whose award did not happen."""
    if amount > 0:
        await _release_cap(keys=_week_keys(member_id, week_of(day))[:1], args=(amount,), client=redis)


async def weekly_total(*, member_id: int, day: date) -> int:
    """What the ledger says the member earned in task points in the business week of `day`."""
    monday = week_of(day)
    row = await LedgerEntry.filter(member_id=member_id, capped_on__gte=monday,
                                   capped_on__lte=monday + timedelta(days=6), delta__gt=0,
                                   reason__in=WEEKLY_REASONS) \
        .annotate(total=Sum("delta")).values_list("total", flat=True)
    return int(row[0] or 0) if row else 0


async def hit(*, redis: Redis, name: str, subject: str, limit: int, window: int,
              code: str = "rate_limited", message: str | None = None) -> None:
    """Count one attempt in a fixed window; over `limit`: 429 with Retry-After."""
    if not subject:
        return
    count, ttl = await _hit(keys=(f"rl:{name}:{subject}",), args=(window,), client=redis)
    if int(count) > limit:
        raise RateLimited(message or f"too many {name} attempts, try again later",
                          retry_after=int(ttl) if int(ttl) > 0 else window, code=code)


def queue_hit(pipe, *, name: str, subject: str, window: int) -> bool:
    """`hit`'s counting queued on a pipeline (EVAL: no SCRIPT EXISTS round trip before it), for a
    caller that sends it with other commands; `check_hit` reads its result. False: nothing queued."""
    if not subject:
        return False
    pipe.eval(_HIT, 1, f"rl:{name}:{subject}", window)
    return True


def check_hit(result, *, name: str, limit: int, window: int, code: str = "rate_limited",
              message: str | None = None) -> None:
    """The 429 of `hit` for a result of `queue_hit`."""
    count, ttl = result
    if int(count) > limit:
        raise RateLimited(message or f"too many {name} attempts, try again later",
                          retry_after=int(ttl) if int(ttl) > 0 else window, code=code)


async def is_blacklisted(*, member_id: int | None = None, device_id: str | None = None) -> bool:
    """A blacklisted member or device earns nothing, gets no referral reward and cannot log in."""
    pairs = []
    if member_id is not None:
        pairs.append(("member", str(member_id)))
    if device_id:
        pairs.append(("device", device_id))
    for kind, value in pairs:
        if await Blacklist.filter(kind=kind, value=value).exists():
            return True
    return False
