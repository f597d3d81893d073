"""``archiver report`` (ROI report from the results table) and ``archiver pilot`` (sample + projection).

Thin: resolve settings and filters, call ``archiver.report``, write the chosen format.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..codec.default import DEFAULT_MODEL
from ..report.render import FORMATS
from .options import effort_option
from .consoles import err_console as console, table_console


def _emit(text: str, fmt: str, out: str | None) -> None:
    if out:
        Path(out).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(out).expanduser().write_text(text, encoding="utf-8")
        console.print(f"wrote {fmt} to [bold]{escape(str(out))}[/bold]")
    else:
        click.echo(text, nl=False)


def _check_html_out(fmt: str, out: str | None) -> None:
    if fmt == "html" and not out:
        raise click.UsageError("--format html needs --out FILE (the report is one self-contained .html file)")


def _session_factory(db_url: str | None, *, migrate: bool):  # noqa: ANN202 - a sessionmaker
    """The ledger for ``--db`` / ``database_url``: a pilot brings the schema up to date, a report
    only reads and refuses a database that has no archiver schema."""
    from ..db.session import require_schema
    from .runtime import runtime

    rt = runtime()
    url = db_url or rt.settings.database_url
    if not migrate:
        require_schema(url)
    return rt.session_factory(url, migrate=migrate)


_price_options = [
    click.option("--price-per-gb-month", type=click.FloatRange(min=0), default=None,
                 help="storage price in $ per GB-month, GB = 10^9 bytes [settings: 0.023, S3 Standard]"),
    click.option("--gpu-price-per-hour", type=click.FloatRange(min=0), default=None,
                 help="price in $ per hour of GPU time (rows computed on a GPU) [settings: 2.5]"),
    click.option("--cpu-price-per-hour", type=click.FloatRange(min=0), default=None,
                 help="price in $ per hour of a CPU machine (wall time of rows from CPU-only runs) [settings: 0.10]"),
    click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True),
    click.option("--out", default=None, type=click.Path(dir_okay=False), help="write to FILE instead of stdout"),
    click.option("--db", "db_url", default=None, help="SQLAlchemy URL [settings: database_url]"),
]


def _with_options(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


@click.command()
@click.option("--job", "job_ids", type=int, multiple=True, help="only these jobs (repeatable); default: all "
              "recompress/scheduled jobs, leaving out pilots and dry runs")
@click.option("--since", default=None, help="results recorded on/after this ISO date or datetime (UTC)")
@click.option("--until", default=None, help="results recorded before the end of this ISO date (or before this datetime)")
@click.option("--bucket", default=None, help="only this bucket (S3 bucket name, or a local root path)")
@click.option("--prefix", default=None, help="only keys starting with this prefix")
@click.option("--model", default=None, help="only results of this model id")
@click.option("--prefix-depth", type=click.IntRange(min=1), default=1, show_default=True,
              help="group 'by prefix' on the first N path components of the key")
@_with_options(_price_options)
def report(job_ids, since, until, bucket, prefix, model, prefix_depth, price_per_gb_month, gpu_price_per_hour,
           cpu_price_per_hour, fmt, out, db_url) -> None:
    """ROI report: objects, bytes saved, quality, storage $ saved, compute cost and payback.

    Computed from the results table. GB = 10^9 bytes (as AWS bills); compute is the recorded
    gpu_seconds of GPU rows at the GPU price, and t_total (wall time) of CPU-only rows at the CPU
    price.
    """
    from ..report import Pricing, ReportFilters, build_report, parse_when, print_report, render
    from .runtime import settings

    _check_html_out(fmt, out)
    st = settings()
    pricing = Pricing.from_settings(st, price_per_gb_month, gpu_price_per_hour, cpu_price_per_hour)
    filters = ReportFilters(job_ids=list(job_ids), since=parse_when(since), until=parse_when(until, end=True),
                            bucket=bucket, prefix=prefix, model=model)
    factory = _session_factory(db_url, migrate=False)
    with factory() as s:
        data = build_report(s, filters, pricing, prefix_depth=prefix_depth)
    if fmt == "table" and not out:
        print_report(data, table_console())
    else:
        _emit(render(data, fmt), fmt, out)


@click.command()
@click.argument("source", required=False)
@click.option("--sample", "sample", type=click.IntRange(min=1), default=300, show_default=True,
              help="number of objects to sample")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of the sample")
@click.option("--min-psnr", type=click.FloatRange(1, 99), default=None, help="verified PSNR floor in dB [settings: 40]")
@click.option("--min-saving", type=click.FloatRange(0, 0.99), default=None, help="minimum fractional saving [0.1]")
@click.option("--model", default=None, help=f"model id [settings: {DEFAULT_MODEL}]")
@click.option("--device", default=None, help="cpu | cuda | auto [settings]")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="I/O threads")
@click.option("--job", "job_id", type=int, default=None, help="re-render the projection of a recorded pilot job "
              "instead of running a new one (no SOURCE)")
@click.option("--baselines", type=click.Choice(("none", "fast", "all")), default=None,
              help="classical codecs (AVIF, JPEG XL, WebP, JPEG) searched at the same PSNR floor on every sampled "
                   "image: none; fast (fast encoder settings); all (recommended settings, ~3-5x slower) "
                   "[settings: fast]")
@click.option("--task-check", "task_check", default=None, metavar="MODULE:FUNCTION",
              help="a function f(original_rgb, decoded_rgb) -> float called on every image for every codec; "
                   "the report shows its distribution per codec")
@click.option("--policy", type=click.Choice(("lossy", "lossless", "best")), default=None,
              help="tiers the projected run would store (see recompress --policy) [settings: best]")
@_with_options(_price_options)
@effort_option
def pilot(source, sample, seed, min_psnr, min_saving, model, device, workers, job_id, baselines, task_check,
          effort, policy, price_per_gb_month, gpu_price_per_hour, cpu_price_per_hour, fmt, out, db_url) -> None:
    """Recompress a random sample of SOURCE in memory and project the saving onto all of it.

    One streaming pass over the listing counts objects and bytes and keeps a seeded uniform
    sample (reservoir sampling). Each sampled object is encoded, decoded and verified exactly as
    by `recompress`, but nothing is written to storage; the outcomes are recorded as a job of
    kind "pilot". Projection: ratio estimator with a 95% confidence interval (Student t, finite
    population correction).

    Side by side, the classical codecs a buyer could use instead (--baselines): for every sampled
    image, the smallest AVIF, JPEG XL, WebP and JPEG file that decodes at the same PSNR floor,
    with the same projection, compute time and cost, and ConvNeXt-ChARM's advantage over the best
    of them. Recompress itself always uses ConvNeXt-ChARM.
    """
    from ..report import Pricing, load_pilot, print_pilot, render, run_pilot
    from ..report.compare import TaskCheck
    from .runtime import settings

    _check_html_out(fmt, out)
    if (source is None) == (job_id is None):
        raise click.UsageError("give SOURCE to run a pilot, or --job ID to show a recorded one")
    if job_id is not None and (baselines is not None or task_check is not None or policy is not None):
        raise click.UsageError("--baselines, --task-check and --policy run with a new pilot; --job shows what was recorded")
    check = None
    if task_check is not None:
        import sys

        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # a module next to where the command is run
        try:
            check = TaskCheck.load(task_check)
        except Exception as e:  # ReportError
            raise click.BadParameter(str(e), param_hint="--task-check") from None
    st = settings()
    pricing = Pricing.from_settings(st, price_per_gb_month, gpu_price_per_hour, cpu_price_per_hour)
    if job_id is not None:
        factory = _session_factory(db_url, migrate=False)
        with factory() as s:
            data = load_pilot(s, job_id, pricing)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ..codec.api import apply_torch_threads
        from ..pipeline import PipelineOptions
        from .runtime import runtime

        rt = runtime()
        factory = _session_factory(db_url, migrate=True)
        src = rt.store(source)
        opts = PipelineOptions.from_settings(st, min_psnr=min_psnr, min_saving=min_saving, dry_run=True,
                                             policy=policy, effort=effort)
        with console.status("loading model"):
            apply_torch_threads(st.torch_threads)
            codec = rt.codec(model, device)
        mode = baselines or st.pilot_baselines
        from ..baselines import CODEC_NAMES, LABELS

        n_codecs = 0 if mode == "none" else len(CODEC_NAMES)
        console.print(f"pilot: policy {opts.policy}; model {codec.model_id} on {codec.device_name}; PSNR >= {opts.min_psnr} dB, "
                      f"saving >= {opts.min_saving:.0%}; sample {sample} (seed {seed}); nothing is written to storage")
        if n_codecs:
            console.print(f"baselines ({mode}): {', '.join(LABELS[n] for n in CODEC_NAMES)} at the same PSNR floor"
                          + (f"; task check {check.spec}" if check else ""))
        progress = Progress(TextColumn("[bold]{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        with progress:
            task = progress.add_task(f"pilot ({codec.model_id})", total=None)
            btask = progress.add_task("classical codecs", total=None, visible=bool(n_codecs))

            def listed(n: int, nbytes: int, k: int) -> None:
                console.print(f"listed {n:,} objects ({nbytes:,} bytes); sampled {k:,}")
                progress.update(task, total=k)
                progress.update(btask, total=k * n_codecs)

            def baseline_done(key: str, name: str) -> None:
                progress.update(btask, advance=1, description=f"classical: {LABELS[name]}")

            data = run_pilot(src=src, source_url=source, codec=codec, opts=opts, session_factory=factory,
                             sample=sample, seed=seed, pricing=pricing, workers=workers,
                             on_outcome=lambda _o: progress.advance(task), on_listed=listed,
                             baselines=mode, task_check=check, on_baseline=baseline_done, hints=rt.quality_hints)
    if fmt == "table" and not out:
        print_pilot(data, table_console())
    else:
        _emit(render(data, fmt, pilot=True), fmt, out)


COMMANDS = [report, pilot]
