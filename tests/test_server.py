"""The HTTP retrieval endpoint over a real socket: ``uvicorn archiver.server:create_app`` in a
subprocess, moto's S3 server, a SQLite ledger filled by the real pipeline, httpx as the client.

The containers are made by :func:`archiver.pipeline.run_job` on noise PNGs with a 1 dB PSNR
floor (any working codec passes it), so nothing here depends on how good the weights are.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from archiver.codec.default import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png(seed: int, w: int, h: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    if mode == "RGBA":
        a[..., 3] = np.where(np.arange(w)[None, :] < w // 2, 255, 40)  # a two-level alpha plane
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, "PNG")
    return buf.getvalue()


class Env:
    def __init__(self, s3_endpoint: str, db_url: str, workdir: Path) -> None:
        self.s3_endpoint, self.db_url, self.workdir = s3_endpoint, db_url, workdir
        self.dead_broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    def settings(self, **kw: Any) -> Any:
        from archiver.settings import Settings

        return Settings(**{"database_url": self.db_url, "broker_url": self.dead_broker, "device": "cpu",
                           "s3": {"endpoint_url": self.s3_endpoint, "path_style": True, "max_attempts": 2,
                                  "access_key_id": "testing", "secret_access_key": "testing"}, **kw})

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_") or k.startswith("ARCHIVER_TEST_")}
        env.update(FAKE_AWS)
        env.update({"ARCHIVER_DATABASE_URL": self.db_url, "ARCHIVER_BROKER_URL": self.dead_broker,
                    "ARCHIVER_DEVICE": "cpu", "ARCHIVER_S3__ENDPOINT_URL": self.s3_endpoint,
                    "ARCHIVER_S3__PATH_STYLE": "true", "ARCHIVER_S3__MAX_ATTEMPTS": "2",
                    "ARCHIVER_SERVER__MAX_CONCURRENT_DECODES": "1"})
        return env


@pytest.fixture(scope="module")
def archive(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bucket with two archived images (via the real pipeline), a corrupt container beside a
    key that has no ledger row, and a ledger row whose container was tampered with."""
    from archiver.codec.api import Codec
    from archiver.db import upgrade
    from archiver.db.models import ArchivedObject
    from archiver.jobs import get_session_factory
    from archiver.pipeline import PipelineOptions, run_job
    from archiver.storage import open_store

    workdir = tmp_path_factory.mktemp("server")
    env = Env(s3_server, f"sqlite:///{workdir / 'ledger.sqlite'}", workdir)
    st = env.settings()
    from archiver.storage.s3 import make_client

    bucket = f"srv-{uuid.uuid4().hex[:12]}"
    client = make_client(st.s3)
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="cats/a.png", Body=png(1, 96, 64))
    client.put_object(Bucket=bucket, Key="alpha.png", Body=png(2, 64, 80, "RGBA"))
    client.put_object(Bucket=bucket, Key="stale.png", Body=png(3, 64, 64))
    upgrade(env.db_url)
    sf = get_session_factory(env.db_url)
    store = open_store(f"s3://{bucket}", st)
    opts = PipelineOptions(min_psnr=1.0, min_saving=0.0)
    summary = run_job(src=store, dst=store, source_url=f"s3://{bucket}", dest_url=None,
                      codec=Codec.cached(st.model_id, "cpu"), opts=opts, session_factory=sf, workers=2)
    assert summary.accepted == 3, summary
    # changed after it was archived: the archive is an older version of the object
    client.put_object(Bucket=bucket, Key="stale.png", Body=png(4, 64, 64))
    # archived by a job listing a prefix, into another prefix: found through the ledger by full key
    client.put_object(Bucket=bucket, Key="dogs/b.png", Body=png(5, 80, 48))
    client.close()
    sub, dest = open_store(f"s3://{bucket}/dogs", st), open_store(f"s3://{bucket}/cxa", st)
    summary = run_job(src=sub, dst=dest, source_url=sub.url, dest_url=dest.url,
                      codec=Codec.cached(st.model_id, "cpu"), opts=opts, session_factory=sf)
    assert summary.accepted == 1, summary

    good = store.get("cats/a.png.cxa")
    bad = bytearray(good)
    for i in range(len(bad) // 2, len(bad) // 2 + 16):
        bad[i] ^= 0x5A
    store.put("corrupt.png.cxa", bytes(bad), metadata={}, content_type="application/x-cxa")
    store.put("tampered.png.cxa", bytes(bad), metadata={}, content_type="application/x-cxa")
    with sf() as s:
        s.add(ArchivedObject(bucket=bucket, key="tampered.png", etag="x", model_id=st.model_id,
                             dest_url=store.url_for("tampered.png.cxa"),
                             compressed_sha256=hashlib.sha256(good).hexdigest(), compressed_bytes=len(good),
                             original_bytes=1))
        s.commit()
    return {"env": env, "bucket": bucket, "sha": hashlib.sha256(good).hexdigest()}


@pytest.fixture(scope="module")
def server(archive: dict[str, Any]) -> Iterator[str]:
    env: Env = archive["env"]
    port = free_port()
    log_path = env.workdir / "uvicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "archiver.server:create_app",
                                 "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=env.environ(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(base + "/health", timeout=5).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_formats_decode_to_the_right_size(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    for fmt, pil in [("png", "PNG"), ("jpeg", "JPEG"), ("jpg", "JPEG"), ("webp", "WEBP")]:
        r = httpx.get(f"{server}/objects/{b}/cats/a.png", params={"format": fmt}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == f"image/{pil.lower()}"
        img = Image.open(io.BytesIO(r.content))
        assert img.format == pil and img.size == (96, 64)
    for accept, pil in [("image/webp,image/png;q=0.9,*/*;q=0.1", "WEBP"), ("image/jpeg", "JPEG"),
                        ("image/avif;q=1, image/png;q=0.5", "PNG"), ("*/*", "PNG"), (None, "PNG")]:
        r = httpx.get(f"{server}/objects/{b}/cats/a.png", headers={"Accept": accept} if accept else {}, timeout=60)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == pil, (accept, r.text)
        assert r.headers["vary"] == "Accept"
    r = httpx.get(f"{server}/objects/{b}/alpha.png", timeout=60)  # alpha survives in PNG and WebP
    assert r.status_code == 200
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (64, 80) and img.mode == "RGBA"
    alpha = np.asarray(img)[..., 3]
    assert (alpha[:, :32] == 255).all() and (alpha[:, 32:] == 40).all()
    r = httpx.get(f"{server}/objects/{b}/alpha.png?format=webp", timeout=60)
    assert Image.open(io.BytesIO(r.content)).mode == "RGBA"


def test_objects_are_found_by_full_key_and_stale_archives_are_409(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    r = httpx.get(f"{server}/objects/{b}/dogs/b.png", timeout=60)  # container at cxa/b.png.cxa
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (80, 48)
    r = httpx.get(f"{server}/objects/{b}/stale.png", timeout=60)
    assert r.status_code == 409 and r.json()["code"] == "archive_stale", r.text


def test_etag_and_not_modified(server: str, archive: dict[str, Any]) -> None:
    url = f"{server}/objects/{archive['bucket']}/cats/a.png"
    r = httpx.get(url, params={"format": "png"}, timeout=60)
    etag = r.headers["etag"]
    assert etag == f'"{archive["sha"]}.png"'
    assert "immutable" in r.headers["cache-control"] and "max-age=" in r.headers["cache-control"]
    r2 = httpx.get(url, params={"format": "png"}, headers={"If-None-Match": etag}, timeout=60)
    assert r2.status_code == 304 and r2.content == b"" and r2.headers["etag"] == etag
    r3 = httpx.get(url, params={"format": "png"}, headers={"If-None-Match": f'"other", W/{etag}'}, timeout=60)
    assert r3.status_code == 304
    r4 = httpx.get(url, params={"format": "webp"}, headers={"If-None-Match": etag}, timeout=60)
    assert r4.status_code == 200 and r4.headers["etag"] != etag  # another format is another entity
    assert httpx.get(url, params={"format": "png"}, timeout=60).content == r.content  # deterministic


def test_unknown_keys_are_404(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    for path in [f"/objects/{b}/nope.png", f"/objects/{b}/cats/a.png.cxa", "/objects/no-such-bucket-xyz/a.png",
                 "/objects/Not_A_Bucket/a.png"]:
        r = httpx.get(server + path, timeout=30)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"] == "application/json" and r.json()["code"] == "not_found"


def test_urls_outside_the_api_get_json_problems(server: str) -> None:
    """A local-directory "bucket" (an absolute path) or a typo gets our JSON problem naming the
    URLs that exist, not FastAPI's bare {"detail": "Not Found"}; a wrong method likewise."""
    for path in ["/objects//srv/photos/a.png", "/object/media/a.png", "/"]:
        r = httpx.get(server + path, timeout=30)
        assert r.status_code == 404, (path, r.text)
        body = r.json()
        assert r.headers["content-type"] == "application/json" and body["code"] == "no_route", body
        assert "/objects/{bucket}/{key}" in body["message"] and "archiver restore" in body["message"]
    r = httpx.post(server + "/health", timeout=30)
    assert r.status_code == 405 and r.json()["code"] == "http_error" and r.json()["status"] == 405, r.text


def test_corrupt_containers_are_clear_4xx(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    r = httpx.get(f"{server}/objects/{b}/corrupt.png", timeout=60)  # found beside the key, no ledger row
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] and body["code"] != "internal_error" and body["message"]
    r = httpx.get(f"{server}/objects/{b}/tampered.png", timeout=60)  # ledger sha256 no longer matches
    assert r.status_code == 422 and r.json()["code"] == "checksum_mismatch", r.text
    r = httpx.get(f"{server}/objects/{b}/cats/a.png", params={"format": "gif"}, timeout=30)
    assert r.status_code == 400 and r.json()["code"] == "bad_format"
    r = httpx.get(f"{server}/objects/{b}/cats/a.png", headers={"Accept": "text/html"}, timeout=30)
    assert r.status_code == 406 and r.json()["code"] == "not_acceptable"


def test_concurrent_requests_are_bounded_not_refused(server: str, archive: dict[str, Any]) -> None:
    url = f"{server}/objects/{archive['bucket']}/cats/a.png"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda f: httpx.get(url, params={"format": f}, timeout=120).status_code,
                              ["png", "jpeg", "webp", "png"]))
    assert codes == [200] * 4


def test_health(server: str) -> None:
    r = httpx.get(server + "/health", timeout=30)
    assert r.status_code == 200, r.text
    h = r.json()
    assert h["status"] == "ok"
    assert h["model"]["id"] == DEFAULT_MODEL and h["model"]["loaded"] and h["model"]["device"] == "cpu"
    assert h["database"]["reachable"] is True
    assert h["broker"]["reachable"] is False and h["broker"]["error"]  # nothing listens on that port


def test_health_is_503_when_a_dependency_is_down(archive: dict[str, Any]) -> None:
    """In-process (the model is already loaded here): a dead database, or a dead broker with
    ``require_broker``, makes /health answer 503."""
    from fastapi.testclient import TestClient

    from archiver.server import create_app

    env: Env = archive["env"]
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/nope?connect_timeout=2"
    with TestClient(create_app(env.settings(database_url=dead_db))) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["database"]["reachable"] is False
    with TestClient(create_app(env.settings(server={"require_broker": True}))) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["broker"]["reachable"] is False
