"""Database layer: SQLAlchemy 2.0 models and session/migration helpers."""

from __future__ import annotations

from ..vocabulary import JOB_KINDS, JOB_STATUSES, RESULT_STATUSES
from .models import (
    ApiToken,
    ArchivedObject,
    Base,
    Job,
    Result,
    utcnow,
)
from .session import (
    current_revision,
    head_revision,
    make_engine,
    migrations_dir,
    normalize_url,
    session_factory,
    session_scope,
    upgrade,
)

__all__ = [
    "JOB_KINDS",
    "JOB_STATUSES",
    "RESULT_STATUSES",
    "ApiToken",
    "ArchivedObject",
    "Base",
    "Job",
    "Result",
    "current_revision",
    "head_revision",
    "make_engine",
    "migrations_dir",
    "normalize_url",
    "session_factory",
    "session_scope",
    "upgrade",
    "utcnow",
]
