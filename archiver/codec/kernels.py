"""Compiled element-wise kernels for the exact path's float32 finish (numba, without the GIL).

Why: after each float32 matrix product or depthwise convolution the exact path rounds back to
the grid: add the bias fraction, scale by 1/256, floor, add the bias's integer part, clamp
(``exact.float32_finish``). As five tensor operations that is five passes over a tensor that does
not fit the cache (an expansion layer's output is 4.7 MB per 768x512 image): on a decode they
cost about as much as the matrix products they follow. Here it is one pass, in place.

The arithmetic is the same float32 steps in the same order as ``float32_finish``, each exact
(the docstring there has the bounds), so the result is bit-identical;
``tests/test_exact_fast.py`` compares the two on random sums up to the bound. Without numba
(``available()`` false) the tensor operations run instead.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def available() -> bool:
    return numba is not None


if numba is not None:
    @numba.njit(nogil=True, cache=True)
    def finish_f32(y, b_frac, b_int, lo, hi):  # pragma: no cover - compiled
        """In place on ``y`` (N, C, L) float32: clamp(floor((y + b_frac[c]) / 256) + b_int[c], lo, hi)."""
        inv = np.float32(1.0 / 256.0)
        lo32 = np.float32(lo)
        hi32 = np.float32(hi)
        for n in range(y.shape[0]):
            for c in range(y.shape[1]):
                bf = b_frac[c]
                bi = b_int[c]
                row = y[n, c]
                for i in range(row.shape[0]):
                    v = np.floor((row[i] + bf) * inv) + bi
                    if v < lo32:
                        v = lo32
                    elif v > hi32:
                        v = hi32
                    row[i] = v
