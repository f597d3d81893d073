"""The ``archiver`` command line: one click group; each front-door command lives in a module.

Adding commands: a module ``archiver/cli/<name>_cmds.py`` defines click commands/groups and a
``COMMANDS`` list; register it below with one import and one entry in ``_MODULES``.
Commands stay thin: resolve settings, call the library, print with rich.
"""

from __future__ import annotations

import os
from typing import Any

import click

from .. import __version__
from ..errors import ArchiverError
from .consoles import fail


class ArchiverGroup(click.Group):
    """Turns any uncaught :class:`ArchiverError`, and a database that cannot be reached or has no
    schema, into a one-line message and exit status 2 (the run itself could not happen)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ArchiverError as exc:
            fail(exc)
        except Exception as exc:
            if not type(exc).__module__.startswith("sqlalchemy"):
                raise
            from ..db.session import as_database_error

            err = as_database_error(exc)
            if err is None:
                raise
            fail(err)


@click.group(cls=ArchiverGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="archiver")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TOML configuration file (default: $ARCHIVER_CONFIG, else ./config/archiver.toml if present).",
)
def main(config_file: str | None) -> None:
    """Recompress stored images with a learned codec and record every result in SQL."""
    if config_file:
        # Every command loads settings through archiver.settings.load_settings(), which reads it.
        os.environ["ARCHIVER_CONFIG"] = config_file


# --- command registration: one import and one _MODULES entry per module --------------------
from . import codec_cmds, db_cmds, job_cmds, pipeline_cmds, report_cmds, token_cmds  # noqa: E402

_MODULES = (codec_cmds, pipeline_cmds, job_cmds, report_cmds, db_cmds, token_cmds)

for _module in _MODULES:
    for _command in _module.COMMANDS:
        main.add_command(_command)
