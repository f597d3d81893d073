"""How much of an encode + verification decode is rANS entropy coding, which holds the GIL.

    python benchmarks/entropy_share.py [--device cpu|cuda] [--images 6] [--qualities 30,70] [--record]
                                       [--kodak DIR]   # .gpu/kodak on the device machine

Why: a worker overlaps I/O, the networks and entropy coding with threads (``workers.codec_slots``,
the pipeline's I/O pool). Torch releases the GIL inside its kernels, CompressAI's rANS coder does
not, so its share of the per-image time bounds what threads can overlap in one process; a
process pool for entropy coding is worth writing only where that share is large (on the GPU,
where the networks are fast). Measured with cProfile (its own overhead is small here: a few
hundred Python calls per image); ``tolist`` conversions feeding the coder are counted with it.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import platform
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

def coder_split(prof: cProfile.Profile) -> dict[str, float]:
    """Own time of the entropy coder's calls (``rans``: the compiled coder's functions in
    ``archiver/codec/rans.py``, whose numba kernels count as their callers' own time, or
    CompressAI's ``compressai.ans`` built-ins where it is the coder) and of the ``tolist``
    conversions that feed CompressAI's coder (``tolist``; on a GPU these are the device-to-host
    copies, so they include waiting for the kernels queued before them)."""
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out = {"rans": 0.0, "tolist": 0.0}
    for (file, _line, name), (_cc, _nc, tt, _ct, _callers) in stats.items():
        if "compressai.ans." in name or file.replace("\\", "/").endswith("archiver/codec/rans.py"):
            out["rans"] += tt
        elif "'tolist'" in name:
            out["tolist"] += tt
    return out


def coder_seconds(prof: cProfile.Profile) -> float:
    """Total own time of the entropy coder's calls and of the ``tolist`` conversions that feed it."""
    return sum(coder_split(prof).values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--qualities", default="30,70")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--record", action="store_true", help="append the result to docs/BENCHMARKS.md")
    ap.add_argument("--kodak", type=Path, default=None, help="folder of Kodak PNGs [../shared/data/kodak]")
    a = ap.parse_args()

    import torch
    from PIL import Image

    from archiver.codec import Codec
    from shared_paths import KODAK

    if a.threads:
        torch.set_num_threads(a.threads)
    codec = Codec.load(device=a.device)
    images = [Image.open(p).convert("RGB") for p in sorted((a.kodak or KODAK).glob("*.png"))[: a.images]]
    qualities = [float(q) for q in a.qualities.split(",")]
    codec.decode(codec.encode(images[0], quality=qualities[0]))  # warm-up (allocators, kernels)
    prof = cProfile.Profile()
    n = 0
    t0 = time.perf_counter()
    prof.enable()
    for img in images:
        for q in qualities:
            codec.decode(codec.encode(img, quality=q))
            n += 1
    prof.disable()
    if codec.device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    coder = coder_seconds(prof)
    per_img, per_coder = 1000 * total / n, 1000 * coder / n
    machine = f"{platform.machine()}, {codec.device_name}, torch threads {torch.get_num_threads()}"
    print(f"{n} encode+decode round trips on {machine}: {per_img:.0f} ms each, of which rANS coding "
          f"{per_coder:.0f} ms ({100 * coder / total:.1f} %, GIL held)")
    if a.record:
        lines = [f"\n### Entropy-coding share of an encode + decode, {dt.date.today().isoformat()}\n",
                 f"- command: `python benchmarks/entropy_share.py --device {a.device} --images {a.images} "
                 f"--qualities {a.qualities}{f' --threads {a.threads}' if a.threads else ''} --record`",
                 f"- machine: {machine}; model `{codec.model_id}`; Kodak 768x512, fixed quality (no search)",
                 f"- {per_img:.0f} ms per encode + verification decode, of which CompressAI's rANS coder "
                 f"(GIL held) {per_coder:.0f} ms = **{100 * coder / total:.1f} %**"]
        with (REPO / "docs" / "BENCHMARKS.md").open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
