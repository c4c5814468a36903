"""GET /mp/rewards and POST /mp/rewards/{id}/redeem as the mini-program sees them."""
from datetime import timedelta

import pytest

from app.domain import points
from app.models import Reward
from tests.conftest import assert_ledger_consistent, shanghai

pytestmark = pytest.mark.smoke


async def test_catalogue_and_a_points_redemption(client, login, clock):
    clock.travel_to(shanghai(2026, 11, 20, 10, 0))
    cup = await Reward.create(name="马克杯", points=100, stock=3, per_member_limit=2)
    combo = await Reward.create(name="咖啡机", points=699, cash_fen=9900, stock=1,
                                valid_until=clock.now() + timedelta(days=10))
    await Reward.create(name="下架", points=1, stock=9, active=False)
    await Reward.create(name="过期", points=1, stock=9, valid_until=clock.now() - timedelta(seconds=1))
    m = await login()
    await points.award(member_id=m.id, amount=250, reason="gift", key="gift", now=clock.now(), expiry_months=12)

    body = await (await m.get("/mp/rewards")).json()
    assert [i["name"] for i in body["items"]] == ["马克杯", "咖啡机"]
    assert body["items"][0] == {"id": cup.id, "name": "马克杯", "points": 100, "cash_fen": 0, "stock": 3,
                                "per_member_limit": 2, "valid_until": None, "redeemed": 0}
    assert body["items"][1]["cash_fen"] == 9900 and body["items"][1]["valid_until"].startswith("2026-11-")

    resp = await m.post(f"/mp/rewards/{cup.id}/redeem")
    got = await resp.json()
    assert resp.status == 200, got
    assert got["balance"] == 150 and got["redemption"]["status"] == "done" and "pay_params" not in got
    body = await (await m.get("/mp/rewards")).json()
    assert body["items"][0]["stock"] == 2 and body["items"][0]["redeemed"] == 1
    history = await (await m.get("/mp/points")).json()
    assert history["items"][0]["reason"] == "redeem" and history["items"][0]["delta"] == -100
    await assert_ledger_consistent()


async def test_unknown_inactive_or_expired_items_are_404(client, login, clock):
    hidden = await Reward.create(name="下架", points=1, stock=9, active=False)
    m = await login()
    for path in ("/mp/rewards/424242/redeem", f"/mp/rewards/{hidden.id}/redeem"):
        resp = await m.post(path)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "reward_not_found"
    assert (await m.post("/mp/rewards/abc/redeem")).status == 404
    assert (await m.post("/mp/rewards/99999999999999999999999/redeem")).status == 404


async def test_rewards_need_a_session(client):
    assert (await client.get("/mp/rewards")).status == 401
    resp = await client.post("/mp/rewards/1/redeem")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthenticated"
