"""Daily at 09:00: the birthday coupon and message, 3 days ahead (app/domain/birthdays.py)."""
from __future__ import annotations

from app.domain import birthdays, rules
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    return await birthdays.give_gifts(rules=await rules.load(), today=ctx.today, now=ctx.now,
                                      tz=ctx.settings.tz, total=ctx.total, advance=ctx.advance)


register(Job(name="birthday_gifts", run=run, schedule={"hour": 9, "minute": 0},
             help="issue the tier's birthday coupon and queue a birthday message, once a year"))
