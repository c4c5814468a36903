"""What the ledger posted, told to whoever listens: the ledger's subscribers.

`points` (and expiry's bulk path) publish every entry they post, inside the transaction that
posts it; the ledger imports none of its consumers (card sync, metrics, and later stored value
or costs): they are subscribed when the app is assembled (`app.domain.wiring.install`). A
subscriber runs in the caller's transaction and must not do I/O to WeChat itself: what has to
reach WeChat goes through the outbox, in that same transaction.

A subscriber may also offer a bulk hook for expiry, which posts thousands of entries per
statement and cannot afford a Python call per entry: SQL that reads the entries just posted.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Protocol

from tortoise.backends.base.client import BaseDBAsyncClient

# credit: an earning; debit: a spend or take-back; restore: a debit given back into its lots;
# lapse: the share of a restore whose lots expired meanwhile (expired at once).
KINDS = ("credit", "debit", "restore", "lapse")


@dataclass(frozen=True)
class Posted:
    """One entry the ledger just posted, and the member right after it."""

    kind: str
    entry: Any  # the LedgerEntry row
    member_id: int
    balance: int
    member: dict  # the member's row after the balance UPDATE: points, growth, tier, card_code
    now: datetime
    debit_key: str | None = None  # a restore: the key of the debit it gives back


OnPosted = Callable[[BaseDBAsyncClient, Posted], Awaitable[None]]


@dataclass(frozen=True)
class BulkPosted:
    """Entries posted by one set-based statement (expiry: one chunk), all with one `reason`.

    `posted` names a relation of (id, member_id, delta), the entries just posted: in PostgreSQL
    a CTE of the chunk's statement, in SQLite a subquery. `first_param` is the number of the
    first free statement parameter ($n / ?n).
    """

    dialect: str
    posted: str
    reason: str
    now: datetime
    first_param: int


class BulkHook(Protocol):
    def __call__(self, bulk: BulkPosted) -> tuple[str, list] | None:
        """One INSERT … SELECT reading `bulk.posted` and its parameters, or None for nothing."""


@dataclass(frozen=True)
class BulkDone:
    """After a bulk posting committed: how many points it moved (for counters)."""

    reason: str
    points: int
    entries: int


@dataclass(frozen=True)
class Subscriber:
    name: str
    on_posted: OnPosted | None = None
    bulk: BulkHook | None = None
    after_bulk: Callable[[BulkDone], None] | None = None


_subscribers: list[Subscriber] = []


def subscribe(subscriber: Subscriber) -> None:
    """Add a subscriber (once per name: assembling the app twice changes nothing)."""
    if any(s.name == subscriber.name for s in _subscribers):
        return
    _subscribers.append(subscriber)


def subscribers() -> tuple[Subscriber, ...]:
    return tuple(_subscribers)


def clear() -> None:
    """Forget every subscriber (a test that wants the ledger alone)."""
    _subscribers.clear()


async def publish(conn: BaseDBAsyncClient, posted: Posted) -> None:
    """Tell every subscriber, in order, inside the caller's transaction (`conn`)."""
    for subscriber in _subscribers:
        if subscriber.on_posted is not None:
            await subscriber.on_posted(conn, posted)


def bulk_statements(bulk: BulkPosted, *, one_statement: bool) -> list[tuple[str, list]]:
    """The subscribers' SQL for a bulk posting. `one_statement` (CTEs of one statement): their
    parameters numbered on from `bulk.first_param`, one after the other; else each statement
    runs alone and numbers its own from `bulk.first_param`."""
    statements = []
    param = bulk.first_param
    for subscriber in _subscribers:
        if subscriber.bulk is None:
            continue
        made = subscriber.bulk(BulkPosted(bulk.dialect, bulk.posted, bulk.reason, bulk.now, param))
        if made is not None:
            statements.append(made)
            if one_statement:
                param += len(made[1])
    return statements


def publish_bulk_done(done: BulkDone) -> None:
    """After a bulk posting committed."""
    for subscriber in _subscribers:
        if subscriber.after_bulk is not None:
            subscriber.after_bulk(done)
