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


async def test_login_binds_by_the_same_rule_as_the_official_account(client, login, clock):
    """An invite at login binds a new member only; one who paid before logging in is a customer
    already, and the invitee's own code cannot then bind its inviter back."""
    from app import keys
    from app.domain import payments, rules
    from app.models import Member, Referral

    inviter = await login("o-rule-inviter")
    now = clock.now()
    await payments.record_payment(
        redis=client.app[keys.redis_key], rules=await rules.load(), appid=client.app[keys.settings_key].appid,
        transaction_id="t-guest", out_trade_no="t-guest", openid="o-rule-guest", total_fen=500,
        payer_total_fen=500, paid_at=now, now=now, tz=client.app[keys.settings_key].tz)
    guest = await login("o-rule-guest", invite_code=inviter.data["invite_code"])
    friend = await login("o-rule-friend", invite_code=inviter.data["invite_code"])
    assert (await Member.get(id=guest.id)).inviter_id is None
    assert (await Member.get(id=friend.id)).inviter_id == inviter.id
    await login("o-rule-inviter", invite_code=friend.data["invite_code"])
    assert [(r.inviter_id, r.invitee_id) for r in await Referral.all()] == [(inviter.id, friend.id)]
