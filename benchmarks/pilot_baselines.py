"""What the pilot's classical baselines cost and find, per preset (``fast`` vs ``all``).

    .venv/bin/python benchmarks/pilot_baselines.py [--images 3,5,23] [--floor 40] [--record]

For each Kodak image and each classical codec of ``archiver.baselines``, the pilot's search for
the smallest file at the PSNR floor, at both presets: bytes (bits per pixel), the PSNR of the
chosen file, the number of encodes and the seconds of the search. Prints a table; ``--record``
appends it to docs/BENCHMARKS.md with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    import numpy as np
    from PIL import Image

    from archiver.baselines import PRESETS, baseline_codecs, library_versions, smallest_at_floor
    from shared_paths import KODAK

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="3,5,23")
    ap.add_argument("--floor", type=float, default=40.0)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    ids = [int(i) for i in args.images.split(",")]
    images = {i: np.asarray(Image.open(KODAK / f"kodim{i:02d}.png").convert("RGB")) for i in ids}
    rows = []
    for preset in PRESETS:
        for codec in baseline_codecs(preset):
            bpp, secs, encodes, psnrs, reached = [], 0.0, 0, [], 0
            for i, rgb in images.items():
                r = smallest_at_floor(codec, rgb, args.floor)
                secs += r.seconds
                encodes += r.encodes
                if r.reached:
                    reached += 1
                    bpp.append(8.0 * r.bytes / (rgb.shape[0] * rgb.shape[1]))
                    psnrs.append(r.psnr)
            rows.append((preset, codec.label, reached, float(np.mean(bpp)) if bpp else float("nan"),
                         float(np.mean(psnrs)) if psnrs else float("nan"), encodes / len(images), secs / len(images)))
            print(*rows[-1], flush=True)
    lines = ["| preset | codec | reached | mean bpp | mean PSNR (dB) | encodes / image | seconds / image |",
             "|---|---|---|---|---|---|---|"]
    for p, label, reached, bpp, ps, enc, s in rows:
        lines.append(f"| {p} | {label} | {reached}/{len(images)} | {bpp:.3f} | {ps:.2f} | {enc:.1f} | {s:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        v = ", ".join(f"{k} {x}" for k, x in library_versions().items() if x)
        cmd = "python benchmarks/" + Path(__file__).name + " " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        text = (f"\n### Pilot baselines: smallest file at PSNR >= {args.floor:g} dB, fast vs all, "
                f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}\n\n"
                f"Command: `{cmd.strip()}`. Machine: {platform.machine()} CPU, 2 cores shared with other jobs "
                f"(times are under load), no GPU. Kodak images {', '.join(map(str, ids))} (full size, 768x512). "
                f"Libraries: {v}.\n\n{table}\n")
        with (REPO / "docs" / "BENCHMARKS.md").open("a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
