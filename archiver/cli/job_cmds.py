"""Distributed front door: ``archiver submit``, ``archiver status``, ``archiver cancel`` and
``archiver serve``. Thin wrappers over :mod:`archiver.jobs` and :mod:`archiver.server`."""

from __future__ import annotations

import datetime as dt
import json

import click
from rich.markup import escape
from rich.table import Table

from .pipeline_cmds import human
from ..errors import ArchiverError
from ..vocabulary import DONE
from .options import effort_option, policy_option
from .consoles import LogTicker, err_console as console, fail, table_console


def _require_schema(db_url: str | None) -> None:
    """status and cancel only read: a wrong --db must be named, not created or traced back."""
    from ..db.session import require_schema
    from .runtime import settings

    require_schema(db_url or settings().database_url)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return str(dt.timedelta(seconds=int(seconds)))


def _broker_view():
    """The workers' view of the broker's queues (``None`` for a broker that cannot be inspected:
    then a lost queue is not detected, an interrupted submission still is)."""
    from .runtime import settings

    try:
        from workers.inflight import broker_view  # a front door may know the workers; imported late

        return broker_view(settings().broker_url)
    except Exception as e:  # noqa: BLE001 - e.g. a bad schedules file, which the workers' app validates
        console.print(f"[yellow]note[/yellow]: cannot inspect the broker's queues ({escape(str(e))})", highlight=False)
        return None


@click.command()
@click.argument("source", required=False)
@click.option("--resume", "resume_job", type=int, default=None, metavar="JOB",
              help="finish a stalled job: enqueue again exactly its objects without a final row")
@click.option("--dest", default=None, help="write containers under this store URL instead of beside the originals")
@click.option("--min-psnr", type=click.FloatRange(1, 99), default=None, help="verified PSNR floor in dB [settings]")
@click.option("--min-saving", type=click.FloatRange(0, 0.99), default=None, help="minimum fractional saving [settings]")
@click.option("--replace", is_flag=True, help="delete each original after its container is written, re-read and verified")
@click.option("--chunk-size", type=click.IntRange(1, 10_000), default=None, help="objects per batch [settings: 16]")
@click.option("--older-than-days", type=click.FloatRange(0), default=None, help="only objects last modified this long ago")
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL [settings: database_url]")
@click.option("--upgrade", is_flag=True,
              help="also re-encode objects already archived with another (older) model")
@click.option("--model", default=None, help="model id: packaged, or published in the model store [settings: model_id]")
@effort_option
@policy_option
def submit(source, resume_job, dest, min_psnr, min_saving, replace, chunk_size, older_than_days, db_url, upgrade,
           model, effort, policy) -> None:
    """Queue a recompression job over SOURCE for the Celery workers; prints the job id.

    The same command again after a broker outage finishes the job it interrupted; `--resume JOB`
    finishes any stalled job (see `archiver status JOB`) with the options it was created with."""
    from .. import jobs
    from ..model_store import require_model
    from ..pipeline import PipelineOptions
    from .runtime import runtime

    if (source is None) == (resume_job is None):
        raise click.UsageError("give SOURCE, or --resume JOB (not both)")
    rt = runtime()
    st = rt.settings
    dest = dest or (st.dest if st.dest_mode == "prefix" else None)
    opts = PipelineOptions.from_settings(st, min_psnr=min_psnr, min_saving=min_saving, replace=replace,
                                         upgrade=upgrade, effort=effort, policy=policy)
    if model:
        try:
            require_model(model, st)  # an unknown id fails here, not in every worker batch
        except ArchiverError as e:
            fail(e)
    ticker = LogTicker(console, st.log_progress_every)
    from workers.enqueue import celery_enqueue  # the Celery send; imported here, not at CLI start

    with console.status("listing and enqueueing") as spinner:

        def on_listed(listed: int, enqueued: int) -> None:
            spinner.update(f"listing and enqueueing: {listed:,} listed, {enqueued:,} enqueued")
            if ticker.due():
                console.print(f"submit: {listed:,} objects listed, {enqueued:,} enqueued", highlight=False)

        try:
            if resume_job is not None:
                _require_schema(db_url)
                job_id = jobs.resume(resume_job, db_url, runtime=rt, on_listed=on_listed,
                                     enqueue=celery_enqueue(st))
            else:
                job_id = jobs.submit(source, opts, dest=dest, chunk_size=chunk_size, db_url=db_url,
                                     older_than_days=older_than_days, runtime=rt, on_listed=on_listed,
                                     model_id=model, enqueue=celery_enqueue(st))
        except ArchiverError as e:  # broker_unavailable: the job is left resumable, its row says so
            fail(e)
    s = jobs.status(job_id, db_url, runtime=rt)
    console.print(f"job [bold]{job_id}[/bold]: {s.objects_enqueued} object(s) in batches of "
                  f"{chunk_size or st.workers.chunk_size} queued; follow with `archiver status {job_id}`")
    click.echo(job_id)


@click.command()
@click.argument("job", type=int, required=False)
@click.option("--limit", type=int, default=20, show_default=True, help="jobs listed without JOB")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL [settings: database_url]")
def status(job, limit, as_json, db_url) -> None:
    """Progress of JOB (counts, bytes saved, rate, ETA); without JOB, the recent jobs."""
    from .. import jobs
    from .runtime import runtime

    _require_schema(db_url)
    rt = runtime()
    broker = _broker_view()
    rows = ([jobs.status(job, db_url, runtime=rt, broker=broker)] if job is not None
            else jobs.recent_jobs(limit, db_url, runtime=rt, broker=broker))
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows] if job is None else rows[0].as_dict(), indent=2))
        return
    if job is not None:
        r = rows[0]
        t = Table(title=f"job {r.id} ({r.kind}{', ' + r.schedule_name if r.schedule_name else ''})", show_header=False)
        t.add_row("status", r.state + (f" ({escape(r.error)})" if r.error else ""))
        if r.stalled:
            t.add_row("stalled", escape(r.stalled))
            t.add_row("recover", f"`{jobs.resume_command(r.id)}` (re-enqueues exactly the objects without a "
                      "final row)")
        t.add_row("source -> dest", escape(f"{r.source} -> {r.dest or '(beside)'}"))
        t.add_row("model", r.model_id)
        left_out = r.objects_listed - r.objects_enqueued
        why = ("  (listing interrupted)" if r.stalled and r.status == "pending" else
               "  (still listing)" if r.status == "pending" else
               f"  ({left_out} left out at submission: too recent, already archived, or refused before "
               "for a reason that would repeat)" if r.kind == "scheduled" and left_out > 0 else "")
        t.add_row("listed / enqueued", f"{r.objects_listed} / {r.objects_enqueued}{why}")
        t.add_row("done", f"{r.done} / {r.objects_enqueued}")
        t.add_row("accepted / rejected / failed / skipped",
                  " / ".join(str(r.count(k)) for k in DONE))
        if r.reasons:
            t.add_row("reasons", ", ".join(f"{k}: {v}" for k, v in sorted(r.reasons.items())))
        pct = r.saved_bytes / r.bytes_before if r.bytes_before else 0.0
        t.add_row("bytes (accepted)", f"{human(r.bytes_before)} -> {human(r.bytes_after)}, saved "
                  f"{human(r.saved_bytes)} ({pct:.1%})")
        t.add_row("rate", f"{r.rate:.2f} objects/s over {duration(r.elapsed)}")
        t.add_row("ETA", duration(r.eta_seconds))
        table_console().print(t)
        return
    t = Table("job", "kind", "status", "source", "done/enqueued", "acc", "rej", "fail", "skip", "saved", "rate/s",
              "ETA", title="recent jobs")
    for r in rows:
        t.add_row(str(r.id), escape(r.schedule_name or r.kind), r.state, escape(r.source), f"{r.done}/{r.objects_enqueued}",
                  str(r.count("accepted")), str(r.count("rejected")), str(r.count("failed")), str(r.count("skipped")),
                  human(r.saved_bytes), f"{r.rate:.2f}", duration(r.eta_seconds))
    table_console().print(t)


@click.command()
@click.argument("job", type=int)
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL [settings: database_url]")
def cancel(job, db_url) -> None:
    """Cancel JOB: workers stop before their next object (finished objects stay recorded)."""
    from .. import jobs
    from .runtime import runtime

    _require_schema(db_url)
    rt = runtime()
    if jobs.cancel(job, db_url, runtime=rt):
        console.print(f"job {job} cancelled")
    else:
        console.print(f"job {job} had already ended ({jobs.status(job, db_url, runtime=rt).status})")


@click.command()
@click.option("--host", default=None, help="address to bind [settings: 127.0.0.1]")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="port [settings: 8080]")
def serve(host, port) -> None:
    """Serve archived images over HTTP: GET /objects/{bucket}/{key}?format=png|jpeg|webp (with
    `Authorization: Bearer <token>`), GET /health. A public --host needs a token to exist
    (`archiver token create`); on 127.0.0.1 with none, one is created and printed once."""
    from ..server import serve as run
    from .runtime import settings

    run(host=host, port=port, settings=settings())


COMMANDS = [submit, status, cancel, serve]
