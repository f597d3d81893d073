"""Fit the y symbols' CDF tables to the symbols the encoder really writes (issue 24).

Why: every y symbol is coded with the table of its scale index, and those tables are quantised
Gaussians of the index's scale: the distribution the model trains under. What the coder meets is
``round(y - mu)`` as the real encoder chooses it, and that is not Gaussian. RDOQ (effort 1, the
default) moves symbols toward zero wherever the rate pays for it, so the small scales see far
more zeros than their Gaussian expects, and the large ones are heavier in the tails and narrower
in the middle. Priced with tables measured on training crops, the Kodak symbols of compact-v11
cost 1.0 % fewer bits (3.6 % at the smallest scales) and the 2x proxy's 2.2 % fewer
(``benchmarks/table_study.py``); tables per slice or per slice group gain only 0.1 % more, so one
table per scale index it is.

What changes: only the table contents. Each index keeps the Gaussian table's offset and length
(the same support, the same escape), the decoder is unchanged, and the tables ship with the
weights as they always did (``preset.y_tables = "fitted"`` keeps ``update_tables`` from
rebuilding them). So a fitted model is an ordinary model id whose streams decode exactly like
every other's; the fit is a step before registering, like ``context_fit``'s.

How: the real encoder (``TileCoder.encode`` with ``code=False``, at the chosen effort) codes
training crops at several qualities, and every symbol is counted per (scale index, table value).
Each table is the counts plus ``prior`` pseudo-counts spread as the Gaussian's pmf (indexes the
crops never use stay Gaussian), quantised by CompressAI's own ``pmf_to_quantized_cdf``. RDOQ
prices its choices with the tables, so new tables change its choices: ``rounds`` repeats the
count with the tables of the previous round.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from .codec.api import RDO_STRENGTH, rdo_params
from .codec.compressai_imports import GaussianConditional
from .codec.entropy import TileCoder
from .codec.model import ConvNeXtCharm
from .codec.registry import file_preset, load_weights_file, save_weights
from .train import CropSampler, find_images

#: the qualities the fit codes each crop at: the whole knob, denser around the archive floor
FIT_QUALITIES = (5.0, 20.0, 35.0, 45.0, 55.0, 65.0, 80.0, 95.0)
#: pseudo-counts of the Gaussian prior per table (only matters for indexes that are rarely used)
PRIOR = 16.0
PRECISION = 16


@dataclass
class TableFit:
    """What a fit found, on its own crops (``heldout_pct``: fitted on even crops, priced on the odd
    ones: what the fit generalises, not what it memorised)."""

    symbols: int
    bits_gaussian: float
    bits_fitted: float
    heldout_pct: float
    rounds: int

    @property
    def change_pct(self) -> float:
        return 100.0 * (self.bits_fitted / self.bits_gaussian - 1.0)

    def summary(self) -> dict:
        """The figures a fitted file (and a fine-tuned model's record) keeps."""
        return {"symbols": self.symbols, "change_pct": round(self.change_pct, 3),
                "heldout_pct": round(self.heldout_pct, 3)}


def gaussian_tables(model: ConvNeXtCharm) -> tuple[Tensor, Tensor, Tensor]:
    """The (quantised cdf, offset, length) the Gaussian of each scale index gives: the prior and
    the support of the fitted tables, whatever the model holds now."""
    gc = GaussianConditional(None)
    gc.update_scale_table(model.scale_table.tolist(), force=True)
    return gc._quantized_cdf.clone(), gc._offset.clone(), gc._cdf_length.clone()


def table_pmf(cdf: Tensor, length: Tensor) -> Tensor:
    """Per table, the probability of each value (the last used one is the escape), zero beyond."""
    c = cdf.double()
    pmf = (c[:, 1:] - c[:, :-1]).clamp(min=0.0) / float(1 << PRECISION)
    cols = torch.arange(pmf.shape[1])[None, :]
    return torch.where(cols < (length[:, None] - 1), pmf, torch.zeros_like(pmf))


class SymbolCounts:
    """Counts of (scale index, table value) per slice, in two halves (even and odd images)."""

    def __init__(self, offset: Tensor, length: Tensor, slices: int) -> None:
        self.offset = offset.long()
        self.length = length.long()
        self.width = int(length.max()) - 1
        self.halves = torch.zeros(2, slices, len(offset), self.width, dtype=torch.float64)
        self.half = 0

    def values(self, sym: Tensor, idx: Tensor) -> Tensor:
        """The table value each symbol is coded as (anything outside the table: the escape)."""
        v = sym.long() - self.offset[idx]
        esc = (v < 0) | (v > self.length[idx] - 3)
        return torch.where(esc, self.length[idx] - 2, v)

    def observe(self, i: int, sym: Tensor, idx: Tensor) -> None:
        idx = idx.long().cpu()
        flat = idx * self.width + self.values(sym.cpu(), idx)
        self.halves[self.half, i] += torch.bincount(flat, minlength=self.halves[0, 0].numel()).reshape(
            self.halves.shape[2:]).double()

    @property
    def total(self) -> Tensor:
        """Over both halves and every slice: what the fit uses."""
        return self.halves.sum((0, 1))


def count_symbols(model: ConvNeXtCharm, images: Sequence[Tensor], qualities: Sequence[float], effort: int,
                  strength: float = RDO_STRENGTH, progress: Callable[[int, int], None] | None = None) -> SymbolCounts:
    """Code every image ((3, H, W) in [0, 1], sides multiples of ``preset.z_stride``; a batch
    tensor works too) at every quality with the real encoder and the model's current tables, as
    one tile; count the symbols it writes."""
    coder = TileCoder(model)
    _, offset, length = gaussian_tables(model)
    counts = SymbolCounts(offset, length, model.preset.slices)
    done, todo = 0, len(images) * len(qualities)
    with torch.inference_mode():
        for j, x in enumerate(images):
            y = model.g_a(x.reshape(1, *x.shape[-3:]))
            counts.half = j % 2
            for q in qualities:
                gain, inv_gain = model.gains(torch.tensor([float(q)]))
                coder.encode(y * gain, hashlib.sha256(), code=False, rdo=rdo_params(model, q, inv_gain, effort, strength),
                             observe=counts.observe)
                done += 1
                if progress is not None:
                    progress(done, todo)
    return counts


def fitted_cdfs(model: ConvNeXtCharm, counts: Tensor, prior: float = PRIOR) -> Tensor:
    """Quantised CDFs from ``counts`` (per index and value) and the Gaussian prior, laid out
    exactly as the Gaussian tables (CompressAI's ``_pmf_to_cdf``: the values, then the escape)."""
    g_cdf, _, length = gaussian_tables(model)
    p = counts + prior * table_pmf(g_cdf, length)
    pmf_length = (length - 2).int()  # the values 0 .. len-3; value len-2 is the escape
    body = p[:, : int(pmf_length.max())]
    tail = p[torch.arange(len(p)), pmf_length.long()].unsqueeze(1)
    norm = p.sum(1, keepdim=True)
    return model.gaussian_conditional._pmf_to_cdf((body / norm).float(), (tail / norm).float(), pmf_length,
                                                  int(pmf_length.max()))


def price(counts: Tensor, cdf: Tensor, length: Tensor) -> float:
    """Bits that ``counts`` cost under tables ``cdf`` (escapes: their table cost only)."""
    pmf = table_pmf(cdf, length)
    bits = torch.where(counts > 0, -torch.log2(pmf.clamp(min=1e-30)), torch.zeros_like(pmf))
    return float((counts * bits).sum())


def install(model: ConvNeXtCharm, cdf: Tensor) -> None:
    """Make ``cdf`` the model's y tables (same offsets and lengths as the Gaussian ones) and mark
    the preset, so that exporting the weights keeps them."""
    g_cdf, offset, length = gaussian_tables(model)
    if cdf.shape != g_cdf.shape:
        raise ValueError(f"fitted tables of shape {tuple(cdf.shape)} for Gaussian tables of {tuple(g_cdf.shape)}")
    gc = model.gaussian_conditional
    gc._quantized_cdf = cdf.to(torch.int32).contiguous()
    gc._offset = offset
    gc._cdf_length = length
    model.preset = replace(model.preset, y_tables="fitted")


def fit_tables(model: ConvNeXtCharm, crops: Sequence[Tensor], qualities: Sequence[float] = FIT_QUALITIES, effort: int = 1,
               rounds: int = 2, prior: float = PRIOR,
               progress: Callable[[int, int, int], None] | None = None) -> TableFit:
    """Fit and install the model's y tables (module docstring); the transforms and the exact
    layers are read, never changed. ``progress(round, done, todo)``."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    if len(crops) < 2:
        raise ValueError("the fit needs at least two crops (one per half)")
    g_cdf, offset, length = gaussian_tables(model)
    gc = model.gaussian_conditional  # round 1 counts what the encoder writes under the Gaussian tables
    gc._quantized_cdf, gc._offset, gc._cdf_length = g_cdf.to(torch.int32), offset, length
    first: Tensor | None = None
    counts = None
    for r in range(rounds):
        counts = count_symbols(model, crops, qualities, effort,
                               progress=None if progress is None else (lambda d, t, r=r: progress(r + 1, d, t)))
        if first is None:
            first = counts.total
        install(model, fitted_cdfs(model, counts.total, prior))
    assert counts is not None and first is not None
    even, odd = counts.halves.sum(1)
    held = fitted_cdfs(model, even, prior)
    heldout = 100.0 * (price(odd, held, length) / price(odd, g_cdf, length) - 1.0)
    cdf = model.gaussian_conditional._quantized_cdf
    return TableFit(symbols=int(counts.total.sum()), bits_gaussian=price(first, g_cdf, length),
                    bits_fitted=price(counts.total, cdf, length), heldout_pct=heldout, rounds=rounds)


def fit_weights_file(src: Path, out: Path, data: list[Path], crops: int = 48, crop: int = 384, effort: int = 1,
                     rounds: int = 2, seed: int = 7, qualities: Sequence[float] = FIT_QUALITIES,
                     progress: Callable[[int, int, int], None] | None = None) -> TableFit:
    """``archiver fit-tables``: fit the y tables of weights file ``src`` on ``crops`` training
    crops from ``data`` (cut as training cuts them, 60 % enlarged up to 4x: camera-like smooth
    content as well as detail) and write the result to ``out``, keeping ``src``'s metadata and
    recording the fit's figures in it."""
    files = find_images(data)  # none: SystemExit with the folders named
    z_stride = file_preset(src)[0].z_stride
    if crop % z_stride:
        raise ValueError(f"crop must be a multiple of {z_stride}")
    sampler = CropSampler(files, crop, seed, upsample_prob=0.6, upsample_max=4.0)
    if not sampler.images:
        raise ValueError(f"no image under {', '.join(map(str, data))} is at least {crop} px on each side")
    return fit_file(src, out, sampler.batch(crops), effort, rounds, qualities, progress,
                    record={"crops": crops, "crop": crop, "seed": seed})


def fit_file(src: Path, out: Path, crops: Sequence[Tensor], effort: int = 1, rounds: int = 2,
             qualities: Sequence[float] = FIT_QUALITIES, progress: Callable[[int, int, int], None] | None = None,
             record: dict | None = None) -> TableFit:
    """Fit the y tables of weights file ``src`` on ``crops`` and write the result to ``out`` (may
    be ``src``), keeping ``src``'s metadata and adding the fit's figures (with ``record``) as
    ``table_fit``: the one way ``fit-tables`` and ``archiver finetune`` write a fitted file."""
    model, _ = load_weights_file(src, "cpu")
    fit = fit_tables(model, crops, qualities, effort, rounds, progress=progress)
    meta = {k: v for k, v in file_preset(src)[1].items() if k != "preset"}
    meta["table_fit"] = json.dumps({**(record or {}), "effort": effort, "rounds": rounds,
                                    "qualities": list(qualities), **fit.summary()})
    save_weights(model, out, meta)
    return fit


__all__ = ["FIT_QUALITIES", "SymbolCounts", "TableFit", "count_symbols", "fit_file", "fit_tables", "fit_weights_file",
           "fitted_cdfs", "gaussian_tables", "install", "price"]
