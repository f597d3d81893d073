"""The Celery application.

Why these settings:

* JSON only (``accept_content=['json']``): a pickle-accepting worker would execute whatever a
  writer to the broker sends.
* ``task_acks_late`` + ``task_reject_on_worker_lost`` + ``worker_prefetch_multiplier=1``: a batch
  is acknowledged only after it finished, so a worker killed mid-batch (OOM, preemption, SIGKILL)
  leaves its message to be redelivered, and each worker process holds at most one unstarted batch.
  Redelivery is safe because every per-object step is idempotent (unique result rows, the
  ledger, re-verification before any delete).
* ``visibility_timeout`` (Redis): how long a delivered, unacknowledged batch stays invisible,
  i.e. how long a dead worker's batch waits before another worker gets it. A running batch
  renews its delivery every ``lease_heartbeat`` seconds (:mod:`workers.lease`), so the timeout
  does not have to exceed the longest batch. Configured in ``[workers]``.
* The broker connection is retried forever, so a Redis restart pauses workers instead of
  killing them. Run Redis with ``appendonly yes`` so queued batches survive its restart.
* The model is loaded once per worker *process*, after the fork (``worker_process_init``, in
  :mod:`workers.process`), never in the parent: CUDA contexts and OpenMP thread pools do not
  survive ``fork``.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from archiver.schedules import TASK_NAME as SCHEDULE_TASK
from archiver.schedules import beat_schedule, load_schedules
from archiver.settings import Settings, load_settings

QUEUES = ("recompress", "retrieve")
ROUTES = {
    "archiver.recompress_batch": {"queue": "recompress"},
    "archiver.finalize_job": {"queue": "recompress"},
    "archiver.retrieve": {"queue": "retrieve"},
}


def make_app(settings: Settings) -> Celery:
    """A Celery app on the broker of ``settings`` (kept as ``conf.archiver_settings``: the worker
    processes' settings, see :mod:`workers.process`)."""
    st = settings
    w = st.workers
    app = Celery("archiver", broker=st.broker_url, backend=w.result_backend or st.broker_url,
                 include=["workers.tasks"])
    transport = {
        "visibility_timeout": w.visibility_timeout,
        # sweep for expired (abandoned) batches every unacked_restore_interval seconds
        "unacked_restore_interval": w.unacked_restore_interval,
        "unacked_restore_throttle": 1,
        # 0 is served first: batches go at BATCH_PRIORITY (6), triggers and retrievals at 0
        "priority_steps": [0, 3, 6, 9],
        "socket_connect_timeout": 10,
        "health_check_interval": 10,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": w.visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep trying through a broker outage
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q)
                     for q in dict.fromkeys((*QUEUES, w.schedule_queue))],
        task_default_queue="recompress",
        task_routes={**ROUTES, SCHEDULE_TASK: {"queue": w.schedule_queue}},
        result_expires=3600,
        timezone="UTC",
        enable_utc=True,
        # loading the model in worker_process_init takes longer than billiard's 4 s default
        worker_proc_alive_timeout=300,
        worker_send_task_events=False,
        beat_schedule=beat_schedule(load_schedules(w.schedules_file), queue=w.schedule_queue),
    )
    app.conf.archiver_settings = st
    return app


#: The worker's front door: settings are loaded here, once, when the worker (or beat) starts.
app = make_app(load_settings())
# metrics (multiprocess mode must be chosen before prometheus_client is imported) and log format
from . import telemetry as _telemetry  # noqa: E402 - after the settings it needs

_telemetry.configure(app.conf.archiver_settings)


def app_for(settings: Settings) -> Celery:
    """The app for ``settings``' broker: the module's app, or a new one for another broker (a
    front door with its own Settings, e.g. a test's or a benchmark's stack). Callers keep what
    they get (``celery_enqueue`` builds its app once)."""
    if settings.broker_url == app.conf.broker_url:
        return app
    return make_app(settings)
