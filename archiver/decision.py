"""What to do with one listed object, decided from facts alone (no storage, no database).

The per-object step (:func:`archiver.pipeline.handle_object`) gathers a few facts — this job's
row for the object, the newest ledger entry for the same version, whether that entry's container
is still at the destination — and then has to choose between keeping what is recorded, skipping,
deleting only, recompressing and upgrading. Those choices are where "nothing is ever lost" is won
or lost, so they live here as a pure function that the tests can walk through case by case,
while the pipeline keeps only the I/O.

The one fact that costs I/O (a HEAD of the container) is asked for lazily: :func:`decide` answers
``CHECK_CONTAINER`` when it needs it, and the caller decides again with the answer filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from .vocabulary import ARCHIVED, SETTLED, ResultStatus


class Container(StrEnum):
    """The state of the container a ledger entry names, found by a HEAD at the destination."""

    MATCHES = "matches"          # present, with the recorded size and sha256
    MISSING = "missing"          # absent or different: the ledger entry is not trusted
    UNCHECKABLE = "uncheckable"  # the destination could not be asked (after retries)


class Step(StrEnum):
    """The action chosen for one object."""

    KEEP_RECORDED = "keep_recorded"        # return this job's row as it is; do nothing
    CHECK_CONTAINER = "check_container"    # HEAD the archived container, then decide again
    FAIL_UNCHECKABLE = "fail_uncheckable"  # record ``failed``: the archive exists but cannot be checked
    DELETE_ONLY = "delete_only"            # this job archived it before an interruption; only the delete is left
    SKIP = "skip"                          # record ``skipped`` (already archived), no encoding
    PROCESS = "process"                    # encode, verify, write and record


@dataclass(frozen=True)
class Recorded:
    """This job's row for the same version of the object."""

    status: ResultStatus | str
    original_deleted: bool = False


@dataclass(frozen=True)
class Facts:
    """Everything the choice depends on.

    ``archive_model`` is the model of the newest ledger entry for this version (any model), or
    None when there is none or the run is a dry run (a dry run trusts no archive and writes none).
    ``container`` is None until the caller has checked it.
    """

    recorded: Recorded | None
    archive_model: str | None
    model_id: str
    upgrade: bool = False
    replace: bool = False
    dry_run: bool = False
    container: Container | None = None

    def checked(self, container: Container) -> Facts:
        return replace(self, container=container)


@dataclass(frozen=True)
class Decision:
    step: Step
    #: PROCESS only: the ledger's archive was made by another model and ``upgrade`` is on, so the
    #: new bitstream must beat the older archive's size (the older archive is not "already archived").
    upgrade_over_archive: bool = False
    #: after an archived outcome, delete the original (``replace``, not a dry run)
    delete_after: bool = False


def decide(f: Facts) -> Decision:
    """Choose the step for one object. Pure: same facts, same answer.

    * A row of this job that is settled (accepted, rejected, skipped) stands, unless it archived
      the object and ``replace`` still has to delete the original; even then, without a ledger
      entry nothing proves a container exists, so it stands.
    * A ledger entry (same model, or any model unless upgrading) is trusted only once its container
      is checked: it matches → ``SKIP`` (or ``DELETE_ONLY`` when this job recorded it already);
      missing → recompress; cannot be checked → keep this job's archived row and the original,
      otherwise record a failure (never recompress over an archive we cannot see).
    * Anything else is processed; with ``upgrade``, another model's archive is a size to beat.
    """
    wants_delete = f.replace and not f.dry_run
    upgrading = f.archive_model is not None and f.upgrade and f.archive_model != f.model_id
    trusted = f.archive_model is not None and not upgrading
    rec = f.recorded
    rec_archived = rec is not None and rec.status in ARCHIVED

    if rec is not None and rec.status in SETTLED:
        delete_pending = wants_delete and rec_archived and not rec.original_deleted
        if not delete_pending or not trusted:
            return Decision(Step.KEEP_RECORDED)

    if trusted:
        if f.container is None:
            return Decision(Step.CHECK_CONTAINER)
        if f.container is Container.UNCHECKABLE:
            return Decision(Step.KEEP_RECORDED if rec_archived else Step.FAIL_UNCHECKABLE)
        if f.container is Container.MATCHES:
            return Decision(Step.DELETE_ONLY if rec_archived else Step.SKIP, delete_after=wants_delete)
    return Decision(Step.PROCESS, upgrade_over_archive=upgrading, delete_after=wants_delete)


def deletes_original(decision: Decision, outcome_status: str, has_archive: bool) -> bool:
    """After the step ran: delete the original only when asked to, when the outcome says a verified
    container exists, and when a ledger entry names it (the delete re-reads that container first)."""
    return decision.delete_after and has_archive and outcome_status in ARCHIVED
