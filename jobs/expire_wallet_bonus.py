"""Every hour: bonus stored value past its package's validity lapses (app/domain/wallet.expire);
principal never expires."""
from __future__ import annotations

from app.domain import wallet
from jobs.registry import Job, JobContext, register


async def run(ctx: JobContext) -> dict:
    lapsed = await wallet.expire(now=ctx.now)
    ctx.advance(lapsed)
    return {"lapsed_fen": lapsed}


register(Job(name="expire_wallet_bonus", run=run, schedule={"minute": 5},
             help="lapse recharge bonus past its validity (principal never expires)"))
