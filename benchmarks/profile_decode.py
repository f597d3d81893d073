"""Where one decode's time goes, stage by stage (issue 25).

    python benchmarks/profile_decode.py [--image kodim01] [--quality 50] [--threads 2] [--repeat 3]
                                        [--root PATH]

Encodes the image once, then decodes it ``--repeat`` times with the codec's stages wrapped in
timers and reports the median seconds per stage:

* container: ``container.unpack`` (CRC, META, sections);
* z: the z stream's rANS decode and the hyper synthesis h_s (``ConvNeXtCharm.hyper``);
* slice context: each slice's mean/scale transforms from the hyperprior and earlier slices
  (``slice_params``), summed over the 8 slices (and listed per slice);
* checkerboard pass 1 / pass 2: rANS of the anchors / the spatial context (``spatial``) plus the
  rANS of the other positions;
* LRP: the latent residual prediction;
* grid rounding: time inside ``exact.to_grid`` wherever it is called (it is *included* in the
  stages above, which are inclusive; a fused build that no longer calls it shows 0);
* rANS: the rANS decoder's calls (rans.py's or CompressAI's; also included above);
* g_s: the synthesis (``Codec._synth``).

``--root`` imports ``archiver`` from another checkout (e.g. an export of the issue's start
commit), so the same script measures old and new code.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="kodim01")
    ap.add_argument("--quality", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    a = ap.parse_args()
    sys.path.insert(0, str(a.root))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from PIL import Image

    from shared_paths import KODAK

    import archiver.codec.api as api
    import archiver.codec.container as cx
    import archiver.codec.entropy as ent
    import archiver.codec.exact as ex
    import archiver.codec.model as mdl

    torch.set_num_threads(a.threads)
    codec = api.Codec.load(device="cpu")
    data = codec.encode(Image.open(KODAK / f"{a.image}.png").convert("RGB"), quality=a.quality)

    acc: dict[str, float] = defaultdict(float)
    state = {"slice": 0, "pass": 1}

    def timed(name_fn, fn):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                acc[name_fn(*args, **kw) if callable(name_fn) else name_fn] += time.perf_counter() - t
        return wrapper

    m = codec.model
    cls = type(m)
    orig_sp, orig_spatial = cls.slice_params, cls.spatial

    def slice_params(self, i, *rest):
        state["slice"], state["pass"] = i, 1
        t = time.perf_counter()
        out = orig_sp(self, i, *rest)
        dt = time.perf_counter() - t
        acc["slice context"] += dt
        acc[f"  slice {i} context"] += dt
        return out

    def spatial(self, i, *rest):
        state["pass"] = 2
        t = time.perf_counter()
        out = orig_spatial(self, i, *rest)
        acc["checkerboard pass 2 (spatial context)"] += time.perf_counter() - t
        return out

    orig_pp = getattr(cls, "pass_params", None)  # this checkout: every pass after the first

    def pass_params(self, i, k, *rest):
        if k == 0:
            return orig_pp(self, i, k, *rest)
        state["pass"] = 2
        t = time.perf_counter()
        out = orig_pp(self, i, k, *rest)
        acc["checkerboard pass 2 (spatial context)"] += time.perf_counter() - t
        return out

    def rans_name(*_a, **_k):
        return "checkerboard pass 1 (rANS, anchors)" if state["pass"] == 1 else "checkerboard pass 2 (rANS, rest)"

    patches = [
        (cls, "slice_params", slice_params),
        (cls, "pass_params", pass_params) if orig_pp is not None else (cls, "spatial", spatial),
        (cls, "hyper", timed("z: h_s", cls.hyper)),
        (cls, "lrp", timed("LRP", cls.lrp)),
        (ent.TileCoder, "_decode", timed(rans_name, ent.TileCoder._decode)),
        (api.Codec, "_synth", timed("g_s", api.Codec._synth)),
        (cx, "unpack", timed("container", cx.unpack)),
        (api.cx, "unpack", timed("container", cx.unpack)),
    ]
    for mod in (ex, mdl):
        if hasattr(mod, "to_grid"):
            patches.append((mod, "to_grid", timed("grid rounding (inside the above)", mod.to_grid)))
    rd = ent.RansDecoder

    class TimedRans:
        def __init__(self):
            self._d = rd()

        def decode_with_indexes(self, *args):
            t = time.perf_counter()
            out = self._d.decode_with_indexes(*args)
            acc["z: rANS (twice, forgery check)"] += time.perf_counter() - t
            return out

        def set_stream(self, s):
            return self._d.set_stream(s)

        def decode_stream(self, *args):
            t = time.perf_counter()
            out = self._d.decode_stream(*args)
            acc["rANS y (inside the passes)"] += time.perf_counter() - t
            return out

    patches.append((ent, "RansDecoder", TimedRans))
    if hasattr(ent.TileCoder, "_decode_z"):  # this checkout's coder (rans.py or CompressAI's)
        patches.append((ent.TileCoder, "_decode_z", timed("z: rANS (twice, forgery check)", ent.TileCoder._decode_z)))
    saved = [(o, n, getattr(o, n)) for o, n, _ in patches]
    for o, n, v in patches:
        setattr(o, n, v)
    runs: list[dict[str, float]] = []
    totals = []
    try:
        for _ in range(a.repeat):
            acc.clear()
            t = time.perf_counter()
            codec.decode(data)
            totals.append(time.perf_counter() - t)
            runs.append(dict(acc))
    finally:
        for o, n, v in reversed(saved):
            setattr(o, n, v)
    total = statistics.median(totals)
    print(f"decode of {a.image} at q{a.quality:g}, {a.threads} threads, median of {a.repeat}: {total:.3f} s")
    print("| stage | seconds | share |")
    print("|---|---:|---:|")
    keys = sorted({k for r in runs for k in r}, key=lambda k: (k.startswith("  "), k))
    order = ["container", "z: rANS (twice, forgery check)", "z: h_s", "slice context"]
    order += sorted(k for k in keys if k.startswith("  "))
    order += ["checkerboard pass 1 (rANS, anchors)", "checkerboard pass 2 (spatial context)",
              "checkerboard pass 2 (rANS, rest)", "LRP", "g_s", "grid rounding (inside the above)"]
    for k in order:
        v = statistics.median(r.get(k, 0.0) for r in runs)
        print(f"| {k} | {v:.4f} | {100 * v / total:.1f} % |")
    print(f"| total | {total:.4f} | 100 % |")


if __name__ == "__main__":
    main()
