"""What one worker process holds: its runtime (settings, engines, stores, the loaded codec) and
its per-object attempt counter.

A Celery worker process is a front door, like a CLI command: its settings are the app's, loaded
once when ``workers.app`` is imported. The state is built on first use in each process, and
rebuilt when the process id changes, so a prefork child never uses its parent's connections.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import signals

from .app import app

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


log = logging.getLogger(__name__)

_state: WorkerProcess | None = None


def current() -> WorkerProcess:
    """This process's state, built from the app's settings on first use (per process id)."""
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = WorkerProcess.build(app.conf.archiver_settings)
    return _state


@signals.worker_process_init.connect
def _load_model_in_child(**_: object) -> None:
    """Runs in each prefork child right after the fork: fresh connections, then the model, so that
    the first batch does not pay for it. (Connected when ``workers.tasks`` is imported, which the
    app's ``include`` does in the parent before it forks.)"""
    rt = current().runtime  # built in this child: no connection of the parent's is reused
    st = rt.settings
    try:
        rt.session_factory(migrate=True)
    except Exception:  # the database may be down now; tasks retry when they need it
        log.exception("could not prepare the database at worker start")
    try:
        import torch

        from archiver.codec.api import apply_torch_threads

        apply_torch_threads(st.torch_threads)
        codec = rt.codec()
        from archiver.telemetry import worker_model

        worker_model(codec.model_id, codec.device_name)
        log.info("worker process ready: model %s on %s (%d torch threads)", codec.model_id, codec.device_name,
                 torch.get_num_threads())
    except Exception:  # an unknown model or bad weights: tasks will report it per batch
        log.exception("could not load model %s", st.model_id)
