"""wakeup: dormant members' return coupon, once per dormant spell, at most once in 90 days."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from app.config import Settings
from app.domain import wakeup
from app.models import Coupon, Member, OutboxMessage, Payment, SubscriptionQuota, WakeUp
from jobs.registry import JobContext
from jobs.wakeup import run
from tests.conftest import drain_outbox, shanghai

NOW = shanghai(2026, 12, 2, 10, 0)
SETTINGS = Settings()
COUPON_TEMPLATE = SETTINGS.templates["coupon"]


def ctx(now) -> JobContext:
    return JobContext(settings=SETTINGS, redis=None, wechat=None, now=now,
                      today=now.astimezone(SETTINGS.tz).date())


async def member(n: int, *, idle_days: int, paid_days: int | None = None, **kw) -> Member:
    at = NOW - timedelta(days=idle_days)
    return await Member.create(appid="wx-test-mp", openid=f"o-wk-{n}", invite_code=f"wk{n}", created_at=at,
                               last_login_at=at,
                               last_paid_at=None if paid_days is None else NOW - timedelta(days=paid_days), **kw)


@pytest.mark.smoke
async def test_dormant_members_get_the_coupon_by_the_channel_that_reaches_them(db):
    quota = await member(1, idle_days=40)
    await SubscriptionQuota.create(member_id=quota.id, template_id=COUPON_TEMPLATE, remaining=1)
    follower = await member(2, idle_days=31, followed=True, oa_openid="oa-2")
    unreachable = await member(3, idle_days=30)
    await member(4, idle_days=29)  # logged in 29 days ago: not dormant yet
    await member(5, idle_days=60, paid_days=10)  # paid recently
    await member(6, idle_days=60, blacklisted=True)
    summary = await run(ctx(NOW))
    assert (summary["issued"], summary["sent"]) == (3, 2)
    assert (summary["subscribe"], summary["oa"], summary["unreachable"]) == (1, 1, 1)
    channels = dict(await WakeUp.all().values_list("member_id", "channel"))
    assert channels == {quota.id: "subscribe", follower.id: "oa", unreachable.id: "unreachable"}
    coupon = await Coupon.get(member_id=quota.id).prefetch_related("template")
    assert (coupon.template.amount_fen, coupon.template.min_spend_fen) == (2000, 0)
    messages = dict(await OutboxMessage.all().values_list("member_id", "channel"))
    assert messages == {quota.id: "subscribe", follower.id: "oa"}


@pytest.mark.smoke
async def test_once_per_dormant_spell_and_at_most_once_in_90_days(db):
    m = await member(1, idle_days=40)
    assert (await run(ctx(NOW)))["issued"] == 1
    assert (await run(ctx(NOW)))["issued"] == 0  # a re-run
    assert (await run(ctx(NOW + timedelta(days=1))))["issued"] == 0
    assert (await run(ctx(NOW + timedelta(days=120))))["issued"] == 0  # the same spell, still dormant
    # Back on day 50, dormant again 30 days later (day 80): within 90 days of the wake-up.
    await Member.filter(id=m.id).update(last_login_at=NOW + timedelta(days=50))
    assert (await run(ctx(NOW + timedelta(days=80))))["issued"] == 0
    # Day 95: a new spell, and 90 days since the last wake-up.
    assert (await run(ctx(NOW + timedelta(days=95))))["issued"] == 1
    assert await WakeUp.filter(member_id=m.id).count() == 2
    assert await Coupon.filter(member_id=m.id).count() == 2


async def test_a_wake_up_succeeds_with_a_paid_order_in_its_window_not_refunded(db):
    won = await member(1, idle_days=40)
    refunded = await member(2, idle_days=40)
    late = await member(3, idle_days=40)
    await run(ctx(NOW))
    for n, (who, days, refund) in enumerate(((won, 3, 0), (refunded, 3, 5000), (late, 20, 0))):
        await Payment.create(transaction_id=f"t-{n}", out_trade_no=f"o-{n}", openid=who.openid, member_id=who.id,
                             total_fen=5000, payer_total_fen=5000, refunded_fen=refund, credited=True,
                             paid_at=NOW + timedelta(days=days))
    result = await wakeup.results()
    assert result == {"sent": 3, "by_channel": {"unreachable": 3}, "successful": 1}
    assert (await wakeup.results(since=NOW + timedelta(days=1)))["sent"] == 0


async def test_the_official_account_message_is_delivered(db, oa_wechat, settings, sim_state):
    await member(1, idle_days=40, followed=True, oa_openid="oa-1")
    await run(ctx(NOW))
    summary = await drain_outbox(oa_wechat, settings, NOW)
    assert summary["sent"] == 1
    assert sim_state.custom_messages[-1]["touser"] == "oa-1"
    assert "20元" in str(sim_state.custom_messages[-1])


async def test_off_when_disabled(db):
    from app.domain import rules

    await member(1, idle_days=40)
    await rules.update({"wakeup": {"enabled": False}}, actor="ops")
    assert (await run(ctx(NOW)))["issued"] == 0


@pytest.mark.postgres
async def test_runs_racing_each_other_wake_each_member_once(db):
    for n in range(40):
        m = await member(n, idle_days=40 + n)
        await SubscriptionQuota.create(member_id=m.id, template_id=COUPON_TEMPLATE, remaining=1)
    current = await _rules()
    summaries = await asyncio.gather(*(wakeup.wake_dormant(rules=current, now=NOW, tz=SETTINGS.tz,
                                                           template_id=COUPON_TEMPLATE, batch=7)
                                       for _ in range(5)))
    assert sum(s["issued"] for s in summaries) == 40
    assert sum(s["sent"] for s in summaries) == 40
    assert await WakeUp.all().count() == 40 and await Coupon.all().count() == 40
    assert await OutboxMessage.all().count() == 40


async def _rules():
    from app.domain import rules

    return await rules.load()


async def test_progress_counts_the_dormant(db):
    for n in range(3):
        await member(n, idle_days=40)
    await member(9, idle_days=5)
    seen = {"total": None, "done": 0}

    def total(n):
        seen["total"] = n

    def advance(n):
        seen["done"] += n

    await wakeup.wake_dormant(rules=await _rules(), now=NOW, tz=SETTINGS.tz, template_id=COUPON_TEMPLATE,
                              batch=2, total=total, advance=advance)
    assert seen == {"total": 3, "done": 3}
