"""Study: encoder-side latent refinement by gradient (issue 24, section 1), measured with real
bitstreams; not a product feature (see the findings below and docs/BENCHMARKS.md).

    python benchmarks/refine_study.py [--images kodim23 kodim03] [--crop 256] [--iterations 16]
                                      [--stochastic --lr 0.005 --tau 0.2 0.03] [--no-rdoq]

Why: RDOQ (archiver/codec/rdo.py) decides each symbol greedily, by its own rate and distortion.
It cannot see that moving a latent changes the means and scales of everything coded after it
(later slices, the checkerboard's second pass, LRP) and the hyper-latent ``z`` computed from it.
Refining the latents by gradient through the whole model does: Yang, Bamler and Mandt
("Improving Inference for Neural Image Compression", NeurIPS 2020) report 11-16 % fewer bits on
a mean-scale hyperprior with stochastic Gumbel annealing (SGA), ~2,000 iterations, decoder fixed.

What it does, per image and quality: starting from ``g_a(x) * gain``, minimise the training
objective ``lambda * 255^2 * MSE(x, g_s(y_hat)) + bits / pixel`` over the gained latent ``y``,
with ``z = h_a(y)`` following it (straight-through rounding), every symbol ``y - mu`` rounded
softly (SGA's Gumbel samples, or their expectation) at a temperature that falls over the
iterations, rate and distortion from the float (training) path of the same layers. The hard-
rounded objective is checked every few iterations and the best latent kept. The refined latent
is then coded by the unchanged exact coder (with RDOQ unless ``--no-rdoq``) and decoded: the
numbers are real bitstreams, BD-rate against effort 1 over the same qualities.

Findings on the CPU (2026-12-06, compact-v6, kodim23 centre 256x256, 4 qualities): the float
path's rate is the coder's (1.4014 vs 1.4019 bpp at q50), but 16-30 iterations are far too few:
the straight-through estimator diverges (it drives latents to the rounding boundaries), SGA at
lr 0.005 lowers the objective by only 1.2 % in 25 iterations, and the deterministic relaxation
lowers it by 5 % but moves along the RD curve rather than below it: +1.9 % BD-rate against
effort 1 with RDOQ after refinement, +3.0 % without. One iteration of a 256x256 crop costs about
1 s on one core, so the published ~2,000 iterations are a GPU experiment: run this script there.

On a lent GPU it is run by the one prepared GPU call: ``benchmarks/gpu_run.py``'s ``refine``
step imports ``RefineParams``, ``refine`` and ``RefiningCodec`` from here and measures SGA with
400 iterations (fewer if its budget is short) against effort 1 on four 512x512 Kodak crops,
writing ``refine.json`` (docs/MODEL.md, "GPU runbook").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from archiver.bdrate import bd_rate  # noqa: E402
from archiver.codec import Codec  # noqa: E402
from archiver.codec.api import tile_grid  # noqa: E402
from archiver.codec.exact import round_half_up, ste, to_grid  # noqa: E402
from archiver.codec.model import ConvNeXtCharm, anchor_mask, quality_to_lambda  # noqa: E402
from archiver.errors import ContainerError  # noqa: E402
from archiver.images import LoadedImage, from_pil  # noqa: E402
from archiver.metrics import psnr  # noqa: E402
from shared_paths import KODAK  # noqa: E402


@dataclass(frozen=True)
class RefineParams:
    """How hard to refine: ``iterations`` of Adam at ``lr`` (in symbol units) on the relaxed
    objective, whose rounding temperature falls from ``tau_start`` to ``tau_end`` geometrically;
    every ``check_every`` iterations the hard-rounded objective is evaluated and the best latent
    so far is kept (so refinement never returns a latent worse than it started from, by the
    model's own measure). ``stochastic``: SGA's Gumbel samples instead of the relaxed
    rounding's expectation (measured: needs far more iterations than a CPU can give)."""

    iterations: int = 16
    lr: float = 0.01
    tau_start: float = 0.3
    tau_end: float = 0.08
    check_every: int = 2
    stochastic: bool = False
    seed: int = 0


def sga_round(v: Tensor, tau: float, gen: torch.Generator | None) -> Tensor:
    """``tau`` 0: hard rounding with the gradient passed straight through (STE). ``gen`` None:
    the relaxed rounding's expectation instead of a sample (no Gumbel noise). Otherwise stochastic
    Gumbel annealed rounding (Yang et al. 2020): a relaxed sample of floor or ceil, each with a
    logit of ``-atanh(distance) / tau``."""
    if tau <= 0:
        return ste(v, round_half_up)
    f = torch.floor(v).detach()
    r = (v - f).clamp(1e-4, 1 - 1e-4)
    logits = torch.stack([-torch.atanh(r) / tau, -torch.atanh(1 - r) / tau], dim=-1)
    if gen is None:
        return f + F.softmax(logits, dim=-1)[..., 1]
    u = torch.rand(logits.shape, generator=gen, dtype=logits.dtype, device=logits.device).clamp_(1e-9, 1 - 1e-9)
    g = -torch.log(-torch.log(u))
    w = F.softmax((logits + g) / tau, dim=-1)
    return f + w[..., 1]


def _bits_of(likelihood: Tensor, bound: float = 1e-9) -> Tensor:
    return -torch.log2(likelihood.clamp_min(bound)).sum()


def relaxed_loss(model: ConvNeXtCharm, x: Tensor, yg: Tensor, inv_gain: Tensor, lam: float, tau: float,
                 gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, bits, mse) of the gained latent ``yg`` for the tile ``x`` with every symbol rounded
    by ``sga_round``; the float (training) path of the model, differentiable in ``yg``."""
    gc, eb = model.gaussian_conditional, model.entropy_bottleneck
    z = model.h_a(yg)
    med = eb._get_medians().detach().reshape(1, -1, 1, 1)
    z_hat = ste(z - med, round_half_up) + med
    with torch.no_grad():
        _, z_lik = eb(z_hat, training=False)
    means_h, scales_h = model.hyper(z_hat, exact=False)
    decoded: list[Tensor] = []
    bits = _bits_of(z_lik)
    for i, y_i in enumerate(yg.chunk(model.preset.slices, dim=1)):
        mu, scale, mean_sup = model.slice_params(i, means_h, scales_h, decoded)
        v = sga_round(y_i - mu, tau, gen)
        if model.preset.context == "checkerboard":
            anchors = anchor_mask(y_i.shape[2], y_i.shape[3], y_i.device)
            mu2, scale2 = model.spatial(i, v * anchors, mu, scale)
            v2 = sga_round(y_i - mu2, tau, gen)
            v, mu, scale = torch.where(anchors, v, v2), torch.where(anchors, mu, mu2), torch.where(anchors, scale, scale2)
        bits = bits + _bits_of(gc._likelihood(v, scale))
        y_hat_i = to_grid(v + mu)
        decoded.append(y_hat_i + model.lrp(i, mean_sup, y_hat_i))
    x_hat = model.g_s(torch.cat(decoded, dim=1) * inv_gain)
    mse = F.mse_loss(x_hat, x)
    n_px = x.shape[2] * x.shape[3]
    return lam * 255.0**2 * mse + bits / n_px, bits, mse


def refine(model: ConvNeXtCharm, x: Tensor, yg0: Tensor, inv_gain: Tensor, lam: float,
           params: RefineParams = RefineParams()) -> Tensor:
    """The best gained latent (by the hard-rounded objective) met in ``params.iterations`` steps
    from ``yg0`` (float32, detached)."""
    gen = torch.Generator(device=yg0.device).manual_seed(params.seed) if params.stochastic else None
    yg = yg0.detach().float().clone().requires_grad_(True)
    x, inv_gain = x.float(), inv_gain.float()

    def hard(v: Tensor) -> float:
        with torch.no_grad():
            return float(relaxed_loss(model, x, v, inv_gain, lam, 0.0, None)[0])

    best, best_loss = yg.detach().clone(), hard(yg.detach())
    opt = torch.optim.Adam([yg], lr=params.lr)
    for t, tau in enumerate(tau_schedule(params)):
        with torch.enable_grad():
            loss, _, _ = relaxed_loss(model, x, yg, inv_gain, lam, tau, gen)
            (grad,) = torch.autograd.grad(loss, [yg])
        yg.grad = grad
        opt.step()
        if (t + 1) % params.check_every == 0 or t + 1 == params.iterations:
            now = hard(yg.detach())
            if now < best_loss:
                best, best_loss = yg.detach().clone(), now
    return best


def tau_schedule(params: RefineParams) -> list[float]:
    """The temperatures ``refine`` uses, for the record and the tests."""
    n = max(params.iterations - 1, 1)
    return [params.tau_start * (params.tau_end / params.tau_start) ** (t / n) for t in range(params.iterations)]




class RefiningCodec(Codec):
    """The product codec, with each tile's latent refined before it is coded (study only)."""

    params: RefineParams = RefineParams()
    rdoq: bool = True

    def _encode_at(self, img, latents, quality, dry, recon=None, effort=0):  # type: ignore[override]
        gain, inv_gain = self._gains(quality)
        lam = quality_to_lambda(quality, self.model.preset)
        refined = []
        with torch.inference_mode(False):
            for (_, _, rs, cs), y in zip(tile_grid(img.height, img.width, self.tile_size), latents):
                x = self._to_tensor(img.rgb[rs, cs]).clone()
                g, ig = gain.clone(), inv_gain.clone()
                refined.append(refine(self.model, x, y.clone() * g, ig, lam, self.params) / g)
        return super()._encode_at(img, refined, quality, dry, recon=recon, effort=1 if self.rdoq else 0)


def rd_curve(codec: Codec, decoder: Codec, img: LoadedImage, qualities: list[float],
             sync: Callable[[], None] | None = None) -> dict[str, list]:
    """``img`` encoded by ``codec`` at effort 1 at each quality, the real bytes decoded by
    ``decoder`` (the product's): bpp, PSNR and encode seconds of each decoded stream, and the
    decode errors (``"q<quality>: <code>"``) of the others. ``sync`` waits for the device before
    the clock is read (CUDA)."""
    bpp, db, secs, errors = [], [], [], []
    for q in qualities:
        t = time.perf_counter()
        data = codec.encode(img, quality=q, effort=1)
        if sync is not None:
            sync()
        secs.append(time.perf_counter() - t)
        try:
            rgb = decoder.decode(data).rgb
        except ContainerError as e:
            errors.append(f"q{q:g}: {e.code}")
            continue
        bpp.append(len(data) * 8 / (img.width * img.height))
        db.append(psnr(img.rgb, rgb))
    return {"bpp": bpp, "psnr": db, "encode_s": secs, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=["kodim23", "kodim03"])
    ap.add_argument("--crop", type=int, default=256, help="centre crop (0: the whole image)")
    ap.add_argument("--qualities", type=float, nargs="+", default=[35, 50, 65, 80])
    ap.add_argument("--iterations", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--tau", type=float, nargs=2, default=[0.3, 0.08])
    ap.add_argument("--stochastic", action="store_true", help="SGA's Gumbel samples")
    ap.add_argument("--no-rdoq", action="store_true", help="code the refined latent by plain rounding")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = Codec.load(device=a.device)
    ref = RefiningCodec(base.model, base.entry, base.device, base.tile_size)  # the same model
    ref.params = RefineParams(iterations=a.iterations, lr=a.lr, tau_start=a.tau[0], tau_end=a.tau[1],
                              stochastic=a.stochastic)
    ref.rdoq = not a.no_rdoq
    results = {}
    for name in a.images:
        im = Image.open(KODAK / f"{name}.png").convert("RGB")
        if a.crop:
            w, h = im.size
            im = im.crop((w // 2 - a.crop // 2, h // 2 - a.crop // 2, w // 2 + a.crop // 2, h // 2 + a.crop // 2))
        img = from_pil(im)
        curves = {}
        for label, codec in (("effort1", base), ("refined", ref)):
            curves[label] = rd_curve(codec, base, img, a.qualities)
            c = curves[label]
            print(name, label, "  ".join(f"{b:.4f} bpp {p:.3f} dB" for b, p in zip(c["bpp"], c["psnr"])),
                  f"encode {sum(c['encode_s']):.1f} s", *c["errors"], flush=True)
        bd = bd_rate(curves["effort1"]["bpp"], curves["effort1"]["psnr"], curves["refined"]["bpp"],
                     curves["refined"]["psnr"])
        results[name] = {**curves, "bd_rate_vs_effort1_pct": round(bd, 2)}
        print(name, "BD-rate refined vs effort 1:", f"{bd:+.2f} %", flush=True)
    if a.out:
        a.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
