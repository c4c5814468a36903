"""Programme metrics over a range of business days (GET /admin/metrics), as SQL aggregates.

The range is whole business days of APP_TIMEZONE, `first`..`last` inclusive, at most 366
days; it is turned into the UTC instants [start of `first`, start of the day after `last`).
Every figure is one GROUP BY / SUM query (no per-member Python), the independent queries run
concurrently, and a range's result is kept in Redis for 60 s.

Definitions (counted in the range unless said otherwise):
- new members: members created, per business day (every day of the range listed, zeros too).
- active members: distinct members who checked in, paid, or had any ledger entry.
- check-ins: check-in rows (make-ups included) and the members who checked in; the streak
  distribution buckets each of those members by their longest run of consecutive check-in
  days inside the range: "1".."6" and "7+" (7 is the streak-bonus day of CONTRACT.md).
- tiers: the current tier distribution of all members; upgrade / downgrade rate = distinct
  members with a tier change up / down in the range ÷ members who existed at its end.
- points: issued = positive deltas; expired = debits with reason "expire"; taken back =
  debits with reason "refund"; spent = every other debit (redemptions, make-ups, operator
  deductions); consumption rate = spent ÷ issued.
- coupons: of the coupons issued in the range, how many are used (redemption rate = used ÷
  issued); face value used = amount_fen of "amount" coupons used in the range (discount
  coupons have no fixed face value and count 0).
- orders: payers = members with a payment in the range; repurchase rate = payers with 2+
  payments ÷ payers; net spend = their payer_total_fen − refunds of members' payments
  recorded in the range.
- benefit cost ratio = (coupon face value used + points spent × `fen_per_point`, default 1
  fen) ÷ net spend.
- referrals: invitations made in the range, how many of those invitees have paid, and how
  many were rewarded (a funnel of one cohort).
Rates are rounded to 4 decimals, null when the denominator is 0.
"""
from __future__ import annotations

import asyncio
import json
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from tortoise import connections
from tortoise.transactions import in_transaction

from app.domain.clock import day_start
from app.errors import InvalidField

MAX_DAYS = 366
CACHE_SECONDS = 60
COMPUTE_SECONDS = 30  # the longest a caller waits for another's computation before its own
STREAK_BUCKETS = ("1", "2", "3", "4", "5", "6", "7+")
_CACHE_PREFIX = "metrics:v1"
# For the metrics queries only (SET LOCAL): the 4 MB default work_mem makes the sort of a
# month's ~1.2M active-member ids and the streak sort spill to disk; JIT compiling buys
# nothing on scans this short. Together ~5% off a cold run (bench/metrics.py).
PG_SETTINGS = "SET LOCAL jit = off; SET LOCAL work_mem = '64MB'"


def parse_range(*, first: str | None, last: str | None) -> tuple[date, date]:
    """`from` and `to` as YYYY-MM-DD, from ≤ to, at most 366 days: else 422 naming the field."""
    days = []
    for name, raw in (("from", first), ("to", last)):
        if not raw:
            raise InvalidField(name, "is required (YYYY-MM-DD)")
        try:
            days.append(date.fromisoformat(raw))
        except ValueError:
            raise InvalidField(name, "must be a date YYYY-MM-DD") from None
    if days[0] > days[1]:
        raise InvalidField("from", "must not be after to")
    if (days[1] - days[0]).days + 1 > MAX_DAYS:
        raise InvalidField("to", f"the range is at most {MAX_DAYS} days")
    return days[0], days[1]


class _Sql:
    """Raw SQL with $1..$n placeholders on PostgreSQL, and the same text on SQLite (?1..?n)."""

    def __init__(self, tz: ZoneInfo, start: datetime) -> None:
        self.conn = connections.get("default")
        self.pg = self.conn.capabilities.dialect == "postgres"
        self.tz = tz
        # SQLite has no time zones: it shifts by the offset at the range's start (exact for
        # zones without DST, such as the default Asia/Shanghai).
        offset = start.astimezone(tz).utcoffset() or timedelta(0)
        self.offset_minutes = int(offset.total_seconds() // 60)

    def ts(self, column: str) -> str:
        """A timestamp column comparable with instants: SQLite keeps the offset it was given
        (Tortoise's update() does not convert to UTC), so normalise it there."""
        return column if self.pg else f"datetime({column})"

    def within(self, column: str) -> str:
        """The column inside [$1, $2): the range's start and end instants."""
        return f"{self.ts(column)} >= $1 AND {self.ts(column)} < $2"

    def business_day(self, column: str) -> str:
        if self.pg:
            return f"CAST(({column} AT TIME ZONE '{self.tz.key}') AS date)"
        return f"date({column}, '{self.offset_minutes:+d} minutes')"

    def day_number(self, column: str) -> str:
        """A day as a number, so a run of consecutive days minus its row number is constant."""
        return f"({column} - DATE '2000-01-01')" if self.pg else f"CAST(julianday({column}) AS integer)"

    async def rows(self, sql: str, *params: Any) -> list[dict]:
        if not self.pg:
            sql = re.sub(r"\$(\d+)", r"?\1", sql)
            params = tuple(_sqlite_value(p) for p in params)
            return await self.conn.execute_query_dict(sql, list(params))
        # Each query on a pooled connection of its own (so they run side by side), in a
        # transaction only to scope its settings.
        async with in_transaction() as tx:
            await tx.execute_script(PG_SETTINGS)
            return await tx.execute_query_dict(sql, list(params))

    async def one(self, sql: str, *params: Any) -> dict:
        found = await self.rows(sql, *params)
        return found[0] if found else {}


def _sqlite_value(value: Any) -> Any:
    # Compared with datetime(column): 'YYYY-MM-DD HH:MM:SS' in UTC. Range bounds are whole
    # seconds, so datetime()'s dropping of fractions cannot move a row across one.
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _int(value: Any) -> int:
    return int(value or 0)


async def compute(*, first: date, last: date, tz: ZoneInfo, tier_keys: tuple[str, ...],
                  fen_per_point: int = 1) -> dict:
    """Every metric of the range `first`..`last` (business days of `tz`), fresh from the database.

    `tier_keys` are the tiers in ascending order (rules.tiers.levels), which says whether a
    tier change went up or down.
    """
    start, end = day_start(first, tz), day_start(last + timedelta(days=1), tz)
    sql = _Sql(tz, start)
    s, e = start.astimezone(timezone.utc), end.astimezone(timezone.utc)

    # Tier keys are inlined: rules.TiersRule validates them as ^[a-z][a-z0-9_]{0,15}$.
    rank = " ".join(f"WHEN '{key}' THEN {i}" for i, key in enumerate(tier_keys) if key.isidentifier())
    queries = {
        "new": sql.rows(
            f"SELECT {sql.business_day('created_at')} AS day, COUNT(*) AS n FROM member "
            f"WHERE {sql.within('created_at')} GROUP BY 1", s, e),
        "active": sql.one(
            # COUNT(DISTINCT) over UNION ALL: one in-memory sort of the ids, where UNION
            # makes PostgreSQL dedupe by a spilling sort or a slower hash (660 → 500 ms on a
            # month of 10M ledger entries).
            "SELECT COUNT(DISTINCT member_id) AS n FROM ("
            f" SELECT member_id FROM ledger_entry WHERE {sql.within('created_at')}"
            " UNION ALL SELECT member_id FROM checkin WHERE day >= $3 AND day <= $4"
            f" UNION ALL SELECT member_id FROM payment WHERE {sql.within('paid_at')}"
            " AND member_id IS NOT NULL) AS active", s, e, first, last),
        "streaks": sql.rows(
            "WITH numbered AS ("
            f" SELECT member_id, {sql.day_number('day')}"
            " - ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY day) AS run"
            " FROM checkin WHERE day >= $1 AND day <= $2),"
            " runs AS (SELECT member_id, COUNT(*) AS len FROM numbered GROUP BY member_id, run),"
            " best AS (SELECT member_id, MAX(len) AS longest, SUM(len) AS days FROM runs GROUP BY member_id)"
            " SELECT CASE WHEN longest >= 7 THEN 7 ELSE longest END AS bucket,"
            " COUNT(*) AS members, SUM(days) AS checkins FROM best GROUP BY 1", first, last),
        # One pass over member for both the current tiers and the members at the range's end.
        "tiers": sql.rows(
            f"SELECT tier, COUNT(*) AS n, SUM(CASE WHEN {sql.ts('created_at')} < $1 THEN 1 ELSE 0 END)"
            " AS before_end FROM member GROUP BY tier", e),
        "tier_changes": sql.rows(
            f"SELECT CASE WHEN (CASE to_tier {rank} ELSE -1 END) > (CASE from_tier {rank} ELSE -1 END)"
            " THEN 'up' ELSE 'down' END AS direction, COUNT(DISTINCT member_id) AS n"
            f" FROM tier_change WHERE {sql.within('created_at')} GROUP BY 1", s, e),
        "points": sql.one(
            "SELECT SUM(CASE WHEN delta > 0 THEN delta ELSE 0 END) AS issued,"
            " SUM(CASE WHEN delta < 0 AND reason = 'expire' THEN -delta ELSE 0 END) AS expired,"
            " SUM(CASE WHEN delta < 0 AND reason = 'refund' THEN -delta ELSE 0 END) AS taken_back,"
            " SUM(CASE WHEN delta < 0 AND reason NOT IN ('expire', 'refund') THEN -delta ELSE 0 END) AS spent"
            f" FROM ledger_entry WHERE {sql.within('created_at')}", s, e),
        "coupons": sql.one(
            "SELECT COUNT(*) AS issued, COUNT(used_at) AS used FROM coupon"
            f" WHERE {sql.within('created_at')}", s, e),
        "coupon_value": sql.one(
            "SELECT COUNT(*) AS used, SUM(t.amount_fen) AS fen FROM coupon c"
            " JOIN coupon_template t ON t.id = c.template_id"
            f" WHERE {sql.within('c.used_at')} AND t.kind = 'amount'", s, e),
        "orders": sql.one(
            "SELECT COUNT(*) AS payers, SUM(CASE WHEN orders >= 2 THEN 1 ELSE 0 END) AS repeaters,"
            " SUM(fen) AS fen, SUM(orders) AS orders FROM ("
            " SELECT member_id, COUNT(*) AS orders, SUM(payer_total_fen) AS fen FROM payment"
            f" WHERE {sql.within('paid_at')} AND member_id IS NOT NULL GROUP BY member_id) AS o",
            s, e),
        "refunds": sql.one(
            # A lookup per refund of the range: a join would scan every payment.
            "SELECT SUM(r.refund_fen) AS fen FROM refund r"
            f" WHERE {sql.within('r.created_at')} AND"
            " (SELECT p.member_id FROM payment p WHERE p.id = r.payment_id) IS NOT NULL", s, e),
        "referrals": sql.one(
            "SELECT COUNT(*) AS invited, COUNT(paid_at) AS paid, COUNT(rewarded_at) AS rewarded"
            f" FROM referral WHERE {sql.within('created_at')}", s, e),
    }
    done = dict(zip(queries, await asyncio.gather(*queries.values())))

    per_day = {_as_date(row["day"]): _int(row["n"]) for row in done["new"]}
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    new_members = [{"date": d.isoformat(), "count": per_day.get(d, 0)} for d in days]
    members = sum(_int(row["before_end"]) for row in done["tiers"])

    streaks = {bucket: 0 for bucket in STREAK_BUCKETS}
    checkins = checkin_members = 0
    for row in done["streaks"]:
        streaks[STREAK_BUCKETS[_int(row["bucket"]) - 1]] += _int(row["members"])
        checkin_members += _int(row["members"])
        checkins += _int(row["checkins"])

    distribution = {key: 0 for key in tier_keys}
    for row in done["tiers"]:
        distribution[row["tier"]] = distribution.get(row["tier"], 0) + _int(row["n"])
    moves = {row["direction"]: _int(row["n"]) for row in done["tier_changes"]}

    pts = {k: _int(done["points"].get(k)) for k in ("issued", "spent", "expired", "taken_back")}
    issued, used = _int(done["coupons"].get("issued")), _int(done["coupons"].get("used"))
    face_used = _int(done["coupon_value"].get("fen"))
    orders = done["orders"]
    payers, repeat = _int(orders.get("payers")), _int(orders.get("repeaters"))
    spend, refunds = _int(orders.get("fen")), _int(done["refunds"].get("fen"))
    net = spend - refunds
    points_fen = pts["spent"] * fen_per_point
    ref = done["referrals"]

    return {
        "from": first.isoformat(), "to": last.isoformat(), "timezone": tz.key,
        "members": {"total": members, "new": sum(d["count"] for d in new_members),
                    "active": _int(done["active"].get("n"))},
        "new_members": new_members,
        "checkins": {"count": checkins, "members": checkin_members, "streaks": streaks},
        "tiers": {"distribution": distribution, "upgraded": moves.get("up", 0),
                  "downgraded": moves.get("down", 0),
                  "upgrade_rate": _rate(moves.get("up", 0), members),
                  "downgrade_rate": _rate(moves.get("down", 0), members)},
        "points": {**pts, "consumption_rate": _rate(pts["spent"], pts["issued"])},
        "coupons": {"issued": issued, "used": used, "redemption_rate": _rate(used, issued),
                    "face_value_used_fen": face_used},
        "orders": {"payers": payers, "repeat_payers": repeat, "orders": _int(orders.get("orders")),
                   "repurchase_rate": _rate(repeat, payers), "spend_fen": spend,
                   "refunds_fen": refunds, "net_spend_fen": net},
        "benefit": {"coupon_fen": face_used, "points_fen": points_fen, "fen_per_point": fen_per_point,
                    "cost_fen": face_used + points_fen,
                    "cost_ratio": _rate(face_used + points_fen, net) if net > 0 else None},
        "referrals": {"invited": _int(ref.get("invited")), "paid": _int(ref.get("paid")),
                      "rewarded": _int(ref.get("rewarded"))},
    }


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def cache_key(*, first: date, last: date, fen_per_point: int) -> str:
    return f"{_CACHE_PREFIX}:{first.isoformat()}:{last.isoformat()}:{fen_per_point}"


async def cached(*, redis: Redis, first: date, last: date, tz: ZoneInfo, tier_keys: tuple[str, ...],
                 fen_per_point: int = 1, now: datetime) -> dict:
    """`compute`, served from Redis for 60 s per (range, fen_per_point); `generated_at` says when.

    On a miss one caller computes (a short Redis lock) while the others wait for its result,
    so operators refreshing together cost the database one run, not one each.
    """
    key = cache_key(first=first, last=last, fen_per_point=fen_per_point)
    hit = await redis.get(key)
    if hit is None and not await redis.set(f"{key}:lock", "1", nx=True, ex=COMPUTE_SECONDS):
        for _ in range(int(COMPUTE_SECONDS / 0.05)):
            await asyncio.sleep(0.05)
            hit = await redis.get(key)
            if hit is not None:
                break
    if hit is not None:
        return json.loads(hit)
    try:
        result = await compute(first=first, last=last, tz=tz, tier_keys=tier_keys,
                               fen_per_point=fen_per_point)
        result["generated_at"] = now.astimezone(tz).isoformat()
        await redis.set(key, json.dumps(result), ex=CACHE_SECONDS)
    finally:
        await redis.delete(f"{key}:lock")
    return result
