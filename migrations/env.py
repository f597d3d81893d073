"""Alembic environment for archiver.

The database URL comes, in order, from a connection handed over programmatically
(``archiver.db.session.upgrade`` puts it in ``config.attributes["connection"]``), from the
``sqlalchemy.url`` option (``alembic -x``-free CLI use with alembic.ini), or from
``archiver.settings`` (``ARCHIVER_DATABASE_URL`` / config/archiver.toml). Engines are made by
``archiver.db.session.make_engine`` so SQLite gets WAL/busy-timeout/BEGIN IMMEDIATE, and on
PostgreSQL a transaction-scoped advisory lock serialises workers that upgrade at the same time.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from archiver.db.models import Base
from archiver.db.session import make_engine, normalize_url

config = context.config
target_metadata = Base.metadata

# Only when run as `alembic ...` with alembic.ini; the product configures its own logging.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Arbitrary constant naming "the archiver migration lock" (ASCII "arch").
ADVISORY_LOCK_KEY = 0x61726368


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from archiver.settings import load_settings

        url = load_settings().database_url
    return normalize_url(url).render_as_string(hide_password=False)


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=sqlite,  # SQLite can only ALTER via table copies ("batch" mode)
        transactional_ddl=True,  # SQLite supports it too, given our explicit BEGIN
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=_url().startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
