"""Daily at 00:20: trial tiers whose 7 days are over end, and their members fall back to the tier
the rules give; under the orders or spend basis, tiers follow the orders leaving the window
(app/domain/tiers.py)."""
from __future__ import annotations

from app.domain import rules, tiers
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    current = await rules.load()
    ended = await tiers.end_trials(rules=current, now=ctx.now, total=ctx.total, advance=ctx.advance)
    reviewed = await tiers.review_windows(rules=current, now=ctx.now)
    return {**ended, "seen": ended["seen"] + reviewed["seen"], "window_moves": reviewed["moved"]}


register(Job(name="tier_trials", run=run, schedule={"hour": 0, "minute": 20},
             help="end trial tiers after their days (back to the rules' tier); re-tier orders/spend windows"))
