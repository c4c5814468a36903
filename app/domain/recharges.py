"""Recharging stored value through WeChat Pay, and refunding a recharge.

An operator's package says "pay X, get Y bonus". `start` places a JSAPI order (out_trade_no
`rc…`, payable 15 minutes) after checking the principal cap (default 5,000 yuan, prepaid-card
rules for named cards: WALLET_PRINCIPAL_CAP_FEN): a recharge over it is refused before payment.
The payment notification credits principal and bonus once (`on_paid`: pending → paid is
conditional, and the lots' keys `recharge:{id}:…` are unique), and queues the shipping
information WeChat requires for virtual goods. A refund (an operator's, or a Pay refund of the
recharge's transaction) returns the recharge's unspent principal and takes back its unspent
bonus (wallet.reverse_recharge); a Pay refund of more than that is a visible item for operators.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from tortoise.transactions import in_transaction

from app import metrics
from app.domain import wallet
from app.errors import Conflict, InvalidField, NotFound, Unavailable
from app.models import AuditLog, Member, OutboxMessage, ReconciliationItem, Recharge, RechargePackage
from app.wechat.pay_client import PayClient, PayError, PayUnavailable

log = logging.getLogger("app.recharges")

ORDER_TTL = timedelta(minutes=15)
PENDING, PAID, REFUNDING, REFUNDED = "pending", "paid", "refunding", "refunded"
DEFAULT_CAP_FEN = 500_000


@dataclass(frozen=True)
class Started:
    recharge: Recharge
    pay_params: dict[str, str]


def trade_no() -> str:
    # "rc" tells the payment notification handler this order is a stored-value recharge.
    return "rc" + secrets.token_hex(15)


async def packages(*, active_only: bool = True) -> list[RechargePackage]:
    """The recharge packages, cheapest first."""
    query = RechargePackage.filter(active=True) if active_only else RechargePackage.all()
    return await query.order_by("pay_fen", "id")


async def create_package(*, name: str, pay_fen: int, bonus_fen: int, bonus_valid_days: int | None,
                         actor: str) -> RechargePackage:
    """An operator adds a package (audited): pay `pay_fen` (> 0), get `bonus_fen` more."""
    if pay_fen <= 0:
        raise InvalidField("pay_fen", "must be more than 0")
    async with in_transaction() as conn:
        row = await RechargePackage.create(name=name, pay_fen=pay_fen, bonus_fen=bonus_fen,
                                           bonus_valid_days=bonus_valid_days, using_db=conn)
        await AuditLog.create(actor=actor, action="wallet.package", target=f"package:{row.id}", before=None,
                              after=render_package(row), using_db=conn)
    return row


async def start(*, member_id: int, package_id: int, now: datetime, pay: PayClient | None, notify_url: str | None,
                cap_fen: int = DEFAULT_CAP_FEN) -> Started:
    """Place the JSAPI order for a package (503 pay_not_configured without Pay); 409
    principal_cap_exceeded when the member's principal plus the package's would pass the cap."""
    package = await RechargePackage.get_or_none(id=package_id, active=True)
    if package is None:
        raise NotFound("no such recharge package", code="package_not_found")
    if pay is None or not notify_url:
        raise Unavailable("WeChat Pay is not configured", code="pay_not_configured")
    member = await Member.get_or_none(id=member_id)
    if member is None:
        raise NotFound("member not found", code="member_not_found")
    await wallet.ensure(member_id=member_id)
    held = (await wallet.balance(member_id=member_id)).principal_fen
    if held + int(package.pay_fen) > cap_fen:
        raise Conflict(f"a member holds at most {cap_fen // 100} yuan of stored value "
                       f"({held} fen held)", code="principal_cap_exceeded")
    row = await Recharge.create(out_trade_no=trade_no(), member_id=member_id, package_id=package.id,
                                principal_fen=package.pay_fen, bonus_fen=package.bonus_fen,
                                bonus_valid_days=package.bonus_valid_days)
    try:
        prepay_id = await pay.create_jsapi_order(
            description=f"储值充值 {package.name}", out_trade_no=row.out_trade_no, amount_fen=int(package.pay_fen),
            openid=member.openid, notify_url=notify_url, time_expire=(now + ORDER_TTL).astimezone(timezone.utc))
    except PayUnavailable:
        raise Unavailable("WeChat Pay is not answering, try again shortly", code="pay_unavailable") from None
    except PayError as exc:
        raise Unavailable(f"WeChat Pay refused the order ({exc.code})", code="pay_failed") from None
    await Recharge.filter(id=row.id).update(prepay_id=prepay_id)
    row.prepay_id = prepay_id
    params = await pay.jsapi_params(prepay_id=prepay_id, timestamp=int(now.timestamp()))
    return Started(recharge=row, pay_params=params)


async def on_paid(*, out_trade_no: str, transaction_id: str, mchid: str, paid_at: datetime, now: datetime) -> bool:
    """TRANSACTION.SUCCESS of a recharge: credit its principal and bonus, once (pending → paid is
    conditional); queue the virtual-goods shipping upload. True when this call credited it."""
    member_id = await Recharge.filter(out_trade_no=out_trade_no).first().values_list("member_id", flat=True)
    if member_id is None:
        log.warning("payment of unknown recharge %s", out_trade_no)
        return False
    wallet_id = await wallet.ensure(member_id=member_id)
    async with in_transaction() as conn:
        moved = await Recharge.filter(out_trade_no=out_trade_no, status=PENDING).using_db(conn) \
            .update(status=PAID, transaction_id=transaction_id, paid_at=paid_at)
        if not moved:
            return False
        row = await Recharge.get(out_trade_no=out_trade_no).using_db(conn)
        expires = now + timedelta(days=row.bonus_valid_days) if row.bonus_valid_days else None
        await wallet.credit(conn=conn, member_id=row.member_id, wallet_id=wallet_id,
                            principal_fen=int(row.principal_fen), bonus_fen=int(row.bonus_fen), reason="recharge",
                            key=f"recharge:{row.id}", now=now, bonus_expires_at=expires, recharge_id=row.id,
                            note=out_trade_no)
        openid = await Member.filter(id=row.member_id).using_db(conn).first().values_list("openid", flat=True)
        await OutboxMessage.create(
            key=f"shipping:{row.id}", channel="shipping", kind="virtual", member_id=row.member_id,
            payload=shipping_info(transaction_id=transaction_id, mchid=mchid, out_trade_no=out_trade_no,
                                  openid=openid, now=now),
            status="pending", next_attempt_at=now.astimezone(timezone.utc), using_db=conn)
    return True


def shipping_info(*, transaction_id: str, mchid: str, out_trade_no: str, openid: str, now: datetime) -> dict:
    """The body of `/wxa/sec/order/upload_shipping_info` for a virtual good (logistics_type 3)."""
    return {
        "order_key": {"order_number_type": 2, "transaction_id": transaction_id, "mchid": mchid,
                      "out_trade_no": out_trade_no},
        "logistics_type": 3, "delivery_mode": 1,
        "shipping_list": [{"item_desc": "储值充值"}],
        "upload_time": now.isoformat(timespec="seconds"),
        "payer": {"openid": openid},
    }


@dataclass(frozen=True)
class Refunded:
    recharge: Recharge
    refund_fen: int
    bonus_taken_back_fen: int
    principal_spent_fen: int
    bonus_spent_fen: int


async def _reverse(*, recharge_id: int, to: str, now: datetime) -> wallet.RechargeReversal | None:
    """paid → `to`, and the recharge's lots emptied, in one transaction; None if not paid."""
    async with in_transaction() as conn:
        moved = await Recharge.filter(id=recharge_id, status=PAID).using_db(conn).update(
            status=to, refund_no=f"rr{recharge_id}")
        if not moved:
            return None
        row = await Recharge.get(id=recharge_id).using_db(conn)
        out = await wallet.reverse_recharge(conn=conn, member_id=row.member_id, recharge_id=row.id, now=now)
        await Recharge.filter(id=recharge_id).using_db(conn).update(
            refunded_principal_fen=out.refund_fen, bonus_taken_back_fen=out.bonus_taken_back_fen)
    return out


async def refund(*, recharge_id: int, actor: str, now: datetime, pay: PayClient | None) -> Refunded:
    """An operator refunds a recharge: its unspent principal goes back through WeChat Pay
    (out_refund_no `rr{id}`: a retry is the same refund), its unspent bonus is taken back; what
    was spent stays spent and is shown. 409 not_refundable unless paid; a Pay failure is 503
    and the same call again retries it."""
    row = await Recharge.get_or_none(id=recharge_id)
    if row is None:
        raise NotFound("no such recharge", code="recharge_not_found")
    out = await _reverse(recharge_id=recharge_id, to=REFUNDING, now=now)
    if out is not None:
        await AuditLog.create(actor=actor, action="wallet.refund", target=f"recharge:{recharge_id}", before=None,
                              after={"refund_fen": out.refund_fen, "bonus_taken_back_fen": out.bonus_taken_back_fen})
    row = await Recharge.get(id=recharge_id)
    if row.status not in (REFUNDING, REFUNDED):
        raise Conflict(f"a {row.status} recharge cannot be refunded", code="not_refundable")
    if row.status == REFUNDING:
        if int(row.refunded_principal_fen) > 0:
            if pay is None:
                raise Unavailable("WeChat Pay is not configured", code="pay_not_configured")
            try:
                await pay.refund(transaction_id=str(row.transaction_id), out_refund_no=str(row.refund_no),
                                 refund_fen=int(row.refunded_principal_fen), total_fen=int(row.principal_fen),
                                 reason="储值退款")
            except PayError as exc:
                log.warning("refund of recharge %s failed: %s", recharge_id, exc)
                raise Unavailable("WeChat Pay did not take the refund; try again", code="pay_unavailable") from None
        await Recharge.filter(id=recharge_id, status=REFUNDING).update(status=REFUNDED)
        row = await Recharge.get(id=recharge_id)
    return _refunded(row)


def _refunded(row: Recharge) -> Refunded:
    return Refunded(recharge=row, refund_fen=int(row.refunded_principal_fen),
                    bonus_taken_back_fen=int(row.bonus_taken_back_fen),
                    principal_spent_fen=int(row.principal_fen) - int(row.refunded_principal_fen),
                    bonus_spent_fen=max(0, int(row.bonus_fen) - int(row.bonus_taken_back_fen)))


async def on_refunded(*, out_trade_no: str, refund_id: str, refund_fen: int, now: datetime) -> None:
    """REFUND.SUCCESS of a recharge's transaction. Ours (`rr{id}`, the recharge is refunding):
    done. One made elsewhere (the merchant platform): the recharge is reversed now; refunding
    more than its unspent principal paid out money already spent, which is never hidden: an
    `overrefund` item for operators and a counter."""
    row = await Recharge.get_or_none(out_trade_no=out_trade_no)
    if row is None:
        return
    out = await _reverse(recharge_id=row.id, to=REFUNDED, now=now)
    await Recharge.filter(id=row.id, status=REFUNDING).update(status=REFUNDED)
    if out is None:
        return
    if refund_fen > out.refund_fen:
        log.error("recharge %s refunded %s fen through Pay, only %s fen unspent", row.id, refund_fen, out.refund_fen)
        metrics.RECONCILIATION_MISMATCHES.labels(kind="overrefund").inc()
        await ReconciliationItem.get_or_create(
            bill_date=now.date(), trade="refund", reference=refund_id,
            defaults={"kind": "overrefund", "ours_fen": out.refund_fen, "theirs_fen": refund_fen})


def render_package(row: RechargePackage) -> dict:
    return {"id": row.id, "name": row.name, "pay_fen": int(row.pay_fen), "bonus_fen": int(row.bonus_fen),
            "bonus_valid_days": row.bonus_valid_days, "active": row.active}


def render(row: Recharge) -> dict:
    return {"id": row.id, "out_trade_no": row.out_trade_no, "status": row.status,
            "principal_fen": int(row.principal_fen), "bonus_fen": int(row.bonus_fen),
            "transaction_id": row.transaction_id,
            "refunded_principal_fen": int(row.refunded_principal_fen),
            "bonus_taken_back_fen": int(row.bonus_taken_back_fen)}


def render_refunded(out: Refunded) -> dict:
    return {"recharge": render(out.recharge), "refund_fen": out.refund_fen,
            "bonus_taken_back_fen": out.bonus_taken_back_fen, "principal_spent_fen": out.principal_spent_fen,
            "bonus_spent_fen": out.bonus_spent_fen}
