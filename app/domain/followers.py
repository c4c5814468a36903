"""Official-account followers and the members they are.

A push from the official account names the follower by the account's own openid only. The
follower and a member are one person when WeChat gives both the same unionid: the first time,
`/cgi-bin/user/info` tells the unionid and Member.oa_openid records the link; after that the
link is one indexed lookup.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.functions import Sum

from app.domain import referral
from app.domain.rules import Rules
from app.models import LedgerEntry, Member, Referral
from app.wechat.client import WeChatClient, WeChatError
from app.wechat.oa import parse_invite_scene

log = logging.getLogger("app.followers")

EXPIRY_WINDOW_DAYS = 30


async def find_member(*, oa_openid: str, wechat: WeChatClient, unionid: str | None = None) -> Member | None:
    """The member behind an official-account openid, linking it on first sight by unionid
    (given, as user_get_card carries it, or asked of WeChat). None: not a member (yet)."""
    member = await Member.get_or_none(oa_openid=oa_openid)
    if member is not None:
        return member
    if not unionid:
        try:
            info = await wechat.get_user_info(oa_openid)
        except WeChatError as exc:
            log.warning("user/info failed", extra={"fields": {"errcode": exc.errcode}})
            return None
        unionid = info.get("unionid")
    if not unionid:
        return None
    member = await Member.filter(unionid=unionid).order_by("id").first()
    if member is None:
        return None
    try:
        await Member.filter(id=member.id).update(oa_openid=oa_openid)
    except IntegrityError:
        # a concurrent push linked it first (oa_openid is unique): that link stands
        return await Member.get_or_none(oa_openid=oa_openid)
    member.oa_openid = oa_openid
    return member


async def follow(*, member: Member | None, scene: str | None, now: datetime) -> Referral | None:
    """A subscribe or SCAN: the member follows the account; a scene `i=CODE` binds the
    referral by the same rule as an invite_code at login (referral.bind, source "oa_scene")."""
    if member is None:
        return None
    if not member.followed:
        await Member.filter(id=member.id).update(followed=True)
        member.followed = True
    code = parse_invite_scene(scene)
    if code is None:
        return None
    return await referral.bind(invitee=member, invite_code=code, source="oa_scene", now=now)


async def unfollow(*, oa_openid: str) -> int:
    """An unsubscribe: the linked member no longer follows (nothing else changes)."""
    return await Member.filter(oa_openid=oa_openid).update(followed=False)


@dataclass(frozen=True)
class PointsSummary:
    balance: int
    tier_name: str
    next_tier_name: str | None
    growth_needed: int
    expiring: int
    expiring_by: datetime


async def points_summary(*, member: Member, rules: Rules, now: datetime) -> PointsSummary:
    """Balance, tier, the growth to the next tier, and the points whose lots expire within
    30 days (sum of what is left of each lot)."""
    until = now + timedelta(days=EXPIRY_WINDOW_DAYS)
    rows = await LedgerEntry.filter(member_id=member.id, remaining__gt=0, expires_at__gt=now,
                                    expires_at__lte=until).annotate(total=Sum("remaining")).values("total")
    expiring = int(rows[0]["total"] or 0) if rows else 0
    tier = rules.tier(member.tier)
    levels = rules.tiers.levels
    index = next((i for i, t in enumerate(levels) if t.key == tier.key), 0)
    upcoming = levels[index + 1] if index + 1 < len(levels) else None
    return PointsSummary(
        balance=int(member.points), tier_name=tier.name,
        next_tier_name=upcoming.name if upcoming else None,
        growth_needed=max(0, upcoming.floor - int(member.growth)) if upcoming else 0,
        expiring=expiring, expiring_by=until,
    )
