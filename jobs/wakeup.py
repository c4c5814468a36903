"""Daily at 10:00: the return coupon to members dormant for 30 days (app/domain/wakeup.py)."""
from __future__ import annotations

from app.domain import rules, wakeup
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    return await wakeup.wake_dormant(rules=await rules.load(), now=ctx.now, tz=ctx.settings.tz,
                                     template_id=ctx.settings.templates.get("coupon"),
                                     total=ctx.total, advance=ctx.advance)


register(Job(name="wakeup", run=run, schedule={"hour": 10, "minute": 0},
             help="give members with no login and no payment for 30 days a return coupon, once per dormant spell"))
