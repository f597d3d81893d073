"""The batch step: what a worker task runs for one chunk of a job's listing.

Every object goes through :func:`archiver.pipeline.handle_object`, the same per-object step as
the CLI loop, so the order "verified container written and re-read -> row committed -> only then
delete the original" holds for workers too. Result rows are unique per (job, bucket, key), so a
batch delivered twice (a worker killed mid-batch and the message redelivered) updates rows
instead of duplicating them, and objects already finished are not recompressed. Every batch
ends by asking whether the job is now complete (:func:`archiver.records.finalize`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import Job, Result
from ..errors import StorageError
from ..identity import Scope
from ..pipeline import PipelineOptions, handle_object
from ..telemetry import cut_key, log_context
from ..records import (Outcome, finalize, job_state, ledger_row, mark_original_deleted, outcome_from_row, record,
                       result_row)
from ..vocabulary import ARCHIVED, DONE, JobStatus, Reason, ResultStatus
from .submit import Item

if TYPE_CHECKING:
    from ..codec.api import Codec
    from ..runtime import Runtime
    from ..storage import ObjectInfo

log = logging.getLogger(__name__)


class AttemptCounter(Protocol):
    """Counts processing starts per object that did not finish (a worker died on them)."""

    def start(self, job_id: int, bucket: str, key: str) -> int: ...

    def finish(self, job_id: int, bucket: str, key: str) -> None: ...


class NoAttemptCounter:
    """For a broker that cannot count (and for tests): every start is the first."""

    def start(self, job_id: int, bucket: str, key: str) -> int:
        return 1

    def finish(self, job_id: int, bucket: str, key: str) -> None:
        return None


@dataclass
class BatchResult:
    job_id: int
    outcomes: list[Outcome] = field(default_factory=list)
    cancelled: bool = False
    finished_job: bool = False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out


class _Cancelled(Exception):
    pass


def process_batch(job_id: int, source_url: str, dest_url: str | None, items: Iterable[Item],
                  options: dict[str, Any], *, runtime: Runtime,
                  session_factory: sessionmaker[Session] | None = None, codec: Codec | None = None,
                  attempts: AttemptCounter | None = None, worker: str | None = None,
                  io_threads: int | None = None) -> BatchResult:
    """Recompress one batch of a job: each object is re-stat'ed and run through ``handle_object``.

    ``io_threads`` threads download and decode the next objects while the codec (under its
    runtime's slots) works on the current one. Transient storage errors and database outages
    propagate (the caller retries the batch; finished objects are not redone). Stops early for a
    cancelled job.
    """
    st = runtime.settings
    sf = session_factory or runtime.session_factory()
    counter = attempts or NoAttemptCounter()
    result = BatchResult(job_id=job_id)
    with sf() as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("batch for unknown job %s dropped", job_id)
            return result
        model_id, state = job.model_id, job.status
    if state == JobStatus.CANCELLED:
        result.cancelled = True
        return result
    opts = PipelineOptions.from_dict(options)
    src = runtime.store(source_url)
    dst = runtime.store(dest_url, create=True) if dest_url else src
    cx = codec or runtime.codec(model_id)
    slots = runtime.codec_slots(cx)
    scope = Scope.of(src)
    early = _EarlyOutcomes(sf, job_id, scope, worker)

    def one(item: Item) -> Outcome | None:
        with log_context(job_id, item[0]):
            out = object_step(item)
            if out is not None:
                log.info("job %s: %s %s%s", job_id, cut_key(item[0]), out.status,
                         f" ({out.reason_code})" if out.reason_code else "", extra={"reason_code": out.reason_code})
            return out

    def object_step(item: Item) -> Outcome | None:
        key = item[0]
        if job_state(sf, job_id) == JobStatus.CANCELLED:
            raise _Cancelled()
        try:
            info = src.head(key)
        except StorageError as e:
            if e.transient:
                raise  # the batch is retried with backoff
            return early.failed(key, item, e.code, str(e), codec=cx)
        if info is None:
            return early.vanished(key, item, cx)
        # Counted before and cleared after: only a process that died mid-object leaves it raised.
        n = counter.start(job_id, scope.bucket, scope.key(key))
        try:
            if n > st.workers.poison_attempts:
                return early.poisoned(info, n - 1, cx)
            return handle_object(info, job_id=job_id, src=src, dst=dst, codec=cx, opts=opts, session_factory=sf,
                                 codec_lock=slots, worker=worker, hints=runtime.quality_hints)
        finally:
            counter.finish(job_id, scope.bucket, scope.key(key))

    pool = ThreadPoolExecutor(max_workers=max(1, io_threads or st.workers.io_threads), thread_name_prefix="batch")
    futures = [pool.submit(one, it) for it in items]
    error: BaseException | None = None
    try:
        for f in futures:
            try:
                out = f.result()
            except _Cancelled:
                result.cancelled = True
                continue
            except BaseException as e:  # noqa: BLE001 - the first error is re-raised below
                if error is None:
                    error = e
                    for g in futures:
                        g.cancel()
                continue
            if out is not None:
                result.outcomes.append(out)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if error is not None:
        raise error
    result.finished_job = finalize(sf, job_id)
    return result


class _EarlyOutcomes:
    """The outcomes a batch records without running the pipeline. Each keeps a row this job has
    already settled: a redelivered batch may meet an object the first delivery finished."""

    def __init__(self, sf: sessionmaker[Session], job_id: int, scope: Scope, worker: str | None) -> None:
        self.sf, self.job_id, self.scope, self.worker = sf, job_id, scope, worker

    def _record(self, out: Outcome, model_id: str) -> Outcome:
        return record(self.sf, self.job_id, self.scope, model_id, out, self.worker, keep_settled=True).outcome

    def failed(self, key: str, item: Item, code: str, reason: str, *, codec: Codec | None = None,
               model_id: str | None = None) -> Outcome:
        out = Outcome.settled_early(key, ResultStatus.FAILED, code, reason,
                                    original_bytes=int(item[2]) if len(item) > 2 else 0,
                                    etag=item[1] if len(item) > 1 else None,
                                    device=codec.device_name if codec else None)
        return self._record(out, model_id or (codec.model_id if codec else ""))

    def vanished(self, key: str, item: Item, codec: Codec) -> Outcome:
        """Gone since the listing: finished earlier (a delivery killed after deleting the original
        and before marking it: marked now), or removed by someone else (``not_found``)."""
        with self.sf() as s:
            row = result_row(s, self.job_id, self.scope, key)
            if row is not None and row.status in ARCHIVED:
                ledger = ledger_row(s, self.scope, key, row.etag, row.model_id)
                if ledger is not None:
                    mark_original_deleted(s, ledger, {row.id})
                    s.commit()
                return outcome_from_row(row, self.scope)
        return self.failed(key, item, Reason.NOT_FOUND, "the object disappeared between listing and processing",
                           codec=codec)

    def poisoned(self, info: ObjectInfo, starts: int, codec: Codec) -> Outcome:
        log.error("object %s started %d times without finishing; recording it as failed", info.key, starts)
        out = Outcome.of_listing(info, ResultStatus.FAILED, Reason.POISON_OBJECT,
                                 f"processing started {starts} times and never finished (the worker died each time)",
                                 device=codec.device_name)
        out.etag = info.etag
        return self._record(out, codec.model_id)


def fail_unfinished(job_id: int, source_url: str, items: Iterable[Item], code: str, reason: str, *,
                    runtime: Runtime, session_factory: sessionmaker[Session] | None = None,
                    worker: str | None = None) -> int:
    """Record every object of a batch that has no finished row as failed (a batch that gave up
    after its retries), so that the job can still finish; returns how many were recorded."""
    sf = session_factory or runtime.session_factory()
    scope = Scope.of(runtime.store(source_url))
    with sf() as s:
        job = s.get(Job, job_id)
        if job is None:
            return 0
        model_id = job.model_id
        done = set(s.execute(select(Result.key).where(Result.job_id == job_id, Result.bucket == scope.bucket,
                                                      Result.status.in_(DONE))).scalars())
    early = _EarlyOutcomes(sf, job_id, scope, worker)
    n = 0
    for item in items:
        if scope.key(item[0]) not in done:
            early.failed(item[0], item, code, reason, model_id=model_id)
            n += 1
    finalize(sf, job_id)
    return n
