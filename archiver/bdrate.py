"""Bjøntegaard delta rate between two RD curves (PCHIP interpolation of log-rate over PSNR).

Reads CompressAI-format results JSON (``results.bpp`` / ``results.psnr-rgb``), a plain
``{"bpp": [...], "psnr": [...]}`` JSON, or a CSV with ``bpp,psnr`` columns, like the anchors'
own tool, so our numbers are comparable with ``../shared/anchors/README.md``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator


def read_curve(path: str | Path, metric: str = "psnr-rgb") -> tuple[list[float], list[float], str]:
    p = Path(path)
    if p.suffix.lower() == ".csv":
        with p.open() as fh:
            rows = list(csv.DictReader(fh))
        return [float(r["bpp"]) for r in rows], [float(r["psnr"]) for r in rows], p.stem
    d = json.loads(p.read_text())
    res = d.get("results", d)
    q = res.get(metric, res.get("psnr"))
    if q is None:
        raise ValueError(f"{p}: no {metric!r} values")
    return list(map(float, res["bpp"])), list(map(float, q)), d.get("name", p.stem)


def _sorted(rate: list[float], dist: list[float]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted(zip(dist, rate))
    d = np.array([a for a, _ in pts])
    r = np.log(np.array([b for _, b in pts]))
    keep = np.concatenate([[True], np.diff(d) > 0])  # PCHIP needs strictly increasing x
    return d[keep], r[keep]


def bd_rate(anchor_rate: list[float], anchor_dist: list[float], test_rate: list[float], test_dist: list[float],
            rate_range: tuple[float, float] | None = None) -> float:
    """Average bitrate difference (%) of test vs anchor at equal quality; negative = test saves bits."""
    if rate_range:
        lo, hi = rate_range
        anchor_dist = [d for r, d in zip(anchor_rate, anchor_dist) if lo <= r <= hi]
        anchor_rate = [r for r in anchor_rate if lo <= r <= hi]
        test_dist = [d for r, d in zip(test_rate, test_dist) if lo <= r <= hi]
        test_rate = [r for r in test_rate if lo <= r <= hi]
    da, ra = _sorted(anchor_rate, anchor_dist)
    dt, rt = _sorted(test_rate, test_dist)
    if len(da) < 2 or len(dt) < 2:
        raise ValueError("each curve needs at least two distinct points")
    lo, hi = max(da.min(), dt.min()), min(da.max(), dt.max())
    if lo >= hi:
        raise ValueError("the curves do not overlap in quality")
    fa, ft = PchipInterpolator(da, ra), PchipInterpolator(dt, rt)
    ia = fa.integrate(lo, hi)
    it = ft.integrate(lo, hi)
    return float((np.exp((it - ia) / (hi - lo)) - 1.0) * 100.0)


def bd_rate_files(anchor: str | Path, test: str | Path, metric: str = "psnr-rgb") -> float:
    ar, ad, _ = read_curve(anchor, metric)
    tr, td, _ = read_curve(test, metric)
    return bd_rate(ar, ad, tr, td)
