"""Engines, sessions and schema migrations.

Why the SQLite tuning: the CLI job loop, several Celery workers and the HTTP server may all write
to one SQLite file. WAL lets readers proceed during a write; ``busy_timeout`` makes a writer wait
for the lock instead of failing; and every transaction starts with ``BEGIN IMMEDIATE`` so a
transaction takes the write lock up front. Without that, pysqlite's deferred transactions upgrade
a read lock to a write lock mid-transaction, which in WAL mode fails at once with "database is
locked" (SQLITE_BUSY_SNAPSHOT) no matter the timeout. Foreign keys are off by default in SQLite;
we turn them on so ``ON DELETE`` rules behave as on PostgreSQL.

``postgresql://`` URLs are given the psycopg (v3) driver, the one we install.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from ..errors import DatabaseError

SQLITE_BUSY_TIMEOUT_MS = 60_000
MIGRATIONS_ENV = "ARCHIVER_MIGRATIONS_DIR"


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick our drivers: ``postgresql://`` -> ``postgresql+psycopg://``."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An Engine with the pragmas/drivers above; extra ``kwargs`` go to ``create_engine``."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)  # survive server restarts between jobs
        return create_engine(parsed, **kwargs)

    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    connect_args.setdefault("check_same_thread", False)
    if _is_memory_sqlite(parsed):
        kwargs.setdefault("poolclass", StaticPool)  # one shared in-memory database
    elif parsed.database:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Take transaction control away from pysqlite; we emit BEGIN IMMEDIATE ourselves below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(url: str | URL | Engine, **engine_kwargs: Any) -> sessionmaker[Session]:
    """A ``sessionmaker`` bound to a (new) engine for ``url``; objects stay usable after commit."""
    engine = url if isinstance(url, Engine) else make_engine(url, **engine_kwargs)
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """``with session_scope(factory) as s:`` commits on success, rolls back on error."""
    with factory() as session, session.begin():
        yield session


def migrations_dir() -> Path:
    """Where the Alembic environment lives.

    ``$ARCHIVER_MIGRATIONS_DIR`` if set, else the top-level ``migrations/`` directory of the
    source checkout this package is imported from (the editable install that README and CI
    use).
    """
    override = os.environ.get(MIGRATIONS_ENV)
    candidates = [Path(override)] if override else []
    candidates.append(Path(__file__).resolve().parents[2] / "migrations")
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    from ..errors import ConfigError

    raise ConfigError(
        "Alembic migrations not found (looked in: " + ", ".join(str(p) for p in candidates) + "); "
        f"install archiver from a source checkout with `pip install -e .` or set {MIGRATIONS_ENV}"
    )


def alembic_config(url: str | URL | None = None) -> Any:
    """An Alembic ``Config`` for our migrations (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        # configparser treats % specially (escaped passwords contain %xx)
        rendered = normalize_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def upgrade(url: str | URL | Engine, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent; safe to call at every start).

    Runs on a connection from :func:`make_engine`, so SQLite gets the same pragmas (and
    ``BEGIN IMMEDIATE`` serialises concurrent upgraders); on PostgreSQL the env takes an
    advisory lock for the same reason.
    """
    from alembic import command

    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        cfg = alembic_config()
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def current_revision(url: str | URL | Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def shown_url(url: str | URL) -> str:
    """The URL as it may appear in a message: the password hidden."""
    return normalize_url(url).render_as_string(hide_password=True)


def as_database_error(exc: BaseException, url: str | URL | None = None) -> DatabaseError | None:
    """A one-line :class:`DatabaseError` for a driver-level failure (server down, login refused,
    no such database, tables missing), or ``None`` when ``exc`` is something else: read-only
    commands and job starts must say which database they could not use, not print a traceback."""
    if not isinstance(exc, sqlalchemy_exc.DBAPIError) or isinstance(exc, sqlalchemy_exc.IntegrityError):
        return None
    orig = exc.orig if exc.orig is not None else exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    where = f"the database {shown_url(url)}" if url is not None else "the database (--db / database_url)"
    if "no such table" in first or ("relation" in first and "does not exist" in first):
        return DatabaseError(f"{where} has no archiver tables: nothing was ever recorded there. Check --db / "
                             f"ARCHIVER_DATABASE_URL, or create the schema with `archiver db upgrade` ({first})",
                             code="no_schema")
    if isinstance(exc, (sqlalchemy_exc.OperationalError, sqlalchemy_exc.InterfaceError)):
        return DatabaseError(f"cannot use {where}: {first}", code="database_unreachable")
    return None


def require_schema(url: str | URL) -> None:
    """For commands that only read: refuse, with a clear message, a database that is unreachable
    or has no archiver schema (creating one there would hide a wrong ``--db``)."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite" and not _is_memory_sqlite(u) and u.database \
            and not Path(u.database).exists():  # connecting would leave an empty file behind
        raise DatabaseError(f"the database {shown_url(u)} does not exist (no file {u.database}): nothing was "
                            "ever recorded there. Check --db / ARCHIVER_DATABASE_URL and the working directory",
                            code="no_schema")
    try:
        revision = current_revision(url)
    except Exception as exc:  # noqa: BLE001 - driver errors become one line; others propagate
        err = as_database_error(exc, url)
        if err is None:
            raise
        raise err from exc
    if revision is None:
        raise DatabaseError(f"the database {shown_url(url)} has no archiver schema yet: nothing was ever "
                            "recorded there. Check --db / ARCHIVER_DATABASE_URL, or run `archiver db upgrade` "
                            "(or a recompress job) first", code="no_schema")


def head_revision() -> str | None:
    """The newest revision shipped in ``migrations/versions``."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
