"""POST /mp/subscriptions: acceptances from wx.requestSubscribeMessage, spent by the outbox."""
from __future__ import annotations

import asyncio

import pytest

from app import keys
from app.domain import messages, outbox
from app.models import OutboxMessage
from tests.conftest import shanghai

NOW = shanghai(2026, 11, 26, 10, 0)


def quota_of(body: dict, kind: str) -> int:
    return next(q["remaining"] for q in body["quotas"] if q["kind"] == kind)


@pytest.mark.smoke
async def test_accept_twice_pays_for_two_sends_and_the_third_is_skipped(client, login, settings, sim_state):
    member = await login("o-sub")
    template = settings.templates["points_expiry"]
    for expected in (1, 2):
        resp = await member.post("/mp/subscriptions", json={"accepted": [template]})
        assert resp.status == 200
        assert quota_of(await resp.json(), "points_expiry") == expected
    for period in ("a", "b", "c"):
        await messages.enqueue(member_id=member.id, kind="points_expiry", period=period,
                               values={"points": 10, "expires_on": "2026-12-31"}, now=NOW)
    wechat = client.app[keys.wechat_key]
    summary = await outbox.deliver_due(wechat=wechat, oa_wechat=wechat, settings=settings, now=NOW)
    assert (summary["sent"], summary["skipped"]) == (2, 1)
    assert [m["touser"] for m in sim_state.messages] == ["o-sub", "o-sub"]
    skipped = await OutboxMessage.get(status="skipped")
    assert skipped.key.endswith(":c") and skipped.last_error == "no_quota"
    resp = await member.post("/mp/subscriptions", json={"accepted": []})
    assert quota_of(await resp.json(), "points_expiry") == 0


async def test_concurrent_acceptances_all_count(client, login, settings):
    member = await login()
    template = settings.templates["coupon"]
    responses = await asyncio.gather(*(member.post("/mp/subscriptions", json={"accepted": [template]})
                                       for _ in range(30)))
    assert {r.status for r in responses} == {200}
    resp = await member.post("/mp/subscriptions", json={"accepted": []})
    assert quota_of(await resp.json(), "coupon") == 30


@pytest.mark.parametrize("body, status, field", [
    ({"accepted": ["someone-else-s-template"]}, 422, "accepted"),
    ({"accepted": "sandbox-tpl-coupon"}, 422, "accepted"),
    ({"accepted": [1]}, 422, "accepted"),
    ({}, 422, "accepted"),
    ({"accepted": ["sandbox-tpl-coupon"] * 21}, 422, "accepted"),
])
async def test_bad_bodies_name_the_field(client, login, body, status, field):
    member = await login()
    resp = await member.post("/mp/subscriptions", json=body)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_field" and field in error["message"]


async def test_malformed_and_anonymous(client, login):
    member = await login()
    resp = await client.post("/mp/subscriptions", data=b"[1,2", headers={**member.headers, "Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/mp/subscriptions", json={"accepted": []})
    assert resp.status == 401
