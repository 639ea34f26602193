"""Small-sample statistics for repeated trials (``--seeds N``), from scipy.stats.

* mean ± sample standard deviation (n − 1);
* the 95% confidence interval of a mean: ``mean ± t(0.975, n−1) · s / √n``;
* Welch's 95% interval for a difference of means (unequal variances, Welch–Satterthwaite df):
  ``scipy.stats.ttest_ind(a, b, equal_var=False)``, whose fractional df the t quantile takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


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


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
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


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(a) - mean(b)
    lo: float | None  # Welch 95% interval; None when it cannot be computed
    hi: float | None
    df: float | None

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    """Welch's interval for mean(a) − mean(b).

    Needs n >= 2 on both sides and some variance; otherwise only the difference is returned (two
    identical runs say nothing about noise, so no interval is claimed).
    """
    sa, sb = summarize(a), summarize(b)
    diff = sa.mean - sb.mean
    if sa.std is None or sb.std is None:
        return Difference(diff, None, None, None)
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n
    if va + vb <= 0.0:  # scipy would return a zero-width interval: none is claimed
        return Difference(diff, None, None, None)
    res = stats.ttest_ind(list(a), list(b), equal_var=False)
    ci = res.confidence_interval(confidence_level=level)
    return Difference(diff, float(ci.low), float(ci.high), float(res.df))
