"""Admin rules over HTTP: bearer-token auth, read, validated partial changes, one audit row per section."""
import pytest

from app.models import AuditLog
from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Operator": "alice"}


async def test_admin_auth(client, aiohttp_client, settings, redis_url):
    resp = await client.get("/admin/rules")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthenticated"
    resp = await client.get("/admin/rules", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthenticated"
    resp = await client.patch("/admin/rules", json={"checkin": {"daily_points": 6}},
                              headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
    assert resp.status == 401

    from app.main import create_app

    off = await aiohttp_client(create_app(settings.with_(admin_token=None)))
    for method, path in (("GET", "/admin/rules"), ("GET", "/admin/members?q=1"), ("GET", "/admin/rewards"),
                         ("POST", "/admin/blacklist")):
        resp = await off.request(method, path, headers=ADMIN)
        assert resp.status == 503 and (await resp.json())["error"]["code"] == "admin_disabled"


@pytest.mark.smoke
async def test_read_and_change_rules_audits_each_section(client):
    resp = await client.get("/admin/rules", headers=ADMIN)
    current = await resp.json()
    assert resp.status == 200 and current["checkin"]["daily_points"] == 5
    assert [t["key"] for t in current["tiers"]["levels"]] == ["regular", "silver", "gold", "diamond"]

    resp = await client.patch("/admin/rules", headers=ADMIN, json={
        "checkin": {"daily_points": 8}, "makeup": {"cost": 10}, "points": {"daily_cap": 300}})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["checkin"]["daily_points"] == 8 and body["points"]["daily_cap"] == 300
    rows = await AuditLog.filter(action="rules.update").order_by("target")
    # makeup.cost was already 10: no change, no audit row.
    assert [r.target for r in rows] == ["checkin", "points"]
    assert all(r.actor == "alice" for r in rows)
    assert rows[0].before["daily_points"] == 5 and rows[0].after["daily_points"] == 8
    again = await (await client.get("/admin/rules", headers=ADMIN)).json()
    assert again["checkin"]["daily_points"] == 8


async def test_check_in_follows_the_new_rule(client, login):
    await client.patch("/admin/rules", headers=ADMIN, json={"checkin": {"daily_points": 9}})
    m = await login()
    body = await (await m.post("/mp/checkin")).json()
    assert body["points_awarded"] == 9


@pytest.mark.parametrize("payload,field", [
    ({"checkin": {"daily_points": -1}}, "checkin.daily_points"),
    ({"nonsense": {}}, "nonsense"),
    ({"checkin": 5}, "checkin"),
    ({"checkin": {"bogus": 1}}, "checkin.bogus"),
    ({"tiers": {"levels": [{"key": "regular", "name": "普通", "floor": 10, "multiplier": 1}]}}, "tiers"),
    ({}, "body"),
])
async def test_invalid_changes_are_422_naming_the_field_and_change_nothing(client, payload, field):
    resp = await client.patch("/admin/rules", headers=ADMIN, json=payload)
    body = await resp.json()
    assert resp.status == 422, body
    assert body["error"]["code"] == "invalid_field" and body["error"]["message"].startswith(field), body
    assert await AuditLog.all().count() == 0


async def test_malformed_body_is_400(client):
    resp = await client.patch("/admin/rules", headers={**ADMIN, "Content-Type": "application/json"}, data=b"{nope")
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "malformed_json"
    resp = await client.patch("/admin/rules", headers=ADMIN, json=[1, 2])
    assert resp.status == 400
