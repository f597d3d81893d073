"""How much linear spatial structure each coding pass leaves in its residuals (issue 24 study).

For a checkerboard model, on training crops (never Kodak), this runs the float twin pass by pass
as training does and, for every pass after the first, fits per channel a least-squares
predictor of the pass's residual ``y - mu_k`` from the 5x5 window of the decoded offsets around
it (what the pass's context reads), then reports the bits under the coder's discrete Gaussian
before and after (with the best scale factor from context_fit.GAMMAS). A large gain means the
trained (or fitted) context leaves a linear predictor on the table that a fit could add.

    python benchmarks/residual_structure.py WEIGHTS --slices 0 1 --batches 8 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archiver.codec.registry import file_preset  # noqa: E402
from archiver.codec.model import build_model  # noqa: E402
from archiver.context_fit import GAMMAS, _bits, float_entropy_inputs, interior, neighbours, per_channel  # noqa: E402
from archiver.train import CropSampler, find_images, load_checkpoint, sample_qualities  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


#: a pass's context window: every offset of its 5x5 depthwise kernel
WINDOW = tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3))


@torch.no_grad()
def collect(model, sampler, slices: list[int], batches: int, batch: int) -> dict:
    out: dict = {}
    m = model
    for _ in range(batches):
        x = sampler.batch(batch)
        yg, means_h, scales_h = float_entropy_inputs(m, x, sample_qualities("high", batch, x.device))
        decoded = []
        for i, y_i in enumerate(yg.chunk(m.preset.slices, dim=1)):
            mu, scale, mean_sup = m.slice_params(i, means_h, scales_h, decoded)
            masks = m.passes(i, y_i.shape[2], y_i.shape[3], y_i.device)
            done = torch.zeros_like(y_i)
            mu_f = mu
            for k, mask in enumerate(masks):
                mu_k, scale_k = m.pass_params(i, k, len(masks), done, mu, scale, mu_f)
                if i in slices and k:
                    off = done + (mu_f - mu)  # what the pass's context reads (zero where undecoded)
                    known = torch.stack(masks[:k]).any(0).expand_as(off)
                    off = torch.where(known, off, torch.zeros_like(off))
                    pos = interior(mask, 2).expand_as(off)
                    rec = out.setdefault((i, k), {"r": [], "s": [], "t": []})
                    rec["r"].append(per_channel(y_i - mu_k, pos))
                    rec["s"].append(per_channel(scale_k, pos))
                    rec["t"].append(per_channel(neighbours(off, WINDOW), pos))
                sym = torch.floor(y_i - mu_k + 0.5)
                done = torch.where(mask, sym, done)
                mu_f = torch.where(mask, mu_k, mu_f)
            y_hat = done + mu_f
            decoded.append(y_hat + m.lrp(i, mean_sup, y_hat))
            if i >= max(slices):
                break
    return {key: {n: torch.cat(v, 1).double() for n, v in rec.items()} for key, rec in out.items()}


def model_and_sampler(weights: Path, crop: int, seed: int) -> tuple:
    """The weights file's model (eval mode) and a sampler of training crops cut as training cuts
    them (60 % enlarged up to 4x): the setup of this study and of ``activity_study.py``."""
    model = build_model(file_preset(weights)[0])
    load_checkpoint(model, weights)
    model.eval()
    images = [p for i in range(7) for p in find_images([SHARED / "data" / "train" / f"shard-0{i}"])]
    return model, CropSampler(images, crop, seed=seed, upsample_prob=0.6, upsample_max=4.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--slices", type=int, nargs="+", default=[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--cross", action="store_true",
                    help="also fit each channel from every channel's 5x5 window (fitted on half the positions, "
                         "bits counted on the other half)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, sampler = model_and_sampler(args.weights, args.crop, args.seed)
    data = collect(model, sampler, args.slices, args.batches, args.batch)
    for (i, k), d in sorted(data.items()):
        total_before = total_after = 0.0
        gains = []
        for ch in range(d["r"].shape[0]):
            r, s, t = d["r"][ch], d["s"][ch], d["t"][ch]
            keep = t.abs().sum(0) > 0
            t = t[:, keep]
            coef = torch.linalg.lstsq(t, r[:, None]).solution[:, 0] if t.shape[1] else t.new_zeros(0)
            before = _bits(model, r, s)
            after = min(_bits(model, r - t @ coef, s * g) for g in GAMMAS)
            after = min(after, before)
            total_before += before
            total_after += after
            if after < 0.97 * before:
                gains.append(f"ch{ch} {100 * (after / before - 1):+.1f}%")
        print(f"slice {i} pass {k}: {d['r'].shape[1]} positions/channel, bits {total_before:.0f} -> "
              f"{total_after:.0f} ({100 * (total_after / total_before - 1):+.2f} %); " + ", ".join(gains))
        if args.cross:
            n = d["r"].shape[1]
            fit, test = slice(0, n // 2), slice(n // 2, n)
            feats = d["t"].permute(1, 0, 2).reshape(n, -1)  # every channel's window
            feats = feats[:, feats.abs().sum(0) > 0]
            cb = ca = 0.0
            for ch in range(d["r"].shape[0]):
                r, s = d["r"][ch], d["s"][ch]
                coef = torch.linalg.lstsq(feats[fit], r[fit, None]).solution[:, 0]
                before = _bits(model, r[test], s[test])
                cb += before
                ca += min(before, min(_bits(model, r[test] - feats[test] @ coef, s[test] * g) for g in GAMMAS))
            print(f"    every channel's window ({feats.shape[1]} taps), held-out half: bits {cb:.0f} -> {ca:.0f} "
                  f"({100 * (ca / cb - 1):+.2f} %)")


if __name__ == "__main__":
    main()
