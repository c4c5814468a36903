"""Benefit costs (app/domain/costs.py): one entry per consumed benefit, once, and the report."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.domain import costs, coupons, members, points, rewards, rules
from app.errors import Conflict
from app.models import CostEntry, Member, Payment, Reward
from tests.conftest import assert_ledger_consistent

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=TZ)


@pytest.fixture(autouse=True)
def subscribed():
    costs.install()  # as create_app does


async def new_member(n: int, tier: str = "regular") -> Member:
    return await Member.create(appid="wx-test-mp", openid=f"o-cost-{n}", invite_code=members.new_invite_code(),
                               tier=tier, created_at=NOW - timedelta(days=40))


async def pay(member: Member | None, fen: int, when: datetime, n: int, refunded: int = 0) -> None:
    await Payment.create(transaction_id=f"t-cost-{n}", out_trade_no=f"o-{n}", openid=member.openid if member
                         else f"o-stranger-{n}", member_id=member.id if member else None, total_fen=fen,
                         payer_total_fen=fen, paid_at=when, credited=member is not None, refunded_fen=refunded)


@pytest.mark.smoke
async def test_a_redeemed_coupon_costs_its_face_value_once(db):
    m = await new_member(1, tier="gold")
    tpl = await coupons.template(key="campaign:spring:20", name="20元券", amount_fen=2000)
    coupon, _ = await coupons.issue(member_id=m.id, template=tpl, issue_key=f"campaign:spring:{m.id}", now=NOW)
    await coupons.redeem(code=coupon.code, operator="shop-1", now=NOW + timedelta(hours=1))
    with pytest.raises(Conflict):
        await coupons.redeem(code=coupon.code, operator="shop-1", now=NOW + timedelta(hours=2))
    entry = await CostEntry.get(key=f"coupon:{coupon.id}")
    assert (entry.kind, entry.amount_fen, entry.tier, entry.campaign, entry.source) == \
        ("coupon", 2000, "gold", "spring", "campaign")
    assert await CostEntry.all().count() == 1


async def test_a_discount_coupon_costs_the_discount_taken(db):
    m = await new_member(2)
    tpl = await coupons.template(key="d90", name="9折券", discount_percent=90)
    coupon, _ = await coupons.issue(member_id=m.id, template=tpl, issue_key="d90:1", now=NOW)
    await coupons.redeem(code=coupon.code, operator="shop", now=NOW, order_fen=15_000)
    assert (await CostEntry.get(key=f"coupon:{coupon.id}")).amount_fen == 1500


@pytest.mark.postgres
async def test_concurrent_redemptions_of_one_coupon_leave_one_cost(db):
    m = await new_member(3)
    tpl = await coupons.template(key="c10", name="10元券", amount_fen=1000)
    coupon, _ = await coupons.issue(member_id=m.id, template=tpl, issue_key="c10:1", now=NOW)
    results = await asyncio.gather(*(coupons.redeem(code=coupon.code, operator=f"s{i}", now=NOW)
                                     for i in range(30)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert await CostEntry.filter(kind="coupon").count() == 1


@pytest.mark.postgres
async def test_concurrent_records_of_one_key_store_one_entry(db):
    async def once():
        from tortoise.transactions import in_transaction

        async with in_transaction() as conn:
            return await costs.record(conn=conn, kind="bonus", amount_fen=300, key="bonus:w1", now=NOW,
                                      source="wallet")
    await asyncio.gather(*(once() for _ in range(30)))
    assert await CostEntry.filter(key="bonus:w1").count() == 1


async def test_points_spent_in_the_mall_cost_a_fen_each_and_a_make_up_costs_nothing(db):
    m = await new_member(4, tier="silver")
    await points.award(member_id=m.id, amount=1000, reason="gift", key="g:4", now=NOW, expiry_months=12)
    cup = await Reward.create(name="马克杯", points=300, stock=3, per_member_limit=2)
    await rewards.redeem(reward_id=cup.id, member_id=m.id, now=NOW, pay=None, notify_url="")
    await points.spend(member_id=m.id, amount=10, reason="makeup", key="makeup:4", now=NOW)
    rows = await CostEntry.all().values("kind", "amount_fen", "tier", "source")
    assert rows == [{"kind": "points", "amount_fen": 300, "tier": "silver", "source": "redeem"}]
    await rules.update({"costs": {"fen_per_point": 0.5}}, actor="test")
    await rewards.redeem(reward_id=cup.id, member_id=m.id, now=NOW, pay=None, notify_url="")
    assert sorted(await CostEntry.all().values_list("amount_fen", flat=True)) == [150, 300]
    await assert_ledger_consistent()


async def test_the_report_per_month_with_alerts_roi_and_spend_per_head(db):
    a, b = await new_member(5, "silver"), await new_member(6, "gold")
    nov, dec = datetime(2026, 11, 10, 12, tzinfo=TZ), datetime(2026, 12, 3, 12, tzinfo=TZ)
    await pay(a, 100_000, nov, 1)
    await pay(b, 100_000, nov, 2, refunded=0)
    await pay(a, 50_000, dec, 3)
    await pay(None, 30_000, nov, 4)  # a payer who is not a member
    await pay(None, 10_000, dec, 5)
    for key, fen, member, when, campaign in (("c:1", 8000, a, nov, "spring"), ("c:2", 6000, b, nov, None),
                                             ("c:3", 8000, a, dec, "spring")):
        await costs.record(conn=None, kind="coupon", amount_fen=fen, key=key, now=when, member_id=member.id,
                           campaign=campaign)
    await costs.record(conn=None, kind="points", amount_fen=1000, key="p:1", now=dec, member_id=b.id)
    # 23:59 on 30 November in Shanghai (15:59 UTC) counts in November, the business month
    await costs.record(conn=None, kind="bonus", amount_fen=0, key="b:edge",
                       now=datetime(2026, 11, 30, 23, 59, tzinfo=TZ))
    got = await costs.report(first=date(2026, 11, 1), last=date(2026, 12, 31), rules=rules.Rules(), tz=TZ)
    nov_row, dec_row = got["months"]
    # November: 14000 / 200000 = 7 % (inside 5–10 %); December: 9000 / 50000 = 18 % (high)
    assert (nov_row["month"], nov_row["cost_fen"], nov_row["member_spend_fen"], nov_row["ratio"],
            nov_row["alert"]) == ("2026-11", 14000, 200_000, 0.07, "ok")
    assert (dec_row["cost_fen"], dec_row["coupon_fen"], dec_row["points_fen"], dec_row["ratio"],
            dec_row["alert"]) == (9000, 8000, 1000, 0.18, "high")
    assert got["alert"] == "alert" and got["alert_months"] == ["2026-12"]
    assert got["member_roi"] == round(250_000 / 23_000, 4)
    assert got["spend_per_head"]["members"] == {"spend_fen": 250_000, "payers": 2, "per_head_fen": 125_000}
    assert got["spend_per_head"]["non_members"] == {"spend_fen": 40_000, "payers": 2, "per_head_fen": 20_000}
    assert got["campaigns"] == [{"campaign": "spring", "cost_fen": 16000, "entries": 2,
                                 "share": round(16000 / 23000, 4)}]
    tiers = {t["tier"]: t for t in got["tiers"]}
    assert tiers["silver"]["cost_fen"] == 16000 and tiers["silver"]["member_spend_fen"] == 150_000
    assert tiers["gold"]["cost_fen"] == 7000 and tiers["gold"]["ratio"] == 0.07


async def test_a_low_month_is_flagged_too(db):
    a = await new_member(7)
    when = datetime(2026, 10, 5, 9, tzinfo=TZ)
    await pay(a, 100_000, when, 7)
    await costs.record(conn=None, kind="coupon", amount_fen=1000, key="c:low", now=when, member_id=a.id)
    got = await costs.report(first=date(2026, 10, 1), last=date(2026, 10, 31), rules=rules.Rules(), tz=TZ)
    assert got["months"][0]["alert"] == "low" and got["alert_months"] == ["2026-10"]


async def test_points_given_back_give_their_cost_back(db):
    from tortoise.transactions import in_transaction

    m = await new_member(8)
    await points.award(member_id=m.id, amount=500, reason="gift", key="g:8", now=NOW, expiry_months=12)
    async with in_transaction() as conn:
        await points.debit(conn=conn, member_id=m.id, amount=200, reason="redeem", key="redeem:x:8:1",
                           keep_lots=True, now=NOW)
    async with in_transaction() as conn:
        await points.restore(conn=conn, member_id=m.id, debit_key="redeem:x:8:1", amount=200, reason="release",
                             key="release:x:8:1", now=NOW + timedelta(minutes=15))
    rows = await CostEntry.all().order_by("id").values_list("key", "amount_fen")
    assert rows == [("points:redeem:x:8:1", 200), ("points:release:x:8:1", -200)]
    await assert_ledger_consistent()


async def test_bonus_stored_value_spent_is_a_cost(db):
    """The bonus share of a stored-value spend (wallet) leaves a cost entry, once per spend."""
    from tortoise.transactions import in_transaction

    from app.domain import wallet

    costs.install()
    m = await new_member(9)
    wallet_id = await wallet.ensure(member_id=m.id)
    async with in_transaction() as conn:
        await wallet.credit(conn=conn, member_id=m.id, wallet_id=wallet_id, principal_fen=50_000, bonus_fen=5_000,
                            reason="recharge", key="recharge:c9", now=NOW)
    async with in_transaction() as conn:
        taken = await wallet.debit(conn=conn, member_id=m.id, amount_fen=11_000, reason="order", key="order:c9",
                                   now=NOW)
    assert (taken.principal_fen, taken.bonus_fen) == (10_000, 1_000)
    [entry] = await CostEntry.filter(kind="bonus")
    assert (entry.amount_fen, entry.member_id) == (1_000, m.id)  # 11,000 × 5,000 / 55,000
