"""Turning archived containers back into images (``archiver restore``, the retrieval task and the
HTTP endpoint all use these functions)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .codec.api import Codec, DecodedImage
from .codec.container import DEFAULT_MAX_PIXELS, read_meta
from .errors import ArchiverError
from .images import load_image, save_image, to_pil
from .errors import StorageError
from .lossless import is_jpegxl, reconstruct
from .storage import ObjectStore

log = logging.getLogger(__name__)

#: content type of the original -> the format we re-create it in for ``--format original``.
#: Only formats ``images.save_image`` writes; TIFF, BMP and GIF originals come back as PNG
#: (lossless, keeps alpha), under a ``.png`` name so that the name does not lie about the bytes.
ORIGINAL_FORMATS = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class CodecSource(Protocol):
    """Where decoders get a codec for a model id (a front door's :class:`archiver.runtime.Runtime`:
    one codec per model and device for the whole process)."""

    def codec(self, model_id: str | None = None, device: str | None = None, *,
              expect_sha256: str | None = None) -> Codec: ...


def decode_container(data: bytes, codecs: CodecSource, device: str | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, *, time_budget_s: float | None = None,
                     deadline: float | None = None) -> DecodedImage:
    """Decode with the model the container names.

    The one place every front door (``decode``, ``restore``, the retrieval task, ``serve``) gets
    a codec for a container: a model the package does not ship is fetched from the model store
    (the runtime's ``settings.model_store``) on first use, and must have the weights sha256 the
    container names. ``device``: None for the runtime's configured device.

    Front doors pass ``max_pixels=settings.max_pixels``: a container declaring more pixels is
    refused (``absurd_dimensions``) before the model is even loaded. ``time_budget_s`` (seconds
    from now) or ``deadline`` (``time.monotonic()``) stop a decode between slices with
    ``decode_timeout``; see ``Codec.decode`` for the other limits and error codes.
    """
    meta = read_meta(data, max_pixels=max_pixels)
    codec = codecs.codec(meta.model_id, device, expect_sha256=meta.weights_sha256)
    return codec.decode(data, max_pixels=max_pixels, time_budget_s=time_budget_s, deadline=deadline)


def render(decoded: DecodedImage, fmt: str) -> tuple[bytes, str]:
    """Encode a decoded image for delivery; ``fmt`` is png | jpeg | webp | original."""
    if fmt == "original":
        fmt = ORIGINAL_FORMATS.get(decoded.meta.content_type, "png")
    if fmt not in MEDIA_TYPES:
        raise ArchiverError(f"unsupported output format {fmt!r}", code="bad_format")
    return save_image(decoded.image, fmt, icc=decoded.icc, exif=decoded.exif), fmt


def restore_image(data: bytes, codecs: CodecSource, fmt: str, device: str | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, *, time_budget_s: float | None = None) -> tuple[bytes, str]:
    """An archived object (either tier) as delivered bytes; returns ``(bytes, format used)``.

    The one function every front door (``restore``, the retrieve task, ``serve``) turns a stored
    object into an image with. A lossless-tier object (a JPEG XL file, told apart from a ``.cxa``
    by its signature) gives back the original JPEG **byte for byte** for ``original`` and
    ``jpeg``; ``png`` / ``webp`` decode that JPEG (its ICC profile and EXIF carried over). A
    ``.cxa`` is decoded by :func:`decode_container` and rendered by :func:`render`.
    """
    if is_jpegxl(data):
        jpeg = reconstruct(data)
        if fmt in ("original", "jpeg"):
            return jpeg, "jpeg"
        if fmt not in MEDIA_TYPES:
            raise ArchiverError(f"unsupported output format {fmt!r}", code="bad_format")
        img = load_image(jpeg, max_pixels=max_pixels)
        return save_image(to_pil(img.rgb, img.alpha, img.mode), fmt, icc=img.icc, exif=img.exif), fmt
    return render(decode_container(data, codecs, device, max_pixels=max_pixels, time_budget_s=time_budget_s), fmt)


def prepare_destination(dst: ObjectStore) -> None:
    """Once per job, before any work: fail at once when ``dst`` cannot be written (a missing
    bucket or directory, a missing permission: :class:`~archiver.storage.DestinationUnwritable`),
    and remove temporary files that interrupted writes of earlier runs left there.

    A *transient* failure of the probe (an outage) is only logged: the job goes on and each
    object's write is retried and, failing that, recorded, as before.
    """
    try:
        dst.check_writable()
    except StorageError as exc:
        if not exc.transient:
            raise
        log.warning("cannot probe %s (%s); going on, writes will be retried per object", dst.url, exc)
        return
    try:
        dst.remove_stale_temp()
    except StorageError as exc:  # tidying must never stop a job
        log.warning("cannot remove stale temporary files under %s: %s", dst.url, exc)


@dataclass
class Restored:
    key: str
    out_key: str | None
    ok: bool
    error: str | None = None
    bytes_out: int = 0
    skipped: bool = False  # the output already existed and overwriting was not asked for


def restored_key(container_key: str, suffix: str, fmt: str, used: str | None = None) -> str:
    """Output key: ``a/b.jpg.cxa`` -> ``a/b.jpg`` (``original``, re-created as JPEG) or ``a/b.png``.

    ``used`` is the format actually written; with ``fmt="original"`` the original name is kept
    only when the original's own format was written (a TIFF comes back as ``.png``).
    """
    base = container_key.removesuffix(suffix)
    if fmt == "original" and (used is None or _ext_matches(base, used)):
        return base
    out_fmt = used or fmt
    stem = base.rsplit(".", 1)[0] if "." in base.rsplit("/", 1)[-1] else base
    return stem + EXTENSIONS[out_fmt]


def _ext_matches(name: str, fmt: str) -> bool:
    leaf = name.rsplit("/", 1)[-1]
    ext = leaf.rsplit(".", 1)[-1].lower() if "." in leaf else ""
    return ext in {"png": ("png",), "jpeg": ("jpg", "jpeg", "jpe", "jfif"), "webp": ("webp",)}[fmt]


#: the longest file name most file systems take (ext4, XFS, btrfs, APFS, NTFS: 255)
NAME_MAX = 255


def unrestorable_reason(key: str, suffix: str = ".cxa") -> str | None:
    """Why the object at ``key`` (its full key in its bucket) could not be restored to a
    directory under its own name, or None when it can.

    S3 accepts any key, but ``archiver restore … --to DIR`` (and every file system) cannot create
    ``a//b``, ``/a``, ``a/./b``, ``a/../b`` or a name longer than :data:`NAME_MAX` bytes. The
    pipeline refuses such objects before archiving (``unsafe_key``), so that no original is ever
    replaced by an archive that one of the documented routes cannot bring back.
    """
    if "\x00" in key:
        return "the key contains a NUL byte"
    if key.startswith("/"):
        return "the key starts with '/'"
    longest = NAME_MAX - max(len(suffix.encode()), max(len(e) for e in EXTENSIONS.values()))
    for part in key.split("/"):
        if part == "":
            return "the key has an empty segment ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"the key has a {part!r} segment"
        if len(part.encode("utf-8", "surrogateescape")) > longest:
            return f"a segment of the key is longer than {longest} bytes (file names are limited to {NAME_MAX})"
    return None


def restore_all(src: ObjectStore, dst: ObjectStore, *, codecs: CodecSource, fmt: str = "png", suffix: str = ".cxa",
                device: str | None = None, limit: int | None = None, on_item: Callable[[Restored], None] | None = None,
                overwrite: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Restored]:
    """Decode every container under ``src`` into ``dst``; a bad container is reported, not fatal.

    Lossless-tier archives (JPEG XL) come back as the original JPEG's exact bytes with
    ``original`` or ``jpeg`` (:func:`restore_image`).

    The original's name is kept when it was re-created in its own format, e.g. ``a/b.jpg.cxa``
    -> ``a/b.jpg`` with ``fmt="original"``; otherwise the extension is the written format's.
    An object already at the output key is never replaced unless ``overwrite``: restoring into
    the archive's own bucket would otherwise put a lossy decode over an original that still
    exists (``skipped``, not an error, so a rerun completes an interrupted restore).
    """
    if fmt not in (*MEDIA_TYPES, "original"):
        raise ArchiverError(f"unsupported output format {fmt!r}; use png, jpeg, webp or original", code="bad_format")
    prepare_destination(dst)  # before the first decode: a wrong --to fails at once
    n = 0
    for info in src.list():
        if not info.key.endswith(suffix):
            continue
        try:
            # A fixed format names its output before decoding, so an existing one costs no decode;
            # "original" knows its output name (and format) only after rendering.
            known = None if fmt == "original" else restored_key(info.key, suffix, fmt)
            if known is not None and not overwrite and dst.head(known) is not None:
                item = Restored(info.key, known, True, skipped=True)
            else:
                data, used = restore_image(src.get(info.key, max_bytes=max(info.size, 1)), codecs, fmt, device,
                                           max_pixels=max_pixels)
                out_key = known or restored_key(info.key, suffix, fmt, used)
                if known is None and not overwrite and dst.head(out_key) is not None:
                    item = Restored(info.key, out_key, True, skipped=True)
                else:
                    dst.put(out_key, data, metadata={}, content_type=MEDIA_TYPES[used])
                    item = Restored(info.key, out_key, True, bytes_out=len(data))
        except ArchiverError as e:
            item = Restored(info.key, None, False, f"{e.code}: {e}")
        except Exception as e:  # a decoder bug or a library error on one container: report it, go on
            log.exception("cannot restore %s", info.key)
            item = Restored(info.key, None, False, f"internal_error: {type(e).__name__}: {e}")
        if on_item:
            on_item(item)
        yield item
        n += 1
        if limit is not None and n >= limit:
            return
