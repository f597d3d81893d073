"""Archive front door: ``archiver recompress`` and ``archiver restore``.

Both are thin: they resolve settings, open stores and the database, and call
``archiver.pipeline.run_job`` / ``archiver.restore.restore_all`` — the same functions the Celery
tasks call.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..codec.default import DEFAULT_MODEL
from ..errors import ArchiverError
from .options import effort_option, policy_option
from .consoles import LogTicker, err_console as console, fail, table_console

if TYPE_CHECKING:
    from ..pipeline import JobSummary

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
DEMO_DIR = Path("archive-demo")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n):,} B"
        n /= 1024
    return str(n)


def prepare_demo() -> str:
    """Copy the shipped sample images to ./archive-demo/source (the shipped files stay pristine)."""
    src = DEMO_DIR / "source"
    src.mkdir(parents=True, exist_ok=True)
    for f in sorted(SAMPLES.iterdir()):
        if f.is_file() and not (src / f.name).exists() and not (src / (f.name + ".cxa")).exists():
            shutil.copy2(f, src / f.name)
    return str(src.resolve())


def _by_reason(counts: dict[str, int]) -> str:
    return f"  ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})" if counts else ""


def summary_table(summary: JobSummary) -> Table:
    """The table ``recompress`` prints at the end; each status line names its own reasons."""
    t = Table(title=f"job {summary.job_id} summary", show_header=False)
    t.add_row("objects seen", f"{summary.seen}")
    t.add_row("accepted", f"{summary.accepted}")
    t.add_row("rejected", f"{summary.rejected}" + _by_reason(summary.rejected_reasons))
    t.add_row("failed", f"{summary.failed}" + _by_reason(summary.failed_reasons))
    t.add_row("skipped (already archived)", f"{summary.skipped}")
    t.add_row("originals deleted", f"{summary.deleted}")
    t.add_row("bytes before -> after (accepted)", f"{human(summary.bytes_before)} -> {human(summary.bytes_after)}")
    pct = summary.saved_bytes / summary.bytes_before if summary.bytes_before else 0.0
    t.add_row("saved", f"{human(summary.saved_bytes)} ({pct:.1%})")
    t.add_row("time", f"{summary.seconds:.1f} s")
    return t


@click.command()
@click.argument("source", required=False)
@click.option("--dest", default=None, help="write containers under this store URL instead of beside the originals")
@click.option("--min-psnr", type=click.FloatRange(1, 99), default=None, help="verified PSNR floor in dB [settings: 40]")
@click.option("--min-saving", type=click.FloatRange(0, 0.99), default=None, help="minimum fractional saving [0.1]")
@click.option("--replace", is_flag=True, help="delete each original after its container is written, re-read and verified")
@click.option("--dry-run", is_flag=True, help="recompress and verify in memory; write and delete nothing")
@click.option("--limit", type=int, default=None, help="process at most N objects")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="I/O threads per process")
@click.option("--model", default=None, help=f"model id [settings: {DEFAULT_MODEL}]")
@click.option("--device", default=None, help="cpu | cuda | auto [settings]")
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL [settings: sqlite:///archiver.sqlite]")
@click.option("--new-job", is_flag=True, help="start a new job even if an unfinished identical one exists")
@click.option("--upgrade", is_flag=True,
              help="also re-encode objects already archived with another (older) model")
@effort_option
@policy_option
def recompress(source, dest, min_psnr, min_saving, replace, dry_run, limit, workers, model, device, db_url, new_job,
               upgrade, effort, policy) -> None:
    """Recompress every image under SOURCE (s3://bucket/prefix, file:///dir or a path).

    Without SOURCE, runs on the sample images shipped with the package (copied to ./archive-demo).
    """
    from ..codec.api import apply_torch_threads
    from ..pipeline import PipelineOptions, run_job
    from ..records import Outcome
    from .runtime import runtime

    try:
        rt = runtime()
        st = rt.settings
        if source is None:
            source = prepare_demo()
            console.print(f"no SOURCE given: running on the shipped samples in [bold]{escape(str(source))}[/bold]")
        sf = rt.session_factory(db_url, migrate=True)
        src = rt.store(source)
        dest_url = dest or (st.dest if st.dest_mode == "prefix" else None)
        dst = rt.store(dest_url, create=True) if dest_url else src
        opts = PipelineOptions.from_settings(st, min_psnr=min_psnr, min_saving=min_saving, replace=replace,
                                             dry_run=dry_run, upgrade=upgrade, effort=effort, policy=policy)
        with console.status("loading model"):
            apply_torch_threads(st.torch_threads)
            codec = rt.codec(model, device)
        console.print(f"policy {opts.policy}; model {codec.model_id} on {codec.device_name}; PSNR >= {opts.min_psnr} dB, "
                      f"saving >= {opts.min_saving:.0%}{'; DRY RUN' if dry_run else ''}{'; REPLACE originals' if replace else ''}"
                      f"{'; UPGRADE older archives' if upgrade else ''}")
        progress = Progress(TextColumn("[bold]recompress"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
        with progress:
            task = progress.add_task("objects", total=limit, info="")

            ticker = LogTicker(console, st.log_progress_every)

            def on_outcome(out: Outcome, s: JobSummary) -> None:
                elapsed = max(progress.tasks[0].elapsed or 1e-9, 1e-9)
                info = (f"ok {s.accepted} rej {s.rejected} fail {s.failed} skip {s.skipped} | "
                        f"{human(s.bytes_before)} -> {human(s.bytes_after)} saved {human(s.saved_bytes)} | "
                        f"{s.seen / elapsed:.2f} obj/s")
                progress.update(task, completed=s.seen, info=info)
                if ticker.due():
                    console.print(f"recompress: {s.seen} objects{f' of {limit}' if limit else ''} | {info} | "
                                  f"{elapsed:.0f} s", highlight=False)

            summary = run_job(src=src, dst=dst, source_url=source, dest_url=dest_url, codec=codec, opts=opts,
                              session_factory=sf, limit=limit, workers=workers, on_outcome=on_outcome,
                              new_job=new_job, codec_slots=st.workers.codec_slots, hints=rt.quality_hints)
    except ArchiverError as e:
        fail(e)
    table_console().print(summary_table(summary))
    if summary.failed:
        # Rejections are verdicts under the policy; failures (storage, a changed object, a bug)
        # are not, and a scheduler must see them: exit 1, and a rerun retries exactly those.
        console.print(f"[yellow]{summary.failed} object(s) failed[/yellow]; see `archiver report` or the results table; "
                      "rerunning the same command retries them")
        raise SystemExit(1)


@click.command()
@click.argument("source")
@click.option("--to", "to", required=True, help="output directory or store URL")
@click.option("--format", "fmt", type=click.Choice(["png", "original", "jpeg", "webp"]), default="png", show_default=True)
@click.option("--device", default=None)
@click.option("--limit", type=int, default=None)
@click.option("--overwrite", is_flag=True, help="replace objects already at the output keys (default: skip them)")
def restore(source, to, fmt, device, limit, overwrite) -> None:
    """Decode every container under SOURCE back to images under --to.

    Existing objects at the output keys are kept (counted as skipped) unless --overwrite.
    """
    from ..codec.api import apply_torch_threads
    from ..restore import restore_all
    from .runtime import runtime

    try:
        rt = runtime()
        st = rt.settings
        apply_torch_threads(st.torch_threads)
        src, dst = rt.store(source), rt.store(to, create=True)
        ok = bad = skipped = 0
        with Progress(TextColumn("[bold]restore"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as prog:
            task = prog.add_task("restore", total=limit)
            ticker = LogTicker(console, st.log_progress_every)
            for item in restore_all(src, dst, codecs=rt, fmt=fmt, suffix=st.container_suffix, device=device,
                                    limit=limit, overwrite=overwrite, max_pixels=st.max_pixels):
                ok += item.ok and not item.skipped
                skipped += item.skipped
                bad += not item.ok
                if not item.ok:
                    console.print(f"[yellow]{escape(item.key)}[/yellow]: {escape(str(item.error))}")
                prog.update(task, completed=ok + bad + skipped)
                if ticker.due():
                    console.print(f"restore: {ok} restored, {skipped} skipped, {bad} failed", highlight=False)
    except ArchiverError as e:
        fail(e)
    console.print(f"restored {ok} image(s) to {escape(str(to))}; {skipped} skipped (already there; --overwrite replaces them); "
                  f"{bad} failed")
    if bad:
        raise SystemExit(1)


COMMANDS = [recompress, restore]
