"""Distributed jobs: submit a listing as batches to the workers, follow, cancel, finalize.

One module per operation, as s3transfer keeps ``upload.py`` and ``download.py``:

* :mod:`.submit`: create the job row, stream the listing, hand batches to an ``enqueue``
  callable (the front door's: the Celery send, or a test's list);
* :mod:`.schedule`: start a scheduled run unless the previous one is still going;
* :mod:`.batch`: the step a worker runs for one batch (each object through the pipeline);
* :mod:`.status`: progress, recent jobs, cancel, wait;
* :mod:`.stalled`: which active jobs will not get further by themselves (an interrupted
  submission, a lost queue); :func:`.submit.resume` finishes them.

The rows they write (results, ledger, jobs, and the conditional "finished" update) are
:mod:`archiver.records`'. Every operation takes the front door's :class:`~archiver.runtime.Runtime`
(settings, session factories, stores, codecs); none loads settings or knows about Celery.

Why a job is safe to kill anywhere: the row counts a batch once it was sent, and the job stays
``pending`` (which nothing finishes) until its listing is complete;
a worker records one row per object (unique per job, bucket and key), so a redelivered batch
updates rows instead of duplicating them; and a job becomes ``finished`` only by a conditional
update once it has a finished row per enqueued object.
"""

from __future__ import annotations

from ..records import finalize
from .batch import AttemptCounter, BatchResult, NoAttemptCounter, fail_unfinished, process_batch
from .schedule import start_scheduled
from .stalled import BrokerView, resume_command
from .status import JobProgress, NoSuchJob, cancel, recent_jobs, status, wait_for
from .submit import Enqueue, Item, drop_archived, drop_rejected, rejection_repeats, resume, submit

__all__ = [
    "AttemptCounter", "BatchResult", "BrokerView", "Enqueue", "Item", "JobProgress", "NoAttemptCounter", "NoSuchJob", "cancel",
    "drop_archived", "drop_rejected", "fail_unfinished", "finalize", "process_batch", "recent_jobs",
    "rejection_repeats", "resume", "resume_command", "start_scheduled", "status", "submit", "wait_for",
]
