"""Paired and unpaired intervals, Holm's correction and the seeds a difference needs — each
against a value worked by hand from its rule (study/outputs/stats.py cites them)."""

from __future__ import annotations

import math

import pytest

from study.outputs.stats import compare, holm, paired, seeds_to_separate, t_quantile, welch

# Three seeds of two arms; seed k of each arm shares its start and data order.
A = [0.35, 0.36, 0.37]
B = [0.30, 0.32, 0.34]


def test_paired_and_welch_disagree_on_the_same_runs() -> None:
    """Paired: the per-seed differences 0.05, 0.04, 0.03 have mean 0.04 and sd 0.01, so the
    half-width is t(0.975, 2) · 0.01 / √3 = 4.302653 · 0.0057735 = 0.0248405:
    [0.0151595, 0.0648405], which excludes 0. t = 0.04 / (0.01/√3) = 4√3; with 2 degrees of
    freedom the t CDF is 1/2 + t / (2 √(2 + t²)), so p = 1 − t/√(2 + t²) = 1 − 4√3/(5√2).

    Welch, ignoring the pairing: se² = 0.02²/3 + 0.01²/3, df = 50/17, half-width
    t(0.975, 50/17) · se = 0.0415540: [−0.0015540, 0.0815540], which contains 0."""
    p = paired(A, B)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert p.method == "paired" and p.n == 3 and p.df == 2
    assert p.diff == pytest.approx(0.04)
    assert (p.lo, p.hi) == (pytest.approx(0.04 - half), pytest.approx(0.04 + half))
    assert p.p == pytest.approx(1 - 4 * math.sqrt(3) / (5 * math.sqrt(2)), rel=1e-9)
    assert p.significant
    w = welch(A, B)
    assert w.method == "welch" and not w.significant
    assert (w.lo, w.hi) == (pytest.approx(0.04 - 0.0415540, abs=1e-6),
                            pytest.approx(0.04 + 0.0415540, abs=1e-6))


def test_compare_pairs_by_seed_and_falls_back_to_welch() -> None:
    a = dict(zip([0, 1, 2], A, strict=True))
    b = dict(zip([2, 0, 1], [B[2], B[0], B[1]], strict=True))  # the same runs, listed shuffled
    assert compare(a, b).method == "paired" and compare(a, b).lo == paired(A, B).lo
    # seeds 0..2 against seeds 3..5: nothing to pair
    unpaired = compare(a, {k + 3: v for k, v in b.items()})
    assert unpaired.method == "welch" and unpaired.lo == welch(A, B).lo
    # one shared seed is not enough to pair: Welch over all runs
    assert compare({0: 0.3, 1: 0.4}, {1: 0.2, 5: 0.25}).method == "welch"


def test_paired_claims_no_interval_without_spread_or_with_one_pair() -> None:
    same = paired([0.4, 0.5], [0.3, 0.4])  # both differences 0.1: no noise seen
    assert same.method == "none" and same.lo is None and same.p is None
    assert same.diff == pytest.approx(0.1)
    one = paired([0.4], [0.3])
    assert one.method == "none" and one.n == 1
    with pytest.raises(ValueError, match="same number of runs"):
        paired([0.1, 0.2], [0.1])


def test_holm_by_hand() -> None:
    """m = 4 p-values 0.01, 0.04, 0.03, 0.005. Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03,
    0.03·2 = 0.06, 0.04·1 = 0.04 → max with the previous: 0.06. In input order: 0.03, 0.06,
    0.06, 0.02: two comparisons stay significant at 0.05 where four were unadjusted."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # None (no interval) is not counted in m and stays None; capped at 1
    assert holm([None, 0.2, 0.6]) == [None, pytest.approx(0.4), pytest.approx(0.6)]
    assert holm([0.7, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert holm([]) == []


def test_seeds_to_separate_by_hand() -> None:
    """d = 0.04, s = 0.02: with 3 pairs the half-width is t(0.975, 2)·0.02/√3 = 0.0497 > 0.04;
    with 4 it is t(0.975, 3)·0.02/2 = 3.182·0.01 = 0.0318 < 0.04 → 4."""
    assert t_quantile(0.975, 2) * 0.02 / math.sqrt(3) > 0.04
    assert seeds_to_separate(0.04, 0.02, 2, 0.05, 30) == 4
    assert seeds_to_separate(-0.04, 0.02, 2, 0.05, 30) == 4  # the sign does not matter
    assert seeds_to_separate(0.04, 0.02, 2, 0.05, 3) is None  # not within 3 seeds
    assert seeds_to_separate(0.0, 0.02, 2, 0.05, 30) is None  # nothing to separate
    # a stricter level (Holm's α/m for the undecided) needs more seeds
    assert seeds_to_separate(0.04, 0.02, 2, 0.05 / 4, 30) > 4
