"""Coupons: once per issue_key, unambiguous codes, status, redemption once; the tier_coupons rule."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from app.domain import coupons, rules
from app.errors import Conflict, InvalidField, NotFound
from app.models import AuditLog, Coupon, Member
from tests.conftest import shanghai

NOW = shanghai(2026, 11, 26, 10, 0)


async def member(n: int = 1) -> Member:
    return await Member.create(appid="wx-test-mp", openid=f"o-cp-{n}", invite_code=f"cp{n}")


async def gift() -> coupons.CouponTemplate:
    return await coupons.template(key="gift:20", name="20元券", amount_fen=2000, valid_days=30)


async def test_issue_is_idempotent_per_issue_key(db):
    m, tpl = await member(), await gift()
    first, new = await coupons.issue(member_id=m.id, template=tpl, issue_key=f"birthday:{m.id}:2026", now=NOW)
    again, new_again = await coupons.issue(member_id=m.id, template=tpl, issue_key=f"birthday:{m.id}:2026",
                                           now=NOW + timedelta(hours=1))
    assert new and not new_again and first.id == again.id and first.code == again.code
    assert await Coupon.all().count() == 1
    assert first.expires_at == NOW + timedelta(days=30)
    assert len(first.code) >= 10 and set(first.code) <= set(coupons.ALPHABET)
    assert not set(coupons.ALPHABET) & set("0O1IL")


async def test_concurrent_issues_of_one_key_store_one_coupon(db):
    m, tpl = await member(), await gift()
    results = await asyncio.gather(*(coupons.issue(member_id=m.id, template=tpl, issue_key="k:1", now=NOW)
                                     for _ in range(10)))
    assert len({c.id for c, _ in results}) == 1
    assert await Coupon.filter(issue_key="k:1").count() == 1


async def test_issue_many_counts_new_ones(db):
    ms, tpl = [await member(n) for n in range(5)], await gift()
    grants = [coupons.Grant(m.id, tpl, f"bulk:{m.id}") for m in ms]
    assert await coupons.issue_many(grants, now=NOW) == 5
    assert await coupons.issue_many(grants, now=NOW) == 0
    assert len(set(await Coupon.all().values_list("code", flat=True))) == 5


async def test_template_is_created_once(db):
    assert (await gift()).id == (await gift()).id


async def test_status_and_redeem(db):
    m, tpl = await member(), await gift()
    coupon, _ = await coupons.issue(member_id=m.id, template=tpl, issue_key="s:1", now=NOW)
    assert coupons.status(coupon, now=NOW) == "available"
    assert coupons.status(coupon, now=NOW + timedelta(days=30)) == "expired"
    used = await coupons.redeem(code=coupon.code.lower(), operator="alice", now=NOW + timedelta(days=1))
    assert used.used_by == "alice" and coupons.status(used, now=NOW) == "used"
    with pytest.raises(Conflict) as err:
        await coupons.redeem(code=coupon.code, operator="bob", now=NOW + timedelta(days=2))
    assert err.value.code == "coupon_used"
    assert await AuditLog.filter(action="coupon.redeem").count() == 1


async def test_redeem_expired_and_unknown(db):
    m, tpl = await member(), await gift()
    coupon, _ = await coupons.issue(member_id=m.id, template=tpl, issue_key="s:2", now=NOW)
    with pytest.raises(Conflict) as err:
        await coupons.redeem(code=coupon.code, operator="alice", now=NOW + timedelta(days=30))
    assert err.value.code == "coupon_expired"
    with pytest.raises(NotFound) as missing:
        await coupons.redeem(code="ZZZZZZZZZZZZ", operator="alice", now=NOW)
    assert missing.value.code == "coupon_not_found"


async def test_tier_coupons_rule_defaults_and_validation(db):
    current = await rules.load(fresh=True)
    grants = current.tier_coupons.grants
    assert (grants["silver"].count, grants["silver"].amount_fen) == (1, 1000)
    assert (grants["gold"].count, grants["gold"].amount_fen) == (2, 2000)
    assert (grants["diamond"].count, grants["diamond"].amount_fen) == (3, 5000)
    assert "regular" not in grants
    changed = await rules.update({"tier_coupons": {"grants": {"gold": {"count": 1, "amount_fen": 3000}}}},
                                 actor="ops")
    assert changed.tier_coupons.grants == {"gold": rules.TierCouponGrant(count=1, amount_fen=3000)}
    with pytest.raises(InvalidField):
        await rules.update({"tier_coupons": {"grants": {"gold": {"count": -1}}}}, actor="ops")
