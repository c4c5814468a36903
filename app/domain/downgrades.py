"""Inactivity downgrades (CONTRACT.md): no payment for 3 full calendar months → down one tier,
growth set to that tier's floor."""
from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from app.domain import members, wecom
from app.domain.clock import add_months, day_start
from app.domain.rules import Rules
from app.models import Member, TierChange

CHUNK = 2000


def inactive_since(*, today: date, months: int, tz: ZoneInfo) -> datetime:
    """The cutoff: the start (business time) of the month `months` before today's month.

    "3 full calendar months" are the three whole months before the current one: run on
    2026-12-01 (or any day of December), a member qualifies when nothing was paid since
    2026-09-01 00:00 Asia/Shanghai — September, October and November passed without a payment.
    """
    return day_start(add_months(today.replace(day=1), -months), tz)


def _idle(cutoff: datetime) -> Q:
    # Never paid: counted from joining. A tier change (up by check-ins, or a previous downgrade)
    # restarts the count, so a member drops one tier per `months` of silence, not one a month.
    paid = Q(last_paid_at__lt=cutoff) | Q(last_paid_at=None, created_at__lt=cutoff)
    return paid & (Q(tier_since=None) | Q(tier_since__lt=cutoff))


async def downgrade_inactive(*, rules: Rules, today: date, now: datetime, tz: ZoneInfo,
                             chunk: int = CHUNK, total=lambda n: None, advance=lambda n: None) -> dict:
    """Move every member above the lowest tier who paid nothing since `inactive_since(...)` down one
    tier, growth to that tier's floor, tier_since to `now`, with a TierChange (cause "downgrade").

    The whole condition is repeated under the row locks (PostgreSQL) of each chunk's
    transaction, so a payment landing meanwhile keeps its member's tier; tier_since = now makes a
    second run the same month find nobody.
    """
    # UTC: SQLite compares stored datetimes as text
    cutoff = inactive_since(today=today, months=rules.tiers.downgrade_after_months, tz=tz) \
        .astimezone(timezone.utc)
    now = now.astimezone(timezone.utc)
    levels = rules.tiers.levels
    below = {levels[i].key: levels[i - 1] for i in range(1, len(levels))}
    query = Member.filter(_idle(cutoff), tier__in=list(below))
    total(await query.count())
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "downgraded": 0}
    async for rows in members.in_batches(query, size=chunk):
        async with in_transaction() as tx:
            ids = [r[0] for r in rows]
            locked = await Member.filter(_idle(cutoff), id__in=ids, tier__in=list(below)) \
                .select_for_update().using_db(tx).order_by("id").values_list("id", "tier")
            changes = []
            for source in [lv.key for lv in levels[1:]]:
                moving = [m for m, tier in locked if tier == source]
                if not moving:
                    continue
                target = below[source]
                await Member.filter(id__in=moving).using_db(tx).update(
                    tier=target.key, growth=target.floor, tier_since=now)
                changes.extend(TierChange(member_id=m, from_tier=source, to_tier=target.key,
                                          cause="downgrade") for m in moving)
            await TierChange.bulk_create(changes, using_db=tx)
            # 企业微信 tier tags follow in the same transaction.
            await wecom.queue_mark_tags(conn=tx, causes={c.member_id: f"down{now:%Y%m%dT%H%M%S}" for c in changes},
                                        now=now)
        summary["seen"] += len(rows)
        summary["downgraded"] += len(changes)
        summary["skipped"] += len(rows) - len(changes)
        advance(len(rows))
    return summary
