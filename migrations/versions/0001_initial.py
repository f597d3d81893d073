"""Initial schema: jobs, results, archived_objects.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Mirrors archiver/db/models.py; tests/test_db.py checks that autogenerate finds no difference
between the upgraded database and the models, on SQLite and PostgreSQL.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("dest", sa.Text(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("schedule_name", sa.String(length=128), nullable=True),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("objects_listed", sa.Integer(), nullable=False),
        sa.Column("bytes_listed", sa.BigInteger(), nullable=False),
        sa.Column("objects_enqueued", sa.Integer(), nullable=False),
        sa.Column("sample_size", sa.Integer(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_jobs_schedule_name", "jobs", ["schedule_name"])
    op.create_index("ix_jobs_status", "jobs", ["status"])

    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("etag", sa.String(length=128), nullable=True),
        sa.Column("version_id", sa.String(length=255), nullable=True),
        sa.Column("content_type", sa.String(length=64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("original_bytes", sa.BigInteger(), nullable=False),
        sa.Column("compressed_bytes", sa.BigInteger(), nullable=True),
        sa.Column("psnr", sa.Float(), nullable=True),
        sa.Column("ms_ssim", sa.Float(), nullable=True),
        sa.Column("bpp", sa.Float(), nullable=True),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("dest_url", sa.Text(), nullable=True),
        sa.Column("compressed_sha256", sa.String(length=64), nullable=True),
        sa.Column("original_deleted", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("t_fetch", sa.Float(), nullable=True),
        sa.Column("t_encode", sa.Float(), nullable=True),
        sa.Column("t_verify", sa.Float(), nullable=True),
        sa.Column("t_write", sa.Float(), nullable=True),
        sa.Column("t_total", sa.Float(), nullable=True),
        sa.Column("gpu_seconds", sa.Float(), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "bucket", "key", name="uq_results_job_object"),
    )
    op.create_index("ix_results_bucket_key", "results", ["bucket", "key"])
    op.create_index("ix_results_job_id", "results", ["job_id"])
    op.create_index("ix_results_status", "results", ["status"])

    op.create_table(
        "archived_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("etag", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=True),
        sa.Column("dest_url", sa.Text(), nullable=False),
        sa.Column("compressed_sha256", sa.String(length=64), nullable=False),
        sa.Column("compressed_bytes", sa.BigInteger(), nullable=False),
        sa.Column("original_bytes", sa.BigInteger(), nullable=False),
        sa.Column("original_deleted", sa.Boolean(), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bucket", "key", "etag", "model_id", name="uq_archived_object_version_model"),
    )


def downgrade() -> None:
    op.drop_table("archived_objects")
    op.drop_index("ix_results_status", table_name="results")
    op.drop_index("ix_results_job_id", table_name="results")
    op.drop_index("ix_results_bucket_key", table_name="results")
    op.drop_table("results")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_index("ix_jobs_schedule_name", table_name="jobs")
    op.drop_table("jobs")
