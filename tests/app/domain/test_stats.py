"""The A/B statistics against hand-computed fixtures and against scipy on random data."""
from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sp

from app.domain import stats

pytestmark = pytest.mark.smoke


def test_comparison_of_a_hand_computed_fixture():
    # control 100/1000 = 0.10, arm 130/1000 = 0.13:
    # se = √(0.13·0.87/1000 + 0.10·0.90/1000) = √0.0002031 = 0.0142513; 1.96·se = 0.0279321
    # pooled 0.115: se₀ = √(0.115·0.885·(2/1000)) = 0.0142671; z = 0.03 / se₀ = 2.10274
    # relative: 0.3; se(log) = √(0.87/130 + 0.90/100) = 0.125279; exp(ln 1.3 ± 0.245544) − 1
    got = stats.compare(conversions=130, members=1000, control_conversions=100, control_members=1000)
    assert got.lift == pytest.approx(0.03)
    assert got.lift_ci == pytest.approx((0.0020679, 0.0579321), abs=1e-6)
    assert got.z == pytest.approx(2.10274, abs=1e-5)
    assert got.p_value == pytest.approx(0.035488, abs=1e-6)
    assert got.relative_lift == pytest.approx(0.3)
    assert got.relative_lift_ci == pytest.approx((0.016984, 0.661776), abs=1e-6)


def test_undefined_quantities_are_none_not_guesses():
    empty = stats.compare(conversions=0, members=0, control_conversions=5, control_members=10)
    assert empty.lift is None and empty.p_value is None
    no_control = stats.compare(conversions=3, members=10, control_conversions=0, control_members=10)
    assert no_control.relative_lift is None and no_control.lift == pytest.approx(0.3)
    same = stats.compare(conversions=0, members=10, control_conversions=0, control_members=10)
    assert same.p_value == 1.0 and same.lift == 0


def test_sample_ratio_fixtures():
    # 5000 vs 5200 at 1:1: expected 5100 each, χ² = 2·100²/5100 = 3.92157, p = 0.04767
    fine = stats.sample_ratio(sizes=[5000, 5200], weights=[1, 1])
    assert fine.chi2 == pytest.approx(3.921569, abs=1e-6)
    assert fine.p_value == pytest.approx(0.047670, abs=1e-6) and not fine.mismatch
    # 5000 vs 5400: χ² = 2·200²/5200 = 15.3846, p = 8.77e-5 < 0.001: flagged
    broken = stats.sample_ratio(sizes=[5000, 5400], weights=[1, 1])
    assert broken.chi2 == pytest.approx(15.384615, abs=1e-6) and broken.mismatch
    # weights 45:45:10 (a holdout) honoured: 4500/4500/1000 is a perfect fit
    assert stats.sample_ratio(sizes=[4500, 4500, 1000], weights=[45, 45, 10]).chi2 == 0


def test_chi2_tail_fixtures():
    assert stats.chi2_sf(7.0, 2) == pytest.approx(math.exp(-3.5))  # even df: e^{-x/2}
    assert stats.chi2_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-7)  # the textbook 5 % points
    assert stats.chi2_sf(11.0705, 5) == pytest.approx(0.05, abs=1e-6)
    assert stats.chi2_sf(0, 3) == 1.0


def test_against_scipy_on_random_data():
    rng = random.Random(20261201)
    for _ in range(300):
        n0, n1 = rng.randint(20, 200_000), rng.randint(20, 200_000)
        c0, c1 = rng.randint(1, n0 - 1), rng.randint(1, n1 - 1)
        got = stats.compare(conversions=c1, members=n1, control_conversions=c0, control_members=n0)
        # The pooled two-proportion z-test is the 2×2 chi-square test without continuity correction.
        chi2, p, _, _ = sp.chi2_contingency([[c1, n1 - c1], [c0, n0 - c0]], correction=False)
        assert got.p_value == pytest.approx(p, rel=1e-6, abs=1e-12)
        assert got.z ** 2 == pytest.approx(chi2, rel=1e-6)
        p1, p0 = c1 / n1, c0 / n0
        se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
        z = sp.norm.ppf(0.975)
        assert got.lift_ci == pytest.approx((p1 - p0 - z * se, p1 - p0 + z * se), rel=1e-9, abs=1e-12)
        se_log = math.sqrt((1 - p1) / c1 + (1 - p0) / c0)
        low, high = sp.norm.interval(0.95, loc=math.log(p1 / p0), scale=se_log)
        assert got.relative_lift_ci == pytest.approx((math.exp(low) - 1, math.exp(high) - 1), rel=1e-9)
    for _ in range(300):
        arms = rng.randint(2, 6)
        weights = [rng.randint(1, 10) for _ in range(arms)]
        sizes = [rng.randint(1, 50_000) for _ in range(arms)]
        got = stats.sample_ratio(sizes=sizes, weights=weights)
        total = sum(sizes)
        expected = [total * w / sum(weights) for w in weights]
        ref = sp.chisquare(sizes, f_exp=expected)
        assert got.chi2 == pytest.approx(ref.statistic, rel=1e-9)
        assert got.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
        assert got.mismatch == (ref.pvalue < 0.001)
    for df in range(1, 12):
        for x in (0.01, 0.5, 1, 3.3, 9.9, 25, 80):
            assert stats.chi2_sf(x, df) == pytest.approx(sp.chi2.sf(x, df), rel=1e-8, abs=1e-300)
