"""What fine-tuning on a narrow domain buys: held-out BD-rate and bytes at the floor, before and
after ``archiver finetune``'s training for 10 and 30 minutes of CPU.

The domain is Urban100 (buildings, regular facades: one source of ../shared/data/train, picked
out through manifest.csv). compact-v5 was trained on all seven shards, so it saw these very
photos among 800 in pre-training (about 2 CPU-hours); the figure is therefore what focusing the
model on the domain adds, not what adapting to never-seen data adds (a stricter test would need
a domain the base never saw; Kodak is evaluation-only and not a domain). The split is by object
and seeded; the held-out images are never trained on in the fine-tune (recorded in the output).

The library is the one ``archiver finetune`` runs (archiver/finetune.py): the sample and split
once, the base measured once, then one fine-tune per budget from the same base, each measured
on the same held-out centre crops from real bitstreams.

    nice .venv/bin/python benchmarks/finetune_benefit.py --minutes 10,30 --threads 1 \\
        > benchmarks/results/finetune_benefit.log 2>&1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train"
OUT = Path(__file__).resolve().parent / "results" / "finetune_benefit.json"


def domain_files(root: Path, prefix: str) -> list[Path]:
    with (root / "manifest.csv").open() as f:
        return sorted(root / r["file"] for r in csv.DictReader(f) if r["source_path"].startswith(prefix))


def header_corrected(m: dict, base_id: str) -> dict:
    """``m`` as if its containers named ``base_id``: the container header holds the model id, so
    a measurement made under a longer provisional id (``file:NAME``, before the candidate was
    measured under its own id) carries that many bytes more per container, and nothing else."""
    extra = len(m["model_id"].encode()) - len(base_id.encode())
    if not extra:
        return m
    out = json.loads(json.dumps(m))
    # every measured crop has the same size here (eval_size x eval_size), so bpp shifts uniformly
    shift = extra * 8 / out["eval_pixels"]
    out["bpp"] = [b - shift for b in m["bpp"]]
    reached = sum(1 for v in m["floor"]["per_image"].values() if v["reached"])
    out["floor"]["bytes"] = m["floor"]["bytes"] - extra * reached
    orig = out["floor"]["original_bytes"]
    out["floor"]["saving_pct"] = 100.0 * (1 - out["floor"]["bytes"] / orig) if orig else None
    out["model_id"] = base_id
    return out


def report(paths: list[Path]) -> None:
    """Merge result files of one sample (a base measurement and runs) into a markdown table."""
    from archiver.finetune import compare

    docs = [json.loads(p.read_text()) for p in paths]
    base = next(d for d in docs if d.get("before"))
    before = base["before"]
    for d in docs:
        assert d["held_out"] == base["held_out"], "results of different samples"
    px = base["eval_size"] ** 2
    rows = []
    for d in docs:
        for run in d["runs"]:
            after = dict(run["after"], eval_pixels=px)
            after = header_corrected(after, before["model_id"])
            rows.append((run["minutes"], run["training"], compare(before, after), after))
    print(f"held out: {len(base['held_out'])} of {base['sample']} sampled; trained on {len(base['train'])}; "
          f"centre crops {base['eval_size']} px; {base['machine']}; {base['date']}")
    print("| fine-tuning | steps | BD-rate vs base (held-out) | bytes at the floor | saving vs originals at the floor |")
    print("|---|---|---|---|---|")
    fb = before["floor"]
    print(f"| none ({before['model_id']}) | - | - | {fb['bytes']:,} | {fb['saving_pct']:.2f} % |")
    for minutes, tr, cmp, after in sorted(rows, key=lambda r: r[0]):
        bd = "n/a" if cmp["bd_rate_pct"] is None else f"{cmp['bd_rate_pct']:+.2f} %"
        print(f"| {minutes:g} min | {tr['steps']} | {bd} | {after['floor']['bytes']:,} "
              f"({cmp['floor_change_pct']:+.2f} %) | {after['floor']['saving_pct']:.2f} % |")
    print()
    print("| quality | bpp base | PSNR base | " + " | ".join(f"bpp {m:g} min | PSNR {m:g} min" for m, *_ in rows) + " |")
    print("|---" * (3 + 2 * len(rows)) + "|")
    for i, q in enumerate(before["qualities"]):
        cells = [f"{r[3]['bpp'][i]:.4f} | {r[3]['psnr'][i]:.2f}" for r in sorted(rows, key=lambda r: r[0])]
        print(f"| {q:g} | {before['bpp'][i]:.4f} | {before['psnr'][i]:.2f} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-root", type=Path, default=TRAIN)
    ap.add_argument("--domain", default="CUrban100/", help="manifest source_path prefix of the domain")
    ap.add_argument("--sample", type=int, default=60)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--minutes", default="10,30")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-size", type=int, default=256)
    ap.add_argument("--qualities", default="30,50,70,90")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-base", action="store_true",
                    help="do not measure the base (another run with the same sample does): runs in parallel")
    ap.add_argument("--report", type=Path, nargs="+", help="only merge these result files into a markdown table")
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return

    import torch

    torch.set_num_threads(args.threads)
    from archiver.codec.api import Codec
    from archiver.finetune import FinetuneConfig, centre_crop, compare, measure, sample_source, train_on
    from archiver.settings import load_settings
    from archiver.storage import open_store

    def say(msg: str) -> None:
        print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", flush=True)

    last = {"t": 0.0}

    def progress(phase: str, done: int, total: int, info: str) -> None:
        if time.time() - last["t"] > 60 or done == total:
            last["t"] = time.time()
            say(f"{phase}: {done}/{total} {info}")

    st = load_settings()
    files = domain_files(args.train_root, args.domain)
    say(f"domain {args.domain}: {len(files)} images")
    result: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "machine": f"{platform.machine()} {os.cpu_count()} cores (shared), torch threads {args.threads}",
                    "domain": args.domain, "runs": []}
    with tempfile.TemporaryDirectory(prefix="ft-bench-") as tmp:
        src_dir = Path(tmp) / "source"
        src_dir.mkdir()
        for f in files:  # a directory SOURCE holding only the domain (the store refuses links out of it)
            shutil.copyfile(f, src_dir / f.name)
        cfg = FinetuneConfig(source_url=str(src_dir), new_id="bench", base_model=st.model_id, sample=args.sample,
                             holdout=args.holdout, seed=args.seed, eval_size=args.eval_size,
                             qualities=tuple(float(q) for q in args.qualities.split(",")),
                             threads=args.threads, device="cpu", min_psnr=st.min_psnr)
        base = Codec.load(cfg.base_model, "cpu")
        sampled = sample_source(open_store(str(src_dir), st), cfg, st, progress)
        held = {k: centre_crop(v, cfg.eval_size) for k, v in sampled.held_out.items()}
        result.update(base_model=base.model_id, sample=len(sampled.train) + len(sampled.held_out),
                      train=sorted(sampled.train), held_out=sorted(held), eval_size=cfg.eval_size,
                      settings={k: getattr(cfg, k) for k in ("seed", "holdout", "crop", "batch", "lr", "warmup",
                                                             "q_sampling", "qualities", "min_psnr")})
        say(f"trained on {len(sampled.train)}, held out {len(held)}; measuring {base.model_id}")
        t = time.time()
        before = None if args.no_base else measure(base, held, cfg.qualities, cfg.min_psnr, progress, "base")
        result["before"] = before
        result["measure_seconds"] = round(time.time() - t)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        for minutes in (float(m) for m in args.minutes.split(",")):
            cfg.minutes = minutes
            wd = Path(tmp) / f"m{minutes:g}"
            wd.mkdir()
            say(f"fine-tuning {minutes:g} min")
            weights, training = train_on(sampled, base, cfg, wd, progress)
            assert not set(training["trained_on"]) & set(held), "a held-out image was trained on"
            after = measure(Codec.from_weights_file(weights, "cpu", model_id=base.model_id), held, cfg.qualities, cfg.min_psnr, progress,
                            f"after {minutes:g} min")
            run = {"minutes": minutes, "training": {k: v for k, v in training.items() if k != "trained_on"},
                   "after": after, **(compare(before, after) if before else {})}
            result["runs"].append(run)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            if before is None:
                say(f"{minutes:g} min, {training['steps']} steps: floor bytes {after['floor']['bytes']:,}")
                continue
            fb = before["floor"]
            say(f"{minutes:g} min, {training['steps']} steps: BD-rate {run['bd_rate_pct']} %; floor bytes "
                f"{fb['bytes']:,} -> {after['floor']['bytes']:,} ({run['floor_change_pct']:+.2f} %); saving vs "
                f"originals {fb['saving_pct']:.2f} % -> {after['floor']['saving_pct']:.2f} %")
    say(f"written {args.out}")


if __name__ == "__main__":
    sys.exit(main())
