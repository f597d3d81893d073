"""A directory used as an object store (demos, tests, NAS mounts).

Design choices and why:

* **Keys can never escape the root.** ``..`` segments, absolute keys, NUL bytes, empty or ``.``
  segments are refused outright, and the resolved path (after symlinks) must stay inside the
  root; otherwise :class:`~archiver.errors.KeyRefused`. Listing never follows directory symlinks
  (no loops, no escapes); file symlinks that point outside are not objects.
* **No time-of-check/time-of-use gap.** Every open, create, rename and unlink goes through
  directory file descriptors, one path component at a time from the root, each opened with
  ``O_NOFOLLOW`` (``openat``-style ``dir_fd`` calls). A symlink met on the way is followed only
  explicitly: resolved, checked to lie inside the root, and the resolved path is then opened the
  same strict way, so a symlink swapped in between the check and the open makes the open fail
  (``KeyRefused``) instead of reading or writing outside the root. The root itself is trusted
  (it is resolved once, when the store is opened).
* **One row per entry.** ``list(include_refused=True)`` (what jobs use) also yields the entries
  that are not objects, with a reason code: names that are not UTF-8, symlinks leading out of
  the root, FIFOs, sockets, devices and dangling links, and *every* file symlink: a link inside
  the root is refused as ``not_a_regular_file`` (its target is listed, and archived, under its own
  key, once). Archiving the link too made two archives of one file, and under ``--replace`` the
  target could be deleted first, leaving a dangling link to be archived (issue 27).
* **Interrupted writes are tidied.** Temporary files are named ``.archiver-tmp-XXXXXXXX`` (8
  characters of ``mkstemp``'s alphabet); listings never treat such names as objects, and
  :meth:`LocalStore.remove_stale_temp` (run once per job by the pipeline) deletes those older
  than :data:`TMP_STALE_SECONDS`.
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
import re
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from ..errors import KeyRefused, StorageError
from .base import (
    PROBE_BYTES,
    SHA256_META,
    DestinationUnwritable,
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
#: exactly the names :meth:`LocalStore.put` gives its temporary files (``tempfile.mkstemp``'s
#: alphabet), so that a user's own ``.archiver-tmp-notes.jpg`` is still an object
TMP_NAME = re.compile(r"\.archiver-tmp-[a-z0-9_]{8}\Z")
_TMP_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"
#: A temporary file older than this is left over from a writer that died (a write takes
#: seconds: the container is in memory, then write, fsync, xattrs, rename). mtime moves with
#: every write, so a live writer's file is always young. One hour is a margin of three orders of
#: magnitude, and works across hosts sharing a NAS, where "is a live process holding it?"
#: cannot be asked (``/proc`` only sees this host) and would be racy anyway.
TMP_STALE_SECONDS = 3600.0
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


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC | _NOFOLLOW
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0) | _NOFOLLOW
#: indirection so that tests can interleave a swap between a symlink's check and its open
_resolve = os.path.realpath


class _SymlinkMet(Exception):
    """A path component turned out to be a symlink while opening strictly (no following)."""


def display_name(name: str) -> str:
    """A printable, valid-UTF-8 stand-in for a file name that is not UTF-8 (``caf\\xe9.jpg``)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _mtime(st: os.stat_result) -> dt.datetime:
    return dt.datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=dt.timezone.utc)


class LocalStore(ObjectStore):
    """Objects are the regular files under ``root``; keys are their ``/``-separated relative paths."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        path = Path(root).expanduser()
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DestinationUnwritable(f"cannot create the store directory {path}: {exc}") from exc
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

    def _resolved_parts(self, parts: list[str], key: str) -> list[str]:
        """The components of ``root/parts`` with every symlink resolved; refuses a path that
        leads out of the root."""
        real = Path(_resolve(self.root.joinpath(*parts)))
        if not self._inside(real):
            raise KeyRefused(f"key {key!r} resolves outside the store root {self.root} (symlink)")
        return list(real.relative_to(self.root).parts)

    def _strict_dir(self, parts: list[str], *, create: bool) -> int:
        """fd of ``root/parts``, each component opened with ``O_NOFOLLOW`` relative to its parent's fd."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                            os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise _SymlinkMet(part) from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _dir_fd(self, parts: list[str], key: str, *, create: bool = False) -> int:
        """fd of the directory ``root/parts``; a symlinked component is followed only after its
        resolved path was checked to lie inside the root, and that path is opened strictly."""
        try:
            return self._strict_dir(parts, create=create)
        except _SymlinkMet:
            pass
        real = self._resolved_parts(parts, key)
        try:
            return self._strict_dir(real, create=create)
        except _SymlinkMet:
            raise KeyRefused(f"key {key!r}: a directory on its path changed into a symlink while it was opened") from None

    def _open_file(self, key: str) -> tuple[int, os.stat_result]:
        """An fd of the regular file at ``key`` (never through a symlink that leaves the root)
        and its ``fstat``. Raises :class:`ObjectNotFound` for a missing or non-regular entry."""
        parts = self._check_key(key)
        try:
            fd = self._open_strict_file(parts, key, follow=True)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.root}") from None
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket, a device without a driver
                raise ObjectNotFound(f"{key!r} in {self.root} is not a regular file") from None
            raise StorageError(f"cannot open {key!r} in {self.root}: {exc}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ObjectNotFound(f"{key!r} in {self.root} is not a regular file")
        return fd, st

    def _open_strict_file(self, parts: list[str], key: str, *, follow: bool) -> int:
        dfd = self._dir_fd(parts[:-1], key)
        try:
            return os.open(parts[-1], _READ_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if not (follow and exc.errno == errno.ELOOP):
                raise
        finally:
            os.close(dfd)
        # The object is a symlink: follow it explicitly (resolve, check, open the target strictly).
        real = self._resolved_parts(parts, key)
        if not real:
            raise ObjectNotFound(f"{key!r} in {self.root} is not a regular file")
        try:
            return self._open_strict_file(real, key, follow=False)
        except _SymlinkMet:
            raise KeyRefused(f"key {key!r}: its target changed into a symlink while it was opened") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise KeyRefused(f"key {key!r}: its target changed into a symlink while it was opened") from None
            raise

    def url_for(self, key: str) -> str:
        self._check_key(key)
        return self.root.joinpath(*key.split("/")).as_uri()

    # ------------------------------------------------------------------ digests and metadata
    def _digests(self, fd: int, st: os.stat_result) -> tuple[str, str]:
        """(md5, sha256) of the open file's content, from the xattr cache when still valid."""
        raw = _xattr_get(fd, XATTR_DIGEST)
        if raw:
            try:
                cached = json.loads(raw)
                if cached.get("stamp") == _stamp(st):
                    return cached["md5"], cached["sha256"]
            except (ValueError, KeyError, TypeError):
                pass
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, _CHUNK, offset):
            md5.update(chunk)
            sha.update(chunk)
            offset += len(chunk)
        digests = md5.hexdigest(), sha.hexdigest()
        try:
            unchanged = _stamp(os.fstat(fd)) == _stamp(st)
        except OSError:
            unchanged = False
        if unchanged:  # never cache a digest of a file that changed while we read it
            value = {"stamp": _stamp(st), "md5": digests[0], "sha256": digests[1]}
            _xattr_set(fd, XATTR_DIGEST, json.dumps(value).encode())
        return digests

    @staticmethod
    def _read_meta(fd: int) -> tuple[dict[str, str], str | None]:
        raw = _xattr_get(fd, XATTR_META)
        if not raw:
            return {}, None
        try:
            value = json.loads(raw)
            return dict(value.get("metadata", {})), value.get("content_type")
        except (ValueError, AttributeError, TypeError):
            return {}, None

    def _info(self, key: str, fd: int, st: os.stat_result, *, with_meta: bool) -> ObjectInfo:
        md5, sha = self._digests(fd, st)
        metadata: dict[str, str] | None = None
        content_type = None
        if with_meta:
            metadata, content_type = self._read_meta(fd)
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
    def list(self, prefix: str = "", *, start_after: str | None = None,
             include_refused: bool = False) -> Iterator[ObjectInfo]:
        """Regular files under the root whose key starts with ``prefix``, in S3 (byte-wise) key order.

        Directories are visited in an order that compares a directory as ``name + "/"``, which
        makes the concatenated walk globally sorted, like an S3 listing; ``start_after`` lets a
        job resume a listing. Subtrees that cannot match are never scanned. ``include_refused``
        also yields entries that are not objects (see :attr:`ObjectInfo.refused`); our own
        temporary files and directory symlinks are never yielded.
        """
        # Not a generator itself, so bad prefixes and a missing root fail at the call.
        self._check_key(prefix, allow_partial=True)
        if not self.root.is_dir():
            raise ObjectNotFound(f"local store root {self.root} does not exist or is not a directory")
        return self._walk(self.root, "", prefix, start_after, include_refused, False)

    def _walk(self, directory: Path, rel: str, prefix: str, start_after: str | None, include_refused: bool,
              bad_name: bool) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot list {directory}: {exc}", transient=False) from exc
        items: list[tuple[str, os.DirEntry[str], bool, bool]] = []
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir and TMP_NAME.match(name):
                continue  # a write in progress, or left by one that died: never an object
            good = _utf8(name)
            if not good:
                log.warning("%s: file name is not valid UTF-8", os.path.join(directory, display_name(name)))
                if not include_refused:
                    continue
            items.append((rel + display_name(name) + ("/" if is_dir else ""), entry, is_dir, bad_name or not good))
        items.sort(key=lambda t: t[0].encode("utf-8"))
        for key, entry, is_dir, bad in items:
            if is_dir:
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if start_after is not None and key < start_after and not start_after.startswith(key):
                    continue  # every key below is < start_after
                yield from self._walk(Path(entry.path), key, prefix, start_after, include_refused, bad)
                continue
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            info = self._entry_info(key, entry, bad)
            if info is not None and (include_refused or info.refused is None):
                yield info

    def _entry_info(self, key: str, entry: os.DirEntry[str], bad_name: bool) -> ObjectInfo | None:
        """The object (or refused entry) for one listed non-directory; None when it vanished or
        is a symlink to a directory inside the root (whose files are listed where they are)."""
        try:
            lst = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None

        def refused(code: str, message: str) -> ObjectInfo:
            return ObjectInfo(key=key, size=lst.st_size if stat.S_ISREG(lst.st_mode) else 0, etag="",
                              last_modified=_mtime(lst), refused=(code, message))

        if bad_name:
            return refused("name_not_utf8", "its file name (or a directory's above it) is not valid UTF-8, so it "
                           "cannot be named in the database or a URL; rename it to archive it")
        if stat.S_ISLNK(lst.st_mode):
            target = Path(_resolve(entry.path))
            if not self._inside(target):
                log.warning("%s: symlink points outside the store root", entry.path)
                return refused("symlink_outside_root", f"a symlink to {target}, outside the store root {self.root}")
            try:
                tst = target.stat()
            except OSError:
                return refused("not_a_regular_file", "a dangling symlink (its target does not exist)")
            if stat.S_ISDIR(tst.st_mode):
                return None  # directory symlinks are not followed; their files are listed at their real path
            if not stat.S_ISREG(tst.st_mode):
                return refused("not_a_regular_file", "a symlink to something that is not a regular file")
            # its target is an object of its own, listed (and archived, or replaced) once, there
            shown_target = os.path.relpath(target, self.root)
            return refused("not_a_regular_file", f"a symbolic link to {display_name(shown_target)[:200]!r}, which is "
                           "archived under its own key (links are never archived twice)")
        elif not stat.S_ISREG(lst.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(lst.st_mode) else "a socket" if stat.S_ISSOCK(lst.st_mode)
                    else "a device" if stat.S_ISCHR(lst.st_mode) or stat.S_ISBLK(lst.st_mode) else "not a file")
            return refused("not_a_regular_file", f"{kind}, not a regular file")
        try:
            fd, st = self._open_file(key)
        except ObjectNotFound:
            return None  # vanished (or changed kind) between scandir and open
        except KeyRefused as exc:
            return refused("symlink_outside_root", str(exc))
        try:
            return self._info(key, fd, st, with_meta=False)
        finally:
            os.close(fd)

    def remove_stale_temp(self, max_age: float = TMP_STALE_SECONDS) -> int:
        """Delete this store's temporary files (:data:`TMP_NAME`) older than ``max_age`` seconds.

        Only regular files with exactly that name pattern, never through a symlink (``unlink``
        relative to the directory's fd); directory symlinks are not followed. A file that cannot
        be removed (read-only mount) is left and logged.
        """
        cutoff = time.time() - max_age
        removed = 0
        for dirpath, _dirs, files in os.walk(self.root, followlinks=False):
            for name in files:
                if not TMP_NAME.match(name):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime > cutoff:
                        continue
                    rel = Path(dirpath).relative_to(self.root).parts
                    dfd = self._strict_dir(list(rel), create=False)
                    try:
                        again = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                        if (again.st_ino, again.st_dev) == (st.st_ino, st.st_dev):
                            os.unlink(name, dir_fd=dfd)
                            removed += 1
                            log.info("removed %s, left by an interrupted write %.0f s ago", path,
                                     time.time() - st.st_mtime)
                    finally:
                        os.close(dfd)
                except (OSError, _SymlinkMet) as exc:
                    log.warning("cannot remove the stale temporary file %s: %s", path, exc)
        return removed

    def check_writable(self) -> None:
        """Create, write and delete a temporary file in the root (a name listings never show)."""
        try:
            dfd = self._strict_dir([], create=False)
        except (OSError, _SymlinkMet) as exc:
            raise DestinationUnwritable(f"cannot write to {self.url}: the directory cannot be opened: {exc}") from exc
        name = _tmp_name()
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _NOFOLLOW, 0o600, dir_fd=dfd)
            try:
                os.write(fd, PROBE_BYTES)
            finally:
                os.close(fd)
            os.unlink(name, dir_fd=dfd)
        except OSError as exc:
            transient = exc.errno in (errno.EAGAIN, errno.EINTR, errno.EIO)
            if transient:
                raise StorageError(f"cannot write to {self.url}: {exc}", transient=True) from exc
            raise DestinationUnwritable(f"cannot write to {self.url}: {exc}") from exc
        finally:
            os.close(dfd)

    # ------------------------------------------------------------------ single objects
    def head(self, key: str) -> ObjectInfo | None:
        try:
            fd, st = self._open_file(key)
        except ObjectNotFound:
            return None
        try:
            return self._info(key, fd, st, with_meta=True)
        finally:
            os.close(fd)

    def get(self, key: str, max_bytes: int | None = None, *, if_match: str | None = None) -> bytes:
        fd, st = self._open_file(key)
        with os.fdopen(fd, "rb") as fh:
            if max_bytes is not None and st.st_size > max_bytes:
                raise ObjectTooLarge(f"{key!r} is {st.st_size} bytes, more than the {max_bytes}-byte limit")
            limit = -1 if max_bytes is None else max_bytes + 1
            data = fh.read(limit)
        if max_bytes is not None and len(data) > max_bytes:  # grew while we read it
            raise ObjectTooLarge(f"{key!r} is more than the {max_bytes}-byte limit")
        if if_match is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != if_match.strip('"'):
            raise PreconditionFailed(f"{key!r} changed since it was listed (etag differs from {if_match})")
        return data

    def _final_link_inside(self, dfd: int, parts: list[str], key: str) -> None:
        """Refuse to write or delete at a key that is a symlink leading out of the root."""
        try:
            lst = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(lst.st_mode):
            self._resolved_parts(parts, key)  # raises KeyRefused when it leads outside

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> ObjectInfo:
        parts = self._check_key(key)
        content = read_all(data)
        meta = checked_metadata(content, metadata)
        where = self.root.joinpath(*parts)
        try:
            dfd = self._dir_fd(parts[:-1], key, create=True)
            try:
                self._final_link_inside(dfd, parts, key)
                tmp = _tmp_name()
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _NOFOLLOW, 0o600, dir_fd=dfd)
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
                    os.replace(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
                except BaseException:
                    try:
                        os.unlink(tmp, dir_fd=dfd)
                    except OSError:
                        pass
                    raise
                _fsync_fd(dfd)
            finally:
                os.close(dfd)
        except StorageError:
            raise
        except OSError as exc:
            transient = exc.errno in (errno.ENOSPC, errno.EAGAIN, errno.EINTR, errno.EIO)
            raise StorageError(f"cannot write {where}: {exc}", transient=transient) from exc
        info = self.head(key)
        if info is None:  # pragma: no cover - deleted concurrently
            raise StorageError(f"{key!r} vanished right after it was written", transient=True)
        return info

    def delete(self, key: str) -> None:
        parts = self._check_key(key)
        try:
            dfd = self._dir_fd(parts[:-1], key)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r} in {self.root}: {exc}") from exc
        try:
            self._final_link_inside(dfd, parts, key)
            os.unlink(parts[-1], dir_fd=dfd)  # removes a symlink itself, never its target
            _fsync_fd(dfd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r} in {self.root}: {exc}") from exc
        finally:
            os.close(dfd)


def _tmp_name() -> str:
    """A fresh temporary name (``mkstemp``'s pattern; created with ``O_EXCL``, so a clash fails
    instead of sharing a file)."""
    return TMP_PREFIX + "".join(_TMP_ALPHABET[b % len(_TMP_ALPHABET)] for b in os.urandom(8))


def _fsync_fd(fd: int) -> None:
    """Make a rename/unlink durable (POSIX needs the directory itself synced)."""
    try:
        os.fsync(fd)
    except OSError:
        pass
