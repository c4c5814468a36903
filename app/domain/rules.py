"""The programme's rules: stored in the database (seeded by a migration), validated by pydantic.

Operators change them without a deploy (PATCH /admin/rules); each process caches them for
a few seconds, so a change reaches every worker within `CACHE_SECONDS`.
"""
from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import InvalidField
from app.models import AuditLog, Rule

CACHE_SECONDS = 5.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckinRule(_Section):
    daily_points: int = Field(5, ge=0, le=10_000)
    streak_days: int = Field(7, ge=2, le=366)
    streak_bonus: int = Field(20, ge=0, le=100_000)


class MakeupRule(_Section):
    per_month: int = Field(2, ge=0, le=31)
    window_days: int = Field(7, ge=1, le=31)
    cost: int = Field(10, ge=0, le=100_000)


class GrowthRule(_Section):
    per_yuan: int = Field(1, ge=0, le=1000)
    per_checkin: int = Field(5, ge=0, le=10_000)


class Tier(_Section):
    key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,15}$")
    name: str = Field(min_length=1, max_length=16)
    floor: int = Field(ge=0)
    multiplier: float = Field(gt=0, le=100)


class TierThresholds(_Section):
    """Tier by what was paid within the last `window_days`: tier key → the minimum (paid orders, or
    whole yuan net of refunds); the first tier needs none."""

    window_days: int = Field(365, ge=1, le=1096)
    thresholds: dict[str, int]


class TiersRule(_Section):
    levels: tuple[Tier, ...]
    downgrade_after_months: int = Field(3, ge=1, le=36)
    # What moves members between tiers (CONTRACT.md "tier basis"): growth value against each
    # level's floor, or paid orders (seed 000: silver at 5, gold at 15) or spend in a window.
    basis: Literal["growth", "orders", "spend"] = "growth"
    orders: TierThresholds = TierThresholds(thresholds={"silver": 5, "gold": 15, "diamond": 40})
    spend: TierThresholds = TierThresholds(thresholds={"silver": 500, "gold": 5000, "diamond": 20000})

    @model_validator(mode="after")
    def _ordered(self) -> "TiersRule":
        if not self.levels or self.levels[0].floor != 0:
            raise ValueError("the first tier must have floor 0")
        floors = [t.floor for t in self.levels]
        if floors != sorted(set(floors)):
            raise ValueError("tier floors must strictly increase")
        if len({t.key for t in self.levels}) != len(self.levels):
            raise ValueError("tier keys must be unique")
        if self.basis != "growth":
            # Only the basis in force must fit the levels: the other keeps its last values.
            chosen = getattr(self, self.basis).thresholds
            keys = [t.key for t in self.levels[1:]]
            if set(chosen) != set(keys):
                raise ValueError(f"{self.basis}.thresholds must name each tier above the first: {', '.join(keys)}")
            values = [chosen[k] for k in keys]
            if values != sorted(set(values)) or values[0] < 1:
                raise ValueError(f"{self.basis}.thresholds must be at least 1 and strictly increase by tier")
        return self

    def threshold_tier(self, value: int) -> "Tier":
        """The highest level whose threshold (of the basis in force) `value` reaches."""
        chosen = getattr(self, self.basis).thresholds
        current = self.levels[0]
        for level in self.levels[1:]:
            if level.key in chosen and value >= chosen[level.key]:
                current = level
        return current


class TrialTierRule(_Section):
    """0元升级 (seed 000): a new member holds `tier` for `days`; a paid order in them makes it
    `upgrade_tier`; when the trial ends the tier the rules give. Off out of the box."""

    enabled: bool = False
    tier: str = "silver"
    days: int = Field(7, ge=1, le=90)
    upgrade_tier: str = "gold"


class PointsRule(_Section):
    per_yuan: int = Field(1, ge=0, le=1000)
    expiry_months: int = Field(12, ge=1, le=120)
    remind_days: tuple[int, ...] = (30, 7)
    daily_cap: int = Field(200, ge=0, le=1_000_000)


class ReferralRule(_Section):
    inviter_points: int = Field(50, ge=0, le=100_000)
    invitee_points: int = Field(50, ge=0, le=100_000)
    per_inviter_daily: int = Field(20, ge=0, le=10_000)


class BirthdayRule(_Section):
    days_ahead: int = Field(3, ge=0, le=60)
    coupon_fen: dict[str, int] = Field(
        default_factory=lambda: {"regular": 2000, "silver": 5000, "gold": 10000, "diamond": 20000})
    valid_days: int = Field(30, ge=1, le=366)


class TierCouponGrant(_Section):
    count: int = Field(0, ge=0, le=20)
    amount_fen: int = Field(0, ge=0, le=1_000_000)
    min_spend_fen: int = Field(0, ge=0, le=100_000_000)


class TierCouponsRule(_Section):
    """Coupons each tier gets on the 1st of every month (tier key → how many, how much)."""

    grants: dict[str, TierCouponGrant] = Field(default_factory=lambda: {
        "silver": TierCouponGrant(count=1, amount_fen=1000),
        "gold": TierCouponGrant(count=2, amount_fen=2000),
        "diamond": TierCouponGrant(count=3, amount_fen=5000),
    })
    valid_days: int = Field(30, ge=1, le=366)


class MemberDayRule(_Section):
    weekday: int = Field(3, ge=0, le=6)  # Monday is 0: Thursday is 3 (seed: 周四会员日)
    multiplier: float = Field(2.0, ge=1, le=10)


class LimitsRule(_Section):
    login_per_openid_per_minute: int = Field(10, ge=1)
    login_per_device_per_minute: int = Field(10, ge=1)
    login_per_ip_per_minute: int = Field(300, ge=1)
    registrations_per_device_per_day: int = Field(3, ge=1)


_TASK_KIND = r"^[a-z][a-z0-9_]{0,31}$"


class TasksRule(_Section):
    """Task points (CONTRACT.md "tasks"): per task kind, 0 out of the box; `profile` is the
    card activated with every field (once), other kinds come from POST /partner/events."""

    points: dict[str, int] = Field(default_factory=lambda: {"profile": 0, "review": 0})
    weekly_cap: int = Field(200, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _kinds(self) -> "TasksRule":
        for kind, value in self.points.items():
            if not re.match(_TASK_KIND, kind) or kind == "share":
                raise ValueError(f"task kind {kind!r} must be a lower-case name other than share")
            if not 0 <= value <= 100_000:
                raise ValueError(f"points of {kind!r} must be 0 to 100000")
        return self


class NewMemberPackRule(_Section):
    """新人礼包: on registration a no-threshold coupon and points, once per member; off by default."""

    enabled: bool = False
    coupon_fen: int = Field(1000, ge=0, le=1_000_000)
    points: int = Field(50, ge=0, le=100_000)
    valid_days: int = Field(30, ge=1, le=366)


class WakeupRule(_Section):
    """沉默会员唤醒: no login and no payment for `dormant_days` → a return coupon, once per dormant
    spell and at most once in `every_days`; a paid order within `window_days` is a success."""

    enabled: bool = True
    dormant_days: int = Field(30, ge=1, le=3650)
    every_days: int = Field(90, ge=1, le=3650)
    coupon_fen: int = Field(2000, ge=0, le=1_000_000)
    valid_days: int = Field(14, ge=1, le=366)
    window_days: int = Field(14, ge=1, le=366)


class CostsRule(_Section):
    """What benefits cost (seed 000: 权益成本率 5–10 %): points at `fen_per_point` (100 points = 1 yuan),
    and the band of the benefit cost ratio outside which a month is flagged."""

    fen_per_point: float = Field(1.0, ge=0, le=1000)
    ratio_low: float = Field(0.05, ge=0, le=10)
    ratio_high: float = Field(0.10, ge=0, le=10)

    @model_validator(mode="after")
    def _band(self) -> "CostsRule":
        if self.ratio_low > self.ratio_high:
            raise ValueError("ratio_low must not exceed ratio_high")
        return self


class Rules(_Section):
    checkin: CheckinRule = CheckinRule()
    makeup: MakeupRule = MakeupRule()
    growth: GrowthRule = GrowthRule()
    tiers: TiersRule = TiersRule(levels=(
        Tier(key="regular", name="普通", floor=0, multiplier=1.0),
        Tier(key="silver", name="银卡", floor=500, multiplier=1.2),
        Tier(key="gold", name="金卡", floor=5000, multiplier=1.5),
        Tier(key="diamond", name="钻石", floor=20000, multiplier=2.0),
    ))
    points: PointsRule = PointsRule()
    referral: ReferralRule = ReferralRule()
    birthday: BirthdayRule = BirthdayRule()
    tier_coupons: TierCouponsRule = TierCouponsRule()
    member_day: MemberDayRule = MemberDayRule()
    limits: LimitsRule = LimitsRule()
    tasks: TasksRule = TasksRule()
    new_member_pack: NewMemberPackRule = NewMemberPackRule()
    wakeup: WakeupRule = WakeupRule()
    costs: CostsRule = CostsRule()
    trial_tier: TrialTierRule = TrialTierRule()

    @model_validator(mode="after")
    def _trial_fits_the_tiers(self) -> "Rules":
        if self.trial_tier.enabled:
            keys = [t.key for t in self.tiers.levels]
            for name in ("tier", "upgrade_tier"):
                if getattr(self.trial_tier, name) not in keys:
                    raise ValueError(f"trial_tier.{name} must be one of {', '.join(keys)}")
            if keys.index(self.trial_tier.upgrade_tier) <= keys.index(self.trial_tier.tier):
                raise ValueError("trial_tier.upgrade_tier must be above trial_tier.tier")
        return self

    def tier(self, key: str) -> Tier:
        for level in self.tiers.levels:
            if level.key == key:
                return level
        return self.tiers.levels[0]

    def tier_for_growth(self, growth: int) -> Tier:
        current = self.tiers.levels[0]
        for level in self.tiers.levels:
            if growth >= level.floor:
                current = level
        return current


SECTIONS = tuple(Rules.model_fields)

_cache: tuple[float, Rules] | None = None


def defaults() -> dict[str, Any]:
    return Rules().model_dump(mode="json")


async def load(*, fresh: bool = False) -> Rules:
    """The rules in force: the database rows over the defaults (CONTRACT.md, "Default rules")."""
    global _cache
    now = time.monotonic()
    if not fresh and _cache and now - _cache[0] < CACHE_SECONDS:
        return _cache[1]
    stored = {row.key: row.value for row in await Rule.all()}
    merged = defaults()
    merged.update({k: v for k, v in stored.items() if k in SECTIONS})
    rules = Rules.model_validate(merged)
    _cache = (now, rules)
    return rules


def forget() -> None:
    """Drop this process's cached copy (after a change, and between tests)."""
    global _cache
    _cache = None


async def update(changes: dict[str, Any], *, actor: str) -> Rules:
    """Apply a partial change section by section, validated as a whole; one audit row per section."""
    if not isinstance(changes, dict) or not changes:
        raise InvalidField("body", "expected an object of rule sections")
    unknown = sorted(set(changes) - set(SECTIONS))
    if unknown:
        raise InvalidField(unknown[0], "unknown rule section")
    current = (await load(fresh=True)).model_dump(mode="json")
    proposed = dict(current)
    for section, value in changes.items():
        if not isinstance(value, dict):
            raise InvalidField(section, "expected an object")
        proposed[section] = {**current[section], **value}
    try:
        rules = Rules.model_validate(proposed)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidField(where, err["msg"]) from None
    validated = rules.model_dump(mode="json")
    for section in changes:
        if validated[section] == current[section]:
            continue
        await Rule.update_or_create(key=section, defaults={"value": validated[section]})
        await AuditLog.create(actor=actor, action="rules.update", target=section,
                              before=current[section], after=validated[section])
    forget()
    return rules
