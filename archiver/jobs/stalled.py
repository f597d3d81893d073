"""Stalled jobs: an active job that will not get any further without an operator (or the beat).

Two ways a distributed job stops moving while its row still says it is active:

* its **submission was interrupted** (the broker stayed down past ``workers.submit_broker_wait``,
  the listing broke off): the row stays ``pending`` with ``settings.interrupted`` saying why and
  how many objects were really enqueued. Batches already sent keep running; nothing finishes
  the job until the listing is completed by ``archiver submit --resume``;
* its **queue was lost** (Redis came back without its data): the row is ``running``, no result
  row changed for ``visibility_timeout + stall_margin`` seconds, and the broker holds no batch
  of it, neither queued nor delivered (a live lease keeps a running batch in ``unacked``). The
  visibility timeout is the longest a live batch may go unseen (a worker that died with it
  gives it back after that), so past it plus a margin, nothing is coming.

Both are recovered the same way: :func:`archiver.jobs.submit.resume` lists the source again and
re-enqueues exactly the objects this job has no final row for.

How to read the broker is the front door's business: it passes a :class:`BrokerView`
(``workers.inflight.RedisBrokerView``). Without one, a lost queue cannot be told from a busy one,
and only interrupted submissions are reported.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Protocol

from ..vocabulary import JobStatus

if TYPE_CHECKING:
    from ..db.models import Job
    from ..settings import Settings


class BrokerView(Protocol):
    def jobs_with_batches(self) -> set[int] | None:
        """Ids of the jobs with a batch queued or delivered on the broker (None: cannot tell)."""
        ...


def resume_command(job_id: int) -> str:
    return f"archiver submit --resume {job_id}"


def interrupted(job: Job) -> str | None:
    """Why the submission of this pending job broke off (None: it did not, or is not pending)."""
    if job.status != JobStatus.PENDING:
        return None
    return (job.settings or {}).get("interrupted")


def stall_reason(job: Job, last_progress: dt.datetime | None, now: dt.datetime, settings: Settings,
                 broker_jobs: set[int] | None) -> str | None:
    """Why ``job`` is stalled, or None. ``last_progress``: the newest change of its result rows
    (or its start); ``broker_jobs``: :meth:`BrokerView.jobs_with_batches` (None: unknown)."""
    why = interrupted(job)
    if why:
        return f"submission interrupted: {why}"
    if job.status != JobStatus.RUNNING or broker_jobs is None or job.id in broker_jobs:
        return None
    w = settings.workers
    quiet = (now - last_progress).total_seconds() if last_progress is not None else None
    limit = w.visibility_timeout + w.stall_margin
    if quiet is None or quiet < limit:
        return None
    return (f"no progress for {quiet:.0f} s (limit: visibility_timeout + stall_margin = {limit:g} s) and no batch "
            "of it is queued or held by a worker: its queue was lost")
