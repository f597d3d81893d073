"""Pilot: recompress a random sample in memory and project the saving onto the whole source.

Sampling: one streaming pass over the listing keeps a seeded uniform sample (reservoir sampling,
:func:`.sampling.reservoir_sample`) and the population's object and byte totals.

Measurement. Each sampled object goes through the real per-object step
(:func:`archiver.pipeline.handle_object`) with ``dry_run=True``: fetched, encoded at the target
PSNR, the real bitstream decoded and verified, judged against the thresholds, and recorded in
``results`` under a job with ``kind="pilot"`` (``sample_size`` and ``seed`` set, ``objects_listed``
/ ``bytes_listed`` = the population totals). Nothing is written to or deleted from storage, and
pilot jobs are left out of the ROI report by default, so a later real run can be compared with
the pilot (``archiver report --job <pilot id>`` / ``load_pilot``).

Projection: the ratio estimator with a finite-population-corrected Student-t interval
(:func:`.sampling.ratio_projection`; its module docstring gives the formulas).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import Job, Result, utcnow
from ..identity import Scope
from ..storage import ObjectInfo, ObjectStore
from ..vocabulary import DONE, NOT_ARCHIVED, PROCESSED, ResultStatus
from .compare import TaskCheck, measure_image, summarise
from .core import Pricing, ReportError, assumptions, compute_basis, distribution, money, pct
from .sampling import ratio_projection, reservoir_sample

if TYPE_CHECKING:  # the pipeline imports torch; only run_pilot needs it, so the report stays light
    from ..pipeline import PipelineOptions
    from ..records import Outcome

METHOD = ("Ratio estimator: projected saving = (sum of saved bytes / sum of original bytes over the sample) x total "
          "bytes listed. 95% CI = projection +/- t(0.975, n-1) x SE with SE = N x sqrt((1 - n/N)/n x s_d^2), "
          "s_d^2 = sample variance of d_i = saved_i - R x bytes_i (Cochran 1977, sec. 6.4; 1 - n/N is the finite "
          "population correction), clipped to [0, total bytes]. Sample: uniform, by reservoir sampling over one "
          "streaming pass of the listing (seeded).")


def load_pilot(session: Session, job_id: int, pricing: Pricing | None = None) -> dict[str, Any]:
    """The projection of a recorded pilot job, recomputed from its ``results`` rows."""
    pricing = pricing or Pricing()
    job = session.get(Job, job_id)
    if job is None or job.kind != "pilot":
        raise ReportError(f"job {job_id} is not a pilot job")
    rows = list(session.execute(select(Result).where(Result.job_id == job_id).order_by(Result.key)).scalars())
    x = [int(r.original_bytes or 0) for r in rows]
    y = [int(r.original_bytes - r.compressed_bytes) if r.status == ResultStatus.ACCEPTED and r.compressed_bytes is not None else 0
         for r in rows]
    proj = ratio_projection(x, y, int(job.objects_listed or 0), int(job.bytes_listed or 0))
    X = int(job.bytes_listed or 0)
    # compute time, as in the ROI report: gpu_seconds on GPU rows, t_total on CPU rows
    processed = [r for r in rows if r.status in PROCESSED]
    gpu = [r for r in processed if (r.device or "").startswith("cuda")]
    cpu = [r for r in processed if not (r.device or "").startswith("cuda")]
    sample_gpu = sum(r.gpu_seconds or 0.0 for r in gpu)
    sample_cpu = sum(r.t_total or 0.0 for r in cpu)
    sample_compute = sample_gpu + sample_cpu
    sx = sum(x)
    scale = X / sx if sx else 0.0
    projected_compute = sample_compute * scale
    compute_cost = pricing.compute_cost(sample_gpu * scale, sample_cpu * scale)
    basis = compute_basis(len(gpu), len(cpu))
    counts = {str(s): 0 for s in DONE}
    reasons: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
        if r.status in NOT_ARCHIVED and r.reason_code:
            reasons[r.reason_code] = reasons.get(r.reason_code, 0) + 1
    opts = (job.settings or {}).get("options") or {}
    out: dict[str, Any] = {
        "generated_at": utcnow().isoformat(),
        "job_id": job.id,
        "source": job.source,
        "model_id": job.model_id,
        "min_psnr": opts.get("min_psnr"),
        "min_saving": opts.get("min_saving"),
        "seed": job.seed,
        "sample_requested": (job.settings or {}).get("pilot", {}).get("sample_requested", job.sample_size),
        "sample_size": len(rows),
        "population_objects": int(job.objects_listed or 0),
        "population_bytes": X,
        "sample_bytes": sx,
        "sample_saved": sum(y),
        **proj,
        "projected_saved_pct": pct(proj["projected_saved"], X),
        "ci_low_pct": pct(proj["ci_low"], X),
        "ci_high_pct": pct(proj["ci_high"], X),
        "method": METHOD,
        "sample_counts": counts,
        "sample_reasons": reasons,
        "sample_keys": [r.key for r in rows],
        "compute_basis": basis,
        "sample_compute_seconds": sample_compute,
        "projected_compute_seconds": projected_compute,
        "projected_money": money(int(round(proj["projected_saved"])), compute_cost, pricing),
        "money_low": money(int(round(proj["ci_low"])), compute_cost, pricing),
        "money_high": money(int(round(proj["ci_high"])), compute_cost, pricing),
        "psnr": distribution([r.psnr for r in rows if r.status == ResultStatus.ACCEPTED and r.psnr is not None], bins=12),
        "saving_pct_distribution": distribution([100.0 * yi / xi for xi, yi in zip(x, y) if xi], bins=12),
        "assumptions": assumptions(pricing, basis),
    }
    out["policy"] = opts.get("policy") or "lossy"  # pilots before the tiers ran the neural codec only
    out.update(tier_breakdown(rows, ((job.settings or {}).get("pilot") or {}).get("lossless"),
                              population_objects=int(job.objects_listed or 0), population_bytes=X,
                              min_saving=float(opts.get("min_saving") or 0.0), pricing=pricing))
    stored = ((job.settings or {}).get("pilot") or {}).get("comparison")
    if stored:
        out.update(summarise(rows, stored, population_objects=int(job.objects_listed or 0), population_bytes=X,
                             ours_seconds=sample_compute, ours_cost=compute_cost,
                             min_psnr=float(opts.get("min_psnr") or 0.0), min_saving=float(opts.get("min_saving") or 0.0),
                             model_id=job.model_id, pricing=pricing))
    return out


LOSSLESS_LABEL = "Lossless JPEG -> JPEG XL (bit-exact)"


def tier_breakdown(rows: list[Result], lossless: dict[str, Any] | None, *, population_objects: int,
                   population_bytes: int, min_saving: float, pricing: Pricing) -> dict[str, Any]:
    """The pilot's lossless row, its stored tiers and its savings by original format.

    * ``lossless``: the bit-exact tier alone, as if the run stored it wherever it could (every
      sampled JPEG that transcodes and saves at least ``min_saving``; anything else keeps its
      original), with the same ratio-estimator projection as the other rows. ``None`` for a
      pilot recorded before the tier existed.
    * ``tiers``: what the pilot's policy chose per accepted object, by tier.
    * ``by_format``: per original format (JPEG, PNG, TIFF, other), the sample's objects and bytes
      before and after under the pilot's policy, and how many went to the lossless tier.
    """
    from .compare import _codec_summary
    from .core import FORMATS, format_of

    out: dict[str, Any] = {}
    if lossless is not None:
        x, y, reached, accepted, secs = [], [], 0, 0, 0.0
        for r in rows:
            d = lossless.get(r.key) or {}
            b = d.get("bytes")
            ob = int(r.original_bytes or 0)
            x.append(ob)
            secs += float(d.get("seconds") or 0.0)
            ok = b is not None and ob > 0 and 1.0 - b / ob >= min_saving
            reached += b is not None
            accepted += ok
            y.append(ob - int(b) if ok else 0)
        scale = population_bytes / sum(x) if sum(x) else 0.0
        row = _codec_summary(LOSSLESS_LABEL, x, y, reached, accepted, secs, pricing.compute_cost(0.0, secs * scale),
                             population_objects, population_bytes, pricing)
        row["jpeg_images"] = sum(1 for r in rows if r.content_type == "image/jpeg")
        refusals: dict[str, int] = {}
        for d in lossless.values():
            if d.get("refusal") and d["refusal"] != "not_jpeg":
                refusals[d["refusal"]] = refusals.get(d["refusal"], 0) + 1
        row["refusals"] = refusals
        out["lossless"] = row
    tiers: dict[str, dict[str, int]] = {}
    fmts = {f: {"format": f, "objects": 0, "accepted": 0, "lossless": 0, "bytes_before": 0, "bytes_after": 0,
                "saved": 0, "saving_pct": None} for f in FORMATS}
    for r in rows:
        f = fmts[format_of(r.content_type)]
        ob = int(r.original_bytes or 0)
        took = r.status == ResultStatus.ACCEPTED and r.compressed_bytes is not None
        after = int(r.compressed_bytes) if took else ob
        f["objects"] += 1
        f["bytes_before"] += ob
        f["bytes_after"] += after
        if took:
            f["accepted"] += 1
            tier = r.tier or "lossy"
            f["lossless"] += tier == "lossless"
            t = tiers.setdefault(tier, {"objects": 0, "bytes_before": 0, "bytes_after": 0})
            t["objects"] += 1
            t["bytes_before"] += ob
            t["bytes_after"] += after
    for f in fmts.values():
        f["saved"] = f["bytes_before"] - f["bytes_after"]
        f["saving_pct"] = pct(f["saved"], f["bytes_before"])
    for t in tiers.values():
        t["saved"] = t["bytes_before"] - t["bytes_after"]
        t["saving_pct"] = pct(t["saved"], t["bytes_before"])
    out["tiers"] = dict(sorted(tiers.items()))
    out["by_format"] = [f for f in fmts.values() if f["objects"]]
    return out


def run_pilot(*, src: ObjectStore, source_url: str, codec: Any, opts: PipelineOptions,
              session_factory: sessionmaker, sample: int = 300, seed: int = 0, pricing: Pricing | None = None,
              workers: int = 1, on_outcome: Callable[[Outcome], None] | None = None,
              on_listed: Callable[[int, int, int], None] | None = None, baselines: str = "none",
              task_check: TaskCheck | None = None, on_baseline: Callable[[str, str], None] | None = None,
              hints: Any = None) -> dict[str, Any]:
    """Sample, recompress and verify in memory, record as a ``pilot`` job, return the projection.

    ``baselines`` (``none``, ``fast`` or ``all``, see :mod:`archiver.baselines.codecs`) also
    searches each classical codec's smallest file at the same PSNR floor on every sampled image,
    and ``task_check`` runs a user function on every codec's output (:mod:`.compare`); both are
    stored with the job and shown side by side. ``on_baseline(key, codec)`` is called after each
    codec's search on each image (progress). The decision of whole-archive runs is unaffected:
    recompress uses ConvNeXt-ChARM only. ``hints``: the front door's quality hints
    (:class:`archiver.codec.api.QualityHints`; searches start from scratch without them).
    """
    from ..baselines import baseline_codecs, library_versions
    from ..pipeline import handle_object, iter_source
    from ..records import finish_job, new_job
    from ..vocabulary import JobKind, JobStatus

    if sample < 1:
        raise ReportError("the pilot sample must have at least 1 object")
    codecs = baseline_codecs(baselines)
    compare = bool(codecs) or task_check is not None
    measured: dict[str, Any] = {}
    lossless: dict[str, Any] = {}  # full key -> {"bytes": verified JPEG XL size or None, "refusal": code}
    # a pilot never writes or deletes anything; it measures the lossless tier on every JPEG whatever the policy
    opts = replace(opts, dry_run=True, replace=False, measure_lossless=True)
    chosen, n_listed, bytes_listed = reservoir_sample(iter_source(src, opts), sample, seed)
    chosen.sort(key=lambda o: o.key)
    if on_listed:
        on_listed(n_listed, bytes_listed, len(chosen))
    with session_factory() as s:
        job = new_job(s, kind=JobKind.PILOT, source=source_url, dest=None, model_id=codec.model_id,
                      options=opts.as_dict(), extra={"pilot": {"sample_requested": sample, "seed": seed}})
        job.sample_size = len(chosen)
        job.seed = seed
        job.objects_listed = n_listed
        job.bytes_listed = bytes_listed
        job.objects_enqueued = len(chosen)
        s.commit()
        job_id = job.id
    lock = threading.Lock()
    measured_lock = threading.Lock()
    scope = Scope.of(src)

    def one(info: ObjectInfo) -> Outcome:
        pixels: dict[str, Any] | None = {} if compare else None
        out = handle_object(info, job_id=job_id, src=src, dst=src, codec=codec, opts=opts,
                            session_factory=session_factory, codec_lock=lock, pixels=pixels, hints=hints)
        if pixels is not None:
            rec = measure_image(pixels, codecs=codecs, floor=opts.min_psnr, task=task_check,
                                on_codec=(lambda name: on_baseline(info.key, name)) if on_baseline else None)
            pixels.clear()  # the pixels are not kept beyond this object
            with measured_lock:
                measured[scope.key(info.key)] = rec  # keyed as the results rows are: by full key
        if out.content_type is not None:
            with measured_lock:
                lossless[scope.key(info.key)] = {"bytes": out.lossless_bytes, "refusal": out.lossless_refusal,
                                                 "seconds": out.timings.get("lossless", 0.0)}
        if on_outcome:
            on_outcome(out)
        return out

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(one, chosen))
    except BaseException as e:
        finish_job(session_factory, job_id, JobStatus.FAILED, f"{type(e).__name__}: {e}")
        raise
    with session_factory() as s:
        job = s.get(Job, job_id)
        settings = dict(job.settings or {})
        settings["pilot"] = {**settings.get("pilot", {}), "lossless": lossless}
        job.settings = settings  # a new dict: the JSON column sees the change
        s.commit()
    if compare:
        with session_factory() as s:
            job = s.get(Job, job_id)
            settings = dict(job.settings or {})
            settings["pilot"] = {**settings.get("pilot", {}), "comparison": {
                "mode": baselines, "versions": library_versions() if codecs else {},
                "codecs": {c.name: c.describe() for c in codecs},
                "task_check": task_check.spec if task_check else None, "images": measured}}
            job.settings = settings  # a new dict: the JSON column sees the change
            s.commit()
    finish_job(session_factory, job_id)
    with session_factory() as s:
        return load_pilot(s, job_id, pricing)


__all__ = ["LOSSLESS_LABEL", "METHOD", "load_pilot", "run_pilot", "tier_breakdown"]
