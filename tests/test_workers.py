"""Workers, jobs and schedules against real services: a real ``celery -A workers worker``
subprocess (prefork, one process), a real Redis (a private ``redis-server`` per test session,
plus a second one that the outage test stops and restarts), moto's S3 server over HTTP, and
PostgreSQL.

Outcomes are not asserted as numbers (the model weights change): sources are 64 px noise PNGs
with ``min_psnr`` 1 dB and ``min_saving`` 0, which any working codec accepts, so the tests check
the *mechanics*: every object gets exactly one finished row, accepted containers exist and match
the ledger, and no original is ever gone without a verified container.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from runtimes import runtime_for

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("ARCHIVER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
ACCEPT = {"min_psnr": 1.0, "min_saving": 0.0}  # reachable by any working codec on noise PNGs
VISIBILITY = 15  # seconds before a dead worker's batch is handed to another worker
LEASE = 2  # seconds between a running batch's lease renewals
BROKER_WAIT = 4  # seconds `archiver submit` retries a broker that is down
STALL_MARGIN = 3  # a running job with no batch anywhere is stalled after VISIBILITY + this quiet
#: objects in the outage scenarios (benchmarks/broker_outage.py runs them with more)
OUTAGE_OBJECTS = int(os.environ.get("ARCHIVER_TEST_OUTAGE_OBJECTS", "10"))


# ---- helpers --------------------------------------------------------------------------------------

def celery_enqueue(settings: Any) -> Any:
    """The Celery send the CLI passes to ``jobs.submit`` (imported late: importing ``workers``
    builds the module's Celery app)."""
    from workers.enqueue import celery_enqueue as send_for

    return send_for(settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def noise_png(seed: int, w: int = 64, h: int = 64) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def wait_until(pred: Callable[[], Any], timeout: float, what: str, poll: float = 0.3,
               on_timeout: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{extra}")
        time.sleep(poll)


class Proc:
    """A subprocess in its own process group, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log_path = args, env, log
        self._fh = open(log, "ab")  # noqa: SIM115 - open for the life of the process
        self.p = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.name = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
        self.kill(signal.SIGKILL)  # stragglers in the group (prefork children)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._fh.close()


class RedisServer:
    """A private redis-server; with ``durable`` every write is fsynced to an append-only file, so
    a crash (SIGKILL) keeps queued and unacknowledged messages, as a production broker must."""

    def __init__(self, workdir: Path, durable: bool) -> None:
        self.port = free_port()
        self.dir = workdir
        self.durable = durable
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--protected-mode", "no"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        self.proc = Proc(args, dict(os.environ), self.dir / "redis.log")
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
            except redis.RedisError:
                return False

        wait_until(up, 20, f"redis on port {self.port}", on_timeout=self.proc.log)

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.kill(signal.SIGKILL)
        self.proc.p.wait(10)
        self.proc.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def _pg_conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username or 'postgres'} dbname={u.database}"


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this module (workers and tests share it)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"archiver_workers_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name).render_as_string(False)
    from archiver.db import upgrade

    upgrade(url)
    yield url
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def redis_main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the worker tests")
    r = RedisServer(tmp_path_factory.mktemp("redis-main"), durable=True)
    r.start()
    yield r
    r.stop()


class Stack:
    """Everything a worker needs, as environment variables and as a Settings object."""

    def __init__(self, s3_endpoint: str, db_url: str, broker_url: str, workdir: Path,
                 schedule_queue: str = "recompress") -> None:
        self.s3_endpoint, self.db_url, self.broker_url, self.workdir = s3_endpoint, db_url, broker_url, workdir
        self.schedule_queue = schedule_queue
        self.schedules_file = workdir / "schedules.toml"
        self.schedules_file.write_text("")
        self.n = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_") or k.startswith("ARCHIVER_TEST_")}
        env.update(FAKE_AWS)
        env.update({
            "ARCHIVER_DATABASE_URL": self.db_url,
            "ARCHIVER_BROKER_URL": self.broker_url,
            "ARCHIVER_DEVICE": "cpu",
            "ARCHIVER_S3__ENDPOINT_URL": self.s3_endpoint,
            "ARCHIVER_S3__PATH_STYLE": "true",
            "ARCHIVER_S3__MAX_ATTEMPTS": "3",
            "ARCHIVER_WORKERS__VISIBILITY_TIMEOUT": str(VISIBILITY),
            "ARCHIVER_WORKERS__UNACKED_RESTORE_INTERVAL": "1",
            "ARCHIVER_WORKERS__LEASE_HEARTBEAT": str(LEASE),
            "ARCHIVER_WORKERS__RETRY_BACKOFF": "0.5",
            "ARCHIVER_WORKERS__RETRY_BACKOFF_MAX": "4",
            "ARCHIVER_WORKERS__SCHEDULES_FILE": str(self.schedules_file),
            "ARCHIVER_WORKERS__SCHEDULE_QUEUE": self.schedule_queue,
            "ARCHIVER_WORKERS__SUBMIT_BROKER_WAIT": str(BROKER_WAIT),
            "ARCHIVER_WORKERS__STALL_MARGIN": str(STALL_MARGIN),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def settings(self) -> Any:
        from archiver.settings import Settings

        return Settings(database_url=self.db_url, broker_url=self.broker_url, device="cpu",
                        s3={"endpoint_url": self.s3_endpoint, "path_style": True, "max_attempts": 3,
                            "access_key_id": "testing", "secret_access_key": "testing"},
                        workers={"visibility_timeout": VISIBILITY, "unacked_restore_interval": 1,
                                 "lease_heartbeat": LEASE, "retry_backoff": 0.5, "retry_backoff_max": 4,
                                 "schedules_file": str(self.schedules_file), "schedule_queue": self.schedule_queue,
                                 "submit_broker_wait": BROKER_WAIT, "stall_margin": STALL_MARGIN})

    def env_for_test_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for k, v in self.env().items():
            if k.startswith(("ARCHIVER_", "AWS_")):
                monkeypatch.setenv(k, v)

    def start_worker(self, queues: str = "recompress,retrieve", pool: str = "prefork",
                     extra_env: dict[str, str] | None = None) -> Proc:
        self.n += 1
        name = f"w{self.n}-{uuid.uuid4().hex[:6]}"
        args = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queues, "-c", "1",
                "--pool", pool, "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
                "--without-mingle", "--without-heartbeat"]
        w = Proc(args, {**self.env(), **(extra_env or {})}, self.workdir / f"{name}.log")
        w.name = f"{name}@{socket.gethostname()}"

        def ready() -> bool:
            text = w.log()
            # prefork: the child has loaded the model (worker_process_init); solo loads it lazily
            return not w.alive() or ("ready." in text and (pool != "prefork" or "worker process ready" in text))

        wait_until(ready, 180, f"worker {name} to start", on_timeout=lambda: w.log()[-3000:])
        assert w.alive(), w.log()[-3000:]
        return w

    def bucket(self, objects: dict[str, bytes]) -> str:
        from archiver.storage.s3 import make_client

        st = self.settings()
        client = make_client(st.s3)
        name = f"wk-{uuid.uuid4().hex[:16]}"
        client.create_bucket(Bucket=name)
        for k, v in objects.items():
            client.put_object(Bucket=name, Key=k, Body=v)
        client.close()
        return f"s3://{name}"


@pytest.fixture(scope="module")
def stack(s3_server: str, pg_module_url: str, redis_main: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return Stack(s3_server, pg_module_url, redis_main.url, tmp_path_factory.mktemp("workers"))


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[dict[str, Proc]]:
    """The module's worker; a test that kills it puts its replacement in the dict."""
    holder = {"w": stack.start_worker()}
    yield holder
    holder["w"].stop()


def session_factory(db_url: str) -> Any:
    from archiver.settings import Settings

    return runtime_for(Settings(database_url=db_url)).session_factory(db_url)


def job_rows(db_url: str, job_id: int) -> list[Any]:
    from archiver.db.models import Result

    with session_factory(db_url)() as s:
        return list(s.execute(select(Result).where(Result.job_id == job_id)).scalars())


def job_status(db_url: str, job_id: int) -> str:
    from archiver.db.models import Job

    with session_factory(db_url)() as s:
        return s.execute(select(Job.status).where(Job.id == job_id)).scalar_one()


def wait_finished(stack: Stack, job_id: int, timeout: float, workers: list[Proc]) -> None:
    wait_until(lambda: job_status(stack.db_url, job_id) not in ("pending", "running"), timeout, f"job {job_id}",
               poll=0.5, on_timeout=lambda: "\n".join(w.log()[-4000:] for w in workers))
    assert job_status(stack.db_url, job_id) == "finished"


def check_job(stack: Stack, job_id: int, bucket_url: str, sources: dict[str, bytes], replace: bool) -> list[Any]:
    """Exactly one finished row per object; accepted containers exist and match the ledger; an
    original is only ever missing when its verified container is there."""
    from archiver.db.models import ArchivedObject
    from archiver.storage import open_store

    st = stack.settings()
    store = open_store(bucket_url, st)
    rows = job_rows(stack.db_url, job_id)
    by_key: dict[str, Any] = {}
    for r in rows:
        assert r.key not in by_key, f"duplicate row for {r.key}"
        by_key[r.key] = r
    assert set(by_key) == set(sources), (set(by_key) ^ set(sources))
    with session_factory(stack.db_url)() as s:
        for key, data in sources.items():
            r = by_key[key]
            assert r.status in ("accepted", "rejected", "failed", "skipped"), (key, r.status)
            original = store.head(key)
            ledger = s.execute(select(ArchivedObject).where(ArchivedObject.bucket == store.bucket,
                                                            ArchivedObject.key == key)).scalars().all()
            if r.status == "accepted":
                assert len(ledger) == 1
                c = store.get(key + ".cxa")
                import hashlib

                assert hashlib.sha256(c).hexdigest() == ledger[0].compressed_sha256 == r.compressed_sha256
                assert len(c) == r.compressed_bytes
            if original is None:  # never without a verified container
                assert r.status == "accepted" and replace, key
                assert ledger and store.head(key + ".cxa") is not None
                assert r.original_deleted and ledger[0].original_deleted
            else:
                assert store.get(key) == data  # untouched
                assert not (replace and r.status == "accepted"), f"{key}: accepted with replace but not deleted"
    return rows


# ---- schedules: file validation, the start guard, filters (no worker needed) ---------------------

def test_schedules_file_is_validated(tmp_path: Path) -> None:
    from archiver.errors import ConfigError
    from archiver.schedules import beat_schedule, load_schedules

    shipped = load_schedules(REPO / "config" / "schedules.toml", missing_ok=False)
    assert shipped and all(s.cron for s in shipped)
    f = tmp_path / "s.toml"
    f.write_text('[[schedule]]\nname = "a"\ncron = "*/15 2-4 * * mon-fri"\nsource = "s3://b/p/"\n'
                 'older_than_days = 7\n[[schedule]]\nname = "b"\ninterval_seconds = 30\nsource = "/data"\n')
    entries = beat_schedule(load_schedules(f))
    assert set(entries) == {"schedule:a", "schedule:b"}
    assert entries["schedule:a"]["task"] == "archiver.run_schedule"
    assert entries["schedule:a"]["args"][0]["older_than_days"] == 7
    for bad, msg in [('cron = "61 * * * *"', "invalid cron"), ('cron = "* * *"', "5 fields"),
                     ('cron = "* * * * *"\ninterval_seconds = 5', "exactly one"), ('cron = "0 3 * * *"\nbogus = 1', "bogus")]:
        f.write_text(f'[[schedule]]\nname = "x"\nsource = "s3://b"\n{bad}\n')
        with pytest.raises(ConfigError, match=msg):
            load_schedules(f)
    f.write_text('[[schedule]]\nname = "x"\ncron = "0 3 * * *"\nsource = "s3://b"\n' * 2)
    with pytest.raises(ConfigError, match="used twice"):
        load_schedules(f)
    assert load_schedules(tmp_path / "none.toml") == []


def test_second_trigger_cannot_start_a_second_run(db_url: str, s3_server: str, tmp_path: Path) -> None:
    """Many triggers at once (threads = many beats/workers): exactly one job starts; while it
    runs, further triggers start nothing; after it ends the next trigger starts a new run."""
    from archiver import jobs
    from archiver.db import upgrade
    from archiver.db.models import Job

    upgrade(db_url)
    stack = Stack(s3_server, db_url, "redis://127.0.0.1:1/0", tmp_path)
    bucket = stack.bucket({f"img{i}.png": noise_png(i) for i in range(3)})
    sent: list[list[Any]] = []
    sched = {"name": "guarded", "interval_seconds": 1, "source": bucket, "older_than_days": 0, **ACCEPT}
    results: list[int | None] = []
    barrier = threading.Barrier(6)
    from prometheus_client import REGISTRY

    def runs(result: str) -> float:
        return REGISTRY.get_sample_value("archiver_scheduled_runs_total",
                                         {"schedule": "guarded", "result": result}) or 0.0

    counted = {r: runs(r) for r in ("started", "skipped")}

    def trigger() -> None:
        barrier.wait()
        results.append(jobs.start_scheduled(sched, runtime=runtime_for(stack.settings()),
                                            enqueue=lambda *a: sent.append(a[3])))

    threads = [threading.Thread(target=trigger) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    started = [r for r in results if r is not None]
    assert len(results) == 6 and len(started) == 1, results
    with session_factory(db_url)() as s:
        rows = s.execute(select(Job).where(Job.schedule_name == "guarded")).scalars().all()
    assert [j.id for j in rows] == started and rows[0].kind == "scheduled" and rows[0].status == "running"
    assert sum(len(c) for c in sent) == 3 == rows[0].objects_enqueued
    assert jobs.start_scheduled(sched, runtime=runtime_for(stack.settings()), enqueue=lambda *a: None) is None
    assert (runs("started") - counted["started"], runs("skipped") - counted["skipped"]) == (1, 6)  # the metric
    jobs.cancel(started[0], runtime=runtime_for(stack.settings()))
    again = jobs.start_scheduled(sched, runtime=runtime_for(stack.settings()), enqueue=lambda *a: None)
    assert again is not None and again != started[0]


class FixedBroker:
    """A BrokerView that reports the given job ids as having batches on the broker."""

    def __init__(self, jobs_seen: set[int]) -> None:
        self.seen = jobs_seen

    def jobs_with_batches(self) -> set[int] | None:
        return set(self.seen)


def test_the_beat_resumes_a_stalled_scheduled_run(s3_server: str, pg_module_url: str, tmp_path: Path) -> None:
    """Issue 28: a scheduled run whose submission broke off (broker down) is resumed by the next
    trigger instead of blocking the schedule; a run whose queue was lost (running, quiet for
    longer than visibility + margin, no batch on the broker) too, re-sending exactly the objects
    without a final row; a running job whose batches are on the broker is left alone."""
    import datetime as dt

    from archiver import jobs
    from archiver.db.models import Job
    from archiver.errors import BrokerUnavailable
    from archiver.records import Outcome, record
    from archiver.identity import Scope
    from archiver.storage import open_store

    stack = Stack(s3_server, pg_module_url, "redis://127.0.0.1:1/0", tmp_path)
    st = stack.settings()
    rt = runtime_for(st)
    bucket = stack.bucket({f"s{i}.png": noise_png(900 + i) for i in range(5)})
    sched = {"name": f"stall-{uuid.uuid4().hex[:6]}", "cron": "0 3 * * *", "source": bucket, "older_than_days": 0,
             "chunk_size": 2, **ACCEPT}
    sent: list[list[Any]] = []

    def down(*a: Any) -> None:
        if len(sent) >= 1:
            raise BrokerUnavailable("broker down")
        sent.append(a[3])

    with pytest.raises(BrokerUnavailable):
        jobs.start_scheduled(sched, runtime=rt, enqueue=down)
    with session_factory(pg_module_url)() as s:
        job = s.execute(select(Job).where(Job.schedule_name == sched["name"])).scalar_one()
        assert (job.status, job.objects_enqueued) == ("pending", 2)  # what was really sent
        job_id = job.id
    assert jobs.status(job_id, runtime=rt).state == "stalled"

    sent.clear()
    assert jobs.start_scheduled(sched, runtime=rt, enqueue=lambda *a: sent.append(a[3])) == job_id  # resumed
    assert sorted(it[0] for c in sent for it in c) == [f"s{i}.png" for i in range(5)]  # no row yet: all again
    assert jobs.status(job_id, runtime=rt).objects_enqueued == 5 and job_status(pg_module_url, job_id) == "running"

    # two objects get final rows, then the queue is lost; the job has been quiet for long enough
    scope = Scope.of(open_store(bucket, st))
    for k in ("s0.png", "s1.png"):
        record(rt.session_factory(), job_id, scope, st.model_id,
               Outcome.settled_early(k, "rejected", "corrupt", "test"))
    old = dt_now() - dt.timedelta(seconds=VISIBILITY + STALL_MARGIN + 1)
    with session_factory(pg_module_url)() as s:
        s.get(Job, job_id).started_at = old
        s.execute(sa_update_results(job_id, old))
        s.commit()
    sent.clear()
    busy = FixedBroker({job_id})
    assert jobs.status(job_id, runtime=rt, broker=busy).state == "running"
    assert jobs.start_scheduled(sched, runtime=rt, enqueue=lambda *a: sent.append(a[3]), broker=busy) is None
    assert sent == []
    lost = FixedBroker(set())
    assert jobs.status(job_id, runtime=rt, broker=lost).state == "stalled"
    assert jobs.start_scheduled(sched, runtime=rt, enqueue=lambda *a: sent.append(a[3]), broker=lost) == job_id
    assert sorted(it[0] for c in sent for it in c) == ["s2.png", "s3.png", "s4.png"]
    assert jobs.status(job_id, runtime=rt).objects_enqueued == 5


def sa_update_results(job_id: int, when: Any) -> Any:
    from sqlalchemy import update

    from archiver.db.models import Result

    return update(Result).where(Result.job_id == job_id).values(updated_at=when)


def test_scheduled_runs_skip_new_and_archived_objects(s3_server: str, pg_module_url: str, tmp_path: Path) -> None:
    from archiver import jobs
    from archiver.db.models import ArchivedObject, Job
    from archiver.storage import open_store

    stack = Stack(s3_server, pg_module_url, "redis://127.0.0.1:1/0", tmp_path)
    st = stack.settings()
    bucket = stack.bucket({"a.png": noise_png(1), "b.png": noise_png(2), "c.png.cxa": b"ours"})
    sent: list[list[Any]] = []
    sched = {"name": f"age-{uuid.uuid4().hex[:6]}", "cron": "0 3 * * *", "source": bucket, "older_than_days": 1}
    job_id = jobs.start_scheduled(sched, runtime=runtime_for(st), enqueue=lambda *a: sent.append(a[3]))
    assert job_id is not None and sent == []  # everything is newer than a day
    assert jobs.status(job_id, runtime=runtime_for(st)).status == "finished"
    assert jobs.status(job_id, runtime=runtime_for(st)).objects_listed == 2  # our own containers are not listed

    store = open_store(bucket, st)
    a = store.head("a.png")
    with session_factory(pg_module_url)() as s:
        s.add(ArchivedObject(bucket=store.bucket, key="a.png", etag=a.etag, model_id=st.model_id,
                             dest_url=store.url_for("a.png.cxa"), compressed_sha256="0" * 64, compressed_bytes=1,
                             original_bytes=a.size))
        s.commit()
    sched = {**sched, "name": sched["name"] + "-b", "older_than_days": 0}
    job_id = jobs.start_scheduled(sched, runtime=runtime_for(st), enqueue=lambda *a: sent.append(a[3]))
    assert [it[0] for c in sent for it in c] == ["b.png"]  # a.png is archived already
    with session_factory(pg_module_url)() as s:
        assert s.get(Job, job_id).objects_enqueued == 1


def test_scheduled_runs_leave_out_rejections_that_would_repeat(s3_server: str, pg_module_url: str,
                                                               tmp_path: Path) -> None:
    """A nightly schedule does not pay every night to refuse the same photos: a version rejected
    for its content, or by the same model at thresholds no looser, is not enqueued again; a changed
    original, looser thresholds, another model or ``retry_rejected = true`` try again."""
    from archiver import jobs
    from archiver.db.models import Job, Result
    from archiver.pipeline import PipelineOptions
    from archiver.storage import open_store

    stack = Stack(s3_server, pg_module_url, "redis://127.0.0.1:1/0", tmp_path)
    st = stack.settings()
    bucket = stack.bucket({"a.png": noise_png(31), "b.png": noise_png(32), "c.png": noise_png(33),
                           "d.txt": b"not an image\n"})
    store = open_store(bucket, st)
    then = {"a.png": ("psnr_unreachable", store.head("a.png").etag),
            "b.png": ("psnr_unreachable", '"an-older-version"'),  # changed since it was refused
            "c.png": ("insufficient_saving", store.head("c.png").etag),
            "d.txt": ("not_an_image", store.head("d.txt").etag)}
    with session_factory(pg_module_url)() as s:
        job = Job(kind="scheduled", source=bucket, model_id=st.model_id, status="finished",
                  settings={"options": {"min_psnr": 40.0, "min_saving": 0.1}})
        s.add(job)
        s.flush()
        for key, (code, etag) in then.items():
            s.add(Result(job_id=job.id, bucket=store.bucket, key=key, etag=etag, model_id=st.model_id,
                         status="rejected", reason_code=code, original_bytes=100))
        s.commit()

    started: list[int] = []

    def run(**over: Any) -> list[str]:
        sent: list[list[Any]] = []
        sched = {"name": f"again-{uuid.uuid4().hex[:6]}", "cron": "0 3 * * *", "source": bucket,
                 "older_than_days": 0, "min_psnr": 40.0, "min_saving": 0.1, **over}
        started.append(jobs.start_scheduled(sched, runtime=runtime_for(st), enqueue=lambda *a: sent.append(a[3])))
        assert started[-1] is not None
        return sorted(it[0] for c in sent for it in c)

    assert run() == ["b.png"]
    from click.testing import CliRunner

    from archiver.cli.job_cmds import status

    out = CliRunner().invoke(status, [str(started[-1]), "--db", pg_module_url])
    assert out.exit_code == 0 and "4 / 1  (3 left out at submission" in out.output, out.output
    assert run(min_psnr=42.0, min_saving=0.2) == ["b.png"]  # asks more: the same refusals
    assert run(min_psnr=30.0) == ["a.png", "b.png", "c.png"]  # looser floor: worth another try
    assert run(min_saving=0.05) == ["b.png", "c.png"]
    assert run(retry_rejected=True) == ["a.png", "b.png", "c.png", "d.txt"]
    opts = PipelineOptions(min_psnr=40.0, min_saving=0.1)
    assert not jobs.rejection_repeats("psnr_unreachable", "an-older-model", {"min_psnr": 40.0}, st.model_id, opts)
    assert jobs.rejection_repeats("corrupt", "an-older-model", {}, st.model_id, opts)
    assert not jobs.rejection_repeats("decompression_bomb", st.model_id, {"min_psnr": 40.0}, st.model_id, opts)


def _running_job(db_url: str, source: str, n: int) -> int:
    from archiver.db.models import Job

    with session_factory(db_url)() as s:
        job = Job(kind="recompress", source=source, model_id="compact-v1", status="running", settings={},
                  objects_enqueued=n, objects_listed=n, bytes_listed=0)
        s.add(job)
        s.commit()
        return job.id


def test_transient_errors_retry_then_give_up_and_the_job_still_finishes(pg_module_url: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The task itself (run eagerly): a source whose S3 endpoint refuses connections raises a
    transient StorageError; the batch is retried max_retries times with backoff, then its objects
    are recorded failed and the job finishes instead of hanging."""
    from workers import tasks

    dead = f"http://127.0.0.1:{free_port()}"
    for k, v in {"ARCHIVER_DATABASE_URL": pg_module_url, "ARCHIVER_DEVICE": "cpu",
                 "ARCHIVER_S3__ENDPOINT_URL": dead, "ARCHIVER_S3__MAX_ATTEMPTS": "1",
                 "ARCHIVER_S3__CONNECT_TIMEOUT": "1", "ARCHIVER_WORKERS__MAX_RETRIES": "2",
                 "ARCHIVER_WORKERS__RETRY_BACKOFF": "0.01", "ARCHIVER_BROKER_URL": "memory://",
                 **FAKE_AWS}.items():
        monkeypatch.setenv(k, v)
    from archiver.settings import load_settings
    from workers import process

    monkeypatch.setattr(process, "_state", process.WorkerProcess.build(load_settings()))
    job_id = _running_job(pg_module_url, "s3://unreachable", 2)
    items = [["a.png", "e1", 10], ["b.png", "e2", 20]]
    res = tasks.recompress_batch.apply(args=[job_id, "s3://unreachable", None, items, {"min_psnr": 1.0}])
    assert res.successful(), res.traceback
    assert res.result == {"failed": 2}
    rows = job_rows(pg_module_url, job_id)
    assert sorted(r.key for r in rows) == ["a.png", "b.png"]
    assert all(r.status == "failed" and "gave up after 2 retries" in r.reason for r in rows)
    assert job_status(pg_module_url, job_id) == "finished"


class RecordingCounter:
    """An attempt counter that records the keys it is given; ``starts`` says how often each key
    has already been started (default 1, i.e. first time)."""

    def __init__(self, starts: dict[str, int] | None = None) -> None:
        self.starts = starts or {}
        self.started: list[str] = []
        self.finished: list[str] = []

    def start(self, job_id: int, bucket: str, key: str) -> int:
        self.started.append(key)
        return self.starts.get(key, 1)

    def finish(self, job_id: int, bucket: str, key: str) -> None:
        self.finished.append(key)


def test_poison_objects_are_recorded_failed_and_skipped(s3_server: str, pg_module_url: str, tmp_path: Path) -> None:
    """An object whose processing was started too often without finishing (the worker died on
    it each time) is recorded failed, not processed again; the others are processed."""
    from archiver import jobs

    stack = Stack(s3_server, pg_module_url, "memory://", tmp_path)
    bucket = stack.bucket({"ok.png": noise_png(7), "poison.png": noise_png(8)})

    counter = RecordingCounter({"poison.png": 99})
    job_id = _running_job(pg_module_url, bucket, 2)
    res = jobs.process_batch(job_id, bucket, None, [["ok.png", "", 0], ["poison.png", "", 0]], ACCEPT,
                             runtime=runtime_for(stack.settings()), attempts=counter)
    by_key = {o.key: o for o in res.outcomes}
    assert by_key["poison.png"].status == "failed" and by_key["poison.png"].reason_code == "poison_object"
    assert by_key["ok.png"].status == "accepted"
    assert sorted(counter.finished) == ["ok.png", "poison.png"]
    assert res.finished_job and job_status(pg_module_url, job_id) == "finished"


def test_a_late_duplicate_delivery_never_downgrades_an_archived_row(s3_server: str, pg_module_url: str,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The window of issue 28, forced: delivery B reads ``head()`` while the original is there,
    then, before its ``get()``, delivery A of the same batch archives the object, records it
    accepted and deletes the original (``--replace``). B's ``get()`` then finds nothing. B must
    keep A's accepted row (and say so), not record ``failed/not_found`` over it."""
    from archiver import jobs
    from archiver.storage import open_store

    stack = Stack(s3_server, pg_module_url, "memory://", tmp_path)
    bucket = stack.bucket({"x.png": noise_png(21)})
    rt = runtime_for(stack.settings())
    job_id = _running_job(pg_module_url, bucket, 1)
    items = [["x.png", "", 0]]
    opts = {**ACCEPT, "replace": True}
    real_store = rt.store
    state = {"raced": False}

    class LateStore:
        """The source as B sees it: the first ``get`` lets A run the whole batch first."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def get(self, key: str, **kw: Any) -> bytes:
            if not state["raced"]:
                state["raced"] = True
                a = jobs.process_batch(job_id, bucket, None, items, opts, runtime=rt, io_threads=1)
                assert [o.status for o in a.outcomes] == ["accepted"] and a.outcomes[0].original_deleted
            return self._inner.get(key, **kw)

    def store(url: str, create: bool = False) -> Any:
        s = real_store(url, create=create)
        return LateStore(s) if url == bucket and not state["raced"] else s

    monkeypatch.setattr(rt, "store", store)
    b = jobs.process_batch(job_id, bucket, None, items, opts, runtime=rt, io_threads=1)
    assert state["raced"], "B never reached get(): the window was not forced"
    rows = job_rows(pg_module_url, job_id)
    assert [(r.key, r.status, r.original_deleted) for r in rows] == [("x.png", "accepted", True)]
    assert [o.status for o in b.outcomes] == ["accepted"]  # B reports the row that stands
    assert open_store(bucket, stack.settings()).head("x.png") is None
    assert job_status(pg_module_url, job_id) == "finished"


def test_batches_of_a_prefixed_source_record_full_keys(s3_server: str, pg_module_url: str, tmp_path: Path) -> None:
    """A batch of s3://b/cam1/ names its objects cam1/... in rows, the ledger and the attempt
    counter, so a later job over s3://b/ recognises them (dropped at submission, skipped here)."""
    from archiver import jobs
    from archiver.db.models import ArchivedObject

    stack = Stack(s3_server, pg_module_url, "memory://", tmp_path)
    root = stack.bucket({"cam1/a.png": noise_png(11), "cam1/b.png": noise_png(12)})

    counter = RecordingCounter()
    job_id = _running_job(pg_module_url, root + "/cam1", 2)
    res = jobs.process_batch(job_id, root + "/cam1", None, [["a.png", "", 0], ["b.png", "", 0]], ACCEPT,
                             runtime=runtime_for(stack.settings()), attempts=counter)
    assert sorted(o.key for o in res.outcomes) == ["a.png", "b.png"]  # outcomes stay store-relative
    assert all(o.status == "accepted" for o in res.outcomes)
    assert sorted(counter.started) == sorted(counter.finished) == ["cam1/a.png", "cam1/b.png"]
    assert sorted(r.key for r in job_rows(pg_module_url, job_id)) == ["cam1/a.png", "cam1/b.png"]
    with session_factory(pg_module_url)() as s:
        bucket = root.removeprefix("s3://")
        assert sorted(a.key for a in s.query(ArchivedObject).filter_by(bucket=bucket)) == ["cam1/a.png", "cam1/b.png"]
    # a job over the whole bucket: both are already archived (same ETag, same model)
    st = stack.settings()
    src = runtime_for(st).store(root)
    chunk = [[i.key, i.etag, i.size] for i in src.list() if not i.key.endswith(".cxa")]
    sf = runtime_for(st).session_factory(pg_module_url)
    from archiver.identity import Scope

    assert jobs.drop_archived(sf, Scope.of(src), "compact-v1", chunk) == []
    assert jobs.drop_archived(sf, Scope.of(src), None, chunk) == []  # archived with any model: not an upgrade
    assert jobs.drop_archived(sf, Scope.of(src), "some-newer-model", chunk) == chunk  # an upgrade run keeps them
    job2 = _running_job(pg_module_url, root, 2)
    res2 = jobs.process_batch(job2, root, None, chunk, ACCEPT, runtime=runtime_for(st), attempts=counter)
    assert sorted((o.key, o.status) for o in res2.outcomes) == [("cam1/a.png", "skipped"), ("cam1/b.png", "skipped")]


# ---- a real worker ----------------------------------------------------------------------------------

def test_submitted_job_completes_and_records_every_object(stack: Stack, worker: dict[str, Proc],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from archiver import jobs
    from archiver.cli.job_cmds import status, submit
    from workers.app import app_for

    sources = {f"photos/{i}.png": noise_png(100 + i, 64 + 16 * i, 64) for i in range(3)}
    sources["photos/readme.txt"] = b"not an image at all\n" * 10
    bucket = stack.bucket(sources)
    stack.env_for_test_process(monkeypatch)
    monkeypatch.setenv("ARCHIVER_LOG_PROGRESS_EVERY", "0.000001")  # a plain line per batch: not a terminal
    res = CliRunner().invoke(submit, [bucket, "--min-psnr", "1", "--min-saving", "0", "--replace",
                                      "--chunk-size", "2"])
    assert res.exit_code == 0, res.output
    assert "submit: 2 objects listed, 2 enqueued" in res.output and "submit: 4 objects listed, 4 enqueued" in res.output
    job_id = int(res.output.strip().splitlines()[-1])
    wait_finished(stack, job_id, 150, [worker["w"]])

    rows = check_job(stack, job_id, bucket, sources, replace=True)
    by_key = {r.key: r for r in rows}
    assert by_key["photos/readme.txt"].status == "rejected"
    assert by_key["photos/readme.txt"].reason_code == "not_an_image"
    accepted = [r for r in rows if r.status == "accepted"]
    assert len(accepted) == 3
    for r in accepted:
        assert r.worker and r.psnr is not None and r.t_total is not None and r.device == "cpu"
        assert r.width == 64 + 16 * int(r.key.split("/")[1][0])

    s = jobs.status(job_id, runtime=runtime_for(stack.settings()))
    assert (s.done, s.count("accepted"), s.count("rejected"), s.objects_enqueued) == (4, 3, 1, 4)
    assert s.saved_bytes == sum(r.original_bytes - r.compressed_bytes for r in accepted)
    assert s.eta_seconds is None and s.rate > 0
    out = CliRunner().invoke(status, [str(job_id)])
    assert out.exit_code == 0 and "finished" in out.output and "3 / 1 / 0 / 0" in out.output, out.output
    out = CliRunner().invoke(status, [])  # a pipe, not a terminal: no cell may be cut to "fin…"
    assert out.exit_code == 0 and str(job_id) in out.output and "finished" in out.output, out.output
    assert bucket in out.output and "…" not in out.output, out.output

    # the retrieve task decodes a container (base64 back through the result backend)
    import base64

    container = accepted[0].dest_url
    got = app_for(stack.settings()).send_task("archiver.retrieve", args=[container, "webp"]).get(timeout=120)
    img = Image.open(io.BytesIO(base64.b64decode(got["data"])))
    assert img.format == "WEBP" and img.size == (accepted[0].width, accepted[0].height)

    # resubmitting the same source: originals are gone (replaced), nothing left to do
    job2 = jobs.submit(bucket, {"replace": True, **ACCEPT}, runtime=runtime_for(stack.settings()), enqueue=celery_enqueue(stack.settings()))
    wait_finished(stack, job2, 60, [worker["w"]])
    assert jobs.status(job2, runtime=runtime_for(stack.settings())).objects_enqueued == 1  # readme.txt only


def test_cancel_stops_the_workers(stack: Stack, worker: dict[str, Proc], monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from archiver import jobs
    from archiver.cli.job_cmds import cancel

    # 384x384 objects: at 128x128 an idle fresh clone's worker finished all ten between the first
    # result and the cancel, so the job was "finished" before the test could cancel it
    sources = {f"c{i}.png": noise_png(200 + i, 384, 384) for i in range(10)}
    bucket = stack.bucket(sources)
    st = stack.settings()
    job_id = jobs.submit(bucket, ACCEPT, chunk_size=1, runtime=runtime_for(st), enqueue=celery_enqueue(st))
    wait_until(lambda: job_rows(stack.db_url, job_id), 90, "a first result", poll=0.1,
               on_timeout=lambda: worker["w"].log())
    stack.env_for_test_process(monkeypatch)
    res = CliRunner().invoke(cancel, [str(job_id)])
    assert res.exit_code == 0, res.output
    assert jobs.status(job_id, runtime=runtime_for(st)).status == "cancelled"
    # the queue drains without doing the work: at most the object in progress gets finished
    n_at_cancel = len(job_rows(stack.db_url, job_id))
    from archiver.db.models import Job

    probe = jobs.submit(stack.bucket({"p.png": noise_png(299)}), ACCEPT, runtime=runtime_for(st), enqueue=celery_enqueue(st))  # queued behind them
    wait_finished(stack, probe, 120, [worker["w"]])
    assert len(job_rows(stack.db_url, job_id)) <= n_at_cancel + 1 < len(sources)
    with session_factory(stack.db_url)() as s:
        assert s.get(Job, job_id).status == "cancelled"
    assert not jobs.cancel(job_id, runtime=runtime_for(st))  # already ended


def test_beat_triggers_once_while_the_run_is_running(stack: Stack, tmp_path: Path) -> None:
    """A real ``celery -A workers beat`` with a 2-second schedule. Triggers go to a "control"
    queue whose worker does not take batches yet, so the first run is deterministically still
    running when the next triggers arrive: they start nothing. Then the worker starts consuming
    batches (remote control add_consumer) and the run completes."""
    from archiver.db.models import Job
    from workers.app import app_for

    redis = RedisServer(tmp_path, durable=False)
    redis.start()
    own = Stack(stack.s3_endpoint, stack.db_url, redis.url, tmp_path, schedule_queue="control")
    sources = {f"s{i}.png": noise_png(300 + i) for i in range(3)}
    bucket = own.bucket(sources)
    name = f"every-2s-{uuid.uuid4().hex[:6]}"
    own.schedules_file.write_text(
        f'[[schedule]]\nname = "{name}"\ninterval_seconds = 2\nsource = "{bucket}"\nolder_than_days = 0\n'
        f'min_psnr = 1.0\nmin_saving = 0.0\nchunk_size = 2\n')
    w = own.start_worker(queues="control", pool="solo")
    beat = Proc([sys.executable, "-m", "celery", "-A", "workers", "beat", "--loglevel", "INFO", "--max-interval", "1",
                 "-s", str(tmp_path / "beat-schedule")], own.env(), tmp_path / "beat.log")

    def runs() -> list[Any]:
        with session_factory(own.db_url)() as s:
            return s.execute(select(Job).where(Job.schedule_name == name)).scalars().all()

    try:
        try:
            wait_until(runs, 60, "the first scheduled run", on_timeout=lambda: beat.log() + w.log())
            wait_until(lambda: w.log().count(f"schedule {name}: previous run") >= 2, 60, "two refused triggers",
                       on_timeout=lambda: beat.log() + w.log())
        finally:
            beat.stop()
        assert beat.log().count(f"Sending due task schedule:{name}") >= 3
        (run,) = runs()
        assert run.kind == "scheduled" and run.status == "running" and run.objects_enqueued == 3
        assert job_rows(own.db_url, run.id) == []  # its batches are queued, not started

        reply = app_for(own.settings()).control.add_consumer("recompress", destination=[w.name], reply=True,
                                                               timeout=10)
        assert reply, "the worker did not answer the add_consumer request"
        wait_finished(own, run.id, 180, [w])
        assert len(runs()) == 1
        check_job(own, run.id, bucket, sources, replace=False)
    finally:
        w.stop()
        redis.stop()


def test_lease_renews_only_a_pending_delivery(redis_main: RedisServer) -> None:
    """The renewal moves a pending delivery's score to now, never re-adds an acknowledged one, and
    shrugs off an unreachable broker (the batch it protects goes on)."""
    import redis

    from workers.lease import BatchLease, batch_lease

    client = redis.Redis.from_url(redis_main.url)
    index = f"test-unacked-{uuid.uuid4().hex[:8]}"
    client.zadd(index, {"tag-a": time.time() - 1000, "tag-b": time.time() - 1000})
    lease = BatchLease(client, "tag-a", every=0.2, index_key=index)
    lease.start()
    time.sleep(1.2)
    lease.stop()
    assert lease.renewals >= 3
    assert client.zscore(index, "tag-a") > time.time() - 2
    assert client.zscore(index, "tag-b") < time.time() - 900  # other deliveries untouched
    client.zrem(index, "tag-a")  # acknowledged (or handed back to the queue)
    assert lease.renew() is False and client.zscore(index, "tag-a") is None
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    assert BatchLease(dead, "tag-c", every=1).renew() is False
    for url, tag, every in (("amqp://guest@127.0.0.1//", "t", 1.0), (redis_main.url, None, 1.0),
                            (redis_main.url, "t", 0.0)):
        with batch_lease(url, tag, every) as held:
            assert held is None
    client.delete(index)


def test_a_batch_longer_than_the_visibility_timeout_runs_on_one_worker(stack: Stack, worker: dict[str, Proc],
                                                                       redis_main: RedisServer) -> None:
    """With a second, idle worker sweeping for expired deliveries every second, a batch that runs
    well past the visibility timeout is not handed out again: its lease keeps it pending."""
    import re

    import redis

    from archiver import jobs

    w2 = stack.start_worker()
    try:
        client = redis.Redis.from_url(redis_main.url)
        # About 3x the visibility timeout on a 2-core CI machine; 12 images once finished within it
        # on an idle one, and then the test proves nothing; so did 36 of 384x384 once a one-tile
        # image's layers ran on both cores (row bands, issue 25): 512x512 now.
        sources = {f"long/{i}.png": noise_png(900 + i, 512, 512) for i in range(36)}
        bucket = stack.bucket(sources)
        job_id = jobs.submit(bucket, {**ACCEPT}, chunk_size=len(sources), runtime=runtime_for(stack.settings()), enqueue=celery_enqueue(stack.settings()))
        pending = wait_until(lambda: client.zrange("unacked_index", 0, -1, withscores=True), 60,
                             "the batch to be delivered", poll=0.1)
        assert len(pending) == 1
        tag, delivered = pending[0][0], pending[0][1]
        wait_until(lambda: time.time() > delivered + VISIBILITY + 3
                   or job_status(stack.db_url, job_id) == "finished", VISIBILITY + 60, "the visibility timeout")
        assert job_status(stack.db_url, job_id) == "running", "the batch ended within the visibility timeout; " \
            "make it longer"
        score = client.zscore("unacked_index", tag)
        assert score is not None and score > time.time() - (LEASE + 2), "lease not renewed"
        wait_finished(stack, job_id, 300, [worker["w"], w2])
        rows = check_job(stack, job_id, bucket, sources, replace=False)
        assert {r.worker for r in rows} and len({r.worker for r in rows}) == 1
        logs = worker["w"].log() + w2.log()
        ids = re.findall(r"recompress_batch\[([0-9a-f-]+)\] received", logs)
        assert len(ids) == len(set(ids)), "a batch was delivered twice"
    finally:
        w2.stop()


def test_worker_killed_mid_job_completes_on_another_worker(stack: Stack, worker: dict[str, Proc]) -> None:
    """SIGKILL the worker (parent and child) after the first result row; a new worker picks the
    abandoned batch up after the visibility timeout; no duplicates, no original lost."""
    from archiver import jobs

    sources = {f"k{i}.png": noise_png(400 + i, 128, 128) for i in range(8)}
    bucket = stack.bucket(sources)
    job_id = jobs.submit(bucket, {"replace": True, **ACCEPT}, chunk_size=4, runtime=runtime_for(stack.settings()), enqueue=celery_enqueue(stack.settings()))
    w = worker["w"]
    wait_until(lambda: job_rows(stack.db_url, job_id), 120, "a first result", poll=0.1, on_timeout=w.log)
    w.kill(signal.SIGKILL)
    w.p.wait(10)
    w.stop()
    n_dead = len(job_rows(stack.db_url, job_id))
    assert n_dead < len(sources), "the job finished before the kill; make it longer"
    worker["w"] = stack.start_worker()
    wait_finished(stack, job_id, VISIBILITY + 150, [worker["w"]])
    rows = check_job(stack, job_id, bucket, sources, replace=True)
    assert all(r.status == "accepted" for r in rows)
    # the batch the dead worker held was redelivered to the new one (after the visibility timeout)
    import re

    held = re.findall(r"recompress_batch\[([0-9a-f-]+)\] received", w.log())[-1]
    assert f"recompress_batch[{held}] received" in worker["w"].log()


def test_redis_outage_mid_job(stack: Stack, tmp_path: Path) -> None:
    """The broker crashes (SIGKILL) mid-job and comes back on the same port: the job completes."""
    from archiver import jobs

    redis = RedisServer(tmp_path, durable=True)
    redis.start()
    own = Stack(stack.s3_endpoint, stack.db_url, redis.url, tmp_path)
    w = own.start_worker()
    try:
        sources = {f"o{i}.png": noise_png(500 + i, 128, 128) for i in range(8)}
        bucket = own.bucket(sources)
        job_id = jobs.submit(bucket, ACCEPT, chunk_size=2, runtime=runtime_for(own.settings()), enqueue=celery_enqueue(own.settings()))
        wait_until(lambda: job_rows(own.db_url, job_id), 120, "a first result", poll=0.1, on_timeout=w.log)
        redis.crash()
        time.sleep(3)
        n_down = len(job_rows(own.db_url, job_id))
        redis.start()
        wait_finished(own, job_id, VISIBILITY + 150, [w])
        assert n_down < len(sources), "the job finished before the outage; make it longer"
        check_job(own, job_id, bucket, sources, replace=False)
        assert w.alive(), "the worker must survive a broker outage"
        log = w.log()
        assert "Connection to broker lost" in log
        assert log.index("Connection to broker lost") < log.rindex("Connected to redis://")
    finally:
        w.stop()
        redis.stop()


def _figures(name: str, **figures: Any) -> None:
    """Outage figures for benchmarks/broker_outage.py (written only when it asks for them)."""
    out = os.environ.get("ARCHIVER_TEST_FIGURES")
    if out:
        import json

        with open(out, "a") as fh:
            fh.write(json.dumps({"scenario": name, **figures}) + "\n")


def _duplicates_and_lost(stack: Stack, job_id: int, sources: dict[str, bytes]) -> tuple[int, int, int]:
    rows = job_rows(stack.db_url, job_id)
    keys = [r.key for r in rows]
    return len(rows), len(keys) - len(set(keys)), len(set(sources) - set(keys))


def test_submit_while_the_broker_is_down_then_the_same_command_finishes_the_job(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28, 1: the broker is down for the whole submit. ``archiver submit`` retries for
    workers.submit_broker_wait seconds, then exits 2 with one line; the job row says 0 enqueued
    and the job is stalled (interrupted), not failed. Once the broker is up, the same command
    finishes that job (no second job), each object exactly once."""
    from click.testing import CliRunner

    from archiver import jobs
    from archiver.cli.job_cmds import status, submit
    from archiver.db.models import Job

    redis = RedisServer(tmp_path, durable=True)  # not started yet: the broker is down
    own = Stack(stack.s3_endpoint, stack.db_url, redis.url, tmp_path)
    sources = {f"d{i}.png": noise_png(700 + i) for i in range(OUTAGE_OBJECTS)}
    bucket = own.bucket(sources)
    own.env_for_test_process(monkeypatch)
    args = [bucket, "--min-psnr", "1", "--min-saving", "0", "--replace", "--chunk-size", "3"]
    t0 = time.monotonic()
    res = CliRunner().invoke(submit, args)
    waited = time.monotonic() - t0
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error (broker_unavailable): "), res.output
    assert "Traceback" not in res.output
    assert BROKER_WAIT <= waited < BROKER_WAIT + 15, waited
    with session_factory(own.db_url)() as s:
        job = s.execute(select(Job).where(Job.source == bucket)).scalar_one()
        assert (job.status, job.objects_enqueued) == ("pending", 0)
        assert "BrokerUnavailable" in job.settings["interrupted"]
        job_id = job.id
    rt = runtime_for(own.settings())
    p = jobs.status(job_id, runtime=rt)
    assert p.state == "stalled" and p.eta_seconds is None
    out = CliRunner().invoke(status, [str(job_id)])
    assert "stalled" in out.output and f"archiver submit --resume {job_id}" in out.output, out.output

    redis.start()
    w = own.start_worker()
    try:
        t1 = time.monotonic()
        res = CliRunner().invoke(submit, args)  # the same command, the broker back
        assert res.exit_code == 0, res.output
        assert int(res.output.strip().splitlines()[-1]) == job_id  # that job, not a new one
        wait_finished(own, job_id, 60 + 10 * OUTAGE_OBJECTS, [w])
        recovered = time.monotonic() - t1
        check_job(own, job_id, bucket, sources, replace=True)
        with session_factory(own.db_url)() as s:
            assert s.execute(select(Job).where(Job.source == bucket)).scalars().all()[0].id == job_id
            assert len(s.execute(select(Job).where(Job.source == bucket)).scalars().all()) == 1
        assert jobs.status(job_id, runtime=rt).objects_enqueued == len(sources)
        rows, dups, lost = _duplicates_and_lost(own, job_id, sources)
        _figures("broker down at submit", objects=len(sources), submit_gave_up_s=round(waited, 1),
                 enqueued_after_outage=0, rerun_to_finished_s=round(recovered, 1), rows=rows, duplicates=dups,
                 lost=lost, jobs=1)
    finally:
        w.stop()
        redis.stop()


def test_a_lost_queue_is_reported_stalled_and_resume_finishes_the_job(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28, 2: Redis restarts *empty* mid-job (no persistence). The job made no progress and
    no batch of it is queued or held: within visibility timeout + stall margin ``archiver status``
    says ``stalled`` and names the command; that command (``archiver submit --resume JOB``)
    re-enqueues exactly the objects without a final row and the job finishes, each object once."""
    from click.testing import CliRunner

    from archiver import jobs
    from archiver.cli.job_cmds import status, submit
    from workers.inflight import broker_view

    redis = RedisServer(tmp_path, durable=False)  # comes back empty
    redis.start()
    own = Stack(stack.s3_endpoint, stack.db_url, redis.url, tmp_path)
    w = own.start_worker()
    try:
        sources = {f"q{i}.png": noise_png(800 + i, 128, 128) for i in range(OUTAGE_OBJECTS)}
        bucket = own.bucket(sources)
        rt = runtime_for(own.settings())
        job_id = jobs.submit(bucket, {**ACCEPT, "replace": True}, chunk_size=2, runtime=rt,
                             enqueue=celery_enqueue(own.settings()))
        view = broker_view(own.broker_url)
        assert job_id in view.jobs_with_batches()  # its batches are seen on the broker
        assert jobs.status(job_id, runtime=rt, broker=view).state == "running"
        wait_until(lambda: job_rows(own.db_url, job_id), 120, "a first result", poll=0.1, on_timeout=w.log)
        redis.crash()
        redis.start()  # empty: the queued batches are gone
        t_lost = time.monotonic()
        n_lost = len(job_rows(own.db_url, job_id))
        assert n_lost < len(sources), "the job finished before the queue was lost; make it longer"
        p = wait_until(lambda: (q := jobs.status(job_id, runtime=rt, broker=view)).state == "stalled" and q,
                       VISIBILITY + STALL_MARGIN + 60, "the job to be reported stalled", poll=0.5, on_timeout=w.log)
        noticed = time.monotonic() - t_lost
        assert "queue was lost" in p.stalled and p.eta_seconds is None
        # not before the limit: the last progress was at least VISIBILITY + STALL_MARGIN ago
        assert (dt_now() - p.last_progress).total_seconds() >= VISIBILITY + STALL_MARGIN
        own.env_for_test_process(monkeypatch)
        out = CliRunner().invoke(status, [str(job_id)])
        assert out.exit_code == 0 and "stalled" in out.output, out.output
        assert f"archiver submit --resume {job_id}" in out.output, out.output
        done_before = len(job_rows(own.db_url, job_id))

        sent: list[list[Any]] = []
        real = celery_enqueue(own.settings())
        import workers.enqueue as enq

        monkeypatch.setattr(enq, "celery_enqueue", lambda st, **kw: lambda *a: (sent.append(a[3]), real(*a)))
        t1 = time.monotonic()
        res = CliRunner().invoke(submit, ["--resume", str(job_id)])
        assert res.exit_code == 0, res.output
        resent = sorted(it[0] for batch in sent for it in batch)
        assert len(resent) == len(set(resent)) == len(sources) - done_before  # exactly those without a row
        wait_finished(own, job_id, 60 + 10 * OUTAGE_OBJECTS, [w])
        recovered = time.monotonic() - t1
        check_job(own, job_id, bucket, sources, replace=True)
        assert jobs.status(job_id, runtime=rt).objects_enqueued == len(sources)
        rows, dups, lost = _duplicates_and_lost(own, job_id, sources)
        _figures("queue lost mid-job", objects=len(sources), done_when_lost=n_lost,
                 stalled_noticed_after_s=round(noticed, 1), limit_s=VISIBILITY + STALL_MARGIN,
                 resent=len(resent), resume_to_finished_s=round(recovered, 1), rows=rows, duplicates=dups, lost=lost)
    finally:
        w.stop()
        redis.stop()


def dt_now() -> Any:
    from archiver.db.models import utcnow

    return utcnow()
# ---- metrics and JSON logs of a real worker -------------------------------------------------------

def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text page."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(r.text) for smp in fam.samples}


def test_a_workers_metrics_match_the_ledger_and_its_json_logs_name_job_key_and_reason(
        s3_server: str, pg_module_url: str, tmp_path: Path) -> None:
    """A real prefork worker with ``[workers] metrics_port`` and ``log_format = "json"``, on its own
    Redis (no other worker takes its batches): after a job, the parent's scrape (the child's
    values, through PROMETHEUS_MULTIPROC_DIR) counts exactly the job's rows by status and reason,
    and the accepted bytes before and after as the ledger has them; the log lines are JSON with
    the job id, the key cut to 120 characters and the reason code."""
    import json

    from archiver import jobs
    from archiver.db.models import ArchivedObject

    redis = RedisServer(tmp_path, durable=False)
    redis.start()
    stack = Stack(s3_server, pg_module_url, redis.url, tmp_path)
    port = free_port()
    w = stack.start_worker(extra_env={"ARCHIVER_WORKERS__METRICS_PORT": str(port), "ARCHIVER_LOG_FORMAT": "json",
                                      "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")})
    try:
        long_key = "deep/" + "k" * 200 + ".png"
        sources = {f"m{i}.png": noise_png(400 + i) for i in range(3)}
        sources.update({long_key: noise_png(410), "notes.txt": b"not an image\n"})
        bucket = stack.bucket(sources)
        st = stack.settings()
        url = f"http://127.0.0.1:{port}/metrics"
        before = scrape(url)
        assert before.get(("archiver_batches_in_flight", ()), 0) == 0
        job_id = jobs.submit(bucket, ACCEPT, chunk_size=2, runtime=runtime_for(st), enqueue=celery_enqueue(st))
        wait_finished(stack, job_id, 300, [w])
        rows = check_job(stack, job_id, bucket, sources, replace=False)
        # the gauge drops when the task returns, a moment after the job row says finished
        after = wait_until(lambda: (m := scrape(url)).get(("archiver_batches_in_flight", ())) == 0 and m, 10,
                           "the batches to leave the in-flight gauge")

        counted = {dict(labels)["status"] + "/" + dict(labels)["reason"]: v
                   for (name, labels), v in after.items() if name == "archiver_objects_total" and v}
        expected: dict[str, float] = {}
        for r in rows:
            k = f"{r.status}/{r.reason_code or ''}"
            expected[k] = expected.get(k, 0) + 1
        assert counted == expected and expected.get("accepted/") == 4 and expected.get("rejected/not_an_image") == 1
        with session_factory(stack.db_url)() as s:
            ledger = s.execute(select(ArchivedObject).where(
                ArchivedObject.bucket == bucket.removeprefix("s3://"))).scalars().all()
        assert len(ledger) == 4
        assert after[("archiver_accepted_original_bytes_total", ())] == sum(a.original_bytes for a in ledger)
        assert after[("archiver_accepted_archived_bytes_total", ())] == sum(a.compressed_bytes for a in ledger)
        for stage, n in (("fetch", 5), ("encode", 4), ("verify", 4), ("write", 4)):  # the text file is fetched
            assert after[("archiver_stage_seconds_count", (("stage", stage),))] == n, stage
        assert after[("archiver_quality_probes_count", ())] == 4
        assert after[("archiver_quality_probes_sum", ())] >= 4
        assert after[("archiver_worker_model_info", (("device", "cpu"), ("model_id", st.model_id)))] == 1

        records = []
        for line in w.log().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
        mine = [r for r in records if r.get("job_id") == job_id]
        refused = [r for r in mine if r.get("reason_code") == "not_an_image"]
        assert refused and refused[0]["key"] == "notes.txt", mine
        long = [r for r in mine if (r.get("key") or "").startswith("deep/")]
        assert long and all(r["key"] == long_key[:120] + "..." for r in long)
        assert not any(long_key in line for line in w.log().splitlines())  # never the whole key
    finally:
        w.stop()
        redis.stop()
