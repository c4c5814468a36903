"""Admin rewards over HTTP: validated creation with an audit row, listing, and the item on sale."""
import pytest

from app.models import AuditLog, Reward
from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Operator": "carol"}


@pytest.mark.smoke
async def test_create_list_and_sell_an_item(client, login):
    payload = {"name": "帆布袋", "points": 120, "cash_fen": 0, "stock": 30, "per_member_limit": 2}
    resp = await client.post("/admin/rewards", json=payload, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 201, body
    assert body["id"] and {k: body[k] for k in payload} == payload
    audit = await AuditLog.get(action="rewards.create")
    assert audit.actor == "carol" and audit.target == f"reward:{body['id']}"
    assert audit.before is None and audit.after["stock"] == 30

    listed = await (await client.get("/admin/rewards", headers=ADMIN)).json()
    assert [r["id"] for r in listed["items"]] == [body["id"]]
    m = await login()
    mall = await (await m.get("/mp/rewards")).json()
    assert mall["items"][0]["name"] == "帆布袋" and mall["items"][0]["redeemed"] == 0


@pytest.mark.parametrize("payload,field", [
    ({"points": 1, "stock": 1}, "name"),
    ({"name": "", "points": 1, "stock": 1}, "name"),
    ({"name": "x" * 65, "points": 1, "stock": 1}, "name"),
    ({"name": "x", "points": -1, "stock": 1}, "points"),
    ({"name": "x", "points": "10", "stock": 1}, "points"),
    ({"name": "x", "points": 0, "cash_fen": 0, "stock": 1}, "points"),
    ({"name": "x", "points": 1, "stock": -1}, "stock"),
    ({"name": "x", "points": 1, "stock": 1, "per_member_limit": 0}, "per_member_limit"),
    ({"name": "x", "points": 1, "cash_fen": -5, "stock": 1}, "cash_fen"),
    ({"name": "x", "points": 1, "stock": 1, "valid_until": "2026-12-01T00:00:00"}, "valid_until"),
])
async def test_invalid_items_are_422_naming_the_field(client, payload, field):
    resp = await client.post("/admin/rewards", json=payload, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 422 and body["error"]["message"].startswith(field), body
    assert await Reward.all().count() == 0 and await AuditLog.all().count() == 0


async def test_rewards_need_the_admin_token(client):
    assert (await client.get("/admin/rewards")).status == 401
    resp = await client.post("/admin/rewards", json={"name": "x", "points": 1, "stock": 1})
    assert resp.status == 401 and await Reward.all().count() == 0
