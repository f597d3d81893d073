"""Scheduled runs: start a run of a schedule unless the previous one is still going.

The check and the insert happen in one transaction under a database lock (a PostgreSQL advisory
transaction lock; SQLite's ``BEGIN IMMEDIATE`` write lock), so two beats that fire together
cannot both start a run. A run older than the schedule's ``max_runtime_hours`` no longer blocks:
it is marked failed as stale, since a worker that died with it would otherwise stop the schedule
for good. A run that is stalled (its submission interrupted, or its queue lost) is resumed by the
next trigger rather than waited on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text

from ..db.models import Job, Result, aware, utcnow
from ..pipeline import PipelineOptions
from ..records import new_job
from ..schedules import Schedule
from ..telemetry import scheduled_run
from ..vocabulary import ACTIVE_JOBS, JobKind, JobStatus
from .stalled import BrokerView, stall_reason
from .submit import Enqueue, distributed, enqueue_listing, resume

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"archiver-schedule:{name}".encode()).digest()[:8], "big", signed=True)


def start_scheduled(schedule: Schedule | dict[str, Any], db_url: str | None = None, *,
                    runtime: Runtime, enqueue: Enqueue, broker: BrokerView | None = None) -> int | None:
    """Start a run of ``schedule`` unless a previous run is still pending/running.

    Returns the new job id, or ``None`` when a run is still in progress. A previous run that is
    stalled (:mod:`.stalled`: its submission was interrupted, or, with ``broker``, its queue was
    lost) is resumed instead, and its id returned: the beat does what ``archiver submit
    --resume`` would.
    """
    sched = schedule if isinstance(schedule, Schedule) else Schedule.model_validate(schedule)
    st = runtime.settings
    sf = runtime.session_factory(db_url, migrate=True)
    opts = PipelineOptions.from_settings(st, min_psnr=sched.min_psnr, min_saving=sched.min_saving,
                                         replace=sched.replace, upgrade=sched.upgrade, effort=sched.effort,
                                         policy=sched.policy)
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
        stalled: list[int] = []
        seen = broker.jobs_with_batches() if broker is not None and running else None
        for job in running:
            started = aware(job.started_at or job.created_at)
            if started is not None and now - started > dt.timedelta(hours=sched.max_runtime_hours):
                job.error = f"stale: still {job.status} after {sched.max_runtime_hours} h; superseded by a new run"
                job.status, job.finished_at = JobStatus.FAILED, now
                continue
            blocking.append(job.id)
            last = s.execute(select(func.max(Result.updated_at)).where(Result.job_id == job.id)).scalar_one()
            progress = max((t for t in (aware(last), started) if t is not None), default=None)
            why = stall_reason(job, progress, now, st, seen)
            if why:
                log.warning("schedule %s: run %s is stalled (%s); resuming it", sched.name, job.id, why)
                stalled.append(job.id)
        if stalled:
            s.commit()  # (the lock is released here: resume is idempotent, two at once send twice)
            return resume(stalled[0], db_url, runtime=runtime, enqueue=enqueue)
        if blocking:
            s.commit()
            log.warning("schedule %s: previous run (job %s) still running; not starting another",
                        sched.name, ", ".join(map(str, blocking)))
            scheduled_run(sched.name, started=False)
            return None
        job = new_job(s, kind=JobKind.SCHEDULED, source=sched.source, dest=sched.dest,
                      model_id=sched.model or st.model_id, options=opts.as_dict(), status=JobStatus.PENDING,
                      schedule_name=sched.name, extra=distributed(size, sched.older_than_days))
        s.commit()
        job_id = job.id
    log.info("schedule %s: started job %s", sched.name, job_id)
    scheduled_run(sched.name, started=True)
    enqueue_listing(job_id, sched.source, sched.dest, opts, sf, runtime, chunk_size=size,
                    older_than_days=sched.older_than_days, skip_archived=True,
                    skip_rejected=not sched.retry_rejected, enqueue=enqueue)
    return job_id
