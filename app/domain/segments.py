"""RFM scores and member segments (seed: 新会员 / 活跃 / 沉睡 / 高价值), recomputed in bulk SQL.

Scores are quintiles 1..5 among members with at least one payment, by SQL NTILE(5) window
functions (PostgreSQL; SQLite ≥ 3.25), ties broken by member id:
- R (recency): by the last payment's time, oldest 1 … most recent 5 (fewer days since = higher);
- F (frequency): by the number of payments;
- M (monetary): by Σ payer_total_fen − Σ refunds of those payments.
A member who never paid scores R = F = M = 0.

The segment of each member, first rule that matches:
1. `new` 新会员: joined within the last 30 days;
2. `silent` 沉睡: no payment and no check-in within the last 90 days;
3. `high_value` 高价值: R ≥ 4 and F ≥ 4 and M ≥ 4;
4. `active` 活跃: everyone else (active within 90 days, not high value).
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Any, AsyncIterator

from tortoise import connections
from tortoise.transactions import in_transaction

from app.domain.members import mask_phone  # one masking everywhere (segments.mask_phone too)

SEGMENTS = {"new": "新会员", "active": "活跃", "silent": "沉睡", "high_value": "高价值"}
NEW_DAYS = 30
SILENT_DAYS = 90
HIGH = 4

_RECOMPUTE = """
WITH refunded AS (
  SELECT payment_id, SUM(refund_fen) AS fen FROM refund GROUP BY payment_id
), paid AS (
  SELECT p.member_id, MAX({paid_at}) AS last_paid, COUNT(*) AS orders,
         SUM(p.payer_total_fen - COALESCE(r.fen, 0)) AS net
  FROM payment p LEFT JOIN refunded r ON r.payment_id = p.id
  WHERE p.member_id IS NOT NULL GROUP BY p.member_id
), scored AS (
  SELECT member_id, last_paid,
         NTILE(5) OVER (ORDER BY last_paid, member_id) AS r,
         NTILE(5) OVER (ORDER BY orders, member_id) AS f,
         NTILE(5) OVER (ORDER BY net, member_id) AS m
  FROM paid
)
INSERT INTO member_score (member_id, recency, frequency, monetary, segment, computed_at)
SELECT mb.id, COALESCE(s.r, 0), COALESCE(s.f, 0), COALESCE(s.m, 0),
       CASE WHEN {created_at} >= $1 THEN 'new'
            WHEN (s.last_paid IS NULL OR s.last_paid < $2)
                 AND (mb.last_checkin IS NULL OR mb.last_checkin < $3) THEN 'silent'
            WHEN s.r >= $4 AND s.f >= $4 AND s.m >= $4 THEN 'high_value'
            ELSE 'active' END,
       $5
FROM member mb LEFT JOIN scored s ON s.member_id = mb.id
"""


def _adapt(pg: bool, sql: str, params: list[Any]) -> tuple[str, list[Any]]:
    if pg:
        return sql, params
    # SQLite keeps timestamps as text with whatever offset they were written with, so they
    # are compared as datetime(column): 'YYYY-MM-DD HH:MM:SS' in UTC.
    values = [p.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if isinstance(p, datetime)
              else p.isoformat() if isinstance(p, date) else p for p in params]
    return re.sub(r"\$(\d+)", r"?\1", sql), values


async def recompute(*, now: datetime, today: date) -> dict:
    """Replace every member's RFM scores and segment (DELETE + INSERT … SELECT, one transaction).

    `now` decides "joined within 30 days" and "paid within 90 days"; `today` (the business
    day) decides "checked in within 90 days". Returns the member count per segment.
    """
    async with in_transaction() as conn:
        pg = conn.capabilities.dialect == "postgres"
        await conn.execute_query("DELETE FROM member_score")
        columns = {"paid_at": "p.paid_at", "created_at": "mb.created_at"} if pg else \
            {"paid_at": "datetime(p.paid_at)", "created_at": "datetime(mb.created_at)"}
        sql, params = _adapt(pg, _RECOMPUTE.format(**columns), [
            now - timedelta(days=NEW_DAYS), now - timedelta(days=SILENT_DAYS),
            today - timedelta(days=SILENT_DAYS), HIGH,
            now if pg else now.astimezone(timezone.utc).isoformat(" ")])
        await conn.execute_query(sql, params)
        rows = await conn.execute_query_dict(
            "SELECT segment, COUNT(*) AS n FROM member_score GROUP BY segment")
    counts = {name: 0 for name in SEGMENTS}
    counts.update({row["segment"]: int(row["n"]) for row in rows})
    return counts


async def members_of(*, segment: str, batch: int = 5000, reads: Any = None) -> AsyncIterator[list[dict]]:
    """The members of a segment in batches by member id (keyset), with scores and phone masked;
    read from `reads` (the replica) if given, else the primary."""
    conn = reads or connections.get("default")
    pg = conn.capabilities.dialect == "postgres"
    after = 0
    while True:
        sql, params = _adapt(pg, (
            "SELECT ms.member_id, mb.openid, mb.phone, mb.tier, mb.points, ms.recency,"
            " ms.frequency, ms.monetary, mb.last_paid_at FROM member_score ms"
            " JOIN member mb ON mb.id = ms.member_id"
            " WHERE ms.segment = $1 AND ms.member_id > $2 ORDER BY ms.member_id LIMIT $3"),
            [segment, after, batch])
        rows = await conn.execute_query_dict(sql, params)
        if not rows:
            return
        for row in rows:
            row["phone"] = mask_phone(row["phone"])
            paid = row["last_paid_at"]
            if isinstance(paid, str):  # SQLite hands back the stored text
                paid = datetime.fromisoformat(paid)
            row["last_paid_at"] = paid.isoformat() if paid else ""
        yield rows
        after = int(rows[-1]["member_id"])
        if len(rows) < batch:
            return
