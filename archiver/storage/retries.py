r"""Retrying one storage step: what a flaky bucket costs is a few seconds of backoff, never a
re-encode.

The pipeline wraps each storage call of an object (fetch, write-and-read-back, HEAD, delete) in
:func:`with_retries`; only transient :class:`~archiver.errors.StorageError`\ s are retried, with
exponential backoff, and past the cap a :class:`GaveUp` carries the last error's code so the
object is recorded ``failed`` with the reason a person can act on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import StorageError

T = TypeVar("T")

#: Transient storage errors (throttling, 5xx, dropped connections) on one step of one object
#: are retried this many times in all, with exponential backoff, before the object is recorded
#: as ``failed``. Module-level so that deployments (and tests) can tune them.
RETRY_ATTEMPTS = 4
RETRY_WAIT_MULTIPLIER = 0.5  # seconds; waits 0.5, 1, 2, ... between attempts
RETRY_WAIT_MAX = 8.0


class GaveUp(StorageError):
    """A transient storage error that persisted through every retry."""


def with_retries(fn: Callable[[], T], what: str, attempts: int | None = None) -> T:
    """Run one storage step, retrying transient :class:`StorageError` with exponential backoff.

    Only the storage step is retried, never the encode: a flaky bucket must not cost GPU time.
    Past the cap a :class:`GaveUp` (not transient, same ``code``) is raised.
    """
    from tenacity import (
        RetryError,
        Retrying,
        retry_if_exception,
        stop_after_attempt,
        wait_exponential,
    )

    n = RETRY_ATTEMPTS if attempts is None else attempts
    try:
        for attempt in Retrying(stop=stop_after_attempt(max(1, n)),
                                wait=wait_exponential(multiplier=RETRY_WAIT_MULTIPLIER, max=RETRY_WAIT_MAX),
                                retry=retry_if_exception(lambda e: isinstance(e, StorageError) and e.transient),
                                reraise=False):
            with attempt:
                return fn()
    except RetryError as e:
        err = e.last_attempt.exception()
        raise GaveUp(f"{what}: gave up after {n} attempts: {err}", code=getattr(err, "code", "storage_error"),
                     transient=False) from err
    raise AssertionError("unreachable")  # pragma: no cover
