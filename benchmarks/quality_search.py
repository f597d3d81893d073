"""How many probes the quality search costs, with and without the pipeline's hints.

    .venv/bin/python benchmarks/quality_search.py [--size 256] [--targets 22,24] [--record]

Every probe of ``smallest_quality`` is an entropy-model pass plus a synthesis (the largest cost of
an archive encode), so the count is what matters. Two sequences of images, each searched at fixed
PSNR targets in order, the way a worker meets a bucket:

* **diverse**: a 256 px crop of each of the 24 Kodak images (very different qualities needed);
* **alike**: 24 crops of one Kodak image at nearby offsets, standing in for a bucket of
  inspection shots of the same scene.

For each, the total probes of plain bisection (no hint) and of the hinted search
(``QualityHints``: median/spread of recent answers), and on how many images the hinted search
returned exactly bisection's quality (it should on all: every probe is a grid point).
Writes a section to docs/BENCHMARKS.md with ``--record``.
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
KODAK = REPO.parent / "shared" / "data" / "kodak"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--targets", default="22,24")
    ap.add_argument("--images", type=Path, default=KODAK)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()

    import torch
    from PIL import Image

    from archiver.codec.api import Codec, QualityHints, TargetNotReached, smallest_quality
    from archiver.images import from_pil
    from archiver.metrics import psnr

    codec = Codec.load(device="cpu")
    s = a.size
    files = sorted(a.images.glob("kodim*.png"))
    diverse = [Image.open(f).convert("RGB").crop((128, 128, 128 + s, 128 + s)) for f in files]
    base = Image.open(a.images / "kodim19.png").convert("RGB")  # 512 x 768 portrait
    alike = [base.crop((8 * (i % 6), 40 + 12 * (i // 6), 8 * (i % 6) + s, 40 + 12 * (i // 6) + s)) for i in range(24)]

    def run(images: list[Image.Image], target: float) -> tuple[int, int, int, int]:
        hints = QualityHints()
        plain = hinted = met = reachable = 0
        for im in images:
            img = from_pil(im)
            with torch.inference_mode():
                latents = [codec.model.g_a(codec._to_tensor(img.rgb))]
            cache: dict[float, float] = {}

            def probe(q: float, counter: list[int]) -> float:
                counter[0] += 1
                if q not in cache:
                    _, rec, _ = codec._encode_at(img, latents, q, dry=True)
                    cache[q] = psnr(img.rgb, rec)
                return cache[q]

            n_plain, n_hint = [0], [0]
            try:
                q_plain = smallest_quality(lambda q: probe(q, n_plain), target)
            except TargetNotReached:
                q_plain = None
            hint, spread = hints.get("m", target)
            try:
                q_hint = smallest_quality(lambda q: probe(q, n_hint), target, hint=hint, spread=spread)
                hints.add("m", target, q_hint)
            except TargetNotReached:
                q_hint = None
            plain += n_plain[0]
            hinted += n_hint[0]
            if q_plain is not None:
                reachable += 1
                met += q_hint == q_plain and cache[q_hint] >= target
        return plain, hinted, met, reachable

    rows = []
    for name, images in (("diverse (24 Kodak crops)", diverse), ("alike (24 crops of kodim19)", alike)):
        for t in (float(x) for x in a.targets.split(",")):
            plain, hinted, met, reachable = run(images, t)
            rows.append((name, t, plain, hinted, met, reachable))
            print(f"{name:30s} target {t:5.1f} dB: bisection {plain:4d} probes, hinted {hinted:4d} "
                  f"({hinted / plain:.0%}); hinted answer = bisection's on {met}/{reachable} reachable images")
    if a.record:
        cmd = "python benchmarks/quality_search.py " + shlex.join(sys.argv[1:])
        text = (f"\n### Quality search probes, {dt.date.today():%Y-%m-%d}\n\n- command: `{cmd.strip()}`\n"
                f"- machine: {platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; "
                f"model {codec.model_id}; {a.size} px crops\n\n"
                "| images | target dB | bisection probes | hinted probes | hinted / bisection | same answer |\n"
                "|---|---|---|---|---|---|\n")
        for name, t, plain, hinted, met, reachable in rows:
            text += f"| {name} | {t:g} | {plain} | {hinted} | {hinted / plain:.0%} | {met}/{reachable} |\n"
        path = REPO / "docs" / "BENCHMARKS.md"
        path.write_text(path.read_text().rstrip("\n") + "\n" + text)
        print(f"recorded in {path}")


if __name__ == "__main__":
    main()
