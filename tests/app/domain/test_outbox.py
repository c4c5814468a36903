"""Delivering the outbox against the WeChat simulator: quota, outages, dead letters, claims."""
from __future__ import annotations

import asyncio
import sys
import types
from datetime import timedelta, timezone

import aiohttp
import pytest

from app.domain import messages, outbox
from app.models import Member, OutboxMessage, SubscriptionQuota
from app.wechat.client import WeChatClient, WeChatUnavailable
from tests.conftest import MP_APPID, MP_SECRET, shanghai

NOW = shanghai(2026, 11, 26, 10, 0)
VALUES = {"points": 120, "expires_on": "2026-12-31"}


@pytest.fixture
async def wechat(db, redis, settings):
    async with aiohttp.ClientSession() as session:
        yield WeChatClient(session=session, redis=redis, base_url=settings.wechat_api_base,
                           appid=MP_APPID, secret=MP_SECRET, retries=0)


async def new_member(openid: str = "o-1") -> Member:
    return await Member.create(appid=MP_APPID, openid=openid, invite_code=f"i{openid}"[:16])


async def accept(member: Member, settings, kind: str = "points_expiry", times: int = 1) -> None:
    for _ in range(times):
        await messages.accept(member_id=member.id, accepted=[settings.templates[kind]], templates=settings.templates)


async def queue(member: Member, period: str, kind: str = "points_expiry", values=VALUES, now=NOW) -> OutboxMessage:
    assert await messages.enqueue(member_id=member.id, kind=kind, period=period, values=values, now=now)
    return await OutboxMessage.get(key=f"{kind}:{member.id}:{period}")


async def deliver(wechat, settings, now=NOW, **kw) -> dict:
    return await outbox.deliver_due(wechat=wechat, oa_wechat=wechat, settings=settings, now=now, **kw)


async def remaining(member: Member, settings, kind: str = "points_expiry") -> int:
    row = await SubscriptionQuota.get_or_none(member_id=member.id, template_id=settings.templates[kind])
    return row.remaining if row else 0


async def test_each_acceptance_pays_for_one_send_then_no_quota(wechat, settings, sim_state):
    member = await new_member()
    await accept(member, settings, times=2)
    for period in ("a", "b", "c"):
        await queue(member, period)
    summary = await deliver(wechat, settings)
    assert summary == {"claimed": 3, "sent": 2, "skipped": 1, "retried": 0, "dead": 0}
    assert len(sim_state.messages) == 2
    sent = sim_state.messages[0]
    assert sent["touser"] == "o-1" and sent["template_id"] == settings.templates["points_expiry"]
    assert sent["data"]["number2"] == {"value": "120"}
    third = await OutboxMessage.get(key=f"points_expiry:{member.id}:c")
    assert (third.status, third.last_error) == ("skipped", "no_quota")
    assert await remaining(member, settings) == 0
    assert await deliver(wechat, settings, now=NOW + timedelta(days=1)) == {
        "claimed": 0, "sent": 0, "skipped": 0, "retried": 0, "dead": 0}


async def test_43101_zeroes_the_quota_and_skips(wechat, settings, sim_state):
    member = await new_member()
    await accept(member, settings, times=5)
    sim_state.no_quota.add(("o-1", settings.templates["points_expiry"]))
    message = await queue(member, "a")
    assert (await deliver(wechat, settings))["skipped"] == 1
    await message.refresh_from_db()
    assert (message.status, message.last_error) == ("skipped", "no_quota")
    assert await remaining(member, settings) == 0
    assert sim_state.messages == []


async def test_an_outage_is_retried_with_backoff_and_delivered_once(wechat, settings, sim_state):
    member = await new_member()
    await accept(member, settings)
    message = await queue(member, "a")
    sim_state.down = True
    assert (await deliver(wechat, settings))["retried"] == 1
    await message.refresh_from_db()
    assert message.status == "pending" and message.attempts == 1
    assert message.next_attempt_at == NOW + outbox.BACKOFF_BASE
    assert "503" in message.last_error
    assert await remaining(member, settings) == 1  # the failed send did not use the acceptance
    # Not due yet: nothing is claimed.
    assert (await deliver(wechat, settings, now=NOW + timedelta(seconds=10)))["claimed"] == 0
    assert (await deliver(wechat, settings, now=NOW + timedelta(seconds=31)))["retried"] == 1
    await message.refresh_from_db()
    assert message.attempts == 2 and message.next_attempt_at == NOW + timedelta(seconds=31 + 60)
    sim_state.down = False
    later = NOW + timedelta(minutes=5)
    assert (await deliver(wechat, settings, now=later))["sent"] == 1
    assert (await deliver(wechat, settings, now=later + timedelta(hours=1)))["claimed"] == 0
    await message.refresh_from_db()
    assert message.status == "sent" and message.attempts == 3 and message.sent_at == later
    assert len(sim_state.messages) == 1
    assert await remaining(member, settings) == 0


async def test_dead_after_max_attempts_and_an_operator_retries(wechat, settings, sim_state):
    settings = settings.with_(outbox_max_attempts=3)
    member = await new_member()
    await accept(member, settings)
    message = await queue(member, "a")
    sim_state.down = True
    now = NOW
    outcomes = []
    for _ in range(3):
        summary = await deliver(wechat, settings, now=now)
        outcomes.append("dead" if summary["dead"] else "retried" if summary["retried"] else "-")
        now += outbox.BACKOFF_MAX
    assert outcomes == ["retried", "retried", "dead"]
    await message.refresh_from_db()
    assert message.status == "dead" and message.attempts == 3 and message.next_attempt_at is None
    dead = await outbox.list_dead(limit=10)
    assert [d["id"] for d in dead] == [message.id] and dead[0]["last_error"]
    assert (await deliver(wechat, settings, now=now + timedelta(days=1)))["claimed"] == 0

    sim_state.down = False
    assert await outbox.retry_dead(ids=[message.id, 999999], now=now) == 1
    assert await outbox.list_dead() == []
    assert (await deliver(wechat, settings, now=now))["sent"] == 1
    assert len(sim_state.messages) == 1


async def test_a_refusal_retrying_cannot_fix_is_dead_at_once(wechat, settings, sim_state):
    member = await new_member()
    await accept(member, settings)
    message = await queue(member, "a", values={"points": 5})  # no expires_on: cannot render
    assert (await deliver(wechat, settings))["dead"] == 1
    await message.refresh_from_db()
    assert message.last_error == "missing_value:expires_on"
    assert await remaining(member, settings) == 1


async def test_concurrent_workers_deliver_each_message_once(wechat, settings, sim_state):
    members = [await new_member(f"o-{i}") for i in range(30)]
    for member in members:
        await accept(member, settings, times=3)
        for period in ("a", "b", "c"):
            await queue(member, period)
    fast = settings.with_(outbox_rate=10_000)
    results = await asyncio.gather(*(deliver(wechat, fast, limit=25) for _ in range(8)))
    while (more := await deliver(wechat, fast, limit=25))["claimed"]:
        results.append(more)
    assert sum(r["claimed"] for r in results) == 90
    assert sum(r["sent"] for r in results) == 90
    assert len(sim_state.messages) == 90
    assert len({(m["touser"], m["data"]["number2"]["value"], i) for i, m in enumerate(sim_state.messages)}) == 90
    assert await OutboxMessage.filter(status="sent").count() == 90
    assert await SubscriptionQuota.filter(remaining__gt=0).count() == 0


async def test_a_crashed_worker_s_lease_ends_and_the_message_is_sent(wechat, settings, sim_state):
    member = await new_member()
    await accept(member, settings)
    message = await queue(member, "a")
    # As a worker that died mid-send leaves it (outbox times are kept in UTC).
    await OutboxMessage.filter(id=message.id).update(status="sending",
                                                     next_attempt_at=(NOW + outbox.LEASE).astimezone(timezone.utc))
    assert (await deliver(wechat, settings))["claimed"] == 0
    assert (await deliver(wechat, settings, now=NOW + outbox.LEASE))["sent"] == 1


async def test_rate_limit_spaces_sends(wechat, settings, sim_state):
    member = await new_member()
    await accept(member, settings, times=6)
    for period in range(6):
        await queue(member, str(period))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await deliver(wechat, settings.with_(outbox_rate=10), bucket=outbox.TokenBucket(10, burst=1)))["sent"] == 6
    assert loop.time() - started >= 0.45  # 5 waits of 0.1 s after the first send


async def test_card_messages_keep_each_member_s_order(wechat, settings, monkeypatch):
    import app.domain

    pushed: list[int] = []
    failing: set[int] = set()

    async def push(message, *, wechat):
        if message.id in failing:
            raise WeChatUnavailable("HTTP 503")
        pushed.append(message.id)

    fake = types.ModuleType("app.domain.card")
    fake.push = push
    monkeypatch.setitem(sys.modules, "app.domain.card", fake)
    monkeypatch.setattr(app.domain, "card", fake, raising=False)
    monkeypatch.setattr("app.domain.outbox.card", fake)  # the outbox imports card at the top

    one, two = await new_member("o-1"), await new_member("o-2")
    rows = []
    for member, period in ((one, "1"), (one, "2"), (two, "1"), (one, "3")):
        assert await messages.enqueue(member_id=member.id, kind="bonus", period=period, values={"add": 10},
                                      now=NOW, channel="card")
        rows.append(await OutboxMessage.get(key=f"bonus:{member.id}:{period}"))
    failing.add(rows[0].id)
    summary = await deliver(wechat, settings)
    # Only the first card message of each member was tried: one failed, the other member's went.
    assert summary["claimed"] == 2 and summary["retried"] == 1 and pushed == [rows[2].id]
    # While the first waits for its retry, the member's later ones wait too.
    assert (await deliver(wechat, settings, now=NOW + timedelta(seconds=5)))["claimed"] == 0
    failing.clear()
    now = NOW + timedelta(minutes=1)
    for _ in range(4):
        await deliver(wechat, settings, now=now)
    assert pushed == [rows[2].id, rows[0].id, rows[1].id, rows[3].id]
