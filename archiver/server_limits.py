"""What one client may cost the retrieval server: per-token limits and decode slots.

Both live in the server process (one uvicorn process per replica), so behind a load balancer
with N replicas a token gets N times the per-replica limits; a fleet-wide limit belongs in the
load balancer or API gateway. Hand-written rather than a rate-limit library because the whole
need is a token bucket per token plus an in-flight counter, with the ``Retry-After`` value
computed from the bucket, which is a few lines without a dependency.

:class:`DecodeSlots` is the decode semaphore. Waiting for a slot and running a decode both race
against the client's disconnect (and against time limits), so a client that goes away gives
its place back at once. A decode already running in a thread cannot be interrupted (torch
offers no safe cancellation), so its slot is released and its result dropped; such orphaned
decodes still occupy a thread of a bounded pool (twice the slots), which caps the CPU that
abandoned requests can hold.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")


class Refused(Exception):
    """A request refused for its cost: ``status``/``code`` for the answer, ``retry_after`` seconds."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class ClientGone(Exception):
    """The client disconnected before its answer was ready; nothing is sent."""


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    in_flight: int = 0


@dataclass
class TokenLimiter:
    """Per-token request rate (token bucket) and requests in flight."""

    rate_per_s: float
    burst: int
    max_concurrent: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, token_id: str) -> None:
        """Count one request for ``token_id``, or raise :class:`Refused` (429) with the seconds
        after which a retry can succeed."""
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(token_id)
            if b is None:
                b = self._buckets[token_id] = _Bucket(tokens=float(self.burst), stamp=now)
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate_per_s)
            b.stamp = now
            if b.in_flight >= self.max_concurrent:
                raise Refused(429, "too_many_concurrent",
                              f"this token already has {b.in_flight} requests in flight (limit "
                              f"{self.max_concurrent}); retry when one has finished", retry_after=1)
            if b.tokens < 1.0:
                wait = (1.0 - b.tokens) / self.rate_per_s
                raise Refused(429, "rate_limited",
                              f"this token's rate limit ({self.rate_per_s:g} requests/s, bursts of "
                              f"{self.burst}) is exhausted", retry_after=wait)
            b.tokens -= 1.0
            b.in_flight += 1

    def release(self, token_id: str) -> None:
        with self._lock:
            b = self._buckets.get(token_id)
            if b is not None and b.in_flight > 0:
                b.in_flight -= 1


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` is whole seconds (RFC 9110); round up so that a retry at that time works."""
    return {"Retry-After": str(max(1, math.ceil(seconds or 1)))}


async def wait_for_disconnect(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Returns when the ASGI server reports that the client went away. A GET has no body, so
    after its (empty) request message the next ``receive`` blocks until the disconnect."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _swallow(fut: asyncio.Future[Any]) -> None:
    """An abandoned decode's outcome is nobody's business; retrieve it so asyncio does not warn."""
    if not fut.cancelled():
        fut.exception()


class DecodeSlots:
    """At most ``slots`` decodes at once, in a pool of ``2 * slots`` threads."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._sem = asyncio.Semaphore(slots)
        self._pool = ThreadPoolExecutor(max_workers=2 * slots, thread_name_prefix="decode")
        self.abandoned = 0  # decodes whose client left or whose time ran out (for tests and logs)

    @property
    def free(self) -> int:
        return self._sem._value  # noqa: SLF001 - asyncio.Semaphore has no public getter

    async def _acquire(self, gone: asyncio.Future[Any], timeout: float) -> None:
        acquire = asyncio.ensure_future(self._sem.acquire())
        done, _ = await asyncio.wait({acquire, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if acquire in done and gone not in done:
            return
        if not acquire.done():
            acquire.cancel()
        try:
            await acquire
            self._sem.release()  # acquired in the same instant the client left: give it back
        except asyncio.CancelledError:
            pass
        if gone in done:
            raise ClientGone
        raise Refused(503, "server_busy", f"no decode slot came free within {timeout:g} s; retry later",
                      retry_after=timeout / 4)

    async def run(self, fn: Callable[[], T], gone: asyncio.Future[Any], *, wait_timeout: float,
                  run_timeout: float | None) -> T:
        """Run ``fn`` in a slot; raises :class:`ClientGone` if the client leaves first and
        :class:`Refused` (503) if no slot comes free or ``fn`` overruns ``run_timeout``."""
        await self._acquire(gone, wait_timeout)
        try:
            fut = asyncio.get_running_loop().run_in_executor(self._pool, fn)
            done, _ = await asyncio.wait({fut, gone}, timeout=run_timeout, return_when=asyncio.FIRST_COMPLETED)
            if fut in done:
                return fut.result()
            fut.add_done_callback(_swallow)
            self.abandoned += 1
            if gone in done:
                raise ClientGone
            raise Refused(503, "decode_timeout", f"decoding took longer than the server's budget of "
                          f"{run_timeout:g} s (server.decode_timeout_s); the request was abandoned",
                          retry_after=run_timeout)
        finally:
            self._sem.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
