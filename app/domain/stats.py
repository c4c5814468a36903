"""The statistics of an A/B test, computed here (math.erf, no scipy at run time).

Two-sided tests at 95 %: the two-proportion z-test (pooled), the absolute lift's Wald interval
(unpooled), the relative lift's interval by the delta method on log(p1 / p0), and the
sample-ratio check: Pearson's chi-square of the arm sizes against their weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal
SRM_ALPHA = 0.001  # a sample-ratio mismatch is flagged below this p-value


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for chi-square with integer `df` >= 1, in closed form (exact for integer df)."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if x <= 0:
        return 1.0
    half = x / 2.0
    if df % 2 == 0:
        # exp(-x/2) * sum_{i < df/2} (x/2)^i / i!
        term = total = 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    root = math.sqrt(x)
    total = 2.0 * normal_sf(root)
    if df > 1:
        # 2·φ(√x) · Σ_{i=1..(df-1)/2} x^{(2i-1)/2} / (1·3·…·(2i-1))
        term = root
        density = math.exp(-half) / math.sqrt(2.0 * math.pi)
        acc = term
        for i in range(2, (df - 1) // 2 + 1):
            term *= x / (2 * i - 1)
            acc += term
        total += 2.0 * density * acc
    return min(1.0, max(0.0, total))


@dataclass(frozen=True)
class Comparison:
    """One arm against control: absolute and relative lift with 95 % intervals, z and p."""

    lift: float | None
    lift_ci: tuple[float, float] | None
    relative_lift: float | None
    relative_lift_ci: tuple[float, float] | None
    z: float | None
    p_value: float | None


def compare(*, conversions: int, members: int, control_conversions: int, control_members: int) -> Comparison:
    """Arm vs control. Absolute lift p1 − p0 with the Wald interval ±1.96·√(p1q1/n1 + p0q0/n0);
    relative lift p1/p0 − 1 with exp(log(p1/p0) ± 1.96·√(q1/c1 + q0/c0)) − 1; the z-test uses the
    pooled rate. A quantity that is undefined for these counts (an empty arm, no control
    conversion) is None rather than a guess."""
    n1, n0, c1, c0 = int(members), int(control_members), int(conversions), int(control_conversions)
    if n1 <= 0 or n0 <= 0:
        return Comparison(None, None, None, None, None, None)
    p1, p0 = c1 / n1, c0 / n0
    lift = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    lift_ci = (lift - Z95 * se, lift + Z95 * se)
    pooled = (c1 + c0) / (n1 + n0)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if se_pooled > 0:
        z = lift / se_pooled
        p_value = min(1.0, 2.0 * normal_sf(abs(z)))
    else:  # both arms all-or-nothing alike: no evidence of a difference
        z, p_value = 0.0, 1.0
    relative = relative_ci = None
    if c0 > 0:
        relative = p1 / p0 - 1
        if c1 > 0:
            se_log = math.sqrt((1 - p1) / c1 + (1 - p0) / c0)
            log_ratio = math.log(p1 / p0)
            relative_ci = (math.exp(log_ratio - Z95 * se_log) - 1, math.exp(log_ratio + Z95 * se_log) - 1)
    return Comparison(lift, lift_ci, relative, relative_ci, z, p_value)


@dataclass(frozen=True)
class SampleRatio:
    chi2: float
    df: int
    p_value: float
    mismatch: bool  # p < 0.001: the assignment is broken, the results are not to be trusted


def sample_ratio(*, sizes: list[int], weights: list[float]) -> SampleRatio:
    """Pearson's chi-square of observed arm sizes against the shares their weights expect,
    df = arms − 1, flagged as a mismatch at p < 0.001."""
    total, weight = sum(sizes), sum(weights)
    if len(sizes) < 2 or total == 0 or weight <= 0:
        return SampleRatio(0.0, max(0, len(sizes) - 1), 1.0, False)
    chi2 = 0.0
    for observed, w in zip(sizes, weights):
        expected = total * w / weight
        if expected > 0:
            chi2 += (observed - expected) ** 2 / expected
    df = len(sizes) - 1
    p = chi2_sf(chi2, df)
    return SampleRatio(chi2, df, p, p < SRM_ALPHA)
