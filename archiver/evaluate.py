"""RD evaluation from real bitstreams (``archiver eval``).

Every point is measured from the bytes of a real container (headers included) that were then
decoded with the real decoder, so the numbers are what an archive would see.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .bdrate import bd_rate, read_curve
from .codec.api import Codec
from .images import load_image
from .metrics import ms_ssim, psnr

DEFAULT_QUALITIES = [0.0, 14.0, 28.0, 42.0, 56.0, 70.0, 85.0, 100.0]


def evaluate_folder(codec: Codec, folder: Path, qualities: list[float] = DEFAULT_QUALITIES,
                    limit: int | None = None, progress=None, effort: int = 0) -> dict:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
    if limit:
        files = files[:limit]
    if not files:
        raise SystemExit(f"no images in {folder}")
    images = [load_image(p.read_bytes(), max_pixels=400_000_000) for p in files]
    per_q: dict[str, list[float]] = {k: [] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")}
    for qi, q in enumerate(qualities):
        vals: dict[str, list[float]] = {k: [] for k in per_q}
        for ii, img in enumerate(images):
            t = time.perf_counter()
            data = codec.encode(img, quality=q, effort=effort)
            te = time.perf_counter() - t
            t = time.perf_counter()
            dec = codec.decode(data)
            td = time.perf_counter() - t
            vals["bpp"].append(len(data) * 8 / (img.width * img.height))
            vals["psnr-rgb"].append(psnr(img.rgb, dec.rgb))
            vals["ms-ssim-rgb"].append(ms_ssim(img.rgb, dec.rgb))
            vals["encoding_time"].append(te)
            vals["decoding_time"].append(td)
            if progress:
                progress(qi * len(images) + ii + 1, len(qualities) * len(images))
        for k in per_q:
            per_q[k].append(float(np.mean(vals[k])))
    return {
        "name": f"ConvNeXt-ChARM {codec.model_id}" + (f" effort {effort}" if effort else ""),
        "description": f"archiver eval on {folder.name}: {len(images)} images, real bitstream bytes, "
                       f"device {codec.device_name}",
        "settings": {"qualities": list(qualities), "model_id": codec.model_id, "weights_sha256": codec.weights_sha256,
                     "effort": effort},
        "results": per_q,
    }


def bd_table(result: dict, anchors: list[Path], reference: Path | None) -> list[dict]:
    """BD-rate of our curve vs each anchor, and of each anchor vs the reference (VTM)."""
    r = result["results"]
    rows = []
    for a in anchors:
        ar, ad, name = read_curve(a)
        row = {"anchor": a.name, "name": name}
        try:
            row["ours_vs_anchor_pct"] = bd_rate(ar, ad, r["bpp"], r["psnr-rgb"])
        except ValueError as e:
            row["ours_vs_anchor_pct"] = None
            row["note"] = str(e)
        rows.append(row)
    if reference is not None:
        vr, vd, _ = read_curve(reference)
        try:
            rows.insert(0, {"anchor": reference.name, "name": "reference",
                            "ours_vs_anchor_pct": bd_rate(vr, vd, r["bpp"], r["psnr-rgb"])})
        except ValueError as e:
            rows.insert(0, {"anchor": reference.name, "name": "reference", "ours_vs_anchor_pct": None, "note": str(e)})
    return rows


def plot_rd(result: dict, anchors: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for a in anchors:
        ar, ad, name = read_curve(a)
        ax.plot(ar, ad, "--", marker=".", linewidth=1, label=name)
    r = result["results"]
    ax.plot(r["bpp"], r["psnr-rgb"], "-o", color="black", linewidth=2, label=result["name"])
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR-RGB (dB)")
    ax.set_xlim(0, max(2.0, min(6.0, max(r["bpp"]) * 1.05)))  # the archive works up to ~4 bpp
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Rate-distortion on Kodak (real bitstreams)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_result(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


__all__ = ["evaluate_folder", "bd_table", "plot_rd", "write_result", "Image"]
