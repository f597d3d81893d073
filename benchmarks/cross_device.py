"""Cross-device decodability check: encode on one device, decode on another, count mismatches.

    python benchmarks/cross_device.py --images ../shared/data/kodak --qualities 10,50,90 [--limit N]

With a GPU: encodes every image on CUDA and decodes on CPU, then the reverse. Without one (CI,
the 2-core dev machine), it runs the weaker variant CPU(1 thread) -> CPU(2 threads) and says so.
A *latent* mismatch is any image whose decoded symbols differ from the encoder's (the decoder
checks the recorded SHA-256; such an image would be garbage). A *pixel* mismatch counts 8-bit
pixels that differ from the encoding device's own reconstruction (the synthesis transform is
ordinary float code, so 1-LSB differences are possible across devices; they are reported).
Appends a row to docs/BENCHMARKS.md with --record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archiver.codec import Codec  # noqa: E402
from archiver.errors import ContainerError  # noqa: E402
from archiver.images import load_image  # noqa: E402


def run(enc: Codec, dec: Codec, images, qualities, enc_threads=None, dec_threads=None) -> dict:
    latent_bad = pixel_diff_images = pixel_diff_count = total = 0
    max_abs = 0
    for img in images:
        for q in qualities:
            if enc_threads:
                torch.set_num_threads(enc_threads)
            data = enc.encode(img, quality=q)
            ref = enc.decode(data).rgb
            if dec_threads:
                torch.set_num_threads(dec_threads)
            total += 1
            try:
                got = dec.decode(data).rgb
            except ContainerError as e:
                if e.code == "latent_mismatch":
                    latent_bad += 1
                    continue
                raise
            d = np.abs(got.astype(np.int16) - ref.astype(np.int16))
            n = int((d > 0).sum())
            pixel_diff_count += n
            pixel_diff_images += n > 0
            max_abs = max(max_abs, int(d.max()))
    return {"encodes": total, "latent_mismatches": latent_bad, "images_with_pixel_diffs": pixel_diff_images,
            "pixels_differing": pixel_diff_count, "max_abs_pixel_diff": max_abs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/kodak")
    ap.add_argument("--qualities", default="10,50,90")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", default=None, help="model id [the shipped default]")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--record", action="store_true", help="append the result to docs/BENCHMARKS.md")
    a = ap.parse_args()
    if a.model is None:
        from archiver.codec.registry import DEFAULT_MODEL

        a.model = DEFAULT_MODEL
    files = sorted(a.images.glob("*.png"))[: a.limit]
    images = [load_image(f.read_bytes(), max_pixels=10**9) for f in files]
    qs = [float(v) for v in a.qualities.split(",")]
    t0 = time.time()
    results = {}
    cpu = Codec.load(a.model, "cpu")
    if torch.cuda.is_available():
        gpu = Codec.load(a.model, "cuda")
        results["cuda->cpu"] = run(gpu, cpu, images, qs)
        results["cpu->cuda"] = run(cpu, gpu, images, qs)
        machine = f"{torch.cuda.get_device_name()} + {platform.processor() or platform.machine()}"
    else:
        results["cpu(1 thread)->cpu(2 threads)"] = run(cpu, cpu, images, qs, enc_threads=1, dec_threads=2)
        machine = f"CPU only ({platform.machine()}, {torch.get_num_threads()} threads); no GPU available"
    out = {"date": dt.date.today().isoformat(), "machine": machine, "torch": torch.__version__,
           "model": a.model, "images": len(images), "qualities": qs, "seconds": round(time.time() - t0, 1),
           "results": results}
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    if a.record:
        bench = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
        lines = [f"\n### Cross-device check, {out['date']}\n", f"- command: `python benchmarks/cross_device.py "
                 f"--qualities {a.qualities}{' --limit ' + str(a.limit) if a.limit else ''} --record`",
                 f"- machine: {machine}; torch {torch.__version__}; model {a.model}; {len(images)} images x {len(qs)} qualities"]
        for k, v in results.items():
            lines.append(f"- {k}: {v['latent_mismatches']} latent mismatches of {v['encodes']} bitstreams; "
                         f"{v['images_with_pixel_diffs']} images with any 8-bit pixel difference "
                         f"({v['pixels_differing']} pixels, max |diff| {v['max_abs_pixel_diff']})")
        with bench.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
