"""Referrals: an invitee bound to its inviter once; rewards on the invitee's first paid order."""
from __future__ import annotations

from tortoise.exceptions import IntegrityError

from app.models import Member, Referral


async def bind(*, invitee: Member, invite_code: str, source: str) -> Referral | None:
    """Bind once: no self-invite, no re-binding, and not from a device that registered a member before."""
    code = (invite_code or "").strip().upper()
    if not code or len(code) > 16:
        return None
    inviter = await Member.get_or_none(invite_code=code)
    if inviter is None or inviter.id == invitee.id:
        return None
    if invitee.device_id and await Member.filter(
            device_id=invitee.device_id, id__lt=invitee.id).exists():
        return None
    if inviter.device_id and inviter.device_id == invitee.device_id:
        return None
    try:
        referral = await Referral.create(inviter_id=inviter.id, invitee_id=invitee.id, source=source)
    except IntegrityError:
        return None  # already bound: the first binding stands
    await Member.filter(id=invitee.id, inviter_id=None).update(inviter_id=inviter.id)
    return referral
