"""CPU decode latency (768x512) and peak memory of a 24 MP decode, for on-demand retrieval.

    python benchmarks/cpu_decode.py [--threads 2] [--mp 24] [--model ID] [--record]

Latency: median of 3 decodes of kodim01 encoded at qualities 30 and 80, with ``--threads`` torch
threads; with the symbols coded per pixel (y and z) and the time of a decode spent inside
CompressAI's rANS decoder (one more decode under cProfile, ``entropy_share.coder_split``). Memory: a ~24 MP image (Kodak tiled 8x6 = 6144x3072, 18.9 MP, upscaled to the requested
megapixels) is encoded once, then decoded in a fresh subprocess whose peak RSS (ru_maxrss) is
reported, so the figure is the decoder's own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from shared_paths import KODAK  # noqa: E402


def kodak_mosaic(mp: float):
    """A large test photo: the 24 Kodak images as a 6x4 mosaic (768x512 each), resized to ``mp``
    megapixels (bicubic): content that is neither Kodak-detailed nor flat."""
    from PIL import Image

    tiles = [Image.open(p).convert("RGB").resize((768, 512)) for p in sorted(KODAK.glob("*.png"))[:24]]
    mosaic = Image.new("RGB", (768 * 6, 512 * 4))
    for i, t in enumerate(tiles):
        mosaic.paste(t, ((i % 6) * 768, (i // 6) * 512))
    scale = (mp * 1e6 / (mosaic.width * mosaic.height)) ** 0.5
    return mosaic.resize((int(mosaic.width * scale), int(mosaic.height * scale)), Image.BICUBIC)


def _peak_rss_kib() -> int:
    """This process's peak resident set (KiB). Linux's VmHWM belongs to the process image, so it
    starts afresh at exec; ``ru_maxrss`` does not (a child started by a parent that had just
    encoded a 24 MP image reported the parent's 2.5 GiB before decoding anything)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _decode_child(path: str, threads: int, model: str) -> None:
    import torch

    from archiver.codec import Codec

    torch.set_num_threads(threads)
    codec = Codec.load(model, "cpu")
    base = _peak_rss_kib()
    t = time.perf_counter()
    dec = codec.decode(Path(path).read_bytes())
    secs = time.perf_counter() - t
    peak = _peak_rss_kib()
    print(json.dumps({"seconds": secs, "peak_rss_mib": peak / 1024, "rss_before_decode_mib": base / 1024,
                      "size": [dec.meta.width, dec.meta.height]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mp", type=float, default=24.0)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--model", default=None, help="model id [the shipped default]")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    from archiver.codec.registry import DEFAULT_MODEL

    model = a.model or DEFAULT_MODEL
    if a.child:
        _decode_child(a.child, a.threads, model)
        return
    import torch
    from PIL import Image

    from archiver.codec import Codec
    from archiver.images import from_pil

    torch.set_num_threads(a.threads)
    codec = Codec.load(model, "cpu")
    img = Image.open(KODAK / "kodim01.png").convert("RGB")
    import cProfile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from entropy_share import coder_split

    lat = {}
    for q in (30.0, 80.0):
        data = codec.encode(img, quality=q)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            codec.decode(data)
            times.append(time.perf_counter() - t)
        prof = cProfile.Profile()
        prof.enable()
        codec.decode(data)
        prof.disable()
        split = coder_split(prof)
        lat[q] = (statistics.median(times), len(data) * 8 / (768 * 512), split["rans"], split["tolist"])
    p = codec.model.preset
    symbols_per_pixel = p.latent / p.stride**2 + p.z_channels / p.z_stride**2
    big = kodak_mosaic(a.mp)
    t = time.perf_counter()
    data = codec.encode(from_pil(big), quality=50.0)
    enc_s = time.perf_counter() - t
    with tempfile.NamedTemporaryFile(suffix=".cxa", delete=False) as fh:
        fh.write(data)
    child = subprocess.run([sys.executable, __file__, "--child", fh.name, "--threads", str(a.threads), "--model", model],
                           capture_output=True, text=True, check=True)
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    out = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()} CPU, {a.threads} torch threads",
           "symbols_per_pixel": round(symbols_per_pixel, 3),
           "decode_768x512_s": {f"q{q:g}": {"median_s": round(v[0], 3), "bpp": round(v[1], 3), "rans_s": round(v[2], 3),
                                            "tolist_s": round(v[3], 3)} for q, v in lat.items()},
           "big_image": {"size": list(big.size), "megapixels": round(big.width * big.height / 1e6, 1),
                         "encode_s": round(enc_s, 1), "decode_s": round(mem["seconds"], 1),
                         "peak_rss_mib": round(mem["peak_rss_mib"]), "rss_before_decode_mib": round(mem["rss_before_decode_mib"])}}
    print(json.dumps(out, indent=2))
    if a.record:
        b = out["big_image"]
        lines = [f"\n### CPU decode latency and memory, {out['date']}\n",
                 f"- command: `python benchmarks/cpu_decode.py --threads {a.threads} --mp {a.mp:g} --model {model} --record`",
                 f"- machine: dev-cpu ({out['machine']}); model `{model}`"]
        lines.append(f"- symbols coded per pixel: {out['symbols_per_pixel']} (y and z)")
        for q, v in out["decode_768x512_s"].items():
            lines.append(f"- 768x512 decode at {q} ({v['bpp']} bpp): median {v['median_s']} s (target: <= 1 s on 2 threads); "
                         f"of one decode, {v['rans_s']} s inside the rANS decoder and {v['tolist_s']} s converting "
                         "its inputs (tolist)")
        lines.append(f"- {b['megapixels']} MP ({b['size'][0]}x{b['size'][1]}): encode {b['encode_s']} s, decode {b['decode_s']} s, "
                     f"decoder process peak RSS {b['peak_rss_mib']} MiB (of which {b['rss_before_decode_mib']} MiB is the "
                     f"interpreter + torch + model before decoding) (target: <= 4 GB)")
        with (ROOT / "docs" / "BENCHMARKS.md").open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
