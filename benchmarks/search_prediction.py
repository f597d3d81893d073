"""How well the coefficient-domain prediction tracks the real PSNR, and what the predicted
target-PSNR search costs against bisection (issue 25).

    python benchmarks/search_prediction.py [--images kodim01,kodim05] [--target 40] [--threads 2]

For each image: the answer and exact probes of ``search="bisect"`` and ``search="predicted"``
(they must return the same bytes), and at every quality bisection probed, the real PSNR minus
the prediction (its spread over the probes is what the one-offset correction cannot absorb).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="kodim01")
    ap.add_argument("--target", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch
    from PIL import Image

    from archiver.codec import Codec
    from archiver.images import delivered, from_pil
    from archiver.metrics import psnr
    from shared_paths import KODAK

    torch.set_num_threads(a.threads)
    codec = Codec.load(device="cpu")
    print("| image | bisect: quality, probes, s | predicted: quality, probes, s | same bytes | real - predicted dB (min..max over bisection's probes) |")
    print("|---|---|---|---|---|")
    for name in a.images.split(","):
        img = from_pil(Image.open(KODAK / f"{name}.png").convert("RGB"))
        out = {}
        for search in ("bisect", "predicted"):
            t = time.perf_counter()
            r = codec.encode_detailed(img, target_psnr=a.target, search=search)
            out[search] = (r, time.perf_counter() - t)
        rb, tb = out["bisect"]
        rp, tp = out["predicted"]
        with torch.inference_mode():
            lat = [codec.model.g_a(codec._to_tensor(img.rgb[rs, cs]))
                   for _, _, rs, cs in __import__("archiver.codec.api", fromlist=["tile_grid"]).tile_grid(
                       img.height, img.width, codec.tile_size)]
            diffs = []
            for q in (rb.quality - 100 / 128, rb.quality, rb.quality + 100 / 128, 25.0, 75.0):
                _, recon, _ = codec._encode_at(img, lat, q, dry=True)
                diffs.append(psnr(img.rgb, delivered(recon, img.mode)) - codec._predicted_psnr(img, lat, q))
        print(f"| {name} | {rb.quality:.3f}, {rb.probes}, {tb:.1f} | {rp.quality:.3f}, {rp.probes}, {tp:.1f} | "
              f"{rb.data == rp.data} | {min(diffs):+.2f} .. {max(diffs):+.2f} (median {statistics.median(diffs):+.2f}) |")


if __name__ == "__main__":
    main()
