"""``archiver db ...``: schema management (thin wrappers over archiver.db.session)."""

from __future__ import annotations

import click
from .consoles import err_console as console


def _url(url: str | None) -> str:
    if url:
        return url
    from .runtime import settings

    return settings().database_url


def _safe(url: str) -> str:
    from ..db.session import normalize_url

    return normalize_url(url).render_as_string(hide_password=True)


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@click.option("--url", default=None, help="SQLAlchemy URL [settings: database_url]")
@click.option("--revision", default="head", show_default=True, help="target revision")
def upgrade(url: str | None, revision: str) -> None:
    """Create or migrate the database schema (safe to run repeatedly)."""
    from ..db.session import current_revision
    from ..db.session import upgrade as do_upgrade

    target = _url(url)
    before = current_revision(target)
    do_upgrade(target, revision)
    after = current_revision(target)
    if before == after:
        console.print(f"{_safe(target)}: already at revision [bold]{after}[/bold]")
    else:
        console.print(f"{_safe(target)}: upgraded {before or '(empty)'} -> [bold]{after}[/bold]")


@db.command()
@click.option("--url", default=None, help="SQLAlchemy URL [settings: database_url]")
def current(url: str | None) -> None:
    """Show the database's schema revision and the newest one available."""
    from ..db.session import current_revision, head_revision

    target = _url(url)
    rev, head = current_revision(target), head_revision()
    state = "up to date" if rev == head else "needs `archiver db upgrade`"
    click.echo(f"{_safe(target)}: revision {rev or '(empty)'}, head {head} ({state})")


COMMANDS = [db]
