"""Fine-tuning a model on the user's own photos (``archiver finetune``).

A model trained on general photos meets inspection shots, product photos or scans in a buyer's
archive; a learned codec can adapt to them. This module does that, and only keeps the result
when it is measurably better:

1. **Sample.** The same listing and seeded reservoir sample as the pilot
   (:func:`archiver.report.pilot.reservoir_sample` over :func:`archiver.pipeline.iter_source`),
   then a seeded split *by object* into a training part and a held-out part. Objects are fetched
   into memory only: training data never leaves the user's storage (nothing is written anywhere
   but the model itself, and the model's record names the keys, not their content).
2. **Train** with the project's one training loop (:func:`archiver.train.train`), resumed from
   the base model's weights, on random crops of the training part only, for a wall-clock budget:
   small crops and batches and a low learning rate, so that minutes on two CPU cores move the
   model toward the domain without forgetting the rest (a GPU is used where there is one).
   Training leaves Gaussian y tables, so the result's tables are then fitted to what the encoder
   writes on crops of the training part (:mod:`archiver.table_fit`, ``fit_crops``): a base with
   fitted tables would otherwise start about 1 % ahead, and the user's own symbols are the best
   data for them.
3. **Measure** the base and the new model on the held-out part, from real bitstreams (each
   container encoded, then decoded by the real decoder): the RD points at several qualities, the
   BD-rate of the new model against the base (:func:`archiver.bdrate.bd_rate`; negative = fewer
   bits at equal PSNR), and the bytes at the configured ``min_psnr`` floor (the smallest
   container whose decoded PSNR meets it, as the archive pipeline would write).
4. **Publish** the new weights in the model store (:mod:`archiver.model_store`) only when the
   BD-rate is negative, or when forced; the record carries the source URL, sample size, seed,
   the held-out and trained-on keys, minutes and steps, and the measurements.

Held-out images are measured on a centre crop of at most ``eval_size`` pixels a side (default
512): a full 12-megapixel photo costs tens of seconds per encode on a CPU, and a crop measures
the same domain.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bdrate import bd_rate
from .codec.api import Codec, QualityHints, TargetNotReached
from .errors import ArchiverError
from .images import LoadedImage, load_image
from .metrics import psnr

if TYPE_CHECKING:
    from .settings import Settings
    from .storage import ObjectStore

DEFAULT_QUALITIES = (30.0, 50.0, 70.0, 90.0)

#: a progress callback: (phase, done, total, info)
Progress = Callable[[str, int, int, str], None]


class FinetuneError(ArchiverError):
    code = "finetune_failed"


@dataclass
class FinetuneConfig:
    source_url: str
    new_id: str
    base_model: str
    sample: int = 40
    holdout: float = 0.2
    minutes: float = 10.0
    seed: int = 0
    force: bool = False
    qualities: tuple[float, ...] = DEFAULT_QUALITIES
    eval_size: int = 512  # centre crop of each held-out image, px a side (0: whole images)
    # training: small crops/batches and a low lr (fine-tuning, not training from scratch)
    crop: int = 128
    batch: int = 4
    lr: float = 5e-5
    warmup: int = 20
    q_sampling: str = "uniform"
    threads: int = 0
    device: str = "auto"
    max_steps: int = 1_000_000  # the wall-clock budget normally ends training first
    # after training, fit the y tables on this many training crops of the user's photos
    # (table_fit; training leaves Gaussian tables, and a fitted base would otherwise start ~1 % ahead)
    fit_crops: int = 24
    min_psnr: float = 40.0


@dataclass
class Sampled:
    """The sample and its split, with the images in memory (``name -> LoadedImage``)."""

    listed: int
    train: dict[str, LoadedImage]
    held_out: dict[str, LoadedImage]
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason (not an image...)


def split_keys(keys: list[str], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split by object: (train, held-out), each in key order. At least one of each."""
    if len(keys) < 2:
        raise FinetuneError(f"fine-tuning needs at least 2 images in the sample (found {len(keys)})",
                            code="sample_too_small")
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    n_hold = min(len(order) - 1, max(1, round(holdout * len(order))))
    return sorted(order[n_hold:]), sorted(order[:n_hold])


def sample_source(src: ObjectStore, cfg: FinetuneConfig, settings: Settings,
                  progress: Progress | None = None) -> Sampled:
    """Seeded sample of ``src`` (the pilot's sampler), loaded into memory and split by object."""
    from .pipeline import PipelineOptions, iter_source
    from .report.pilot import reservoir_sample

    opts = PipelineOptions(suffix=settings.container_suffix)
    chosen, listed, _ = reservoir_sample(iter_source(src, opts), cfg.sample, cfg.seed)
    images: dict[str, LoadedImage] = {}
    skipped: dict[str, str] = {}
    for i, info in enumerate(sorted(chosen, key=lambda o: o.key)):
        try:
            data = src.get(info.key, max_bytes=int(settings.max_object_bytes))
            images[info.key] = load_image(data, max_pixels=settings.max_pixels)
        except ArchiverError as e:  # a non-image or a vanished object: recorded, not fatal
            skipped[info.key] = e.code
        if progress:
            progress("fetching", i + 1, len(chosen), info.key)
    train_keys, held_keys = split_keys(list(images), cfg.holdout, cfg.seed)
    return Sampled(listed, {k: images[k] for k in train_keys}, {k: images[k] for k in held_keys}, skipped)


def centre_crop(img: LoadedImage, size: int) -> LoadedImage:
    """The centre ``size`` x ``size`` (at most) of an image, as an image to measure on (alpha left
    out). ``original_bytes`` becomes the original's bytes pro rata by area, so that a saving at
    the floor can be stated against the original files."""
    from dataclasses import replace

    mode = "L" if img.mode == "L" else "RGB"
    if size <= 0 or (img.width <= size and img.height <= size):
        return replace(img, alpha=None, mode=mode)
    h, w = min(size, img.height), min(size, img.width)
    y, x = (img.height - h) // 2, (img.width - w) // 2
    rgb = np.ascontiguousarray(img.rgb[y:y + h, x:x + w])
    share = round(img.original_bytes * (h * w) / (img.height * img.width))
    return replace(img, rgb=rgb, width=w, height=h, alpha=None, mode=mode, original_bytes=share)


def measure(codec: Codec, images: dict[str, LoadedImage], qualities: tuple[float, ...], min_psnr: float,
            progress: Progress | None = None, label: str = "measuring") -> dict[str, Any]:
    """RD points and the floor, from real bitstreams (encoded, then decoded by the real decoder).

    ``bpp`` / ``psnr`` are per-quality means over the images (as ``archiver eval`` reports them).
    At the floor each image gets the smallest container whose *decoded* PSNR meets ``min_psnr``;
    ``floor_bytes`` sums those (an image that cannot reach the floor counts at its original size:
    it would stay unarchived), and ``saving_pct`` compares them with the originals' bytes."""
    names = sorted(images)
    total = len(names) * (len(qualities) + 1)
    done = 0
    bpp: list[float] = []
    ps: list[float] = []
    for q in qualities:
        b, p = [], []
        for n in names:
            img = images[n]
            data = codec.encode(img, quality=q)
            dec = codec.decode(data)
            b.append(len(data) * 8 / (img.width * img.height))
            p.append(psnr(img.rgb, dec.rgb))
            done += 1
            if progress:
                progress(label, done, total, f"q {q:g}")
        bpp.append(float(np.mean(b)))
        ps.append(float(np.mean(p)))
    hints = QualityHints()
    floor_bytes = raw_bytes = original_bytes = 0
    reached = 0
    per_image = {}
    for n in names:
        img = images[n]
        raw = img.width * img.height * 3
        raw_bytes += raw
        original_bytes += img.original_bytes
        hint, spread = hints.get(codec.model_id, min_psnr)
        try:
            enc = codec.encode_detailed(img, target_psnr=min_psnr, quality_hint=hint, hint_spread=spread)
            hints.add(codec.model_id, min_psnr, enc.quality)
            got = psnr(img.rgb, codec.decode(enc.data).rgb)
            ok = got >= min_psnr
        except TargetNotReached:
            enc, got, ok = None, math.nan, False
        # an image that cannot reach the floor stays as it is: its original bytes count
        size = len(enc.data) if enc is not None and ok else img.original_bytes
        floor_bytes += size
        reached += ok
        per_image[n] = {"bytes": size, "psnr": None if math.isnan(got) else round(got, 3),
                        "quality": enc.quality if enc is not None else None, "reached": ok}
        done += 1
        if progress:
            progress(label, done, total, f"floor {min_psnr:g} dB")
    return {"model_id": codec.model_id, "qualities": list(qualities), "bpp": bpp, "psnr": ps,
            "floor": {"min_psnr": min_psnr, "bytes": floor_bytes, "original_bytes": original_bytes,
                      "saving_pct": 100.0 * (1 - floor_bytes / original_bytes) if original_bytes else None,
                      "raw_bytes": raw_bytes, "reached": reached, "images": len(names),
                      "bpp": floor_bytes * 8 / max(1, raw_bytes / 3), "per_image": per_image}}


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """BD-rate of ``after`` vs ``before`` and the change in bytes at the floor."""
    try:
        bd: float | None = bd_rate(before["bpp"], before["psnr"], after["bpp"], after["psnr"])
        note = ""
    except ValueError as e:
        bd, note = None, str(e)
    fb, fa = before["floor"]["bytes"], after["floor"]["bytes"]
    return {"bd_rate_pct": bd, "bd_rate_note": note,
            "floor_bytes_before": fb, "floor_bytes_after": fa,
            "floor_change_pct": 100.0 * (fa - fb) / fb if fb else None,
            "floor_saving_before_pct": before["floor"]["saving_pct"], "floor_saving_after_pct": after["floor"]["saving_pct"],
            "floor_reached_before": before["floor"]["reached"], "floor_reached_after": after["floor"]["reached"]}


@dataclass
class FinetuneResult:
    new_id: str
    registered: bool
    reason: str
    record: dict[str, Any]
    weights: Path | None = None


def train_on(sampled: Sampled, base: Codec, cfg: FinetuneConfig, workdir: Path,
             progress: Progress | None = None) -> tuple[Path, dict[str, Any]]:
    """Fine-tune ``base`` on the training part with the project's training loop."""
    from .train import CropSampler, TrainConfig, train

    crop = cfg.crop
    arrays = {k: v.rgb for k, v in sampled.train.items()}
    sampler = CropSampler.from_arrays(arrays, crop, cfg.seed)
    if not sampler.images:
        raise FinetuneError(f"no training image is at least {crop} px on each side", code="sample_too_small")
    out = workdir / "finetuned.safetensors"
    tcfg = TrainConfig(data=[], out=out, resume=Path(base.entry.file), resume_preset=base.entry.preset,
                       steps=cfg.max_steps, batch=cfg.batch, crop=crop, lr=cfg.lr, seed=cfg.seed,
                       log_every=25, save_every=10**9, device=cfg.device, max_minutes=cfg.minutes,
                       warmup=cfg.warmup, q_sampling=cfg.q_sampling, threads=cfg.threads)
    t0 = time.time()
    total_s = cfg.minutes * 60
    last: dict[str, float] = {}

    def cb(step: int, total: int, m: dict) -> None:
        last.update(m)
        last["step"] = step
        if progress:
            progress("training", min(int(time.time() - t0), int(total_s)), int(total_s),
                     f"step {step} bpp {m['bpp']:.3f} PSNR {m['psnr']:.2f} dB")

    train(tcfg, cb, sampler=sampler)
    fitted = fit_user_tables(out, sampler, cfg, progress) if cfg.fit_crops >= 2 else None
    summary = {"minutes": cfg.minutes, "seconds": round(time.time() - t0, 1), "steps": int(last.get("step", 0)),
               "crop": crop, "batch": cfg.batch, "lr": cfg.lr, "warmup": cfg.warmup, "q_sampling": cfg.q_sampling,
               "threads": cfg.threads, "device": str(base.device), "seed": cfg.seed,
               "trained_on": list(sampler.names), "table_fit": fitted}
    return out, summary


def fit_user_tables(weights: Path, sampler: Any, cfg: FinetuneConfig,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Fit the fine-tuned weights' y tables (``archiver.table_fit``) on crops of the training part
    (never the held-out part), at the default effort, and rewrite ``weights`` with them."""
    from .codec.default import DEFAULT_EFFORT
    from .table_fit import fit_file

    def cb(r: int, done: int, total: int) -> None:
        if progress:
            progress("fitting tables", (r - 1) * total + done, 2 * total, f"round {r}/2")

    record = {"crops": cfg.fit_crops, "crop": sampler.crop}
    fit = fit_file(weights, weights, sampler.batch(cfg.fit_crops), DEFAULT_EFFORT, rounds=2, progress=cb, record=record)
    return {**record, **fit.summary()}


def finetune(cfg: FinetuneConfig, settings: Settings, progress: Progress | None = None,
             workdir: Path | None = None) -> FinetuneResult:
    """Sample, split, fine-tune, measure before/after, and publish when better (module docstring)."""
    from .codec.registry import file_preset, read_registry
    from .model_store import ModelStore, check_model_id
    from .storage import open_store

    check_model_id(cfg.new_id)
    store = ModelStore.from_settings(settings)
    if store is None:
        raise FinetuneError("no model store is configured (model_store / ARCHIVER_MODEL_STORE): the new model "
                            "would have nowhere to go that decode hosts can read", code="no_model_store")
    if cfg.new_id in read_registry() or store.holds(cfg.new_id):
        raise FinetuneError(f"model id {cfg.new_id!r} is already taken; ids are never reused", code="model_id_taken")
    base = Codec.load(cfg.base_model, cfg.device, settings=settings)
    src = open_store(cfg.source_url, settings)
    try:
        sampled = sample_source(src, cfg, settings, progress)
    finally:
        src.close()
    held = {k: centre_crop(v, cfg.eval_size) for k, v in sampled.held_out.items()}
    before = measure(base, held, cfg.qualities, cfg.min_psnr, progress, f"measuring {base.model_id}")
    with tempfile.TemporaryDirectory(prefix="archiver-finetune-") as tmp:
        wd = Path(workdir) if workdir else Path(tmp)
        weights, training = train_on(sampled, base, cfg, wd, progress)
        new = Codec.from_weights_file(weights, cfg.device, model_id=cfg.new_id)
        after = measure(new, held, cfg.qualities, cfg.min_psnr, progress, "measuring fine-tuned")
        after["model_id"] = cfg.new_id
        cmp = compare(before, after)
        record = {
            "note": f"fine-tuned from {base.model_id} on {cfg.source_url}",
            "preset": file_preset(weights)[0].to_dict(),  # the base's, with fitted y tables
            "base_model": base.model_id, "base_sha256": base.weights_sha256,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": {"url": cfg.source_url, "objects_listed": sampled.listed, "sample_requested": cfg.sample,
                       "sample_size": len(sampled.train) + len(sampled.held_out), "seed": cfg.seed,
                       "holdout_fraction": cfg.holdout, "held_out": sorted(sampled.held_out),
                       "train": sorted(sampled.train), "skipped": sampled.skipped},
            "training": training,
            "measured": {"eval_size": cfg.eval_size, "before": before, "after": after, **cmp},
        }
        better = cmp["bd_rate_pct"] is not None and cmp["bd_rate_pct"] < 0
        if better or cfg.force:
            stored = store.publish(cfg.new_id, weights.read_bytes(), record)
            record = stored.record
            reason = "better (negative BD-rate)" if better else "forced (--force)"
            return FinetuneResult(cfg.new_id, True, reason, record)
        reason = ("not better: BD-rate {:+.2f} %".format(cmp["bd_rate_pct"]) if cmp["bd_rate_pct"] is not None
                  else f"not measurable: {cmp['bd_rate_note']}") + " - not registered (use --force to register anyway)"
        return FinetuneResult(cfg.new_id, False, reason, record)


__all__ = ["FinetuneConfig", "FinetuneError", "FinetuneResult", "compare", "finetune", "measure", "sample_source",
           "split_keys"]
