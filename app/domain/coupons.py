"""Coupons: templates (no-threshold amount, discount, minimum spend) and the coupons issued from them.

Each issue happens once per issue_key (`birthday:{member}:{year}`, `tier_monthly:{member}:{YYYY-MM}:{n}`),
made so by the unique constraint, not by a check. A coupon carries a random code of 12 characters
from an alphabet without look-alikes (no 0/O, 1/I/L), which staff redeem (核销) exactly once.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from app.domain import blacklist, costs, members, messages
from app.errors import Conflict, NotFound
from app.models import AuditLog, Coupon, CouponTemplate, Member

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # 31 symbols: 12 of them are ~59 bits
CODE_LENGTH = 12
_BATCH = 2000


# Told of every redemption inside its transaction (experiments: the redemption metric). Filled
# when the domain is assembled (app/domain/wiring.py): coupons imports none of them.
_REDEEMED: list = []


def on_redeemed(subscriber) -> None:
    """Register `async subscriber(*, conn, coupon_id, now)`, run in the redemption's transaction."""
    if subscriber not in _REDEEMED:
        _REDEEMED.append(subscriber)


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def yuan(fen: int) -> str:
    """Fen as yuan for a message: 5000 → "50", 1050 → "10.50"."""
    return str(fen // 100) if fen % 100 == 0 else f"{fen / 100:.2f}"


def expiry_of(tpl: CouponTemplate, *, now: datetime, tz) -> date:
    """The business day a coupon of `tpl` issued at `now` stops being valid."""
    return (now + timedelta(days=tpl.valid_days)).astimezone(tz).date()


def status(coupon: Coupon, *, now: datetime) -> str:
    """used once redeemed; expired from expires_at on; available otherwise."""
    if coupon.used_at is not None:
        return "used"
    if now >= coupon.expires_at:
        return "expired"
    return "available"


async def template(*, key: str, name: str, amount_fen: int = 0, discount_percent: int = 100,
                   min_spend_fen: int = 0, valid_days: int = 30,
                   conn: BaseDBAsyncClient | None = None) -> CouponTemplate:
    """The template named `key`, created on first use (a no-threshold amount unless told otherwise).

    A template is immutable once coupons point at it, so a changed rule (a new amount) is a new key.
    """
    kind = "discount" if discount_percent < 100 else "amount"
    found = await CouponTemplate.filter(key=key).using_db(conn).first()
    if found is not None:
        return found
    await CouponTemplate.bulk_create(
        [CouponTemplate(key=key, name=name, kind=kind, amount_fen=amount_fen,
                        discount_percent=discount_percent, min_spend_fen=min_spend_fen,
                        valid_days=valid_days)],
        ignore_conflicts=True, using_db=conn)
    return await CouponTemplate.get(key=key).using_db(conn)


@dataclass(frozen=True)
class Grant:
    """One coupon to issue: to whom, from which template, under which once-only key."""

    member_id: int
    template: CouponTemplate
    issue_key: str


async def issue_many(grants: list[Grant], *, now: datetime,
                     conn: BaseDBAsyncClient | None = None) -> int:
    """Issue each grant once per issue_key, in bulk; returns how many are new (a re-run: 0).

    INSERT ... ON CONFLICT DO NOTHING keeps the caller's transaction usable; a grant dropped by
    a (vanishingly rare) code collision rather than its issue_key is retried with a fresh code.
    """
    # UTC, as the ORM's other writers store it: SQLite compares these as text.
    now = now.astimezone(timezone.utc)
    created = 0
    for start in range(0, len(grants), _BATCH):
        batch = {g.issue_key: g for g in grants[start:start + _BATCH]}
        existing = set(await Coupon.filter(issue_key__in=list(batch)).using_db(conn)
                       .values_list("issue_key", flat=True))
        todo = [g for k, g in batch.items() if k not in existing]
        for _ in range(5):
            if not todo:
                break
            await Coupon.bulk_create(
                [Coupon(code=new_code(), issue_key=g.issue_key, template_id=g.template.id,
                        member_id=g.member_id, valid_from=now,
                        expires_at=now + timedelta(days=g.template.valid_days))
                 for g in todo],
                ignore_conflicts=True, using_db=conn)
            stored = set(await Coupon.filter(issue_key__in=[g.issue_key for g in todo])
                         .using_db(conn).values_list("issue_key", flat=True))
            created += len(stored)
            todo = [g for g in todo if g.issue_key not in stored]
        if todo:
            raise RuntimeError(f"could not store {len(todo)} coupons")
    return created


async def issue(*, member_id: int, template: CouponTemplate, issue_key: str, now: datetime,
                conn: BaseDBAsyncClient | None = None) -> tuple[Coupon, bool]:
    """Issue one coupon once per issue_key: (the coupon, whether it is new)."""
    new = await issue_many([Grant(member_id, template, issue_key)], now=now, conn=conn)
    coupon = await Coupon.filter(issue_key=issue_key).using_db(conn) \
        .prefetch_related("template").first()
    return coupon, bool(new)


async def of_member(*, member_id: int, limit: int = 200) -> list[Coupon]:
    """The member's coupons, newest first, with their templates."""
    return await Coupon.filter(member_id=member_id).order_by("-id").limit(limit) \
        .prefetch_related("template")


async def redeem(*, code: str, operator: str, now: datetime, order_fen: int | None = None) -> Coupon:
    """Staff redeem (核销) a coupon by code, once: 404 coupon_not_found, 409 coupon_used / coupon_expired,
    403 blacklisted when its member is on the blacklist. Its cost entry (face value, or the
    discount taken on `order_fen`) is written in the same transaction.

    The conditional UPDATE (used_at still empty, not expired) checked by its row count decides
    between simultaneous redemptions; the audit row is written in the same transaction.
    """
    code = code.strip().upper()
    now = now.astimezone(timezone.utc)  # SQLite compares datetimes as text
    coupon = await Coupon.get_or_none(code=code)
    if coupon is None:
        raise NotFound("no coupon has this code", code="coupon_not_found")
    await blacklist.refuse_blacklisted(member_id=coupon.member_id)
    async with in_transaction() as conn:
        updated = await Coupon.filter(id=coupon.id, used_at=None, expires_at__gt=now).using_db(conn) \
            .update(used_at=now, used_by=operator)
        if updated:
            await AuditLog.create(actor=operator, action="coupon.redeem", target=f"coupon:{coupon.id}",
                                  before={"code": code, "used_at": None},
                                  after={"code": code, "used_at": now.isoformat(),
                                         "member_id": coupon.member_id},
                                  using_db=conn)
            await coupon.fetch_related("template", using_db=conn)
            await costs.record_coupon(conn=conn, coupon=coupon, now=now, order_fen=order_fen)
            for subscriber in _REDEEMED:
                await subscriber(conn=conn, coupon_id=coupon.id, now=now)
    coupon = await Coupon.get(id=coupon.id).prefetch_related("template")
    if not updated:
        if coupon.used_at is not None:
            raise Conflict(f"coupon already used at {coupon.used_at.isoformat()}", code="coupon_used")
        raise Conflict(f"coupon expired at {coupon.expires_at.isoformat()}", code="coupon_expired")
    return coupon


async def _issue_for_tiers(*, member_ids_by_tier: dict[str, list[int]], templates: dict[str, tuple],
                           month: str, now: datetime, tz) -> tuple[int, int]:
    grants, notes = [], []
    for tier, ids in member_ids_by_tier.items():
        tpl, count = templates[tier]
        for member_id in ids:
            grants.extend(Grant(member_id, tpl, f"tier_monthly:{member_id}:{month}:{n}")
                          for n in range(1, count + 1))
            notes.append({"member_id": member_id, "kind": "coupon", "period": month,
                          "values": {"title": f"{tpl.name}×{count}", "amount": yuan(tpl.amount_fen),
                                     "expires_on": expiry_of(tpl, now=now, tz=tz).isoformat()},
                          "page": "pages/coupons/index"})
    async with in_transaction() as conn:
        issued = await issue_many(grants, now=now, conn=conn)
        return issued, await messages.enqueue_many(notes, now=now, conn=conn)


async def issue_tier_monthly(*, rules, month: str, now: datetime, tz, chunk: int = 5000,
                             total=lambda n: None, advance=lambda n: None) -> dict:
    """The monthly coupons of each tier (rules.tier_coupons), once per member per month.

    issue_key `tier_monthly:{member}:{YYYY-MM}:{n}` for the n-th coupon of that month; each
    member who got coupons is told once (kind "coupon", period YYYY-MM).
    """
    grants_rule = rules.tier_coupons.grants
    templates = {}
    for tier, grant in grants_rule.items():
        if grant.count <= 0:
            continue
        templates[tier] = (await template(
            key=f"tier_monthly:{tier}:{grant.amount_fen}:{grant.min_spend_fen}:{rules.tier_coupons.valid_days}",
            name=f"{rules.tier(tier).name}月度券", amount_fen=grant.amount_fen,
            min_spend_fen=grant.min_spend_fen, valid_days=rules.tier_coupons.valid_days), grant.count)
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "issued": 0}
    if not templates:
        return summary
    query = Member.filter(tier__in=list(templates))
    total(await query.count())
    async for rows in members.in_batches(query, size=chunk):
        by_tier: dict[str, list[int]] = {}
        for member_id, tier in rows:
            by_tier.setdefault(tier, []).append(member_id)
        issued, sent = await _issue_for_tiers(
            member_ids_by_tier=by_tier, templates=templates, now=now, tz=tz, month=month)
        summary["seen"] += len(rows)
        summary["issued"] += issued
        summary["sent"] += sent
        summary["skipped"] += len(rows) - sent
        advance(len(rows))
    return summary
