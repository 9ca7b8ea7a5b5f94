"""Statistics of experiment tables: per-cell summaries, paired differences with t confidence intervals, and
the verdict rule for a claim.

Every interval here is Student's t interval of a mean (``scipy.stats.ttest_1samp(...).confidence_interval``).
A comparison between two methods is *paired by seed*: both arms of a pair share the seed (and with it the
weights, scores and data order wherever the methods allow), so the interval is the one-sample t interval of
the per-seed differences, not a two-sample interval of two independent groups. A trend (e.g. "the gap grows
as the network narrows") is tested the same way on a per-seed difference of differences.

Verdict rule (:func:`verdict`), for an interval of ``method - baseline`` at level 95 %:

* ``supported``: the interval excludes 0 in the claimed direction;
* ``not shown at this scale``: the interval contains 0 (or there are fewer than two pairs);
* ``contradicted``: the interval excludes 0 in the other direction.

For a ``two-sided`` comparison (no direction claimed, e.g. two conventions that should not matter or
might), ``supported`` reads "they differ": the interval excludes 0 on either side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from ticketlab.errors import ConfigError

#: The three verdicts, in the order of the rule above.
VERDICTS = ("supported", "not shown at this scale", "contradicted")
#: The claimed sign of ``method - baseline``.
DIRECTIONS = ("greater", "less", "two-sided")
#: Default confidence level of every interval.
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its t confidence interval.

    Attributes:
        mean: the sample mean (the metric's unit, e.g. accuracy as a fraction).
        low, high: the interval's bounds (NaN when ``n < 2``).
        n: number of values (pairs, for a paired difference).
        sd: the sample standard deviation, ddof 1 (NaN when ``n < 2``).
        p: the two-sided p-value of the t test of mean 0 (NaN when ``n < 2`` or ``sd == 0``).
        level: the confidence level, e.g. 0.95.
    """

    mean: float
    low: float
    high: float
    n: int
    sd: float
    p: float
    level: float = LEVEL

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        """``+1.23 [0.45, 2.01]`` (values times ``scale``, e.g. 100 for percentage points)."""
        if self.n == 0 or math.isnan(self.mean):
            return "—"
        s = f"{self.mean * scale:+.{digits}f}"
        if not math.isnan(self.low):
            s += f" [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"
        return s


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(list(values), dtype=float)
    return a[~np.isnan(a)]


def describe(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """``(mean, sample std with ddof 1, n)`` of the non-NaN values (std NaN when ``n < 2``; mean NaN when 0)."""
    a = _clean(values)
    if a.size == 0:
        return math.nan, math.nan, 0
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan, int(a.size)


def mean_ci(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> Estimate:
    """The mean of ``values`` with its Student's t interval: ``mean ± t_{(1+level)/2, n-1} · sd / sqrt(n)``.

    Args:
        values: shape ``(n,)``; NaN entries are dropped.
        level: confidence level in (0, 1).

    Raises:
        ConfigError: ``level`` outside (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level {level!r} is outside (0, 1); e.g. 0.95.")
    a = _clean(values)
    mean, sd, n = describe(a)
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n, sd, math.nan, level)
    if sd == 0.0:  # scipy returns NaN bounds for a constant sample; the interval is the point itself
        return Estimate(mean, mean, mean, n, 0.0, math.nan, level)
    res = _st.ttest_1samp(a, 0.0)
    ci = res.confidence_interval(confidence_level=level)
    return Estimate(mean, float(ci.low), float(ci.high), n, sd, float(res.pvalue), level)


def paired_difference(method: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray,
                      level: float = LEVEL) -> Estimate:
    """The mean of ``method - baseline`` over pairs, with the paired t interval (Student 1908; the interval of
    ``scipy.stats.ttest_rel``).

    Args:
        method, baseline: shape ``(n,)``, aligned: entry ``i`` of both comes from the same seed. A pair with a
            NaN on either side is dropped.

    Raises:
        ValueError: the two arrays differ in length.
    """
    m, b = np.asarray(list(method), dtype=float), np.asarray(list(baseline), dtype=float)
    if m.shape != b.shape:
        raise ValueError(f"paired arrays differ in length: {m.shape[0]} method values, {b.shape[0]} baseline values.")
    return mean_ci(m - b, level)


def verdict(est: Estimate, direction: str = "greater") -> str:
    """The verdict on ``est`` (an interval of ``method - baseline``) for the claimed ``direction``.

    Returns:
        One of :data:`VERDICTS` (see the module docstring).

    Raises:
        ConfigError: ``direction`` not in :data:`DIRECTIONS`.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"claim direction {direction!r} is not known; allowed: {', '.join(DIRECTIONS)}.")
    if est.n < 2 or math.isnan(est.low):
        return VERDICTS[1]
    above, below = est.low > 0.0, est.high < 0.0
    if direction == "two-sided":
        return VERDICTS[0] if (above or below) else VERDICTS[1]
    if direction == "less":
        above, below = below, above
    if above:
        return VERDICTS[0]
    if below:
        return VERDICTS[2]
    return VERDICTS[1]


__all__ = ["DIRECTIONS", "LEVEL", "VERDICTS", "Estimate", "describe", "mean_ci", "paired_difference", "verdict"]
