"""The growth surface over HTTP: /mp/tasks, /mp/share-links, /admin/campaigns, the pack at login."""
import asyncio

import pytest

from tests.conftest import ADMIN_TOKEN, shanghai

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.smoke
async def test_share_link_claim_and_campaign_results(client, login, clock):
    clock.travel_to(shanghai(2026, 12, 2, 10, 0))
    resp = await client.post("/admin/campaigns", headers=ADMIN, json={
        "kind": "share", "key": "winter", "coupon_discount": 50, "points": 20, "daily_limit": 10, "stock": 5})
    assert resp.status == 201, await resp.text()
    sharer, friend = await login("o-sharer"), await login("o-friend")
    resp = await sharer.post("/mp/share-links", json={"campaign": "winter"})
    body = await resp.json()
    assert resp.status == 200 and body["share_path"] == f"pages/share/index?token={body['token']}"
    resp = await friend.post(f"/mp/share-links/{body['token']}/claim")
    coupon = await resp.json()
    assert resp.status == 200, coupon
    assert (coupon["kind"], coupon["discount_percent"], coupon["status"]) == ("discount", 50, "available")
    resp = await friend.post(f"/mp/share-links/{body['token']}/claim")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "share_claim_refused"
    resp = await sharer.post(f"/mp/share-links/{body['token']}/claim")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "share_claim_refused"
    tasks = await (await sharer.get("/mp/tasks")).json()
    assert tasks["week"]["points"] == 20 and tasks["week"]["cap"] == 200
    assert {t["kind"]: t["done_this_week"] for t in tasks["tasks"]}["share"] == 1
    listing = await (await client.get("/admin/campaigns", headers=ADMIN)).json()
    assert listing["items"][0]["results"]["rewarded_claims"] == 1
    assert listing["wakeup"] == {"sent": 0, "by_channel": {}, "successful": 0}


async def test_bad_bodies_and_unknown_things(client, login):
    member = await login()
    resp = await member.post("/mp/share-links", json={"campaign": "nope"})
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "campaign_not_found"
    resp = await member.post("/mp/share-links", json={"campaign": 5})
    assert resp.status == 422
    resp = await member.post("/mp/share-links/unknown-token/claim")
    assert resp.status == 404
    resp = await client.post("/admin/campaigns", headers=ADMIN, json={"kind": "share", "key": "x", "stock": -1})
    assert resp.status == 422 and "stock" in (await resp.json())["error"]["message"]
    resp = await client.post("/admin/campaigns", headers=ADMIN, json={"kind": "lottery", "key": "x", "stock": 1})
    assert resp.status == 422
    resp = await client.get("/mp/tasks")
    assert resp.status == 401


async def test_profile_completion_through_card_activation(client, login, clock):
    clock.travel_to(shanghai(2026, 12, 2, 10, 0))
    resp = await client.patch("/admin/rules", headers=ADMIN, json={"tasks": {"points": {"profile": 20}}})
    assert resp.status == 200, await resp.text()
    member = await login()
    form = {"name": "李四", "phone": "13900000000", "birthday": "1990-05-01"}
    resp = await member.post("/mp/card/activate", json=form)
    assert resp.status == 200 and (await resp.json())["points"] == 20
    resp = await member.post("/mp/card/activate", json=form)  # again: once
    assert (await resp.json())["points"] == 20
    tasks = await (await member.get("/mp/tasks")).json()
    assert {t["kind"]: t for t in tasks["tasks"]}["profile"]["done"] is True
    assert tasks["week"]["points"] == 20


@pytest.mark.postgres
async def test_the_pack_at_login_once_even_when_login_races_itself(client, clock):
    clock.travel_to(shanghai(2026, 12, 2, 10, 0))
    resp = await client.patch("/admin/rules", headers=ADMIN, json={"new_member_pack": {"enabled": True}})
    assert resp.status == 200
    responses = await asyncio.gather(*(client.post("/mp/login", json={"code": "sim:o-racer"}) for _ in range(10)))
    bodies = [await r.json() for r in responses]
    assert all(r.status == 200 for r in responses), bodies
    member_id = bodies[0]["member"]["id"]
    from app.models import Coupon, Member

    assert (await Member.get(id=member_id)).points == 50
    assert await Coupon.filter(member_id=member_id).count() == 1
