"""GET /admin/metrics, GET /admin/segments/{name}.csv and GET /admin/: auth, 422s, the CSV."""
from __future__ import annotations

import asyncio
import csv
import io
from datetime import date

import pytest

from app.domain import segments
from app.models import Checkin, Member, Payment
from tests.conftest import ADMIN_TOKEN, shanghai

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_metrics_need_the_admin_token(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        resp = await client.get("/admin/metrics?from=2026-11-01&to=2026-11-07", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("query,field", [
    ("", "from"), ("from=2026-11-01", "to"), ("from=2026-02-30&to=2026-03-01", "from"),
    ("from=2026-11-01&to=11/07/2026", "to"), ("from=2026-11-08&to=2026-11-07", "from"),
    ("from=2024-01-01&to=2026-01-01", "to"), ("from=2026-11-01&to=2026-11-07&fen_per_point=x", "fen_per_point"),
])
async def test_bad_ranges_are_422_naming_the_field(client, query, field):
    resp = await client.get(f"/admin/metrics?{query}", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 422, body
    assert body["error"]["code"] == "invalid_field"
    assert body["error"]["message"].startswith(f"{field}:")


@pytest.mark.smoke
async def test_metrics_of_a_range(client, clock):
    clock.travel_to(shanghai(2026, 11, 22, 10, 0))
    member = await Member.create(appid="wx", openid="o-1", invite_code="i1",
                                 created_at=shanghai(2026, 11, 2, 0, 5))
    await Checkin.create(member=member, day=date(2026, 11, 2))
    await Checkin.create(member=member, day=date(2026, 11, 3))
    await Payment.create(transaction_id="t1", out_trade_no="o1", openid="o-1", member=member,
                         total_fen=1000, payer_total_fen=900, paid_at=shanghai(2026, 11, 3, 9, 0))
    resp = await client.get("/admin/metrics?from=2026-11-01&to=2026-11-07", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["members"] == {"total": 1, "new": 1, "active": 1}
    assert body["new_members"][1] == {"date": "2026-11-02", "count": 1}
    assert body["checkins"]["streaks"]["2"] == 1
    assert body["orders"]["net_spend_fen"] == 900
    assert body["generated_at"] == "2026-11-22T10:00:00+08:00"
    # Dozens of operators at once: one answer, from the cache after the first.
    answers = await asyncio.gather(*[
        client.get("/admin/metrics?from=2026-11-01&to=2026-11-07", headers=ADMIN) for _ in range(30)])
    assert {a.status for a in answers} == {200}
    assert {(await a.json())["generated_at"] for a in answers} == {body["generated_at"]}


async def test_segment_csv_streams_the_members_with_phones_masked(client):
    for i in range(7):
        await Member.create(appid="wx", openid=f"o-{i}", invite_code=f"i{i}", phone=f"1390000000{i}",
                            tier="silver", points=10 * i, created_at=shanghai(2026, 1, 1, 9, 0))
    await segments.recompute(now=shanghai(2026, 11, 22, 10, 0), today=date(2026, 11, 22))
    resp = await client.get("/admin/segments/silent.csv", headers=ADMIN)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert 'filename="segment-silent.csv"' in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [r["openid"] for r in rows] == [f"o-{i}" for i in range(7)]
    assert rows[3] == {"member_id": rows[3]["member_id"], "openid": "o-3", "phone": "139****0003",
                       "tier": "silver", "points": "30", "recency": "0", "frequency": "0",
                       "monetary": "0", "last_paid_at": ""}
    assert "13900000003" not in await resp.text()

    empty = await client.get("/admin/segments/high_value.csv", headers=ADMIN)
    assert empty.status == 200
    assert (await empty.text()).strip() == ",".join(
        ["member_id", "openid", "phone", "tier", "points", "recency", "frequency", "monetary", "last_paid_at"])


async def test_segment_csv_unknown_name_and_auth(client):
    resp = await client.get("/admin/segments/whales.csv", headers=ADMIN)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "segment_not_found"
    resp = await client.get("/admin/segments/new.csv")
    assert resp.status == 401


async def test_dashboard_page_is_served_without_the_token_and_holds_no_data(client):
    resp = await client.get("/admin/")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    page = await resp.text()
    assert "/admin/metrics" in page and "sessionStorage" in page
    assert "http://" not in page and "https://" not in page  # offline: no CDN
