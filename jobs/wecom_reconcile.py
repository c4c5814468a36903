"""Daily at 04:30: 企业微信 tier tags, wanted against actual; drift repaired through the outbox
(app/domain/wecom.py reconcile)."""
from __future__ import annotations

from app.domain import rules, wecom
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    if ctx.wecom is None:
        return {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "off": 1}
    return await wecom.reconcile(client=ctx.wecom, rules=await rules.load(), now=ctx.now,
                                 total=ctx.total, advance=ctx.advance)


register(Job(name="wecom_reconcile", run=run, schedule={"hour": 4, "minute": 30},
             help="compare members' 企业微信 tier tags with their tiers and queue mark_tag repairs"))
