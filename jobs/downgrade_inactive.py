"""The 1st of each month at 00:30: down one tier after 3 full calendar months without a payment
(app/domain/downgrades.py)."""
from __future__ import annotations

from app.domain import downgrades, rules
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    return await downgrades.downgrade_inactive(rules=await rules.load(), today=ctx.today, now=ctx.now,
                                               tz=ctx.settings.tz, total=ctx.total, advance=ctx.advance)


register(Job(name="downgrade_inactive", run=run, schedule={"day": 1, "hour": 0, "minute": 30},
             help="move members without a payment for 3 full calendar months down one tier"))
