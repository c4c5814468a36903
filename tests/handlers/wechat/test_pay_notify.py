"""POST /wechat/pay/notify (APIv3) and the v2 XML forms, signed as WeChat signs them."""
import asyncio
import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.models import LedgerEntry, Member, Payment, Refund, TierChange
from miniprogram_stub.simulator import pay as sim
from tests.conftest import MP_APPID, assert_ledger_consistent, shanghai

NOTIFY = "/wechat/pay/notify"


@pytest.fixture
def settings(settings):
    """The test app has mini-program credentials (not sandbox): configure pay with the test keys."""
    return settings.with_(pay_apiv3_key=sim.SANDBOX_APIV3_KEY.decode(),
                          pay_public_key_id=sim.SANDBOX_PUBLIC_KEY_ID,
                          pay_public_key_path=str(sim.PLATFORM_PUBLIC_KEY_PATH),
                          pay_v2_key=sim.SANDBOX_V2_KEY)


# Paid on a Monday unless a test says otherwise: never the member day (Thursday: double
# points), whatever day the suite runs on (libfaketime moves it to a Thursday, 2027-12-02).
A_MONDAY = "2026-11-23T10:00:00+08:00"


def signed_payment(*, openid: str, fen: int, transaction_id: str | None = None, timestamp: int | None = None,
                   success_time: str | None = A_MONDAY, **kw) -> tuple[dict, bytes, str]:
    """A TRANSACTION.SUCCESS notification signed by the platform key: (headers, body, transaction_id)."""
    transaction_id = transaction_id or f"4200{uuid.uuid4().hex[:24]}"
    resource = sim.transaction_resource(openid=openid, transaction_id=transaction_id,
                                        out_trade_no=f"o-{transaction_id[-8:]}", total_fen=fen,
                                        appid=MP_APPID, success_time=success_time)
    headers, body = sim.build_v3_notification(event_type="TRANSACTION.SUCCESS", resource=resource,
                                              timestamp=timestamp, **kw)
    return headers, body, transaction_id


def signed_refund(*, transaction_id: str, fen: int, total: int, refund_id: str | None = None, **kw):
    refund_id = refund_id or f"5030{uuid.uuid4().hex[:24]}"
    resource = sim.refund_resource(transaction_id=transaction_id, out_trade_no="o", refund_id=refund_id,
                                   out_refund_no=f"r-{refund_id[-8:]}", refund_fen=fen, total_fen=total)
    headers, body = sim.build_v3_notification(event_type="REFUND.SUCCESS", resource=resource, **kw)
    return headers, body, refund_id


async def post_signed(client, headers, body):
    return await client.post(NOTIFY, data=body, headers=headers)


async def nothing_stored():
    assert await Payment.all().count() == 0
    assert await LedgerEntry.filter(reason="purchase").count() == 0


async def test_payment_awards_points_growth_and_last_paid(client, login, clock):
    clock.travel_to(shanghai(2026, 11, 23, 10, 0))  # a Monday
    member = await login("o-pay-1")
    headers, body, tid = signed_payment(openid="o-pay-1", fen=12_850, timestamp=int(clock.now().timestamp()),
                                        success_time="2026-11-23T10:00:00+08:00")
    resp = await post_signed(client, headers, body)
    assert resp.status == 204, await resp.text()
    me = await (await member.get("/mp/me")).json()
    assert me["points"] == 128 and me["growth"] == 128
    row = await Member.get(id=member.id)
    assert row.last_paid_at is not None
    payment = await Payment.get(transaction_id=tid)
    assert payment.credited and payment.points_awarded == 128 and payment.member_id == member.id
    items = (await (await member.get("/mp/points")).json())["items"]
    assert items[0]["reason"] == "purchase" and items[0]["delta"] == 128
    await assert_ledger_consistent()


async def test_twenty_identical_notifications_award_once(client, login, clock):
    member = await login("o-dup")
    now = int(clock.now().timestamp())
    tid = "4200000000000000000000000001"
    # Each delivery is signed afresh (own nonce), as WeChat's retries are.
    # paid on a Monday: no member day, whatever day the suite runs
    sends = [signed_payment(openid="o-dup", fen=50_000, transaction_id=tid, timestamp=now,
                            success_time="2026-11-23T10:00:00+08:00") for _ in range(20)]
    responses = await asyncio.gather(*(post_signed(client, h, b) for h, b, _ in sends))
    assert [r.status for r in responses] == [204] * 20
    assert await Payment.filter(transaction_id=tid).count() == 1
    assert await LedgerEntry.filter(idempotency_key=f"pay:{tid}").count() == 1
    me = await (await member.get("/mp/me")).json()
    assert me["points"] == 500 and me["growth"] == 500 and me["tier"] == "silver"
    assert await TierChange.filter(member_id=member.id, cause="payment").count() == 1
    await assert_ledger_consistent()


async def test_payment_crosses_several_tiers_at_once(client, login, clock):
    member = await login("o-big")
    h, b, _ = signed_payment(openid="o-big", fen=2_000_000, timestamp=int(clock.now().timestamp()),
                             success_time="2026-11-23T10:00:00+08:00")
    assert (await post_signed(client, h, b)).status == 204
    me = await (await member.get("/mp/me")).json()
    assert me["tier"] == "diamond" and me["growth"] == 20_000
    change = await TierChange.get(member_id=member.id)
    assert (change.from_tier, change.to_tier, change.cause) == ("regular", "diamond", "payment")
    await assert_ledger_consistent()


async def test_payment_refund_and_duplicate_refund_interleaved(client, login, clock):
    member = await login("o-ref")
    now = int(clock.now().timestamp())
    h, b, tid = signed_payment(openid="o-ref", fen=10_000, timestamp=now,
                               success_time="2026-11-23T10:00:00+08:00")
    assert (await post_signed(client, h, b)).status == 204
    refund_id = "5030000000000000000000000001"
    refunds = [signed_refund(transaction_id=tid, fen=3_000, total=10_000, refund_id=refund_id, timestamp=now)
               for _ in range(6)]
    again = [signed_payment(openid="o-ref", fen=10_000, transaction_id=tid, timestamp=now) for _ in range(4)]
    responses = await asyncio.gather(*(post_signed(client, h, b) for h, b, _ in refunds + again))
    assert {r.status for r in responses} == {204}
    assert await Refund.filter(refund_id=refund_id).count() == 1
    me = await (await member.get("/mp/me")).json()
    assert me["points"] == 70 and me["growth"] == 70
    await assert_ledger_consistent()


async def test_refund_before_payment_is_retryable(client, login, clock):
    await login("o-early")
    now = int(clock.now().timestamp())
    h, b, refund_id = signed_refund(transaction_id="4200-not-yet", fen=100, total=100, timestamp=now)
    resp = await post_signed(client, h, b)
    assert resp.status == 500
    assert await resp.json() == {"code": "FAIL", "message": "payment not yet recorded"}
    assert await Refund.all().count() == 0
    # The same delivery may come again once the payment is in (its nonce was not kept).
    ph, pb, _ = signed_payment(openid="o-early", fen=100, transaction_id="4200-not-yet", timestamp=now)
    assert (await post_signed(client, ph, pb)).status == 204
    assert (await post_signed(client, h, b)).status == 204
    assert (await Member.get(openid="o-early")).points == 0
    await assert_ledger_consistent()


async def test_pending_payment_credited_at_first_login(client, login, clock):
    now = int(clock.now().timestamp())
    h, b, tid = signed_payment(openid="o-later", fen=8_800, timestamp=now,
                               success_time="2026-11-23T10:00:00+08:00")
    assert (await post_signed(client, h, b)).status == 204
    payment = await Payment.get(transaction_id=tid)
    assert payment.member_id is None and not payment.credited
    assert await LedgerEntry.all().count() == 0
    member = await login("o-later")
    assert member.data["points"] == 88
    await login("o-later")  # a second login credits nothing more
    assert (await Member.get(id=member.id)).points == 88
    assert await LedgerEntry.filter(idempotency_key=f"pay:{tid}").count() == 1
    assert (await Payment.get(transaction_id=tid)).credited
    await assert_ledger_consistent()


async def test_other_event_types_are_acknowledged(client, clock):
    headers, body = sim.build_v3_notification(event_type="TRANSACTION.CLOSED", resource={"x": 1},
                                              timestamp=int(clock.now().timestamp()))
    assert (await post_signed(client, headers, body)).status == 204
    await nothing_stored()


# -- rejection paths: each refused, nothing stored ------------------------------------------------

def _other_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("case", ["forged", "wrong_serial", "stale", "tampered", "wrong_key", "apiv3_key",
                                  "probe", "no_headers"])
async def test_rejected_notifications_store_nothing(client, login, clock, case):
    await login("o-evil")
    now = int(clock.now().timestamp())
    kw = {}
    if case == "wrong_serial":
        kw["serial"] = "PUB_KEY_ID_UNKNOWN"
    if case == "stale":
        kw["timestamp"] = now - 301
    if case == "wrong_key":
        kw["private_key"] = _other_key()
    if case == "apiv3_key":
        kw["apiv3_key"] = b"another-apiv3-key-of-32-bytes!!!"
    headers, body, _ = signed_payment(openid="o-evil", fen=99_900, timestamp=kw.pop("timestamp", now), **kw)
    if case == "forged":
        body = body.replace(b'"id":"', b'"id":"x', 1)
    if case == "tampered":
        envelope = json.loads(body)
        cipher = envelope["resource"]["ciphertext"]
        envelope["resource"]["ciphertext"] = ("A" if cipher[0] != "A" else "B") + cipher[1:]
        body = json.dumps(envelope).encode()
        headers = sim.signed_headers(body=body, private_key=sim.platform_private_key(),
                                     serial=sim.SANDBOX_PUBLIC_KEY_ID, timestamp=now, nonce=sim.random_nonce())
    if case == "probe":
        headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]
    if case == "no_headers":
        headers = {"Content-Type": "application/json"}
    resp = await post_signed(client, headers, body)
    assert resp.status == 401, await resp.text()
    answer = await resp.json()
    assert answer["code"] == "FAIL" and answer["message"]
    await nothing_stored()


async def test_redelivered_notification_is_acknowledged_and_changes_nothing(client, login, clock):
    """The same delivery again (same nonce: our 204 was lost) is a 204, not a 401 WeChat retries for a day."""
    member = await login("o-replay")
    h, b, _ = signed_payment(openid="o-replay", fen=1_000, timestamp=int(clock.now().timestamp()))
    assert (await post_signed(client, h, b)).status == 204
    resp = await post_signed(client, h, b)
    assert resp.status == 204, await resp.text()
    assert await LedgerEntry.filter(reason="purchase").count() == 1
    assert (await Member.get(id=member.id)).points == 10


async def test_thirty_concurrent_redeliveries_of_one_notification_apply_once(client, login, clock):
    member = await login("o-redeliver")
    h, b, tid = signed_payment(openid="o-redeliver", fen=30_000, timestamp=int(clock.now().timestamp()))
    rh, rb, refund_id = signed_refund(transaction_id=tid, fen=10_000, total=30_000,
                                      timestamp=int(clock.now().timestamp()))
    replies = await asyncio.gather(*(post_signed(client, h, b) for _ in range(30)))
    assert [r.status for r in replies] == [204] * 30
    replies = await asyncio.gather(*(post_signed(client, rh, rb) for _ in range(30)))
    assert [r.status for r in replies] == [204] * 30
    assert await Payment.filter(transaction_id=tid).count() == 1
    assert await Refund.filter(refund_id=refund_id).count() == 1
    assert (await Member.get(id=member.id)).points == 300 - 100
    await assert_ledger_consistent()


async def test_stale_redelivery_is_still_refused(client, login, clock):
    await login("o-stale")
    h, b, _ = signed_payment(openid="o-stale", fen=1_000, timestamp=int(clock.now().timestamp()) - 301)
    resp = await post_signed(client, h, b)
    assert resp.status == 401 and (await resp.json())["message"] == "stale_timestamp"
    await nothing_stored()


async def test_forged_request_does_not_burn_the_nonce(client, login, clock):
    await login("o-burn")
    h, b, _ = signed_payment(openid="o-burn", fen=1_000, timestamp=int(clock.now().timestamp()))
    forged = dict(h, **{"Wechatpay-Signature": sim.sign_v3(_other_key(), h["Wechatpay-Timestamp"],
                                                           h["Wechatpay-Nonce"], b)})
    assert (await post_signed(client, forged, b)).status == 401
    assert (await post_signed(client, h, b)).status == 204


async def test_signed_but_malformed_json_and_resource(client, clock):
    now = int(clock.now().timestamp())
    body = b"{not json"
    headers = sim.signed_headers(body=body, private_key=sim.platform_private_key(),
                                 serial=sim.SANDBOX_PUBLIC_KEY_ID, timestamp=now, nonce=sim.random_nonce())
    resp = await post_signed(client, headers, body)
    assert resp.status == 400 and (await resp.json())["code"] == "FAIL"
    headers, body = sim.build_v3_notification(event_type="TRANSACTION.SUCCESS",
                                              resource={"transaction_id": 7}, timestamp=now)
    resp = await post_signed(client, headers, body)
    assert resp.status == 400 and (await resp.json())["code"] == "FAIL"
    await nothing_stored()


async def test_huge_body_refused(client):
    resp = await client.post(NOTIFY, data=b"{" + b" " * (70 * 1024) + b"}",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["code"] == "FAIL"
    await nothing_stored()


async def test_rotated_keys_both_accepted(aiohttp_client, settings, redis_url, tmp_path, clock):
    from cryptography.hazmat.primitives import serialization

    from app import keys
    from app.main import create_app
    from tests.conftest import reset_state

    new_key = _other_key()
    pem = tmp_path / "new.pem"
    pem.write_bytes(new_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    rotated = settings.with_(pay_public_key_id=f"{sim.SANDBOX_PUBLIC_KEY_ID},PUB_KEY_ID_NEW",
                             pay_public_key_path=f"{sim.PLATFORM_PUBLIC_KEY_PATH},{pem}")
    app_client = await aiohttp_client(create_app(rotated))
    await reset_state(redis_url)
    now = int(app_client.app[keys.clock_key].now().timestamp())
    old = signed_payment(openid="o-rot", fen=100, timestamp=now)
    new = signed_payment(openid="o-rot", fen=100, timestamp=now, private_key=new_key, serial="PUB_KEY_ID_NEW")
    crossed = signed_payment(openid="o-rot", fen=100, timestamp=now, private_key=new_key)
    assert (await post_signed(app_client, *old[:2])).status == 204
    assert (await post_signed(app_client, *new[:2])).status == 204
    assert (await post_signed(app_client, *crossed[:2])).status == 401
    assert await Payment.all().count() == 2


async def test_not_configured_is_503(aiohttp_client, settings, redis_url):
    from app.main import create_app

    bare = settings.with_(pay_apiv3_key=None, pay_public_key_id=None, pay_public_key_path=None, pay_v2_key=None)
    app_client = await aiohttp_client(create_app(bare))
    headers, body, _ = signed_payment(openid="o-x", fen=100)
    resp = await app_client.post(NOTIFY, data=body, headers=headers)
    assert resp.status == 503
    assert await resp.json() == {"code": "FAIL", "message": "pay_not_configured"}
    resp = await app_client.post("/wechat/pay/notify/v2", data=b"<xml></xml>")
    assert resp.status == 503 and b"FAIL" in await resp.read()


# -- v2 -------------------------------------------------------------------------------------------

def v2_payment(openid: str, fen: int, transaction_id: str, sign_type: str = "MD5", key: str = sim.SANDBOX_V2_KEY,
               time_end: str = "20261123100000"):  # a Monday: no member day, whatever day the suite runs
    params = sim.v2_payment_params(appid=MP_APPID, openid=openid, transaction_id=transaction_id,
                                   out_trade_no=f"o-{transaction_id}", total_fee=fen, time_end=time_end)
    return sim.build_v2_payment_xml(params, key=key, sign_type=sign_type)


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
async def test_v2_payment_and_refund(client, login, sign_type):
    member = await login("o-v2")
    body = v2_payment("o-v2", 20_000, "4200v2pay1", sign_type)
    replies = await asyncio.gather(*(client.post("/wechat/pay/notify/v2", data=body) for _ in range(5)))
    assert {r.status for r in replies} == {200}
    assert all(b"SUCCESS" in body for body in [await r.read() for r in replies])
    assert (await Member.get(id=member.id)).points == 200
    refund = sim.build_v2_refund_xml(sim.v2_refund_params(
        transaction_id="4200v2pay1", out_trade_no="o", refund_id="5030v2r1", out_refund_no="r1",
        total_fee=20_000, refund_fee=5_000), appid=MP_APPID)
    for _ in range(2):
        resp = await client.post("/wechat/pay/refund-notify/v2", data=refund)
        assert resp.status == 200 and b"SUCCESS" in await resp.read()
    assert (await Member.get(id=member.id)).points == 150
    await assert_ledger_consistent()


async def test_v2_half_refund_with_a_coupon_takes_back_half(client, login):
    """total_fee 100 yuan, cash_fee 80 (a 20-yuan coupon): a refund_fee of 50 yuan is half the order."""
    member = await login("o-v2coupon")
    params = sim.v2_payment_params(appid=MP_APPID, openid="o-v2coupon", transaction_id="4200v2cp",
                                   out_trade_no="o-v2cp", total_fee=10_000, cash_fee=8_000,
                                   time_end="20261123100000")  # a Monday: no member day
    assert (await client.post("/wechat/pay/notify/v2", data=sim.build_v2_payment_xml(params))).status == 200
    fresh = await Member.get(id=member.id)
    assert (fresh.points, fresh.growth) == (80, 80)
    for n in (1, 2):
        refund = sim.build_v2_refund_xml(sim.v2_refund_params(
            transaction_id="4200v2cp", out_trade_no="o-v2cp", refund_id=f"5030v2cp{n}", out_refund_no=f"r{n}",
            total_fee=10_000, refund_fee=5_000), appid=MP_APPID)
        assert (await client.post("/wechat/pay/refund-notify/v2", data=refund)).status == 200
        fresh = await Member.get(id=member.id)
        assert (fresh.points, fresh.growth) == (80 - 40 * n, 80 - 40 * n)  # 50 %, not 62.5 %
    await assert_ledger_consistent()


@pytest.mark.parametrize("body", [
    b"<xml><return_code>SUCCESS</return_code>",  # malformed
    b'<!DOCTYPE x [<!ENTITY a "b">]><xml><a>&a;</a></xml>',  # entities
    b"<xml>" + b"<a>x</a>" * 20_000 + b"</xml>",  # too large
])
async def test_v2_malformed_refused(client, body):
    resp = await client.post("/wechat/pay/notify/v2", data=body)
    assert resp.status in (400, 413)
    assert b"FAIL" in await resp.read()
    await nothing_stored()


async def test_v2_bad_sign_and_bad_req_info(client, login):
    await login("o-v2bad")
    resp = await client.post("/wechat/pay/notify/v2", data=v2_payment("o-v2bad", 100, "4200bad", key="x" * 32))
    assert resp.status == 400 and b"FAIL" in await resp.read()
    tampered = v2_payment("o-v2bad", 100, "4200bad").replace(b"<total_fee><![CDATA[100]]>",
                                                             b"<total_fee><![CDATA[9900]]>")
    resp = await client.post("/wechat/pay/notify/v2", data=tampered)
    assert resp.status == 400
    refund = sim.build_v2_refund_xml(sim.v2_refund_params(
        transaction_id="4200bad", out_trade_no="o", refund_id="r", out_refund_no="r",
        total_fee=100, refund_fee=100), key="y" * 32, appid=MP_APPID)
    resp = await client.post("/wechat/pay/refund-notify/v2", data=refund)
    assert resp.status == 400 and b"FAIL" in await resp.read()
    await nothing_stored()
    assert await Refund.all().count() == 0


async def test_redemption_order_completed_by_its_payment(client, login, clock):
    from app.models import Redemption, Reward

    member = await login("o-mall")
    reward = await Reward.create(name="杯子", points=100, cash_fen=990, stock=5)
    await Redemption.create(reward=reward, member_id=member.id, points=100, cash_fen=990, status="pending",
                            out_trade_no="rd0123456789abcdef")
    resource = sim.transaction_resource(openid="o-mall", transaction_id="4200mall1", out_trade_no="rd0123456789abcdef",
                                        total_fen=990, appid=MP_APPID, success_time="2026-11-23T10:00:00+08:00")
    for _ in range(2):
        headers, body = sim.build_v3_notification(event_type="TRANSACTION.SUCCESS", resource=resource,
                                                  timestamp=int(clock.now().timestamp()))
        assert (await post_signed(client, headers, body)).status == 204
    assert (await Redemption.get(out_trade_no="rd0123456789abcdef")).status == "done"
    assert (await Member.get(id=member.id)).points == 9  # ¥9.90: 9 purchase points
    await assert_ledger_consistent()
