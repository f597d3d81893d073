"""Questions about the archive as a whole that the ledger (``archived_objects``) answers.

Kept apart from the per-object lookups in the pipeline: these scan the ledger and serve
operators (``archiver models``), not the hot path.
"""

from __future__ import annotations

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from .models import ArchivedObject


def containers_by_model(session: Session) -> dict[str, int]:
    """How many stored containers need each model id to decode.

    A container is identified by where it is stored (``dest_url``): an upgrade overwrites it in
    place, so only the newest ledger row per location names the model of the bytes there now.
    Rows of originals that vanished are counted too; what was verified once stays in the archive
    until someone deletes it."""
    newer = aliased(ArchivedObject)
    current = ~exists().where(newer.dest_url == ArchivedObject.dest_url, newer.id > ArchivedObject.id)
    q = select(ArchivedObject.model_id, func.count()).where(current).group_by(ArchivedObject.model_id)
    return {model_id: int(n) for model_id, n in session.execute(q)}
