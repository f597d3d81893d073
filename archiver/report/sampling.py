"""The statistics of a pilot: a uniform sample of a listing, and the projection of its saving.

Sampling. One streaming pass over the listing (``iter_source``: our own containers left out)
does three things at once: counts the objects, sums their bytes, and keeps a uniform random
sample of ``n`` of them by reservoir sampling (Vitter's algorithm R with ``random.Random(seed)``).
Memory is O(n) whatever the size of the bucket, and the same seed over the same listing gives
the same sample (listings are in key order).

Projection (ratio estimator, Cochran, *Sampling Techniques*, 3rd ed., sections 6.2-6.4). With
``x_i`` the sampled objects' bytes, ``y_i`` their saved bytes (0 when rejected or failed),
``X`` the bytes listed and ``N`` the objects listed::

    R      = sum(y) / sum(x)                      saved fraction of bytes in the sample
    Y_hat  = R * X                                 projected saved bytes
    d_i    = y_i - R * x_i                         residuals
    SE     = N * sqrt((1 - n/N) / n * sum(d_i^2) / (n - 1))    (1 - n/N: finite population correction)
    95% CI = Y_hat +/- t(0.975, n - 1) * SE, clipped to [0, X]

Student's t rather than 1.96 because pilots are small. When the sample is the whole population
(n = N) the interval has zero width: the projection is the census. With n < 2 there is no
variance estimate and the interval is reported as [0, X].
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

CONFIDENCE = 0.95


def reservoir_sample(items: Iterable[T], k: int, seed: int = 0,
                     size: Callable[[T], int] = lambda o: int(getattr(o, "size", 0))) -> tuple[list[T], int, int]:
    """A uniform sample of ``k`` items from a stream, plus the stream's item count and total size.

    Algorithm R: the first ``k`` items fill the reservoir; item ``i`` (0-based, ``i >= k``) then
    replaces a random slot with probability ``k / (i + 1)``. Holds only ``k`` items at a time.
    """
    if k < 0:
        raise ValueError("sample size must be >= 0")
    rng = random.Random(seed)
    reservoir: list[T] = []
    count = total = 0
    for item in items:
        total += size(item)
        if count < k:
            reservoir.append(item)
        else:
            j = rng.randrange(count + 1)
            if j < k:
                reservoir[j] = item
        count += 1
    return reservoir, count, total


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


def ratio_projection(x: list[int], y: list[int], population_objects: int, population_bytes: int, *,
                     lower: float = 0.0) -> dict[str, Any]:
    """Ratio estimate of the population total of ``y`` from a simple random sample (see module doc).

    The interval is clipped to ``[lower, X]``: a saving is never below 0, but a *difference* of
    savings (ours minus a classical codec's) may be, down to ``-X``.
    """
    n, N, X = len(x), population_objects, population_bytes
    sx, sy = sum(x), sum(y)
    r = sy / sx if sx else 0.0
    est = r * X
    if n >= N and n > 0:  # census
        se, lo, hi = 0.0, est, est
    elif n < 2:
        se, lo, hi = math.nan, lower, float(X)
    else:
        s2 = sum((yi - r * xi) ** 2 for xi, yi in zip(x, y)) / (n - 1)
        se = N * math.sqrt(max(0.0, 1 - n / N) / n * s2)
        q = _t975(n - 1)
        lo, hi = max(lower, est - q * se), min(float(X), est + q * se)
    return {"ratio": r, "projected_saved": est, "standard_error": se, "ci_low": lo, "ci_high": hi,
            "confidence": CONFIDENCE}
