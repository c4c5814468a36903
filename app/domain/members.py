"""Members and their sessions: login with a wx.login code, the member card, the member's view."""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import AsyncIterator, Awaitable, Callable
from zoneinfo import ZoneInfo

import asyncpg
from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError

from app.db import asyncpg_client
from app.domain import antiabuse
from app.domain.clock import business_day
from app.domain.rules import Rules
from app.errors import DomainError, Forbidden, InvalidField, NotFound, RateLimited, Unauthenticated, Unavailable
from app.models import Member
from app.wechat.client import WeChatClient, WeChatError, WeChatUnavailable

SESSION_TTL = 7 * 86400
LOGIN_MARK_EVERY = timedelta(hours=6)  # Member.last_login_at is at most this stale
_INVITE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed by people


@dataclass(frozen=True)
class Login:
    token: str
    expires_in: int
    is_new: bool
    member: Member


@dataclass(frozen=True)
class Joined:
    """A member `login` just created, with what its "member created" step may need."""

    member: Member
    invite_code: str | None
    redis: Redis
    rules: Rules
    now: datetime
    tz: ZoneInfo


# The "member created" step: each is awaited in order after a new member's row exists (referral
# binding, pending payment credits...); one returning True changed the member's row, which is
# read again. The "unionid known" step runs when a member first has a unionid (new or not).
# Both are filled when the app is assembled (app/domain/wiring.py): members imports none of them.
_created: list[tuple[str, Callable[[Joined], Awaitable[bool]]]] = []
_unionid: list[tuple[str, Callable[[int, str, datetime], Awaitable[None]]]] = []


def on_created(name: str, step: Callable[[Joined], Awaitable[bool]]) -> None:
    """Add a step run for every new member (once per name)."""
    if all(n != name for n, _ in _created):
        _created.append((name, step))


def on_unionid(name: str, step: Callable[[int, str, datetime], Awaitable[None]]) -> None:
    """Add a step run when a member's unionid becomes known: step(member_id, unionid, now)."""
    if all(n != name for n, _ in _unionid):
        _unionid.append((name, step))


async def _member_created(joined: Joined) -> None:
    changed = False
    for _, step in _created:
        changed = bool(await step(joined)) or changed
    if changed:
        await joined.member.refresh_from_db()


def new_invite_code() -> str:
    return "".join(secrets.choice(_INVITE_ALPHABET) for _ in range(8))


def _token_key(token: str) -> str:
    return "session:" + hashlib.sha256(token.encode()).hexdigest()


def _sessions_key(member_id: int) -> str:
    return f"member-sessions:{member_id}"


async def open_session(*, redis: Redis, member_id: int) -> str:
    """An opaque random token; only its hash is stored, in Redis, for 7 days, and listed
    under the member so that `revoke_sessions` can end them all."""
    token = secrets.token_urlsafe(32)
    # not a MULTI: on a Redis Cluster the two keys live in different slots
    async with redis.pipeline(transaction=False) as pipe:
        _queue_session(pipe, token=token, member_id=member_id)
        await pipe.execute()
    return token


def _queue_session(pipe, *, token: str, member_id: int) -> None:
    key, listed = _token_key(token), _sessions_key(member_id)
    pipe.set(key, member_id, ex=SESSION_TTL)
    pipe.sadd(listed, key)
    pipe.expire(listed, SESSION_TTL)  # the list outlives its newest session, no longer


async def revoke_sessions(*, redis: Redis, member_id: int) -> int:
    """End every session of the member at once (a blacklisting): its tokens answer 401 from
    now on. Returns how many were still open."""
    listed = _sessions_key(member_id)
    keys = list(await redis.smembers(listed))
    if not keys:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.delete(key)
        pipe.srem(listed, *keys)
        results = await pipe.execute()
    return sum(int(n) for n in results[:-1])


async def session_member_id(*, redis: Redis, token: str) -> int:
    """The member a bearer token belongs to, or 401."""
    if not token or len(token) > 128:
        raise Unauthenticated("missing or malformed bearer token", code="unauthenticated")
    member_id = await redis.get(_token_key(token))
    if member_id is None:
        raise Unauthenticated("session expired or unknown; log in again", code="session_expired")
    return int(member_id)


async def _exchange(wechat: WeChatClient, code: str) -> dict:
    try:
        return await wechat.code2session(code)
    except WeChatUnavailable:
        raise Unavailable("WeChat is not answering, try again shortly", code="wechat_unavailable") from None
    except WeChatError as exc:
        if exc.errcode == 45011:
            raise RateLimited("WeChat rate-limited this login, try again in a minute",
                              retry_after=60) from None
        if exc.errcode == 40226:
            raise Forbidden("WeChat flagged this account as risky", code="risky_user") from None
        raise Unauthenticated(f"WeChat refused the login code ({exc.errcode})", code="invalid_code") from None


# Login on PostgreSQL: the member of an openid in one prepared read, and a new one registered
# in one statement that also says whether payments wait for it (`payments.credit_pending`).
_FIND_MEMBER = "SELECT * FROM member WHERE appid = $1 AND openid = $2"
_REGISTER = (
    "WITH m AS (INSERT INTO member (appid, openid, unionid, device_id, invite_code, created_at, last_login_at, "
    "card_activated, tier, growth, points, streak, followed, blacklisted) "
    "VALUES ($1, $2, $3, $4, $5, $6, $6, false, 'regular', 0, 0, 0, false, false) "
    "ON CONFLICT (appid, openid) DO NOTHING RETURNING *) "
    "SELECT m.*, EXISTS (SELECT 1 FROM payment p WHERE p.openid = $2 AND NOT p.credited "
    "AND p.member_id IS NULL) AS payments_waiting FROM m"
)


async def _find(*, appid: str, openid: str) -> Member | None:
    client = asyncpg_client()
    if client is None:
        return await Member.get_or_none(appid=appid, openid=openid)
    async with client.acquire_connection() as con:
        row = await con.fetchrow(_FIND_MEMBER, appid, openid)
    return Member._init_from_db(**row) if row is not None else None


async def login(*, wechat: WeChatClient, redis: Redis, rules: Rules, appid: str, code: str,
                invite_code: str | None, device_id: str | None, ip: str | None,
                now: datetime, tz: ZoneInfo) -> Login:
    """Exchange a wx.login code for a member and a session (rate-limited per IP, device, openid).

    A member per (appid, openid); a device registers at most 3 members a business day.
    """
    limits = rules.limits
    async with redis.pipeline(transaction=False) as pipe:
        queued = [antiabuse.queue_hit(pipe, name="login-ip", subject=ip or "", window=60),
                  antiabuse.queue_hit(pipe, name="login-device", subject=device_id or "", window=60)]
        results = iter(await pipe.execute() if any(queued) else [])
    if queued[0]:
        antiabuse.check_hit(next(results), name="login-ip", limit=limits.login_per_ip_per_minute, window=60)
    if queued[1]:
        antiabuse.check_hit(next(results), name="login-device", limit=limits.login_per_device_per_minute,
                            window=60)
    if device_id and await antiabuse.is_blacklisted(device_id=device_id):
        raise Forbidden("this device is blocked", code="blacklisted")
    session = await _exchange(wechat, code)
    openid, unionid = session["openid"], session.get("unionid")

    member = await _find(appid=appid, openid=openid)
    is_new = member is None
    gained_unionid = False
    if member is None:
        member, is_new = await _register(redis=redis, rules=rules, appid=appid, openid=openid,
                                         unionid=unionid, device_id=device_id, now=now, tz=tz)
        if is_new:
            await _member_created(Joined(member=member, invite_code=invite_code, redis=redis, rules=rules,
                                         now=now, tz=tz))
        gained_unionid = is_new and bool(unionid)
    elif unionid and not member.unionid:
        await Member.filter(id=member.id).update(unionid=unionid)
        member.unionid = unionid
        gained_unionid = True
    if gained_unionid:
        for _, step in _unionid:
            await step(member.id, unionid, now)
    if member.blacklisted:
        raise Forbidden("this member is blocked", code="blacklisted")
    if not is_new and (member.last_login_at is None or member.last_login_at <= now - LOGIN_MARK_EVERY):
        # Coarse on purpose: the wake-up job needs the day, not one write per login.
        await Member.filter(id=member.id).update(last_login_at=now)

    # The openid's login limit, the session and WeChat's session_key in one round trip. The
    # limit is counted after the member is read: only a first login registers, and it is the
    # first of its minute, so no registration escapes the limit.
    token = secrets.token_urlsafe(32)
    async with redis.pipeline(transaction=False) as pipe:
        antiabuse.queue_hit(pipe, name="login-openid", subject=openid, window=60)
        _queue_session(pipe, token=token, member_id=member.id)
        pipe.set(f"session_key:{member.id}", session.get("session_key", ""), ex=SESSION_TTL)
        results = await pipe.execute()
    try:
        antiabuse.check_hit(results[0], name="login-openid", limit=limits.login_per_openid_per_minute,
                            window=60)
    except RateLimited:
        await redis.delete(_token_key(token))
        raise
    # Checked after the session is listed: a blacklisting that lands meanwhile either is seen
    # here or revokes this session after it (blacklist.add commits, then revokes).
    if await antiabuse.is_blacklisted(member_id=member.id):
        await redis.delete(_token_key(token))
        raise Forbidden("this member is blocked", code="blacklisted")
    return Login(token=token, expires_in=SESSION_TTL, is_new=is_new, member=member)


async def _register(*, redis: Redis, rules: Rules, appid: str, openid: str, unionid: str | None,
                    device_id: str | None, now: datetime, tz: ZoneInfo) -> tuple[Member, bool]:
    if device_id:
        day = business_day(now, tz)
        await antiabuse.hit(
            redis=redis, name="register-device", subject=f"{device_id}:{day.isoformat()}",
            limit=rules.limits.registrations_per_device_per_day, window=86400,
            code="device_limit_reached",
            message="this device has registered too many members today")
    client = asyncpg_client()
    for _ in range(5):
        try:
            # created_at from the app's clock: the referral window is measured on it
            if client is None:
                member = await Member.create(appid=appid, openid=openid, unionid=unionid, created_at=now,
                                             last_login_at=now, device_id=device_id,
                                             invite_code=new_invite_code())
                return member, True
            async with client.acquire_connection() as con:
                row = await con.fetchrow(_REGISTER, appid, openid, unionid, device_id, new_invite_code(), now)
            if row is not None:
                fields = dict(row)
                waiting = fields.pop("payments_waiting")
                member = Member._init_from_db(**fields)
                member._payments_waiting = waiting  # whether login must run credit_pending
                return member, True
        except (IntegrityError, asyncpg.UniqueViolationError):
            pass  # an invite code collided (or, through the ORM, the same openid logged in twice)
        # The same openid registered meanwhile (ON CONFLICT did nothing), or a collision.
        existing = await _find(appid=appid, openid=openid)
        if existing is not None:
            return existing, False
    raise DomainError("could not allocate an invite code", code="internal_error", status=500)


async def in_batches(query, *, size: int) -> AsyncIterator[list[tuple[int, str]]]:
    """The members of `query` as (id, tier) rows, `size` at a time in id order. Keyset paging
    (each batch starts after the last id): a member whose row changes meanwhile is neither
    skipped nor seen twice, and no batch re-reads the ones before it."""
    last = 0
    while True:
        rows = await query.filter(id__gt=last).order_by("id").limit(size).values_list("id", "tier")
        if not rows:
            return
        last = rows[-1][0]
        yield rows


# /mp/me's read on PostgreSQL: one prepared statement, the row made a Member the way the ORM
# makes one from its own SELECT (no query building).
_GET_MEMBER = "SELECT * FROM member WHERE id = $1"


async def get(member_id: int) -> Member:
    """The member by id, or 404 member_not_found."""
    client = asyncpg_client()
    if client is not None:
        async with client.acquire_connection() as con:
            row = await con.fetchrow(_GET_MEMBER, member_id)
        member = Member._init_from_db(**row) if row is not None else None
    else:
        member = await Member.get_or_none(id=member_id)
    if member is None:
        raise NotFound("member not found", code="member_not_found")
    return member


_PHONE = re.compile(r"^1[3-9]\d{9}$")


def mask_phone(phone: str | None) -> str:
    """138****1234: the first 3 and last 4 digits, the rest hidden; a short number fully hidden;
    no number is "". The one masking of a phone for every API, export and log."""
    if not phone:
        return ""
    return f"{phone[:3]}****{phone[-4:]}" if len(phone) >= 8 else "*" * len(phone)


async def activate_card(*, member_id: int, name: str, phone: str, birthday: str, today: date) -> Member:
    """Activate the member card with name, mainland mobile number and birthday (422 naming the field)."""
    name = (name or "").strip()
    if not name or len(name) > 32:
        raise InvalidField("name", "must be 1 to 32 characters")
    phone = (phone or "").strip()
    if not _PHONE.match(phone):
        raise InvalidField("phone", "must be an 11-digit mainland mobile number")
    try:
        born = date.fromisoformat(birthday or "")
    except ValueError:
        raise InvalidField("birthday", "must be a date YYYY-MM-DD") from None
    if born > today or born < today - timedelta(days=366 * 120):
        raise InvalidField("birthday", "must be a real date in the past")
    member = await get(member_id)
    await Member.filter(id=member_id).update(name=name, phone=phone, birthday=born, card_activated=True)
    member.name, member.phone, member.birthday, member.card_activated = name, phone, born, True
    return member


def streak_today(member: Member, today: date) -> int:
    """The streak as the member sees it: 0 once a day has been missed."""
    if member.last_checkin and member.last_checkin >= today - timedelta(days=1):
        return member.streak
    return 0


def render(member: Member, *, today: date, rules: Rules) -> dict:
    """A member as /mp/me shows it (CONTRACT.md), phone masked."""
    tier = rules.tier(member.tier)
    levels = rules.tiers.levels
    index = next((i for i, t in enumerate(levels) if t.key == tier.key), 0)
    upcoming = levels[index + 1] if index + 1 < len(levels) else None
    return {
        "id": member.id,
        "tier": tier.key,
        "tier_name": tier.name,
        "points": int(member.points),
        "growth": int(member.growth),
        "streak": streak_today(member, today),
        "card_activated": member.card_activated,
        "invite_code": member.invite_code,
        "name": member.name,
        "phone": mask_phone(member.phone) if member.phone is not None else None,
        "birthday": member.birthday.isoformat() if member.birthday else None,
        "next_tier": ({"tier": upcoming.key, "name": upcoming.name,
                       "growth_needed": max(0, upcoming.floor - int(member.growth))}
                      if upcoming else None),
    }
