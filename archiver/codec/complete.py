"""Complete, near-orthonormal ConvNeXt transforms: the ``complete`` design (compact-v5 on).

Why this exists. The ``compact`` transforms (patchify stages with LayerNorm, 192 latent values
per 768 pixel values) start from random weights and must first learn to reconstruct an image at
all; on our CPU budget they never got past 28 dB (docs/MODEL.md, *Design study*). An archive
works at 35-45 dB, where a good codec behaves like a transform coder. So this design starts
*as* a transform coder and lets training improve it:

* the stem is a stride-s patchify whose weights are an orthonormal colour transform times an
  orthonormal s x s DCT-II basis: 3 * s^2 output channels for 3 * s^2 input values per patch,
  i.e. complete, so nothing is thrown away before quantisation;
* the synthesis ends in the transposed patchify with the same basis, which is the exact
  inverse at initialisation (an orthonormal matrix's inverse is its transpose);
* between them sit ConvNeXt blocks (7x7 depthwise, LayerNorm, MLP, layer scale) working on the
  coefficient maps at 1/s resolution, on the residual branch only: their layer scale starts at
  1e-3, so every block starts near the identity and nothing normalises the main path;
* output channels are ordered by spatial frequency (u + v, then colour), so the channel-wise
  autoregressive prior codes low frequencies first and predicts the rest from them.

At step 0 the codec is therefore an s x s DCT coder whose per-quality gain vectors are (uniform)
quantisation tables, with ChARM's entropy model on top; training then learns the entropy model,
the quantisation tables and, through the blocks, a non-linear, overlapping refinement of the
transform (the 7x7 depthwise kernels see neighbouring blocks, which is what removes blocking).

Coefficients are in the units of pixels in [0, 1] (orthonormal, so MSE is preserved); the
stem's bias centres pixels on 0 so the DC coefficients are signed and small.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import bands
from .layers import ConvNeXtBlock

# Orthonormal colour transform (rows: luma-like, two chroma-like). Orthonormal, so squared
# error in this space equals squared error in RGB.
COLOUR = torch.tensor([
    [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
    [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
    [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)],
], dtype=torch.float64)

BLOCK_LAYER_SCALE = 1e-3  # each ConvNeXt block starts this close to the identity


def dct_matrix(n: int) -> Tensor:
    """Orthonormal DCT-II: row k is the k-th basis vector over n samples (float64)."""
    i = torch.arange(n, dtype=torch.float64)
    k = i[:, None]
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def frequency_order(stride: int) -> list[tuple[int, int, int]]:
    """(colour, u, v) of each output channel: by u + v, then colour (luma first), then u."""
    keys = [(c, u, v) for c in range(3) for u in range(stride) for v in range(stride)]
    return sorted(keys, key=lambda t: (t[1] + t[2], t[0], t[1]))


def basis(stride: int) -> Tensor:
    """The stem's weights, (3 s^2, 3, s, s) float64: colour x DCT, rows in frequency order.

    As a (3 s^2) x (3 s^2) matrix it is orthonormal, so the transposed convolution with the same
    weights inverts the stem exactly."""
    d = dct_matrix(stride)
    rows = []
    for c, u, v in frequency_order(stride):
        spatial = d[u][:, None] * d[v][None, :]  # (s, s)
        rows.append(COLOUR[c][:, None, None] * spatial[None])  # (3, s, s)
    return torch.stack(rows)


class DCTStem(nn.Module):
    """Stride-s patchify initialised to colour x DCT; x in [0, 1] -> coefficients (centred)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        w = basis(stride)
        self.conv = nn.Conv2d(3, w.shape[0], stride, stride=stride)
        with torch.no_grad():
            self.conv.weight.copy_(w.float())
            # transform of a constant 0.5 image, subtracted: pixels are centred on 0
            self.conv.bias.copy_((-0.5 * w.sum(dim=(1, 2, 3))).float())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class DCTUnstem(nn.Module):
    """The transposed patchify: coefficients -> pixels; the stem's exact inverse at init."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        w = basis(stride)
        self.conv = nn.ConvTranspose2d(w.shape[0], 3, stride, stride=stride)
        with torch.no_grad():
            self.conv.weight.copy_(w.float())
            self.conv.bias.fill_(0.5)

    def forward(self, y: Tensor) -> Tensor:
        # kernel == stride: each input position owns one s x s output patch, so the transposed
        # convolution is one matrix product and a rearrangement (3x faster on the CPU than
        # PyTorch's transposed-convolution kernel, and the same values)
        conv = self.conv
        n, k, h, w = y.shape
        s = conv.stride[0]
        co = conv.weight.shape[1]
        t = torch.mm(y.permute(0, 2, 3, 1).reshape(-1, k), conv.weight.reshape(k, co * s * s))
        t = t.view(n, h, w, co, s, s).permute(0, 3, 1, 4, 2, 5).reshape(n, co, h * s, w * s)
        return t + conv.bias.view(1, -1, 1, 1)


def blocks(dim: int, depth: int, expansion: int) -> nn.Sequential:
    return nn.Sequential(*[ConvNeXtBlock(dim, expansion=expansion, layer_scale=BLOCK_LAYER_SCALE)
                           for _ in range(depth)])


class CompleteAnalysis(nn.Module):
    """g_a: DCT stem, then ConvNeXt blocks on the coefficient maps (residual, near identity)."""

    def __init__(self, stride: int, depth: int, expansion: int) -> None:
        super().__init__()
        self.stem = DCTStem(stride)
        self.blocks = blocks(3 * stride * stride, depth, expansion)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))


class CompleteSynthesis(nn.Module):
    """g_s: ConvNeXt blocks on the dequantised coefficients, then the inverse DCT patchify."""

    def __init__(self, stride: int, depth: int, expansion: int) -> None:
        super().__init__()
        self.blocks = blocks(3 * stride * stride, depth, expansion)
        self.unstem = DCTUnstem(stride)

    @property
    def scale(self) -> int:
        """Pixel rows per latent row."""
        return self.unstem.conv.stride[0]

    def forward(self, y: Tensor) -> Tensor:
        if bands.active() and not torch.is_grad_enabled():
            # on row bands in parallel (a one-tile decode or encode, bands.py), layer by layer so
            # that only the depthwise convolutions recompute their few halo rows: the same
            # per-position arithmetic, the same bits (tests/test_bands.py)
            for b in self.blocks:
                d = bands.banded(b.dw, [y], b.dw.kernel_size[0] // 2)
                y = bands.banded(b.mlp_residual, [d, y], 0)
            return bands.banded(self.unstem, [y], 0, self.scale)
        return self.unstem(self.blocks(y))


def transform_parameters(name: str) -> bool:
    """The stem and unstem bases: trained with a smaller learning rate, so that the noisy early
    gradients (while the entropy model is still random) do not scramble a good transform."""
    return ".stem." in f".{name}" or ".unstem." in f".{name}"
