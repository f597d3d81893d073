"""Exceptions shared by every layer.

Each carries a short machine-readable ``code`` so that the pipeline can record *why* an object
was refused or failed, and the HTTP layer can map errors to status codes, without parsing
messages.
"""

from __future__ import annotations


class ArchiverError(Exception):
    """Base class: anything the product raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(ArchiverError):
    code = "bad_config"


class DatabaseError(ArchiverError):
    """The results database cannot be used: ``database_unreachable`` (connection refused, bad
    credentials, unknown database) or ``no_schema`` (reachable, but no archiver tables in it)."""

    code = "database_error"


class ContainerError(ArchiverError):
    """A .cxa container is truncated, corrupted, forged or of an unsupported version."""

    code = "bad_container"


class UnknownModelError(ArchiverError):
    code = "unknown_model"


class WeightsIntegrityError(ArchiverError):
    code = "weights_integrity"


class ImageRejected(ArchiverError):
    """The input is not an image we can archive without losing something."""

    code = "image_rejected"


class StorageError(ArchiverError):
    """A storage operation failed; ``transient`` says whether a retry may help."""

    code = "storage_error"

    def __init__(self, message: str, *, code: str | None = None, transient: bool = False) -> None:
        super().__init__(message, code=code)
        self.transient = transient


class KeyRefused(StorageError):
    """A key that would escape the store's root (``..``, absolute paths, symlinks out)."""

    code = "key_refused"


class BrokerUnavailable(ArchiverError):
    """The message broker could not be reached within ``workers.submit_broker_wait`` seconds."""

    code = "broker_unavailable"
