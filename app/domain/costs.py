"""What benefits cost (seed 000: 权益成本率 5–10 %, 会员ROI): one cost entry per consumed benefit.

A coupon costs its face value (or the discount taken) when it is redeemed; points cost
`rules.costs.fen_per_point` each (100 points = 1 yuan) when spent in the points mall; bonus
stored value costs what is spent of it (the wallet calls `record(kind="bonus", ...)`). Each entry
is written once per `key` (a unique constraint), inside the transaction that consumed the
benefit, and is tagged with its campaign, experiment and arm, and the member's tier then.

The report (`GET /admin/costs`): benefit cost ratio = cost / member spend per month (business
time), tier and campaign; member ROI = member spend / programme cost; member vs non-member spend
per head (payers who are not members are known from their pay notifications); a month whose
ratio leaves [ratio_low, ratio_high] (5–10 %) is flagged.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.functions import Count, Sum

from app.domain import ledger_events, wallet
from app.domain import rules as rules_module
from app.domain.clock import add_months, day_start
from app.domain.rules import Rules
from app.models import CostEntry, Coupon, ExperimentAssignment, Member, Payment, Refund

KINDS = ("coupon", "points", "bonus")
# Points spent on something the brand pays for (the points mall). A make-up check-in buys nothing
# that costs the brand, and refunds, expiry and operators' corrections are not spending.
POINT_SPEND_REASONS = frozenset({"redeem"})


def campaign_of(issue_key: str) -> str | None:
    """The campaign a coupon's issue_key names: `campaign:{key}:...` or `share:{key}:...`."""
    parts = issue_key.split(":")
    if len(parts) >= 3 and parts[0] in ("campaign", "share"):
        return parts[1]
    return None


async def record(*, conn: BaseDBAsyncClient | None, kind: str, amount_fen: int, key: str, now: datetime,
                 member_id: int | None = None, source: str = "", campaign: str | None = None,
                 experiment: str | None = None, arm: str | None = None, tier: str | None = None) -> bool:
    """Record what one consumed benefit cost, once per `key` (e.g. `bonus:{wallet entry}`), inside
    the caller's transaction; True unless the key was recorded before. A negative amount gives
    a cost back (a refund). The unique key keeps one row under any race; INSERT ... ON CONFLICT
    DO NOTHING leaves the caller's transaction usable when a racing twin won.
    """
    if kind not in KINDS:
        raise ValueError(f"cost kind must be one of {KINDS}")
    if tier is None and member_id is not None:
        tier = await Member.filter(id=member_id).using_db(conn).first().values_list("tier", flat=True)
    before = await CostEntry.filter(key=key).using_db(conn).exists()
    if before:
        return False
    await CostEntry.bulk_create([CostEntry(
        key=key, kind=kind, amount_fen=int(amount_fen), member_id=member_id, tier=tier,
        source=source[:64], campaign=campaign, experiment=experiment, arm=arm,
        occurred_at=now.astimezone(timezone.utc))], ignore_conflicts=True, using_db=conn)
    return True


def coupon_value(coupon: Coupon, *, order_fen: int | None) -> int:
    """A coupon's cost: an amount coupon its face value; a discount coupon the discount taken on
    `order_fen` (0 when the order's amount is not known)."""
    tpl = coupon.template
    if tpl.kind == "discount":
        return int(order_fen or 0) * (100 - int(tpl.discount_percent)) // 100
    return int(tpl.amount_fen)


async def record_coupon(*, conn: BaseDBAsyncClient, coupon: Coupon, now: datetime,
                        order_fen: int | None = None) -> bool:
    """The cost entry of a redeemed coupon (key `coupon:{id}`), tagged with the experiment arm
    that granted it, if any, and the campaign its issue_key names."""
    assigned = await ExperimentAssignment.filter(coupon_id=coupon.id).using_db(conn) \
        .select_related("experiment").first()
    return await record(conn=conn, kind="coupon", amount_fen=coupon_value(coupon, order_fen=order_fen),
                        key=f"coupon:{coupon.id}", now=now, member_id=coupon.member_id,
                        source=coupon.issue_key.split(":")[0], campaign=campaign_of(coupon.issue_key),
                        experiment=assigned.experiment.key if assigned else None,
                        arm=assigned.arm if assigned else None)


async def _on_posted(conn: BaseDBAsyncClient, posted: ledger_events.Posted) -> None:
    """The ledger's subscriber: a mall spend costs its points at rules.costs.fen_per_point; a
    restore of such a spend (a released or refunded redemption) gives that cost back."""
    entry = posted.entry
    if posted.kind == "debit" and entry.reason in POINT_SPEND_REASONS and entry.delta < 0:
        fen_per_point = (await rules_module.load()).costs.fen_per_point  # cached: no query per spend
        await record(conn=conn, kind="points", amount_fen=round(-int(entry.delta) * fen_per_point),
                     key=f"points:{entry.idempotency_key}", now=posted.now, member_id=posted.member_id,
                     source=entry.reason)
    elif posted.kind == "restore" and posted.debit_key:
        spent = await CostEntry.filter(key=f"points:{posted.debit_key}").using_db(conn).first()
        if spent is not None:
            fen_per_point = (await rules_module.load()).costs.fen_per_point
            await record(conn=conn, kind="points", amount_fen=-round(int(entry.delta) * fen_per_point),
                         key=f"points:{entry.idempotency_key}", now=posted.now, member_id=posted.member_id,
                         source=entry.reason, tier=spent.tier)


async def _on_bonus(*, conn: BaseDBAsyncClient, member_id: int, bonus_fen: int, key: str, now: datetime) -> None:
    """wallet's subscriber: the bonus share of a stored-value spend is a benefit the brand pays."""
    if bonus_fen > 0:
        await record(conn=conn, kind="bonus", amount_fen=bonus_fen, key=f"bonus:{key}", now=now,
                     member_id=member_id, source="wallet")


def install() -> None:
    """Subscribe to the ledger's postings and the wallet's bonus spends (idempotent):
    app.domain.wiring.install calls it."""
    ledger_events.subscribe(ledger_events.Subscriber(name="costs", on_posted=_on_posted))
    wallet.on_bonus_spent(_on_bonus)


def _months(first: date, last: date) -> list[tuple[str, date, date]]:
    out, start = [], first.replace(day=1)
    while start <= last:
        end = add_months(start, 1) - timedelta(days=1)
        out.append((start.strftime("%Y-%m"), max(start, first), min(end, last)))
        start = add_months(start, 1)
    return out


def _alert(ratio: float | None, rules: Rules) -> str:
    if ratio is None:
        return "no_spend"
    if ratio < rules.costs.ratio_low:
        return "low"
    if ratio > rules.costs.ratio_high:
        return "high"
    return "ok"


def _ratio(cost: int, spend: int) -> float | None:
    return round(cost / spend, 4) if spend > 0 else None


async def _spend(*, start: datetime, end: datetime, members: bool) -> tuple[int, int]:
    """(net spend in fen, distinct payers) of payments in [start, end): members' or not."""
    query = Payment.filter(paid_at__gte=start, paid_at__lt=end, member_id__isnull=not members)
    row = await query.annotate(fen=Sum("payer_total_fen")).values("fen")
    gross = int(row[0]["fen"] or 0) if row else 0
    refunded = await Refund.filter(payment__paid_at__gte=start, payment__paid_at__lt=end,
                                   payment__member_id__isnull=not members) \
        .annotate(fen=Sum("refund_fen")).values("fen")
    net = gross - (int(refunded[0]["fen"] or 0) if refunded else 0)
    field = "member_id" if members else "openid"
    payers = len(set(await query.values_list(field, flat=True)))
    return net, payers


async def _costs_by(*, start: datetime, end: datetime, field: str) -> dict[str, dict[str, int]]:
    rows = await CostEntry.filter(occurred_at__gte=start, occurred_at__lt=end) \
        .annotate(fen=Sum("amount_fen"), n=Count("id")).group_by(field, "kind").values(field, "kind", "fen", "n")
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        bucket = out.setdefault(row[field] or "", {k: 0 for k in KINDS} | {"entries": 0})
        bucket[row["kind"]] = bucket.get(row["kind"], 0) + int(row["fen"] or 0)
        bucket["entries"] += int(row["n"] or 0)
    return out


def _total(kinds: dict[str, int]) -> int:
    return sum(kinds.get(k, 0) for k in KINDS)


async def report(*, first: date, last: date, rules: Rules, tz: ZoneInfo) -> dict:
    """The benefit cost ratio per month, tier and campaign, member ROI, and member vs non-member
    spend per head, for the business days first..last; a month outside 5–10 % is flagged."""
    utc = timezone.utc
    start, end = day_start(first, tz).astimezone(utc), day_start(last + timedelta(days=1), tz).astimezone(utc)
    months = []
    for label, m_first, m_last in _months(first, last):
        m_start = day_start(m_first, tz).astimezone(utc)
        m_end = day_start(m_last + timedelta(days=1), tz).astimezone(utc)
        rows = await CostEntry.filter(occurred_at__gte=m_start, occurred_at__lt=m_end) \
            .annotate(fen=Sum("amount_fen")).group_by("kind").values("kind", "fen")
        kinds = {k: 0 for k in KINDS} | {r["kind"]: int(r["fen"] or 0) for r in rows}
        spend, _ = await _spend(start=m_start, end=m_end, members=True)
        ratio = _ratio(_total(kinds), spend)
        months.append({"month": label, **{f"{k}_fen": kinds[k] for k in KINDS}, "cost_fen": _total(kinds),
                       "member_spend_fen": spend, "ratio": ratio, "alert": _alert(ratio, rules)})
    member_spend, member_payers = await _spend(start=start, end=end, members=True)
    other_spend, other_payers = await _spend(start=start, end=end, members=False)
    total = sum(m["cost_fen"] for m in months)
    # Spend per tier is by the member's tier now: payments do not keep the tier they were made in.
    tier_spend: dict[str, int] = {}
    paid = await Payment.filter(paid_at__gte=start, paid_at__lt=end, member_id__isnull=False) \
        .annotate(fen=Sum("payer_total_fen")).group_by("member__tier").values("member__tier", "fen")
    for row in paid:
        tier_spend[row["member__tier"]] = int(row["fen"] or 0)
    by_tier = []
    tier_costs = await _costs_by(start=start, end=end, field="tier")
    for level in rules.tiers.levels:
        kinds = tier_costs.get(level.key, {})
        by_tier.append({"tier": level.key, "cost_fen": _total(kinds), "member_spend_fen": tier_spend.get(level.key, 0),
                        "ratio": _ratio(_total(kinds), tier_spend.get(level.key, 0))})
    by_campaign = [{"campaign": name, "cost_fen": _total(kinds), "entries": kinds["entries"],
                    "share": _ratio(_total(kinds), total)}
                   for name, kinds in sorted((await _costs_by(start=start, end=end, field="campaign")).items())
                   if name]
    by_experiment = [{"experiment": name, "cost_fen": _total(kinds), "entries": kinds["entries"]}
                     for name, kinds in sorted((await _costs_by(start=start, end=end, field="experiment")).items())
                     if name]
    ratio = _ratio(total, member_spend)
    flagged = [m["month"] for m in months if m["alert"] in ("low", "high")]
    return {
        "from": first.isoformat(), "to": last.isoformat(),
        "band": {"low": rules.costs.ratio_low, "high": rules.costs.ratio_high,
                 "fen_per_point": rules.costs.fen_per_point},
        "cost_fen": total, "member_spend_fen": member_spend, "ratio": ratio,
        "alert": "alert" if flagged else "ok", "alert_months": flagged,
        "member_roi": round(member_spend / total, 4) if total > 0 else None,
        "spend_per_head": {
            "members": {"spend_fen": member_spend, "payers": member_payers,
                        "per_head_fen": member_spend // member_payers if member_payers else None},
            "non_members": {"spend_fen": other_spend, "payers": other_payers,
                            "per_head_fen": other_spend // other_payers if other_payers else None},
        },
        "months": months, "tiers": by_tier, "campaigns": by_campaign, "experiments": by_experiment,
    }
