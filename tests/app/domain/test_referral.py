"""Referral rewards on the invitee's first paid order (app/domain/referral.py)."""
import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.domain import antiabuse, payments, referral, rules
from app.domain.members import new_invite_code
from app.models import Blacklist, LedgerEntry, Member, Payment, Referral
from tests.conftest import assert_ledger_consistent

TZ = ZoneInfo("Asia/Shanghai")
APPID = "wx-test-mp"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=TZ)


async def new_member(openid: str, **fields) -> Member:
    fields.setdefault("created_at", NOW - timedelta(minutes=5))
    return await Member.create(appid=APPID, openid=openid, invite_code=new_invite_code(), **fields)


async def invited(inviter: Member, openid: str) -> Member:
    invitee = await new_member(openid)
    assert await referral.bind(invitee=invitee, invite_code=inviter.invite_code, source="login", now=NOW)
    return invitee


async def bind(invitee: Member, inviter: Member, now=NOW, source="oa_scene"):
    return await referral.bind(invitee=invitee, invite_code=inviter.invite_code, source=source, now=now)


async def pay(redis, openid: str, fen: int, tid: str, now=NOW):
    return await payments.record_payment(
        redis=redis, rules=await rules.load(), appid=APPID, transaction_id=tid, out_trade_no=tid,
        openid=openid, total_fen=fen, payer_total_fen=fen, paid_at=now, now=now, tz=TZ)


async def test_two_first_orders_at_once_reward_once(db, redis):
    inviter = await new_member("o-inviter")
    invitee = await invited(inviter, "o-invitee")
    await asyncio.gather(*(pay(redis, "o-invitee", 1_000, f"t-{i}") for i in range(10)))
    assert (await Member.get(id=inviter.id)).points == 50
    assert (await Member.get(id=invitee.id)).points == 50 + 100
    assert await LedgerEntry.filter(reason="referral").count() == 2
    row = await Referral.get(invitee_id=invitee.id)
    assert row.rewarded_at is not None and row.paid_at is not None
    funnel = await referral.funnel(inviter_id=inviter.id)
    assert (funnel.invited, funnel.paid, funnel.rewarded) == (1, 1, 1)
    await assert_ledger_consistent()


async def test_reward_is_under_the_daily_cap(db, redis):
    inviter = await new_member("o-capped")
    invitee = await invited(inviter, "o-capped-invitee")
    day = NOW.astimezone(TZ).date()
    assert await antiabuse.reserve_cap(redis=redis, member_id=inviter.id, day=day, wanted=180, cap=200) == 180
    await pay(redis, "o-capped-invitee", 500, "t-cap")
    assert (await Member.get(id=inviter.id)).points == 20  # partial: what the cap left
    assert (await Member.get(id=invitee.id)).points == 55
    await assert_ledger_consistent()


async def test_at_most_twenty_rewarded_invites_per_inviter_a_day(db, redis):
    inviter = await new_member("o-popular")
    people = [await invited(inviter, f"o-friend-{i}") for i in range(22)]
    await asyncio.gather(*(pay(redis, p.openid, 100, f"t-friend-{i}") for i, p in enumerate(people)))
    assert await Referral.filter(inviter_id=inviter.id, rewarded_at__isnull=False).count() == 20
    assert await Referral.filter(inviter_id=inviter.id, reward_skipped="inviter_daily_limit").count() == 2
    # The cap of 200 a day also holds for the inviter: 4 rewards of 50 filled it.
    assert (await Member.get(id=inviter.id)).points == 200
    await assert_ledger_consistent()


async def test_blacklisted_get_nothing(db, redis):
    inviter = await new_member("o-bad-inviter")
    invitee = await invited(inviter, "o-bad-invitee")
    await Blacklist.create(kind="member", value=str(inviter.id))
    await pay(redis, "o-bad-invitee", 1_000, "t-bad")
    assert (await Member.get(id=inviter.id)).points == 0
    assert (await Member.get(id=invitee.id)).points == 10
    assert (await Referral.get(invitee_id=invitee.id)).reward_skipped == "blacklisted"
    await assert_ledger_consistent()


async def test_a_second_order_rewards_nothing_more(db, redis):
    inviter = await new_member("o-inv2")
    invitee = await invited(inviter, "o-inv2-invitee")
    await pay(redis, "o-inv2-invitee", 1_000, "t-a")
    await pay(redis, "o-inv2-invitee", 1_000, "t-b")
    assert await LedgerEntry.filter(reason="referral").count() == 2
    assert (await Member.get(id=invitee.id)).points == 70
    await assert_ledger_consistent()


# ------------------------------------------------------------------ who can be bound

@pytest.mark.smoke
async def test_only_a_member_registered_within_24_hours_is_bound(db):
    inviter = await new_member("o-window-inviter", created_at=NOW - timedelta(days=400))
    fresh = await new_member("o-fresh", created_at=NOW - referral.NEW_MEMBER_WINDOW + timedelta(seconds=1))
    old = await new_member("o-old", created_at=NOW - referral.NEW_MEMBER_WINDOW - timedelta(seconds=1))
    assert await bind(old, inviter) is None
    assert await bind(fresh, inviter) is not None
    assert await Referral.filter(invitee_id=old.id).count() == 0
    assert (await Member.get(id=old.id)).inviter_id is None


async def test_two_long_standing_members_cannot_scan_each_other(db):
    a = await new_member("o-long-a", created_at=NOW - timedelta(days=90))
    b = await new_member("o-long-b", created_at=NOW - timedelta(days=30))
    for source in ("oa_scene", "login"):
        assert await bind(a, b, source=source) is None
        assert await bind(b, a, source=source) is None
    assert await Referral.all().count() == 0


async def test_a_member_who_paid_is_not_bound(db, redis):
    inviter = await new_member("o-paid-inviter")
    payer = await new_member("o-paid")
    await pay(redis, "o-paid", 1_000, "t-paid-before")
    assert await bind(payer, inviter) is None
    # an order paid before its payer was a member counts too
    await pay(redis, "o-guest", 1_000, "t-guest")
    guest = await new_member("o-guest")
    assert await bind(guest, inviter) is None
    assert await Referral.all().count() == 0


@pytest.mark.smoke
async def test_no_reverse_pair(db):
    a = await new_member("o-rev-a")
    b = await new_member("o-rev-b")
    assert await bind(b, a) is not None
    assert await bind(a, b) is None
    assert (await Member.get(id=a.id)).inviter_id is None
    assert await Referral.all().count() == 1


async def test_reverse_pairs_at_once_bind_at_most_one_each(db):
    """A invites B while B invites A, dozens of times at once: each pair ends with one referral."""
    pairs = [(await new_member(f"o-race-a{i}"), await new_member(f"o-race-b{i}")) for i in range(8)]
    results = await asyncio.gather(*(bind(x, y) for a, b in pairs for x, y in ((a, b), (b, a)) * 4))
    assert sum(r is not None for r in results) == len(pairs)
    for a, b in pairs:
        rows = await Referral.filter(invitee_id__in=[a.id, b.id])
        assert len(rows) == 1 and rows[0].pair_key == referral.pair_key(a.id, b.id)
        bound = await Member.filter(id__in=[a.id, b.id], inviter_id__isnull=False).count()
        assert bound == 1


async def test_only_the_first_paid_order_rewards(db, redis):
    """An invitee whose first order was recorded before the binding (a bind racing it): a later
    order is not the first, so nothing is rewarded."""
    inviter = await new_member("o-first-inviter")
    invitee = await new_member("o-first-invitee")
    await pay(redis, "o-first-invitee", 1_000, "t-first")
    await Referral.create(inviter_id=inviter.id, invitee_id=invitee.id, source="login",
                          pair_key=referral.pair_key(inviter.id, invitee.id))
    await Member.filter(id=invitee.id).update(inviter_id=inviter.id)
    await pay(redis, "o-first-invitee", 1_000, "t-second")
    assert await LedgerEntry.filter(reason="referral").count() == 0
    assert (await Member.get(id=inviter.id)).points == 0
    assert (await Referral.get(invitee_id=invitee.id)).rewarded_at is None
    await assert_ledger_consistent()


async def test_without_a_payment_named_the_earliest_order_decides(db, redis):
    """A caller that names no payment (a sweep re-driving rewards) rewards only when the
    invitee's earliest order is credited and not refunded in full."""
    inviter = await new_member("o-sweep-inviter")
    refunded, live = await invited(inviter, "o-sweep-refunded"), await invited(inviter, "o-sweep-live")
    for member, first_refunded in ((refunded, 1_000), (live, 0)):
        for n, gone in enumerate((first_refunded, 0)):
            await Payment.create(transaction_id=f"t-{member.id}-{n}", out_trade_no=f"o-{member.id}-{n}",
                                 openid=member.openid, member_id=member.id, total_fen=1_000,
                                 payer_total_fen=1_000, refunded_fen=gone, credited=True, paid_at=NOW)
    reward = dict(redis=redis, rules=await rules.load(), now=NOW, tz=TZ)
    assert await referral.reward_first_order(invitee_id=refunded.id, **reward) is False
    assert await referral.reward_first_order(invitee_id=live.id, **reward) is True
    assert await LedgerEntry.filter(reason="referral").count() == 2
    assert (await Member.get(id=live.id)).points == 50 and (await Member.get(id=refunded.id)).points == 0
