"""On-demand retrieval over HTTP: ``archiver serve`` (FastAPI + uvicorn).

``GET /objects/{bucket}/{key}`` returns the archived image as PNG, JPEG or WebP (``?format=`` or
the ``Accept`` header; ``original`` re-creates the original's format where possible):

* it needs ``Authorization: Bearer <token>`` (:mod:`archiver.tokens`): without a valid token the
  answer is 401, decided before any storage or ledger lookup; a key outside the token's scope
  gets exactly the 404 ``not_found`` that a key never archived gets (we chose 404 over 403 so
  that a token cannot probe which keys exist outside its scope);
* per token, a rate limit and a cap on requests in flight answer 429 with ``Retry-After``
  (:mod:`archiver.server_limits`); keys over S3's 1,024 bytes are 400 ``key_too_long``, and no
  error message repeats more than the first characters of a key;
* only what the ledger says this system archived is served (``archived_objects``: the row for
  the original's current ETag while the original exists, ``409 archive_stale`` if it changed
  since; the newest row once it is deleted); there is no lookup in arbitrary buckets;
* the container's sha256 is checked against the ledger before decoding, and decoding runs in
  a bounded thread pool under a semaphore (``[server] max_concurrent_decodes``), so a burst of
  requests queues instead of oversubscribing the CPU/GPU; a client that disconnects while
  waiting or decoding frees its slot at once, a wait longer than ``slot_wait_timeout_s`` is 503
  ``server_busy`` and a decode longer than ``decode_timeout_s`` is 503 ``decode_timeout``;
  decoding honours ``max_pixels``;
* the ``ETag`` is the container sha256 plus the format (the bitstream never changes for a given
  sha256, and decoding is deterministic), so responses are ``Cache-Control: immutable`` and a
  matching ``If-None-Match`` gets ``304`` without fetching or decoding anything;
* errors are JSON ``{"code": ..., "message": ...}``: 404 unknown key, 422 corrupt container
  (``ContainerError`` codes), 400/406 bad format, 502/503 storage trouble; a URL that matches no
  route is 404 ``no_route`` and a wrong method 405 ``http_error``, in the same form.

``GET /health`` reports the model (id, device, loaded), database and broker reachability; it
answers 503 when the model or the database is unavailable (or the broker, with
``[server] require_broker``). It needs no token and shows no secrets, URLs or token names.
``/docs``, ``/redoc`` and ``/openapi.json`` exist only with ``[server] enable_docs = true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import re
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select, text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import telemetry
from .db.models import ArchivedObject
from .errors import ArchiverError, ContainerError, StorageError, UnknownModelError
from .server_limits import ClientGone, DecodeSlots, Refused, TokenLimiter, retry_after_header, wait_for_disconnect
from .runtime import Runtime
from .settings import Settings, load_settings
from .tokens import MAX_KEY_BYTES, TokenInfo, authenticate, bearer, count_active, create_token

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)
access = logging.getLogger("archiver.access")  # one line per request (uvicorn's access log is off)

FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
ALIASES = {"jpg": "jpeg", "png": "png", "jpeg": "jpeg", "webp": "webp", "original": "original"}
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class HTTPProblem(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


MAX_MESSAGE_CHARS = 600  # no error body grows with what the client sent
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="archiver"'}


def problem(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    return JSONResponse({"code": code, "message": message, "status": status}, status_code=status, headers=headers)


def shown(text: str, limit: int = 120) -> str:
    """``text`` as it may appear in a message or log line: quoted, and cut after ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def not_found(bucket: str, key: str) -> JSONResponse:
    """The one answer for "never archived", "not in the ledger" and "outside your token's scope"."""
    return problem(404, "not_found", f"no archived object {shown(key)} in {shown(bucket, 63)}")


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


def locate(rt: Runtime, sf: Any, bucket: str, key: str) -> Located | None:
    """The container for ``bucket``/``key``, from the ledger only (``None`` if it has no row):
    a bucket this system never archived is never read.

    The ledger may hold several versions of an object. While the original still exists (an
    archive job without ``--replace``), the row for its current ETag is served; if none matches,
    the original changed after it was archived and serving the old archive as "the object" would
    be wrong, so ``409 archive_stale``. Once the original is gone, the newest row is served.
    """
    with sf() as s:
        rows = list(s.execute(select(ArchivedObject).where(ArchivedObject.bucket == bucket, ArchivedObject.key == key)
                              .order_by(ArchivedObject.archived_at.desc(), ArchivedObject.id.desc())).scalars())
    if rows:
        row = rows[0]
        if BUCKET_RE.match(bucket) and not all(r.original_deleted for r in rows):
            try:
                current = rt.store(f"s3://{bucket}").head(key)
            except StorageError as e:
                if e.code not in ("no_such_bucket", "access_denied"):
                    raise
                current = None  # the server may be allowed to read archives only: serve the newest
            if current is not None:
                match = next((r for r in rows if r.etag == current.etag), None)
                if match is None:
                    raise HTTPProblem(409, "archive_stale",
                                      f"{shown(key)} in {shown(bucket)} changed after it was archived (ETag "
                                      f"{current.etag}); the archive holds an older version; read the original instead")
                row = match
        return Located(row.dest_url, row.compressed_sha256 or None)
    return None


def fetch_decode_render(rt: Runtime, loc: Located, fmt: str) -> tuple[bytes, str, str]:
    """Fetch, check, decode and encode for delivery; returns (body, format used, container sha256)."""
    from .storage import split_object_url
    from .restore import restore_image

    store_url, ckey = split_object_url(loc.url)
    st = rt.settings
    data = rt.store(store_url).get(ckey, max_bytes=int(st.max_object_bytes))
    sha = hashlib.sha256(data).hexdigest()
    if loc.sha256 and sha != loc.sha256:
        raise ContainerError(f"stored container {loc.url} does not match the sha256 recorded when it was "
                             f"verified ({sha[:16]}... != {loc.sha256[:16]}...)", code="checksum_mismatch")
    # the codec's own budget stops a runaway decode between slices, so an abandoned one frees the CPU too;
    # a lossless-tier archive (JPEG XL) gives back the original JPEG's exact bytes for original/jpeg
    try:
        body, used = restore_image(data, rt, fmt, max_pixels=st.max_pixels, time_budget_s=st.server.decode_timeout_s)
    except ValueError as e:  # e.g. "original" for a format we cannot write
        raise HTTPProblem(406, "format_unavailable", str(e)) from None
    return body, used, sha


def _error_response(e: BaseException) -> JSONResponse:
    from .storage import ObjectNotFound

    if isinstance(e, HTTPProblem):
        return problem(e.status, e.code, e.message, e.headers)
    if isinstance(e, ContainerError) and e.code in ("decode_timeout", "out_of_memory"):
        return problem(503, e.code, str(e))  # the server's limits, not a bad container
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


# ---- authentication and limits ------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine. Names other than
    ``localhost`` count as public: what they resolve to can change."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_tokens_for_bind(rt: Runtime, host: str) -> tuple[TokenInfo, str] | None:
    """Secure by default, before the server binds anything: a public address with no active
    token is refused (:class:`ConfigError`); loopback with none gets a fresh token scoped to
    everything, returned here once (as notebook servers do) for the caller to show."""
    from .errors import ConfigError

    sf = rt.session_factory(migrate=True)
    if count_active(sf):
        return None
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host}: it is reachable from other machines and no API token exists, so "
            "every request would be refused. Create one first, e.g. `archiver token create NAME --scope "
            "BUCKET/PREFIX`, then start again (or bind 127.0.0.1 to get a local token printed)",
            code="no_tokens")
    import datetime as dt

    name = "local-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return create_token(sf, name, ["*"])


# ---- health -------------------------------------------------------------------------------------

_CREDENTIALS_RE = re.compile(r"(://)[^/@\s]*@")


def _public_error(e: BaseException) -> str:
    """An error as /health may show it to anyone: first line only, no ``user:password@`` part,
    and short (it helps an operator; it must not map the network for a stranger)."""
    first = f"{type(e).__name__}: {e}".splitlines()[0]
    return _CREDENTIALS_RE.sub(r"\1***@", first)[:200]


def check_database(sf: Any) -> tuple[bool, str | None]:
    try:
        with sf() as s:
            s.execute(text("SELECT 1"))
        return True, None
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return False, _public_error(e)


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
        return False, _public_error(e)


# ---- metrics ------------------------------------------------------------------------------------

class CountRequests:
    """ASGI middleware: every HTTP request is counted by route *template* (``no_route`` for a
    URL that matches none, so a client cannot grow the label set), method and the status sent,
    and, once authenticated, by token name (``scope["state"]["token_name"]``, set by the route)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = {"status": 500}

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or "no_route"
            method = scope.get("method", "")
            method = method if method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH") else "other"
            telemetry.http_request(route, method, sent["status"], (scope.get("state") or {}).get("token_name"))


# ---- the app ------------------------------------------------------------------------------------

def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """The ASGI app (``uvicorn --factory archiver.server:create_app``).

    This is the HTTP front door: with neither argument (uvicorn's factory call) it loads the
    settings itself, once, and builds the process's runtime from them."""
    rt = runtime or Runtime(settings or load_settings())
    st = rt.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _quiet_uvicorn_access_log()
        app.state.settings = st
        app.state.runtime = rt
        app.state.decode_slots = DecodeSlots(st.server.max_concurrent_decodes)
        app.state.limiter = TokenLimiter(st.server.token_rate_per_s, st.server.token_burst,
                                         st.server.token_max_concurrent)
        try:
            app.state.sf = await run_in_threadpool(lambda: rt.session_factory(migrate=True))
        except Exception as e:  # noqa: BLE001 - the database may come back later; /health reports it
            log.error("database not ready at start (%s); serving anyway", e)
            app.state.sf = rt.session_factory()
        app.state.codec = None
        app.state.model_error = None
        try:  # load the model before serving: the first request should not pay for it
            from .codec.api import apply_torch_threads

            apply_torch_threads(st.torch_threads)
            app.state.codec = await run_in_threadpool(rt.codec)
        except Exception as e:  # reported by /health; requests for other models may still work
            log.exception("could not load model %s", st.model_id)
            app.state.model_error = _public_error(e)
        try:
            if not await run_in_threadpool(count_active, app.state.sf):
                log.warning("no active API token: every /objects request will be refused with 401 "
                            "(create one with `archiver token create NAME --scope BUCKET/PREFIX`)")
        except Exception as e:  # noqa: BLE001 - the database may be down; requests will say so
            log.error("cannot read API tokens (%s)", type(e).__name__)
        try:
            yield
        finally:
            app.state.decode_slots.close()

    docs = st.server.enable_docs
    app = FastAPI(title="archiver retrieval", version=_version(), lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    cache_control = f"public, max-age={st.server.cache_max_age}, immutable"
    app.add_middleware(CountRequests)

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Requests that match no route get the same JSON problems as the rest of the API (not
        FastAPI's bare ``{"detail": ...}``), and a 404 says which URLs exist: a likely case is a
        local-directory archive, whose "bucket" is a path that cannot be one URL segment."""
        if exc.status_code == 404:
            return problem(404, "no_route",
                           f"no endpoint at {shown(request.url.path, 200)}: use GET /objects/{{bucket}}/{{key}} with an S3 "
                           "bucket name, or GET /health (archives in a local directory are read with "
                           "`archiver restore DIR --to OUT`)")
        return problem(exc.status_code, "http_error", str(exc.detail), headers=getattr(exc, "headers", None))

    async def authorize(request: Request) -> TokenInfo:
        """401 unless the request carries an active token; nothing else is looked up first."""
        presented = bearer(request.headers.get("authorization"))
        if presented is None:
            raise HTTPProblem(401, "missing_token", "this endpoint needs `Authorization: Bearer <token>` "
                              "(tokens are issued with `archiver token create`)", UNAUTHORIZED_HEADERS)
        try:
            token = await run_in_threadpool(authenticate, app.state.sf, presented)
        except Exception as e:  # noqa: BLE001 - no token store, no service; never a traceback
            log.error("token check failed: %s", type(e).__name__)
            raise HTTPProblem(503, "auth_unavailable", "tokens cannot be checked right now (database "
                              "unreachable); retry later", retry_after_header(5)) from None
        if token is None:
            raise HTTPProblem(401, "invalid_token", "the bearer token is not valid (unknown, revoked or expired)",
                              UNAUTHORIZED_HEADERS)
        return token

    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Response:
        """Our own access log line (uvicorn's is off: it echoed whole paths, a 60 KB key included,
        even for refused requests): client, method, the path cut to 120 characters, status."""
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            client = request.client.host if request.client else "-"
            access.info("%s %s %s -> %s", client, request.method, shown(request.url.path), status)

    @app.api_route("/objects/{bucket}/{key:path}", methods=["GET", "HEAD"])
    async def get_object(bucket: str, key: str, request: Request, format: str | None = None) -> Response:
        response = await _get_object(bucket, key, request, format)
        if request.method == "HEAD":  # the GET's status and headers (Content-Length included), no body
            return Response(status_code=response.status_code, headers=dict(response.headers))
        return response

    async def _get_object(bucket: str, key: str, request: Request, format: str | None) -> Response:
        try:
            token = await authorize(request)
        except HTTPProblem as e:
            log.info("refused %s: %s", shown(request.url.path), e.code)
            return _error_response(e)
        request.state.token_name = token.name  # the requests counter's token label
        if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            log.info("token %s: refused a %d-character key", token.name, len(key))
            return problem(400, "key_too_long", f"object keys are at most {MAX_KEY_BYTES} bytes (the S3 limit); "
                           "the key was not processed")
        limiter: TokenLimiter = app.state.limiter
        try:
            limiter.acquire(token.token_id)
        except Refused as e:
            log.info("token %s: %s", token.name, e.code)
            return problem(e.status, e.code, e.message, retry_after_header(e.retry_after))
        status = 500
        try:
            response = await _serve_object(token, bucket, key, request, format)
            status = response.status_code
            return response
        finally:
            limiter.release(token.token_id)
            log.info("token %s: %s %s %s -> %s", token.name, request.method, shown(bucket, 63), shown(key), status)

    async def _serve_object(token: TokenInfo, bucket: str, key: str, request: Request,
                            format: str | None) -> Response:
        gone = asyncio.ensure_future(wait_for_disconnect(request.receive))
        try:
            fmt = choose_format(format, request.headers.get("accept"))
            if not token.allows(bucket, key):
                return not_found(bucket, key)
            loc = await run_in_threadpool(locate, rt, app.state.sf, bucket, key)
            if loc is None:
                return not_found(bucket, key)
            headers = {"Cache-Control": cache_control, "Vary": "Accept"}
            if loc.sha256:
                headers["ETag"] = etag_for(loc.sha256, fmt)
                if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
                    return Response(status_code=304, headers=headers)
            slots: DecodeSlots = app.state.decode_slots
            queued = time.perf_counter()

            def decode() -> tuple[bytes, str, str]:
                telemetry.slot_waited(time.perf_counter() - queued)
                with telemetry.decoding():
                    return fetch_decode_render(rt, loc, fmt)

            body, used, sha = await slots.run(decode, gone,
                                              wait_timeout=st.server.slot_wait_timeout_s,
                                              run_timeout=st.server.decode_timeout_s)
            headers["ETag"] = etag_for(sha, fmt)
            return Response(body, media_type=FORMATS[used], headers=headers)
        except ClientGone:
            log.info("token %s: client left before %s was ready; its decode slot was freed", token.name, shown(key))
            return Response(status_code=499)  # never sent: there is nobody to send it to
        except Refused as e:
            return problem(e.status, e.code, e.message, retry_after_header(e.retry_after))
        except Exception as e:  # noqa: BLE001 - every error becomes a JSON problem
            return _error_response(e)
        finally:
            gone.cancel()

    if st.server.metrics != "off":
        @app.get("/metrics")
        async def metrics(request: Request) -> Response:
            """Prometheus text format. With ``[server] metrics = "token"`` (the default) it needs an
            active bearer token, like ``/objects``; ``"open"`` serves anyone who can reach the port."""
            if st.server.metrics == "token":
                try:
                    token = await authorize(request)
                except HTTPProblem as e:
                    return _error_response(e)
                request.state.token_name = token.name
            body, content_type = await run_in_threadpool(telemetry.exposition)
            return Response(body, media_type=content_type)

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


def _log_to_stderr(level: str, log_format: str = "text") -> None:
    """uvicorn configures only its own loggers; the per-request lines of this module (token names,
    refusals) need a handler too. Left alone if the embedding program configured one.

    ``log_format = "json"``: this module's lines and uvicorn's go through one JSON handler (uvicorn
    is then started without its own logging configuration)."""
    if log_format == "json":
        handler = logging.StreamHandler()
        telemetry.use_json_logs([handler])
        for name in ("archiver", "uvicorn"):
            logger = logging.getLogger(name)
            logger.handlers[:] = [handler]
            logger.setLevel(level)
            logger.propagate = False
        return
    root = logging.getLogger("archiver")
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def announce_token(info: TokenInfo, secret: str, url: str, out: TextIO | None = None,
                   token_dir: Path | None = None) -> None:
    """Show a token created at start-up, once, on the terminal (not through logging, which
    may be shipped elsewhere: logs carry token names, never secrets).

    Only a terminal: under systemd or docker stderr is a journal that others read and keep, so
    when ``out`` is not a TTY the secret goes to a new file readable by this user only (0600, in
    ``token_dir``, default ``~/.archiver``) and only that file's path is logged."""
    out = out or sys.stderr
    if not _is_terminal(out):
        path = _write_private((token_dir or Path.home() / ".archiver") / f"first-token-{info.name}", secret + "\n")
        log.warning("no API token existed, so one was created: %s (scope: everything). stderr is not a terminal, "
                    "so the secret was written to %s (mode 0600), not to the log; read it, then delete the file",
                    info.name, path)
        return
    print(f"\nNo API token existed, so one was created for this machine: {info.name} (scope: everything).\n"
          f"It is shown only now; keep it:\n\n    {secret}\n\n"
          f"    curl -H 'Authorization: Bearer {secret}' {url}/objects/BUCKET/KEY -o image.png\n\n"
          "Issue scoped tokens with `archiver token create`, revoke this one with "
          f"`archiver token revoke {info.name}`.\n", file=out, flush=True)


def _drop(record: logging.LogRecord) -> bool:
    return False


def _quiet_uvicorn_access_log() -> None:
    """Silence uvicorn's access log however uvicorn was started (``archiver serve`` also passes
    ``access_log=False``; ``uvicorn --factory`` does not): its lines carry the whole path, a key
    of 60 KB included, even on a 401. The app's own line (logger ``archiver.access``) replaces it."""
    logger = logging.getLogger("uvicorn.access")
    if _drop not in logger.filters:
        logger.addFilter(_drop)


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _write_private(path: Path, text: str) -> Path:
    """Create ``path`` (never an existing file or a link) readable and writable by this user only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def serve(host: str | None = None, port: int | None = None, settings: Settings | None = None,
          announce: Any = announce_token) -> None:
    """Run the endpoint with uvicorn (one process; decodes are bounded by the semaphore).

    Refuses a public address while no token exists, and on loopback creates the first token and
    hands it to ``announce(info, secret, url)`` (see :func:`check_tokens_for_bind`)."""
    import uvicorn

    st = settings or load_settings()
    rt = Runtime(st)
    _log_to_stderr(st.log_level, st.log_format)
    host, port = host or st.server.host, port or st.server.port
    issued = check_tokens_for_bind(rt, host)
    if issued is not None:
        shown_host = f"[{host}]" if ":" in host else host
        announce(*issued, f"http://{shown_host}:{port}")
    # access_log=False: uvicorn's access lines carry whole paths (keys of any length); ours cut them
    uvicorn.run(create_app(runtime=rt), host=host, port=port, log_level=st.log_level.lower(), proxy_headers=True,
                access_log=False, **({"log_config": None} if st.log_format == "json" else {}))
