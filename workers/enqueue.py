"""How a job's batches reach the workers: the Celery send that ``archiver.jobs.submit`` and
``archiver.jobs.start_scheduled`` are given as their ``enqueue`` callable.

It lives here, beside the app, because only a front door may know about Celery (Celery's own
``proj/`` layout: tasks import the app, the library does not). The library sees a plain callable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from archiver.jobs import Enqueue
    from archiver.settings import Settings

BATCH_TASK = "archiver.recompress_batch"
#: Redis priority of batches (0 is highest): control messages (schedule triggers, retrievals) sent
#: at the default 0 are taken before queued batches, so they never wait behind a whole job
BATCH_PRIORITY = 6


def celery_enqueue(settings: Settings) -> Enqueue:
    """A sender of batches to the ``recompress`` queue on the broker of ``settings``."""
    from .app import app_for

    app = app_for(settings)

    def send(job_id: int, source_url: str, dest_url: str | None, items: list[list[Any]],
             options: dict[str, Any]) -> None:
        app.send_task(BATCH_TASK, args=[job_id, source_url, dest_url, items, options],
                                    queue="recompress", priority=BATCH_PRIORITY)

    return send
