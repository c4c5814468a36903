"""Campaigns: the new-member pack (新人礼包) given at registration, and the share campaigns
operators create (POST /admin/campaigns, audited) with their results.
"""
from __future__ import annotations

import re
from datetime import datetime

from tortoise.exceptions import IntegrityError
from tortoise.functions import Count, Sum
from tortoise.transactions import in_transaction

from app.domain import coupons, points
from app.domain.rules import Rules
from app.errors import Conflict, InvalidField
from app.models import AuditLog, Campaign, Coupon, LedgerEntry, ShareClaim, ShareLink

PACK = "new_member_pack"


def pack_key(member_id: int) -> str:
    return f"{PACK}:{member_id}"


async def give_new_member_pack(*, member_id: int, now: datetime, rules: Rules) -> bool:
    """The new-member pack when rules.new_member_pack is enabled: a no-threshold coupon of
    `coupon_fen` (1000) and `points` (50), once per member (issue key and ledger key
    `new_member_pack:{member}`), whatever races. A grant: not under the daily cap (no
    capped_on). True when this call gave it."""
    rule = rules.new_member_pack
    if not rule.enabled or (rule.coupon_fen <= 0 and rule.points <= 0):
        return False
    key = pack_key(member_id)
    template = None
    if rule.coupon_fen > 0:
        template = await coupons.template(key=f"{PACK}:{rule.coupon_fen}:{rule.valid_days}", name="新人礼包券",
                                          amount_fen=rule.coupon_fen, valid_days=rule.valid_days)
    try:
        async with in_transaction() as conn:
            # The ledger entry's unique key first (even for 0 points): a racing second call
            # fails here and rolls back before it issues anything.
            await points.credit(conn=conn, member_id=member_id, amount=rule.points, reason=PACK, key=key,
                                now=now, expiry_months=rules.points.expiry_months, note="grant")
            if template is not None:
                await coupons.issue(member_id=member_id, template=template, issue_key=key, now=now, conn=conn)
    except IntegrityError:
        if await LedgerEntry.filter(idempotency_key=key).exists():
            return False
        raise
    return True


_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


async def listing(*, limit: int = 200) -> list[dict]:
    """The share campaigns, newest first, each with its results (GET /admin/campaigns)."""
    rows = await Campaign.all().order_by("-id").limit(limit)
    return [{**render(c), "results": await results(c)} for c in rows]


def render(campaign: Campaign) -> dict:
    return {"id": campaign.id, "kind": campaign.kind, "key": campaign.key,
            "coupon_discount": campaign.coupon_discount, "points": campaign.points,
            "daily_limit": campaign.daily_limit, "stock": campaign.stock, "claimed": campaign.claimed,
            "created_by": campaign.created_by, "created_at": campaign.created_at.isoformat()}


async def create(*, kind: str, key: str, coupon_discount: int, points_each: int, daily_limit: int, stock: int,
                 valid_days: int, actor: str, now: datetime) -> Campaign:
    """An operator creates a share campaign (kind "share": the friend's coupon at
    `coupon_discount` percent, 50 = 5折; `points_each` to both; `daily_limit` rewarded claims
    per sharer a day; `stock` coupons), with an audit row in the same transaction. 409
    campaign_exists for a key used before; 422 naming the field otherwise."""
    if kind != "share":
        raise InvalidField("kind", "only share campaigns are created here")
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidField("key", "1 to 32 of a-z 0-9 _ -, starting with a letter or digit")
    checks = (("coupon_discount", coupon_discount, 1, 99), ("points", points_each, 0, 100_000),
              ("daily_limit", daily_limit, 0, 10_000), ("stock", stock, 0, 100_000_000),
              ("valid_days", valid_days, 1, 366))
    for field, value, low, high in checks:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidField(field, f"must be an integer from {low} to {high}")
    template = await coupons.template(key=f"share:{key}:{coupon_discount}:{valid_days}",
                                      name=f"分享{coupon_discount / 10:g}折券", discount_percent=coupon_discount,
                                      valid_days=valid_days)
    try:
        async with in_transaction() as conn:
            campaign = await Campaign.create(kind=kind, key=key, coupon_discount=coupon_discount,
                                             points=points_each, daily_limit=daily_limit, stock=stock,
                                             template_id=template.id, created_by=actor, created_at=now,
                                             using_db=conn)
            await AuditLog.create(actor=actor, action="campaigns.create", target=f"campaign:{campaign.id}",
                                  before=None, after=render(campaign), using_db=conn)
    except IntegrityError:
        raise Conflict(f"a campaign named {key} exists", code="campaign_exists") from None
    return campaign


async def results(campaign: Campaign) -> dict:
    """What a share campaign did: links made, claims (rewarded or not, and why), coupons
    claimed and used, points paid to sharers and friends."""
    claims = {(bool(r), s): int(n) for r, s, n in await ShareClaim.filter(campaign_id=campaign.id)
              .group_by("rewarded", "reward_skipped").annotate(n=Count("id"))
              .values_list("rewarded", "reward_skipped", "n")}
    paid = await LedgerEntry.filter(reason="share", idempotency_key__startswith=f"share:{campaign.id}:").annotate(p=Sum("delta")) \
        .values_list("p", flat=True)
    used = await Coupon.filter(issue_key__startswith=f"share:{campaign.key}:", used_at__isnull=False).count()
    return {
        "links": await ShareLink.filter(campaign_id=campaign.id).count(),
        "claims": sum(claims.values()),
        "rewarded_claims": sum(n for (rewarded, _), n in claims.items() if rewarded),
        "unrewarded": {skip or "none": n for (rewarded, skip), n in claims.items() if not rewarded},
        "coupons_claimed": campaign.claimed,
        "coupons_used": used,
        "points_paid": int((paid[0] if paid else 0) or 0),
    }
