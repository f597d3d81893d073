"""What a forged container costs the decoder, and what an honest one costs (issue 16, part 2).

    python benchmarks/forged_decode.py [--threads 2] [--sides 1024 2048] [--huge] [--record]
    python benchmarks/forged_decode.py --copies 2 4 16 110 --only-copies [--record]

Each forged container (``tests/forged.py``) is decoded in a fresh process; the figures are the
decode call's seconds and the growth of the process's peak RSS. Cases: one declared tile of
side S with 8-byte streams (the issue's 503-byte container), for S in ``--sides`` in container
versions 1 and 2; a real 1024² tile's z stream followed by garbage y bytes; with ``--huge`` a
declared 4096² tile (the old decoder would need more than 10 GB: do not pass it to an old
checkout on a small machine). Honest: kodim01 (768x512) at quality 50, median of 3 decodes.
``--copies N ...`` (issue 27): the one tile of a genuine 1024² container copied to every position
of a grid of N tiles (META rewritten to say so, CRCs recomputed); ``--only-copies`` runs just those.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import forged  # noqa: E402
from shared_paths import KODAK  # noqa: E402


def _first_tile_z(data: bytes) -> tuple[bytes, int]:
    """(z stream, y stream length) of the first tile of an honest container."""
    from archiver.codec import container as cx

    t = cx.unpack(data).tiles[0]
    return t.z, len(t.y[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sides", type=int, nargs="*", default=[1024, 2048])
    ap.add_argument("--huge", action="store_true", help="also a declared 4096² tile")
    ap.add_argument("--versions", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--copies", type=int, nargs="*", default=[])
    ap.add_argument("--only-copies", action="store_true", help="only the copied-tile cases (a short run)")
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    import torch
    from PIL import Image

    from archiver.codec import Codec
    from archiver.codec import container as cx
    from archiver.codec.registry import DEFAULT_MODEL

    torch.set_num_threads(a.threads)
    codec = Codec.load(DEFAULT_MODEL, "cpu")
    mid, sha = codec.model_id, codec.weights_sha256
    versions = [v for v in a.versions if v <= cx.VERSION]
    tmp = Path(tempfile.mkdtemp())
    rows = []

    def run(name: str, data: bytes) -> None:
        r = forged.measure(data, mid, tmp, threads=a.threads)
        r = {"case": name, "bytes": len(data), **r}
        rows.append(r)
        print(json.dumps(r), flush=True)

    if not a.only_copies:
        for v in versions:
            for side in a.sides + ([4096] if a.huge else []):
                run(f"v{v} tiny streams, one {side}² tile", forged.tiny_streams(mid, sha, side, version=v))
    img = Image.open(KODAK / "kodim01.png").convert("RGB")
    honest_big = codec.encode(img.resize((1024, 1024), Image.BICUBIC), quality=50)
    for n in a.copies:
        grid_rows = next(r for r in range(math.isqrt(n), 0, -1) if n % r == 0)
        run(f"v{cx.read_version(honest_big)}: {n} copies of one genuine 1024² tile ({grid_rows}x{n // grid_rows} grid)",
            forged.copied_tile(honest_big, grid_rows, n // grid_rows))
    if a.only_copies:
        _record(a, mid, rows_=rows, honest=None)
        return
    z, y_len = _first_tile_z(honest_big)
    for v in versions:
        run(f"v{v} real z + {y_len} garbage y bytes, one 1024² tile",
            forged.garbage_after_header(mid, sha, 1024, z, y_len, version=v))
    data = codec.encode(img, quality=50)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        codec.decode(data)
        times.append(time.perf_counter() - t)
    honest = {"kodim01_q50_decode_median_s": round(statistics.median(times), 3),
              "honest_1024sq_decode_s": None, "container_version": struct.unpack(">H", data[8:10])[0]}
    r = forged.measure(honest_big, mid, tmp, threads=a.threads)
    honest["honest_1024sq_decode_s"] = round(r["seconds"], 2)
    honest["honest_1024sq_peak_growth_mib"] = round(r["peak_growth_mib"])
    print(json.dumps(honest), flush=True)
    _record(a, mid, rows_=rows, honest=honest)


def _record(a: argparse.Namespace, mid: str, rows_: list[dict], honest: dict | None) -> None:
    """Append the table to docs/BENCHMARKS.md (with ``--record``)."""
    if not a.record:
        return
    date = dt.date.today().isoformat()
    cmd = (f"--copies {' '.join(map(str, a.copies))} --only-copies" if a.only_copies else
           f"--sides {' '.join(map(str, a.sides))}{' --huge' if a.huge else ''}"
           + (f" --copies {' '.join(map(str, a.copies))}" if a.copies else ""))
    lines = [f"\n### Forged containers: decode cost, {date}\n",
             f"- command: `python benchmarks/forged_decode.py --threads {a.threads} {cmd} --record`",
             f"- machine: dev-cpu ({platform.machine()} CPU, {a.threads} torch threads, shared); model `{mid}`",
             "", "| forged container | bytes | decode s | CPU s | peak RSS growth MiB | error code |",
             "|---|---|---|---|---|---|"]
    for r in rows_:
        s = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        c = "-" if r.get("cpu_seconds") is None else f"{r['cpu_seconds']:.2f}"
        m = "-" if r["peak_growth_mib"] is None else f"{r['peak_growth_mib']:.0f}"
        lines.append(f"| {r['case']} | {r['bytes']} | {s} | {c} | {m} | `{r['code']}` |")
    if honest is not None:
        lines += ["", f"- honest kodim01 (768x512, q50): decode median {honest['kodim01_q50_decode_median_s']} s; "
                  f"honest 1024x1024 (one tile): {honest['honest_1024sq_decode_s']} s, "
                  f"+{honest['honest_1024sq_peak_growth_mib']} MiB peak RSS"]
    with (ROOT / "docs" / "BENCHMARKS.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
