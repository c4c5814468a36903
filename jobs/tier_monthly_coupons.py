"""The 1st of each month at 08:00 (after downgrade_inactive): each tier's monthly coupons
(rules.tier_coupons, app/domain/coupons.py)."""
from __future__ import annotations

from app.domain import coupons, rules
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    return await coupons.issue_tier_monthly(rules=await rules.load(), month=ctx.today.strftime("%Y-%m"),
                                            now=ctx.now, tz=ctx.settings.tz, total=ctx.total,
                                            advance=ctx.advance)


register(Job(name="tier_monthly_coupons", run=run, schedule={"day": 1, "hour": 8, "minute": 0},
             help="issue each tier's monthly coupons (tier_monthly:{member}:{YYYY-MM}:{n}) and tell the member"))
