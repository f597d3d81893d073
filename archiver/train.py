"""Training of the variable-rate model (``archiver train``).

Design choices, and why:
* Images are decoded once into memory and random crops are cut from there: JPEG decoding would
  otherwise dominate a step on small machines, and the whole training set fits in RAM.
* Quality is sampled per image, uniformly in [0, 100], with the matching lambda: one model must
  serve every rate, and interpolated gains are trained directly, not only the grid levels.
* Checkpoints are the shipped weight format itself (fp16 float transforms, safetensors). The GPU
  machine's transfers are small, so a run resumes from weights alone; the optimiser restarts.
  A fresh Adam takes full-size steps before its moment estimates settle, which set a resumed
  model back (measured: compact-v2's restart at lr 3e-4), so the learning rate warms up linearly.
* The schedule (``learning_rate``) follows whichever budget runs out first, steps or
  ``max_minutes``: a run capped by wall time (10-minute GPU commands, a CPU session) still
  reaches the low-lr end of its schedule, where most of a short run's gain is made.
* Smooth content (``upsample_prob``): the training photos are downscaled from originals up to 4K,
  so they hold more detail per pixel than a camera's photo at its native size, and the model
  lost most against AVIF on large, smooth photos (issue 24: +29.5 % BD-rate on Kodak upsampled
  2x against +7 % on Kodak). A share of the crops is therefore cut smaller and enlarged to the
  crop size by a random factor in [1, ``upsample_max``] with a random filter (bilinear, bicubic,
  Lanczos: one filter alone would teach the model that filter's spectrum, and the 2x proxy is
  Lanczos), which gives the smooth gradients and soft edges of a native-resolution photo.
* Sources known to be small, artefact-laden web JPEGs (ImageNet samples, style-transfer
  examples) are sampled less often: they teach the model to reproduce JPEG blocking.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from .codec.complete import transform_parameters
from .codec.model import ConvNeXtCharm, Preset, build_model, load_state, quality_lambdas
from .codec.registry import EXACT_PREFIXES, file_preset, save_weights
from .errors import WeightsIntegrityError

DOWNWEIGHTED_SOURCES = ("EliSchwartz/imagenet-sample-images", "luanfujun/deep-photo-styletransfer")
DOWNWEIGHT = 0.3


@dataclass
class TrainConfig:
    data: list[Path]
    out: Path
    preset: str = "complete8"  # ignored with resume: the file names its own preset
    resume: Path | None = None
    steps: int = 1000
    batch: int = 8
    crop: int = 128
    lr: float = 2e-4
    seed: int = 0
    log_every: int = 25
    save_every: int = 250
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    max_minutes: float | None = None
    schedule: str = "cosine"  # or "step": full lr, then 0.1x for the last 10 %
    warmup: int = 100  # steps of linear warm-up (0: none)
    # how q is drawn per image: "uniform" in [0, 100], or "high" = 100 * u^(1/2), which puts
    # 3/4 of the samples in the upper half, where the archive works (35-45 dB)
    q_sampling: str = "uniform"
    # lr factor of the complete design's DCT stem/unstem (see complete.transform_parameters)
    transform_lr_scale: float = 0.1
    threads: int = 0  # torch CPU threads (0: torch's default)
    # lr factor of the entropy model (h_s, slice transforms, LRP, z density): its outputs must grow
    # to tens of quantiser steps from a random start, which at the transforms' lr takes
    # thousands of steps (docs/MODEL.md, design study)
    entropy_lr_scale: float = 1.0
    # grow the resumed model into this preset: it may only add the checkerboard context, whose
    # new layers start as a no-op (SpatialContext), so training continues where it was
    extend_to: str | None = None
    # with resume: the architecture to build instead of the one the file's header names (a
    # registered model's preset, whose scale rule was chosen at registration)
    resume_preset: Preset | None = None
    # share of crops enlarged from a smaller cut (smooth content, see the module docstring) and
    # the largest enlargement factor
    upsample_prob: float = 0.0
    upsample_max: float = 2.0
    # train only the parameters whose names start with one of these (empty: all). A study of a
    # grown context trains only its new layers, so the transforms and thus the distortion stay
    # those of the start and the measured gain is the context's own.
    train_only: tuple[str, ...] = ()
    # with extend_to a split-anchor preset: set each newly grown split-anchor context to the
    # least-squares linear predictor from its decoded neighbours (context_fit.py) before training,
    # instead of leaving it a no-op that gradient descent barely moves
    fit_context: bool = False
    # > 0: train on the symbols effort 1's RDOQ would write at this strength (api.RDO_STRENGTH is
    # 1.5), not on rounded ones (ConvNeXtCharm._train_quantize); 0: rounding, as always before
    rdo_strength: float = 0.0


LR_FLOOR = 0.05  # the cosine schedule ends at this fraction of the peak lr


def learning_rate(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """The lr for ``step`` (1-based) after ``elapsed_s`` seconds of training."""
    frac = step / cfg.steps
    if cfg.max_minutes:
        frac = max(frac, elapsed_s / (cfg.max_minutes * 60))
    frac = min(frac, 1.0)
    if cfg.schedule == "step":
        lr = cfg.lr * (0.1 if frac > 0.9 else 1.0)
    elif cfg.schedule == "cosine":
        lr = cfg.lr * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * frac)))
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r} (cosine or step)")
    if cfg.warmup > 0 and step <= cfg.warmup:
        lr *= step / cfg.warmup
    return lr


def find_images(roots: list[Path]) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
    files: list[Path] = []
    for r in roots:
        files += sorted(p for p in r.rglob("*") if p.suffix.lower() in exts)
    if not files:
        raise SystemExit(f"no training images under {', '.join(map(str, roots))}")
    return files


def source_weights(files: list[Path]) -> list[float]:
    """Per-file sampling weights from a manifest.csv next to the shards, when there is one."""
    by_name: dict[str, str] = {}
    for f in {p.parent.parent / "manifest.csv" for p in files} | {p.parent / "manifest.csv" for p in files}:
        if f.exists():
            with f.open() as fh:
                for row in csv.DictReader(fh):
                    by_name[Path(row["file"]).name] = row.get("source", "")
    return [DOWNWEIGHT if by_name.get(p.name, "") in DOWNWEIGHTED_SOURCES else 1.0 for p in files]


class CropSampler:
    """Random crops from images held in memory. ``names`` lists the images crops are cut from
    (those at least ``crop`` on each side): what training actually saw, for the record."""

    #: the filters an enlarged crop is resampled with (one drawn per crop)
    UPSAMPLE_FILTERS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)

    def __init__(self, files: list[Path], crop: int, seed: int, upsample_prob: float = 0.0,
                 upsample_max: float = 2.0) -> None:
        if not 0.0 <= upsample_prob <= 1.0:
            raise ValueError(f"upsample_prob must be in [0, 1], not {upsample_prob}")
        if upsample_max < 1.0:
            raise ValueError(f"upsample_max must be at least 1, not {upsample_max}")
        self.rng = random.Random(seed)
        self.crop = crop
        self.upsample_prob = upsample_prob
        self.upsample_max = upsample_max
        self.images: list[np.ndarray] = []
        self.weights: list[float] = []
        self.names: list[str] = []
        for p, w in zip(files, source_weights(files)):
            with Image.open(p) as im:
                self._add(str(p), np.asarray(im.convert("RGB")), w)

    @classmethod
    def from_arrays(cls, images: dict[str, np.ndarray], crop: int, seed: int) -> CropSampler:
        """A sampler over images already decoded (``archiver finetune``: objects fetched from the
        user's storage into memory, never written anywhere), keyed by their names."""
        self = cls([], crop, seed)
        for name, a in images.items():
            self._add(name, a, 1.0)
        return self

    def _add(self, name: str, a: np.ndarray, weight: float) -> None:
        if min(a.shape[:2]) >= self.crop:
            self.images.append(a)
            self.weights.append(weight)
            self.names.append(name)

    def batch(self, n: int) -> torch.Tensor:
        out = np.empty((n, self.crop, self.crop, 3), dtype=np.uint8)
        for i, a in enumerate(self.rng.choices(self.images, weights=self.weights, k=n)):
            c = self._crop(a)
            if self.rng.random() < 0.5:
                c = c[:, ::-1]
            out[i] = c
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0

    def _crop(self, a: np.ndarray) -> np.ndarray:
        """A ``crop`` x ``crop`` cut of ``a``; with probability ``upsample_prob`` a smaller cut
        enlarged to that size (smooth content)."""
        size = self.crop
        enlarge = self.upsample_prob > 0 and self.rng.random() < self.upsample_prob
        if enlarge:
            size = max(16, round(self.crop / self.rng.uniform(1.0, self.upsample_max)))
        y = self.rng.randrange(a.shape[0] - size + 1)
        x = self.rng.randrange(a.shape[1] - size + 1)
        c = a[y : y + size, x : x + size]
        if enlarge:
            resample = self.rng.choice(self.UPSAMPLE_FILTERS)
            c = np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((self.crop, self.crop), resample))
        return c


def checkpoint_preset(path: Path) -> Preset:
    """The architecture a weights file was written with (its safetensors metadata)."""
    try:
        return file_preset(path)[0]
    except WeightsIntegrityError as e:
        raise SystemExit(str(e)) from None


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors, fp16 transforms widened to fp32 for training (fp64 kept)."""
    return {k: (v.float() if v.is_floating_point() and v.dtype != torch.float64 else v)
            for k, v in load_file(str(path)).items()}


GROWN_PREFIXES = ("spatial_tf.", "anchor_tf.", "lattice_tf.")


def grow_checkpoint(model: ConvNeXtCharm, path: Path) -> None:
    """Load a checkpoint into the same architecture with more spatial context: the checkerboard
    (channel -> checkerboard), split anchors (more ``split_anchors``) or a deeper split
    (``split_depth``). Only those context layers may be missing from the file; they start as a
    no-op (SpatialContext), so the grown model codes exactly as the file's did until it is
    trained (a deeper split only reorders positions that keep their mean and scale)."""
    old = checkpoint_preset(path)
    new = model.preset
    if (dataclasses.replace(new, context=old.context, context_width=old.context_width,
                            split_anchors=old.split_anchors, split_depth=old.split_depth) != old
            or new.split_anchors < old.split_anchors or new.split_depth < old.split_depth):
        raise SystemExit(f"{path} is not {model.preset} with less spatial context: cannot grow it")
    state = _checkpoint_state(path)
    fresh = {k: v for k, v in model.state_dict().items() if k not in state}
    if any(not k.startswith(GROWN_PREFIXES) for k in fresh):
        raise SystemExit(f"{path} lacks layers other than the spatial context's: cannot grow it")
    load_state(model, {**state, **fresh})


def grown_passes(model: ConvNeXtCharm, old: Preset) -> list[tuple[int, int]]:
    """(slice, pass) of every split-anchor or lattice context that ``model`` has and a model of
    preset ``old`` lacks: the ones growing added, in coding order."""
    out = []
    for i in range(model.preset.split_anchors):
        n = len(model.passes(i, 4, 4, "cpu"))
        had = 0 if i >= old.split_anchors else old.split_depth  # contexts before the last pass
        out += [(i, k) for k in range(1, n - 1) if n - 1 - k > had]
    return out


def _fit_grown_contexts(model: ConvNeXtCharm, cfg: TrainConfig, sampler: CropSampler, log_path: Path) -> None:
    """``fit_context``: fit the split-anchor and lattice contexts that growing added
    (context_fit.py) and record what was chosen in the training log."""
    from .context_fit import fit_split_context

    if not (cfg.resume and cfg.extend_to and model.preset.split_anchors):
        raise ValueError("fit_context needs --resume and --extend-to a split-anchor preset")
    todo = grown_passes(model, checkpoint_preset(cfg.resume))
    if not todo:
        raise ValueError(f"{cfg.resume} already has every split-anchor context of {cfg.extend_to}: nothing to fit")
    with log_path.open("a") as log:
        for i, k in todo:
            fits = fit_split_context(model, sampler, slice_index=i, pass_index=k)
            log.write(json.dumps({"fit_context": {"slice": i, "pass": k, "channels": [
                {"channel": f.channel, "beta": round(f.beta, 4), "gamma": f.gamma,
                 "bits_pct": round(f.gain_pct, 2)} for f in fits]}}) + "\n")


def load_checkpoint(model: ConvNeXtCharm, path: Path) -> None:
    load_state(model, _checkpoint_state(path))


def rd_loss(model: ConvNeXtCharm, x: torch.Tensor, q: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(x, q)
    n, _, h, w = x.shape
    px = h * w
    bits = (torch.log(out["y_lik"]).flatten(1).sum(1) + torch.log(out["z_lik"]).flatten(1).sum(1)) / -math.log(2)
    bpp = bits / px
    mse = ((out["x_hat"].float() - x) ** 2).flatten(1).mean(1)
    loss = (quality_lambdas(q, model.preset) * 255.0**2 * mse + bpp).mean()
    psnr = -10 * torch.log10(mse.clamp_min(1e-10))
    return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean(), "psnr": psnr.mean()}


def entropy_parameters(name: str) -> bool:
    """The entropy model's parameters (its lr may be scaled: ``entropy_lr_scale``)."""
    return name.startswith((*EXACT_PREFIXES, "entropy_bottleneck."))


def sample_qualities(how: str, n: int, dev: torch.device) -> torch.Tensor:
    u = torch.rand(n, device=dev)
    if how == "uniform":
        return u * 100.0
    if how == "high":
        return torch.sqrt(u) * 100.0
    raise ValueError(f"unknown q sampling {how!r} (uniform or high)")


#: the parameters no symbol depends on: the synthesis runs after the entropy path, on the decoded
#: latents (the gains, LRP and every context do shape the symbols: RDOQ weighs distortion through
#: the inverse gain, and LRP's output feeds the next slices' contexts)
SYMBOL_FREE_PREFIX = "g_s."


def symbol_free(model: torch.nn.Module, train_only: Sequence[str]) -> bool:
    """Whether training only the parameters named by the ``train_only`` prefixes leaves every
    symbol the encoder writes unchanged (so fitted y tables stay valid)."""
    names = [n for n, _ in model.named_parameters() if n.startswith(tuple(train_only))]
    return bool(names) and all(n.startswith(SYMBOL_FREE_PREFIX) for n in names)


def train(cfg: TrainConfig, progress=None, sampler: CropSampler | None = None) -> Path:
    """Run training and write ``cfg.out`` (safetensors) plus ``cfg.out.with_suffix('.log.jsonl')``.

    ``sampler`` replaces the images under ``cfg.data`` (fine-tuning on images held in memory)."""
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dev = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if cfg.device == "auto" else cfg.device))
    kept_meta: dict[str, str] = {}
    if cfg.resume and cfg.extend_to:
        model = build_model(cfg.extend_to)
        grow_checkpoint(model, cfg.resume)
    elif cfg.resume:
        model = build_model(cfg.resume_preset or checkpoint_preset(cfg.resume))
        load_checkpoint(model, cfg.resume)
        if model.preset.y_tables != "gaussian":
            if symbol_free(model, cfg.train_only):
                # only the synthesis trains: every symbol, hence every stream, stays the same, and
                # the fitted tables (and the record of their fit) still describe them
                kept_meta = {k: v for k, v in file_preset(cfg.resume)[1].items() if k == "table_fit"}
            else:
                # fitted y tables (table_fit) describe the weights they were fitted to; training moves
                # the weights, so what it writes carries Gaussian tables again (fit anew before shipping)
                model.preset = dataclasses.replace(model.preset, y_tables="gaussian")
    else:
        model = build_model(cfg.preset)
    model.to(dev).train()
    model.train_rdo_strength = cfg.rdo_strength
    if cfg.train_only:
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(cfg.train_only))
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"no parameter starts with {cfg.train_only}")
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles") and p.requires_grad]
    main_named = [(n, p) for n, p in model.named_parameters() if not n.endswith("quantiles") and p.requires_grad]
    main_params = [p for _, p in main_named]
    basis = [p for n, p in main_named if transform_parameters(n)]
    entropy = [p for n, p in main_named if entropy_parameters(n)]
    rest = [p for n, p in main_named if not transform_parameters(n) and not entropy_parameters(n)]
    groups = [{"params": rest, "lr_scale": 1.0}, {"params": entropy, "lr_scale": cfg.entropy_lr_scale}]
    if basis:
        groups.append({"params": basis, "lr_scale": cfg.transform_lr_scale})
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=0.0)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3) if aux_params else None
    step_fn = torch.compile(rd_loss) if cfg.compile else rd_loss
    if sampler is None:
        sampler = CropSampler(find_images(cfg.data), cfg.crop, cfg.seed, cfg.upsample_prob, cfg.upsample_max)
    if not sampler.images:
        raise ValueError(f"no training image is at least {cfg.crop} px on each side")
    log_path = cfg.out.with_suffix(".log.jsonl")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.fit_context:
        _fit_grown_contexts(model, cfg, sampler, log_path)
    if cfg.steps == 0:
        model.eval()
        save_weights(model, cfg.out, {"steps": "0", **kept_meta})
        return cfg.out
    t0 = time.time()
    use_amp = cfg.amp and dev.type == "cuda"
    with log_path.open("a") as log:
        for step in range(1, cfg.steps + 1):
            lr = learning_rate(cfg, step, time.time() - t0)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            x = sampler.batch(cfg.batch).to(dev, non_blocking=True)
            q = sample_qualities(cfg.q_sampling, cfg.batch, dev)
            # bf16 only for the float transforms; the likelihoods stay in fp32
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                m = step_fn(model, x, q)
            opt.zero_grad(set_to_none=True)
            m["loss"].backward()
            torch.nn.utils.clip_grad_norm_(main_params, 1.0)
            opt.step()
            aux = model.aux_loss()
            if aux_opt is not None:
                aux_opt.zero_grad(set_to_none=True)
                aux.backward()
                aux_opt.step()
            if progress:
                progress(step, cfg.steps, {k: float(v.detach()) for k, v in m.items()})
            if step % cfg.log_every == 0 or step == cfg.steps:
                rec = {"step": step, "time_s": round(time.time() - t0, 1), "lr": lr,
                       **{k: round(float(v.detach()), 5) for k, v in m.items()}, "aux": round(float(aux.detach()), 3)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
            done = step == cfg.steps or (cfg.max_minutes and time.time() - t0 > cfg.max_minutes * 60)
            if step % cfg.save_every == 0 or done:
                model.eval()
                save_weights(model, cfg.out, {"steps": str(step), **kept_meta})
                model.train()
            if done:
                break
    return cfg.out
