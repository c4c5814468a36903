"""The daily reconciliation with WeChat Pay's trade bill (交易账单).

The bill of a day is streamed to a temporary file, parsed in a thread 20,000 lines at a time and
staged into `reconciliation_line` (COPY on PostgreSQL), so a 1,000,000-line bill never sits in
memory; the comparison itself is SQL against our payments and refunds of that business day:
- missing on our side (a lost notification): applied now, as the notification would have been
  (payments.record_payment / record_refund, and the recharge or refund of stored value);
- missing on WeChat's side, and amounts that differ: items for operators (a dead-letter-like
  list, `GET /admin/wallet/reconciliation?date=`) and a Prometheus counter per kind.
Payments that never went through Pay (partner orders without a transaction_id: `pn:…`) are not
WeChat's to know and are left out.
"""
from __future__ import annotations

import asyncio
import logging
import tempfile
from datetime import date, datetime, timedelta, timezone
from typing import IO, Iterator
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from tortoise import connections
from tortoise.transactions import in_transaction

from app import metrics
from app.domain import payments, recharges
from app.domain.clock import day_start
from app.domain.rules import Rules
from app.models import ReconciliationItem, ReconciliationLine, ReconciliationRun
from app.wechat.pay_client import PayClient, PayError

log = logging.getLogger("app.reconciliation")

CHUNK = 20_000
_CHINA = timezone(timedelta(hours=8))
MISSING_OURS, MISSING_THEIRS, AMOUNT_DIFFERS, OVERREFUND = "missing_ours", "missing_theirs", "amount_differs", \
    "overrefund"


def _fen(text: str) -> int:
    whole, _, cents = text.strip().partition(".")
    return int(whole or 0) * 100 + int((cents + "00")[:2])


def parse_bill(lines: Iterator[str]) -> Iterator[tuple[str, str, str, str, str, int, str]]:
    """(trade, reference, transaction_id, out_trade_no, openid, fen, traded_at) per trade line of
    WeChat's CSV (each value behind a backtick); the columns are found by their header names, and
    the summary lines at the end are skipped."""
    header: dict[str, int] | None = None
    for raw in lines:
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        if header is None:
            header = {name: i for i, name in enumerate(line.split(","))}
            at, tx, out, who = header["交易时间"], header["微信订单号"], header["商户订单号"], header["用户标识"]
            state, paid = header["交易状态"], header["应结订单金额"]
            refund_id, refund_fen = header["微信退款单号"], header["退款金额"]
            continue
        if not line.startswith("`"):
            break  # 总交易单数…: the summary
        v = [part.lstrip("`") for part in line.split(",`")]
        if v[state] == "REFUND":
            yield "refund", v[refund_id], v[tx], v[out], v[who], _fen(v[refund_fen]), v[at]
        else:
            yield "payment", v[tx], v[tx], v[out], v[who], _fen(v[paid]), v[at]


def _chunks(handle: IO[bytes]) -> Iterator[list[tuple]]:
    rows = parse_bill(line.decode("utf-8") for line in handle)
    while True:
        chunk = [row for _, row in zip(range(CHUNK), rows)]
        if not chunk:
            return
        yield chunk


async def _stage(*, bill_date: date, handle: IO[bytes]) -> int:
    """Replace the staged lines of the day with the bill's; returns how many."""
    await ReconciliationLine.filter(bill_date=bill_date).delete()
    chunks = _chunks(handle)
    staged = 0
    conn = connections.get("default")
    while True:
        chunk = await asyncio.to_thread(next, chunks, None)
        if chunk is None:
            return staged
        staged += len(chunk)
        if conn.capabilities.dialect == "postgres":
            async with conn.acquire_connection() as raw:
                await raw.copy_records_to_table(
                    "reconciliation_line", records=[(bill_date, *row) for row in chunk],
                    columns=["bill_date", "trade", "reference", "transaction_id", "out_trade_no", "openid", "fen",
                             "traded_at"])
        else:
            await ReconciliationLine.bulk_create(
                [ReconciliationLine(bill_date=bill_date, trade=t, reference=r, transaction_id=x, out_trade_no=o,
                                    openid=w, fen=f, traded_at=a) for t, r, x, o, w, f, a in chunk], batch_size=1000)


# The comparisons, one statement each: (kind, trade, reference, ours, theirs) rows.
_COMPARE = {
    "payment": """
SELECT CASE WHEN p.id IS NULL THEN 'missing_ours' ELSE 'amount_differs' END, 'payment', l.reference,
       p.total_fen, l.fen
FROM reconciliation_line l LEFT JOIN payment p ON p.transaction_id = l.reference
WHERE l.bill_date = {d} AND l.trade = 'payment' AND (p.id IS NULL OR p.total_fen <> l.fen)
UNION ALL
SELECT 'missing_theirs', 'payment', p.transaction_id, p.total_fen, NULL
FROM payment p
WHERE p.paid_at >= {lo} AND p.paid_at < {hi} AND p.source <> 'partner'
  AND NOT EXISTS (SELECT 1 FROM reconciliation_line l WHERE l.bill_date = {d} AND l.trade = 'payment'
                  AND l.reference = p.transaction_id)
""",
    "refund": """
SELECT CASE WHEN r.id IS NULL THEN 'missing_ours' ELSE 'amount_differs' END, 'refund', l.reference,
       r.refund_fen, l.fen
FROM reconciliation_line l LEFT JOIN refund r ON r.refund_id = l.reference
WHERE l.bill_date = {d} AND l.trade = 'refund' AND (r.id IS NULL OR r.refund_fen <> l.fen)
UNION ALL
SELECT 'missing_theirs', 'refund', r.refund_id, r.refund_fen, NULL
FROM refund r
WHERE r.created_at >= {lo} AND r.created_at < {hi} AND r.refund_id NOT LIKE 'pn:%'
  AND NOT EXISTS (SELECT 1 FROM reconciliation_line l WHERE l.bill_date = {d} AND l.trade = 'refund'
                  AND l.reference = r.refund_id)
""",
}


async def _compare(*, bill_date: date, tz: ZoneInfo) -> list[tuple]:
    conn = connections.get("default")
    low = day_start(bill_date, tz).astimezone(timezone.utc)
    high = day_start(bill_date + timedelta(days=1), tz).astimezone(timezone.utc)
    pg = conn.capabilities.dialect == "postgres"
    found = []
    for sql in _COMPARE.values():
        if pg:
            text = sql.format(d="$1", lo="$2", hi="$3")
            values = [bill_date, low, high]
        else:  # SQLite: the ORM's stored forms (dates and UTC datetimes as text)
            text = sql.replace("{d}", "?").replace("{lo}", "?").replace("{hi}", "?")
            values = []
            for piece in sql.split("{")[1:]:
                values.append({"d}": bill_date.isoformat(), "lo}": low.isoformat(sep=" "),
                               "hi}": high.isoformat(sep=" ")}[piece.split("}")[0] + "}"])
        _, rows = await conn.execute_query(text, values)
        found.extend(tuple(row.values()) if hasattr(row, "values") else tuple(row) for row in rows)
    return found


async def _apply(*, line: ReconciliationLine, redis: Redis | None, rules: Rules, appid: str, now: datetime,
                 tz: ZoneInfo) -> bool:
    """Apply a trade WeChat has and we missed, as its notification would have; False when it cannot
    be yet (a refund of a payment we do not know either: the payment's line applies first)."""
    paid_at = datetime.fromisoformat(line.traded_at).replace(tzinfo=_CHINA)
    if line.trade == "payment":
        await payments.record_payment(redis=redis, rules=rules, appid=appid, transaction_id=line.transaction_id,
                                      out_trade_no=line.out_trade_no, openid=line.openid, total_fen=int(line.fen),
                                      payer_total_fen=int(line.fen), paid_at=paid_at, now=now, tz=tz)
        if line.out_trade_no.startswith("rc"):
            await recharges.on_paid(out_trade_no=line.out_trade_no, transaction_id=line.transaction_id, mchid="",
                                    paid_at=paid_at, now=now)
        return True
    try:
        await payments.record_refund(rules=rules, refund_id=line.reference, transaction_id=line.transaction_id,
                                     refund_fen=int(line.fen), now=now)
    except payments.PaymentNotRecorded:
        return False
    if line.out_trade_no.startswith("rc"):
        await recharges.on_refunded(out_trade_no=line.out_trade_no, refund_id=line.reference,
                                    refund_fen=int(line.fen), now=now)
    return True


async def reconcile(*, bill_date: date, pay: PayClient, redis: Redis | None, rules: Rules, appid: str,
                    now: datetime, tz: ZoneInfo) -> dict:
    """Download the trade bill of `bill_date`, compare every payment and refund with ours, apply
    what we missed, and keep the differences for operators; re-running a day replaces its result."""
    with tempfile.TemporaryFile() as handle:
        try:
            await pay.download_trade_bill(bill_date=bill_date.isoformat(), into=handle)
        except PayError as exc:
            if exc.code != "NO_STATEMENT_EXIST":
                raise
        handle.seek(0)
        lines = await _stage(bill_date=bill_date, handle=handle)
    found = await _compare(bill_date=bill_date, tz=tz)
    applied = 0
    items = []
    # Payments first, so a refund of a payment we missed too finds it.
    for kind, trade, reference, ours, theirs in sorted(found, key=lambda f: f[1] != "payment"):
        resolved = False
        if kind == MISSING_OURS:
            line = await ReconciliationLine.filter(bill_date=bill_date, trade=trade, reference=reference).first()
            try:
                resolved = await _apply(line=line, redis=redis, rules=rules, appid=appid, now=now, tz=tz)
            except Exception:
                log.exception("reconciliation: applying %s %s failed", trade, reference)
            applied += resolved
        metrics.RECONCILIATION_MISMATCHES.labels(kind=kind).inc()
        items.append(ReconciliationItem(bill_date=bill_date, kind=kind, trade=trade, reference=str(reference),
                                        ours_fen=None if ours is None else int(ours),
                                        theirs_fen=None if theirs is None else int(theirs), resolved=resolved))
    async with in_transaction() as conn:
        await ReconciliationItem.filter(bill_date=bill_date).exclude(kind=OVERREFUND).using_db(conn).delete()
        await ReconciliationItem.bulk_create(items, batch_size=1000, using_db=conn)
        await ReconciliationRun.filter(bill_date=bill_date).using_db(conn).delete()
        await ReconciliationRun.create(bill_date=bill_date, lines=lines, mismatched=len(items),
                                       matched=lines - sum(1 for i in items if i.kind != MISSING_THEIRS),
                                       applied=applied, finished_at=now, using_db=conn)
    await ReconciliationLine.filter(bill_date=bill_date).delete()
    if items:
        log.warning("reconciliation of %s: %s differences (%s applied)", bill_date, len(items), applied)
    return {"lines": lines, "mismatched": len(items), "applied": applied}


async def report(*, bill_date: date, limit: int = 1000) -> dict:
    """The day's result: its summary (null before it ran) and its differences."""
    run = await ReconciliationRun.get_or_none(bill_date=bill_date)
    items = await ReconciliationItem.filter(bill_date=bill_date).order_by("id").limit(limit)
    return {
        "date": bill_date.isoformat(),
        "run": None if run is None else {"lines": int(run.lines), "matched": int(run.matched),
                                         "mismatched": int(run.mismatched), "applied": int(run.applied),
                                         "finished_at": run.finished_at.isoformat() if run.finished_at else None},
        "items": [{"kind": i.kind, "trade": i.trade, "reference": i.reference, "ours_fen": i.ours_fen,
                   "theirs_fen": i.theirs_fen, "resolved": i.resolved} for i in items],
    }
