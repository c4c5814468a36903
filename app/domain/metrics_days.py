"""Per-business-day figures behind GET /admin/metrics, pre-aggregated in `metrics_day`.

The distinct counts of a range (active members, members who checked in, payers, their
streaks and repeat purchases) do not add up day by day, so each day keeps its member sets as
compressed (roaring) bitmaps of member ids: a range's count is the cardinality of the union
of its days, and the streak distribution is computed from the check-in bitmaps of consecutive
days. A roaring bitmap costs about 2 bytes per member in the set (less for runs of ids), not
one bit per member of the whole programme, so a day's payload follows that day's activity.
Sums (points issued / spent / expired / taken back, orders, spend, new members) are kept per
day as they are.

A day is built from the source tables (one SQL aggregate each) and stored once it has ended
(GRACE after midnight). It stays exact afterwards because PostgreSQL triggers (migrations
0006 and 0011) append a `metrics_day_stale` row for every built day that a later write lands
on (a make-up check-in, a late payment notification, a payment credited at first login, a
re-dated row), and a day is only read while it has none; otherwise it is built again. Days not
built yet, today, and everything on SQLite (no triggers there) are computed from the source
tables on each call.

Building a day is race-free and never makes a money write wait: its row is committed first,
then the build waits until every transaction that was writing when the row appeared has ended
(those could not see it, so could not mark it), then in one transaction locks the row (against
other builds only: writers never lock it), deletes the stale marks it can see, and only then
reads the sources. A write committed before the delete is in what it reads; one committed
after leaves its mark, and the day is built again.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable, Iterable
from zoneinfo import ZoneInfo

from pyroaring import BitMap
from tortoise import connections
from tortoise.transactions import in_transaction

from app.domain.clock import day_start

GRACE = timedelta(minutes=5)  # a day is stored this long after it ended
BATCH_DAYS = 7  # days built (and locked against other builds) per transaction
# A stored day is current while built and not marked stale by a later write.
CURRENT = ("built_version = version AND NOT EXISTS"
           " (SELECT 1 FROM metrics_day_stale s WHERE s.day_id = metrics_day.id)")
CHUNK_DAYS = 31  # days read at a time
# Seconds a build waits for older writers to end: a call computes the day itself meanwhile,
# the job (which has time) waits longer.
CALL_WAIT, JOB_WAIT = 0.5, 60.0
# For the metrics queries only (SET LOCAL): the 4 MB default work_mem makes a month's sorts
# spill to disk; JIT compiling buys nothing on scans this short.
PG_SETTINGS = "SET LOCAL jit = off; SET LOCAL work_mem = '64MB'"


class RangeSql:
    """Raw SQL with $1..$n placeholders on PostgreSQL, and the same text on SQLite (?1..?n).

    Without `tx`, each query runs on a pooled connection of its own (so they run side by
    side), on `reads` (the replica: admin reads) if given, else the primary; with `tx`, inside
    that transaction (a build's, on the primary)."""

    def __init__(self, tz: ZoneInfo, tx: Any = None, reads: Any = None) -> None:
        self.conn = tx or reads or connections.get("default")
        self.reads = None if tx is not None else reads
        self.tx = tx
        self.pg = connections.get("default").capabilities.dialect == "postgres"
        self.tz = tz

    def ts(self, column: str) -> str:
        """A timestamp column comparable with instants: SQLite keeps the offset it was given
        (Tortoise's update() does not convert to UTC), so normalise it there."""
        return column if self.pg else f"datetime({column})"

    def within(self, column: str, first: int = 1) -> str:
        """The column inside [$first, $first+1): a range's start and end instants."""
        return f"{self.ts(column)} >= ${first} AND {self.ts(column)} < ${first + 1}"

    def business_day(self, column: str, offset_minutes: int = 0) -> str:
        if self.pg:
            return f"CAST(({column} AT TIME ZONE '{self.tz.key}') AS date)"
        # SQLite has no time zones: it shifts by the offset at the range's start (exact for
        # zones without DST, such as the default Asia/Shanghai).
        return f"date({column}, '{offset_minutes:+d} minutes')"

    def ids(self, column: str, where: str = "") -> str:
        """An aggregate of a group's ids: an int array on PostgreSQL, "1,2,3" on SQLite."""
        filtered = f" FILTER (WHERE {where})" if where else ""
        return f"array_agg({column}){filtered}" if self.pg else f"group_concat({column}){filtered}"

    @staticmethod
    def id_list(value: Any) -> list[int]:
        if value is None:
            return []
        return value if isinstance(value, list) else [int(i) for i in str(value).split(",")]

    async def rows(self, sql: str, *params: Any) -> list[dict]:
        if not self.pg:
            sql = re.sub(r"\$(\d+)", r"?\1", sql)
            return await self.conn.execute_query_dict(sql, [_sqlite_value(p) for p in params])
        if self.tx is not None:
            return await self.tx.execute_query_dict(sql, list(params))
        if self.reads is not None:  # the replica's sessions have these settings (db.REPLICA_SETTINGS)
            return await self.reads.execute_query_dict(sql, list(params))
        async with in_transaction() as tx:  # a transaction only to scope the settings
            await tx.execute_script(PG_SETTINGS)
            return await tx.execute_query_dict(sql, list(params))

    async def one(self, sql: str, *params: Any) -> dict:
        found = await self.rows(sql, *params)
        return found[0] if found else {}


def _sqlite_value(value: Any) -> Any:
    # Compared with datetime(column): 'YYYY-MM-DD HH:MM:SS' in UTC. Range bounds are whole
    # seconds, so datetime()'s dropping of fractions cannot move a row across one.
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return value


def as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


@dataclass
class DayFigures:
    """One business day. Member sets are roaring bitmaps of member ids."""

    day: date
    active: BitMap = field(default_factory=BitMap)  # a ledger entry, a check-in or a paid order that day
    checked_in: BitMap = field(default_factory=BitMap)
    payers: BitMap = field(default_factory=BitMap)  # one or more paid orders that day
    repeat_payers: BitMap = field(default_factory=BitMap)  # two or more
    new_members: int = 0
    orders: int = 0
    spend_fen: int = 0
    issued: int = 0
    spent: int = 0
    expired: int = 0
    taken_back: int = 0

    SETS = ("active", "checked_in", "payers", "repeat_payers")
    SUMS = ("new_members", "orders", "spend_fen", "issued", "spent", "expired", "taken_back")


def bitmap(ids: Iterable[int]) -> BitMap:
    return BitMap(ids)


# Stored sets: ROARING + the portable roaring serialisation. The dense form stored before
# (little-endian bytes, bit i = member i) always starts with an even byte, as there is no
# member 0, so the odd first byte tells the two apart; migration 0014 has every dense day
# rebuilt, and one still met (built by a process of the previous release) is converted.
ROARING = b"\x01"


def encode(bits: BitMap) -> bytes:
    """A member set as stored in metrics_day."""
    bits = BitMap(bits)
    bits.run_optimize()  # runs of consecutive ids (members created together) as runs
    return ROARING + bits.serialize()


def decode(data: bytes | None) -> BitMap:
    """A stored member set, roaring or (from the previous release) dense."""
    data = bytes(data or b"")
    if data[:1] == ROARING:
        return BitMap.deserialize(data[1:])
    binary = bin(int.from_bytes(data, "little"))[:1:-1]  # bit i at index i
    ids, at = [], binary.find("1")
    while at >= 0:
        ids.append(at)
        at = binary.find("1", at + 1)
    return BitMap(ids)


def _spans(days: list[date]) -> list[tuple[date, date]]:
    """Sorted days as runs of consecutive days (first, last)."""
    spans: list[tuple[date, date]] = []
    for day in sorted(days):
        if spans and spans[-1][1] + timedelta(days=1) == day:
            spans[-1] = (spans[-1][0], day)
        else:
            spans.append((day, day))
    return spans


async def compute_days(sql: RangeSql, days: list[date]) -> dict[date, DayFigures]:
    """The figures of `days`, fresh from the source tables: per run of consecutive days, four
    aggregates with a row per day, each day's members as one array."""
    found = {day: DayFigures(day) for day in days}
    ids = sql.ids
    for first, last in _spans(days):
        start, end = day_start(first, sql.tz), day_start(last + timedelta(days=1), sql.tz)
        offset = int((start.utcoffset() or timedelta(0)).total_seconds() // 60)
        s, e = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
        bday: Callable[[str], str] = lambda column: sql.business_day(column, offset)  # noqa: E731
        queries = (
            sql.rows(
                f"SELECT {bday('created_at')} AS day, {ids('member_id')} AS members,"
                " CAST(SUM(CASE WHEN delta > 0 THEN delta ELSE 0 END) AS bigint) AS issued,"
                " CAST(SUM(CASE WHEN delta < 0 AND reason = 'expire' THEN -delta ELSE 0 END) AS bigint) AS expired,"
                " CAST(SUM(CASE WHEN delta < 0 AND reason = 'refund' THEN -delta ELSE 0 END) AS bigint) AS taken_back,"
                " CAST(SUM(CASE WHEN delta < 0 AND reason NOT IN ('expire', 'refund') THEN -delta ELSE 0 END)"
                f" AS bigint) AS spent FROM ledger_entry WHERE {sql.within('created_at')} GROUP BY 1", s, e),
            sql.rows(f"SELECT day, {ids('member_id')} AS members FROM checkin"
                     " WHERE day >= $1 AND day <= $2 GROUP BY day", first, last),
            sql.rows(
                f"SELECT day, {ids('member_id')} AS payers, {ids('member_id', 'n >= 2')} AS repeaters,"
                " CAST(SUM(n) AS bigint) AS orders, CAST(SUM(fen) AS bigint) AS fen FROM ("
                f" SELECT {bday('paid_at')} AS day, member_id, COUNT(*) AS n, SUM(payer_total_fen) AS fen"
                f" FROM payment WHERE {sql.within('paid_at')} AND member_id IS NOT NULL GROUP BY 1, 2"
                ") AS paid GROUP BY day", s, e),
            sql.rows(f"SELECT {bday('created_at')} AS day, COUNT(*) AS n FROM member"
                     f" WHERE {sql.within('created_at')} GROUP BY 1", s, e),
        )
        if sql.tx is not None:  # one connection: one query at a time
            ledger, checkins, payments, joined = [await q for q in queries]
        else:
            ledger, checkins, payments, joined = await asyncio.gather(*queries)

        def each(rows: list[dict]):
            """The rows of the wanted days, with the day's figures."""
            for row in rows:
                figures = found.get(as_date(row["day"]))
                if figures is not None:
                    yield figures, row

        active: dict[date, list[int]] = {}
        for figures, row in each(ledger):
            active.setdefault(figures.day, []).extend(sql.id_list(row["members"]))
            for name in ("issued", "spent", "expired", "taken_back"):
                setattr(figures, name, int(row[name] or 0))
        for figures, row in each(checkins):
            checked = sql.id_list(row["members"])
            active.setdefault(figures.day, []).extend(checked)
            figures.checked_in = bitmap(checked)
        for figures, row in each(payments):
            payers = sql.id_list(row["payers"])
            active.setdefault(figures.day, []).extend(payers)
            figures.payers = bitmap(payers)
            figures.repeat_payers = bitmap(sql.id_list(row["repeaters"]))
            figures.orders, figures.spend_fen = int(row["orders"] or 0), int(row["fen"] or 0)
        for figures, row in each(joined):
            figures.new_members = int(row["n"])
        for day, seen in active.items():
            found[day].active = bitmap(seen)
    return found


async def _load(tz: ZoneInfo, days: list[date], reads: Any = None) -> dict[date, DayFigures]:
    """The current (built_version == version) stored days among `days`, from `reads` (the
    replica) if given: a day it has not received yet is then computed instead."""
    if not days:
        return {}
    rows = await (reads or connections.get("default")).execute_query_dict(
        f"SELECT day, {', '.join(DayFigures.SETS + DayFigures.SUMS)} FROM metrics_day"
        f" WHERE tz = $1 AND day = ANY($2::date[]) AND {CURRENT}", [tz.key, days])
    loaded = {}
    for row in rows:
        figures = DayFigures(row["day"], **{name: int(row[name]) for name in DayFigures.SUMS})
        for name in DayFigures.SETS:
            setattr(figures, name, decode(row[name]))
        loaded[figures.day] = figures
    return loaded


async def _writers_done(conn: Any, wait: float) -> bool:
    """Wait until every transaction of this database that had written something when the
    day rows were committed has ended; False if one outlasts `wait` seconds. (A transaction
    that writes later sees the rows, so its trigger bumps them.)"""
    since = (await conn.execute_query_dict("SELECT clock_timestamp() AS t"))[0]["t"]
    for _ in range(max(1, int(wait / 0.01))):
        busy = await conn.execute_query_dict(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_xid IS NOT NULL AND xact_start < $1 LIMIT 1", [since])
        if not busy:
            return True
        await asyncio.sleep(0.01)
    return False


async def build(tz: ZoneInfo, days: list[date], *, now: datetime, wait: float = CALL_WAIT,
                advance: Callable[[int], None] = lambda n: None) -> int:
    """Build and store `days` (ended ones, PostgreSQL only) whose stored row is missing or out
    of date, stamped built at `now`. Returns how many were built; a day is skipped if its writers
    cannot be waited out."""
    conn = connections.get("default")
    if conn.capabilities.dialect != "postgres" or not days:
        return 0
    await conn.execute_query(
        "INSERT INTO metrics_day (tz, day, starts_at, ends_at, version, built_version, new_members, orders,"
        " spend_fen, issued, spent, expired, taken_back)"
        " SELECT $1::text, d, d::timestamp AT TIME ZONE $1::text, (d + 1)::timestamp AT TIME ZONE $1::text,"
        " 1, 0, 0, 0, 0, 0, 0, 0, 0"
        " FROM unnest($2::date[]) AS d ON CONFLICT (day, tz) DO NOTHING", [tz.key, days])
    if not await _writers_done(conn, wait):
        return 0
    built = 0
    ordered = sorted(days)
    for i in range(0, len(ordered), BATCH_DAYS):
        batch = ordered[i:i + BATCH_DAYS]
        async with in_transaction() as tx:
            await tx.execute_script(PG_SETTINGS)
            rows = await tx.execute_query_dict(
                "SELECT id, day FROM metrics_day WHERE tz = $1 AND day = ANY($2::date[])"
                f" AND NOT ({CURRENT}) ORDER BY day FOR UPDATE", [tz.key, batch])
            todo = [row["day"] for row in rows]
            # Before reading the sources: a mark this statement cannot see stays, and its day
            # is built again (module docstring).
            await tx.execute_query("DELETE FROM metrics_day_stale WHERE day_id = ANY($1::bigint[])",
                                   [[row["id"] for row in rows]])
            fresh = await compute_days(RangeSql(tz, tx), todo)
            for figures in fresh.values():
                await tx.execute_query(
                    "UPDATE metrics_day SET built_version = version, built_at = $3,"
                    f" {', '.join(f'{name} = ${n}' for n, name in enumerate(DayFigures.SETS + DayFigures.SUMS, 4))}"
                    " WHERE tz = $1 AND day = $2",
                    [tz.key, figures.day, now, *(encode(getattr(figures, name)) for name in DayFigures.SETS),
                     *(getattr(figures, name) for name in DayFigures.SUMS)])
            built += len(todo)
        advance(len(batch))
    return built


def storable(day: date, tz: ZoneInfo, now: datetime) -> bool:
    """A day is stored once it ended GRACE ago; until then it is computed on each call."""
    return day_start(day + timedelta(days=1), tz) <= now - GRACE


async def _current(tz: ZoneInfo, days: list[date]) -> set[date]:
    rows = await connections.get("default").execute_query_dict(
        f"SELECT day FROM metrics_day WHERE tz = $1 AND day = ANY($2::date[]) AND {CURRENT}",
        [tz.key, days])
    return {row["day"] for row in rows}


async def figures(*, first: date, last: date, tz: ZoneInfo, now: datetime,
                  reads: Any = None) -> AsyncIterator[DayFigures]:
    """Every day of `first`..`last`, in order: stored where current, built and stored where it
    can be, computed from the source tables otherwise. A month is read at a time, so a year's
    range holds a month of bitmaps in memory, not a year of them. Which days to build is
    decided, and built, on the primary; the days are read from `reads` (the replica) if given."""
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    pg = connections.get("default").capabilities.dialect == "postgres"
    if pg:
        current = await _current(tz, days)
        missing = [day for day in days if day not in current and storable(day, tz, now)]
        if missing:
            await build(tz, missing, now=now)
    for i in range(0, len(days), CHUNK_DAYS):
        chunk = days[i:i + CHUNK_DAYS]
        found = await _load(tz, chunk, reads) if pg else {}
        rest = [day for day in chunk if day not in found]
        if rest:
            found.update(await compute_days(RangeSql(tz, reads=reads), rest))
        for day in chunk:
            yield found[day]


async def refresh(*, tz: ZoneInfo, now: datetime, days: int,
                  total: Callable[[int], None] = lambda n: None,
                  advance: Callable[[int], None] = lambda n: None) -> dict:
    """Build every ended day of the last `days` that is missing or out of date (the
    metrics_days job): cold calls of GET /admin/metrics then only read stored days."""
    conn = connections.get("default")
    if conn.capabilities.dialect != "postgres":
        return {"days": 0, "current": 0, "built": 0}  # SQLite: every call computes its days
    today = now.astimezone(tz).date()
    wanted = [today - timedelta(days=i) for i in range(days, 0, -1)]
    wanted = [day for day in wanted if storable(day, tz, now)]
    current = await _current(tz, wanted)
    todo = [day for day in wanted if day not in current]
    total(len(todo))
    built = await build(tz, todo, now=now, wait=JOB_WAIT, advance=advance)
    return {"days": len(wanted), "current": len(current), "built": built}
