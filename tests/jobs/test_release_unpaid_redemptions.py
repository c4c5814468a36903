"""The release job: registered every minute, gives back unpaid points + cash holds."""
from datetime import timedelta

from app import keys
from app.models import Member, Redemption, Reward
from jobs.registry import JobContext, load_all
from miniprogram_stub.simulator.pay import MERCHANT_PRIVATE_KEY_PATH, SANDBOX_MCHID, SANDBOX_MERCHANT_SERIAL
from tests.conftest import assert_ledger_consistent, shanghai

import pytest


@pytest.fixture
def settings(settings, simulator):
    return settings.with_(pay_mchid=SANDBOX_MCHID, pay_private_key_path=str(MERCHANT_PRIVATE_KEY_PATH),
                          pay_cert_serial=SANDBOX_MERCHANT_SERIAL,
                          pay_api_base=str(simulator.make_url("")).rstrip("/"),
                          public_base_url="https://members.example.com")


async def test_job_releases_unpaid_holds(client, login, clock):
    from app.domain import points

    job = load_all()["release_unpaid_redemptions"]
    assert job.schedule == {"minute": "*"}
    start = shanghai(2026, 11, 20, 10, 0)
    clock.travel_to(start)
    reward = await Reward.create(name="耳机", points=200, cash_fen=1000, stock=1)
    m = await login()
    await points.award(member_id=m.id, amount=200, reason="gift", key="gift", now=start, expiry_months=12)
    assert (await m.post(f"/mp/rewards/{reward.id}/redeem")).status == 200

    def ctx(now):
        return JobContext(settings=client.app[keys.settings_key], redis=client.app[keys.redis_key],
                          wechat=client.app[keys.wechat_key], now=now, today=now.date())

    assert await job.run(ctx(start + timedelta(minutes=10))) == {"released": 0}
    assert await job.run(ctx(start + timedelta(minutes=15))) == {"released": 1}
    assert await job.run(ctx(start + timedelta(minutes=16))) == {"released": 0}
    assert (await Redemption.get(member_id=m.id)).status == "released"
    assert (await Member.get(id=m.id)).points == 200 and (await Reward.get(id=reward.id)).stock == 1
    await assert_ledger_consistent()
