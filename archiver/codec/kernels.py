"""Compiled kernels for the exact path's float32 layers (numba, without the GIL).

Why: after each float32 matrix product or depthwise convolution the exact path rounds back to
the grid: add the bias fraction, scale by 1/256, floor, add the bias's integer part, clamp
(``exact.float32_finish``). As five tensor operations that is five passes over a tensor that does
not fit the cache (an expansion layer's output is 4.7 MB per 768x512 image): on a decode they
cost about as much as the matrix products they follow. Here it is one pass, in place.

The arithmetic is the same float32 steps in the same order as ``float32_finish``, each exact
(the docstring there has the bounds), so the result is bit-identical;
``tests/test_exact_fast.py`` compares the two on random sums up to the bound. Without numba
(``available()`` false) the tensor operations run instead.

The exact heads' 5x5 depthwise convolutions (every slice transform, LRP and spatial context has
one) run as one compiled pass with their finish (``depthwise5_f32``) when their float32 bound
holds: under it every partial sum is an integer below 2^24, so no summation order can round and
the result is the bits of oneDNN's convolution followed by the finish, without the convolution's
output making a trip through memory (a 1024x1024 tile decodes about 8 % faster on one thread).
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

    @numba.njit(nogil=True, cache=True)
    def depthwise5_f32(a, w, b_frac, b_int, lo, hi, out):  # pragma: no cover - compiled
        """A 5x5 depthwise convolution (zero padding, stride 1) and its float32 finish in one
        pass: ``out[n, c] = clamp(floor((b_frac[c] + sum w[c] * a[n, c]) / 256) + b_int[c], lo, hi)``.

        ``a`` and ``out`` (N, C, H, W) float32, ``w`` (C, 5, 5). The caller guarantees
        ``b_frac[c] + sum |w[c]| * max |a[n, c]| <= 2^24`` (with integer values), so every product
        and partial sum is an integer float32 holds and the order of the sum cannot matter: the
        result is the same bits as the convolution followed by ``finish_f32``. Each channel is
        copied into a zero-bordered scratch plane (in the cache), and each output row is the 25
        taps written out, so the row loop vectorises."""
        n_img, n_ch, h, wd = a.shape
        inv = np.float32(1.0 / 256.0)
        lo32 = np.float32(lo)
        hi32 = np.float32(hi)
        pad = np.zeros((h + 4, wd + 4), dtype=np.float32)
        for n in range(n_img):
            for c in range(n_ch):
                for y in range(h):
                    src = a[n, c, y]
                    row = pad[y + 2]
                    for x in range(wd):
                        row[x + 2] = src[x]
                bf = b_frac[c]
                bi = b_int[c]
                k = w[c]
                w00, w01, w02, w03, w04 = k[0, 0], k[0, 1], k[0, 2], k[0, 3], k[0, 4]
                w10, w11, w12, w13, w14 = k[1, 0], k[1, 1], k[1, 2], k[1, 3], k[1, 4]
                w20, w21, w22, w23, w24 = k[2, 0], k[2, 1], k[2, 2], k[2, 3], k[2, 4]
                w30, w31, w32, w33, w34 = k[3, 0], k[3, 1], k[3, 2], k[3, 3], k[3, 4]
                w40, w41, w42, w43, w44 = k[4, 0], k[4, 1], k[4, 2], k[4, 3], k[4, 4]
                for y in range(h):
                    r0, r1, r2, r3, r4 = pad[y], pad[y + 1], pad[y + 2], pad[y + 3], pad[y + 4]
                    dst = out[n, c, y]
                    for x in range(wd):
                        v = bf + w00 * r0[x] + w01 * r0[x + 1] + w02 * r0[x + 2] + w03 * r0[x + 3] + w04 * r0[x + 4]
                        v = v + w10 * r1[x] + w11 * r1[x + 1] + w12 * r1[x + 2] + w13 * r1[x + 3] + w14 * r1[x + 4]
                        v = v + w20 * r2[x] + w21 * r2[x + 1] + w22 * r2[x + 2] + w23 * r2[x + 3] + w24 * r2[x + 4]
                        v = v + w30 * r3[x] + w31 * r3[x + 1] + w32 * r3[x + 2] + w33 * r3[x + 3] + w34 * r3[x + 4]
                        v = v + w40 * r4[x] + w41 * r4[x + 1] + w42 * r4[x + 2] + w43 * r4[x + 3] + w44 * r4[x + 4]
                        v = np.floor(v * inv) + bi
                        if v < lo32:
                            v = lo32
                        elif v > hi32:
                            v = hi32
                        dst[x] = v
