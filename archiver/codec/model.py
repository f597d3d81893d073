"""ConvNeXt-ChARM: ConvNeXt transforms + channel-wise autoregressive entropy model with latent
residual prediction (Ghorbel, Hamidouche, Morin 2023), made variable-rate with gain vectors and
made decodable anywhere by computing the entropy parameters with exact layers (see exact.py).

Data flow (per image or tile)::

    x -> g_a -> y -> (* gain[q]) -> y_g -> h_a -> z -> [factorized prior] -> z_hat
    z_hat -> h_s (exact) -> hyper means / scales
    for each slice i of y_g:  support = hyper part + up to K previous decoded slices
        mu_i, sigma_i = slice transforms (exact);  y_hat_i = round(y_i - mu_i) + mu_i
        y_hat_i += LRP(support, y_hat_i)           (exact, bounded to +-1/2)
    y_hat -> (* inv_gain[q]) -> g_s -> x_hat

Only g_a, h_a and g_s are ordinary float networks: the first two run on the encoder only, and
g_s turns latents into pixels without feeding anything back into a probability model.
"""

from __future__ import annotations

import itertools
import math

import torch
from .compressai_imports import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from .bands import banded
from .exact import (GRID, UNIT_LIMIT, ExactBlock, ExactDepthwise, ExactMLPHead, ExactPointwise, ExactUp, act, enter_grid,
                    fast_exact, float32_allowed, grid_units_f32, round_half_up, ste, to_grid)
from .complete import CompleteAnalysis, CompleteSynthesis
from .layers import Analysis, HyperAnalysis, Synthesis
from .presets import PRESETS, Preset, quality_to_lambda
from .rdo import distortion_weight

SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64
LRP_BOUND = 0.5
SYMBOL_LIMIT = 2**15  # symbols are clamped here; anything near it is already absurd


def quality_lambdas(q: Tensor, preset: Preset) -> Tensor:
    """``quality_to_lambda`` of every quality in ``q`` as one tensor op (training: no host round
    trip, and torch.compile sees one graph)."""
    lo, hi = preset.lambda_min, preset.lambda_max
    return lo * (hi / lo) ** (q.clamp(0.0, 100.0) / 100.0)


def scale_table() -> list[float]:
    return [math.exp(v) for v in torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS).tolist()]


class HyperSynthesis(nn.Module):
    """h_s, exact: z_hat -> (hyper means, hyper scales) at the latent resolution."""

    def __init__(self, z_channels: int, width: int, latent: int, blocks: int) -> None:
        super().__init__()
        self.inp = ExactPointwise(z_channels, width)
        self.stage0 = nn.Sequential(*[ExactBlock(width, 5) for _ in range(blocks)])
        self.up1 = ExactUp(width, width)
        self.stage1 = ExactBlock(width, 5)
        self.up2 = ExactUp(width, width)
        self.out = ExactPointwise(width, 2 * latent, init_scale=0.5)

    def forward(self, z: Tensor) -> Tensor:
        if fast_exact(z):  # the same layers on grid units (exact.py), one conversion each way
            a = self.inp.forward_units(z * GRID)
            for block in self.stage0:
                a = block.forward_units(a)
            a = self.up1.forward_units(a.relu_())
            # the two full-resolution stages on row bands in parallel where allowed (bands.py):
            # exact, so the same integers; the bands' inputs overlap, so no in-place ReLU there
            a = banded(self.stage1.forward_units, [a], self.stage1.dw.kernel // 2)
            return banded(lambda t: self.out.forward_units(self.up2.forward_units(t.relu())), [a], 0,
                          2).double().div_(GRID)
        h = self.stage0(self.inp(z))
        h = self.stage1(self.up1(act(h)))
        return self.out(self.up2(act(h)))


def anchor_mask(h: int, w: int, device: torch.device | str) -> Tensor:
    """(1, 1, h, w) bool: True at the checkerboard's anchors ((row + col) even), coded first."""
    r = torch.arange(h, device=device)[:, None]
    c = torch.arange(w, device=device)[None, :]
    return ((r + c) % 2 == 0)[None, None]


def coding_passes(h: int, w: int, device: torch.device | str, split: bool, depth: int = 1) -> list[Tensor]:
    """The coding passes of one checkerboard slice, as (1, 1, h, w) bool masks in coding order.

    Unsplit: the anchors, then the rest. Split (``depth`` 1): the anchors at (even row, even
    column) first, with the channel context only; then the other anchors, each of which sees the
    first quarter on its four diagonals; then the rest, which sees every anchor. Why: the bit
    budget (docs/BENCHMARKS.md) finds slice 0's anchors cost 2.8x the bits of its non-anchors,
    and on smooth photos slice 0 holds 69 % of the bits; splitting leaves only a quarter of the
    positions without any spatial context instead of half (the four-pass idea of He et al.
    2021 / ELIC, applied to the anchors only).

    Deeper splits halve that first quarter again, as a checkerboard of its own at twice the
    spacing: ``depth`` 2 codes the quarter's positions with (row + column) divisible by 4 first,
    then the rest of the quarter, each of which sees four of them two steps away along the axes;
    ``depth`` 3 also splits those first ones, (row, column) both divisible by 4 first, then
    (2 mod 4, 2 mod 4), which see four of them two steps away on the diagonals. A 5x5 context
    reaches both. The passes' decoded neighbours: :func:`pass_neighbours`."""
    anchors = anchor_mask(h, w, device)
    if not split:
        return [anchors, ~anchors]
    r = torch.arange(h, device=device)[:, None]
    c = torch.arange(w, device=device)[None, :]
    first = ((r % 2 == 0) & (c % 2 == 0))[None, None]
    rest = [anchors & ~first, ~anchors]
    if depth == 1:
        return [first, *rest]
    lattice = first & ((r + c) % 4 == 0)[None, None]
    if depth == 2:
        return [lattice, first & ~lattice, *rest]
    corner = ((r % 4 == 0) & (c % 4 == 0))[None, None]
    return [corner, lattice & ~corner, first & ~lattice, *rest]


#: the decoded neighbours a refined pass leans on most, as (row, column) offsets: see
#: pass_neighbours (the fitted start of a context, context_fit.py, averages them)
DIAGONALS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
AXES_2 = ((-2, 0), (2, 0), (0, -2), (0, 2))
DIAGONALS_2 = ((-2, -2), (-2, 2), (2, -2), (2, 2))


def pass_neighbours(n_passes: int, k: int) -> tuple[tuple[int, int], ...]:
    """The four nearest decoded neighbours of pass ``k`` of ``n_passes`` (coding_passes): the
    last pass sees the anchors on its axes, the one before it the first quarter on its
    diagonals; a deeper split's passes see the quarter's lattice two steps away, along the axes
    (the pass before the diagonal one), then on the diagonals."""
    if not 0 < k < n_passes:
        raise ValueError(f"pass {k} of {n_passes} has no decoded neighbours")
    return {1: ((-1, 0), (1, 0), (0, -1), (0, 1)), 2: DIAGONALS, 3: AXES_2, 4: DIAGONALS_2}[n_passes - k]


class SpatialContext(nn.Module):
    """The checkerboard context of one slice (He et al., "Checkerboard context model for
    efficient learned image compression", CVPR 2021), in exact arithmetic.

    Why: ChARM predicts a slice from the hyperprior and the earlier slices only. In the complete
    design the first slice holds the DC and lowest-frequency coefficients, a third of all bits,
    and their best predictor is their spatial neighbours (JPEG codes DC differentially; a 5x5
    local oracle saves ~20 % on that slice). Anchors are coded first with the channel context;
    then every other position sees its four anchor neighbours: a 5x5 exact depthwise over the
    anchors' symbols and their magnitudes, then a pointwise MLP that also sees the slice's own
    mean and scale, gives corrections (d mean, d scale). The MLP's output layer starts at zero,
    so a model extended with this context starts exactly where it was.
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.dw = ExactDepthwise(2 * channels, 5)
        self.head = ExactMLPHead(4 * channels, width, 2 * channels, blocks=0)
        with torch.no_grad():
            self.head.out.weight.zero_()
            self.head.out.bias.zero_()

    def forward(self, sym: Tensor, mu: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        # on row bands in parallel where a one-tile decode or encode allows it (bands.py); exact,
        # so the same integers
        return banded(self._units, (sym, mu, scale), self.dw.kernel // 2 + self.head.halo)

    def _units(self, sym: Tensor, mu: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        if fast_exact(sym):  # on grid units (exact.py); mu + d_mu is on the grid, so only clamped
            mu_u, scale_u = mu * GRID, scale * GRID
            # float32 grid units from the start where allowed: symbols |s| <= 2^15 and
            # means/scales |v| <= ACT_LIMIT with 8 fractional bits are integers below 2^24 in units
            f32 = float32_allowed(sym)
            s = sym.float().mul_(GRID) if f32 else sym * GRID
            ctx = self.dw.forward_units(torch.cat([s, s.abs()], dim=1))
            head_in = (torch.cat([ctx.float(), grid_units_f32([mu, scale])], dim=1) if f32
                       else torch.cat([ctx, mu_u, scale_u], dim=1))
            d_mu, d_scale = self.head.forward_units(head_in).chunk(2, dim=1)
            return ((d_mu.double().add_(mu_u).clamp_(-UNIT_LIMIT, UNIT_LIMIT).div_(GRID)),
                    d_scale.double().add_(scale_u).clamp_(-UNIT_LIMIT, UNIT_LIMIT).div_(GRID))
        ctx = self.dw(torch.cat([sym, sym.abs()], dim=1))
        d_mu, d_scale = self.head(torch.cat([ctx, mu, scale], dim=1)).chunk(2, dim=1)
        return to_grid(mu + d_mu), to_grid(scale + d_scale)


def initial_log_gains(p: Preset) -> Tensor:
    """Log gain of each quality level at initialisation (the same for every channel).

    compact: log-spaced 0.25 .. 4. complete: the gain is 1 / step of a uniform quantiser that is
    rate-distortion optimal at the level's lambda for an orthonormal transform at high rate:
    D = step^2/12 per value (in 0..255 units), R falls by one bit per value when the step
    doubles, 3 values per pixel, so d(lambda D + R)/d step = 0 gives step^2 = 18 / (lambda ln 2).
    The coefficients are in [0, 1] units, hence the / 255. Training then shapes these into
    per-channel quantisation tables."""
    if p.design != "complete":
        return torch.linspace(math.log(0.25), math.log(4.0), p.levels)
    qs = [100.0 * i / (p.levels - 1) for i in range(p.levels)]
    steps = [math.sqrt(18.0 / (quality_to_lambda(q, p) * math.log(2.0))) / 255.0 for q in qs]
    return torch.tensor([-math.log(s) for s in steps], dtype=torch.float32)


class ConvNeXtCharm(nn.Module):
    def __init__(self, preset: Preset) -> None:
        super().__init__()
        p = self.preset = preset
        m, s = p.latent, p.slices
        if m % s:
            raise ValueError("latent channels must divide into slices")
        self.slice_ch = m // s
        if p.design == "complete":
            self.g_a = CompleteAnalysis(p.stride, p.depths[0], p.expansion)
            self.g_s = CompleteSynthesis(p.stride, p.depths[1], p.expansion)
        else:
            self.g_a = Analysis(p.dims, p.depths, m)
            self.g_s = Synthesis(p.dims, p.depths, m)
        self.h_a = HyperAnalysis(m, p.hyper_width, p.z_channels, p.hyper_blocks)
        self.h_s = HyperSynthesis(p.z_channels, p.hyper_width, m, p.hyper_blocks)
        hyper_in = m if p.full_hyper else self.slice_ch
        self.mean_tf = nn.ModuleList()
        self.scale_tf = nn.ModuleList()
        self.lrp_tf = nn.ModuleList()
        for i in range(s):
            cin = hyper_in + self.slice_ch * min(i, p.support)
            self.mean_tf.append(ExactMLPHead(cin, p.slice_width, self.slice_ch, p.slice_blocks))
            self.scale_tf.append(ExactMLPHead(cin, p.slice_width, self.slice_ch, p.slice_blocks))
            self.lrp_tf.append(ExactMLPHead(cin + self.slice_ch, p.slice_width, self.slice_ch, p.slice_blocks))
        if p.context == "checkerboard":
            self.spatial_tf = nn.ModuleList([SpatialContext(self.slice_ch, p.context_width) for _ in range(s)])
        if p.split_anchors:
            self.anchor_tf = nn.ModuleList([SpatialContext(self.slice_ch, p.context_width)
                                            for _ in range(p.split_anchors)])
        if p.split_depth > 1:
            # lattice_tf[i][j]: slice i's pass that is j + 1 passes before its anchor_tf pass
            # (pass_context), so a model grown deeper keeps the names of what it had
            self.lattice_tf = nn.ModuleList([
                nn.ModuleList([SpatialContext(self.slice_ch, p.context_width) for _ in range(p.split_depth - 1)])
                for _ in range(p.split_anchors)])
        init = initial_log_gains(p)[:, None].repeat(1, m)
        self.log_gain = nn.Parameter(init.clone())
        self.log_inv_gain = nn.Parameter(-init.clone())
        self.entropy_bottleneck = EntropyBottleneck(p.z_channels)
        self.gaussian_conditional = GaussianConditional(None)
        self.register_buffer("scale_table", torch.tensor(scale_table(), dtype=torch.float32))
        self.refresh_scale_bounds()
        # training only (not part of the preset, never shipped): > 0 makes ``forward`` choose each
        # symbol as effort 1's RDOQ does (``_train_quantize``) instead of rounding it
        self.train_rdo_strength = 0.0

    # ---- variable rate -------------------------------------------------------------------
    def gains(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """Gain and inverse gain for qualities ``q`` (N,), interpolated log-linearly between levels."""
        levels = self.preset.levels
        s = q.clamp(0.0, 100.0) / 100.0 * (levels - 1)
        i = torch.floor(s).clamp(max=levels - 2).long()
        t = (s - i.to(s.dtype))[:, None]
        lg = (1 - t) * self.log_gain[i] + t * self.log_gain[i + 1]
        lig = (1 - t) * self.log_inv_gain[i] + t * self.log_inv_gain[i + 1]
        return torch.exp(lg)[:, :, None, None], torch.exp(lig)[:, :, None, None]

    # ---- entropy parameters (shared by training, encoding and decoding) --------------------
    def hyper(self, z_hat: Tensor, exact: bool) -> tuple[Tensor, Tensor]:
        h = self.h_s(enter_grid(z_hat, exact))
        return h.chunk(2, dim=1)

    def _support(self, i: int, hyper: Tensor, decoded: list[Tensor]) -> list[Tensor]:
        p = self.preset
        part = hyper if p.full_hyper else hyper[:, i * self.slice_ch : (i + 1) * self.slice_ch]
        return [part, *decoded[max(0, i - p.support) : i]]

    @staticmethod
    def _heads(tfs: list[ExactMLPHead], supports: list[list[Tensor]]) -> list[Tensor]:
        """Each ``tfs[k]`` on the channel concatenation of ``supports[k]``. On the exact path's
        float32 fast path the concatenations are built directly as float32 grid units
        (exact.grid_units_f32), and the heads run on row bands in parallel where a one-tile
        decode or encode allows it (bands.py; exact integers, so the same result), all of them
        in one banded call so that the threads meet once."""
        flat = [t for sup in supports for t in sup]
        if fast_exact(flat[0]) and float32_allowed(flat[0]):
            cuts = [0, *itertools.accumulate(len(sup) for sup in supports)]

            def run(*ps: Tensor) -> tuple[Tensor, ...]:
                return tuple(tf.forward_units(grid_units_f32(list(ps[a:b]))).double().div_(GRID)
                             for tf, a, b in zip(tfs, cuts, cuts[1:]))

            return list(banded(run, flat, max(tf.halo for tf in tfs)))
        return [tf(torch.cat(sup, dim=1)) for tf, sup in zip(tfs, supports)]

    def slice_params(self, i: int, means_h: Tensor, scales_h: Tensor, decoded: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Mean and scale of slice ``i``; also returns the mean support's parts (reused by LRP)."""
        mean_sup = self._support(i, means_h, decoded)
        mu, scale = self._heads([self.mean_tf[i], self.scale_tf[i]], [mean_sup, self._support(i, scales_h, decoded)])
        return mu, scale, mean_sup

    def spatial(self, i: int, anchor_symbols: Tensor, mu: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """Checkerboard context: mean and scale of slice ``i`` at the non-anchor positions, from
        the decoded symbols of the anchors around them (zero elsewhere) and the slice's own
        parameters. Exact; only the non-anchor positions of the result are used."""
        return self.spatial_tf[i](anchor_symbols, mu, scale)

    def passes(self, i: int, h: int, w: int, device: torch.device | str) -> list[Tensor]:
        """Slice ``i``'s coding passes (checkerboard models; see :func:`coding_passes`)."""
        split = i < self.preset.split_anchors
        return coding_passes(h, w, device, split, self.preset.split_depth if split else 1)

    def pass_context(self, i: int, k: int, n_passes: int) -> "SpatialContext":
        """The context that refines pass ``k`` (> 0) of slice ``i``'s ``n_passes``: the last pass
        has the checkerboard's (spatial_tf), the one before it the split anchors' (anchor_tf),
        earlier ones a deeper split's (lattice_tf, counted back from there)."""
        if k == n_passes - 1:
            return self.spatial_tf[i]
        if k == n_passes - 2:
            return self.anchor_tf[i]
        return self.lattice_tf[i][n_passes - 3 - k]

    def pass_params(self, i: int, k: int, n_passes: int, done: Tensor, mu: Tensor,
                    scale: Tensor, mu_done: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and scale of pass ``k`` of slice ``i``: the channel context's (``mu``, ``scale``)
        for the first pass, refined from ``done`` (the symbols of the earlier passes, zero
        elsewhere) for the others. Exact; only the pass's own positions of the result are used.

        ``mu_done``: the means the earlier passes' symbols were coded with (``mu`` elsewhere).
        The context sees each decoded value's offset from the channel context's mean,
        ``done + mu_done - mu``, not the bare symbol: a pass that refines its mean (split anchors)
        codes smaller symbols, and bare symbols would then mean something else to the passes
        after it than the anchors' symbols they were trained on (a split-anchor context that
        predicted well made the non-anchors cost more than it saved). The offset is zero after
        the first pass, which is coded with ``mu`` itself, so unsplit models see what they
        always saw."""
        if k == 0:
            return mu, scale
        if k >= 2 and mu_done is not None:
            done = done + (mu_done - mu)  # grid values, exact in float64
        return self.pass_context(i, k, n_passes)(done, mu, scale)

    def lrp(self, i: int, mean_sup: list[Tensor], y_hat_i: Tensor) -> Tensor:
        r, = self._heads([self.lrp_tf[i]], [[*mean_sup, y_hat_i]])
        return torch.clamp(r, -LRP_BOUND, LRP_BOUND)

    def scale_indexes(self, scale: Tensor, on_grid: bool = False) -> Tensor:
        """Index into the scale table, by the preset's rule.

        "up": the first entry >= ``scale`` (entries are 13 % apart, so a scale is overstated by
        up to 13 %, which costs about 1 % of the y rate). "nearest": the entry nearest in log,
        i.e. the boundaries are the geometric midpoints of neighbouring entries (rate cost about
        0.1 %). The boundaries are computed in float64 on the CPU (IEEE multiply and sqrt are
        correctly rounded) and ``scale`` is exact, so both sides pick the same index everywhere.
        """
        if on_grid and scale.dtype == torch.float64 and scale.device.type == "cpu":
            # ``on_grid``: the caller's scales are grid values (multiples of 1/256; the entropy
            # coder's, from the exact layers), so one table lookup per
            # value, built with this same bucketize over every grid value from 0 to just past the
            # last boundary (anything above maps to the last index, anything below 0 to 0, as
            # bucketize does)
            lut = self._scale_lut()
            return lut[(scale * GRID).clamp_(0.0, float(lut.numel() - 1)).long()]
        return torch.bucketize(scale.contiguous(), self.scale_bounds.to(scale.dtype), right=False)

    def _scale_lut(self) -> Tensor:
        lut = getattr(self, "_lut", None)
        if lut is None:
            bounds = self.scale_bounds.to("cpu", torch.float64)
            grid = torch.arange(int(math.floor(float(bounds.max()) * GRID)) + 2, dtype=torch.float64) / GRID
            lut = self._lut = torch.bucketize(grid, bounds, right=False)
        return lut

    def refresh_scale_bounds(self) -> None:
        """Derive the index boundaries from the scale table (at build and after loading weights)."""
        t = self.scale_table.detach().to("cpu", torch.float64)
        bounds = t[:-1] if self.preset.scale_rule == "up" else torch.sqrt(t[:-1] * t[1:])
        self.register_buffer("scale_bounds", bounds.to(self.scale_table.device).contiguous(), persistent=False)
        self._lut = None

    # ---- training --------------------------------------------------------------------------
    def _train_quantize(self, r: Tensor, scale: Tensor, weight: Tensor | None) -> Tensor:
        """The symbols of residuals ``r`` (straight-through gradients). ``weight`` None: rounding,
        as effort 0 writes them. Otherwise each symbol is the one of the two integers around
        ``r`` with the smaller ``weight * (r - s)**2 + bits(s)``, bits from the discrete Gaussian
        of ``scale``: what effort 1 (``rdo.choose``, with the shipped tables) writes, so that the
        synthesis, LRP and the later passes' contexts train on the symbols the default encoder
        produces (they were trained on rounding, and RDOQ moves symbols toward zero)."""
        if weight is None:
            return ste(r, round_half_up)
        with torch.no_grad():
            lo = torch.floor(r)
            hi = lo + 1.0
            gc = self.gaussian_conditional
            s = scale.clamp(min=SCALE_MIN)

            def cost(v: Tensor) -> Tensor:
                bits = -torch.log2(gc._likelihood(v, s).clamp(min=1e-9))
                return weight * (r - v) ** 2 + bits

            sym = torch.where(cost(hi) < cost(lo), hi, lo)
        return r + (sym - r).detach()

    def forward(self, x: Tensor, q: Tensor) -> dict[str, Tensor]:
        """Training/evaluation pass with noise-based rate estimates (no entropy coding)."""
        gain, inv_gain = self.gains(q)
        weights: list[Tensor | None] = [None] * self.preset.slices
        if self.training and self.train_rdo_strength > 0:
            lam = quality_lambdas(q, self.preset)[:, None, None, None]
            w = distortion_weight(lam, inv_gain.detach(), self.train_rdo_strength).to(inv_gain.dtype)
            weights = list(w.chunk(self.preset.slices, dim=1))
        y = self.g_a(x)
        yg = y.float() * gain
        z = self.h_a(yg).float()
        _, z_lik = self.entropy_bottleneck(z)
        med = self.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)
        z_hat = ste(z - med, round_half_up) + med
        means_h, scales_h = self.hyper(z_hat, exact=False)
        decoded: list[Tensor] = []
        liks = []
        for i, y_i in enumerate(yg.chunk(self.preset.slices, dim=1)):
            mu, scale, mean_sup = self.slice_params(i, means_h, scales_h, decoded)
            if self.preset.context == "checkerboard":
                masks = self.passes(i, y_i.shape[2], y_i.shape[3], y_i.device)
                done = torch.zeros_like(y_i)
                mu_f, scale_f = mu, scale
                for k, mask in enumerate(masks):
                    mu_k, scale_k = self.pass_params(i, k, len(masks), done, mu, scale, mu_f)
                    if k < len(masks) - 1:
                        done = torch.where(mask, self._train_quantize(y_i - mu_k, scale_k, weights[i]), done)
                    mu_f, scale_f = torch.where(mask, mu_k, mu_f), torch.where(mask, scale_k, scale_f)
                mu, scale = mu_f, scale_f
            _, lik = self.gaussian_conditional(y_i, scale, means=mu)
            liks.append(lik)
            y_hat_i = to_grid(self._train_quantize(y_i - mu, scale, weights[i]) + mu)
            y_hat_i = y_hat_i + self.lrp(i, mean_sup, y_hat_i)
            decoded.append(y_hat_i)
        y_hat = torch.cat(decoded, dim=1)
        x_hat = self.g_s(y_hat * inv_gain)
        return {"x_hat": x_hat, "y_lik": torch.cat(liks, dim=1), "z_lik": z_lik}

    def aux_loss(self) -> Tensor:
        return self.entropy_bottleneck.loss()

    def update_tables(self) -> None:
        """Build the CDF tables that ship with the weights (never rebuilt on a decoding machine).
        Fitted y tables (``preset.y_tables``) are kept as they are once they exist."""
        self.entropy_bottleneck.update(force=True)
        if self.preset.y_tables == "gaussian" or self.gaussian_conditional._quantized_cdf.numel() == 0:
            self.gaussian_conditional.update_scale_table(self.scale_table.tolist(), force=True)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(preset: str | Preset) -> ConvNeXtCharm:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        preset = PRESETS[preset]
    return ConvNeXtCharm(preset)


TABLE_BUFFERS = (
    "entropy_bottleneck._quantized_cdf",
    "entropy_bottleneck._offset",
    "entropy_bottleneck._cdf_length",
    "gaussian_conditional._quantized_cdf",
    "gaussian_conditional._offset",
    "gaussian_conditional._cdf_length",
    "gaussian_conditional.scale_table",
)


def load_state(model: ConvNeXtCharm, state: dict[str, Tensor]) -> None:
    """Load weights + CDF tables; the table buffers change shape, so they are resized first."""
    for name in TABLE_BUFFERS:
        if name in state:
            mod_name, buf = name.rsplit(".", 1)
            mod = model.get_submodule(mod_name)
            setattr(mod, buf, torch.empty_like(state[name], device=getattr(mod, buf).device))
    model.load_state_dict(state, strict=True)
    model.refresh_scale_bounds()
