"""The CLI's one stderr console for messages, progress and status spinners.

``soft_wrap`` keeps each message on one line when stderr is a pipe or a log file (rich would
otherwise break lines at 80 columns, in the middle of a figure), so logs stay greppable; on a
terminal, long lines simply wrap as usual.
"""

from __future__ import annotations

from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)
