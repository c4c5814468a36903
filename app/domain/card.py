"""The WeChat member card (会员卡): linking a card to a member, one-click activation, and
keeping the card's bonus equal to the member's points.

Every points change of a member holding a card is queued by `enqueue` in the ledger's own
transaction (the durable outbox) and sent by the outbox worker through `push`
(`card/membercard/updateuser`, the absolute `bonus` + `record_bonus`), in order per member.
The push sends the member's balance as it is when sent, never a delta: a retried push is
harmless and the next push repairs one that died. `reconcile` re-pushes every card whose
bonus differs from the member's points.
"""
from __future__ import annotations

import json
import logging
from datetime import date, datetime, timezone
from typing import AsyncIterator

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from app.domain import ledger_events, members
from app.errors import Conflict
from app.models import LedgerEntry, Member, OutboxMessage
from app.wechat.client import WeChatClient, WeChatError

log = logging.getLogger("app.card")

# What the card's bonus history shows next to each change (record_bonus).
RECORD_TEXT = {
    "checkin": "签到奖励", "makeup": "补签", "pay": "消费积分", "refund": "退款扣回",
    "referral": "邀请奖励", "redeem": "积分兑换", "expire": "积分过期", "admin": "人工调整",
    "birthday": "生日礼遇", "task": "任务奖励", "release": "兑换取消退回", "unredeem": "兑换退款退回",
}
RECONCILE_TEXT = "积分校正"
RECONCILE_BATCH = 200

# One INSERT … SELECT: the outbox row exists only if the member holds a card, decided in the
# same statement, so the hot path of every ledger change costs one extra query.
_ENQUEUE_SQL = (
    'INSERT INTO outbox_message ("key", channel, kind, member_id, payload, status, attempts, '
    "next_attempt_at, created_at) "
    "SELECT {p1}, 'card', 'bonus', id, {p2}, 'pending', 0, {p3}, {p4} FROM member "
    "WHERE id = {p5} AND card_code IS NOT NULL"
)
_ENQUEUE = {
    "postgres": _ENQUEUE_SQL.format(p1="$1", p2="$2::jsonb", p3="$3::timestamptz", p4="$4::timestamptz",
                                    p5="$5"),
    "sqlite": _ENQUEUE_SQL.format(p1="?", p2="?", p3="?", p4="?", p5="?"),
}


_BALANCE_SQL = _ENQUEUE_SQL.replace("'bonus'", "'balance'")
_ENQUEUE_BALANCE = {
    "postgres": _BALANCE_SQL.format(p1="$1", p2="$2::jsonb", p3="$3::timestamptz", p4="$4::timestamptz",
                                    p5="$5"),
    "sqlite": _BALANCE_SQL.format(p1="?", p2="?", p3="?", p4="?", p5="?"),
}


async def enqueue_balance(*, conn: BaseDBAsyncClient, member_id: int, key: str, balance_fen: int, record: str,
                          now: datetime) -> None:
    """Queue the card's stored-value push (absolute `balance` + `record_balance`), only if the
    member holds a card; in the wallet change's transaction, after its balance UPDATE (the order
    per member is the outbox's card channel order)."""
    payload = json.dumps({"balance": int(balance_fen), "record_balance": record}, ensure_ascii=False,
                         separators=(",", ":"))
    at = now.astimezone(timezone.utc)  # raw SQL: UTC, as the ORM stores it
    await conn.execute_query(_ENQUEUE_BALANCE[conn.capabilities.dialect], [key, payload, at, at, member_id])


def record_text(reason: str) -> str:
    return RECORD_TEXT.get(reason, reason)


async def on_posted(conn: BaseDBAsyncClient, posted: ledger_events.Posted) -> None:
    """The ledger's subscriber: a member holding a card (as the balance UPDATE returned it) gets
    the entry's bonus push queued, in the entry's transaction (`enqueue`)."""
    if posted.member.get("card_code") is not None:
        # After the balance UPDATE: its row lock orders the card push against `link`.
        await enqueue(conn=conn, member_id=posted.member_id, entry=posted.entry, now=posted.now)


# Expiry's bulk hook: the bonus push of each entry just posted for a member holding a card, keyed
# `card:{entry.id}` so a retried chunk queues nothing twice, inserted in entry order since the
# outbox sends a member's card messages by id; the payload exactly as `enqueue` writes it.
_BULK_PUSHES = {
    "postgres": """
    INSERT INTO outbox_message ("key", channel, kind, member_id, payload, status, attempts,
                                next_attempt_at, created_at)
    SELECT 'card:' || posted.id, 'card', 'bonus', posted.member_id,
           jsonb_build_object('add_bonus', posted.delta, 'record_bonus', ${0}::text), 'pending', 0,
           ${1}::timestamptz, ${2}::timestamptz
    FROM {posted} JOIN member ON member.id = posted.member_id AND member.card_code IS NOT NULL
    ORDER BY posted.id
    ON CONFLICT ("key") DO NOTHING""",
    "sqlite": """
    INSERT OR IGNORE INTO outbox_message ("key", channel, kind, member_id, payload, status, attempts,
                                          next_attempt_at, created_at)
    SELECT 'card:' || posted.id, 'card', 'bonus', posted.member_id,
           json_object('add_bonus', posted.delta, 'record_bonus', ?{0}), 'pending', 0, ?{1}, ?{2}
    FROM {posted} JOIN member ON member.id = posted.member_id AND member.card_code IS NOT NULL
    ORDER BY posted.id""",
}


def on_bulk(bulk: ledger_events.BulkPosted) -> tuple[str, list]:
    """The bulk form of `on_posted` (issue 4): one INSERT … SELECT for a whole expiry chunk."""
    if bulk.dialect not in _BULK_PUSHES:
        raise NotImplementedError(f"card.on_bulk has no SQL for {bulk.dialect}")
    n = bulk.first_param
    sql = _BULK_PUSHES[bulk.dialect].replace("{posted}", bulk.posted)
    sql = sql.replace("{0}", str(n)).replace("{1}", str(n + 1)).replace("{2}", str(n + 2))
    # Created and due at the run's `now`, UTC like every outbox time (SQLite compares the text).
    at = bulk.now.astimezone(timezone.utc)
    moment = at if bulk.dialect == "postgres" else at.isoformat(" ")
    return sql, [record_text(bulk.reason), moment, moment]


async def enqueue(*, conn: BaseDBAsyncClient, member_id: int, entry: LedgerEntry, now: datetime) -> None:
    """Queue the card bonus push for one ledger entry, only if the member holds a card.

    Call it in the ledger entry's transaction, after the member's balance UPDATE: that row lock
    orders it against `link`, so a change is either in the card's init_bonus or queued, never
    both, never neither. Key `card:{entry.id}`: one push per entry, due at `now`. The payload
    keeps the entry's change for the record; the push itself sends the balance when it is sent.
    """
    payload = json.dumps({"add_bonus": int(entry.delta), "record_bonus": record_text(entry.reason)},
                         ensure_ascii=False, separators=(",", ":"))
    dialect = conn.capabilities.dialect
    if dialect not in _ENQUEUE:
        raise NotImplementedError(f"card.enqueue has no SQL for {dialect}")
    # raw SQL skips Tortoise's conversion: UTC, as the ORM stores it (SQLite compares text)
    at = now.astimezone(timezone.utc)
    await conn.execute_query(_ENQUEUE[dialect], [f"card:{entry.id}", payload, at, at, member_id])


async def push(message: OutboxMessage, *, wechat: WeChatClient) -> None:
    """Set the member's card to the member's balance as it is now (`updateuser` with the
    absolute `bonus`), with the queued change's `record_bonus`; raises WeChatError when WeChat
    refuses or is unreachable, so the outbox retries it. A card unlinked since the change was
    queued has nothing to update: the push is done."""
    member = await Member.get_or_none(id=message.member_id)
    if member is None or not member.card_code or not member.card_id:
        log.info("card push for a member without a card", extra={"fields": {"outbox": message.id}})
        return
    payload = message.payload or {}
    if message.kind == "balance":  # stored value: the absolute balance, so a lost push heals
        await wechat.membercard_updateuser(code=member.card_code, card_id=member.card_id,
                                           balance=int(payload.get("balance", 0)),
                                           record_balance=str(payload.get("record_balance", "")))
        return
    await wechat.membercard_updateuser(
        code=member.card_code, card_id=member.card_id, bonus=int(member.points),
        record_bonus=str(payload.get("record_bonus", "")),
    )


async def link(*, member_id: int, code: str, card_id: str) -> int:
    """Attach card `code` of `card_id` to the member and return the points the card starts
    with. Pending bonus pushes queued before are dropped: the starting balance includes them.

    The UPDATE takes the member's row lock before the balance is read, so a concurrent ledger
    change lands either before (in the balance) or after (queued by `enqueue`).
    A code already held by another member: 409 card_taken.
    """
    try:
        async with in_transaction() as conn:
            await Member.filter(id=member_id).using_db(conn).update(card_code=code, card_id=card_id)
            balance = await Member.filter(id=member_id).using_db(conn).first().values_list("points", flat=True)
            await OutboxMessage.filter(member_id=member_id, channel="card", status="pending") \
                .using_db(conn).update(status="skipped", last_error="superseded by the card's init_bonus")
    except IntegrityError:
        raise Conflict("this card is linked to another member", code="card_taken") from None
    return int(balance or 0)


async def unlink(*, code: str, card_id: str) -> int:
    """The member deleted the card: forget its code, drop its pending pushes; returns rows changed."""
    async with in_transaction() as conn:
        holders = await Member.filter(card_code=code).using_db(conn).values_list("id", flat=True)
        if not holders:
            return 0
        await Member.filter(id__in=holders).using_db(conn).update(card_code=None, card_id=None)
        await OutboxMessage.filter(member_id__in=holders, channel="card", status="pending") \
            .using_db(conn).update(status="skipped", last_error="card deleted")
    log.info("card unlinked", extra={"fields": {"card_id": card_id, "members": len(holders)}})
    return len(holders)


async def activate(*, wechat: WeChatClient, member_id: int, activate_ticket: str, code: str,
                   card_id: str, today: date) -> Member:
    """One-click activation: read the form WeChat collected (name, phone, birthday), activate
    our member with it (the same rules as POST /mp/card/activate, 422 naming the field), link
    the card and activate it on WeChat with the member's id and current points."""
    form = await wechat.membercard_activatetempinfo(activate_ticket)
    member = await members.activate_card(member_id=member_id, name=form["name"], phone=form["phone"],
                                         birthday=form["birthday"], today=today)
    balance = await link(member_id=member_id, code=code, card_id=card_id)
    await wechat.membercard_activate(membership_number=str(member.id), code=code, card_id=card_id,
                                     init_bonus=balance)
    member.card_code, member.card_id, member.points = code, card_id, balance
    return member


async def _push_until_settled(wechat: WeChatClient, *, member_id: int, code: str, card_id: str) -> int:
    """Push the balance, then read it again: an outbox push of a newer balance may have landed
    before ours, so push again until the balance read after a push is the one pushed."""
    balance = None
    for _ in range(5):
        fresh = int(await Member.filter(id=member_id).first().values_list("points", flat=True) or 0)
        if fresh == balance:
            break
        await wechat.membercard_updateuser(code=code, card_id=card_id, bonus=fresh, record_bonus=RECONCILE_TEXT)
        balance = fresh
    return int(balance or 0)


async def card_holders() -> int:
    """How many members hold a card (what `reconcile` goes through)."""
    return await Member.filter(card_code__isnull=False, card_id__isnull=False).count()


async def reconcile(*, wechat: WeChatClient, batch: int = RECONCILE_BATCH) -> AsyncIterator[tuple[int, list[dict]]]:
    """Compare every card's bonus (`card/membercard/userinfo/get`) with its member's points and
    push the balance (`updateuser`, absolute `bonus`) to each card that differs. Yields, per
    batch of members (keyset by id), how many were checked and what was repaired or failed:
    `{"member_id", "card": bonus or None, "points", "error"?}`."""
    last = 0
    while True:
        rows = await (Member.filter(id__gt=last, card_code__isnull=False, card_id__isnull=False)
                      .order_by("id").limit(batch).values_list("id", "card_code", "card_id", "points"))
        if not rows:
            return
        last = rows[-1][0]
        changed: list[dict] = []
        for member_id, code, card_id, balance in rows:
            try:
                shown = await wechat.membercard_userinfo(code=code, card_id=card_id)
                if int(shown.get("bonus") or 0) == int(balance):
                    continue
                pushed = await _push_until_settled(wechat, member_id=member_id, code=code, card_id=card_id)
                changed.append({"member_id": member_id, "card": shown.get("bonus"), "points": pushed})
            except WeChatError as exc:
                changed.append({"member_id": member_id, "card": None, "points": int(balance), "error": str(exc)})
        yield len(rows), changed
