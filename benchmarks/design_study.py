"""The design study behind compact-v5 (issue 14): variants trained from scratch at equal CPU
time on the same data and seed, measured on Kodak with real bitstreams.

    python benchmarks/design_study.py run [--minutes 15] [--threads 1] [--only NAME ...]
    python benchmarks/design_study.py table          # markdown table of what was measured

Each variant is trained with ``archiver train`` (one process, ``--threads`` torch threads, a
cosine schedule over ``--minutes``), then every Kodak image is encoded and decoded at 4
qualities (0, 33, 67, 100) and the curve is compared by BD-rate with the measured JPEG 4:2:0,
WebP and AVIF curves and the untrained DCT reference of ``../shared/anchors``. Results go to
benchmarks/results/design-study.json (one entry per variant, replaced when re-run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

RESULTS = REPO / "benchmarks" / "results" / "design-study.json"
QUALITIES = [0.0, 33.0, 67.0, 100.0]
SEED = 11

#: name -> (what it tests, archiver train options)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "compact": ("today's design (compact-v1..v4) from scratch: LayerNorm patchify stages to 1/16, M=192",
                ["--preset", "compact", "--lr", "4e-4", "--batch", "8", "--crop", "128"]),
    "complete8": ("8x8 DCT stem, complete (M=192 at 1/8), near-identity ConvNeXt blocks, lr 1e-3",
                  ["--preset", "complete8", "--lr", "1e-3", "--batch", "8", "--crop", "192"]),
    "complete8-high-q": ("complete8 with q = 100*sqrt(u): 3/4 of samples above q 50",
                         ["--preset", "complete8", "--lr", "1e-3", "--batch", "8", "--crop", "192",
                          "--q-sampling", "high"]),
    "complete8-elr4": ("complete8 with the entropy model's lr 4x (4e-3)",
                       ["--preset", "complete8", "--lr", "1e-3", "--batch", "8", "--crop", "192",
                        "--entropy-lr-scale", "4"]),
    "complete8-lr3e-4": ("complete8 at lr 3e-4",
                         ["--preset", "complete8", "--lr", "3e-4", "--batch", "8", "--crop", "192"]),
    "complete16": ("16x16 DCT stem, complete (M=768 at 1/16), same blocks and entropy model",
                   ["--preset", "complete16", "--lr", "1e-3", "--batch", "8", "--crop", "256"]),
}

ANCHORS = {
    "jpeg_420": "kodak/measured/jpeg_420.json",
    "webp": "kodak/measured/webp.json",
    "avif": "kodak/measured/avif_444_psnr.json",
    "dct8_ref": "kodak/measured/dct8_context.json",
}


def shared() -> Path:
    from shared_paths import KODAK  # noqa: PLC0415

    return Path(KODAK).parents[1]



def bd_rows(bpp: list[float], psnr: list[float]) -> dict[str, float | None]:
    from archiver.bdrate import bd_rate, read_curve

    out: dict[str, float | None] = {}
    for k, rel in ANCHORS.items():
        ar, ad, _ = read_curve(shared() / "anchors" / rel)
        try:
            out[k] = round(bd_rate(ar, ad, bpp, psnr), 1)
        except ValueError:
            out[k] = None
    return out


def evaluate(weights: Path, threads: int) -> dict:
    import torch

    from archiver.codec.api import Codec
    from archiver.evaluate import evaluate_folder

    torch.set_num_threads(threads)
    codec = Codec.from_weights_file(weights, "cpu")
    r = evaluate_folder(codec, shared() / "data" / "kodak", QUALITIES)["results"]
    return {"bpp": [round(v, 4) for v in r["bpp"]], "psnr": [round(v, 3) for v in r["psnr-rgb"]],
            "decode_s": round(sum(r["decoding_time"]) / len(r["decoding_time"]), 3),
            "bd_rate_pct": bd_rows(r["bpp"], r["psnr-rgb"])}


def run(names: list[str], minutes: float, threads: int) -> None:
    data = sorted((shared() / "data" / "train").glob("shard-*"))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in names:
        what, opts = VARIANTS[name]
        out = REPO / "runs" / "study" / f"{name}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        for f in (out, out.with_suffix(".log.jsonl")):
            f.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "archiver", "train", *[a for d in data for a in ("--data", str(d))],
               "--out", str(out), "--steps", "1000000", "--max-minutes", str(minutes), "--warmup", "100",
               "--seed", str(SEED), "--threads", str(threads), *opts]
        t = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        trained_s = time.time() - t
        log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
        steps = log[-1]["step"]
        crop, batch = int(opts[opts.index("--crop") + 1]), int(opts[opts.index("--batch") + 1])
        res = evaluate(out, threads)
        results[name] = {"what": what, "options": opts, "minutes": minutes, "threads": threads, "steps": steps,
                         "train_px_per_s": round(steps * batch * crop * crop / trained_s),
                         "date": dt.date.today().isoformat(), "machine": platform.machine(), **res}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(name, json.dumps(results[name]), flush=True)


def table() -> None:
    results = json.loads(RESULTS.read_text())
    print("| variant | steps | train px/s | max PSNR | BD vs JPEG 4:2:0 | vs WebP | vs AVIF | vs DCT ref | decode s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ref = bd_rows(*(lambda r: (r[0], r[1]))(__import__("archiver.bdrate", fromlist=["read_curve"]).read_curve(
        shared() / "anchors" / ANCHORS["dct8_ref"])))
    print(f"| DCT reference (untrained) | 0 | - | 48.2 | {ref['jpeg_420']} % | {ref['webp']} % | {ref['avif']} % | 0 | - |")
    for name, r in results.items():
        b = r["bd_rate_pct"]
        fmt = lambda v: "n/a" if v is None else f"{v:+.1f} %"  # noqa: E731
        print(f"| {name} | {r['steps']} | {r['train_px_per_s']:,} | {max(r['psnr']):.1f} | {fmt(b['jpeg_420'])} | "
              f"{fmt(b['webp'])} | {fmt(b['avif'])} | {fmt(b['dct8_ref'])} | {r['decode_s']} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--minutes", type=float, default=15.0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--only", nargs="*", default=None)
    sub.add_parser("table")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.only or list(VARIANTS), a.minutes, a.threads)
    else:
        table()


if __name__ == "__main__":
    main()
