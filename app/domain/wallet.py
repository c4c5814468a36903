"""Stored value (储值): the only writer of WalletEntry rows and of Wallet balances.

Money the brand owes, in integer fen. Principal (paid in) and bonus (a package's gift) are
kept apart, each as lots: every credit is an entry whose `remaining` is what is left of it;
every debit is an entry that records which lots it took (WalletLotUse). Each entry has a unique
idempotency key naming its cause (`recharge:{id}:principal`, `spend:{order_no}:bonus`,
`rcrefund:{id}:principal` ...). A balance moves by a conditional UPDATE (never below 0),
checked by its row count, in the transaction that writes its entries; that UPDATE is the
wallet's row lock, so the lot bookkeeping after it is serialized per wallet.

Rules (CONTRACT.md): spending takes principal and bonus in proportion to the balances; a bonus
lot may lapse (its package says so), principal never does; a refund of a recharge returns its
unspent principal and takes back its unspent bonus, and what was spent stays spent, shown.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from app import metrics
from app.domain import card
from app.errors import Conflict, NotFound
from app.models import Member, Wallet, WalletEntry, WalletLotUse

log = logging.getLogger("app.wallet")

PRINCIPAL, BONUS = "principal", "bonus"

# What the card's balance history shows next to each change (record_balance).
RECORD_TEXT = {
    "recharge": "储值充值", "spend": "储值消费", "unspend": "消费退款退回", "recharge_refund": "充值退款",
    "bonus_takeback": "赠送金额收回", "expire": "赠送金额过期",
}


# Subscribers told of each bonus share spent, inside the spend's transaction (the cost of bonus
# stored value: create_app subscribes costs.record at merge). The wallet never imports them.
_BONUS_SPENT: list = []


def on_bonus_spent(subscriber) -> None:
    """Register `async subscriber(*, conn, member_id, bonus_fen, key, now)`, run in the spend's
    transaction (an outbox-like row of its own, never I/O); registering one twice is once."""
    if subscriber not in _BONUS_SPENT:
        _BONUS_SPENT.append(subscriber)


class InsufficientBalance(Conflict):
    code = "insufficient_balance"


@dataclass(frozen=True)
class Balance:
    principal_fen: int
    bonus_fen: int

    @property
    def balance_fen(self) -> int:
        return self.principal_fen + self.bonus_fen


@dataclass(frozen=True)
class Taken:
    """What a debit took: principal and bonus, and the balances after it."""

    principal_fen: int
    bonus_fen: int
    after: Balance

    @property
    def total_fen(self) -> int:
        return self.principal_fen + self.bonus_fen


_MOVE_SQL = ("UPDATE wallet SET principal_fen = principal_fen + {0}, bonus_fen = bonus_fen + {1} "
             "WHERE id = {2} AND principal_fen + {3} >= 0 AND bonus_fen + {4} >= 0 "
             "RETURNING principal_fen, bonus_fen")
_MOVE = {"postgres": _MOVE_SQL.format("$1", "$2", "$3", "$4", "$5"), "sqlite": _MOVE_SQL.format(*"?????")}


async def ensure(*, member_id: int) -> int:
    """The member's wallet id, created empty on first use (once: unique member_id)."""
    found = await Wallet.filter(member_id=member_id).first().values_list("id", flat=True)
    if found is not None:
        return int(found)
    if not await Member.filter(id=member_id).exists():
        raise NotFound(f"member {member_id} not found", code="member_not_found")
    try:
        return int((await Wallet.create(member_id=member_id)).id)
    except IntegrityError:  # created by a racing call
        return int(await Wallet.filter(member_id=member_id).first().values_list("id", flat=True))


async def _move(conn: BaseDBAsyncClient, wallet_id: int, principal: int, bonus: int) -> Balance | None:
    """Add the deltas unless a side would go below 0; the balances after, or None (no row changed).
    One round trip that also takes the wallet's row lock for the rest of the transaction."""
    rows = await conn.execute_query_dict(_MOVE[conn.capabilities.dialect],
                                         [principal, bonus, wallet_id, principal, bonus])
    return Balance(int(rows[0]["principal_fen"]), int(rows[0]["bonus_fen"])) if rows else None


async def _lock(conn: BaseDBAsyncClient, wallet_id: int) -> Balance:
    balance = await _move(conn, wallet_id, 0, 0)
    if balance is None:
        raise NotFound(f"wallet {wallet_id} not found", code="wallet_not_found")
    return balance


async def _push(conn: BaseDBAsyncClient, *, member_id: int, entry: WalletEntry, after: Balance,
                now: datetime) -> None:
    await card.enqueue_balance(conn=conn, member_id=member_id, key=f"card-balance:{entry.id}",
                               balance_fen=after.balance_fen,
                               record=RECORD_TEXT.get(entry.reason, entry.reason), now=now)


async def _entry(conn: BaseDBAsyncClient, *, wallet_id: int, kind: str, delta: int, reason: str, key: str,
                 expires_at: datetime | None = None, recharge_id: int | None = None,
                 note: str = "") -> WalletEntry:
    return await WalletEntry.create(wallet_id=wallet_id, kind=kind, delta=delta, reason=reason,
                                    idempotency_key=key, remaining=max(0, delta), expires_at=expires_at,
                                    recharge_id=recharge_id, note=note[:128], using_db=conn)


async def credit(*, conn: BaseDBAsyncClient, member_id: int, wallet_id: int, principal_fen: int, bonus_fen: int,
                 reason: str, key: str, now: datetime, bonus_expires_at: datetime | None = None,
                 recharge_id: int | None = None, note: str = "") -> Balance:
    """New lots of principal and bonus inside the caller's transaction (keys `{key}:principal`,
    `{key}:bonus`). Raises IntegrityError when the key was used: the caller must roll back."""
    entry = None
    if principal_fen:
        entry = await _entry(conn, wallet_id=wallet_id, kind=PRINCIPAL, delta=principal_fen, reason=reason,
                             key=f"{key}:principal", recharge_id=recharge_id, note=note)
    if bonus_fen:
        expires = bonus_expires_at.astimezone(timezone.utc) if bonus_expires_at else None
        entry = await _entry(conn, wallet_id=wallet_id, kind=BONUS, delta=bonus_fen, reason=reason,
                             key=f"{key}:bonus", expires_at=expires, recharge_id=recharge_id, note=note)
    after = await _move(conn, wallet_id, principal_fen, bonus_fen)
    if after is None:
        raise NotFound(f"wallet {wallet_id} not found", code="wallet_not_found")
    if entry is not None:
        await _push(conn, member_id=member_id, entry=entry, after=after, now=now)
    metrics.WALLET_FEN.labels(kind="credit", reason=reason).inc(principal_fen + bonus_fen)
    return after


def split(amount: int, balance: Balance) -> tuple[int, int]:
    """(principal, bonus) of a spend of `amount`: in proportion to the balances, the bonus share
    rounded down (so principal, the brand's debt in cash, goes first by at most 1 fen)."""
    total = balance.balance_fen
    if amount <= 0 or total <= 0:
        return 0, 0
    bonus = amount * balance.bonus_fen // total
    return amount - bonus, bonus


async def _expire_due(conn: BaseDBAsyncClient, *, member_id: int, wallet_id: int, now: datetime) -> Balance:
    """Lapse the bonus lots of this wallet past their expiry (the same as the job would), so a
    spend never takes money that has expired. Takes the wallet's lock first."""
    balance = await _lock(conn, wallet_id)
    lots = await WalletEntry.filter(wallet_id=wallet_id, kind=BONUS, remaining__gt=0,
                                    expires_at__lte=now.astimezone(timezone.utc)).using_db(conn).order_by("id")
    for lot in lots:
        # A lot may lapse again after a refund of a spend gave it some back: number the lapses.
        lapses = await WalletLotUse.filter(lot_id=lot.id, debit__reason="expire").using_db(conn).count()
        entry = await _entry(conn, wallet_id=wallet_id, kind=BONUS, delta=-int(lot.remaining), reason="expire",
                             key=f"expire:{lot.id}:{lapses + 1}", recharge_id=lot.recharge_id)
        await WalletEntry.filter(id=lot.id).using_db(conn).update(remaining=0)
        await WalletLotUse.create(debit_id=entry.id, lot_id=lot.id, amount=int(lot.remaining), using_db=conn)
        after = await _move(conn, wallet_id, 0, -int(lot.remaining))
        assert after is not None  # under the lock, remaining <= bonus_fen (the invariant)
        balance = after
        await _push(conn, member_id=member_id, entry=entry, after=after, now=now)
        metrics.WALLET_FEN.labels(kind="debit", reason="expire").inc(int(lot.remaining))
    return balance


async def _take_lots(conn: BaseDBAsyncClient, *, wallet_id: int, kind: str, amount: int, debit_id: int,
                     now: datetime) -> None:
    """Consume `amount` of this side's lots: bonus soonest-expiring first, principal oldest first."""
    left = amount
    query = WalletEntry.filter(wallet_id=wallet_id, kind=kind, remaining__gt=0).using_db(conn)
    while left > 0:
        if kind == BONUS:  # lots that lapse first, then those that never do (NULLs sort apart per database)
            lots = await query.filter(expires_at__not_isnull=True).order_by("expires_at", "id").limit(50) \
                or await query.filter(expires_at__isnull=True).order_by("id").limit(50)
        else:
            lots = await query.order_by("id").limit(50)
        if not lots:
            raise RuntimeError(f"wallet {wallet_id}: {kind} lots short by {left}")  # broken invariant
        for lot in lots:
            take = min(int(lot.remaining), left)
            await WalletEntry.filter(id=lot.id).using_db(conn).update(remaining=F("remaining") - take)
            await WalletLotUse.create(debit_id=debit_id, lot_id=lot.id, amount=take, using_db=conn)
            left -= take
            if left == 0:
                return


async def debit(*, conn: BaseDBAsyncClient, member_id: int, amount_fen: int, reason: str, key: str,
                now: datetime, note: str = "") -> Taken:
    """Spend `amount_fen` inside the caller's transaction, principal and bonus in proportion
    (`split`); expired bonus lapses first. 409 insufficient_balance when short; IntegrityError
    when the key was used (the caller rolls back)."""
    wallet_id = await Wallet.filter(member_id=member_id).using_db(conn).first().values_list("id", flat=True)
    if wallet_id is None:
        raise InsufficientBalance(f"a balance of 0 fen is short of {amount_fen}")
    balance = await _expire_due(conn, member_id=member_id, wallet_id=wallet_id, now=now)
    if balance.balance_fen < amount_fen:
        raise InsufficientBalance(f"a balance of {balance.balance_fen} fen is short of {amount_fen}")
    principal, bonus = split(amount_fen, balance)
    entry = None
    if principal:
        entry = await _entry(conn, wallet_id=wallet_id, kind=PRINCIPAL, delta=-principal, reason=reason,
                             key=f"{key}:principal", note=note)
        await _take_lots(conn, wallet_id=wallet_id, kind=PRINCIPAL, amount=principal, debit_id=entry.id, now=now)
    if bonus:
        entry = await _entry(conn, wallet_id=wallet_id, kind=BONUS, delta=-bonus, reason=reason,
                             key=f"{key}:bonus", note=note)
        await _take_lots(conn, wallet_id=wallet_id, kind=BONUS, amount=bonus, debit_id=entry.id, now=now)
        for subscriber in _BONUS_SPENT:
            await subscriber(conn=conn, member_id=member_id, bonus_fen=bonus, key=f"{key}:bonus", now=now)
    after = await _move(conn, wallet_id, -principal, -bonus)
    if after is None:  # cannot happen under the lock; never overdraw if it does
        raise InsufficientBalance(f"not enough stored value for {amount_fen}")
    if entry is not None:
        await _push(conn, member_id=member_id, entry=entry, after=after, now=now)
    metrics.WALLET_FEN.labels(kind="debit", reason=reason).inc(amount_fen)
    return Taken(principal, bonus, after)


async def restore(*, conn: BaseDBAsyncClient, member_id: int, debit_key: str, principal_fen: int, bonus_fen: int,
                  reason: str, key: str, now: datetime, note: str = "") -> Balance:
    """Give back what the debit `debit_key` took, into the very lots it came from (a refund of a
    spend): `{key}:principal` and `{key}:bonus`. A bonus lot that lapsed meanwhile gets its share
    back and lapses at the next spend or expiry run, as it would have. At most what the debit took
    and was not given back yet (ValueError beyond)."""
    wallet_id = await Wallet.filter(member_id=member_id).using_db(conn).first().values_list("id", flat=True)
    await _lock(conn, wallet_id)
    entry = None
    for kind, amount in ((PRINCIPAL, principal_fen), (BONUS, bonus_fen)):
        if not amount:
            continue
        entry = await WalletEntry.create(wallet_id=wallet_id, kind=kind, delta=amount, reason=reason,
                                         idempotency_key=f"{key}:{kind}", remaining=0, note=note[:128],
                                         using_db=conn)
        debit_id = await WalletEntry.filter(idempotency_key=f"{debit_key}:{kind}").using_db(conn) \
            .first().values_list("id", flat=True)
        uses = [] if debit_id is None else await WalletLotUse.filter(debit_id=debit_id).using_db(conn).order_by("-id")
        left = amount
        for use in uses:
            give = min(int(use.amount) - int(use.restored), left)
            if give <= 0:
                continue
            await WalletLotUse.filter(id=use.id).using_db(conn).update(restored=F("restored") + give)
            await WalletEntry.filter(id=use.lot_id).using_db(conn).update(remaining=F("remaining") + give)
            left -= give
            if left == 0:
                break
        if left:
            raise ValueError(f"{debit_key} has only {amount - left} fen of {kind} left to give back")
    after = await _move(conn, wallet_id, principal_fen, bonus_fen)
    if entry is not None:
        await _push(conn, member_id=member_id, entry=entry, after=after, now=now)
    metrics.WALLET_FEN.labels(kind="credit", reason=reason).inc(principal_fen + bonus_fen)
    return after


@dataclass(frozen=True)
class RechargeReversal:
    """A refund of a recharge: the principal to pay back, the bonus taken back, what was spent."""

    refund_fen: int
    bonus_taken_back_fen: int
    principal_spent_fen: int
    bonus_spent_fen: int
    after: Balance


async def reverse_recharge(*, conn: BaseDBAsyncClient, member_id: int, recharge_id: int, now: datetime) -> RechargeReversal:
    """Empty a recharge's lots inside the caller's transaction: its unspent principal is what may
    be refunded (`rcrefund:{id}:principal`), its unspent bonus is taken back (`…:bonus`); what
    was spent of either stays spent and is reported, never clamped away in silence."""
    wallet_id = await Wallet.filter(member_id=member_id).using_db(conn).first().values_list("id", flat=True)
    await _expire_due(conn, member_id=member_id, wallet_id=wallet_id, now=now)
    lots = {lot.kind: lot for lot in await WalletEntry.filter(recharge_id=recharge_id, delta__gt=0,
                                                               reason="recharge").using_db(conn)}
    taken = {PRINCIPAL: 0, BONUS: 0}
    spent = {PRINCIPAL: 0, BONUS: 0}
    entry = None
    for kind, lot in lots.items():
        fresh = await WalletEntry.get(id=lot.id).using_db(conn)
        left = int(fresh.remaining)
        taken[kind] = left
        # What left this lot other than by spending (a lapse of bonus) is not "spent".
        lapsed = sum(int(u.amount) - int(u.restored) for u in await WalletLotUse.filter(lot_id=lot.id)
                     .using_db(conn).select_related("debit") if u.debit.reason == "expire")
        spent[kind] = int(lot.delta) - left - lapsed
        if left:
            entry = await _entry(conn, wallet_id=wallet_id, kind=kind, delta=-left,
                                 reason="recharge_refund" if kind == PRINCIPAL else "bonus_takeback",
                                 key=f"rcrefund:{recharge_id}:{kind}", recharge_id=recharge_id)
            await WalletEntry.filter(id=lot.id).using_db(conn).update(remaining=0)
            await WalletLotUse.create(debit_id=entry.id, lot_id=lot.id, amount=left, using_db=conn)
    after = await _move(conn, wallet_id, -taken[PRINCIPAL], -taken[BONUS])
    if after is None:
        raise RuntimeError(f"wallet {wallet_id}: lots exceed the balance")  # broken invariant
    if entry is not None:
        await _push(conn, member_id=member_id, entry=entry, after=after, now=now)
    metrics.WALLET_FEN.labels(kind="debit", reason="recharge_refund").inc(taken[PRINCIPAL] + taken[BONUS])
    return RechargeReversal(taken[PRINCIPAL], taken[BONUS], spent[PRINCIPAL], spent[BONUS], after)


async def expire(*, now: datetime, batch: int = 500) -> int:
    """Lapse every bonus lot past its expiry (principal never expires); returns fen lapsed."""
    lapsed = 0
    cutoff = now.astimezone(timezone.utc)
    while True:
        rows = await WalletEntry.filter(kind=BONUS, remaining__gt=0, expires_at__lte=cutoff) \
            .distinct().limit(batch).values_list("wallet_id", flat=True)
        if not rows:
            return lapsed
        for wallet_id in sorted(set(rows)):
            member_id = await Wallet.filter(id=wallet_id).first().values_list("member_id", flat=True)
            async with in_transaction() as conn:
                before = await _lock(conn, wallet_id)
                after = await _expire_due(conn, member_id=member_id, wallet_id=wallet_id, now=now)
                lapsed += before.bonus_fen - after.bonus_fen


async def balance(*, member_id: int) -> Balance:
    """The member's stored value now (0 and 0 without a wallet)."""
    row = await Wallet.filter(member_id=member_id).first().values("principal_fen", "bonus_fen")
    return Balance(int(row["principal_fen"]), int(row["bonus_fen"])) if row else Balance(0, 0)


async def history(*, member_id: int, limit: int = 50) -> list[WalletEntry]:
    """The wallet's entries, newest first."""
    return await WalletEntry.filter(wallet__member_id=member_id).order_by("-id").limit(limit)


@dataclass(frozen=True)
class WalletImbalance:
    member_id: int
    kind: str
    balance: int
    entries_sum: int
    remaining_sum: int


_CHECK_SQL = """
SELECT w.member_id, w.principal_fen, w.bonus_fen,
       COALESCE(SUM(CASE WHEN e.kind = 'principal' THEN e.delta END), 0) AS p_entries,
       COALESCE(SUM(CASE WHEN e.kind = 'principal' THEN e.remaining END), 0) AS p_remaining,
       COALESCE(SUM(CASE WHEN e.kind = 'bonus' THEN e.delta END), 0) AS b_entries,
       COALESCE(SUM(CASE WHEN e.kind = 'bonus' THEN e.remaining END), 0) AS b_remaining
FROM wallet w LEFT JOIN wallet_entry e ON e.wallet_id = w.id
WHERE w.member_id > {low} AND w.member_id <= {high}
GROUP BY w.member_id, w.principal_fen, w.bonus_fen
"""


async def check(*, low: int = 0, high: int = 2**62) -> list[WalletImbalance]:
    """The wallet invariant, per side: balance == sum of entries == sum of lots' remaining."""
    _, rows = await connections.get("default").execute_query(_CHECK_SQL.format(low=int(low), high=int(high)))
    bad = []
    for row in rows:
        r = dict(row)
        for kind, column, prefix in ((PRINCIPAL, "principal_fen", "p"), (BONUS, "bonus_fen", "b")):
            value, entries, remaining = int(r[column]), int(r[f"{prefix}_entries"]), int(r[f"{prefix}_remaining"])
            if not value == entries == remaining:
                bad.append(WalletImbalance(int(r["member_id"]), kind, value, entries, remaining))
    return bad


def render(balance: Balance) -> dict:
    return {"balance_fen": balance.balance_fen, "principal_fen": balance.principal_fen,
            "bonus_fen": balance.bonus_fen}


def render_entry(entry: WalletEntry) -> dict:
    return {"id": entry.id, "kind": entry.kind, "delta_fen": int(entry.delta), "reason": entry.reason,
            "note": entry.note, "expires_at": entry.expires_at.isoformat() if entry.expires_at else None,
            "created_at": entry.created_at.isoformat() if entry.created_at else None}
