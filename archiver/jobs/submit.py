"""Submit: create a distributed job and stream its source's listing to the workers in batches.

:func:`submit` creates the ``jobs`` row (status ``pending`` while the listing is being enqueued),
streams the listing and hands one batch per chunk of keys to ``enqueue``. The row's counters
(``objects_enqueued``, ``objects_listed``, ``bytes_listed``) are committed *before* each chunk is
sent, so a batch can never finish before it is counted; then the status becomes ``running``.
How the batches reach a worker is the front door's business: the CLI and the beat task pass
``workers.enqueue.celery_enqueue``, tests pass a list's ``append``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import ArchivedObject, Job, Result, aware, utcnow
from ..identity import Scope
from ..pipeline import PipelineOptions, iter_source
from ..records import Outcome, fail_job, finalize, new_job, record_outcome
from ..restore import prepare_destination
from ..vocabulary import CONTENT_REJECTIONS, LOSSLESS_REFUSALS, THRESHOLD_REJECTIONS, JobKind, JobStatus, Reason, ResultStatus

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..storage import ObjectInfo

#: one enqueued object: [key, etag, size] (a JSON-friendly list)
Item = Sequence[Any]
#: sends one batch: (job id, source URL, destination URL or None, items, options dict)
Enqueue = Callable[[int, str, "str | None", list[list[Any]], dict[str, Any]], None]


def submit(source: str, options: PipelineOptions | dict[str, Any] | None = None, dest: str | None = None,
           chunk_size: int | None = None, db_url: str | None = None, schedule_name: str | None = None,
           older_than_days: float | None = None, *, runtime: Runtime, enqueue: Enqueue,
           model_id: str | None = None, on_listed: Callable[[int, int], None] | None = None) -> int:
    """Create a job, stream the listing of ``source`` into batches on the ``recompress`` queue.

    Returns the job id. ``options``: full options, or a dict of overrides of the configured ones.
    ``older_than_days`` keeps only objects last modified at least that long ago (scheduled jobs);
    ``enqueue`` sends one batch; ``on_listed(listed, enqueued)`` is called after every batch
    (listing a big bucket takes minutes).
    """
    st = runtime.settings
    opts = as_options(options, runtime)
    sf = runtime.session_factory(db_url, migrate=True)
    kind = JobKind.SCHEDULED if schedule_name else JobKind.RECOMPRESS
    size = chunk_size or st.workers.chunk_size
    with sf() as s:
        job = new_job(s, kind=kind, source=source, dest=dest, model_id=model_id or st.model_id,
                      options=opts.as_dict(), status=JobStatus.PENDING, schedule_name=schedule_name,
                      extra=distributed(size, older_than_days))
        s.commit()
        job_id = job.id
    enqueue_listing(job_id, source, dest, opts, sf, runtime, chunk_size=size, older_than_days=older_than_days,
                    skip_archived=schedule_name is not None, skip_rejected=schedule_name is not None,
                    enqueue=enqueue, on_listed=on_listed)
    return job_id


def distributed(chunk_size: int, older_than_days: float | None) -> dict[str, Any]:
    """What a distributed job's row keeps besides its options (``via`` keeps ``run_job`` off it)."""
    return {"via": "workers", "chunk_size": chunk_size, "older_than_days": older_than_days}


def as_options(options: PipelineOptions | dict[str, Any] | None, runtime: Runtime) -> PipelineOptions:
    """Full options from a submit's argument: as configured, or overridden field by field."""
    if isinstance(options, PipelineOptions):
        return options
    configured = PipelineOptions.from_settings(runtime.settings)
    return configured.merged(options) if options else configured


def enqueue_listing(job_id: int, source: str, dest: str | None, opts: PipelineOptions, sf: sessionmaker[Session],
                    runtime: Runtime, *, chunk_size: int, older_than_days: float | None = None,
                    skip_archived: bool = False, skip_rejected: bool = False,
                    enqueue: Enqueue, on_listed: Callable[[int, int], None] | None = None) -> None:
    """List ``source`` and send it in chunks; any failure marks the job failed (and re-raises).

    ``skip_archived`` leaves out versions already archived; ``skip_rejected`` also leaves out
    versions an earlier job rejected for a reason that this run would meet again
    (:func:`rejection_repeats`), so a nightly schedule does not pay every night to refuse the
    same photos.

    Before listing, the destination is probed (``restore.prepare_destination``): a missing bucket
    or a missing permission fails the job at once (``dest_unwritable``) instead of in every batch.
    Entries the store cannot serve (a local name that is not UTF-8, a symlink out of the root, a
    FIFO) are recorded ``rejected`` here, in the transaction that counts them as enqueued, since
    no worker could look them up again."""
    cutoff = utcnow() - dt.timedelta(days=older_than_days) if older_than_days is not None else None
    options = opts.as_dict()
    try:
        src = runtime.store(source)
        if not opts.dry_run:
            prepare_destination(runtime.store(dest, create=True) if dest else src)
        with sf() as s:
            model_id = s.execute(select(Job.model_id).where(Job.id == job_id)).scalar_one()
        scope = Scope.of(src)
        chunk: list[list[Any]] = []
        refused: list[ObjectInfo] = []
        listed = listed_bytes = 0
        total_listed = total_enqueued = 0

        def flush() -> None:
            nonlocal chunk, refused, listed, listed_bytes, total_listed, total_enqueued
            items = (drop_archived(sf, scope, None if opts.upgrade else model_id, chunk)
                     if skip_archived and chunk else chunk)
            if skip_rejected and items:
                items = drop_rejected(sf, scope, model_id, opts, items)
            with sf() as s:  # counters first: a batch must never finish before it is counted
                for info in refused:  # recorded with their count, so the job cannot finish early
                    code, why = info.refused or ("", "")
                    record_outcome(s, job_id, scope, model_id,
                                   Outcome.of_listing(info, ResultStatus.REJECTED, code, why), "submit")
                s.execute(update(Job).where(Job.id == job_id).values(
                    objects_enqueued=Job.objects_enqueued + len(items) + len(refused),
                    objects_listed=Job.objects_listed + listed, bytes_listed=Job.bytes_listed + listed_bytes))
                s.commit()
            if items:
                enqueue(job_id, source, dest, items, options)
            n = len(items) + len(refused)
            total_listed, total_enqueued = total_listed + listed, total_enqueued + n
            chunk, refused, listed, listed_bytes = [], [], 0, 0
            if on_listed is not None:
                on_listed(total_listed, total_enqueued)

        for info in iter_source(src, opts):
            listed += 1
            listed_bytes += info.size
            if cutoff is not None and aware(info.last_modified) > cutoff:
                continue
            if info.refused is not None:
                refused.append(info)
            else:
                chunk.append([info.key, info.etag, info.size])
            if len(chunk) + len(refused) >= chunk_size:
                flush()
        flush()
    except BaseException as e:
        fail_job(sf, job_id, f"submission failed: {type(e).__name__}: {e}")
        raise
    with sf() as s:
        s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.PENDING)
                  .values(status=JobStatus.RUNNING))
        s.commit()
    finalize(sf, job_id)  # nothing to do, or every batch already finished while we were listing


def drop_archived(sf: sessionmaker[Session], scope: Scope, model_id: str | None,
                  chunk: list[list[Any]]) -> list[list[Any]]:
    """Leave out objects whose current version is already in the ledger for this model (for any
    model when ``model_id`` is None: a run that is not an upgrade)."""
    keys = [scope.key(k) for k, _, _ in chunk]
    where = [ArchivedObject.bucket == scope.bucket, ArchivedObject.key.in_(keys)]
    if model_id is not None:
        where.append(ArchivedObject.model_id == model_id)
    with sf() as s:
        have = {(k, e) for k, e in s.execute(select(ArchivedObject.key, ArchivedObject.etag).where(*where))}
    return [it for it in chunk if (scope.key(it[0]), it[1]) not in have]


def rejection_repeats(reason_code: str | None, then_model: str, then_options: dict[str, Any],
                      model_id: str, opts: PipelineOptions) -> bool:
    """Whether an earlier rejection of the same object version would happen again in this run.

    A content rejection always repeats. A threshold rejection repeats with the same model when this
    run asks at least as much: a PSNR floor no lower (the smallest passing bitstream can only grow)
    and, for ``insufficient_saving``, a saving floor no lower as well. Anything else (another
    model, looser thresholds, settings-dependent or unknown reasons) is tried again."""
    if reason_code in CONTENT_REJECTIONS:
        return True
    if reason_code in LOSSLESS_REFUSALS:  # the same bytes are refused again by the lossless-only policy
        return then_options.get("policy") == "lossless" and opts.policy == "lossless"
    if reason_code not in THRESHOLD_REJECTIONS or then_model != model_id:
        return False
    then_psnr, then_saving = then_options.get("min_psnr"), then_options.get("min_saving")
    if then_psnr is None or opts.min_psnr < float(then_psnr):
        return False
    if reason_code == Reason.INSUFFICIENT_SAVING:
        return then_saving is not None and opts.min_saving >= float(then_saving)
    return True


def drop_rejected(sf: sessionmaker[Session], scope: Scope, model_id: str, opts: PipelineOptions,
                  chunk: list[list[Any]]) -> list[list[Any]]:
    """Leave out object versions that an earlier job rejected for a reason that would repeat."""
    keys = [scope.key(k) for k, _, _ in chunk]
    q = (select(Result.key, Result.etag, Result.reason_code, Result.model_id, Job.settings)
         .join(Job, Job.id == Result.job_id)
         .where(Result.bucket == scope.bucket, Result.key.in_(keys), Result.status == ResultStatus.REJECTED,
                Result.etag.is_not(None)))
    with sf() as s:
        repeat = {(k, e) for k, e, code, then_model, then_settings in s.execute(q)
                  if rejection_repeats(code, then_model, (then_settings or {}).get("options") or {}, model_id, opts)}
    return [it for it in chunk if (scope.key(it[0]), it[1]) not in repeat]
