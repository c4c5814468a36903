"""Payments and refunds from WeChat Pay: purchase points, growth, tiers and referral rewards, once.

A payment is recorded once by its transaction_id and a refund once by its refund_id (unique
constraints); the points they move are ledger entries keyed `pay:{transaction_id}` and
`refund:{refund_id}`. Out of the box (CONTRACT.md): 1 point per whole yuan of payer_total times
the tier's multiplier, rounded down, doubled on the member day (Thursday); not under the daily
cap. Growth: 1 per whole yuan. A refund takes back the refunded share of both.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from decimal import ROUND_FLOOR, Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from tortoise import timezone
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.functions import Sum
from tortoise.transactions import in_transaction

from app.domain import experiments, points, recharges, referral, rewards, tiers
from app.domain import rules as rules_module
from app.domain.rules import Rules
from app.errors import DomainError
from app.models import LedgerEntry, Member, Payment, Referral, Refund, TierChange

log = logging.getLogger("app.payments")

_CHINA = dt_timezone(timedelta(hours=8))


class PaymentNotRecorded(DomainError):
    """A refund arrived before its payment: WeChat must retry later (a non-2xx answer)."""

    status, code = 500, "payment_not_recorded"


@dataclass(frozen=True)
class PaymentOutcome:
    payment_id: int
    created: bool  # False: a repeat of a notification already recorded
    member_id: int | None
    points: int
    growth: int


@dataclass(frozen=True)
class RefundOutcome:
    refund_id: int
    created: bool
    points_taken: int
    growth_taken: int


def _floor(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def purchase_points(*, rules: Rules, payer_total_fen: int, tier: str, paid_at: datetime, tz: ZoneInfo) -> int:
    """1 point per whole yuan × the tier's multiplier, rounded down; ×2 on the member day (Thursday
    in APP_TIMEZONE of the payment's success time)."""
    yuan = max(0, int(payer_total_fen)) // 100
    # Decimal from the printed float: 100 × 1.15 must be 115, not 114.99999999999999.
    base = _floor(Decimal(yuan * rules.points.per_yuan) * Decimal(str(rules.tier(tier).multiplier)))
    if paid_at.astimezone(tz).weekday() == rules.member_day.weekday:
        base = _floor(Decimal(base) * Decimal(str(rules.member_day.multiplier)))
    return base


def purchase_growth(*, rules: Rules, payer_total_fen: int) -> int:
    """1 growth per whole yuan paid."""
    return max(0, int(payer_total_fen)) // 100 * rules.growth.per_yuan


async def _credit(*, conn: BaseDBAsyncClient, rules: Rules, member_id: int, transaction_id: str,
                  out_trade_no: str, paid_at: datetime, earned: int, growth: int, now: datetime) -> None:
    """Award one payment to its member inside the caller's transaction.

    The payment row must already name the member and carry `credited`, `points_awarded` and
    `growth_awarded` as `award_for` computed them (one write per row on the hot path).
    last_paid_at rides on the ledger's balance UPDATE, and the tier is re-read only when the
    growth that UPDATE returned reaches another tier (round trips are the cost here)."""
    if not (earned or growth):
        await Member.filter(id=member_id).using_db(conn).update(last_paid_at=paid_at)
    else:
        posting = await points.credit(conn=conn, member_id=member_id, amount=int(earned), reason="purchase",
                                      key=f"pay:{transaction_id}", now=now,
                                      expiry_months=rules.points.expiry_months, growth=int(growth),
                                      note=out_trade_no[:255], also={"last_paid_at": paid_at})
        if not tiers.variant(rules) and growth and rules.tier_for_growth(int(posting.growth or 0)).key != posting.tier:
            await tiers.follow_growth(conn=conn, member_id=member_id, rules=rules, cause="payment", now=now)
    await experiments.note_payment(conn=conn, member_id=member_id)  # A/B repurchase conversions
    if tiers.variant(rules):
        # Orders/spend basis or trial tiers: the order counts, and may upgrade a trial, in this transaction.
        await tiers.after_payment(conn=conn, member_id=member_id, rules=rules, transaction_id=transaction_id,
                                  paid_at=paid_at, now=now)


def award_for(*, rules: Rules, member: Member, payer_total_fen: int, paid_at: datetime,
              tz: ZoneInfo) -> tuple[int, int]:
    """(points, growth) a payment earns its member; a blacklisted member earns nothing (seed 004)."""
    if member.blacklisted:
        return 0, 0
    return (purchase_points(rules=rules, payer_total_fen=payer_total_fen, tier=member.tier, paid_at=paid_at, tz=tz),
            purchase_growth(rules=rules, payer_total_fen=payer_total_fen))


@lru_cache(maxsize=8)
def _insert_payment_pg(tiers_count: int) -> str:
    """PostgreSQL: find the payer's member, compute its award and insert the payment in ONE
    statement (the tier read in the statement that awards it). $1-$11 are fixed; then a (tier,
    points) pair per tier. Returns the payment and the member's inviter (referral needs it)."""
    pairs = " ".join(f"WHEN ${12 + 2 * i} THEN ${13 + 2 * i}::bigint" for i in range(tiers_count))
    return (
        "WITH m AS (SELECT id, tier, blacklisted, inviter_id FROM member WHERE appid = $1 AND openid = $2), "
        "p AS (INSERT INTO payment (transaction_id, out_trade_no, openid, member_id, total_fen, payer_total_fen, "
        "refunded_fen, points_awarded, growth_awarded, credited, paid_at, source, created_at) "
        "SELECT $3, $4, $2, m.id, $5, $6, 0, "
        f"CASE WHEN m.id IS NULL OR m.blacklisted THEN 0 ELSE CASE m.tier {pairs} ELSE $11::bigint END END, "
        "CASE WHEN m.id IS NULL OR m.blacklisted THEN 0 ELSE $10::bigint END, "
        "m.id IS NOT NULL AND NOT m.blacklisted, $7, $8, $9 "
        "FROM (SELECT 1) AS one LEFT JOIN m ON true "
        "RETURNING id, member_id, points_awarded, growth_awarded, credited) "
        "SELECT p.id, p.member_id, p.points_awarded, p.growth_awarded, p.credited, m.inviter_id "
        "FROM p LEFT JOIN m ON true")


async def _insert_payment(*, conn: BaseDBAsyncClient, rules: Rules, appid: str, transaction_id: str,
                          out_trade_no: str, openid: str, total_fen: int, payer_total_fen: int,
                          paid_at: datetime, source: str, tz: ZoneInfo) -> dict:
    """Insert the payment named to its member (if any) with what it earns; the unique
    transaction_id makes concurrent duplicates wait here, then raise IntegrityError.
    Returns id, member_id, points_awarded, growth_awarded, credited, inviter_id."""
    growth = purchase_growth(rules=rules, payer_total_fen=payer_total_fen)
    if conn.capabilities.dialect == "postgres":
        levels = rules.tiers.levels
        values: list = [appid, openid, transaction_id, out_trade_no, total_fen, payer_total_fen, paid_at,
                        source, timezone.now(), growth,
                        purchase_points(rules=rules, payer_total_fen=payer_total_fen, tier=levels[0].key,
                                        paid_at=paid_at, tz=tz)]
        for level in levels:
            values += [level.key, purchase_points(rules=rules, payer_total_fen=payer_total_fen, tier=level.key,
                                                  paid_at=paid_at, tz=tz)]
        rows = await conn.execute_query_dict(_insert_payment_pg(len(levels)), values)
        return rows[0]
    # SQLite (development and the smoke pass): the same, in two statements through the ORM.
    member = await Member.get_or_none(appid=appid, openid=openid).using_db(conn)
    earned, growth = (award_for(rules=rules, member=member, payer_total_fen=payer_total_fen,
                                paid_at=paid_at, tz=tz) if member is not None else (0, 0))
    payment = await Payment.create(
        transaction_id=transaction_id, out_trade_no=out_trade_no, openid=openid,
        total_fen=total_fen, payer_total_fen=payer_total_fen, paid_at=paid_at, source=source,
        member_id=member.id if member else None, credited=member is not None and not member.blacklisted,
        points_awarded=earned, growth_awarded=growth, using_db=conn)
    return {"id": payment.id, "member_id": payment.member_id, "points_awarded": earned,
            "growth_awarded": growth, "credited": payment.credited,
            "inviter_id": member.inviter_id if member else None}


async def record_payment(*, redis: Redis, rules: Rules, appid: str, transaction_id: str, out_trade_no: str,
                         openid: str, total_fen: int, payer_total_fen: int, paid_at: datetime,
                         now: datetime, tz: ZoneInfo, source: str = "v3") -> PaymentOutcome:
    """Record a paid order once by transaction_id and credit its member (points, growth, tier,
    last_paid_at); a payer who is not a member yet is credited at first login (`credit_pending`),
    or by the sweep (`sweep_effects`). The invitee's first paid order then rewards the referral
    (+50 / +50). A repeat re-drives those after-effects (idempotent), so a failure between the
    commit and them loses nothing.

    On PostgreSQL the hot path is BEGIN, one payment INSERT (member lookup included), the ledger
    INSERT, one member UPDATE (balance, growth, last_paid_at), COMMIT."""
    try:
        async with in_transaction() as conn:
            row = await _insert_payment(conn=conn, rules=rules, appid=appid, transaction_id=transaction_id,
                                        out_trade_no=out_trade_no, openid=openid, total_fen=total_fen,
                                        payer_total_fen=payer_total_fen, paid_at=paid_at, source=source, tz=tz)
            member_id = row["member_id"]
            earned, growth = int(row["points_awarded"]), int(row["growth_awarded"])
            if member_id is not None:
                await _credit(conn=conn, rules=rules, member_id=member_id, transaction_id=transaction_id,
                              out_trade_no=out_trade_no, paid_at=paid_at, earned=earned, growth=growth, now=now)
    except IntegrityError:
        existing = await Payment.get_or_none(transaction_id=transaction_id)
        if existing is None:
            raise
        await _redrive(redis=redis, rules=rules, appid=appid, payment=existing, now=now, tz=tz)
        return PaymentOutcome(payment_id=existing.id, created=False, member_id=existing.member_id,
                              points=int(existing.points_awarded), growth=int(existing.growth_awarded))
    # Only an invitee (inviter_id known from the member row) has a referral to note or reward.
    if row["credited"] and row["inviter_id"] is not None:
        await _after_paid(redis=redis, rules=rules, member_id=member_id, payment_id=row["id"], now=now, tz=tz)
    return PaymentOutcome(payment_id=row["id"], created=True, member_id=member_id, points=earned, growth=growth)


async def _redrive(*, redis: Redis | None, rules: Rules, appid: str, payment: Payment, now: datetime,
                   tz: ZoneInfo) -> None:
    """A repeat of a recorded payment re-runs the effects that follow its commit, each idempotent:
    a failure between the commit and them (a crash, Redis down) must not lose them for good."""
    if payment.member_id is None:
        member = await Member.get_or_none(appid=appid, openid=payment.openid)
        if member is not None:  # the payer became a member without being credited (a racing login)
            await credit_pending(member=member, now=now, tz=tz, redis=redis, rules=rules)
        return
    if payment.credited and await Member.filter(id=payment.member_id, inviter_id__not_isnull=True).exists():
        await _after_paid(redis=redis, rules=rules, member_id=payment.member_id, payment_id=payment.id,
                          now=now, tz=tz)


async def sweep_effects(*, redis: Redis, rules: Rules, now: datetime, tz: ZoneInfo,
                        since: datetime, batch: int = 500) -> dict:
    """Re-drive what a payment's commit should have been followed by, for payments since `since`:
    credit payers who became members while their payment waited (`credit_pending` runs at
    first login only), and reward referrals whose invitee has a live paid order but no reward
    (a failure after the commit). Idempotent like the paths it repeats; a job runs it."""
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "credited": 0, "rewarded": 0}
    since = since.astimezone(dt_timezone.utc)  # SQLite compares datetimes as text
    openids = await Payment.filter(credited=False, member_id=None, paid_at__gte=since) \
        .distinct().limit(batch).values_list("openid", flat=True)
    for member in await Member.filter(openid__in=list(openids)) if openids else []:
        summary["seen"] += 1
        summary["credited"] += await credit_pending(member=member, now=now, tz=tz, redis=redis, rules=rules)
    waiting = await Referral.filter(rewarded_at=None, reward_skipped=None).limit(batch * 10) \
        .values_list("invitee_id", flat=True)
    payers = await Payment.filter(member_id__in=list(waiting), credited=True, paid_at__gte=since,
                                  refunded_fen__lt=F("payer_total_fen")).distinct() \
        .values_list("member_id", flat=True) if waiting else []
    for invitee_id in sorted(set(payers))[:batch]:
        summary["seen"] += 1
        try:
            await referral.note_paid(invitee_id=invitee_id, now=now)
            rewarded = await referral.reward_first_order(redis=redis, rules=rules, invitee_id=invitee_id,
                                                         now=now, tz=tz)
        except Exception:
            log.exception("sweep: referral reward of member %s failed", invitee_id)
            summary["failed"] += 1
            continue
        summary["rewarded" if rewarded else "skipped"] += 1
    summary["sent"] = summary["credited"] + summary["rewarded"]
    return summary


async def _after_paid(*, redis: Redis | None, rules: Rules, member_id: int, payment_id: int,
                      now: datetime, tz: ZoneInfo) -> None:
    await referral.note_paid(invitee_id=member_id, now=now)
    if redis is None:
        return
    # "Not refunded within the notification": a payment fully refunded by now earns no reward.
    live = await Payment.filter(id=payment_id, refunded_fen__lt=F("payer_total_fen")).exists()
    if live:
        await referral.reward_first_order(redis=redis, rules=rules, invitee_id=member_id,
                                          payment_id=payment_id, now=now, tz=tz)


async def credit_pending(*, member: Member, now: datetime, tz: ZoneInfo | None = None,
                         redis: Redis | None = None, rules: Rules | None = None) -> int:
    """Credit the payments made by this member's openid before it was a member; returns how many.

    Once per payment: the conditional flip of `credited` and the ledger key `pay:{transaction_id}`.
    """
    tz = tz or ZoneInfo("Asia/Shanghai")
    rules = rules or await rules_module.load()
    pending = await Payment.filter(openid=member.openid, credited=False, member_id=None).order_by("id")
    done = 0
    for payment in pending:
        try:
            async with in_transaction() as conn:
                # The row count is the claim: a racing login credits nothing twice.
                fresh = await Member.get(id=member.id).using_db(conn)
                earned, growth = award_for(rules=rules, member=fresh, payer_total_fen=payment.payer_total_fen,
                                           paid_at=payment.paid_at, tz=tz)
                claimed = await Payment.filter(id=payment.id, credited=False, member_id=None).using_db(conn) \
                    .update(member_id=member.id, credited=not fresh.blacklisted, points_awarded=earned,
                            growth_awarded=growth)
                if not claimed:
                    continue
                payment.points_awarded, payment.growth_awarded = earned, growth
                await _credit(conn=conn, rules=rules, member_id=member.id, transaction_id=payment.transaction_id,
                              out_trade_no=payment.out_trade_no, paid_at=payment.paid_at, earned=earned,
                              growth=growth, now=now)
                await _take_back_earlier_refunds(conn=conn, rules=rules, payment=payment, member_id=member.id,
                                                 now=now)
        except IntegrityError:
            continue  # the ledger key was used already: credited elsewhere
        done += 1
        if not member.blacklisted:
            await _after_paid(redis=redis, rules=rules, member_id=member.id, payment_id=payment.id,
                              now=now, tz=tz)
    return done


async def _take_back_earlier_refunds(*, conn: BaseDBAsyncClient, rules: Rules, payment: Payment,
                                     member_id: int, now: datetime) -> None:
    """Refunds recorded while the payment was pending took nothing: take their share now, with
    the same cumulative rounding and each under its own `refund:{refund_id}` key."""
    refunds = await Refund.filter(payment_id=payment.id).using_db(conn).order_by("id")
    if not refunds or not (payment.points_awarded or payment.growth_awarded):
        return
    # Refunds of a v2 payment are refund_fee against total_fee (record_refund's against_total).
    total = max(1, int(payment.total_fen if payment.source == "v2" else payment.payer_total_fen))
    refunded = 0
    taken_points = taken_growth = 0
    lot = await LedgerEntry.filter(idempotency_key=f"pay:{payment.transaction_id}") \
        .using_db(conn).first().values_list("id", flat=True)
    for refund in refunds:
        refunded = min(total, refunded + int(refund.refund_fen))
        take_points = max(0, int(payment.points_awarded) * refunded // total - taken_points)
        take_growth = max(0, int(payment.growth_awarded) * refunded // total - taken_growth)
        take_growth = min(take_growth, await _growth_room(conn=conn, rules=rules, member_id=member_id,
                                                          paid_at=payment.paid_at))
        taken_points, taken_growth = taken_points + take_points, taken_growth + take_growth
        if take_points or take_growth:
            await points.debit(conn=conn, member_id=member_id, amount=take_points, reason="refund",
                               key=f"refund:{refund.refund_id}", now=now, allow_negative=True, growth=take_growth,
                               first_lot=lot, note=payment.transaction_id)
            await Refund.filter(id=refund.id).using_db(conn).update(points_taken=take_points,
                                                                    growth_taken=take_growth)
    await tiers.follow_growth(conn=conn, member_id=member_id, rules=rules, cause="refund", now=now,
                              allow_down=True)


async def _growth_room(*, conn: BaseDBAsyncClient, rules: Rules, member_id: int, paid_at: datetime) -> int:
    """How much growth a refund may take back: never below 0, and never below the current tier's
    floor when the member was downgraded since the payment (the downgrade already set growth to
    that floor: taking the refund's growth again would push the member down twice)."""
    member = await Member.filter(id=member_id).select_for_update().using_db(conn).first()
    if member is None:
        return 0
    floor = 0
    last = await TierChange.filter(member_id=member_id).using_db(conn).order_by("-id").first() \
        .values_list("cause", flat=True)
    if last == "downgrade" and member.tier_since is not None and member.tier_since >= paid_at:
        floor = rules.tier(member.tier).floor
    return max(0, int(member.growth) - floor)


async def record_refund(*, rules: Rules, refund_id: str, transaction_id: str, refund_fen: int,
                        now: datetime, against_total: bool = False) -> RefundOutcome:
    """Record a refund once by refund_id and take back the refunded share of what its payment
    earned: cumulative target floor(awarded × refunded / total) minus what earlier refunds took,
    so refunds that add up to the whole return exactly what was given. Points may go negative;
    growth never below 0, nor below the tier's floor after a downgrade since the payment.
    `refund_fen` is against the payer_total the payment stored (APIv3 `payer_refund`), or with
    `against_total` against its total (v2 `refund_fee` of `total_fee`, coupons included).
    Before its payment is recorded: PaymentNotRecorded (WeChat retries)."""
    payment = await Payment.get_or_none(transaction_id=transaction_id)
    if payment is None:
        raise PaymentNotRecorded(f"payment {transaction_id} not yet recorded")
    try:
        async with in_transaction() as conn:
            refund = await Refund.create(refund_id=refund_id, payment_id=payment.id,
                                         refund_fen=max(0, int(refund_fen)), using_db=conn)
            # This UPDATE takes the payment's row lock on PostgreSQL: refunds of one payment (and
            # its pending credit) run one after the other from here, so the sums below are settled.
            await Payment.filter(id=payment.id).using_db(conn).update(
                refunded_fen=F("refunded_fen") + max(0, int(refund_fen)))
            row = await Payment.get(id=payment.id).using_db(conn)
            taken = await Refund.filter(payment_id=payment.id).exclude(id=refund.id).using_db(conn) \
                .annotate(p=Sum("points_taken"), g=Sum("growth_taken")).values("p", "g")
            taken_points = int(taken[0]["p"] or 0) if taken else 0
            taken_growth = int(taken[0]["g"] or 0) if taken else 0
            total = max(1, int(row.total_fen if against_total else row.payer_total_fen))
            refunded = min(int(row.refunded_fen), total)
            # Integer floor division: exact for any amount, where a float would round.
            take_points = max(0, int(row.points_awarded) * refunded // total - taken_points)
            take_growth = max(0, int(row.growth_awarded) * refunded // total - taken_growth)
            if row.credited and row.member_id and take_growth:
                take_growth = min(take_growth, await _growth_room(conn=conn, rules=rules, member_id=row.member_id,
                                                                  paid_at=row.paid_at))
            if row.credited and row.member_id and (take_points or take_growth):
                lot = await LedgerEntry.filter(idempotency_key=f"pay:{row.transaction_id}") \
                    .using_db(conn).first().values_list("id", flat=True)
                await points.debit(conn=conn, member_id=row.member_id, amount=take_points, reason="refund",
                                   key=f"refund:{refund_id}", now=now, allow_negative=True, growth=take_growth,
                                   first_lot=lot, note=transaction_id)
                if not tiers.variant(rules):
                    await tiers.follow_growth(conn=conn, member_id=row.member_id, rules=rules, cause="refund",
                                              now=now, allow_down=True)
            else:
                take_points = take_growth = 0
            if row.member_id:
                await experiments.note_payment(conn=conn, member_id=row.member_id)
            if row.credited and row.member_id and tiers.variant(rules):
                await tiers.after_refund(conn=conn, member_id=row.member_id, rules=rules,
                                         transaction_id=transaction_id, fully_refunded=refunded >= total, now=now)
            await Refund.filter(id=refund.id).using_db(conn).update(points_taken=take_points,
                                                                    growth_taken=take_growth)
            if row.out_trade_no.startswith("rd"):
                # a points-mall order: its redemption gives back its share
                await rewards.reverse(conn=conn, out_trade_no=row.out_trade_no, refund_id=refund_id,
                                      refunded_fen=refunded, total_fen=total, now=now)
    except IntegrityError:
        existing = await Refund.get_or_none(refund_id=refund_id)
        if existing is None:
            raise
        return RefundOutcome(refund_id=existing.id, created=False, points_taken=int(existing.points_taken),
                             growth_taken=int(existing.growth_taken))
    return RefundOutcome(refund_id=refund.id, created=True, points_taken=take_points, growth_taken=take_growth)


# -- what a notification means -------------------------------------------------------------------
# The handler (handlers/wechat/pay.py) verifies and decrypts a WeChat Pay notification; these
# decide what it means: which states are acted on, whose appid, which amounts, and that "rd…"
# orders are points-mall redemptions.

class MalformedNotification(Exception):
    """A verified notification whose decrypted resource lacks what we need (a 400)."""


async def on_notification(*, event_type: str, resource: dict[str, Any], redis: Redis, pay: Any, appid: str,
                          now: datetime, tz: ZoneInfo) -> None:
    """Apply one verified APIv3 notification: TRANSACTION.SUCCESS with trade_state SUCCESS for our
    appid records the payment (payer_total, else total) and completes its redemption ("rd…") or
    credits its stored-value recharge ("rc…"); REFUND.SUCCESS records the refund (payer_refund,
    else refund) and gives back a recharge's stored value; anything else is acknowledged
    and not acted on. MalformedNotification for a resource missing what we need."""
    if event_type == "TRANSACTION.SUCCESS":
        if resource.get("trade_state", "SUCCESS") != "SUCCESS":
            log.info("pay notify: trade_state %s ignored", resource.get("trade_state"))
            return
        if resource.get("appid") not in (None, appid):
            log.warning("pay notify: payment for another appid ignored")
            return
        amount = _dict(resource, "amount")
        await record_payment(
            redis=redis, rules=await rules_module.load(), appid=appid,
            transaction_id=_text(resource, "transaction_id"), out_trade_no=_text(resource, "out_trade_no", ""),
            openid=_text(_dict(resource, "payer"), "openid"), total_fen=_fen(amount, "total"),
            payer_total_fen=_fen(amount, "payer_total", amount.get("total")),
            paid_at=_rfc3339(resource.get("success_time"), now), now=now, tz=tz)
        await _redemption_paid(pay, resource.get("out_trade_no"), resource.get("transaction_id"), now)
        if str(resource.get("out_trade_no", "")).startswith("rc"):  # a stored-value recharge
            await recharges.on_paid(out_trade_no=resource["out_trade_no"], transaction_id=resource["transaction_id"],
                                    mchid=str(resource.get("mchid", "")),
                                    paid_at=_rfc3339(resource.get("success_time"), now), now=now)
    elif event_type == "REFUND.SUCCESS":
        if resource.get("refund_status", "SUCCESS") != "SUCCESS":
            return
        amount = _dict(resource, "amount")
        await record_refund(
            rules=await rules_module.load(), refund_id=_text(resource, "refund_id"),
            transaction_id=_text(resource, "transaction_id"),
            refund_fen=_fen(amount, "payer_refund", amount.get("refund")), now=now)
        if str(resource.get("out_trade_no", "")).startswith("rc"):  # a recharge: its stored value goes back
            await recharges.on_refunded(out_trade_no=resource["out_trade_no"], refund_id=resource["refund_id"],
                                        refund_fen=_fen(amount, "refund"), now=now)
    else:
        log.info("pay notify: event %s acknowledged, not acted on", event_type)


async def on_v2_payment(*, params: dict[str, str], redis: Redis, pay: Any, appid: str, now: datetime,
                        tz: ZoneInfo) -> None:
    """Apply one verified v2 payment notification: result_code SUCCESS for our appid records the
    payment (cash_fee, else total_fee) and completes its redemption ("rd…"); else nothing."""
    if params.get("result_code") != "SUCCESS":
        return  # a failed payment: nothing to award
    if params.get("appid") not in (None, appid):
        return
    total = _fen(params, "total_fee")
    await record_payment(
        redis=redis, rules=await rules_module.load(), appid=appid,
        transaction_id=_text(params, "transaction_id"), out_trade_no=_text(params, "out_trade_no", ""),
        openid=_text(params, "openid"), total_fen=total, payer_total_fen=_fen(params, "cash_fee", total),
        paid_at=_time_end(params.get("time_end"), now), now=now, tz=tz, source="v2")
    await _redemption_paid(pay, params.get("out_trade_no"), params.get("transaction_id"), now)


async def on_v2_refund(*, info: dict[str, str], now: datetime) -> None:
    """Apply one decrypted v2 refund notification: refund_status SUCCESS records the refund, its
    refund_fee a share of total_fee (not of cash_fee); else nothing."""
    if info.get("refund_status") != "SUCCESS":
        return
    await record_refund(
        rules=await rules_module.load(), refund_id=_text(info, "refund_id"),
        transaction_id=_text(info, "transaction_id"), refund_fen=_fen(info, "refund_fee"), now=now,
        against_total=True)


async def _redemption_paid(pay: Any, out_trade_no: Any, transaction_id: Any, now: datetime) -> None:
    # "rd…" orders are points-mall redemptions (app/domain/rewards.py): the payment completes them,
    # once (on_paid is conditional), and a retried notification completes one a failure left pending;
    # one that arrives after the hold was released is refunded.
    if isinstance(out_trade_no, str) and out_trade_no.startswith("rd"):
        await rewards.on_paid(out_trade_no=out_trade_no, transaction_id=str(transaction_id), now=now, pay=pay)


def _dict(data: dict, name: str) -> dict:
    value = data.get(name)
    if not isinstance(value, dict):
        raise MalformedNotification(f"{name} is not an object")
    return value


def _text(data: dict, name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str) or (default is None and not value) or len(value) > 64:
        raise MalformedNotification(f"{name} is not a string of 1-64 characters")
    return value


def _fen(data: dict, name: str, default: Any = None) -> int:
    value = data.get(name, default)
    if isinstance(value, str) and value.isdigit() and len(value) < 16:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**13:
        raise MalformedNotification(f"{name} is not an amount in fen")
    return value


def _rfc3339(value: Any, default: datetime) -> datetime:
    if value is None:
        return default
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise MalformedNotification("success_time is not RFC 3339") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=_CHINA)


def _time_end(value: Any, default: datetime) -> datetime:
    if not value:
        return default
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=_CHINA)
    except (TypeError, ValueError):
        raise MalformedNotification("time_end is not yyyyMMddHHmmss") from None
