"""What exactness costs in rate: the exact entropy model against its float twin.

    .venv/bin/python benchmarks/exact_cost.py [--steps 1000] [--batch 8] [--seeds 0,1,2] [--record]

The entropy model (``h_s`` and the slice transforms) is the part that had to become exact so that
bitstreams decode on any device: its activations and weights sit on a 2^-8 grid, it uses ReLU
instead of GELU, and the coder quantises scales to a 64-entry table. This script isolates that
cost at **fixed transforms**:

* the analysis ``g_a``, ``h_a`` and the z entropy bottleneck are taken frozen from the shipped
  model, so both variants see exactly the same latents y and side information z;
* two entropy models are trained from the *same* random initialisation on the same latents, for
  the same steps: the exact one (grid, ReLU; the product's training path) and its float twin
  (``exact.float_twin()``: same topology, no grid, GELU);
* both are evaluated on the 24 Kodak images at three qualities, in bits of y per pixel from the
  discrete Gaussian likelihoods. For the exact model also with the scale table the rANS coder
  actually uses (``scale_indexes``), evaluated on its float64 decoding path.

Rate only: distortion is the same for both because y and its quantisation are shared. Latent
residual prediction is left out of both (it changes distortion, not the rate model's inputs much).
What this does not measure: LayerNorm/tanh that a float design might add, and the cost of training
the transforms jointly with a different entropy model. Those need a jointly trained float twin
(GPU work, issue 3).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import random
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="frozen transforms from this model id (default: the shipped one)")
    ap.add_argument("--data", type=Path, action="append", help="training image folders (default: shards 00-01)")
    ap.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    ap.add_argument("--crops", type=int, default=384)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--qualities", default="20,50,80")
    ap.add_argument("--seeds", default="0,1,2", help="one training of both variants per seed")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "exact-cost.json")
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from archiver.codec.api import DEFAULT_MODEL
    from archiver.codec.exact import float_twin, round_half_up, ste, to_grid
    from archiver.codec.model import build_model
    from archiver.codec.presets import SCALE_RULES
    from archiver.codec.registry import load_model
    from archiver.train import find_images

    model_id = a.model or DEFAULT_MODEL
    frozen, entry = load_model(model_id, "cpu")
    preset = entry.preset
    data = a.data or [SHARED / "train" / "shard-00", SHARED / "train" / "shard-01"]

    def side(x: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gained latents, z_hat (around the frozen medians) and z bits, from the frozen transforms."""
        with torch.no_grad():
            gain, _ = frozen.gains(q)
            yg = frozen.g_a(x) * gain
            z = frozen.h_a(yg)
            eb = frozen.entropy_bottleneck
            med = eb._get_medians().reshape(1, -1, 1, 1)
            z_hat = round_half_up(z - med) + med
            _, z_lik = eb(z, training=False)  # the bits the shipped z coder spends
            z_bits = -torch.log2(z_lik.clamp_min(1e-9)).flatten(1).sum(1)
        return yg, z_hat, z_bits

    files = find_images(data)

    def training_latents(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crops at random qualities through the frozen transforms, computed once per seed."""
        rng = random.Random(seed)
        ys, zs = [], []
        while len(ys) < a.crops:
            with Image.open(rng.choice(files)) as im:
                rgb = np.asarray(im.convert("RGB"))
            if min(rgb.shape[:2]) < a.crop:
                continue
            y0 = rng.randrange(rgb.shape[0] - a.crop + 1)
            x0 = rng.randrange(rgb.shape[1] - a.crop + 1)
            x = torch.from_numpy(rgb[y0 : y0 + a.crop, x0 : x0 + a.crop].copy()).permute(2, 0, 1)[None].float() / 255
            yg, z_hat, _ = side(x, torch.tensor([rng.uniform(0, 100)]))
            ys.append(yg)
            zs.append(z_hat)
        return torch.cat(ys), torch.cat(zs)

    def y_bits(student, yg: torch.Tensor, z_hat: torch.Tensor, *, exact: bool, rule: str | None = None) -> torch.Tensor:
        """Bits of y per image under ``student``'s entropy model (no LRP); noisy while training.
        ``rule``: code with the scale table's entry picked by that rule instead of the raw scale."""
        gc = student.gaussian_conditional
        dt_ = torch.float64 if exact else torch.float32
        means_h, scales_h = student.hyper(z_hat.to(dt_), exact=exact)
        decoded: list[torch.Tensor] = []
        bits = torch.zeros(yg.shape[0], dtype=torch.float64)
        for i, y_i in enumerate(yg.to(dt_).chunk(preset.slices, dim=1)):
            mu, scale, _ = student.slice_params(i, means_h, scales_h, decoded)
            if rule is not None:
                scale = tables[rule].scale_table.to(dt_)[tables[rule].scale_indexes(scale)]
            if student.training:
                _, lik = gc(y_i, scale, means=mu)
                y_hat_i = to_grid(ste(y_i - mu, round_half_up) + mu)
            else:
                y_hat_i = round_half_up(y_i - mu) + mu
                lik = gc._likelihood(y_hat_i.float(), scale.float(), means=mu.float())
                lik = gc.likelihood_lower_bound(lik) if gc.use_likelihood_bound else lik
            bits += -torch.log2(lik.double()).flatten(1).sum(1)
            decoded.append(y_hat_i)
        return bits

    def trained(variant: str, seed: int, ys_t: torch.Tensor, zs_t: torch.Tensor):
        torch.manual_seed(seed)  # the same initialisation for both variants
        student = build_model(preset)
        params = [p for m in (student.h_s, student.mean_tf, student.scale_tf) for p in m.parameters()]
        opt = torch.optim.Adam(params, lr=a.lr)
        gen = torch.Generator().manual_seed(seed)
        student.train()
        t = time.time()
        for step in range(1, a.steps + 1):
            for g in opt.param_groups:
                g["lr"] = a.lr * (0.1 if step > 0.8 * a.steps else 1.0)
            idx = torch.randint(len(ys_t), (a.batch,), generator=gen)
            with float_twin() if variant == "float" else nullcontext():
                bpp = y_bits(student, ys_t[idx], zs_t[idx], exact=False).mean() / a.crop**2
            opt.zero_grad(set_to_none=True)
            bpp.float().backward()
            opt.step()
            if step % 250 == 0 or step == a.steps:
                print(f"  seed {seed} {variant:5s} step {step:5d}  train bpp(y) {float(bpp.detach()):.4f}"
                      f"  ({time.time() - t:.0f} s)")
        return student.eval()

    tables = {rule: build_model(dataclasses.replace(preset, scale_rule=rule)) for rule in SCALE_RULES}
    qualities = [float(v) for v in a.qualities.split(",")]
    kodak = []  # (quality, y_g, z_hat, z bits, pixels) for every Kodak image, shared by all seeds
    for q in qualities:
        for f in sorted(a.kodak.glob("kodim*.png")):
            rgb = np.asarray(Image.open(f).convert("RGB"))
            x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
            kodak.append((q, *side(x, torch.tensor([q])), rgb.shape[0] * rgb.shape[1]))

    seeds = [int(v) for v in a.seeds.split(",")]
    runs = []
    for seed in seeds:
        t0 = time.time()
        ys_t, zs_t = training_latents(seed)
        print(f"seed {seed}: {len(ys_t)} training latents in {time.time() - t0:.0f} s")
        students = {v: trained(v, seed, ys_t, zs_t) for v in ("exact", "float")}
        for q in qualities:
            acc = {"float": 0.0, "exact": 0.0, "exact_up": 0.0, "exact_nearest": 0.0, "z": 0.0}
            px = 0
            for q_, yg, z_hat, z_bits, n in kodak:
                if q_ != q:
                    continue
                with torch.no_grad():
                    with float_twin():
                        acc["float"] += float(y_bits(students["float"], yg, z_hat, exact=False).sum())
                    acc["exact"] += float(y_bits(students["exact"], yg, z_hat, exact=True).sum())
                    for rule in SCALE_RULES:
                        acc[f"exact_{rule}"] += float(y_bits(students["exact"], yg, z_hat, exact=True, rule=rule).sum())
                acc["z"] += float(z_bits.sum())
                px += n
            r = {k: v / px for k, v in acc.items()}
            r.update(seed=seed, quality=q)
            r["cost_grid_relu"] = r["exact"] / r["float"] - 1
            for rule in SCALE_RULES:
                r[f"cost_total_{rule}"] = (r[f"exact_{rule}"] + r["z"]) / (r["float"] + r["z"]) - 1
            runs.append(r)
            print(f"seed {seed} q {q:5.1f}: bpp(y) float {r['float']:.4f}  exact {r['exact']:.4f}  "
                  f"table(up) {r['exact_up']:.4f}  table(nearest) {r['exact_nearest']:.4f}  bpp(z) {r['z']:.4f}  "
                  f"-> total cost {100 * r['cost_total_up']:+.2f} % (up) / {100 * r['cost_total_nearest']:+.2f} % (nearest)")

    def stats(key: str, q: float) -> str:
        v = [100 * r[key] for r in runs if r["quality"] == q]
        return f"{sum(v) / len(v):+.2f} % ({min(v):+.1f} … {max(v):+.1f})"

    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"model": model_id, "steps": a.steps, "crops": a.crops, "seeds": seeds,
                                  "runs": runs}, indent=2))
    summary = ("| quality | bpp(y) float twin | bpp(y) exact | grid + ReLU, on y | + scale table, rule up "
               "(compact-v1) | + scale table, rule nearest |\n|---|---|---|---|---|---|\n")
    for q in qualities:
        mean = {k: sum(r[k] for r in runs if r["quality"] == q) / len(seeds) for k in ("float", "exact")}
        summary += (f"| {q:g} | {mean['float']:.4f} | {mean['exact']:.4f} | {stats('cost_grid_relu', q)} "
                    f"| {stats('cost_total_up', q)} | {stats('cost_total_nearest', q)} |\n")
    print(summary)
    if a.record:
        cmd = "python benchmarks/exact_cost.py " + shlex.join(sys.argv[1:])
        text = (f"\n## Rate cost of the exact entropy model, {dt.date.today():%Y-%m-%d}\n\n"
                f"- command: `{cmd.strip()}`\n"
                f"- machine: {platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
                f"frozen transforms of `{model_id}`; for each of {len(seeds)} seeds, both entropy models trained "
                f"{a.steps} steps (batch {a.batch}) from one initialisation on {a.crops} latents of {a.crop} px "
                "training crops; rates on all 24 Kodak images from the discrete likelihoods\n"
                "- columns: mean bpp of y; then the extra rate of the exact model over its float twin, mean over "
                "seeds (min … max): on y alone with continuous scales, and on the total (y + z) as coded, with "
                "each scale-table rule\n\n" + summary)
        path = REPO / "docs" / "BENCHMARKS.md"
        path.write_text(path.read_text().rstrip("\n") + "\n" + text)
        print(f"recorded in {path}")


if __name__ == "__main__":
    main()
