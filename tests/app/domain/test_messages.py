"""Subscription quota and queueing: acceptances counted per template, spent once per send,
and a message queued once per key."""
from __future__ import annotations

import asyncio

import pytest

from app.config import DEFAULT_TEMPLATES
from app.domain import messages
from app.errors import InvalidField
from app.models import Member, OutboxMessage
from tests.conftest import shanghai

TPL = DEFAULT_TEMPLATES


async def new_member(openid: str = "o-1") -> Member:
    return await Member.create(appid="wx-test-mp", openid=openid, invite_code=f"inv{openid}"[:16])


async def test_accept_counts_each_acceptance_and_spend_takes_one(db):
    member = await new_member()
    await messages.accept(member_id=member.id, accepted=[TPL["coupon"]], templates=TPL)
    quotas = await messages.accept(member_id=member.id, accepted=[TPL["coupon"], TPL["birthday"]], templates=TPL)
    by_kind = {q["kind"]: q["remaining"] for q in quotas}
    assert by_kind == {"birthday": 1, "points_expiry": 0, "tier_upgrade": 0, "coupon": 2}
    assert await messages.spend(member_id=member.id, template_id=TPL["coupon"])
    assert await messages.spend(member_id=member.id, template_id=TPL["coupon"])
    assert not await messages.spend(member_id=member.id, template_id=TPL["coupon"])


async def test_concurrent_acceptances_all_count(db):
    member = await new_member()
    await asyncio.gather(*(messages.accept(member_id=member.id, accepted=[TPL["birthday"]], templates=TPL)
                           for _ in range(20)))
    spent = await asyncio.gather(*(messages.spend(member_id=member.id, template_id=TPL["birthday"])
                                   for _ in range(25)))
    assert sum(spent) == 20


async def test_unknown_template_is_rejected_naming_accepted(db):
    member = await new_member()
    with pytest.raises(InvalidField) as err:
        await messages.accept(member_id=member.id, accepted=["not-ours"], templates=TPL)
    assert err.value.field == "accepted"


async def test_enqueue_once_per_key(db):
    member = await new_member()
    now = shanghai(2026, 11, 26, 10, 0)
    first = await messages.enqueue(member_id=member.id, kind="points_expiry", period="2026-12",
                                   values={"points": 120, "expires_on": "2026-12-31"}, now=now, page="pages/points")
    again = await messages.enqueue(member_id=member.id, kind="points_expiry", period="2026-12",
                                   values={"points": 999}, now=now)
    assert (first, again) == (True, False)
    row = await OutboxMessage.get(key=f"points_expiry:{member.id}:2026-12")
    assert row.status == "pending" and row.channel == "subscribe"
    assert row.payload == {"values": {"points": 120, "expires_on": "2026-12-31"}, "page": "pages/points"}
    assert row.next_attempt_at == now


async def test_enqueue_many_in_chunks_counts_only_new(db):
    members = [await new_member(f"o-{i}") for i in range(3)]
    now = shanghai(2026, 11, 26, 10, 0)
    rows = [{"member_id": m.id, "kind": "coupon", "period": f"p{i}", "values": {"title": "券", "amount": 20,
                                                                               "expires_on": "2026-12-31"}}
            for m in members for i in range(messages.CHUNK)]
    assert await messages.enqueue_many(rows, now=now) == 3 * messages.CHUNK
    assert await messages.enqueue_many(rows[:10] + [{**rows[0], "period": "new"}], now=now) == 1
    assert await OutboxMessage.all().count() == 3 * messages.CHUNK + 1


async def test_enqueue_inside_a_transaction_survives_a_duplicate(db):
    from tortoise.transactions import in_transaction

    member = await new_member()
    now = shanghai(2026, 11, 26, 10, 0)
    await messages.enqueue(member_id=member.id, kind="birthday", period="2026", values={}, now=now)
    async with in_transaction() as conn:
        assert not await messages.enqueue(member_id=member.id, kind="birthday", period="2026", values={},
                                          now=now, conn=conn)
        assert await messages.enqueue(member_id=member.id, kind="coupon", period="x", values={}, now=now, conn=conn)
    assert await OutboxMessage.all().count() == 2


def test_render_maps_semantic_values_to_template_fields():
    data = messages.render("points_expiry", {"points": 120, "expires_on": "2026-12-31"})
    assert data == {"thing1": "您有积分即将过期", "number2": "120", "time3": "2026-12-31"}
    long = messages.render("coupon", {"title": "x" * 30, "amount": 50, "expires_on": "2026-12-31"})
    assert len(long["thing1"]) == 20 and long["amount2"] == "50元"
    with pytest.raises(messages.MissingValue):
        messages.render("coupon", {"title": "券"})
