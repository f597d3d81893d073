"""Two weights files, the same images: BD-rate of the candidate against the base, from real bitstreams.

Used for studies that change the entropy model only (a grown context trained with
``archiver train --train-only``): both files are encoded at the same qualities with the public
API, every stream is decoded with the real decoder, and the per-image (bpp, PSNR) curves are
compared with BD-rate. Decode seconds are summed per side, since a context costs decode time.

    python benchmarks/weights_compare.py BASE.safetensors CAND.safetensors \
        [--images kodim01 ...] [--qualities 0 33 67 100] [--upsample 2 --crop 1024] [--effort 1] [--out F.json]

Without --images: all 24 Kodak images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archiver.bdrate import bd_rate  # noqa: E402
from archiver.codec import api  # noqa: E402
from archiver.images import from_pil  # noqa: E402
from archiver.metrics import psnr  # noqa: E402
from rdo_study import load  # noqa: E402


def curves(weights: Path, images: list, qualities: list[float], effort: int = 0) -> dict:
    codec = api.Codec.from_weights_file(weights, "cpu")
    out: dict = {"bpp": [], "psnr": [], "dec_s": 0.0, "enc_s": 0.0}
    for name, img in images:
        bpps, ps = [], []
        for q in qualities:
            t = time.perf_counter()
            data = codec.encode(img, quality=q, effort=effort)
            out["enc_s"] += time.perf_counter() - t
            t = time.perf_counter()
            dec = codec.decode(data)
            out["dec_s"] += time.perf_counter() - t
            bpps.append(len(data) * 8 / (img.width * img.height))
            ps.append(psnr(img.rgb, dec.rgb))
        out["bpp"].append(bpps)
        out["psnr"].append(ps)
        print(f"{weights.name} {name}: " + "  ".join(f"{b:.3f}/{p:.2f}" for b, p in zip(bpps, ps)), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("cand", type=Path)
    ap.add_argument("--images", nargs="+", default=[f"kodim{i:02d}" for i in range(1, 25)])
    ap.add_argument("--qualities", nargs="+", type=float, default=[0.0, 33.0, 67.0, 100.0])
    ap.add_argument("--upsample", type=int, default=1)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--effort", type=int, default=0, help="encoder effort of both sides (1: RDOQ, the default of "
                    "`recompress`; needed where the candidate changes the tables RDOQ prices with)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    images = [(n, from_pil(load(n, a.upsample, a.crop))) for n in a.images]
    base, cand = curves(a.base, images, a.qualities, a.effort), curves(a.cand, images, a.qualities, a.effort)
    per = [bd_rate(base["bpp"][k], base["psnr"][k], cand["bpp"][k], cand["psnr"][k]) for k in range(len(images))]
    summary = {"bd_rate_pct": float(np.mean(per)), "per_image": dict(zip(a.images, per)),
               "decode_time_ratio": cand["dec_s"] / base["dec_s"], "encode_time_ratio": cand["enc_s"] / base["enc_s"]}
    print(f"\n{a.cand.name} vs {a.base.name}: BD-rate mean {summary['bd_rate_pct']:+.2f} % over {len(per)} images "
          f"(min {min(per):+.2f}, max {max(per):+.2f}); decode x{summary['decode_time_ratio']:.3f}, "
          f"encode x{summary['encode_time_ratio']:.3f}")
    if a.out:
        a.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "base": base, "cand": cand,
                                     "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
