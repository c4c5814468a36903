"""expire_points: batched SQL expiry keeps the ledger invariant, once per lot."""
from __future__ import annotations

import asyncio
from datetime import timedelta


from app.config import Settings
from app.domain import card, expiry, points
from app.models import LedgerEntry, Member, OutboxMessage
from jobs.expire_points import run as run_expire
from jobs.registry import JobContext
from tests.conftest import assert_ledger_consistent, shanghai, drain_outbox

EARNED = shanghai(2025, 11, 20, 10, 0)  # expires 2026-11-20 10:00
LATER = shanghai(2026, 1, 15, 10, 0)  # expires 2027-01-15 10:00
RUN = shanghai(2026, 11, 22, 0, 10)


async def member(n: int) -> Member:
    return await Member.create(appid="wx-test-mp", openid=f"o-exp-{n}", invite_code=f"exp{n}")


async def earn(m: Member, amount: int, at, key: str) -> None:
    await points.award(member_id=m.id, amount=amount, reason="task", key=key, now=at, expiry_months=12)


def ctx(now, today=None) -> JobContext:
    settings = Settings()
    return JobContext(settings=settings, redis=None, wechat=None, now=now,
                      today=today or now.astimezone(settings.tz).date())


async def test_expires_the_rest_of_partially_spent_lots_once(db):
    a, b, c = await member(1), await member(2), await member(3)
    await earn(a, 100, EARNED, "a1")
    await earn(a, 50, LATER, "a2")
    await points.spend(member_id=a.id, amount=30, reason="redeem", key="a-spend", now=LATER)  # oldest lot first
    await earn(b, 40, EARNED, "b1")
    await points.spend(member_id=b.id, amount=40, reason="redeem", key="b-spend", now=LATER)  # nothing left
    await earn(c, 10, EARNED - timedelta(days=40), "c1")
    await earn(c, 20, EARNED, "c2")

    first = await run_expire(ctx(RUN))
    assert first["lots"] == 3 and first["points"] == 70 + 10 + 20
    assert (await Member.get(id=a.id)).points == 50
    assert (await Member.get(id=b.id)).points == 0
    assert (await Member.get(id=c.id)).points == 0
    entry = await LedgerEntry.get(idempotency_key=f"expire:{(await LedgerEntry.get(idempotency_key='a1')).id}")
    assert entry.delta == -70 and entry.reason == "expire" and entry.member_id == a.id
    again = await run_expire(ctx(RUN + timedelta(hours=1)))
    assert again["lots"] == 0
    assert await LedgerEntry.filter(reason="expire").count() == 3
    await assert_ledger_consistent()


async def test_chunks_cover_every_member_and_lot(db):
    members = [await member(n) for n in range(12)]
    for m in members:
        for k in range(3):
            await earn(m, 10 + k, EARNED + timedelta(minutes=k), f"lot-{m.id}-{k}")
    result = await expiry.expire_due(now=RUN, chunk=5)
    assert result.lots == 36 and result.chunks == 8 and result.points == 12 * 33
    assert not await Member.filter(points__gt=0).exists()
    await assert_ledger_consistent()


async def test_not_yet_due_at_the_minute_and_debt_untouched(db):
    a, debtor = await member(1), await member(2)
    await earn(a, 100, shanghai(2025, 11, 22, 0, 11), "a1")  # due one minute after the run
    await earn(debtor, 30, EARNED, "d1")
    await points.spend(member_id=debtor.id, amount=30, reason="redeem", key="d-spend", now=EARNED)
    await points.spend(member_id=debtor.id, amount=20, reason="refund", key="d-refund", now=EARNED,
                       allow_negative=True)
    assert (await run_expire(ctx(RUN)))["lots"] == 0
    assert (await Member.get(id=debtor.id)).points == -20
    assert (await run_expire(ctx(RUN + timedelta(minutes=1))))["lots"] == 1
    assert (await Member.get(id=a.id)).points == 0
    await assert_ledger_consistent()


async def test_hand_run_for_a_day_expires_as_of_its_start(db):
    a = await member(1)
    await earn(a, 100, EARNED, "a1")
    real_now = shanghai(2026, 11, 1, 12, 0)
    assert (await run_expire(ctx(real_now, today=shanghai(2026, 11, 20, 0, 0).date())))["lots"] == 0
    assert (await run_expire(ctx(real_now, today=shanghai(2026, 11, 21, 0, 0).date())))["lots"] == 1
    await assert_ledger_consistent()


async def test_concurrent_spends_during_expiry_keep_the_invariant(db):
    members = [await member(n) for n in range(20)]
    for m in members:
        await earn(m, 100, EARNED, f"old-{m.id}")
        await earn(m, 100, LATER, f"new-{m.id}")

    async def spend(m: Member) -> None:
        try:
            await points.spend(member_id=m.id, amount=150, reason="redeem", key=f"race-{m.id}", now=RUN)
        except Exception:
            pass  # insufficient after expiry: the race's other valid outcome

    await asyncio.gather(expiry.expire_due(now=RUN, chunk=3), *(spend(m) for m in members))
    for m in members:
        assert (await Member.get(id=m.id)).points in (0, 50, 100)
    await assert_ledger_consistent()


# -- the member card (issue 4): an expiry is a points change like any other -----------------


async def card_holder(n: int, code: str, oa_wechat) -> Member:
    """A member who earned before linking a card, so the card starts with that balance."""
    m = await member(n)
    await earn(m, 100, EARNED, f"pre-{n}")
    start = await card.link(member_id=m.id, code=code, card_id="p-card")
    await oa_wechat.membercard_activate(membership_number=str(m.id), code=code, card_id="p-card",
                                        init_bonus=start)
    return m


async def test_a_card_holders_expiry_is_pushed_to_the_card_once(db, oa_wechat, settings, sim_state):
    holder = await card_holder(1, "c-exp", oa_wechat)
    await earn(holder, 50, LATER, "later")
    await points.spend(member_id=holder.id, amount=30, reason="redeem", key="spend", now=LATER)  # the old lot
    plain = await member(2)
    await earn(plain, 40, EARNED, "plain")

    await run_expire(ctx(RUN))
    lot = await LedgerEntry.get(idempotency_key="pre-1")
    expired = await LedgerEntry.get(idempotency_key=f"expire:{lot.id}")
    [push] = await OutboxMessage.filter(key=f"card:{expired.id}")
    assert push.member_id == holder.id and push.channel == "card"
    assert (push.kind, push.status, push.attempts) == ("bonus", "pending", 0)
    assert push.payload == {"add_bonus": -70, "record_bonus": card.RECORD_TEXT["expire"]}
    assert push.next_attempt_at <= RUN and push.created_at is not None
    assert await OutboxMessage.filter(member_id=plain.id).count() == 0
    queued = await OutboxMessage.all().count()

    assert (await run_expire(ctx(RUN + timedelta(hours=1))))["lots"] == 0
    assert await OutboxMessage.all().count() == queued

    done = await drain_outbox(oa_wechat, settings, RUN + timedelta(minutes=5))
    assert done["sent"] == 3 and done.get("dead", 0) == 0
    # each push sets the card to the balance when it is sent: all three after the expiry
    assert [u["bonus"] for u in sim_state.card_updates] == [50, 50, 50]
    assert "add_bonus" not in sim_state.card_updates[-1]
    assert [u["record_bonus"] for u in sim_state.card_updates] == ["任务奖励", "积分兑换", "积分过期"]
    assert sim_state.card_updates[-1]["record_bonus"] == "积分过期"
    assert sim_state.card_bonus["c-exp"] == (await Member.get(id=holder.id)).points == 50
    await assert_ledger_consistent()


async def test_every_expired_lot_of_every_holder_across_chunks_is_pushed(db, oa_wechat, settings, sim_state):
    holders = [await card_holder(n, f"c-{n}", oa_wechat) for n in range(4)]
    plain = [await member(10 + n) for n in range(3)]
    for m in holders + plain:
        await earn(m, 7, EARNED + timedelta(minutes=1), f"second-{m.id}")
    result = await expiry.expire_due(now=RUN, chunk=3)
    assert result.lots == 4 * 2 + 3 and result.chunks == 4
    entries = await LedgerEntry.filter(reason="expire", member_id__in=[m.id for m in holders]).order_by("id")
    pushes = await OutboxMessage.filter(key__in=[f"card:{e.id}" for e in entries]).order_by("id")
    assert await OutboxMessage.filter(member_id__in=[m.id for m in plain]).count() == 0
    assert sorted(p.payload["add_bonus"] for p in pushes) == [-100] * 4 + [-7] * 4
    assert {p.member_id for p in pushes} == {m.id for m in holders}
    assert [p.key for p in pushes] == [f"card:{e.id}" for e in entries]  # the ledger's order

    await drain_outbox(oa_wechat, settings, RUN + timedelta(minutes=5))
    for n, m in enumerate(holders):
        assert sim_state.card_bonus[f"c-{n}"] == (await Member.get(id=m.id)).points == 0
    await assert_ledger_consistent()
