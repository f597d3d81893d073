"""How many bits do the Gaussian CDF tables leave behind, and how finely must fitted ones be
conditioned? The study behind ``archiver fit-tables`` (archiver/table_fit.py, issue 24).

The real encoder (at ``--effort``) codes training crops, cut as ``fit-tables`` cuts them, and
the Kodak images (or the 2x proxy), and every y symbol is counted per (quality, slice, scale
index, table value). The Kodak symbols are then priced under
* the Gaussian tables (what the streams cost today),
* tables fitted to the training counts per scale index (what ``fit-tables`` ships: only the
  table contents change, the decoder does not),
* tables per (slice 0 / the rest, index), per (slice, index) and per (quality, index), which
  would each need the decoder to pick tables by more than the index.
Prices are for the same symbols (the encoder's choices under the Gaussian tables); with fitted
tables RDOQ moves its choices too, which ``weights_compare.py --effort 1`` measures.

    python benchmarks/table_study.py [--weights W] [--crops 64] [--qualities 40 50 60] [--effort 1]
        [--upsample 2 --kodak-crop 1024 --kodak kodim03 kodim23 kodim05] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archiver.codec import api  # noqa: E402
from archiver.table_fit import count_symbols, fitted_cdfs, gaussian_tables, price  # noqa: E402
from archiver.train import CropSampler, find_images  # noqa: E402
from rdo_study import load  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def as_tensor(im) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def per_quality(model, images, qualities, effort) -> dict[float, torch.Tensor]:
    """Counts (slice, index, value) per quality, both halves summed."""
    return {q: count_symbols(model, images, [q], effort).halves.sum(0) for q in qualities}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--qualities", nargs="+", type=float, default=[40.0, 50.0, 60.0])
    ap.add_argument("--effort", type=int, default=1)
    ap.add_argument("--kodak", nargs="+", default=[f"kodim{i:02d}" for i in range(1, 25)])
    ap.add_argument("--upsample", type=int, default=1, help="Kodak upsampled (the 2x proxy)")
    ap.add_argument("--kodak-crop", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    codec = api.Codec.from_weights_file(a.weights, "cpu") if a.weights else api.Codec.load(api.DEFAULT_MODEL, "cpu")
    model = codec.model
    g_cdf, _, length = gaussian_tables(model)
    model.gaussian_conditional._quantized_cdf = g_cdf.to(torch.int32)  # price against the Gaussian even if fitted
    t = time.perf_counter()
    files = find_images([SHARED / "train" / f"shard-{i:02d}" for i in range(7)])
    crops = CropSampler(files, a.crop, 7, upsample_prob=0.6, upsample_max=4.0).batch(a.crops)
    train = per_quality(model, crops, a.qualities, a.effort)
    print(f"training crops counted in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    test = per_quality(model, [as_tensor(load(n, a.upsample, a.kodak_crop)) for n in a.kodak], a.qualities, a.effort)
    print(f"Kodak counted in {time.perf_counter() - t:.0f} s", flush=True)
    slices = next(iter(test.values())).shape[0]
    base_slice = [sum(price(c[s], g_cdf, length) for c in test.values()) for s in range(slices)]
    base = sum(base_slice)
    report: dict = {"args": vars(a), "gaussian_bits": base, "slice_share": [b / base for b in base_slice]}
    print(f"Gaussian tables: {base / 8:,.0f} bytes of y; per slice share "
          + " ".join(f"{b / base:.1%}" for b in base_slice))

    def fitted_groups(name: str, group_of_slice) -> None:
        """One table set per group of slices, fitted on all qualities' training counts."""
        groups = sorted(set(group_of_slice(s) for s in range(slices)))
        tables = {g: fitted_cdfs(model, sum(c[[s for s in range(slices) if group_of_slice(s) == g]].sum(0)
                                               for c in train.values())) for g in groups}
        per = [sum(price(c[s], tables[group_of_slice(s)], length) for c in test.values()) for s in range(slices)]
        change = sum(per) / base - 1
        report[name] = {"change": change, "per_slice": [p / b - 1 for p, b in zip(per, base_slice)]}
        print(f"{name:>26}: {100 * change:+.2f} %  (slices "
              + " ".join(f"{100 * (p / b - 1):+.1f}" for p, b in zip(per, base_slice)) + ")", flush=True)

    fitted_groups("per index (fit-tables)", lambda s: 0)
    fitted_groups("per slice 0 / rest, index", lambda s: int(s > 0))
    fitted_groups("per slice, index", lambda s: s)
    # per quality: each quality's own tables against the one set over all qualities
    one = fitted_cdfs(model, sum(c.sum(0) for c in train.values()))
    own = {q: fitted_cdfs(model, c.sum(0)) for q, c in train.items()}
    rows = []
    for q, c in test.items():
        g = price(c.sum(0), g_cdf, length)
        rows.append({"quality": q, "gaussian_bits": g, "one_set": price(c.sum(0), one, length) / g - 1,
                     "own_set": price(c.sum(0), own[q], length) / g - 1})
        print(f"quality {q:5.1f}: one table set {100 * rows[-1]['one_set']:+.2f} %, "
              f"the quality's own set {100 * rows[-1]['own_set']:+.2f} %", flush=True)
    report["per_quality"] = rows
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
