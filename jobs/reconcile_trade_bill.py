"""Daily at 10:00 (WeChat Pay publishes the previous day's bill after 9:00): download the trade
bill of the day before, compare every payment and refund with ours, apply what we missed, keep
the differences for operators (app/domain/reconciliation.reconcile)."""
from __future__ import annotations

from datetime import timedelta

from app.domain import reconciliation, rules
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    if ctx.pay is None:
        return {"off": 1}
    summary = await reconciliation.reconcile(
        bill_date=ctx.today - timedelta(days=1), pay=ctx.pay, redis=ctx.redis, rules=await rules.load(),
        appid=ctx.settings.appid, now=ctx.now, tz=ctx.settings.tz)
    ctx.advance(summary["lines"])
    return summary


register(Job(name="reconcile_trade_bill", run=run, schedule={"hour": 10, "minute": 0},
             help="compare yesterday's WeChat Pay trade bill with our payments and refunds; apply what we "
                  "missed, list the differences (GET /admin/wallet/reconciliation)"))
