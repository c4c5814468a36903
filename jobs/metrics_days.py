"""Hourly at :20: build the per-day metrics of ended days that are missing or out of date
(app/domain/metrics_days.py), so cold GET /admin/metrics calls only read stored days."""
from __future__ import annotations

from app.domain import metrics, metrics_days
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    return await metrics_days.refresh(tz=ctx.settings.tz, now=ctx.now, days=metrics.MAX_DAYS + 31,
                                      total=ctx.total, advance=ctx.advance)


register(Job(name="metrics_days", run=run, schedule={"minute": 20},
             help="pre-aggregate each ended business day of the last 397 for /admin/metrics (PostgreSQL)"))
