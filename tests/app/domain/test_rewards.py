"""The points mall on the real app: races for the last items, the per-member limit, points + cash
orders through the simulated WeChat Pay, the 15-minute release, and a payment racing the release."""
import asyncio
import base64
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from app import keys
from app.domain import points, rewards
from app.models import LedgerEntry, Member, Redemption, Reward
from miniprogram_stub.simulator.merchant import merchant_state_key
from miniprogram_stub.simulator.pay import (MERCHANT_PRIVATE_KEY_PATH, SANDBOX_MCHID, SANDBOX_MERCHANT_SERIAL,
                                            merchant_public_key)
from tests.conftest import MP_APPID, assert_ledger_consistent, shanghai

PUBLIC_BASE_URL = "https://members.example.com"


@pytest.fixture
def settings(settings, simulator):
    """The test app with a merchant key: WeChat Pay is the simulator's merchant API."""
    return settings.with_(pay_mchid=SANDBOX_MCHID, pay_private_key_path=str(MERCHANT_PRIVATE_KEY_PATH),
                          pay_cert_serial=SANDBOX_MERCHANT_SERIAL,
                          pay_api_base=str(simulator.make_url("")).rstrip("/"),
                          public_base_url=PUBLIC_BASE_URL)


@pytest.fixture
def orders(simulator):
    return simulator.app[merchant_state_key].orders


async def fund(member_id: int, amount: int, clock) -> None:
    await points.award(member_id=member_id, amount=amount, reason="gift", key=f"test-gift:{member_id}",
                       now=clock.now(), expiry_months=12)


async def test_hundred_members_race_for_the_last_ten(client, login, clock):
    clock.travel_to(shanghai(2026, 11, 20, 10, 0))
    reward = await Reward.create(name="保温杯", points=300, stock=10, per_member_limit=1)
    members = [await login(f"o-racer-{n}") for n in range(100)]
    for m in members:
        await fund(m.id, 500, clock)

    responses = await asyncio.gather(*[m.post(f"/mp/rewards/{reward.id}/redeem") for m in members])
    bodies = [await r.json() for r in responses]
    won = [b for r, b in zip(responses, bodies) if r.status == 200]
    lost = [b for r, b in zip(responses, bodies) if r.status != 200]
    assert len(won) == 10, [r.status for r in responses]
    assert {r.status for r in responses} == {200, 409}
    assert {b["error"]["code"] for b in lost} == {"out_of_stock"}
    assert all(b["redemption"]["status"] == "done" and b["balance"] == 200 for b in won)

    assert (await Reward.get(id=reward.id)).stock == 0
    assert await Redemption.filter(reward_id=reward.id, status="done").count() == 10
    balances = await Member.all().values_list("points", flat=True)
    assert sum(balances) == 100 * 500 - 10 * 300  # no point lost, none spent twice
    assert await LedgerEntry.filter(reason="redeem").count() == 10
    await assert_ledger_consistent()


async def test_per_member_limit_holds_under_a_race(client, login, clock):
    reward = await Reward.create(name="贴纸", points=10, stock=100, per_member_limit=2)
    m = await login()
    await fund(m.id, 1000, clock)
    for _ in range(3):  # racing rounds: a round may lose a slot to its twin, never exceed the limit
        responses = await asyncio.gather(*[m.post(f"/mp/rewards/{reward.id}/redeem") for _ in range(20)])
        codes = {(await r.json())["error"]["code"] for r in responses if r.status != 200}
        assert codes <= {"limit_reached", "redeem_in_progress"}
        assert {r.status for r in responses} <= {200, 409}
    assert await Redemption.filter(member_id=m.id, reward_id=reward.id).count() == 2
    assert (await Reward.get(id=reward.id)).stock == 98
    assert (await Member.get(id=m.id)).points == 1000 - 2 * 10
    listed = await (await m.get("/mp/rewards")).json()
    assert listed["items"][0]["redeemed"] == 2
    await assert_ledger_consistent()


async def test_not_enough_points_takes_no_stock(client, login, clock):
    reward = await Reward.create(name="音箱", points=5000, stock=3)
    m = await login()
    await fund(m.id, 100, clock)
    resp = await m.post(f"/mp/rewards/{reward.id}/redeem")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "insufficient_points"
    assert (await Reward.get(id=reward.id)).stock == 3
    assert await Redemption.all().count() == 0
    assert (await Member.get(id=m.id)).points == 100
    await assert_ledger_consistent()


async def test_cash_item_is_pending_with_pay_params_and_an_order(client, login, clock, orders):
    clock.travel_to(shanghai(2026, 11, 20, 10, 0))
    reward = await Reward.create(name="咖啡机", points=699, cash_fen=9900, stock=5)
    m = await login("o-cash")
    await fund(m.id, 1000, clock)
    resp = await m.post(f"/mp/rewards/{reward.id}/redeem")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["redemption"]["status"] == "pending" and body["balance"] == 301
    trade_no = body["redemption"]["out_trade_no"]
    order = orders[trade_no]
    assert order["amount_fen"] == 9900 and order["openid"] == "o-cash" and order["mchid"] == SANDBOX_MCHID
    assert order["appid"] == MP_APPID and order["notify_url"].endswith("/wechat/pay/notify")
    params = body["pay_params"]
    assert params["package"] == f"prepay_id={order['prepay_id']}" and params["signType"] == "RSA"
    signed = f"{MP_APPID}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n".encode()
    merchant_public_key().verify(base64.b64decode(params["paySign"]), signed, padding.PKCS1v15(), hashes.SHA256())
    row = await Redemption.get(out_trade_no=trade_no)
    assert row.prepay_id == order["prepay_id"] and row.expires_at == clock.now() + timedelta(minutes=15)
    assert (await Reward.get(id=reward.id)).stock == 4

    assert await rewards.on_paid(out_trade_no=trade_no, transaction_id="4200001", now=clock.now()) is True
    assert await rewards.on_paid(out_trade_no=trade_no, transaction_id="4200001", now=clock.now()) is False
    clock.travel_to(shanghai(2026, 11, 20, 11, 0))
    assert await rewards.release_expired(now=clock.now()) == 0  # paid: nothing to give back
    assert (await Redemption.get(id=row.id)).status == "done"
    assert (await Member.get(id=m.id)).points == 301
    await assert_ledger_consistent()


async def test_unpaid_order_is_released_after_fifteen_minutes(client, login, clock):
    start = shanghai(2026, 11, 20, 10, 0)
    clock.travel_to(start)
    reward = await Reward.create(name="耳机", points=200, cash_fen=1000, stock=1)
    m = await login()
    await fund(m.id, 300, clock)
    body = await (await m.post(f"/mp/rewards/{reward.id}/redeem")).json()
    assert body["redemption"]["status"] == "pending"
    other = await login()
    await fund(other.id, 300, clock)
    resp = await other.post(f"/mp/rewards/{reward.id}/redeem")
    assert (await resp.json())["error"]["code"] == "out_of_stock"  # held for the first member

    assert await rewards.release_expired(now=start + timedelta(minutes=14, seconds=59)) == 0
    assert await rewards.release_expired(now=start + timedelta(minutes=15)) == 1
    assert await rewards.release_expired(now=start + timedelta(minutes=16)) == 0
    row = await Redemption.get(id=body["redemption"]["id"])
    assert row.status == "released"
    assert (await Reward.get(id=reward.id)).stock == 1
    assert (await Member.get(id=m.id)).points == 300
    assert await LedgerEntry.filter(idempotency_key=f"release:{row.id}", delta=200).exists()
    # A late payment loses: the hold is gone.
    assert await rewards.on_paid(out_trade_no=row.out_trade_no, transaction_id="late", now=clock.now()) is False

    # The freed slot and stock can be redeemed again (a new slot key; the released one is kept).
    clock.travel_to(start + timedelta(minutes=20))
    again = await m.post(f"/mp/rewards/{reward.id}/redeem")
    assert again.status == 200, await again.json()
    await assert_ledger_consistent()


async def test_payment_and_release_racing_have_one_winner(client, login, clock):
    start = shanghai(2026, 11, 20, 10, 0)
    clock.travel_to(start)
    reward = await Reward.create(name="台灯", points=50, cash_fen=500, stock=40, per_member_limit=1)
    members = [await login() for _ in range(20)]
    trade_nos = []
    for m in members:
        await fund(m.id, 100, clock)
        body = await (await m.post(f"/mp/rewards/{reward.id}/redeem")).json()
        trade_nos.append(body["redemption"]["out_trade_no"])
    late = start + timedelta(minutes=15)
    results = await asyncio.gather(
        rewards.release_expired(now=late),
        *[rewards.on_paid(out_trade_no=t, transaction_id=f"tx-{t}", now=late) for t in trade_nos])
    released, paid = results[0], sum(results[1:])
    assert released + paid == 20
    done = await Redemption.filter(status="done").count()
    assert done == paid and await Redemption.filter(status="released").count() == released
    assert (await Reward.get(id=reward.id)).stock == 40 - done
    assert sum(await Member.all().values_list("points", flat=True)) == 20 * 100 - done * 50
    await assert_ledger_consistent()


async def test_pay_down_releases_the_hold_at_once(client, login, clock, sim_state):
    reward = await Reward.create(name="雨伞", points=100, cash_fen=2000, stock=2)
    m = await login()
    await fund(m.id, 100, clock)
    sim_state.down = True
    resp = await m.post(f"/mp/rewards/{reward.id}/redeem")
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "pay_unavailable"
    assert (await Redemption.get(member_id=m.id)).status == "released"
    assert (await Reward.get(id=reward.id)).stock == 2 and (await Member.get(id=m.id)).points == 100
    await assert_ledger_consistent()


async def test_pay_refusal_is_503_and_releases(client, login, clock, simulator):
    simulator.app[merchant_state_key].fail_next_order = {"status": 400, "code": "PARAM_ERROR", "message": "x"}
    reward = await Reward.create(name="雨伞", points=100, cash_fen=2000, stock=2)
    m = await login()
    await fund(m.id, 100, clock)
    resp = await m.post(f"/mp/rewards/{reward.id}/redeem")
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "pay_failed"
    assert (await Reward.get(id=reward.id)).stock == 2 and (await Member.get(id=m.id)).points == 100
    await assert_ledger_consistent()


async def test_cash_item_without_merchant_key_is_503(aiohttp_client, settings, redis_url, clock):
    from app.main import create_app
    from tests.conftest import reset_state

    bare = await aiohttp_client(create_app(settings.with_(pay_mchid=None)))
    await reset_state(redis_url)
    assert bare.app[keys.pay_client_key] is None
    reward = await Reward.create(name="咖啡机", points=699, cash_fen=9900, stock=5)
    token = (await (await bare.post("/mp/login", json={"code": "sim:o-bare"})).json())["token"]
    resp = await bare.post(f"/mp/rewards/{reward.id}/redeem", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "pay_not_configured"
    assert (await Reward.get(id=reward.id)).stock == 5


async def test_item_with_a_coupon_issues_it_once_per_redemption(client, login, clock):
    from app.models import Coupon, CouponTemplate

    tpl = await CouponTemplate.create(key="mall-20", name="20元券", amount_fen=2000, valid_days=30)
    plain = await Reward.create(name="20元券", points=100, stock=5, per_member_limit=2, coupon_template=tpl)
    paid = await Reward.create(name="券+现金", points=10, cash_fen=100, stock=5, coupon_template=tpl)
    m = await login()
    await fund(m.id, 500, clock)
    body = await (await m.post(f"/mp/rewards/{plain.id}/redeem")).json()
    assert body["coupon"]["code"]
    coupon = await Coupon.get(code=body["coupon"]["code"])
    assert coupon.member_id == m.id and coupon.issue_key == f"reward:{body['redemption']['id']}"

    pending = await (await m.post(f"/mp/rewards/{paid.id}/redeem")).json()
    assert "coupon" not in pending and await Coupon.filter(member_id=m.id).count() == 1
    trade_no = pending["redemption"]["out_trade_no"]
    assert await rewards.on_paid(out_trade_no=trade_no, transaction_id="t1", now=clock.now())
    assert await rewards.on_paid(out_trade_no=trade_no, transaction_id="t1", now=clock.now()) is False
    assert await Coupon.filter(member_id=m.id).count() == 2
    await assert_ledger_consistent()


async def test_sandbox_mode_pays_through_the_in_process_simulator(aiohttp_client, settings, redis_url, clock):
    from app.main import create_app
    from tests.conftest import reset_state

    sandbox = await aiohttp_client(create_app(settings.with_(mp_appid=None, mp_secret=None, pay_mchid=None)))
    await reset_state(redis_url)
    assert sandbox.app[keys.pay_client_key] is not None
    reward = await Reward.create(name="咖啡机", points=10, cash_fen=9900, stock=5)
    login = await (await sandbox.post("/mp/login", json={"code": "sim:o-sandbox"})).json()
    await fund(login["member"]["id"], 10, clock)
    resp = await sandbox.post(f"/mp/rewards/{reward.id}/redeem", headers={"Authorization": f"Bearer {login['token']}"})
    body = await resp.json()
    assert resp.status == 200, body
    orders = sandbox.app[keys.simulator_key][merchant_state_key].orders
    assert orders[body["redemption"]["out_trade_no"]]["appid"] == "wx-sandbox-mp"
    assert body["pay_params"]["package"].startswith("prepay_id=wx")
    await assert_ledger_consistent()


async def test_notify_url_comes_from_public_base_url_never_from_headers(client, login, clock, orders):
    reward = await Reward.create(name="咖啡机", points=10, cash_fen=9900, stock=5)
    m = await login("o-host")
    await fund(m.id, 10, clock)
    resp = await client.post(f"/mp/rewards/{reward.id}/redeem",
                             headers={**m.headers, "Host": "evil.example", "X-Forwarded-Proto": "https",
                                      "X-Forwarded-Host": "evil.example"})
    body = await resp.json()
    assert resp.status == 200, body
    assert orders[body["redemption"]["out_trade_no"]]["notify_url"] == f"{PUBLIC_BASE_URL}/wechat/pay/notify"


async def test_pay_order_without_public_base_url_outside_sandbox_is_503(aiohttp_client, settings, redis_url, clock):
    from app.main import create_app
    from tests.conftest import reset_state

    bare = await aiohttp_client(create_app(settings.with_(public_base_url=None)))
    await reset_state(redis_url)
    reward = await Reward.create(name="咖啡机", points=10, cash_fen=9900, stock=5)
    login = await (await bare.post("/mp/login", json={"code": "sim:o-nobase"})).json()
    await fund(login["member"]["id"], 10, clock)
    resp = await bare.post(f"/mp/rewards/{reward.id}/redeem", headers={"Authorization": f"Bearer {login['token']}"})
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "pay_not_configured"
    assert (await Reward.get(id=reward.id)).stock == 5 and await Redemption.all().count() == 0
    await assert_ledger_consistent()


def test_public_base_url_setting():
    from app.config import Settings

    assert Settings.from_env({"PUBLIC_BASE_URL": "https://m.example.com/"}).pay_notify_base == "https://m.example.com"
    assert Settings.from_env({}).pay_notify_base == "http://127.0.0.1:8080"  # sandbox: the local server
    assert Settings.from_env({"WECHAT_MP_APPID": "wx1"}).pay_notify_base is None
