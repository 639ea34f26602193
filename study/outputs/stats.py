"""Small-sample statistics for repeated trials (seeds), every distribution from scipy.stats.

* mean ± sample standard deviation (n − 1) and the 95% interval of a mean,
  ``mean ± t(0.975, n−1) · s / √n``;
* the difference of two arms:

  - **paired** when they share seeds (seed k of arm A and seed k of arm B start from the same
    initialisation and see the same data order): the per-seed differences ``d_k = a_k − b_k``,
    their mean and the t interval ``d̄ ± t(0.975, n−1) · s_d / √n`` (``scipy.stats.ttest_rel``);
  - **Welch** otherwise (unequal variances, Welch–Satterthwaite df: ``ttest_ind(equal_var=False)``);

  each with its two-sided p-value;
* **Holm's step-down correction** (Holm 1979, "A simple sequentially rejective multiple test
  procedure", Scand. J. Statist. 6, §2) of the p-values of the comparisons a report marks:
  sort them ascending, ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j))``; a comparison is
  significant at level α when ``p̃ < α``. It controls the family-wise error over the m
  comparisons without assuming them independent.

Why pairing matters: two arms that share seeds are correlated (the same start and data order),
and the unpaired Welch interval ignores that correlation, so it is too wide when the correlation
is positive (the usual case) and cannot see an effect that every seed shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats

LEVEL = 0.95
ALPHA = 1.0 - LEVEL
# a spread below this is float round-off (0.4 - 0.3 vs 0.5 - 0.4), not noise: no interval
NO_SPREAD = 1e-12


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (0 < p < 1, df > 0; df may be fractional)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    return float(stats.t.ppf(p, df))


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # None for n = 1
    lo: float | None  # 95% CI of the mean; None for n = 1
    hi: float | None


def summarize(values: Sequence[float], level: float = LEVEL) -> Summary:
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = sum(xs) / n
    if n == 1:
        return Summary(1, mean, None, None, None)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


Method = Literal["paired", "welch", "none"]


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(a) - mean(b) (paired: the mean of the per-seed differences)
    lo: float | None  # the 95% interval; None when it cannot be computed
    hi: float | None
    df: float | None
    p: float | None = None  # two-sided p-value of "no difference"
    method: Method = "welch"
    n: int = 0  # paired: the number of pairs; Welch: the smaller arm's runs

    @property
    def significant(self) -> bool:
        """The (unadjusted) interval excludes 0."""
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference:
    """Welch's interval for mean(a) − mean(b).

    Needs n >= 2 on both sides and some variance; otherwise only the difference is returned (two
    identical runs say nothing about noise, so no interval is claimed).
    """
    sa, sb = summarize(a), summarize(b)
    diff = sa.mean - sb.mean
    n = min(sa.n, sb.n)
    if sa.std is None or sb.std is None:
        return Difference(diff, None, None, None, method="none", n=n)
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n
    if math.sqrt(va + vb) <= NO_SPREAD:  # scipy would give a zero-width interval: none claimed
        return Difference(diff, None, None, None, method="none", n=n)
    res = stats.ttest_ind(list(a), list(b), equal_var=False)
    ci = res.confidence_interval(confidence_level=level)
    return Difference(
        diff, float(ci.low), float(ci.high), float(res.df), float(res.pvalue), "welch", n
    )


def paired(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference:
    """The paired interval of mean(a − b): ``a[k]`` and ``b[k]`` are the same seed.

    Needs n >= 2 pairs and differences that are not all equal (then only the difference is
    returned: no noise was seen, so no interval is claimed).
    """
    if len(a) != len(b):
        raise ValueError(f"paired needs the same number of runs, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired needs at least one pair")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    s = summarize(d)
    if s.std is None or s.std <= NO_SPREAD:
        return Difference(s.mean, None, None, None, method="none", n=s.n)
    res = stats.ttest_rel(list(a), list(b))
    ci = res.confidence_interval(confidence_level=level)
    return Difference(
        s.mean, float(ci.low), float(ci.high), float(res.df), float(res.pvalue), "paired", s.n
    )


def compare(
    a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL
) -> Difference:
    """mean(a) − mean(b) for two arms given as seed → value: paired over the seeds they share
    when there are at least two, else Welch over all their runs."""
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        return paired([a[k] for k in common], [b[k] for k in common], level)
    return welch(list(a.values()), list(b.values()), level)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in the input order (None stays None and is not counted in m)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: (pvalues[i], i))):
        p = pvalues[i]
        assert p is not None
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def seeds_to_separate(
    d: float, s: float, n: int, alpha: float, n_max: int
) -> int | None:
    """The smallest number of pairs n' (n < n' <= n_max) at which a paired t interval of
    half-width ``t(1 − alpha/2, n'−1) · s / √n'`` would exclude 0 if the mean difference ``d`` and
    the standard deviation ``s`` of the per-seed differences stay as observed; None when no n'
    up to ``n_max`` would (``d`` = 0, or too noisy)."""
    if d == 0.0 or not math.isfinite(s):
        return None
    for k in range(max(n + 1, 2), n_max + 1):
        if t_quantile(1.0 - alpha / 2.0, k - 1) * s / math.sqrt(k) < abs(d):
            return k
    return None
