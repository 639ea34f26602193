"""Small-sample statistics for repeated trials (``--seeds N``), without scipy.

* mean ± sample standard deviation (n − 1);
* the 95% confidence interval of a mean: ``mean ± t(0.975, n−1) · s / √n``;
* Welch's 95% interval for a difference of means (unequal variances, Welch–Satterthwaite df).

The Student-t quantile comes from the regularised incomplete beta function (continued fraction,
as in Numerical Recipes ``betacf``) inverted by bisection: exact to ~1e-10 for any real df ≥ 0.1,
which Welch's fractional degrees of freedom need (a table of integer df would not do).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (0 < p < 1, df > 0), by bisection on :func:`t_cdf`."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


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
    se2 = va + vb
    if se2 <= 0.0:
        return Difference(diff, None, None, None)
    df = se2**2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    half = t_quantile(0.5 + level / 2.0, df) * math.sqrt(se2)
    return Difference(diff, diff - half, diff + half, df)
