"""Object storage: one interface, a local-directory backend and an S3 backend.

``open_store(url, settings)`` picks the backend from the URL, so every front door accepts the
same source/destination strings: ``s3://bucket/prefix``, ``file:///path`` or a plain path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..errors import StorageError
from .base import (
    PROBE_PREFIX,
    SHA256_META,
    DestinationUnwritable,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    PreconditionFailed,
)
from .local import LocalStore

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "PROBE_PREFIX",
    "SHA256_META",
    "DestinationUnwritable",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectTooLarge",
    "PreconditionFailed",
    "open_store",
    "split_object_url",
]


def open_store(url: str, settings: Settings | None = None, *, create: bool = False) -> ObjectStore:
    """Open the store named by ``url``.

    ``create`` makes a missing local root directory (for destinations); S3 buckets are never
    created implicitly. ``settings`` supplies the S3 client options (endpoint, retries...); a
    local store needs none.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from .s3 import S3Store  # boto3 import is slow; only pay for it when needed

        if settings is None:  # the endpoint and credentials are configuration: never guessed here
            raise StorageError(f"opening {url!r} needs the S3 settings (endpoint, region, retries)",
                               code="bad_url")
        return S3Store(url, settings.s3)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"file URLs must be local: {url!r}", code="bad_url")
        return LocalStore(unquote(parts.path), create=create)
    if parts.scheme == "" or (len(parts.scheme) == 1 and url[1:3] in (":\\", ":/")):  # plain or Windows path
        if not url:
            raise StorageError("empty store URL", code="bad_url")
        return LocalStore(url, create=create)
    raise StorageError(f"unsupported store URL {url!r}: use s3://bucket/prefix, file:///path or a path",
                       code="bad_url")


def split_object_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b.cxa`` -> (``s3://bucket``, ``a/b.cxa``); ``file:///d/b.cxa`` -> (``file:///d``, ``b.cxa``)."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        key = parts.path.lstrip("/")
        if not parts.netloc or not key:
            raise StorageError(f"not an object URL: {url!r}", code="bad_url")
        return f"s3://{parts.netloc}", key
    path = unquote(parts.path) if parts.scheme == "file" else url
    head, _, name = path.rstrip("/").rpartition("/")
    if not name:
        raise StorageError(f"not an object URL: {url!r}", code="bad_url")
    return (head or "/"), name
