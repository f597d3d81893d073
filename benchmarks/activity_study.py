"""Would a table chosen by the decoded neighbours' activity, beside the scale index, save bits?
A study for issue 24 (no product code uses it).

With fitted tables (archiver/table_fit.py) a table is just a context bucket, counted on real
symbols. Today the bucket is the scale index alone, i.e. whatever the learned contexts made of
the decoded neighbours. Classical coders (JPEG XL, CABAC) bucket by the neighbours' magnitudes
directly. This script measures what that would add on the passes that have decoded neighbours
(slice 0's passes 1.. by default): per position, the activity is the sum of |decoded offset|
over the pass context's 5x5 window, in the same channel or over every channel of the slice,
bucketed; tables are fitted per (scale index) and per (scale index, activity bucket) on half of
the training crops and both are priced on the other half (ideal code length, the float path at
plain rounding, compact-v12's scale indexes).

    python benchmarks/activity_study.py archiver/codec/weights/compact-v12.safetensors [--batches 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from residual_structure import collect, model_and_sampler  # noqa: E402

#: activity bucket edges (sum of |offset| over the window): 0, 1, 2-3, 4-7, 8-15, 16+
EDGES = torch.tensor([0.5, 1.5, 3.5, 7.5, 15.5])


def code_length(sym: torch.Tensor, ctx: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
                n_ctx: int, prior: float = 1.0) -> float:
    """Bits of the test symbols under per-context empirical tables fitted on the train ones
    (symbols clamped to +-64; add-``prior`` smoothing over the seen range)."""
    s = sym.clamp(-64, 64).long() + 64
    width = 129
    counts = torch.zeros(n_ctx * width, dtype=torch.float64)
    counts.index_add_(0, (ctx[train] * width + s[train]), torch.ones(int(train.sum()), dtype=torch.float64))
    counts = counts.reshape(n_ctx, width) + prior / width
    p = counts / counts.sum(1, keepdim=True)
    return float(-torch.log2(p[ctx[test], s[test]]).sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", type=Path)
    ap.add_argument("--slices", type=int, nargs="+", default=[0])
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model, sampler = model_and_sampler(a.weights, a.crop, a.seed)
    with torch.no_grad():
        data = collect(model, sampler, a.slices, a.batches, a.batch)
    n_idx = len(model.scale_table)
    tot = {"idx": 0.0, "same": 0.0, "all": 0.0}
    for (i, k), d in sorted(data.items()):
        r, s, t = d["r"], d["s"], d["t"]  # (C, N), (C, N), (C, N, 25)
        sym = torch.floor(r + 0.5)
        idx = model.scale_indexes(s.float().contiguous()).long()
        same = t.abs().sum(2)  # (C, N)
        every = same.sum(0, keepdim=True).expand_as(same) / same.shape[0]
        b_same = torch.bucketize(same, EDGES.double())
        b_all = torch.bucketize(every, EDGES.double())
        nb = len(EDGES) + 1
        n = sym.shape[1]
        half = torch.zeros(n, dtype=torch.bool)
        half[: n // 2] = True  # positions are per crop in order: the first half are other crops
        train = half.expand_as(sym).reshape(-1)
        test = ~train
        flat = sym.reshape(-1)
        bits = {"idx": code_length(flat, idx.reshape(-1), train, test, n_idx),
                "same": code_length(flat, (idx * nb + b_same).reshape(-1), train, test, n_idx * nb),
                "all": code_length(flat, (idx * nb + b_all).reshape(-1), train, test, n_idx * nb)}
        for key in tot:
            tot[key] += bits[key]
        print(f"slice {i} pass {k}: {n * sym.shape[0]:,} symbols; per (index, same-channel activity) "
              f"{100 * (bits['same'] / bits['idx'] - 1):+.2f} %, per (index, slice activity) "
              f"{100 * (bits['all'] / bits['idx'] - 1):+.2f} % against per index", flush=True)
    print(f"all passes: same-channel activity {100 * (tot['same'] / tot['idx'] - 1):+.2f} %, slice activity "
          f"{100 * (tot['all'] / tot['idx'] - 1):+.2f} %")


if __name__ == "__main__":
    main()
