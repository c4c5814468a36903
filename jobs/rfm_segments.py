"""Nightly at 03:30: RFM scores and segments of every member (app/domain/segments.py)."""
from __future__ import annotations

from app.domain import segments
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    counts = await segments.recompute(now=ctx.now, today=ctx.today)
    ctx.total(sum(counts.values()))
    ctx.advance(sum(counts.values()))
    return {"members": sum(counts.values()), **counts}


register(Job(name="rfm_segments", run=run, schedule={"hour": 3, "minute": 30},
             help="recompute RFM quintiles and segments (new, active, silent, high_value) into member_score"))
