"""`python -m app ledger verify`: the ledger invariant over all members, in batches of SQL; and the
wallets' (stored value: balance == entries == unspent lots, for principal and for bonus)."""
from __future__ import annotations

from typing import AsyncIterator

from tortoise import connections

from app.domain.points import Imbalance
from app.models import Member

_BATCH_SQL = """
SELECT m.id, m.points,
       COALESCE(SUM(l.delta), 0) AS entries,
       COALESCE(SUM(l.remaining), 0) AS remaining
FROM member m LEFT JOIN ledger_entry l ON l.member_id = m.id
WHERE m.id > {low} AND m.id <= {high}
GROUP BY m.id, m.points
"""


async def member_id_range() -> tuple[int, int, int]:
    count = await Member.all().count()
    ids = await Member.all().order_by("id").limit(1).values_list("id", flat=True)
    top = await Member.all().order_by("-id").limit(1).values_list("id", flat=True)
    return count, (ids[0] - 1 if ids else 0), (top[0] if top else 0)


async def scan(*, low: int, high: int, batch: int = 5000) -> AsyncIterator[tuple[int, list[Imbalance]]]:
    """Yields (members checked, imbalances) per batch of member ids."""
    conn = connections.get("default")
    start = low
    while start < high:
        end = min(high, start + batch)
        _, rows = await conn.execute_query(_BATCH_SQL.format(low=int(start), high=int(end)))
        bad = []
        for row in rows:
            r = dict(row)
            balance, entries, remaining = int(r["points"]), int(r["entries"]), int(r["remaining"])
            if balance != entries or max(balance, 0) != remaining:
                bad.append(Imbalance(int(r["id"]), balance, entries, remaining))
        yield len(rows), bad
        start = end


async def wallet_imbalances(*, batch: int = 5000) -> list:
    """Every wallet that breaks its invariant (app.domain.wallet.check), in batches of member ids."""
    from app.domain import wallet

    _, low, high = await member_id_range()
    bad: list = []
    start = low
    while start < high:
        bad.extend(await wallet.check(low=start, high=min(high, start + batch)))
        start += batch
    return bad
