"""On-demand retrieval over HTTP: ``archiver serve`` (FastAPI + uvicorn).

``GET /objects/{bucket}/{key}`` returns the archived image as PNG, JPEG or WebP (``?format=`` or
the ``Accept`` header; ``original`` re-creates the original's format where possible):

* the container is found through the ledger (``archived_objects``: the row for the original's
  current ETag while the original exists, ``409 archive_stale`` if it changed since; the newest
  row once it is deleted); without a ledger row, ``KEY.cxa`` beside the key in ``s3://bucket``
  is tried;
* the container's sha256 is checked against the ledger before decoding, and decoding runs in
  a thread pool under an ``asyncio.Semaphore`` (``[server] max_concurrent_decodes``), so a burst
  of requests queues instead of oversubscribing the CPU/GPU;
* the ``ETag`` is the container sha256 plus the format (the bitstream never changes for a given
  sha256, and decoding is deterministic), so responses are ``Cache-Control: immutable`` and a
  matching ``If-None-Match`` gets ``304`` without fetching or decoding anything;
* errors are JSON ``{"code": ..., "message": ...}``: 404 unknown key, 422 corrupt container
  (``ContainerError`` codes), 400/406 bad format, 502/503 storage trouble; a URL that matches no
  route is 404 ``no_route`` and a wrong method 405 ``http_error``, in the same form.

``GET /health`` reports the model (id, device, loaded), database and broker reachability; it
answers 503 when the model or the database is unavailable (or the broker, with
``[server] require_broker``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select, text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .db.models import ArchivedObject
from .errors import ArchiverError, ContainerError, StorageError, UnknownModelError
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
ALIASES = {"jpg": "jpeg", "png": "png", "jpeg": "jpeg", "webp": "webp", "original": "original"}
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class HTTPProblem(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def problem(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "status": status}, status_code=status, headers=headers)


# ---- content negotiation ------------------------------------------------------------------------

def choose_format(query: str | None, accept: str | None) -> str:
    """``?format=`` wins; else the best supported type in ``Accept``; else PNG."""
    if query:
        fmt = ALIASES.get(query.strip().lower())
        if fmt is None:
            raise HTTPProblem(400, "bad_format", f"unsupported format {query!r}; use png, jpeg, webp or original")
        return fmt
    if not accept or not accept.strip():
        return "png"
    entries: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if media:
            entries.append((q, -i, media))
    by_type = {v: k for k, v in FORMATS.items()}
    for q, _, media in sorted(entries, reverse=True):
        if q <= 0:
            continue
        if media in by_type:
            return by_type[media]
        if media in ("image/*", "*/*"):
            return "png"
    raise HTTPProblem(406, "not_acceptable", f"none of {accept!r} can be produced; available: "
                      + ", ".join(FORMATS.values()))


def etag_for(sha256: str, fmt: str) -> str:
    return f'"{sha256}.{fmt}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return etag in tags


# ---- finding and decoding containers ----------------------------------------------------------

@dataclass
class Located:
    url: str  # the container's object URL
    sha256: str | None  # from the ledger or the object's metadata; None if unknown


def locate(st: Settings, sf: Any, bucket: str, key: str) -> Located | None:
    """The container for ``bucket``/``key``: from the ledger, else ``KEY<suffix>`` beside it.

    The ledger may hold several versions of an object. While the original still exists (an
    archive job without ``--replace``), the row for its current ETag is served; if none matches,
    the original changed after it was archived and serving the old archive as "the object" would
    be wrong, so ``409 archive_stale``. Once the original is gone, the newest row is served.
    """
    from .jobs import get_store

    with sf() as s:
        rows = list(s.execute(select(ArchivedObject).where(ArchivedObject.bucket == bucket, ArchivedObject.key == key)
                              .order_by(ArchivedObject.archived_at.desc(), ArchivedObject.id.desc())).scalars())
    if rows:
        row = rows[0]
        if BUCKET_RE.match(bucket) and not all(r.original_deleted for r in rows):
            try:
                current = get_store(f"s3://{bucket}", st).head(key)
            except StorageError as e:
                if e.code not in ("no_such_bucket", "access_denied"):
                    raise
                current = None  # the server may be allowed to read archives only: serve the newest
            if current is not None:
                match = next((r for r in rows if r.etag == current.etag), None)
                if match is None:
                    raise HTTPProblem(409, "archive_stale",
                                      f"{key!r} in {bucket!r} changed after it was archived (ETag {current.etag}); "
                                      "the archive holds an older version; read the original instead")
                row = match
        return Located(row.dest_url, row.compressed_sha256 or None)
    if key.endswith(st.container_suffix) or not BUCKET_RE.match(bucket):
        return None
    store = get_store(f"s3://{bucket}", st)
    ckey = key + st.container_suffix
    try:
        info = store.head(ckey)
    except StorageError as e:
        if e.code in ("no_such_bucket", "access_denied"):
            return None
        raise
    if info is None:
        return None
    return Located(store.url_for(ckey), info.sha256)


def fetch_decode_render(st: Settings, loc: Located, fmt: str) -> tuple[bytes, str, str]:
    """Fetch, check, decode and encode for delivery; returns (body, format used, container sha256)."""
    from .jobs import get_store, split_object_url
    from .restore import decode_container, render

    store_url, ckey = split_object_url(loc.url)
    data = get_store(store_url, st).get(ckey, max_bytes=int(st.max_object_bytes))
    sha = hashlib.sha256(data).hexdigest()
    if loc.sha256 and sha != loc.sha256:
        raise ContainerError(f"stored container {loc.url} does not match the sha256 recorded when it was "
                             f"verified ({sha[:16]}... != {loc.sha256[:16]}...)", code="checksum_mismatch")
    decoded = decode_container(data, st.device, settings=st)
    try:
        body, used = render(decoded, fmt)
    except ValueError as e:  # e.g. "original" for a format we cannot write
        raise HTTPProblem(406, "format_unavailable", str(e)) from None
    return body, used, sha


def _error_response(e: BaseException) -> JSONResponse:
    from .storage import ObjectNotFound

    if isinstance(e, HTTPProblem):
        return problem(e.status, e.code, e.message, e.headers)
    if isinstance(e, (ContainerError, UnknownModelError)):
        return problem(422, e.code, str(e))
    if isinstance(e, ObjectNotFound):
        return problem(404, "container_missing", f"the archived container is missing from storage: {e}")
    if isinstance(e, StorageError):
        return problem(503 if e.transient else 502, e.code, str(e))
    if isinstance(e, ArchiverError):
        return problem(400 if e.code == "bad_format" else 500, e.code, str(e))
    log.exception("unexpected error", exc_info=e)
    return problem(500, "internal_error", f"{type(e).__name__}: {e}")


# ---- health -------------------------------------------------------------------------------------

def check_database(sf: Any) -> tuple[bool, str | None]:
    try:
        with sf() as s:
            s.execute(text("SELECT 1"))
        return True, None
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return False, f"{type(e).__name__}: {e}".splitlines()[0]


def check_broker(url: str, timeout: float = 2.0) -> tuple[bool, str | None]:
    try:
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()
        else:
            from kombu import Connection

            with Connection(url, connect_timeout=timeout) as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
        return True, None
    except Exception as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {e}".splitlines()[0]


# ---- the app ------------------------------------------------------------------------------------

def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (``uvicorn --factory archiver.server:create_app``)."""
    st = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from .jobs import get_session_factory

        app.state.settings = st
        app.state.decode_slots = asyncio.Semaphore(st.server.max_concurrent_decodes)
        try:
            app.state.sf = await run_in_threadpool(lambda: get_session_factory(st.database_url, migrate=True))
        except Exception as e:  # noqa: BLE001 - the database may come back later; /health reports it
            log.error("database not ready at start (%s); serving anyway", e)
            app.state.sf = get_session_factory(st.database_url)
        app.state.codec = None
        app.state.model_error = None
        try:  # load the model before serving: the first request should not pay for it
            from .codec.api import Codec, apply_torch_threads

            apply_torch_threads(st.torch_threads)
            app.state.codec = await run_in_threadpool(lambda: Codec.cached(st.model_id, st.device, settings=st))
        except Exception as e:  # reported by /health; requests for other models may still work
            log.exception("could not load model %s", st.model_id)
            app.state.model_error = f"{type(e).__name__}: {e}"
        yield

    app = FastAPI(title="archiver retrieval", version=_version(), lifespan=lifespan)
    cache_control = f"public, max-age={st.server.cache_max_age}, immutable"

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Requests that match no route get the same JSON problems as the rest of the API (not
        FastAPI's bare ``{"detail": ...}``), and a 404 says which URLs exist: a likely case is a
        local-directory archive, whose "bucket" is a path that cannot be one URL segment."""
        if exc.status_code == 404:
            return problem(404, "no_route",
                           f"no endpoint at {request.url.path!r}: use GET /objects/{{bucket}}/{{key}} with an S3 "
                           "bucket name, or GET /health (archives in a local directory are read with "
                           "`archiver restore DIR --to OUT`)")
        return problem(exc.status_code, "http_error", str(exc.detail), headers=getattr(exc, "headers", None))

    @app.get("/objects/{bucket}/{key:path}")
    async def get_object(bucket: str, key: str, request: Request, format: str | None = None) -> Response:
        try:
            fmt = choose_format(format, request.headers.get("accept"))
            loc = await run_in_threadpool(locate, st, app.state.sf, bucket, key)
            if loc is None:
                return problem(404, "not_found", f"no archived object {key!r} in {bucket!r}")
            headers = {"Cache-Control": cache_control, "Vary": "Accept"}
            if loc.sha256:
                headers["ETag"] = etag_for(loc.sha256, fmt)
                if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
                    return Response(status_code=304, headers=headers)
            async with app.state.decode_slots:
                body, used, sha = await run_in_threadpool(fetch_decode_render, st, loc, fmt)
            headers["ETag"] = etag_for(sha, fmt)
            return Response(body, media_type=FORMATS[used], headers=headers)
        except Exception as e:  # noqa: BLE001 - every error becomes a JSON problem
            return _error_response(e)

    @app.get("/health")
    async def health() -> JSONResponse:
        db_ok, db_err = await run_in_threadpool(check_database, app.state.sf)
        br_ok, br_err = await run_in_threadpool(check_broker, st.broker_url)
        codec = app.state.codec
        model = {"id": st.model_id, "loaded": codec is not None,
                 "device": codec.device_name if codec is not None else st.device}
        if app.state.model_error:
            model["error"] = app.state.model_error
        ok = codec is not None and db_ok and (br_ok or not st.server.require_broker)
        body = {
            "status": "ok" if ok else "unavailable",
            "model": model,
            "database": {"reachable": db_ok, **({"error": db_err} if db_err else {})},
            "broker": {"reachable": br_ok, **({"error": br_err} if br_err else {})},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    return app


def _version() -> str:
    from . import __version__

    return __version__


def serve(host: str | None = None, port: int | None = None, settings: Settings | None = None) -> None:
    """Run the endpoint with uvicorn (one process; decodes are bounded by the semaphore)."""
    import uvicorn

    st = settings or load_settings()
    uvicorn.run(create_app(st), host=host or st.server.host, port=port or st.server.port,
                log_level=st.log_level.lower(), proxy_headers=True)
