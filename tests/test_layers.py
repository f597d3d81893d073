"""The layering the code relies on: the library never calls its front doors back, never loads
settings behind a caller's back, and keeps per-process state in the runtime a front door builds;
result, ledger and job rows are written through one module (``archiver.records``)."""

from __future__ import annotations

import ast
import threading
import warnings
from pathlib import Path

import pytest
from sqlalchemy import select

from archiver.db.models import ArchivedObject, Job, Result
from archiver.identity import Scope
from archiver.records import Outcome, finalize, new_job, record
from archiver.runtime import Runtime
from archiver.settings import Settings
from archiver.vocabulary import JobKind, JobStatus, Reason, ResultStatus

PACKAGE = Path(__file__).resolve().parents[1] / "archiver"
#: the modules that are front doors themselves: they may load settings
FRONT_DOORS = {"settings.py", "server.py"}


def _library_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts]


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _parse(p: Path) -> ast.AST:
    with warnings.catch_warnings():  # a docstring's escape sequences are not this test's business
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(p.read_text())


def test_the_library_never_imports_the_workers() -> None:
    """Only the CLI (a front door: ``archiver submit`` sends through Celery) may import ``workers``."""
    offenders = [str(p.relative_to(PACKAGE)) for p in _library_modules()
                 if any(n == "workers" or n.startswith("workers.") for n in _imports(_parse(p)))]
    assert offenders == []


def test_only_front_doors_load_settings() -> None:
    calls = []
    for p in _library_modules():
        if p.name in FRONT_DOORS and p.parent == PACKAGE:
            continue
        for node in ast.walk(_parse(p)):
            name = getattr(node.func, "id", getattr(node.func, "attr", None)) if isinstance(node, ast.Call) else None
            if name == "load_settings":
                calls.append(f"{p.relative_to(PACKAGE)}:{node.lineno}")
    assert calls == []


def test_jobs_is_one_module_per_operation() -> None:
    names = {p.stem for p in (PACKAGE / "jobs").glob("*.py")}
    assert {"submit", "schedule", "batch", "status"} <= names


# ---- the runtime --------------------------------------------------------------------------------

def test_a_runtime_builds_each_costly_thing_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    rt = Runtime(Settings(database_url=url, workers={"codec_slots": 2}))
    assert rt.session_factory(migrate=True) is rt.session_factory(url) is rt.session_factory()
    other = f"sqlite:///{tmp_path / 'b.sqlite'}"
    assert rt.session_factory(other) is not rt.session_factory()
    with rt.session_factory()() as s:  # migrated: the schema is there
        assert s.execute(select(Job)).first() is None
    (tmp_path / "src").mkdir()
    assert rt.store(str(tmp_path / "src")) is rt.store(str(tmp_path / "src"))
    dest = rt.store(str(tmp_path / "made"), create=True)
    assert (tmp_path / "made").is_dir() and dest is rt.store(str(tmp_path / "made"), create=True)
    codec = rt.codec("compact-v1", "cpu")
    assert rt.codec("compact-v1", "cpu") is codec
    slots = rt.codec_slots(codec)
    assert slots is rt.codec_slots(codec)
    assert slots.acquire(blocking=False) and slots.acquire(blocking=False)  # workers.codec_slots = 2
    assert not slots.acquire(blocking=False)
    assert rt.quality_hints is rt.quality_hints


def test_two_runtimes_share_nothing(tmp_path: Path) -> None:
    """The state lives in the runtime, not in module globals: a second front door in the same
    process (a test, a benchmark) gets its own engines and stores."""
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    a, b = Runtime(Settings(database_url=url)), Runtime(Settings(database_url=url))
    assert a.session_factory() is not b.session_factory()
    assert a.store(str(tmp_path)) is not b.store(str(tmp_path))
    assert a.quality_hints is not b.quality_hints


def test_a_forked_child_forgets_its_parents_connections(tmp_path: Path) -> None:
    rt = Runtime(Settings(database_url=f"sqlite:///{tmp_path / 'a.sqlite'}"))
    before, store = rt.session_factory(), rt.store(str(tmp_path))
    rt.after_fork()
    assert rt.session_factory() is not before and rt.store(str(tmp_path)) is not store


def test_a_codec_with_other_weights_than_the_container_names_is_refused(tmp_path: Path) -> None:
    from archiver.errors import ContainerError

    rt = Runtime(Settings(database_url=f"sqlite:///{tmp_path / 'a.sqlite'}"))
    codec = rt.codec("compact-v1", "cpu")
    assert rt.codec("compact-v1", "cpu", expect_sha256=codec.weights_sha256) is codec
    with pytest.raises(ContainerError) as e:
        rt.codec("compact-v1", "cpu", expect_sha256="0" * 64)
    assert e.value.code == "weights_mismatch"


def test_a_runtime_loads_one_codec_when_many_threads_ask_at_once(tmp_path: Path) -> None:
    rt = Runtime(Settings(database_url=f"sqlite:///{tmp_path / 'a.sqlite'}"))
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(rt.codec("compact-v1", "cpu"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(c is got[0] for c in got)


# ---- records ------------------------------------------------------------------------------------

@pytest.fixture
def sf(tmp_path: Path):  # noqa: ANN201
    return Runtime(Settings(database_url=f"sqlite:///{tmp_path / 'r.sqlite'}")).session_factory(migrate=True)


def _job(sf, status: JobStatus = JobStatus.RUNNING, enqueued: int | None = None) -> int:  # noqa: ANN001
    with sf() as s:
        job = new_job(s, kind=JobKind.RECOMPRESS, source="s3://b", dest=None, model_id="m", options={"min_psnr": 40},
                      status=status)
        if enqueued is not None:
            job.objects_enqueued = enqueued
        s.commit()
        return job.id


def test_one_job_row_maker_for_both_kinds_of_job(sf) -> None:  # noqa: ANN001
    in_process, distributed = _job(sf), _job(sf, JobStatus.PENDING)
    with sf() as s:
        a, b = s.get(Job, in_process), s.get(Job, distributed)
        assert (a.status, b.status) == ("running", "pending")
        assert a.settings["options"] == {"min_psnr": 40} and a.settings["host"] and a.settings["pid"]
        assert (b.objects_listed, b.bytes_listed, b.objects_enqueued) == (0, 0, 0)  # counted while listing


def test_record_upserts_and_writes_the_ledger_with_an_accepted_row(sf) -> None:  # noqa: ANN001
    job, scope = _job(sf), Scope("b", "p/")
    failed = Outcome.settled_early("x.png", ResultStatus.FAILED, "storage_error", "outage", original_bytes=10,
                                   etag="e1")
    first = record(sf, job, scope, "m", failed)
    ok = Outcome(key="x.png", status=ResultStatus.ACCEPTED, original_bytes=10, etag="e1", compressed_bytes=4,
                 compressed_sha256="ab", dest_url="s3://b/p/x.png.cxa")
    second = record(sf, job, scope, "m", ok)
    assert second.row_id == first.row_id  # one row per (job, bucket, key)
    with sf() as s:
        row = s.get(Result, first.row_id)
        assert (row.key, row.status, row.attempts) == ("p/x.png", "accepted", 2)
        ledger = s.execute(select(ArchivedObject)).scalar_one()
        assert (ledger.key, ledger.etag, ledger.result_id, ledger.compressed_bytes) == ("p/x.png", "e1", row.id, 4)


def test_keep_settled_never_overwrites_a_finished_row(sf) -> None:  # noqa: ANN001
    """A redelivered batch that finds the object gone must not turn its accepted row into a
    failure: the row stands and is returned."""
    job, scope = _job(sf), Scope("b")
    ok = Outcome(key="y.png", status=ResultStatus.ACCEPTED, original_bytes=10, etag="e", compressed_bytes=4,
                 compressed_sha256="ab", dest_url="s3://b/y.png.cxa")
    record(sf, job, scope, "m", ok)
    gone = Outcome.settled_early("y.png", ResultStatus.FAILED, Reason.NOT_FOUND, "gone")
    kept = record(sf, job, scope, "m", gone, keep_settled=True)
    assert kept.outcome.status == "accepted" and kept.outcome.dest_url == "s3://b/y.png.cxa"
    # without keep_settled too: an archived row is never downgraded by the same (or an unknown) version
    assert record(sf, job, scope, "m", gone).outcome.status == "accepted"
    late = Outcome.settled_early("y.png", ResultStatus.FAILED, Reason.NOT_FOUND, "gone", etag="e")
    assert record(sf, job, scope, "m", late).outcome.status == "accepted"
    # a new version of the object (overwritten since) is news: its outcome replaces the row
    newer = Outcome.settled_early("y.png", ResultStatus.REJECTED, "corrupt", "bad", etag="e2")
    assert record(sf, job, scope, "m", newer).outcome.status == "rejected"


def test_finalize_waits_for_a_row_per_enqueued_object(sf) -> None:  # noqa: ANN001
    job, scope = _job(sf, enqueued=2), Scope("b")
    record(sf, job, scope, "m", Outcome.settled_early("a", ResultStatus.REJECTED, "corrupt", "bad"))
    assert not finalize(sf, job)
    record(sf, job, scope, "m", Outcome.settled_early("b", ResultStatus.FAILED, "storage_error", "outage"))
    assert finalize(sf, job)
    assert not finalize(sf, job)  # conditional: only once
    with sf() as s:
        assert s.get(Job, job).status == "finished"
