"""The WeChat simulator, spoken to over HTTP the way WeChat is."""
from __future__ import annotations

import struct
import zlib

import pytest

from miniprogram_stub.simulator import create_simulator_app, state_key

APPID, SECRET = "wx-sim-test", "sim-secret"


@pytest.fixture
async def sim(aiohttp_client):
    return await aiohttp_client(create_simulator_app(appid=APPID, secret=SECRET))


@pytest.fixture
def state(sim):
    return sim.server.app[state_key]


async def login(sim, code, appid=APPID, secret=SECRET):
    resp = await sim.get("/sns/jscode2session", params={
        "appid": appid, "secret": secret, "js_code": code, "grant_type": "authorization_code"})
    assert resp.status == 200
    return await resp.json()


async def fetch_token(sim, **extra):
    resp = await sim.post("/cgi-bin/stable_token", json={
        "grant_type": "client_credential", "appid": APPID, "secret": SECRET, **extra})
    return (await resp.json())["access_token"]


async def test_registered_code_logs_in_once(sim, state):
    code = (await (await sim.post("/_sim/codes", json={"openid": "o-1", "unionid": "u-1"})).json())["code"]

    first = await login(sim, code)
    again = await login(sim, code)

    assert first["openid"] == "o-1" and first["unionid"] == "u-1" and len(first["session_key"]) == 32
    assert again == {"errcode": 40029, "errmsg": "invalid code"}
    assert state.logins == [{"openid": "o-1", "unionid": "u-1"}]


async def test_sim_codes_are_always_valid(sim):
    assert (await login(sim, "sim:o-2"))["openid"] == "o-2"
    again = await login(sim, "sim:o-2:u-2")
    assert again["openid"] == "o-2" and again["unionid"] == "u-2"
    assert "unionid" not in await login(sim, "sim:o-3")


@pytest.mark.parametrize("code", ["nope", "sim:", "sim:a:b:c"])
async def test_unknown_code_is_40029(sim, code):
    assert (await login(sim, code))["errcode"] == 40029


async def test_wrong_credentials(sim):
    assert (await login(sim, "sim:o", appid="wx-other"))["errcode"] == 40013
    assert (await login(sim, "sim:o", secret="bad"))["errcode"] == 40125


@pytest.mark.parametrize("errcode", [45011, 40226])
async def test_scripted_login_failure_hits_the_next_call_only(sim, state, errcode):
    state.fail_next_login = {"errcode": errcode}

    assert (await login(sim, "sim:o"))["errcode"] == errcode
    assert (await login(sim, "sim:o"))["openid"] == "o"


async def test_outage_answers_503_everywhere_but_the_control_plane(sim, state):
    state.down = True

    assert (await sim.get("/sns/jscode2session", params={"js_code": "sim:o"})).status == 503
    assert (await sim.post("/cgi-bin/stable_token", json={})).status == 503
    assert (await sim.post("/wxa/getwxacodeunlimit?access_token=x", json={"scene": "a"})).status == 503
    resp = await sim.get("/_sim/state")
    assert resp.status == 200 and (await resp.json())["down"] is True


async def test_tokens_count_fetches_and_expire(sim, state):
    legacy = await (await sim.get("/cgi-bin/token", params={
        "grant_type": "client_credential", "appid": APPID, "secret": SECRET})).json()
    stable = await fetch_token(sim)
    same = await fetch_token(sim)
    forced = await fetch_token(sim, force_refresh=True)

    assert legacy["expires_in"] == 7200
    assert stable == same == legacy["access_token"]
    assert forced != stable
    assert state.token_fetches == 4

    body = {"touser": "o", "template_id": "t", "data": {}}
    ok = await sim.post(f"/cgi-bin/message/subscribe/send?access_token={stable}", json=body)
    assert (await ok.json())["errcode"] == 0

    state.expire_tokens()
    expired = await sim.post(f"/cgi-bin/message/subscribe/send?access_token={stable}", json=body)
    unknown = await sim.post("/cgi-bin/message/subscribe/send?access_token=forged", json=body)
    assert (await expired.json())["errcode"] == 42001
    assert (await unknown.json())["errcode"] == 40001
    assert await fetch_token(sim) not in (stable, forced)


async def test_token_endpoints_check_credentials(sim):
    resp = await sim.post("/cgi-bin/stable_token", json={
        "grant_type": "client_credential", "appid": APPID, "secret": "wrong"})
    assert (await resp.json())["errcode"] == 40125


async def test_subscribe_send_records_and_honours_quota(sim, state):
    token = await fetch_token(sim)
    body = {"touser": "o-1", "template_id": "tpl", "page": "pages/index", "data": {"thing1": {"value": "hi"}}}
    ok = await sim.post(f"/cgi-bin/message/subscribe/send?access_token={token}", json=body)
    state.no_quota.add(("o-1", "tpl"))
    refused = await sim.post(f"/cgi-bin/message/subscribe/send?access_token={token}", json=body)

    assert (await ok.json())["errcode"] == 0
    assert (await refused.json())["errcode"] == 43101
    assert state.messages == [body]


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the inflated scanlines; checks every chunk's CRC on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None and kind == b"IEND"
    return header[0], header[1], zlib.decompress(idat)


async def test_wxacode_is_a_valid_png_that_depends_on_the_scene(sim, state):
    token = await fetch_token(sim)
    url = f"/wxa/getwxacodeunlimit?access_token={token}"
    resp = await sim.post(url, json={"scene": "inv=ABC123", "page": "pages/index", "width": 300})
    png = await resp.read()
    other = await (await sim.post(url, json={"scene": "inv=XYZ789", "page": "pages/index", "width": 300})).read()
    too_long = await sim.post(url, json={"scene": "x" * 33})

    assert resp.content_type == "image/png"
    width, height, raw = decode_png(png)
    assert (width, height) == (300, 300)
    assert len(raw) == 300 * (1 + 300)
    assert set(raw[1:301]) == {255}  # the quiet zone
    assert 0 in raw  # some dark cells
    assert png != other
    assert (await too_long.json())["errcode"] == 40169
    assert [w["scene"] for w in state.wxacodes] == ["inv=ABC123", "inv=XYZ789"]


async def test_phone_codes(sim):
    token = await fetch_token(sim)
    url = f"/wxa/business/getuserphonenumber?access_token={token}"
    code = (await (await sim.post("/_sim/phone-codes", json={"phone": "13800138000"})).json())["code"]

    registered = await (await sim.post(url, json={"code": code})).json()
    reused = await (await sim.post(url, json={"code": code})).json()
    convenience = await (await sim.post(url, json={"code": "simphone:13900139000"})).json()
    bad = await (await sim.post(url, json={"code": "simphone:123"})).json()

    assert registered["phone_info"]["purePhoneNumber"] == "13800138000"
    assert registered["phone_info"]["countryCode"] == "86"
    assert reused["errcode"] == 40029
    assert convenience["phone_info"]["phoneNumber"] == "13900139000"
    assert bad["errcode"] == 40029


async def test_member_card_flow(sim, state):
    token = await fetch_token(sim)
    ticket = (await (await sim.post("/_sim/activate-tickets", json={
        "name": "张三", "phone": "13800138000", "birthday": "1990-05-01"})).json())["activate_ticket"]

    info = await (await sim.post(f"/card/membercard/activatetempinfo/get?access_token={token}",
                                 json={"activate_ticket": ticket})).json()
    activated = await (await sim.post(f"/card/membercard/activate?access_token={token}", json={
        "membership_number": "M1", "code": "C1", "card_id": "card", "init_bonus": 10})).json()
    added = await (await sim.post(f"/card/membercard/updateuser?access_token={token}", json={
        "code": "C1", "card_id": "card", "add_bonus": 5, "record_bonus": "签到"})).json()
    set_to = await (await sim.post(f"/card/membercard/updateuser?access_token={token}", json={
        "code": "C1", "card_id": "card", "bonus": 100})).json()

    fields = {f["name"]: f["value"] for f in info["info"]["common_field_list"]}
    assert fields == {"USER_FORM_INFO_FLAG_NAME": "张三", "USER_FORM_INFO_FLAG_MOBILE": "13800138000",
                      "USER_FORM_INFO_FLAG_BIRTHDAY": "1990-05-01"}
    assert activated["errcode"] == 0 and state.card_activations[0]["membership_number"] == "M1"
    assert added["result_bonus"] == 15 and set_to["result_bonus"] == 100
    assert [u.get("add_bonus") for u in state.card_updates] == [5, None]


async def test_menu_and_custom_messages_are_recorded(sim, state):
    token = await fetch_token(sim)
    menu = {"button": [{"type": "click", "name": "签到", "key": "CHECKIN"}]}
    await sim.post(f"/cgi-bin/menu/create?access_token={token}", json=menu)
    text = {"touser": "o", "msgtype": "text", "text": {"content": "你好"}}
    await sim.post(f"/cgi-bin/message/custom/send?access_token={token}", json=text)
    bad = await sim.post(f"/cgi-bin/menu/create?access_token={token}", json={"menu": []})

    assert state.menu == menu
    assert state.custom_messages == [text]
    assert (await bad.json())["errcode"] == 47001
    counts = await (await sim.get("/_sim/state")).json()
    assert counts["custom_messages"] == 1 and counts["menu"] == 1 and counts["token_fetches"] == 1
