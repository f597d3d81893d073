"""The model store: models made after the package was built (``archiver finetune``), kept where
every decode host can read them.

Why a store beside the package registry: a fine-tuned model is made on the user's machine, from
the user's photos, long after the package shipped; the containers it writes must still decode on
any host, for years. So the store is plain object storage (a directory or ``s3://bucket/prefix/``,
through :mod:`archiver.storage`) holding, per model id:

* ``ID.safetensors`` - the weights (safetensors only: never unpickled), written first;
* ``ID.json`` - the metadata record (sha256, size, preset, base model, training summary,
  measurements, created time), written last: a model without its record was not published
  completely and is not offered.

Ids are never reused or overwritten: publishing refuses an id that the package ships or that the
store already holds in any form (even a half-published one). A host that needs a stored model
(``Codec.load``, the decode of a container naming it) copies the weights into a local cache
(``model_cache_dir``) once, checks their sha256 against the record *and* against the container's
``weights_sha256`` when there is one, and refuses anything else with a specific code:
``model_incomplete`` (weights or record missing), ``weights_tampered`` (sha256 differs: a
changed, truncated or half-written file), ``bad_model_record`` (unreadable record). A cached
copy is re-hashed at every load; a damaged cache entry is fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UnknownModelError, WeightsIntegrityError
from .storage import ObjectStore, open_store

if TYPE_CHECKING:
    from .settings import Settings

WEIGHTS_SUFFIX = ".safetensors"
RECORD_SUFFIX = ".json"
RECORD_FORMAT = 1
#: weights files are ~10-20 MB; a cap keeps a wrong object from filling memory
MAX_WEIGHTS_BYTES = 512 * 1024 * 1024
#: ids become object keys and file names, and travel in every container's header
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/archiver/models`` (``~/.cache/archiver/models``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "archiver" / "models"


def check_model_id(model_id: str) -> str:
    if not MODEL_ID.match(model_id) or model_id.endswith((WEIGHTS_SUFFIX, RECORD_SUFFIX)):
        raise UnknownModelError(f"{model_id!r} is not a valid model id (letters, digits, '.', '_', '-'; "
                                "at most 64 characters)", code="bad_model_id")
    return model_id


@dataclass
class StoredModel:
    """One published model, as its record describes it."""

    model_id: str
    sha256: str
    bytes: int
    record: dict[str, Any]


class ModelStore:
    """Read and publish models in one store (see the module docstring)."""

    def __init__(self, url: str, settings: Settings | None = None, cache_dir: Path | None = None) -> None:
        self.url = url
        self._settings = settings
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._store: ObjectStore | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore | None:
        """The store named by ``model_store``, or None when none is configured."""
        if not settings.model_store:
            return None
        cache = Path(settings.model_cache_dir).expanduser() if settings.model_cache_dir else None
        return cls(settings.model_store, settings, cache)

    @property
    def store(self) -> ObjectStore:
        if self._store is None:  # opened on first use: a host that never needs it never connects
            self._store = open_store(self.url, self._settings, create=False)
        return self._store

    # -- reading -------------------------------------------------------------------------------
    def record(self, model_id: str) -> StoredModel | None:
        """The published model ``model_id``, or None when the store has no record of it."""
        check_model_id(model_id)
        from .storage import ObjectNotFound

        try:
            raw = self.store.get(model_id + RECORD_SUFFIX, max_bytes=1024 * 1024)
        except ObjectNotFound:
            return None
        try:
            rec = json.loads(raw)
            sha, size = str(rec["sha256"]), int(rec["bytes"])
            if rec["model_id"] != model_id or not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise ValueError("names another model or no valid sha256")
        except (ValueError, KeyError, TypeError) as e:
            raise WeightsIntegrityError(f"the model store's record of {model_id!r} is unreadable: {e}",
                                        code="bad_model_record") from None
        return StoredModel(model_id, sha, size, rec)

    def models(self) -> list[StoredModel]:
        """Every published model (ids with a record), in id order."""
        out = []
        for info in self.store.list():
            if "/" not in info.key and info.key.endswith(RECORD_SUFFIX):
                mid = info.key.removesuffix(RECORD_SUFFIX)
                if MODEL_ID.match(mid):
                    try:
                        rec = self.record(mid)
                    except WeightsIntegrityError:
                        continue  # listed by describe() as damaged through verify
                    if rec is not None:
                        out.append(rec)
        return out

    def holds(self, model_id: str) -> bool:
        """Whether the id is taken here in any form (record or weights, complete or not)."""
        check_model_id(model_id)
        return any(self.store.head(model_id + s) is not None for s in (RECORD_SUFFIX, WEIGHTS_SUFFIX))

    def fetch_weights(self, model_id: str) -> tuple[bytes, StoredModel]:
        """The weights of ``model_id`` straight from the store, checked against its record."""
        from .storage import ObjectNotFound

        rec = self.record(model_id)
        if rec is None:
            raise UnknownModelError(f"model {model_id!r} is neither shipped with this installation nor "
                                    f"published in the model store {self.url}")
        try:
            blob = self.store.get(model_id + WEIGHTS_SUFFIX, max_bytes=MAX_WEIGHTS_BYTES)
        except ObjectNotFound:
            raise WeightsIntegrityError(f"the model store {self.url} has a record of {model_id!r} but not its "
                                        "weights: it was not published completely", code="model_incomplete") from None
        digest = hashlib.sha256(blob).hexdigest()
        if digest != rec.sha256 or len(blob) != rec.bytes:
            raise WeightsIntegrityError(
                f"the weights of {model_id!r} in the model store {self.url} do not match their record "
                f"(sha256 {digest[:16]}..., {len(blob):,} bytes; expected {rec.sha256[:16]}..., {rec.bytes:,} bytes): "
                "changed or half-written, refused", code="weights_tampered")
        return blob, rec

    def local_copy(self, model_id: str, expect_sha256: str | None = None) -> tuple[Path, StoredModel]:
        """A verified local file of ``model_id``'s weights: from the cache, else fetched once.

        ``expect_sha256`` (a container's ``weights_sha256``) must match too: the container, not the
        store, is the final word on which weights decode it."""
        rec = self.record(model_id)
        if rec is None:
            raise UnknownModelError(f"model {model_id!r} is neither shipped with this installation nor "
                                    f"published in the model store {self.url}")
        if expect_sha256 is not None and expect_sha256 != rec.sha256:
            raise WeightsIntegrityError(
                f"the model store's {model_id!r} has sha256 {rec.sha256[:16]}..., but the container was made with "
                f"{expect_sha256[:16]}...: refused", code="weights_mismatch")
        path = self.cache_dir / f"{model_id}-{rec.sha256[:16]}{WEIGHTS_SUFFIX}"
        if path.is_file() and _sha256_file(path) == rec.sha256:
            return path, rec
        blob, rec = self.fetch_weights(model_id)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".fetch-", suffix=WEIGHTS_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: concurrent workers see a whole file or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path, rec

    def verify(self, model_id: str) -> bool:
        """Re-hash the stored weights against the record (``archiver models --verify``)."""
        try:
            self.fetch_weights(model_id)
            return True
        except (WeightsIntegrityError, UnknownModelError):
            return False

    def describe(self, *, verify: bool = False) -> list[dict[str, Any]]:
        """Rows for ``archiver models``, in the shape of ``registry.describe_models``'s."""
        out = []
        for m in self.models():
            rec = m.record
            preset = rec.get("preset") or {}
            out.append({"model_id": m.model_id, "default": False, "file": m.model_id + WEIGHTS_SUFFIX,
                        "bytes": m.bytes, "sha256": m.sha256, "intact": self.verify(m.model_id) if verify else None,
                        "scale_rule": preset.get("scale_rule", "?"),
                        "trained_steps": (rec.get("training") or {}).get("steps"), "note": rec.get("note", ""),
                        "origin": "store", "base_model": rec.get("base_model"), "created": rec.get("created")})
        return out

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, model_id: str, weights: bytes, record: dict[str, Any]) -> StoredModel:
        """Publish new weights under a new id: weights first (re-read and checked), record last."""
        from .codec.registry import read_registry

        check_model_id(model_id)
        if model_id in read_registry():
            raise UnknownModelError(f"model id {model_id!r} is shipped with the package; ids are never reused",
                                    code="model_id_taken")
        if self.holds(model_id):
            raise UnknownModelError(f"model id {model_id!r} already exists in the model store {self.url}; ids are "
                                    "never reused or overwritten - choose a new one", code="model_id_taken")
        # the first model published to a local store makes its directory (an S3 bucket is never created)
        if self._store is not None:
            self._store.close()
        self._store = open_store(self.url, self._settings, create=True)
        digest = hashlib.sha256(weights).hexdigest()
        rec = {**record, "format": RECORD_FORMAT, "model_id": model_id, "sha256": digest, "bytes": len(weights),
               "created": record.get("created") or datetime.now(UTC).isoformat(timespec="seconds")}
        self.store.put(model_id + WEIGHTS_SUFFIX, weights, metadata={"sha256": digest},
                       content_type="application/octet-stream")
        blob = self.store.get(model_id + WEIGHTS_SUFFIX, max_bytes=MAX_WEIGHTS_BYTES)
        if hashlib.sha256(blob).hexdigest() != digest:
            raise WeightsIntegrityError(f"the weights written to {self.url} read back differently; not published",
                                        code="weights_tampered")
        self.store.put(model_id + RECORD_SUFFIX, json.dumps(rec, indent=2, sort_keys=True).encode(),
                       content_type="application/json")
        return StoredModel(model_id, digest, len(weights), rec)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def require_model(model_id: str, settings: Settings) -> None:
    """Raise unless ``model_id`` is packaged or published in the configured model store (checked
    before a job is queued, so that a typo fails once, not in every worker batch)."""
    from .codec.registry import read_registry

    if model_id in read_registry():
        return
    store = ModelStore.from_settings(settings)
    if store is None or store.record(model_id) is None:
        where = f"the model store {store.url}" if store else "a model store (none is configured: model_store)"
        raise UnknownModelError(f"model {model_id!r} is neither shipped with this installation nor published in "
                                f"{where}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["ModelStore", "StoredModel", "check_model_id", "default_cache_dir"]
