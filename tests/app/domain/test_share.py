"""Share coupons (app/domain/share.py): links, claims, their once-only rules under concurrency."""
import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.domain import antiabuse, campaigns, rules, share
from app.domain.members import new_invite_code
from app.errors import Conflict
from app.models import Coupon, LedgerEntry, Member, ShareClaim, TaskCompletion
from tests.conftest import assert_ledger_consistent

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 12, 2, 10, 0, tzinfo=TZ)


async def member(openid, **fields) -> Member:
    return await Member.create(appid="wx-test-mp", openid=openid, invite_code=new_invite_code(),
                               created_at=NOW - timedelta(days=1), **fields)


async def campaign(key="spring", stock=1000, daily_limit=10, points=20):
    return await campaigns.create(kind="share", key=key, coupon_discount=50, points_each=points,
                                  daily_limit=daily_limit, stock=stock, valid_days=30, actor="ops", now=NOW)


async def claim(redis, link, friend, now=NOW):
    return await share.claim(token=link.token, friend_id=friend.id, now=now, tz=TZ, redis=redis,
                             rules=await rules.load())


@pytest.mark.smoke
async def test_a_claim_gives_the_friend_a_5zhe_coupon_and_both_points(db, redis):
    await campaign()
    sharer, friend = await member("o-sharer"), await member("o-friend")
    link = await share.make_link(member_id=sharer.id, campaign_key="spring", now=NOW)
    assert await share.make_link(member_id=sharer.id, campaign_key="spring", now=NOW) == link
    assert (await Member.get(id=sharer.id)).points == 0  # never a reward for the share itself
    result = await claim(redis, link, friend)
    assert result.coupon.member_id == friend.id
    assert (result.coupon.template.kind, result.coupon.template.discount_percent) == ("discount", 50)
    assert (await Member.get(id=sharer.id)).points == 20
    assert (await Member.get(id=friend.id)).points == 20
    assert await LedgerEntry.filter(reason="share", capped_on=NOW.date()).count() == 2
    # Share claims are tasks: they count in the week.
    assert await antiabuse.weekly_total(member_id=sharer.id, day=NOW.date()) == 20
    await assert_ledger_consistent()


async def test_own_link_and_second_claims_are_refused(db, redis):
    await campaign()
    sharer = await member("o-s", unionid="u-s", device_id="dev-s")
    link = await share.make_link(member_id=sharer.id, campaign_key="spring", now=NOW)
    same_person = await member("o-s-alt", unionid="u-s")  # the same WeChat user, another account
    same_phone = await member("o-s-phone", device_id="dev-s")
    for who in (sharer, same_person, same_phone):
        with pytest.raises(Conflict) as caught:
            await claim(redis, link, who)
        assert caught.value.code == "share_claim_refused"
    friend = await member("o-f", unionid="u-f", device_id="dev-f")
    await claim(redis, link, friend)
    other_sharer = await member("o-s2")
    other_link = await share.make_link(member_id=other_sharer.id, campaign_key="spring", now=NOW)
    twin = await member("o-f-twin", unionid="u-f")  # the friend again, by unionid
    for who in (friend, twin, await member("o-f-dev", device_id="dev-f")):
        with pytest.raises(Conflict) as caught:
            await claim(redis, other_link, who)
        assert caught.value.code == "share_claim_refused"
    assert await Coupon.filter(issue_key__startswith="share:").count() == 1
    assert (await Member.get(id=other_sharer.id)).points == 0


async def test_past_the_sharers_daily_limit_the_coupon_comes_without_points(db, redis):
    await campaign(daily_limit=2)
    sharer = await member("o-limit")
    link = await share.make_link(member_id=sharer.id, campaign_key="spring", now=NOW)
    friends = [await member(f"o-fr-{i}") for i in range(3)]
    results = [await claim(redis, link, f) for f in friends]
    assert [r.rewarded for r in results] == [True, True, False]
    assert (await Member.get(id=sharer.id)).points == 40
    assert (await Member.get(id=friends[2].id)).points == 0
    assert (await ShareClaim.get(friend_id=friends[2].id)).reward_skipped == "sharer_daily_limit"
    # A new business day, a new limit.
    late = await claim(redis, link, await member("o-fr-late"), now=NOW + timedelta(days=1))
    assert late.rewarded


@pytest.mark.postgres
async def test_100_concurrent_claims_respect_stock_and_the_daily_limit(db, redis):
    await campaign(stock=30, daily_limit=10)
    sharer = await member("o-popular")
    link = await share.make_link(member_id=sharer.id, campaign_key="spring", now=NOW)
    friends = [await member(f"o-crowd-{i}", device_id=f"dev-{i}") for i in range(100)]
    outcomes = await asyncio.gather(*(claim(redis, link, f) for f in friends), return_exceptions=True)
    won = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(won) == 30 and len(refused) == 70
    assert {o.code for o in refused} == {"campaign_out_of_stock"}
    assert sum(1 for o in won if o.rewarded) == 10
    assert await Coupon.filter(issue_key__startswith="share:").count() == 30
    assert (await Member.get(id=sharer.id)).points == 200  # 10 rewarded claims × 20
    assert await TaskCompletion.filter(member_id=sharer.id).count() == 10
    await assert_ledger_consistent()


@pytest.mark.postgres
async def test_one_person_claiming_at_once_from_many_accounts_claims_once(db, redis):
    await campaign()
    links = [await share.make_link(member_id=(await member(f"o-sh-{i}")).id, campaign_key="spring", now=NOW)
             for i in range(5)]
    accounts = [await member(f"o-me-{i}", unionid="u-me") for i in range(20)]
    outcomes = await asyncio.gather(*(claim(redis, links[i % 5], a) for i, a in enumerate(accounts)),
                                    return_exceptions=True)
    assert sum(1 for o in outcomes if not isinstance(o, Exception)) == 1
    assert all(o.code == "share_claim_refused" for o in outcomes if isinstance(o, Exception))
    assert await Coupon.filter(issue_key__startswith="share:").count() == 1


async def test_share_points_are_under_the_weekly_cap(db, redis):
    await campaign(points=20)
    sharer, friend = await member("o-wk"), await member("o-wk-f")
    await antiabuse.reserve_weekly_cap(redis=redis, member_id=sharer.id, day=NOW.date(), wanted=190, cap=200)
    link = await share.make_link(member_id=sharer.id, campaign_key="spring", now=NOW)
    await claim(redis, link, friend)
    assert (await Member.get(id=sharer.id)).points == 10
    assert (await Member.get(id=friend.id)).points == 20


async def test_campaign_results_and_audit(db, redis):
    from app.models import AuditLog

    c = await campaign(daily_limit=1)
    with pytest.raises(Conflict):
        await campaign()
    sharer = await member("o-r")
    link = await share.make_link(member_id=sharer.id, campaign_key="spring", now=NOW)
    for i in range(2):
        await claim(redis, link, await member(f"o-r-{i}"))
    await c.refresh_from_db()
    assert await campaigns.results(c) == {
        "links": 1, "claims": 2, "rewarded_claims": 1, "unrewarded": {"sharer_daily_limit": 1},
        "coupons_claimed": 2, "coupons_used": 0, "points_paid": 40}
    audit = await AuditLog.get(action="campaigns.create")
    assert (audit.actor, audit.after["key"], audit.after["stock"]) == ("ops", "spring", 1000)


async def test_a_claimed_coupon_redeemed_is_a_cost_of_its_campaign(db, redis):
    """The coupon's issue_key names the campaign by its key, which is how costs and experiments
    find a campaign's coupons."""
    from app.domain import coupons
    from app.models import CostEntry

    await campaign(key="autumn")
    sharer, friend = await member("o-c-sharer"), await member("o-c-friend")
    link = await share.make_link(member_id=sharer.id, campaign_key="autumn", now=NOW)
    result = await claim(redis, link, friend)
    await coupons.redeem(code=result.coupon.code, operator="till", now=NOW, order_fen=10_000)
    [entry] = await CostEntry.filter(kind="coupon")
    assert (entry.campaign, entry.amount_fen) == ("autumn", 5_000)  # 5折 of a 100-yuan order
