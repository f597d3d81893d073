"""Decode time of this checkout against another (the issue-25 start commit), interleaved.

    git archive d651104 | tar -x -C /tmp/base
    python benchmarks/speed_vs_start.py --old /tmp/base [--image kodim01] [--quality 50] [--threads 2] [--runs 5]

The machine is shared, so the two are timed alternately (old, new, old, new, ...), each decode in
a fresh process (load, one warm-up decode, one timed decode) and the ratio of the medians is
reported with the load average. Both decode the same container (the encoders write the same
bytes, tests/test_exact_fast.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time, json, torch
from pathlib import Path
torch.set_num_threads(int(sys.argv[2]))
from archiver.codec import Codec
codec = Codec.load(device="cpu")
data = Path(sys.argv[1]).read_bytes()
codec.decode(data)
t = time.perf_counter(); codec.decode(data); print(json.dumps(time.perf_counter() - t))
"""


def timed(root: Path, path: str, threads: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", CHILD, path, str(threads)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--image", default="kodim01")
    ap.add_argument("--quality", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from PIL import Image

    from archiver.codec import Codec
    from shared_paths import KODAK

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "x.cxa")
        Path(path).write_bytes(Codec.load(device="cpu").encode(Image.open(KODAK / f"{a.image}.png").convert("RGB"),
                                                               quality=a.quality))
        old, new = [], []
        load = [os.getloadavg()[0]]
        for _ in range(a.runs):
            old.append(timed(a.old, path, a.threads))
            new.append(timed(ROOT, path, a.threads))
            load.append(os.getloadavg()[0])
    res = {"image": a.image, "quality": a.quality, "threads": a.threads, "runs": a.runs,
           "old_s": old, "new_s": new, "old_median": statistics.median(old), "new_median": statistics.median(new),
           "ratio": statistics.median(new) / statistics.median(old), "load_1min": load}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
