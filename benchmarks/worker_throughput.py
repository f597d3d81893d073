"""End-to-end worker throughput vs the bare codec, on the same images.

    .venv/bin/python benchmarks/worker_throughput.py [--images 8] [--size 128] [--min-psnr 35]
                                                     [--chunk-size 4] [--device cpu] [--repeats 3]
                                                     [--no-record]

Starts everything it needs locally: moto's S3 server over HTTP, a private redis-server, a SQLite
database and one real ``celery -A workers worker`` (prefork, one process). It uploads N PNG crops
of the shipped sample images, then measures

* **bare codec**: in one thread of this process, per image, exactly the codec work of the
  pipeline (image decode, encode at the smallest quality reaching ``min_psnr``, verification
  decode of the real bitstream); no storage, broker or database;
* **worker**: ``archiver.jobs.submit`` -> batches on Redis -> worker: fetch from S3, sniff/decode,
  encode, verify-decode, write the container, read it back, record rows, finalize. Timed from
  submit to the job's ``finished`` status, with the worker already started and its model loaded.

Both paths are warmed up first on other crops (TorchScript optimises during its first calls).

Prints both rates and appends a row to docs/BENCHMARKS.md (command, machine, date). Outcomes
(accepted/rejected) are reported too: they depend on the weights, and a rejected image costs
less than an accepted one on both paths.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from local_services import (  # noqa: E402
    bench_env, free_port, machine, start, start_moto, stop, wait_for, wait_for_s3)
WARMUP = 4


def crops(n: int, size: int) -> list[bytes]:
    """N different PNG crops (size x size) of the shipped photos."""
    from PIL import Image

    photos = [Image.open(REPO / "archiver" / "samples" / f).convert("RGB") for f in ("macaws.png", "motocross.jpg")]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        step = max(1, (min(w, h) - size) // max(1, n))
        x = (i * step * 7) % max(1, w - size)
        y = (i * step * 3) % max(1, h - size)
        buf = io.BytesIO()
        im.crop((x, y, x + size, y + size)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--min-psnr", type=float, default=35.0)
    ap.add_argument("--min-saving", type=float, default=0.0)
    ap.add_argument("--chunk-size", type=int, default=4)
    ap.add_argument("--codec-slots", type=int, default=1, help="[workers] codec_slots of the worker (2 for GPUs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="alternating bare/worker measurements (medians)")
    ap.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed")

    tmp = Path(tempfile.mkdtemp(prefix="archiver-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        s3_port, redis_port = free_port(), free_port()
        env = bench_env()
        procs.append(start_moto(s3_port, env, tmp / "moto.log"))
        procs.append(start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                            "--dir", str(tmp)], env, tmp / "redis.log"))
        endpoint = f"http://127.0.0.1:{s3_port}"
        db_url = f"sqlite:///{tmp / 'bench.sqlite'}"
        env.update({"ARCHIVER_DATABASE_URL": db_url, "ARCHIVER_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
                    "ARCHIVER_DEVICE": a.device, "ARCHIVER_S3__ENDPOINT_URL": endpoint,
                    "ARCHIVER_S3__PATH_STYLE": "true", "ARCHIVER_WORKERS__SCHEDULES_FILE": str(tmp / "none.toml"),
                    "ARCHIVER_WORKERS__CODEC_SLOTS": str(a.codec_slots),
                    "PYTHONUNBUFFERED": "1"})
        os.environ.update({k: v for k, v in env.items() if k.startswith(("ARCHIVER_", "AWS_"))})

        from archiver import jobs
        from archiver.runtime import Runtime
        from archiver.settings import load_settings
        from archiver.storage.s3 import make_client

        st = load_settings()
        rt = Runtime(st)  # this benchmark is a front door: settings once, one runtime
        wait_for_s3(make_client(st.s3))
        # the first WARMUP crops warm both paths up (TorchScript optimises on its first calls)
        every = crops(a.images + WARMUP, a.size)
        warm, images = every[:WARMUP], every[WARMUP:]
        client = make_client(st.s3)

        def upload(name: str, objs: list[bytes]) -> str:
            bucket = f"{name}-{uuid.uuid4().hex[:8]}"  # a fresh bucket: the ledger must not skip anything
            client.create_bucket(Bucket=bucket)
            for i, data in enumerate(objs):
                client.put_object(Bucket=bucket, Key=f"img/{i:04d}.png", Body=data)
            return bucket

        worker_log = tmp / "worker.log"
        procs.append(start([sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "recompress,retrieve",
                            "-c", "1", "--pool", "prefork", "--loglevel", "INFO", "--without-gossip",
                            "--without-mingle", "--without-heartbeat"], env, worker_log))
        wait_for(lambda: "worker process ready" in worker_log.read_text(errors="replace"), 300, "the worker")
        ready = next(x for x in worker_log.read_text(errors="replace").splitlines() if "worker process ready" in x)
        print("worker:", ready.split("] ", 1)[-1])

        # bare codec, same images, same codec work as the pipeline
        from archiver.codec.api import QualityHints, TargetNotReached
        from archiver.images import load_image
        from archiver.pipeline import PSNR_MARGIN, PipelineOptions

        codec = rt.codec(st.model_id, a.device)
        # The codec runs in a pool thread, as in the pipeline. (Called from the main thread of this
        # process it was 2-50x slower and erratic on a CPU-oversubscribed machine.)
        codec_thread = ThreadPoolExecutor(1)
        import torch

        print(f"bare codec: model {codec.model_id} on {codec.device_name} ({torch.get_num_threads()} torch threads)")

        def bare_pass(objs: list[bytes]) -> int:
            return codec_thread.submit(bare_pass_here, objs).result()

        hints = QualityHints()  # the pipeline's search; like a worker's, it remembers across passes

        def bare_pass_here(objs: list[bytes]) -> int:
            ok = 0
            target = a.min_psnr + PSNR_MARGIN
            for data in objs:
                img = load_image(data, max_pixels=st.max_pixels)
                try:
                    hint, spread = hints.get(codec.model_id, target)
                    enc = codec.encode_detailed(img, target_psnr=target, quality_hint=hint, hint_spread=spread)
                except TargetNotReached:
                    continue
                hints.add(codec.model_id, target, enc.quality)
                codec.decode(enc.data)
                ok += 1
            return ok

        opts = PipelineOptions.from_settings(st, min_psnr=a.min_psnr, min_saving=a.min_saving)
        from workers.enqueue import celery_enqueue  # the front door's Celery send

        def worker_pass(objs: list[bytes], chunk: int) -> tuple[float, Any]:
            bucket = upload("bench", objs)
            t0 = time.perf_counter()
            job_id = jobs.submit(f"s3://{bucket}", opts, chunk_size=chunk, runtime=rt, enqueue=celery_enqueue(st))
            status = jobs.wait_for(job_id, timeout=3600, poll=0.1, runtime=rt)
            took = time.perf_counter() - t0
            if status.status != "finished":
                raise SystemExit(f"job {job_id} ended {status.status}: {status.error}\n"
                                 f"{worker_log.read_text()[-3000:]}")
            return took, status

        for _ in range(2):  # the first calls of a process are much slower (TorchScript profiling runs)
            bare_pass(warm)
            worker_pass(warm, 1)
        # alternate the two measurements so that load changes on a shared machine hit both alike
        bare_times, worker_times = [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            bare_ok = bare_pass(images)
            bare_times.append(time.perf_counter() - t0)
            took, status = worker_pass(images, a.chunk_size)
            worker_times.append(took)

        n = len(images)
        bare_s, worker_s = statistics.median(bare_times), statistics.median(worker_times)
        bare_rate, worker_rate = n / bare_s, n / worker_s
        outcomes = ", ".join(f"{k} {status.count(k)}" for k in ("accepted", "rejected", "failed") if status.count(k))
        print(f"images: {n} PNG crops {a.size}x{a.size}, min_psnr {a.min_psnr}, device {a.device}, "
              f"{a.repeats} alternating repeats (medians)")
        print(f"bare codec: {bare_rate:.2f} images/s (runs: {', '.join(f'{t:.1f}' for t in bare_times)} s; "
              f"target reached on {bare_ok}/{n})")
        print(f"worker    : {worker_rate:.2f} images/s (runs: {', '.join(f'{t:.1f}' for t in worker_times)} s; "
              f"{outcomes}; chunk size {a.chunk_size})")
        print(f"worker / bare: {worker_rate / bare_rate:.2f}")
        model = f"{codec.model_id} (weights {codec.weights_sha256[:12]}"
        note = codec.entry.info.get("note") if isinstance(codec.entry.info, dict) else None
        model += f", {note})" if note else ")"
        if not a.no_record:
            record(a, n, bare_rate, worker_rate, bare_ok, outcomes, load, model)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def record(a: argparse.Namespace, n: int, bare: float, worker: float, bare_ok: int, outcomes: str,
           load: float, model: str) -> None:
    path = REPO / "docs" / "BENCHMARKS.md"
    header = "## Worker throughput (benchmarks/worker_throughput.py)"
    table = ("| date (UTC) | command | machine | model | images | bare codec img/s | worker img/s | worker/bare "
             "| outcomes |\n|---|---|---|---|---|---|---|---|---|\n")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if header not in text:
        text = text.rstrip("\n") + "\n\n" + header + "\n\n" + (
            "End to end = S3 (moto, local) -> Redis -> one prefork worker process -> container written, read back "
            "and recorded; bare codec = the same image decode + encode-to-target + verification decode in one thread of one process (both paths warmed up first; bare and worker runs alternate and the median is shown). "
            "Rates depend on the weights (rejected images cost less) and on machine load.\n\n") + table
    cmd = "python benchmarks/worker_throughput.py " + shlex.join(sys.argv[1:])
    row = (f"| {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} | `{cmd.strip()}` | {machine(a.device, load)} | {model} | "
           f"{n} x {a.size}px PNG, min_psnr {a.min_psnr}, median of {a.repeats}"
           f"{f', worker codec_slots {a.codec_slots}' if a.codec_slots != 1 else ''} | {bare:.2f} (target met {bare_ok}/{n}) | "
           f"{worker:.2f} | "
           f"{worker / bare:.2f} | {outcomes} |\n")
    lines = text.rstrip("\n").split("\n")
    # append the row after the last row of our table (other sections may follow it)
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    last = max(i for i in range(start, end) if lines[i].startswith("|"))
    lines.insert(last + 1, row.rstrip("\n"))
    path.write_text("\n".join(lines) + "\n")
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
