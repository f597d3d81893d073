"""The tiers on JPEG and PNG originals: lossless JPEG->JPEG XL, ConvNeXt-ChARM at the floor, `best`,
and whether a lossless option for PNG originals is worth a place in `--policy lossless`.

    python benchmarks/jpeg_lossless.py [--photos 1,3,5] [--min-psnr 40] [--model compact-v6] [--threads 1] [--record]

For each Kodak photo (full 768x512) saved by Pillow as a 4:2:0 JPEG at q75 and q90:

* lossless: ``archiver.lossless.transcode`` (libjxl JPEG reconstruction, verified by rebuilding the
  JPEG and comparing sha256), its size as a fraction of the JPEG, encode and reconstruct time;
* neural: the real per-object step (``process_object``, policy lossy, dry run) at ``--min-psnr``
  against the decoded JPEG's pixels: verified bytes as a fraction of the JPEG;
* best: per object the smaller of the two (margin 0), i.e. what ``--policy best`` stores.

For the PNG originals themselves: JPEG XL lossless (libjxl modular, effort 7) and a re-saved
PNG (Pillow ``optimize=True``, compress_level 9) as fractions of the PNG, and whether the file's
*bytes* come back (they do not for either: only the pixels do).

Times are CPU seconds on a shared machine: read them as ratios within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from shared_paths import KODAK  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default="1,3,5")
    ap.add_argument("--min-psnr", type=float, default=40.0)
    ap.add_argument("--model", default="compact-v6")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/jpeg_lossless.json")
    a = ap.parse_args()

    import imagecodecs
    import torch

    from archiver.codec import Codec
    from archiver.lossless import reconstruct, transcode
    from archiver.pipeline import PipelineOptions, process_object
    from archiver.storage.local import LocalStore

    torch.set_num_threads(a.threads)
    codec = Codec.load(a.model, "cpu")
    rows, png_rows = [], []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        st = LocalStore(Path(tmp), create=True)
        for n in [int(x) for x in a.photos.split(",")]:
            png = (KODAK / f"kodim{n:02d}.png").read_bytes()
            im = Image.open(io.BytesIO(png)).convert("RGB")
            for q in (75, 90):
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=q)
                data = buf.getvalue()
                t0 = time.process_time()
                t = transcode(data)
                t_enc = time.process_time() - t0
                t0 = time.process_time()
                back = reconstruct(t.data)
                t_dec = time.process_time() - t0
                assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
                key = f"kodim{n:02d}_q{q}.jpg"
                st.put(key, data, metadata={}, content_type="image/jpeg")
                (info,) = [o for o in st.list() if o.key == key]
                t0 = time.process_time()
                out = process_object(info, st, st, codec, PipelineOptions(min_psnr=a.min_psnr, min_saving=0.0,
                                                                          dry_run=True, policy="lossy"))
                t_neural = time.process_time() - t0
                neural = out.compressed_bytes if out.status == "accepted" else None
                best = min(x for x in (len(t.data), neural) if x)
                rows.append({"photo": f"kodim{n:02d}", "quality": q, "jpeg_bytes": len(data),
                             "lossless_bytes": len(t.data), "lossless_ratio": len(t.data) / len(data),
                             "lossless_encode_cpu_s": t_enc, "lossless_reconstruct_cpu_s": t_dec,
                             "neural_bytes": neural, "neural_ratio": neural / len(data) if neural else None,
                             "neural_psnr": out.psnr, "neural_cpu_s": t_neural, "neural_status": out.status,
                             "best_bytes": best, "best_ratio": best / len(data),
                             "best_tier": "lossless" if best == len(t.data) else "lossy"})
                print(json.dumps(rows[-1]), flush=True)
            rgb = np.asarray(im)
            t0 = time.process_time()
            jxl = imagecodecs.jpegxl_encode(rgb, lossless=True, effort=7)
            t_jxl = time.process_time() - t0
            assert np.array_equal(imagecodecs.jpegxl_decode(jxl), rgb)
            buf = io.BytesIO()
            t0 = time.process_time()
            Image.open(io.BytesIO(png)).save(buf, "PNG", optimize=True, compress_level=9)
            t_png = time.process_time() - t0
            png_rows.append({"photo": f"kodim{n:02d}", "png_bytes": len(png), "jxl_lossless_ratio": len(jxl) / len(png),
                             "jxl_lossless_cpu_s": t_jxl, "png_optimised_ratio": len(buf.getvalue()) / len(png),
                             "png_optimised_cpu_s": t_png, "file_bytes_identical": False})
            print(json.dumps(png_rows[-1]), flush=True)

    def total(key: str, sel=lambda r: True) -> float:
        rs = [r for r in rows if sel(r)]
        return sum(r[key] or r["jpeg_bytes"] for r in rs) / sum(r["jpeg_bytes"] for r in rs)

    summary = {}
    for q in (75, 90):
        sel = (lambda r, q=q: r["quality"] == q)
        summary[f"q{q}"] = {"lossless": total("lossless_bytes", sel), "neural": total("neural_bytes", sel),
                            "best": total("best_bytes", sel)}
    summary["all"] = {"lossless": total("lossless_bytes"), "neural": total("neural_bytes"), "best": total("best_bytes")}
    summary["png"] = {"jxl_lossless": sum(r["jxl_lossless_ratio"] * r["png_bytes"] for r in png_rows)
                      / sum(r["png_bytes"] for r in png_rows),
                      "png_optimised": sum(r["png_optimised_ratio"] * r["png_bytes"] for r in png_rows)
                      / sum(r["png_bytes"] for r in png_rows)}
    print(json.dumps(summary, indent=1))
    if a.record:
        import imagecodecs as ic

        out_path = ROOT / "benchmarks" / "results" / "jpeg_lossless.json"
        out_path.write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(),
            "machine": f"dev-cpu ({platform.machine()}, shared)", "model": a.model, "min_psnr": a.min_psnr,
            "imagecodecs": ic.__version__, "libjxl": ic.jpegxl_version(), "rows": rows, "png": png_rows,
            "summary": summary}, indent=1) + "\n")
        print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
