"""Settings and the runtime of one CLI invocation: loaded on first use, once, then shared by
everything the command calls (the command is this process's front door)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..settings import Settings

_KEY = "archiver.runtime"


def runtime() -> Runtime:
    """This invocation's :class:`~archiver.runtime.Runtime`; its engines close with the command."""
    from ..runtime import Runtime
    from ..settings import load_settings

    root = click.get_current_context().find_root()
    rt = root.meta.get(_KEY)
    if rt is None:
        rt = root.meta[_KEY] = Runtime(load_settings())
        root.call_on_close(rt.close)
    return rt


def settings() -> Settings:
    """This invocation's settings (``--config``, ``$ARCHIVER_CONFIG``, the environment)."""
    return runtime().settings
