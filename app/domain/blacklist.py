"""The blacklist (seed 004, risk control): a member id or a device id that earns nothing, gets no
referral reward and cannot log in (antiabuse.is_blacklisted reads it; Member.blacklisted is the
fast flag check-in reads). A blacklisted member's sessions end at once, and redeeming rewards
and using coupons are refused (403 `blacklisted`, `refuse_blacklisted`). Every change is an
audit row written in the same transaction.
"""
from __future__ import annotations

from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from app.domain import antiabuse, members
from app.errors import Forbidden, InvalidField, NotFound
from app.models import AuditLog, Blacklist, Member

KINDS = ("member", "device")


def render(row: Blacklist) -> dict:
    return {"kind": row.kind, "value": row.value, "reason": row.reason,
            "created_at": row.created_at.isoformat() if row.created_at else None}


async def _check(kind: str, value: str) -> str:
    if kind not in KINDS:
        raise InvalidField("kind", "must be member or device")
    value = (value or "").strip()
    if not value or len(value) > 64:
        raise InvalidField("value", "must be 1 to 64 characters")
    if kind == "member":
        if not value.isdigit() or len(value) > 18:
            raise InvalidField("value", "a member is named by its numeric id")
        value = str(int(value))
        if not await Member.filter(id=int(value)).exists():
            raise NotFound(f"member {value} not found", code="member_not_found")
    return value


async def add(*, redis: Redis, kind: str, value: str, reason: str, actor: str) -> tuple[Blacklist, bool]:
    """Blacklist a member or a device once; again is a no-op returning the existing row (False).
    Every session of a blacklisted member ends at once (again too: a retry finishes the job)."""
    value = await _check(kind, value)
    reason = (reason or "").strip()[:255]
    try:
        async with in_transaction() as conn:
            row = await Blacklist.create(kind=kind, value=value, reason=reason, using_db=conn)
            if kind == "member":
                await Member.filter(id=int(value)).using_db(conn).update(blacklisted=True)
            await AuditLog.create(actor=actor, action="blacklist.add", target=f"{kind}:{value}",
                                  before=None, after=render(row), using_db=conn)
        created = True
    except IntegrityError:
        row, created = await Blacklist.get(kind=kind, value=value), False
    if kind == "member":
        # after the commit: a login checking the blacklist meanwhile sees it, or its session
        # is already listed and ends here (members.login)
        await members.revoke_sessions(redis=redis, member_id=int(value))
    return row, created


async def refuse_blacklisted(*, member_id: int) -> None:
    """403 `blacklisted` when the member is on the blacklist: it may not redeem rewards or use
    coupons."""
    if await Member.filter(id=member_id, blacklisted=True).exists() or \
            await antiabuse.is_blacklisted(member_id=member_id):
        raise Forbidden("this member is blacklisted", code="blacklisted")


async def remove(*, kind: str, value: str, actor: str) -> Blacklist:
    """Take a member or device off the blacklist (404 not_blacklisted when it is not on it)."""
    if kind not in KINDS:
        raise InvalidField("kind", "must be member or device")
    async with in_transaction() as conn:
        row = await Blacklist.filter(kind=kind, value=value).using_db(conn).first()
        if row is None:
            raise NotFound(f"{kind} {value} is not blacklisted", code="not_blacklisted")
        # Conditional on the row still being there, so two racing removals audit once.
        if not await Blacklist.filter(id=row.id).using_db(conn).delete():
            raise NotFound(f"{kind} {value} is not blacklisted", code="not_blacklisted")
        if kind == "member" and value.isdigit():
            await Member.filter(id=int(value)).using_db(conn).update(blacklisted=False)
        await AuditLog.create(actor=actor, action="blacklist.remove", target=f"{kind}:{value}",
                              before=render(row), after=None, using_db=conn)
    return row


async def listing(*, limit: int = 200) -> list[Blacklist]:
    """The newest entries first (at most 200)."""
    return await Blacklist.all().order_by("-id").limit(limit)
