"""Migrations and constraints on SQLite and PostgreSQL (both real)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import MetaData, Table, func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from archiver.cli import main
from archiver.db.models import utcnow
from archiver.db import (
    ArchivedObject,
    Base,
    Job,
    Result,
    current_revision,
    head_revision,
    make_engine,
    normalize_url,
    session_factory,
    upgrade,
)


def test_upgrade_matches_models(db_url: str) -> None:
    """What `alembic check` does: after upgrade, autogenerate finds nothing to change."""
    assert current_revision(db_url) is None
    upgrade(db_url)
    upgrade(db_url)  # idempotent
    assert current_revision(db_url) == head_revision() is not None
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == []
        tables = set(inspect(engine).get_table_names())
        assert {"jobs", "results", "archived_objects", "alembic_version"} <= tables
    finally:
        engine.dispose()


def _job(**kw: object) -> Job:
    return Job(source="s3://b/p", model_id="compact-v1", **kw)


def _result(job: Job, key: str = "a.jpg") -> Result:
    return Result(job=job, bucket="b", key=key, model_id="compact-v1", original_bytes=10)


def test_result_unique_per_job_object(migrated_db_url: str) -> None:
    factory = session_factory(migrated_db_url)
    with factory() as s:
        job = _job()
        s.add_all([job, _result(job)])
        s.commit()
        job_id = job.id
    with factory() as s:
        s.add(_result(s.get(Job, job_id)))
        with pytest.raises(IntegrityError):
            s.commit()
    with factory() as s:  # same key in another job is fine
        job2 = _job()
        s.add_all([job2, _result(job2)])
        s.commit()
        assert s.scalar(select(func.count()).select_from(Result)) == 2
    factory.kw["bind"].dispose()


def test_archived_object_unique_per_version_and_model(migrated_db_url: str) -> None:
    factory = session_factory(migrated_db_url)

    def row(etag: str, model: str) -> ArchivedObject:
        return ArchivedObject(bucket="b", key="k", etag=etag, model_id=model, dest_url="s3://b/k.cxa",
                              compressed_sha256="0" * 64, compressed_bytes=1, original_bytes=2)

    with factory() as s:
        s.add_all([row("e1", "m1"), row("e2", "m1"), row("e1", "m2")])
        s.commit()
    with factory() as s:
        s.add(row("e1", "m1"))
        with pytest.raises(IntegrityError):
            s.commit()
    factory.kw["bind"].dispose()


def test_foreign_keys_cascade(migrated_db_url: str) -> None:
    factory = session_factory(migrated_db_url)
    with factory() as s:
        job = _job()
        s.add_all([job, _result(job, "a"), _result(job, "b")])
        s.commit()
        s.execute(text("DELETE FROM jobs WHERE id = :i"), {"i": job.id})
        s.commit()
        assert s.scalar(select(func.count()).select_from(Result)) == 0
    with factory() as s:  # FK enforced (SQLite too: PRAGMA foreign_keys=ON)
        s.add(Result(job_id=999_999, bucket="b", key="k", model_id="m"))
        with pytest.raises(IntegrityError):
            s.commit()
    factory.kw["bind"].dispose()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.sqlite'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
    engine.dispose()


def test_sqlite_concurrent_writers(tmp_path: Path) -> None:
    """Several threads (own engines, like separate workers) read-then-write without 'database is locked'."""
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    upgrade(url)
    factory = session_factory(url)
    with factory() as s:
        job = _job()
        s.add(job)
        s.commit()
        job_id = job.id
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        own = session_factory(url)
        try:
            for i in range(25):
                with own() as s:
                    s.scalar(select(func.count()).select_from(Result))  # read first: the classic lock upgrade
                    s.add(Result(job_id=job_id, bucket="b", key=f"{n}/{i}", model_id="m"))
                    s.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            own.kw["bind"].dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 100
    factory.kw["bind"].dispose()


def test_normalize_url() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.sqlite").drivername == "sqlite"


def test_cli_db_upgrade(db_url: str) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["db", "upgrade", "--url", db_url])
    assert res.exit_code == 0, res.output
    assert current_revision(db_url) == head_revision()
    res = runner.invoke(main, ["db", "current", "--url", db_url])
    assert res.exit_code == 0, res.output
    assert "up to date" in res.output


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_names_a_database_it_cannot_use(tmp_path: Path, pg_database: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong --db (missing SQLite file, server down, empty database) is one line naming it and
    exit status 2, not a traceback; read-only commands create nothing where they look."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    missing = f"sqlite:///{tmp_path / 'nowhere.sqlite'}"
    for args in (["status"], ["status", "3"], ["cancel", "3"], ["report"]):
        res = runner.invoke(main, [*args, "--db", missing])
        assert res.exit_code == 2, (args, res.output)
        assert "error (no_schema)" in res.output and "nowhere.sqlite" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "nowhere.sqlite").exists()

    down = f"postgresql://archiver:s3cret@127.0.0.1:{_closed_port()}/archive"
    for args in (["status"], ["report"], ["submit", str(tmp_path)]):
        res = runner.invoke(main, [*args, "--db", down])
        assert res.exit_code == 2, (args, res.output)
        assert "error (database_unreachable)" in res.output and "s3cret" not in res.output, res.output

    empty = pg_database()
    res = runner.invoke(main, ["status", "--db", empty])
    assert res.exit_code == 2 and "error (no_schema)" in res.output, res.output
    assert current_revision(empty) is None  # looked, created nothing


def test_cli_version() -> None:
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0
    assert "archiver" in res.output


def test_migration_0002_puts_each_jobs_prefix_in_front_of_its_keys(db_url: str) -> None:
    """Rows written before 0002 named objects relative to the job's prefix; after the upgrade
    they carry the full key, a ledger twin (same object archived from two prefixes) is merged,
    and rows of bucket-root and local jobs are left as they were."""
    upgrade(db_url, "0001")
    factory = session_factory(db_url)
    # written through the schema of revision 0001 as it is in the database (reflected), not through
    # today's models, whose later columns (0004's tier, ...) that schema does not have yet
    engine = factory.kw["bind"]
    old = MetaData()
    jobs, results, ledger_t = (Table(n, old, autoload_with=engine) for n in ("jobs", "results", "archived_objects"))
    now = utcnow()
    with engine.begin() as c:
        def job(source: str) -> int:
            return c.execute(insert(jobs).values(kind="recompress", source=source, model_id="m", status="finished",
                                                 settings={}, created_at=now, objects_listed=0, bytes_listed=0,
                                                 objects_enqueued=0)).inserted_primary_key[0]

        def result(job_id: int, bucket: str, key: str, etag: str | None) -> int:
            return c.execute(insert(results).values(job_id=job_id, bucket=bucket, key=key, model_id="m", original_bytes=1,
                                                    etag=etag, status="accepted", original_deleted=False, attempts=1,
                                                    created_at=now, updated_at=now)).inserted_primary_key[0]

        pref, root, local = job("s3://b/photos/2019"), job("s3://b"), job("file:///data/photos")
        ids = {"pref": result(pref, "b", "a.jpg", "e1"), "pref2": result(pref, "b", "c.jpg", "e3"),
               "root": result(root, "b", "photos/2019/c.jpg", "e3"), "local": result(local, "/data/photos", "d.jpg", None)}
        common = dict(model_id="m", dest_url="s3://x/y.cxa", compressed_sha256="0" * 64, compressed_bytes=1,
                      original_bytes=1, original_deleted=False, archived_at=now)
        for key, etag, rid in (("a.jpg", "e1", ids["pref"]), ("photos/2019/c.jpg", "e3", ids["root"]),
                               ("c.jpg", "e3", ids["pref2"])):
            c.execute(insert(ledger_t).values(bucket="b", key=key, etag=etag, result_id=rid, **common))
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    with factory() as s:
        keys = {k: s.get(Result, i).key for k, i in ids.items()}
        assert keys == {"pref": "photos/2019/a.jpg", "pref2": "photos/2019/c.jpg", "root": "photos/2019/c.jpg",
                        "local": "d.jpg"}
        ledger = sorted((a.key, a.etag) for a in s.execute(select(ArchivedObject)).scalars())
        assert ledger == [("photos/2019/a.jpg", "e1"), ("photos/2019/c.jpg", "e3")]
    factory.kw["bind"].dispose()
