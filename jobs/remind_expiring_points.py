"""Daily at 10:00: remind members 30 and 7 days before their points expire (app/domain/expiry.py)."""
from __future__ import annotations

from app.domain import expiry, rules
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    return await expiry.remind_expiring(rules=await rules.load(), today=ctx.today, now=ctx.now,
                                        tz=ctx.settings.tz, total=ctx.total, advance=ctx.advance)


register(Job(name="remind_expiring_points", run=run, schedule={"hour": 10, "minute": 0},
             help="queue a points_expiry message for points expiring in 30 and in 7 days"))
