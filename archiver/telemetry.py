"""Prometheus metrics of the workers, the retrieval server and the scheduled runs, and the
structured log fields that go with them.

Why metrics live here, in the library, rather than in each front door: the pipeline is one code
path for all of them, and the places that know what happened to an object (``records.record``,
the one writer of result rows) or to a scheduled run (``jobs.start_scheduled``) are library
code. They record through the functions below; a front door decides whether anyone can read
the numbers (the worker's ``[workers] metrics_port``, the server's ``/metrics``). A CLI command
records too, into a registry nobody scrapes, which costs microseconds per object.

Why module-level metrics, unlike everything else that a :class:`~archiver.runtime.Runtime`
holds: ``prometheus_client`` keeps one registry per process by design, and its multiprocess
mode (Celery's prefork children write their values to files in ``PROMETHEUS_MULTIPROC_DIR``,
the parent serves the sum) keys values by process id, not by object. Two runtimes in one
process therefore share these counters; nothing reads them back to make a decision.

Multiprocess mode is chosen when ``prometheus_client`` is first imported, from the environment,
so a front door that wants it (the worker parent, :mod:`workers.metrics`) sets
``PROMETHEUS_MULTIPROC_DIR`` before anything imports this module. Gauges then aggregate over
live processes (``livesum``/``livemax``); ``Info`` metrics do not exist in that mode, so the
model and device are the labels of a gauge whose value is 1.

Label values stay bounded: statuses and reason codes are the vocabulary's, routes are route
templates (never the requested path), token names are the operator's (one series per issued
token), schedule names come from ``config/schedules.toml``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

if TYPE_CHECKING:
    from .records import Outcome

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: longest object key a log line carries (keys may be 1,024 bytes; logs should stay readable)
LOG_KEY_CHARS = 120

# seconds: a 64 px image encodes in ~0.1 s on a CPU, a 24 MP photo in minutes
_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# ---- workers (and every in-process job) ------------------------------------------------------

OBJECTS = Counter("archiver_objects_total", "Objects finished (result rows recorded), by status and reason code",
                  ["status", "reason"])
ORIGINAL_BYTES = Counter("archiver_accepted_original_bytes_total",
                         "Bytes of the originals of accepted objects (before)")
ARCHIVED_BYTES = Counter("archiver_accepted_archived_bytes_total",
                         "Bytes of the verified containers of accepted objects (after)")
STAGE_SECONDS = Histogram("archiver_stage_seconds",
                          "Seconds per object in one pipeline stage: fetch and write are storage, encode "
                          "includes the quality search, verify is the decode of the real bitstream and PSNR",
                          ["stage"], buckets=_STAGE_BUCKETS)
PROBES = Histogram("archiver_quality_probes", "Quality-search probes per encoded object",
                   buckets=(1, 2, 3, 4, 5, 6, 8, 10, 12, 16))
RETRIES = Counter("archiver_batch_retries_total", "Batches retried after a transient error, and batches given up",
                  ["outcome"])
BATCHES_IN_FLIGHT = Gauge("archiver_batches_in_flight", "Batches being processed now", multiprocess_mode="livesum")
WORKER_MODEL = Gauge("archiver_worker_model_info", "Model and device loaded by a worker process (value 1)",
                     ["model_id", "device"], multiprocess_mode="livemax")
SCHEDULED_RUNS = Counter("archiver_scheduled_runs_total",
                         "Scheduled runs: started, or skipped because the previous run is still going",
                         ["schedule", "result"])

# ---- retrieval server ------------------------------------------------------------------------

HTTP_REQUESTS = Counter("archiver_http_requests_total", "HTTP requests by route template, method and status",
                        ["route", "method", "status"])
TOKEN_REQUESTS = Counter("archiver_http_token_requests_total",
                         "Authenticated requests (/objects, /metrics) by token name and status", ["token", "status"])
DECODE_SECONDS = Histogram("archiver_server_decode_seconds",
                           "Seconds to fetch, check, decode and render one container (in a decode slot)",
                           buckets=_HTTP_BUCKETS)
SLOT_WAIT_SECONDS = Histogram("archiver_server_slot_wait_seconds", "Seconds a request waited for a decode slot",
                              buckets=_HTTP_BUCKETS)
DECODES_IN_FLIGHT = Gauge("archiver_server_decodes_in_flight",
                          "Decodes running now (abandoned ones included until they finish)",
                          multiprocess_mode="livesum")


# ---- recording -------------------------------------------------------------------------------

def object_recorded(out: Outcome) -> None:
    """One result row was written for ``out`` (called by :func:`archiver.records.record`)."""
    OBJECTS.labels(str(out.status), out.reason_code or "").inc()
    if out.status == "accepted" and out.compressed_bytes is not None:
        ORIGINAL_BYTES.inc(out.original_bytes)
        ARCHIVED_BYTES.inc(out.compressed_bytes)
    for stage in ("fetch", "encode", "verify", "write"):
        seconds = out.timings.get(stage)
        if seconds is not None:
            STAGE_SECONDS.labels(stage).observe(seconds)
    if out.probes:
        PROBES.observe(out.probes)


@contextmanager
def batch_in_flight() -> Iterator[None]:
    with BATCHES_IN_FLIGHT.track_inprogress():
        yield


def batch_retried(gave_up: bool = False) -> None:
    RETRIES.labels("gave_up" if gave_up else "retried").inc()


def worker_model(model_id: str, device: str) -> None:
    WORKER_MODEL.labels(model_id, device).set(1)


def scheduled_run(schedule: str, started: bool) -> None:
    SCHEDULED_RUNS.labels(schedule, "started" if started else "skipped").inc()


def http_request(route: str, method: str, status: int, token: str | None = None) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    if token is not None:
        TOKEN_REQUESTS.labels(token, str(status)).inc()


def slot_waited(seconds: float) -> None:
    SLOT_WAIT_SECONDS.observe(seconds)


@contextmanager
def decoding() -> Iterator[None]:
    """Around one server decode: the in-flight gauge and the latency histogram."""
    t0 = time.perf_counter()
    with DECODES_IN_FLIGHT.track_inprogress():
        try:
            yield
        finally:
            DECODE_SECONDS.observe(time.perf_counter() - t0)


# ---- exposition ------------------------------------------------------------------------------

def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def scrape_registry() -> CollectorRegistry:
    """What a scrape reads: the sum over this host's worker processes in multiprocess mode,
    else this process's own registry."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return DEFAULT_REGISTRY


def exposition() -> tuple[bytes, str]:
    """The text exposition format and its content type (the server's ``/metrics``)."""
    return generate_latest(scrape_registry()), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (multiprocess mode; its counters keep counting)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# ---- structured logs -------------------------------------------------------------------------

_job_id: ContextVar[int | None] = ContextVar("archiver_log_job_id", default=None)
_key: ContextVar[str | None] = ContextVar("archiver_log_key", default=None)


@contextmanager
def log_context(job_id: int | None = None, key: str | None = None) -> Iterator[None]:
    """Every log record made inside (in this thread or task) carries ``job_id`` and ``key``."""
    tokens = []
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    if key is not None:
        tokens.append((_key, _key.set(key)))
    try:
        yield
    finally:
        for var, tok in reversed(tokens):
            var.reset(tok)


def cut_key(key: str | None) -> str | None:
    if key is None or len(key) <= LOG_KEY_CHARS:
        return key
    return key[:LOG_KEY_CHARS] + "..."


class ContextFields(logging.Filter):
    """Adds ``job_id``, ``key`` (cut to :data:`LOG_KEY_CHARS`) and ``reason_code`` to every record
    (``None`` where unknown); a log call's own ``extra=`` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _job_id.get()
        record.key = cut_key(getattr(record, "key", None) or _key.get())
        if not hasattr(record, "reason_code"):
            record.reason_code = None
        return True


JSON_FIELDS = ("time", "level", "logger", "message", "job_id", "key", "reason_code", "exc_info", "stack_info")


def json_formatter() -> logging.Formatter:
    """One JSON object per line with exactly :data:`JSON_FIELDS` (the exception, if any): a
    library's ``extra=`` (Celery puts a task's arguments, i.e. whole keys, in ``data``) is left
    out. python-json-logger does the encoding."""
    from pythonjsonlogger.json import JsonFormatter

    class Fields(JsonFormatter):
        def process_log_record(self, log_data: dict) -> dict:
            return {k: log_data[k] for k in JSON_FIELDS if k in log_data}

    return Fields("%(levelname)s %(name)s %(message)s %(job_id)s %(key)s %(reason_code)s",
                  rename_fields={"levelname": "level", "name": "logger"}, timestamp="time")  # ISO 8601, UTC


def use_json_logs(handlers: list[logging.Handler]) -> None:
    """Switch ``handlers`` to JSON lines with the context fields (``log_format = "json"``)."""
    for h in handlers:
        h.setFormatter(json_formatter())
        if not any(isinstance(f, ContextFields) for f in h.filters):
            h.addFilter(ContextFields())
