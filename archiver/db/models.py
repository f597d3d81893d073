"""SQLAlchemy 2.0 models: jobs, per-object results and the archived-object ledger.

Why three tables: ``results`` is the history (one row per object per job, so a rerun of the
same job never duplicates rows), while ``archived_objects`` is the ledger of what is safely
archived *now* (unique per object version and model), which is what lets any later job skip an
object that has not changed since its last successful recompression with the same model.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def aware(t: dt.datetime | None) -> dt.datetime | None:
    """A stored time as UTC-aware: SQLite hands ``DateTime(timezone=True)`` columns back naive."""
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


class Base(DeclarativeBase):
    pass


# Job.kind, Job.status and Result.status values: see archiver.vocabulary


class Job(Base):
    """One run over a source: a CLI recompress, a submitted Celery job, a scheduled run or a pilot."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="recompress")
    source: Mapped[str] = mapped_column(Text)
    dest: Mapped[str | None] = mapped_column(Text, nullable=True)
    # thresholds and options as given (min_psnr, min_saving, replace, dry_run, limit, ...)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    schedule_name: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    model_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # counters, maintained by the job loop / workers (also derivable from results)
    objects_listed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_listed: Mapped[int] = mapped_column(BigInteger, default=0)
    objects_enqueued: Mapped[int] = mapped_column(Integer, default=0)
    # pilot jobs: sample size and seed used for the random sample
    sample_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)

    results: Mapped[list[Result]] = relationship(back_populates="job")


class Result(Base):
    """What happened to one object in one job."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("job_id", "bucket", "key", name="uq_results_job_object"),
        Index("ix_results_bucket_key", "bucket", "key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    bucket: Mapped[str] = mapped_column(String(255))  # S3 bucket, or the local root path
    key: Mapped[str] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    version_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(64), nullable=True)  # sniffed, e.g. image/jpeg
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    original_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    compressed_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    psnr: Mapped[float | None] = mapped_column(Float, nullable=True)
    ms_ssim: Mapped[float | None] = mapped_column(Float, nullable=True)
    bpp: Mapped[float | None] = mapped_column(Float, nullable=True)
    quality: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    reason_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    dest_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    compressed_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # archiver.lossless.Tier of what was (or would be) stored: "lossy" (.cxa) or "lossless" (JPEG XL);
    # None when nothing was chosen (rejected, failed). Migration 0004.
    tier: Mapped[str | None] = mapped_column(String(16), nullable=True)
    original_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # timings in seconds
    t_fetch: Mapped[float | None] = mapped_column(Float, nullable=True)
    t_encode: Mapped[float | None] = mapped_column(Float, nullable=True)
    t_verify: Mapped[float | None] = mapped_column(Float, nullable=True)
    t_write: Mapped[float | None] = mapped_column(Float, nullable=True)
    t_total: Mapped[float | None] = mapped_column(Float, nullable=True)
    gpu_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # accelerator-busy time
    device: Mapped[str | None] = mapped_column(String(64), nullable=True)  # "cuda:0 (NVIDIA H100)", "cpu"
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")


class ArchivedObject(Base):
    """The ledger of verified bitstreams: one row per (object version, model)."""

    __tablename__ = "archived_objects"
    __table_args__ = (
        UniqueConstraint("bucket", "key", "etag", "model_id", name="uq_archived_object_version_model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(Text)
    etag: Mapped[str] = mapped_column(String(128))
    model_id: Mapped[str] = mapped_column(String(64))
    result_id: Mapped[int | None] = mapped_column(ForeignKey("results.id", ondelete="SET NULL"), nullable=True)
    dest_url: Mapped[str] = mapped_column(Text)
    compressed_sha256: Mapped[str] = mapped_column(String(64))
    compressed_bytes: Mapped[int] = mapped_column(BigInteger)
    original_bytes: Mapped[int] = mapped_column(BigInteger)
    # archiver.lossless.Tier: "lossy" (a .cxa container) or "lossless" (a JPEG XL file that rebuilds
    # the original JPEG byte for byte; compressed_* describe that file). Rows before 0004 are lossy.
    tier: Mapped[str] = mapped_column(String(16), default="lossy", server_default="lossy")
    # sha256 of the original's bytes as archived (0004; null before): a lossless archive must
    # reconstruct exactly these bytes, re-checked before the original is deleted
    original_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    original_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    archived_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A bearer token for the retrieval endpoint: who may read which archived objects.

    Only a salted hash of the secret is stored (see :mod:`archiver.tokens` for why a fast hash);
    ``token_id`` is the public half of the token string, so a request finds its row by an
    indexed lookup and then compares one hash in constant time. Revoked tokens keep their row
    (``revoked_at`` set), so ``archiver token list --all`` shows who had access and until when.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    # ["bucket", "bucket/prefix", ...] or ["*"]; see archiver.tokens.parse_scope
    scope: Mapped[list[str]] = mapped_column(JSON, default=list)
    # "sha256$<salt hex>$<digest hex>": the algorithm is named so that it can change later
    secret_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
