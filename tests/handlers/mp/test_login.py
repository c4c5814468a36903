import asyncio

import pytest

from tests.conftest import assert_ledger_consistent

pytestmark = pytest.mark.smoke


async def test_new_then_returning_member(client, sim_state):
    first = await client.post("/mp/login", json={"code": "sim:o-alice:u-alice", "device_id": "dev-1"})
    body = await first.json()
    assert first.status == 200, body
    assert body["is_new"] is True and body["expires_in"] == 7 * 86400
    assert body["member"]["tier"] == "regular" and body["member"]["points"] == 0
    assert len(body["member"]["invite_code"]) == 8
    assert "session_key" not in str(body)

    again = await client.post("/mp/login", json={"code": "sim:o-alice"})
    body2 = await again.json()
    assert body2["is_new"] is False and body2["member"]["id"] == body["member"]["id"]
    assert body2["token"] != body["token"]

    me = await client.get("/mp/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert (await me.json())["id"] == body["member"]["id"]


async def test_one_time_code_reused_is_invalid(client, simulator, sim_state):
    code = sim_state.new_code("o-bob")
    assert (await client.post("/mp/login", json={"code": code})).status == 200
    resp = await client.post("/mp/login", json={"code": code})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_code"


@pytest.mark.parametrize("errcode,status,code", [
    (45011, 429, "rate_limited"), (40226, 403, "risky_user"), (40029, 401, "invalid_code")])
async def test_wechat_errors_map_to_envelope(client, sim_state, errcode, status, code):
    sim_state.fail_next_login = {"errcode": errcode}
    resp = await client.post("/mp/login", json={"code": "sim:o-x"})
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code


async def test_wechat_down_is_503_and_creates_nothing(client, sim_state):
    from app.models import Member

    sim_state.down = True
    resp = await client.post("/mp/login", json={"code": "sim:o-down"})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "wechat_unavailable"
    assert await Member.all().count() == 0


@pytest.mark.parametrize("payload,status,code", [
    (b"not json", 400, "malformed_json"), (b"[1,2]", 400, "malformed_json"),
    (b'{"code": ""}', 422, "invalid_field"), (b"{}", 422, "invalid_field"),
    (b'{"code": 5}', 422, "invalid_field")])
async def test_bad_bodies(client, payload, status, code):
    resp = await client.post("/mp/login", data=payload, headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == status and body["error"]["code"] == code
    if status == 422:
        assert "code" in body["error"]["message"]


async def test_body_too_large_is_413_envelope(client):
    resp = await client.post("/mp/login", data=b"x" * 200_000)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "body_too_large"


async def test_unknown_route_and_auth(client):
    resp = await client.get("/mp/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await client.get("/mp/me")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthenticated"
    resp = await client.get("/mp/me", headers={"Authorization": "Bearer forged"})
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "session_expired"


async def test_concurrent_first_logins_make_one_member(client):
    from app.models import Member

    results = await asyncio.gather(*[client.post("/mp/login", json={"code": "sim:o-twin"}) for _ in range(10)])
    assert all(r.status == 200 for r in results)
    ids = {(await r.json())["member"]["id"] for r in results}
    assert len(ids) == 1 and await Member.filter(openid="o-twin").count() == 1


async def test_login_rate_limit_per_openid(client):
    statuses = [(await client.post("/mp/login", json={"code": "sim:o-spam"})).status for _ in range(12)]
    assert statuses[:10] == [200] * 10 and statuses[10:] == [429, 429]
    resp = await client.post("/mp/login", json={"code": "sim:o-spam"})
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"]["code"] == "rate_limited"


async def test_device_registers_at_most_three_members_a_day(client):
    for n in range(3):
        assert (await client.post("/mp/login", json={"code": f"sim:o-farm-{n}", "device_id": "farm"})).status == 200
    resp = await client.post("/mp/login", json={"code": "sim:o-farm-4", "device_id": "farm"})
    assert resp.status == 429 and (await resp.json())["error"]["code"] == "device_limit_reached"
    # A returning member on that device still logs in.
    assert (await client.post("/mp/login", json={"code": "sim:o-farm-0", "device_id": "farm"})).status == 200


async def test_client_ip_from_trusted_proxy_only(aiohttp_client, settings, redis_url):
    import ipaddress

    from app.main import create_app
    from tests.conftest import reset_state

    behind = settings.with_(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    c = await aiohttp_client(create_app(behind))
    await reset_state(redis_url)
    from app.domain import rules as rules_mod
    await rules_mod.update({"limits": {"login_per_ip_per_minute": 2}}, actor="test")
    # Two clients behind the proxy have their own budgets; the proxy's address is not used.
    for ip in ("10.0.0.1", "10.0.0.2"):
        for n in range(2):
            r = await c.post("/mp/login", json={"code": f"sim:o-{ip}-{n}"}, headers={"X-Forwarded-For": ip})
            assert r.status == 200
    r = await c.post("/mp/login", json={"code": "sim:o-3"}, headers={"X-Forwarded-For": "10.0.0.1"})
    assert r.status == 429


async def test_card_activation_validates_and_masks(client, login):
    m = await login()
    bad = [({"name": "", "phone": "13800000000", "birthday": "1990-05-01"}, "name"),
           ({"name": "张三", "phone": "12345", "birthday": "1990-05-01"}, "phone"),
           ({"name": "张三", "phone": "13800000000", "birthday": "1990-13-01"}, "birthday"),
           ({"name": "张三", "phone": "13800000000", "birthday": "2999-01-01"}, "birthday")]
    for payload, field in bad:
        resp = await m.post("/mp/card/activate", json=payload)
        body = await resp.json()
        assert resp.status == 422 and body["error"]["message"].startswith(field), body
    resp = await m.post("/mp/card/activate", json={"name": "张三", "phone": "13812340000", "birthday": "1990-05-01"})
    body = await resp.json()
    assert resp.status == 200 and body["card_activated"] is True and body["phone"] == "138****0000"
    assert (await (await m.get("/mp/me")).json())["phone"] == "138****0000"
    await assert_ledger_consistent()
