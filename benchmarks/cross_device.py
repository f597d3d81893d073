"""Cross-device decodability check: encode on one device, decode on another, count mismatches.

    python benchmarks/cross_device.py --images ../shared/data/kodak --qualities 10,50,90 [--limit N]

With a GPU: encodes every image on CUDA and decodes on CPU, then the reverse. Without one (CI,
the 2-core dev machine), it runs the weaker variant CPU(1 thread) -> CPU(2 threads) and says so.
A *latent* mismatch is any image whose decoded symbols differ from the encoder's (the decoder
checks the recorded SHA-256; such an image would be garbage). A *pixel* mismatch counts 8-bit
pixels that differ from the encoding device's own reconstruction (the synthesis transform is
ordinary float code, so 1-LSB differences are possible across devices; they are reported).
Appends a row to docs/BENCHMARKS.md with --record. ``--max-seconds`` bounds the run (each
direction gets an equal share; ``complete`` is then false and ``encodes`` says how many were
checked); ``check()`` is the same in-process (benchmarks/gpu_run.py).
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


def run(enc: Codec, dec: Codec, images, qualities, enc_threads=None, dec_threads=None,
        deadline: float | None = None) -> dict:
    """Encode every (image, quality) with ``enc``, decode with ``dec``; stops early (``complete``
    false) where another (image, quality), at the mean time of those before, would end after
    ``deadline`` (a ``time.monotonic()`` value)."""
    latent_bad = pixel_diff_images = pixel_diff_count = total = 0
    max_abs = 0
    complete = True
    t0 = time.monotonic()
    for img in images:
        for q in qualities:
            if deadline is not None and time.monotonic() + (time.monotonic() - t0) / max(total, 1) > deadline:
                complete = False
                break
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
        if not complete:
            break
    return {"encodes": total, "latent_mismatches": latent_bad, "images_with_pixel_diffs": pixel_diff_images,
            "pixels_differing": pixel_diff_count, "max_abs_pixel_diff": max_abs, "complete": complete}


def check(model: str, images: list, qualities: list[float], max_seconds: float | None = None,
          use_cuda: bool | None = None) -> dict:
    """Both directions (CUDA -> CPU and CPU -> CUDA; CPU(1 thread) -> CPU(2 threads) without a GPU,
    or with ``use_cuda=False``) on the decoded ``images``; the result as written by ``--json``."""
    t0 = time.time()
    end = None if max_seconds is None else time.monotonic() + max_seconds
    results = {}
    cpu = Codec.load(model, "cpu")
    if torch.cuda.is_available() if use_cuda is None else use_cuda:
        gpu = Codec.load(model, "cuda")
        # the first direction may use half of what is left, the second whatever remains after it
        half = None if end is None else time.monotonic() + (end - time.monotonic()) / 2
        results["cuda->cpu"] = run(gpu, cpu, images, qualities, deadline=half)
        results["cpu->cuda"] = run(cpu, gpu, images, qualities, deadline=end)
        machine = f"{torch.cuda.get_device_name()} + {platform.processor() or platform.machine()}"
    else:
        threads = torch.get_num_threads()
        try:
            results["cpu(1 thread)->cpu(2 threads)"] = run(cpu, cpu, images, qualities, enc_threads=1, dec_threads=2,
                                                           deadline=end)
        finally:
            torch.set_num_threads(threads)
        machine = f"CPU only ({platform.machine()}, {threads} threads); no GPU available"
    return {"date": dt.date.today().isoformat(), "machine": machine, "torch": torch.__version__,
            "model": model, "images": len(images), "qualities": list(qualities),
            "seconds": round(time.time() - t0, 1), "max_seconds": max_seconds,
            "complete": all(r["complete"] for r in results.values()), "results": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/kodak")
    ap.add_argument("--qualities", default="10,50,90")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", default=None, help="model id [the shipped default]")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--record", action="store_true", help="append the result to docs/BENCHMARKS.md")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop checking after this long (both directions)")
    a = ap.parse_args()
    if a.model is None:
        from archiver.codec.registry import DEFAULT_MODEL

        a.model = DEFAULT_MODEL
    files = sorted(a.images.glob("*.png"))[: a.limit]
    images = [load_image(f.read_bytes(), max_pixels=10**9) for f in files]
    qs = [float(v) for v in a.qualities.split(",")]
    out = check(a.model, images, qs, a.max_seconds)
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    if a.record:
        command = (f"python benchmarks/cross_device.py --qualities {a.qualities}"
                   f"{' --limit ' + str(a.limit) if a.limit else ''} --record")
        with (Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md").open("a") as fh:
            fh.write("\n".join(record_lines(out, command)) + "\n")


def record_lines(out: dict, command: str) -> list[str]:
    """The docs/BENCHMARKS.md section for a result of ``check``."""
    lines = [f"\n### Cross-device check, {out['date']}\n", f"- command: `{command}`",
             f"- machine: {out['machine']}; torch {out['torch']}; model {out['model']}; {out['images']} images x "
             f"{len(out['qualities'])} qualities"]
    for k, v in out["results"].items():
        lines.append(f"- {k}: {v['latent_mismatches']} latent mismatches of {v['encodes']} bitstreams"
                     f"{'' if v.get('complete', True) else ' (stopped by its time budget)'}; "
                     f"{v['images_with_pixel_diffs']} images with any 8-bit pixel difference "
                     f"({v['pixels_differing']} pixels, max |diff| {v['max_abs_pixel_diff']})")
    return lines


if __name__ == "__main__":
    main()
