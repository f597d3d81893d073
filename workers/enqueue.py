"""How a job's batches reach the workers: the Celery send that ``archiver.jobs.submit`` and
``archiver.jobs.start_scheduled`` are given as their ``enqueue`` callable.

It lives here, beside the app, because only a front door may know about Celery (Celery's own
``proj/`` layout: tasks import the app, the library does not). The library sees a plain callable.

Why the send looks like this:

* ``ignore_result=True``: the batch task keeps no result, and a send that expects one subscribes
  to the result backend first; with the broker down that subscription, not the send, is what
  failed (after Celery's own ~20 s of reconnecting, with a traceback).
* Celery's publish retry is off and this loop retries instead, with exponential backoff, for at
  most ``workers.submit_broker_wait`` seconds per batch; then it raises
  :class:`~archiver.errors.BrokerUnavailable`, which the library turns into a resumable job and
  the CLI into one line and exit status 2. A batch that raised was not sent (the job's counters
  are committed only after a send returned).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from archiver.jobs import Enqueue
    from archiver.settings import Settings

log = logging.getLogger(__name__)

BATCH_TASK = "archiver.recompress_batch"
#: Redis priority of batches (0 is highest): control messages (schedule triggers, retrievals) sent
#: at the default 0 are taken before queued batches, so they never wait behind a whole job
BATCH_PRIORITY = 6


def broker_errors() -> tuple[type[BaseException], ...]:
    """What a publish raises while the broker is down, restarting or refusing connections."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    return (OperationalError, RedisConnectionError, RedisTimeout, ConnectionError, TimeoutError)


def celery_enqueue(settings: Settings, *, sleep: Any = time.sleep) -> Enqueue:
    """A sender of batches to the ``recompress`` queue on the broker of ``settings``."""
    from archiver.errors import BrokerUnavailable

    from .app import app_for

    app = app_for(settings)
    wait = settings.workers.submit_broker_wait
    errors = broker_errors()

    def send(job_id: int, source_url: str, dest_url: str | None, items: list[list[Any]],
             options: dict[str, Any]) -> None:
        deadline = time.monotonic() + wait
        pause, tries = 0.5, 0
        while True:
            tries += 1
            try:
                app.send_task(BATCH_TASK, args=[job_id, source_url, dest_url, items, options],
                              queue="recompress", priority=BATCH_PRIORITY, ignore_result=True, retry=False)
                if tries > 1:
                    log.info("job %s: broker reachable again after %d tries; batch sent", job_id, tries)
                return
            except errors as e:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerUnavailable(
                        f"the broker did not accept job {job_id}'s batch for {wait:g} s ({tries} tries; "
                        f"workers.submit_broker_wait): {type(e).__name__}: {e}") from e
                if tries == 1:
                    log.warning("job %s: broker unavailable (%s); retrying for up to %g s", job_id, e, wait)
                sleep(min(pause, left))
                pause = min(pause * 2, 10.0)

    return send
