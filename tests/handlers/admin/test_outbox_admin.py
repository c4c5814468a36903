"""GET /admin/outbox/dead and POST /admin/outbox/retry."""
from __future__ import annotations

from datetime import timedelta

from app import keys
from app.domain import messages, outbox
from app.models import AuditLog, OutboxMessage
from tests.conftest import ADMIN_TOKEN, shanghai

NOW = shanghai(2026, 11, 26, 10, 0)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_an_operator_sees_dead_letters_and_sends_them_again(client, login, settings, sim_state, clock):
    clock.travel_to(NOW)
    member = await login("o-dead")
    await member.post("/mp/subscriptions", json={"accepted": [settings.templates["coupon"]]})
    await messages.enqueue(member_id=member.id, kind="coupon", period="x", now=NOW,
                           values={"title": "满100减20", "amount": 20, "expires_on": "2026-12-31"})
    wechat = client.app[keys.wechat_key]
    settings = settings.with_(outbox_max_attempts=1)
    sim_state.down = True
    assert (await outbox.deliver_due(wechat=wechat, oa_wechat=wechat, settings=settings, now=NOW))["dead"] == 1
    sim_state.down = False

    resp = await client.get("/admin/outbox/dead", headers=ADMIN)
    items = (await resp.json())["items"]
    assert resp.status == 200 and [i["member_id"] for i in items] == [member.id]
    assert items[0]["status"] == "dead" and items[0]["attempts"] == 1

    resp = await client.post("/admin/outbox/retry", json={"ids": [items[0]["id"]]}, headers=ADMIN)
    assert resp.status == 200 and await resp.json() == {"retried": 1}
    assert await AuditLog.filter(action="outbox.retry").count() == 1
    assert (await (await client.get("/admin/outbox/dead", headers=ADMIN)).json())["items"] == []
    later = NOW + timedelta(seconds=1)
    assert (await outbox.deliver_due(wechat=wechat, oa_wechat=wechat, settings=settings, now=later))["sent"] == 1
    assert (await OutboxMessage.get(id=items[0]["id"])).status == "sent"
    assert len(sim_state.messages) == 1


async def test_admin_outbox_needs_the_token_and_a_good_body(client):
    assert (await client.get("/admin/outbox/dead")).status == 401
    resp = await client.post("/admin/outbox/retry", json={"ids": []}, headers=ADMIN)
    assert resp.status == 422 and "ids" in (await resp.json())["error"]["message"]
    resp = await client.post("/admin/outbox/retry", json={"ids": ["x"]}, headers=ADMIN)
    assert resp.status == 422
    resp = await client.get("/admin/outbox/dead?limit=0", headers=ADMIN)
    assert resp.status == 422


async def test_a_retry_and_its_audit_row_are_one_transaction(client, login, settings, sim_state, clock,
                                                             monkeypatch):
    clock.travel_to(NOW)
    member = await login("o-dead-2")
    await member.post("/mp/subscriptions", json={"accepted": [settings.templates["coupon"]]})
    await messages.enqueue(member_id=member.id, kind="coupon", period="y", now=NOW,
                           values={"title": "满100减20", "amount": 20, "expires_on": "2026-12-31"})
    wechat = client.app[keys.wechat_key]
    sim_state.down = True
    await outbox.deliver_due(wechat=wechat, oa_wechat=wechat, settings=settings.with_(outbox_max_attempts=1),
                             now=NOW)
    sim_state.down = False
    dead = await OutboxMessage.get(member_id=member.id)
    assert dead.status == "dead"

    async def refused(*args, **kwargs):
        raise RuntimeError("the audit log refused the row")

    monkeypatch.setattr(AuditLog, "create", refused)
    resp = await client.post("/admin/outbox/retry", json={"ids": [dead.id]}, headers=ADMIN)
    assert resp.status == 500
    # No audit row, so no retry either: the message is still a dead letter.
    assert (await OutboxMessage.get(id=dead.id)).status == "dead"
