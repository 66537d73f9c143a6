"""Small, exact statistics for the experiments report: no numpy, no I/O.

- `wilson_interval`: the Wilson score interval of one proportion (Newcombe 1998a, method 3).
  It stays inside [0, 1] and behaves at k = 0 and k = n, where the textbook "p ± z·SE"
  interval collapses to a point.
- `newcombe_difference`: the difference of two independent proportions with Newcombe's
  hybrid score interval (Newcombe 1998b, method 10), built from the two Wilson intervals.
- `percentile`: linear interpolation between closest ranks (numpy's default method).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.96
"""The standard normal quantile for a two-sided 95% interval, as the published tables use."""


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for `k` successes in `n` trials.

    With no trials (`n == 0`) nothing is known and the answer is the whole range (0, 1):
    a tuple keeps the type simple, and callers that show a rate show none for n = 0.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At k = 0 (k = n) the bound is exactly 0 (1); rounding must not move it off.
    lower = 0.0 if k == 0 else max(0.0, centre - half)
    upper = 1.0 if k == n else min(1.0, centre + half)
    return (lower, upper)


def newcombe_difference(
    k1: int, n1: int, k2: int, n2: int, z: float = Z95
) -> tuple[float, float, float]:
    """p1 - p2 with its confidence interval: `(estimate, lower, upper)`.

    Newcombe's hybrid score method combines each proportion's Wilson interval, so it is
    well behaved for small samples and rates near 0 or 1. Both samples need a trial
    (`n1`, `n2` > 0): a difference with an empty side is not defined.
    """
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both samples need at least one trial")
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    estimate = p1 - p2
    below = math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    above = math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (estimate, max(-1.0, estimate - below), min(1.0, estimate + above))


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0–100) of `values`, interpolating linearly between the two
    closest ranks, as numpy's default does. `values` need not be sorted; it must not be
    empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction
