"""The bit-exact tier: a JPEG original stored as a standard JPEG XL file that reconstructs it byte for byte.

Why this tier exists: most archives hold JPEGs, and a JPEG that is already compressed (q75, a
common camera and web default) leaves a lossy codec nothing to save at a 40 dB floor, while
libjxl's JPEG reconstruction re-codes the same DCT coefficients with a better entropy coder and
gives back the original file exactly (13-15 % smaller on Kodak q75/q90; docs/BENCHMARKS.md).

What is stored is a plain JPEG XL file (ISO/IEC 18181, container with a ``jbrd`` reconstruction
box), not our ``.cxa``: any JPEG XL decoder, now or in twenty years, can reconstruct the JPEG
from it without this project. The ledger records the tier; readers tell the two kinds of archive
apart by their signature (:func:`is_jpegxl`), so nothing else in the file is ours.

Every transcode is verified before it is offered for storage: the JPEG is reconstructed from
the JPEG XL bytes just produced and its sha256 compared with the original's. A JPEG that libjxl
cannot reconstruct exactly is refused with a specific reason code (:class:`LosslessRefused`),
worked out from the JPEG's own markers so that an operator knows why (arithmetic coding, CMYK,
a truncated stream, ...). The entropy coding itself is libjxl's (``imagecodecs``); this module
only reads marker headers to name a refusal and to check dimensions before any work.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import StrEnum

from .errors import ArchiverError, ImageRejected

#: the two forms a JPEG XL file can start with (ISO/IEC 18181-2 container, bare codestream)
JXL_CONTAINER_SIGNATURE = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
JXL_CODESTREAM_SIGNATURE = b"\xff\x0a"
JXL_MEDIA_TYPE = "image/jxl"


class Tier(StrEnum):
    """How a stored object reproduces its original (``results.tier``, ``archived_objects.tier``)."""

    LOSSY = "lossy"        # the neural codec's .cxa container: pixels within the PSNR floor
    LOSSLESS = "lossless"  # a JPEG XL file that reconstructs the original JPEG byte for byte


class Policy(StrEnum):
    """Which tiers a job may store (``PipelineOptions.policy``, setting ``policy``, ``--policy``)."""

    LOSSY = "lossy"        # the neural codec only
    LOSSLESS = "lossless"  # bit-exact only: JPEG originals transcoded, anything else skipped (``not_jpeg``)
    BEST = "best"          # per object, the smaller verified archive; lossless wins ties within a margin


class Refusal(StrEnum):
    """Why a JPEG did not get the lossless tier (``Result.reason_code`` under ``--policy lossless``)."""

    NOT_JPEG = "not_jpeg"                      # the original is not a JPEG: no bit-exact tier for it
    ARITHMETIC = "jpeg_arithmetic"             # arithmetic-coded (SOF9-SOF15): libjxl re-codes Huffman JPEGs only
    LOSSLESS_JPEG = "jpeg_lossless_process"    # a lossless or hierarchical JPEG process (SOF3/5/6/7)
    COMPONENTS = "jpeg_components"             # CMYK/YCCK or another component count libjxl cannot carry
    TRUNCATED = "jpeg_truncated"               # the stream ends before its end-of-image marker
    MALFORMED = "jpeg_malformed"               # broken marker structure
    UNSUPPORTED = "jpeg_unsupported"           # libjxl refused it for a reason the markers do not show
    MISMATCH = "lossless_mismatch"             # the reconstruction was not byte-identical (never stored)


class LosslessRefused(ArchiverError):
    """A JPEG that cannot be stored bit-exactly; ``code`` is a :class:`Refusal`."""


@dataclass(frozen=True)
class JpegInfo:
    """What the markers say about a JPEG, read without decoding it."""

    width: int
    height: int
    components: int
    sof: int            # the frame marker's low byte: 0xC0 baseline, 0xC2 progressive, ...
    progressive: bool
    restart_interval: int
    ends_with_eoi: bool
    trailing_bytes: int  # bytes after the end-of-image marker


@dataclass(frozen=True)
class Transcoded:
    """A verified lossless transcode."""

    data: bytes           # a standard JPEG XL file
    original_sha256: str  # checked equal to the sha256 of the JPEG reconstructed from ``data``
    info: JpegInfo


def is_jpegxl(data: bytes) -> bool:
    """Whether ``data`` is a JPEG XL file (either signature), not one of our ``.cxa`` containers."""
    head = bytes(data[:12])
    return head.startswith(JXL_CONTAINER_SIGNATURE) or head.startswith(JXL_CODESTREAM_SIGNATURE)


def probe_jpeg(data: bytes) -> JpegInfo:
    """Walk the JPEG's markers up to its frame header and scans (no entropy decoding).

    Raises :class:`LosslessRefused` (``jpeg_malformed`` / ``jpeg_truncated``) when the marker
    structure is broken. Entropy-coded data between markers is skipped byte by byte, as a
    decoder would, so a missing end-of-image marker is found.
    """
    if not data.startswith(b"\xff\xd8"):
        raise LosslessRefused("not a JPEG stream (no start-of-image marker)", code=Refusal.NOT_JPEG)
    n, i = len(data), 2
    sof = comps = w = h = dri = None
    eoi = None
    while i < n:
        if data[i] != 0xFF:
            i += 1  # entropy-coded data (or garbage between segments)
            continue
        while i < n and data[i] == 0xFF:
            i += 1  # fill bytes
        if i >= n:
            break
        m = data[i]
        i += 1
        if m == 0x00 or 0xD0 <= m <= 0xD7 or m == 0x01:
            continue  # stuffed byte, restart marker, TEM: no length
        if m == 0xD9:
            eoi = i
            break
        if i + 2 > n:
            raise LosslessRefused("the JPEG ends inside a marker segment", code=Refusal.TRUNCATED)
        length = struct.unpack(">H", data[i:i + 2])[0]
        if length < 2:
            raise LosslessRefused(f"marker 0xFF{m:02X} has an impossible length {length}", code=Refusal.MALFORMED)
        if i + length > n:
            raise LosslessRefused(f"the JPEG ends inside marker 0xFF{m:02X}", code=Refusal.TRUNCATED)
        seg = data[i + 2:i + length]
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC) and sof is None:
            if len(seg) < 6:
                raise LosslessRefused("frame header too short", code=Refusal.MALFORMED)
            sof, h, w, comps = m, struct.unpack(">H", seg[1:3])[0], struct.unpack(">H", seg[3:5])[0], seg[5]
        elif m == 0xDD and len(seg) >= 2:
            dri = struct.unpack(">H", seg[:2])[0]
        i += length
    if sof is None:
        raise LosslessRefused("no frame header before the end of the stream", code=Refusal.TRUNCATED if eoi is None
                              else Refusal.MALFORMED)
    return JpegInfo(width=w or 0, height=h or 0, components=comps or 0, sof=sof, progressive=sof in (0xC2, 0xC6, 0xCA, 0xCE),
                    restart_interval=dri or 0, ends_with_eoi=eoi is not None,
                    trailing_bytes=(n - eoi) if eoi is not None else 0)


def _refusal_for(info: JpegInfo) -> tuple[Refusal, str] | None:
    """The reason libjxl will refuse this JPEG, when its markers already say so."""
    if info.sof in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
        return Refusal.ARITHMETIC, f"arithmetic-coded JPEG (SOF{info.sof - 0xC0}); only Huffman-coded JPEGs re-code losslessly"
    if info.sof in (0xC3, 0xC5, 0xC6, 0xC7):
        return Refusal.LOSSLESS_JPEG, f"lossless or hierarchical JPEG process (SOF{info.sof - 0xC0})"
    if info.components not in (1, 3):
        return Refusal.COMPONENTS, (f"{info.components}-component JPEG (CMYK/YCCK or similar); JPEG XL reconstruction "
                                    "carries 1 or 3 components")
    if not info.ends_with_eoi:
        return Refusal.TRUNCATED, "the JPEG has no end-of-image marker (truncated)"
    return None


def transcode(data: bytes, *, max_pixels: int | None = None) -> Transcoded:
    """Transcode a JPEG to JPEG XL losslessly and verify it, or raise :class:`LosslessRefused`.

    Verification: the JPEG is reconstructed from the JPEG XL bytes with libjxl's decoder and its
    sha256 must equal the original's; otherwise ``lossless_mismatch`` (nothing is returned, so
    nothing unverified can be stored). ``max_pixels``: the decompression-bomb guard, checked on
    the frame header before libjxl allocates anything (``decompression_bomb``).
    """
    import imagecodecs  # heavy import, only where a JPEG is transcoded

    info = probe_jpeg(data)
    if max_pixels is not None and info.width * info.height > max_pixels:
        raise ImageRejected(f"{info.width}x{info.height} = {info.width * info.height:,} pixels, above max_pixels "
                            f"{max_pixels:,}", code="decompression_bomb")
    known = _refusal_for(info)
    if known is not None:
        raise LosslessRefused(known[1], code=known[0])
    try:
        jxl = imagecodecs.jpegxl_encode_jpeg(data)
    except Exception as e:  # libjxl's refusal carries no reason; the markers above named the known ones
        raise LosslessRefused(f"libjxl cannot re-code this JPEG losslessly: {e}", code=Refusal.UNSUPPORTED) from None
    want = hashlib.sha256(data).hexdigest()
    try:
        back = reconstruct(jxl)
    except ArchiverError as e:
        raise LosslessRefused(f"the JPEG XL file just written does not reconstruct: {e}", code=Refusal.MISMATCH) from None
    if hashlib.sha256(back).hexdigest() != want:
        raise LosslessRefused("the JPEG reconstructed from the JPEG XL file differs from the original",
                              code=Refusal.MISMATCH)
    return Transcoded(data=bytes(jxl), original_sha256=want, info=info)


def reconstruct(jxl: bytes) -> bytes:
    """The original JPEG's bytes from a JPEG XL file made by :func:`transcode`.

    Raises ``ArchiverError`` (``jxl_not_reconstructible``) for a JPEG XL file without JPEG
    reconstruction data (not made from a JPEG) or a damaged one.
    """
    import imagecodecs

    if not is_jpegxl(jxl):
        raise ArchiverError("not a JPEG XL file", code="bad_magic")
    try:
        return bytes(imagecodecs.jpegxl_decode_jpeg(jxl))
    except Exception as e:
        raise ArchiverError(f"cannot reconstruct the JPEG from this JPEG XL file: {e}",
                            code="jxl_not_reconstructible") from None
