"""Tiers by growth value (CONTRACT.md): regular 0 ×1.0 · silver 500 ×1.2 · gold 5000 ×1.5 · diamond 20000 ×2.0."""
from __future__ import annotations

from datetime import timezone

from tortoise.backends.base.client import BaseDBAsyncClient

from app.domain import messages, wecom
from app.domain.clock import business_day
from app.domain.rules import Rules
from app.models import Member, TierChange


def rank(rules: Rules, key: str) -> int:
    for index, level in enumerate(rules.tiers.levels):
        if level.key == key:
            return index
    return 0


async def follow_growth(*, conn: BaseDBAsyncClient, member_id: int, rules: Rules, cause: str,
                        now, allow_down: bool = False) -> TierChange | None:
    """Move the member to the tier its growth reaches, up as many tiers as it crosses, at once.

    Down only when `allow_down` (a refund taking growth back); inactivity downgrades are a job.
    Each move is a TierChange row, the history that welcome messages are sent from.
    """
    row = await Member.filter(id=member_id).using_db(conn).values("tier", "growth")
    if not row:
        return None
    current, growth = row[0]["tier"], int(row[0]["growth"])
    target = rules.tier_for_growth(growth).key
    if target == current:
        return None
    if rank(rules, target) < rank(rules, current) and not allow_down:
        return None
    # Conditional on the tier we read, so two racing transactions record one move.
    moved = await Member.filter(id=member_id, tier=current).using_db(conn).update(
        tier=target, tier_since=now)
    if not moved:
        return None
    change = await TierChange.create(member_id=member_id, from_tier=current, to_tier=target,
                                     cause=cause, using_db=conn)
    # 企业微信 tier tags follow in the same transaction (nothing when the member has no contact).
    await wecom.queue_mark_tags(conn=conn, causes={member_id: f"tc{change.id}"}, now=now)
    return change


async def welcome_upgrades(*, rules: Rules, now, since, tz, batch: int = 2000,
                           total=lambda n: None, advance=lambda n: None) -> dict:
    """A subscription message (kind "tier_upgrade") for each move up since `since`, once:
    key `tier_upgrade:{member}:{tier_change_id}`, so re-runs and overlapping windows queue none twice.
    """
    since = since.astimezone(timezone.utc)  # SQLite compares datetimes as text
    ups = [row for row in await TierChange.filter(created_at__gte=since).order_by("id")
           .values_list("id", "member_id", "from_tier", "to_tier", "created_at")
           if rank(rules, row[3]) > rank(rules, row[2])]
    total(len(ups))
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0}
    for start in range(0, len(ups), batch):
        part = ups[start:start + batch]
        sent = await messages.enqueue_many([
            {"member_id": member_id, "kind": "tier_upgrade", "period": str(change_id),
             "values": {"tier": rules.tier(to_tier).name, "date": business_day(day, tz).isoformat()},
             "page": "pages/me/index"}
            for change_id, member_id, _, to_tier, day in part], now=now)
        summary["seen"] += len(part)
        summary["sent"] += sent
        summary["skipped"] += len(part) - sent
        advance(len(part))
    return summary
