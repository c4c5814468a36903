"""Wake-up of dormant members (沉默会员唤醒, CONTRACT.md "wake-up"): a member with no login and
no payment for 30 days gets a 20-yuan return coupon once per dormant spell, at most once in 90
days; told by subscription message when the member has quota for the coupon template, else
through the official account when the member follows it, else recorded as not reachable.

A dormant spell starts at the member's latest login, payment or registration; its key
`wakeup:{member}:{spell start}` is unique (WakeUp.key, the coupon's issue_key, the message's
period), so a re-run, or a run racing another, gives nothing twice. A wake-up succeeds when a
paid order follows before its window ends (14 days) and is not refunded in full.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from tortoise import connections
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from app.domain import coupons, messages
from app.domain.rules import Rules
from app.models import Member, WakeUp

BATCH = 5000
SUBSCRIBE, OA, UNREACHABLE = "subscribe", "oa", "unreachable"

# Dormant members after id $1: registered, last logged in and last paid at or before $2 ($2 is
# now - dormant_days), with their quota of the coupon template ($4) and their latest wake-up.
_DORMANT = """
SELECT m.id, m.created_at, m.last_login_at, m.last_paid_at, m.followed, m.oa_openid,
  COALESCE((SELECT q.remaining FROM subscription_quota q
            WHERE q.member_id = m.id AND q.template_id = {p4}), 0) AS quota,
  (SELECT MAX(w.sent_at) FROM wakeup w WHERE w.member_id = m.id) AS last_wakeup
FROM member m
WHERE m.id > {p1} AND NOT m.blacklisted AND m.created_at <= {p2}
  AND (m.last_login_at IS NULL OR m.last_login_at <= {p2})
  AND (m.last_paid_at IS NULL OR m.last_paid_at <= {p2})
ORDER BY m.id LIMIT {p3}
"""


def _sql(template: str, postgres: bool, count: int) -> str:
    marks = {f"p{i}": (f"${i}" if postgres else f"?{i}") for i in range(1, count + 1)}
    return template.format(**marks)


def _aware(value: Any) -> datetime | None:
    """A timestamp from a raw row: asyncpg gives datetimes, SQLite gives ISO text (UTC)."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def spell_start(*times: datetime | None) -> datetime:
    """The start of a dormant spell: the latest of registration, login and payment."""
    return max(t for t in times if t is not None)


def wakeup_key(member_id: int, start: datetime) -> str:
    return f"wakeup:{member_id}:{start.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%S')}"


async def wake_dormant(*, rules: Rules, now: datetime, tz: ZoneInfo, template_id: str | None,
                       batch: int = BATCH, total=lambda n: None, advance=lambda n: None) -> dict:
    """The daily wake-up (rules.wakeup): every member with no login and no payment for
    `dormant_days` (30) and no wake-up in `every_days` (90) gets a return coupon of `coupon_fen`
    (2000) once per dormant spell, and a message by subscription (quota on `template_id`, the
    coupon template), else by the official account when followed, else none (unreachable).
    Batches of `batch` members, each one transaction (wake-ups, coupons, messages: all or none).
    """
    rule = rules.wakeup
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "issued": 0,
               SUBSCRIBE: 0, OA: 0, UNREACHABLE: 0}
    if not rule.enabled or rule.coupon_fen <= 0:
        return summary
    now = now.astimezone(timezone.utc)
    cutoff = now - timedelta(days=rule.dormant_days)
    recent = now - timedelta(days=rule.every_days)
    template = await coupons.template(key=f"wakeup:{rule.coupon_fen}:{rule.valid_days}", name="回归礼券",
                                      amount_fen=rule.coupon_fen, valid_days=rule.valid_days)
    expires_on = coupons.expiry_of(template, now=now, tz=tz).isoformat()
    values = {"title": template.name, "amount": coupons.yuan(template.amount_fen), "expires_on": expires_on}
    conn = connections.get("default")
    postgres = conn.capabilities.dialect == "postgres"
    sql = _sql(_DORMANT, postgres, 4)
    total(await Member.filter(Q(last_login_at=None) | Q(last_login_at__lte=cutoff),
                              Q(last_paid_at=None) | Q(last_paid_at__lte=cutoff),
                              blacklisted=False, created_at__lte=cutoff).count())
    last = 0
    while True:
        rows = await conn.execute_query_dict(sql, [last, cutoff, batch, template_id or ""])
        if not rows:
            break
        last = int(rows[-1]["id"])
        wakeups: list[tuple[str, int, datetime, str]] = []  # key, member, spell start, channel
        notes = []
        for row in rows:
            last_wakeup = _aware(row["last_wakeup"])
            if last_wakeup is not None and last_wakeup > recent:
                continue
            start = spell_start(_aware(row["created_at"]), _aware(row["last_login_at"]),
                                _aware(row["last_paid_at"]))
            key, member_id = wakeup_key(int(row["id"]), start), int(row["id"])
            if int(row["quota"] or 0) > 0:
                channel = SUBSCRIBE
            elif row["followed"] and row["oa_openid"]:
                channel = OA
            else:
                channel = UNREACHABLE
            wakeups.append((key, member_id, start, channel))
            if channel != UNREACHABLE:
                notes.append({"member_id": member_id, "kind": "coupon", "period": key, "values": values,
                              "page": "pages/coupons/index", "channel": channel})
            summary[channel] += 1
        if wakeups:
            async with in_transaction() as tx:
                # The spell's key decides: a wake-up stored before (a re-run) is not stored again,
                # and the coupon and message keyed by it are not issued or queued again.
                ends = now + timedelta(days=rule.window_days)
                if postgres:
                    stored, issued = await _store_pg(tx, wakeups, template=template, now=now, ends=ends)
                else:
                    stored, issued = None, 0
                    await WakeUp.bulk_create([WakeUp(key=k, member_id=m, spell_start=s, channel=c, sent_at=now,
                                                     window_ends_at=ends) for k, m, s, c in wakeups],
                                             ignore_conflicts=True, batch_size=1000, using_db=tx)
                if issued != stored:
                    # What the fast path dropped (a coupon code collision), or the ORM path: here.
                    issued += await coupons.issue_many([coupons.Grant(m, template, k) for k, m, _, _ in wakeups],
                                                       now=now, conn=tx)
                summary["issued"] += issued
                summary["sent"] += await messages.enqueue_many(notes, now=now, conn=tx)
        summary["seen"] += len(rows)
        summary["skipped"] += len(rows) - len(wakeups)
        advance(len(rows))
    return summary


# One round trip per batch on PostgreSQL (the ORM's bulk_create builds an object per row):
# the wake-ups and their coupons from arrays, each ON CONFLICT DO NOTHING on its unique key.
_STORE = """
WITH w AS (
  INSERT INTO wakeup (key, member_id, spell_start, channel, sent_at, window_ends_at)
  SELECT k, m, s, c, $5, $6 FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::text[]) AS t(k, m, s, c)
  ON CONFLICT (key) DO NOTHING RETURNING 1
), c AS (
  INSERT INTO coupon (code, issue_key, template_id, member_id, valid_from, expires_at, created_at)
  SELECT code, k, $8, m, $5, $9, $5 FROM unnest($7::text[], $1::text[], $2::bigint[]) AS t(code, k, m)
  ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM w) AS wakeups, (SELECT count(*) FROM c) AS coupons
"""


async def _store_pg(tx, wakeups: list[tuple[str, int, datetime, str]], *, template, now: datetime,
                    ends: datetime) -> tuple[int, int]:
    """(wake-ups stored, coupons issued) of one batch."""
    rows = await tx.execute_query_dict(_STORE, [
        [w[0] for w in wakeups], [w[1] for w in wakeups], [w[2] for w in wakeups],
        [w[3] for w in wakeups], now, ends,
        [coupons.new_code() for _ in wakeups], template.id, now + timedelta(days=template.valid_days)])
    return int(rows[0]["wakeups"]), int(rows[0]["coupons"])


_RESULTS = """
SELECT w.channel, COUNT(*) AS n,
  SUM(CASE WHEN EXISTS (SELECT 1 FROM payment p WHERE p.member_id = w.member_id
        AND p.paid_at > w.sent_at AND p.paid_at <= w.window_ends_at
        AND p.refunded_fen < p.payer_total_fen) THEN 1 ELSE 0 END) AS won
FROM wakeup w WHERE w.sent_at >= {p1} AND w.sent_at < {p2}
GROUP BY w.channel
"""


async def results(*, since: datetime | None = None, until: datetime | None = None) -> dict:
    """Wake-ups sent in [since, until) by channel, and how many succeeded: a paid order after
    the wake-up and within its window, not refunded in full."""
    conn = connections.get("default")
    postgres = conn.capabilities.dialect == "postgres"
    low = (since or datetime(2000, 1, 1, tzinfo=timezone.utc)).astimezone(timezone.utc)
    high = (until or datetime(9999, 1, 1, tzinfo=timezone.utc)).astimezone(timezone.utc)
    rows = await conn.execute_query_dict(_sql(_RESULTS, postgres, 2), [low, high] if postgres else
                                         [low.isoformat(), high.isoformat()])
    by_channel = {r["channel"]: int(r["n"]) for r in rows}
    return {"sent": sum(by_channel.values()), "by_channel": by_channel,
            "successful": sum(int(r["won"] or 0) for r in rows)}


def oa_text(values: dict) -> str:
    """The official-account message of a wake-up coupon (a customer-service text)."""
    return (f"好久不见！送您一张{values.get('amount', '')}元{values.get('title', '回归礼券')}，"
            f"{values.get('expires_on', '')}前有效，已放入卡包。")


async def deliver_oa(message: Any, *, oa_wechat: Any) -> None:
    """Send a queued `oa` message (channel "oa") to the member's official-account openid."""
    oa_openid = await Member.filter(id=message.member_id).first().values_list("oa_openid", flat=True)
    if not oa_openid:
        raise LookupError("member has no official-account openid")
    await oa_wechat.send_custom_text(openid=oa_openid, content=oa_text((message.payload or {}).get("values") or {}))
