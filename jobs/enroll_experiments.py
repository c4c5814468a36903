"""Hourly at :10: assign the members who entered an open experiment's population since
(app/domain/experiments.py); each member once, with the arm's coupon."""
from __future__ import annotations

from app.domain import experiments
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    return await experiments.enroll_open(now=ctx.now)


register(Job(name="enroll_experiments", run=run, schedule={"minute": 10},
             help="assign the members of each open A/B test's population (segment or campaign) to their arms"))
