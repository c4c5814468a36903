"""birthday_gifts: 3 days ahead, the tier's coupon and a message, once a year; 29 February."""
from __future__ import annotations

from datetime import date, timedelta

from app.config import Settings
from app.domain import birthdays
from app.models import Coupon, Member, OutboxMessage
from jobs.birthday_gifts import run
from jobs.registry import JobContext
from tests.conftest import shanghai


async def member(n: int, birthday: date | None, tier: str = "regular", **kw) -> Member:
    return await Member.create(appid="wx-test-mp", openid=f"o-bd-{n}", invite_code=f"bd{n}",
                               birthday=birthday, tier=tier, **kw)


def ctx(now) -> JobContext:
    settings = Settings()
    return JobContext(settings=settings, redis=None, wechat=None, now=now,
                      today=now.astimezone(settings.tz).date())


async def amounts() -> dict[int, int]:
    rows = await Coupon.all().prefetch_related("template")
    return {c.member_id: c.template.amount_fen for c in rows}


async def test_coupon_by_tier_three_days_ahead_once(db):
    regular = await member(1, date(1990, 12, 1))
    silver = await member(2, date(1985, 12, 1), "silver")
    gold = await member(3, date(2000, 12, 1), "gold")
    diamond = await member(4, date(1970, 12, 1), "diamond")
    await member(5, date(1990, 12, 2))
    await member(6, None)
    await member(7, date(1990, 12, 1), blacklisted=True)
    now = shanghai(2026, 11, 28, 9, 0)
    first = await run(ctx(now))
    assert first["seen"] == 4 and first["issued"] == 4 and first["sent"] == 4
    assert await amounts() == {regular.id: 2000, silver.id: 5000, gold.id: 10000, diamond.id: 20000}
    coupon = await Coupon.get(member_id=gold.id)
    assert coupon.issue_key == f"birthday:{gold.id}:2026" and coupon.expires_at == now + timedelta(days=30)
    message = await OutboxMessage.get(member_id=gold.id)
    assert message.key == f"birthday:{gold.id}:2026" and message.kind == "birthday"
    assert message.payload["values"]["amount"] == "100"
    again = await run(ctx(now + timedelta(hours=3)))
    assert again["issued"] == 0 and again["sent"] == 0 and again["skipped"] == 4
    assert await Coupon.all().count() == 4 and await OutboxMessage.all().count() == 4


async def test_timezone_edge_uses_the_business_day(db):
    await member(1, date(1990, 12, 1))
    # 2026-11-27 16:30 UTC is already 28 November 00:30 in Shanghai: 1 December is 3 days on.
    assert (await run(ctx(shanghai(2026, 11, 28, 0, 30))))["issued"] == 1


async def test_year_end_wraps_to_next_years_birthday(db):
    m = await member(1, date(1999, 1, 2))
    assert (await run(ctx(shanghai(2026, 12, 30, 9, 0))))["issued"] == 1
    assert (await Coupon.get(member_id=m.id)).issue_key == f"birthday:{m.id}:2027"


async def test_leap_day_birthdays(db):
    leap = await member(1, date(2000, 2, 29))
    feb28 = await member(2, date(1999, 2, 28))
    # 2027 has no 29 February: both celebrated on the 28th (run on the 25th).
    result = await run(ctx(shanghai(2027, 2, 25, 9, 0)))
    assert result["issued"] == 2
    assert set(await Coupon.all().values_list("member_id", flat=True)) == {leap.id, feb28.id}
    # 2028 is a leap year: the 28th and the 29th are two days.
    assert birthdays.celebrated_on(date(2028, 2, 28)) == ["02-28"]
    assert (await run(ctx(shanghai(2028, 2, 25, 9, 0))))["issued"] == 1
    assert (await run(ctx(shanghai(2028, 2, 26, 9, 0))))["issued"] == 1
    assert await Coupon.filter(member_id=leap.id).count() == 2
    # running the 28 Feb 2027 day twice (e.g. by hand) gives nothing new
    assert (await run(ctx(shanghai(2027, 2, 25, 18, 0))))["issued"] == 0
