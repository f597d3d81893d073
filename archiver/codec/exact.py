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

Float32 when it is provably exact (issue 25): in grid units a layer is an integer map, ``W a``
with integer weights ``256 w`` and integer activations. Every product and every partial sum of
output ``o``, in any order, is bounded by ``sum_k |256 w_ok| * max|a_k|``; where that bound is at
most 2^24, every intermediate is an integer that float32 represents exactly, so a float32 matrix
product or depthwise convolution returns exactly the float64 result, in about half the time (the
depthwise one in a sixth: PyTorch has no oneDNN kernel for float64, and its float64 fallback is
im2col per channel). The bound is computed per call from the actual activations (a max per
channel); a matrix product whose bound is larger is split over ranges of input channels that
each meet it (``float32_chunks``), summed in float64. On a Kodak decode (compact-v6) every
pointwise call runs in float32, a third of them in two or three ranges, and 32 of the 34
depthwise calls; anything else keeps float64. Float32 is used only on the CPU with IEEE float32
arithmetic requested (``torch.get_float32_matmul_precision() == "highest"`` and oneDNN's fp32
precision not lowered: "medium"/"high" may let oneDNN use bf16 or TF32), and a depthwise
convolution only on a backend that sums products directly (oneDNN's or the im2col fallback,
never NNPACK's Winograd/FFT).
``tests/test_exact_fast.py`` checks both paths against the reference at the bound itself.

Float32 from end to end (issue 25, third pass): where one float32 product covers a layer, its
finish stays in float32 too. The grid-unit bias 256 b + 1/2 is a multiple of 1/256, split into an
integer ``b_int`` and a fraction ``b_frac / 256`` (``split_unit_bias``); then
floor(W a / 256 + 256 b + 1/2) = floor((W a + b_frac) / 256) + b_int, and with |W a| + b_frac
at most 2^24 every step is exact in float32 (``float32_finish``). The layer's output (integers of
at most 2^20) stays float32 for the next layer, so a head runs without a float64 pass from its
input to its output; supports are assembled directly as float32 grid units
(``grid_units_f32``), and each layer's derived constants are cached until its weights change
(``prepared_weights``). Layers split over channel ranges, and every other case, finish in
float64 as before.

Fewer passes through memory (issue 25, fourth pass): the float32 finish runs as one compiled pass
where numba is installed (kernels.py, the same float32 steps, so the same bits), and an
``ExactBlock`` on a large input runs its pointwise pair over 1,024 positions at a time
(``ExactBlock.ROWS``), so the expanded hidden activations stay in the cache; each position's
result depends on that position alone and the float32 bound is taken per chunk, so the integers
are the same as in one piece (``tests/test_exact_fast.py``).

During training the same layers run in float32 with straight-through rounding, so the network
learns under the quantisation it will be evaluated with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels as _kernels

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


#: float32 represents every integer of magnitude up to 2^24 exactly
F32_EXACT = float(2**24)

#: convolution backends that compute sums of exact products (no Winograd or FFT transform)
_DIRECT_CONV_BACKENDS = ("Mkldnn", "Slow2d", "SlowDilated2d")


def _ieee_float32() -> bool:
    """Whether float32 matrix products and convolutions run in IEEE float32 (not bf16/TF32)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mk = getattr(torch.backends, "mkldnn", None)
    for part in ("matmul", "conv"):
        if getattr(getattr(mk, part, None), "fp32_precision", "none") not in ("none", "ieee"):
            return False
    return True


def channel_max(a: Tensor, nonneg: bool = False) -> Tensor:
    """max |a| per channel of an (N, C, H, W) tensor, as a float64 (C,) tensor. Reductions over
    the spatial dims (two cheap passes; ``aminmax`` along one dim is several times slower), best
    on the float32 copy that the fast path makes anyway. ``nonneg``: the caller guarantees a >= 0
    by construction (the output of a layer with its ReLU folded into the clamp): one pass."""
    dims = (0, 2, 3)
    if nonneg:
        return a.amax(dim=dims).double()
    return torch.maximum(a.amax(dim=dims), -a.amin(dim=dims)).double()


#: the float32 finish adds the bias's fraction (< 256 units^2) inside the sum: room for it
F32_FINISH = F32_EXACT - GRID


def split_unit_bias(b_units: Tensor) -> tuple[Tensor, Tensor]:
    """A float64 grid-unit bias ``256 b + 1/2`` (a multiple of 1/256) as float32 ``(b_int, b_frac)``
    with ``256 b + 1/2 = b_int + b_frac / 256``, ``b_int`` an integer (|b_int| <= 2^20 + 1) and
    ``b_frac`` an integer in [0, 256): both exact in float32."""
    b_int = torch.floor(b_units)
    return b_int.float(), ((b_units - b_int) * GRID).float()


def float32_finish(y: Tensor, b_int: Tensor, relu: bool = False, b_frac: Tensor | None = None) -> Tensor:
    """``finish_units`` for a float32 sum. ``y`` (N, C, ...) holds ``W a + b_frac`` (or ``W a``,
    with ``b_frac`` given here): integers with |W a + b_frac| <= 2^24, so
    floor(W a / 256 + 256 b + 1/2) = floor((W a + b_frac) / 256) + b_int. Scaling by a power of
    two is exact, the sum of the two scaled integers needs at most 24 bits, floor is exact, and
    |floor(..) + b_int| <= 2^16 + 2^20 + 1 is an integer float32 holds: every step is exact, and
    the result equals the float64 path's bits. In place when ``b_frac`` is not given; with it, one
    out-of-place pass adds it (cheaper than filling a GEMM's output with the bias first)."""
    if (_kernels.available() and y.device.type == "cpu" and y.dtype == torch.float32 and y.is_contiguous()
            and not y.requires_grad):
        # one compiled pass instead of the five below (kernels.py): the same float32 steps
        bf = b_frac if b_frac is not None else torch.zeros_like(b_int)
        _kernels.finish_f32(y.detach().view(y.shape[0], y.shape[1], -1).numpy(), bf.numpy(), b_int.numpy(),
                            0.0 if relu else -UNIT_LIMIT, UNIT_LIMIT)
        return y
    shape = (1, -1) + (1,) * (y.dim() - 2)
    if b_frac is None:
        y = y.mul_(1.0 / GRID)
    else:
        y = torch.add(b_frac.view(shape) * (1.0 / GRID), y, alpha=1.0 / GRID)
    return y.floor_().add_(b_int.view(shape)).clamp_(0.0 if relu else -UNIT_LIMIT, UNIT_LIMIT)


#: a matrix product is split into at most this many float32 products over input-channel ranges;
#: beyond it, float64 is faster than the float32 products and the float64 additions together
MAX_F32_CHUNKS = 3


def float32_chunks(w_abs: Tensor, a_max: Tensor, max_chunks: int = MAX_F32_CHUNKS,
                   limit: float = F32_EXACT) -> list[tuple[int, int]] | None:
    """Ranges of input channels over which float32 sums ``W a`` exactly, or None.

    ``w_abs`` (Cout, C): the absolute integer weights; ``a_max`` (C,): max |a| per input channel.
    Within a range ``[s, e)`` every product and every partial sum of output ``o``, in any order, is
    bounded by ``sum_{s <= k < e} |w_ok| * a_max_k``; the ranges are cut so that this is at most
    2^24 for every output. None when one channel alone exceeds it or more than ``max_chunks``
    ranges would be needed (the caller then stays in float64)."""
    k = w_abs.shape[1]
    # the per-output bound as one matrix-vector product: integer products below 2^35 and sums below
    # 2^44, exact in float64 in any order, so the same number as the elementwise sum
    if float(torch.mv(w_abs, a_max).max()) <= limit:
        return [(0, k)]
    contrib = w_abs * a_max[None, :]
    cum = contrib.cumsum(1)
    chunks: list[tuple[int, int]] = []
    start = 0
    while start < k:
        if len(chunks) == max_chunks:
            return None
        base = cum[:, start - 1 : start] if start else 0.0
        over = ((cum[:, start:] - base) > limit).any(0)
        if not bool(over.any()):
            chunks.append((start, k))
            break
        end = start + int(over.to(torch.int8).argmax())  # the sums grow with k: the first channel too many
        if end == start:
            return None
        chunks.append((start, end))
        start = end
    return chunks


def float32_allowed(a: Tensor) -> bool:
    """Whether the float32 fast path may run at all for ``a`` (CPU, IEEE float32 arithmetic)."""
    return a.device.type == "cpu" and _ieee_float32()


def grid_units_f32(parts: list[Tensor]) -> Tensor:
    """Float64 grid values (N, C_i, H, W), concatenated along channels as float32 grid units.

    Exact where it is used: the exact path's supports are hyper means/scales (clamped to
    +-ACT_LIMIT) and decoded latents (symbol +-SYMBOL_LIMIT = 2^15 plus a mean of at most
    ACT_LIMIT plus LRP's 1/2), all below 2^16 with 8 fractional bits, i.e. integers below 2^24
    in grid units, which float32 holds. One converting copy per part and one scaling pass,
    instead of a float64 concatenation, a float64 scaling and a float32 copy."""
    n, _, h, w = parts[0].shape
    out = torch.empty((n, sum(p.shape[1] for p in parts), h, w), dtype=torch.float32, device=parts[0].device)
    at = 0
    for p in parts:
        out[:, at : at + p.shape[1]].copy_(p)
        at += p.shape[1]
    return out.mul_(GRID)


def _direct_conv(a: Tensor, w: Tensor, padding: int) -> bool:
    """Whether PyTorch runs this float32 depthwise convolution with a direct (or im2col) kernel."""
    try:
        backend = torch._C._select_conv_backend(a, w, None, [1, 1], [padding, padding], [1, 1], False, [0, 0],
                                                a.shape[1], None)
    except (AttributeError, RuntimeError, TypeError):  # a private API: when it changes, assume nothing
        return False
    return str(backend).rsplit(".", 1)[-1] in _DIRECT_CONV_BACKENDS


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


def prepared_weights(layer: nn.Module) -> tuple[Tensor, ...]:
    """A layer's inference constants, derived once and cached on the layer until its weights
    change: float64 grid weights ``w`` and grid-unit bias ``b`` (unit_bias), the absolute integer
    weights for the float32 bound (pointwise: (Cout, C); depthwise: summed over the taps, (C,)),
    float32 integer weights, and ``split_unit_bias(b)``. Why: an exact decode calls ~150 layers,
    and re-deriving these each call was ~25 small tensor operations per layer, about a tenth of
    a decode. The key holds the parameters' version counters (bumped by every in-place update:
    optimiser steps, load_state_dict) and storage, so a changed layer is never served stale
    constants."""
    wt, bs = layer.weight, layer.bias
    key = (wt._version, bs._version, wt.data_ptr(), bs.data_ptr(), wt.device)
    cached = layer.__dict__.get("_prepared")
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        w = quant_weight(wt.detach()).double()
        b = unit_bias(bs.detach(), torch.float64)
        w_units = w * GRID  # integers
        w_abs = w_units.abs()
        if w_abs.dim() == 4:  # depthwise (C, 1, k, k): the bound sums a channel's taps
            w_abs = w_abs.flatten(1).sum(1)
        prepared = (w, b, w_abs, w_units.float(), *split_unit_bias(b))
    layer.__dict__["_prepared"] = (key, prepared)
    return prepared


class ExactPointwise(nn.Module):
    """1x1 convolution on the grid: one matrix product, exact in float64."""

    def __init__(self, cin: int, cout: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) * (init_scale / cin**0.5))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward_units(self, a: Tensor, relu: bool = False, nonneg: bool = False) -> Tensor:
        """The exact layer on grid units (see the module docstring); ``relu`` folds a ReLU after it.
        ``a`` is float64 or float32 (integers either way); the result is float32 where the float32
        path ran start to end, float64 otherwise. ``nonneg``: ``a`` >= 0 by construction (see
        channel_max)."""
        w, b, w_abs, w32, b_int, b_frac = prepared_weights(self)
        n, c, h, wd = a.shape
        a32 = a.float() if float32_allowed(a) else None  # exact: |a| <= 2^20 units
        chunks = float32_chunks(w_abs, channel_max(a32, nonneg), limit=F32_FINISH) if a32 is not None else None
        if chunks == [(0, c)]:
            # one range: the whole layer in float32 (float32_finish), the activations stay float32
            a32 = a32.reshape(n, c, h * wd)
            y = torch.mm(w32, a32[0]) if n == 1 else torch.matmul(w32, a32)
            return float32_finish(y.view(n, -1, h, wd), b_int, relu, b_frac)
        if chunks:
            # integer products and sums at most 2^24 within each range: float32 is exact there; the
            # ranges' sums, the 1/256 and the bias in float64
            a32 = a32.reshape(n, c, h * wd)
            s0, e0 = chunks[0]
            # one pass: float64 bias + float32 sum / 256, computed in float64 (type promotion)
            y = torch.add(b[None, :, None], torch.matmul(w32[:, s0:e0], a32[:, s0:e0]), alpha=1.0 / GRID)
            for s, e in chunks[1:]:
                y.add_(torch.matmul(w32[:, s:e], a32[:, s:e]), alpha=1.0 / GRID)
            return finish_units(y.view(n, -1, h, wd), relu)
        a = a.double()
        if n == 1:  # (Cout, C) @ (C, H*W) in the NCHW layout: no permuted copies, bias in the GEMM
            y = torch.addmm(b[:, None], w, a.reshape(c, h * wd)).view(1, -1, h, wd)
        else:
            y = (torch.matmul(w, a.reshape(n, c, h * wd)) + b[None, :, None]).view(n, -1, h, wd)
        return finish_units(y, relu)

    def forward(self, x: Tensor) -> Tensor:
        if fast_exact(x):
            return self.forward_units(x * GRID).double().div_(GRID)
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


#: whether a 5x5 depthwise layer on the float32 path runs as one compiled pass (kernels.py); a
#: switch for tests and benchmarks, which compare it with oneDNN's convolution plus the finish
FUSED_DEPTHWISE = True


class ExactDepthwise(nn.Module):
    """k x k depthwise convolution on the grid (zero padding, stride 1)."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.randn(channels, 1, kernel, kernel) * (1.0 / kernel))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward_units(self, a: Tensor, nonneg: bool = False) -> Tensor:
        """The exact layer on grid units: float32 where provably exact (the result is then
        float32), else the backend's float64 convolution on the CPU (exact there, see the module
        docstring), the shift-and-add reference elsewhere. ``nonneg`` as for ExactPointwise."""
        w, b, w_abs, w32, b_int, b_frac = prepared_weights(self)
        p = self.kernel // 2
        a32 = a.float() if float32_allowed(a) else None  # exact: |a| <= 2^20 units
        if a32 is not None and float((w_abs * channel_max(a32, nonneg)).max()) <= F32_FINISH:
            if self.kernel == 5 and FUSED_DEPTHWISE and _kernels.available() and not a32.requires_grad:
                # the convolution and its finish in one compiled pass (kernels.py): the same
                # integers, since under this bound no sum order can round
                a32 = a32.contiguous()
                out = torch.empty_like(a32)
                _kernels.depthwise5_f32(a32.numpy(), w32.view(-1, 5, 5).numpy(), b_frac.numpy(), b_int.numpy(),
                                        -UNIT_LIMIT, UNIT_LIMIT, out.numpy())
                return out
            if _direct_conv(a32, w32, p):
                # integer products and sums below 2^24: float32 is exact, and so is float32_finish
                return float32_finish(F.conv2d(a32, w32, b_frac, padding=p, groups=a.shape[1]), b_int)
        a = a.double()
        if a.device.type == "cpu":
            y = F.conv2d(a, w, b, padding=p, groups=a.shape[1])
        else:
            y = shift_and_add(a, w, b)
        return finish_units(y)

    def forward(self, x: Tensor) -> Tensor:
        if fast_exact(x):
            return self.forward_units(x * GRID).double().div_(GRID)
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

    #: positions per step of the pointwise pair (pw1, pw2) on a large input: the expanded hidden
    #: activations (2 x channels x this x 4 bytes, 768 KB for 96 channels) then stay in the
    #: core's cache between the two products and the rounding passes
    ROWS = 1024

    def forward_units(self, a: Tensor, nonneg: bool = False) -> Tensor:
        # the sum of two grid values is on the grid: to_grid reduces to the clamp; pw2 reads pw1's
        # ReLU output (nonneg); ``nonneg``: the block's input is a ReLU output too
        d = self.dw.forward_units(a, nonneg=nonneg)
        n, c, h, w = d.shape
        if n == 1 and h * w > 2 * self.ROWS and float32_allowed(d):
            return self._pointwise_by_rows(a, d)
        hidden = self.pw1.forward_units(d, relu=True)
        return self.pw2.forward_units(hidden, nonneg=True).add_(a).clamp_(-UNIT_LIMIT, UNIT_LIMIT)

    def _pointwise_by_rows(self, a: Tensor, d: Tensor) -> Tensor:
        """pw1, ReLU, pw2 and the residual over ``ROWS`` positions at a time. Each position's
        result depends on that position alone, and every path is exact (the float32 bound is
        taken per chunk), so the result is the same integers as in one piece."""
        c, hw = d.shape[1], d.shape[2] * d.shape[3]
        out = a.clone(memory_format=torch.contiguous_format)
        src = d.reshape(1, c, 1, hw)
        dst = out.view(1, c, 1, hw)
        for s in range(0, hw, self.ROWS):
            e = min(s + self.ROWS, hw)
            hidden = self.pw1.forward_units(src[..., s:e], relu=True)
            dst[..., s:e].add_(self.pw2.forward_units(hidden, nonneg=True).view(1, c, 1, e - s))
        return out.clamp_(-UNIT_LIMIT, UNIT_LIMIT)

    def forward(self, x: Tensor) -> Tensor:
        if fast_exact(x):
            return self.forward_units(x * GRID).double().div_(GRID)
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

    @property
    def halo(self) -> int:
        """Rows of input beyond a position that its output depends on (bands.py)."""
        return sum(b.dw.kernel // 2 for b in self.blocks)

    def forward_units(self, a: Tensor) -> Tensor:
        a = self.inp.forward_units(a, relu=True)
        for k, block in enumerate(self.blocks):
            a = block.forward_units(a, nonneg=k == 0)  # the first block reads inp's ReLU output
        return self.out.forward_units(a)

    def forward(self, x: Tensor) -> Tensor:
        if fast_exact(x):
            return self.forward_units(x * GRID).double().div_(GRID)
        return self.out(self.blocks(act(self.inp(x))))


def enter_grid(x: Tensor, exact: bool) -> Tensor:
    """Bring a tensor onto the grid in the dtype of the chosen path."""
    if exact:
        return round_half_up(torch.clamp(x.double(), -ACT_LIMIT, ACT_LIMIT) * GRID) / GRID
    return to_grid(x.float())
