"""Tier variants (app/domain/tiers.py): basis by paid orders or spend in a window, and the trial
tier (0元升级): silver 7 days, gold after a paid order, reverted by its refund, ended by a job."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.domain import payments, rules, tiers, wecom
from app.errors import InvalidField
from app.models import AuditLog, Member, OutboxMessage, TierChange, TierTrial, WeComContact

TZ = ZoneInfo("Asia/Shanghai")
APPID = "wx-test-mp"
NOW = datetime(2026, 11, 2, 10, 0, tzinfo=TZ)  # a Monday: no member-day doubling in sight


async def new_member(n: int = 1) -> Member:
    return await Member.create(appid=APPID, openid=f"o-tv-{n}", invite_code=f"tv{n}", created_at=NOW)


async def pay(redis, current, member: Member, n: int, fen: int = 10_000, when: datetime = NOW):
    return await payments.record_payment(
        redis=redis, rules=current, appid=APPID, transaction_id=f"t-tv-{member.id}-{n}", out_trade_no=f"o-{n}",
        openid=member.openid, total_fen=fen, payer_total_fen=fen, paid_at=when, now=when, tz=TZ)


async def refund(current, member: Member, n: int, fen: int = 10_000, when: datetime = NOW):
    return await payments.record_refund(rules=current, refund_id=f"r-tv-{member.id}-{n}",
                                        transaction_id=f"t-tv-{member.id}-{n}", refund_fen=fen, now=when)


async def history(member: Member) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in await TierChange.filter(member_id=member.id).order_by("id")
            .values_list("from_tier", "to_tier", "cause")]


async def tier_of(member: Member) -> str:
    return (await Member.get(id=member.id)).tier


@pytest.mark.smoke
async def test_the_basis_is_growth_out_of_the_box_and_old_tier_rows_still_load(db):
    from app.models import Rule

    stored = rules.defaults()["tiers"]
    for key in ("basis", "orders", "spend"):
        stored.pop(key)
    await Rule.filter(key="tiers").update(value=stored)  # a row written before the basis existed
    current = await rules.load(fresh=True)
    assert current.tiers.basis == "growth" and current.tiers.orders.thresholds["silver"] == 5
    assert current.trial_tier.enabled is False


async def test_changing_the_basis_is_validated_and_audited(db):
    with pytest.raises(InvalidField) as missing:
        await rules.update({"tiers": {"basis": "orders", "orders": {"window_days": 365,
                                                                   "thresholds": {"silver": 5}}}}, actor="op")
    assert "thresholds" in missing.value.message
    with pytest.raises(InvalidField):
        await rules.update({"tiers": {"basis": "spend", "spend": {"window_days": 30, "thresholds": {
            "silver": 500, "gold": 400, "diamond": 20000}}}}, actor="op")
    with pytest.raises(InvalidField):
        await rules.update({"tiers": {"basis": "visits"}}, actor="op")
    with pytest.raises(InvalidField):
        await rules.update({"trial_tier": {"enabled": True, "tier": "gold", "upgrade_tier": "silver"}}, actor="op")
    assert await AuditLog.filter(action="rules.update").count() == 0
    changed = await rules.update({"tiers": {"basis": "orders"}}, actor="op")
    assert changed.tiers.basis == "orders"
    audit = await AuditLog.get(action="rules.update", target="tiers")
    assert audit.before["basis"] == "growth" and audit.after["basis"] == "orders"


async def test_orders_in_a_window_move_the_tier_up_and_a_refund_or_the_window_down(db, redis):
    current = await rules.update({"tiers": {"basis": "orders"}}, actor="op")  # silver 5, gold 15, 365 days
    m = await new_member()
    for n in range(1, 5):
        await pay(redis, current, m, n, fen=100)  # 1 yuan: growth alone would never move it
    assert await tier_of(m) == "regular"
    await pay(redis, current, m, 5, fen=100)
    assert await tier_of(m) == "silver"
    for n in range(6, 16):
        await pay(redis, current, m, n, fen=100, when=NOW + timedelta(days=n))
    assert await tier_of(m) == "gold"
    await refund(current, m, 15, fen=50, when=NOW + timedelta(days=16))  # partial: still a paid order
    assert await tier_of(m) == "gold"
    await refund(current, m, 14, fen=100, when=NOW + timedelta(days=20))
    assert await tier_of(m) == "silver"
    assert await history(m) == [("regular", "silver", "payment"), ("silver", "gold", "payment"),
                                ("gold", "silver", "refund")]
    # a year on, the first five orders have left the window: nine remain, still silver
    later = NOW + timedelta(days=365, hours=1)
    assert (await tiers.review_windows(rules=current, now=later))["moved"] == 0
    gone = NOW + timedelta(days=365 + 16)
    summary = await tiers.review_windows(rules=current, now=gone)
    assert summary["moved"] == 1 and await tier_of(m) == "regular"
    assert (await history(m))[-1] == ("silver", "regular", "window")


async def test_spend_in_a_window(db, redis):
    current = await rules.update({"tiers": {"basis": "spend", "spend": {"window_days": 90, "thresholds": {
        "silver": 300, "gold": 1000, "diamond": 5000}}}}, actor="op")
    m = await new_member()
    await pay(redis, current, m, 1, fen=29_999)
    assert await tier_of(m) == "regular"
    await pay(redis, current, m, 2, fen=1)
    assert await tier_of(m) == "silver"
    await pay(redis, current, m, 3, fen=70_000, when=NOW + timedelta(days=100))  # the first two lapsed
    assert await tier_of(m) == "silver"  # 700 yuan in the window
    assert await tiers.rule_tier(conn=None, member_id=m.id, rules=current, now=NOW + timedelta(days=100)) == "silver"


async def test_growth_basis_is_untouched(db, redis):
    m = await new_member()
    await pay(redis, await rules.load(fresh=True), m, 1, fen=50_000)
    assert await history(m) == [("regular", "silver", "payment")]


@pytest.mark.smoke
async def test_the_trial_tier_from_registration_to_its_end(db, redis):
    current = await rules.update({"trial_tier": {"enabled": True}}, actor="op")
    m = await new_member()
    await WeComContact.create(corp_id="c", external_userid="wm-1", staff_userid="s", member_id=m.id)
    assert (await tiers.start_trial(member_id=m.id, rules=current, now=NOW)).to_tier == "silver"
    assert await tiers.start_trial(member_id=m.id, rules=current, now=NOW) is None  # once per member
    assert await tier_of(m) == "silver"
    day3 = NOW + timedelta(days=3)
    await pay(redis, current, m, 1, fen=1000, when=day3)
    assert await tier_of(m) == "gold"
    await pay(redis, current, m, 2, fen=1000, when=day3 + timedelta(hours=1))
    await refund(current, m, 2, fen=1000, when=day3 + timedelta(hours=2))  # not the upgrading order
    assert await tier_of(m) == "gold"
    await refund(current, m, 1, fen=1000, when=day3 + timedelta(hours=3))
    assert await tier_of(m) == "silver"
    await pay(redis, current, m, 3, fen=1000, when=NOW + timedelta(days=6, hours=23))
    assert await tier_of(m) == "gold"
    # not over yet on day 7 minus a second; over after it: back to what the rules give (regular)
    assert (await tiers.end_trials(rules=current, now=NOW + timedelta(days=7, seconds=-1)))["ended"] == 0
    done = await tiers.end_trials(rules=current, now=NOW + timedelta(days=7, hours=1))
    assert done["ended"] == 1 and done["moved"] == 1 and await tier_of(m) == "regular"
    assert (await tiers.end_trials(rules=current, now=NOW + timedelta(days=8)))["ended"] == 0
    assert await history(m) == [("regular", "silver", "trial"), ("silver", "gold", "trial_order"),
                                ("gold", "silver", "trial_refund"), ("silver", "gold", "trial_order"),
                                ("gold", "regular", "trial_end")]
    # every move queued the member's 企业微信 tier tag
    assert await OutboxMessage.filter(member_id=m.id, kind=wecom.MARK_TAG).count() == 5


async def test_an_order_after_the_trial_or_growth_above_it(db, redis):
    current = await rules.update({"trial_tier": {"enabled": True}}, actor="op")
    late, rich = await new_member(1), await new_member(2)
    for m in (late, rich):
        await tiers.start_trial(member_id=m.id, rules=current, now=NOW)
    await pay(redis, current, late, 1, fen=1000, when=NOW + timedelta(days=7))
    assert await tier_of(late) == "silver"  # the trial's days are over: no upgrade (the job ends it)
    await pay(redis, current, rich, 1, fen=600_000, when=NOW + timedelta(days=1))  # 6000 growth: gold anyway
    await tiers.end_trials(rules=current, now=NOW + timedelta(days=8))
    assert await tier_of(late) == "regular" and await tier_of(rich) == "gold"
    assert (await history(rich))[-1] == ("silver", "gold", "trial_order")


async def test_registration_starts_the_trial_when_enabled(client, login):
    from tests.handlers.admin.test_experiments_admin import ADMIN

    off = await login("o-trial-off")
    assert off.data["tier"] == "regular"
    resp = await client.patch("/admin/rules", json={"trial_tier": {"enabled": True}}, headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["trial_tier"]["days"] == 7
    on = await login("o-trial-on")
    assert on.data["tier"] == "silver"
    trial = await TierTrial.get(member_id=on.id)
    assert trial.ends_at - trial.starts_at == timedelta(days=7)


@pytest.mark.postgres
async def test_concurrent_orders_in_a_trial_upgrade_once_and_concurrent_ends_end_once(db, redis):
    current = await rules.update({"trial_tier": {"enabled": True}}, actor="op")
    m = await new_member()
    await tiers.start_trial(member_id=m.id, rules=current, now=NOW)
    await asyncio.gather(*(pay(redis, current, m, n, fen=1000, when=NOW + timedelta(days=1)) for n in range(20)))
    assert await tier_of(m) == "gold"
    assert [c for c in await history(m) if c[2] == "trial_order"] == [("silver", "gold", "trial_order")]
    runs = await asyncio.gather(*(tiers.end_trials(rules=current, now=NOW + timedelta(days=8)) for _ in range(10)))
    assert sum(r["ended"] for r in runs) == 1
    assert [c for c in await history(m) if c[2] == "trial_end"] == [("gold", "regular", "trial_end")]
