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
#: Rows of an object looked at that got no archive: their reason code says why (reports count these).
NOT_ARCHIVED: tuple[ResultStatus, ...] = (ResultStatus.REJECTED, ResultStatus.FAILED)
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


class Reason(StrEnum):
    """Reason codes the pipeline and the jobs assign themselves (``Result.reason_code``).

    Errors raised further down carry their own codes (``ArchiverError.code``: ``corrupt``,
    ``decompression_bomb``, ``no_such_bucket``...), which are recorded as they are; the sets
    below classify both kinds.
    """

    ALREADY_ARCHIVED = "already_archived"          # skipped: this version has a verified archive
    ARCHIVE_SMALLER = "archive_smaller"            # skipped: an upgrade would not shrink the archive
    PSNR_BELOW_THRESHOLD = "psnr_below_threshold"  # rejected: the real decode missed the floor
    INSUFFICIENT_SAVING = "insufficient_saving"    # rejected: the container would save too little
    UNSAFE_KEY = "unsafe_key"                      # rejected: its restore path would escape a directory
    NOT_FOUND = "not_found"                        # failed: gone between listing and processing
    POISON_OBJECT = "poison_object"                # failed: a worker died on it every time
    INTERNAL_ERROR = "internal_error"              # failed: an unexpected exception (a bug)
    TRANSIENT_ERROR = "transient_error"            # failed: a batch gave up after its retries


#: Refused before anything is fetched: entries the listing cannot serve, and unsafe keys.
LISTING_REJECTIONS: frozenset[str] = frozenset({"name_not_utf8", "symlink_outside_root", "not_a_regular_file",
                                                Reason.UNSAFE_KEY})
#: Decided by the object's bytes (or key) alone: the same version is refused again by any model and
#: thresholds. (``decompression_bomb`` and ``too_large`` also depend on settings: they are retried.)
CONTENT_REJECTIONS: frozenset[str] = frozenset({"not_an_image", "empty", "corrupt", "unsupported_mode",
                                                "unsupported_depth", "animated", "multi_image", Reason.UNSAFE_KEY})
#: Decided by the model and the thresholds: they repeat only with the same model and floors no lower.
THRESHOLD_REJECTIONS: frozenset[str] = frozenset({"psnr_unreachable", Reason.PSNR_BELOW_THRESHOLD,
                                                  Reason.INSUFFICIENT_SAVING})
#: Why an object got no bit-exact archive (archiver.lossless.Refusal). Decided by the bytes, but they
#: reject only under ``policy = "lossless"``: a later run under ``best`` or ``lossy`` tries them again.
LOSSLESS_REFUSALS: frozenset[str] = frozenset({"not_jpeg", "jpeg_arithmetic", "jpeg_lossless_process", "jpeg_components",
                                               "jpeg_truncated", "jpeg_malformed", "jpeg_unsupported",
                                               "lossless_mismatch"})
#: Error codes (``ArchiverError.code``) that mean "cannot be archived under the policy" (status
#: ``rejected``); any other error is a ``failed`` object that a rerun may fix.
REJECTING_ERRORS: frozenset[str] = frozenset({"psnr_unreachable", "too_large"})
