"""Input images: what is really in the bytes, what we accept, and how it is decoded.

An archive replaces the original, so the rule here is *refuse rather than silently lose
information*: every input is either decoded into a form the codec can reproduce (8-bit RGB plus an
optional lossless alpha plane, with the ICC profile and EXIF kept verbatim) or rejected with an
:class:`~archiver.errors.ImageRejected` whose ``code`` says why:

``empty``               zero bytes
``not_an_image``        magic bytes of none of JPEG, PNG, TIFF, WebP, BMP, GIF
``decompression_bomb``  the header claims more than ``max_pixels`` pixels (checked before decoding)
``too_large``           a side longer than 65535 px (the container's limit)
``corrupt``             truncated or malformed data (Pillow's ``LOAD_TRUNCATED_IMAGES`` is forced off)
``unsupported_mode``    CMYK, YCbCr, LAB, HSV...: converting to RGB would alter the colours
``unsupported_depth``   more than 8 bits per sample (16-bit PNG/TIFF, 32-bit int, float)
``animated``            an animated GIF, WebP or APNG (more than one frame)
``multi_image``         a multi-page TIFF, or a JPEG holding several images (MPO: stereo pairs,
                        gain maps): only the first would be archived

Accepted modes (``LoadedImage.mode`` records the original one, after orientation):
``RGB``, ``L`` (gray), ``RGBA``, ``LA``, ``P`` (palette: coded as RGB, or RGB + alpha when it has
transparency) and ``1`` (bilevel: coded as gray 0/255). Pillow's ``RGBX``/``RGBa``/``PA``/``La``
variants map to ``RGB``/``RGBA``/``P``/``LA``. An ``RGB`` or ``L`` image with a PNG ``tRNS``
colour key is recorded as ``RGBA``/``LA`` with the key turned into an alpha plane, so the
transparency survives.

Metadata kept: the ICC profile (bytes as embedded) and EXIF. EXIF is stored in one canonical form,
``b"Exif\\x00\\x00"`` followed by the TIFF structure (the JPEG APP1 payload), whatever container it
came from; when the pixels are rotated by the EXIF Orientation tag, that tag is rewritten to 1 in
place, byte-for-byte elsewhere, so maker notes and their offsets survive. Other metadata (XMP,
PNG text chunks, DPI, GIF comments) is not carried.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile

from .errors import ImageRejected

log = logging.getLogger(__name__)

MAX_SIDE = 65535  # the container stores width and height as 1..65535
EXIF_PREFIX = b"Exif\x00\x00"
ORIENTATION_TAG = 0x0112
ACCEPTED_MODES = ("RGB", "L", "RGBA", "LA", "P", "1")

# Pillow plugins allowed per sniffed type: Pillow only tries the plugin matching the real bytes,
# so a file can never reach a plugin we did not mean to expose (EPS would run Ghostscript).
_PLUGINS: dict[str, list[str]] = {
    "image/jpeg": ["JPEG", "MPO"],
    "image/png": ["PNG"],
    "image/tiff": ["TIFF"],
    "image/webp": ["WEBP"],
    "image/bmp": ["BMP"],
    "image/gif": ["GIF"],
}

# EXIF orientation -> the transposition that undoes it (the table of ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# TIFF tags that describe the file's layout rather than the picture; they are meaningless once the
# pixels are re-encoded, so they are dropped when a TIFF's tags are turned into an EXIF block.
_TIFF_STRUCTURAL_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 288, 289, 290,
    291, 292, 293, 296, 317, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 512, 513, 514,
    515, 517, 518, 519, 520, 521, 529, 530, 531, 532, 34675, 37724,
})


@dataclass
class LoadedImage:
    """A decoded input, ready for the codec.

    ``rgb`` is always (H, W, 3) uint8 (gray replicated to three channels), ``alpha`` is (H, W)
    uint8 or None; ``mode`` is the original Pillow mode (one of :data:`ACCEPTED_MODES`) so that
    retrieval can give back the same kind of image; ``width``/``height`` are after orientation.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    mode: str
    content_type: str
    icc: bytes | None
    exif: bytes | None
    width: int
    height: int
    original_bytes: int
    original_sha256: str


# ------------------------------------------------------------------------------------------------
def sniff(data: bytes) -> str:
    """Return the real content type of ``data`` from its magic bytes.

    Object-store content types and file extensions lie; the bytes do not. Raises
    ``ImageRejected`` (``empty`` or ``not_an_image``) for anything else.
    """
    if not data:
        raise ImageRejected("the object is empty (0 bytes)", code="empty")
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image/tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:2] == b"BM" and len(data) >= 26:
        return "image/bmp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    what = _describe_non_image(head)
    raise ImageRejected(
        f"not a supported image ({what}); supported: JPEG, PNG, TIFF, WebP, BMP, GIF", code="not_an_image"
    )


def _describe_non_image(head: bytes) -> str:
    """A hint for the rejection message, so an operator can see what the object really was."""
    if head.startswith(b"\x89CXA"):
        return "this is already a .cxa archive container"
    known = {b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive", b"\x1f\x8b": "gzip data",
             b"\x00\x00\x00\x0cjP": "JPEG 2000", b"%!PS": "PostScript"}
    for magic, name in known.items():
        if head.startswith(magic):
            return f"looks like {name}"
    if head[4:8] == b"ftyp":
        return f"an ISO-BMFF file (brand {head[8:12].decode('latin-1')!r}: HEIF/AVIF/MP4)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"unknown magic bytes {head[:8].hex()}"
    return "looks like text"


# ------------------------------------------------------------------------------------------------
def load_image(data: bytes, *, max_pixels: int) -> LoadedImage:
    """Decode ``data`` under the mode policy of this module, or raise ``ImageRejected``.

    Order matters for safety: sniff the type, open the header only, check the pixel count and
    the bit depth *before* any pixel is decoded, then decode inside a ``try`` that turns every
    Pillow failure into ``corrupt``.
    """
    content_type = sniff(data)
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    # Truncated files must fail, not come back half grey: this is a process-wide Pillow switch,
    # so force it back to its safe default rather than trust whoever ran before us.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; forcing it to False")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    # Pillow's own bomb guard warns above MAX_IMAGE_PIXELS and raises above twice that, at open
    # time. Our limit is the authority: raise Pillow's to ours (never lower it) so that legitimate
    # large images are not refused by Pillow, and bombs are refused by our check below anyway.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels

    if content_type == "image/png":
        _check_png_header(data)
    try:
        im = Image.open(io.BytesIO(data), formats=_PLUGINS[content_type])
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"decompression bomb refused by the image header check: {exc}",
                            code="decompression_bomb") from exc
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise ImageRejected(f"cannot parse {content_type} header: {exc}", code="corrupt") from exc
    try:
        try:
            _check_header(im, content_type, max_pixels)
        except ImageRejected:
            raise
        except Image.DecompressionBombError as exc:  # GIF frames are checked while counting them
            raise ImageRejected(f"decompression bomb refused: {exc}", code="decompression_bomb") from exc
        except Exception as exc:  # e.g. a broken IFD chain while counting TIFF pages
            raise ImageRejected(f"{content_type} structure is corrupt: {exc}", code="corrupt") from exc
        try:
            im.load()
        except Image.DecompressionBombError as exc:  # e.g. a GIF frame larger than the screen
            raise ImageRejected(f"decompression bomb refused while decoding: {exc}",
                                code="decompression_bomb") from exc
        except Exception as exc:
            raise ImageRejected(f"{content_type} data is truncated or corrupt: {exc}", code="corrupt") from exc
        if im.size[0] * im.size[1] > max_pixels:  # a plugin may only know the real size after load
            raise ImageRejected(f"decoded size {im.size[0]}x{im.size[1]} exceeds {max_pixels} pixels",
                                code="decompression_bomb")
        return _finish(im, content_type, original=data)
    finally:
        im.close()


def from_pil(image: Image.Image, *, content_type: str | None = None, original: bytes | None = None) -> LoadedImage:
    """Apply the same orientation and mode policy to an image already in memory.

    Used when the codec is handed a ``PIL.Image`` directly (tests, library users). Without the
    ``original`` bytes there is no original file: ``original_bytes`` is then 0 and
    ``original_sha256`` the SHA-256 of the empty string. The caller's image is not modified.
    Checks that need the file's bytes (16-bit PNG headers, the pixel-count guard before
    decoding) are ``load_image``'s: untrusted bytes must go through ``load_image``.
    """
    if image.size[0] < 1 or image.size[1] < 1:
        raise ImageRejected(f"image has no pixels ({image.size[0]}x{image.size[1]})", code="empty")
    if content_type is None:
        content_type = Image.MIME.get(image.format or "", "image/x-raw")
    if original and content_type == "image/png":
        _check_png_header(original)
    _check_frames(image)
    _check_mode(image)
    if max(image.size) > MAX_SIDE:
        raise ImageRejected(f"{image.size[0]}x{image.size[1]} has a side over {MAX_SIDE} px", code="too_large")
    try:
        image.load()
    except Exception as exc:
        raise ImageRejected(f"image data is truncated or corrupt: {exc}", code="corrupt") from exc
    return _finish(image, content_type, original=original if original is not None else b"")


# ------------------------------------------------------------------------------------------------
def _check_png_header(data: bytes) -> None:
    """Walk the PNG's chunks before Pillow sees them.

    Refuses 16-bit PNGs from the IHDR bytes (Pillow silently reduces 16-bit RGB(A) to 8 bits),
    and damage Pillow tolerates: it does not verify IDAT CRCs and stops quietly when the file
    ends after the last pixel row (missing IEND, cut zlib trailer). Only chunk headers are
    parsed and CRC-32 is cheap, so this costs little next to decoding.
    """
    n = len(data)
    # signature(8) | length(4) "IHDR"(4) | width(4) height(4) depth(1) colour type(1) ...
    if n < 33 or data[12:16] != b"IHDR":
        raise ImageRejected("PNG is truncated or has no IHDR chunk first", code="corrupt")
    depth, colour_type = data[24], data[25]
    if depth > 8:
        raise ImageRejected(
            f"PNG has {depth} bits per sample (colour type {colour_type}); only 8-bit images are "
            "archived, reducing the depth would lose information", code="unsupported_depth")
    pos = 8
    view = memoryview(data)
    while True:
        if n - pos < 12:
            raise ImageRejected(f"PNG is truncated at byte {n}: no IEND chunk", code="corrupt")
        length = struct.unpack(">I", view[pos:pos + 4])[0]
        kind = bytes(view[pos + 4:pos + 8])
        if length > 0x7FFFFFFF or length > n - pos - 12:
            raise ImageRejected(f"PNG is truncated: chunk {kind!r} at offset {pos} declares {length} bytes "
                                f"but only {max(0, n - pos - 12)} remain", code="corrupt")
        end = pos + 8 + length
        if zlib.crc32(view[pos + 4:end]) != struct.unpack(">I", view[end:end + 4])[0]:
            raise ImageRejected(f"PNG chunk {kind!r} at offset {pos} fails its CRC: the file is damaged",
                                code="corrupt")
        pos = end + 4
        if kind == b"IEND":
            return  # bytes after IEND (some tools append data) do not affect the image


def _check_header(im: Image.Image, content_type: str, max_pixels: int) -> None:
    """All checks that need only the header: size, depth, mode, frame count."""
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageRejected(f"image header declares {w}x{h} pixels", code="corrupt")
    if w * h > max_pixels:
        raise ImageRejected(
            f"image header declares {w}x{h} = {w * h} pixels, over the limit of {max_pixels}: refused "
            "before decoding (decompression bomb guard)", code="decompression_bomb")
    if max(w, h) > MAX_SIDE:
        raise ImageRejected(f"{w}x{h} has a side over {MAX_SIDE} px, the archive format's limit", code="too_large")
    if content_type == "image/tiff":
        _check_tiff_depth(im)
    _check_mode(im)
    _check_frames(im)


def _check_tiff_depth(im: Image.Image) -> None:
    """Pillow opens some 16-bit TIFFs (e.g. RGB;16B) as 8-bit RGB: read the tags instead."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    fmt = tags.get(339, (1,))
    fmt = fmt if isinstance(fmt, tuple) else (fmt,)
    if any(int(b) > 8 for b in bits):
        raise ImageRejected(f"TIFF has {max(int(b) for b in bits)} bits per sample; only 8-bit images are archived",
                            code="unsupported_depth")
    if any(int(f) == 3 for f in fmt):
        raise ImageRejected("TIFF holds floating-point samples", code="unsupported_depth")


def _check_mode(im: Image.Image) -> None:
    mode = im.mode
    if mode in ("RGB", "L", "RGBA", "LA", "P", "1", "PA", "RGBX", "RGBa", "La"):
        return
    if mode.startswith(("I", "F")):  # I, I;16, I;16B, I;16L, I;16N, F
        raise ImageRejected(f"image mode {mode} has more than 8 bits per sample; only 8-bit images are archived",
                            code="unsupported_depth")
    raise ImageRejected(
        f"image mode {mode} would need a lossy colour conversion to RGB; refused so that no colour "
        "information is silently lost", code="unsupported_mode")


def _check_frames(im: Image.Image) -> None:
    n = getattr(im, "n_frames", 1)
    if n > 1:
        if im.format in ("TIFF", "MPO", "JPEG"):
            what = "pages" if im.format == "TIFF" else "images (MPO: stereo pair, gain map or preview)"
            raise ImageRejected(f"{im.format} holds {n} {what}; only single images are archived", code="multi_image")
        raise ImageRejected(f"{im.format or 'image'} is animated ({n} frames); only still images are archived",
                            code="animated")


def _finish(im: Image.Image, content_type: str, *, original: bytes) -> LoadedImage:
    """Orientation, metadata and the mode policy, on a loaded image."""
    icc = im.info.get("icc_profile") or None
    # Read after load(): Pillow's TIFF loader applies the orientation itself and drops the tag, so
    # reading it now (not from the header) is what keeps a TIFF from being rotated twice.
    raw_exif, orientation = _read_exif(im)
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        im = im.transpose(method)
        if raw_exif is not None:
            raw_exif = _reset_orientation(raw_exif)
    rgb, alpha, mode = _to_arrays(im)
    h, w = rgb.shape[:2]
    return LoadedImage(
        rgb=rgb, alpha=alpha, mode=mode, content_type=content_type,
        icc=bytes(icc) if icc else None, exif=raw_exif or None, width=w, height=h,
        original_bytes=len(original), original_sha256=hashlib.sha256(original).hexdigest(),
    )


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Pixels as (rgb, alpha, original mode); see the module docstring for the mapping."""
    mode = im.mode
    has_trns = "transparency" in im.info and im.info["transparency"] is not None
    if mode in ("RGBX", "RGBa"):
        im, mode = im.convert("RGB" if mode == "RGBX" else "RGBA"), ("RGB" if mode == "RGBX" else "RGBA")
    elif mode == "La":
        im, mode = im.convert("LA"), "LA"
    elif mode in ("RGB", "L") and has_trns:
        # A tRNS colour key: keep it as an alpha plane (recorded as RGBA/LA).
        mode = "RGBA" if mode == "RGB" else "LA"
        im = im.convert(mode)
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy(), None, "RGB"
    if mode == "RGBA":
        a = np.asarray(im, dtype=np.uint8)
        return np.ascontiguousarray(a[:, :, :3]), np.ascontiguousarray(a[:, :, 3]), "RGBA"
    if mode in ("L", "1"):
        g = np.asarray(im.convert("L") if mode == "1" else im, dtype=np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2), None, mode
    if mode == "LA":
        a = np.asarray(im, dtype=np.uint8)
        return np.repeat(a[:, :, :1], 3, axis=2), np.ascontiguousarray(a[:, :, 1]), "LA"
    if mode in ("P", "PA"):
        transparent = mode == "PA" or im.has_transparency_data
        a = np.asarray(im.convert("RGBA" if transparent else "RGB"), dtype=np.uint8)
        if transparent:
            return np.ascontiguousarray(a[:, :, :3]), np.ascontiguousarray(a[:, :, 3]), "P"
        return a.copy(), None, "P"
    raise ImageRejected(f"image mode {mode} is not supported", code="unsupported_mode")  # pragma: no cover


# ------------------------------------------------------------------------------------------------
# EXIF: read the raw block, normalise it, and reset Orientation without re-serialising.

def _read_exif(im: Image.Image) -> tuple[bytes | None, int]:
    """Return (canonical EXIF bytes or None, orientation 1..8)."""
    raw = im.info.get("exif")
    exif_obj = None
    try:
        exif_obj = im.getexif()
        orientation = int(exif_obj.get(ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF: keep the bytes, do not rotate
        orientation = 1
    if isinstance(raw, (bytes, bytearray)) and raw:
        raw = bytes(raw)
        if raw.startswith(EXIF_PREFIX):
            canonical = raw
        elif raw[:4] in (b"II*\x00", b"MM\x00*"):
            canonical = EXIF_PREFIX + raw
        else:
            canonical = raw  # unknown framing: keep it verbatim rather than drop it
    elif im.format == "TIFF" and exif_obj is not None:
        canonical = _exif_from_tiff_tags(exif_obj)
    elif exif_obj is not None and len(exif_obj) and im.format == "PNG":
        # PNG "Raw profile type exif" text chunk (ImageMagick): only reachable through Pillow
        canonical = _safe_tobytes(exif_obj)
    else:
        canonical = None
    return canonical, orientation if orientation in range(1, 9) else 1


def _safe_tobytes(exif: Image.Exif) -> bytes | None:
    try:
        data = exif.tobytes()
    except Exception:
        return None
    return data if len(data) > len(EXIF_PREFIX) + 8 else None


def _exif_from_tiff_tags(tiff_exif: Image.Exif) -> bytes | None:
    """A TIFF's metadata lives among its structural tags: keep only the descriptive ones."""
    try:
        out = Image.Exif()
        for tag, value in tiff_exif.items():
            if tag in _TIFF_STRUCTURAL_TAGS:
                continue
            if tag in (0x8769, 0x8825):  # Exif and GPS sub-IFDs
                value = tiff_exif.get_ifd(tag)
                if not value:
                    continue
            out[tag] = value
        if not len(out):
            return None
        return _safe_tobytes(out)
    except Exception:
        return None


def _reset_orientation(exif: bytes) -> bytes:
    """Set IFD0 Orientation to 1, changing only those two bytes when the layout allows it."""
    patched = _patch_orientation_in_place(exif)
    if patched is not None:
        return patched
    try:  # fall back to Pillow's re-serialisation (may lose maker-note offsets, but is valid)
        e = Image.Exif()
        e.load(exif)
        e[ORIENTATION_TAG] = 1
        data = e.tobytes()
        return data if data.startswith(EXIF_PREFIX) else EXIF_PREFIX + data
    except Exception:
        log.warning("could not reset the EXIF orientation tag; EXIF dropped to avoid double rotation")
        return b""  # falsy: treated as no EXIF by the caller below


def _patch_orientation_in_place(exif: bytes) -> bytes | None:
    if not exif.startswith(EXIF_PREFIX):
        return None
    base = len(EXIF_PREFIX)
    tiff = exif[base:]
    if len(tiff) < 8:
        return None
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or struct.unpack(order + "H", tiff[2:4])[0] != 42:
        return None
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return None
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    for i in range(count):
        e = ifd + 2 + 12 * i
        if e + 12 > len(tiff):
            return None
        tag, typ, n = struct.unpack(order + "HHI", tiff[e:e + 8])
        if tag == ORIENTATION_TAG:
            if typ != 3 or n != 1:  # SHORT, one value, stored in the entry itself
                return None
            out = bytearray(exif)
            out[base + e + 8:base + e + 10] = struct.pack(order + "H", 1)
            return bytes(out)
    return exif  # no Orientation in IFD0 (it came from XMP): nothing to reset here


# ------------------------------------------------------------------------------------------------
def to_pil(rgb: np.ndarray, alpha: np.ndarray | None, mode: str) -> Image.Image:
    """Rebuild a Pillow image of the original kind from decoded pixels.

    ``L``/``LA``/``1`` come back as gray, taking the rounded channel mean (exact for gray
    replicated to three channels). ``RGBA``/``LA`` carry the alpha plane. ``P`` comes back as
    ``RGB`` (or ``RGBA`` with transparency) and ``1`` as ``L``: the palette and the bilevel
    quantisation are not reproduced, since the decoded pixels are no longer exactly the
    palette's colours. A mode that needs alpha but has none comes back without it.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got {rgb.shape}")
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha, dtype=np.uint8)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha {alpha.shape} does not match rgb {rgb.shape[:2]}")
    if mode in ("L", "LA", "1"):
        gray = Image.fromarray(_gray(rgb))
        if mode == "LA" and alpha is not None:
            return Image.merge("LA", (gray, Image.fromarray(alpha)))
        return gray
    color = Image.fromarray(rgb)
    if mode in ("RGBA", "P") and alpha is not None:
        color.putalpha(Image.fromarray(alpha))
    return color


def _gray(rgb: np.ndarray) -> np.ndarray:
    """Rounded channel mean: the exact inverse of gray replication, a fair luma otherwise."""
    s = rgb.astype(np.uint16).sum(axis=2)
    return ((s * 2 + 3) // 6).astype(np.uint8)  # floor(s / 3 + 0.5) in integers


def save_image(img: Image.Image, fmt: Literal["png", "jpeg", "webp"], icc: bytes | None = None,
               exif: bytes | None = None, *, quality: int = 95) -> bytes:
    """Encode a retrieved image for delivery, carrying ICC and EXIF where the format allows.

    PNG is lossless and keeps alpha. JPEG drops alpha (and has no gray+alpha: LA becomes L) and
    uses 4:4:4 chroma at ``quality``; an EXIF block over JPEG's 64 KiB marker limit is dropped
    with a warning. WebP keeps alpha, has no gray mode (gray becomes RGB) and is lossless when
    ``quality`` is 100.
    """
    fmt_l = fmt.lower()
    if fmt_l == "jpg":
        fmt_l = "jpeg"
    if fmt_l not in ("png", "jpeg", "webp"):
        raise ValueError(f"unsupported output format {fmt!r}; use png, jpeg or webp")
    if exif and not exif.startswith(EXIF_PREFIX) and exif[:4] in (b"II*\x00", b"MM\x00*"):
        exif = EXIF_PREFIX + exif
    kwargs: dict = {}
    if icc:
        kwargs["icc_profile"] = icc
    if exif:
        kwargs["exif"] = exif
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if img.has_transparency_data else "RGB")
    buf = io.BytesIO()
    if fmt_l == "png":
        img.save(buf, "PNG", compress_level=6, **kwargs)
    elif fmt_l == "jpeg":
        if img.mode in ("RGBA", "LA"):
            img = img.convert("RGB" if img.mode == "RGBA" else "L")
        if exif and len(exif) > 65533:
            log.warning("EXIF block of %d bytes does not fit a JPEG APP1 marker; dropped", len(exif))
            kwargs.pop("exif")
        img.save(buf, "JPEG", quality=int(quality), subsampling=0, optimize=True, **kwargs)
    else:
        if img.mode in ("L", "LA"):
            img = img.convert("RGB" if img.mode == "L" else "RGBA")
        if quality >= 100:
            img.save(buf, "WEBP", lossless=True, exact=True, **kwargs)
        else:
            img.save(buf, "WEBP", quality=int(quality), method=4, **kwargs)
    return buf.getvalue()


def delivered(rgb: np.ndarray, mode: str) -> np.ndarray:
    """What a user gets back: gray modes come back as gray, so PSNR is measured on that."""
    if mode in ("L", "LA", "1"):
        g = np.floor(rgb.astype(np.float32).mean(axis=2) + 0.5).clip(0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    return rgb
