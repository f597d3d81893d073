"""The design study behind compact-v5 (issue 14): variants trained from scratch at equal CPU
time on the same data and seed, measured on Kodak with real bitstreams.

    python benchmarks/design_study.py run [--minutes 15] [--threads 1] [--only NAME ...]
    python benchmarks/design_study.py table          # markdown table of what was measured
    python benchmarks/design_study.py curve W --label L --cpu-hours H --steps N   # learning curve

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


CURVE = REPO / "benchmarks" / "results" / "learning-curve.json"


def curve_point(weights: Path, label: str, cpu_hours: float, steps: int, threads: int) -> None:
    """One point of the learning curve: a checkpoint of the long run, measured like the study."""
    points = json.loads(CURVE.read_text()) if CURVE.exists() else []
    res = evaluate(weights, threads)
    points = [p for p in points if p["label"] != label] + [
        {"label": label, "cpu_hours": cpu_hours, "steps": steps, "date": dt.date.today().isoformat(), **res}]
    CURVE.write_text(json.dumps(sorted(points, key=lambda p: p["cpu_hours"]), indent=2) + "\n")
    print(label, json.dumps(points[-1]), flush=True)


def curve_table(plot: Path | None) -> None:
    """The learning curve as a markdown table (and a PNG): BD-rate vs JPEG 4:2:0 over CPU-hours,
    with compact-v1..v4 (the earlier design's curve, from their Kodak results) beside it."""
    points = json.loads(CURVE.read_text())
    print("| checkpoint | training CPU-hours | steps | BD vs JPEG 4:2:0 | vs WebP | vs AVIF | vs DCT ref | max PSNR |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for pt in points:
        b = pt["bd_rate_pct"]
        print(f"| {pt['label']} | {pt['cpu_hours']:.2f} | {pt['steps']:,} | {b['jpeg_420']:+.1f} % | {b['webp']:+.1f} % | "
              f"{b['avif']:+.1f} % | {b['dct8_ref']:+.1f} % | {max(pt['psnr']):.1f} |")
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # compact-v1..v4: CPU-hours from their training notes (docs/MODEL.md), BD-rate from BENCHMARKS.md
    old = [(0.9, 140.1, "compact-v1"), (2.5, 66.5, "v2"), (3.9, 55.4, "v3"), (5.1, 50.3, "v4")]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot([h for h, _, _ in old], [b for _, b, _ in old], "s--", color="grey", label="compact design (v1-v4)")
    for h, b, n in old:
        ax.annotate(n, (h, b), textcoords="offset points", xytext=(4, 4), fontsize=7, color="grey")
    ax.plot([pt["cpu_hours"] for pt in points], [pt["bd_rate_pct"]["jpeg_420"] for pt in points], "o-",
            color="black", linewidth=2, label="complete design (compact-v5)")
    ax.axhline(0, color="tab:red", linewidth=1, label="JPEG 4:2:0")
    ref = bd_rows(*__import__("archiver.bdrate", fromlist=["read_curve"]).read_curve(
        shared() / "anchors" / ANCHORS["dct8_ref"])[:2])["jpeg_420"]
    ax.axhline(ref, color="tab:blue", linestyle=":", label="untrained 8x8 DCT reference")
    ax.axhline(-25, color="tab:green", linestyle="--", linewidth=1, label="first bar (-25 %)")
    ax.set_xlabel("training CPU-hours (thread-hours, 2-core dev machine)")
    ax.set_ylabel("Kodak BD-rate vs JPEG 4:2:0 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plot)
    plt.close(fig)


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
    c = sub.add_parser("curve", help="measure one checkpoint of the long run for the learning curve")
    c.add_argument("weights", type=Path)
    c.add_argument("--label", required=True)
    c.add_argument("--cpu-hours", type=float, required=True, help="training CPU-hours (thread-hours) so far")
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--threads", type=int, default=1)
    cp = sub.add_parser("curve-table", help="the learning curve as markdown, and a plot")
    cp.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "results" / "learning-curve.png")
    a = ap.parse_args()
    if a.cmd == "curve-table":
        curve_table(a.plot)
    elif a.cmd == "run":
        run(a.only or list(VARIANTS), a.minutes, a.threads)
    elif a.cmd == "curve":
        curve_point(a.weights, a.label, a.cpu_hours, a.steps, a.threads)
    else:
        table()


if __name__ == "__main__":
    main()
