"""GET /mp/referral and its QR code."""
import pytest

from tests.conftest import assert_ledger_consistent

pytestmark = pytest.mark.smoke


async def test_referral_overview_and_funnel(client, login):
    inviter = await login("o-ref-view")
    code = inviter.data["invite_code"]
    await login("o-ref-friend", invite_code=code)
    await login("o-ref-friend-2", invite_code=code)
    resp = await inviter.get("/mp/referral")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["invite_code"] == code
    assert body["share_path"] == f"pages/index/index?invite={code}"
    assert body["qrcode_url"].endswith(f"/mp/referral/qrcode/{code}.png")
    assert body["funnel"] == {"invited": 2, "paid": 0, "rewarded": 0}
    await assert_ledger_consistent()


async def test_qrcode_fetched_once_and_cached(client, login, sim_state):
    member = await login("o-qr")
    url = (await (await member.get("/mp/referral")).json())["qrcode_url"]
    path = url[url.index("/mp/"):]
    first = await client.get(path)
    assert first.status == 200 and first.content_type == "image/png"
    png = await first.read()
    assert png.startswith(b"\x89PNG")
    again = await client.get(path)
    assert await again.read() == png
    assert [w["scene"] for w in sim_state.wxacodes] == [f"i={member.data['invite_code']}"]
    assert sim_state.wxacodes[0]["page"] == "pages/index/index"


async def test_unknown_code_and_no_token(client):
    resp = await client.get("/mp/referral/qrcode/NOSUCH99.png")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "invite_code_not_found"
    resp = await client.get("/mp/referral")
    assert resp.status == 401
