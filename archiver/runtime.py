"""What one front door holds for the life of its process, built once from its Settings.

A front door (a CLI command, a Celery worker process, the HTTP server) loads the settings once
and builds one :class:`Runtime` from them. Everything below it receives that runtime, or only
the collaborators it needs, as s3transfer's ``TransferManager`` receives its client and config:
nothing in the library loads settings or reaches for a module-level cache.

Why a runtime at all, rather than plain arguments: the things in it are costly to build and
meant to be shared for the whole process, across threads and calls.

* **Session factories**, one per database URL: each owns an engine and its connection pool.
  The schema is upgraded (``migrate=True``) at most once per URL.
* **Object stores**, one per URL: boto3 clients are thread-safe and slow to create.
* **Codecs**, one per (model, device): the weights are loaded once, and a model that only the
  model store holds is fetched once.
* **Codec slots**, one semaphore per codec: at most ``workers.codec_slots`` images are in a
  codec at once, also when several batches run in threads of one process.
* **Quality hints**: the recent answers of the quality search, so that a worker learns its
  job's typical quality within a few objects.

A process that forks after building a runtime (a Celery prefork child) must call
:meth:`Runtime.after_fork`: connections and clients must not be shared across processes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from .codec.api import Codec, QualityHints
    from .settings import Settings
    from .storage import ObjectStore


class Runtime:
    """Settings plus the per-process things built from them; thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._hints: QualityHints | None = None
        self._lock = threading.Lock()
        self._factories: dict[str, sessionmaker[Session]] = {}
        self._upgraded: set[str] = set()
        self._stores: dict[tuple[str, bool], ObjectStore] = {}
        self._codecs: dict[tuple[str, str], Codec] = {}
        self._codec_load_locks: dict[tuple[str, str], threading.Lock] = {}
        self._slots: dict[int, threading.BoundedSemaphore] = {}

    def __repr__(self) -> str:
        return f"Runtime(database={self.settings.database_url!r}, model={self.settings.model_id!r})"

    @property
    def quality_hints(self) -> QualityHints:
        """Where this process's quality searches start (made on first use: importing the codec
        loads torch, which a Celery parent must not do before it forks)."""
        from .codec.api import QualityHints

        with self._lock:
            if self._hints is None:
                self._hints = QualityHints()
            return self._hints

    # ---- database ---------------------------------------------------------------------------

    def session_factory(self, url: str | None = None, *, migrate: bool = False) -> sessionmaker[Session]:
        """The sessionmaker for ``url`` (default: ``settings.database_url``); ``migrate``
        upgrades the schema first, once per URL."""
        from .db.session import session_factory, upgrade

        url = url or self.settings.database_url
        with self._lock:
            if migrate and url not in self._upgraded:
                upgrade(url)
                self._upgraded.add(url)
            if url not in self._factories:
                self._factories[url] = session_factory(url)
            return self._factories[url]

    # ---- storage ----------------------------------------------------------------------------

    def store(self, url: str, *, create: bool = False) -> ObjectStore:
        """The store for ``url``; ``create`` makes a missing local destination directory."""
        from .storage import open_store

        key = (url, create)
        with self._lock:
            if key not in self._stores:
                self._stores[key] = open_store(url, self.settings, create=create)
            return self._stores[key]

    # ---- codec ------------------------------------------------------------------------------

    def codec(self, model_id: str | None = None, device: str | None = None, *,
              expect_sha256: str | None = None) -> Codec:
        """The codec of ``model_id`` (default: ``settings.model_id``) on ``device`` (default:
        ``settings.device``), loaded once. A model id names one set of weights forever, so the
        id is a sound cache key for stored models too; ``expect_sha256`` (the weights a
        container names) is still checked against a codec found here."""
        from .codec.api import Codec, pick_device
        from .errors import ContainerError

        model_id = model_id or self.settings.model_id
        key = (model_id, str(pick_device(device or self.settings.device)))
        with self._lock:
            load_lock = self._codec_load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one load per model; other models and the caches stay available meanwhile
            codec = self._codecs.get(key)
            if codec is None:
                codec = Codec.load(model_id, device or self.settings.device, settings=self.settings,
                                   expect_sha256=expect_sha256)
                self._codecs[key] = codec
        if expect_sha256 is not None and codec.weights_sha256 != expect_sha256:
            raise ContainerError(f"bitstream was made with other weights for {model_id!r} "
                                 f"(sha256 {expect_sha256[:16]}...)", code="weights_mismatch")
        return codec

    def codec_slots(self, codec: Codec) -> threading.BoundedSemaphore:
        """The gate of ``codec``: at most ``workers.codec_slots`` images in it at once."""
        with self._lock:
            return self._slots.setdefault(id(codec), threading.BoundedSemaphore(
                max(1, self.settings.workers.codec_slots)))

    # ---- processes --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database engines' pooled connections (a CLI command that ends)."""
        with self._lock:
            factories = list(self._factories.values())
            self._factories.clear()
            self._upgraded.clear()
            self._stores.clear()
        for factory in factories:
            bind = factory.kw.get("bind")
            if bind is not None:
                bind.dispose()

    def after_fork(self) -> None:
        """Forget engines and clients inherited from the parent (connections must not be
        shared); codecs stay, they hold no connection."""
        with self._lock:
            self._factories.clear()
            self._upgraded.clear()
            self._stores.clear()
