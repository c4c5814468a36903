"""Metrics against the hand-computed fixture `world` (tests/app/domain/metrics_world.py)."""
from __future__ import annotations

from datetime import date

import pytest

from app.domain import metrics
from app.errors import InvalidField
from app.models import Member
from tests.app.domain.metrics_world import FIRST, LAST, TIERS, TZ
from tests.conftest import assert_ledger_consistent, shanghai

pytestmark = pytest.mark.smoke

NOW = shanghai(2026, 11, 22, 10, 0)


async def test_every_figure_matches_the_hand_computed_fixture(world):
    got = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=NOW)

    new = {d["date"]: d["count"] for d in got["new_members"]}
    assert list(new) == [f"2026-11-0{d}" for d in range(1, 8)]
    assert new == {"2026-11-01": 1, "2026-11-02": 0, "2026-11-03": 2, "2026-11-04": 0,
                   "2026-11-05": 0, "2026-11-06": 0, "2026-11-07": 0}
    assert got["members"] == {"total": 5, "new": 3, "active": 4}  # m0 (spent), m1, m2, m3
    assert got["checkins"] == {"count": 13, "members": 3,
                               "streaks": {"1": 1, "2": 0, "3": 1, "4": 0, "5": 0, "6": 0, "7+": 1}}
    assert got["tiers"] == {"distribution": {"regular": 4, "silver": 1, "gold": 1, "diamond": 0},
                            "upgraded": 2, "downgraded": 1, "upgrade_rate": 0.4, "downgrade_rate": 0.2}
    assert got["points"] == {"issued": 150, "spent": 35, "expired": 10, "taken_back": 20,
                             "consumption_rate": round(35 / 150, 4)}
    assert got["coupons"] == {"issued": 4, "used": 2, "redemption_rate": 0.5, "face_value_used_fen": 4000}
    assert got["orders"] == {"payers": 2, "repeat_payers": 1, "orders": 3, "repurchase_rate": 0.5,
                             "spend_fen": 18000, "refunds_fen": 1500, "net_spend_fen": 16500}
    assert got["benefit"] == {"coupon_fen": 4000, "points_fen": 35, "fen_per_point": 1,
                              "cost_fen": 4035, "cost_ratio": round(4035 / 16500, 4)}
    assert got["referrals"] == {"invited": 3, "paid": 2, "rewarded": 1}
    await assert_ledger_consistent()


async def test_points_are_valued_at_the_given_fen_per_point(world):
    got = await metrics.compute(first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, fen_per_point=2, now=NOW)
    assert got["benefit"]["points_fen"] == 70
    assert got["benefit"]["cost_ratio"] == round(4070 / 16500, 4)


async def test_one_day_range_and_an_empty_range(world):
    got = await metrics.compute(first=date(2026, 11, 3), last=date(2026, 11, 3), tz=TZ, tier_keys=TIERS, now=NOW)
    assert got["new_members"] == [{"date": "2026-11-03", "count": 2}]
    assert got["checkins"]["count"] == 2  # m1 and m3: m2 skipped the 3rd
    assert got["points"]["spent"] == 30
    empty = await metrics.compute(first=date(2025, 1, 1), last=date(2025, 1, 31), tz=TZ, tier_keys=TIERS, now=NOW)
    assert empty["members"] == {"total": 0, "new": 0, "active": 0}
    assert empty["points"]["consumption_rate"] is None
    assert empty["orders"]["repurchase_rate"] is None
    assert empty["benefit"]["cost_ratio"] is None


async def test_a_range_is_cached_for_a_minute(world, redis):
    now = shanghai(2026, 11, 22, 10, 0)
    first = await metrics.cached(redis=redis, first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=now)
    await Member.create(appid="wx-test", openid="o-late", invite_code="late",
                        created_at=shanghai(2026, 11, 2, 10, 0))
    again = await metrics.cached(redis=redis, first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=now)
    assert again == first and again["members"]["new"] == 3
    ttl = await redis.ttl(metrics.cache_key(first=FIRST, last=LAST, fen_per_point=1))
    assert 0 < ttl <= 60
    await redis.delete(metrics.cache_key(first=FIRST, last=LAST, fen_per_point=1))
    fresh = await metrics.cached(redis=redis, first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=now)
    assert fresh["members"]["new"] == 4


@pytest.mark.parametrize("first,last,field", [
    (None, "2026-11-07", "from"), ("2026-11-01", None, "to"), ("2026-13-01", "2026-11-07", "from"),
    ("2026-11-01", "yesterday", "to"), ("2026-11-08", "2026-11-07", "from"),
    ("2025-01-01", "2026-01-02", "to"),
])
def test_bad_ranges_name_the_field(first, last, field):
    with pytest.raises(InvalidField) as err:
        metrics.parse_range(first=first, last=last)
    assert err.value.field == field


def test_a_full_leap_year_is_allowed():
    assert metrics.parse_range(first="2028-01-01", last="2028-12-31") == (date(2028, 1, 1), date(2028, 12, 31))


async def test_a_cold_range_is_computed_once_for_concurrent_callers(world, redis, monkeypatch):
    import asyncio

    runs = []
    compute = metrics.compute

    async def counted(**kw):
        runs.append(1)
        return await compute(**kw)

    monkeypatch.setattr(metrics, "compute", counted)
    now = shanghai(2026, 11, 22, 10, 0)
    answers = await asyncio.gather(*[
        metrics.cached(redis=redis, first=FIRST, last=LAST, tz=TZ, tier_keys=TIERS, now=now)
        for _ in range(30)])
    assert len(runs) == 1
    assert all(a == answers[0] for a in answers) and answers[0]["members"]["new"] == 3
    assert await redis.get(metrics.cache_key(first=FIRST, last=LAST, fen_per_point=1) + ":lock") is None
