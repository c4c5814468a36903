"""Business time: the day of APP_TIMEZONE, calendar months, and the clock the domain is given."""
from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def business_day(now: datetime, tz: ZoneInfo) -> date:
    """The calendar day in the business timezone: 23:59 and 00:01 Shanghai time are two days."""
    return now.astimezone(tz).date()


def add_months(moment: datetime | date, months: int):
    """Same day `months` later, clamped to the month's end (31 Jan + 1 month = 28/29 Feb)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def day_start(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of a business day, as an aware datetime."""
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def seconds_until_next_day(now: datetime, tz: ZoneInfo) -> int:
    tomorrow = business_day(now, tz) + timedelta(days=1)
    return max(1, int((day_start(tomorrow, tz) - now).total_seconds()))


class Clock:
    """The app's clock: real time, or a fixed instant that tests move (`travel_to`)."""

    def __init__(self, fixed: datetime | None = None) -> None:
        self._fixed = fixed

    def now(self) -> datetime:
        """Always UTC: SQLite compares stored timestamps as text, so every offset must match."""
        return self._fixed.astimezone(timezone.utc) if self._fixed else utcnow()

    def travel_to(self, moment: datetime | None) -> None:
        if moment is not None and moment.tzinfo is None:
            raise ValueError("travel_to needs an aware datetime")
        self._fixed = moment
