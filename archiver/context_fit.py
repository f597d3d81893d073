"""Start a grown split-anchor context where least squares puts it, not at zero.

Why (issue 24, docs/BENCHMARKS.md *Split anchors, fitted*): a split-anchor context grown as a
no-op (``SpatialContext``'s output layer at zero) does not learn by gradient descent in any time
a CPU can give it. Its anchors start with the hyperprior's wide scales (about 16 quantiser steps
for the smooth DC maps), so the rate's pull on the mean, (y - mu) / sigma^2, is feeble, and the
scale cannot shrink before the mean is right: 1,100 steps of context-only training moved the
residual of slice 0's second DC channel from 15.0 to 14.9 steps, while a plain linear predictor,
the mean of the four decoded diagonal neighbours, leaves 2.1 (8.9 against 50.9 on training crops).

So the context is set, before any training, to exactly that predictor on the channels where it
pays: the depthwise taps average the four nearest decoded neighbours' values (the diagonals for
the split anchors; two steps away for a deeper split's lattice passes, ``pass_neighbours``); for
each chosen channel k one pair of hidden units carries +/- that average through the ReLU, the
output layer turns it into ``d_mu_k = beta_k * average``, and one hidden unit carries the slice's scale so that
``d_scale_k = (gamma_k - 1) * scale_k``. ``beta_k`` is the least-squares slope over training
crops and ``gamma_k`` the factor, from a short list, that gives the fewest bits under the coder's
own discrete Gaussian; a channel whose bits do not fall by ``min_gain`` keeps its exact no-op.
Every other weight of the context is zero, so nothing else about the model changes, and the
result is ordinary weights that the exact path codes and that training can refine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .codec.model import ConvNeXtCharm, pass_neighbours
from .train import CropSampler, sample_qualities

#: the candidate scale factors gamma (1.0: keep the hyperprior's scale)
GAMMAS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)


@dataclass
class ChannelFit:
    channel: int
    beta: float
    gamma: float
    bits_before: float
    bits_after: float

    @property
    def gain_pct(self) -> float:
        return 100.0 * (self.bits_after / self.bits_before - 1.0)


def float_entropy_inputs(model: ConvNeXtCharm, x: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gained latent ``y_g`` and the hyperprior's means and scales for images ``x`` at
    qualities ``q``, from the float twin of the model with z rounded as the coder rounds it
    (what ``forward`` computes before the slices)."""
    gain, _ = model.gains(q)
    yg = model.g_a(x).float() * gain
    z = model.h_a(yg).float()
    med = model.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)
    means_h, scales_h = model.hyper(torch.floor(z - med + 0.5) + med, exact=False)
    return yg, means_h, scales_h


def neighbours(t: Tensor, offsets: tuple[tuple[int, int], ...]) -> Tensor:
    """``t`` (N, C, h, w) seen from each position's (row, column) ``offsets``, zero outside:
    (N, C, h, w, len(offsets))."""
    h, w = t.shape[2:]
    e = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    pad = torch.nn.functional.pad(t, (e, e, e, e))
    return torch.stack([pad[:, :, e + dy:e + dy + h, e + dx:e + dx + w] for dy, dx in offsets], -1)


def interior(mask: Tensor, margin: int) -> Tensor:
    """``mask`` without the positions closer than ``margin`` to the border (whose neighbours at
    that distance are missing)."""
    h, w = mask.shape[-2:]
    out = torch.zeros_like(mask)
    out[..., margin:h - margin, margin:w - margin] = mask[..., margin:h - margin, margin:w - margin]
    return out


def per_channel(t: Tensor, pos: Tensor) -> Tensor:
    """The values of ``t`` (N, C, h, w, ...) at the (N, C, h, w) positions ``pos``, per channel:
    (C, n, ...), every channel having the same positions."""
    c = t.shape[1]
    return t.transpose(0, 1)[pos.transpose(0, 1)].reshape(c, -1, *t.shape[4:])


@torch.no_grad()
def _samples(model: ConvNeXtCharm, sampler: CropSampler, slice_index: int, pass_index: int, batches: int,
             batch: int, q_sampling: str) -> tuple[Tensor, Tensor, Tensor]:
    """(value, neighbours' average, scale) per channel at the positions of pass ``pass_index``,
    each (C, N): what the decoder will know there, from the float twin of the model. Positions
    closer to the border than the farthest neighbour are left out (their neighbours are
    missing); the earlier passes' values are their residuals from the channel mean, rounded
    (what the offsets of ``pass_params`` show a context)."""
    m = model
    dev = next(m.parameters()).device
    vals, nbs, scales = [], [], []
    for _ in range(batches):
        x = sampler.batch(batch).to(dev)
        yg, means_h, scales_h = float_entropy_inputs(m, x, sample_qualities(q_sampling, batch, dev))
        decoded: list[Tensor] = []
        y_i = None
        for i, part in enumerate(yg.chunk(m.preset.slices, dim=1)):
            mu, scale, mean_sup = m.slice_params(i, means_h, scales_h, decoded)
            if i == slice_index:
                y_i = part
                break
            y_hat = torch.floor(part - mu + 0.5) + mu  # earlier slices: plainly rounded
            decoded.append(y_hat + m.lrp(i, mean_sup, y_hat))
        assert y_i is not None
        r = y_i - mu
        masks = m.passes(slice_index, r.shape[2], r.shape[3], r.device)
        taps = pass_neighbours(len(masks), pass_index)
        known = torch.stack(masks[:pass_index]).any(0)
        sym = torch.where(known, torch.floor(r + 0.5), torch.zeros_like(r))
        avg = neighbours(sym, taps).sum(-1) / len(taps)
        pos = interior(masks[pass_index], max(max(abs(dy), abs(dx)) for dy, dx in taps)).expand_as(r)
        for out, t in ((vals, r), (nbs, avg), (scales, scale)):
            out.append(per_channel(t, pos))
    return torch.cat(vals, 1).double(), torch.cat(nbs, 1).double(), torch.cat(scales, 1).double()


def _bits(model: ConvNeXtCharm, residual: Tensor, scale: Tensor) -> float:
    gc = model.gaussian_conditional
    lik = gc._likelihood(torch.floor(residual + 0.5).float(), scale.clamp(min=0.11).float())
    return float(-torch.log2(lik.clamp(min=1e-9)).sum())


def fit_split_context(model: ConvNeXtCharm, sampler: CropSampler, slice_index: int = 0, batches: int = 30,
                      batch: int = 4, min_gain: float = 0.03, q_sampling: str = "high",
                      pass_index: int | None = None) -> list[ChannelFit]:
    """Set the context of pass ``pass_index`` of slice ``slice_index`` (a split-anchor or
    lattice context, as grown; default: the split anchors' pass, ``anchor_tf``) to the fitted
    linear predictor described in the module docstring, over that pass's four nearest decoded
    neighbours (``pass_neighbours``); returns the channels it chose. The model's other weights
    are read, never changed."""
    if slice_index >= model.preset.split_anchors:
        raise ValueError(f"slice {slice_index} has no split-anchor context (preset split_anchors="
                         f"{model.preset.split_anchors})")
    n = len(model.passes(slice_index, 4, 4, "cpu"))
    k = n - 2 if pass_index is None else pass_index
    if not 0 < k < n - 1:
        raise ValueError(f"pass {k} of slice {slice_index} has no split-anchor or lattice context (passes 1..{n - 2})")
    was_training = model.training
    model.eval()
    val, avg, scale = _samples(model, sampler, slice_index, k, batches, batch, q_sampling)
    fits: list[ChannelFit] = []
    for ch in range(model.slice_ch):
        a, b, s = val[ch], avg[ch], scale[ch]
        beta = float((a * b).sum() / (b * b).sum().clamp(min=1e-9))
        before = _bits(model, a, s)
        best = (before, 1.0)
        for g in GAMMAS:
            got = _bits(model, a - beta * b, s * g)
            if got < best[0]:
                best = (got, g)
        if best[0] < (1.0 - min_gain) * before:
            fits.append(ChannelFit(ch, beta, best[1], before, best[0]))
    ctx = model.pass_context(slice_index, k, n)
    c = model.slice_ch
    width = ctx.head.inp.weight.shape[0]
    if 3 * len(fits) > width:
        fits = sorted(fits, key=lambda f: f.bits_after - f.bits_before)[: width // 3]
        fits.sort(key=lambda f: f.channel)
    with torch.no_grad():
        for p in (ctx.dw.weight, ctx.dw.bias, ctx.head.inp.weight, ctx.head.inp.bias, ctx.head.out.weight,
                  ctx.head.out.bias):
            p.zero_()
        taps = pass_neighbours(n, k)
        for dy, dx in taps:  # the symbols' channels of the depthwise: the neighbours' average
            ctx.dw.weight[:c, 0, 2 + dy, 2 + dx] = 1.0 / len(taps)
        for j, f in enumerate(fits):
            u = 2 * j  # + and - the average (input channel k) through the ReLU
            ctx.head.inp.weight[u, f.channel] = 1.0
            ctx.head.inp.weight[u + 1, f.channel] = -1.0
            ctx.head.out.weight[f.channel, u] = f.beta
            ctx.head.out.weight[f.channel, u + 1] = -f.beta
            v = 2 * len(fits) + j  # the slice's scale (input 3C + k, never negative)
            ctx.head.inp.weight[v, 3 * c + f.channel] = 1.0
            ctx.head.out.weight[c + f.channel, v] = f.gamma - 1.0
    model.train(was_training)
    return fits
