"""Tiers (CONTRACT.md): by growth value out of the box — regular 0 ×1.0 · silver 500 ×1.2 ·
gold 5000 ×1.5 · diamond 20000 ×2.0 — or by paid orders or spend in a window (rule `tiers`,
`basis`), and the trial tier of new members (rule `trial_tier`, 0元升级). Every move is a
TierChange row with its cause, and queues the member's 企业微信 tier tag.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import F
from tortoise.functions import Count, Sum
from tortoise.transactions import in_transaction

from app.domain import messages, wecom
from app.domain.clock import business_day
from app.domain.rules import Rules
from app.models import Member, Payment, TierChange, TierTrial


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
    if variant(rules):
        return await follow(conn=conn, member_id=member_id, rules=rules, cause=cause, now=now,
                            allow_down=allow_down)
    row = await Member.filter(id=member_id).using_db(conn).values("tier", "growth")
    if not row:
        return None
    current, growth = row[0]["tier"], int(row[0]["growth"])
    target = rules.tier_for_growth(growth).key
    return await _move(conn=conn, member_id=member_id, rules=rules, current=current, target=target,
                       cause=cause, now=now, allow_down=allow_down)


async def _move(*, conn: BaseDBAsyncClient, member_id: int, rules: Rules, current: str, target: str,
                cause: str, now, allow_down: bool) -> TierChange | None:
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


def variant(rules: Rules) -> bool:
    """Whether tiers follow more than growth: another basis, or trial tiers."""
    return rules.tiers.basis != "growth" or rules.trial_tier.enabled


async def rule_tier(*, conn: BaseDBAsyncClient | None, member_id: int, rules: Rules, now: datetime,
                    growth: int | None = None) -> str:
    """The tier the rules give the member now, by the basis in force: growth against the floors,
    or its paid orders (not fully refunded) or whole yuan net of refunds in the last window_days."""
    basis = rules.tiers.basis
    if basis == "growth":
        if growth is None:
            growth = await Member.filter(id=member_id).using_db(conn).first().values_list("growth", flat=True)
        return rules.tier_for_growth(int(growth or 0)).key
    since = (now - timedelta(days=getattr(rules.tiers, basis).window_days)).astimezone(timezone.utc)
    paid = Payment.filter(member_id=member_id, credited=True, paid_at__gt=since,
                          paid_at__lte=now.astimezone(timezone.utc))
    if basis == "orders":
        rows = await paid.filter(refunded_fen__lt=F("payer_total_fen")).using_db(conn) \
            .annotate(n=Count("id")).values("n")
        value = int(rows[0]["n"] or 0) if rows else 0
    else:
        rows = await paid.using_db(conn).annotate(fen=Sum("payer_total_fen"), back=Sum("refunded_fen")) \
            .values("fen", "back")
        value = (int(rows[0]["fen"] or 0) - int(rows[0]["back"] or 0)) // 100 if rows else 0
    return rules.tiers.threshold_tier(value).key


async def _trial_tier(*, conn: BaseDBAsyncClient | None, member_id: int, now: datetime) -> str | None:
    """The tier an unfinished trial holds the member at, or None."""
    trial = await TierTrial.filter(member_id=member_id, ended_at=None, ends_at__gt=now.astimezone(timezone.utc)) \
        .using_db(conn).first()
    if trial is None:
        return None
    return trial.upgraded_tier or trial.tier


async def follow(*, conn: BaseDBAsyncClient, member_id: int, rules: Rules, cause: str, now: datetime,
                 allow_down: bool = False) -> TierChange | None:
    """Move the member to the higher of the tier the rules give (`rule_tier`) and the tier its
    running trial holds; down only when `allow_down` (a refund, a trial's end, a window's lapse)."""
    row = await Member.filter(id=member_id).using_db(conn).values("tier", "growth")
    if not row:
        return None
    target = await rule_tier(conn=conn, member_id=member_id, rules=rules, now=now, growth=row[0]["growth"])
    held = await _trial_tier(conn=conn, member_id=member_id, now=now) if rules.trial_tier.enabled else None
    if held is not None and rank(rules, held) > rank(rules, target):
        target = held
    return await _move(conn=conn, member_id=member_id, rules=rules, current=row[0]["tier"], target=target,
                       cause=cause, now=now, allow_down=allow_down)


async def start_trial(*, member_id: int, rules: Rules, now: datetime) -> TierChange | None:
    """A new member holds `trial_tier.tier` (silver) for `trial_tier.days` (7): once per member
    (a unique row), when the rule is enabled. TierChange cause "trial"."""
    if not rules.trial_tier.enabled:
        return None
    now = now.astimezone(timezone.utc)
    async with in_transaction() as conn:
        await TierTrial.bulk_create([TierTrial(member_id=member_id, tier=rules.trial_tier.tier, starts_at=now,
                                               ends_at=now + timedelta(days=rules.trial_tier.days))],
                                    ignore_conflicts=True, using_db=conn)
        return await follow(conn=conn, member_id=member_id, rules=rules, cause="trial", now=now)


async def after_payment(*, conn: BaseDBAsyncClient, member_id: int, rules: Rules, transaction_id: str,
                        paid_at: datetime, now: datetime) -> TierChange | None:
    """Inside the payment's transaction, when tiers follow more than growth: a paid order within
    a running trial makes it `upgrade_tier` (gold), once (a conditional UPDATE of the trial: the
    first order wins); then the member follows its tier (cause "trial_order" or "payment")."""
    if await Member.filter(id=member_id, blacklisted=True).using_db(conn).exists():
        return None  # a blacklisted member earns nothing (seed 004), tiers included
    cause = "payment"
    if rules.trial_tier.enabled:
        at = paid_at.astimezone(timezone.utc)
        upgraded = await TierTrial.filter(member_id=member_id, ended_at=None, upgraded_by=None,
                                          starts_at__lte=at, ends_at__gt=at).using_db(conn) \
            .update(upgraded_tier=rules.trial_tier.upgrade_tier, upgraded_by=transaction_id)
        if upgraded:
            cause = "trial_order"
    return await follow(conn=conn, member_id=member_id, rules=rules, cause=cause, now=now)


async def after_refund(*, conn: BaseDBAsyncClient, member_id: int, rules: Rules, transaction_id: str,
                       fully_refunded: bool, now: datetime) -> TierChange | None:
    """Inside the refund's transaction: the full refund of the order that upgraded a trial
    reverts that upgrade (cause "trial_refund"); then the member follows its tier, down too."""
    cause = "refund"
    if fully_refunded:
        reverted = await TierTrial.filter(member_id=member_id, upgraded_by=transaction_id, ended_at=None) \
            .using_db(conn) \
            .update(upgraded_tier=None, upgraded_by=None)
        if reverted:
            cause = "trial_refund"
    return await follow(conn=conn, member_id=member_id, rules=rules, cause=cause, now=now, allow_down=True)


async def end_trials(*, rules: Rules, now: datetime, batch: int = 2000, total=lambda n: None,
                     advance=lambda n: None) -> dict:
    """Each trial whose days are over ends once (a conditional UPDATE of ended_at), and its member
    falls back to the tier the rules give (TierChange cause "trial_end"); a job runs it."""
    now = now.astimezone(timezone.utc)
    due = await TierTrial.filter(ended_at=None, ends_at__lte=now).order_by("id").values_list("id", "member_id")
    total(len(due))
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "ended": 0, "moved": 0}
    for start in range(0, len(due), batch):
        part = due[start:start + batch]
        for trial_id, member_id in part:
            async with in_transaction() as conn:
                ended = await TierTrial.filter(id=trial_id, ended_at=None).using_db(conn).update(ended_at=now)
                if not ended:
                    summary["skipped"] += 1
                    continue
                summary["ended"] += 1
                moved = await follow(conn=conn, member_id=member_id, rules=rules, cause="trial_end", now=now,
                                     allow_down=True)
                summary["moved"] += moved is not None
        summary["seen"] += len(part)
        advance(len(part))
    return summary


async def review_windows(*, rules: Rules, now: datetime, batch: int = 2000, total=lambda n: None,
                         advance=lambda n: None) -> dict:
    """Under the orders or spend basis, orders leave the window as days pass: every member above
    the first tier is re-evaluated, down too (cause "window"). Nothing under the growth basis."""
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "moved": 0}
    if rules.tiers.basis == "growth":
        return summary
    ids = await Member.filter(tier__not=rules.tiers.levels[0].key).order_by("id").values_list("id", flat=True)
    total(len(ids))
    for start in range(0, len(ids), batch):
        part = ids[start:start + batch]
        for member_id in part:
            async with in_transaction() as conn:
                moved = await follow(conn=conn, member_id=member_id, rules=rules, cause="window", now=now,
                                     allow_down=True)
            summary["moved"] += moved is not None
        summary["seen"] += len(part)
        advance(len(part))
    return summary


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
