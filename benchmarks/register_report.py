"""The figures of a registration, as markdown, from the files ``register_eval.sh`` wrote.

    python benchmarks/register_report.py compact-v10 compact-v9 [--date 2026-12-07]

Why: registering a model used to end with half an hour of copying numbers by hand from six
JSON files into docs/BENCHMARKS.md, the issue note and docs/MODEL.md. This reads those files
(``benchmarks/results/``) and prints, in one go:

1. the *Kodak rate-distortion, NEW* section of docs/BENCHMARKS.md (qualities table, BD-rate
   against every anchor at both efforts, with OLD's effort-0 figures beside them);
2. a summary table against the issue-24 bars (AVIF on Kodak at both efforts, the 40 dB floor,
   Kodak 2x on all 24 images, NEW against OLD weights to weights), for the issue note;
3. the per-image details that the notes quote (best and worst floor ratios, 2x range).

Nothing is measured here; a missing file is named and its part skipped, so a partial run still
reports what it has. The verdict paragraph stays a person's to write.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
AVIF_ANCHOR = "avif_444_psnr.json"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    if not path.exists():
        print(f"<!-- missing: benchmarks/results/{name} -->", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def _pct(v: float | None, bold: bool = False) -> str:
    if v is None:
        return "-"
    s = f"{v:+.2f} %".replace("+-", "-")
    return f"**{s}**" if bold else s


def _bd(result: dict | None, anchor: str) -> float | None:
    for row in (result or {}).get("bd_rate", []):
        if row["anchor"] == anchor:
            return row["ours_vs_anchor_pct"]
    return None


def _short(model_id: str) -> str:
    return model_id.removeprefix("compact-")


def _presets(*model_ids: str) -> list[dict | None]:
    """The registered presets of ``model_ids`` (None for an id the registry lacks)."""
    reg = json.loads((ROOT / "archiver" / "codec" / "weights" / "registry.json").read_text())["models"]
    return [reg.get(m, {}).get("preset") for m in model_ids]


def kodak_section(new: str, old: str, day: str) -> list[str]:
    e0, e1, old0 = _load(f"kodak-{new}.json"), _load(f"kodak-{new}-effort1.json"), _load(f"kodak-{old}.json")
    if e0 is None:
        return []
    sha = e0["settings"]["weights_sha256"][:12]
    out = [
        f"## Kodak rate-distortion, `{new}` ({old} trained on, CPU only, the shipped default), {day}",
        "",
        f"- command: `benchmarks/register_eval.sh {new} {old}` (its first step is `archiver eval "
        f"../shared/data/kodak --model {new} --device cpu [--effort 1] --out benchmarks/results/kodak-{new}.json "
        f"[kodak-{new}-effort1.json] --plot benchmarks/results/kodak-{new}-rd.png --reference "
        "../shared/anchors/kodak/published/vtm.json --anchor …/published/bpg_444_x265_ycbcr.json --anchor "
        "…/measured/{jpeg_420,jpeg_444,webp,avif_444_psnr,jpegxl,dct8_context}.json --anchor "
        f"benchmarks/results/kodak-{old}.json [kodak-{old}-effort1.json]`)",
        "- machine: dev-cpu, `OMP_NUM_THREADS=1`, the two efforts evaluated side by side on the two cores, "
        "nothing else running; all 24 Kodak images, 8 qualities, bpp from the real `.cxa` bytes, PSNR-RGB "
        "and MS-SSIM of the real decoder's output.",
        f"- weights: `{new}` sha256 `{sha}…`.",
        "",
        "| quality | bpp | PSNR-RGB dB | MS-SSIM |",
        "| ---: | ---: | ---: | ---: |",
    ]
    r = e0["results"]
    for q, b, p, m in zip(e0["settings"]["qualities"], r["bpp"], r["psnr-rgb"], r["ms-ssim-rgb"]):
        out.append(f"| {q:g} | {b:.4f} | {p:.2f} | {m:.4f} |")
    out += ["", f"BD-rate of `{new}` (PCHIP, `archiver/bdrate.py`); negative = we need fewer bits:", "",
            f"| anchor | effort 0 | effort 1 (default) | {old} had (effort 0) |", "| --- | --- | --- | --- |"]
    for row in e0["bd_rate"]:
        a = row["anchor"]
        if a.startswith("kodak-"):
            continue
        label = f"`{a}` ({row['name']})"
        out.append(f"| {label} | {_pct(row['ours_vs_anchor_pct'], True)} | {_pct(_bd(e1, a))} | {_pct(_bd(old0, a))} |")
    out.append(f"| `kodak-{old}.json` | {_pct(_bd(e0, f'kodak-{old}.json'), True)} | - | - |")
    out.append(f"| `kodak-{old}-effort1.json` | - | {_pct(_bd(e1, f'kodak-{old}-effort1.json'), True)} | - |")
    out += ["", f"![RD plot](../benchmarks/results/kodak-{new}-rd.png)", ""]
    return out


def bars(new: str, old: str) -> list[str]:
    e0, e1 = _load(f"kodak-{new}.json"), _load(f"kodak-{new}-effort1.json")
    o0, o1 = _load(f"kodak-{old}.json"), _load(f"kodak-{old}-effort1.json")
    fl, ofl = _load(f"floor-vs-avif-{new}.json"), _load(f"floor-vs-avif-{old}.json")
    x2, ox2 = _load(f"rdo-study-kodak2x-all24-{new}.json"), _load(f"rdo-study-kodak2x-all24-{old}.json")
    wk = _load(f"{new}-vs-{_short(old)}-kodak.json")
    w2 = _load(f"{new}-vs-{_short(old)}-kodak2x.json")

    def floor(d: dict | None) -> str:
        return "-" if d is None else f"{d['ours_smaller_on']} / {d['images']}, total {d['total_bytes_ratio']:.3f}x"

    def twox(d: dict | None) -> str:
        return "-" if d is None else _pct(d["summary"]["1"]["vs_avif_pct"])

    def spread(d: dict | None) -> str:
        if d is None:
            return "-"
        per = d["summary"]["per_image"].values()
        effort = d.get("args", {}).get("effort", "0")  # files before the eleventh session: effort 0
        return f"{_pct(d['summary']['bd_rate_pct'], True)} ({_pct(min(per))} … {_pct(max(per))}; effort {effort})"

    out = [f"| measure | {new} | {old} | bar |", "|---|---:|---:|---:|",
           f"| Kodak 24 × 8 q vs {old}, effort 0 / 1 | {_pct(_bd(e0, f'kodak-{old}.json'), True)} / "
           f"{_pct(_bd(e1, f'kodak-{old}-effort1.json'), True)} | | |",
           f"| Kodak 24 × 4 q, weights to weights | {spread(wk)} | | |",
           f"| 2x proxy (kodim03/23/05 ×2, centre 1024², q 20/40/60) | {spread(w2)} | | |",
           f"| Kodak vs AVIF, effort 1 (default) | {_pct(_bd(e1, AVIF_ANCHOR), True)} | {_pct(_bd(o1, AVIF_ANCHOR))} | ≤ 0 % |",
           f"| Kodak vs AVIF, effort 0 | {_pct(_bd(e0, AVIF_ANCHOR))} | {_pct(_bd(o0, AVIF_ANCHOR))} | |",
           f"| 40 dB floor: images smaller than AVIF | {floor(fl)} | {floor(ofl)} | ≥ 18 / 24 |",
           f"| Kodak 2x, all 24 images, vs AVIF (effort 1) | {twox(x2)} | {twox(ox2)} | ≤ +10 % |", ""]
    if fl is not None:
        rows = sorted(fl["rows"], key=lambda r: r["ours_bytes"] / r["avif_bytes"])
        ratio = {r["image"]: r["ours_bytes"] / r["avif_bytes"] for r in rows}
        out.append("Floor, ours / AVIF bytes, best: " + ", ".join(f"{r['image']} {ratio[r['image']]:.3f}x" for r in rows[:5])
                   + "; worst: " + ", ".join(f"{r['image']} {ratio[r['image']]:.3f}x" for r in rows[-4:][::-1])
                   + f"; median {statistics.median(ratio.values()):.3f}x.")
        if ofl is not None:
            ours_new = sum(r["ours_bytes"] for r in fl["rows"])
            ours_old = sum(r["ours_bytes"] for r in ofl["rows"])
            old_by = {r["image"]: r["ours_bytes"] for r in ofl["rows"]}
            fell = sum(r["ours_bytes"] < old_by.get(r["image"], 0) for r in fl["rows"])
            out.append(f"Our bytes at the floor against {old}: {100 * (ours_new / ours_old - 1):+.2f} % in total, "
                       f"smaller on {fell} of {len(fl['rows'])} images.")
    if x2 is not None:
        per = x2["summary"]["1"]["vs_avif_per_image"]
        lo, hi = min(per, key=per.get), max(per, key=per.get)
        within = sum(v <= 10.0 for v in per.values())
        out.append(f"Kodak 2x vs AVIF per image: {_pct(per[lo])} {lo} … {_pct(per[hi])} {hi}; "
                   f"{within} of {len(per)} within +10 %.")
    if wk is not None:
        s = wk["summary"]
        better = sum(v < 0 for v in s["per_image"].values())
        presets = _presets(new, old)
        why = ("same architecture: noise" if presets[0] == presets[1] else
               "the architecture differs, see the registry's presets")
        out.append(f"Weights to weights on Kodak: {better} of {len(s['per_image'])} images better; decode time "
                   f"x{s['decode_time_ratio']:.2f}, encode x{s['encode_time_ratio']:.2f} ({why}).")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("new")
    ap.add_argument("old")
    ap.add_argument("--date", default=None, help="the date for the section heading (default: the eval file's mtime)")
    a = ap.parse_args(argv)
    day = a.date
    if day is None:
        import datetime

        f = RESULTS / f"kodak-{a.new}.json"
        day = (datetime.date.fromtimestamp(f.stat().st_mtime).isoformat() if f.exists()
               else datetime.date.today().isoformat())
    print("\n".join(kodak_section(a.new, a.old, day)))
    print("\n".join(bars(a.new, a.old)))


if __name__ == "__main__":
    main()
