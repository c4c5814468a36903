"""Admin, 企业微信: `GET/PUT /admin/wecom/stewards`, `POST /admin/wecom/broadcasts`."""
from __future__ import annotations

import pytest

from app.models import AuditLog, WeComBroadcast, WeComBroadcastSend
from tests.conftest import ADMIN_TOKEN
from tests.handlers.wechat.wecom_world import add_contact, corp, member, now, settings  # noqa: F401

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Operator": "alice"}


async def test_stewards_default_to_the_gold_and_diamond_rules_and_are_audited(client, now):
    resp = await client.get("/admin/wecom/stewards", headers=ADMIN)
    assert resp.status == 200
    assert await resp.json() == {"tiers": {"gold": None, "diamond": None}, "members": []}
    resp = await client.put("/admin/wecom/stewards", headers=ADMIN, json={"tier": "gold", "steward": "steward-01"})
    assert resp.status == 200
    member_id = await member(client, "o-adm", unionid="u-adm")
    resp = await client.put("/admin/wecom/stewards", headers=ADMIN, json={"member_id": member_id, "steward": "steward-02"})
    body = await resp.json()
    assert body == {"tiers": {"gold": "steward-01", "diamond": None},
                    "members": [{"member_id": member_id, "steward": "steward-02"}]}
    resp = await client.put("/admin/wecom/stewards", headers=ADMIN, json={"tier": "gold", "steward": None})
    assert (await resp.json())["tiers"]["gold"] is None
    rows = await AuditLog.filter(action="wecom.steward").order_by("id")
    assert [(r.actor, r.target, r.after["steward"]) for r in rows] == [
        ("alice", "tier:gold", "steward-01"), ("alice", f"member:{member_id}", "steward-02"),
        ("alice", "tier:gold", None)]
    assert rows[2].before == {"steward": "steward-01"}


@pytest.mark.parametrize("body, status, code", [
    ({"tier": "platinum", "steward": "s"}, 422, "invalid_field"),
    ({"steward": "s"}, 422, "invalid_field"),
    ({"tier": "gold", "member_id": 1, "steward": "s"}, 422, "invalid_field"),
    ({"tier": "gold", "steward": "has space"}, 422, "invalid_field"),
    ({"member_id": 999999, "steward": "s"}, 404, "member_not_found"),
    ({"tier": "gold"}, 422, "invalid_field"),
])
async def test_bad_steward_changes_are_the_envelope(client, now, body, status, code):
    resp = await client.put("/admin/wecom/stewards", headers=ADMIN, json=body)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert await AuditLog.filter(action="wecom.steward").count() == 0


async def test_admin_wecom_needs_the_token(client):
    for method, path in (("GET", "/admin/wecom/stewards"), ("PUT", "/admin/wecom/stewards"),
                         ("POST", "/admin/wecom/broadcasts")):
        resp = await client.request(method, path, json={})
        assert resp.status == 401


async def test_a_tier_broadcast_goes_from_each_steward_to_its_customers(client, now, corp):
    await client.put("/admin/wecom/stewards", headers=ADMIN, json={"tier": "gold", "steward": "steward-01"})
    own = await member(client, "o-own", unionid="u-own", tier="gold")
    await client.put("/admin/wecom/stewards", headers=ADMIN, json={"member_id": own, "steward": "steward-02"})
    await member(client, "o-g1", unionid="u-g1", tier="gold")
    await member(client, "o-g2", unionid="u-g2", tier="gold")
    await member(client, "o-s1", unionid="u-s1", tier="silver")
    g1, _ = await add_contact(client, corp, staff="steward-01", unionid="u-g1")
    g2, _ = await add_contact(client, corp, staff="steward-01", unionid="u-g2")
    await add_contact(client, corp, staff="sales-01", unionid="u-g2")  # not from a steward
    mine, _ = await add_contact(client, corp, staff="steward-02", unionid="u-own")
    await add_contact(client, corp, staff="steward-01", unionid="u-s1")  # silver
    resp = await client.post("/admin/wecom/broadcasts", headers=ADMIN, json={"tier": "gold", "text": "金卡日，双倍积分"})
    body = await resp.json()
    assert resp.status == 201, body
    sent = {t["sender"]: sorted(t["external_userid"]) for t in corp.templates}
    assert sent == {"steward-01": sorted([g1, g2]), "steward-02": [mine]}
    assert all(t["text"]["content"] == "金卡日，双倍积分" for t in corp.templates)
    msgids = {t["sender"]: t["msgid"] for t in corp.templates}
    assert {s["sender"]: s["msgid"] for s in body["sends"]} == msgids
    assert await WeComBroadcast.filter(tier="gold").count() == 1
    assert sorted(await WeComBroadcastSend.all().values_list("msgid", flat=True)) == sorted(msgids.values())
    audit = await AuditLog.get(action="wecom.broadcast")
    assert audit.actor == "alice" and audit.after["recipients"] == 3


@pytest.mark.parametrize("body, status, code", [
    ({"tier": "gold", "text": ""}, 422, "invalid_field"),
    ({"tier": "nope", "text": "hi"}, 422, "invalid_field"),
    ({"tier": "gold"}, 422, "invalid_field"),
    ({"tier": "gold", "text": "x" * 4001}, 422, "invalid_field"),
    ({"tier": "diamond", "text": "hi"}, 409, "no_recipients"),
])
async def test_bad_broadcasts_are_the_envelope_and_send_nothing(client, now, corp, body, status, code):
    resp = await client.post("/admin/wecom/broadcasts", headers=ADMIN, json=body)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert corp.templates == [] and await WeComBroadcast.all().count() == 0


async def test_broadcast_with_wecom_off_is_503(aiohttp_client, settings):
    from app.main import create_app

    off = await aiohttp_client(create_app(settings.with_(wecom_corp_id=None, wecom_secret=None)))
    resp = await off.post("/admin/wecom/broadcasts", headers=ADMIN, json={"tier": "gold", "text": "hi"})
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "wecom_not_configured"
