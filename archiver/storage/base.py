"""The object-store interface every backend implements.

Why an interface this small: the pipeline only ever lists, fetches one object with a size cap,
writes one container, reads it back, and optionally deletes the original. Keeping the surface to
those verbs lets the local directory store and S3 behave identically under the same contract
tests (``tests/test_storage.py``), so anything that works against a directory in a demo works
against a bucket in production.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import StorageError

log = logging.getLogger(__name__)

#: Leaf-name prefix of the small object :meth:`ObjectStore.check_writable` writes and deletes
#: again at the start of a job. Listings for a job leave such names out (``pipeline.iter_source``),
#: so a probe left behind by a kill between its write and its delete never becomes a row.
PROBE_PREFIX = ".archiver-probe-"
PROBE_BYTES = b"archiver write probe: safe to delete\n"

#: Metadata name under which our own sha256 (hex) of an object's content travels. On S3 this is
#: user metadata ``x-amz-meta-sha256``; on a local store it is the xattr ``user.archiver.sha256``.
SHA256_META = "sha256"


class ObjectNotFound(StorageError):
    """The key does not exist (or vanished between listing and fetching)."""

    code = "not_found"


class ObjectTooLarge(StorageError):
    """The object is larger than the caller's ``max_bytes``; refused before downloading."""

    code = "too_large"


class PreconditionFailed(StorageError):
    """The object changed since it was listed (``if_match`` etag differs)."""

    code = "changed"


class DestinationUnwritable(StorageError):
    """The store cannot be written at all (missing bucket or directory, no permission, read-only
    file system): found by :meth:`ObjectStore.check_writable` before a job encodes anything."""

    code = "dest_unwritable"


@dataclass(frozen=True)
class ObjectInfo:
    """One object as listed or stat'ed. ``etag`` identifies the content version.

    ``metadata`` is ``None`` when unknown (listings do not fetch it) and a dict from
    :meth:`ObjectStore.head` / :meth:`ObjectStore.put`.
    """

    key: str
    size: int
    etag: str
    last_modified: dt.datetime
    version_id: str | None = None
    metadata: dict[str, str] | None = field(default=None, compare=False)
    content_type: str | None = None
    #: ``(reason_code, message)`` for an entry a listing met but cannot serve as an object (only
    #: with ``list(include_refused=True)``): a local file whose name is not UTF-8
    #: (``name_not_utf8``; ``key`` is then a printable stand-in), a symlink leading out of the
    #: root (``symlink_outside_root``), a FIFO, socket, device or dangling link
    #: (``not_a_regular_file``). The pipeline records it as a ``rejected`` row, so every entry
    #: under a source gets one row.
    refused: tuple[str, str] | None = field(default=None, compare=False)

    @property
    def sha256(self) -> str | None:
        """Our sha256 of the content, when the store knows it."""
        return (self.metadata or {}).get(SHA256_META)


class ObjectStore(ABC):
    """A flat key space under a root (local directory or ``s3://bucket/prefix``).

    Keys are ``/``-separated and relative to the root/prefix. ``bucket`` is the value recorded in
    the ``bucket`` column of results (the S3 bucket name, or the local root's absolute path) and
    ``url`` is the store's own URL, so ``open_store(store.url)`` reopens it.
    """

    bucket: str
    url: str
    #: the part of each object's full key in its bucket that the store's keys leave out
    #: (``some/prefix/`` for ``s3://bucket/some/prefix``); see ``archiver.identity``.
    prefix: str = ""

    @abstractmethod
    def list(self, prefix: str = "", *, start_after: str | None = None,
             include_refused: bool = False) -> Iterator[ObjectInfo]:
        """Yield objects whose key starts with ``prefix``, in key order, streaming page by page.

        ``include_refused`` also yields entries that are not servable objects, each with
        :attr:`ObjectInfo.refused` set (a job records them; everyone else never sees them).
        """

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size, etag and metadata of ``key``; ``None`` if it does not exist."""

    @abstractmethod
    def get(self, key: str, max_bytes: int | None = None, *, if_match: str | None = None) -> bytes:
        """The object's bytes.

        Raises :class:`ObjectTooLarge` without downloading if it is larger than ``max_bytes``,
        :class:`ObjectNotFound` if missing, :class:`PreconditionFailed` if ``if_match`` is given
        and the current etag differs (the object changed after it was listed).
        """

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> ObjectInfo:
        """Write ``data`` atomically (readers see the old or the new object, never a partial one).

        The content's sha256 is computed here and stored as metadata ``sha256``; a caller-supplied
        ``sha256`` that disagrees raises :class:`StorageError` (code ``checksum_mismatch``).
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error (idempotent, like S3)."""

    @abstractmethod
    def url_for(self, key: str) -> str:
        """A URL naming ``key`` in this store (``s3://bucket/prefix/key`` or ``file:///...``)."""

    def check_writable(self) -> None:
        """Write and delete a small, uniquely named object, so that a job finds a missing bucket
        or directory, or a missing permission, before its first encode instead of after its last.

        Raises :class:`DestinationUnwritable` (with the storage error's code in the message) when
        the write is refused for good; a *transient* error (outage, throttling) is raised as it
        is, so that the caller can decide to go on (per-object retries then apply). Failing to
        delete the probe again only logs a warning: jobs never delete from a destination, and
        the leftover's name (:data:`PROBE_PREFIX`) keeps it out of every job's listing.
        """
        key = PROBE_PREFIX + uuid.uuid4().hex
        try:
            self.put(key, PROBE_BYTES, metadata={}, content_type="text/plain")
        except StorageError as exc:
            if exc.transient:
                raise
            raise DestinationUnwritable(f"cannot write to {self.url}: {exc.code}: {exc}") from exc
        try:
            self.delete(key)
        except StorageError as exc:
            log.warning("wrote the probe %s but cannot delete it (%s): %s", self.url_for(key), exc.code, exc)

    def remove_stale_temp(self) -> int:
        """Remove what interrupted writes of earlier runs left behind; returns how many.

        Nothing to do by default: an S3 ``PutObject`` is atomic (incomplete multipart uploads are
        the bucket's lifecycle rules' business); :class:`~archiver.storage.local.LocalStore`
        removes its own stale temporary files.
        """
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has nothing to release."""

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_all(data: bytes | BinaryIO) -> bytes:
    """Materialise ``data``; containers are small enough to hash and write from memory."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return data.read()


def checked_metadata(content: bytes, metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Caller metadata plus our sha256 of ``content``; refuses a contradicting sha256."""
    digest = hashlib.sha256(content).hexdigest()
    meta = {str(k).lower(): str(v) for k, v in (metadata or {}).items()}
    given = meta.get(SHA256_META)
    if given is not None and given.lower() != digest:
        raise StorageError(
            f"sha256 given for the object ({given}) does not match its content ({digest})",
            code="checksum_mismatch",
        )
    meta[SHA256_META] = digest
    return meta
