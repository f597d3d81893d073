"""Shared fixtures: a real S3 endpoint (moto server over HTTP), real PostgreSQL databases, SQLite.

Why no mocking: the storage and database layers are exactly where mocks lie (multipart ETags,
pagination, checksum headers, SQL dialect differences). boto3 talks HTTP to moto's server
mode, and PostgreSQL tests use the local server; if PostgreSQL is down those tests *fail*
(they never skip), so CI cannot go green without having exercised it.

Fixtures
--------
``s3_server``     (session) endpoint URL of a moto S3 server, e.g. ``http://127.0.0.1:41234``;
                  also sets fake ``AWS_*`` credentials in the environment for the session.
``s3_settings``   a :class:`~archiver.settings.Settings` pointing at that server (path-style).
``s3_client``     a boto3 S3 client for that server (to create/inspect buckets directly).
``s3_bucket``     a fresh, empty bucket per test; yields its URL ``s3://<name>``.
``pg_url``        (session) URL of a fresh PostgreSQL database for this test session.
``pg_database``   a factory: ``pg_database()`` -> URL of another fresh database (dropped at exit).
``db_url``        parametrized ``sqlite`` (a temp file) / ``postgresql`` (a fresh database per
                  test); an empty database — call ``archiver.db.upgrade(db_url)`` or use
``migrated_db_url`` the same, already upgraded to the head revision.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get("ARCHIVER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not pick up a developer's ARCHIVER_* variables (ARCHIVER_TEST_* stay)."""
    for name in list(os.environ):
        if name.startswith("ARCHIVER_") and not name.startswith("ARCHIVER_TEST_"):
            monkeypatch.delenv(name)


# --------------------------------------------------------------------------------------- S3
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``python -m moto.server`` on a free port and wait until it answers."""
    saved = {k: os.environ.get(k) for k in FAKE_AWS}
    os.environ.update(FAKE_AWS)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **FAKE_AWS},
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                if time.monotonic() > deadline:
                    tail = log_path.read_text()[-2000:]
                    raise RuntimeError(f"moto server did not answer on {endpoint}: {tail}") from exc
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_settings(s3_server: str) -> Any:
    from archiver.settings import Settings

    return Settings(s3={"endpoint_url": s3_server, "path_style": True, "max_attempts": 2,
                        "access_key_id": "testing", "secret_access_key": "testing"})


@pytest.fixture
def s3_client(s3_settings: Any) -> Iterator[Any]:
    from archiver.storage.s3 import make_client

    client = make_client(s3_settings.s3)
    yield client
    client.close()


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh empty bucket (names are random, so tests never see each other's objects)."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_client.create_bucket(Bucket=name)
    return f"s3://{name}"


# --------------------------------------------------------------------------------- databases
def _pg_conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    parts = {"host": u.host or "127.0.0.1", "port": u.port or 5432, "user": u.username or "postgres",
             "dbname": u.database or "postgres"}
    if u.password:
        parts["password"] = u.password
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _create_pg_database() -> tuple[str, Callable[[], None]]:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"archiver_test_{uuid.uuid4().hex[:12]}"
    # No try/skip: an unreachable PostgreSQL is a test failure.
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)

    def drop() -> None:
        with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url.render_as_string(hide_password=False), drop


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url, drop = _create_pg_database()
    yield url
    drop()


@pytest.fixture
def pg_database() -> Iterator[Callable[[], str]]:
    drops: list[Callable[[], None]] = []

    def make() -> str:
        url, drop = _create_pg_database()
        drops.append(drop)
        return url

    yield make
    for drop in drops:
        drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'archiver.sqlite'}"
    make: Callable[[], str] = request.getfixturevalue("pg_database")
    return make()


@pytest.fixture
def migrated_db_url(db_url: str) -> str:
    from archiver.db import upgrade

    upgrade(db_url)
    return db_url
