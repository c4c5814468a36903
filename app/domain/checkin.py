"""Daily check-in (签到) and make-up check-in (补签) on the business day of APP_TIMEZONE.

Out of the box: 5 points a day, the 7th consecutive day 20 more and the streak starts over;
at most 2 make-ups a calendar month, for a missed day in the last 7, costing 10 points.
"""
from __future__ import annotations

import calendar
import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from redis.asyncio import Redis
from tortoise import timezone
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from app import metrics
from app.db import asyncpg_client
from app.domain import antiabuse, card, points, tiers
from app.domain.clock import add_months
from app.domain.clock import business_day
from app.domain.rules import Rules
from app.errors import Conflict, Forbidden, InvalidField, NotFound, RateLimited
from app.models import Checkin, LedgerEntry, Member


@dataclass(frozen=True)
class CheckinResult:
    day: date
    streak: int
    points_awarded: int
    balance: int
    capped: bool


def next_streak(*, last: date | None, streak: int, today: date, cycle: int) -> int:
    """Yesterday continues the streak; a completed cycle (day 7) or a gap starts it over at 1."""
    if last == today - timedelta(days=1) and 0 < streak < cycle:
        return streak + 1
    return 1


# The PostgreSQL hot path (STYLE.md, "When the ORM is too slow"): what `check_in` needs of
# the member, in one prepared read...
# The day's capped earnings come with it (antiabuse.capped_total, by the (member, capped_on)
# index): a cap counter Redis cannot vouch for (a new or restored Redis) needs no second trip.
_READ_MEMBER = (
    "SELECT blacklisted, last_checkin, streak, growth, tier, "
    "(SELECT COALESCE(sum(delta), 0) FROM ledger_entry "
    "WHERE member_id = $1 AND capped_on = $2 AND delta > 0) AS capped "
    "FROM member WHERE id = $1")

# ...and the whole check-in as ONE autocommitted statement: the check-in row (its unique
# (member, day) makes a duplicate insert nothing, so nothing else happens), the ledger entry
# under `checkin:{member}:{date}` (its remaining pays a debt first, as points.credit does), the
# balance, growth and streak UPDATE (the member's row lock, as in points.credit) and, for a card
# holder, the card push in the outbox (card.enqueue's row), RETURNING what the answer needs.
# $1 member, $2 day, $3 points granted, $4 created_at, $5 growth, $6 streak, $7 key,
# $8 expires_at, $9 note, $10 card payload.
_CHECK_IN = (
    "WITH c AS (INSERT INTO checkin (member_id, day, makeup, points, created_at) "
    "VALUES ($1, $2, false, $3, $4) ON CONFLICT (member_id, day) DO NOTHING RETURNING id), "
    "m AS (UPDATE member SET points = points + $3, growth = growth + $5, streak = $6, last_checkin = $2 "
    "WHERE id = $1 AND EXISTS (SELECT 1 FROM c) RETURNING points, growth, tier, card_code), "
    "e AS (INSERT INTO ledger_entry (member_id, delta, growth_delta, reason, idempotency_key, remaining, "
    "expires_at, capped_on, note, created_at) "
    "SELECT $1, $3, $5, 'checkin', $7, GREATEST(0, LEAST($3::bigint, m.points)), "
    "CASE WHEN $3 > 0 THEN $8::timestamptz END, $2, $9, $4 FROM m RETURNING id), "
    "o AS (INSERT INTO outbox_message (\"key\", channel, kind, member_id, payload, status, attempts, "
    "next_attempt_at, created_at) "
    "SELECT 'card:' || e.id, 'card', 'bonus', $1, $10::jsonb, 'pending', 0, $4, $4 "
    "FROM e, m WHERE m.card_code IS NOT NULL) "
    "SELECT m.points, m.growth, m.tier FROM m, e"
)

_ISSUED = metrics.POINTS_ISSUED.labels(reason="checkin")
# Tests set it to False to run the ORM path (SQLite's) on PostgreSQL: the same rules, both ways.
use_sql = True


async def check_in(*, redis: Redis, rules: Rules, member_id: int, now: datetime, tz: ZoneInfo) -> CheckinResult:
    """Check in once per business day (409 already_checked_in). The points come under the daily
    cap of 200; a member whose cap is spent still checks in (streak, growth, calendar) with 0
    points and `capped` true."""
    client = asyncpg_client() if use_sql else None
    if client is None:
        return await _check_in_orm(redis=redis, rules=rules, member_id=member_id, now=now, tz=tz)
    today = business_day(now, tz)
    async with client.acquire_connection() as con:
        member = await con.fetchrow(_READ_MEMBER, member_id, today)
    if member is None:
        raise NotFound("member not found", code="member_not_found")
    if member["blacklisted"]:
        raise Forbidden("this member cannot earn points", code="blacklisted")
    if member["last_checkin"] == today:
        raise Conflict("already checked in today", code="already_checked_in")
    rule = rules.checkin
    growth = rules.growth.per_checkin
    if rules.tier_for_growth(int(member["growth"]) + growth).key != member["tier"]:
        # A tier move (rare: a floor crossed) takes the ORM path, its tier change in the same
        # transaction as the growth that earns it.
        return await _check_in_orm(redis=redis, rules=rules, member_id=member_id, now=now, tz=tz)
    streak = next_streak(last=member["last_checkin"], streak=member["streak"], today=today, cycle=rule.streak_days)
    wanted = rule.daily_points + (rule.streak_bonus if streak == rule.streak_days else 0)
    key = f"checkin:{member_id}:{today.isoformat()}"
    # The claim orders concurrent duplicates before the cap: only one of them reserves it.
    claim = antiabuse.claim_key(member_id, key)
    try:
        granted = await antiabuse.reserve_cap(redis=redis, member_id=member_id, day=today, wanted=wanted,
                                              cap=rules.points.daily_cap, claim=claim, floor=int(member["capped"]))
    except antiabuse.Claimed:
        raise Conflict("already checked in today", code="already_checked_in") from None
    payload = json.dumps({"add_bonus": granted, "record_bonus": card.record_text("checkin")},
                         ensure_ascii=False, separators=(",", ":"))
    try:
        row = await _record(client, member_id, today, granted, timezone.now(), growth, streak, key,
                            add_months(now, rules.points.expiry_months), "capped" if granted < wanted else "",
                            payload)
    except asyncpg.UniqueViolationError:
        row = None
    except BaseException:
        await antiabuse.release_cap(redis=redis, member_id=member_id, day=today, amount=granted, claim=claim)
        raise
    if row is None:
        await antiabuse.release_cap(redis=redis, member_id=member_id, day=today, amount=granted, claim=claim)
        raise Conflict("already checked in today", code="already_checked_in")
    _ISSUED.inc(granted)
    if rules.tier_for_growth(int(row["growth"])).key != row["tier"]:
        # Growth that moved meanwhile (a payment between the read and the write) crossed a floor.
        async with in_transaction() as conn:
            await tiers.follow_growth(conn=conn, member_id=member_id, rules=rules, cause="checkin", now=now)
    return CheckinResult(day=today, streak=streak, points_awarded=granted, balance=int(row["points"]),
                         capped=granted < wanted)


async def _record(client, *args):
    """Run _CHECK_IN: the row of the new check-in, or None when the day was checked in already."""
    async with client.acquire_connection() as con:
        return await con.fetchrow(_CHECK_IN, *args)


async def _check_in_orm(*, redis: Redis, rules: Rules, member_id: int, now: datetime,
                        tz: ZoneInfo) -> CheckinResult:
    """`check_in` through the ORM in one transaction (SQLite, and a check-in that moves a tier)."""
    today = business_day(now, tz)
    member = await Member.get_or_none(id=member_id)
    if member is None:
        raise NotFound("member not found", code="member_not_found")
    if member.blacklisted:
        raise Forbidden("this member cannot earn points", code="blacklisted")
    if member.last_checkin == today:
        raise Conflict("already checked in today", code="already_checked_in")
    rule = rules.checkin
    streak = next_streak(last=member.last_checkin, streak=member.streak, today=today, cycle=rule.streak_days)
    wanted = rule.daily_points + (rule.streak_bonus if streak == rule.streak_days else 0)
    granted = 0
    try:
        async with in_transaction() as conn:
            # The unique (member, day) makes concurrent duplicates wait here and then fail,
            # before they touch the cap.
            row = await Checkin.create(member_id=member_id, day=today, points=wanted, using_db=conn)
            granted = await antiabuse.reserve_cap(redis=redis, member_id=member_id, day=today,
                                                  wanted=wanted, cap=rules.points.daily_cap)
            # Capped to 0, the entry still carries the day's growth (growth_delta) under the
            # same once-only key: the cap limits points, never the check-in itself.
            posting = await points.credit(
                conn=conn, member_id=member_id, amount=granted, reason="checkin",
                key=f"checkin:{member_id}:{today.isoformat()}", now=now,
                expiry_months=rules.points.expiry_months, growth=rules.growth.per_checkin,
                capped_on=today, note="capped" if granted < wanted else "",
                also={"streak": streak, "last_checkin": today})
            if granted < wanted:
                await Checkin.filter(id=row.id).using_db(conn).update(points=granted)
            if rules.tier_for_growth(posting.growth).key != posting.tier:
                await tiers.follow_growth(conn=conn, member_id=member_id, rules=rules,
                                          cause="checkin", now=now)
    except IntegrityError:
        await antiabuse.release_cap(redis=redis, member_id=member_id, day=today, amount=granted)
        raise Conflict("already checked in today", code="already_checked_in") from None
    except BaseException:
        await antiabuse.release_cap(redis=redis, member_id=member_id, day=today, amount=granted)
        raise
    return CheckinResult(day=today, streak=streak, points_awarded=granted, balance=posting.balance,
                         capped=granted < wanted)


def _run_length(days: set[date], end: date) -> int:
    n = 0
    while end - timedelta(days=n) in days:
        n += 1
    return n


async def make_up(*, rules: Rules, member_id: int, day: date, now: datetime, tz: ZoneInfo) -> dict:
    """Fill a missed day of the last 7 for 10 points, at most 2 times a calendar month.

    It restores the streak through that day; it earns no check-in points itself.
    """
    today = business_day(now, tz)
    rule = rules.makeup
    if not (today - timedelta(days=rule.window_days) <= day < today):
        raise InvalidField("date", f"must be a missed day within the last {rule.window_days} days")
    month = today.strftime("%Y-%m")
    used = await LedgerEntry.filter(member_id=member_id, reason="makeup",
                                    idempotency_key__startswith=f"makeup:{member_id}:{month}:").count()
    if used >= rule.per_month:
        raise RateLimited(f"at most {rule.per_month} make-up check-ins a month",
                          retry_after=86400, code="makeup_limit_reached")
    try:
        async with in_transaction() as conn:
            await Checkin.create(member_id=member_id, day=day, makeup=True, points=0, using_db=conn)
            # The slot number in the key makes the monthly limit a unique constraint, so two
            # racing make-ups cannot both take the last slot.
            await points.debit(conn=conn, member_id=member_id, amount=rule.cost, reason="makeup",
                               key=f"makeup:{member_id}:{month}:{used + 1}", now=now, note=day.isoformat())
            member = await Member.get(id=member_id).using_db(conn)
            recent = set(await Checkin.filter(member_id=member_id, day__gte=today - timedelta(days=400))
                         .using_db(conn).values_list("day", flat=True))
            last = max(recent)
            run = _run_length(recent, last)
            streak = (run - 1) % rules.checkin.streak_days + 1
            await Member.filter(id=member_id).using_db(conn).update(streak=streak, last_checkin=last)
            balance = int(member.points)
    except IntegrityError:
        raise Conflict("that day is already checked in, or a make-up is in progress",
                       code="already_checked_in") from None
    return {"date": day.isoformat(), "streak": streak, "cost": rule.cost, "balance": balance,
            "makeups_left": max(0, rule.per_month - used - 1)}


async def calendar_month(*, rules: Rules, member_id: int, month: str, now: datetime, tz: ZoneInfo) -> dict:
    """The member's check-ins of one month (YYYY-MM), and make-ups used and left this month."""
    try:
        first = date.fromisoformat(f"{month}-01")
    except ValueError:
        raise InvalidField("month", "must be YYYY-MM") from None
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    rows = await Checkin.filter(member_id=member_id, day__gte=first, day__lte=last) \
        .order_by("day").values("day", "makeup", "points")
    used = await LedgerEntry.filter(member_id=member_id, reason="makeup",
                                    idempotency_key__startswith=f"makeup:{member_id}:{month}:").count()
    today = business_day(now, tz)
    return {
        "month": month,
        "today": today.isoformat(),
        "days": [{"date": r["day"].isoformat(), "makeup": r["makeup"], "points": r["points"]} for r in rows],
        "makeups_used": used,
        "makeups_left": max(0, rules.makeup.per_month - used),
    }
