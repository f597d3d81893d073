"""The CLI's consoles: one on stderr for messages, progress and status spinners, and one on
stdout for tables.

``soft_wrap`` keeps each message on one line when stderr is a pipe or a log file (rich would
otherwise break lines at 80 columns, in the middle of a figure), so logs stay greppable; on a
terminal, long lines simply wrap as usual. Tables meet the same 80-column guess on a pipe and
squeeze their cells to "fin…"; there they may use up to ``PIPE_WIDTH`` columns (a table takes
only the width it needs), unless ``COLUMNS`` says otherwise. A progress bar does not animate
when stderr is not a terminal (cron, systemd, a container's log), so a long job would say
nothing for hours; there :class:`LogTicker` prints a plain progress line now and then.
"""

from __future__ import annotations

import os
import time

from typing import NoReturn

from rich.console import Console
from rich.markup import escape

from ..errors import ArchiverError

PIPE_WIDTH = 200


def _stderr_console() -> Console:
    console = Console(stderr=True, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:  # the final frame of a bar, whole
        console = Console(stderr=True, soft_wrap=True, width=PIPE_WIDTH)
    return console


err_console = _stderr_console()


def fail(exc: ArchiverError) -> NoReturn:
    """The one form every command reports a failure in: ``error (code): message``, exit status 2
    (the run itself could not happen; 1 is kept for "some objects failed")."""
    err_console.print(f"[red]error[/red] ({exc.code}): {escape(str(exc))}", highlight=False)
    raise SystemExit(2) from None


def table_console() -> Console:
    """A stdout console for tables, wide enough on a pipe or file that no cell is cut short."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH)
    return console


class LogTicker:
    """Says when to print a plain progress line: every ``every`` seconds (0 = never), and only
    when the console is not a terminal (on a terminal the live bar shows the same)."""

    def __init__(self, console: Console, every: float = 30.0) -> None:
        self.active = not console.is_terminal and every > 0
        self.every = every
        self._last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if not self.active or now - self._last < self.every:
            return False
        self._last = now
        return True
