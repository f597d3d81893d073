"""Name objects by their full key in the bucket in results and the ledger.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Up to 0001, a job over ``s3://bucket/some/prefix/`` recorded keys relative to its prefix, so the
same object had different names in jobs started on different prefixes, and the retrieval
endpoint (which is asked for ``bucket/full/key``) could not find it. From 0002 every key is the
full key (see archiver/identity.py). This data migration puts each job's prefix in front of its
rows' keys, and of the keys of the ledger rows those results wrote. A ledger row that would then
name the same (bucket, key, etag, model) as an existing row is the same archive recorded twice:
the older row is dropped. Ledger rows whose result row is gone cannot be attributed and stay.
Schema is unchanged.
"""

from collections.abc import Sequence
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("source", sa.Text))
results = sa.table("results", sa.column("id", sa.Integer), sa.column("job_id", sa.Integer),
                   sa.column("key", sa.Text))
ledger = sa.table("archived_objects", sa.column("id", sa.Integer), sa.column("bucket", sa.String),
                  sa.column("key", sa.Text), sa.column("etag", sa.String), sa.column("model_id", sa.String),
                  sa.column("result_id", sa.Integer))


def _prefix(source: str) -> str:
    parts = urlsplit(source or "")
    if parts.scheme != "s3":
        return ""
    p = parts.path.strip("/")
    return p + "/" if p else ""


def upgrade() -> None:
    conn = op.get_bind()
    prefixes = {jid: _prefix(src) for jid, src in conn.execute(sa.select(jobs.c.id, jobs.c.source))}
    for job_id, prefix in prefixes.items():
        if not prefix:
            continue
        rows = conn.execute(sa.select(results.c.id, results.c.key).where(results.c.job_id == job_id)).all()
        for rid, key in rows:
            conn.execute(results.update().where(results.c.id == rid).values(key=prefix + key))
            for lid, bucket, lkey, etag, model in conn.execute(
                    sa.select(ledger.c.id, ledger.c.bucket, ledger.c.key, ledger.c.etag, ledger.c.model_id)
                    .where(ledger.c.result_id == rid, ledger.c.key == key)).all():
                twin = conn.execute(sa.select(ledger.c.id).where(
                    ledger.c.bucket == bucket, ledger.c.key == prefix + lkey, ledger.c.etag == etag,
                    ledger.c.model_id == model)).scalar()
                if twin is not None:
                    conn.execute(ledger.delete().where(ledger.c.id == min(lid, twin)))
                    if twin < lid:
                        conn.execute(ledger.update().where(ledger.c.id == lid).values(key=prefix + lkey))
                else:
                    conn.execute(ledger.update().where(ledger.c.id == lid).values(key=prefix + lkey))


def downgrade() -> None:
    conn = op.get_bind()
    prefixes = {jid: _prefix(src) for jid, src in conn.execute(sa.select(jobs.c.id, jobs.c.source))}
    for job_id, prefix in prefixes.items():
        if not prefix:
            continue
        for rid, key in conn.execute(sa.select(results.c.id, results.c.key).where(results.c.job_id == job_id)).all():
            if key.startswith(prefix):
                conn.execute(results.update().where(results.c.id == rid).values(key=key[len(prefix):]))
                conn.execute(ledger.update().where(ledger.c.result_id == rid, ledger.c.key == key)
                             .values(key=key[len(prefix):]))
