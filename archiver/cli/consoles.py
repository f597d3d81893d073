"""The CLI's consoles: one on stderr for messages, progress and status spinners, and one on
stdout for tables.

``soft_wrap`` keeps each message on one line when stderr is a pipe or a log file (rich would
otherwise break lines at 80 columns, in the middle of a figure), so logs stay greppable; on a
terminal, long lines simply wrap as usual. Tables meet the same 80-column guess on a pipe and
squeeze their cells to "fin…"; there they may use up to ``PIPE_WIDTH`` columns (a table takes
only the width it needs), unless ``COLUMNS`` says otherwise.
"""

from __future__ import annotations

import os

from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)

PIPE_WIDTH = 200


def table_console() -> Console:
    """A stdout console for tables, wide enough on a pipe or file that no cell is cut short."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH)
    return console
