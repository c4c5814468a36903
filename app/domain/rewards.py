"""The points mall (积分商城): items for points, or points + cash paid through WeChat Pay.

A redemption spends the points and one unit of stock in one transaction. Stock moves by a
conditional UPDATE (never below zero); the per-member limit counts redemptions that are not
released, and is made race-safe by the ledger's unique key: the n-th redemption of a reward by
a member debits under `redeem:{reward}:{member}:{n}`, so two racing requests for the same slot
cannot both commit. A points + cash item stays "pending" with its points held until WeChat
Pay's notification marks it "done" (`on_paid`); its JSAPI order carries `time_expire` = the
hold's end. Unpaid after 15 minutes it is released (`release_expired`): the order is closed, the
points come back into the lots they were spent from (their own expiry: `release:{redemption}`,
points.restore) and the stock +1. A payment that still arrives after the release is refunded
(status refund_due, then refunded). A refund of a paid one gives back its share (`reverse`).
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from app.domain import blacklist, coupons, points
from app.domain import rules as rules_mod
from app.errors import Conflict, InvalidField, NotFound, Unavailable
from app.models import AuditLog, Coupon, CouponTemplate, Member, Redemption, Reward
from app.wechat.pay_client import PayClient, PayError, PayUnavailable

log = logging.getLogger("app.rewards")

HOLD = timedelta(minutes=15)
PENDING, DONE, RELEASED = "pending", "done", "released"
# A payment after the release: refund_due until WeChat Pay accepted our refund, then refunded.
# A paid redemption refunded in full is refunded too (points and stock back).
REFUND_DUE, REFUNDED = "refund_due", "refunded"
HELD = (PENDING, DONE)  # what counts against the per-member limit


@dataclass(frozen=True)
class Redeemed:
    """A redemption as the member sees it right after: the points balance, and for a cash item
    the wx.requestPayment params."""

    redemption: Redemption
    reward: Reward
    balance: int
    pay_params: dict[str, str] | None = None
    coupon: Coupon | None = None


def is_on_sale(reward: Reward, now: datetime) -> bool:
    return reward.active and (reward.valid_until is None or reward.valid_until > now)


async def catalogue(*, member_id: int, now: datetime) -> list[tuple[Reward, int]]:
    """Active, unexpired items (sold-out ones too, with stock 0), each with how many of it the
    member holds (pending or done redemptions)."""
    items = [r for r in await Reward.filter(active=True).order_by("points", "id") if is_on_sale(r, now)]
    counts = dict(await Redemption.filter(member_id=member_id, status__in=HELD)
                  .annotate(n=Count("id")).group_by("reward_id").values_list("reward_id", "n"))
    return [(r, int(counts.get(r.id, 0))) for r in items]


async def redeem(*, reward_id: int, member_id: int, now: datetime, pay: PayClient | None,
                 notify_url: str | None) -> Redeemed:
    """Spend the item's points and one unit of stock at once (409 out_of_stock,
    insufficient_points, limit_reached); a cash item also places a WeChat Pay JSAPI order
    (503 pay_not_configured without a merchant key or a notify_url) and stays pending for 15 minutes."""
    reward = await Reward.get_or_none(id=reward_id)
    if reward is None or not is_on_sale(reward, now):
        raise NotFound("no such item in the points mall", code="reward_not_found")
    await blacklist.refuse_blacklisted(member_id=member_id)  # 403 blacklisted, before anything is spent
    cash = int(reward.cash_fen) > 0
    if cash and (pay is None or not notify_url):
        raise Unavailable("WeChat Pay is not configured for points + cash items", code="pay_not_configured")
    member = await Member.get_or_none(id=member_id)
    if member is None:
        raise NotFound("member not found", code="member_not_found")
    statuses = await Redemption.filter(member_id=member_id, reward_id=reward.id).values_list("status", flat=True)
    held = sum(1 for s in statuses if s in HELD)
    if held >= reward.per_member_limit:
        raise Conflict(f"at most {reward.per_member_limit} of this item per member", code="limit_reached")
    # Every redemption ever made (released too) numbers the slot, so the key is never reused.
    slot = len(statuses) + 1
    try:
        async with in_transaction() as conn:
            # Points first: the member's row lock is cheap; the reward's row is the hot one, so
            # it is taken last and held for as short a time as possible.
            key = f"redeem:{reward.id}:{member_id}:{slot}"
            posting = await points.debit(conn=conn, member_id=member_id, amount=int(reward.points),
                                         reason="redeem", key=key, now=now, note=reward.name[:255],
                                         keep_lots=cash)
            taken = await Reward.filter(id=reward.id, stock__gt=0).using_db(conn).update(stock=F("stock") - 1)
            if not taken:
                raise Conflict("this item is out of stock", code="out_of_stock")
            redemption = await Redemption.create(
                reward_id=reward.id, member_id=member_id, points=int(reward.points),
                cash_fen=int(reward.cash_fen), status=PENDING if cash else DONE,
                out_trade_no=_trade_no() if cash else None,
                expires_at=(now + HOLD).astimezone(timezone.utc) if cash else None,
                ledger_key=key if cash else None, using_db=conn)
            coupon = None
            if not cash and reward.coupon_template_id is not None:
                coupon = await _issue_coupon(conn=conn, redemption=redemption, now=now)
    except IntegrityError:
        raise Conflict("another redemption of this item is in progress; try again",
                       code="redeem_in_progress") from None
    if not cash:
        return Redeemed(redemption=redemption, reward=reward, balance=posting.balance, coupon=coupon)
    return await _place_order(redemption=redemption, reward=reward, member=member, pay=pay,
                              notify_url=notify_url, balance=posting.balance, now=now)


async def _issue_coupon(*, conn, redemption: Redemption, now: datetime) -> Coupon | None:
    """The item's coupon, if it has one, issued once per redemption (`reward:{redemption}`)."""
    template_id = (await Reward.get(id=redemption.reward_id).using_db(conn)).coupon_template_id
    if template_id is None:
        return None
    template = await CouponTemplate.get(id=template_id).using_db(conn)
    coupon, _ = await coupons.issue(member_id=redemption.member_id, template=template,
                                    issue_key=f"reward:{redemption.id}", now=now, conn=conn)
    return coupon


def _trade_no() -> str:
    # "rd" tells payments.on_notification this order is a points-mall redemption.
    return "rd" + secrets.token_hex(15)


async def _place_order(*, redemption: Redemption, reward: Reward, member: Member, pay: PayClient,
                       notify_url: str, balance: int, now: datetime) -> Redeemed:
    """The JSAPI order, outside the transaction (no row lock held over the network); if WeChat
    Pay refuses or is down, the hold is released at once."""
    try:
        prepay_id = await pay.create_jsapi_order(
            description=reward.name, out_trade_no=redemption.out_trade_no,
            amount_fen=int(reward.cash_fen), openid=member.openid, notify_url=notify_url,
            time_expire=redemption.expires_at)
    except PayError as exc:
        await release(redemption_id=redemption.id, now=now, pay=pay)
        if isinstance(exc, PayUnavailable):
            raise Unavailable("WeChat Pay is not answering, try again shortly", code="pay_unavailable") from None
        raise Unavailable(f"WeChat Pay refused the order ({exc.code})", code="pay_failed") from None
    await Redemption.filter(id=redemption.id).update(prepay_id=prepay_id)
    redemption.prepay_id = prepay_id
    params = await pay.jsapi_params(prepay_id=prepay_id, timestamp=int(now.timestamp()))
    return Redeemed(redemption=redemption, reward=reward, balance=balance, pay_params=params)


async def on_paid(*, out_trade_no: str, transaction_id: str, now: datetime, pay: PayClient | None = None) -> bool:
    """TRANSACTION.SUCCESS for a redemption's order: pending → done, once; its coupon, if any, is
    issued here. A payment of a released redemption (it came after the release) is refunded in
    full through WeChat Pay, once (out_refund_no `rl{id}`). True when this call completed it."""
    async with in_transaction() as conn:
        moved = await Redemption.filter(out_trade_no=out_trade_no, status=PENDING).using_db(conn) \
            .update(status=DONE, transaction_id=transaction_id)
        if moved:
            redemption = await Redemption.get(out_trade_no=out_trade_no).using_db(conn)
            await _issue_coupon(conn=conn, redemption=redemption, now=now)
    if moved:
        return True
    # Released first (the release job won the race, or the order was paid as it closed).
    await Redemption.filter(out_trade_no=out_trade_no, status=RELEASED).update(
        status=REFUND_DUE, transaction_id=transaction_id)
    row = await Redemption.get_or_none(out_trade_no=out_trade_no, status=REFUND_DUE)
    if row is not None:
        await refund_late_payment(redemption=row, pay=pay)
    return False


async def refund_late_payment(*, redemption: Redemption, pay: PayClient | None) -> bool:
    """Ask WeChat Pay to refund a payment that arrived after its hold was released: the whole
    cash amount under out_refund_no `rl{id}` (WeChat dedups it, so retries are safe); then
    refund_due → refunded. False (and still due, retried by the release job) when Pay fails."""
    if pay is None:
        log.warning("late payment of redemption %s: no pay client to refund it", redemption.id)
        return False
    refund_no = f"rl{redemption.id}"
    try:
        await pay.refund(transaction_id=str(redemption.transaction_id), out_refund_no=refund_no,
                         refund_fen=int(redemption.cash_fen), total_fen=int(redemption.cash_fen),
                         reason="积分商城订单已超时释放")
    except PayError as exc:
        log.warning("late payment of redemption %s: refund failed: %s", redemption.id, exc)
        return False
    await Redemption.filter(id=redemption.id, status=REFUND_DUE).update(status=REFUNDED, refund_no=refund_no)
    return True


async def reverse(*, conn, out_trade_no: str, refund_id: str, refunded_fen: int, total_fen: int,
                  now: datetime) -> int:
    """A refund of a paid redemption's order, inside the refund's transaction (which holds the
    payment's row lock): the points come back pro rata (cumulative floor(points × refunded /
    total), into their own lots: `unredeem:{refund_id}`); refunded in full, the stock +1 and
    status refunded. Nothing for a redemption not done (a late payment's refund: released
    already gave everything back). Returns the points given back."""
    row = await Redemption.filter(out_trade_no=out_trade_no, status=DONE).using_db(conn).first()
    if row is None:
        return 0
    total = max(1, int(total_fen))
    refunded = min(int(refunded_fen), total)
    target = int(row.points) * refunded // total
    give = max(0, target - int(row.points_returned))
    full = refunded >= total
    moved = await Redemption.filter(id=row.id, status=DONE, points_returned=row.points_returned) \
        .using_db(conn).update(points_returned=int(row.points_returned) + give, refunded_fen=refunded,
                               **({"status": REFUNDED} if full else {}))
    if not moved:
        return 0
    if give and row.ledger_key:
        await points.restore(conn=conn, member_id=row.member_id, debit_key=row.ledger_key, amount=give,
                             reason="unredeem", key=f"unredeem:{refund_id}", now=now)
    if full:
        await Reward.filter(id=row.reward_id).using_db(conn).update(stock=F("stock") + 1)
    return give


async def release(*, redemption_id: int, now: datetime, pay: PayClient | None = None) -> bool:
    """Give a pending redemption back: points into the lots they came from (`release:{id}`,
    their own expiry), stock +1, status released; then its order is closed.

    Conditional on pending, in the same transaction as the points, so a payment arriving at the
    same moment (`on_paid`) and the release cannot both win; a payment that lands anyway is
    refunded by `on_paid`."""
    expiry_months = (await rules_mod.load()).points.expiry_months
    async with in_transaction() as conn:
        moved = await Redemption.filter(id=redemption_id, status=PENDING).using_db(conn).update(status=RELEASED)
        if not moved:
            return False
        row = await Redemption.get(id=redemption_id).using_db(conn)
        if row.points > 0 and row.ledger_key:
            await points.restore(conn=conn, member_id=row.member_id, debit_key=row.ledger_key,
                                 amount=int(row.points), reason="release", key=f"release:{row.id}", now=now)
        elif row.points > 0:  # made before lots were kept: a fresh lot, as then
            await points.credit(conn=conn, member_id=row.member_id, amount=int(row.points), reason="release",
                                key=f"release:{row.id}", now=now, expiry_months=expiry_months)
        await Reward.filter(id=row.reward_id).using_db(conn).update(stock=F("stock") + 1)
    if pay is not None and row.out_trade_no and row.prepay_id:
        try:
            await pay.close_order(out_trade_no=row.out_trade_no)
        except PayError as exc:
            # ORDERPAID: the payment's notification is on its way and on_paid refunds it;
            # otherwise time_expire already stops WeChat taking it.
            log.info("closing order %s: %s", row.out_trade_no, exc)
    return True


async def release_expired(*, now: datetime, pay: PayClient | None = None) -> int:
    """Release every points + cash redemption still unpaid 15 minutes after it was made (and
    close its order); retry the refunds of late payments WeChat Pay did not accept yet."""
    released = 0
    # In UTC, as stored: SQLite compares datetimes as text, so offsets must match.
    cutoff = now.astimezone(timezone.utc)
    while True:
        ids = await Redemption.filter(status=PENDING, expires_at__lte=cutoff).order_by("id") \
            .limit(500).values_list("id", flat=True)
        for redemption_id in ids:
            released += await release(redemption_id=redemption_id, now=now, pay=pay)
        if len(ids) < 500:
            break
    if pay is not None:
        for row in await Redemption.filter(status=REFUND_DUE).order_by("id").limit(500):
            await refund_late_payment(redemption=row, pay=pay)
    return released


# -- operators ----------------------------------------------------------------------------------

async def create(*, name: str, points_cost: int, cash_fen: int, stock: int, per_member_limit: int,
                 valid_until: datetime | None, actor: str) -> Reward:
    """An operator adds an item (audited). Points and cash cannot both be zero."""
    name = (name or "").strip()
    if not name or len(name) > 64:
        raise InvalidField("name", "must be 1 to 64 characters")
    if points_cost == 0 and cash_fen == 0:
        raise InvalidField("points", "an item costs points, cash, or both")
    async with in_transaction() as conn:
        reward = await Reward.create(name=name, points=points_cost, cash_fen=cash_fen, stock=stock,
                                     per_member_limit=per_member_limit, valid_until=valid_until,
                                     using_db=conn)
        await AuditLog.create(actor=actor, action="rewards.create", target=f"reward:{reward.id}",
                              before=None, after=render_admin(reward), using_db=conn)
    return reward


async def listing(*, limit: int = 500) -> list[Reward]:
    """Every reward, newest first (the admin's catalogue, `limit` at most)."""
    return await Reward.all().order_by("-id").limit(limit)


async def redemptions(*, status: str | None = None, limit: int = 500) -> list[Redemption]:
    """The newest redemptions, of one status or all (the admin's view, `limit` at most)."""
    query = Redemption.filter(status=status) if status else Redemption.all()
    return await query.order_by("-id").limit(limit)


def render_admin(reward: Reward) -> dict:
    return {
        "id": reward.id, "name": reward.name, "points": int(reward.points),
        "cash_fen": int(reward.cash_fen), "stock": int(reward.stock),
        "per_member_limit": int(reward.per_member_limit), "active": reward.active,
        "valid_until": reward.valid_until.isoformat() if reward.valid_until else None,
        "coupon_template_id": reward.coupon_template_id,
    }


def render_redemption_admin(row: Redemption) -> dict:
    return {
        "id": row.id, "reward_id": row.reward_id, "member_id": row.member_id, "status": row.status,
        "points": int(row.points), "cash_fen": int(row.cash_fen), "out_trade_no": row.out_trade_no,
        "transaction_id": row.transaction_id, "refund_no": row.refund_no,
        "refunded_fen": int(row.refunded_fen), "points_returned": int(row.points_returned),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }
