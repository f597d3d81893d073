"""Where the bits go: the exact bit budget of compact-v6 on Kodak vs Kodak upsampled 2x (issue 24).

Why: the codec loses to AVIF by much more on smooth, high-resolution content (Kodak upsampled 2x
with Lanczos: +29.5 % BD-rate) than on Kodak itself (+7.3 %). Before choosing a fix (a second
decorrelation stage on the DC maps, uneven slices, spatial context across slices, a better z) we
need to know which part of the stream grows on smooth content. This script measures it.

How: each image is encoded by the product (``Codec.encode_detailed(target_psnr=..., effort=1)``)
to find the quality that reaches the target PSNR; then the coding loop of ``TileCoder.encode``
is mirrored here, read-only (same hyperprior, slice parameters, checkerboard passes, RDOQ and
LRP), and every chosen symbol is priced by ``RateTable.cost`` at its own scale index: the
coder's exact bits, split into z, each slice's anchors and non-anchors, and slice 0's DC maps
(channels 0-2: u = v = 0 of the three colour components, see ``complete.frequency_order``).
The mirror is checked against the product's container: its symbols must hash to the container's
latent SHA-256, and the summed rates must match the real y stream length (within ~1 %). z is
counted from the real z stream's length.

Each image comes in two versions: the original (768x512) and the 2x Lanczos upsample, of which
only the central 1024x1024 is coded (one tile; bounds the CPU time).

    PYTHONPATH=$PWD python benchmarks/bit_budget.py [--images kodim03 kodim05 ...] [--psnr 40] \
        [--out benchmarks/results/bit-budget.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archiver.codec import api  # noqa: E402
from archiver.codec import container as cx  # noqa: E402
from archiver.codec.complete import frequency_order  # noqa: E402
from archiver.codec.exact import round_half_up  # noqa: E402
from archiver.codec.model import SYMBOL_LIMIT, anchor_mask  # noqa: E402
from archiver.codec.rdo import RateTable, RdoParams, choose  # noqa: E402
from archiver.images import LoadedImage, from_pil  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rdo_study import load  # noqa: E402

DEFAULT_IMAGES = ["kodim03", "kodim05", "kodim23", "kodim01", "kodim19", "kodim15"]
VERSIONS = {"original": (1, None), "2x": (2, 1024)}  # name: (upsample, centre crop)
N_DC = 3  # channels 0-2 in frequency order: u = v = 0 for each colour component


@dataclass
class SliceBudget:
    """Bits and symbol counts of one slice (summed over tiles and images)."""

    anchor_bits: float = 0.0
    rest_bits: float = 0.0
    symbols: int = 0
    zeros: int = 0
    zero_bits: float = 0.0

    @property
    def bits(self) -> float:
        return self.anchor_bits + self.rest_bits

    def add(self, other: SliceBudget) -> None:
        for name in ("anchor_bits", "rest_bits", "symbols", "zeros", "zero_bits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Budget:
    """One image's (or a pooled set's) bits, by part."""

    pixels: int = 0
    z_bits: float = 0.0
    y_stream_bits: float = 0.0  # the real y stream length
    slices: list[SliceBudget] = field(default_factory=list)
    dc_anchor_bits: float = 0.0
    dc_rest_bits: float = 0.0
    dc_symbols: int = 0
    dc_zeros: int = 0

    @property
    def y_bits(self) -> float:
        return sum(s.bits for s in self.slices)

    @property
    def total_bits(self) -> float:
        return self.z_bits + self.y_bits

    def add(self, other: Budget) -> None:
        self.pixels += other.pixels
        self.z_bits += other.z_bits
        self.y_stream_bits += other.y_stream_bits
        self.dc_anchor_bits += other.dc_anchor_bits
        self.dc_rest_bits += other.dc_rest_bits
        self.dc_symbols += other.dc_symbols
        self.dc_zeros += other.dc_zeros
        while len(self.slices) < len(other.slices):
            self.slices.append(SliceBudget())
        for mine, theirs in zip(self.slices, other.slices):
            mine.add(theirs)

    def to_dict(self) -> dict:
        px = max(self.pixels, 1)
        return {
            "pixels": self.pixels, "z_bits": self.z_bits, "y_rate_bits": self.y_bits,
            "y_stream_bits": self.y_stream_bits, "bpp": self.total_bits / px,
            "y_rate_vs_stream": self.y_bits / self.y_stream_bits - 1.0 if self.y_stream_bits else None,
            "dc_anchor_bits": self.dc_anchor_bits, "dc_rest_bits": self.dc_rest_bits,
            "dc_symbols": self.dc_symbols, "dc_zeros": self.dc_zeros,
            "slices": [{"anchor_bits": s.anchor_bits, "rest_bits": s.rest_bits, "symbols": s.symbols,
                        "zeros": s.zeros, "zero_bits": s.zero_bits} for s in self.slices],
        }


def check_dc_channels(stride: int) -> None:
    """The first ``N_DC`` channels must be the DC of each colour component."""
    first = frequency_order(stride)[:N_DC]
    if any(u != 0 or v != 0 for _, u, v in first) or sorted(c for c, _, _ in first) != list(range(N_DC)):
        raise RuntimeError(f"the first {N_DC} channels are not the DC maps: {first}")


def _symbols_bytes(t: Tensor) -> bytes:
    return t.to(torch.int32).cpu().numpy().astype("<i4").tobytes()


def price_pass(rates: RateTable, sym: Tensor, idx: Tensor, mask: Tensor) -> tuple[float, int, int, float, float]:
    """(bits, symbols, zeros, bits of the zeros, bits of the DC channels) of ``sym`` where
    ``mask``: one checkerboard pass of one slice."""
    cost = rates.cost(sym, idx) * mask
    zero = (sym == 0) & mask
    return (float(cost.sum()), int(mask.sum()), int(zero.sum()), float((cost * zero).sum()),
            float(cost[:, :N_DC].sum()))


@torch.no_grad()
def tile_budget(codec: api.Codec, y_g: Tensor, rdo: RdoParams, hasher: "hashlib._Hash") -> Budget:
    """Mirror of ``TileCoder.encode`` (checkerboard, with RDOQ) that prices each chosen symbol
    instead of coding it; feeds ``hasher`` the symbols as the coder does."""
    coder, m = codec.coder, codec.model
    if m.preset.context != "checkerboard":
        raise RuntimeError("this study mirrors the checkerboard coder only")
    rates = coder.rates(y_g.device)
    z = m.h_a(y_g)
    med = coder.medians.to(z.device)
    zs = torch.clamp(round_half_up(z.double() - med), -SYMBOL_LIMIT, SYMBOL_LIMIT)
    hasher.update(_symbols_bytes(zs))
    means_h, scales_h = m.hyper(zs + med, exact=True)
    sc = m.slice_ch
    out = Budget()
    decoded: list[Tensor] = []
    for i, y_i in enumerate(y_g.double().chunk(m.preset.slices, dim=1)):
        mu, scale, mean_sup = m.slice_params(i, means_h, scales_h, decoded)
        idx = m.scale_indexes(scale)
        weight = rdo.weight[:, i * sc:(i + 1) * sc]
        sym = choose(y_i - mu, idx, weight, rates, SYMBOL_LIMIT)
        anchors = anchor_mask(sym.shape[2], sym.shape[3], sym.device).expand_as(sym)
        mu2, scale2 = m.spatial(i, sym * anchors, mu, scale)
        idx2 = m.scale_indexes(scale2)
        sym2 = choose(y_i - mu2, idx2, weight, rates, SYMBOL_LIMIT)
        a_bits, a_n, a_z, a_zb, a_dc = price_pass(rates, sym, idx, anchors)
        r_bits, r_n, r_z, r_zb, r_dc = price_pass(rates, sym2, idx2, ~anchors)
        out.slices.append(SliceBudget(a_bits, r_bits, a_n + r_n, a_z + r_z, a_zb + r_zb))
        if i == 0:
            out.dc_anchor_bits, out.dc_rest_bits = a_dc, r_dc
            dc = torch.where(anchors, sym, sym2)[:, :N_DC]
            out.dc_symbols, out.dc_zeros = dc.numel(), int((dc == 0).sum())
        sym, mu = torch.where(anchors, sym, sym2), torch.where(anchors, mu, mu2)
        hasher.update(_symbols_bytes(sym))
        y_hat_i = sym + mu
        decoded.append(y_hat_i + m.lrp(i, mean_sup, y_hat_i))
    return out


def image_budget(codec: api.Codec, img: LoadedImage, target_psnr: float) -> tuple[Budget, dict]:
    """Encode with the product to find the quality, then price that encode's symbols."""
    t0 = time.perf_counter()
    res = codec.encode_detailed(img, target_psnr=target_psnr, effort=1)
    c = cx.unpack(res.data)
    gain, inv_gain = codec._gains(res.quality)
    rdo = codec._rdo(res.quality, inv_gain, effort=1)
    assert rdo is not None
    hasher = hashlib.sha256()
    total = Budget(pixels=img.width * img.height)
    with torch.inference_mode():
        for (_, _, rs, cs), tile in zip(api.tile_grid(img.height, img.width, codec.tile_size), c.tiles):
            y = codec.model.g_a(codec._to_tensor(img.rgb[rs, cs]))
            part = tile_budget(codec, y * gain, rdo, hasher)
            part.z_bits = 8.0 * len(tile.z)
            part.y_stream_bits = 8.0 * len(tile.y[0])
            total.add(part)
    if hasher.hexdigest() != c.meta.latent_sha256:
        raise RuntimeError("the mirrored coding loop chose other symbols than the product's encoder")
    info = {"quality": res.quality, "psnr": res.psnr, "file_bpp": res.bpp, "probes": res.probes,
            "seconds": time.perf_counter() - t0, "width": img.width, "height": img.height}
    return total, info


def pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def parts(b: Budget) -> list[tuple[str, float]]:
    """(label, bits) rows of the share table."""
    rows = [("z (hyper-latent)", b.z_bits),
            ("slice 0 DC (ch 0-2), anchors", b.dc_anchor_bits),
            ("slice 0 DC (ch 0-2), non-anchors", b.dc_rest_bits),
            ("slice 0 rest (ch 3-23), anchors", b.slices[0].anchor_bits - b.dc_anchor_bits),
            ("slice 0 rest (ch 3-23), non-anchors", b.slices[0].rest_bits - b.dc_rest_bits)]
    for i, s in enumerate(b.slices[1:], start=1):
        rows += [(f"slice {i} anchors", s.anchor_bits), (f"slice {i} non-anchors", s.rest_bits)]
    return rows


def share_table(budgets: dict[str, Budget]) -> str:
    """Markdown: per part, bpp and share of all bits in each version, and the 2x/original ratios."""
    names = list(budgets)
    head = "| part | " + " | ".join(f"{n} bpp | {n} share" for n in names) + " | bpp ratio | share ratio |"
    lines = [head, "| --- |" + " ---: |" * (2 * len(names) + 2)]
    rows = {n: parts(b) for n, b in budgets.items()}
    for k, (label, _) in enumerate(rows[names[0]]):
        cells, bpps, shares = [], [], []
        for n in names:
            b, bits = budgets[n], rows[n][k][1]
            bpps.append(bits / b.pixels)
            shares.append(pct(bits, b.total_bits))
            cells.append(f"{bpps[-1]:.4f} | {shares[-1]:.1f} %")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {bpps[-1] / bpps[0]:.2f} | {shares[-1] / shares[0]:.2f} |")
    tot = [b.total_bits / b.pixels for b in budgets.values()]
    lines.append("| **total** | " + " | ".join(f"**{t:.4f}** | 100 %" for t in tot) + f" | {tot[-1] / tot[0]:.2f} | |")
    return "\n".join(lines)


def slice_table(name: str, b: Budget) -> str:
    """Markdown: per slice, share of bits, share of zero symbols, bits per zero and per non-zero."""
    lines = [f"| {name}: slice | bpp | share | anchors / non-anchors bits | zero symbols | bits per zero | "
             "bits per non-zero | share of the slice's bits on zeros |", "| --- |" + " ---: |" * 7]
    for i, s in enumerate(b.slices):
        nz = s.symbols - s.zeros
        lines.append(f"| {i} | {s.bits / b.pixels:.4f} | {pct(s.bits, b.total_bits):.1f} % | "
                     f"{s.anchor_bits / max(s.rest_bits, 1e-9):.2f} | {pct(s.zeros, s.symbols):.1f} % | "
                     f"{s.zero_bits / max(s.zeros, 1):.3f} | {(s.bits - s.zero_bits) / max(nz, 1):.2f} | "
                     f"{pct(s.zero_bits, s.bits):.1f} % |")
    y = SliceBudget()
    for s in b.slices:
        y.add(s)
    lines.append(f"| all y | {y.bits / b.pixels:.4f} | {pct(y.bits, b.total_bits):.1f} % | "
                 f"{y.anchor_bits / max(y.rest_bits, 1e-9):.2f} | {pct(y.zeros, y.symbols):.1f} % | "
                 f"{y.zero_bits / max(y.zeros, 1):.3f} | {(y.bits - y.zero_bits) / max(y.symbols - y.zeros, 1):.2f} | "
                 f"{pct(y.zero_bits, y.bits):.1f} % |")
    dc_bits = b.dc_anchor_bits + b.dc_rest_bits
    lines.append(f"\nDC maps (slice 0, ch 0-2): {dc_bits / max(b.dc_symbols, 1):.3f} bits per symbol, "
                 f"{pct(b.dc_zeros, b.dc_symbols):.1f} % zeros, anchors {b.dc_anchor_bits / max(b.dc_symbols / 2, 1):.3f} "
                 f"/ non-anchors {b.dc_rest_bits / max(b.dc_symbols / 2, 1):.3f} bits per symbol")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=DEFAULT_IMAGES)
    ap.add_argument("--psnr", type=float, default=40.0, help="target PSNR of the quality search [40]")
    ap.add_argument("--model", default=api.DEFAULT_MODEL)
    ap.add_argument("--out", default="benchmarks/results/bit-budget.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    codec = api.Codec.load(a.model, "cpu")
    check_dc_channels(codec.model.preset.stride)
    pooled: dict[str, Budget] = {}
    per_image: dict[str, dict[str, dict]] = {}
    for version, (up, crop) in VERSIONS.items():
        pooled[version] = Budget()
        for name in a.images:
            b, info = image_budget(codec, from_pil(load(name, up, crop)), a.psnr)
            pooled[version].add(b)
            per_image.setdefault(version, {})[name] = {**info, **b.to_dict()}
            print(f"{version:>8} {name}: q {info['quality']:.2f}, {info['psnr']:.2f} dB, {b.total_bits / b.pixels:.4f} bpp "
                  f"(file {info['file_bpp']:.4f}), y rates vs stream {100 * (b.y_bits / b.y_stream_bits - 1):+.2f} %, "
                  f"{info['seconds']:.0f} s", flush=True)
    for version, b in pooled.items():
        print(f"\n{version}: y rates {b.y_bits:.0f} bits vs y streams {b.y_stream_bits:.0f} bits "
              f"({100 * (b.y_bits / b.y_stream_bits - 1):+.2f} %)")
    print("\n" + share_table(pooled))
    for version, b in pooled.items():
        print("\n" + slice_table(version, b))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "model": codec.model_id, "effort": 1,
                               "versions": {v: {"upsample": up, "crop": crop} for v, (up, crop) in VERSIONS.items()},
                               "pooled": {v: b.to_dict() for v, b in pooled.items()}, "per_image": per_image},
                              indent=1))


if __name__ == "__main__":
    main()
