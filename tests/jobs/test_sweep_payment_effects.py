"""Effects after a payment's commit are never lost: a redelivery re-drives them, and the sweep job
credits payers who became members and rewards referrals a failure left unrewarded (once, under races)."""
import asyncio
from datetime import timedelta

import pytest

from app import keys
from app.domain import referral
from app.models import LedgerEntry, Member, Payment, Referral
from jobs.registry import JobContext, load_all
from miniprogram_stub.simulator import pay as sim
from tests.conftest import MP_APPID, assert_ledger_consistent
from tests.handlers.wechat.test_pay_notify import post_signed, signed_payment


@pytest.fixture
def settings(settings):
    return settings.with_(pay_apiv3_key=sim.SANDBOX_APIV3_KEY.decode(), pay_public_key_id=sim.SANDBOX_PUBLIC_KEY_ID,
                          pay_public_key_path=str(sim.PLATFORM_PUBLIC_KEY_PATH))


@pytest.fixture(autouse=True)
def on_a_monday(clock):
    """Payments here are dated by the app's clock: a Monday, never the member day (Thursday)."""
    from tests.conftest import shanghai

    clock.travel_to(shanghai(2026, 11, 23, 10, 0))


@pytest.fixture
def fail_reward_once(monkeypatch):
    """The process dies (here: raises) between record_payment's commit and the referral reward."""
    real, calls = referral.reward_first_order, []

    async def failing(**kw):
        calls.append(kw)
        if len(calls) == 1:
            raise RuntimeError("crashed after the payment's commit")
        return await real(**kw)

    monkeypatch.setattr(referral, "reward_first_order", failing)
    return calls


async def invited_pair(login):
    inviter = await login("o-inviter")
    invitee = await login("o-invitee", invite_code=inviter.data["invite_code"])
    assert await Referral.filter(invitee_id=invitee.id).exists()
    return inviter, invitee


def sweep_ctx(client, clock):
    return JobContext(settings=client.app[keys.settings_key], redis=client.app[keys.redis_key], wechat=None,
                      now=clock.now(), today=clock.now().date())


async def test_redelivery_redrives_a_referral_reward_lost_after_the_commit(client, login, clock, fail_reward_once):
    inviter, invitee = await invited_pair(login)
    h, b, tid = signed_payment(openid="o-invitee", fen=10_000, timestamp=int(clock.now().timestamp()),
                             success_time=sim.rfc3339(clock.now().timestamp()))
    assert (await post_signed(client, h, b)).status == 500  # recorded, then the reward was lost
    assert await Payment.filter(transaction_id=tid).exists()
    assert (await Referral.get(invitee_id=invitee.id)).rewarded_at is None
    replies = await asyncio.gather(*(post_signed(client, h, b) for _ in range(30)))  # WeChat's retries
    assert [r.status for r in replies] == [204] * 30
    assert (await Referral.get(invitee_id=invitee.id)).rewarded_at is not None
    assert (await Member.get(id=inviter.id)).points == 50
    assert (await Member.get(id=invitee.id)).points == 100 + 50
    assert await LedgerEntry.filter(reason="referral").count() == 2
    await assert_ledger_consistent()


async def test_sweep_rewards_a_referral_lost_after_the_commit(client, login, clock, fail_reward_once):
    job = load_all()["sweep_payment_effects"]
    inviter, invitee = await invited_pair(login)
    h, b, _ = signed_payment(openid="o-invitee", fen=10_000, timestamp=int(clock.now().timestamp()),
                             success_time=sim.rfc3339(clock.now().timestamp()))
    assert (await post_signed(client, h, b)).status == 500
    results = await asyncio.gather(*(job.run(sweep_ctx(client, clock)) for _ in range(10)))
    assert sum(r["rewarded"] for r in results) == 1
    assert (await Member.get(id=inviter.id)).points == 50 and (await Member.get(id=invitee.id)).points == 150
    assert (await job.run(sweep_ctx(client, clock)))["rewarded"] == 0
    await assert_ledger_consistent()


@pytest.mark.smoke
async def test_sweep_credits_a_payer_who_became_a_member_without_login(client, clock):
    from app.domain.members import new_invite_code

    job = load_all()["sweep_payment_effects"]
    h, b, tid = signed_payment(openid="o-late-member", fen=20_000, timestamp=int(clock.now().timestamp()),
                             success_time=sim.rfc3339(clock.now().timestamp()))
    assert (await post_signed(client, h, b)).status == 204
    assert (await Payment.get(transaction_id=tid)).member_id is None
    # The member row appears by a path that did not credit (a login racing the payment's insert).
    member = await Member.create(appid=MP_APPID, openid="o-late-member", invite_code=new_invite_code())
    results = await asyncio.gather(*(job.run(sweep_ctx(client, clock)) for _ in range(10)))
    assert sum(r["credited"] for r in results) == 1
    fresh = await Member.get(id=member.id)
    assert (fresh.points, fresh.growth) == (200, 200)
    assert (await Payment.get(transaction_id=tid)).credited
    await assert_ledger_consistent()


async def test_redelivery_credits_a_payer_who_became_a_member(client, clock):
    from app.domain.members import new_invite_code

    h, b, tid = signed_payment(openid="o-late-2", fen=20_000, timestamp=int(clock.now().timestamp()),
                             success_time=sim.rfc3339(clock.now().timestamp()))
    assert (await post_signed(client, h, b)).status == 204
    member = await Member.create(appid=MP_APPID, openid="o-late-2", invite_code=new_invite_code())
    replies = await asyncio.gather(*(post_signed(client, h, b) for _ in range(20)))
    assert [r.status for r in replies] == [204] * 20
    assert (await Member.get(id=member.id)).points == 200
    await assert_ledger_consistent()


async def test_sweep_leaves_old_payments_alone(client, login, clock, fail_reward_once):
    job = load_all()["sweep_payment_effects"]
    _, invitee = await invited_pair(login)
    h, b, _ = signed_payment(openid="o-invitee", fen=10_000, timestamp=int(clock.now().timestamp()),
                             success_time=sim.rfc3339(clock.now().timestamp()))
    assert (await post_signed(client, h, b)).status == 500
    clock.travel_to(clock.now() + timedelta(days=8))
    assert (await job.run(sweep_ctx(client, clock)))["rewarded"] == 0
    assert (await Referral.get(invitee_id=invitee.id)).rewarded_at is None
