"""On-demand retrieval latency through the real HTTP endpoint (issue 5), for 768x512 photos.

    .venv/bin/python benchmarks/retrieval_latency.py [--kodak DIR] [--images 6] [--repeats 3]
                                                     [--clients 4] [--device cpu] [--no-record]

Starts what a deployment runs, locally: moto's S3 server over HTTP, a SQLite ledger, and
``uvicorn --factory archiver.server:create_app`` on a real socket. It uploads N Kodak images
(768x512 PNG) to a bucket, archives them with the real front door (``archiver recompress``,
min PSNR 20, so every one is accepted), then measures from an HTTP client:

* **one request at a time**: ``GET /objects/{bucket}/{key}?format=png|jpeg|webp``, each a full
  fetch of the container from S3, ledger and sha256 check, decode and re-encode to the format
  (the server keeps no decoded-image cache; only the client's ETag can skip work);
* **revalidation**: the same GET with ``If-None-Match`` (304, nothing fetched or decoded);
* **a burst**: ``--clients`` clients at once, each fetching every image as PNG, against the
  server's ``[server] max_concurrent_decodes`` bound (default 2): latency grows with the queue,
  nothing is refused.

Prints medians and 95th percentiles and appends a dated section to docs/BENCHMARKS.md.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from local_services import (  # noqa: E402
    bench_env, free_port, machine, start, start_moto, stop, wait_for, wait_for_s3)

FORMATS = ("png", "jpeg", "webp")


def default_kodak() -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from shared_paths import KODAK  # the same lookup as the tests: $SHARED_DATA_DIR, ../shared, ...

    return KODAK


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kodak", type=Path, default=None, help="folder of kodimNN.png (default: the shared data)")
    ap.add_argument("--images", type=int, default=6, help="landscape 768x512 Kodak images to archive")
    ap.add_argument("--repeats", type=int, default=3, help="sequential passes per format")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients in the burst")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    import httpx
    from PIL import Image

    kodak = a.kodak or default_kodak()
    photos = [p for p in sorted(kodak.glob("kodim*.png")) if Image.open(p).size == (768, 512)][: a.images]
    if len(photos) < a.images:
        raise SystemExit(f"found only {len(photos)} landscape 768x512 images in {kodak}")

    tmp = Path(tempfile.mkdtemp(prefix="archiver-retrieval-"))
    procs: list[subprocess.Popen] = []
    try:
        s3_port, http_port = free_port(), free_port()
        env = bench_env()
        env.update({"ARCHIVER_DATABASE_URL": f"sqlite:///{tmp / 'ledger.sqlite'}", "ARCHIVER_DEVICE": a.device,
                    "ARCHIVER_S3__ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "ARCHIVER_S3__PATH_STYLE": "true",
                    "ARCHIVER_BROKER_URL": "redis://127.0.0.1:1/0", "PYTHONUNBUFFERED": "1",
                    # this measures decoding, not the per-token limits: lift them for the one client token
                    "ARCHIVER_SERVER__TOKEN_RATE_PER_S": "100000", "ARCHIVER_SERVER__TOKEN_BURST": "100000",
                    "ARCHIVER_SERVER__TOKEN_MAX_CONCURRENT": "1024", "ARCHIVER_SERVER__SLOT_WAIT_TIMEOUT_S": "3600"})
        procs.append(start_moto(s3_port, env, tmp / "moto.log"))
        os.environ.update({k: v for k, v in env.items() if k.startswith(("ARCHIVER_", "AWS_"))})
        from archiver.settings import load_settings
        from archiver.storage.s3 import make_client

        st = load_settings()
        client = make_client(st.s3)
        wait_for_s3(client)
        bucket = f"photos-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        keys = []
        for p in photos:
            keys.append(f"kodak/{p.name}")
            client.put_object(Bucket=bucket, Key=keys[-1], Body=p.read_bytes())

        t0 = time.perf_counter()
        archived = subprocess.run([sys.executable, "-m", "archiver", "recompress", f"s3://{bucket}/", "--min-psnr", "20",
                                   "--min-saving", "0"], cwd=tmp, env=env, capture_output=True, text=True, check=False)
        if archived.returncode != 0:
            raise SystemExit(f"archiving failed:\n{archived.stdout}\n{archived.stderr}")
        print(f"archived {len(keys)} images with `archiver recompress` in {time.perf_counter() - t0:.1f} s")

        issued = subprocess.run([sys.executable, "-m", "archiver", "token", "create", "bench", "--scope", bucket],
                                cwd=tmp, env=env, capture_output=True, text=True, check=False)
        if issued.returncode != 0:
            raise SystemExit(f"token create failed:\n{issued.stderr}")
        auth = {"Authorization": f"Bearer {issued.stdout.strip()}"}
        procs.append(start([sys.executable, "-m", "uvicorn", "--factory", "archiver.server:create_app", "--host",
                            "127.0.0.1", "--port", str(http_port), "--log-level", "warning"], env, tmp / "uvicorn.log"))
        base = f"http://127.0.0.1:{http_port}"

        def healthy() -> bool:
            try:
                return httpx.get(base + "/health", timeout=5).json()["model"]["loaded"]
            except Exception:  # noqa: BLE001 - not up yet
                return False

        wait_for(healthy, 300, "the server and its model")
        health = httpx.get(base + "/health", timeout=5).json()
        print(f"server: model {health['model']['id']} on {health['model']['device']}, "
              f"max_concurrent_decodes {st.server.max_concurrent_decodes}")

        http = httpx.Client(timeout=300, headers=auth)

        def get(key: str, fmt: str, headers: dict[str, str] | None = None) -> tuple[float, httpx.Response]:
            t = time.perf_counter()
            r = http.get(f"{base}/objects/{bucket}/{key}", params={"format": fmt}, headers=headers or {})
            return time.perf_counter() - t, r

        for key in keys[:2]:  # warm-up: TorchScript optimises during its first calls
            for fmt in FORMATS:
                get(key, fmt)

        seq: dict[str, list[float]] = {f: [] for f in FORMATS}
        sizes: dict[str, list[int]] = {f: [] for f in FORMATS}
        for _ in range(a.repeats):
            for fmt in FORMATS:
                for key in keys:
                    took, r = get(key, fmt)
                    if r.status_code != 200:
                        raise SystemExit(f"GET {key} as {fmt}: {r.status_code} {r.text[:300]}")
                    if Image.open(io.BytesIO(r.content)).size != (768, 512):
                        raise SystemExit(f"GET {key} as {fmt}: wrong image size")
                    seq[fmt].append(took)
                    sizes[fmt].append(len(r.content))
        etags = {key: get(key, "png")[1].headers["etag"] for key in keys}
        revalidate = []
        for _ in range(a.repeats):
            for key in keys:
                took, r = get(key, "png", {"If-None-Match": etags[key]})
                if r.status_code != 304:
                    raise SystemExit(f"revalidation of {key}: {r.status_code}")
                revalidate.append(took)

        def one_client(_: int) -> list[float]:
            with httpx.Client(timeout=600, headers=auth) as c:
                out = []
                for key in keys:
                    t = time.perf_counter()
                    r = c.get(f"{base}/objects/{bucket}/{key}", params={"format": "png"})
                    if r.status_code != 200:
                        raise SystemExit(f"burst GET {key}: {r.status_code}")
                    out.append(time.perf_counter() - t)
                return out

        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.clients) as pool:
            burst = [x for xs in pool.map(one_client, range(a.clients)) for x in xs]
        burst_s = time.perf_counter() - t0

        print(f"{len(keys)} images 768x512, {a.repeats} sequential passes per format (median / p95 seconds):")
        for fmt in FORMATS:
            print(f"  {fmt:5s}: {statistics.median(seq[fmt]):.3f} / {pct(seq[fmt], 95):.3f} s, "
                  f"median body {statistics.median(sizes[fmt]) / 1e3:.0f} kB")
        print(f"  304 revalidation: {statistics.median(revalidate) * 1e3:.1f} / {pct(revalidate, 95) * 1e3:.1f} ms")
        print(f"burst: {a.clients} clients x {len(keys)} PNG GETs: {len(burst) / burst_s:.2f} images/s, "
              f"latency median {statistics.median(burst):.2f} s, p95 {pct(burst, 95):.2f} s, max {max(burst):.2f} s")
        if not a.no_record:
            record(a, st, health, len(keys), seq, sizes, revalidate, burst, burst_s, load)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def record(a, st, health, n, seq, sizes, revalidate, burst, burst_s, load) -> None:
    path = REPO / "docs" / "BENCHMARKS.md"
    cmd = "python benchmarks/retrieval_latency.py " + shlex.join(sys.argv[1:])
    lines = [f"### Retrieval latency through the HTTP endpoint, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", "",
             f"- command: `{cmd.strip()}`",
             f"- machine: {machine(a.device, load)}; model {health['model']['id']} on {health['model']['device']}; "
             f"`[server] max_concurrent_decodes` = {st.server.max_concurrent_decodes}",
             f"- {n} Kodak 768x512 photos archived with `archiver recompress` into moto's S3 server; each GET fetches "
             "the container over HTTP from S3, checks it against the ledger, decodes it and encodes the format "
             "(uvicorn on a real socket, httpx client on the same machine)", "",
             "| request | median | p95 | median body |", "| --- | ---: | ---: | ---: |"]
    for fmt in FORMATS:
        lines.append(f"| `GET ?format={fmt}`, one at a time | {statistics.median(seq[fmt]):.3f} s | "
                     f"{pct(seq[fmt], 95):.3f} s | {statistics.median(sizes[fmt]) / 1e3:.0f} kB |")
    lines.append(f"| `If-None-Match` revalidation (304) | {statistics.median(revalidate) * 1e3:.1f} ms | "
                 f"{pct(revalidate, 95) * 1e3:.1f} ms | 0 |")
    lines.append(f"| burst: {a.clients} clients x {n} PNG GETs ({len(burst) / burst_s:.2f} images/s) | "
                 f"{statistics.median(burst):.2f} s | {pct(burst, 95):.2f} s | |")
    text = path.read_text()
    anchor = "### Targets from issue 3"  # beside the other retrieval figures (CPU decode latency)
    section = "\n".join(lines) + "\n\n"
    text = text.replace(anchor, section + anchor, 1) if anchor in text else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
