"""Submit: create a distributed job and stream its source's listing to the workers in batches.

:func:`submit` creates the ``jobs`` row (status ``pending`` while the listing is being enqueued),
streams the listing and hands one batch per chunk of keys to ``enqueue``. The row's counters
(``objects_enqueued``, ``objects_listed``, ``bytes_listed``) grow once a chunk was sent, so they
say what really reached the broker; only ``running`` jobs are finished, and the status becomes
``running`` after the last chunk, so a batch can never end the job before it is counted. A
submission that breaks off leaves the job resumable (:func:`resume`, and the same
:func:`submit` again finds it).
How the batches reach a worker is the front door's business: the CLI and the beat task pass
``workers.enqueue.celery_enqueue``, tests pass a list's ``append``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import ArchivedObject, Job, Result, aware, utcnow
from ..errors import ArchiverError, BrokerUnavailable
from ..identity import Scope
from ..pipeline import PipelineOptions, iter_source
from ..records import Outcome, fail_job, finalize, new_job, record_outcome
from ..restore import prepare_destination
from ..vocabulary import (ACTIVE_JOBS, CONTENT_REJECTIONS, DONE, LOSSLESS_REFUSALS, THRESHOLD_REJECTIONS, JobKind,
                          JobStatus, Reason, ResultStatus)
from .stalled import resume_command

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..storage import ObjectInfo

log = logging.getLogger(__name__)

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
    same = find_interrupted(sf, kind=kind, source=source, dest=dest, model_id=model_id or st.model_id,
                            options=opts.as_dict(), extra=distributed(size, older_than_days))
    if same is not None:  # the same command again after an outage: finish that job, do not start another
        log.info("resuming job %s, interrupted with the same source and options", same)
        return resume(same, db_url, runtime=runtime, enqueue=enqueue, on_listed=on_listed)
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


def find_interrupted(sf: sessionmaker[Session], *, kind: JobKind, source: str, dest: str | None, model_id: str,
                     options: dict[str, Any], extra: dict[str, Any]) -> int | None:
    """The newest job whose submission was interrupted and that a rerun of the same command
    (same source, destination, model, options, chunk size and age filter) should finish."""
    with sf() as s:
        rows = s.execute(select(Job).where(Job.status == JobStatus.PENDING, Job.kind == kind, Job.source == source,
                                           Job.model_id == model_id).order_by(Job.id.desc())).scalars().all()
        for job in rows:
            st = job.settings or {}
            if (st.get("interrupted") and job.dest == dest and st.get("options") == options
                    and all(st.get(k) == v for k, v in extra.items())):
                return job.id
    return None


def resume(job_id: int, db_url: str | None = None, *, runtime: Runtime, enqueue: Enqueue,
           on_listed: Callable[[int, int], None] | None = None) -> int:
    """Finish the submission of a stalled job: list its source again and enqueue exactly the
    objects this job has no final row for, with the options it was created with.

    For a job whose submission was interrupted (pending) and for one whose queue was lost
    (running, see :mod:`.stalled`). While this runs the job is ``pending`` again, so that no
    batch can finish it before its count is right; at the end ``objects_enqueued`` is set to
    the objects with a final row plus those sent now (each once), and the job is ``running``.
    Objects whose batches are in fact still queued are sent a second time: harmless, a batch
    redelivered is (rows are unique per job and key; a finished object is not redone)."""
    from .status import NoSuchJob

    sf = runtime.session_factory(db_url, migrate=True)
    with sf() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NoSuchJob(f"no job {job_id}")
        st = dict(job.settings or {})
        if st.get("via") != "workers":
            raise ArchiverError(f"job {job_id} was not submitted to the workers; rerun its command instead",
                                code="not_resumable")
        if job.status not in ACTIVE_JOBS:
            raise ArchiverError(f"job {job_id} is {job.status}: nothing to resume", code="not_resumable")
        st.pop("interrupted", None)
        done = s.execute(select(func.count()).select_from(Result).where(
            Result.job_id == job_id, Result.status.in_(DONE))).scalar_one()
        res = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE_JOBS)).values(
            status=JobStatus.PENDING, settings=st, error=None, objects_listed=0, bytes_listed=0,
            objects_enqueued=done))
        s.commit()
        if not getattr(res, "rowcount", 0):
            raise ArchiverError(f"job {job_id} ended meanwhile: nothing to resume", code="not_resumable")
        source, dest, scheduled = job.source, job.dest, job.kind == JobKind.SCHEDULED
    opts = PipelineOptions.from_dict(st.get("options") or {})
    log.info("job %s: resuming (%d object(s) already have a final row)", job_id, done)
    enqueue_listing(job_id, source, dest, opts, sf, runtime, chunk_size=int(st.get("chunk_size") or 16),
                    older_than_days=st.get("older_than_days"), skip_archived=scheduled, skip_rejected=scheduled,
                    enqueue=enqueue, on_listed=on_listed, resume=True)
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
                    enqueue: Enqueue, on_listed: Callable[[int, int], None] | None = None,
                    resume: bool = False) -> None:
    """List ``source`` and send it in chunks, then mark the job ``running``.

    The job's counters grow only after ``enqueue`` returned for a chunk, so the row always says
    what was really sent; the job stays ``pending`` until the listing is complete, and
    :func:`~archiver.records.finalize` only finishes ``running`` jobs, so a batch that finishes
    before it is counted cannot end the job early. If the listing or a send breaks off (the
    broker stayed down, ``BrokerUnavailable``), the job is left ``pending`` with
    ``settings.interrupted`` saying why: resumable (:func:`resume`, or the same command again),
    and shown as stalled. Only a job that had nothing enqueued and met another error (a missing
    bucket, an unwritable destination) is marked ``failed``. The error is re-raised.

    ``resume``: this job was enqueued before; only objects without a final row are sent, and at
    the end its count is set to those with a final row plus those sent now.

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
        sent: set[str] = set()  # full keys sent by a resume

        def flush() -> None:
            nonlocal chunk, refused, listed, listed_bytes, total_listed, total_enqueued
            items = (drop_archived(sf, scope, None if opts.upgrade else model_id, chunk)
                     if skip_archived and chunk else chunk)
            if skip_rejected and items:
                items = drop_rejected(sf, scope, model_id, opts, items)
            if resume:
                items = drop_finished(sf, job_id, scope, items)
                if refused:
                    had = _finished(sf, job_id, scope, [i.key for i in refused])
                    refused = [i for i in refused if scope.key(i.key) not in had]
            if items:  # sent first, counted after: the row never counts a batch that was not sent
                enqueue(job_id, source, dest, items, options)
                if resume:
                    sent.update(scope.key(it[0]) for it in items)
            with sf() as s:
                for info in refused:  # no worker could look them up again: recorded here
                    code, why = info.refused or ("", "")
                    record_outcome(s, job_id, scope, model_id,
                                   Outcome.of_listing(info, ResultStatus.REJECTED, code, why), "submit")
                s.execute(update(Job).where(Job.id == job_id).values(
                    objects_enqueued=Job.objects_enqueued + len(items) + len(refused),
                    objects_listed=Job.objects_listed + listed, bytes_listed=Job.bytes_listed + listed_bytes))
                s.commit()
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
        interrupt_or_fail(sf, job_id, e)
        raise
    with sf() as s:
        values: dict[str, Any] = {"status": JobStatus.RUNNING}
        if resume:  # each object once: those with a final row, and those sent now
            done = set(s.execute(select(Result.key).where(Result.job_id == job_id,
                                                          Result.status.in_(DONE))).scalars())
            values["objects_enqueued"] = len(done | sent)
        s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.PENDING).values(**values))
        s.commit()
    finalize(sf, job_id)  # nothing to do, or every batch already finished while we were listing


def interrupt_or_fail(sf: sessionmaker[Session], job_id: int, exc: BaseException) -> None:
    """After a listing broke off: ``failed`` for a job that never had anything enqueued and met
    something other than a broker outage (nothing runs for it; rerunning is the fix); otherwise
    ``pending`` with ``settings.interrupted``, because its batches run and may delete originals,
    and only finishing the listing lets the job end with its books right."""
    with sf() as s:
        job = s.get(Job, job_id)
        if job is None or job.status not in ACTIVE_JOBS:
            return
        what = f"{type(exc).__name__}: {exc}"
        if not (job.objects_enqueued or 0) and not isinstance(exc, BrokerUnavailable):
            s.rollback()
            fail_job(sf, job_id, f"submission failed: {what}")
            return
        job.settings = {**(job.settings or {}), "interrupted":
                        f"{what} ({job.objects_enqueued or 0} object(s) enqueued before it); "
                        f"resume with `{resume_command(job_id)}`"}
        job.status = JobStatus.PENDING
        s.commit()
        log.warning("job %s: submission interrupted after %s object(s) enqueued: %s", job_id,
                    job.objects_enqueued or 0, what)


def _finished(sf: sessionmaker[Session], job_id: int, scope: Scope, keys: list[str]) -> set[str]:
    with sf() as s:
        return set(s.execute(select(Result.key).where(
            Result.job_id == job_id, Result.bucket == scope.bucket, Result.status.in_(DONE),
            Result.key.in_([scope.key(k) for k in keys]))).scalars())


def drop_finished(sf: sessionmaker[Session], job_id: int, scope: Scope, chunk: list[list[Any]]) -> list[list[Any]]:
    """Leave out objects this job already has a final row for (a resumed job)."""
    if not chunk:
        return chunk
    done = _finished(sf, job_id, scope, [it[0] for it in chunk])
    return [it for it in chunk if scope.key(it[0]) not in done]


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
