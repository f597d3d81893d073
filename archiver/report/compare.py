"""The pilot's side-by-side: ConvNeXt-ChARM against the classical codecs on the same sample.

Per sampled image (:func:`measure_image`, called by :func:`archiver.report.pilot.run_pilot` on
the pixels the pipeline's verify step loaded) every classical codec of the chosen preset is
searched for its smallest file at the pilot's PSNR floor (:mod:`archiver.baselines`), and an
optional *task check* is run on what each codec gives back. The per-image records are stored in
the pilot job's ``settings["pilot"]["baselines"]`` (JSON; no schema change), so a recorded pilot
re-renders with its comparison (``archiver pilot --job``).

Summary (:func:`summarise`), per codec, with the same rules as ours so the rows compare:

* an image counts as **saved** for a codec when the codec reached the PSNR floor *and* saved at
  least the pilot's ``min_saving`` (ours: an ``accepted`` row); otherwise its saving is 0 (the
  original is kept), exactly as a rejected or failed object counts for ours. A corrupt object
  has no pixels: no codec reaches the floor on it;
* ``bytes_before`` = the sample's bytes, ``bytes_after`` = before - saved,
  ``saving_pct`` = saved / before;
* the projection to the whole source and its 95% interval use the pilot's ratio estimator
  (:func:`archiver.report.sampling.ratio_projection`) with that codec's per-image savings;
* ``seconds`` = the sample's compute time (ours: as in the pilot; classical codecs: every encode,
  decode and PSNR of the quality search), projected by bytes and priced at the CPU price (the
  classical codecs run on CPU);
* the **advantage** of ConvNeXt-ChARM is its saving minus a classical one, per image, projected
  with the same estimator (the interval may be negative: the classical codec is then better).
  Two totals: against the best single classical codec (the one a buyer would deploy: the
  largest sample saving) and against the best classical codec chosen per image (an upper bound
  on what any of the four could do, even mixing them).

Task check: ``--task-check module:function`` names ``f(original_rgb, decoded_rgb) -> float``
(both (H, W, 3) uint8). It is called for every image that a codec brought to the floor, on the
pixels that codec's file decodes to; the report shows the distribution per codec. An exception
or a non-finite value is recorded as an error for that image and codec; the pilot goes on.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core import Pricing, ReportError, distribution, money, pct
from ..vocabulary import ResultStatus

OURS = "ours"
OURS_LABEL = "ConvNeXt-ChARM"
MAX_ERRORS = 20  # task-check errors kept in the report (the count is always complete)


# ---- the task check ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskCheck:
    """A user function ``f(original_rgb, decoded_rgb) -> float``, named ``module:function``."""

    spec: str
    fn: Callable[[np.ndarray, np.ndarray], float]

    @classmethod
    def load(cls, spec: str) -> TaskCheck:
        """Import ``module:function`` (the module on ``sys.path``, e.g. the working directory)."""
        mod_name, sep, attr = spec.partition(":")
        if not sep or not mod_name or not attr:
            raise ReportError(f"--task-check wants module:function, got {spec!r}")
        try:
            obj: Any = importlib.import_module(mod_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise ReportError(f"cannot load the task check {spec!r}: {type(e).__name__}: {e}") from None
        if not callable(obj):
            raise ReportError(f"the task check {spec!r} is not callable")
        return cls(spec, obj)

    def __call__(self, original: np.ndarray, decoded: np.ndarray) -> dict[str, Any]:
        """``{"value": float}`` or ``{"error": "..."}``; never raises."""
        try:
            v = float(self.fn(original, decoded))
        except Exception as e:  # noqa: BLE001 - the user's code must not stop the pilot
            return {"error": f"{type(e).__name__}: {e}"[:300]}
        if not math.isfinite(v):
            return {"error": f"non-finite value {v!r}"}
        return {"value": v}


# ---- per image -----------------------------------------------------------------------------------

def measure_image(pixels: dict[str, np.ndarray], *, codecs: list[Any], floor: float, task: TaskCheck | None,
                  on_codec: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The record stored for one sampled image: each classical codec's search result, and the
    task check on ours and theirs. ``pixels`` is what the pipeline filled (``original`` and, if
    our codec got that far, ``decoded``)."""
    from ..baselines import smallest_at_floor
    from ..metrics import psnr

    rec: dict[str, Any] = {"codecs": {}}
    original = pixels.get("original")
    if original is None:  # the object never loaded: nothing to compare
        for c in codecs:
            rec["codecs"][c.name] = {"reached": False, "error": "no pixels (the object did not load)"}
            if on_codec:
                on_codec(c.name)
        return rec
    rec["height"], rec["width"] = int(original.shape[0]), int(original.shape[1])
    ours = pixels.get("decoded")
    if task is not None and ours is not None and psnr(original, ours) >= floor:
        rec["ours_task"] = task(original, ours)
    for c in codecs:
        r = smallest_at_floor(c, original, floor)
        d = r.as_dict()
        if task is not None and r.decoded is not None:
            d["task"] = task(original, r.decoded)
        r.decoded = None
        rec["codecs"][c.name] = d
        if on_codec:
            on_codec(c.name)
    return rec


# ---- summary -------------------------------------------------------------------------------------

def _codec_summary(label: str, x: list[int], y: list[int], reached: int, accepted: int, seconds: float,
                   compute_cost: float, population_objects: int, population_bytes: int,
                   pricing: Pricing) -> dict[str, Any]:
    from .sampling import ratio_projection

    X = population_bytes
    before, saved = sum(x), sum(y)
    proj = ratio_projection(x, y, population_objects, X)
    scale = X / before if before else 0.0
    return {
        "label": label,
        "images": len(x),
        "reached": reached,
        "accepted": accepted,
        "bytes_before": before,
        "bytes_after": before - saved,
        "saved_bytes": saved,
        "saving_pct": pct(saved, before),
        "projected_saved": proj["projected_saved"],
        "ci_low": proj["ci_low"],
        "ci_high": proj["ci_high"],
        "projected_saved_pct": pct(proj["projected_saved"], X),
        "ci_low_pct": pct(proj["ci_low"], X),
        "ci_high_pct": pct(proj["ci_high"], X),
        "seconds": seconds,
        "projected_compute_seconds": seconds * scale,
        "projected_compute_cost": compute_cost,
        "projected_money": money(int(round(proj["projected_saved"])), compute_cost, pricing),
    }


def _advantage(name: str, label: str, x: list[int], diff: list[int], population_objects: int,
               population_bytes: int, ours_after: int, theirs_after: int) -> dict[str, Any]:
    from .sampling import ratio_projection

    X = population_bytes
    proj = ratio_projection(x, diff, population_objects, X, lower=-float(X))
    return {
        "versus": name,
        "label": label,
        "saved_bytes": sum(diff),  # ours' saving minus theirs, over the sample
        "saving_pct_points": pct(sum(diff), sum(x)),  # percentage points of the sample's bytes
        "smaller_than_theirs_pct": pct(theirs_after - ours_after, theirs_after),  # our stored bytes vs theirs
        "projected": proj["projected_saved"],
        "ci_low": proj["ci_low"],
        "ci_high": proj["ci_high"],
        "projected_pct_points": pct(proj["projected_saved"], X),
        "ci_low_pct_points": pct(proj["ci_low"], X),
        "ci_high_pct_points": pct(proj["ci_high"], X),
    }


def _task_summary(values: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [v["value"] for v in values if "value" in v]
    errors = [v["error"] for v in values if "error" in v]
    d = distribution(ok, bins=10)
    return {"count": d["count"], "min": d["min"], "median": d["percentiles"]["p50"], "mean": d["mean"],
            "max": d["max"], "p5": d["percentiles"]["p5"], "p95": d["percentiles"]["p95"],
            "errors": len(errors), "error_examples": errors[:3]}


def summarise(rows: list[Any], stored: dict[str, Any], *, population_objects: int, population_bytes: int,
              ours_seconds: float, ours_cost: float, min_psnr: float, min_saving: float, model_id: str,
              pricing: Pricing) -> dict[str, Any]:
    """The comparison sections of a pilot report, from its ``results`` rows (sorted by key) and
    the stored per-image records (see the module docstring for the definitions)."""
    from ..baselines import CODEC_NAMES, LABELS

    images: dict[str, Any] = stored.get("images") or {}
    names = [n for n in CODEC_NAMES if n in (stored.get("codecs") or {})]
    x = [int(r.original_bytes or 0) for r in rows]
    ours_y = [int(r.original_bytes - r.compressed_bytes) if r.status == ResultStatus.ACCEPTED and r.compressed_bytes is not None
              else 0 for r in rows]
    ours_label = OURS_LABEL
    ours_reached = sum(1 for r in rows if r.psnr is not None and r.psnr >= min_psnr)
    ours_acc = sum(1 for r in rows if r.status == ResultStatus.ACCEPTED)
    ours = _codec_summary(ours_label, x, ours_y, ours_reached, ours_acc, ours_seconds, ours_cost,
                          population_objects, population_bytes, pricing)
    ours["model_id"] = model_id
    sx = sum(x)
    scale = population_bytes / sx if sx else 0.0

    per_codec_y: dict[str, list[int]] = {}
    baselines: dict[str, Any] = {}
    for name in names:
        ys, reached, acc, secs = [], 0, 0, 0.0
        for r, xi in zip(rows, x):
            d = (images.get(r.key) or {}).get("codecs", {}).get(name) or {}
            secs += float(d.get("seconds") or 0.0)
            yi = 0
            if d.get("reached") and d.get("bytes") is not None:
                reached += 1
                if xi and 1.0 - d["bytes"] / xi >= min_saving:
                    acc += 1
                    yi = xi - int(d["bytes"])
            ys.append(yi)
        per_codec_y[name] = ys
        cost = pricing.compute_cost(0.0, secs * scale)
        s = _codec_summary(LABELS[name], x, ys, reached, acc, secs, cost, population_objects, population_bytes,
                           pricing)
        s["settings"] = (stored.get("codecs") or {}).get(name, {}).get("settings")
        baselines[name] = s

    # per image: every codec's bytes, PSNR and saving, and ours' advantage over the best classical one
    per_image: list[dict[str, Any]] = []
    best_per_image_y: list[int] = []
    for i, (r, xi) in enumerate(zip(rows, x)):
        rec = images.get(r.key) or {}
        item: dict[str, Any] = {"key": r.key, "original_bytes": xi, "status": r.status,
                                "width": r.width or rec.get("width"), "height": r.height or rec.get("height"),
                                "bytes": {OURS: r.compressed_bytes}, "psnr": {OURS: r.psnr}, "saved": {OURS: ours_y[i]}}
        for name in names:
            d = rec.get("codecs", {}).get(name) or {}
            item["bytes"][name] = d.get("bytes") if d.get("reached") else None
            item["psnr"][name] = d.get("psnr") if d.get("reached") else None
            item["saved"][name] = per_codec_y[name][i]
        if names:
            best = max(names, key=lambda n: (per_codec_y[n][i], -names.index(n)))
            best_y = per_codec_y[best][i]
            item["best_classical"] = best if best_y > 0 else None
            item["advantage_bytes"] = ours_y[i] - best_y
            item["advantage_pct_points"] = pct(ours_y[i] - best_y, xi)
            best_per_image_y.append(best_y)
        per_image.append(item)

    out: dict[str, Any] = {"ours": ours, "per_image": per_image}
    if names:
        best_name = max(names, key=lambda n: (sum(per_codec_y[n]), -names.index(n)))
        ours_after = sx - sum(ours_y)
        vs_best = _advantage(best_name, LABELS[best_name], x, [a - b for a, b in zip(ours_y, per_codec_y[best_name])],
                             population_objects, population_bytes, ours_after, sx - sum(per_codec_y[best_name]))
        vs_each = _advantage("per_image_best", "best classical codec per image", x,
                             [a - b for a, b in zip(ours_y, best_per_image_y)], population_objects, population_bytes,
                             ours_after, sx - sum(best_per_image_y))
        out["baselines"] = baselines
        out["advantage"] = {"vs_best_codec": vs_best, "vs_best_per_image": vs_each}
        out["baseline_run"] = {"mode": stored.get("mode"), "min_psnr": min_psnr, "min_saving": min_saving,
                               "versions": stored.get("versions") or {},
                               "codecs": {n: stored["codecs"][n] for n in names}}
    spec = stored.get("task_check")
    if spec:
        per: dict[str, Any] = {OURS: _task_summary([(images.get(r.key) or {}).get("ours_task") or {}
                                                     for r in rows if (images.get(r.key) or {}).get("ours_task")])}
        for name in names:
            vals = [((images.get(r.key) or {}).get("codecs", {}).get(name) or {}).get("task") for r in rows]
            per[name] = _task_summary([v for v in vals if v])
        for key, item in zip((r.key for r in rows), per_image):
            rec = images.get(key) or {}
            item["task"] = {OURS: (rec.get("ours_task") or {}).get("value"),
                            **{n: ((rec.get("codecs", {}).get(n) or {}).get("task") or {}).get("value") for n in names}}
        errors = []
        for r in rows:
            rec = images.get(r.key) or {}
            for name, v in [(OURS, rec.get("ours_task")), *((n, (rec.get("codecs", {}).get(n) or {}).get("task"))
                                                            for n in names)]:
                if v and "error" in v and len(errors) < MAX_ERRORS:
                    errors.append({"key": r.key, "codec": name, "error": v["error"]})
        out["task_check"] = {"function": spec, "by_codec": per, "errors": errors,
                             "note": "f(original_rgb, decoded_rgb) on every image a codec brought to the PSNR floor"}
    return out


__all__ = ["OURS", "OURS_LABEL", "TaskCheck", "measure_image", "summarise"]
