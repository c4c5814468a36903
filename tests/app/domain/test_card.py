"""The member card's bonus sync: queued with the ledger entry, pushed in order, through outages."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from tortoise.transactions import in_transaction

from app.domain import card, outbox, points
from app.errors import Conflict, InsufficientPoints
from app.models import Member, OutboxMessage
from app.wechat.client import WeChatUnavailable
from tests.conftest import MP_APPID, assert_ledger_consistent, shanghai, drain_outbox

NOW = shanghai(2026, 11, 26, 10, 0)


async def new_member(name: str, *, card_code: str | None = None) -> Member:
    return await Member.create(appid=MP_APPID, openid=f"o-{name}", invite_code=f"I{name}"[:16],
                               card_code=card_code, card_id="p-card" if card_code else None)


async def award(member: Member, amount: int, key: str, reason: str = "checkin"):
    return await points.award(member_id=member.id, amount=amount, reason=reason, key=key, now=NOW,
                              expiry_months=12)


async def card_rows(member: Member) -> list[OutboxMessage]:
    return await OutboxMessage.filter(member_id=member.id, channel="card").order_by("id")


async def test_only_a_member_with_a_card_gets_a_push(db):
    plain, holder = await new_member("plain"), await new_member("holder", card_code="c-1")
    await award(plain, 5, "k:plain")
    posting = await award(holder, 5, "k:holder")
    assert await card_rows(plain) == []
    [row] = await card_rows(holder)
    assert row.key == f"card:{posting.entry.id}" and row.kind == "bonus" and row.status == "pending"
    assert row.payload == {"add_bonus": 5, "record_bonus": "签到奖励"}
    assert row.next_attempt_at is not None and row.next_attempt_at <= NOW


async def test_a_debit_pushes_a_negative_bonus(db):
    holder = await new_member("spender", card_code="c-2")
    await award(holder, 50, "k:earn")
    await points.spend(member_id=holder.id, amount=30, reason="redeem", key="k:spend", now=NOW)
    rows = await card_rows(holder)
    assert [r.payload for r in rows] == [{"add_bonus": 50, "record_bonus": "签到奖励"},
                                         {"add_bonus": -30, "record_bonus": "积分兑换"}]
    with pytest.raises(InsufficientPoints):
        await points.spend(member_id=holder.id, amount=999, reason="redeem", key="k:too-much", now=NOW)
    assert len(await card_rows(holder)) == 2
    await assert_ledger_consistent()


async def test_the_push_is_in_the_ledger_transaction(db):
    holder = await new_member("rollback", card_code="c-3")
    with pytest.raises(RuntimeError):
        async with in_transaction() as conn:
            await points.credit(conn=conn, member_id=holder.id, amount=5, reason="checkin", key="k:rb",
                                now=NOW, expiry_months=12)
            raise RuntimeError("the cause failed after the credit")
    assert await card_rows(holder) == []
    # a repeated idempotency key changes nothing, so it queues nothing either
    await award(holder, 5, "k:once")
    await award(holder, 5, "k:once")
    assert len(await card_rows(holder)) == 1
    await assert_ledger_consistent()


async def test_link_returns_the_balance_and_drops_what_it_covers(db):
    member = await new_member("linker", card_code="c-old")
    await award(member, 7, "k:before")
    assert await card.link(member_id=member.id, code="c-new", card_id="p-card") == 7
    assert [r.status for r in await card_rows(member)] == ["skipped"]
    other = await new_member("other")
    with pytest.raises(Conflict) as taken:
        await card.link(member_id=other.id, code="c-new", card_id="p-card")
    assert taken.value.code == "card_taken"
    assert await card.unlink(code="c-new", card_id="p-card") == 1
    assert (await Member.get(id=member.id)).card_code is None
    assert await card.unlink(code="c-new", card_id="p-card") == 0


async def test_link_racing_credits_counts_each_exactly_once(db):
    """Every change is either in the card's starting balance or queued after it, never both."""
    member = await new_member("race")

    async def earn(i: int) -> None:
        await award(member, 1 + i % 3, f"k:race:{i}")

    results = await asyncio.gather(*(earn(i) for i in range(20)),
                                   card.link(member_id=member.id, code="c-race", card_id="p-card"),
                                   *(earn(i) for i in range(20, 40)))
    init_bonus = results[20]
    queued = sum(r.payload["add_bonus"] for r in await card_rows(member) if r.status == "pending")
    assert init_bonus + queued == (await Member.get(id=member.id)).points
    await assert_ledger_consistent()


async def test_push_updates_the_card_and_raises_when_wechat_is_down(db, oa_wechat, sim_state):
    holder = await new_member("pusher", card_code="c-push")
    await award(holder, 9, "k:push")
    [row] = await card_rows(holder)
    await card.push(row, wechat=oa_wechat)
    assert sim_state.card_updates[-1] == {"code": "c-push", "card_id": "p-card", "bonus": 9,
                                          "record_bonus": "签到奖励"}
    sim_state.down = True
    with pytest.raises(WeChatUnavailable):
        await card.push(row, wechat=oa_wechat)
    assert len(sim_state.card_updates) == 1


async def test_push_for_a_card_deleted_since_is_a_no_op(db, oa_wechat, sim_state):
    holder = await new_member("deleted", card_code="c-del")
    await award(holder, 3, "k:del")
    [row] = await card_rows(holder)
    await Member.filter(id=holder.id).update(card_code=None, card_id=None)
    await card.push(row, wechat=oa_wechat)
    assert sim_state.card_updates == []


async def test_the_outbox_survives_a_simulator_outage(db, oa_wechat, settings, sim_state):
    """Down: every push stays pending with attempts counted; up: each delivered once, in order."""
    a = await new_member("alice")
    b = await new_member("bob")
    for m, code in ((a, "c-alice"), (b, "c-bob")):
        await award(m, 10, f"k:{m.id}:pre")
        start = await card.link(member_id=m.id, code=code, card_id="p-card")
        await oa_wechat.membercard_activate(membership_number=str(m.id), code=code, card_id="p-card",
                                            init_bonus=start)
    await award(a, 5, "k:a1")
    await award(b, 20, "k:b1", reason="pay")
    await points.spend(member_id=a.id, amount=12, reason="redeem", key="k:a2", now=NOW)
    await award(a, 3, "k:a3", reason="referral")

    sim_state.down = True
    first = await outbox.deliver_due(wechat=oa_wechat, oa_wechat=oa_wechat, settings=settings, now=NOW)
    # one message per member per batch: the earlier one must go first
    assert first["claimed"] == 2 and first["retried"] == 2
    assert await OutboxMessage.filter(channel="card", status="pending", attempts=1).count() == 2
    assert (await drain_outbox(oa_wechat, settings, NOW))["claimed"] == 0  # backing off: nothing due yet
    second = await drain_outbox(oa_wechat, settings, NOW + timedelta(minutes=5))
    assert second["retried"] == 2 and second["sent"] == 0
    assert await OutboxMessage.filter(channel="card", status="pending", attempts=2).count() == 2
    assert sim_state.card_updates == []

    sim_state.down = False
    done = await drain_outbox(oa_wechat, settings, NOW + timedelta(hours=1))
    assert done["sent"] == 4 and done.get("dead", 0) == 0
    assert await OutboxMessage.filter(channel="card").exclude(status="sent").count() == 0
    # each push carries the balance at send time: after the outage, the final one each time
    sent = [(u["code"], u["bonus"], u["record_bonus"]) for u in sim_state.card_updates]
    assert [x for x in sent if x[0] == "c-alice"] == [("c-alice", 6, "签到奖励"), ("c-alice", 6, "积分兑换"),
                                                     ("c-alice", 6, "邀请奖励")]
    assert [x for x in sent if x[0] == "c-bob"] == [("c-bob", 30, "消费积分")]
    assert all("add_bonus" not in u for u in sim_state.card_updates)
    for m, code in ((a, "c-alice"), (b, "c-bob")):
        assert sim_state.card_bonus[code] == (await Member.get(id=m.id)).points
    await assert_ledger_consistent()


# -- the absolute bonus (issue 10): retries are harmless, the next push repairs, reconcile ----


async def activated(name: str, code: str, oa_wechat, *, points_before: int = 0) -> Member:
    member = await new_member(name)
    if points_before:
        await award(member, points_before, f"k:{name}:pre")
    start = await card.link(member_id=member.id, code=code, card_id="p-card")
    await oa_wechat.membercard_activate(membership_number=str(member.id), code=code, card_id="p-card",
                                        init_bonus=start)
    return member


async def test_a_retried_push_is_harmless_and_the_next_repairs_a_dead_one(db, oa_wechat, settings, sim_state):
    holder = await activated("retry", "c-retry", oa_wechat)
    await award(holder, 9, "k:r1")
    [row] = await card_rows(holder)
    # WeChat applied it but our answer was lost: the outbox sends the same push again.
    await card.push(row, wechat=oa_wechat)
    await card.push(row, wechat=oa_wechat)
    assert sim_state.card_bonus["c-retry"] == 9

    await outbox.deliver_due(wechat=oa_wechat, oa_wechat=oa_wechat, settings=settings, now=NOW)
    await award(holder, 5, "k:r2")
    sim_state.down = True
    dead = await outbox.deliver_due(wechat=oa_wechat, oa_wechat=oa_wechat, now=NOW,
                                    settings=settings.with_(outbox_max_attempts=1))
    assert dead["dead"] == 1 and sim_state.card_bonus["c-retry"] == 9
    sim_state.down = False
    await award(holder, 3, "k:r3")
    await drain_outbox(oa_wechat, settings, NOW)
    assert sim_state.card_bonus["c-retry"] == (await Member.get(id=holder.id)).points == 17
    await assert_ledger_consistent()


async def test_reconcile_re_pushes_only_the_cards_that_differ(db, oa_wechat, sim_state):
    wrong = await activated("wrong", "c-wrong", oa_wechat, points_before=40)
    right = await activated("right", "c-right", oa_wechat, points_before=25)
    lost = await new_member("lost", card_code="c-lost")  # linked, but WeChat never saw the card
    sim_state.card_bonus["c-wrong"] = 7  # a push lost for good
    assert (await oa_wechat.membercard_userinfo(code="c-right", card_id="p-card"))["bonus"] == 25

    batches = [b async for b in card.reconcile(wechat=oa_wechat, batch=2)]
    assert [seen for seen, _ in batches] == [2, 1]
    changed = [item for _, items in batches for item in items]
    assert changed[0] == {"member_id": wrong.id, "card": 7, "points": 40}
    assert changed[1]["member_id"] == lost.id and "40056" in changed[1]["error"]
    assert sim_state.card_bonus["c-wrong"] == 40 and sim_state.card_bonus["c-right"] == 25
    assert [u["code"] for u in sim_state.card_updates] == ["c-wrong"]
    assert sim_state.card_updates[-1]["record_bonus"] == card.RECONCILE_TEXT
    assert [b async for b in card.reconcile(wechat=oa_wechat)][0][1] == [changed[1]]  # only the lost one
    assert right.id not in {item["member_id"] for item in changed}


async def test_card_reconcile_command(db, oa_wechat, settings, sim_state, migrated, redis_url, data_dir):
    import os
    import sys

    from miniprogram_stub.simulator.wechat import SANDBOX_OA_APPID, SANDBOX_OA_SECRET
    from tests.conftest import MP_SECRET

    wrong = await activated("cli-wrong", "c-cli-1", oa_wechat, points_before=12)
    await activated("cli-right", "c-cli-2", oa_wechat, points_before=3)
    sim_state.card_bonus["c-cli-1"] = 0
    env = {**os.environ, "DATABASE_URL": migrated, "REDIS_URL": redis_url, "DATA_DIR": str(data_dir),
           "WECHAT_API_BASE": settings.wechat_api_base, "WECHAT_MP_APPID": MP_APPID,
           "WECHAT_MP_SECRET": MP_SECRET, "WECHAT_OA_APPID": SANDBOX_OA_APPID,
           "WECHAT_OA_SECRET": SANDBOX_OA_SECRET}
    # The simulator answers on this test's event loop: the command runs beside it, not blocking it.
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "card", "reconcile", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert f"member {wrong.id}: card 0 -> 12" in out.decode()
    assert "checked 2 cards: 1 re-pushed, 0 failed" in out.decode()
    assert "card" in err.decode()  # the progress bar, on stderr
    assert sim_state.card_bonus["c-cli-1"] == 12 and sim_state.card_bonus["c-cli-2"] == 3
