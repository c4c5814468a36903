"""Referrals: a new member bound to its inviter once; rewards on the invitee's first paid order.

One rule binds, whether the code came with the login (`invite_code`) or with an official-account
scene (`i=CODE`): only a member registered within NEW_MEMBER_WINDOW (24 hours) who never paid,
so two long-standing members cannot mint rewards by scanning each other's codes."""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from app.domain import antiabuse, points
from app.domain.clock import business_day, day_start
from app.domain.rules import Rules
from app.errors import NotFound, Unavailable
from app.models import Member, Payment, Referral
from app.wechat.client import WeChatClient, WeChatError, WeChatUnavailable


NEW_MEMBER_WINDOW = timedelta(hours=24)
"""How long after registering a member can still be bound to an inviter."""


def pair_key(a: int, b: int) -> str:
    """The unordered pair of two members: the same for A invites B and B invites A."""
    return f"{min(a, b)}:{max(a, b)}"


async def is_new(member: Member, *, now: datetime) -> bool:
    """Registered within NEW_MEMBER_WINDOW (24 hours) before `now` and never paid: not as a
    member and not before it (an order waiting for its payer's first login counts as paid)."""
    since = (now - NEW_MEMBER_WINDOW).astimezone(timezone.utc)  # SQLite compares UTC text
    if not await Member.filter(id=member.id, created_at__gte=since, last_paid_at=None).exists():
        return False
    return not await Payment.filter(Q(member_id=member.id) | Q(openid=member.openid)).exists()


async def bind(*, invitee: Member, invite_code: str, source: str, now: datetime) -> Referral | None:
    """Bind a new member (`is_new`: registered within 24 hours, never paid) to the owner of
    `invite_code`, once: no self-invite, no re-binding, no reverse pair (A invites B and B
    invites A), not from a device that registered a member before. None: not bound."""
    code = (invite_code or "").strip().upper()
    if not code or len(code) > 16:
        return None
    inviter = await Member.get_or_none(invite_code=code)
    if inviter is None or inviter.id == invitee.id:
        return None
    if not await is_new(invitee, now=now):
        return None
    if invitee.device_id and await Member.filter(
            device_id=invitee.device_id, id__lt=invitee.id).exists():
        return None
    if inviter.device_id and inviter.device_id == invitee.device_id:
        return None
    try:
        async with in_transaction() as conn:
            # unique invitee: the first binding stands; unique pair_key: of A->B and B->A, one
            referral = await Referral.create(inviter_id=inviter.id, invitee_id=invitee.id, source=source,
                                             pair_key=pair_key(inviter.id, invitee.id), using_db=conn)
            await Member.filter(id=invitee.id, inviter_id=None).using_db(conn).update(inviter_id=inviter.id)
    except IntegrityError:
        return None
    return referral


async def note_paid(*, invitee_id: int, now: datetime) -> None:
    """Mark the invitee's first paid order on its referral (the funnel's "paid")."""
    await Referral.filter(invitee_id=invitee_id, paid_at=None).update(paid_at=now)


# KEYS[1] the inviter's rewarded-today counter; ARGV: limit, floor from the database, ttl.
# Returns 1 and counts one more when under the limit, else 0.
_TAKE_SLOT = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
if tonumber(redis.call('GET', KEYS[1])) >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
return 1
"""


async def _take_inviter_slot(*, redis: Redis, inviter_id: int, day: date, limit: int, tz: ZoneInfo) -> bool:
    key = f"referral-day:{inviter_id}:{day.isoformat()}"
    # The floor comes from the database so a Redis restart cannot reopen a full day.
    floor = await Referral.filter(inviter_id=inviter_id, rewarded_at__gte=day_start(day, tz),
                                  rewarded_at__lt=day_start(day + timedelta(days=1), tz)).count()
    return bool(int(await redis.eval(_TAKE_SLOT, 1, key, limit, floor, 2 * 86400)))


async def _give_back_slot(*, redis: Redis, inviter_id: int, day: date) -> None:
    await redis.decr(f"referral-day:{inviter_id}:{day.isoformat()}")


async def reward_first_order(*, redis: Redis, rules: Rules, invitee_id: int, now: datetime,
                             tz: ZoneInfo, payment_id: int | None = None) -> bool:
    """On the invitee's first paid order (its earliest payment: `payment_id` when given, else
    that one if it is credited and not refunded in full): inviter +50 and invitee +50, both
    under the daily cap of 200 (a partial award is fine), at most 20 rewarded invites per
    inviter per business day, one reward per invitee forever, nothing when either is
    blacklisted. True when this call rewarded."""
    referral = await Referral.get_or_none(invitee_id=invitee_id, rewarded_at=None, reward_skipped=None)
    if referral is None:
        return False
    first = await Payment.filter(member_id=invitee_id).order_by("id").first()
    if first is None or (payment_id is not None and first.id != payment_id) or \
            (payment_id is None and not (first.credited and first.refunded_fen < first.payer_total_fen)):
        # Not the first order. The referral is left as it is, not marked: a mark could beat
        # the first order's own call racing this one and cost the reward it is owed.
        return False
    inviter_id = referral.inviter_id
    people = {m.id: m for m in await Member.filter(id__in=[inviter_id, invitee_id])}
    if any(m.blacklisted for m in people.values()) or len(people) < 2 or \
            await antiabuse.is_blacklisted(member_id=inviter_id) or \
            await antiabuse.is_blacklisted(member_id=invitee_id):
        await Referral.filter(id=referral.id, rewarded_at=None, reward_skipped=None) \
            .update(reward_skipped="blacklisted")
        return False
    today = business_day(now, tz)
    rule = rules.referral
    if not await _take_inviter_slot(redis=redis, inviter_id=inviter_id, day=today,
                                    limit=rule.per_inviter_daily, tz=tz):
        await Referral.filter(id=referral.id, rewarded_at=None, reward_skipped=None) \
            .update(reward_skipped="inviter_daily_limit")
        return False
    granted: dict[int, int] = {}
    try:
        async with in_transaction() as conn:
            # The row count is the claim: of two first orders at once, one rewards.
            claimed = await Referral.filter(id=referral.id, rewarded_at=None, reward_skipped=None) \
                .using_db(conn).update(rewarded_at=now)
            if not claimed:
                raise _NotClaimed
            for who, wanted, role in ((inviter_id, rule.inviter_points, "inviter"),
                                      (invitee_id, rule.invitee_points, "invitee")):
                granted[who] = await antiabuse.reserve_cap(redis=redis, member_id=who, day=today,
                                                           wanted=wanted, cap=rules.points.daily_cap)
                if granted[who] > 0:
                    await points.credit(conn=conn, member_id=who, amount=granted[who], reason="referral",
                                        key=f"referral:{invitee_id}:{role}", now=now,
                                        expiry_months=rules.points.expiry_months, capped_on=today)
    except BaseException as exc:
        for who, amount in granted.items():
            await antiabuse.release_cap(redis=redis, member_id=who, day=today, amount=amount)
        await _give_back_slot(redis=redis, inviter_id=inviter_id, day=today)
        if isinstance(exc, (_NotClaimed, IntegrityError)):
            return False
        raise
    return True


class _NotClaimed(Exception):
    """Another order of the same invitee took the reward first."""


@dataclass(frozen=True)
class Funnel:
    invited: int
    paid: int
    rewarded: int


async def funnel(*, inviter_id: int) -> Funnel:
    """How many the member invited, how many of them paid, how many earned the reward."""
    mine = Referral.filter(inviter_id=inviter_id)
    return Funnel(invited=await mine.count(),
                  paid=await Referral.filter(inviter_id=inviter_id, paid_at__isnull=False).count(),
                  rewarded=await Referral.filter(inviter_id=inviter_id, rewarded_at__isnull=False).count())


SHARE_PAGE = "pages/index/index"


def share_path(invite_code: str) -> str:
    return f"{SHARE_PAGE}?invite={invite_code}"


async def qrcode(*, wechat: WeChatClient, data_dir: Path, invite_code: str) -> bytes:
    """The member's mini-program code (getwxacodeunlimit, scene "i=CODE"), fetched from WeChat
    once and kept as a file under data_dir/qrcodes."""
    if not invite_code.isalnum() or len(invite_code) > 16:
        raise NotFound("no such invite code", code="invite_code_not_found")
    path = data_dir / "qrcodes" / f"{invite_code}.png"
    try:
        return await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        pass
    if not await Member.filter(invite_code=invite_code).exists():
        raise NotFound("no such invite code", code="invite_code_not_found")
    try:
        png = await wechat.get_wxacode_unlimit(scene=f"i={invite_code}", page=SHARE_PAGE)
    except WeChatUnavailable:
        raise Unavailable("WeChat is not answering, try again shortly", code="wechat_unavailable") from None
    except WeChatError as exc:
        raise Unavailable(f"WeChat refused the QR code ({exc.errcode})", code="wechat_error") from None
    await asyncio.to_thread(_write_atomically, path, png)
    return png


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # readers see the whole file or none
