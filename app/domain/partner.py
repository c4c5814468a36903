"""The brand's own systems (`/partner`): the mall's and the tills' paid orders, their refunds, and
behaviour events, each once by its own number (order_no, refund_no, event_id): a repeat answers
what the first was answered.

A paid order earns points and growth as a WeChat Pay payment does (tier multiplier, member day):
it is recorded through payments.record_payment under its `transaction_id` when it has one, so
the same payment also reported by a Pay notification is credited once, whichever comes first;
else under `pn:{order_no}`. A payer not yet a member is credited when the member appears, as for
Pay. The part paid from stored value (`wallet_fen`) is spent from the wallet in proportion
(409 insufficient_balance when short) and earns nothing: its money earned when it was recharged
through Pay. A refund takes back the refunded share of the order: points and growth of the cash
part (payments.record_refund), and stored value returned to the lots it came from, in the
proportions taken (cumulative floor, so refunds adding up to the whole return it exactly).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from app.domain import payments, tasks, wallet
from app.domain.rules import Rules
from app.errors import Conflict, InvalidField, NotFound
from app.models import Member, PartnerEvent, PartnerOrder, PartnerRefund

log = logging.getLogger("app.partner")


@dataclass(frozen=True)
class Answer:
    body: dict
    created: bool


async def _payer(*, appid: str, member_id: int | None, openid: str | None) -> tuple[int | None, str]:
    """(member id or None, openid) of whoever the brand names; an unknown member_id is 404."""
    if member_id is not None:
        row = await Member.filter(id=member_id).first().values("id", "openid")
        if row is None:
            raise NotFound(f"member {member_id} not found", code="member_not_found")
        return int(row["id"]), row["openid"]
    found = await Member.filter(appid=appid, openid=openid).first().values_list("id", flat=True)
    return (int(found) if found is not None else None), str(openid)


async def record_order(*, redis: Redis | None, rules: Rules, appid: str, order_no: str, member_id: int | None,
                       openid: str | None, paid_fen: int, wallet_fen: int, paid_at: datetime, channel: str,
                       transaction_id: str | None, now: datetime, tz: ZoneInfo) -> Answer:
    """A paid order of the mall or a till, once per order_no (see the module's rules)."""
    first = await PartnerOrder.get_or_none(order_no=order_no)
    if first is not None:
        return await _answer_order(redis=redis, rules=rules, appid=appid, order=first, now=now, tz=tz, created=False)
    if wallet_fen > paid_fen:
        raise InvalidField("wallet_fen", "cannot be more than paid_fen")
    who, payer_openid = await _payer(appid=appid, member_id=member_id, openid=openid)
    if wallet_fen and who is None:
        raise wallet.InsufficientBalance("a payer who is not a member has no stored value")
    if not wallet_fen:
        return await _cash_order(redis=redis, rules=rules, appid=appid, order=PartnerOrder(
            order_no=order_no, member_id=who, openid=payer_openid, channel=channel, paid_fen=paid_fen,
            wallet_fen=0, paid_at=paid_at, transaction_id=transaction_id or f"pn:{order_no}"), now=now, tz=tz)
    try:
        async with in_transaction() as conn:
            order = await PartnerOrder.create(
                order_no=order_no, member_id=who, openid=payer_openid, channel=channel, paid_fen=paid_fen,
                wallet_fen=wallet_fen, paid_at=paid_at, transaction_id=transaction_id or f"pn:{order_no}",
                using_db=conn)
            if wallet_fen:
                taken = await wallet.debit(conn=conn, member_id=who, amount_fen=wallet_fen, reason="spend",
                                           key=f"spend:{order_no}", now=now, note=order_no)
                await PartnerOrder.filter(id=order.id).using_db(conn).update(
                    wallet_principal_fen=taken.principal_fen, wallet_bonus_fen=taken.bonus_fen)
                order.wallet_principal_fen, order.wallet_bonus_fen = taken.principal_fen, taken.bonus_fen
    except IntegrityError:  # the same order_no racing: the first one's answer
        order = await PartnerOrder.get_or_none(order_no=order_no)
        if order is None:
            raise
        return await _answer_order(redis=redis, rules=rules, appid=appid, order=order, now=now, tz=tz, created=False)
    return await _answer_order(redis=redis, rules=rules, appid=appid, order=order, now=now, tz=tz, created=True)


async def _credit_cash(*, redis: Redis | None, rules: Rules, appid: str, order: PartnerOrder, now: datetime,
                       tz: ZoneInfo) -> dict:
    """Record the order's cash part as a payment (once by transaction_id) and build its answer."""
    cash = int(order.paid_fen) - int(order.wallet_fen)
    outcome = await payments.record_payment(
        redis=redis, rules=rules, appid=appid, transaction_id=order.transaction_id, out_trade_no=order.order_no,
        openid=order.openid, total_fen=cash, payer_total_fen=cash, paid_at=order.paid_at, now=now, tz=tz,
        source="partner" if order.transaction_id.startswith("pn:") else "v3")
    body = {"order_no": order.order_no, "member_id": outcome.member_id or order.member_id,
            "points": outcome.points, "growth": outcome.growth, "credited": outcome.member_id is not None,
            "wallet_fen": int(order.wallet_fen), "wallet_principal_fen": int(order.wallet_principal_fen or 0),
            "wallet_bonus_fen": int(order.wallet_bonus_fen or 0)}
    if order.member_id is not None and order.wallet_fen:
        body["balance_fen"] = (await wallet.balance(member_id=order.member_id)).balance_fen
    return body


async def _cash_order(*, redis: Redis | None, rules: Rules, appid: str, order: PartnerOrder, now: datetime,
                      tz: ZoneInfo) -> Answer:
    """An order paid without stored value: its payment first (idempotent: a racing copy of the
    order is a repeat there), then the order row with its answer, whose unique order_no makes
    the first copy's answer the one every copy gets."""
    body = await _credit_cash(redis=redis, rules=rules, appid=appid, order=order, now=now, tz=tz)
    order.answer = body
    try:
        await order.save()
    except IntegrityError:
        first = await PartnerOrder.get(order_no=order.order_no)
        return Answer(first.answer or body, False)
    return Answer(body, True)


async def _answer_order(*, redis: Redis | None, rules: Rules, appid: str, order: PartnerOrder, now: datetime,
                        tz: ZoneInfo, created: bool) -> Answer:
    """Credit the order's cash part (idempotent by transaction_id: also re-driven by a repeat when
    a failure came between the order's commit and it) and keep the first answer."""
    if order.answer is not None:
        return Answer(order.answer, created)
    body = await _credit_cash(redis=redis, rules=rules, appid=appid, order=order, now=now, tz=tz)
    if not await PartnerOrder.filter(id=order.id, answer__isnull=True).update(answer=body):
        body = (await PartnerOrder.get(id=order.id)).answer or body  # a racing repeat answered first
    return Answer(body, created)


async def refund_order(*, rules: Rules, order_no: str, refund_no: str, refund_fen: int, now: datetime) -> Answer:
    """A refund of a partner order, once per refund_no: 404 order_not_found, 409 over_refund beyond
    what is left of it. Its stored-value share goes back to the wallet's lots in the proportions
    taken, its cash share takes back points and growth as a Pay refund does."""
    refund = await PartnerRefund.get_or_none(refund_no=refund_no)
    if refund is not None and refund.answer is not None:
        return Answer(refund.answer, False)
    order = await PartnerOrder.get_or_none(order_no=order_no)
    if order is None:
        raise NotFound(f"order {order_no} not found", code="order_not_found")
    created = refund is None
    if created:
        try:
            refund = await _refund_wallet_share(order=order, refund_no=refund_no, refund_fen=refund_fen, now=now)
        except IntegrityError:  # the same refund_no racing
            refund = await PartnerRefund.get_or_none(refund_no=refund_no)
            if refund is None:
                raise
            created = False
            if refund.answer is not None:
                return Answer(refund.answer, False)
    if refund.order_id != order.id:
        raise Conflict(f"refund_no {refund_no} belongs to another order", code="refund_no_used")
    outcome = None
    if refund.cash_fen > 0:  # idempotent by its refund id: a repeat re-drives it
        outcome = await payments.record_refund(rules=rules, refund_id=f"pn:{refund_no}",
                                               transaction_id=order.transaction_id, refund_fen=int(refund.cash_fen),
                                               now=now)
    body = {"refund_no": refund_no, "order_no": order_no, "refund_fen": int(refund.refund_fen),
            "wallet_principal_fen": int(refund.wallet_principal_fen), "wallet_bonus_fen": int(refund.wallet_bonus_fen),
            "points_taken": outcome.points_taken if outcome else 0,
            "growth_taken": outcome.growth_taken if outcome else 0}
    if order.member_id is not None and order.wallet_fen:
        body["balance_fen"] = (await wallet.balance(member_id=order.member_id)).balance_fen
    await PartnerRefund.filter(id=refund.id, answer__isnull=True).update(answer=body)
    return Answer((await PartnerRefund.get(id=refund.id)).answer or body, created)


async def _refund_wallet_share(*, order: PartnerOrder, refund_no: str, refund_fen: int, now: datetime) -> PartnerRefund:
    """In one transaction: the order's refunded total (a conditional UPDATE: never beyond the
    whole, and the order's row lock for what follows), the refund row, and its stored value back
    into the lots it was taken from: cumulative floor(taken × refunded / paid) per side minus
    what earlier refunds gave; the rest of the refund is its cash share."""
    total = int(order.paid_fen)
    async with in_transaction() as conn:
        moved = await PartnerOrder.filter(id=order.id, refunded_fen__lte=total - refund_fen).using_db(conn) \
            .update(refunded_fen=F("refunded_fen") + refund_fen)
        if not moved:
            raise Conflict(f"order {order.order_no} has less than {refund_fen} fen left to refund", code="over_refund")
        row = await PartnerOrder.get(id=order.id).using_db(conn)
        earlier = await PartnerRefund.filter(order_id=order.id).using_db(conn) \
            .values_list("wallet_principal_fen", "wallet_bonus_fen")
        back_p, back_b = sum(int(p) for p, _ in earlier), sum(int(b) for _, b in earlier)
        refunded = int(row.refunded_fen)
        give_p = max(0, int(row.wallet_principal_fen) * refunded // total - back_p)
        give_b = max(0, int(row.wallet_bonus_fen) * refunded // total - back_b)
        refund = await PartnerRefund.create(refund_no=refund_no, order_id=order.id, refund_fen=refund_fen,
                                            wallet_principal_fen=give_p, wallet_bonus_fen=give_b,
                                            cash_fen=refund_fen - give_p - give_b, using_db=conn)
        if give_p or give_b:
            await wallet.restore(conn=conn, member_id=row.member_id, debit_key=f"spend:{row.order_no}",
                                 principal_fen=give_p, bonus_fen=give_b, reason="unspend",
                                 key=f"unspend:{refund_no}", now=now, note=row.order_no)
    return refund


async def record_event(*, redis: Redis, rules: Rules, appid: str, event_id: str, member_id: int | None,
                       openid: str | None, kind: str, now: datetime, tz: ZoneInfo) -> Answer:
    """A task done in the brand's systems (a `review` after moderation): its task points once per
    event_id, under the daily and weekly caps (tasks.record_event); a repeat answers the first
    answer. The member must be known (404 member_not_found): a task has no one to wait for."""
    first = await PartnerEvent.get_or_none(event_id=event_id)
    if first is not None:
        return Answer(first.answer, False)
    who, payer_openid = await _payer(appid=appid, member_id=member_id, openid=openid)
    if who is None:
        raise NotFound("no member has this openid", code="member_not_found")
    result = await tasks.record_event(event_id=event_id, member_id=who, kind=kind, now=now, tz=tz,
                                      redis=redis, rules=rules)
    body = {"event_id": event_id, "member_id": who, "kind": kind, "points": result.points_awarded,
            "capped": result.points_awarded < result.wanted}
    try:
        await PartnerEvent.create(event_id=event_id, member_id=who, openid=payer_openid, kind=kind, answer=body)
    except IntegrityError:
        return Answer((await PartnerEvent.get(event_id=event_id)).answer, False)
    return Answer(body, not result.duplicate)
