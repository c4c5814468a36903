"""Delivering the outbox: messages written in the transaction that caused them, sent later.

A message is `pending` until a worker claims it (`sending`, with a lease in
next_attempt_at: a worker that dies mid-send leaves it to be claimed again when the lease
ends), then `sent`, `skipped` (a subscription message without quota: last_error
"no_quota") or, after MAX_ATTEMPTS failures or a refusal that retrying cannot fix, `dead`
for an operator to look at (`list_dead`) and send again (`retry_dead`).

Network errors, WeChat's 5xx and "system busy" are retried with exponential backoff
(30 s, 1 min, 2 min … at most 6 h). Sends respect WeChat's rate limits with a token bucket
(Settings.outbox_rate per second). Card pushes and 企业微信 mark_tags keep each member's order:
such a message is only sent once every earlier one of that member on its channel is sent,
skipped or dead.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from tortoise import connections
from tortoise.functions import Count, Min
from tortoise.transactions import in_transaction

from app.domain import card, messages, rules, wakeup
from app.domain import wecom as wecom_tags
from app.domain.delivery import Permanent as _Permanent
from app.domain.delivery import Skip as _Skip
from app.errors import dependency_failed
from app.models import AuditLog, Member, OutboxMessage
from app.wechat.client import WeChatError, WeChatUnavailable

log = logging.getLogger("app.outbox")

PENDING, SENDING, SENT, SKIPPED, DEAD = "pending", "sending", "sent", "skipped", "dead"
OPEN = (PENDING, SENDING)
MAX_ATTEMPTS = 8
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=6)
# A claimed message is someone's for this long; far more than a send takes.
LEASE = timedelta(minutes=5)
# -1 system busy (and our WeChatUnavailable), 45009 daily API limit, 45011 frequency limit:
# WeChat may well accept the same call later.
RETRYABLE = frozenset({-1, 45009, 45011})
NO_QUOTA = 43101
# Channels sent in id order per member: card balances, and 企业微信 tier tags (each send reads
# the tier at that moment, so an older send finishing last would undo a newer one).
ORDERED = ("card", "wecom")


class TokenBucket:
    """At most `rate` sends a second on average, `burst` at once; waits (never blocks the loop)."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = max(rate, 0.001)
        self.capacity = float(burst or max(1, int(rate)))
        self._tokens = self.capacity
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                moment = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (moment - self._at) * self.rate)
                self._at = moment
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)


def backoff(attempts: int) -> timedelta:
    """Wait before attempt `attempts + 1`: 30 s doubling per failure, at most 6 h."""
    return min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


async def deliver_due(*, wechat: Any, oa_wechat: Any, settings: Any, now: datetime, limit: int = 100,
                      bucket: TokenBucket | None = None, concurrency: int = 8, wecom: Any = None) -> dict:
    """Send up to `limit` messages due at `now` (next_attempt_at ≤ now), each claimed by exactly
    one worker. Returns counts: claimed, sent, skipped, retried, dead."""
    # SQLite compares datetimes as text: keep every outbox time in UTC.
    now = now.astimezone(timezone.utc)
    bucket = bucket or TokenBucket(getattr(settings, "outbox_rate", 20.0))
    max_attempts = getattr(settings, "outbox_max_attempts", MAX_ATTEMPTS)
    claimed = await _claim(now=now, limit=limit)
    summary = {"claimed": len(claimed), "sent": 0, "skipped": 0, "retried": 0, "dead": 0}
    gate = asyncio.Semaphore(concurrency)
    member_ids = {m.member_id for m, _ in claimed}
    openids = dict(await Member.filter(id__in=member_ids).values_list("id", "openid")) if member_ids else {}

    async def member_s(batch: list[tuple[OutboxMessage, datetime]]) -> None:
        # One member's messages go one after the other, oldest first: the oldest gets the quota.
        async with gate:
            for message, lease in batch:
                outcome = await _deliver(message, lease=lease, wechat=wechat, oa_wechat=oa_wechat,
                                         settings=settings, now=now, bucket=bucket,
                                         max_attempts=max_attempts, openids=openids, wecom=wecom)
                summary[outcome] += 1

    by_member: dict[int, list[tuple[OutboxMessage, datetime]]] = {}
    for message, lease in sorted(claimed, key=lambda pair: pair[0].id):
        by_member.setdefault(message.member_id, []).append((message, lease))
    await asyncio.gather(*(member_s(batch) for batch in by_member.values()))
    return summary


# -- claiming --------------------------------------------------------------------------------


async def _claim(*, now: datetime, limit: int) -> list[tuple[OutboxMessage, datetime]]:
    """Take due messages for this worker: PostgreSQL skips rows another worker has locked;
    elsewhere each row is taken by a conditional update checked by its row count."""
    lease = now + LEASE
    due = dict(status__in=OPEN, next_attempt_at__lte=now)
    if connections.get("default").capabilities.dialect == "postgres":
        async with in_transaction() as conn:
            rows = await (OutboxMessage.filter(**due).order_by("id").limit(limit)
                          .select_for_update(skip_locked=True).using_db(conn))
            rows = await _in_member_order(rows, conn=conn)
            if rows:
                await OutboxMessage.filter(id__in=[r.id for r in rows]).using_db(conn).update(
                    status=SENDING, next_attempt_at=lease)
        return [(r, lease) for r in rows]
    rows = await _in_member_order(await OutboxMessage.filter(**due).order_by("id").limit(limit))
    taken = []
    for row in rows:
        # Matching the status and time we read means nobody claimed it in between.
        if await OutboxMessage.filter(id=row.id, status=row.status,
                                      next_attempt_at=row.next_attempt_at).update(
                status=SENDING, next_attempt_at=lease):
            taken.append((row, lease))
    return taken


async def _in_member_order(rows: list[OutboxMessage], *, conn=None) -> list[OutboxMessage]:
    """Drop each card or wecom message that has an earlier open message of its member on its channel."""
    members = {r.member_id for r in rows if r.channel in ORDERED}
    if not members:
        return rows
    query = OutboxMessage.filter(channel__in=ORDERED, member_id__in=members, status__in=OPEN)
    if conn is not None:
        query = query.using_db(conn)
    first = {(member, channel): lowest for member, channel, lowest in
             await query.group_by("member_id", "channel").annotate(first=Min("id"))
             .values_list("member_id", "channel", "first")}
    return [r for r in rows if r.channel not in ORDERED or first.get((r.member_id, r.channel)) == r.id]


# -- sending ---------------------------------------------------------------------------------


async def _deliver(message: OutboxMessage, *, lease: datetime, wechat: Any, oa_wechat: Any, settings: Any,
                   now: datetime, bucket: TokenBucket, max_attempts: int, openids: dict[int, str],
                   wecom: Any = None) -> str:
    mine = OutboxMessage.filter(id=message.id, status=SENDING, next_attempt_at=lease)
    attempts = message.attempts + 1
    try:
        if message.channel == "subscribe":
            outcome = await _send_subscribe(message, wechat=wechat, settings=settings, bucket=bucket,
                                            openids=openids)
        elif message.channel == "card":
            await bucket.take()
            await card.push(message, wechat=oa_wechat)
            outcome = None
        elif message.channel == "shipping":  # a recharge's virtual-goods shipping information
            await bucket.take()
            await wechat.upload_shipping_info(**(message.payload or {}))
            outcome = None
        elif message.channel == "wecom":
            await bucket.take()
            outcome = await wecom_tags.deliver(message, client=wecom, rules=await rules.load())
        elif message.channel == "oa":
            await bucket.take()  # the wake-up's fallback: the official account
            try:
                await wakeup.deliver_oa(message, oa_wechat=oa_wechat)
            except LookupError as missing:
                raise _Permanent(str(missing)) from None
            outcome = None
        else:
            raise _Permanent(f"unknown channel {message.channel!r}")
    except _Skip as skip:
        await mine.update(status=SKIPPED, attempts=attempts, last_error=skip.reason, next_attempt_at=None)
        return "skipped"
    except _Permanent as refusal:
        await mine.update(status=DEAD, attempts=attempts, last_error=str(refusal)[:255], next_attempt_at=None)
        log.warning("outbox message dead", extra={"fields": {"id": message.id, "error": str(refusal)}})
        return "dead"
    except WeChatError as exc:
        if exc.errcode in RETRYABLE or isinstance(exc, WeChatUnavailable):
            return await _retry(mine, message=message, attempts=attempts, error=str(exc), now=now,
                                max_attempts=max_attempts)
        await mine.update(status=DEAD, attempts=attempts, last_error=str(exc)[:255], next_attempt_at=None)
        return "dead"
    except Exception as exc:  # a bug in one message must not stop the others
        if dependency_failed(exc):
            # PostgreSQL or Redis is down: not the message's fault, so no attempt is spent; its
            # lease lapses and the next round takes it again.
            raise
        log.exception("outbox message failed", extra={"fields": {"id": message.id}})
        return await _retry(mine, message=message, attempts=attempts, error=f"{type(exc).__name__}: {exc}",
                            now=now, max_attempts=max_attempts)
    await mine.update(status=SENT, attempts=attempts, sent_at=now, last_error=outcome, next_attempt_at=None)
    return "sent"


async def _retry(mine, *, message: OutboxMessage, attempts: int, error: str, now: datetime,
                 max_attempts: int) -> str:
    if attempts >= max_attempts:
        await mine.update(status=DEAD, attempts=attempts, last_error=error[:255], next_attempt_at=None)
        log.warning("outbox message dead", extra={"fields": {"id": message.id, "error": error}})
        return "dead"
    await mine.update(status=PENDING, attempts=attempts, last_error=error[:255],
                      next_attempt_at=now + backoff(attempts))
    return "retried"


async def _send_subscribe(message: OutboxMessage, *, wechat: Any, settings: Any, bucket: TokenBucket,
                          openids: dict[int, str]) -> None:
    """One subscription message, paid for with one acceptance of the member's quota."""
    template_id = settings.templates.get(message.kind)
    if not template_id:
        raise _Permanent(f"no template configured for kind {message.kind!r}")
    payload = message.payload or {}
    try:
        data = messages.render(message.kind, payload.get("values") or {})
    except messages.MissingValue as missing:
        raise _Permanent(f"missing_value:{missing}") from None
    except KeyError:
        raise _Permanent(f"unknown kind {message.kind!r}") from None
    openid = openids.get(message.member_id)
    if not openid:
        raise _Permanent("member not found")
    if not await messages.spend(member_id=message.member_id, template_id=template_id):
        raise _Skip("no_quota")
    await bucket.take()
    try:
        await wechat.send_subscribe_message(openid=openid, template_id=template_id, data=data,
                                            page=payload.get("page"))
    except WeChatError as exc:
        if exc.errcode == NO_QUOTA:
            await messages.exhaust(member_id=message.member_id, template_id=template_id)
            raise _Skip("no_quota") from None
        # WeChat only consumes an acceptance on a delivered message.
        await messages.give_back(member_id=message.member_id, template_id=template_id)
        raise
    except BaseException:
        await messages.give_back(member_id=message.member_id, template_id=template_id)
        raise


# -- operators -------------------------------------------------------------------------------


def render(message: OutboxMessage) -> dict:
    return {
        "id": message.id, "key": message.key, "channel": message.channel, "kind": message.kind,
        "member_id": message.member_id, "payload": message.payload, "status": message.status,
        "attempts": message.attempts, "last_error": message.last_error,
        "created_at": message.created_at.isoformat() if message.created_at else None,
        "next_attempt_at": message.next_attempt_at.isoformat() if message.next_attempt_at else None,
    }


async def list_dead(*, limit: int = 100) -> list[dict]:
    """The dead letters, newest first: messages that failed MAX_ATTEMPTS times or were refused."""
    return [render(m) for m in await OutboxMessage.filter(status=DEAD).order_by("-id").limit(limit)]


async def retry_dead(*, ids: Iterable[int], now: datetime, actor: str | None = None) -> int:
    """Put dead messages back in the queue, due now with a fresh count of attempts; returns how
    many were dead (other ids are left alone). With `actor` (an operator), the audit row
    `outbox.retry` is written in the same transaction as the retry."""
    ids, now = list(ids), now.astimezone(timezone.utc)
    if not ids and actor is None:
        return 0
    async with in_transaction() as conn:
        retried = await OutboxMessage.filter(id__in=ids, status=DEAD).using_db(conn).update(
            status=PENDING, attempts=0, next_attempt_at=now, last_error=None) if ids else 0
        if actor is not None:
            await AuditLog.create(actor=actor, action="outbox.retry", target="outbox_message", before=None,
                                  after={"ids": ids[:100], "retried": retried}, using_db=conn)
    return retried


async def last_id() -> int:
    """The newest message's id (0 when none): what a hand run of a job counts from."""
    return await OutboxMessage.all().order_by("-id").first().values_list("id", flat=True) or 0


async def queued_since(last: int) -> int:
    """How many messages were queued after the message `last`."""
    return await OutboxMessage.filter(id__gt=last).count()


async def depth() -> dict[tuple[str, str], int]:
    """How many messages wait, are being sent, or are dead, per channel (for /metrics)."""
    rows = await OutboxMessage.filter(status__in=(PENDING, SENDING, DEAD)) \
        .annotate(n=Count("id")).group_by("channel", "status").values_list("channel", "status", "n")
    return {(channel, status): int(n) for channel, status, n in rows}
