"""The words the ledger, the jobs and the reports share: statuses and the named sets of them.

Every status is stored as a plain string in the database (``Result.status``, ``Job.status``), so
the enums are ``StrEnum``: a member compares equal to its string, goes into SQL as it is and reads
back as the same text. The sets below carry the *meaning* the code relies on ("an archive exists",
"nothing left to do for this row", "a job may still change") so that it is written down once,
not as a tuple of literals at each place that needs it.
"""

from __future__ import annotations

from enum import StrEnum


class ResultStatus(StrEnum):
    """What happened to one object in one job (``Result.status``)."""

    PENDING = "pending"    # listed, not yet decided (a job interrupted before it got here)
    ACCEPTED = "accepted"  # encoded, verified by decoding the real bitstream, written and re-read
    REJECTED = "rejected"  # decided against: not an image, PSNR floor not reachable, saving too small, ...
    FAILED = "failed"      # could not be decided this time (storage outage, internal error): retried
    SKIPPED = "skipped"    # already archived (same version, a container that still matches)


class JobStatus(StrEnum):
    """Where one run over a source stands (``Job.status``)."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    """What started a job (``Job.kind``)."""

    RECOMPRESS = "recompress"
    PILOT = "pilot"
    SCHEDULED = "scheduled"


#: Every result status, in the order reports list them.
RESULT_STATUSES: tuple[ResultStatus, ...] = (ResultStatus.ACCEPTED, ResultStatus.REJECTED, ResultStatus.FAILED,
                                             ResultStatus.SKIPPED, ResultStatus.PENDING)
#: A verified container of this version exists at the destination (the original may be deleted).
ARCHIVED: frozenset[ResultStatus] = frozenset({ResultStatus.ACCEPTED, ResultStatus.SKIPPED})
#: A row the same job never redoes when it resumes (a ``failed`` row is tried again).
SETTLED: frozenset[ResultStatus] = frozenset({ResultStatus.ACCEPTED, ResultStatus.REJECTED, ResultStatus.SKIPPED})
#: Rows that count as done in a job's progress (``failed`` included: the object was looked at).
DONE: tuple[ResultStatus, ...] = (ResultStatus.ACCEPTED, ResultStatus.REJECTED, ResultStatus.FAILED,
                                  ResultStatus.SKIPPED)
#: Rows that spent compute on encoding (a skipped row did not).
PROCESSED: tuple[ResultStatus, ...] = (ResultStatus.ACCEPTED, ResultStatus.REJECTED, ResultStatus.FAILED)

#: Every job status.
JOB_STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
#: A job that may still change (can be cancelled, is counted as in flight).
ACTIVE_JOBS: tuple[JobStatus, ...] = (JobStatus.PENDING, JobStatus.RUNNING)
#: A job a rerun of the same command picks up instead of starting a new one.
RESUMABLE_JOBS: tuple[JobStatus, ...] = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.FAILED)
#: Every job kind.
JOB_KINDS: tuple[JobKind, ...] = tuple(JobKind)
