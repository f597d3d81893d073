"""How the database names an object: its bucket and its full key there.

A store opened on ``s3://bucket/some/prefix/`` lists keys relative to that prefix, which is what
storage calls want; but results, the ledger and the retrieval endpoint must name an object the
same way whichever prefix a job was started on (otherwise a rerun from the bucket root would not
recognise objects archived by a prefixed job, and ``GET /objects/bucket/key`` could not find
them). So every key written to or looked up in the database goes through :class:`Scope`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .storage import ObjectStore


@dataclass(frozen=True)
class Scope:
    bucket: str
    prefix: str = ""

    @classmethod
    def of(cls, store: ObjectStore) -> Scope:
        return cls(store.bucket, store.prefix)

    def key(self, key: str) -> str:
        """The database key of a store-relative key."""
        return self.prefix + key

    def relative(self, db_key: str) -> str:
        """The store-relative key of a database key (keys of other prefixes come back whole)."""
        return db_key[len(self.prefix):] if self.prefix and db_key.startswith(self.prefix) else db_key

    def source_id(self, key: str) -> str:
        """A fixed-length ASCII tag of the original, stored as metadata on its container so that a
        container written for one original is never overwritten by another's (S3 user metadata
        must be ASCII and small; keys may be neither)."""
        return hashlib.sha256(f"{self.bucket}\0{self.key(key)}".encode()).hexdigest()[:32]
