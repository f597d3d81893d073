"""The worker's metrics endpoint and log format (``[workers] metrics_port``, ``log_format``).

Celery's prefork children each record their own metrics (:mod:`archiver.telemetry`); a scrape
must see the sum. ``prometheus_client``'s multiprocess mode does that: every process writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR``, and the parent serves a registry that reads them
all. The mode is fixed when ``prometheus_client`` is first imported, so the directory is set at
``celeryd_init`` (a worker's first signal, before its task modules import the library's
metrics, and never in beat, which must not empty a worker's directory); the HTTP server starts in the parent at ``worker_init``; a child that exits
normally removes its live gauges (``worker_process_shutdown``).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import signals

if TYPE_CHECKING:
    from archiver.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Called when the app module is imported (worker, beat, or a test importing the tasks)."""
    global _settings
    _settings = settings


@signals.celeryd_init.connect
def _prepare(**_: Any) -> None:
    """In a worker only (not beat), before its task modules are imported: with a metrics port,
    make sure the values of every process of this worker go to one directory
    (``$PROMETHEUS_MULTIPROC_DIR``, or a private temporary one), emptied now: files left by an
    earlier run would be counted again."""
    settings = _settings
    if settings is None or not settings.workers.metrics_port:
        return
    if "prometheus_client" in sys.modules and not os.environ.get(MULTIPROC_ENV):
        log.warning("prometheus_client was imported before the worker set up its metrics; the prefork "
                    "children's metrics will not be summed (set %s before starting the worker)", MULTIPROC_ENV)
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="archiver-metrics-")
        os.environ[MULTIPROC_ENV] = path
    Path(path).mkdir(parents=True, exist_ok=True)
    for f in Path(path).glob("*.db"):
        f.unlink(missing_ok=True)


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """In the worker's parent, before the pool forks: serve the children's summed metrics."""
    st = _settings
    if st is None or not st.workers.metrics_port:
        return
    from prometheus_client import start_http_server

    from archiver.telemetry import scrape_registry

    try:
        start_http_server(st.workers.metrics_port, addr=st.workers.metrics_host, registry=scrape_registry())
    except OSError as e:  # a port clash must not stop the worker from working
        log.error("cannot serve metrics on %s:%s: %s", st.workers.metrics_host, st.workers.metrics_port, e)
        return
    log.info("metrics on http://%s:%s/metrics", st.workers.metrics_host, st.workers.metrics_port)


@signals.worker_process_shutdown.connect
def _forget_live_gauges(**_: Any) -> None:
    """A child that exits takes its in-flight gauges with it (a killed one cannot: its last
    values stay until the worker restarts and empties the directory)."""
    if _settings is not None and _settings.workers.metrics_port:
        from archiver.telemetry import process_exited

        process_exited(os.getpid())


def _json_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    if _settings is not None and _settings.log_format == "json" and logger is not None:
        from archiver.telemetry import use_json_logs

        use_json_logs(list(logger.handlers))


signals.after_setup_logger.connect(_json_logs, weak=False)
signals.after_setup_task_logger.connect(_json_logs, weak=False)
