"""Helpers the end-to-end benchmarks share: free ports, background services (moto's S3 server,
redis-server, uvicorn, a Celery worker) started as process groups and stopped whole, and a
one-line description of the machine for the recorded rows."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def machine(device: str, load: float) -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, device {device}, load avg {load:.1f} at start"


def bench_env() -> dict[str, str]:
    """This process's environment without ``ARCHIVER_*`` (a benchmark sets its own), with fake AWS
    credentials for moto."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    env.update(FAKE_AWS)
    return env


def start_moto(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """moto's S3 server over HTTP on 127.0.0.1:``port`` (see :func:`wait_for_s3`)."""
    return start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env, log)


def wait_for_s3(client, timeout: float = 60) -> None:
    """Until the S3 server answers a listing through ``client`` (boto3)."""

    def up() -> bool:
        try:
            client.list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    wait_for(up, timeout, "the S3 server")
