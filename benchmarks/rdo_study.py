"""RDOQ study: BD-rate of encoder settings against effort 0, from real bitstreams.

Each image is encoded at a few fixed qualities with each setting, the real bytes are decoded with
the unchanged decoder, and the (bpp, PSNR) curves are compared with BD-rate (Bjontegaard,
piecewise cubic, over the overlapping PSNR range). Used to pick the RDOQ strength and the effort
levels (archiver/codec/rdo.py, docs/BENCHMARKS.md "Encoder effort").

    python benchmarks/rdo_study.py --images kodim01 kodim03 kodim15 kodim23 \
        --settings 0 1:1.0 1:1.5 1:2.5 --qualities 20 35 50 65 [--upsample 2]

A setting is ``effort[:strength]`` (strength: the lambda' multiplier, default api.RDO_STRENGTH;
comma-separated: one per slice in coding order, the last repeated, e.g. ``1:2.5,1.5``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archiver.bdrate import bd_rate  # noqa: E402
from archiver.codec import api  # noqa: E402
from archiver.images import from_pil  # noqa: E402
from archiver.metrics import psnr  # noqa: E402

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


def load(name: str, upsample: int, crop: int | None) -> Image.Image:
    path = KODAK if KODAK.exists() else Path("/work/shared/data/kodak")
    im = Image.open(path / f"{name}.png").convert("RGB")
    if upsample > 1:
        im = im.resize((im.width * upsample, im.height * upsample), Image.LANCZOS)
    if crop:
        left, top = (im.width - crop) // 2, (im.height - crop) // 2
        im = im.crop((left, top, left + crop, top + crop))
    return im


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", nargs="+", default=["kodim01", "kodim03", "kodim15", "kodim23"])
    ap.add_argument("--settings", nargs="+", default=["0", "1:1.0"])
    ap.add_argument("--qualities", nargs="+", type=float, default=[20, 35, 50, 65])
    ap.add_argument("--upsample", type=int, default=1)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--weights", default=None, help="an unregistered weights file instead of --model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--avif", default=None, help="comma-separated AVIF qualities (speed 6, 4:4:4, tune=psnr, the "
                    "pilot's `all` preset): also BD-rate of every setting against AVIF on the same images")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.weights:
        codec = api.Codec.from_weights_file(a.weights, "cpu")
    else:
        codec = api.Codec.load(a.model or api.DEFAULT_MODEL, "cpu")
    images = [(n, from_pil(load(n, a.upsample, a.crop))) for n in a.images]
    curves: dict[str, dict[str, list]] = {}
    for setting in a.settings:
        parts = setting.split(":")
        effort = int(parts[0])
        strengths = tuple(float(v) for v in parts[1].split(",")) if len(parts) > 1 else (api.RDO_STRENGTH,)
        codec.rdo_strength = strengths[0] if len(strengths) == 1 else strengths
        per = curves.setdefault(setting, {"bpp": [], "psnr": [], "enc_s": []})
        for name, img in images:
            bpps, ps, ts = [], [], []
            for q in a.qualities:
                t = time.perf_counter()
                data = codec.encode_detailed(img, quality=q, effort=effort).data
                ts.append(time.perf_counter() - t)
                dec = codec.decode(data)
                bpps.append(len(data) * 8 / (img.width * img.height))
                ps.append(psnr(img.rgb, dec.rgb))
            per["bpp"].append(bpps)
            per["psnr"].append(ps)
            per["enc_s"].append(ts)
            print(f"{setting:>12} {name}: " + "  ".join(f"q{q:g} {b:.3f}bpp {p:.2f}dB" for q, b, p in zip(a.qualities, bpps, ps)),
                  flush=True)
    if a.avif:
        from archiver.baselines.codecs import baseline_codecs

        avif = next(b for b in baseline_codecs("all") if b.name == "avif")
        per = curves.setdefault("avif", {"bpp": [], "psnr": [], "enc_s": []})
        for name, img in images:
            bpps, ps, ts = [], [], []
            for q in [int(v) for v in a.avif.split(",")]:
                t = time.perf_counter()
                data = avif.encode(img.rgb, q)
                ts.append(time.perf_counter() - t)
                bpps.append(len(data) * 8 / (img.width * img.height))
                ps.append(psnr(img.rgb, avif.decode(data)))
            per["bpp"].append(bpps)
            per["psnr"].append(ps)
            per["enc_s"].append(ts)
            print(f"{'avif':>12} {name}: " + "  ".join(f"{b:.3f}bpp {p:.2f}dB" for b, p in zip(bpps, ps)), flush=True)
    base = a.settings[0]
    print(f"\nBD-rate against setting {base} (per image, then the mean of per-image BD-rates)")
    summary = {}
    for setting in a.settings[1:]:
        vals = []
        for k, (name, _) in enumerate(images):
            b0, p0 = curves[base]["bpp"][k], curves[base]["psnr"][k]
            b1, p1 = curves[setting]["bpp"][k], curves[setting]["psnr"][k]
            vals.append(bd_rate(b0, p0, b1, p1))
        t_ratio = float(np.mean(curves[setting]["enc_s"]) / np.mean(curves[base]["enc_s"]))
        summary[setting] = {"bd_rate_pct": float(np.mean(vals)), "per_image": dict(zip(a.images, vals)),
                            "encode_time_ratio": t_ratio}
        print(f"{setting:>12}: mean {np.mean(vals):+.2f} %  (" +
              ", ".join(f"{n} {v:+.2f}" for n, v in zip(a.images, vals)) + f")  encode x{t_ratio:.2f}")
    if a.avif:
        print("\nBD-rate against AVIF (per image, then the mean)")
        for setting in a.settings:
            vals = [bd_rate(curves["avif"]["bpp"][k], curves["avif"]["psnr"][k], curves[setting]["bpp"][k],
                            curves[setting]["psnr"][k]) for k in range(len(images))]
            summary.setdefault(setting, {})["vs_avif_pct"] = float(np.mean(vals))
            summary[setting]["vs_avif_per_image"] = dict(zip(a.images, vals))
            print(f"{setting:>12}: mean {np.mean(vals):+.2f} %  (" + ", ".join(f"{n} {v:+.2f}" for n, v in zip(a.images, vals)) + ")")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "curves": curves, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
