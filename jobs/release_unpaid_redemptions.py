"""Every minute: points + cash redemptions unpaid 15 minutes after they were made give back
their points and stock and their orders are closed; refunds of payments that came after a
release are retried (app/domain/rewards.release_expired)."""
from __future__ import annotations

from app.domain import rewards
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    released = await rewards.release_expired(now=ctx.now, pay=ctx.pay)
    ctx.advance(released)
    return {"released": released}


register(Job(name="release_unpaid_redemptions", run=run, schedule={"minute": "*"},
             help="release points + cash redemptions still unpaid after 15 minutes (points and stock back, "
                  "order closed); refund payments that came after a release"))
