"""Programme metrics over a range of business days (GET /admin/metrics), as SQL aggregates.

The range is whole business days of APP_TIMEZONE, `first`..`last` inclusive, at most 366
days; it is turned into the UTC instants [start of `first`, start of the day after `last`).
Figures over members' activity (active members, check-ins and streaks, points, orders and
repeat payers, new members) are combined from per-day figures, each day one set of SQL
aggregates pre-computed and kept exact in `metrics_day` (app/domain/metrics_days.py); the
others are one GROUP BY / SUM query each over the range. The queries run concurrently, and
a range's result is kept in Redis for 60 s.

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
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from pyroaring import BitMap
from redis.asyncio import Redis

from app.domain import metrics_days
from app.domain.clock import day_start
from app.errors import InvalidField

MAX_DAYS = 366
CACHE_SECONDS = 60
COMPUTE_SECONDS = 30  # the longest a caller waits for another's computation before its own
STREAK_BUCKETS = ("1", "2", "3", "4", "5", "6", "7+")
_CACHE_PREFIX = "metrics:v1"


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


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _int(value: Any) -> int:
    return int(value or 0)


class Fold:
    """A range's per-day figures folded in day order, holding a few bitmaps, not one per day.

    Streaks: runs[k] holds the members checked in on each of the k+1 days ending with the
    last day added, so runs[k] of a new day is runs[k-1] of the day before AND that day's
    check-ins; the members with a run of k+1 days or more somewhere in the range are the union
    of runs[k] over the days (at_least[k]). Repeat payers: paid twice on one day, or on a day
    after one they had already paid on."""

    def __init__(self) -> None:
        self.new_members: list[dict] = []  # per day: {"date", "count"}
        self.sums = dict.fromkeys(metrics_days.DayFigures.SUMS, 0)
        self.active, self.checked, self.payers, self.twice = BitMap(), BitMap(), BitMap(), BitMap()
        self.checkins = 0
        self.runs = [BitMap() for _ in STREAK_BUCKETS]
        self.at_least = [BitMap() for _ in STREAK_BUCKETS]

    def add(self, day: metrics_days.DayFigures) -> None:
        today = day.checked_in
        self.runs = [today] + [before & today for before in self.runs[:-1]]
        for seen, run in zip(self.at_least, self.runs):
            seen |= run  # in place: each at_least[k] is a bitmap of its own
        self.checkins += len(today)
        self.checked |= today
        self.active |= day.active
        self.twice |= day.repeat_payers | (self.payers & day.payers)
        self.payers |= day.payers
        self.new_members.append({"date": day.day.isoformat(), "count": day.new_members})
        for name in self.sums:
            self.sums[name] += getattr(day, name)

    def streaks(self) -> dict[str, int]:
        """Members by their longest run of consecutive check-in days: "1".."6", "7+"."""
        counts = [len(bits) for bits in self.at_least] + [0]
        buckets = {bucket: counts[i] - counts[i + 1] for i, bucket in enumerate(STREAK_BUCKETS[:-1])}
        buckets[STREAK_BUCKETS[-1]] = counts[len(STREAK_BUCKETS) - 1]
        return buckets


async def fold(days) -> Fold:
    folded = Fold()
    async for day in days:
        folded.add(day)
    return folded


async def compute(*, first: date, last: date, tz: ZoneInfo, tier_keys: tuple[str, ...],
                  fen_per_point: int = 1, now: datetime, reads: Any = None) -> dict:
    """Every metric of the range `first`..`last` (business days of `tz`), as of `now`.

    `tier_keys` are the tiers in ascending order (rules.tiers.levels), which says whether a
    tier change went up or down. Per-day figures come from app/domain/metrics_days.py; the
    rest are aggregates over the range's rows, read from `reads` (the replica) if given.
    """
    start, end = day_start(first, tz), day_start(last + timedelta(days=1), tz)
    sql = metrics_days.RangeSql(tz, reads=reads)
    s, e = start.astimezone(timezone.utc), end.astimezone(timezone.utc)

    # Tier keys are inlined: rules.TiersRule validates them as ^[a-z][a-z0-9_]{0,15}$.
    rank = " ".join(f"WHEN '{key}' THEN {i}" for i, key in enumerate(tier_keys) if key.isidentifier())
    queries = {
        "days": fold(metrics_days.figures(first=first, last=last, tz=tz, now=now, reads=reads)),
        # The current tiers (an index-only count), and the members created after the range.
        "tiers": sql.rows("SELECT tier, COUNT(*) AS n FROM member GROUP BY tier"),
        "later": sql.one(f"SELECT COUNT(*) AS n FROM member WHERE {sql.ts('created_at')} >= $1", e),
        "tier_changes": sql.rows(
            f"SELECT CASE WHEN (CASE to_tier {rank} ELSE -1 END) > (CASE from_tier {rank} ELSE -1 END)"
            " THEN 'up' ELSE 'down' END AS direction, COUNT(DISTINCT member_id) AS n"
            f" FROM tier_change WHERE {sql.within('created_at')} GROUP BY 1", s, e),
        "coupons": sql.one(
            "SELECT COUNT(*) AS issued, COUNT(used_at) AS used FROM coupon"
            f" WHERE {sql.within('created_at')}", s, e),
        "coupon_value": sql.one(
            "SELECT COUNT(*) AS used, SUM(t.amount_fen) AS fen FROM coupon c"
            " JOIN coupon_template t ON t.id = c.template_id"
            f" WHERE {sql.within('c.used_at')} AND t.kind = 'amount'", s, e),
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
    days: Fold = done["days"]

    new_members = days.new_members
    everyone = sum(_int(row["n"]) for row in done["tiers"])
    members = everyone - _int(done["later"].get("n"))

    distribution = {key: 0 for key in tier_keys}
    for row in done["tiers"]:
        distribution[row["tier"]] = distribution.get(row["tier"], 0) + _int(row["n"])
    moves = {row["direction"]: _int(row["n"]) for row in done["tier_changes"]}

    pts = {k: days.sums[k] for k in ("issued", "spent", "expired", "taken_back")}
    issued, used = _int(done["coupons"].get("issued")), _int(done["coupons"].get("used"))
    face_used = _int(done["coupon_value"].get("fen"))
    payers, repeat = len(days.payers), len(days.twice)
    spend, refunds = days.sums["spend_fen"], _int(done["refunds"].get("fen"))
    net = spend - refunds
    points_fen = pts["spent"] * fen_per_point
    ref = done["referrals"]

    return {
        "from": first.isoformat(), "to": last.isoformat(), "timezone": tz.key,
        "members": {"total": members, "new": sum(d["count"] for d in new_members),
                    "active": len(days.active)},
        "new_members": new_members,
        "checkins": {"count": days.checkins, "members": len(days.checked),
                     "streaks": days.streaks()},
        "tiers": {"distribution": distribution, "upgraded": moves.get("up", 0),
                  "downgraded": moves.get("down", 0),
                  "upgrade_rate": _rate(moves.get("up", 0), members),
                  "downgrade_rate": _rate(moves.get("down", 0), members)},
        "points": {**pts, "consumption_rate": _rate(pts["spent"], pts["issued"])},
        "coupons": {"issued": issued, "used": used, "redemption_rate": _rate(used, issued),
                    "face_value_used_fen": face_used},
        "orders": {"payers": payers, "repeat_payers": repeat, "orders": days.sums["orders"],
                   "repurchase_rate": _rate(repeat, payers), "spend_fen": spend,
                   "refunds_fen": refunds, "net_spend_fen": net},
        "benefit": {"coupon_fen": face_used, "points_fen": points_fen, "fen_per_point": fen_per_point,
                    "cost_fen": face_used + points_fen,
                    "cost_ratio": _rate(face_used + points_fen, net) if net > 0 else None},
        "referrals": {"invited": _int(ref.get("invited")), "paid": _int(ref.get("paid")),
                      "rewarded": _int(ref.get("rewarded"))},
    }


def cache_key(*, first: date, last: date, fen_per_point: int) -> str:
    return f"{_CACHE_PREFIX}:{first.isoformat()}:{last.isoformat()}:{fen_per_point}"


async def cached(*, redis: Redis, first: date, last: date, tz: ZoneInfo, tier_keys: tuple[str, ...],
                 fen_per_point: int = 1, now: datetime, reads: Any = None) -> dict:
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
                               fen_per_point=fen_per_point, now=now, reads=reads)
        result["generated_at"] = now.astimezone(tz).isoformat()
        await redis.set(key, json.dumps(result), ex=CACHE_SECONDS)
    finally:
        await redis.delete(f"{key}:lock")
    return result
