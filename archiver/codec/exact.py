"""Integer-valued ("exact") layers for everything the decoder derives probabilities from.

Why: the rANS decoder must see *exactly* the same Gaussian means and scale indexes as the
encoder. Ordinary float convolutions differ in the last bits between CPU and GPU (different
summation orders, TF32, FMA), and a single flipped scale index desynchronises the decoder.
Following Ballé et al., "Integer networks for data compression with latent-variable models"
(ICLR 2019), every tensor here lives on a fixed-point grid:

* activations are multiples of 2^-8 and clamped to +-4096,
* weights are multiples of 2^-8 and clamped to +-128, biases multiples of 2^-16,
* after every linear map the result is rounded back to the 2^-8 grid with floor(x + 1/2).

At inference the layers run in float64. Every product of two grid values has at most 16
fractional bits and every partial sum stays below 2^53, so each addition is exact and the
result does not depend on summation order, blocking, FMA, thread count or device. Only matrix
products (1x1 convolutions) and direct depthwise convolutions are used — never an FFT or
Winograd algorithm, whose intermediate values are not on the grid.

Fast path (issue 25): inside a network the exact layers pass activations in *grid units*
(256 x value, integers held in float64; ``forward_units``). Scaling by a power of two is exact,
so a layer computes exactly 256 x what the value-domain layer computed; the bias is stored as
256 b + 1/2, so that one ``floor_`` and one ``clamp_`` (which also does the ReLU that follows a
layer) replace the five passes of ``to_grid`` (clamp, x 256, + 1/2, floor, / 256). Clamping
before or after rounding gives the same result because the bounds are grid points. Depthwise
convolutions use the backend's float64 ``conv2d`` on the CPU, where PyTorch has no FFT or
Winograd path for float64 (mkldnn, NNPACK and XNNPACK take float32 only, so float64 goes to a
direct or im2col + GEMM kernel, i.e. sums of exact products); elsewhere (CUDA, where cuDNN
could choose an FFT algorithm) they keep the explicit shift-and-add. ``tests/test_exact_fast.py``
checks both against the reference layers on random grids including worst-case magnitudes.

During training the same layers run in float32 with straight-through rounding, so the network
learns under the quantisation it will be evaluated with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FRAC_BITS = 8
GRID = float(2**FRAC_BITS)  # activation / weight grid: multiples of 1/256
ACT_LIMIT = 4096.0  # |activation| bound (2^20 grid units)
W_LIMIT = 128.0  # |weight| bound (2^15 grid units)


#: Set only by ``float_twin()``: the same layers without the grid and with GELU, so that
#: ``benchmarks/exact_cost.py`` can measure what exactness costs. Never set in the product.
_FLOAT_TWIN = False


@contextmanager
def float_twin() -> Iterator[None]:
    """Within this block the exact layers become ordinary float layers (no grid, GELU): the
    baseline of the RD-cost measurement. Bitstreams made this way would not decode anywhere."""
    global _FLOAT_TWIN
    before, _FLOAT_TWIN = _FLOAT_TWIN, True
    try:
        yield
    finally:
        _FLOAT_TWIN = before


def act(x: Tensor) -> Tensor:
    """The exact path's nonlinearity: ReLU (GELU is not exact); GELU in the float twin."""
    return F.gelu(x) if _FLOAT_TWIN else F.relu(x)


def round_half_up(x: Tensor) -> Tensor:
    """floor(x + 1/2): the one rounding rule used on both sides (torch.round is half-to-even)."""
    return torch.floor(x + 0.5)


def ste(x: Tensor, fn) -> Tensor:
    """Apply ``fn`` in the forward pass and pass gradients straight through."""
    return x + (fn(x) - x).detach()


def to_grid(x: Tensor, limit: float = ACT_LIMIT) -> Tensor:
    """Snap to the 2^-8 grid and clamp; differentiable (STE) when training."""
    x = torch.clamp(x, -limit, limit)
    if _FLOAT_TWIN:
        return x
    if x.requires_grad:
        return ste(x, lambda v: round_half_up(v * GRID) / GRID)
    # the same operations in place on the fresh tensor from clamp: at inference the exact path
    # is memory-bound, and each temporary is a pass over a (N, C, H, W) float64 tensor
    return x.mul_(GRID).add_(0.5).floor_().div_(GRID)


def quant_weight(w: Tensor) -> Tensor:
    return w if _FLOAT_TWIN else to_grid(w, W_LIMIT)


#: |activation| bound in grid units
UNIT_LIMIT = ACT_LIMIT * GRID


def unit_bias(b: Tensor, dtype: torch.dtype) -> Tensor:
    """A layer's bias in grid units with the rounding's + 1/2 folded in: 256 b + 1/2 (exact)."""
    return quant_bias(b).to(dtype) * GRID + 0.5


def finish_units(y: Tensor, relu: bool = False) -> Tensor:
    """Round ``y`` (= 256 x the linear map + 1/2, see ``unit_bias``) down and clamp, in place:
    ``to_grid`` in grid units, with a following ReLU folded into the clamp's lower bound."""
    return y.floor_().clamp_(0.0 if relu else -UNIT_LIMIT, UNIT_LIMIT)


def fast_exact(x: Tensor) -> bool:
    """Whether a layer may take the grid-unit fast path (the exact path, not the float twin)."""
    return x.dtype == torch.float64 and not _FLOAT_TWIN


def quant_bias(b: Tensor) -> Tensor:
    g = GRID * GRID
    b = torch.clamp(b, -ACT_LIMIT, ACT_LIMIT)
    if _FLOAT_TWIN:
        return b
    if b.requires_grad:
        return ste(b, lambda v: round_half_up(v * g) / g)
    return round_half_up(b * g) / g


def is_exact(x: Tensor) -> bool:
    """float64 tensors take the exact path; anything else is the training path."""
    return x.dtype == torch.float64


class ExactPointwise(nn.Module):
    """1x1 convolution on the grid: one matrix product, exact in float64."""

    def __init__(self, cin: int, cout: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) * (init_scale / cin**0.5))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward_units(self, a: Tensor, relu: bool = False) -> Tensor:
        """The exact layer on grid units (see the module docstring); ``relu`` folds a ReLU after it."""
        w = quant_weight(self.weight).to(a.dtype)
        b = unit_bias(self.bias, a.dtype)
        n, c, h, wd = a.shape
        if n == 1:  # (Cout, C) @ (C, H*W) in the NCHW layout: no permuted copies, bias in the GEMM
            y = torch.addmm(b[:, None], w, a.reshape(c, h * wd)).view(1, -1, h, wd)
        else:
            y = (torch.matmul(w, a.reshape(n, c, h * wd)) + b[None, :, None]).view(n, -1, h, wd)
        return finish_units(y, relu)

    def forward(self, x: Tensor) -> Tensor:
        if fast_exact(x):
            return self.forward_units(x * GRID).div_(GRID)
        w = quant_weight(self.weight).to(x.dtype)
        b = quant_bias(self.bias).to(x.dtype)
        if is_exact(x):
            # (N, C, H, W) -> (N, H, W, C) @ (C, Cout): BLAS GEMM on exact integers / 2^k
            y = torch.matmul(x.permute(0, 2, 3, 1), w.t()) + b
            y = y.permute(0, 3, 1, 2)
        else:
            with torch.autocast(x.device.type, enabled=False):  # never bf16 inside the exact path
                y = F.conv2d(x.float(), w.float()[:, :, None, None], b.float())
        return to_grid(y)


class ExactDepthwise(nn.Module):
    """k x k depthwise convolution on the grid (zero padding, stride 1)."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.randn(channels, 1, kernel, kernel) * (1.0 / kernel))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward_units(self, a: Tensor) -> Tensor:
        """The exact layer on grid units: the backend's float64 convolution on the CPU (exact
        there, see the module docstring), the shift-and-add reference elsewhere."""
        w = quant_weight(self.weight).to(a.dtype)
        b = unit_bias(self.bias, a.dtype)
        if a.device.type == "cpu":
            y = F.conv2d(a, w, b, padding=self.kernel // 2, groups=a.shape[1])
        else:
            y = shift_and_add(a, w, b)
        return finish_units(y)

    def forward(self, x: Tensor) -> Tensor:
        if fast_exact(x):
            return self.forward_units(x * GRID).div_(GRID)
        w = quant_weight(self.weight).to(x.dtype)
        b = quant_bias(self.bias).to(x.dtype)
        k = self.kernel
        p = k // 2
        if not is_exact(x):
            with torch.autocast(x.device.type, enabled=False):
                return to_grid(F.conv2d(x.float(), w.float(), b.float(), padding=p, groups=x.shape[1]))
        return to_grid(shift_and_add(x, w, b))


def shift_and_add(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Depthwise k x k convolution (zero padding) as explicit shift-and-add: every term is exact,
    so order cannot matter. The reference the fast path is tested against."""
    k = w.shape[-1]
    p = k // 2
    _, _, h, wd = x.shape
    xp = F.pad(x, (p, p, p, p))
    acc = b.view(1, -1, 1, 1).expand_as(x).clone()
    for dy in range(k):
        for dx in range(k):
            # fused multiply-add in place: the product of two grid values is exact, so an FMA
            # and a separate multiply then add give the same bits
            acc.addcmul_(xp[:, :, dy : dy + h, dx : dx + wd], w[:, 0, dy, dx].view(1, -1, 1, 1))
    return acc


class ExactBlock(nn.Module):
    """ConvNeXt-style block without LayerNorm or GELU (neither is exact): depthwise k x k,
    pointwise expansion, ReLU, pointwise projection, residual. Layer scale is folded into the
    projection weights (small init)."""

    def __init__(self, channels: int, kernel: int = 5, expansion: int = 2) -> None:
        super().__init__()
        self.dw = ExactDepthwise(channels, kernel)
        self.pw1 = ExactPointwise(channels, channels * expansion)
        self.pw2 = ExactPointwise(channels * expansion, channels, init_scale=0.1)

    def forward_units(self, a: Tensor) -> Tensor:
        # the sum of two grid values is on the grid: to_grid reduces to the clamp
        return self.pw2.forward_units(self.pw1.forward_units(self.dw.forward_units(a), relu=True)).add_(a) \
            .clamp_(-UNIT_LIMIT, UNIT_LIMIT)

    def forward(self, x: Tensor) -> Tensor:
        if fast_exact(x):
            return self.forward_units(x * GRID).div_(GRID)
        return to_grid(x + self.pw2(act(self.pw1(self.dw(x)))))


class ExactUp(nn.Module):
    """2x upsampling: pointwise to 4*cout channels then pixel shuffle (a pure rearrangement)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pw = ExactPointwise(cin, cout * 4)

    def forward_units(self, a: Tensor) -> Tensor:
        return F.pixel_shuffle(self.pw.forward_units(a), 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.pw(x), 2)


class ExactMLPHead(nn.Module):
    """pointwise in -> ReLU -> ExactBlocks -> pointwise out; used for slice transforms and LRP."""

    def __init__(self, cin: int, width: int, cout: int, blocks: int = 1, kernel: int = 5) -> None:
        super().__init__()
        self.inp = ExactPointwise(cin, width)
        self.blocks = nn.Sequential(*[ExactBlock(width, kernel) for _ in range(blocks)])
        self.out = ExactPointwise(width, cout, init_scale=0.5)

    def forward_units(self, a: Tensor) -> Tensor:
        a = self.inp.forward_units(a, relu=True)
        for block in self.blocks:
            a = block.forward_units(a)
        return self.out.forward_units(a)

    def forward(self, x: Tensor) -> Tensor:
        if fast_exact(x):
            return self.forward_units(x * GRID).div_(GRID)
        return self.out(self.blocks(act(self.inp(x))))


def enter_grid(x: Tensor, exact: bool) -> Tensor:
    """Bring a tensor onto the grid in the dtype of the chosen path."""
    if exact:
        return round_half_up(torch.clamp(x.double(), -ACT_LIMIT, ACT_LIMIT) * GRID) / GRID
    return to_grid(x.float())
