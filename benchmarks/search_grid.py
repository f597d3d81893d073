"""Bytes at the floor against the quality search's grid (issue 24, docs/BENCHMARKS.md *Search grid*).

    python benchmarks/search_grid.py [--steps 7 9] [--target 40] [--effort 1] [--threads 1] [--out F.json]

Encodes every Kodak image with ``encode_detailed(target_psnr=...)`` once per grid (2^steps points
on [0, 100]) and reports the total bytes, the mean overshoot of the target (the encoder-side PSNR,
which equals the decoder's), the exact probes and the encode time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from archiver.codec import api  # noqa: E402
from shared_paths import KODAK  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", nargs="+", type=int, default=[7, 9])
    ap.add_argument("--target", type=float, default=40.0)
    ap.add_argument("--effort", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (a quick check)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    codec = api.Codec.load(device="cpu")
    images = sorted(KODAK.glob("kodim*.png"))[: a.limit]
    rows = []
    for steps in a.steps:
        total, seconds, probes, over = 0, 0.0, 0, []
        for path in images:
            img = Image.open(path).convert("RGB")
            t = time.perf_counter()
            r = codec.encode_detailed(img, target_psnr=a.target, effort=a.effort, search_steps=steps)
            seconds += time.perf_counter() - t
            total += len(r.data)
            probes += r.probes
            over.append(r.psnr - a.target)
        row = {"steps": steps, "bytes": total, "mean_overshoot_db": round(sum(over) / len(over), 4),
               "probes": probes, "seconds": round(seconds, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        a.out.write_text(json.dumps({"target": a.target, "effort": a.effort, "model": codec.model_id,
                                     "images": len(images), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
