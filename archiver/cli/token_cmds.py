"""``archiver token create|list|revoke``: bearer tokens for ``archiver serve`` (thin wrappers
over :mod:`archiver.tokens`). ``create`` prints the token on stdout, once, so that it can be
piped into a secret store; everything else goes to stderr."""

from __future__ import annotations

import datetime as dt
import json

import click
from rich.markup import escape
from rich.table import Table

from .consoles import err_console as console, table_console


def _factory(db_url: str | None, *, create: bool):
    """A session factory for ``--db`` / ``database_url``: ``create`` brings the schema up to date
    (issuing the first token may come before any job); read-only commands refuse a database that
    has no archiver schema instead of creating one where a wrong ``--db`` points."""
    from ..db.session import require_schema
    from .runtime import runtime

    rt = runtime()
    url = db_url or rt.settings.database_url
    if not create:
        require_schema(url)
    return rt.session_factory(url, migrate=True)


def _when(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC") if t else "-"


@click.group()
def token() -> None:
    """Bearer tokens for the retrieval endpoint (`archiver serve`)."""


@token.command()
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="BUCKET[/PREFIX]|*",
              help="what the token may read; repeat for several (a prefix is a plain key prefix: "
                   "end it with / for a folder); '*' = every bucket")
@click.option("--expires-in-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="expire after this many days (default: never; revoke instead)")
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL [settings: database_url]")
def create(name: str, scopes: tuple[str, ...], expires_in_days: float | None, db_url: str | None) -> None:
    """Issue a token NAME; the token is printed once on stdout and cannot be shown again."""
    from ..db.models import utcnow
    from ..tokens import create_token

    expires = utcnow() + dt.timedelta(days=expires_in_days) if expires_in_days else None
    info, secret = create_token(_factory(db_url, create=True), name, scopes, expires_at=expires)
    console.print(f"token [bold]{escape(info.name)}[/bold] (id {info.token_id}) may read: "
                  f"{escape(', '.join(info.scope))}; expires: {_when(info.expires_at)}. "
                  "It is shown only now; send it as `Authorization: Bearer <token>`:")
    click.echo(secret)


@token.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="also revoked and expired tokens")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL [settings: database_url]")
def list_(show_all: bool, as_json: bool, db_url: str | None) -> None:
    """Tokens (names, ids, scopes, dates; never secrets)."""
    from ..tokens import list_tokens

    rows = list_tokens(_factory(db_url, create=False), include_inactive=show_all)
    if as_json:
        click.echo(json.dumps([{"name": r.name, "id": r.token_id, "scope": list(r.scope),
                                "created_at": r.created_at.isoformat(),
                                "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                                "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                                "active": r.active()} for r in rows], indent=2))
        return
    if not rows:
        console.print("no tokens" + ("" if show_all else " (active); `--all` shows revoked ones too"))
        return
    t = Table("name", "id", "scope", "created", "expires", "revoked", title="API tokens")
    for r in rows:
        t.add_row(escape(r.name), r.token_id, escape(", ".join(r.scope)), _when(r.created_at),
                  _when(r.expires_at), _when(r.revoked_at))
    table_console().print(t)


@token.command()
@click.argument("name_or_id")
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL [settings: database_url]")
def revoke(name_or_id: str, db_url: str | None) -> None:
    """Revoke the active token(s) named NAME_OR_ID (or with that id); the server refuses them
    from its next request on."""
    from ..tokens import revoke_token

    for info in revoke_token(_factory(db_url, create=False), name_or_id):
        console.print(f"revoked token [bold]{escape(info.name)}[/bold] (id {info.token_id})")


COMMANDS = [token]
