"""Admin A/B tests and costs over HTTP: create, list, enroll, results; validation and errors."""
from datetime import timedelta

import pytest

from app.models import Member, MemberScore
from tests.conftest import ADMIN_TOKEN, shanghai

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Operator": "alice"}
START = shanghai(2026, 11, 2, 9, 0)

BODY = {"key": "validity-7-3", "name": "有效期 7 天 vs 3 天",
        "arms": [{"key": "d7", "weight": 1, "reward": {"amount_fen": 1000, "valid_days": 7}},
                 {"key": "d3", "weight": 1, "reward": {"amount_fen": 1000, "valid_days": 3}}],
        "population": {"segment": "active"}, "metric": {"kind": "redemption", "days": 7}, "horizon_days": 14}


@pytest.mark.smoke
async def test_create_enroll_and_read_results(client, clock):
    clock.travel_to(START)
    for i in range(20):
        m = await Member.create(appid="wx-test-mp", openid=f"o-xa-{i}", invite_code=f"xa{i}")
        await MemberScore.create(member_id=m.id, recency=3, frequency=3, monetary=3, segment="active",
                                 computed_at=START)
    resp = await client.post("/admin/experiments", json=BODY, headers=ADMIN)
    created = await resp.json()
    assert resp.status == 201, created
    assert created["control"] == "d7" and created["metric"] == {"kind": "redemption", "days": 7}
    resp = await client.post("/admin/experiments", json=BODY, headers=ADMIN)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "experiment_exists"
    resp = await client.post("/admin/experiments/validity-7-3/enroll", headers=ADMIN)
    assert (await resp.json()) == {"population": 20, "assigned": 20}
    listing = await (await client.get("/admin/experiments", headers=ADMIN)).json()
    assert [(e["key"], e["assigned"]) for e in listing["items"]] == [("validity-7-3", 20)]
    clock.travel_to(START + timedelta(days=3))
    resp = await client.get("/admin/experiments/validity-7-3/results", headers=ADMIN)
    got = await resp.json()
    assert resp.status == 200, got
    assert sum(a["members"] for a in got["arms"]) == 20 and got["complete"] is False
    assert {"lift", "lift_ci", "relative_lift", "p_value", "cost_per_conversion_fen"} <= set(got["arms"][1])
    assert set(got["sample_ratio"]) >= {"chi2", "p_value", "mismatch"}


async def test_errors_use_the_envelope(client):
    resp = await client.post("/admin/experiments", json={**BODY, "arms": BODY["arms"][:1]}, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 422 and body["error"]["code"] == "invalid_field" and "arms" in body["error"]["message"]
    resp = await client.post("/admin/experiments", data=b"[1]", headers=ADMIN)
    assert resp.status == 400
    resp = await client.get("/admin/experiments/nope/results", headers=ADMIN)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "experiment_not_found"
    resp = await client.get("/admin/experiments")
    assert resp.status == 401
    resp = await client.get("/admin/costs?from=2026-11-01", headers=ADMIN)
    assert resp.status == 422 and "to" in (await resp.json())["error"]["message"]


async def test_costs_report_over_http(client):
    resp = await client.get("/admin/costs?from=2026-11-01&to=2026-12-31", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200, body
    assert [m["month"] for m in body["months"]] == ["2026-11", "2026-12"]
    assert body["band"] == {"low": 0.05, "high": 0.1, "fen_per_point": 1.0} and body["member_roi"] is None
