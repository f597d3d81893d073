"""What one worker process holds: its runtime (settings, engines, stores, the loaded codec) and
its per-object attempt counter.

A Celery worker process is a front door, like a CLI command: its settings are the app's, loaded
once when ``workers.app`` is imported. The state is built on first use in each process, and
rebuilt when the process id changes, so a prefork child never uses its parent's connections.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archiver.jobs import AttemptCounter
    from archiver.runtime import Runtime
    from archiver.settings import Settings


@dataclass
class WorkerProcess:
    runtime: Runtime
    attempts: AttemptCounter
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def build(cls, settings: Settings) -> WorkerProcess:
        """The counter lives in Redis when the broker is Redis (it must outlive the process that
        died on an object); with another broker, poison objects are not counted."""
        from archiver.jobs import NoAttemptCounter
        from archiver.runtime import Runtime

        from .attempts import RedisAttemptCounter

        url = settings.broker_url
        counter = RedisAttemptCounter(url) if url.startswith(("redis://", "rediss://")) else NoAttemptCounter()
        return cls(Runtime(settings), counter)


_state: WorkerProcess | None = None


def current() -> WorkerProcess:
    """This process's state, built from the app's settings on first use (per process id)."""
    global _state
    if _state is None or _state.pid != os.getpid():
        from .app import app

        _state = WorkerProcess.build(app.conf.archiver_settings)
    return _state
