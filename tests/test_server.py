"""The HTTP retrieval endpoint over a real socket: ``uvicorn archiver.server:create_app`` in a
subprocess, moto's S3 server, a SQLite ledger filled by the real pipeline, httpx as the client.
Every request to ``/objects`` carries a bearer token issued by the fixture (``get`` below);
authentication, scope and limits themselves are tested in tests/test_server_security.py.

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
from archiver.settings import ServerSettings

REPO = Path(__file__).resolve().parents[1]
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


AUTH: dict[str, str] = {}  # Authorization header of the fixture's token scoped to its bucket


def get(url: str, **kw: Any) -> httpx.Response:
    """``httpx.get`` with the fixture's token (unless the call brings its own Authorization)."""
    kw["headers"] = {**AUTH, **(kw.get("headers") or {})}
    return httpx.get(url, **kw)


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
    """A bucket with archived images (via the real pipeline), a ledger row whose container is
    corrupt (its recorded sha256 matches: decoding finds the damage), a ledger row whose container
    was tampered with (the sha256 no longer matches), and tokens: ``reader`` (the bucket),
    ``cats`` (``bucket/cats/``), ``everything`` (``*``) and ``revoked``. Beside them a bucket this
    system never archived, holding a valid container next to its original: never to be served."""
    from archiver.db import upgrade
    from archiver.db.models import ArchivedObject
    from runtimes import session_factory as get_session_factory, shared_codec
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
                      codec=shared_codec(st.model_id, "cpu"), opts=opts, session_factory=sf, workers=2)
    assert summary.accepted == 3, summary
    # changed after it was archived: the archive is an older version of the object
    client.put_object(Bucket=bucket, Key="stale.png", Body=png(4, 64, 64))
    # archived by a job listing a prefix, into another prefix: found through the ledger by full key
    client.put_object(Bucket=bucket, Key="dogs/b.png", Body=png(5, 80, 48))
    client.close()
    sub, dest = open_store(f"s3://{bucket}/dogs", st), open_store(f"s3://{bucket}/cxa", st)
    summary = run_job(src=sub, dst=dest, source_url=sub.url, dest_url=dest.url,
                      codec=shared_codec(st.model_id, "cpu"), opts=opts, session_factory=sf)
    assert summary.accepted == 1, summary

    # a JPEG original archived in the lossless tier (a JPEG XL file that rebuilds it byte for byte)
    photo = kodak_jpeg(3, 75)
    client = make_client(st.s3)
    client.put_object(Bucket=bucket, Key="jpegs/photo.jpg", Body=photo)
    client.close()
    jpegs = open_store(f"s3://{bucket}/jpegs", st)
    summary = run_job(src=jpegs, dst=jpegs, source_url=jpegs.url, dest_url=None, codec=shared_codec(st.model_id, "cpu"),
                      opts=PipelineOptions(min_psnr=1.0, min_saving=0.0, policy="lossless"), session_factory=sf)
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
        s.add(ArchivedObject(bucket=bucket, key="corrupt.png", etag="y", model_id=st.model_id,
                             dest_url=store.url_for("corrupt.png.cxa"), original_deleted=True,
                             compressed_sha256=hashlib.sha256(bytes(bad)).hexdigest(), compressed_bytes=len(bad),
                             original_bytes=1))
        s.commit()
    never = f"never-{uuid.uuid4().hex[:12]}"  # a bucket the credentials can read but nothing archived
    client = make_client(st.s3)
    client.create_bucket(Bucket=never)
    client.put_object(Bucket=never, Key="secret/private.jpg", Body=png(6, 64, 64))
    client.put_object(Bucket=never, Key="secret/private.jpg.cxa", Body=good)
    client.close()
    from archiver.tokens import create_token, revoke_token

    tokens = {name: create_token(sf, name, scope)[1] for name, scope in
              [("reader", [bucket]), ("cats", [f"{bucket}/cats/"]), ("everything", ["*"]), ("revoked", ["*"])]}
    revoke_token(sf, "revoked")
    AUTH["Authorization"] = f"Bearer {tokens['reader']}"
    return {"env": env, "bucket": bucket, "sha": hashlib.sha256(good).hexdigest(), "tokens": tokens,
            "never": never, "photo": photo}


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


def kodak_jpeg(n: int, quality: int) -> bytes:
    """A real photo as a camera would save it: a Kodak crop as a 4:2:0 JPEG at ``quality``."""
    from shared_paths import KODAK

    buf = io.BytesIO()
    Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB").crop((0, 0, 192, 128)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_lossless_tier_serves_the_original_jpeg_bytes(server: str, archive: dict[str, Any]) -> None:
    """A lossless-tier archive is served as the original JPEG, byte for byte, as image/jpeg (for
    ``format=original``, ``format=jpeg`` or ``Accept: image/jpeg``), with an ETag that
    revalidates; ``format=png`` decodes that JPEG's pixels."""
    url, photo = f"{server}/objects/{archive['bucket']}/jpegs/photo.jpg", archive["photo"]
    for kw in ({"params": {"format": "original"}}, {"params": {"format": "jpeg"}}, {"headers": {"Accept": "image/jpeg"}}):
        r = get(url, timeout=60, **kw)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/jpeg"
        assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(photo).hexdigest()
        assert get(url, timeout=60, headers={"If-None-Match": r.headers["etag"], **kw.get("headers", {})},
                   params=kw.get("params")).status_code == 304
    r = get(url, params={"format": "png"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")),
                          np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")))


def test_formats_decode_to_the_right_size(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    for fmt, pil in [("png", "PNG"), ("jpeg", "JPEG"), ("jpg", "JPEG"), ("webp", "WEBP")]:
        r = get(f"{server}/objects/{b}/cats/a.png", params={"format": fmt}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == f"image/{pil.lower()}"
        img = Image.open(io.BytesIO(r.content))
        assert img.format == pil and img.size == (96, 64)
    for accept, pil in [("image/webp,image/png;q=0.9,*/*;q=0.1", "WEBP"), ("image/jpeg", "JPEG"),
                        ("image/avif;q=1, image/png;q=0.5", "PNG"), ("*/*", "PNG"), (None, "PNG")]:
        r = get(f"{server}/objects/{b}/cats/a.png", headers={"Accept": accept} if accept else {}, timeout=60)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == pil, (accept, r.text)
        assert r.headers["vary"] == "Accept"
    r = get(f"{server}/objects/{b}/alpha.png", timeout=60)  # alpha survives in PNG and WebP
    assert r.status_code == 200
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (64, 80) and img.mode == "RGBA"
    alpha = np.asarray(img)[..., 3]
    assert (alpha[:, :32] == 255).all() and (alpha[:, 32:] == 40).all()
    r = get(f"{server}/objects/{b}/alpha.png?format=webp", timeout=60)
    assert Image.open(io.BytesIO(r.content)).mode == "RGBA"


def test_objects_are_found_by_full_key_and_stale_archives_are_409(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    r = get(f"{server}/objects/{b}/dogs/b.png", timeout=60)  # container at cxa/b.png.cxa
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (80, 48)
    r = get(f"{server}/objects/{b}/stale.png", timeout=60)
    assert r.status_code == 409 and r.json()["code"] == "archive_stale", r.text


def test_etag_and_not_modified(server: str, archive: dict[str, Any]) -> None:
    url = f"{server}/objects/{archive['bucket']}/cats/a.png"
    r = get(url, params={"format": "png"}, timeout=60)
    etag = r.headers["etag"]
    assert etag == f'"{archive["sha"]}.png"'
    assert "immutable" in r.headers["cache-control"] and "max-age=" in r.headers["cache-control"]
    r2 = get(url, params={"format": "png"}, headers={"If-None-Match": etag}, timeout=60)
    assert r2.status_code == 304 and r2.content == b"" and r2.headers["etag"] == etag
    r3 = get(url, params={"format": "png"}, headers={"If-None-Match": f'"other", W/{etag}'}, timeout=60)
    assert r3.status_code == 304
    r4 = get(url, params={"format": "webp"}, headers={"If-None-Match": etag}, timeout=60)
    assert r4.status_code == 200 and r4.headers["etag"] != etag  # another format is another entity
    assert get(url, params={"format": "png"}, timeout=60).content == r.content  # deterministic


def test_unknown_keys_are_404(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    for path in [f"/objects/{b}/nope.png", f"/objects/{b}/cats/a.png.cxa", "/objects/no-such-bucket-xyz/a.png",
                 "/objects/Not_A_Bucket/a.png"]:
        r = get(server + path, timeout=30)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"] == "application/json" and r.json()["code"] == "not_found"


def test_urls_outside_the_api_get_json_problems(server: str) -> None:
    """A local-directory "bucket" (an absolute path) or a typo gets our JSON problem naming the
    URLs that exist, not FastAPI's bare {"detail": "Not Found"}; a wrong method likewise."""
    for path in ["/objects//srv/photos/a.png", "/object/media/a.png", "/"]:
        r = get(server + path, timeout=30)
        assert r.status_code == 404, (path, r.text)
        body = r.json()
        assert r.headers["content-type"] == "application/json" and body["code"] == "no_route", body
        assert "/objects/{bucket}/{key}" in body["message"] and "archiver restore" in body["message"]
    r = httpx.post(server + "/health", timeout=30)
    assert r.status_code == 405 and r.json()["code"] == "http_error" and r.json()["status"] == 405, r.text


def test_corrupt_containers_are_clear_4xx(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    r = get(f"{server}/objects/{b}/corrupt.png", timeout=60)  # the ledger's sha256 matches; decoding fails
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] and body["code"] != "internal_error" and body["message"]
    r = get(f"{server}/objects/{b}/tampered.png", timeout=60)  # ledger sha256 no longer matches
    assert r.status_code == 422 and r.json()["code"] == "checksum_mismatch", r.text
    r = get(f"{server}/objects/{b}/cats/a.png", params={"format": "gif"}, timeout=30)
    assert r.status_code == 400 and r.json()["code"] == "bad_format"
    r = get(f"{server}/objects/{b}/cats/a.png", headers={"Accept": "text/html"}, timeout=30)
    assert r.status_code == 406 and r.json()["code"] == "not_acceptable"


def test_concurrent_requests_are_bounded_not_refused(server: str, archive: dict[str, Any]) -> None:
    """Four requests at once queue for the decode slots (2) and all succeed. The token's own
    limits are another test's subject: the module's earlier tests spend this token's burst (20
    requests, refilled at 10/s) and, on a fast machine, spent it fast enough that the fourth
    request here was rate limited (429); so the bucket is given the time to refill first."""
    url = f"{server}/objects/{archive['bucket']}/cats/a.png"
    limits = ServerSettings()  # the server fixture runs on the defaults
    time.sleep(limits.token_burst / limits.token_rate_per_s + 0.5)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda f: get(url, params={"format": f}, timeout=120),
                                ["png", "jpeg", "webp", "png"]))
    assert [r.status_code for r in answers] == [200] * 4, [r.text[:200] for r in answers if r.status_code != 200]


def test_health(server: str) -> None:
    r = get(server + "/health", timeout=30)
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


# ---- authentication, scope and exposure (the subprocess server above) ---------------------------

def test_objects_need_a_valid_token(server: str, archive: dict[str, Any]) -> None:
    """No token, a malformed one, another scheme, a wrong secret for a real token id, a revoked
    token: all 401 with WWW-Authenticate, for a key that exists as for one that does not."""
    b, tokens = archive["bucket"], archive["tokens"]
    good = tokens["reader"]
    wrong_secret = good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")
    cases = [({}, "missing_token"), ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_token"),
             ({"Authorization": "Bearer"}, "missing_token"), ({"Authorization": "Bearer nonsense"}, "invalid_token"),
             ({"Authorization": f"Bearer {wrong_secret}"}, "invalid_token"),
             ({"Authorization": f"Bearer {tokens['revoked']}"}, "invalid_token")]
    for headers, code in cases:
        for path in [f"/objects/{b}/cats/a.png", f"/objects/{b}/nope.png"]:
            r = httpx.get(server + path, headers=headers, timeout=30)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.json()["code"] == code and r.headers["www-authenticate"].startswith("Bearer")
            assert good not in r.text and "cxa_" not in r.text
    r = httpx.get(f"{server}/objects/{b}/cats/a.png", headers={"authorization": f"bearer {good}"}, timeout=60)
    assert r.status_code == 200, r.text  # the scheme is case-insensitive


def test_revoking_takes_effect_on_the_next_request(server: str, archive: dict[str, Any]) -> None:
    from runtimes import session_factory as get_session_factory
    from archiver.tokens import create_token, revoke_token

    sf = get_session_factory(archive["env"].db_url)
    _, secret = create_token(sf, "short-lived", [archive["bucket"]])
    url = f"{server}/objects/{archive['bucket']}/cats/a.png"
    assert get(url, headers={"Authorization": f"Bearer {secret}"}, timeout=60).status_code == 200
    revoke_token(sf, "short-lived")
    r = get(url, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"


def test_out_of_scope_is_the_same_404_as_never_archived(server: str, archive: dict[str, Any]) -> None:
    """404, not 403, for a key outside the token's scope: its answer is the one a key that was
    never archived gets, so a token cannot learn what exists elsewhere."""
    b, cats = archive["bucket"], {"Authorization": f"Bearer {archive['tokens']['cats']}"}
    r = get(f"{server}/objects/{b}/cats/a.png", headers=cats, timeout=60)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (96, 64)
    outside = get(f"{server}/objects/{b}/alpha.png", headers=cats, timeout=30)  # archived, out of scope
    absent = get(f"{server}/objects/{b}/alphb.png", headers=cats, timeout=30)  # never archived, same length
    assert outside.status_code == absent.status_code == 404
    assert outside.json()["code"] == absent.json()["code"] == "not_found"
    assert outside.text.replace("alpha", "alphb") == absent.text
    assert set(outside.headers) == set(absent.headers)
    r = get(f"{server}/objects/{b}/cats-and-dogs.png", headers=cats, timeout=30)  # prefix is "cats/"
    assert r.status_code == 404


def test_a_bucket_never_archived_is_never_read(server: str, archive: dict[str, Any]) -> None:
    """The removed fallback served ``KEY.cxa`` from any readable bucket; now only the ledger
    counts, even for a token scoped to everything."""
    every = {"Authorization": f"Bearer {archive['tokens']['everything']}"}
    n = archive["never"]
    for key in ["secret/private.jpg", "secret/private.jpg.cxa"]:
        r = get(f"{server}/objects/{n}/{key}", headers=every, timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
    r = get(f"{server}/objects/{archive['bucket']}/cats/a.png", headers=every, timeout=60)
    assert r.status_code == 200


def test_if_none_match_star_does_not_reveal_keys(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    star = {"If-None-Match": "*"}
    for key in ["cats/a.png", "nope.png"]:  # without a token: 401 whether it exists or not
        r = httpx.get(f"{server}/objects/{b}/{key}", headers=star, timeout=30)
        assert r.status_code == 401 and r.json()["code"] == "missing_token"
    cats = {**star, "Authorization": f"Bearer {archive['tokens']['cats']}"}
    outside = get(f"{server}/objects/{b}/alpha.png", headers=cats, timeout=30)
    absent = get(f"{server}/objects/{b}/alphb.png", headers=cats, timeout=30)
    assert outside.status_code == absent.status_code == 404
    assert outside.text.replace("alpha", "alphb") == absent.text
    r = get(f"{server}/objects/{b}/cats/a.png", headers=cats, timeout=30)  # its own key: HTTP semantics
    assert r.status_code == 304


def test_long_keys_are_400_and_never_echoed(server: str, archive: dict[str, Any]) -> None:
    b = archive["bucket"]
    for key in ["k" * 1025, "é" * 513]:  # bytes, not characters, count
        r = get(f"{server}/objects/{b}/{key}", timeout=30)
        assert r.status_code == 400 and r.json()["code"] == "key_too_long", r.text[:300]
        assert key[:40] not in r.text and len(r.content) < 400
    # the 70,000-character key: longer than httpx allows in a URL, so over a plain socket
    for headers, status in [(AUTH, 400), ({}, 401)]:
        code, body = raw_http(server, f"/objects/{b}/{'x' * 70_000}", headers)
        assert code == status and b"xxxxxxxxxx" not in body and len(body) < 400, (code, body[:300])
    code, body = raw_http(server, "/" + "y" * 70_000, {})  # a URL outside the API: quoted briefly only
    assert code == 404 and b"no_route" in body and len(body) < 800, (code, body[:300])
    r = get(f"{server}/objects/{b}/{'k' * 1024}", timeout=30)  # at the limit: an ordinary lookup
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert len(r.content) < 600  # the message quotes the start of the key, not all of it


def raw_http(base: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """One HTTP/1.1 GET over a plain socket: (status, body) (the response is read to the close)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_docs_are_off_and_health_is_open(server: str, archive: dict[str, Any]) -> None:
    for path in ["/docs", "/redoc", "/openapi.json"]:
        r = httpx.get(server + path, timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "no_route", (path, r.text)
    r = httpx.get(server + "/health", timeout=30)  # no token needed
    assert r.status_code == 200 and r.json()["status"] == "ok"
    text = r.text
    for secret in archive["tokens"].values():
        assert secret not in text
    for name in archive["tokens"]:
        assert f'"{name}"' not in text
    assert archive["env"].db_url not in text and "testing" not in text


# ---- limits and abandoned work (an in-process uvicorn on a real socket, so that the decode can
# be held at a known point: decode_container is wrapped with a gate) -----------------------------

class Gate:
    """Holds the decode of one container (by sha256) until released; counts every decode."""

    def __init__(self, hold_sha: str) -> None:
        import threading

        from archiver import restore

        self.hold_sha, self.real = hold_sha, restore.decode_container
        self.started, self.release = threading.Event(), threading.Event()
        self.calls: list[tuple[str, int]] = []  # (container sha256, max_pixels) per decode

    def __call__(self, data: bytes, codecs: Any, device: str | None = None, max_pixels: int = 400_000_000,
                 **kw: Any) -> Any:
        sha = hashlib.sha256(data).hexdigest()
        self.calls.append((sha, max_pixels))
        if sha == self.hold_sha:
            self.started.set()
            assert self.release.wait(120), "the test never released the gate"
        return self.real(data, codecs, device, max_pixels=max_pixels, **kw)


@pytest.fixture
def gate(archive: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """Holds decodes of alpha.png's container; cats/a.png decodes freely."""
    from archiver import restore
    from archiver.db.models import ArchivedObject
    from runtimes import session_factory as get_session_factory
    from sqlalchemy import select

    with get_session_factory(archive["env"].db_url)() as s:
        sha = s.execute(select(ArchivedObject.compressed_sha256).where(
            ArchivedObject.bucket == archive["bucket"], ArchivedObject.key == "alpha.png")).scalar_one()
    g = Gate(sha)
    monkeypatch.setattr(restore, "decode_container", g)
    yield g
    g.release.set()


@pytest.fixture
def inproc(archive: dict[str, Any]) -> Iterator[Any]:
    """``inproc(**settings)`` starts ``create_app`` under uvicorn in a thread on a free port and
    returns (base URL, app); the model is already cached in this process, so starting is cheap."""
    import threading

    import uvicorn

    from archiver.server import create_app

    started: list[tuple[Any, threading.Thread]] = []

    def start(**kw: Any) -> tuple[str, Any]:
        app = create_app(archive["env"].settings(**kw))
        port = free_port()
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        t = threading.Thread(target=srv.run, daemon=True)
        t.start()
        started.append((srv, t))
        deadline = time.monotonic() + 60
        while not srv.started:
            assert t.is_alive() and time.monotonic() < deadline, "in-process server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}", app

    yield start
    for srv, t in started:
        srv.should_exit = True
    for srv, t in started:
        t.join(30)


def raw_get(base: str, path: str, token: str) -> socket.socket:
    """Send a GET on a plain socket and return it unread (to hang up on the server later)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return sock


def wait_until(cond: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_disconnect_mid_decode_frees_the_slot(archive: dict[str, Any], gate: Gate, inproc: Any) -> None:
    """One decode slot. A client starts a decode and hangs up: the next request is served while
    the abandoned decode is still held (it does not wait for it), and its result is never sent."""
    base, app = inproc(server={"max_concurrent_decodes": 1})
    token, b = archive["tokens"]["reader"], archive["bucket"]
    sock = raw_get(base, f"/objects/{b}/alpha.png", token)
    assert gate.started.wait(60)
    sock.close()
    wait_until(lambda: app.state.decode_slots.free == 1)
    t0 = time.monotonic()
    r = httpx.get(f"{base}/objects/{b}/cats/a.png", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (96, 64), r.text
    assert not gate.release.is_set() and app.state.decode_slots.abandoned == 1
    assert time.monotonic() - t0 < 60


def test_a_disconnect_while_queued_gives_up_the_place(archive: dict[str, Any], gate: Gate, inproc: Any) -> None:
    """A request waiting for the only slot, whose client leaves, never decodes."""
    base, app = inproc(server={"max_concurrent_decodes": 1})
    token, b = archive["tokens"]["reader"], archive["bucket"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(httpx.get, f"{base}/objects/{b}/alpha.png",
                           headers={"Authorization": f"Bearer {token}"}, timeout=120)
        assert gate.started.wait(60)
        sock = raw_get(base, f"/objects/{b}/cats/a.png?format=webp", token)
        time.sleep(1.0)  # it is now waiting for the slot
        sock.close()
        time.sleep(1.0)  # the server notices and leaves the queue
        gate.release.set()
        assert held.result().status_code == 200
    wait_until(lambda: app.state.decode_slots.free == 1)
    assert [sha for sha, _ in gate.calls] == [gate.hold_sha]  # the queued request never decoded


def test_decode_time_budget(archive: dict[str, Any], gate: Gate, inproc: Any) -> None:
    base, app = inproc(server={"max_concurrent_decodes": 1, "decode_timeout_s": 1.0})
    auth, b = {"Authorization": f"Bearer {archive['tokens']['reader']}"}, archive["bucket"]
    t0 = time.monotonic()
    r = httpx.get(f"{base}/objects/{b}/alpha.png", headers=auth, timeout=60)
    assert r.status_code == 503 and r.json()["code"] == "decode_timeout", r.text
    assert int(r.headers["retry-after"]) >= 1 and time.monotonic() - t0 < 30
    r = httpx.get(f"{base}/objects/{b}/cats/a.png", headers=auth, timeout=60)  # the slot was released
    assert r.status_code == 200, r.text


def test_burst_beyond_the_rate_limit_is_429(archive: dict[str, Any], inproc: Any) -> None:
    base, _ = inproc(server={"token_rate_per_s": 0.2, "token_burst": 3})
    b, tokens = archive["bucket"], archive["tokens"]
    codes = [httpx.get(f"{base}/objects/{b}/nope-{i}.png", headers={"Authorization": f"Bearer {tokens['reader']}"},
                       timeout=30) for i in range(5)]
    assert [r.status_code for r in codes] == [404, 404, 404, 429, 429]
    assert codes[3].json()["code"] == "rate_limited" and 1 <= int(codes[3].headers["retry-after"]) <= 5
    r = httpx.get(f"{base}/objects/{b}/cats/a.png", headers={"Authorization": f"Bearer {tokens['everything']}"},
                  timeout=60)  # another token has its own budget
    assert r.status_code == 200
    r = httpx.get(f"{base}/objects/{b}/nope.png", timeout=30)  # no token: 401 comes before the limit
    assert r.status_code == 401


def test_per_token_concurrency_limit_is_429(archive: dict[str, Any], gate: Gate, inproc: Any) -> None:
    base, _ = inproc(server={"token_max_concurrent": 1})
    b, tokens = archive["bucket"], archive["tokens"]
    auth = {"Authorization": f"Bearer {tokens['reader']}"}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(httpx.get, f"{base}/objects/{b}/alpha.png", headers=auth, timeout=120)
        assert gate.started.wait(60)
        r = httpx.get(f"{base}/objects/{b}/cats/a.png", headers=auth, timeout=30)
        assert r.status_code == 429 and r.json()["code"] == "too_many_concurrent" and r.headers["retry-after"]
        r = httpx.get(f"{base}/objects/{b}/cats/a.png", headers={"Authorization": f"Bearer {tokens['everything']}"},
                      timeout=60)
        assert r.status_code == 200
        gate.release.set()
        assert held.result().status_code == 200
    assert httpx.get(f"{base}/objects/{b}/cats/a.png", headers=auth, timeout=60).status_code == 200


def test_401_comes_before_any_lookup_and_max_pixels_is_honoured(archive: dict[str, Any], gate: Gate, inproc: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from archiver import server as server_mod

    lookups: list[str] = []
    real_locate = server_mod.locate
    monkeypatch.setattr(server_mod, "locate", lambda st, sf, bucket, key: lookups.append(key) or
                        real_locate(st, sf, bucket, key))
    base, _ = inproc(max_pixels=5000)  # cats/a.png is 96x64 = 6,144 pixels
    b = archive["bucket"]
    assert httpx.get(f"{base}/objects/{b}/cats/a.png", timeout=30).status_code == 401
    assert httpx.get(f"{base}/objects/{b}/cats/a.png", headers={"Authorization": "Bearer cxa_0"},
                     timeout=30).status_code == 401
    assert lookups == [] and gate.calls == []
    r = httpx.get(f"{base}/objects/{b}/cats/a.png", headers={"Authorization": f"Bearer {archive['tokens']['reader']}"},
                  timeout=60)
    assert r.status_code == 422 and r.json()["code"] != "internal_error", r.text
    assert lookups == ["cats/a.png"] and [mp for _, mp in gate.calls] == [5000]


def test_docs_can_be_enabled(inproc: Any) -> None:
    base, _ = inproc(server={"enable_docs": True})
    assert httpx.get(base + "/docs", timeout=30).status_code == 200
    assert "/objects/{bucket}/{key}" in httpx.get(base + "/openapi.json", timeout=30).text


def test_logs_name_tokens_never_their_secrets(archive: dict[str, Any], inproc: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="archiver.server")
    base, _ = inproc()
    b, tokens = archive["bucket"], archive["tokens"]
    assert httpx.get(f"{base}/objects/{b}/cats/a.png", headers={"Authorization": f"Bearer {tokens['reader']}"},
                     timeout=60).status_code == 200
    assert httpx.get(f"{base}/objects/{b}/cats/a.png", headers={"Authorization": f"Bearer {tokens['revoked']}"},
                     timeout=60).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "archiver.server"]
    assert any("token reader" in m and "cats/a.png" in m and "200" in m for m in lines), lines
    assert any("invalid_token" in m for m in lines), lines
    for token in tokens.values():
        # cxa_<id>_<secret>: the secret itself may hold "_", so split off only the first two fields.
        secret = token.split("_", 2)[2]
        assert len(secret) == 43
        assert not any(token in m or secret in m for m in lines)


# ---- metrics ---------------------------------------------------------------------------------------

OBJECTS_ROUTE = "/objects/{bucket}/{key:path}"


def scrape(base: str, token: str | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def test_metrics_move_with_real_requests(archive: dict[str, Any], gate: Gate, inproc: Any) -> None:
    """Requests counted by route template and status (401, 404, 429, 503 included; a URL that
    matches no route is ``no_route``, never its path), by token name once authenticated; decode
    latency and slot wait observed once per decode; nothing left in flight; /metrics itself
    needs a token."""
    base, app = inproc(server={"token_rate_per_s": 0.01, "token_burst": 4, "max_concurrent_decodes": 1,
                               "slot_wait_timeout_s": 1.0})
    b, tokens = archive["bucket"], archive["tokens"]

    def req(path: str, token: str | None) -> int:
        return httpx.get(base + path, headers={"Authorization": f"Bearer {tokens[token]}"} if token else {},
                         timeout=60).status_code

    before = scrape(base, tokens["everything"])
    assert req(f"/objects/{b}/cats/a.png", None) == 401
    assert req(f"/no/such/{uuid.uuid4().hex}", None) == 404
    assert [req(f"/objects/{b}/{p}", "reader") for p in ("cats/a.png", "nope1.png", "nope2.png", "nope3.png",
                                                           "nope4.png")] == [200, 404, 404, 404, 429]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(req, f"/objects/{b}/alpha.png", "everything")
        assert gate.started.wait(60)
        assert req(f"/objects/{b}/cats/a.png", "cats") == 503  # server_busy: the only slot is held
        gate.release.set()
        assert held.result() == 200
    assert req("/metrics", None) == 401
    after = scrape(base, tokens["everything"])

    def delta(name: str, **labels: str) -> float:
        k = (name, tuple(sorted(labels.items())))
        return after.get(k, 0.0) - before.get(k, 0.0)

    http = "archiver_http_requests_total"
    assert {s: delta(http, route=OBJECTS_ROUTE, method="GET", status=s) for s in ("200", "401", "404", "429", "503")} \
        == {"200": 2, "401": 1, "404": 3, "429": 1, "503": 1}
    assert delta(http, route="no_route", method="GET", status="404") == 1
    assert not any("no/such" in dict(labels).get("route", "") for _, labels in after)
    assert delta(http, route="/metrics", method="GET", status="401") == 1
    assert delta(http, route="/metrics", method="GET", status="200") == 1  # the first scrape
    tok = "archiver_http_token_requests_total"
    assert [delta(tok, token="reader", status=s) for s in ("200", "404", "429")] == [1, 3, 1]
    assert delta(tok, token="cats", status="503") == 1 and delta(tok, token="everything", status="200") == 2
    assert delta("archiver_server_decode_seconds_count") == 2  # the refused request never decoded
    assert delta("archiver_server_slot_wait_seconds_count") == 2
    assert delta("archiver_server_decode_seconds_sum") > 0
    assert after[("archiver_server_decodes_in_flight", ())] == 0
    assert not any(secret in repr(after) for secret in tokens.values())


def test_metrics_can_be_open_or_off(inproc: Any) -> None:
    base, _ = inproc(server={"metrics": "open"})
    assert "archiver_http_requests_total" in httpx.get(base + "/metrics", timeout=30).text
    base, _ = inproc(server={"metrics": "off"})
    r = httpx.get(base + "/metrics", timeout=30)
    assert r.status_code == 404 and r.json()["code"] == "no_route"
# --- issue 27: smaller leaks -----------------------------------------------------------------------
def test_access_log_cuts_a_long_key_even_on_a_401(archive: dict[str, Any], inproc: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn's access log echoed a 60 KB key, even for a refused request: it is off, and the
    app's own access line cuts the path to 120 characters."""
    import logging

    caplog.set_level(logging.INFO)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    base, _ = inproc()
    key = "k" * 60_000
    r = httpx.get(f"{base}/objects/{archive['bucket']}/{key}", timeout=60)
    assert r.status_code == 401
    assert not [rec for rec in caplog.records if rec.name == "uvicorn.access"]
    mine = [rec.getMessage() for rec in caplog.records if rec.name == "archiver.access"]
    assert any("GET" in m and "-> 401" in m and "characters)" in m and len(m) < 400 for m in mine), mine
    served = [rec for rec in caplog.records if rec.name.startswith(("archiver", "uvicorn"))]  # not httpx's own
    assert served and all(len(rec.getMessage()) < 400 for rec in served), [rec.getMessage()[:300] for rec in served]


def test_head_answers_like_get_without_a_body(archive: dict[str, Any], inproc: Any) -> None:
    base, _ = inproc()
    b, token = archive["bucket"], archive["tokens"]["reader"]
    auth = {"Authorization": f"Bearer {token}"}
    got = httpx.get(f"{base}/objects/{b}/cats/a.png", headers=auth, timeout=60)
    head = httpx.head(f"{base}/objects/{b}/cats/a.png", headers=auth, timeout=60)
    assert got.status_code == head.status_code == 200 and head.content == b""
    for h in ("content-type", "etag", "content-length", "cache-control"):
        assert head.headers[h] == got.headers[h], h
    assert int(head.headers["content-length"]) == len(got.content) > 0
    missing = httpx.head(f"{base}/objects/{b}/cats/none.png", headers=auth, timeout=60)
    assert missing.status_code == 404 and missing.content == b""
    assert httpx.head(f"{base}/objects/{b}/cats/a.png", timeout=60).status_code == 401
    assert httpx.head(f"{base}/objects/{b}/cats/a.png", timeout=60, headers={
        **auth, "If-None-Match": got.headers["etag"]}).status_code == 304


def test_a_new_token_reaches_only_a_terminal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Under systemd or docker stderr is a journal: the secret goes to a 0600 file, the log gets its path."""
    import logging
    import stat as stat_mod
    from types import SimpleNamespace

    from archiver.server import announce_token

    caplog.set_level(logging.INFO)
    info, secret = SimpleNamespace(name="first"), "cxa_abc_SECRETSECRET"
    journal = io.StringIO()
    announce_token(info, secret, "http://127.0.0.1:8080", out=journal, token_dir=tmp_path / "t")
    path = tmp_path / "t" / "first-token-first"
    assert journal.getvalue() == "" and path.read_text().strip() == secret
    assert stat_mod.S_IMODE(path.stat().st_mode) == 0o600 and stat_mod.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert any(str(path) in r.getMessage() for r in caplog.records)
    assert not any(secret in r.getMessage() or "SECRETSECRET" in r.getMessage() for r in caplog.records)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    announce_token(info, secret, "http://127.0.0.1:8080", out=tty, token_dir=tmp_path / "u")
    assert secret in tty.getvalue() and not (tmp_path / "u").exists()
