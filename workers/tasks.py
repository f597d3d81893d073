"""Celery tasks: thin adapters over :mod:`archiver.jobs` and :mod:`archiver.restore`.

Each task takes this process's runtime (:func:`workers.process.current`) and passes it down.
Heavy modules (torch, the codec) are imported inside the tasks, so the worker's parent process
never loads them before forking.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from archiver.settings import Settings

from .app import app
from .process import current

log = logging.getLogger(__name__)


def _transient(exc: BaseException) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from archiver.errors import StorageError

    if isinstance(exc, StorageError):
        return exc.transient
    return isinstance(exc, (OperationalError, InterfaceError, PoolTimeout, ConnectionError))


def backoff(retries: int, st: Settings) -> float:
    return min(st.workers.retry_backoff * (2 ** retries), st.workers.retry_backoff_max)


@app.task(bind=True, name="archiver.recompress_batch", ignore_result=True, max_retries=None)
def recompress_batch(self: Any, job_id: int, source_url: str, dest_url: str | None,
                     keys_with_etags: list[list[Any]], options_dict: dict[str, Any]) -> dict[str, int]:
    """Recompress one batch of a job ([key, etag, size] items), then finalize the job if complete."""
    from archiver import jobs, telemetry

    from .lease import batch_lease

    proc = current()
    rt, st = proc.runtime, proc.runtime.settings
    worker = f"{self.request.hostname or 'worker'}"
    tag = (self.request.properties or {}).get("delivery_tag")
    try:
        with telemetry.batch_in_flight(), batch_lease(st.broker_url, tag, st.workers.lease_heartbeat):
            res = jobs.process_batch(job_id, source_url, dest_url, keys_with_etags, options_dict, runtime=rt,
                                     attempts=proc.attempts, worker=worker)
    except Exception as e:
        if not _transient(e):
            raise
        retries = self.request.retries
        if retries < st.workers.max_retries:
            log.warning("job %s batch: transient error (%s); retry %d/%d", job_id, e, retries + 1,
                        st.workers.max_retries)
            telemetry.batch_retried()
            raise self.retry(exc=e, countdown=backoff(retries, st)) from None
        telemetry.batch_retried(gave_up=True)
        try:  # give up on this batch: record what is left as failed so the job can finish
            n = jobs.fail_unfinished(job_id, source_url, keys_with_etags, getattr(e, "code", "transient_error"),
                                     f"gave up after {retries} retries: {type(e).__name__}: {e}", runtime=rt,
                                     worker=worker)
            log.error("job %s batch: gave up after %d retries; %d object(s) recorded failed", job_id, retries, n)
            return {"failed": n}
        except Exception as e2:  # noqa: BLE001 - the database is unreachable: keep the batch, try later
            log.error("job %s batch: cannot record the failure either (%s); retrying later", job_id, e2)
            raise self.retry(exc=e2, countdown=st.workers.retry_backoff_max, max_retries=None) from None
    if res.cancelled:
        log.info("job %s is cancelled; batch stopped", job_id)
    return res.counts()


@app.task(name="archiver.finalize_job", ignore_result=True)
def finalize_job(job_id: int) -> bool:
    """Mark the job finished if every enqueued object has a finished row (batches call this too)."""
    from archiver import jobs

    return jobs.finalize(current().runtime.session_factory(), job_id)


@app.task(name="archiver.run_schedule", ignore_result=True)
def run_schedule(schedule: dict[str, Any]) -> int | None:
    """A beat trigger: start a run of the schedule unless the previous one is still running."""
    from archiver import jobs

    from .enqueue import celery_enqueue
    from .inflight import broker_view

    rt = current().runtime
    return jobs.start_scheduled(schedule, runtime=rt, enqueue=celery_enqueue(rt.settings),
                                broker=broker_view(rt.settings.broker_url))


@app.task(name="archiver.retrieve")
def retrieve(url_of_container: str, fmt: str = "png", dest: str | None = None) -> dict[str, Any]:
    """Decode one container. Without ``dest``: returns the image base64-encoded; with ``dest``
    (an object URL such as ``s3://bucket/out/key.png``) writes it there and returns its URL."""
    from archiver.restore import MEDIA_TYPES, restore_image
    from archiver.storage import split_object_url

    rt = current().runtime
    st = rt.settings
    store_url, key = split_object_url(url_of_container)
    data = rt.store(store_url).get(key, max_bytes=int(st.max_object_bytes))
    image, used = restore_image(data, rt, fmt, max_pixels=st.max_pixels)  # lossless tier: the original JPEG
    out: dict[str, Any] = {"format": used, "media_type": MEDIA_TYPES[used], "bytes": len(image)}
    if dest:
        dest_store, dest_key = split_object_url(dest)
        rt.store(dest_store, create=True).put(dest_key, image, metadata={}, content_type=MEDIA_TYPES[used])
        out["dest"] = dest
    else:
        out["data"] = base64.b64encode(image).decode("ascii")
    return out
