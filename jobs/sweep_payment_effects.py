"""Every 5 minutes: what should follow a recorded payment and may have been lost to a failure
after its commit — payers who became members credited, referrals of paid invitees rewarded —
for payments of the last 7 days (app/domain/payments.sweep_effects)."""
from __future__ import annotations

from datetime import timedelta

from app.domain import payments, rules
from jobs.registry import Job, JobContext, register

WINDOW = timedelta(days=7)


async def run(ctx: JobContext) -> dict:
    return await payments.sweep_effects(redis=ctx.redis, rules=await rules.load(), now=ctx.now, tz=ctx.settings.tz,
                                        since=ctx.now - WINDOW)


register(Job(name="sweep_payment_effects", run=run, schedule={"minute": "*/5"},
             help="credit payers who became members and reward referrals of paid invitees that a failure "
                  "after the payment's commit left undone (last 7 days; idempotent)"))
