"""downgrade_inactive: 3 full calendar months without a payment → one tier down, once."""
from __future__ import annotations

from datetime import date, timezone

from app.config import Settings
from app.domain import downgrades, rules
from app.models import Member, TierChange
from jobs.downgrade_inactive import run
from jobs.registry import JobContext
from tests.conftest import shanghai

TZ = Settings().tz


async def member(n: int, tier: str, growth: int, *, paid=None, created=shanghai(2025, 1, 1, 0, 0),
                 since=None) -> Member:
    def utc(moment):  # as the app writes them (its clock is UTC): SQLite compares text
        return moment.astimezone(timezone.utc) if moment else None

    return await Member.create(appid="wx-test-mp", openid=f"o-dg-{n}", invite_code=f"dg{n}", tier=tier,
                               growth=growth, last_paid_at=utc(paid), created_at=utc(created),
                               tier_since=utc(since))


def ctx(now) -> JobContext:
    return JobContext(settings=Settings(), redis=None, wechat=None, now=now,
                      today=now.astimezone(TZ).date())


def test_three_full_calendar_months():
    assert downgrades.inactive_since(today=date(2026, 12, 1), months=3, tz=TZ) == shanghai(2026, 9, 1, 0, 0)
    assert downgrades.inactive_since(today=date(2026, 12, 31), months=3, tz=TZ) == shanghai(2026, 9, 1, 0, 0)
    assert downgrades.inactive_since(today=date(2027, 2, 1), months=3, tz=TZ) == shanghai(2026, 11, 1, 0, 0)


async def test_down_one_tier_growth_to_floor_once(db):
    now = shanghai(2026, 12, 1, 0, 30)
    gold = await member(1, "gold", 8000, paid=shanghai(2026, 8, 31, 23, 59))
    diamond = await member(2, "diamond", 30000, paid=shanghai(2026, 5, 1, 0, 0))
    silver_never = await member(3, "silver", 600)
    paid_on_edge = await member(4, "gold", 6000, paid=shanghai(2026, 9, 1, 0, 0))
    regular = await member(5, "regular", 100)
    young = await member(6, "silver", 700, created=shanghai(2026, 10, 5, 0, 0))
    upgraded = await member(7, "silver", 700, since=shanghai(2026, 10, 5, 0, 0))
    first = await run(ctx(now))
    assert first["downgraded"] == 3
    got = {m.id: (m.tier, m.growth) for m in await Member.all()}
    assert got[gold.id] == ("silver", 500)
    assert got[diamond.id] == ("gold", 5000)
    assert got[silver_never.id] == ("regular", 0)
    assert got[paid_on_edge.id] == ("gold", 6000)
    assert got[regular.id] == ("regular", 100)
    assert got[young.id] == ("silver", 700) and got[upgraded.id] == ("silver", 700)
    changes = await TierChange.all().values_list("member_id", "from_tier", "to_tier", "cause")
    assert sorted(changes) == sorted([(gold.id, "gold", "silver", "downgrade"),
                                      (diamond.id, "diamond", "gold", "downgrade"),
                                      (silver_never.id, "silver", "regular", "downgrade")])
    assert (await run(ctx(now)))["downgraded"] == 0
    # a month later only the one who paid on 1 September: the downgrades restarted the count
    assert (await run(ctx(shanghai(2027, 1, 1, 0, 30))))["downgraded"] == 1
    assert (await Member.get(id=paid_on_edge.id)).tier == "silver"
    # three more full months of silence since the December moves: one more step down
    assert (await run(ctx(shanghai(2027, 4, 1, 0, 30))))["downgraded"] == 4
    assert (await Member.get(id=diamond.id)).tier == "silver"
    assert (await Member.get(id=silver_never.id)).tier == "regular"


async def test_custom_months_rule(db):
    await rules.update({"tiers": {"downgrade_after_months": 1}}, actor="ops")
    m = await member(1, "gold", 8000, paid=shanghai(2026, 10, 31, 12, 0))
    assert (await run(ctx(shanghai(2026, 12, 1, 0, 30))))["downgraded"] == 1
    assert (await Member.get(id=m.id)).tier == "silver"
