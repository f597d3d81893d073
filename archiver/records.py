"""What the database remembers about objects and runs: result rows, ledger rows and job rows.

The pipeline (one object) and the jobs (listing, batches, status) both write here, and only
here, so that a row means the same thing whoever wrote it:

* a **result row** (``results``) is one object in one job, unique per (job, bucket, key), so a
  batch delivered twice updates its rows instead of duplicating them;
* a **ledger row** (``archived_objects``) is one version (ETag) of one object archived with one
  model, written in the same transaction as the ``accepted`` result that made it. It is what a
  later run, the retrieval server and the ROI report trust;
* a **job row** (``jobs``) is one run over a source: created here, finished here.

An :class:`Outcome` is everything learnt about one object before it becomes a result row. The
outcomes that are decided without looking at the object's bytes (a refused listing entry, a
vanished object, a poison object, a batch that gave up) are made by :meth:`Outcome.settled_early`,
never by hand.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .db.models import ArchivedObject, Job, Result, utcnow
from .identity import Scope
from .telemetry import object_recorded
from .vocabulary import ACTIVE_JOBS, ARCHIVED, DONE, SETTLED, JobKind, JobStatus, ResultStatus

if TYPE_CHECKING:
    from .storage import ObjectInfo

log = logging.getLogger(__name__)


# ---- outcomes --------------------------------------------------------------------------------

@dataclass
class Outcome:
    """Everything learnt about one object; becomes one ``results`` row."""

    key: str
    status: str  # a ResultStatus: accepted | rejected | failed | skipped
    original_bytes: int = 0
    etag: str | None = None
    version_id: str | None = None
    reason_code: str | None = None
    reason: str | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    compressed_bytes: int | None = None
    compressed_sha256: str | None = None
    tier: str | None = None  # archiver.lossless.Tier of what was (or would be) stored
    original_sha256: str | None = None  # of the bytes archived (kept in the ledger row only)
    # the verified lossless transcode's size, or why there is none, when it was tried (not a column:
    # the pilot keeps them with its job to show the lossless tier beside the others)
    lossless_bytes: int | None = None
    lossless_refusal: str | None = None
    psnr: float | None = None
    ms_ssim: float | None = None
    bpp: float | None = None
    quality: float | None = None
    dest_url: str | None = None
    original_deleted: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    gpu_seconds: float | None = None
    device: str | None = None
    probes: int | None = None  # quality-search probes of the encode (metrics only; not stored)

    @property
    def saved_bytes(self) -> int:
        if self.status != ResultStatus.ACCEPTED or self.compressed_bytes is None:
            return 0
        return self.original_bytes - self.compressed_bytes

    @classmethod
    def settled_early(cls, key: str, status: ResultStatus, reason_code: str, reason: str, *,
                      original_bytes: int = 0, etag: str | None = None, version_id: str | None = None,
                      device: str | None = None) -> Outcome:
        """An outcome decided without encoding the object (``rejected`` or ``failed``)."""
        return cls(key=key, status=status, original_bytes=original_bytes, etag=etag, version_id=version_id,
                   reason_code=reason_code, reason=reason, device=device)

    @classmethod
    def of_listing(cls, info: ObjectInfo, status: ResultStatus, reason_code: str, reason: str, *,
                   device: str | None = None) -> Outcome:
        """:meth:`settled_early` for an object as the listing or a HEAD described it."""
        return cls.settled_early(info.key, status, reason_code, reason, original_bytes=info.size,
                                 etag=info.etag or None, version_id=info.version_id, device=device)


def outcome_from_row(r: Result, scope: Scope | None = None) -> Outcome:
    """A recorded row as an outcome; with ``scope``, its key relative to that scope's store."""
    return Outcome(key=scope.relative(r.key) if scope else r.key, status=r.status, original_bytes=r.original_bytes,
                   etag=r.etag, version_id=r.version_id, reason_code=r.reason_code, reason=r.reason,
                   content_type=r.content_type, width=r.width, height=r.height, compressed_bytes=r.compressed_bytes,
                   compressed_sha256=r.compressed_sha256, psnr=r.psnr, ms_ssim=r.ms_ssim, bpp=r.bpp,
                   quality=r.quality, dest_url=r.dest_url, original_deleted=r.original_deleted, device=r.device,
                   tier=r.tier)


# ---- result and ledger rows ------------------------------------------------------------------

def result_row(session: Session, job_id: int, scope: Scope, key: str, *, for_update: bool = False) -> Result | None:
    """This job's row for the store-relative ``key`` (rows are unique per job, bucket and key);
    ``for_update`` locks it until the transaction ends (``SELECT ... FOR UPDATE``)."""
    query = select(Result).where(Result.job_id == job_id, Result.bucket == scope.bucket, Result.key == scope.key(key))
    return session.execute(query.with_for_update() if for_update else query).scalar_one_or_none()


def ledger_row(session: Session, scope: Scope, key: str, etag: str | None, model_id: str) -> ArchivedObject | None:
    """The ledger row of one version (``etag``) of the store-relative ``key`` archived with ``model_id``."""
    return session.execute(select(ArchivedObject).where(
        ArchivedObject.bucket == scope.bucket, ArchivedObject.key == scope.key(key), ArchivedObject.etag == etag,
        ArchivedObject.model_id == model_id)).scalar_one_or_none()


def already_archived(session: Session, scope: Scope, info: ObjectInfo, model_id: str,
                     any_model: bool = False) -> ArchivedObject | None:
    """The ledger row of this version archived with ``model_id`` or, with ``any_model``, the newest
    one with any model (a model upgrade overwrites the container in place, so the newest row is
    the one that names what is at the destination; the pipeline still checks the container)."""
    if not info.etag:
        return None
    if not any_model:
        return ledger_row(session, scope, info.key, info.etag, model_id)
    return session.execute(select(ArchivedObject).where(
        ArchivedObject.bucket == scope.bucket, ArchivedObject.key == scope.key(info.key),
        ArchivedObject.etag == info.etag).order_by(ArchivedObject.id.desc()).limit(1)).scalar_one_or_none()


@dataclass(frozen=True)
class LedgerView:
    """The ledger fields needed outside a session (no network I/O is done while one is open)."""

    id: int
    etag: str
    model_id: str
    result_id: int | None
    dest_url: str
    compressed_sha256: str
    compressed_bytes: int
    tier: str = "lossy"
    original_sha256: str | None = None

    @classmethod
    def of(cls, row: ArchivedObject | None) -> LedgerView | None:
        if row is None:
            return None
        return cls(row.id, row.etag, row.model_id, row.result_id, row.dest_url, row.compressed_sha256,
                   row.compressed_bytes, row.tier or "lossy", row.original_sha256)


_RESULT_FIELDS = ("etag", "version_id", "content_type", "width", "height", "original_bytes", "compressed_bytes",
                  "psnr", "ms_ssim", "bpp", "quality", "status", "reason_code", "reason", "dest_url",
                  "compressed_sha256", "original_deleted", "gpu_seconds", "device", "tier")
_TIMINGS = {"t_fetch": "fetch", "t_encode": "encode", "t_verify": "verify", "t_write": "write", "t_total": "total"}


def record_outcome(session: Session, job_id: int, scope: Scope, model_id: str, out: Outcome,
                   worker: str | None = None, *, row: Result | None = None) -> Result:
    """Upsert the job's row for this object and, for an accepted write, the ledger row, in the
    caller's transaction (the caller commits).

    ``row``: the job's row for this object when the caller has just looked it up (saves a query).
    """
    bucket, key = scope.bucket, scope.key(out.key)
    row = row or result_row(session, job_id, scope, out.key)
    if row is None:
        row = Result(job_id=job_id, bucket=bucket, key=key, model_id=model_id, attempts=0)
        session.add(row)
    row.attempts = (row.attempts or 0) + 1
    for f in _RESULT_FIELDS:
        setattr(row, f, getattr(out, f))
    for column, step in _TIMINGS.items():
        setattr(row, column, out.timings.get(step))
    row.worker = worker
    session.flush()
    if out.status == ResultStatus.ACCEPTED and out.dest_url and out.etag:
        ledger = ledger_row(session, scope, out.key, out.etag, model_id)
        if ledger is None:
            ledger = ArchivedObject(bucket=bucket, key=key, etag=out.etag, model_id=model_id)
            session.add(ledger)
        ledger.result_id = row.id
        ledger.dest_url = out.dest_url
        ledger.compressed_sha256 = out.compressed_sha256 or ""
        ledger.compressed_bytes = out.compressed_bytes or 0
        ledger.original_bytes = out.original_bytes
        ledger.tier = out.tier or "lossy"
        ledger.original_sha256 = out.original_sha256
        ledger.original_deleted = False  # we just read the original: it exists
    return row


@dataclass(frozen=True)
class Recorded:
    """What :func:`record` left in the database: the row's id and the outcome it stands for."""

    row_id: int
    outcome: Outcome


def record(session_factory: sessionmaker[Session], job_id: int, scope: Scope, model_id: str, out: Outcome,
           worker: str | None = None, *, keep_settled: bool = False) -> Recorded:
    """:func:`record_outcome` in its own transaction.

    ``keep_settled``: a row this job already settled (accepted, rejected, skipped) is kept and
    returned instead of being overwritten. The worker's early outcomes use it: a redelivered batch
    may look at an object that was archived, and its original then deleted, by the first delivery.

    Whatever ``keep_settled`` says, a row that already names an archive (accepted or skipped) is
    never replaced by an outcome for the same version (or an unknown one) that does not: a late
    duplicate delivery can read ``head()``
    before the first delivery deleted the original and ``get()`` after, and its ``not_found``
    must not turn an archived object into a failed one (nothing would ever correct it, since the
    original is no longer listed). The row is locked (``FOR UPDATE``) while this is decided.
    A concurrent insert of the same row (two deliveries of one batch) is retried as an update.
    """
    with session_factory() as s:
        for attempt in range(3):
            try:
                row = result_row(s, job_id, scope, out.key, for_update=True)
                if row is not None and (keep_settled and row.status in SETTLED or _downgrade(row, out)):
                    if not keep_settled:
                        log.warning("kept the %s row of %s (job %s): a later attempt found it %s (%s)",
                                    row.status, out.key, job_id, out.status, out.reason_code)
                    return Recorded(row.id, outcome_from_row(row, scope))
                row = record_outcome(s, job_id, scope, model_id, out, worker, row=row)
                s.commit()
                object_recorded(out)  # counted once per row written, as the ledger counts
                return Recorded(row.id, out)
            except IntegrityError:
                s.rollback()
                if attempt == 2:
                    raise
    raise AssertionError("unreachable")  # pragma: no cover


def _downgrade(row: Result, out: Outcome) -> bool:
    """``out`` would take an archived row's version back to "not archived". An outcome for
    another version (the object was overwritten since) is news, not a downgrade."""
    same_version = out.etag is None or row.etag is None or out.etag == row.etag
    return row.status in ARCHIVED and out.status not in ARCHIVED and same_version


def mark_original_deleted(session: Session, ledger: ArchivedObject | None, result_ids: set[int | None]) -> None:
    """Record that an original is gone: on its ledger row and on the result rows naming it."""
    if ledger is not None:
        ledger.original_deleted = True
        result_ids = result_ids | {ledger.result_id}
    for rid in result_ids - {None}:
        r = session.get(Result, rid)
        if r is not None:
            r.original_deleted = True


# ---- job rows --------------------------------------------------------------------------------

def new_job(session: Session, *, kind: JobKind, source: str, dest: str | None, model_id: str,
            options: dict[str, Any], status: JobStatus = JobStatus.RUNNING, schedule_name: str | None = None,
            extra: dict[str, Any] | None = None) -> Job:
    """Add a job row (flushed, not committed): the options it runs with, and the host and pid
    that started it (``settings`` JSON), so that a rerun can tell whether it may resume it."""
    job = Job(kind=kind, source=source, dest=dest, model_id=model_id, status=status, started_at=utcnow(),
              schedule_name=schedule_name,
              settings={"options": options, "host": socket.gethostname(), "pid": os.getpid(), **(extra or {})})
    session.add(job)
    session.flush()
    return job


def finish_job(session_factory: sessionmaker[Session], job_id: int, status: JobStatus = JobStatus.FINISHED,
               error: str | None = None) -> None:
    """End an in-process job (``run_job``, the pilot); a cancelled job stays cancelled."""
    with session_factory() as s:
        job = s.get(Job, job_id)
        if job is not None and job.status != JobStatus.CANCELLED:
            job.status = status
            job.error = error
            job.finished_at = utcnow()
            s.commit()


def fail_job(session_factory: sessionmaker[Session], job_id: int, error: str) -> None:
    """Mark a job that is still pending or running failed (its submission broke off)."""
    with session_factory() as s:
        s.execute(update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE_JOBS)).values(
            status=JobStatus.FAILED, error=error, finished_at=utcnow()))
        s.commit()


def finalize(session_factory: sessionmaker[Session], job_id: int) -> bool:
    """Mark a running distributed job finished once every enqueued object has a finished row.

    The update is conditional (``WHERE status = 'running'``), so concurrent batches cannot race it."""
    with session_factory() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING:
            return False
        n = s.execute(select(func.count()).select_from(Result).where(
            Result.job_id == job_id, Result.status.in_(DONE))).scalar_one()
        if n < (job.objects_enqueued or 0):
            return False
        res = s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                        .values(status=JobStatus.FINISHED, finished_at=utcnow()))
        s.commit()
        done = bool(getattr(res, "rowcount", 0))
        if done:
            log.info("job %s finished: %s objects", job_id, n)
        return done


def job_state(session_factory: sessionmaker[Session], job_id: int) -> str | None:
    """The job's status now (``None`` for an unknown job): batches check it before each object."""
    with session_factory() as s:
        return s.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
