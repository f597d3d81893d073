"""What container version 4's binary META saves, on real streams, and what that is worth in BD-rate.

Encodes every image of a folder at each quality (through ``Codec.encode``, as ``archiver eval``
does: the original's bytes go in, so META carries their size and SHA-256) and reads back each
container's META. Version 4 differs from version 3 only in how META is written (the tiles, their
bound checks and every other section have the same layout and size), so the version-3 size of the
same stream is ``len(stream) - len(META as binary) + len(META as JSON)``: exact, not an estimate.

With ``--curve`` (an ``archiver eval`` result measured while the encoder wrote version 3) and
``--anchor`` (e.g. AVIF's measured curve), it also prints the curve's BD-rate against the anchor as
measured and with each quality's rate lowered by the mean saving measured here, i.e. the same
streams in version-4 containers.

    .venv/bin/python benchmarks/container_header.py ../shared/data/kodak --effort 0 \
        --curve benchmarks/results/kodak-compact-v14-effort1.json \
        --anchor ../shared/anchors/kodak/measured/avif_444_psnr.json --out benchmarks/results/container-header.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archiver.bdrate import bd_rate, read_curve  # noqa: E402
from archiver.codec import Codec  # noqa: E402
from archiver.codec import container as cx  # noqa: E402
from archiver.codec.api import apply_torch_threads  # noqa: E402
from archiver.codec.default import DEFAULT_MODEL  # noqa: E402
from archiver.images import load_image  # noqa: E402

EVAL_QUALITIES = (0.0, 14.0, 28.0, 42.0, 56.0, 70.0, 85.0, 100.0)  # archiver eval's default grid


def measure(folder: Path, model: str, qualities: list[float], effort: int) -> list[dict]:
    codec = Codec.load(model, "cpu")
    rows = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        img = load_image(path.read_bytes(), max_pixels=400_000_000)
        for q in qualities:
            data = codec.encode(img, quality=q, effort=effort)
            meta = cx.unpack(data).meta
            assert cx.read_version(data) == 4, "this measures version-4 streams"
            v4_meta, v3_meta = len(meta.to_bytes(4)), len(meta.to_json())
            rows.append({"image": path.stem, "quality": q, "pixels": meta.width * meta.height,
                         "v4_bytes": len(data), "v3_bytes": len(data) - v4_meta + v3_meta,
                         "v4_meta": v4_meta, "v3_meta": v3_meta})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--qualities", type=float, nargs="+", default=list(EVAL_QUALITIES))
    ap.add_argument("--effort", type=int, default=0, help="META does not depend on it; 0 is fastest")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--curve", type=Path, help="an archiver eval result measured with version-3 containers")
    ap.add_argument("--anchor", type=Path, help="the curve to take BD-rate against (e.g. AVIF)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    apply_torch_threads(a.threads)
    t0 = time.time()
    rows = measure(a.folder, a.model, a.qualities, a.effort)
    per_q = {}
    for q in a.qualities:
        sel = [r for r in rows if r["quality"] == q]
        per_q[q] = {
            "saved_bytes_mean": statistics.fmean(r["v3_bytes"] - r["v4_bytes"] for r in sel),
            "saved_pct_mean": statistics.fmean(100 * (1 - r["v4_bytes"] / r["v3_bytes"]) for r in sel),
            "saved_bpp_mean": statistics.fmean(8 * (r["v3_bytes"] - r["v4_bytes"]) / r["pixels"] for r in sel),
            "v4_bytes_mean": statistics.fmean(r["v4_bytes"] for r in sel),
        }
        print(f"q{q:5.1f}: {per_q[q]['v4_bytes_mean']:9.0f} B per image, META saves "
              f"{per_q[q]['saved_bytes_mean']:.1f} B = {per_q[q]['saved_pct_mean']:.2f} %")
    out = {"date": time.strftime("%Y-%m-%d"), "model": a.model, "effort": a.effort, "folder": str(a.folder),
           "meta_bytes": {"v4": sorted({r["v4_meta"] for r in rows}), "v3": sorted({r["v3_meta"] for r in rows})},
           "per_quality": per_q, "rows": rows, "seconds": round(time.time() - t0, 1)}
    if a.curve and a.anchor:
        measured = json.loads(a.curve.read_text())
        curve, cq = measured["results"], measured["settings"]["qualities"]
        if [float(q) for q in cq] != [float(q) for q in a.qualities]:
            raise SystemExit(f"--curve was measured at {cq}, not at --qualities {a.qualities}")
        ar, ad, _ = read_curve(a.anchor)
        before = bd_rate(ar, ad, curve["bpp"], curve["psnr-rgb"])
        shifted = [b - per_q[q]["saved_bpp_mean"] for b, q in zip(curve["bpp"], a.qualities)]
        after = bd_rate(ar, ad, shifted, curve["psnr-rgb"])
        out["bd_rate_vs_anchor"] = {"curve": str(a.curve), "anchor": str(a.anchor),
                                    "as_measured_v3_pct": before, "in_v4_containers_pct": after}
        print(f"BD-rate vs {a.anchor.name}: {before:+.2f} % as measured (version 3) -> {after:+.2f} % in version 4")
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
