"""Daily check-in (签到) and make-up check-in (补签) on the business day of APP_TIMEZONE.

Out of the box: 5 points a day, the 7th consecutive day 20 more and the streak starts over;
at most 2 make-ups a calendar month, for a missed day in the last 7, costing 10 points.
"""
from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from app.domain import antiabuse, points, tiers
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


async def check_in(*, redis: Redis, rules: Rules, member_id: int, now: datetime, tz: ZoneInfo) -> CheckinResult:
    """Check in once per business day (409 already_checked_in). The points come under the daily
    cap of 200; a member whose cap is spent still checks in (streak, growth, calendar) with 0
    points and `capped` true."""
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
