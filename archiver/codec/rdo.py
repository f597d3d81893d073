"""Encoder-side rate-distortion optimised quantisation (RDOQ) of the latents; the decoder is
untouched.

Why: an archive encodes once and keeps the bytes for years, so encoder compute is the cheapest
place to win bits. The plain encoder rounds every latent to the nearest symbol around its
predicted mean, which minimises distortion but ignores rate. Classical encoders owe much of their
edge over a straight quantiser to RDO (trellis quantisation in JPEG/AVC/HEVC encoders), and for
learned codecs refining the latents at encode time with the decoder fixed saves 11-16 % of the
bits on a mean-scale hyperprior (Yang, Bamler, Mandt, "Improving Inference for Neural Image
Compression", NeurIPS 2020).

What this module does: in the decoder's own coding order (slice by slice; inside a slice the
checkerboard anchors, then the rest), each symbol is chosen among the two integers around its
target as the one that minimises ``D + R / lambda'``:

* ``R`` is the exact cost in bits that the rANS coder will pay for the symbol: read from the
  model's shipped quantised CDF tables (``RateTable``) at the symbol's exact scale index, so the
  rate model *is* the coder;
* ``D`` is a coefficient-domain proxy of the pixel error: the complete design's transform is
  near-orthonormal (an orthonormal colour transform times an 8x8 DCT, refined by small residual
  blocks), so a latent error ``e`` in channel ``c`` costs about ``(e * inv_gain[c])**2`` of summed
  squared pixel error (measured on kodim23 for compact-v6: each channel's pixel energy per unit
  of latent error is 0.90-1.18, mean 1.01, so no per-channel correction is applied). The target
  is the latent itself: aiming at the latent minus the LRP that the plainly rounded slice would
  get was measured and is far worse (+128 % BD-rate), because LRP, trained on plain rounding,
  answers a moved symbol with another correction.
* ``lambda'`` follows the training trade-off of the chosen quality, ``lambda(q) * 255**2 / 3``
  (the training loss is ``lambda * 255**2 * MSE + bpp``), times a ``strength``.

Choices feed forward: the spatial context of the second checkerboard pass, LRP and every later
slice are computed from the chosen symbols, exactly as the decoder will compute them, so every
stream stays decodable by the unchanged decoder. Greedy (no look-ahead into later slices'
contexts), as RDOQ in video encoders is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .exact import round_half_up

#: escape symbols (outside a CDF table) cost the escape code plus Elias-gamma-like 4-bit bypass
#: groups; RDOQ never moves a symbol into that range on purpose, so a rough figure is enough
_ESCAPE_EXTRA_BITS = 12.0


class RateTable:
    """Bits per symbol, per scale index, from the coder's quantised CDFs (precision 16).

    CompressAI's rANS coder codes symbol ``s`` with table ``k`` as value ``v = s - offset[k]``;
    values ``0 .. len[k] - 3`` have probability ``(cdf[v + 1] - cdf[v]) / 2**16`` and anything
    else is coded as the escape value ``len[k] - 2`` plus bypass bits.
    """

    def __init__(self, cdfs: list[list[int]], lengths: list[int], offsets: list[int], precision: int = 16) -> None:
        width = max(lengths) - 1
        bits = torch.full((len(cdfs), width), math.inf, dtype=torch.float64)
        escape = torch.empty(len(cdfs), dtype=torch.float64)
        for k, (cdf, n) in enumerate(zip(cdfs, lengths)):
            c = torch.tensor(cdf[:n], dtype=torch.float64)
            pmf = (c[1:] - c[:-1]).clamp(min=1.0) / float(1 << precision)  # n - 1 values, the last the escape
            b = -torch.log2(pmf)
            escape[k] = b[-1] + _ESCAPE_EXTRA_BITS
            bits[k, : n - 2] = b[:-1]
            bits[k, n - 2 :] = escape[k]
        self.bits = bits
        self.escape = escape
        self.offsets = torch.tensor(offsets, dtype=torch.int64)
        self.lengths = torch.tensor(lengths, dtype=torch.int64)

    def to(self, device: torch.device) -> RateTable:
        if self.bits.device != device:
            for name in ("bits", "escape", "offsets", "lengths"):
                setattr(self, name, getattr(self, name).to(device))
        return self

    def cost(self, symbols: Tensor, indexes: Tensor) -> Tensor:
        """Bits the coder pays for each of ``symbols`` (float64 integers) at its scale index."""
        idx = indexes.long()
        v = symbols.long() - self.offsets[idx]
        inside = (v >= 0) & (v < self.lengths[idx] - 2)
        b = self.bits[idx, v.clamp(0, self.bits.shape[1] - 1)]
        return torch.where(inside, b, self.escape[idx])


@dataclass(frozen=True)
class RdoParams:
    """One tile's RDOQ setting: ``weight`` (1, C, 1, 1) is ``lambda' * inv_gain**2`` per channel,
    the price in bits of one unit of squared latent error."""

    weight: Tensor


def distortion_weight(lam: float, inv_gain: Tensor, strength: float | tuple[float, ...],
                      slice_channels: int = 0) -> Tensor:
    """``lambda' * inv_gain**2``: bits per unit of squared (gained) latent error at quality
    ``lam = quality_to_lambda(q)``. ``strength`` scales lambda' (larger: closer to plain
    rounding, which is the limit of an infinite lambda').

    A tuple gives one strength per slice of ``slice_channels`` channels, in coding order (the
    last value repeats for the slices after it): greedy RDOQ does not price a symbol's effect on
    the contexts of later slices, so early slices may want a larger strength than late ones
    (``benchmarks/rdo_study.py`` measures it)."""
    w = (lam * 255.0**2 / 3.0) * inv_gain.double() ** 2
    if isinstance(strength, (int, float)):
        return float(strength) * w
    if not strength or any(v <= 0 for v in strength) or slice_channels <= 0:
        raise ValueError(f"per-slice strengths need positive values and slice_channels, got {strength!r}, "
                         f"{slice_channels}")
    channels = w.shape[1]
    n = -(-channels // slice_channels)
    vals = list(strength)[:n] + [strength[-1]] * max(0, n - len(strength))
    per = torch.tensor(vals, dtype=w.dtype, device=w.device).repeat_interleave(slice_channels)[:channels]
    return w * per.reshape(1, channels, 1, 1)


def choose(target: Tensor, indexes: Tensor, weight: Tensor, rates: RateTable,
           limit: float) -> Tensor:
    """For each position the integer ``s`` in {floor(target), floor(target) + 1} minimising
    ``weight * (target - s)**2 + bits(s)``; ``target`` is the latent minus its predicted mean,
    in symbol units. Positions where both candidates are escapes keep
    plain rounding."""
    lo = torch.floor(target).clamp(-limit, limit - 1)
    hi = lo + 1.0
    cost_lo = weight * (target - lo) ** 2 + rates.cost(lo, indexes)
    cost_hi = weight * (target - hi) ** 2 + rates.cost(hi, indexes)
    return torch.where(cost_hi < cost_lo, hi, lo)


def plain(target: Tensor, limit: float) -> Tensor:
    """Today's quantiser: round half up, clamped (what effort 0 does)."""
    return torch.clamp(round_half_up(target), -limit, limit)
