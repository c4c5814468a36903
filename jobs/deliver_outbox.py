"""Every 5 seconds: send the outbox's due messages (app/domain/outbox.py)."""
from __future__ import annotations

import asyncio

from app.domain import outbox
from jobs.registry import Job, JobContext, register

BATCH = 200
# Stop claiming after this long so the next tick (and a deploy) is never kept waiting long.
BUDGET_SECONDS = 30.0


async def run(ctx: JobContext) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUDGET_SECONDS
    # One bucket for the whole run: the rate holds across batches.
    bucket = outbox.TokenBucket(ctx.settings.outbox_rate)
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "retried": 0}
    while True:
        done = await outbox.deliver_due(wechat=ctx.wechat, oa_wechat=ctx.oa_wechat or ctx.wechat,
                                        settings=ctx.settings, now=ctx.moment(), limit=BATCH, bucket=bucket,
                                        wecom=ctx.wecom)
        summary["seen"] += done["claimed"]
        summary["sent"] += done["sent"]
        summary["skipped"] += done["skipped"]
        summary["failed"] += done["dead"]
        summary["retried"] += done["retried"]
        ctx.advance(done["claimed"])
        if done["claimed"] < BATCH or loop.time() > deadline:
            return summary


register(Job(name="deliver_outbox", run=run, schedule={"second": "*/5"},
             help="send due subscription messages and card pushes (retries, dead letters)"))
