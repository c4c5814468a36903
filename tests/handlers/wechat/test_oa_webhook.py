"""`/wechat/oa`: signatures, safe mode, hostile bodies, every route, retries and late replies."""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from datetime import timedelta

import pytest
from wechatpy.crypto import WeChatCrypto

from app import keys
from app.models import Checkin, LedgerEntry, Member, Referral
from app.wechat.oa import parse_xml
from miniprogram_stub.simulator.wechat import SANDBOX_OA_APPID, SANDBOX_OA_SECRET
from tests.conftest import assert_ledger_consistent

TOKEN = "oa-test-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
ACCOUNT = "gh_0123456789ab"
_times = itertools.count(1_800_000_000)
_nonces = itertools.count(4242)


@pytest.fixture
def reply_timeout():
    return 4.0


@pytest.fixture
def aes_key():
    """Plain mode unless a test asks for safe mode (`parametrize("aes_key", [AES_KEY])`)."""
    return None


@pytest.fixture
def settings(settings, reply_timeout, aes_key):
    return settings.with_(oa_appid=SANDBOX_OA_APPID, oa_secret=SANDBOX_OA_SECRET, oa_token=TOKEN,
                          oa_aes_key=aes_key, oa_reply_timeout=reply_timeout)


safe_mode = pytest.mark.parametrize("aes_key", [AES_KEY])


def now_of(client) -> int:
    """The app's clock in unix seconds: what WeChat's timestamp is checked against."""
    return int(client.app[keys.clock_key].now().timestamp())


def signed(client, token: str = TOKEN, *, timestamp: str | None = None,
           nonce: str | None = None) -> dict[str, str]:
    """Query args of a push as WeChat signs it: signature = sha1(sorted [token, timestamp,
    nonce]), the timestamp from the app's clock, a new nonce each time (WeChat's retries too)."""
    timestamp = timestamp or str(now_of(client))
    nonce = nonce or str(next(_nonces))
    sig = hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()
    return {"signature": sig, "timestamp": timestamp, "nonce": nonce}


def xml(openid: str, msg_type: str, *, create_time: int | None = None, **fields: str) -> bytes:
    """A push from `openid`; each CreateTime is new unless given (events dedup on it)."""
    parts = [f"<ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>",
             f"<FromUserName><![CDATA[{openid}]]></FromUserName>",
             f"<CreateTime>{create_time or next(_times)}</CreateTime>",
             f"<MsgType><![CDATA[{msg_type}]]></MsgType>"]
    parts += [f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()]
    return ("<xml>" + "".join(parts) + "</xml>").encode()


def text(openid: str, content: str, msg_id: str | None = None) -> bytes:
    return xml(openid, "text", Content=content, MsgId=msg_id or str(next(_times)))


def event(openid: str, name: str, **fields: str) -> bytes:
    return xml(openid, "event", Event=name, **fields)


async def post(client, body: bytes, *, params: dict | None = None):
    """POST a push signed like WeChat; returns (status, reply fields or None, raw text)."""
    resp = await client.post("/wechat/oa", data=body, params=signed(client) if params is None else params,
                             headers={"Content-Type": "text/xml"})
    raw = await resp.text()
    fields = parse_xml(raw.encode()) if raw.startswith("<xml>") else None
    return resp.status, fields, raw


async def say(client, body: bytes) -> str:
    """The reply text to a push ("" for `success`)."""
    status, fields, raw = await post(client, body)
    assert status == 200, raw
    if fields is None:
        assert raw == "success"
        return ""
    assert fields["MsgType"] == "text" and fields["FromUserName"] == ACCOUNT
    return fields["Content"]


@pytest.fixture
def member(login, sim_state):
    """`await member("name")` → (mini-program Member, OA openid), one person by unionid."""
    async def make(name: str):
        mp = await login(f"o-mp-{name}:u-{name}")
        sim_state.oa_users[f"o-oa-{name}"] = f"u-{name}"
        return mp, f"o-oa-{name}"
    return make


# ------------------------------------------------------------------ URL verification

async def test_url_verification_echoes(client):
    resp = await client.get("/wechat/oa", params={**signed(client), "echostr": "e-123"})
    assert resp.status == 200 and await resp.text() == "e-123"


async def test_url_verification_with_a_bad_signature_is_403(client):
    resp = await client.get("/wechat/oa", params={**signed(client, "wrong"), "echostr": "e-123"})
    assert resp.status == 403 and "e-123" not in await resp.text()


async def test_no_token_outside_sandbox_is_503(aiohttp_client, settings):
    from app.main import create_app

    bare = await aiohttp_client(create_app(settings.with_(oa_token=None)))
    resp = await bare.get("/wechat/oa", params={**signed(bare), "echostr": "x"})
    assert resp.status == 503
    assert (await bare.post("/wechat/oa", data=text("o", "帮助"), params=signed(bare))).status == 503


async def test_sandbox_uses_the_fixed_token(aiohttp_client, settings):
    from app.main import create_app

    sandbox = await aiohttp_client(create_app(settings.with_(mp_appid=None, mp_secret=None, oa_token=None)))
    resp = await sandbox.get("/wechat/oa", params={**signed(sandbox, "sandbox-oa-token"), "echostr": "ok"})
    assert resp.status == 200 and await resp.text() == "ok"


# ------------------------------------------------------------------ refusals

async def test_forged_signature_is_403_and_nothing_runs(client, member, redis):
    mp, oa_openid = await member("forged")
    body = event(oa_openid, "CLICK", EventKey="CHECKIN")
    for params in (signed(client, "not-the-token"), {}, {**signed(client), "signature": "0" * 40},
                   {**signed(client), "nonce": "other"}):
        status, _, _ = await post(client, body, params=params)
        assert status == 403
    assert await Checkin.all().count() == 0
    assert await redis.keys("oa:push:*") == []
    assert await Member.get(id=mp.id).values_list("oa_openid", flat=True) is None


HOSTILE = {
    "billion_laughs": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                      + b"".join(f'<!ENTITY lol{i} "{"&lol%d;" % (i - 1) * 10 if i else "&lol;" * 10}">'.encode()
                                 for i in range(1, 9))
                      + b"]><xml><Content>&lol8;</Content></xml>",
    "external_entity": b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Content>&e;</Content></xml>',
    "deep": b"<xml>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</xml>",
    "wide": b"<xml>" + b"<a>1</a>" * 5000 + b"</xml>",
    "long_text": b"<xml><Content>" + b"x" * 60000 + b"</Content></xml>",
    "not_xml": b"\x00\xff garbage \x01",
    "json": b'{"MsgType": "text"}',
    "empty": b"",
    "wrong_root": b"<html><ToUserName>a</ToUserName></html>",
    "truncated": b"<xml><ToUserName><![CDATA[gh",
    "missing_fields": b"<xml><MsgType>text</MsgType></xml>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_and_garbage_bodies_are_400_quickly(client, redis, name):
    started = time.perf_counter()
    status, _, _ = await post(client, HOSTILE[name])
    assert status == 400
    assert time.perf_counter() - started < 0.5
    assert await redis.keys("oa:push:*") == []


async def test_body_over_64_kib_is_413(client):
    status, _, _ = await post(client, b"<xml>" + b" " * (65 * 1024) + b"</xml>")
    assert status == 413


@safe_mode
async def test_safe_mode_with_a_bad_msg_signature_is_403(client, member, redis):
    _, oa_openid = await member("safebad")
    body, params = encrypt(client, event(oa_openid, "CLICK", EventKey="CHECKIN"))
    params["msg_signature"] = "0" * 40
    status, _, _ = await post(client, body, params=params)
    assert status == 403
    assert await Checkin.all().count() == 0
    assert await redis.keys("oa:push:*") == []


@safe_mode
async def test_safe_mode_refuses_a_plaintext_push_and_nothing_runs(client, member, redis):
    mp, oa_openid = await member("plainleak")
    status, _, _ = await post(client, event(oa_openid, "CLICK", EventKey="CHECKIN"))
    assert status == 403
    assert await Checkin.all().count() == 0
    assert await redis.keys("oa:push:*") == []
    assert (await Member.get(id=mp.id)).oa_openid is None


@pytest.mark.parametrize("offset", [310, -310, 3600, -86400])  # the edge itself: tests/app/wechat
async def test_a_timestamp_more_than_five_minutes_off_is_403(client, member, redis, offset):
    _, oa_openid = await member("stale")
    params = signed(client, timestamp=str(now_of(client) + offset))
    status, _, _ = await post(client, event(oa_openid, "CLICK", EventKey="CHECKIN"), params=params)
    assert status == 403
    resp = await client.get("/wechat/oa", params={**signed(client, timestamp=str(now_of(client) + offset)),
                                                  "echostr": "e-stale"})
    assert resp.status == 403 and "e-stale" not in await resp.text()
    assert await Checkin.all().count() == 0 and await redis.keys("oa:push:*") == []


async def test_the_window_is_the_apps_clock(client, member, clock):
    """The timestamp is judged by the app's clock (moved a year back here), not the host's."""
    _, oa_openid = await member("clocked")
    clock.travel_to(clock.now() - timedelta(days=365))
    assert "「签到」" in await say(client, text(oa_openid, "帮助"))
    resp = await client.get("/wechat/oa", params={**signed(client), "echostr": "e-then"})
    assert resp.status == 200 and await resp.text() == "e-then"
    clock.travel_to(clock.now() + timedelta(minutes=10))
    params = signed(client, timestamp=str(now_of(client) - 600))
    assert (await post(client, text(oa_openid, "帮助"), params=params))[0] == 403


@pytest.mark.smoke
async def test_a_signature_seen_before_is_403_whatever_the_body(client, member, redis):
    """A signature copied from an access log: the same query with another body runs nothing."""
    mp, oa_openid = await member("replay")
    params = signed(client)
    status, _, _ = await post(client, text(oa_openid, "帮助"), params=params)
    assert status == 200
    for body in (event(oa_openid, "CLICK", EventKey="CHECKIN"), text(oa_openid, "签到")):
        status, _, _ = await post(client, body, params=params)
        assert status == 403
    assert await Checkin.filter(member_id=mp.id).count() == 0
    # a URL verification's query is no more reusable, for a push or for another verification
    verification = signed(client)
    resp = await client.get("/wechat/oa", params={**verification, "echostr": "once"})
    assert resp.status == 200
    resp = await client.get("/wechat/oa", params={**verification, "echostr": "twice"})
    assert resp.status == 403
    assert (await post(client, text(oa_openid, "签到"), params=verification))[0] == 403
    assert await Checkin.filter(member_id=mp.id).count() == 0
    # the memory outlives the whole window, and no longer
    ttl = await redis.ttl(f"oa:seen:{params['timestamp']}:{params['nonce']}")
    assert 600 <= ttl <= 700


async def test_replays_at_once_run_once(client, member):
    """Dozens of copies of one signed request at the same moment: one is processed."""
    mp, oa_openid = await member("burst")
    params = signed(client)
    results = await asyncio.gather(*(post(client, event(oa_openid, "CLICK", EventKey="CHECKIN",
                                                         create_time=next(_times)), params=params)
                                     for _ in range(24)))
    assert sorted(status for status, _, _ in results) == [200] + [403] * 23
    assert await Checkin.filter(member_id=mp.id).count() == 1


@safe_mode
async def test_safe_mode_replay_is_403(client, member):
    mp, oa_openid = await member("safereplay")
    body, params = encrypt(client, text(oa_openid, "帮助"))
    assert (await post(client, body, params=params))[0] == 200
    assert (await post(client, body, params=params))[0] == 403


async def test_two_menu_clicks_in_one_second_are_two_pushes(client, member):
    mp, oa_openid = await member("twoclicks")
    second = next(_times)
    checked_in = await say(client, event(oa_openid, "CLICK", EventKey="CHECKIN", create_time=second))
    points = await say(client, event(oa_openid, "CLICK", EventKey="MY_POINTS", create_time=second))
    assert "签到成功" in checked_in
    assert "当前积分：5" in points
    assert await Checkin.filter(member_id=mp.id).count() == 1


# ------------------------------------------------------------------ safe mode

def encrypt(client, plain: bytes, *, nonce: str | None = None,
            timestamp: str | None = None) -> tuple[bytes, dict]:
    """WeChat's safe-mode push of `plain`: the envelope body and its query args."""
    timestamp = timestamp or str(now_of(client))
    nonce = nonce or f"n{next(_nonces)}"
    wrapped = WeChatCrypto(TOKEN, AES_KEY, SANDBOX_OA_APPID).encrypt_message(plain.decode(), nonce, timestamp)
    fields = parse_xml(wrapped.encode())
    body = (f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
            f"<Encrypt><![CDATA[{fields['Encrypt']}]]></Encrypt></xml>").encode()
    return body, {**signed(client, timestamp=timestamp, nonce=nonce), "encrypt_type": "aes",
                  "msg_signature": fields["MsgSignature"]}


@pytest.mark.smoke
@safe_mode
async def test_safe_mode_round_trip(client, member):
    mp, oa_openid = await member("safe")
    body, params = encrypt(client, event(oa_openid, "CLICK", EventKey="CHECKIN"))
    status, fields, raw = await post(client, body, params=params)
    assert status == 200 and fields is not None, raw
    assert set(fields) >= {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    reply = WeChatCrypto(TOKEN, AES_KEY, SANDBOX_OA_APPID).decrypt_message(
        raw, fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"])
    inner = parse_xml(reply.encode())
    assert inner["ToUserName"] == oa_openid and "签到成功" in inner["Content"]
    assert await Checkin.filter(member_id=mp.id).count() == 1
    await assert_ledger_consistent()


# ------------------------------------------------------------------ routes

@pytest.mark.smoke
async def test_checkin_via_oa_then_mini_program_is_already_checked_in(client, member):
    mp, oa_openid = await member("ck1")
    reply = await say(client, event(oa_openid, "CLICK", EventKey="CHECKIN"))
    assert "获得 5 积分" in reply and "连续签到 1 天" in reply and "当前积分 5" in reply
    resp = await mp.post("/mp/checkin")
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "already_checked_in"
    assert await LedgerEntry.filter(member_id=mp.id).count() == 1
    await assert_ledger_consistent()


async def test_checkin_via_mini_program_then_oa_keyword_replies_the_domain_message(client, member):
    mp, oa_openid = await member("ck2")
    assert (await mp.post("/mp/checkin")).status == 200
    reply = await say(client, text(oa_openid, "签到"))
    assert reply == "already checked in today"
    assert await LedgerEntry.filter(member_id=mp.id).count() == 1
    await assert_ledger_consistent()


async def test_my_points_shows_balance_tier_and_what_expires_within_30_days(client, member, clock):
    from app.domain import points

    mp, oa_openid = await member("pts")
    now = clock.now()
    await points.award(member_id=mp.id, amount=30, reason="admin", key="t:old", now=now - timedelta(days=350),
                       expiry_months=12)
    await points.award(member_id=mp.id, amount=70, reason="admin", key="t:new", now=now, expiry_months=12)
    for body in (event(oa_openid, "CLICK", EventKey="MY_POINTS"), text(oa_openid, "积分")):
        reply = await say(client, body)
        assert "当前积分：100" in reply and "会员等级：普通" in reply
        assert "距离银卡还差 500 成长值" in reply
        assert "30 积分将于" in reply
    await assert_ledger_consistent()


async def test_nothing_expiring_says_so(client, member):
    _, oa_openid = await member("noexp")
    assert "30 天内没有即将过期的积分" in await say(client, text(oa_openid, "积分"))


async def test_card_invite_help_and_unknown_text(client, member):
    mp, oa_openid = await member("misc")
    assert "还没有激活会员卡" in await say(client, event(oa_openid, "CLICK", EventKey="MY_CARD"))
    await mp.post("/mp/card/activate", json={"name": "李雷", "phone": "13800138000", "birthday": "1990-05-01"})
    assert f"会员号 {mp.id}" in await say(client, text(oa_openid, "会员卡"))
    invite = await say(client, event(oa_openid, "CLICK", EventKey="INVITE"))
    assert mp.data["invite_code"] in invite
    # the share path of CONTRACT.md, the same as GET /mp/referral's
    assert f"pages/index/index?invite={mp.data['invite_code']} " in invite and "invite_code=" not in invite
    assert (await (await mp.get("/mp/referral")).json())["share_path"] in invite
    assert mp.data["invite_code"] in await say(client, text(oa_openid, "邀请"))
    for body in (event(oa_openid, "CLICK", EventKey="HELP"), text(oa_openid, "帮助"), text(oa_openid, "HELP")):
        assert "「签到」" in await say(client, body)
    unknown = await say(client, text(oa_openid, "今天天气怎么样"))
    assert unknown.startswith("没听懂") and "「积分」" in unknown
    assert await say(client, xml(oa_openid, "image", PicUrl="http://x/y.png", MsgId="9")) == ""


async def test_a_follower_who_is_not_a_member_is_told_how_to_join(client, sim_state):
    sim_state.oa_users["o-oa-stranger"] = "u-nobody"
    for body in (event("o-oa-stranger", "CLICK", EventKey="CHECKIN"), text("o-oa-stranger", "积分")):
        assert "小程序" in await say(client, body)
    # not even registered with WeChat's user/info: the same answer, no error
    assert "小程序" in await say(client, text("o-oa-unknown", "签到"))
    assert await Checkin.all().count() == 0 and await LedgerEntry.all().count() == 0


async def test_unionid_links_once_then_the_link_is_used(client, member, sim_state):
    mp, oa_openid = await member("link")
    await say(client, text(oa_openid, "积分"))
    assert (await Member.get(id=mp.id)).oa_openid == oa_openid
    calls = sim_state.user_info_calls
    for _ in range(3):
        await say(client, text(oa_openid, "积分"))
    assert sim_state.user_info_calls == calls


async def test_subscribe_with_an_invite_scene_binds_the_referral(client, member, login):
    inviter = await login("o-inviter")
    mp, oa_openid = await member("invitee")
    reply = await say(client, event(oa_openid, "subscribe", EventKey=f"qrscene_i={inviter.data['invite_code']}",
                                    Ticket="tk"))
    assert reply.startswith("欢迎关注") and "邀请人" in reply
    referral = await Referral.get(invitee_id=mp.id)
    assert referral.inviter_id == inviter.id and referral.source == "oa_scene"
    me = await Member.get(id=mp.id)
    assert me.followed is True and me.inviter_id == inviter.id

    await say(client, event(oa_openid, "unsubscribe"))
    assert (await Member.get(id=mp.id)).followed is False
    # a SCAN of another code later: the first binding stands
    other = await login("o-other-inviter")
    await say(client, event(oa_openid, "SCAN", EventKey=f"i={other.data['invite_code']}", Ticket="tk"))
    assert (await Member.get(id=mp.id)).inviter_id == inviter.id
    assert await Referral.filter(invitee_id=mp.id).count() == 1


async def test_scan_binds_like_subscribe_and_self_invites_do_not(client, member, login):
    inviter = await login("o-scan-inviter")
    mp, oa_openid = await member("scanner")
    await say(client, event(oa_openid, "SCAN", EventKey=f"i={mp.data['invite_code']}", Ticket="tk"))
    assert await Referral.filter(invitee_id=mp.id).count() == 0
    await say(client, event(oa_openid, "SCAN", EventKey=f"i={inviter.data['invite_code']}", Ticket="tk"))
    assert (await Referral.get(invitee_id=mp.id)).source == "oa_scene"


async def test_a_member_of_more_than_24_hours_is_not_bound_by_a_scan(client, member, login, clock):
    """Two long-standing members scanning each other's codes mint nothing."""
    a, a_oa = await member("longtime-a")
    b, b_oa = await member("longtime-b")
    clock.travel_to(clock.now() + timedelta(hours=24, minutes=1))
    for who, code in ((a_oa, b.data["invite_code"]), (b_oa, a.data["invite_code"])):
        reply = await say(client, event(who, "SCAN", EventKey=f"i={code}", Ticket="tk"))
        assert "邀请人" not in reply
        reply = await say(client, event(who, "subscribe", EventKey=f"qrscene_i={code}", Ticket="tk"))
        assert "邀请人" not in reply
    assert await Referral.all().count() == 0
    assert await Member.filter(inviter_id__isnull=False).count() == 0


async def test_new_members_cannot_invite_each_other_back(client, member):
    a, a_oa = await member("mutual-a")
    b, b_oa = await member("mutual-b")
    assert "邀请人" in await say(client, event(a_oa, "SCAN", EventKey=f"i={b.data['invite_code']}", Ticket="tk"))
    assert "邀请人" not in await say(client, event(b_oa, "SCAN", EventKey=f"i={a.data['invite_code']}",
                                                    Ticket="tk"))
    assert [(r.inviter_id, r.invitee_id) for r in await Referral.all()] == [(b.id, a.id)]


async def test_plain_subscribe_of_a_non_member_welcomes(client):
    reply = await say(client, event("o-oa-newbie", "subscribe"))
    assert reply.startswith("欢迎关注") and "小程序" in reply


# ------------------------------------------------------------------ retries and late replies

async def test_concurrent_retries_run_the_handler_once(client, member):
    """WeChat retries a slow push; dozens of copies at once still check in once."""
    mps = [await member(f"dup{i}") for i in range(5)]
    bodies = [event(oa, "CLICK", EventKey="CHECKIN", create_time=1_900_000_000) for _, oa in mps]
    results = await asyncio.gather(*(post(client, b) for b in bodies for _ in range(8)))
    assert all(status == 200 for status, _, _ in results)
    for mp, _ in mps:
        assert await Checkin.filter(member_id=mp.id).count() == 1
        assert await LedgerEntry.filter(member_id=mp.id).count() == 1
    # every copy that got text got the first run's text, never "already checked in"
    texts = [f["Content"] for _, f, _ in results if f]
    assert texts and all("签到成功" in t for t in texts)
    await assert_ledger_consistent()


async def test_a_retry_after_the_reply_gets_the_same_reply(client, member):
    mp, oa_openid = await member("again")
    body = text(oa_openid, "签到", msg_id="777001")
    first = await say(client, body)
    second = await say(client, body)
    assert first == second and "签到成功" in first
    assert await Checkin.filter(member_id=mp.id).count() == 1


@pytest.fixture
def slow_checkin(monkeypatch):
    from handlers.wechat import oa_routes

    original = oa_routes.checkin.check_in

    async def slow(**kw):
        await asyncio.sleep(0.6)
        return await original(**kw)

    monkeypatch.setattr(oa_routes.checkin, "check_in", slow)


@pytest.mark.parametrize("reply_timeout", [0.1])
async def test_a_slow_handler_answers_success_then_sends_a_custom_message(client, member, sim_state,
                                                                         slow_checkin):
    mp, oa_openid = await member("late")
    body = event(oa_openid, "CLICK", EventKey="CHECKIN")
    started = time.perf_counter()
    assert await say(client, body) == ""
    assert time.perf_counter() - started < 0.5
    # WeChat's retry while the handler still runs: success, and the handler is not run again
    assert await say(client, body) == ""
    for _ in range(100):
        if sim_state.custom_messages:
            break
        await asyncio.sleep(0.05)
    assert len(sim_state.custom_messages) == 1
    sent = sim_state.custom_messages[0]
    assert sent["touser"] == oa_openid and "签到成功" in sent["text"]["content"]
    assert await say(client, body) == ""
    await asyncio.sleep(0.7)
    assert await Checkin.filter(member_id=mp.id).count() == 1
    assert len(sim_state.custom_messages) == 1
    await assert_ledger_consistent()


async def test_a_failing_handler_answers_success(client, member, monkeypatch):
    from handlers.wechat import oa_routes

    async def boom(**kw):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(oa_routes.checkin, "check_in", boom)
    _, oa_openid = await member("boom")
    assert await say(client, text(oa_openid, "签到")) == ""


# ------------------------------------------------------------------ member card

@pytest.mark.smoke
async def test_card_get_activate_sync_and_delete(client, member, sim_state, clock):
    from app.models import OutboxMessage

    mp, oa_openid = await member("card")
    assert (await mp.post("/mp/checkin")).status == 200  # 5 points before the card exists
    await say(client, event(oa_openid, "user_get_card", CardId="p-card", UserCardCode="code-1",
                            UnionId="u-card", IsGiveByFriend="0"))
    linked = await Member.get(id=mp.id)
    assert (linked.card_code, linked.card_id, linked.oa_openid) == ("code-1", "p-card", oa_openid)

    ticket = sim_state.new_activate_ticket({"name": "韩梅梅", "phone": "13900139000", "birthday": "1992-02-29"})
    reply = await say(client, event(oa_openid, "submit_membercard_user_info", CardId="p-card",
                                    UserCardCode="code-1", ActivateTicket=ticket))
    assert f"会员号 {mp.id}" in reply
    activated = await Member.get(id=mp.id)
    assert activated.card_activated and activated.name == "韩梅梅" and activated.phone == "13900139000"
    assert activated.birthday.isoformat() == "1992-02-29"
    assert sim_state.card_activations[-1] == {"membership_number": str(mp.id), "code": "code-1",
                                              "card_id": "p-card", "init_bonus": 5}

    from app.domain import points

    posting = await points.award(member_id=mp.id, amount=12, reason="admin", key="t:card", now=clock.now(),
                                 expiry_months=12)
    queued = await OutboxMessage.get(key=f"card:{posting.entry.id}")
    assert (queued.channel, queued.kind, queued.member_id) == ("card", "bonus", mp.id)
    assert queued.payload == {"add_bonus": 12, "record_bonus": "人工调整"}

    for name in ("user_view_card", "update_member_card"):
        assert await say(client, event(oa_openid, name, CardId="p-card", UserCardCode="code-1")) == ""
    await say(client, event(oa_openid, "user_del_card", CardId="p-card", UserCardCode="code-1"))
    gone = await Member.get(id=mp.id)
    assert gone.card_code is None and gone.card_id is None
    assert (await OutboxMessage.get(id=queued.id)).status == "skipped"
    await assert_ledger_consistent()


async def test_activation_with_a_bad_form_replies_the_field(client, member, sim_state):
    mp, oa_openid = await member("badform")
    ticket = sim_state.new_activate_ticket({"name": "X", "phone": "123", "birthday": "1990-01-01"})
    reply = await say(client, event(oa_openid, "submit_membercard_user_info", CardId="p", UserCardCode="c9",
                                    ActivateTicket=ticket))
    assert reply.startswith("phone:")
    assert not (await Member.get(id=mp.id)).card_activated
    assert sim_state.card_activations == []


# ------------------------------------------------------------------ menu

async def test_menu_push_is_recorded_by_the_simulator(settings, sim_state):
    import json

    from app.oa_menu import push_menu

    assert await push_menu(settings, "handlers/wechat/menu.json") == 0
    with open("handlers/wechat/menu.json", encoding="utf-8") as f:
        assert sim_state.menu == json.load(f)


async def test_menu_push_refuses_a_bad_file_and_missing_credentials(settings, sim_state, tmp_path):
    from app.oa_menu import push_menu

    bad = tmp_path / "menu.json"
    bad.write_text('{"button": [{"type": "click", "name": "x"}]}')
    assert await push_menu(settings, bad) == 2
    assert await push_menu(settings.with_(oa_appid=None), "handlers/wechat/menu.json") == 2
    assert await push_menu(settings.with_(oa_secret="wrong"), "handlers/wechat/menu.json") == 1
    assert sim_state.menu is None


async def test_menu_push_in_sandbox_is_a_dry_run(settings, capsys):
    from app.oa_menu import push_menu

    assert await push_menu(settings.with_(mp_appid=None, oa_appid=None), "handlers/wechat/menu.json") == 0
    assert "CHECKIN" in capsys.readouterr().out


async def test_every_menu_key_has_a_route():
    from handlers.wechat.menu import load_menu, unrouted_keys

    assert unrouted_keys(load_menu("handlers/wechat/menu.json")) == []


# ------------------------------------------------------------------ safe mode configuration

async def test_safe_mode_push_without_an_aes_key_is_400(aiohttp_client, settings, redis_url):
    from app.main import create_app

    plain_only = await aiohttp_client(create_app(settings.with_(oa_aes_key=None)))
    body, params = encrypt(plain_only, text("o-x", "帮助"))
    assert (await plain_only.post("/wechat/oa", data=body, params=params)).status == 400


async def test_an_unusable_aes_key_is_503_not_500(aiohttp_client, settings):
    from app.main import create_app

    broken = await aiohttp_client(create_app(settings.with_(oa_aes_key="short")))
    body, params = encrypt(broken, text("o-x", "帮助"))
    assert (await broken.post("/wechat/oa", data=body, params=params)).status == 503


@safe_mode
async def test_a_reply_that_cannot_be_wrapped_is_success(client):
    body, params = encrypt(client, text("o-x", "帮助"), nonce="n-o-n-c-e")  # WeChat's nonces are alphanumeric
    status, fields, raw = await post(client, body, params=params)
    assert status == 200 and raw == "success"
