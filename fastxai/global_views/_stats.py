"""Student's two-sample t-test, with the t distribution's CDF in closed form (no scipy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def student_t_two_sided(t: float, dof: int) -> float:
    """``P(|T| >= |t|)`` for Student's t with an integer ``dof`` >= 1.

    Closed form of Abramowitz & Stegun 26.7.3-4: with ``theta = atan(|t| / sqrt(dof))``,
    ``A = P(|T| < |t|)`` is ``2/pi (theta + sin(theta) sum_k c_k cos(theta)^(2k+1))`` for odd
    ``dof`` and ``sin(theta) sum_k c_k cos(theta)^(2k)`` for even ``dof``, where the ``c_k`` are the
    ratios of double factorials below; the p-value is ``1 - A``.
    """
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(dof))
    sin, cos = math.sin(theta), math.cos(theta)
    cos_sq = cos * cos
    if dof % 2:
        series, term = 0.0, cos
        for k in range(1, (dof - 1) // 2 + 1):
            series += term
            term *= cos_sq * (2 * k) / (2 * k + 1)
        inside = 2 / math.pi * (theta + sin * series)
    else:
        series, term = 0.0, 1.0
        for k in range(1, dof // 2 + 1):
            series += term
            term *= cos_sq * (2 * k - 1) / (2 * k)
        inside = sin * series
    return min(1.0, max(0.0, 1.0 - inside))


def student_t_test(first: Sequence[float], second: Sequence[float]) -> tuple[float, float]:
    """Two-sided two-sample t-test with pooled variance (``scipy.stats.ttest_ind``'s default, and
    the test of Kim et al. 2018): returns ``(t, p)``.

    ``t = (mean_1 - mean_2) / (s_p sqrt(1/n_1 + 1/n_2))`` with the pooled variance
    ``s_p^2 = ((n_1 - 1) s_1^2 + (n_2 - 1) s_2^2) / (n_1 + n_2 - 2)``; when both samples are constant
    ``t`` is infinite (p = 0) if the means differ and NaN (p = NaN) if they do not.
    """
    n1, n2 = len(first), len(second)
    if n1 < 2 or n2 < 2:
        raise ValueError(f"a t-test needs at least 2 values in each sample, got {n1} and {n2}")
    mean1, mean2 = math.fsum(first) / n1, math.fsum(second) / n2
    squares = math.fsum((v - mean1) ** 2 for v in first) + math.fsum((v - mean2) ** 2 for v in second)
    dof = n1 + n2 - 2
    scale = math.sqrt(squares / dof * (1 / n1 + 1 / n2))
    difference = mean1 - mean2
    if scale == 0.0:
        t = math.nan if difference == 0.0 else math.copysign(math.inf, difference)
    else:
        t = difference / scale
    return t, student_t_two_sided(t, dof)
