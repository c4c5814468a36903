"""Daily at 00:10: expire what is left of lots earned 12 months ago (app/domain/expiry.py)."""
from __future__ import annotations

from app.domain import expiry
from app.domain.clock import business_day, day_start
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    tz = ctx.settings.tz
    # Run by hand for another day (`--today`): expire as of that day's first instant.
    as_of = ctx.now if business_day(ctx.now, tz) == ctx.today else day_start(ctx.today, tz)
    result = await expiry.expire_due(now=as_of, total=ctx.total, advance=ctx.advance)
    return {"seen": result.lots, "sent": 0, "skipped": 0, "failed": 0, "lots": result.lots,
            "members": result.members, "points": result.points, "chunks": result.chunks}


register(Job(name="expire_points", run=run, schedule={"hour": 0, "minute": 10},
             help="expire points past their 12 months, in batched SQL (ledger entries expire:{lot})"))
