"""Check-in and pay-notify traffic that retries like the mini-program and WeChat do, and the
book of what the 2xx answers promised, checked against the ledger afterwards.

A request is retried (a new delivery, newly signed, as WeChat does) on a 5xx or a connection
error, until a definitive answer or the deadline. A request that never got an answer may or may
not have applied: the ledger must then hold it once or not at all, never twice."""
from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp

from miniprogram_stub.simulator import pay as sim

# (method, path, headers, body) -> (status, json body or None); raises aiohttp.ClientError on a lost answer
Send = Callable[[str, str, dict, bytes | None], Awaitable[tuple[int, dict | None]]]
RETRY_PAUSE = 0.1
_serial = itertools.count(1)


@dataclass
class Book:
    """What was sent and what the answers said."""

    sent: dict[str, int] = field(default_factory=dict)  # ledger key -> member id
    promised: dict[str, int | None] = field(default_factory=dict)  # key -> points (None: 2xx, amount by rule)
    unanswered: Counter = field(default_factory=Counter)  # key -> attempts that got no answer or a 5xx
    gave_up: set[str] = field(default_factory=set)  # keys with no definitive answer by the deadline
    statuses: Counter = field(default_factory=Counter)

    @property
    def faults_seen(self) -> int:
        return sum(self.unanswered.values())


async def _attempts(book: Book, key: str, attempt: Callable[[], Awaitable[tuple[int, dict | None]]],
                    deadline: float) -> tuple[int, dict | None] | None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            status, body = await attempt()
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
            status, body = 0, None
        book.statuses[status] += 1
        if status and status < 500:
            return status, body
        book.unanswered[key] += 1
        await asyncio.sleep(RETRY_PAUSE)
    book.gave_up.add(key)
    return None


async def check_in(book: Book, send: Send, *, member_id: int, token: str, day: str, deadline: float) -> None:
    key = f"checkin:{member_id}:{day}"
    book.sent[key] = member_id
    headers = {"Authorization": f"Bearer {token}"}
    answer = await _attempts(book, key, lambda: send("POST", "/mp/checkin", headers, None), deadline)
    if answer is None:
        return
    status, body = answer
    if status == 200:
        book.promised[key] = body["points_awarded"]
    else:  # 409 already_checked_in: an earlier attempt of this request applied, unanswered
        assert status == 409 and body["error"]["code"] == "already_checked_in", (status, body)
        assert book.unanswered[key], f"{key}: 409 without an earlier unanswered attempt"


async def pay(book: Book, send: Send, *, member_id: int, openid: str, appid: str, fen: int,
              deadline: float, timestamp: Callable[[], int | None] = lambda: None) -> None:
    tid = f"4200{next(_serial):06d}{uuid.uuid4().hex[:18]}"
    key = f"pay:{tid}"
    book.sent[key] = member_id
    resource = sim.transaction_resource(openid=openid, transaction_id=tid, out_trade_no=f"o-{tid[-10:]}",
                                        total_fen=fen, appid=appid)

    async def attempt():
        headers, body = sim.build_v3_notification(event_type="TRANSACTION.SUCCESS", resource=resource,
                                                  timestamp=timestamp())
        return await send("POST", "/wechat/pay/notify", headers, body)

    answer = await _attempts(book, key, attempt, deadline)
    if answer is not None:
        status, body = answer
        assert status == 204, (status, body)
        book.promised[key] = None


async def check_against_ledger(book: Book) -> dict:
    """Every 2xx is in the ledger once with what it promised; every entry is a request we sent,
    once; nothing else moved a balance; the balances are the ledger's sums (ledger verify)."""
    from app.models import LedgerEntry, Member
    from tests.conftest import assert_ledger_consistent

    entries = await LedgerEntry.all().values("member_id", "idempotency_key", "delta")
    keys = Counter(e["idempotency_key"] for e in entries)
    assert not [k for k, n in keys.items() if n > 1], "an idempotency key applied twice"
    by_key = {e["idempotency_key"]: e for e in entries}
    # A dependency down is a 503 to retry, never a 500 (which says "bug").
    assert not book.statuses.get(500), f"500 answers: {book.statuses}"
    stray = [k for k in by_key if k not in book.sent]
    assert not stray, f"ledger entries no request asked for: {stray[:5]}"
    lost = [k for k in book.promised if k not in by_key]
    assert not lost, f"2xx answers the ledger does not hold: {lost[:5]}"
    for key, points in book.promised.items():
        entry = by_key[key]
        assert entry["member_id"] == book.sent[key]
        if points is not None:
            assert entry["delta"] == points, (key, entry, points)
        else:
            assert entry["delta"] > 0, (key, entry)
    # Requests never answered definitively may or may not have applied, but only those.
    applied_unanswered = [k for k in by_key if k not in book.promised]
    assert all(k in book.gave_up or book.unanswered[k] for k in applied_unanswered)
    totals = Counter()
    for e in entries:
        totals[e["member_id"]] += e["delta"]
    for member_id, points in await Member.all().values_list("id", "points"):
        assert points == totals.get(member_id, 0), (member_id, points, totals.get(member_id))
    await assert_ledger_consistent()
    return {"requests": len(book.sent), "promised": len(book.promised), "applied": len(by_key),
            "faults_seen": book.faults_seen,
            "gave_up": len(book.gave_up), "doubled": 0, "lost": 0}
