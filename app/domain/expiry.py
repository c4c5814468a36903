"""Points expiry (CONTRACT.md: each earning expires 12 months after it was earned) and its reminders
(a subscription message 30 and 7 days before points expire).

Expiry is the one ledger writer outside app/domain/points.py, because a million members cannot
take a Python round trip each: it works in chunks of lots, each chunk one transaction of a few
set-based statements that keep the ledger invariant (balance == sum(entries),
max(balance, 0) == sum(remaining)). A member in debt has no remaining lots, so is never touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from app.domain import ledger_events, messages
from app.domain.clock import day_start

CHUNK = 5000

# Lots of the chunk still due: id in (low, high], something left, past their expiry.
_DUE = "id > $1 AND id <= $2 AND remaining > 0 AND expires_at <= $3"

_LOCK_MEMBERS_PG = f"""
SELECT id FROM member WHERE id IN (SELECT member_id FROM ledger_entry WHERE {_DUE})
ORDER BY id FOR UPDATE
"""
_POST_ENTRIES = f"""
INSERT INTO ledger_entry (member_id, delta, growth_delta, reason, idempotency_key, remaining,
                          note, created_at)
SELECT member_id, -remaining, 0, 'expire', 'expire:' || id, 0, '', $4
FROM ledger_entry WHERE {_DUE}
ON CONFLICT (idempotency_key) DO NOTHING
"""
_DEBIT_MEMBERS = f"""
UPDATE member SET points = member.points - due.total
FROM (SELECT member_id, SUM(remaining) AS total FROM ledger_entry WHERE {_DUE} GROUP BY member_id) AS due
WHERE member.id = due.member_id
"""
_CLEAR_LOTS = f"UPDATE ledger_entry SET remaining = 0 WHERE {_DUE}"
# The entries a chunk just posted, for the ledger's bulk subscribers (app/domain/ledger_events.py;
# card sync queues their bonus pushes), as SQLite reads them: found through the chunk's lots
# (before they are cleared) and the entry's unique key.
_POSTED_SQLITE = """(SELECT posted.id, posted.member_id, posted.delta
FROM ledger_entry AS lot
JOIN ledger_entry AS posted ON posted.idempotency_key = 'expire:' || lot.id
WHERE lot.id > ?1 AND lot.id <= ?2 AND lot.remaining > 0 AND lot.expires_at <= ?3) AS posted"""
# PostgreSQL does a chunk's work in one statement after the lock: the due lots are read once
# (one pass over the chunk's id range) and every step joins them by primary key, where the
# statements above each scan the range again. Data-modifying CTEs all see the statement's
# snapshot: `due` is read before any of them writes, which the member lock makes safe. Each
# runs whether or not the final SELECT reads it, the subscribers' bulk hooks ({hooks}: the card
# pushes of the entries in `posted`) too.
_EXPIRE_CHUNK_PG = f"""
WITH due AS MATERIALIZED (
    SELECT id, member_id, remaining FROM ledger_entry WHERE {_DUE}
), posted AS (
    INSERT INTO ledger_entry (member_id, delta, growth_delta, reason, idempotency_key, remaining,
                              note, created_at)
    SELECT member_id, -remaining, 0, 'expire', 'expire:' || id, 0, '', $4 FROM due ORDER BY id
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, member_id, delta
), debited AS (
    UPDATE member SET points = member.points - owed.total
    FROM (SELECT member_id, SUM(remaining) AS total FROM due GROUP BY member_id) AS owed
    WHERE member.id = owed.member_id
), cleared AS (
    UPDATE ledger_entry SET remaining = 0 FROM due WHERE ledger_entry.id = due.id
    RETURNING 1
){{hooks}}
SELECT (SELECT COUNT(*) FROM posted) AS posted, (SELECT COUNT(*) FROM cleared) AS cleared,
       (SELECT COALESCE(SUM(remaining), 0) FROM due) AS s, (SELECT COUNT(DISTINCT member_id) FROM due) AS m
"""


def _chunk_pg(now: datetime) -> tuple[str, list]:
    """The chunk's statement with the subscribers' bulk hooks as CTEs, and their parameters ($5 on)."""
    hooks = ledger_events.bulk_statements(ledger_events.BulkPosted(
        dialect="postgres", posted="posted", reason="expire", now=now, first_param=5), one_statement=True)
    ctes = "".join(f", hook{i} AS ({sql})" for i, (sql, _) in enumerate(hooks))
    return _EXPIRE_CHUNK_PG.replace("{hooks}", ctes), [p for _, params in hooks for p in params]


def _sql(conn: BaseDBAsyncClient, text: str) -> str:
    # The statements are written with PostgreSQL's $n; SQLite spells the same numbered parameter ?n.
    return text if conn.capabilities.dialect == "postgres" else text.replace("$", "?")


def _param(conn: BaseDBAsyncClient, moment: datetime):
    # SQLite keeps datetimes as UTC text (as Tortoise writes them), compared as strings.
    moment = moment.astimezone(timezone.utc)
    return moment if conn.capabilities.dialect == "postgres" else moment.isoformat(" ")


async def _expire_chunk_sqlite(tx: BaseDBAsyncClient, params: list, now: datetime) -> tuple[int, int, dict]:
    """SQLite (one writer at a time): the chunk's steps as separate statements."""
    posted, _ = await tx.execute_query(_sql(tx, _POST_ENTRIES), params + [_param(tx, now)])
    _, sums = await tx.execute_query(_sql(tx, f"SELECT COALESCE(SUM(remaining), 0) AS s, "
                                              f"COUNT(DISTINCT member_id) AS m FROM ledger_entry WHERE {_DUE}"),
                                     params)
    for sql, extra in ledger_events.bulk_statements(ledger_events.BulkPosted(
            dialect="sqlite", posted=_POSTED_SQLITE, reason="expire", now=now, first_param=4),
            one_statement=False):
        await tx.execute_query(sql, params + extra)
    await tx.execute_query(_sql(tx, _DEBIT_MEMBERS), params)
    cleared, _ = await tx.execute_query(_sql(tx, _CLEAR_LOTS), params)
    return posted, cleared, dict(sums[0])


@dataclass
class ExpiryResult:
    lots: int = 0
    members: int = 0
    points: int = 0
    chunks: int = 0


async def expire_due(*, now: datetime, chunk: int = CHUNK, total=lambda n: None,
                     advance=lambda n: None) -> ExpiryResult:
    """Expire what is left of every lot whose expires_at has passed at `now`, once per lot.

    Each lot's rest becomes an entry (reason "expire", key `expire:{lot_id}`, delta -remaining),
    the lot's remaining goes to 0 and Member.points down by the same sum; a member holding a
    card gets the entry's bonus push queued (issue 4), by the ledger's bulk subscribers
    (card.on_bulk) in the chunk's own statement. Per chunk of `chunk` due lots (an id range),
    one transaction: on PostgreSQL it first locks the chunk's member rows
    in id order — the same lock a spend takes first (its balance UPDATE) — so no spend can
    consume a lot between the statements; SQLite has one writer at a time anyway. A re-run
    finds nothing due; the unique key guards against a double entry all the same.
    """
    conn = connections.get("default")
    at = _param(conn, now)
    result = ExpiryResult()
    # The chunks' upper bounds in one pass over the due lots (the expires_at index): every
    # `chunk`-th due id, then the last. A keyset query per chunk would re-read the due set each time.
    _, rows = await conn.execute_query(_sql(conn, f"""
        SELECT id, n, total FROM (
            SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS n, COUNT(*) OVER () AS total
            FROM ledger_entry WHERE remaining > 0 AND expires_at <= $1) AS due
        WHERE n % {int(chunk)} = 0 OR n = total ORDER BY id"""), [at])
    bounds = [dict(r) for r in rows]
    total(int(bounds[0]["total"]) if bounds else 0)
    low = 0
    for bound in bounds:
        high = int(bound["id"])
        params = [low, high, at]
        async with in_transaction() as tx:
            if tx.capabilities.dialect == "postgres":
                await tx.execute_query(_LOCK_MEMBERS_PG, params)
                statement, extra = _chunk_pg(now)
                _, rows = await tx.execute_query(statement, params + [now] + extra)
                sums = dict(rows[0])
                posted, cleared = int(sums["posted"]), int(sums["cleared"])
            else:
                posted, cleared, sums = await _expire_chunk_sqlite(tx, params, now)
            members = int(sums["m"])
            if posted != cleared:
                # Only possible if an `expire:` entry exists for a lot that still has points:
                # refuse rather than leave the invariant broken.
                raise RuntimeError(f"expiry of lots ({low}, {high}]: {posted} entries for {cleared} lots")
        amount = int(sums["s"])
        result.lots += cleared
        result.points += amount
        result.members += members
        result.chunks += 1
        ledger_events.publish_bulk_done(ledger_events.BulkDone(reason="expire", points=amount, entries=cleared))
        advance(cleared)
        low = high
    return result


@dataclass(frozen=True)
class Expiring:
    member_id: int
    points: int
    expires_on: date
    days: int


async def expiring_on(*, day: date, days: int, tz: ZoneInfo) -> list[Expiring]:
    """Members with points left in lots that expire during business day `day`, one aggregate query."""
    conn = connections.get("default")
    start, end = day_start(day, tz), day_start(day + timedelta(days=1), tz)
    _, rows = await conn.execute_query(_sql(conn, """
        SELECT member_id, SUM(remaining) AS points FROM ledger_entry
        WHERE remaining > 0 AND expires_at >= $1 AND expires_at < $2
        GROUP BY member_id ORDER BY member_id"""), [_param(conn, start), _param(conn, end)])
    return [Expiring(int(dict(r)["member_id"]), int(dict(r)["points"]), day, days) for r in rows]


async def remind_expiring(*, rules, today: date, now: datetime, tz: ZoneInfo, batch: int = 5000,
                          total=lambda n: None, advance=lambda n: None) -> dict:
    """A subscription message (kind "points_expiry") 30 and 7 days (rules.points.remind_days)
    before a member's points expire: one per member per expiry day and window, period
    `{expiry_date}:{days}`, so a re-run the same day queues nothing twice.
    """
    windows = [(days, await expiring_on(day=today + timedelta(days=days), days=days, tz=tz))
               for days in sorted(set(rules.points.remind_days), reverse=True)]
    total(sum(len(found) for _, found in windows))
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0}
    for days, found in windows:
        for start in range(0, len(found), batch):
            part = found[start:start + batch]
            sent = await messages.enqueue_many([
                {"member_id": e.member_id, "kind": "points_expiry",
                 "period": f"{e.expires_on.isoformat()}:{days}",
                 "values": {"points": e.points, "expires_on": e.expires_on.isoformat()},
                 "page": "pages/points/index"}
                for e in part], now=now)
            summary["seen"] += len(part)
            summary["sent"] += sent
            summary["skipped"] += len(part) - sent
            advance(len(part))
    return summary
