"""tier_monthly_coupons and welcome_upgrade: once per member per month / per upgrade."""
from __future__ import annotations

from datetime import timedelta

from app.config import Settings
from app.models import Coupon, Member, OutboxMessage, TierChange
from jobs.registry import JobContext
from jobs.tier_monthly_coupons import run as run_monthly
from jobs.welcome_upgrade import run as run_welcome
from tests.conftest import shanghai


async def member(n: int, tier: str) -> Member:
    return await Member.create(appid="wx-test-mp", openid=f"o-tj-{n}", invite_code=f"tj{n}", tier=tier)


def ctx(now) -> JobContext:
    settings = Settings()
    return JobContext(settings=settings, redis=None, wechat=None, now=now,
                      today=now.astimezone(settings.tz).date())


async def test_monthly_coupons_per_tier_once_a_month(db):
    regular, silver, gold, diamond = [await member(n, t) for n, t in
                                      enumerate(["regular", "silver", "gold", "diamond"])]
    now = shanghai(2026, 12, 1, 8, 0)
    first = await run_monthly(ctx(now))
    assert first["issued"] == 1 + 2 + 3 and first["sent"] == 3
    counts = {m: await Coupon.filter(member_id=m).count() for m in (regular.id, silver.id, gold.id, diamond.id)}
    assert counts == {regular.id: 0, silver.id: 1, gold.id: 2, diamond.id: 3}
    keys = set(await Coupon.filter(member_id=gold.id).values_list("issue_key", flat=True))
    assert keys == {f"tier_monthly:{gold.id}:2026-12:1", f"tier_monthly:{gold.id}:2026-12:2"}
    assert (await run_monthly(ctx(now + timedelta(hours=1))))["issued"] == 0
    assert await OutboxMessage.filter(kind="coupon").count() == 3
    assert (await run_monthly(ctx(shanghai(2027, 1, 1, 8, 0))))["issued"] == 6


async def test_welcome_each_upgrade_once(db):
    m = await member(1, "gold")
    up = await TierChange.create(member_id=m.id, from_tier="regular", to_tier="silver", cause="payment")
    up2 = await TierChange.create(member_id=m.id, from_tier="silver", to_tier="gold", cause="payment")
    await TierChange.create(member_id=m.id, from_tier="gold", to_tier="silver", cause="downgrade")
    now = up2.created_at + timedelta(minutes=5)
    first = await run_welcome(ctx(now))
    assert first["seen"] == 2 and first["sent"] == 2
    keys = set(await OutboxMessage.all().values_list("key", flat=True))
    assert keys == {f"tier_upgrade:{m.id}:{up.id}", f"tier_upgrade:{m.id}:{up2.id}"}
    assert (await OutboxMessage.get(key=f"tier_upgrade:{m.id}:{up2.id}")).payload["values"]["tier"] == "金卡"
    again = await run_welcome(ctx(now + timedelta(minutes=10)))
    assert again["sent"] == 0
    assert (await run_welcome(ctx(now + timedelta(days=8))))["seen"] == 0
