"""Decode time of this checkout against another (the issue-25 start commit), interleaved.

    git archive d651104 | tar -x -C /tmp/base
    python benchmarks/speed_vs_start.py --old /tmp/base [--image kodim01] [--quality 50] [--threads 2] [--runs 5]
    python benchmarks/speed_vs_start.py --old /tmp/base --what search [--target 40]
    python benchmarks/speed_vs_start.py --old /tmp/base --mp 24 --runs 3

The machine is shared, so the two are timed alternately (old, new, old, new, ...), each decode in
a fresh process (load, one warm-up decode, one timed decode) and the ratio of the medians is
reported with the load average. Each decodes the container its own encoder wrote at effort 0 (the
entropy-coded bytes are the same, tests/test_exact_fast.py; the start commit cannot read today's
container version). ``--what search`` times ``encode --target-psnr`` instead (effort 0,
today's encoder, as the issue asks: the start commit has no effort levels) and checks that both
return the same quality and bytes. ``--mp N`` decodes a large photo instead (the Kodak mosaic of
``cpu_decode.py`` at N megapixels, quality 50) and times the first decode of each fresh process
(an on-demand retrieval; no warm-up decode, which at 24 MP would double the old commit's minutes).
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
if sys.argv[3] == "warm":
    codec.decode(data)
t = time.perf_counter(); codec.decode(data); print(json.dumps(time.perf_counter() - t))
"""


ENCODE_CHILD = """
import sys, inspect
from pathlib import Path
from PIL import Image
from archiver.codec import Codec
codec = Codec.load(device="cpu")
kw = {"effort": 0} if "effort" in inspect.signature(codec.encode).parameters else {}
Path(sys.argv[3]).write_bytes(codec.encode(Image.open(sys.argv[1]).convert("RGB"), quality=float(sys.argv[2]), **kw))
"""

SEARCH_CHILD = """
import sys, time, json, hashlib, inspect, torch
from PIL import Image
torch.set_num_threads(int(sys.argv[2]))
from archiver.codec import Codec
codec = Codec.load(device="cpu")
img = Image.open(sys.argv[1]).convert("RGB")
kw = {"effort": 0} if "effort" in inspect.signature(codec.encode_detailed).parameters else {}
codec.encode_detailed(img.crop((0, 0, 128, 128)), quality=50, **kw)
t = time.perf_counter(); r = codec.encode_detailed(img, target_psnr=float(sys.argv[3]), **kw)
print(json.dumps([time.perf_counter() - t, r.quality, len(r.data), r.probes]))
"""


def timed(root: Path, path: str, threads: int, warm: bool = True) -> float:
    # cwd=root as well as PYTHONPATH: ``python -c`` puts the working directory first on sys.path,
    # so a child started from this checkout would import this checkout's archiver, not root's
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", CHILD, path, str(threads), "warm" if warm else "cold"], env=env, cwd=str(root), check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def timed_search(root: Path, image: str, threads: int, target: float) -> list:
    """[seconds, quality, bytes, probes] of one ``encode_detailed(target_psnr=...)`` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", SEARCH_CHILD, image, str(threads), str(target)], env=env,
                         cwd=str(root), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--image", default="kodim01")
    ap.add_argument("--quality", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--what", choices=["decode", "search"], default="decode")
    ap.add_argument("--target", type=float, default=40.0, help="with --what search: the PSNR target")
    ap.add_argument("--mp", type=float, default=None,
                    help="decode the Kodak mosaic at this many megapixels instead of --image (cold, see above)")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from shared_paths import KODAK

    if a.what == "search":
        image = str(KODAK / f"{a.image}.png")
        old_r, new_r, load = [], [], [os.getloadavg()[0]]
        for _ in range(a.runs):
            old_r.append(timed_search(a.old, image, a.threads, a.target))
            new_r.append(timed_search(ROOT, image, a.threads, a.target))
            load.append(os.getloadavg()[0])
            print(old_r[-1], new_r[-1], flush=True)
        old, new = [r[0] for r in old_r], [r[0] for r in new_r]
        print(json.dumps({"what": "search", "image": a.image, "target": a.target, "threads": a.threads,
                          "runs": a.runs, "old": old_r, "new": new_r, "old_median": statistics.median(old),
                          "new_median": statistics.median(new),
                          "ratio": statistics.median(new) / statistics.median(old),
                          "same_quality_and_bytes": old_r[0][1:3] == new_r[0][1:3], "load_1min": load}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        # each checkout decodes its own encoder's container: the entropy-coded bytes are the same
        # (tests/test_exact_fast.py), but the start commit cannot read today's container version
        paths = {}
        source = str(KODAK / f"{a.image}.png")
        if a.mp:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from cpu_decode import kodak_mosaic

            source = str(Path(tmp) / "mosaic.png")
            kodak_mosaic(a.mp).save(source)
        for label, root in (("old", a.old), ("new", ROOT)):
            paths[label] = str(Path(tmp) / f"{label}.cxa")
            subprocess.run([sys.executable, "-c", ENCODE_CHILD, source, str(a.quality),
                            paths[label]], env=dict(os.environ, PYTHONPATH=str(root)), cwd=str(root), check=True,
                           capture_output=True)
        old, new = [], []
        load = [os.getloadavg()[0]]
        for _ in range(a.runs):
            old.append(timed(a.old, paths["old"], a.threads, warm=not a.mp))
            new.append(timed(ROOT, paths["new"], a.threads, warm=not a.mp))
            load.append(os.getloadavg()[0])
    res = {"image": f"Kodak mosaic, {a.mp:g} MP, first decode of a fresh process" if a.mp else a.image,
           "quality": a.quality, "threads": a.threads, "runs": a.runs,
           "old_s": old, "new_s": new, "old_median": statistics.median(old), "new_median": statistics.median(new),
           "ratio": statistics.median(new) / statistics.median(old), "load_1min": load}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
