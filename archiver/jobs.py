"""Distributed jobs: submit a listing as batches to the workers, follow, cancel, finalize.

The CLI (``archiver submit/status/cancel``), Celery beat triggers and the worker tasks all call
these functions; ``workers/`` only adapts them to Celery.

How a job flows and why it is safe:

* :func:`submit` creates the ``jobs`` row (status ``pending`` while the listing is being
  enqueued), streams the listing and sends one ``recompress_batch`` message per chunk of keys.
  The row's counters (``objects_enqueued``, ``objects_listed``, ``bytes_listed``) are committed
  *before* each chunk is sent, then the status becomes ``running``.
* A worker runs :func:`process_batch` for each chunk: every object goes through
  :func:`archiver.pipeline.handle_object`, the same per-object step as the CLI loop, so the
  order "verified container written and re-read -> row committed -> only then delete the
  original" holds for workers too. Result rows are unique per (job, bucket, key), so a batch
  delivered twice (a worker killed mid-batch and the message redelivered) updates rows instead
  of duplicating them, and objects already finished are not recompressed.
* :func:`finalize` marks a ``running`` job ``finished`` once it has one finished row (accepted,
  rejected, failed or skipped) per enqueued object; every batch calls it when it ends. The
  update is conditional (``WHERE status = 'running'``), so concurrent batches cannot race it.
* :func:`cancel` sets ``cancelled``; batches check the status before each object and stop.
* :func:`start_scheduled` starts a run of a schedule unless one is still pending/running; the
  check and the insert happen in one transaction under a database lock (PostgreSQL advisory
  transaction lock; SQLite's ``BEGIN IMMEDIATE`` write lock), so two beats cannot both start.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from .db.models import ArchivedObject, Job, Result, utcnow
from .errors import ArchiverError, StorageError
from .identity import Scope
from .vocabulary import ACTIVE_JOBS, ARCHIVED, DONE, SETTLED

if TYPE_CHECKING:
    from .codec.api import Codec
    from .pipeline import Outcome, PipelineOptions
    from .schedules import Schedule
    from .settings import Settings
    from .storage import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: one enqueued object: [key, etag, size] (a JSON-friendly list)
Item = Sequence[Any]
Enqueue = Callable[[int, str, "str | None", list[list[Any]], dict[str, Any]], None]


class NoSuchJob(ArchiverError):
    code = "no_such_job"


# ---- sessions and stores, one per process ---------------------------------------------------

_FACTORIES: dict[str, sessionmaker[Session]] = {}
_UPGRADED: set[str] = set()
_STORES: dict[tuple[str, bool], ObjectStore] = {}
_LOCK = threading.Lock()


def get_session_factory(url: str, *, migrate: bool = False) -> sessionmaker[Session]:
    """A cached sessionmaker per database URL (per process); ``migrate`` upgrades the schema once."""
    from .db.session import session_factory, upgrade

    with _LOCK:
        if migrate and url not in _UPGRADED:
            upgrade(url)
            _UPGRADED.add(url)
        if url not in _FACTORIES:
            _FACTORIES[url] = session_factory(url)
        return _FACTORIES[url]


def get_store(url: str, settings: Settings, *, create: bool = False) -> ObjectStore:
    """A cached store per URL (boto3 clients are thread-safe and costly to build)."""
    from .storage import open_store

    with _LOCK:
        key = (url, create)
        if key not in _STORES:
            _STORES[key] = open_store(url, settings, create=create)
        return _STORES[key]


_CODEC_LOCKS: dict[int, threading.BoundedSemaphore] = {}


def codec_lock(codec: Codec, slots: int = 1) -> threading.BoundedSemaphore:
    """One gate per codec object per process: at most ``slots`` images in the codec at once
    (``workers.codec_slots``), also when several batches run in threads of one process
    (``--pool threads``). The first caller's ``slots`` sizes it."""
    with _LOCK:
        return _CODEC_LOCKS.setdefault(id(codec), threading.BoundedSemaphore(max(1, slots)))


def reset_process_caches() -> None:
    """Forget engines and clients (call in a forked child: connections must not be shared)."""
    with _LOCK:
        _FACTORIES.clear()
        _UPGRADED.clear()
        _STORES.clear()


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    from .settings import load_settings

    return load_settings()


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def make_options(settings: Settings, *, min_psnr: float | None = None, min_saving: float | None = None,
                 replace: bool = False, dry_run: bool = False, upgrade: bool = False) -> PipelineOptions:
    from .pipeline import PipelineOptions

    return PipelineOptions(
        min_psnr=settings.min_psnr if min_psnr is None else min_psnr,
        min_saving=settings.min_saving if min_saving is None else min_saving,
        replace=replace, dry_run=dry_run, max_object_bytes=int(settings.max_object_bytes),
        max_pixels=settings.max_pixels, suffix=settings.container_suffix, upgrade=upgrade,
    )


def options_from_dict(d: dict[str, Any]) -> PipelineOptions:
    from .pipeline import PipelineOptions

    return PipelineOptions.from_dict(d)


# ---- submit -------------------------------------------------------------------------------------

def _new_job(s: Session, *, kind: str, source: str, dest: str | None, model_id: str, opts: PipelineOptions,
             schedule_name: str | None, extra: dict[str, Any]) -> Job:
    job = Job(kind=kind, source=source, dest=dest, model_id=model_id, status="pending", started_at=utcnow(),
              schedule_name=schedule_name, objects_listed=0, bytes_listed=0, objects_enqueued=0,
              settings={"options": opts.as_dict(), "via": "workers", "host": socket.gethostname(),
                        "pid": os.getpid(), **extra})
    s.add(job)
    s.flush()
    return job


def submit(source: str, options: PipelineOptions | dict[str, Any] | None = None, dest: str | None = None,
           chunk_size: int | None = None, db_url: str | None = None, schedule_name: str | None = None,
           older_than_days: float | None = None, *, settings: Settings | None = None,
           enqueue: Enqueue, model_id: str | None = None,
           on_listed: Callable[[int, int], None] | None = None) -> int:
    """Create a job, stream the listing of ``source`` into batches on the ``recompress`` queue.

    Returns the job id. ``older_than_days`` keeps only objects last modified at least that long
    ago (scheduled jobs); ``enqueue`` sends one batch (the front door passes the Celery send,
    ``workers.enqueue.celery_enqueue``; tests pass their own);
    ``on_listed(listed, enqueued)`` is called after every batch (listing a big bucket takes minutes).
    """
    st = _settings(settings)
    url = db_url or st.database_url
    opts = _as_options(options, st)
    sf = get_session_factory(url, migrate=True)
    kind = "scheduled" if schedule_name else "recompress"
    size = chunk_size or st.workers.chunk_size
    extra = {"chunk_size": size, "older_than_days": older_than_days}
    with sf() as s:
        job = _new_job(s, kind=kind, source=source, dest=dest, model_id=model_id or st.model_id, opts=opts,
                       schedule_name=schedule_name, extra=extra)
        s.commit()
        job_id = job.id
    enqueue_listing(job_id, source, dest, opts, sf, st, chunk_size=size, older_than_days=older_than_days,
                    skip_archived=schedule_name is not None, skip_rejected=schedule_name is not None,
                    enqueue=enqueue, on_listed=on_listed)
    return job_id


def _as_options(options: PipelineOptions | dict[str, Any] | None, st: Settings) -> PipelineOptions:
    if options is None:
        return make_options(st)
    if isinstance(options, dict):
        merged = make_options(st).as_dict()
        merged.update(options)
        return options_from_dict(merged)
    return options


def enqueue_listing(job_id: int, source: str, dest: str | None, opts: PipelineOptions, sf: sessionmaker[Session],
                    st: Settings, *, chunk_size: int, older_than_days: float | None = None,
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
    from .pipeline import Outcome, iter_source, record_outcome
    from .restore import prepare_destination

    send = enqueue
    cutoff = utcnow() - dt.timedelta(days=older_than_days) if older_than_days is not None else None
    options = opts.as_dict()
    try:
        src = get_store(source, st)
        if not opts.dry_run:
            prepare_destination(get_store(dest, st, create=True) if dest else src)
        with sf() as s:
            model_id = s.execute(select(Job.model_id).where(Job.id == job_id)).scalar_one()
        scope = Scope.of(src)
        chunk: list[list[Any]] = []
        refused: list[ObjectInfo] = []
        listed = listed_bytes = 0
        total_listed = total_enqueued = 0

        def flush() -> None:
            nonlocal chunk, refused, listed, listed_bytes, total_listed, total_enqueued
            items = (_drop_archived(sf, scope, None if opts.upgrade else model_id, chunk)
                     if skip_archived and chunk else chunk)
            if skip_rejected and items:
                items = _drop_rejected(sf, scope, model_id, opts, items)
            with sf() as s:  # counters first: a batch must never finish before it is counted
                for info in refused:  # recorded with their count, so the job cannot finish early
                    code, why = info.refused or ("", "")
                    record_outcome(s, job_id, scope, model_id, Outcome(
                        key=info.key, status="rejected", original_bytes=info.size, etag=info.etag or None,
                        reason_code=code, reason=why), "submit")
                s.execute(update(Job).where(Job.id == job_id).values(
                    objects_enqueued=Job.objects_enqueued + len(items) + len(refused),
                    objects_listed=Job.objects_listed + listed, bytes_listed=Job.bytes_listed + listed_bytes))
                s.commit()
            if items:
                send(job_id, source, dest, items, options)
            n = len(items) + len(refused)
            total_listed, total_enqueued = total_listed + listed, total_enqueued + n
            chunk, refused, listed, listed_bytes = [], [], 0, 0
            if on_listed is not None:
                on_listed(total_listed, total_enqueued)

        for info in iter_source(src, opts):
            listed += 1
            listed_bytes += info.size
            if cutoff is not None and _aware(info.last_modified) > cutoff:
                continue
            if info.refused is not None:
                refused.append(info)
            else:
                chunk.append([info.key, info.etag, info.size])
            if len(chunk) + len(refused) >= chunk_size:
                flush()
        flush()
    except BaseException as e:
        with sf() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE_JOBS)).values(
                status="failed", error=f"submission failed: {type(e).__name__}: {e}", finished_at=utcnow()))
            s.commit()
        raise
    with sf() as s:
        s.execute(update(Job).where(Job.id == job_id, Job.status == "pending").values(status="running"))
        s.commit()
    finalize(sf, job_id)  # nothing to do, or every batch already finished while we were listing


def _drop_archived(sf: sessionmaker[Session], scope: Scope, model_id: str | None,
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


#: Rejections decided by the object's bytes alone: the same version is refused again by any model
#: and thresholds. (``decompression_bomb`` and ``too_large`` also depend on settings: retried.)
CONTENT_REJECTIONS = frozenset({"not_an_image", "empty", "corrupt", "unsupported_mode", "unsupported_depth",
                                "animated", "multi_image",
                                # decided by the key alone, which a version never changes
                                "unsafe_key"})
#: Rejections decided by the model and the thresholds.
THRESHOLD_REJECTIONS = frozenset({"psnr_unreachable", "psnr_below_threshold", "insufficient_saving"})


def rejection_repeats(reason_code: str | None, then_model: str, then_options: dict[str, Any],
                      model_id: str, opts: PipelineOptions) -> bool:
    """Whether an earlier rejection of the same object version would happen again in this run.

    A content rejection always repeats. A threshold rejection repeats with the same model when this
    run asks at least as much: a PSNR floor no lower (the smallest passing bitstream can only grow)
    and, for ``insufficient_saving``, a saving floor no lower as well. Anything else (another
    model, looser thresholds, settings-dependent or unknown reasons) is tried again."""
    if reason_code in CONTENT_REJECTIONS:
        return True
    if reason_code not in THRESHOLD_REJECTIONS or then_model != model_id:
        return False
    then_psnr, then_saving = then_options.get("min_psnr"), then_options.get("min_saving")
    if then_psnr is None or opts.min_psnr < float(then_psnr):
        return False
    if reason_code == "insufficient_saving":
        return then_saving is not None and opts.min_saving >= float(then_saving)
    return True


def _drop_rejected(sf: sessionmaker[Session], scope: Scope, model_id: str, opts: PipelineOptions,
                   chunk: list[list[Any]]) -> list[list[Any]]:
    """Leave out object versions that an earlier job rejected for a reason that would repeat."""
    keys = [scope.key(k) for k, _, _ in chunk]
    q = (select(Result.key, Result.etag, Result.reason_code, Result.model_id, Job.settings)
         .join(Job, Job.id == Result.job_id)
         .where(Result.bucket == scope.bucket, Result.key.in_(keys), Result.status == "rejected",
                Result.etag.is_not(None)))
    with sf() as s:
        repeat = {(k, e) for k, e, code, then_model, then_settings in s.execute(q)
                  if rejection_repeats(code, then_model, (then_settings or {}).get("options") or {}, model_id, opts)}
    return [it for it in chunk if (scope.key(it[0]), it[1]) not in repeat]


# ---- schedules ----------------------------------------------------------------------------------

def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"archiver-schedule:{name}".encode()).digest()[:8], "big", signed=True)


def start_scheduled(schedule: Schedule | dict[str, Any], db_url: str | None = None, *,
                    settings: Settings | None = None, enqueue: Enqueue) -> int | None:
    """Start a run of ``schedule`` unless a previous run is still pending/running.

    Returns the new job id, or ``None`` when a run is still in progress. A run older than the
    schedule's ``max_runtime_hours`` no longer blocks: it is marked failed as stale.
    """
    from .schedules import Schedule

    sched = schedule if isinstance(schedule, Schedule) else Schedule.model_validate(schedule)
    st = _settings(settings)
    url = db_url or st.database_url
    sf = get_session_factory(url, migrate=True)
    opts = make_options(st, min_psnr=sched.min_psnr, min_saving=sched.min_saving, replace=sched.replace,
                        upgrade=sched.upgrade)
    size = sched.chunk_size or st.workers.chunk_size
    with sf() as s:
        # Serialise check-and-insert per schedule. SQLite: the session's BEGIN IMMEDIATE already
        # holds the database write lock for the whole transaction.
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(sched.name)})
        now = utcnow()
        running = s.execute(select(Job).where(Job.schedule_name == sched.name,
                                              Job.status.in_(ACTIVE_JOBS))).scalars().all()
        blocking = []
        for job in running:
            started = _aware(job.started_at or job.created_at)
            if started is not None and now - started > dt.timedelta(hours=sched.max_runtime_hours):
                job.error = f"stale: still {job.status} after {sched.max_runtime_hours} h; superseded by a new run"
                job.status, job.finished_at = "failed", now
            else:
                blocking.append(job.id)
        if blocking:
            s.commit()
            log.warning("schedule %s: previous run (job %s) still running; not starting another",
                        sched.name, ", ".join(map(str, blocking)))
            return None
        job = _new_job(s, kind="scheduled", source=sched.source, dest=sched.dest, model_id=sched.model or st.model_id,
                       opts=opts,
                       schedule_name=sched.name,
                       extra={"chunk_size": size, "older_than_days": sched.older_than_days})
        s.commit()
        job_id = job.id
    log.info("schedule %s: started job %s", sched.name, job_id)
    enqueue_listing(job_id, sched.source, sched.dest, opts, sf, st, chunk_size=size,
                    older_than_days=sched.older_than_days, skip_archived=True,
                    skip_rejected=not sched.retry_rejected, enqueue=enqueue)
    return job_id


# ---- status / cancel / finalize ---------------------------------------------------------------

@dataclass
class JobStatus:
    id: int
    kind: str
    status: str
    source: str
    dest: str | None
    schedule_name: str | None
    model_id: str
    created_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    objects_listed: int
    objects_enqueued: int
    bytes_listed: int
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # per result status
    bytes_before: int = 0  # originals of accepted objects
    bytes_after: int = 0  # their containers
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(self.counts.get(k, 0) for k in DONE)

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)

    @property
    def saved_bytes(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def elapsed(self) -> float:
        start = _aware(self.started_at or self.created_at)
        if start is None:
            return 0.0
        end = _aware(self.finished_at) or utcnow()
        return max(0.0, (end - start).total_seconds())

    @property
    def rate(self) -> float:
        """Finished objects per second since the job started."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.status not in ACTIVE_JOBS:
            return None
        remaining = max(0, self.objects_enqueued - self.done)
        if remaining == 0:
            return 0.0
        return remaining / self.rate if self.rate > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "status": self.status, "source": self.source, "dest": self.dest,
            "schedule_name": self.schedule_name, "model_id": self.model_id, "error": self.error,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "objects_listed": self.objects_listed, "objects_enqueued": self.objects_enqueued,
            "bytes_listed": self.bytes_listed, "done": self.done,
            **{k: self.count(k) for k in DONE},
            "bytes_before": self.bytes_before, "bytes_after": self.bytes_after, "saved_bytes": self.saved_bytes,
            "rate_per_s": self.rate, "eta_s": self.eta_seconds, "reasons": self.reasons,
        }


def _status_of(s: Session, job: Job) -> JobStatus:
    st = JobStatus(id=job.id, kind=job.kind, status=job.status, source=job.source, dest=job.dest,
                   schedule_name=job.schedule_name, model_id=job.model_id, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at, objects_listed=job.objects_listed or 0,
                   objects_enqueued=job.objects_enqueued or 0, bytes_listed=job.bytes_listed or 0, error=job.error)
    for status, n, before, after in s.execute(
        select(Result.status, func.count(), func.sum(Result.original_bytes), func.sum(Result.compressed_bytes))
        .where(Result.job_id == job.id).group_by(Result.status)
    ):
        st.counts[status] = int(n)
        if status == "accepted":
            st.bytes_before, st.bytes_after = int(before or 0), int(after or 0)
    for code, n in s.execute(
        select(Result.reason_code, func.count()).where(Result.job_id == job.id, Result.status.in_(("rejected", "failed")))
        .group_by(Result.reason_code)
    ):
        st.reasons[code or "unknown"] = int(n)
    return st


def status(job_id: int, db_url: str | None = None, *, settings: Settings | None = None) -> JobStatus:
    sf = get_session_factory(db_url or _settings(settings).database_url)
    with sf() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NoSuchJob(f"no job {job_id}")
        return _status_of(s, job)


def recent_jobs(limit: int = 20, db_url: str | None = None, *, settings: Settings | None = None) -> list[JobStatus]:
    sf = get_session_factory(db_url or _settings(settings).database_url)
    with sf() as s:
        jobs = s.execute(select(Job).order_by(Job.id.desc()).limit(limit)).scalars().all()
        return [_status_of(s, j) for j in jobs]


def cancel(job_id: int, db_url: str | None = None, *, settings: Settings | None = None) -> bool:
    """Mark a pending/running job cancelled (workers stop at their next object). False if it had ended."""
    sf = get_session_factory(db_url or _settings(settings).database_url)
    with sf() as s:
        if s.get(Job, job_id) is None:
            raise NoSuchJob(f"no job {job_id}")
        res = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE_JOBS))
                        .values(status="cancelled", finished_at=utcnow()))
        s.commit()
        return bool(getattr(res, "rowcount", 0))


def finalize(sf: sessionmaker[Session], job_id: int) -> bool:
    """Mark a running job finished once every enqueued object has a finished row."""
    with sf() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != "running":
            return False
        n = s.execute(select(func.count()).select_from(Result).where(
            Result.job_id == job_id, Result.status.in_(DONE))).scalar_one()
        if n < (job.objects_enqueued or 0):
            return False
        res = s.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                        .values(status="finished", finished_at=utcnow()))
        s.commit()
        done = bool(getattr(res, "rowcount", 0))
        if done:
            log.info("job %s finished: %s objects", job_id, n)
        return done


def job_state(sf: sessionmaker[Session], job_id: int) -> str | None:
    with sf() as s:
        return s.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()


# ---- one batch (what a worker task runs) --------------------------------------------------------

class AttemptCounter(Protocol):
    """Counts processing starts per object that did not finish (a worker died on them)."""

    def start(self, job_id: int, bucket: str, key: str) -> int: ...

    def finish(self, job_id: int, bucket: str, key: str) -> None: ...


class NoAttemptCounter:
    def start(self, job_id: int, bucket: str, key: str) -> int:
        return 1

    def finish(self, job_id: int, bucket: str, key: str) -> None:
        return None


@dataclass
class BatchResult:
    job_id: int
    outcomes: list[Outcome] = field(default_factory=list)
    cancelled: bool = False
    finished_job: bool = False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out


class _Cancelled(Exception):
    pass


def process_batch(job_id: int, source_url: str, dest_url: str | None, items: Iterable[Item],
                  options: dict[str, Any], *, settings: Settings | None = None,
                  session_factory: sessionmaker[Session] | None = None, codec: Codec | None = None,
                  attempts: AttemptCounter | None = None, worker: str | None = None,
                  io_threads: int | None = None) -> BatchResult:
    """Recompress one batch of a job: each object is re-stat'ed and run through ``handle_object``.

    ``io_threads`` threads download and decode the next objects while the codec (under a lock)
    works on the current one. Transient storage errors and database outages propagate (the
    caller retries the batch; finished objects are not redone). Stops early for a cancelled job.
    """
    from .codec.api import Codec

    st = _settings(settings)
    sf = session_factory or get_session_factory(st.database_url)
    counter = attempts or NoAttemptCounter()
    result = BatchResult(job_id=job_id)
    with sf() as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("batch for unknown job %s dropped", job_id)
            return result
        model_id, state = job.model_id, job.status
    if state == "cancelled":
        result.cancelled = True
        return result
    opts = options_from_dict(options)
    src = get_store(source_url, st)
    dst = get_store(dest_url, st, create=True) if dest_url else src
    cx = codec or Codec.cached(model_id, st.device, settings=st)
    lock = codec_lock(cx, st.workers.codec_slots)
    scope = Scope.of(src)

    def one(item: Item) -> Outcome | None:
        key = item[0]
        if job_state(sf, job_id) == "cancelled":
            raise _Cancelled()
        try:
            info = src.head(key)
        except StorageError as e:
            if e.transient:
                raise  # the batch is retried with backoff
            return _failed(sf, job_id, scope, key, item, cx, worker, e.code, str(e))
        if info is None:
            return _vanished(sf, job_id, scope, key, item, cx, worker)
        # Counted before and cleared after: only a process that died mid-object leaves it raised.
        n = counter.start(job_id, scope.bucket, scope.key(key))
        try:
            if n > st.workers.poison_attempts:
                return _poisoned(sf, job_id, scope, info, n - 1, cx, worker)
            from .pipeline import handle_object

            return handle_object(info, job_id=job_id, src=src, dst=dst, codec=cx, opts=opts, session_factory=sf,
                                 codec_lock=lock, worker=worker)
        finally:
            counter.finish(job_id, scope.bucket, scope.key(key))

    pool = ThreadPoolExecutor(max_workers=max(1, io_threads or st.workers.io_threads), thread_name_prefix="batch")
    futures = [pool.submit(one, it) for it in items]
    error: BaseException | None = None
    try:
        for f in futures:
            try:
                out = f.result()
            except _Cancelled:
                result.cancelled = True
                continue
            except BaseException as e:  # noqa: BLE001 - the first error is re-raised below
                if error is None:
                    error = e
                    for g in futures:
                        g.cancel()
                continue
            if out is not None:
                result.outcomes.append(out)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if error is not None:
        raise error
    result.finished_job = finalize(sf, job_id)
    return result


def _record(sf: sessionmaker[Session], job_id: int, scope: Scope, model_id: str, out: Outcome,
            worker: str | None) -> Outcome:
    from .pipeline import _outcome_from_row, record_outcome, result_row

    with sf() as s:
        row = result_row(s, job_id, scope, out.key)
        if row is not None and row.status in SETTLED:
            return _outcome_from_row(row, scope)  # finished earlier (e.g. the original was then replaced)
        record_outcome(s, job_id, scope, model_id, out, worker, row=row)
        s.commit()
    return out


def _failed(sf: sessionmaker[Session], job_id: int, scope: Scope, key: str, item: Item, codec: Codec | None,
            worker: str | None, code: str, reason: str, model_id: str | None = None) -> Outcome:
    from .pipeline import Outcome

    out = Outcome(key=key, status="failed", original_bytes=int(item[2]) if len(item) > 2 else 0,
                  etag=item[1] if len(item) > 1 else None, reason_code=code, reason=reason,
                  device=codec.device_name if codec else None)
    return _record(sf, job_id, scope, model_id or (codec.model_id if codec else ""), out, worker)


def _vanished(sf: sessionmaker[Session], job_id: int, scope: Scope, key: str, item: Item, codec: Codec,
              worker: str | None) -> Outcome:
    from .pipeline import _outcome_from_row, ledger_row, result_row

    with sf() as s:  # finished earlier and the original was deleted (e.g. killed before marking it)
        row = result_row(s, job_id, scope, key)
        if row is not None and row.status in ARCHIVED:
            ledger = ledger_row(s, scope, key, row.etag, row.model_id)
            if ledger is not None:
                ledger.original_deleted = row.original_deleted = True
                s.commit()
            return _outcome_from_row(row, scope)
    return _failed(sf, job_id, scope, key, item, codec, worker, "not_found",
                   "the object disappeared between listing and processing")


def fail_unfinished(job_id: int, source_url: str, items: Iterable[Item], code: str, reason: str, *,
                    settings: Settings | None = None, session_factory: sessionmaker[Session] | None = None,
                    worker: str | None = None) -> int:
    """Record every object of a batch that has no finished row as failed (a batch that gave up
    after its retries), so that the job can still finish; returns how many were recorded."""
    st = _settings(settings)
    sf = session_factory or get_session_factory(st.database_url)
    scope = Scope.of(get_store(source_url, st))
    with sf() as s:
        job = s.get(Job, job_id)
        if job is None:
            return 0
        model_id = job.model_id
        done = set(s.execute(select(Result.key).where(Result.job_id == job_id, Result.bucket == scope.bucket,
                                                      Result.status.in_(DONE))).scalars())
    n = 0
    for item in items:
        if scope.key(item[0]) not in done:
            _failed(sf, job_id, scope, item[0], item, None, worker, code, reason, model_id=model_id)
            n += 1
    finalize(sf, job_id)
    return n


def _poisoned(sf: sessionmaker[Session], job_id: int, scope: Scope, info: ObjectInfo, starts: int, codec: Codec,
              worker: str | None) -> Outcome:
    from .pipeline import Outcome

    log.error("object %s started %d times without finishing; recording it as failed", info.key, starts)
    out = Outcome(key=info.key, status="failed", original_bytes=info.size, etag=info.etag,
                  version_id=info.version_id, reason_code="poison_object",
                  reason=f"processing started {starts} times and never finished (the worker died each time)",
                  device=codec.device_name)
    return _record(sf, job_id, scope, codec.model_id, out, worker)


def wait_for(job_id: int, db_url: str | None = None, timeout: float = 600.0, poll: float = 1.0,
             *, settings: Settings | None = None) -> JobStatus:
    """Poll until the job leaves pending/running (or ``timeout``); returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(job_id, db_url, settings=settings)
        if st.status not in ACTIVE_JOBS or time.monotonic() > deadline:
            return st
        time.sleep(poll)
