"""Renderers for the ROI report and the pilot projection: rich tables, CSV, JSON and HTML.

The HTML is one self-contained file: inline CSS, charts as base64 PNGs (matplotlib, Agg), no
script and no external URL, so it can be mailed, archived or opened offline. Stable element ids
(``kpi-*``, ``chart-*``, ``table-*``) let tests and scripts find each part.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .charts import human_bytes
from .core import Distribution, Group, Report, ReportFilters
from ..vocabulary import ResultStatus

FORMATS = ("table", "csv", "json", "html")


# ---- number formatting -------------------------------------------------------------------------

def fmt_money(x: float | None) -> str:
    if x is None:
        return "n/a"
    sign, a = ("-" if x < 0 else ""), abs(x)
    if a != 0 and a < 0.01:  # tiny pilots: two significant digits, no exponent ("$0.0000074")
        if a < 1e-10:
            return f"{sign}<$0.0000000001"
        digits = 1 - math.floor(math.log10(a))
        return f"{sign}${a:.{digits}f}"
    return f"{sign}${a:,.2f}"


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}%"


def fmt_num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def fmt_months(m: float | None) -> str:
    if m is None:
        return "never"
    if m == 0:
        return "immediate"
    if m < 1:
        days = m * 365.25 / 12
        return f"{days:.2g} days" if days < 1 else f"{days:.1f} days"
    if m >= 24:
        return f"{m / 12:,.1f} years"
    return f"{m:,.1f} months"


def fmt_bytes(n: float | None) -> str:
    return "n/a" if n is None else human_bytes(n)


def fmt_duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:,.1f} h"


# ---- JSON / CSV ----------------------------------------------------------------------------------

def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(_clean(data), indent=2, sort_keys=False) + "\n"


_NAME_KEYS = ("prefix", "content_type", "reason_code", "id", "key", "model_id")


def _flatten(section: str, item: str, v: Any, metric: str = "") -> Iterator[tuple[str, str, str, Any]]:
    """(section, item, metric, value) rows: nested dicts extend ``item``; lists of named dicts
    use the name (prefix, content type, job id...) as the item; lists of scalars are ``;``-joined."""
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(x, (dict, list)):
                yield section, item, k, x
        for k, x in v.items():
            if isinstance(x, dict):
                yield from _flatten(section, f"{item}.{k}" if item else k, x)
            elif isinstance(x, list):
                yield from _flatten(section, item, x, k)
    elif isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            base = f"{item}.{metric}" if item and metric else (item or metric)
            for i, x in enumerate(v):
                name = next((str(x[k]) for k in _NAME_KEYS if k in x and x[k] is not None), None)
                if "status" in x and "reason_code" in x:
                    name = f"{x['status']}:{x['reason_code']}"
                sub = name if name is not None else str(i)
                yield from _flatten(section, f"{base}[{sub}]" if base else sub, x)
        else:
            yield section, item, metric, ";".join("" if x is None else str(x) for x in v)
    else:
        yield section, item, metric, v


def to_csv(data: dict[str, Any]) -> str:
    """A tidy CSV: ``section,item,metric,value`` (one number per row, easy to pivot)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "item", "metric", "value"])
    for section, v in _clean(data).items():
        if isinstance(v, (dict, list)):
            for row in _flatten(section, "", v):
                w.writerow(["" if x is None else x for x in row])
        else:
            w.writerow([section, "", "", "" if v is None else v])
    return buf.getvalue()


# ---- rich tables ---------------------------------------------------------------------------------

def _kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, v)
    return t


def _groups_table(title: str, name: str, groups: list[Group], limit: int = 30) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold")
    for col, just in ((name, "left"), ("objects", "right"), ("accepted", "right"), ("bytes seen", "right"),
                      ("before", "right"), ("after", "right"), ("saved", "right"), ("saved %", "right")):
        t.add_column(col, justify=just)
    for g in groups[:limit]:
        t.add_row(g.name, f"{g.objects:,}", f"{g.accepted:,}", fmt_bytes(g.bytes_seen), fmt_bytes(g.bytes_before),
                  fmt_bytes(g.bytes_after), fmt_bytes(g.saved), fmt_pct(g.saved_pct))
    if len(groups) > limit:
        t.caption = f"{len(groups) - limit} more not shown (see --format csv/json)"
    return t


def _dist_cells(label: str, d: Distribution) -> list[str]:
    """metric, n, min, p5, p25, median, p75, p95, max, mean (the table's and the HTML's columns)."""
    p = d.percentiles
    return [label, f"{d.count:,}", fmt_num(d.min), fmt_num(p.p5), fmt_num(p.p25), fmt_num(p.p50), fmt_num(p.p75),
            fmt_num(p.p95), fmt_num(d.max), fmt_num(d.mean)]


def _dist_rows(report: Report) -> list[list[str]]:
    return [_dist_cells("PSNR (dB)", report.psnr), _dist_cells("bits per pixel", report.bpp)]


def _dist_table(report: Report) -> Table:
    t = Table(title="Quality and size of accepted objects", title_justify="left", title_style="bold")
    t.add_column("metric")
    for c in ("n", "min", "p5", "p25", "median", "p75", "p95", "max", "mean"):
        t.add_column(c, justify="right")
    for row in _dist_rows(report):
        t.add_row(*row)
    return t


def _outcome_rows(report: Report) -> list[tuple[str, str]]:
    c = report.counts
    rows = [("objects seen", f"{c.seen:,}"), ("accepted", f"{c.accepted:,}")]
    for status, n in (("rejected", c.rejected), ("failed", c.failed), ("skipped", c.skipped)):
        detail = ", ".join(f"{r.reason_code}: {r.count:,}" for r in report.reasons if r.status == status)
        rows.append((status, f"{n:,}" + (f"  ({detail})" if detail and status != ResultStatus.SKIPPED else "")))
    if c.pending:
        rows.append(("pending", f"{c.pending:,}"))
    if c.superseded:
        rows.append(("superseded (archived again later; not in the savings)", f"{c.superseded:,}"))
    if c.retried:
        rows.append(("retried (met again later; counted by that outcome)", f"{c.retried:,}"))
    rows.append(("originals deleted (saving realised)", f"{c.originals_deleted:,}"))
    return rows


def _price_label(basis: str, gpu_price_per_hour: float, cpu_price_per_hour: float) -> str:
    """The compute price(s) a report used, by its basis: GPU hours, CPU-machine hours, or both."""
    gpu = f"${gpu_price_per_hour:g}/GPU-h"
    cpu = f"${cpu_price_per_hour:g}/CPU-h"
    return {"gpu_seconds": gpu, "t_total": cpu}.get(basis, f"{gpu}, {cpu}")


def _money_rows(report: Report) -> list[tuple[str, str]]:
    b, m, comp, a = report.bytes, report.money, report.compute, report.assumptions
    return [
        ("bytes before -> after (accepted)", f"{fmt_bytes(b.before)} -> {fmt_bytes(b.after)}"),
        ("saved", f"{fmt_bytes(b.saved)}  ({fmt_pct(b.saved_pct)} of accepted, "
                  f"{fmt_pct(b.saved_pct_of_seen)} of all seen)"),
        (f"storage saved / month  @ ${a.price_per_gb_month:g}/GB-month", fmt_money(m.storage_saving_per_month)),
        ("storage saved / year", fmt_money(m.storage_saving_per_year)),
        (f"compute ({comp.basis})  @ {_price_label(comp.basis, a.gpu_price_per_hour, a.cpu_price_per_hour)}",
         f"{fmt_duration(comp.compute_seconds)} -> {fmt_money(comp.cost)}"),
        ("net saving, first year", fmt_money(m.net_saving_first_year)),
        ("payback", fmt_months(m.payback_months)),
    ]


def _job_cells(report: Report, time_sep: str = "T") -> list[list[str]]:
    """job, kind, status, model, min PSNR, min saving, source, created (the table's and the HTML's columns)."""
    return [[str(j.id), j.kind, j.status, j.model_id, fmt_num(j.min_psnr),
             fmt_pct(100 * j.min_saving if j.min_saving is not None else None, 0), j.source,
             (j.created_at or "")[:19].replace("T", time_sep)] for j in report.jobs]


def _jobs_table(report: Report) -> Table:
    t = Table(title="Jobs, models and thresholds", title_justify="left", title_style="bold")
    for col in ("job", "kind", "status", "model", "min PSNR", "min saving", "source", "created (UTC)"):
        t.add_column(col)
    for row in _job_cells(report):
        t.add_row(*row)
    return t


def print_report(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    console.print(_kv_table("Outcomes", _outcome_rows(report)))
    console.print(_kv_table("Savings and cost", _money_rows(report)))
    console.print(_groups_table("By content type", "content type", report.by_content_type))
    if report.by_format:
        console.print(_groups_table("By original format", "format", report.by_format))
    if report.by_tier:
        console.print(_groups_table("By stored tier (accepted objects)", "tier", report.by_tier))
    console.print(_groups_table(f"By prefix (depth {report.prefix_depth})", "prefix", report.by_prefix))
    console.print(_dist_table(report))
    console.print(_jobs_table(report))
    if report.excluded_jobs:
        console.print(f"[dim]left out by default (pilots, dry runs): jobs {', '.join(map(str, report.excluded_jobs))}; "
                      "select them with --job[/dim]")
    for note in report.assumptions.notes:
        console.print(f"[dim]* {note}[/dim]", highlight=False)


def _pilot_price_label(p: dict[str, Any]) -> str:
    """The pilot's compute price(s); a pilot dict without a CPU price shows its GPU price for both."""
    gpu = p["assumptions"]["gpu_price_per_hour"]
    return _price_label(p["compute_basis"], gpu, p["assumptions"].get("cpu_price_per_hour", gpu))


def _with_range(mid: dict[str, Any], lo: dict[str, Any], hi: dict[str, Any], key: str) -> str:
    return f"{fmt_money(mid[key])}  ({fmt_money(lo[key])} - {fmt_money(hi[key])})"


def pilot_rows(p: dict[str, Any]) -> list[tuple[str, str]]:
    pm, lo, hi = p["projected_money"], p["money_low"], p["money_high"]
    return [
        ("source", p["source"]),
        ("objects listed / bytes listed", f"{p['population_objects']:,} / {fmt_bytes(p['population_bytes'])}"),
        ("sample (seed)", f"{p['sample_size']:,} of {p['sample_requested']:,} requested (seed {p['seed']})"),
        ("sample outcomes", ", ".join(f"{k} {v:,}" for k, v in p["sample_counts"].items() if v)),
        ("sample bytes -> saved", f"{fmt_bytes(p['sample_bytes'])} -> {fmt_bytes(p['sample_saved'])} "
                                  f"({fmt_pct(p['projected_saved_pct'])})"),
        ("projected saving", f"{fmt_bytes(p['projected_saved'])}  (95% CI {fmt_bytes(p['ci_low'])} - {fmt_bytes(p['ci_high'])})"),
        ("projected saving %", f"{fmt_pct(p['projected_saved_pct'])}  "
                               f"(95% CI {fmt_pct(p['ci_low_pct'])} - {fmt_pct(p['ci_high_pct'])})"),
        (f"projected $/month  @ ${p['assumptions']['price_per_gb_month']:g}/GB-month",
         _with_range(pm, lo, hi, "storage_saving_per_month")),
        ("projected $/year", _with_range(pm, lo, hi, "storage_saving_per_year")),
        (f"projected compute ({p['compute_basis']})  @ {_pilot_price_label(p)}",
         f"{fmt_duration(p['projected_compute_seconds'])} -> {fmt_money(pm['compute_cost'])}"),
        ("projected payback", fmt_months(pm["payback_months"])),
        ("pilot job", f"{p['job_id']} (model {p['model_id']}, min PSNR {p['min_psnr']:g} dB, min saving {p['min_saving']:.0%})"),
    ]


# ---- pilot: ConvNeXt-ChARM beside the classical codecs (shared by the table and the HTML) ---------

CODEC_HEADERS = ["codec", "reached floor", "saved on", "bytes before -> after", "saved %",
                 "projected saving (95% CI)", "projected % (95% CI)", "compute (sample)", "projected compute $",
                 "storage $/year"]
TASK_HEADERS = ["codec", "images", "min", "median", "mean", "max", "errors"]


def _codecs(p: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    lossless = [("lossless", p["lossless"])] if p.get("lossless") else []
    return [("ours", p["ours"]), *lossless, *p.get("baselines", {}).items()]


FORMAT_HEADERS = ["format", "objects", "archived", "of them lossless", "bytes before -> after", "saved", "saved %"]
TIER_HEADERS = ["stored tier", "objects", "bytes before -> after", "saved", "saved %"]


def format_rows(p: dict[str, Any]) -> list[list[str]]:
    """The pilot's savings by original format (JPEG, PNG, TIFF, other) under its policy."""
    return [[f["format"], f"{f['objects']:,}", f"{f['accepted']:,}", f"{f['lossless']:,}",
             f"{fmt_bytes(f['bytes_before'])} -> {fmt_bytes(f['bytes_after'])}", fmt_bytes(f["saved"]),
             fmt_pct(f["saving_pct"])] for f in p.get("by_format", [])]


def tier_rows(p: dict[str, Any]) -> list[list[str]]:
    """The pilot's archived objects by stored tier, and the lossless tier on its own (every JPEG)."""
    rows = [[t, f"{d['objects']:,}", f"{fmt_bytes(d['bytes_before'])} -> {fmt_bytes(d['bytes_after'])}",
             fmt_bytes(d["saved"]), fmt_pct(d["saving_pct"])] for t, d in p.get("tiers", {}).items()]
    c = p.get("lossless")
    if c:
        rows.append([f"{c['label']}, alone (projected {fmt_pct(c['projected_saved_pct'])})",
                     f"{c['accepted']:,} of {c['jpeg_images']:,} JPEGs",
                     f"{fmt_bytes(c['bytes_before'])} -> {fmt_bytes(c['bytes_after'])}", fmt_bytes(c["saved_bytes"]),
                     fmt_pct(c["saving_pct"])])
    return rows


def codec_rows(p: dict[str, Any]) -> list[list[str]]:
    """One row per codec (ours first): reach, bytes, saving, projection with its interval, time, cost."""
    rows = []
    for _key, c in _codecs(p):
        n = c["images"]
        rows.append([c["label"], f"{c['reached']:,} / {n:,}", f"{c['accepted']:,}",
                     f"{fmt_bytes(c['bytes_before'])} -> {fmt_bytes(c['bytes_after'])}", fmt_pct(c["saving_pct"]),
                     f"{fmt_bytes(c['projected_saved'])} ({fmt_bytes(c['ci_low'])} - {fmt_bytes(c['ci_high'])})",
                     f"{fmt_pct(c['projected_saved_pct'])} ({fmt_pct(c['ci_low_pct'])} - {fmt_pct(c['ci_high_pct'])})",
                     fmt_duration(c["seconds"]), fmt_money(c["projected_compute_cost"]),
                     fmt_money(c["projected_money"]["storage_saving_per_year"])])
    return rows


def _signed_bytes(n: float) -> str:
    return ("+" if n > 0 else "-" if n < 0 else "") + fmt_bytes(abs(n))


def _signed_pp(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f} pp"


def advantage_rows(p: dict[str, Any]) -> list[tuple[str, str]]:
    """ConvNeXt-ChARM's saving minus the best classical codec's, in total with its interval."""
    rows = []
    for a in p["advantage"].values():
        who = f"{a['label']} (best single codec)" if a["versus"] != "per_image_best" else a["label"]
        rows.append((f"vs {who}: sample",
                     f"{_signed_bytes(a['saved_bytes'])} saved ({_signed_pp(a['saving_pct_points'])} of the bytes); "
                     f"archive {fmt_pct(a['smaller_than_theirs_pct'])} smaller"))
        rows.append((f"vs {who}: projected (95% CI)",
                     f"{_signed_bytes(a['projected'])} ({_signed_bytes(a['ci_low'])} - {_signed_bytes(a['ci_high'])}); "
                     f"{_signed_pp(a['projected_pct_points'])} ({_signed_pp(a['ci_low_pct_points'])} - "
                     f"{_signed_pp(a['ci_high_pct_points'])})"))
    return rows


def per_image_headers(p: dict[str, Any]) -> list[str]:
    return ["key", "original", *(c["label"] for _k, c in _codecs(p)), "best classical", "advantage"]


def per_image_rows(p: dict[str, Any], limit: int | None = None) -> list[list[str]]:
    """Per image: each codec's saving (or why none), the best classical codec and our advantage."""
    names = [k for k, _c in _codecs(p)]
    labels = {k: c["label"] for k, c in _codecs(p)}
    rows = []
    for i in p["per_image"][:limit]:
        cells = [i["key"], fmt_bytes(i["original_bytes"])]
        for k in names:
            if i["bytes"].get(k) is None or (k == "ours" and i["status"] == "failed"):
                cells.append("not reached" if i.get("width") or k != "ours" else i["status"])
            else:
                cells.append(fmt_pct(pct_of(i["saved"][k], i["original_bytes"])) if i["saved"][k] else "kept (no saving)")
        best = i.get("best_classical")
        cells += [labels.get(best, "none") if best else "none", _signed_pp(i.get("advantage_pct_points"))]
        rows.append(cells)
    return rows


def pct_of(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def task_rows(p: dict[str, Any]) -> list[list[str]]:
    labels = {k: c["label"] for k, c in _codecs(p)}
    return [[labels.get(k, k), f"{d['count']:,}", fmt_num(d["min"], 4), fmt_num(d["median"], 4), fmt_num(d["mean"], 4),
             fmt_num(d["max"], 4), f"{d['errors']:,}"] for k, d in p["task_check"]["by_codec"].items()]


def versions_text(p: dict[str, Any]) -> str:
    run = p.get("baseline_run") or {}
    v = ", ".join(f"{k} {x}" for k, x in (run.get("versions") or {}).items() if x)
    codecs = "; ".join(f"{c['label']}: " + ", ".join(f"{k}={x}" for k, x in c["settings"].items())
                       for c in (run.get("codecs") or {}).values())
    fast = (" The fast preset's classical files run 3-12% larger than with --baselines all (docs/BENCHMARKS.md), "
            "so it slightly flatters ConvNeXt-ChARM." if run.get("mode") == "fast" else "")
    return f"Baselines preset {run.get('mode')}.{fast} Settings: {codecs}. Libraries: {v}."


COMPARISON_NOTE = ("Each classical codec: the smallest file (quality searched by bisection, PSNR near-monotone in "
                   "quality; the smallest passing file among all settings tried) whose decoded PSNR, by the same "
                   "function the archive verifies with, meets the floor. An image counts as saved for a codec when it "
                   "reaches the floor and saves at least the pilot's minimum saving, exactly as for ours; otherwise "
                   "it counts 0 (the original is kept). Classical compute is every encode, decode and PSNR of the "
                   "search, priced at the CPU price. Advantage = ConvNeXt-ChARM's saving minus the classical one "
                   "(pp = percentage points of the bytes); projected with the same ratio estimator and 95% interval. "
                   "Recompress itself always uses ConvNeXt-ChARM.")


def _rich_table(title: str, headers: list[str], rows: list[list[str]], caption: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", caption=caption)
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return t


def print_pilot(p: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(_kv_table("Pilot projection", pilot_rows(p)))
    if p.get("by_format"):
        console.print(_rich_table(f"Savings by original format (policy {p.get('policy', 'lossy')})", FORMAT_HEADERS,
                                  format_rows(p)))
        console.print(_rich_table("Stored tiers", TIER_HEADERS, tier_rows(p)))
    if p.get("baselines"):
        console.print(_rich_table(f"ConvNeXt-ChARM and the classical codecs at PSNR >= {p['min_psnr']:g} dB",
                                  CODEC_HEADERS, codec_rows(p)))
        console.print(_kv_table("ConvNeXt-ChARM's advantage over the best classical codec", advantage_rows(p)))
        limit = 30
        more = len(p["per_image"]) - limit
        console.print(_rich_table("Per image: saving by codec", per_image_headers(p), per_image_rows(p, limit),
                                  caption=f"{more} more not shown (see --format csv/json)" if more > 0 else None))
    if p.get("task_check"):
        console.print(_rich_table(f"Task check {p['task_check']['function']} (images each codec brought to the floor)",
                                  TASK_HEADERS, task_rows(p)))
        for e in p["task_check"]["errors"][:5]:
            console.print(Text(f"task check error: {e['key']} ({e['codec']}): {e['error']}", style="dim"),
                          highlight=False)
    console.print(f"[dim]* {p['method']}[/dim]", highlight=False)
    if p.get("baselines"):
        console.print(f"[dim]* {COMPARISON_NOTE}[/dim]", highlight=False)
        console.print(Text(f"* {versions_text(p)}", style="dim"), highlight=False)
    for note in p["assumptions"]["notes"][:2]:
        console.print(f"[dim]* {note}[/dim]", highlight=False)


# ---- HTML ----------------------------------------------------------------------------------------

CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9; --card:#ffffff; --accent:#2563eb; --good:#16a34a; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; }
header { display:flex; justify-content:space-between; align-items:flex-end; border-bottom:2px solid var(--ink);
         padding-bottom:12px; margin-bottom:20px; }
h1 { font-size: 26px; margin:0; letter-spacing:-0.01em; }
.subtitle { color:var(--muted); margin-top:2px; }
.meta { color:var(--muted); font-size:12px; text-align:right; }
h2 { font-size: 17px; margin: 30px 0 10px; }
.kpis { display:grid; grid-template-columns: repeat(4, 1fr); gap:14px; }
.kpi { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px;
       box-shadow: 0 1px 2px rgba(0,0,0,.04); }
.kpi .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.05em; }
.kpi .value { font-size:28px; font-weight:700; margin-top:4px; font-variant-numeric: tabular-nums; }
.kpi .value.good { color: var(--good); }
.kpi .sub { color:var(--muted); font-size:12px; margin-top:2px; }
.counts { display:flex; gap:8px; flex-wrap:wrap; margin-top:14px; }
.pill { background:var(--card); border:1px solid var(--line); border-radius:999px; padding:3px 12px; font-size:13px; }
.pill b { font-variant-numeric: tabular-nums; }
.charts { display:grid; grid-template-columns: 1fr 1fr; gap:14px; }
figure { margin:0; background:var(--card); border:1px solid var(--line); border-radius:10px; padding:10px; }
figure img { width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:12px; padding:4px 4px 0; }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line); border-radius:10px;
        overflow:hidden; font-variant-numeric: tabular-nums; }
th, td { padding:7px 10px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th { background:#f3f4f6; font-size:12px; text-transform:uppercase; letter-spacing:.04em; color:#374151; }
th:first-child, td:first-child { text-align:left; }
td.l, th.l { text-align:left; }
td.wrap { white-space:normal; word-break:break-all; }
tr:last-child td { border-bottom:none; }
.two { display:grid; grid-template-columns: 2fr 3fr; gap:14px; align-items:start; }
.two td { white-space:normal; }
.notes { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:10px 18px; color:#374151; }
.notes li { margin:4px 0; }
footer { color:var(--muted); font-size:12px; margin-top:28px; }
#table-codecs th, #table-codecs td, #table-per-image th { white-space:normal; }
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _img(png: bytes, ident: str, alt: str, caption: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure><img id="{ident}" alt="{_e(alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _kpi(ident: str, label: str, value: str, sub: str = "", good: bool = False) -> str:
    return (f'<div class="kpi" id="{ident}"><div class="label">{_e(label)}</div>'
            f'<div class="value{" good" if good else ""}">{_e(value)}</div><div class="sub">{_e(sub)}</div></div>')


def _html_table(ident: str, headers: list[str], rows: list[list[Any]], left: tuple[int, ...] = (0,),
                wrap: tuple[int, ...] = ()) -> str:
    th = "".join(f'<th class="{"l" if i in left else ""}">{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(
            f'<td class="{" ".join(c for c, on in (("l", i in left), ("wrap", i in wrap)) if on)}">{_e(v)}</td>'
            for i, v in enumerate(r)) + "</tr>"
        for r in rows)
    return f'<table id="{ident}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _page(title: str, subtitle: str, meta: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f'<header><div><h1>{_e(title)}</h1><div class="subtitle">{_e(subtitle)}</div></div>'
            f'<div class="meta">{meta}</div></header>\n{body}\n'
            f"<footer>Generated by archiver. Self-contained file: no scripts, no external resources.</footer>"
            f"</main></body></html>\n")


def _group_rows(groups: list[Group], limit: int = 50) -> list[list[Any]]:
    return [[g.name, f"{g.objects:,}", f"{g.accepted:,}", fmt_bytes(g.bytes_seen), fmt_bytes(g.bytes_before),
             fmt_bytes(g.bytes_after), fmt_bytes(g.saved), fmt_pct(g.saved_pct)] for g in groups[:limit]]


GROUP_HEADERS = ["objects", "accepted", "bytes seen", "before", "after", "saved", "saved %"]


def _filters_text(f: ReportFilters) -> str:
    """The report's scope in words; dates as in the JSON (ISO 8601, UTC)."""
    parts = ["jobs " + ", ".join(map(str, f.job_ids))] if f.job_ids else []
    parts += [f"{k} {v}" for k, v in f.as_dict().items() if k != "job_ids" and v]
    return "; ".join(parts) or "all recompress jobs"


def report_html(report: Report) -> str:
    from . import charts

    b, m, c, comp, a = report.bytes, report.money, report.counts, report.compute, report.assumptions
    models = ", ".join(report.models) or "n/a"
    thresholds = "; ".join(f"{t.model_id}: PSNR >= {t.min_psnr:g} dB, saving >= {100 * (t.min_saving or 0):.0f}%"
                           for t in report.thresholds if t.min_psnr is not None) or "n/a"
    meta = (f"Generated {_e(report.generated_at[:19].replace('T', ' '))} UTC"
            f"<br>Scope: {_e(_filters_text(report.filters))}<br>Model(s): {_e(models)}")
    kpis = "".join([
        _kpi("kpi-bytes-saved", "Bytes saved", fmt_bytes(b.saved), f"{fmt_bytes(b.before)} -> {fmt_bytes(b.after)}",
             good=True),
        _kpi("kpi-saved-pct", "Saved", fmt_pct(b.saved_pct),
             f"of accepted bytes; {fmt_pct(b.saved_pct_of_seen)} of all seen"),
        _kpi("kpi-per-year", "Storage saved / year", fmt_money(m.storage_saving_per_year),
             f"{fmt_money(m.storage_saving_per_month)}/month at ${a.price_per_gb_month:g}/GB-month", good=True),
        _kpi("kpi-payback", "Payback", fmt_months(m.payback_months),
             f"compute {fmt_money(comp.cost)} one-off; net 1st year {fmt_money(m.net_saving_first_year)}"),
    ])
    pills = "".join(f'<span class="pill">{_e(label)} <b>{n:,}</b></span>' for label, n in (
        ("seen", c.seen), ("accepted", c.accepted), ("rejected", c.rejected), ("failed", c.failed),
        ("skipped", c.skipped), ("originals deleted", c.originals_deleted))
        + ((("superseded", c.superseded),) if c.superseded else ())
        + ((("retried", c.retried),) if c.retried else ()))
    chart_html = "".join([
        _img(charts.savings_by_prefix(report), "chart-savings-by-prefix", "Savings by prefix: bytes before and after",
             f"Accepted objects grouped by the first {report.prefix_depth} key component(s); label = % saved."),
        _img(charts.psnr_histogram(report), "chart-psnr-histogram", "Histogram of verified PSNR",
             "PSNR measured by decoding the stored bitstream against the original pixels."),
        _img(charts.bytes_by_content_type(report), "chart-bytes-by-content-type", "Bytes before and after by content type",
             "Content type sniffed from the bytes (not the object's declared type)."),
        _img(charts.savings_by_format([g.as_dict("format") for g in report.by_format]), "chart-savings-by-format",
             "Savings by original format", "JPEG, PNG, TIFF and other originals: bytes seen, and after archiving "
             "(objects not archived keep their bytes); label: saving of all bytes seen."),
        _img(charts.cumulative_savings(report), "chart-cumulative-savings", "Cumulative savings over time",
             "Cumulative saved bytes by the time each result was recorded."),
    ])
    outcome_rows = [[k, v] for k, v in _outcome_rows(report)]
    money_rows = [[k, v] for k, v in _money_rows(report)]
    notes = "".join(f"<li>{_e(n)}</li>" for n in a.notes)
    if report.excluded_jobs:
        left_out = ", ".join(map(str, report.excluded_jobs))
        notes += f"<li>Left out by default (pilot jobs and dry runs): jobs {_e(left_out)}.</li>"
    types = _html_table("table-content-types", ["content type", *GROUP_HEADERS], _group_rows(report.by_content_type))
    prefixes = _html_table("table-prefixes", ["prefix", *GROUP_HEADERS], _group_rows(report.by_prefix))
    dists = _html_table("table-distributions", ["metric", "n", "min", "p5", "p25", "median", "p75", "p95", "max", "mean"],
                        _dist_rows(report))
    jobs = _html_table("table-jobs", ["job", "kind", "status", "model", "min PSNR", "min saving", "source", "created (UTC)"],
                       _job_cells(report, time_sep=" "), left=(0, 1, 2, 3, 6), wrap=(6,))
    body = (
        f'<section class="kpis">{kpis}</section><div class="counts" id="counts">{pills}</div>'
        f'<h2>Charts</h2><section class="charts">{chart_html}</section>'
        f'<h2>Outcomes and money</h2><section class="two">'
        f'{_html_table("table-outcomes", ["outcome", "objects"], outcome_rows)}'
        f'{_html_table("table-money", ["item", "value"], money_rows)}</section>'
        f'<h2>By content type</h2>{types}'
        f'<h2>By original format</h2>{_html_table("table-formats", ["format", *GROUP_HEADERS], _group_rows(report.by_format))}'
        f'<h2>By stored tier</h2>{_html_table("table-tiers", ["tier", *GROUP_HEADERS], _group_rows(report.by_tier))}'
        f'<h2>By prefix (depth {report.prefix_depth})</h2>{prefixes}'
        f'<h2>Quality distributions (accepted objects)</h2>{dists}'
        f'<h2>Jobs, models and thresholds</h2><p class="subtitle">Thresholds: {_e(thresholds)}</p>{jobs}'
        f'<h2>Method and assumptions</h2><ul class="notes" id="assumptions">{notes}</ul>'
    )
    return _page("Archive ROI report", "Learned-codec recompression: savings, cost and payback", meta, body)


def pilot_html(p: dict[str, Any]) -> str:
    from . import charts

    pm, lo, hi = p["projected_money"], p["money_low"], p["money_high"]
    meta = (f"Generated {_e(p['generated_at'][:19].replace('T', ' '))} UTC<br>Pilot job {p['job_id']}, seed {p['seed']}"
            f"<br>Model: {_e(p['model_id'])}")
    kpis = "".join([
        _kpi("kpi-projected-saved", "Projected saving", fmt_bytes(p["projected_saved"]),
             f"95% CI {fmt_bytes(p['ci_low'])} - {fmt_bytes(p['ci_high'])}", good=True),
        _kpi("kpi-projected-pct", "Projected saved", fmt_pct(p["projected_saved_pct"]),
             f"of {fmt_bytes(p['population_bytes'])} listed ({p['population_objects']:,} objects)"),
        _kpi("kpi-per-year", "Storage saved / year", fmt_money(pm["storage_saving_per_year"]),
             f"95% CI {fmt_money(lo['storage_saving_per_year'])} - {fmt_money(hi['storage_saving_per_year'])}", good=True),
        _kpi("kpi-payback", "Projected payback", fmt_months(pm["payback_months"]),
             f"compute for the whole source ~ {fmt_money(pm['compute_cost'])}"),
    ])
    chart_html = "".join([
        _img(charts.pilot_projection(p), "chart-pilot-projection", "Projected size after recompression with 95% interval",
             "Whole source: bytes listed now, and projected bytes after recompression (error bar: 95% CI)."),
        _img(charts.pilot_saving_histogram(p), "chart-pilot-savings", "Histogram of per-object saving in the sample",
             "Per sampled object: saved bytes / original bytes (0 for rejected or failed objects)."),
    ])
    compare = ""
    if p.get("by_format"):
        chart_html += _img(charts.savings_by_format(p["by_format"], f"Savings by original format (policy {p.get('policy', 'lossy')})"),
                           "chart-savings-by-format", "Savings by original format",
                           "Sampled objects per original format: bytes before, and after archiving under the pilot's "
                           "policy (objects not archived keep their original bytes); label: saving, lossless count.")
        compare += (f'<h2>Savings by original format</h2>{_html_table("table-by-format", FORMAT_HEADERS, format_rows(p))}'
                    f'<h2>Stored tiers</h2>{_html_table("table-tiers", TIER_HEADERS, tier_rows(p), wrap=(0,))}')
    if p.get("baselines"):
        chart_html += "".join([
            _img(charts.codec_savings(p), "chart-codec-savings", "Saving per sampled image, by codec",
                 "Per image: saved bytes / original bytes for each codec at the same PSNR floor (0 when the codec "
                 "missed the floor or the minimum saving); bar: the sample's total."),
            _img(charts.rd_points(p), "chart-rd-points", "RD points of the sample: bits per pixel vs PSNR",
                 "Each codec's chosen file per image: bits per pixel and decoded PSNR; red line: the floor."),
        ])
        compare += (f'<h2>ConvNeXt-ChARM and the classical codecs at PSNR &ge; {p["min_psnr"]:g} dB</h2>'
                   f'{_html_table("table-codecs", CODEC_HEADERS, codec_rows(p))}'
                   f'<h2>Advantage over the best classical codec</h2>'
                   f'{_html_table("table-advantage", ["item", "value"], [list(r) for r in advantage_rows(p)], wrap=(1,))}'
                   f'<h2>Per image</h2>{_html_table("table-per-image", per_image_headers(p), per_image_rows(p), wrap=(0,))}')
    if p.get("task_check"):
        errs = "".join(f"<li>{_e(e['key'])} ({_e(e['codec'])}): {_e(e['error'])}</li>" for e in p["task_check"]["errors"])
        compare += (f'<h2>Task check {_e(p["task_check"]["function"])}</h2>'
                    f'<p class="subtitle">{_e(p["task_check"]["note"])}</p>'
                    f'{_html_table("table-task-check", TASK_HEADERS, task_rows(p))}'
                    + (f'<ul class="notes" id="task-check-errors">{errs}</ul>' if errs else ""))
    notes = [p["method"], *((COMPARISON_NOTE, versions_text(p)) if p.get("baselines") else ()),
             *p["assumptions"]["notes"][:3]]
    body = (f'<section class="kpis">{kpis}</section>'
            f'<h2>Charts</h2><section class="charts">{chart_html}</section>'
            f'<h2>Projection</h2>{_html_table("table-pilot", ["item", "value"], [list(r) for r in pilot_rows(p)], wrap=(1,))}'
            f'{compare}'
            f'<h2>Method and assumptions</h2><ul class="notes" id="assumptions">'
            + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return _page("Archive pilot: projected savings", f"Random sample of {p['sample_size']:,} objects from {p['source']}",
                 meta, body)


def render(data: Report | dict[str, Any], fmt: str, *, pilot: bool = False) -> str:
    """Render the ROI report (a :class:`Report`) or, with ``pilot``, a pilot projection (a dict) as
    table/csv/json/html text. A report's JSON and CSV are those of its ``as_dict()``."""
    if isinstance(data, Report) == pilot:
        raise TypeError("render takes build_report's Report, or with pilot=True a pilot projection's dict")
    if fmt == "json":
        return to_json(data.as_dict() if isinstance(data, Report) else data)
    if fmt == "csv":
        return to_csv(data.as_dict() if isinstance(data, Report) else data)
    if fmt == "html":
        return report_html(data) if isinstance(data, Report) else pilot_html(data)
    if fmt == "table":
        buf = io.StringIO()
        console = Console(file=buf, width=140, force_terminal=False, color_system=None)
        if isinstance(data, Report):
            print_report(data, console)
        else:
            print_pilot(data, console)
        return buf.getvalue()
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
