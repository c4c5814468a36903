"""Every 10 minutes: a tier_upgrade message for each move up of the last 7 days that has none
(app/domain/tiers.py)."""
from __future__ import annotations

from datetime import timedelta

from app.domain import rules, tiers
from jobs.registry import Job, JobContext, register

# Older upgrades are not welcomed late (a first deployment, a long outage).
WINDOW = timedelta(days=7)


async def run(ctx: JobContext) -> dict:
    return await tiers.welcome_upgrades(rules=await rules.load(), now=ctx.now, since=ctx.now - WINDOW,
                                        tz=ctx.settings.tz, total=ctx.total, advance=ctx.advance)


register(Job(name="welcome_upgrade", run=run, schedule={"minute": "*/10"},
             help="queue a tier_upgrade message for each upgrade (tier_upgrade:{member}:{tier_change_id})"))
