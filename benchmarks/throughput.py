"""Codec throughput of ``recompress`` per core, and the projected time of a 300-photo pilot.

    python benchmarks/throughput.py [--threads 2] [--effort 1] [--floor 40] [--big-mp 12 24]
                                    [--baseline-images 3] [--out benchmarks/results/throughput.json]

Why: a buyer sizing a site PC or a cloud bill asks "how many photos per hour per core", and one
running ``archiver pilot`` asks "how long will it take on my 300 photos". Both are dominated by
the codec's own work, which this measures without storage, broker or database around it
(``benchmarks/worker_throughput.py`` measures that overhead separately):

* **per image, as ``recompress`` does it**: the encode at the smallest quality that meets the
  floor (the predicted search, ``--effort``), then the verification decode of the real bitstream;
* on all 24 Kodak images (0.39 MP each) and on large photos of ``--big-mp`` megapixels
  (``cpu_decode.kodak_mosaic``: the Kodak mosaic, resized);
* **pilot**: the codec's work above plus the classical baselines' searches (``archiver.baselines``,
  presets ``fast`` and ``all``) measured on ``--baseline-images`` Kodak images; a 300-photo
  pilot's time is projected from the per-megapixel rates, for Kodak-sized and 12 MP photos.

Images per second and megapixels per second are reported per core (divided by ``--threads``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def recompress_one(codec, img, floor: float, effort: int) -> dict:
    """What ``recompress`` spends in the codec on one image: search + encode, verification decode."""
    from archiver.images import from_pil

    loaded = from_pil(img)
    t = time.perf_counter()
    res = codec.encode_detailed(loaded, target_psnr=floor, effort=effort)
    enc = time.perf_counter() - t
    t = time.perf_counter()
    codec.decode(res.data)
    dec = time.perf_counter() - t
    return {"mp": img.width * img.height / 1e6, "encode_s": enc, "decode_s": dec, "probes": res.probes,
            "quality": res.quality, "bpp": len(res.data) * 8 / (img.width * img.height)}


def baselines_per_mp(n_images: int, floor: float) -> dict[str, float]:
    """Seconds per megapixel of the pilot's classical searches (all four codecs), per preset."""
    import numpy as np
    from PIL import Image

    from archiver.baselines import PRESETS, baseline_codecs, smallest_at_floor
    from shared_paths import KODAK

    ids = [3, 5, 23, 1, 19, 15][:n_images]
    images = [np.asarray(Image.open(KODAK / f"kodim{i:02d}.png").convert("RGB")) for i in ids]
    mp = sum(a.shape[0] * a.shape[1] for a in images) / 1e6
    out = {}
    for preset in PRESETS:
        t = time.perf_counter()
        for codec in baseline_codecs(preset):
            for rgb in images:
                smallest_at_floor(codec, rgb, floor)
        out[preset] = (time.perf_counter() - t) / mp
        print(f"baselines {preset}: {out[preset]:.1f} s/MP", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--effort", type=int, default=1)
    ap.add_argument("--floor", type=float, default=40.0)
    ap.add_argument("--kodak", type=int, default=24, help="how many Kodak images (the first N)")
    ap.add_argument("--big-mp", type=float, nargs="*", default=[12.0, 24.0])
    ap.add_argument("--baseline-images", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.json")
    a = ap.parse_args()
    import torch
    from PIL import Image

    from archiver.codec import Codec
    from cpu_decode import kodak_mosaic
    from shared_paths import KODAK

    torch.set_num_threads(a.threads)
    codec = Codec.load(device="cpu")
    load = [os.getloadavg()[0]]
    warm = Image.open(KODAK / "kodim24.png").convert("RGB").crop((0, 0, 256, 256))
    recompress_one(codec, warm, a.floor, a.effort)
    kodak = []
    for p in sorted(KODAK.glob("*.png"))[: a.kodak]:
        r = recompress_one(codec, Image.open(p).convert("RGB"), a.floor, a.effort)
        kodak.append(r)
        print(p.stem, json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    load.append(os.getloadavg()[0])
    big = []
    for mp in a.big_mp:
        r = recompress_one(codec, kodak_mosaic(mp), a.floor, a.effort)
        big.append(r)
        print(f"{mp:g} MP", json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    load.append(os.getloadavg()[0])
    base = baselines_per_mp(a.baseline_images, a.floor) if a.baseline_images else {}
    load.append(os.getloadavg()[0])

    def rates(rows: list[dict]) -> dict:
        secs = sum(r["encode_s"] + r["decode_s"] for r in rows)
        mp = sum(r["mp"] for r in rows)
        return {"images": len(rows), "megapixels": round(mp, 2), "seconds": round(secs, 1),
                "images_per_s_per_core": round(len(rows) / secs / a.threads, 4),
                "mp_per_s_per_core": round(mp / secs / a.threads, 4),
                "encode_s_median": round(statistics.median(r["encode_s"] for r in rows), 2),
                "decode_s_median": round(statistics.median(r["decode_s"] for r in rows), 2),
                "probes_median": statistics.median(r["probes"] for r in rows)}

    res = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {a.threads} torch threads",
           "effort": a.effort, "floor_db": a.floor, "load_1min": load, "kodak": rates(kodak),
           "big": [{**rates([r]), "mp": round(r["mp"], 1)} for r in big], "baselines_s_per_mp": base,
           "rows": {"kodak": kodak, "big": big}}
    codec_s_per_mp = {"kodak-size": 1.0 / (res["kodak"]["mp_per_s_per_core"] * a.threads)}
    if big:
        codec_s_per_mp["12 MP"] = sum(r["encode_s"] + r["decode_s"] for r in big) / sum(r["mp"] for r in big)
    pilot = {}
    for size, mp_each in (("kodak-size", 0.393), ("12 MP", 12.0)):
        if size not in codec_s_per_mp:
            continue
        for preset, s_mp in base.items():
            pilot[f"{size}, baselines {preset}"] = round(300 * mp_each * (codec_s_per_mp[size] + s_mp) / 60, 1)
    res["pilot_300_minutes"] = pilot
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
