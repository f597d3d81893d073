"""The per-object choice (archiver.decision.decide), case by case: what a resumed, repeated,
upgraded or replacing run does with each combination of this job's row, the ledger and the
archived container. The pipeline tests cover the same paths end to end against real storage."""

from __future__ import annotations

import pytest

from archiver.decision import Container, Decision, Facts, Recorded, Step, decide, deletes_original

M, OLD = "compact-v5", "compact-v4"


def facts(**kw) -> Facts:
    base = dict(recorded=None, archive_model=None, model_id=M)
    base.update(kw)
    return Facts(**base)


def test_a_new_object_is_processed():
    assert decide(facts()) == Decision(Step.PROCESS)
    assert decide(facts(replace=True)) == Decision(Step.PROCESS, delete_after=True)
    assert decide(facts(replace=True, dry_run=True)) == Decision(Step.PROCESS)  # a dry run never deletes


@pytest.mark.parametrize("status", ["accepted", "rejected", "skipped"])
def test_a_settled_row_of_this_job_stands(status):
    assert decide(facts(recorded=Recorded(status), archive_model=M)).step is Step.KEEP_RECORDED


@pytest.mark.parametrize("status", ["failed", "pending"])
def test_an_unsettled_row_is_tried_again(status):
    assert decide(facts(recorded=Recorded(status))).step is Step.PROCESS
    assert decide(facts(recorded=Recorded(status), archive_model=M)).step is Step.CHECK_CONTAINER


def test_a_ledger_entry_is_trusted_only_after_its_container_is_checked():
    f = facts(archive_model=M)
    assert decide(f).step is Step.CHECK_CONTAINER
    assert decide(f.checked(Container.MATCHES)) == Decision(Step.SKIP)
    assert decide(f.checked(Container.MISSING)) == Decision(Step.PROCESS)  # gone or different: recompress
    assert decide(f.checked(Container.UNCHECKABLE)).step is Step.FAIL_UNCHECKABLE  # never write over it blind


def test_without_upgrade_any_model_archive_counts():
    f = facts(archive_model=OLD)
    assert decide(f).step is Step.CHECK_CONTAINER
    assert decide(f.checked(Container.MATCHES)).step is Step.SKIP


def test_an_upgrade_treats_another_models_archive_as_a_size_to_beat():
    d = decide(facts(archive_model=OLD, upgrade=True))
    assert d == Decision(Step.PROCESS, upgrade_over_archive=True)
    # the same model's archive is still "already archived" under --upgrade
    assert decide(facts(archive_model=M, upgrade=True)).step is Step.CHECK_CONTAINER


def test_a_pending_delete_after_an_interruption_is_the_only_thing_redone():
    f = facts(recorded=Recorded("accepted"), archive_model=M, replace=True)
    assert decide(f).step is Step.CHECK_CONTAINER
    assert decide(f.checked(Container.MATCHES)) == Decision(Step.DELETE_ONLY, delete_after=True)
    # its container cannot be checked: keep the row and the original
    assert decide(f.checked(Container.UNCHECKABLE)).step is Step.KEEP_RECORDED
    # its container vanished: the object is archived again before any delete
    assert decide(f.checked(Container.MISSING)) == Decision(Step.PROCESS, delete_after=True)


def test_a_recorded_archive_without_ledger_proof_is_never_deleted():
    # no ledger entry (e.g. a store without etags): nothing proves a container exists
    assert decide(facts(recorded=Recorded("accepted"), replace=True)).step is Step.KEEP_RECORDED
    # already deleted: nothing left to do
    done = facts(recorded=Recorded("skipped", original_deleted=True), archive_model=M, replace=True)
    assert decide(done).step is Step.KEEP_RECORDED
    # another model's archive while upgrading is not proof of this job's archive either
    up = facts(recorded=Recorded("accepted"), archive_model=OLD, upgrade=True, replace=True)
    assert decide(up).step is Step.KEEP_RECORDED


def test_a_rejected_row_never_leads_to_a_delete():
    f = facts(recorded=Recorded("rejected"), archive_model=M, replace=True)
    assert decide(f).step is Step.KEEP_RECORDED


def test_the_delete_follows_only_a_verified_archived_outcome():
    d = decide(facts(replace=True))
    assert deletes_original(d, "accepted", has_archive=True)
    assert not deletes_original(d, "accepted", has_archive=False)  # nothing in the ledger names it
    for status in ("rejected", "failed", "pending"):
        assert not deletes_original(d, status, has_archive=True)
    assert not deletes_original(decide(facts()), "accepted", has_archive=True)  # not asked to
