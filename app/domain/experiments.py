"""A/B tests of rewards (seed 000: 9折券 vs 满减券 on repurchase; seed 004: 7 vs 3 days' validity).

An experiment is fixed up front: its arms with weights (a holdout arm grants nothing), the
coupon each arm grants, the population (an RFM segment, or a campaign's members), the metric
(repurchase, or redemption of the arm's coupon, within N days of assignment) and the horizon
(no assignment after `ends_at`). A member's arm is sha256(salt:member_id) over the weights:
deterministic, and stored once (unique per experiment and member), so it never changes.
Results per arm: conversions, rate, lift against control with 95 % intervals, the z-test's
p-value, the sample-ratio check, and the cost of the arm's rewards (cost entries tagged with it).
"""
from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tortoise import connections
from tortoise.exceptions import IntegrityError
from tortoise.functions import Sum
from tortoise.transactions import in_transaction

from app.domain import coupons, segments, stats
from app.errors import Conflict, InvalidField, NotFound
from app.models import AuditLog, Coupon, CostEntry, Experiment, ExperimentAssignment, MemberScore

BATCH = 5000


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reward(_Spec):
    """The coupon an arm grants: an amount (over an optional minimum) or a discount, valid N days."""

    name: str = Field("实验券", min_length=1, max_length=32)
    amount_fen: int = Field(0, ge=0, le=10_000_000)
    discount_percent: int = Field(100, ge=1, le=100)
    min_spend_fen: int = Field(0, ge=0, le=100_000_000)
    valid_days: int = Field(ge=1, le=366)

    @model_validator(mode="after")
    def _gives_something(self) -> "Reward":
        if (self.amount_fen > 0) == (self.discount_percent < 100):
            raise ValueError("a reward is either amount_fen > 0 or discount_percent < 100")
        return self


class Arm(_Spec):
    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_]{0,31}$")
    weight: int = Field(ge=1, le=10_000)
    holdout: bool = False
    reward: Reward | None = None

    @model_validator(mode="after")
    def _holdout_grants_nothing(self) -> "Arm":
        if self.holdout and self.reward is not None:
            raise ValueError("a holdout arm grants no reward")
        if not self.holdout and self.reward is None:
            raise ValueError("an arm that is not a holdout grants a reward")
        return self


class Population(_Spec):
    segment: str | None = None
    campaign: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")

    @model_validator(mode="after")
    def _one(self) -> "Population":
        if (self.segment is None) == (self.campaign is None):
            raise ValueError("name either a segment or a campaign")
        if self.segment is not None and self.segment not in segments.SEGMENTS:
            raise ValueError(f"segment must be one of {', '.join(segments.SEGMENTS)}")
        return self


class Metric(_Spec):
    kind: Literal["repurchase", "redemption"]
    days: int = Field(ge=1, le=365)


class Spec(_Spec):
    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    name: str = Field(min_length=1, max_length=64)
    arms: tuple[Arm, ...] = Field(min_length=2, max_length=10)
    control: str | None = None  # the first arm unless named
    population: Population
    metric: Metric
    starts_at: datetime | None = None  # now unless given
    horizon_days: int = Field(ge=1, le=366)

    @model_validator(mode="after")
    def _arms(self) -> "Spec":
        keys = [a.key for a in self.arms]
        if len(set(keys)) != len(keys):
            raise ValueError("arm keys must be unique")
        if self.control is not None and self.control not in keys:
            raise ValueError("control must name an arm")
        if self.starts_at is not None and self.starts_at.tzinfo is None:
            raise ValueError("starts_at needs a timezone")
        return self


def arm_for(*, salt: str, member_id: int, arms: list[dict]) -> str:
    """The arm of a member: the first 8 bytes of sha256("{salt}:{member_id}") modulo the total
    weight, walked over the arms in their order."""
    digest = hashlib.sha256(f"{salt}:{member_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % sum(int(a["weight"]) for a in arms)
    for arm in arms:
        point -= int(arm["weight"])
        if point < 0:
            return arm["key"]
    return arms[-1]["key"]  # unreachable: the weights add up


def render(exp: Experiment) -> dict:
    return {"key": exp.key, "name": exp.name, "arms": exp.arms, "control": exp.control,
            "population": exp.population, "metric": {"kind": exp.metric, "days": exp.metric_days},
            "starts_at": exp.starts_at.isoformat(), "ends_at": exp.ends_at.isoformat()}


async def create(*, body: dict[str, Any], actor: str, now: datetime) -> Experiment:
    """Create an experiment, validated (422 naming the field) and audited; 409 experiment_exists
    when the key is taken. It cannot be changed afterwards: a changed test is a new key."""
    try:
        spec = Spec.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidField(where, err["msg"]) from None
    starts = (spec.starts_at or now).astimezone(timezone.utc)
    arms = [a.model_dump(mode="json") for a in spec.arms]
    try:
        async with in_transaction() as conn:
            exp = await Experiment.create(
                key=spec.key, name=spec.name, salt=secrets.token_hex(8), arms=arms,
                control=spec.control or spec.arms[0].key, population=spec.population.model_dump(exclude_none=True),
                metric=spec.metric.kind, metric_days=spec.metric.days, starts_at=starts,
                ends_at=starts + timedelta(days=spec.horizon_days), actor=actor, using_db=conn)
            await AuditLog.create(actor=actor, action="experiment.create", target=f"experiment:{spec.key}",
                                  before=None, after=render(exp), using_db=conn)
    except IntegrityError:
        raise Conflict(f"an experiment {spec.key!r} exists already", code="experiment_exists") from None
    return exp


async def get(key: str) -> Experiment:
    exp = await Experiment.get_or_none(key=key)
    if exp is None:
        raise NotFound(f"no experiment {key!r}", code="experiment_not_found")
    return exp


async def _templates(exp: Experiment, conn) -> dict[str, coupons.CouponTemplate]:
    out = {}
    for arm in exp.arms:
        reward = arm.get("reward")
        if reward:
            out[arm["key"]] = await coupons.template(
                key=f"exp:{exp.key}:{arm['key']}", name=reward["name"], amount_fen=reward["amount_fen"],
                discount_percent=reward["discount_percent"], min_spend_fen=reward["min_spend_fen"],
                valid_days=reward["valid_days"], conn=conn)
    return out


def _open(exp: Experiment, now: datetime) -> bool:
    return exp.starts_at <= now < exp.ends_at


async def assign_many(*, exp: Experiment, member_ids: list[int], now: datetime) -> int:
    """Assign these members, each once: the stored arm wins over any later call; a new
    assignment's arm grants its coupon (issue_key `exp:{key}:{member}`) in the same transaction.
    Nothing after the horizon. Returns how many assignments are new."""
    now = now.astimezone(timezone.utc)  # SQLite compares datetimes as text
    if not member_ids or not _open(exp, now):
        return 0
    created = 0
    for start in range(0, len(member_ids), BATCH):
        ids = sorted(set(member_ids[start:start + BATCH]))
        async with in_transaction() as conn:
            templates = await _templates(exp, conn)
            before = set(await ExperimentAssignment.filter(experiment_id=exp.id, member_id__in=ids)
                         .using_db(conn).values_list("member_id", flat=True))
            rows = [ExperimentAssignment(experiment_id=exp.id, member_id=m, assigned_at=now,
                                         arm=arm_for(salt=exp.salt, member_id=m, arms=exp.arms))
                    for m in ids if m not in before]
            # ON CONFLICT DO NOTHING: a racing twin's row stands, with its arm (the same one).
            await ExperimentAssignment.bulk_create(rows, ignore_conflicts=True, using_db=conn)
            created += len(rows)
            pending = await ExperimentAssignment.filter(experiment_id=exp.id, member_id__in=ids, coupon_id=None) \
                .using_db(conn).values_list("id", "member_id", "arm")
            grants = [coupons.Grant(m, templates[arm], f"exp:{exp.key}:{m}") for _, m, arm in pending
                      if arm in templates]
            if grants:
                await coupons.issue_many(grants, now=now, conn=conn)
                issued = dict(await Coupon.filter(issue_key__in=[g.issue_key for g in grants]).using_db(conn)
                              .values_list("issue_key", "id"))
                for row_id, m, arm in pending:
                    if arm in templates:
                        await ExperimentAssignment.filter(id=row_id, coupon_id=None).using_db(conn) \
                            .update(coupon_id=issued[f"exp:{exp.key}:{m}"])
    return created


async def assign(*, key: str, member_id: int, now: datetime) -> ExperimentAssignment | None:
    """A member's assignment (made now if new, with its arm's coupon); None after the horizon
    or before the start for a member not assigned yet. A campaign calls it for each joiner."""
    exp = await get(key)
    await assign_many(exp=exp, member_ids=[member_id], now=now)
    return await ExperimentAssignment.get_or_none(experiment_id=exp.id, member_id=member_id)


async def population_ids(exp: Experiment) -> list[int]:
    """The members of the population now: the segment's (member_score), or those holding a coupon
    issued under the campaign (issue_key `campaign:{key}:…` or `share:{key}:…`)."""
    population = exp.population
    if population.get("segment"):
        return list(await MemberScore.filter(segment=population["segment"]).values_list("member_id", flat=True))
    campaign = population["campaign"]
    ids = set()
    for prefix in ("campaign", "share"):
        ids.update(await Coupon.filter(issue_key__startswith=f"{prefix}:{campaign}:")
                   .values_list("member_id", flat=True))
    return sorted(ids)


async def enroll(*, key: str, now: datetime) -> dict:
    """Assign every member of the population not assigned yet (a job repeats it while open)."""
    exp = await get(key)
    ids = await population_ids(exp)
    return {"population": len(ids), "assigned": await assign_many(exp=exp, member_ids=ids, now=now)}


async def enroll_open(*, now: datetime) -> dict:
    """`enroll` every experiment between its start and its horizon."""
    now = now.astimezone(timezone.utc)
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "assigned": 0}
    for exp in await Experiment.filter(starts_at__lte=now, ends_at__gt=now).order_by("id"):
        done = await enroll(key=exp.key, now=now)
        summary["seen"] += done["population"]
        summary["assigned"] += done["assigned"]
    return summary


# The member's repurchase conversions, recomputed: the first order (not fully refunded) within
# metric_days after each assignment. Run in the transaction of every payment and refund.
_RESTAMP_PG = """
UPDATE experiment_assignment a SET converted_at = (
  SELECT MIN(p.paid_at) FROM payment p
  WHERE p.member_id = a.member_id AND p.paid_at > a.assigned_at
    AND p.paid_at <= a.assigned_at + make_interval(days => e.metric_days)
    AND p.refunded_fen < p.payer_total_fen)
FROM experiment e
WHERE a.member_id = $1 AND e.id = a.experiment_id AND e.metric = 'repurchase'
"""

# SQLite (development, the smoke pass): julianday() reads the stored ISO text with its offset.
_RESTAMP_SQLITE = """
UPDATE experiment_assignment SET converted_at = (
  SELECT MIN(p.paid_at) FROM payment p, experiment e
  WHERE e.id = experiment_assignment.experiment_id AND p.member_id = experiment_assignment.member_id
    AND julianday(p.paid_at) > julianday(experiment_assignment.assigned_at)
    AND julianday(p.paid_at) <= julianday(experiment_assignment.assigned_at) + e.metric_days
    AND p.refunded_fen < p.payer_total_fen)
WHERE member_id = ?1 AND experiment_id IN (SELECT id FROM experiment WHERE metric = 'repurchase')
"""


async def note_payment(*, conn, member_id: int) -> None:
    """Inside a payment's or a refund's transaction: the member's repurchase conversions follow its
    orders (a full refund of the converting order moves the conversion to the next one, or none).
    One indexed UPDATE, which finds nothing for a member in no experiment."""
    pg = conn.capabilities.dialect == "postgres"
    await conn.execute_query(_RESTAMP_PG if pg else _RESTAMP_SQLITE, [member_id])


async def note_redeemed(*, conn, coupon_id: int, now: datetime) -> None:
    """Inside a redemption's transaction: an experiment coupon redeemed within metric_days of its
    assignment converts the member (redemption metric)."""
    now = now.astimezone(timezone.utc)
    assigned = await ExperimentAssignment.filter(coupon_id=coupon_id).using_db(conn) \
        .select_related("experiment").first()
    if assigned is None or assigned.experiment.metric != "redemption":
        return
    if assigned.assigned_at < now <= assigned.assigned_at + timedelta(days=assigned.experiment.metric_days):
        await ExperimentAssignment.filter(id=assigned.id, converted_at=None).using_db(conn).update(converted_at=now)


_COUNTS_PG = """
SELECT arm, COUNT(*) AS members, COUNT(*) FILTER (WHERE converted_at <= $2) AS conversions
FROM experiment_assignment WHERE experiment_id = $1 GROUP BY arm
"""

_COUNTS_SQLITE = """
SELECT arm, COUNT(*) AS members,
       SUM(CASE WHEN converted_at IS NOT NULL AND julianday(converted_at) <= julianday(?2) THEN 1 ELSE 0 END)
         AS conversions
FROM experiment_assignment WHERE experiment_id = ?1 GROUP BY arm
"""


async def _counts(exp: Experiment, now: datetime) -> dict[str, tuple[int, int]]:
    conn = connections.get("default")
    if conn.capabilities.dialect == "postgres":
        rows = await conn.execute_query_dict(_COUNTS_PG, [exp.id, now])
    else:
        rows = await conn.execute_query_dict(_COUNTS_SQLITE, [exp.id, now.astimezone(timezone.utc).isoformat(" ")])
    return {row["arm"]: (int(row["members"]), int(row["conversions"] or 0)) for row in rows}


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _pair(values: tuple[float, float] | None) -> list[float] | None:
    return None if values is None else [round(values[0], 6), round(values[1], 6)]


async def results(*, key: str, now: datetime) -> dict:
    """Per arm: members, conversions, rate, absolute and relative lift against control with 95 %
    intervals, the two-proportion z-test p-value, and the cost per arm and per conversion; the
    sample-ratio check (chi-square of arm sizes against weights, flagged at p < 0.001).
    Conversions count within `metric.days` of each assignment and up to `now`; `complete` once
    the horizon plus those days has passed."""
    exp = await get(key)
    now = now.astimezone(timezone.utc)
    # Two scans, each on its own pooled connection: they run side by side.
    counts, cost_rows = await asyncio.gather(
        _counts(exp, now),
        CostEntry.filter(experiment=exp.key).annotate(fen=Sum("amount_fen")).group_by("arm").values("arm", "fen"))
    cost = {row["arm"]: int(row["fen"] or 0) for row in cost_rows}
    control_n, control_c = counts.get(exp.control, (0, 0))
    arms = []
    for arm in exp.arms:
        n, c = counts.get(arm["key"], (0, 0))
        spent = cost.get(arm["key"], 0)
        row = {"arm": arm["key"], "weight": arm["weight"], "holdout": arm.get("holdout", False),
               "control": arm["key"] == exp.control, "members": n, "conversions": c,
               "rate": _round(c / n if n else None), "cost_fen": spent,
               "cost_per_member_fen": _round(spent / n if n else None, 2),
               "cost_per_conversion_fen": _round(spent / c if c else None, 2)}
        if arm["key"] != exp.control:
            cmp = stats.compare(conversions=c, members=n, control_conversions=control_c,
                                control_members=control_n)
            row.update({"lift": _round(cmp.lift), "lift_ci": _pair(cmp.lift_ci),
                        "relative_lift": _round(cmp.relative_lift), "relative_lift_ci": _pair(cmp.relative_lift_ci),
                        "z": _round(cmp.z), "p_value": _round(cmp.p_value, 8)})
        arms.append(row)
    srm = stats.sample_ratio(sizes=[counts.get(a["key"], (0, 0))[0] for a in exp.arms],
                             weights=[a["weight"] for a in exp.arms])
    return {**render(exp), "as_of": now.isoformat(),
            "complete": now >= exp.ends_at + timedelta(days=exp.metric_days),
            "arms": arms,
            "sample_ratio": {"chi2": round(srm.chi2, 4), "df": srm.df, "p_value": _round(srm.p_value, 8),
                             "mismatch": srm.mismatch, "alpha": stats.SRM_ALPHA}}


async def listing() -> list[dict]:
    """Every experiment, newest first, with its assignment count."""
    out = []
    for exp in await Experiment.all().order_by("-id").limit(200):
        out.append({**render(exp),
                    "assigned": await ExperimentAssignment.filter(experiment_id=exp.id).count()})
    return out

