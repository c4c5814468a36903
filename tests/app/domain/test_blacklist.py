"""The blacklist's effects (app/domain/blacklist.py): sessions end, redeeming, coupon use and
referral rewards are refused."""
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.domain import blacklist, coupons, members, payments, points, referral, rewards, rules
from app.errors import Forbidden, Unauthenticated
from app.models import LedgerEntry, Member, Redemption, Referral, Reward
from tests.conftest import assert_ledger_consistent

TZ = ZoneInfo("Asia/Shanghai")
APPID = "wx-test-mp"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=TZ)


async def new_member(openid: str) -> Member:
    return await Member.create(appid=APPID, openid=openid, invite_code=members.new_invite_code(),
                               created_at=NOW - timedelta(minutes=5))


async def ban(redis, member: Member):
    row, created = await blacklist.add(redis=redis, kind="member", value=str(member.id), reason="刷单",
                                       actor="test")
    assert created
    return row


@pytest.mark.smoke
async def test_blacklisting_revokes_every_session_and_only_that_members(db, redis):
    bad, good = await new_member("o-bl-bad"), await new_member("o-bl-good")
    tokens = [await members.open_session(redis=redis, member_id=bad.id) for _ in range(3)]
    kept = await members.open_session(redis=redis, member_id=good.id)
    assert [await members.session_member_id(redis=redis, token=t) for t in tokens] == [bad.id] * 3
    await ban(redis, bad)
    for token in tokens:
        with pytest.raises(Unauthenticated):
            await members.session_member_id(redis=redis, token=token)
    assert await members.session_member_id(redis=redis, token=kept) == good.id
    # again is a no-op that still ends any session left (a retry after a Redis hiccup)
    late = await members.open_session(redis=redis, member_id=bad.id)
    _, created = await blacklist.add(redis=redis, kind="member", value=str(bad.id), reason="", actor="test")
    assert created is False
    with pytest.raises(Unauthenticated):
        await members.session_member_id(redis=redis, token=late)


async def test_a_blacklisted_member_cannot_redeem(db, redis):
    member = await new_member("o-bl-redeem")
    await points.award(member_id=member.id, amount=500, reason="gift", key="bl:gift", now=NOW, expiry_months=12)
    cup = await Reward.create(name="马克杯", points=100, stock=3, per_member_limit=2)
    await ban(redis, member)
    with pytest.raises(Forbidden) as refused:
        await rewards.redeem(reward_id=cup.id, member_id=member.id, now=NOW, pay=None, notify_url="")
    assert refused.value.code == "blacklisted" and refused.value.status == 403
    assert (await Member.get(id=member.id)).points == 500
    assert (await Reward.get(id=cup.id)).stock == 3
    assert await Redemption.all().count() == 0
    await assert_ledger_consistent()


async def test_a_blacklisted_members_coupon_cannot_be_used(db, redis):
    member = await new_member("o-bl-coupon")
    tpl = await coupons.template(key="gift:50", name="50元券", amount_fen=5000, valid_days=30)
    coupon, _ = await coupons.issue(member_id=member.id, template=tpl, issue_key="bl", now=NOW)
    await ban(redis, member)
    with pytest.raises(Forbidden) as refused:
        await coupons.redeem(code=coupon.code, operator="store-1", now=NOW)
    assert refused.value.code == "blacklisted"
    assert (await coupons.of_member(member_id=member.id))[0].used_at is None


@pytest.mark.parametrize("who", ["inviter", "invitee"])
async def test_no_referral_reward_when_either_is_blacklisted(db, redis, who):
    inviter, invitee = await new_member("o-bl-inviter"), await new_member("o-bl-invitee")
    assert await referral.bind(invitee=invitee, invite_code=inviter.invite_code, source="login", now=NOW)
    await ban(redis, inviter if who == "inviter" else invitee)
    await payments.record_payment(redis=redis, rules=await rules.load(), appid=APPID, transaction_id="t-bl",
                                  out_trade_no="t-bl", openid="o-bl-invitee", total_fen=1_000,
                                  payer_total_fen=1_000, paid_at=NOW, now=NOW, tz=TZ)
    # the invitee's reward can also come through directly: refused the same way
    await referral.reward_first_order(redis=redis, rules=await rules.load(), invitee_id=invitee.id,
                                      payment_id=(await invitee.payments.all())[0].id, now=NOW, tz=TZ)
    assert await LedgerEntry.filter(reason="referral").count() == 0
    assert (await Referral.get(invitee_id=invitee.id)).rewarded_at is None
    await assert_ledger_consistent()
