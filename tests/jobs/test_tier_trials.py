"""tier_trials: on a fixed date, trials past their 7 days end once; orders leaving the window re-tier."""
from __future__ import annotations

from datetime import timedelta, timezone

from app.config import Settings
from app.domain import rules, tiers
from app.models import Member, Payment, TierChange, TierTrial
from jobs.registry import JobContext
from jobs.tier_trials import run
from tests.conftest import shanghai

TZ = Settings().tz


def ctx(now) -> JobContext:
    return JobContext(settings=Settings(), redis=None, wechat=None, now=now, today=now.astimezone(TZ).date())


async def test_trials_end_on_their_day_once(db):
    current = await rules.update({"trial_tier": {"enabled": True}}, actor="op")
    joined = shanghai(2026, 11, 24, 18, 30)
    early = await Member.create(appid="wx-test-mp", openid="o-tt-1", invite_code="tt1", created_at=joined)
    later = await Member.create(appid="wx-test-mp", openid="o-tt-2", invite_code="tt2",
                                created_at=joined + timedelta(days=1))
    await tiers.start_trial(member_id=early.id, rules=current, now=joined)
    await tiers.start_trial(member_id=later.id, rules=current, now=joined + timedelta(days=1))
    run_on_1st = shanghai(2026, 12, 1, 0, 20)  # early's 7 days ended 2026-12-01 18:30: not yet
    assert (await run(ctx(run_on_1st)))["ended"] == 0
    run_on_2nd = shanghai(2026, 12, 2, 0, 20)
    summary = await run(ctx(run_on_2nd))
    assert summary["ended"] == 1 and summary["moved"] == 1
    assert (await Member.get(id=early.id)).tier == "regular" and (await Member.get(id=later.id)).tier == "silver"
    assert (await run(ctx(run_on_2nd)))["ended"] == 0  # a re-run the same day
    assert (await run(ctx(shanghai(2026, 12, 3, 0, 20))))["ended"] == 1
    assert await TierTrial.filter(ended_at=None).count() == 0
    assert await TierChange.filter(cause="trial_end").count() == 2


async def test_orders_leaving_the_window_re_tier(db):
    await rules.update({"tiers": {"basis": "orders", "orders": {"window_days": 30, "thresholds": {
        "silver": 2, "gold": 3, "diamond": 4}}}}, actor="op")
    m = await Member.create(appid="wx-test-mp", openid="o-tt-3", invite_code="tt3", tier="gold")
    for n, day in enumerate((1, 10, 20)):
        await Payment.create(transaction_id=f"t-tt-{n}", out_trade_no=f"o{n}", openid=m.openid, member_id=m.id,
                             total_fen=100, payer_total_fen=100, credited=True,
                             paid_at=shanghai(2026, 11, day, 12, 0).astimezone(timezone.utc))
    summary = await run(ctx(shanghai(2026, 12, 5, 0, 20)))  # the 1 Nov order has left: 2 orders
    assert summary["window_moves"] == 1 and (await Member.get(id=m.id)).tier == "silver"
