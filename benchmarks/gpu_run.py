"""One call on a lent GPU machine: resume training, cross-device check, throughput, latent refinement
(docs/MODEL.md, "GPU runbook").

    bash benchmarks/gpu_run.sh                       # on the device ($OUT set; carry [".whl", ".gpu"])
    bash benchmarks/gpu_run.sh --dry-run [--out DIR] # here, on the CPU at toy size, < 2 minutes
    python benchmarks/gpu_run.py [--dry-run] --out DIR [--only train,cross_device,throughput,refine]
                                                     [--continue]
    python benchmarks/gpu_run.py --record DIR        # append a call's results to docs/BENCHMARKS.md

Prepared by ``benchmarks/gpu_prepare.sh run`` (wheels in ``.whl/``, a trimmed training shard in
``.gpu/train``, the 24 Kodak PNGs in ``.gpu/kodak``). Steps, in order, each with a time budget
inside one overall budget (``--total-s``, 540 s = 9 minutes from when gpu_run.sh started, which
it passes as ``GPU_RUN_T0``); a step that would overrun is skipped with its reason:

1. ``train``: resume the default model's preset (``archiver.codec.registry.DEFAULT_MODEL``, read
   at run time) from ``training/checkpoint.safetensors`` (the committed ``archiver train``
   checkpoint), or, if it is absent or has another architecture, from the default model's
   shipped weights; ``archiver.train.train`` on ``.gpu/train`` for a wall-clock budget (at most
   5 minutes; what is left after the later steps' reserves: about 3.75 minutes of the default
   540 s), channels-last with bf16 autocast on CUDA, ``torch.compile`` only with
   ``GPU_RUN_COMPILE=1``. Writes ``w.safetensors`` (fp16) and ``w.log.jsonl``.
2. ``cross_device``: ``benchmarks/cross_device.py``'s ``check`` on the default model: every
   Kodak image x qualities 10, 50, 90 encoded on CUDA and decoded on the CPU, and the reverse;
   latent mismatches and differing pixels. Writes ``cross_device.json`` (``complete`` is false
   if its budget ran out first; ``encodes`` then says how many were checked).
3. ``throughput``: 768x512 images (Kodak; portrait ones transposed) through the whole encode
   path at one quality (50): analysis, entropy model + rANS coding, encoder reconstruction
   (g_s) and PSNR, container packing, then the verification decode of the real bytes
   (unpack, rANS decoding + entropy model, g_s). Modes:

   * ``api``, batch 1: ``Codec.encode`` + ``Codec.decode``, one image at a time (the pipeline's
     work per image at a fixed quality, with no quality search);
   * ``batched``, batch 1 and 16: the same work with the float networks (g_a, and g_s for the
     encoder reconstruction and for the verification decode) called once per batch of
     same-sized images; entropy modelling and rANS coding stay per image (each image is its
     own bitstream; the rANS coder is sequential, holds the GIL). The containers are ordinary
     ones: a sample is decoded again with ``Codec.decode`` (``api_decode_check``);
   * ``threads``, batch 16: 16 threads sharing one ``Codec`` (as ``workers.codec_slots``),
     each doing ``api``'s work on its own images: concurrency, not batching.

   Rates are images per second over whole passes, after a warm-up batch. The split, per image:
   ``gpu_networks_ms`` (synchronised wall time of the batched g_a / g_s calls),
   ``ms_per_image`` by stage (``analysis``, ``entropy_encode``, ``synthesis``,
   ``entropy_decode``, ``other`` = container pack/unpack, PSNR, uploads, hashing; the entropy
   stages are TileCoder's calls: float64 hyper/slice transforms on the device plus rANS),
   ``cpu_rans_ms`` (own time of the rANS coder's calls on the CPU: archiver/codec/rans.py's,
   or CompressAI's built-ins where numba is missing) and ``to_host_ms`` (the ``tolist``
   device-to-host copies feeding CompressAI's coder, which include waiting for the kernels
   queued before them; about 0 with the compiled coder, whose copies are ``.numpy()`` calls
   inside the entropy stages), both from one extra pass under cProfile
   (``entropy_share.coder_split``). Writes ``throughput.json``.
4. ``refine``: does encoder-side latent refinement with many iterations beat effort 1?
   (``benchmarks/refine_study.py``, imported: ``RefiningCodec``, SGA with ``RefineParams(
   iterations=400, lr=0.005, tau_start=0.5, tau_end=0.05, stochastic=True, check_every=10)``.)
   Kodak kodim03, kodim23, kodim05, kodim19, 512x512 centre crops, qualities 35, 50, 65, 80:
   effort 1 vs the refined latent coded with RDOQ, every stream decoded by the product ``Codec``;
   PSNR, bpp, BD-rate per image (``archiver.bdrate.bd_rate``) and their mean, encode seconds per
   image. One refinement is timed first; if the whole would not fit the step's budget (what the
   earlier steps left, at most 150 s; 75 s are reserved for it), the iterations shrink (not
   below 100), then the images, and the log says so; the step is skipped if not even one image
   fits. Writes ``refine.json``.

Files under the output folder (7 of the 8 that may come back): ``summary.json`` (statuses,
budgets, seconds, skip reasons; written after every step), ``gpu_run.log`` (these progress
lines), ``w.safetensors``, ``w.log.jsonl``, ``cross_device.json``, ``throughput.json``,
``refine.json``.

``--dry-run`` runs the same steps on the CPU at toy size: 3 training steps on two small crops,
2 Kodak images x quality 50 cropped to 128x192 (CPU(1 thread) -> CPU(2 threads), as
cross_device.py does without CUDA), throughput on 2 crops of 128x192 at batch 1 and 2, refine
on one 64x64 crop of kodim03 x qualities 35 and 80 with 2 iterations.

Knobs (environment, or the options of the same name): GPU_RUN_COMPILE=1 (torch.compile),
GPU_RUN_TRAIN_MINUTES (5), GPU_RUN_LR (2e-4), GPU_RUN_BATCH (16), GPU_RUN_CROP (256),
GPU_RUN_TOTAL_S (540), GPU_RUN_RESUME (a weights file to resume from instead).
Exit status 0 when every step ran to its end (ok, skipped or failed: see summary.json); any
other status means the process died, and gpu_run.sh reruns the remaining steps with --continue.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

STEPS = ("train", "cross_device", "throughput", "refine")
CHECKPOINT = REPO / "training" / "checkpoint.safetensors"
QUALITIES = (10.0, 50.0, 90.0)
THROUGHPUT_QUALITY = 50.0
REFINE_IMAGES = ("kodim03", "kodim23", "kodim05", "kodim19")
REFINE_QUALITIES = (35.0, 50.0, 65.0, 80.0)
REFINE_CROP = 512
REFINE_ITERATIONS = 400  # what the refine step aims at; it shrinks to fit its budget, not below:
REFINE_MIN_ITERATIONS = 100  # (fewer were measured useless on the CPU: refine_study.py's findings)
OUT_FILES = ("summary.json", "gpu_run.log", "w.safetensors", "w.log.jsonl", "cross_device.json", "throughput.json",
             "refine.json")
MARGIN_S = 15  # left at the end of the overall budget (writing files, the process exiting)


def env_float(name: str, default: float) -> float:
    v = os.environ.get(name, "")
    return float(v) if v.strip() else default


# ---------------------------------------------------------------------------------------------
class Run:
    """Clock, progress lines (stdout and gpu_run.log) and summary.json of one call."""

    def __init__(self, out: Path, dry: bool, total_s: float, t0: float) -> None:
        self.out, self.dry, self.total_s, self.t0 = out, dry, total_s, t0
        self.log = out / "gpu_run.log"
        self.summary_path = out / "summary.json"
        self.summary: dict[str, Any] = {}
        if self.summary_path.exists():
            self.summary = json.loads(self.summary_path.read_text())
        self.summary.setdefault("steps", {})

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def say(self, msg: str) -> None:
        line = f"[gpu_run {self.elapsed():5.0f}s] {msg}"
        print(line, flush=True)
        with self.log.open("a") as fh:
            fh.write(line + "\n")

    def write(self) -> None:
        self.summary["elapsed_s"] = round(self.elapsed(), 1)
        names = {p.name for p in self.out.iterdir() if p.is_file() and p.suffix != ".tmp"}
        self.summary["files"] = sorted(names | {self.summary_path.name})
        tmp = self.summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.summary, indent=2) + "\n")
        tmp.replace(self.summary_path)

    def step(self, name: str, budget: float | None, need: float, fn: Callable[[float | None], dict]) -> None:
        """Run ``fn(budget)`` unless less than ``need`` seconds are available; record the outcome."""
        rec: dict[str, Any] = {"status": "running", "budget_s": None if budget is None else round(budget, 1),
                               "seconds": 0.0, "reason": None}
        self.summary["steps"][name] = rec
        if budget is not None and budget < need:
            rec.update(status="skipped", reason=f"{budget:.0f} s left for it, it needs at least {need:.0f} s")
            self.say(f"{name}: SKIPPED ({rec['reason']})")
            self.write()
            return
        self.say(f"{name}: start (budget {'none' if budget is None else f'{budget:.0f} s'})")
        self.write()
        t = time.time()
        try:
            extra = fn(budget)
            rec.update(status="ok", **extra)
        except SkipStep as e:
            rec.update(status="skipped", reason=str(e))
            self.say(f"{name}: SKIPPED ({e})")
        except Exception as e:  # noqa: BLE001 - record it, go on with the next step
            rec.update(status="failed", reason=f"{type(e).__name__}: {e}")
            for line in traceback.format_exc().rstrip().splitlines():
                self.say(f"{name}: {line}")
            self.say(f"{name}: FAILED ({type(e).__name__}: {e})")
        finally:
            rec["seconds"] = round(time.time() - t, 1)
            if self.dry is False and torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.write()
        self.say(f"{name}: {rec['status']} in {rec['seconds']:.0f} s")


class SkipStep(Exception):
    """A step cannot run here (missing input); its reason goes into summary.json."""


# ---------------------------------------------------------------------------------------------
def default_entry():
    from archiver.codec.registry import DEFAULT_MODEL, read_registry

    reg = read_registry()
    if DEFAULT_MODEL not in reg:
        raise SkipStep(f"the default model {DEFAULT_MODEL!r} is not in the registry")
    return reg[DEFAULT_MODEL]


def resume_source(run: Run) -> tuple[Path, str]:
    """The weights training resumes from: GPU_RUN_RESUME, else the training checkpoint if it has
    the default model's architecture, else the default model's shipped weights."""
    from archiver.train import checkpoint_preset

    entry = default_entry()
    forced = os.environ.get("GPU_RUN_RESUME", "").strip()
    if forced:
        return Path(forced), f"GPU_RUN_RESUME ({forced})"
    if CHECKPOINT.is_file():
        preset = checkpoint_preset(CHECKPOINT)
        if dataclasses.replace(preset, scale_rule=entry.preset.scale_rule) == entry.preset:
            return CHECKPOINT, f"training checkpoint {CHECKPOINT.relative_to(REPO)}"
        run.say(f"train: {CHECKPOINT.relative_to(REPO)} has another architecture ({preset.design}) than the "
                f"default {entry.model_id} ({entry.preset.design}): resuming from the shipped weights instead")
    else:
        run.say(f"train: no {CHECKPOINT.relative_to(REPO)}: resuming from the shipped weights of {entry.model_id}")
    if not entry.file.is_file():
        raise SkipStep(f"weights of {entry.model_id} are missing ({entry.file})")
    return entry.file, f"shipped weights of {entry.model_id}"


def toy_train_data(src: Path, crop: int, into: Path) -> Path:
    """Two small crops (2 x crop square, centred) of the first two images of ``src``."""
    from PIL import Image

    from archiver.train import find_images

    into.mkdir(parents=True, exist_ok=True)
    side = 2 * crop
    for i, f in enumerate(find_images([src])[:2]):
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            if min(w, h) < side:
                im = im.resize((max(side, w), max(side, h)))
                w, h = im.size
            x, y = (w - side) // 2, (h - side) // 2
            im.crop((x, y, x + side, y + side)).save(into / f"toy{i}.png")
    return into


def step_train(run: Run, a: argparse.Namespace, budget: float | None) -> dict:
    from archiver.train import TrainConfig, checkpoint_preset, train

    if not a.train_dir.is_dir():
        raise SkipStep(f"no training images at {a.train_dir} (benchmarks/gpu_prepare.sh run)")
    resume, source = resume_source(run)
    preset = checkpoint_preset(resume)
    run.say(f"train: resuming {preset.design} from {source}")
    out = run.out / "w.safetensors"
    log = out.with_suffix(".log.jsonl")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if a.dry:
        crop = max(64, preset.z_stride)
        data = toy_train_data(a.train_dir, crop, Path(tempfile.mkdtemp(prefix="gpu-run-train-")))
        kw = dict(steps=3, batch=2, crop=crop, device="cpu", max_minutes=None, log_every=1, compile=False)
    else:
        # model build, image decoding and the final save cost about this around the timed loop
        # (torch.compile's first-step compilation is inside it, so it shortens the training)
        minutes = min(a.train_minutes, (budget - 30.0) / 60)
        if minutes < 1:
            raise SkipStep(f"only {minutes * 60:.0f} s of training would fit")
        data = a.train_dir
        kw = dict(steps=10**7, batch=a.batch, crop=a.crop, device="cuda" if torch.cuda.is_available() else "cpu",
                  max_minutes=round(minutes, 2), log_every=25, compile=a.compile)
    # the entropy model at 4x the lr: the design study's lever (docs/MODEL.md, design study)
    cfg = TrainConfig(data=[data], out=out, resume=resume, lr=a.lr, amp=True, save_every=1000, seed=0,
                      entropy_lr_scale=4.0,
                      **{k: v for k, v in kw.items() if k in fields})
    run.say(f"train: {cfg.max_minutes or '-'} min / {cfg.steps} steps max, batch {cfg.batch}, crop {cfg.crop}, "
            f"lr {cfg.lr}, device {cfg.device}, compile {cfg.compile}, "
            f"bf16 autocast + channels-last {cfg.amp and cfg.device == 'cuda'}")
    stop = threading.Event()

    def tail() -> None:  # a plain progress line from the training log (no per-step host sync)
        while not stop.wait(5 if a.dry else 30):
            if log.exists():
                lines = log.read_text().splitlines()
                if lines:
                    run.say(f"train: {lines[-1]}")

    ticker = threading.Thread(target=tail, daemon=True)
    ticker.start()
    try:
        t = time.time()
        train(cfg)
        took = time.time() - t
    finally:
        stop.set()
        if a.dry:
            shutil.rmtree(data, ignore_errors=True)
    records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    last = records[-1] if records else {}
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:  # save_weights records the step count
        steps = int((f.metadata() or {}).get("steps", last.get("step", 0)))
    run.say(f"train: done, {steps} steps in {took:.0f} s; last log {json.dumps(last)}")
    size = out.stat().st_size
    if size > 16 * 2**20:
        run.say(f"train: WARNING {out.name} is {size / 2**20:.1f} MiB, over the 16 MiB a returned file may have")
    return {"resumed_from": source, "preset": preset.design, "steps": steps,
            "train_seconds": round(took, 1), "max_minutes": cfg.max_minutes, "batch": cfg.batch, "crop": cfg.crop,
            "lr": cfg.lr, "compile": bool(cfg.compile), "device": cfg.device, "last_log": last,
            "weights_bytes": size, "weights_sha256": hashlib.sha256(out.read_bytes()).hexdigest()}


# ---------------------------------------------------------------------------------------------
def kodak_files(a: argparse.Namespace) -> list[Path]:
    files = sorted(a.kodak.glob("*.png"))
    if not files:
        raise SkipStep(f"no Kodak PNGs at {a.kodak} (benchmarks/gpu_prepare.sh run)")
    return files


def loaded(arr: np.ndarray):
    from PIL import Image

    from archiver.images import from_pil

    return from_pil(Image.fromarray(np.ascontiguousarray(arr)), content_type="image/png")


def step_cross_device(run: Run, a: argparse.Namespace, budget: float | None) -> dict:
    from cross_device import check

    from archiver.images import load_image

    entry = default_entry()
    files = kodak_files(a)
    if a.dry:
        images = [loaded(load_image(f.read_bytes(), max_pixels=10**9).rgb[:128, :192]) for f in files[:2]]
        qualities = [50.0]
    else:
        images = [load_image(f.read_bytes(), max_pixels=10**9) for f in files]
        qualities = list(QUALITIES)
    run.say(f"cross_device: model {entry.model_id}, {len(images)} images x {len(qualities)} qualities")
    res = check(entry.model_id, images, qualities, max_seconds=None if budget is None else round(budget - 10, 1),
                use_cuda=False if a.dry else None)
    (run.out / "cross_device.json").write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res["results"].items():
        run.say(f"cross_device: {k}: {v['latent_mismatches']} latent mismatches of {v['encodes']}; "
                f"{v['images_with_pixel_diffs']} with pixel diffs ({v['pixels_differing']} px, "
                f"max {v['max_abs_pixel_diff']}){'' if v['complete'] else ' [budget ran out]'}")
    total = sum(v["encodes"] for v in res["results"].values())
    return {"model": entry.model_id, "complete": res["complete"], "encodes": total,
            "latent_mismatches": sum(v["latent_mismatches"] for v in res["results"].values())}


# ---------------------------------------------------------------------------------------------
class Stages:
    """Synchronised wall time per stage (the device's queue drained at each stage's end)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.s: dict[str, float] = {k: 0.0 for k in ("analysis", "entropy_encode", "synthesis", "entropy_decode")}

    def __call__(self, stage: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.s[stage] += time.perf_counter() - t
        return out


def synth_batch(codec, y_hat: torch.Tensor, inv_gain: torch.Tensor, h: int, w: int) -> np.ndarray:
    """``Codec._synth`` for a batch: (N, M, h', w') latents -> (N, h, w, 3) uint8."""
    x = codec.model.g_s(y_hat.float() * inv_gain)[:, :, :h, :w]
    x = torch.floor(x.clamp(0, 1) * 255.0 + 0.5)
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def batched_round_trip(codec, imgs: list, quality: float, stages: Stages) -> tuple[list[bytes], np.ndarray]:
    """Encode ``imgs`` (same size, one tile each) with batched networks, then verify-decode the
    real bytes; returns the containers and the verified pixels. Raises on a latent mismatch."""
    from archiver.codec import container as cx
    from archiver.errors import ContainerError
    from archiver.metrics import psnr

    model, dev = codec.model, codec.device
    h, w = imgs[0].height, imgs[0].width
    gain, inv_gain = codec._gains(quality)
    x = torch.cat([codec._to_tensor(im.rgb) for im in imgs])
    y = stages("analysis", lambda: model.g_a(x))
    coded, hashes = [], []
    for i in range(len(imgs)):
        hasher = hashlib.sha256()
        coded.append(stages("entropy_encode", lambda: codec.coder.encode(y[i : i + 1] * gain, hasher)))
        hashes.append(hasher.hexdigest())
    recon = stages("synthesis", lambda: synth_batch(codec, torch.cat([c.y_hat for c in coded]), inv_gain, h, w))
    blobs = []
    for im, c, digest, r in zip(imgs, coded, hashes, recon):
        psnr(im.rgb, r)  # the encoder reports it (EncodeResult.psnr)
        meta = cx.ContainerMeta(
            model_id=codec.model_id, weights_sha256=codec.weights_sha256, quality=float(quality), width=im.width,
            height=im.height, mode=im.mode, content_type=im.content_type, original_bytes=im.original_bytes,
            original_sha256=im.original_sha256, tile_size=codec.tile_size, n_tiles=1, latent_sha256=digest, extra={})
        blobs.append(cx.pack(cx.Container(meta=meta, tiles=[cx.TilePayload(row=0, col=0, z=c.z, y=[c.y], digests=c.digests)],
                                          icc=im.icc, exif=im.exif)))
    y_hats = []
    zs = codec.model.preset.z_stride
    for blob in blobs:
        c = cx.unpack(blob)
        hasher = hashlib.sha256()
        t = c.tiles[0]
        checks, check_of = c.tile_check(0)  # container v3: the checks are bound to the header
        y_hats.append(stages("entropy_decode", lambda: codec.coder.decode(
            t.z, t.y[0], (-(-h // zs), -(-w // zs)), dev, hasher, checks=checks, check_of=check_of)))
        if hasher.hexdigest() != c.meta.latent_sha256:
            raise ContainerError("batched verification decode: latent mismatch", code="latent_mismatch")
    rgb = stages("synthesis", lambda: synth_batch(codec, torch.cat(y_hats), inv_gain, h, w))
    return blobs, rgb


def throughput_images(a: argparse.Namespace) -> list:
    from archiver.images import load_image

    out = []
    files = kodak_files(a)
    for f in files[: 2 if a.dry else 16]:
        rgb = load_image(f.read_bytes(), max_pixels=10**9).rgb
        if rgb.shape[0] > rgb.shape[1]:
            rgb = rgb.transpose(1, 0, 2)  # portrait -> landscape: one shape for batching
        if a.dry:
            rgb = rgb[:128, :192]
        out.append(loaded(rgb))
    if len({(im.height, im.width) for im in out}) != 1:
        raise SkipStep("throughput images differ in size")
    return out


def step_throughput(run: Run, a: argparse.Namespace, budget: float | None) -> dict:
    from entropy_share import coder_split

    from archiver.codec import Codec
    from archiver.errors import ContainerError

    entry = default_entry()
    images = throughput_images(a)
    dev = "cpu" if a.dry or not torch.cuda.is_available() else "cuda"
    codec = Codec.load(entry.model_id, dev)
    if max(images[0].height, images[0].width) > codec.tile_size:
        raise SkipStep("images larger than one tile")
    big = 2 if a.dry else 16
    modes = [("api", 1), ("batched", 1), ("batched", big), ("threads", big)]
    q = THROUGHPUT_QUALITY
    n = len(images)
    end = time.monotonic() + (budget if budget is not None else 1e9)
    run.say(f"throughput: model {entry.model_id} on {codec.device_name}, {n} images "
            f"{images[0].width}x{images[0].height}, quality {q:g}, modes {modes}")

    def api_one(im) -> None:
        codec.decode(codec.encode(im, quality=q))

    pool = ThreadPoolExecutor(big)

    def one_pass(mode: str, batch: int, stages: Stages | None,
                 imgs: list | None = None) -> list[tuple[bytes, np.ndarray]]:
        """One pass over ``imgs`` (all images); for ``batched``, (container, verified pixels) of each."""
        imgs = images if imgs is None else imgs
        if mode == "api":
            for im in imgs:
                api_one(im)
        elif mode == "threads":
            list(pool.map(api_one, imgs))
        else:
            done: list[tuple[bytes, np.ndarray]] = []
            for i in range(0, len(imgs), batch):
                blobs, rgb = batched_round_trip(codec, imgs[i : i + batch], q, stages or Stages(codec.device))
                done += list(zip(blobs, rgb))
            return done
        return []

    results, skipped = [], []
    for k, (mode, batch) in enumerate(modes):
        left = end - time.monotonic()
        share = left / (len(modes) - k)
        rec: dict[str, Any] = {"mode": mode, "batch": batch, "images": 0, "passes": 0, "seconds": 0.0,
                               "images_per_s": None, "ms_per_image": None, "gpu_networks_ms": None,
                               "cpu_rans_ms": None, "to_host_ms": None, "api_decode_check": None, "warmup_s": None}
        if not a.dry and share < 3:  # (the dry run always runs every mode once: its form is tested)
            skipped.append(f"{mode} batch {batch}: {left:.0f} s left")
            run.say(f"throughput: SKIPPED {mode} batch {batch} ({left:.0f} s left)")
            results.append(rec)
            continue
        stop_at = time.monotonic() + share
        t = time.perf_counter()
        one_pass(mode, batch, None, images[:batch])  # warm-up (one batch): allocator, kernels, TorchScript
        warm = time.perf_counter() - t
        stages = Stages(codec.device)
        passes, spent = 0, 0.0
        # timed passes while another fits, keeping one pass for the profile (not for threads)
        keep = 0 if mode == "threads" else 1
        while passes == 0 or time.monotonic() + (passes and spent / passes) * (1 + keep) < stop_at:
            t = time.perf_counter()
            one_pass(mode, batch, stages)
            spent += time.perf_counter() - t
            passes += 1
            if a.dry:
                break
        done = passes * n
        rec.update(images=done, passes=passes, seconds=round(spent, 3), images_per_s=round(done / spent, 3),
                   warmup_s=round(warm, 2))
        if mode == "batched":
            ms = {k2: round(1000 * v / done, 2) for k2, v in stages.s.items()}
            ms["other"] = round(1000 * spent / done - sum(ms.values()), 2)
            rec["ms_per_image"] = ms
            rec["gpu_networks_ms"] = round(ms["analysis"] + ms["synthesis"], 2)
        # one profiled pass (and for batched, API decodes of one batch) if it fits the step's end
        if keep and (a.dry or time.monotonic() + 2 * spent / passes < end):
            prof = cProfile.Profile()
            prof.enable()
            pairs = one_pass(mode, batch, None)
            prof.disable()
            split = coder_split(prof)
            rec["cpu_rans_ms"] = round(1000 * split["rans"] / n, 2)
            rec["to_host_ms"] = round(1000 * split["tolist"] / n, 2)
            if pairs:  # the batched containers decode with the public API, to the same latents
                bad, max_diff = 0, 0
                for blob, want in pairs[:batch]:
                    try:
                        got = codec.decode(blob).rgb
                    except ContainerError as e:
                        if e.code != "latent_mismatch":
                            raise
                        bad += 1
                        continue
                    max_diff = max(max_diff, int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max()))
                rec["api_decode_check"] = {"containers": len(pairs[:batch]), "latent_mismatches": bad,
                                           "max_abs_pixel_diff": max_diff}
        results.append(rec)
        run.say(f"throughput: {mode} batch {batch}: {rec['images_per_s']} images/s ({done} images, {passes} passes); "
                f"stages ms/image {rec['ms_per_image']}; rANS {rec['cpu_rans_ms']} ms, to host {rec['to_host_ms']} ms")
    pool.shutdown()
    machine = (f"{torch.cuda.get_device_name()} + {platform.processor() or platform.machine()}" if dev == "cuda"
               else f"CPU only ({platform.machine()}, {torch.get_num_threads()} threads)")
    res = {"date": dt.date.today().isoformat(), "machine": machine, "torch": torch.__version__,
           "device": codec.device_name, "model": entry.model_id, "width": images[0].width,
           "height": images[0].height, "images": n, "quality": q, "budget_s": budget, "skipped": skipped,
           "what": ("encode (g_a, entropy model + rANS, g_s reconstruction + PSNR, container) + verification "
                    "decode of the real bytes, fixed quality, no search; api = Codec.encode/decode one image at a "
                    "time; batched = g_a/g_s called per batch, entropy coding per image; threads = that many "
                    "threads sharing one Codec"), "results": results}
    (run.out / "throughput.json").write_text(json.dumps(res, indent=2) + "\n")
    best = max((r for r in results if r["images_per_s"]), key=lambda r: r["images_per_s"], default=None)
    return {"model": entry.model_id, "best": None if best is None else f"{best['mode']} batch {best['batch']}: "
            f"{best['images_per_s']} images/s", "skipped_modes": len(skipped)}


# ---------------------------------------------------------------------------------------------
def refine_plan(seconds: float, fixed_s: float, iter_s: float, images: int, qualities: int, iterations: int,
                min_iterations: int) -> tuple[int, int]:
    """(iterations, images) that fit ``seconds`` when each image costs ``qualities`` x (``fixed_s``
    of coding + ``iter_s`` per iteration): the iterations shrink first, down to ``min_iterations``,
    then the images (with as many iterations as then fit, up to ``iterations``); (0, 0) when not
    even one image fits at ``min_iterations``."""

    def most(k: int) -> int:  # the iterations that fit k images (-1: not even none)
        per = seconds / (k * qualities) - fixed_s
        if per < 0:
            return -1
        return iterations if iter_s <= 0 else min(iterations, int(per / iter_s))

    if most(images) >= min_iterations:
        return most(images), images
    k = images - 1
    while k >= 1 and most(k) < min_iterations:
        k -= 1
    return (most(k), k) if k >= 1 else (0, 0)


def refine_images(a: argparse.Namespace) -> list[tuple[str, Any]]:
    """(name, centre crop) of the refine step's Kodak images that are there."""
    from archiver.images import load_image

    crop = 64 if a.dry else REFINE_CROP
    out = []
    for name in REFINE_IMAGES[: 1 if a.dry else None]:
        f = a.kodak / f"{name}.png"
        if f.is_file():
            rgb = load_image(f.read_bytes(), max_pixels=10**9).rgb
            y, x = max(0, (rgb.shape[0] - crop) // 2), max(0, (rgb.shape[1] - crop) // 2)
            out.append((name, loaded(rgb[y : y + crop, x : x + crop])))
    if not out:
        raise SkipStep(f"none of {', '.join(REFINE_IMAGES)} at {a.kodak} (benchmarks/gpu_prepare.sh run)")
    return out


def step_refine(run: Run, a: argparse.Namespace, budget: float | None) -> dict:
    """Latent refinement by gradient (SGA; benchmarks/refine_study.py) with many iterations against
    effort 1: real bitstreams, decoded by the product Codec, BD-rate per image."""
    from refine_study import RefineParams, RefiningCodec, rd_curve, refine

    from archiver.bdrate import bd_rate
    from archiver.codec import Codec
    from archiver.codec.model import quality_to_lambda

    end = time.monotonic() + (budget if budget is not None else 1e9)
    margin = 3.0 if a.dry else 10.0  # the JSON, the BD-rates, the process's end
    entry = default_entry()
    images = refine_images(a)
    qualities = [35.0, 80.0] if a.dry else list(REFINE_QUALITIES)
    want = 2 if a.dry else REFINE_ITERATIONS
    floor = 1 if a.dry else REFINE_MIN_ITERATIONS
    dev = "cpu" if a.dry or not torch.cuda.is_available() else "cuda"
    base = Codec.load(entry.model_id, dev)  # the product codec: effort 1, and every decode
    ref = RefiningCodec(base.model, base.entry, base.device, base.tile_size)  # the same model
    params = RefineParams(iterations=want, lr=0.005, tau_start=0.5, tau_end=0.05, stochastic=True, check_every=10)

    def sync() -> None:
        if base.device.type == "cuda":
            torch.cuda.synchronize(base.device)

    # probe: one effort-1 encode + decode (the second of two: the first warms up), and one refinement
    im0 = images[0][1]
    q0 = qualities[len(qualities) // 2]
    for _ in range(2):
        t = time.perf_counter()
        base.decode(base.encode(im0, quality=q0, effort=1))
        codec_s = time.perf_counter() - t
    with torch.no_grad():  # (not inference mode: refine differentiates through x's loss)
        x = base._to_tensor(im0.rgb)
        yg = base.model.g_a(x) * base._gains(q0)[0]
    inv_gain = base._gains(q0)[1]
    lam = quality_to_lambda(q0, base.model.preset)
    probe = 2 if a.dry else 20
    refine(base.model, x, yg, inv_gain, lam, dataclasses.replace(params, iterations=2))  # warm-up
    sync()
    t = time.perf_counter()
    refine(base.model, x, yg, inv_gain, lam, dataclasses.replace(params, iterations=probe))
    sync()
    iter_s = (time.perf_counter() - t) / probe
    fixed_s = 2 * codec_s  # per image and quality: both encodes (the refined one's g_a + RDOQ too) and decodes
    left = end - time.monotonic() - margin
    iterations, n_img = refine_plan(0.9 * left, fixed_s, iter_s, len(images), len(qualities), want, floor)
    run.say(f"refine: model {entry.model_id} on {base.device_name}; probe {1000 * iter_s:.1f} ms per iteration "
            f"({images[0][1].width}x{images[0][1].height}), {fixed_s:.2f} s of coding per image and quality; "
            f"{left:.0f} s left")
    if n_img == 0:
        need = len(qualities) * (fixed_s + floor * iter_s)
        raise SkipStep(f"one image at {floor} iterations x {len(qualities)} qualities needs ~{need:.0f} s, "
                       f"{left:.0f} s left")
    shrunk = None
    if (iterations, n_img) != (want, len(images)):
        shrunk = f"{want} iterations x {len(images)} images -> {iterations} x {n_img} to fit {left:.0f} s"
        run.say(f"refine: SHRUNK {shrunk}")
    params = dataclasses.replace(params, iterations=iterations)
    ref.params = params
    run.say(f"refine: {n_img} images {images[0][1].width}x{images[0][1].height} x qualities "
            f"{', '.join(f'{q:g}' for q in qualities)}: effort 1 vs {iterations} iterations of SGA")

    results: dict[str, Any] = {}
    streams, decode_errors, complete = 0, [], True
    per_image = None
    for name, im in images[:n_img]:
        if per_image is not None and time.monotonic() + per_image > end - margin:
            complete = False
            run.say(f"refine: stopping before {name} (its ~{per_image:.0f} s would not fit)")
            break
        t_img = time.monotonic()
        curves: dict[str, Any] = {}
        for label, codec in (("effort1", base), ("refined", ref)):
            c = rd_curve(codec, base, im, qualities, sync)  # the product decoder, on the real bytes
            decode_errors += [f"{name} {label} {e}" for e in c["errors"]]
            streams += len(c["bpp"])
            curves[label] = {"bpp": [round(v, 5) for v in c["bpp"]], "psnr": [round(v, 4) for v in c["psnr"]],
                             "encode_s": [round(v, 3) for v in c["encode_s"]]}
        try:
            bd: float | None = round(bd_rate(curves["effort1"]["bpp"], curves["effort1"]["psnr"],
                                             curves["refined"]["bpp"], curves["refined"]["psnr"]), 3)
        except ValueError as e:  # too few decoded points, or curves that do not overlap
            bd = None
            run.say(f"refine: {name}: no BD-rate ({e})")
        results[name] = {**curves, "bd_rate_pct": bd,
                         "encode_s_per_image": {k: round(sum(v["encode_s"]), 2) for k, v in curves.items()}}
        per_image = time.monotonic() - t_img
        run.say(f"refine: {name}: BD-rate refined vs effort 1 {'-' if bd is None else f'{bd:+.2f} %'}; encode "
                f"s per image effort 1 {results[name]['encode_s_per_image']['effort1']}, refined "
                f"{results[name]['encode_s_per_image']['refined']}")
    bds = [r["bd_rate_pct"] for r in results.values() if r["bd_rate_pct"] is not None]
    mean = round(float(np.mean(bds)), 3) if bds else None
    res = {"date": dt.date.today().isoformat(), "device": base.device_name, "torch": torch.__version__,
           "model": entry.model_id, "crop": [images[0][1].width, images[0][1].height], "qualities": qualities,
           "params": dataclasses.asdict(params), "rdoq": ref.rdoq, "iterations_wanted": want, "shrunk": shrunk,
           "probe": {"ms_per_iteration": round(1000 * iter_s, 2), "coding_s_per_image_quality": round(fixed_s, 3)},
           "budget_s": None if budget is None else round(budget, 1), "complete": complete,
           "streams_decoded": streams, "decode_errors": decode_errors,
           "mean_bd_rate_pct": mean, "results": results,
           "what": ("effort 1 (RDOQ) vs RefiningCodec (benchmarks/refine_study.py: the gained latent refined by "
                    "SGA through g_s and the float entropy model, then coded by the exact coder with RDOQ); every "
                    "stream decoded by the product Codec; BD-rate of refined vs effort 1, negative = fewer bits")}
    (run.out / "refine.json").write_text(json.dumps(res, indent=2) + "\n")
    run.say(f"refine: mean BD-rate {'-' if mean is None else f'{mean:+.2f} %'} over {len(bds)} images, "
            f"{streams} streams decoded, {len(decode_errors)} decode errors")
    return {"model": entry.model_id, "iterations": iterations, "images": len(results), "complete": complete,
            "mean_bd_rate_pct": mean, "streams_decoded": streams, "shrunk": shrunk}


# ---------------------------------------------------------------------------------------------
def record(folder: Path, bench: Path) -> list[str]:
    """Append what a call brought back (``folder``: its files) to ``bench`` (docs/BENCHMARKS.md):
    the call, the training run, the cross-device counts (whatever they are), the rates and the
    refinement's BD-rates."""
    from cross_device import record_lines

    def load(name: str) -> dict | None:
        f = folder / name
        return json.loads(f.read_text()) if f.is_file() else None

    summary = load("summary.json") or {"steps": {}}
    steps = summary["steps"]
    statuses = "; ".join(f"{k} {v['status']}" + (f" ({v['reason']})" if v.get("reason") else "")
                         for k, v in steps.items())
    date = (summary.get("started") or dt.date.today().isoformat())[:10]
    lines = [f"\n### One GPU call (benchmarks/gpu_run.sh), {date}\n",
             f"- command: `bash benchmarks/gpu_run.sh`{' (GPU_RUN_COMPILE=1)' if summary.get('compile') else ''}, "
             f"carry `.whl`, `.gpu` (benchmarks/gpu_prepare.sh run); {summary.get('device')}; torch "
             f"{summary.get('torch')}; default model {summary.get('model')}; {summary.get('elapsed_s')} s of "
             f"{summary.get('total_s')}; {statuses}"]
    t = steps.get("train", {})
    if t.get("status") == "ok":
        last = t.get("last_log", {})
        lines.append(f"- training: {t['preset']} resumed from {t['resumed_from']}; {t['steps']} steps in "
                     f"{t['train_seconds']} s (batch {t['batch']}, crop {t['crop']}, lr {t['lr']}, compile "
                     f"{t['compile']}); last logged step: bpp {last.get('bpp')}, PSNR {last.get('psnr')} dB, loss "
                     f"{last.get('loss')}; weights sha256 {t['weights_sha256'][:12]} (a candidate: registered "
                     "under a new id only if it measures better on Kodak than the default)")
    cd = load("cross_device.json")
    if cd:
        rows = record_lines(cd, "")[2:]  # under this heading: machine line, then one per direction
        cut = "" if cd.get("complete", True) else " (its time budget ran out)"
        rows[0] = f"- cross-device check{cut}: " + rows[0][2:]
        lines += rows
    tp = load("throughput.json")
    if tp:
        lines += ["", f"Throughput, {tp['width']}x{tp['height']} at quality {tp['quality']:g}, model {tp['model']} on "
                  f"{tp['device']} ({tp['what']}); ms per image:", "",
                  "| mode | batch | images/s | g_a | entropy enc | g_s (both) | entropy dec | other "
                  "| rANS (CPU, GIL) | to host |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in tp["results"]:
            ms = r["ms_per_image"] or {}

            def f(v: Any) -> str:
                return "-" if v is None else f"{v:g}"

            lines.append(f"| {r['mode']} | {r['batch']} | {f(r['images_per_s'])} | {f(ms.get('analysis'))} | "
                         f"{f(ms.get('entropy_encode'))} | {f(ms.get('synthesis'))} | {f(ms.get('entropy_decode'))} | "
                         f"{f(ms.get('other'))} | {f(r['cpu_rans_ms'])} | {f(r['to_host_ms'])} |")
    rf = load("refine.json")
    if rf:
        p = rf["params"]
        cut = "" if rf["complete"] else " (its time budget ran out)"
        mean = "-" if rf["mean_bd_rate_pct"] is None else f"{rf['mean_bd_rate_pct']:+.2f} %"
        lines += ["", f"Latent refinement{cut}: {rf['what']}; {p['iterations']} "
                  f"iterations{' (shrunk: ' + rf['shrunk'] + ')' if rf['shrunk'] else ''}, lr {p['lr']}, tau "
                  f"{p['tau_start']} -> {p['tau_end']}, stochastic {p['stochastic']}, {rf['crop'][0]}x{rf['crop'][1]} "
                  f"centre crops, qualities {', '.join(f'{q:g}' for q in rf['qualities'])}, model {rf['model']} on "
                  f"{rf['device']}; {rf['streams_decoded']} streams decoded, {len(rf['decode_errors'])} decode "
                  f"errors; mean BD-rate {mean}:", "",
                  "| image | BD-rate vs effort 1 | encode s/image, effort 1 | encode s/image, refined |",
                  "|---|---|---|---|"]
        for name, r in rf["results"].items():
            bd = "-" if r["bd_rate_pct"] is None else f"{r['bd_rate_pct']:+.2f} %"
            lines.append(f"| {name} | {bd} | {r['encode_s_per_image']['effort1']:g} | "
                         f"{r['encode_s_per_image']['refined']:g} |")
    with bench.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    ap.add_argument("--dry-run", dest="dry", action="store_true", help="CPU, toy sizes (< 2 minutes)")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--continue", dest="cont", action="store_true",
                    help="skip the steps summary.json already records (a step left 'running' died: 'crashed')")
    ap.add_argument("--total-s", type=float, default=None, help="overall budget from GPU_RUN_T0 [540; dry run 110]")
    ap.add_argument("--train-minutes", type=float, default=env_float("GPU_RUN_TRAIN_MINUTES", 5.0))
    ap.add_argument("--lr", type=float, default=env_float("GPU_RUN_LR", 2e-4))
    ap.add_argument("--batch", type=int, default=int(env_float("GPU_RUN_BATCH", 16)))
    ap.add_argument("--crop", type=int, default=int(env_float("GPU_RUN_CROP", 256)))
    ap.add_argument("--compile", action="store_true", default=os.environ.get("GPU_RUN_COMPILE", "0") == "1")
    ap.add_argument("--train-dir", type=Path, default=None, help="[.gpu/train; dry run: it or shard-00]")
    ap.add_argument("--kodak", type=Path, default=None, help="[.gpu/kodak; dry run: it or the shared Kodak]")
    ap.add_argument("--record", type=Path, default=None, metavar="DIR",
                    help="run nothing: append the results in DIR (a call's files) to --bench-file")
    ap.add_argument("--bench-file", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    a = ap.parse_args(argv)
    if a.record:
        print("\n".join(record(a.record, a.bench_file)))
        return 0
    if a.out is None:
        ap.error("--out (or $OUT) is required")
    a.out.mkdir(parents=True, exist_ok=True)
    if a.dry:
        sys.path.insert(0, str(REPO / "tests"))
        from shared_paths import KODAK, SHARED

        a.train_dir = a.train_dir or next((p for p in (REPO / ".gpu/train", SHARED / "data/train/shard-00")
                                           if p.is_dir()), REPO / ".gpu/train")
        a.kodak = a.kodak or next((p for p in (REPO / ".gpu/kodak", KODAK) if p.is_dir()), REPO / ".gpu/kodak")
    a.train_dir = a.train_dir or REPO / ".gpu/train"
    a.kodak = a.kodak or REPO / ".gpu/kodak"
    total = a.total_s or env_float("GPU_RUN_TOTAL_S", 110.0 if a.dry else 540.0)
    t0 = env_float("GPU_RUN_T0", time.time())
    if not a.cont:  # a fresh call: nothing of an earlier one in the same folder
        for name in OUT_FILES:  # (gpu_run.log is appended to: gpu_run.sh starts it)
            if name != "gpu_run.log":
                (a.out / name).unlink(missing_ok=True)
    run = Run(a.out, a.dry, total, t0)
    if not a.dry and not torch.cuda.is_available() and os.environ.get("GPU_RUN_ALLOW_CPU") != "1":
        run.say("no CUDA device: this is the GPU call (use --dry-run on a CPU, or GPU_RUN_ALLOW_CPU=1)")
        return 2
    if a.cont:
        for name, rec in run.summary["steps"].items():
            if rec.get("status") == "running":
                rec.update(status="crashed", reason="the process died during this step")
                run.say(f"{name}: the previous process died during it: recorded as crashed")
    from archiver.codec.registry import DEFAULT_MODEL

    started = run.summary.get("started") or dt.datetime.fromtimestamp(t0).isoformat(timespec="seconds")
    run.summary.update(mode="dry-run" if a.dry else "gpu", total_s=total, started=started,
                       device=torch.cuda.get_device_name() if torch.cuda.is_available() and not a.dry else "cpu",
                       torch=torch.__version__, python=platform.python_version(), model=DEFAULT_MODEL,
                       compile=bool(a.compile))
    run.say(f"{'DRY RUN (CPU, toy sizes)' if a.dry else 'GPU run'}: default model {DEFAULT_MODEL}, torch "
            f"{torch.__version__}, device {run.summary['device']}, budget {total:.0f} s ({run.left():.0f} s left), "
            f"out {a.out}")
    wanted = [s for s in a.only.split(",") if s]
    unknown = set(wanted) - set(STEPS)
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}; known: {STEPS}")
    # seconds each later step keeps in reserve (GPU); the dry run is bounded by its toy sizes
    reserve = {"train": 0.0, "cross_device": 0.0 if a.dry else 120.0, "throughput": 0.0 if a.dry else 45.0,
               "refine": 0.0 if a.dry else 75.0}
    cap = {"train": None, "cross_device": None, "throughput": None if a.dry else 60.0,
           "refine": None if a.dry else 150.0}
    need = {"train": 5.0 if a.dry else 90.0, "cross_device": 5.0 if a.dry else 20.0,
            "throughput": 5.0 if a.dry else 15.0, "refine": 5.0 if a.dry else 30.0}
    fns = {"train": step_train, "cross_device": step_cross_device, "throughput": step_throughput,
           "refine": step_refine}
    for i, name in enumerate(STEPS):
        if name not in wanted:
            continue
        if a.cont and name in run.summary["steps"]:
            run.say(f"{name}: already {run.summary['steps'][name]['status']} (--continue)")
            continue
        later = sum(reserve[s] for s in STEPS[i + 1:] if s in wanted and s not in run.summary["steps"])
        budget = run.left() - MARGIN_S - later
        if cap[name] is not None:
            budget = min(budget, cap[name])
        run.step(name, budget, need[name], lambda b, f=fns[name]: f(run, a, b))
    statuses = {k: v["status"] for k, v in run.summary["steps"].items()}
    run.write()
    run.say(f"done in {run.elapsed():.0f} s: {statuses}; files in {a.out}: {', '.join(run.summary['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
