"""A directory used as an object store (demos, tests, NAS mounts).

Design choices and why:

* **Keys can never escape the root.** ``..`` segments, absolute keys, NUL bytes, empty or ``.``
  segments are refused outright, and the resolved path (after symlinks) must stay inside the
  root; otherwise :class:`~archiver.errors.KeyRefused`. Listing never follows directory symlinks
  (no loops, no escapes) and skips file symlinks that point outside.
* **Atomic writes**: temp file in the target directory, ``fsync``, ``os.replace``, ``fsync`` of the
  directory, so a crash leaves the old object or the new one, never half a container.
* **ETag = MD5 of the content**, so it changes exactly when the content changes (mtime does not
  survive copies and size alone misses same-size edits). The ledger relies on it to skip
  unchanged objects. Digests are cached in the xattr ``user.archiver.digest`` stamped with
  (size, mtime_ns, inode), so a file is only re-hashed after it changed; where xattrs are not
  supported, digests are simply recomputed on every stat.
* **No sidecar files.** Our metadata (``sha256`` and caller metadata, content type) lives in
  xattrs; without xattr support only the ``sha256`` survives (it is recomputed from content).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from ..errors import KeyRefused, StorageError
from .base import (
    SHA256_META,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    PreconditionFailed,
    checked_metadata,
    read_all,
)

log = logging.getLogger(__name__)

TMP_PREFIX = ".archiver-tmp-"
XATTR_DIGEST = "user.archiver.digest"
XATTR_META = "user.archiver.meta"
_CHUNK = 1024 * 1024


def _xattr_get(path: Path | int, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except (OSError, AttributeError):  # ENODATA, ENOTSUP, EPERM; AttributeError: no xattr API on this OS
        return None


def _xattr_set(path: Path | int, name: str, value: bytes) -> bool:
    try:
        os.setxattr(path, name, value)
        return True
    except (OSError, AttributeError):  # read-only mount, no user xattrs (older tmpfs, some NFS)...
        return False


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _mtime(st: os.stat_result) -> dt.datetime:
    return dt.datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=dt.timezone.utc)


class LocalStore(ObjectStore):
    """Objects are the regular files under ``root``; keys are their ``/``-separated relative paths."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        path = Path(root).expanduser()
        if create:
            path.mkdir(parents=True, exist_ok=True)
        self.root = path.resolve()
        self.bucket = str(self.root)
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # ------------------------------------------------------------------ key handling
    @staticmethod
    def _check_key(key: str, *, allow_partial: bool = False) -> list[str]:
        """Split and validate a key (or, with ``allow_partial``, a listing prefix)."""
        if not isinstance(key, str):
            raise KeyRefused(f"key must be a string, got {type(key).__name__}")
        if not key and not allow_partial:
            raise KeyRefused("empty key")
        if "\x00" in key:
            raise KeyRefused(f"key {key!r} contains a NUL byte")
        if key.startswith("/"):
            raise KeyRefused(f"key {key!r} is absolute")
        parts = key.split("/")
        # A listing prefix may end mid-segment or with "/", so its last part may be empty.
        checked = parts[:-1] if allow_partial else parts
        for part in checked:
            if part in ("", ".", ".."):
                raise KeyRefused(f"key {key!r} has an empty, '.' or '..' segment")
        if allow_partial and parts[-1] == "..":
            raise KeyRefused(f"prefix {key!r} has a '..' segment")
        return parts

    def _inside(self, path: Path) -> bool:
        return path == self.root or path.is_relative_to(self.root)

    def _location(self, key: str) -> Path:
        """Where ``key`` lives: real parent directory + name. Refuses anything that escapes.

        The parent is fully resolved (directory symlinks inside the root are fine as long as they
        stay inside); the final component is checked separately so that a symlinked *file*
        pointing outside the root is refused too.
        """
        parts = self._check_key(key)
        parent = self.root.joinpath(*parts[:-1]).resolve()
        if not self._inside(parent):
            raise KeyRefused(f"key {key!r} resolves outside the store root {self.root}")
        loc = parent / parts[-1]
        if loc.is_symlink() and not self._inside(loc.resolve()):
            raise KeyRefused(f"key {key!r} is a symlink pointing outside the store root {self.root}")
        return loc

    def url_for(self, key: str) -> str:
        self._check_key(key)
        return self.root.joinpath(*key.split("/")).as_uri()

    # ------------------------------------------------------------------ digests and metadata
    def _digests(self, path: Path, st: os.stat_result) -> tuple[str, str]:
        """(md5, sha256) of the file's content, from the xattr cache when still valid."""
        raw = _xattr_get(path, XATTR_DIGEST)
        if raw:
            try:
                cached = json.loads(raw)
                if cached.get("stamp") == _stamp(st):
                    return cached["md5"], cached["sha256"]
            except (ValueError, KeyError, TypeError):
                pass
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                md5.update(chunk)
                sha.update(chunk)
        digests = md5.hexdigest(), sha.hexdigest()
        try:
            unchanged = _stamp(os.stat(path)) == _stamp(st)
        except OSError:
            unchanged = False
        if unchanged:  # never cache a digest of a file that changed while we read it
            value = {"stamp": _stamp(st), "md5": digests[0], "sha256": digests[1]}
            _xattr_set(path, XATTR_DIGEST, json.dumps(value).encode())
        return digests

    @staticmethod
    def _read_meta(path: Path) -> tuple[dict[str, str], str | None]:
        raw = _xattr_get(path, XATTR_META)
        if not raw:
            return {}, None
        try:
            value = json.loads(raw)
            return dict(value.get("metadata", {})), value.get("content_type")
        except (ValueError, AttributeError, TypeError):
            return {}, None

    def _info(self, key: str, path: Path, st: os.stat_result, *, with_meta: bool) -> ObjectInfo:
        md5, sha = self._digests(path, st)
        metadata: dict[str, str] | None = None
        content_type = None
        if with_meta:
            metadata, content_type = self._read_meta(path)
            metadata[SHA256_META] = sha
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=md5,
            last_modified=_mtime(st),
            version_id=None,
            metadata=metadata,
            content_type=content_type,
        )

    # ------------------------------------------------------------------ listing
    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Regular files under the root whose key starts with ``prefix``, in S3 (byte-wise) key order.

        Directories are visited in an order that compares a directory as ``name + "/"``, which
        makes the concatenated walk globally sorted, like an S3 listing; ``start_after`` lets a
        job resume a listing. Subtrees that cannot match are never scanned.
        """
        # Not a generator itself, so bad prefixes and a missing root fail at the call.
        self._check_key(prefix, allow_partial=True)
        if not self.root.is_dir():
            raise ObjectNotFound(f"local store root {self.root} does not exist or is not a directory")
        return self._walk(self.root, "", prefix, start_after)

    def _walk(self, directory: Path, rel: str, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot list {directory}: {exc}", transient=False) from exc
        items: list[tuple[str, os.DirEntry[str], bool]] = []
        for entry in entries:
            name = entry.name
            if name.startswith(TMP_PREFIX):
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                log.warning("skipping %s: file name is not valid UTF-8", os.path.join(directory, name))
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            items.append((rel + name + ("/" if is_dir else ""), entry, is_dir))
        items.sort(key=lambda t: t[0].encode("utf-8"))
        for key, entry, is_dir in items:
            if is_dir:
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if start_after is not None and key < start_after and not start_after.startswith(key):
                    continue  # every key below is < start_after
                yield from self._walk(Path(entry.path), key, prefix, start_after)
                continue
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    target = path.resolve()
                    if not self._inside(target):
                        log.warning("skipping %s: symlink points outside the store root", path)
                        continue
                st = path.stat()
                if not stat.S_ISREG(st.st_mode):
                    continue  # fifos, sockets, devices, dangling links: not objects
                yield self._info(key, path, st, with_meta=False)
            except FileNotFoundError:
                continue  # vanished between scandir and stat

    # ------------------------------------------------------------------ single objects
    def head(self, key: str) -> ObjectInfo | None:
        path = self._location(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            return None
        return self._info(key, path, st, with_meta=True)

    def get(self, key: str, max_bytes: int | None = None, *, if_match: str | None = None) -> bytes:
        path = self._location(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc}") from exc
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ObjectNotFound(f"{key!r} in {self.root} is not a regular file")
            if max_bytes is not None and st.st_size > max_bytes:
                raise ObjectTooLarge(f"{key!r} is {st.st_size} bytes, more than the {max_bytes}-byte limit")
            limit = -1 if max_bytes is None else max_bytes + 1
            data = fh.read(limit)
        if max_bytes is not None and len(data) > max_bytes:  # grew while we read it
            raise ObjectTooLarge(f"{key!r} is more than the {max_bytes}-byte limit")
        if if_match is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != if_match.strip('"'):
            raise PreconditionFailed(f"{key!r} changed since it was listed (etag differs from {if_match})")
        return data

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> ObjectInfo:
        loc = self._location(key)
        content = read_all(data)
        meta = checked_metadata(content, metadata)
        try:
            loc.parent.mkdir(parents=True, exist_ok=True)
            # Re-check: mkdir may have raced with someone creating a symlink.
            if not self._inside(loc.parent.resolve()):
                raise KeyRefused(f"key {key!r} resolves outside the store root {self.root}")
            fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=loc.parent)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(content)
                    fh.flush()
                    os.fchmod(fh.fileno(), 0o644)
                    os.fsync(fh.fileno())
                    st = os.fstat(fh.fileno())
                    user_meta = {k: v for k, v in meta.items() if k != SHA256_META}
                    _xattr_set(fh.fileno(), XATTR_META,
                               json.dumps({"metadata": user_meta, "content_type": content_type}).encode())
                    digest = {
                        "stamp": _stamp(st),
                        "md5": hashlib.md5(content, usedforsecurity=False).hexdigest(),
                        "sha256": meta[SHA256_META],
                    }
                    _xattr_set(fh.fileno(), XATTR_DIGEST, json.dumps(digest).encode())
                os.replace(tmp, loc)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(loc.parent)
        except StorageError:
            raise
        except OSError as exc:
            transient = exc.errno in (errno.ENOSPC, errno.EAGAIN, errno.EINTR, errno.EIO)
            raise StorageError(f"cannot write {loc}: {exc}", transient=transient) from exc
        info = self.head(key)
        if info is None:  # pragma: no cover - deleted concurrently
            raise StorageError(f"{key!r} vanished right after it was written", transient=True)
        return info

    def delete(self, key: str) -> None:
        loc = self._location(key)
        try:
            loc.unlink()  # removes a symlink itself, never its target
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {loc}: {exc}") from exc
        _fsync_dir(loc.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename/unlink durable (POSIX needs the directory itself synced)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
