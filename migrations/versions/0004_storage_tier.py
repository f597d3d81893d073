"""The storage tier of every stored object: ``lossy`` (.cxa) or ``lossless`` (JPEG XL, bit-exact JPEG).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

``archived_objects.tier`` (not null, server default ``lossy``: every archive made before this
revision is a .cxa container) and ``results.tier`` (null for rows that stored nothing; accepted
rows made before this revision are set to ``lossy``). Mirrors archiver/db/models.py
(tests/test_db.py compares the upgraded schema with the models).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("archived_objects") as batch:
        batch.add_column(sa.Column("tier", sa.String(length=16), nullable=False, server_default="lossy"))
        batch.add_column(sa.Column("original_sha256", sa.String(length=64), nullable=True))
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("tier", sa.String(length=16), nullable=True))
    op.execute("UPDATE results SET tier = 'lossy' WHERE status IN ('accepted', 'skipped') AND compressed_sha256 IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("tier")
    with op.batch_alter_table("archived_objects") as batch:
        batch.drop_column("original_sha256")
        batch.drop_column("tier")
