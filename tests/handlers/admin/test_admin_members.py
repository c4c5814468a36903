"""Admin members over HTTP: search with masked phones, the member's file, idempotent audited
points adjustments, and the blacklist with its effects."""
import asyncio

import pytest

from app.models import AuditLog, Blacklist, LedgerEntry, Member
from tests.conftest import ADMIN_TOKEN, assert_ledger_consistent

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Operator": "bob"}


async def activated(login, openid: str, phone: str):
    m = await login(openid)
    resp = await m.post("/mp/card/activate", json={"name": "张三", "phone": phone, "birthday": "1990-05-01"})
    assert resp.status == 200
    return m


@pytest.mark.smoke
async def test_search_by_id_openid_or_phone_masks_phones(client, login):
    a = await activated(login, "o-alice", "13812345678")
    await login("o-bob")
    for q in (str(a.id), "o-alice", "13812345678"):
        body = await (await client.get("/admin/members", params={"q": q}, headers=ADMIN)).json()
        assert [m["id"] for m in body["items"]] == [a.id], q
        assert body["items"][0]["phone"] == "138****5678"
        assert "13812345678" not in str(body)
    empty = await (await client.get("/admin/members", params={"q": "o-nobody"}, headers=ADMIN)).json()
    assert empty["items"] == []
    resp = await client.get("/admin/members", headers=ADMIN)
    assert resp.status == 422 and (await resp.json())["error"]["message"].startswith("q")


async def test_member_file(client, login):
    m = await activated(login, "o-file", "13900000000")
    await m.post("/mp/checkin")
    invitee = await login("o-invitee", invite_code=m.data["invite_code"], device_id="dev-invitee")
    resp = await client.get(f"/admin/members/{m.id}", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["member"]["id"] == m.id and body["member"]["phone"] == "139****0000"
    assert [e["reason"] for e in body["ledger"]] == ["checkin"]
    assert body["referrals"]["invited"][0]["invitee_id"] == invitee.id
    assert body["referrals"]["invited_by"] is None
    assert body["tier_history"] == [] and body["coupons"] == []
    for bad in ("999999", "abc", "9" * 30):
        resp = await client.get(f"/admin/members/{bad}", headers=ADMIN)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "member_not_found"


async def test_points_adjustment_is_idempotent_and_audited(client, login):
    m = await login()
    payload = {"delta": 150, "reason": "门店补偿", "idempotency_key": "ticket-42"}
    # The same operator request sent twenty times at once: one entry, one audit row.
    responses = await asyncio.gather(*[client.post(f"/admin/members/{m.id}/points", json=payload, headers=ADMIN)
                                       for _ in range(20)])
    bodies = [await r.json() for r in responses]
    assert {r.status for r in responses} == {200}, bodies
    assert sum(b["created"] for b in bodies) == 1
    assert {b["entry"]["id"] for b in bodies} == {bodies[0]["entry"]["id"]}
    assert all(b["balance"] == 150 for b in bodies)
    assert await LedgerEntry.filter(idempotency_key="admin:ticket-42").count() == 1
    audit = await AuditLog.filter(action="members.points")
    assert len(audit) == 1 and audit[0].actor == "bob" and audit[0].target == f"member:{m.id}"
    assert audit[0].before == {"points": 0} and audit[0].after["points"] == 150

    minus = await client.post(f"/admin/members/{m.id}/points", headers=ADMIN,
                              json={"delta": -50, "reason": "误发", "idempotency_key": "ticket-43"})
    assert minus.status == 200 and (await minus.json())["balance"] == 100
    over = await client.post(f"/admin/members/{m.id}/points", headers=ADMIN,
                             json={"delta": -500, "reason": "x", "idempotency_key": "ticket-44"})
    assert over.status == 409 and (await over.json())["error"]["code"] == "insufficient_points"
    reused = await client.post(f"/admin/members/{m.id}/points", headers=ADMIN,
                               json={"delta": 999, "reason": "x", "idempotency_key": "ticket-42"})
    assert reused.status == 409 and (await reused.json())["error"]["code"] == "idempotency_key_reused"
    assert (await Member.get(id=m.id)).points == 100
    assert await AuditLog.filter(action="members.points").count() == 2
    await assert_ledger_consistent()


@pytest.mark.parametrize("payload,field", [
    ({"delta": 0, "reason": "x", "idempotency_key": "k"}, "delta"),
    ({"delta": "5", "reason": "x", "idempotency_key": "k"}, "delta"),
    ({"delta": 5, "reason": "", "idempotency_key": "k"}, "reason"),
    ({"delta": 5, "reason": "x"}, "idempotency_key"),
    ({"delta": 5, "reason": "x", "idempotency_key": "k" * 101}, "idempotency_key"),
])
async def test_bad_adjustments_are_422(client, login, payload, field):
    m = await login()
    resp = await client.post(f"/admin/members/{m.id}/points", json=payload, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 422 and body["error"]["message"].startswith(field), body
    assert await LedgerEntry.all().count() == 0 and await AuditLog.all().count() == 0


async def test_adjusting_an_unknown_member_is_404(client):
    resp = await client.post("/admin/members/12345/points", headers=ADMIN,
                             json={"delta": 5, "reason": "x", "idempotency_key": "k"})
    assert resp.status == 404


async def test_blacklisting_a_member_blocks_login_and_earning(client, login):
    m = await login("o-bad")
    resp = await client.post("/admin/blacklist", headers=ADMIN,
                             json={"kind": "member", "value": str(m.id), "reason": "刷分"})
    assert resp.status == 201, await resp.json()
    assert (await Member.get(id=m.id)).blacklisted is True
    again = await client.post("/admin/blacklist", headers=ADMIN, json={"kind": "member", "value": m.id})
    assert again.status == 200 and (await again.json())["created"] is False

    resp = await client.post("/mp/login", json={"code": "sim:o-bad"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "blacklisted"
    resp = await m.post("/mp/checkin")  # the session it already had ended with the blacklisting
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "session_expired"
    listed = await (await client.get("/admin/blacklist", headers=ADMIN)).json()
    assert listed["items"][0]["value"] == str(m.id)

    resp = await client.delete(f"/admin/blacklist/member/{m.id}", headers=ADMIN)
    assert resp.status == 200
    assert (await Member.get(id=m.id)).blacklisted is False
    assert (await m.post("/mp/checkin")).status == 401  # an ended session stays ended
    m = await login("o-bad")
    assert (await m.post("/mp/checkin")).status == 200
    resp = await client.delete(f"/admin/blacklist/member/{m.id}", headers=ADMIN)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_blacklisted"

    rows = await AuditLog.filter(target=f"member:{m.id}", action__startswith="blacklist").order_by("id")
    assert [r.action for r in rows] == ["blacklist.add", "blacklist.remove"]
    assert rows[0].after["reason"] == "刷分" and rows[1].before["reason"] == "刷分" and rows[1].actor == "bob"
    await assert_ledger_consistent()


async def test_blacklisting_ends_every_session_of_the_member_at_once(client, login):
    sessions = [await login("o-many-phones") for _ in range(4)]
    other = await login("o-bystander")
    assert [(await s.get("/mp/me")).status for s in sessions] == [200] * 4
    resp = await client.post("/admin/blacklist", headers=ADMIN, json={"kind": "member", "value": sessions[0].id})
    assert resp.status == 201
    for s in sessions:
        for call in (s.get("/mp/me"), s.post("/mp/checkin"), s.get("/mp/coupons")):
            r = await call
            assert r.status == 401 and (await r.json())["error"]["code"] == "session_expired"
    assert (await other.get("/mp/me")).status == 200
    assert await LedgerEntry.filter(member_id=sessions[0].id).count() == 0


async def test_logins_racing_a_blacklisting_keep_no_session(client, login):
    """Logins in flight while the operator blacklists: none of their tokens works afterwards."""
    m = await login("o-racer")
    responses = await asyncio.gather(
        *(client.post("/mp/login", json={"code": "sim:o-racer"}) for _ in range(8)),
        client.post("/admin/blacklist", headers=ADMIN, json={"kind": "member", "value": m.id}))
    assert responses[-1].status == 201
    tokens = [m.token] + [(await r.json())["token"] for r in responses[:-1] if r.status == 200]
    assert all(r.status in (200, 403) for r in responses[:-1])
    for token in tokens:
        r = await client.get("/mp/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status == 401


async def test_blacklisting_a_device_blocks_its_logins(client, login):
    await login("o-dev-1", device_id="farm-phone")
    resp = await client.post("/admin/blacklist", headers=ADMIN, json={"kind": "device", "value": "farm-phone"})
    assert resp.status == 201
    resp = await client.post("/mp/login", json={"code": "sim:o-dev-2", "device_id": "farm-phone"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "blacklisted"
    assert await Member.filter(openid="o-dev-2").count() == 0
    assert (await client.post("/mp/login", json={"code": "sim:o-dev-3", "device_id": "clean"})).status == 200
    assert await AuditLog.filter(action="blacklist.add", target="device:farm-phone").count() == 1


@pytest.mark.parametrize("payload,status,start", [
    ({"kind": "ip", "value": "1.2.3.4"}, 422, "kind"),
    ({"kind": "member", "value": "abc"}, 422, "value"),
    ({"kind": "device", "value": ""}, 422, "value"),
    ({"kind": "member", "value": "424242"}, 404, "member 424242"),
])
async def test_bad_blacklist_requests(client, payload, status, start):
    resp = await client.post("/admin/blacklist", headers=ADMIN, json=payload)
    body = await resp.json()
    assert resp.status == status and body["error"]["message"].startswith(start), body
    assert await Blacklist.all().count() == 0 and await AuditLog.all().count() == 0
