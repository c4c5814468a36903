"""The points ledger: the only writer of LedgerEntry rows and of Member.points.

Every change is one append-only entry with a unique idempotency key naming its cause
(`checkin:{member}:{date}`, `pay:{transaction_id}`, `refund:{refund_id}`). An earning is a lot
that expires 12 months later (CONTRACT.md); spending consumes the oldest lots first. The
balance moves by a conditional UPDATE in the same transaction, which also takes the member's
row lock on PostgreSQL, so the lot bookkeeping after it is serialized per member.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.functions import Sum
from tortoise.transactions import in_transaction

from app.domain import ledger_events
from app.domain.clock import add_months
from app.errors import InsufficientPoints, NotFound
from app.models import LedgerEntry, LotUse, Member


@dataclass(frozen=True)
class Posting:
    """What one ledger call did: the entry, the balance after it, and whether it is new."""

    entry: LedgerEntry
    balance: int
    created: bool
    growth: int | None = None  # the member's growth and tier right after it, when known
    tier: str | None = None


async def _existing(key: str) -> Posting | None:
    entry = await LedgerEntry.get_or_none(idempotency_key=key)
    if entry is None:
        return None
    return Posting(entry=entry, balance=await _balance(None, entry.member_id), created=False)


async def _balance(conn: BaseDBAsyncClient | None, member_id: int) -> int:
    value = await Member.filter(id=member_id).using_db(conn).first().values_list("points", flat=True)
    return int(value or 0)


async def move_balance(*, conn: BaseDBAsyncClient, member_id: int, points: int, growth: int = 0,
                       floor: int | None = None, also: dict | None = None) -> dict | None:
    """UPDATE the member's balance and growth by deltas, RETURNING the row after it.

    With `floor`, only when points >= floor (a debit that may not overdraw). `also` sets more
    columns in the same statement (a check-in's streak). None when no row matched. One round
    trip that also takes the member's row lock for the rest of the transaction.
    """
    pg = conn.capabilities.dialect == "postgres"
    values: list = [points, growth]
    sets = ["points = points + {}", "growth = growth + {}"]
    for column, value in (also or {}).items():
        sets.append(f'"{column}" = {{}}')
        values.append(value)
    where = ["id = {}"]
    values.append(member_id)
    if floor is not None:
        where.append("points >= {}")
        values.append(floor)
    marks = iter([f"${i}" for i in range(1, len(values) + 1)] if pg else ["?"] * len(values))
    sql = (f"UPDATE member SET {', '.join(sets)} WHERE {' AND '.join(where)} "
           "RETURNING points, growth, tier, card_code")
    sql = sql.format(*[next(marks) for _ in values])
    # execute_query_dict: asyncpg's execute_query drops the rows of an UPDATE ... RETURNING.
    rows = await conn.execute_query_dict(sql, values)
    return rows[0] if rows else None


async def _publish(conn: BaseDBAsyncClient, kind: str, entry: LedgerEntry, member_id: int, row: dict,
                   now: datetime, debit_key: str | None = None) -> None:
    await ledger_events.publish(conn, ledger_events.Posted(
        kind=kind, entry=entry, member_id=member_id, balance=int(row["points"]), member=row, now=now,
        debit_key=debit_key))


async def credit(*, conn: BaseDBAsyncClient, member_id: int, amount: int, reason: str, key: str,
                 now: datetime, expiry_months: int, growth: int = 0,
                 capped_on: date | None = None, note: str = "", also: dict | None = None) -> Posting:
    """Add an earning lot inside the caller's transaction; a debt (negative balance) is paid first.

    Raises IntegrityError when `key` was used before: the caller's transaction must roll back.
    """
    entry = await LedgerEntry.create(
        member_id=member_id, delta=amount, growth_delta=growth, reason=reason,
        idempotency_key=key, remaining=amount, capped_on=capped_on, note=note,
        expires_at=add_months(now, expiry_months) if amount > 0 else None, using_db=conn,
    )
    row = await move_balance(conn=conn, member_id=member_id, points=amount, growth=growth, also=also)
    if row is None:
        raise NotFound(f"member {member_id} not found", code="member_not_found")
    balance = int(row["points"])
    await _publish(conn, "credit", entry, member_id, row, now)
    debt_before = max(0, amount - balance)
    if debt_before and amount > 0:
        entry.remaining = max(0, amount - debt_before)
        await LedgerEntry.filter(id=entry.id).using_db(conn).update(remaining=entry.remaining)
    return Posting(entry=entry, balance=balance, created=True, growth=int(row["growth"]),
                   tier=row["tier"])


async def debit(*, conn: BaseDBAsyncClient, member_id: int, amount: int, reason: str, key: str,
                now: datetime, allow_negative: bool = False, growth: int = 0, first_lot: int | None = None,
                note: str = "", keep_lots: bool = False) -> Posting:
    """Take points inside the caller's transaction, oldest lots first.

    Without `allow_negative` a debit larger than the balance is 409 insufficient_points. A
    refund passes `allow_negative` (spent points leave the balance negative, never hidden) and
    `first_lot`, the payment's own lot, which gives back first. `keep_lots` records which lots
    it took (LotUse), for a debit that `restore` may give back. `now` dates what subscribers record
    (the entry's own time when not given).
    """
    entry = await LedgerEntry.create(
        member_id=member_id, delta=-amount, growth_delta=-growth, reason=reason,
        idempotency_key=key, remaining=0, note=note, using_db=conn,
    )
    row = await move_balance(conn=conn, member_id=member_id, points=-amount, growth=-growth,
                             floor=None if allow_negative else amount)
    if row is None:
        if not await Member.filter(id=member_id).using_db(conn).exists():
            raise NotFound(f"member {member_id} not found", code="member_not_found")
        raise InsufficientPoints(f"not enough points for {amount}")
    await _publish(conn, "debit", entry, member_id, row, now)
    await _consume_lots(conn=conn, member_id=member_id, amount=amount, first_lot=first_lot,
                        debit_id=entry.id if keep_lots else None)
    return Posting(entry=entry, balance=int(row["points"]), created=True, growth=int(row["growth"]),
                   tier=row["tier"])


async def _consume_lots(*, conn: BaseDBAsyncClient, member_id: int, amount: int,
                        first_lot: int | None, debit_id: int | None = None) -> None:
    left = amount
    if first_lot is not None:
        lot = await LedgerEntry.filter(id=first_lot, member_id=member_id, remaining__gt=0) \
            .using_db(conn).first()
        if lot is not None:
            left -= await _take(conn, lot, left, debit_id)
    while left > 0:
        lots = await LedgerEntry.filter(member_id=member_id, remaining__gt=0).using_db(conn) \
            .order_by("expires_at", "id").limit(50)
        if not lots:
            return  # the rest is debt: the balance went negative by exactly this much
        for lot in lots:
            left -= await _take(conn, lot, left, debit_id)
            if left == 0:
                return


async def _take(conn: BaseDBAsyncClient, lot: LedgerEntry, wanted: int, debit_id: int | None = None) -> int:
    take = min(lot.remaining, wanted)
    if take > 0:
        await LedgerEntry.filter(id=lot.id).using_db(conn).update(remaining=F("remaining") - take)
        if debit_id is not None:
            await LotUse.create(debit_id=debit_id, lot_id=lot.id, amount=take, using_db=conn)
    return take


async def restore(*, conn: BaseDBAsyncClient, member_id: int, debit_key: str, amount: int, reason: str,
                  key: str, now: datetime, note: str = "") -> Posting:
    """Give back `amount` of what the debit `debit_key` (made with `keep_lots`) took, into the very
    lots it took them from, with their own expiry: a release or refund never renews points. One
    new entry +amount under `key`; the share of lots that expired since is expired at once by an
    `expire` entry (`{key}:expired`), as the expiry job would have. A debt is paid first, as by
    `credit`. At most what the debit took and was not given back yet (raises ValueError beyond).

    Raises IntegrityError when `key` was used before: the caller's transaction must roll back.
    """
    entry = await LedgerEntry.create(member_id=member_id, delta=amount, reason=reason, idempotency_key=key,
                                     remaining=0, note=note, using_db=conn)
    row = await move_balance(conn=conn, member_id=member_id, points=amount)  # the member's row lock
    if row is None:
        raise NotFound(f"member {member_id} not found", code="member_not_found")
    await _publish(conn, "restore", entry, member_id, row, now, debit_key=debit_key)
    before = int(row["points"]) - amount
    # What may go back into live lots: a debt (negative balance) is paid first.
    room = max(0, before + amount) - max(0, before)
    debit_id = await LedgerEntry.filter(idempotency_key=debit_key, member_id=member_id).using_db(conn) \
        .first().values_list("id", flat=True)
    uses = [] if debit_id is None else await LotUse.filter(debit_id=debit_id).using_db(conn) \
        .select_related("lot").order_by("-lot__expires_at", "-lot_id")
    left, expired = amount, 0
    for use in uses:
        give = min(int(use.amount) - int(use.restored), left)
        if give <= 0:
            continue
        await LotUse.filter(id=use.id).using_db(conn).update(restored=F("restored") + give)
        left -= give
        if use.lot.expires_at is not None and use.lot.expires_at <= now:
            expired += give  # its lot lapsed meanwhile: expires now rather than being renewed
            continue
        back = min(give, room)
        if back:
            await LedgerEntry.filter(id=use.lot_id).using_db(conn).update(remaining=F("remaining") + back)
            room -= back
        if left == 0:
            break
    if left:
        raise ValueError(f"{debit_key} has only {amount - left} points left to give back, not {amount}")
    if expired:
        # Never more than the live remaining allows: the debt took its share of the return first.
        lapse = await LedgerEntry.create(member_id=member_id, delta=-expired, reason="expire",
                                         idempotency_key=f"{key}:expired", remaining=0, note=note,
                                         using_db=conn)
        after = await move_balance(conn=conn, member_id=member_id, points=-expired)
        await _publish(conn, "lapse", lapse, member_id, after, now)
        # The lapsed share paid no debt and added no remaining; if the debt was paid from it,
        # take that share of remaining back off the live lots.
        await _trim_remaining(conn=conn, member_id=member_id, balance=int(after["points"]))
        row = after
    return Posting(entry=entry, balance=int(row["points"]), created=True, growth=int(row["growth"]),
                   tier=row["tier"])


async def _trim_remaining(*, conn: BaseDBAsyncClient, member_id: int, balance: int) -> None:
    """Keep max(balance, 0) == sum(remaining) after a restore whose lapsed share met a debt:
    take the excess off the lots that expire first (as a spend would)."""
    total = await LedgerEntry.filter(member_id=member_id, remaining__gt=0).using_db(conn) \
        .annotate(r=Sum("remaining")).values_list("r", flat=True)
    excess = int((total[0] if total else 0) or 0) - max(0, balance)
    if excess > 0:
        await _consume_lots(conn=conn, member_id=member_id, amount=excess, first_lot=None)


async def award(*, member_id: int, amount: int, reason: str, key: str, now: datetime,
                expiry_months: int, growth: int = 0, capped_on: date | None = None,
                note: str = "") -> Posting:
    """Credit points once per `key` in a transaction of its own; a repeat returns the first posting."""
    try:
        async with in_transaction() as conn:
            return await credit(conn=conn, member_id=member_id, amount=amount, reason=reason,
                                key=key, now=now, expiry_months=expiry_months, growth=growth,
                                capped_on=capped_on, note=note)
    except IntegrityError:
        existing = await _existing(key)
        if existing is None:
            raise
        return existing


async def spend(*, member_id: int, amount: int, reason: str, key: str, now: datetime,
                allow_negative: bool = False, note: str = "") -> Posting:
    """Debit points once per `key` in a transaction of its own (409 insufficient_points)."""
    try:
        async with in_transaction() as conn:
            return await debit(conn=conn, member_id=member_id, amount=amount, reason=reason,
                               key=key, now=now, allow_negative=allow_negative, note=note)
    except IntegrityError:
        existing = await _existing(key)
        if existing is None:
            raise
        return existing


async def adjust(*, conn: BaseDBAsyncClient, member_id: int, delta: int, reason: str, key: str,
                 now: datetime, expiry_months: int, note: str = "") -> Posting:
    """An operator's manual change inside the caller's transaction: positive is an earning lot,
    negative a spend that may not overdraw (409 insufficient_points)."""
    if delta >= 0:
        return await credit(conn=conn, member_id=member_id, amount=delta, reason=reason, key=key,
                            now=now, expiry_months=expiry_months, note=note)
    return await debit(conn=conn, member_id=member_id, amount=-delta, reason=reason, key=key, now=now,
                       note=note)


@dataclass(frozen=True)
class Imbalance:
    member_id: int
    balance: int
    entries_sum: int
    remaining_sum: int


async def check(member_id: int) -> Imbalance | None:
    """The ledger invariant: balance == sum of entries, and max(balance, 0) == sum of lots' remaining."""
    balance = await _balance(None, member_id)
    sums = await LedgerEntry.filter(member_id=member_id).annotate(
        entries=Sum("delta"), remaining=Sum("remaining")).values("entries", "remaining")
    entries = int(sums[0]["entries"] or 0) if sums else 0
    remaining = int(sums[0]["remaining"] or 0) if sums else 0
    if balance == entries and max(balance, 0) == remaining:
        return None
    return Imbalance(member_id, balance, entries, remaining)


async def history(*, member_id: int, cursor: int | None, limit: int) -> tuple[list[LedgerEntry], int | None]:
    """Ledger entries newest first, keyset-paginated by id; the cursor is the last id seen."""
    query = LedgerEntry.filter(member_id=member_id)
    if cursor:
        query = query.filter(id__lt=cursor)
    rows = await query.order_by("-id").limit(limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)
