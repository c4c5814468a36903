"""What operators do to members from the admin API: find them, look at one, adjust points.

A manual points change follows points.adjust under the key `admin:{idempotency_key}`: the same
key again returns the first entry and changes nothing; each new change is one audit row,
written in the ledger's transaction.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from app.domain import members, points
from app.errors import Conflict, InvalidField, NotFound
from app.models import AuditLog, Coupon, LedgerEntry, Member, Referral, TierChange

SEARCH_LIMIT = 50


def render_member(member: Member) -> dict:
    """A member as operators see it: the phone masked like everywhere else."""
    return {
        "id": member.id, "openid": member.openid,
        "phone": members.mask_phone(member.phone) if member.phone is not None else None,
        "name": member.name, "tier": member.tier, "points": int(member.points),
        "growth": int(member.growth), "streak": member.streak,
        "card_activated": member.card_activated, "blacklisted": member.blacklisted,
        "invite_code": member.invite_code, "device_id": member.device_id,
        "created_at": member.created_at.isoformat() if member.created_at else None,
    }


def render_entry(entry: LedgerEntry) -> dict:
    return {
        "id": entry.id, "delta": int(entry.delta), "reason": entry.reason, "note": entry.note,
        "idempotency_key": entry.idempotency_key, "remaining": int(entry.remaining),
        "created_at": entry.created_at.isoformat() if entry.created_at else None,
        "expires_at": entry.expires_at.isoformat() if entry.expires_at else None,
    }


async def search(*, q: str, reads: Any = None) -> list[Member]:
    """Members whose id, openid or phone is exactly `q` (at most 50), read from `reads` (the
    replica) if given, else the primary."""
    q = (q or "").strip()
    if not q:
        raise InvalidField("q", "search by member id, openid or phone")
    if len(q) > 64:
        raise InvalidField("q", "at most 64 characters")
    where = Q(openid=q) | Q(phone=q)
    if q.isdigit() and len(q) <= 18:
        where |= Q(id=int(q))
    found = Member.filter(where).order_by("id").limit(SEARCH_LIMIT)
    return await (found.using_db(reads) if reads is not None else found)


async def detail(*, member_id: int) -> dict:
    """One member with the last 50 ledger entries, tier history, coupons and referrals."""
    member = await Member.get_or_none(id=member_id)
    if member is None:
        raise NotFound("member not found", code="member_not_found")
    ledger = await LedgerEntry.filter(member_id=member_id).order_by("-id").limit(50)
    tiers = await TierChange.filter(member_id=member_id).order_by("-id").limit(50)
    coupons = await Coupon.filter(member_id=member_id).order_by("-id").limit(50)
    made = await Referral.filter(inviter_id=member_id).order_by("-id").limit(50)
    received = await Referral.filter(invitee_id=member_id).first()
    return {
        "member": render_member(member),
        "ledger": [render_entry(e) for e in ledger],
        "tier_history": [{"from": t.from_tier, "to": t.to_tier, "cause": t.cause,
                          "at": t.created_at.isoformat()} for t in tiers],
        "coupons": [{"id": c.id, "code": c.code, "template_id": c.template_id,
                     "expires_at": c.expires_at.isoformat(),
                     "used_at": c.used_at.isoformat() if c.used_at else None} for c in coupons],
        "referrals": {
            "invited": [_render_referral(r) for r in made],
            "invited_by": _render_referral(received) if received else None,
        },
    }


def _render_referral(r: Referral) -> dict:
    return {"inviter_id": r.inviter_id, "invitee_id": r.invitee_id, "source": r.source,
            "paid_at": r.paid_at.isoformat() if r.paid_at else None,
            "rewarded_at": r.rewarded_at.isoformat() if r.rewarded_at else None,
            "reward_skipped": r.reward_skipped}


async def adjust_points(*, member_id: int, delta: int, reason: str, idempotency_key: str, actor: str,
                        now: datetime, expiry_months: int) -> points.Posting:
    """A manual change of `delta` points (an earning lot, or a spend that may not overdraw: 409
    insufficient_points), once per idempotency key; the same key with another delta is 409."""
    if delta == 0:
        raise InvalidField("delta", "must not be zero")
    reason = (reason or "").strip()
    if not reason or len(reason) > 255:
        raise InvalidField("reason", "must be 1 to 255 characters")
    idempotency_key = (idempotency_key or "").strip()
    if not idempotency_key or len(idempotency_key) > 100:
        raise InvalidField("idempotency_key", "must be 1 to 100 characters")
    if not await Member.filter(id=member_id).exists():
        raise NotFound("member not found", code="member_not_found")
    key = f"admin:{idempotency_key}"
    try:
        # The audit row shares the ledger entry's transaction, so no change goes unaudited.
        async with in_transaction() as conn:
            posting = await points.adjust(conn=conn, member_id=member_id, delta=delta, reason="admin",
                                          key=key, now=now, expiry_months=expiry_months, note=reason)
            await AuditLog.create(
                actor=actor, action="members.points", target=f"member:{member_id}",
                before={"points": posting.balance - delta},
                after={"points": posting.balance, "delta": delta, "reason": reason,
                       "entry_id": posting.entry.id, "idempotency_key": idempotency_key},
                using_db=conn)
        return posting
    except IntegrityError:
        entry = await LedgerEntry.get_or_none(idempotency_key=key)
        if entry is None:
            raise
    if int(entry.delta) != delta or entry.member_id != member_id:
        raise Conflict("this idempotency_key was used for another change", code="idempotency_key_reused")
    member = await Member.get(id=member_id)
    return points.Posting(entry=entry, balance=int(member.points), created=False)
