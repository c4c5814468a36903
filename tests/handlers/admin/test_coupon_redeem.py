"""POST /admin/coupons/redeem and GET /mp/coupons over HTTP."""
from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from app.domain import coupons
from app.models import AuditLog, Coupon
from tests.conftest import ADMIN_TOKEN, shanghai

NOW = shanghai(2026, 11, 26, 10, 0)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Operator": "store-12"}


async def give(member_id: int, key: str, now=NOW):
    tpl = await coupons.template(key="gift:50", name="50元券", amount_fen=5000, valid_days=30)
    coupon, _ = await coupons.issue(member_id=member_id, template=tpl, issue_key=key, now=now)
    return coupon


async def test_twenty_simultaneous_redemptions_one_wins(client, login, clock):
    clock.travel_to(NOW)
    m = await login()
    coupon = await give(m.id, "race")
    responses = await asyncio.gather(*(client.post("/admin/coupons/redeem", json={"code": coupon.code},
                                                   headers=ADMIN) for _ in range(20)))
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: 1, 409: 19}
    bodies = [await r.json() for r in responses]
    won = next(b for r, b in zip(responses, bodies) if r.status == 200)
    assert won["code"] == coupon.code and won["status"] == "used" and won["used_by"] == "store-12"
    assert won["member_id"] == m.id and won["amount_fen"] == 5000
    assert {b["error"]["code"] for r, b in zip(responses, bodies) if r.status == 409} == {"coupon_used"}
    assert await AuditLog.filter(action="coupon.redeem", target=f"coupon:{coupon.id}").count() == 1


async def test_a_blacklisted_members_coupon_is_refused(client, login, clock):
    clock.travel_to(NOW)
    m = await login()
    coupon = await give(m.id, "blocked")
    assert (await client.post("/admin/blacklist", headers=ADMIN, json={"kind": "member", "value": m.id})).status == 201
    resp = await client.post("/admin/coupons/redeem", json={"code": coupon.code}, headers=ADMIN)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "blacklisted"
    assert (await Coupon.get(id=coupon.id)).used_at is None
    assert await AuditLog.filter(action="coupon.redeem").count() == 0


async def test_expired_unknown_and_bad_requests(client, login, clock):
    clock.travel_to(NOW + timedelta(days=31))
    m = await login()
    coupon = await give(m.id, "old")
    resp = await client.post("/admin/coupons/redeem", json={"code": coupon.code}, headers=ADMIN)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "coupon_expired"
    resp = await client.post("/admin/coupons/redeem", json={"code": "NOPE2345NOPE"}, headers=ADMIN)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "coupon_not_found"
    resp = await client.post("/admin/coupons/redeem", json={}, headers=ADMIN)
    assert resp.status == 422
    resp = await client.post("/admin/coupons/redeem", data=b"{", headers=ADMIN)
    assert resp.status == 400
    resp = await client.post("/admin/coupons/redeem", json={"code": coupon.code})
    assert resp.status == 401
    assert (await Coupon.get(id=coupon.id)).used_at is None


async def test_member_sees_own_coupons_with_status(client, login, clock):
    clock.travel_to(NOW)
    m, other = await login(), await login()
    used = await give(m.id, "a")
    await give(m.id, "b")
    await give(m.id, "c", now=NOW - timedelta(days=40))
    await give(other.id, "d")
    assert (await client.post("/admin/coupons/redeem", json={"code": used.code}, headers=ADMIN)).status == 200
    resp = await m.get("/mp/coupons")
    assert resp.status == 200
    items = (await resp.json())["items"]
    assert sorted(i["status"] for i in items) == ["available", "expired", "used"]
    assert all(i["amount_fen"] == 5000 and i["name"] == "50元券" for i in items)
    assert (await client.get("/mp/coupons")).status == 401
