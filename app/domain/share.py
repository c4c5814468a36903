"""Share coupons (社交裂变券, CONTRACT.md "share coupon"): a member makes a share link for a
campaign; a friend who opens it and claims gets the campaign's coupon (5折 by default) and both
get its points (20), under the daily and weekly caps. Never a reward for the share itself.

Once-only rules are unique constraints and conditional UPDATEs in the claim's transaction:
one claim per campaign and person (member, unionid, device: ShareClaimIdentity), the stock
(`claimed < stock`), and the sharer's rewarded claims a day (`ShareDay.rewarded < daily_limit`).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from app.domain import antiabuse, coupons, tasks
from app.domain.clock import business_day
from app.domain.rules import Rules
from app.errors import Conflict, Forbidden, NotFound
from app.models import Campaign, Coupon, Member, ShareClaim, ShareClaimIdentity, ShareDay, ShareLink

SHARE_PAGE = "pages/share/index"
REFUSED = "share_claim_refused"


def share_path(token: str) -> str:
    """The mini-program page a friend opens from the shared card."""
    return f"{SHARE_PAGE}?token={token}"


async def make_link(*, member_id: int, campaign_key: str, now: datetime) -> ShareLink:
    """The member's share link of the campaign, one per member and campaign (the same token
    again on a repeat). Making it earns nothing: WeChat forbids rewarding the share itself."""
    campaign = await Campaign.get_or_none(key=campaign_key, kind="share")
    if campaign is None:
        raise NotFound("no such campaign", code="campaign_not_found")
    if not await Member.filter(id=member_id).exists():
        raise NotFound("member not found", code="member_not_found")
    link = await ShareLink.get_or_none(campaign_id=campaign.id, member_id=member_id)
    if link is not None:
        return link
    try:
        return await ShareLink.create(token=secrets.token_urlsafe(12), campaign_id=campaign.id,
                                      member_id=member_id, created_at=now)
    except IntegrityError:  # the same member twice at once: the first link stands
        return await ShareLink.get(campaign_id=campaign.id, member_id=member_id)


@dataclass(frozen=True)
class Claimed:
    coupon: Coupon
    rewarded: bool
    friend_points: int
    sharer_points: int


class _OutOfStock(Exception):
    pass


def _identities(member: Member) -> list[str]:
    found = [f"m:{member.id}"]
    if member.unionid:
        found.append(f"u:{member.unionid}")
    if member.device_id:
        found.append(f"d:{member.device_id}")
    return found


async def claim(*, token: str, friend_id: int, now: datetime, tz: ZoneInfo, redis: Redis,
                rules: Rules) -> Claimed:
    """The friend claims a share link: the campaign's coupon, and `points` each for friend and
    sharer under the daily and weekly caps while the sharer has rewarded fewer than
    `daily_limit` (10) claims of it today (past that, the coupon without points).

    409 share_claim_refused: one's own link (same member, unionid or device), or a second claim
    of the campaign by the same person (member, unionid or device); 409 campaign_out_of_stock
    once `stock` coupons are claimed; 404 share_link_not_found; 403 blacklisted.
    """
    link = await ShareLink.get_or_none(token=token).prefetch_related("campaign", "campaign__template")
    if link is None:
        raise NotFound("no such share link", code="share_link_not_found")
    campaign = link.campaign
    people = {m.id: m for m in await Member.filter(id__in=[link.member_id, friend_id])}
    friend, sharer = people.get(friend_id), people.get(link.member_id)
    if friend is None:
        raise NotFound("member not found", code="member_not_found")
    if friend.blacklisted or await antiabuse.is_blacklisted(member_id=friend.id, device_id=friend.device_id):
        raise Forbidden("this member cannot claim", code="blacklisted")
    if sharer is None or set(_identities(friend)) & set(_identities(sharer)):
        raise Conflict("a share link cannot be claimed by its own sharer", code=REFUSED)
    day = business_day(now, tz)
    hold = tasks.CapHold(redis=redis, day=day)
    earned = {friend.id: 0, sharer.id: 0}
    try:
        async with in_transaction() as conn:
            # unique (campaign, friend) and (campaign, identity): a second claim by the same
            # person waits here for the first to commit, then fails.
            row = await ShareClaim.create(campaign_id=campaign.id, link_id=link.id, sharer_id=sharer.id,
                                          friend_id=friend.id, day=day, created_at=now, using_db=conn)
            for identity in _identities(friend):
                await ShareClaimIdentity.create(campaign_id=campaign.id, identity=identity, claim_id=row.id,
                                                using_db=conn)
            taken = await Campaign.filter(id=campaign.id, claimed__lt=F("stock")).using_db(conn) \
                .update(claimed=F("claimed") + 1)
            if not taken:
                raise _OutOfStock
            coupon, _ = await coupons.issue(member_id=friend.id, template=campaign.template,
                                            issue_key=f"share:{campaign.key}:{friend.id}", now=now, conn=conn)
            skipped = None
            if sharer.blacklisted:
                skipped = "blacklisted"
            else:
                await ShareDay.bulk_create([ShareDay(campaign_id=campaign.id, sharer_id=sharer.id, day=day)],
                                           ignore_conflicts=True, using_db=conn)
                slot = await ShareDay.filter(campaign_id=campaign.id, sharer_id=sharer.id, day=day,
                                             rewarded__lt=campaign.daily_limit).using_db(conn) \
                    .update(rewarded=F("rewarded") + 1)
                if not slot:
                    skipped = "sharer_daily_limit"
            if skipped is None:
                # Lower member id first: two claims crossing between the same two members lock
                # their rows in one order.
                for who, role in sorted(((sharer.id, "sharer"), (friend.id, "friend"))):
                    earned[who] = await tasks.complete_in(
                        conn=conn, hold=hold, rules=rules, member_id=who, kind=tasks.SHARE,
                        key=f"share:{campaign.id}:{row.id}:{role}", wanted=campaign.points, reason="share", now=now)
            await ShareClaim.filter(id=row.id).using_db(conn).update(
                coupon_id=coupon.id, rewarded=skipped is None, reward_skipped=skipped)
    except IntegrityError:
        await hold.release()
        raise Conflict("this campaign was claimed by this person before", code=REFUSED) from None
    except _OutOfStock:
        await hold.release()
        raise Conflict("every coupon of this campaign is claimed", code="campaign_out_of_stock") from None
    except BaseException:
        await hold.release()
        raise
    return Claimed(coupon=coupon, rewarded=skipped is None, friend_points=earned[friend.id],
                   sharer_points=earned[sharer.id])
