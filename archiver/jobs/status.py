"""Status: where a job stands (counts, bytes, rate, ETA), recent jobs, cancelling and waiting.

A job's progress is read from its result rows, not from counters the workers keep, so it is
right after any crash: a row exists exactly when an object is done. Cancelling only flips the
status; batches check it before each object and stop.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..db.models import Job, Result, aware, utcnow
from ..errors import ArchiverError
from ..vocabulary import ACTIVE_JOBS, DONE, NOT_ARCHIVED, JobStatus, ResultStatus
from .stalled import BrokerView, resume_command, stall_reason

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..settings import Settings


class NoSuchJob(ArchiverError):
    code = "no_such_job"


@dataclass
class JobProgress:
    """One job as ``archiver status`` shows it."""

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
    #: why the job will not get further by itself (:mod:`.stalled`), or None
    stalled: str | None = None
    last_progress: dt.datetime | None = None

    @property
    def state(self) -> str:
        """``status``, or ``stalled`` for an active job that is stuck."""
        return "stalled" if self.stalled and self.status in ACTIVE_JOBS else self.status

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
        start = aware(self.started_at or self.created_at)
        if start is None:
            return 0.0
        end = aware(self.finished_at) or utcnow()
        return max(0.0, (end - start).total_seconds())

    @property
    def rate(self) -> float:
        """Finished objects per second since the job started."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.status not in ACTIVE_JOBS or self.stalled:
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
            "state": self.state, "stalled": self.stalled,
            "recover": resume_command(self.id) if self.stalled else None,
        }


def _progress_of(s: Session, job: Job, settings: Settings | None = None,
                 broker_jobs: set[int] | None = None) -> JobProgress:
    p = JobProgress(id=job.id, kind=job.kind, status=job.status, source=job.source, dest=job.dest,
                    schedule_name=job.schedule_name, model_id=job.model_id, created_at=job.created_at,
                    started_at=job.started_at, finished_at=job.finished_at, objects_listed=job.objects_listed or 0,
                    objects_enqueued=job.objects_enqueued or 0, bytes_listed=job.bytes_listed or 0,
                    error=job.error)
    for status, n, before, after in s.execute(
        select(Result.status, func.count(), func.sum(Result.original_bytes), func.sum(Result.compressed_bytes))
        .where(Result.job_id == job.id).group_by(Result.status)
    ):
        p.counts[status] = int(n)
        if status == ResultStatus.ACCEPTED:
            p.bytes_before, p.bytes_after = int(before or 0), int(after or 0)
    for code, n in s.execute(
        select(Result.reason_code, func.count())
        .where(Result.job_id == job.id, Result.status.in_(NOT_ARCHIVED))
        .group_by(Result.reason_code)
    ):
        p.reasons[code or "unknown"] = int(n)
    if settings is not None and job.status in ACTIVE_JOBS:
        last = s.execute(select(func.max(Result.updated_at)).where(Result.job_id == job.id)).scalar_one()
        p.last_progress = max((t for t in (aware(last), aware(job.started_at or job.created_at)) if t is not None),
                              default=None)
        p.stalled = stall_reason(job, p.last_progress, utcnow(), settings, broker_jobs)
    return p


def _broker_jobs(broker: BrokerView | None) -> set[int] | None:
    return broker.jobs_with_batches() if broker is not None else None


def status(job_id: int, db_url: str | None = None, *, runtime: Runtime,
           broker: BrokerView | None = None) -> JobProgress:
    """Where the job stands; ``broker`` (the front door's view of its queues) lets an active job
    whose queue was lost be reported ``stalled`` (:mod:`.stalled`)."""
    with runtime.session_factory(db_url)() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NoSuchJob(f"no job {job_id}")
        return _progress_of(s, job, runtime.settings, _broker_jobs(broker) if job.status in ACTIVE_JOBS else None)


def recent_jobs(limit: int = 20, db_url: str | None = None, *, runtime: Runtime,
                broker: BrokerView | None = None) -> list[JobProgress]:
    with runtime.session_factory(db_url)() as s:
        jobs = s.execute(select(Job).order_by(Job.id.desc()).limit(limit)).scalars().all()
        seen = _broker_jobs(broker) if any(j.status in ACTIVE_JOBS for j in jobs) else None
        return [_progress_of(s, j, runtime.settings, seen) for j in jobs]


def cancel(job_id: int, db_url: str | None = None, *, runtime: Runtime) -> bool:
    """Mark a pending/running job cancelled (workers stop at their next object). False if it had ended."""
    with runtime.session_factory(db_url)() as s:
        if s.get(Job, job_id) is None:
            raise NoSuchJob(f"no job {job_id}")
        res = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE_JOBS))
                        .values(status=JobStatus.CANCELLED, finished_at=utcnow()))
        s.commit()
        return bool(getattr(res, "rowcount", 0))


def wait_for(job_id: int, db_url: str | None = None, timeout: float = 600.0, poll: float = 1.0,
             *, runtime: Runtime) -> JobProgress:
    """Poll until the job leaves pending/running (or ``timeout``); returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        p = status(job_id, db_url, runtime=runtime)
        if p.status not in ACTIVE_JOBS or time.monotonic() > deadline:
            return p
        time.sleep(poll)
