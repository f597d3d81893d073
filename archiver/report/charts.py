"""Report charts as self-contained PNGs (matplotlib, Agg backend, no display needed).

Each function takes the :class:`~archiver.report.core.Report` (or a pilot's dict) and returns PNG
bytes; the HTML embeds them as ``data:image/png;base64,...`` so the report is one file with no
external references.
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from .core import Distribution, Report  # noqa: E402

BEFORE = "#aab4c3"
AFTER = "#2563eb"
SAVED = "#16a34a"
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
FIGSIZE = (6.4, 3.4)
DPI = 150


def human_bytes(n: float) -> str:
    """Decimal units (kB, MB, GB, TB), matching the report's GB = 10^9 bytes."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} PB"


_BYTES = FuncFormatter(lambda v, _pos: human_bytes(v))


def _figure():
    plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 9.5, "axes.edgecolor": GRID,
                         "axes.labelcolor": INK, "xtick.color": MUTED, "ytick.color": MUTED,
                         "axes.titleweight": "bold", "axes.titlesize": 10.5, "axes.titlecolor": INK})
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _empty(ax, title: str, text: str = "no accepted objects in this selection") -> None:
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.5, text, ha="center", va="center", color=MUTED, fontsize=11, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def savings_by_prefix(report: Report, top: int = 12) -> bytes:
    fig, ax = _figure()
    title = "Bytes before and after, by prefix"
    groups = [g for g in report.by_prefix if g.bytes_before][:top]
    if not groups:
        _empty(ax, title)
        return _png(fig)
    groups = groups[::-1]  # largest saving on top
    names = [g.name for g in groups]
    y = range(len(groups))
    ax.barh([i + 0.2 for i in y], [g.bytes_before for g in groups], height=0.4, color=BEFORE, label="before")
    ax.barh([i - 0.2 for i in y], [g.bytes_after for g in groups], height=0.4, color=AFTER, label="after")
    for i, g in zip(y, groups):
        ax.text(g.bytes_before, i + 0.2, f"  -{g.saved_pct:.1f}%", va="center", fontsize=8, color=SAVED)
    ax.set_yticks(list(y), names)
    ax.xaxis.set_major_formatter(_BYTES)
    ax.grid(axis="y", visible=False)
    ax.set_xlim(0, max(g.bytes_before for g in groups) * 1.18)
    ax.set_title(title + " (accepted objects)", loc="left")
    ax.legend(frameon=False, loc="lower right")
    return _png(fig)


def histogram(dist: Distribution, title: str, xlabel: str, color: str = AFTER,
              threshold: float | None = None) -> bytes:
    fig, ax = _figure()
    edges, counts = dist.histogram.edges, dist.histogram.counts
    if not counts or not sum(counts):
        _empty(ax, title)
        return _png(fig)
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=color, edgecolor="white", linewidth=0.6)
    p50 = dist.percentiles.p50
    if p50 is not None:
        ax.axvline(p50, color=INK, linestyle="--", linewidth=1)
        ax.text(p50, max(counts) * 1.02, f" median {p50:.2f}", color=INK, fontsize=8, va="bottom")
    span = edges[-1] - edges[0]
    drawn = threshold is not None and edges[0] - 0.1 * span <= threshold <= edges[-1] + 0.1 * span
    if drawn:
        ax.axvline(threshold, color="#dc2626", linewidth=1)
        ax.text(threshold, max(counts) * 0.9, f" threshold {threshold:g} ", color="#dc2626", fontsize=8,
                ha="right" if threshold > (p50 or threshold) else "left")
    ax.set_ylim(0, max(counts) * 1.15)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("objects")
    shown = f"; threshold {threshold:g}" if threshold is not None and not drawn else ""
    ax.set_title(f"{title} (n = {dist.count:,}{shown})", loc="left")
    return _png(fig)


def psnr_histogram(report: Report) -> bytes:
    mins = [t.min_psnr for t in report.thresholds if t.min_psnr is not None]
    return histogram(report.psnr, "Verified PSNR of accepted objects", "PSNR (dB, RGB, peak 255)",
                     threshold=min(mins) if len(set(mins)) == 1 else None)


def bytes_by_content_type(report: Report) -> bytes:
    fig, ax = _figure()
    title = "Bytes before and after, by content type (accepted objects)"
    groups = [g for g in report.by_content_type if g.bytes_before]
    if not groups:
        _empty(ax, title)
        return _png(fig)
    x = list(range(len(groups)))
    ax.bar([i - 0.2 for i in x], [g.bytes_before for g in groups], width=0.4, color=BEFORE, label="before")
    ax.bar([i + 0.2 for i in x], [g.bytes_after for g in groups], width=0.4, color=AFTER, label="after")
    for i, g in zip(x, groups):
        ax.text(i, g.bytes_before, f"-{g.saved_pct:.1f}%\n", ha="center", va="bottom", fontsize=8, color=SAVED)
    ax.set_xticks(x, [f"{g.name}\n({g.accepted:,} objects)" for g in groups])
    ax.yaxis.set_major_formatter(_BYTES)
    ax.set_ylim(0, max(g.bytes_before for g in groups) * 1.22)
    ax.grid(axis="x", visible=False)
    ax.set_title(title, loc="left")
    ax.legend(frameon=False)
    return _png(fig)


def savings_by_format(rows: list[dict[str, Any]], title: str = "Savings by original format") -> bytes:
    """Bytes before and after per original format (JPEG, PNG, TIFF, other), with the saving and,
    where rows carry ``lossless``, how many objects went to the bit-exact tier. ``rows``: the
    ``by_format`` lists of the report's and the pilot's JSON."""
    fig, ax = _figure()
    rows = [r for r in rows if r.get("bytes_seen") or r.get("bytes_before")]
    if not rows:
        _empty(ax, title)
        return _png(fig)
    x = list(range(len(rows)))
    seen = [r.get("bytes_seen", r["bytes_before"]) for r in rows]
    after = [r["bytes_seen_after"] if "bytes_seen_after" in r else r.get("bytes_seen", r["bytes_before"]) - r["saved"]
             for r in rows]
    ax.bar([i - 0.2 for i in x], seen, width=0.4, color=BEFORE, label="original")
    ax.bar([i + 0.2 for i in x], after, width=0.4, color=AFTER, label="after archiving")
    for i, r, b in zip(x, rows, seen):
        share = 100.0 * r["saved"] / b if b else 0.0
        ax.text(i, b, f"-{share:.1f}%\n", ha="center", va="bottom", fontsize=8, color=SAVED)
    labels = []
    for r in rows:
        extra = f", {r['lossless']:,} lossless" if r.get("lossless") else ""
        labels.append(f"{r['format']}\n({r['objects']:,} objects{extra})")
    ax.set_xticks(x, labels)
    ax.yaxis.set_major_formatter(_BYTES)
    ax.set_ylim(0, max(seen) * 1.22)
    ax.grid(axis="x", visible=False)
    ax.set_title(title, loc="left")
    ax.legend(frameon=False)
    return _png(fig)


def cumulative_savings(report: Report) -> bytes:
    fig, ax = _figure()
    title = "Cumulative bytes saved over time"
    pts = report.timeline.points
    if not pts:
        _empty(ax, title)
        return _png(fig)
    ts = [dt.datetime.fromisoformat(p.t) for p in pts]
    ys = [p.saved_cumulative for p in pts]
    ax.step(ts, ys, where="post", color=SAVED, linewidth=1.8)
    ax.fill_between(ts, ys, step="post", color=SAVED, alpha=0.12)
    ax.yaxis.set_major_formatter(_BYTES)
    ax.set_ylim(0, max(ys) * 1.1 or 1)
    locator = mdates.AutoDateLocator(maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    unit = report.timeline.unit
    ax.set_title(title + (f" (per {unit}, UTC)" if unit else ""), loc="left")
    return _png(fig)


def pilot_projection(pilot: dict[str, Any]) -> bytes:
    """Total bytes listed vs projected bytes after recompression, with the 95% interval."""
    fig, ax = _figure()
    title = "Projected size of the whole source after recompression"
    total = pilot["population_bytes"]
    if not total:
        _empty(ax, title, "the source is empty")
        return _png(fig)
    after = total - pilot["projected_saved"]
    lo, hi = total - pilot["ci_high"], total - pilot["ci_low"]
    ax.barh([1], [total], color=BEFORE, height=0.5)
    ax.barh([0], [after], color=AFTER, height=0.5, xerr=[[after - lo], [hi - after]],
            error_kw={"ecolor": INK, "capsize": 6, "elinewidth": 1.2})
    ax.text(total, 1, f"  {human_bytes(total)}", va="center", fontsize=8.5, color=INK)
    ax.text(hi, 0, f"  {human_bytes(after)}  (95% CI {human_bytes(lo)} - {human_bytes(hi)})", va="center",
            fontsize=8.5, color=INK)
    ax.set_yticks([0, 1], ["projected after", "listed now"])
    ax.xaxis.set_major_formatter(_BYTES)
    ax.set_xlim(0, total * 1.45)
    ax.grid(axis="y", visible=False)
    ax.set_title(title, loc="left")
    return _png(fig)


def pilot_saving_histogram(pilot: dict[str, Any]) -> bytes:
    return histogram(Distribution.from_dict(pilot["saving_pct_distribution"]), "Saving per sampled object",
                     "saving (% of original bytes)", color=SAVED)


# ---- pilot: ConvNeXt-ChARM beside the classical codecs ---------------------------------------------

CODEC_COLORS = {"ours": AFTER, "avif": "#d97706", "jpegxl": "#7c3aed", "webp": "#0891b2", "jpeg": "#6b7280"}
CODEC_MARKERS = {"ours": "o", "avif": "s", "jpegxl": "D", "webp": "^", "jpeg": "v"}


def _codec_order(pilot: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of ours and the classical codecs, in report order."""
    return [("ours", "ConvNeXt-ChARM"), *((k, b["label"]) for k, b in (pilot.get("baselines") or {}).items())]


def codec_savings(pilot: dict[str, Any]) -> bytes:
    """Per-image saving (% of the original bytes; 0 where a codec missed the floor or the minimum
    saving) of each codec, as jittered dots with the sample's total saving as a bar behind them."""
    fig, ax = _figure()
    title = "Saving per sampled image, by codec"
    items = [i for i in pilot.get("per_image", []) if i.get("original_bytes")]
    if not items:
        _empty(ax, title, "no sampled images")
        return _png(fig)
    import random

    rng = random.Random(0)  # same jitter every render
    codecs = _codec_order(pilot)
    for pos, (key, _label) in enumerate(codecs):
        vals = [100.0 * i["saved"].get(key, 0) / i["original_bytes"] for i in items]
        summary = pilot["ours"] if key == "ours" else pilot["baselines"][key]
        total = summary.get("saving_pct") or 0.0
        ax.bar(pos, total, width=0.7, color=CODEC_COLORS.get(key, INK), alpha=0.18)
        ax.hlines(total, pos - 0.35, pos + 0.35, color=CODEC_COLORS.get(key, INK), linewidth=2)
        ax.text(pos, total, f"{total:.1f}%\n", ha="center", va="bottom", fontsize=8, color=INK)
        xs = [pos + rng.uniform(-0.22, 0.22) for _ in vals]
        ax.scatter(xs, vals, s=14, color=CODEC_COLORS.get(key, INK), marker=CODEC_MARKERS.get(key, "o"),
                   edgecolors="white", linewidths=0.4, zorder=3)
    ax.set_xticks(range(len(codecs)), [label for _k, label in codecs])
    ax.set_ylabel("saving (% of original bytes)")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 105)
    ax.grid(axis="x", visible=False)
    ax.set_title(f"{title} (n = {len(items):,}; bar: sample total)", loc="left")
    return _png(fig)


def rd_points(pilot: dict[str, Any]) -> bytes:
    """Rate-distortion points of the sample: bits per pixel vs decoded PSNR of each codec's chosen
    file, with the PSNR floor."""
    fig, ax = _figure()
    title = "RD points of the sample (smallest file at the floor)"
    drawn = 0
    for key, label in _codec_order(pilot):
        pts = []
        for i in pilot.get("per_image", []):
            b, p, w, h = i["bytes"].get(key), i["psnr"].get(key), i.get("width"), i.get("height")
            if b and p is not None and w and h:
                pts.append((8.0 * b / (w * h), p))
        if pts:
            drawn += len(pts)
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=18, color=CODEC_COLORS.get(key, INK),
                       marker=CODEC_MARKERS.get(key, "o"), label=label, alpha=0.85, edgecolors="white",
                       linewidths=0.4, zorder=3)
    if not drawn:
        _empty(ax, title, "no image reached the floor")
        return _png(fig)
    floor = pilot.get("min_psnr")
    if floor is not None:
        ax.axhline(floor, color="#dc2626", linewidth=1)
        ax.text(ax.get_xlim()[1], floor, f"floor {floor:g} dB ", color="#dc2626", fontsize=8, ha="right", va="bottom")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB, RGB)")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title(title, loc="left")
    return _png(fig)
