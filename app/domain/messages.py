"""Subscription messages (订阅消息): the member's quota per template, and queueing messages.

WeChat lets a mini-program send one subscription message per acceptance the member gave in
`wx.requestSubscribeMessage`. We count acceptances per (member, template) in
SubscriptionQuota: `POST /mp/subscriptions` adds one per accepted template, each send spends
one (a conditional update checked by row count), and WeChat's 43101 (no acceptance left)
sets it to zero.

Messages are queued in the outbox (`enqueue`, `enqueue_many`) by the code that decides to
send them, with a unique key `{kind}:{member_id}:{period}` so a re-run never queues twice;
app/domain/outbox.py delivers them. A queued message carries semantic values
(`{"points": 120, "expires_on": "2026-12-31"}`); FIELDS below turns them into the
template's fields at send time, so a template change is a change of configuration here.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timezone
from typing import Any, Iterable, Mapping

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F

from app.errors import InvalidField
from app.models import SubscriptionQuota

KINDS = ("birthday", "points_expiry", "tier_upgrade", "coupon")

# The template fields of each kind, as configured in the WeChat console for the sandbox
# template ids (WECHAT_TEMPLATE_<KIND>), each naming the semantic value it shows.
# WeChat's field types constrain the values: thing ≤ 20 characters, number digits,
# amount money ("50元"), date "YYYY年MM月DD日" or "YYYY-MM-DD", time a date and time.
# A value missing from the message falls back to DEFAULTS[kind][name], else the message
# cannot be sent (it goes to the dead letters with last_error "missing_value:<name>").
#
#   kind            semantic values the enqueuer gives
#   birthday        title (coupon name), amount (yuan), expires_on, note?
#   points_expiry   points, expires_on, title?
#   tier_upgrade    tier (the new tier's name), date, note?
#   coupon          title (coupon name), amount (yuan), expires_on
FIELDS: dict[str, dict[str, str]] = {
    "birthday": {"thing1": "title", "amount2": "amount", "date3": "expires_on", "thing4": "note"},
    "points_expiry": {"thing1": "title", "number2": "points", "time3": "expires_on"},
    "tier_upgrade": {"thing1": "tier", "date2": "date", "thing3": "note"},
    "coupon": {"thing1": "title", "amount2": "amount", "date3": "expires_on"},
}
DEFAULTS: dict[str, dict[str, str]] = {
    "birthday": {"note": "生日快乐，券已放入卡包"},
    "points_expiry": {"title": "您有积分即将过期"},
    "tier_upgrade": {"note": "新权益已生效"},
    "coupon": {},
}
THING_MAX = 20
# Rows per INSERT: 9 parameters each stays far below PostgreSQL's 32767 and SQLite's limits.
CHUNK = 1000


class MissingValue(ValueError):
    """A template field has no value in the message and no default."""


def template_kinds(templates: Mapping[str, str]) -> dict[str, str]:
    """template id → kind, for the configured templates."""
    return {template_id: kind for kind, template_id in templates.items()}


def render(kind: str, values: Mapping[str, Any]) -> dict[str, str]:
    """The `data` of a subscription message of `kind` from its semantic values (FIELDS)."""
    data: dict[str, str] = {}
    for field, name in FIELDS[kind].items():
        value = values.get(name, DEFAULTS[kind].get(name))
        if value is None or value == "":
            raise MissingValue(name)
        data[field] = _format(field, value)
    return data


def _format(field: str, value: Any) -> str:
    if isinstance(value, datetime):
        value = value.strftime("%Y-%m-%d %H:%M")
    elif isinstance(value, date):
        value = value.isoformat()
    text = str(value)
    if field.startswith("thing") and len(text) > THING_MAX:
        # WeChat rejects a longer thing (47003): shorten rather than lose the message.
        text = text[: THING_MAX - 1] + "…"
    if field.startswith("amount") and text.replace(".", "", 1).isdigit():
        text = f"{text}元"
    return text


# -- quota -----------------------------------------------------------------------------------


async def accept(*, member_id: int, accepted: Iterable[str], templates: Mapping[str, str]) -> list[dict]:
    """Each template the member accepted in wx.requestSubscribeMessage is one more send
    (422 naming `accepted` for an id that is not one of our templates). Returns the quotas."""
    wanted = list(dict.fromkeys(accepted))  # wx answers one verdict per template id
    known = set(templates.values())
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise InvalidField("accepted", f"unknown template id(s): {', '.join(unknown)[:200]}")
    for template_id in wanted:
        await _add_one(member_id=member_id, template_id=template_id)
    return await quotas(member_id=member_id, templates=templates)


async def _add_one(*, member_id: int, template_id: str) -> None:
    # Update first (the common case once a row exists); create on the first acceptance; a
    # concurrent create loses on the unique (member, template) and then updates.
    for _ in range(2):
        if await SubscriptionQuota.filter(member_id=member_id, template_id=template_id).update(
                remaining=F("remaining") + 1):
            return
        try:
            await SubscriptionQuota.create(member_id=member_id, template_id=template_id, remaining=1)
            return
        except IntegrityError:
            continue
    raise AssertionError("the quota row exists after a conflicting create")


async def quotas(*, member_id: int, templates: Mapping[str, str]) -> list[dict]:
    """The member's remaining sends for every configured template (0 when never accepted)."""
    rows = dict(await SubscriptionQuota.filter(member_id=member_id)
                .values_list("template_id", "remaining"))
    return [{"kind": kind, "template_id": template_id, "remaining": rows.get(template_id, 0)}
            for kind, template_id in templates.items()]


async def spend(*, member_id: int, template_id: str) -> bool:
    """Take one send from the quota; False when none is left (nothing may be sent)."""
    return bool(await SubscriptionQuota.filter(
        member_id=member_id, template_id=template_id, remaining__gt=0,
    ).update(remaining=F("remaining") - 1))


async def give_back(*, member_id: int, template_id: str) -> None:
    """Return a spent send: WeChat did not deliver (it only consumes an acceptance on success)."""
    await SubscriptionQuota.filter(member_id=member_id, template_id=template_id).update(
        remaining=F("remaining") + 1)


async def exhaust(*, member_id: int, template_id: str) -> None:
    """WeChat said 43101: the member has no acceptance left for this template, whatever we counted."""
    await SubscriptionQuota.filter(member_id=member_id, template_id=template_id).update(remaining=0)


# -- queueing --------------------------------------------------------------------------------


def message_key(kind: str, member_id: int, period: str) -> str:
    return f"{kind}:{member_id}:{period}"


async def enqueue(*, member_id: int, kind: str, period: str, values: dict, now: datetime,
                  page: str | None = None, conn: BaseDBAsyncClient | None = None,
                  channel: str = "subscribe") -> bool:
    """Queue one message, keyed `{kind}:{member_id}:{period}`; False when that key was queued
    before (a re-run never queues twice). Safe inside the caller's transaction (`conn`):
    a duplicate does not abort it."""
    row = {"member_id": member_id, "kind": kind, "period": period, "values": values, "page": page,
           "channel": channel}
    return await enqueue_many([row], now=now, conn=conn) == 1


async def enqueue_many(rows: Iterable[Mapping[str, Any]], *, now: datetime,
                       conn: BaseDBAsyncClient | None = None) -> int:
    """Queue many messages at once (`rows`: dicts with member_id, kind, period, values, and
    optional page and channel); returns how many were new. INSERT … ON CONFLICT DO NOTHING
    in chunks of 1000, so hundreds of thousands cost a few hundred statements."""
    conn = conn or connections.get("default")
    postgres = conn.capabilities.dialect == "postgres"
    # Raw SQL bypasses Tortoise's conversion: store UTC like the ORM does (SQLite keeps text).
    at = now.astimezone(timezone.utc)
    inserted, chunk = 0, []
    for row in rows:
        payload = {"values": dict(row["values"])}
        if row.get("page"):
            payload["page"] = row["page"]
        chunk.append([
            message_key(row["kind"], row["member_id"], row["period"]), row.get("channel", "subscribe"),
            row["kind"], row["member_id"], json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
                                                      default=str),
            "pending", 0, at, at,
        ])
        if len(chunk) == CHUNK:
            inserted += await _insert(conn, chunk, postgres)
            chunk = []
    if chunk:
        inserted += await _insert(conn, chunk, postgres)
    return inserted


_COLUMNS = "(key, channel, kind, member_id, payload, status, attempts, next_attempt_at, created_at)"


async def _insert(conn: BaseDBAsyncClient, chunk: list[list], postgres: bool) -> int:
    values = [v for row in chunk for v in row]
    width = len(chunk[0])
    if postgres:
        groups = ", ".join(
            "(" + ", ".join(f"${i * width + j + 1}" + ("::jsonb" if j == 4 else "") for j in range(width)) + ")"
            for i in range(len(chunk)))
        # Tortoise reads no row count from a bare INSERT on asyncpg: count what RETURNING gives.
        sql = (f"WITH ins AS (INSERT INTO outbox_message {_COLUMNS} VALUES {groups} "
               f"ON CONFLICT (key) DO NOTHING RETURNING 1) SELECT count(*) AS n FROM ins")
        rows = await conn.execute_query_dict(sql, values)
        return int(rows[0]["n"])
    groups = ", ".join("(" + ", ".join("?" * width) + ")" for _ in chunk)
    count, _ = await conn.execute_query(
        f"INSERT INTO outbox_message {_COLUMNS} VALUES {groups} ON CONFLICT (key) DO NOTHING", values)
    return count
