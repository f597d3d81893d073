"""The ``.cxa`` container: a self-describing, checksummed envelope for the codec's bitstreams.

Archives must decode years later on any machine, and must fail *loudly and specifically* when
damaged, so the format is deliberately simple and strict (all integers big-endian)::

    magic      8 bytes  b"\\x89CXA\\r\\n\\x1a\\n"
    version    u16      = 4 (written since 2026-12-07, issue 24; versions 1, 2 and 3 are still read, see below)
    header_crc u32      CRC-32 of magic + version
    sections   repeated: tag (4 ASCII letters) | length u32 | payload | crc u32
               (the CRC-32 covers tag + length + payload)

The magic follows PNG's design: the high-bit first byte catches 7-bit transfers, CR LF catches
line-ending conversion, ^Z stops a DOS ``type``. The first 14 bytes (magic, version, header CRC)
are the one part every future version must keep, so that any reader can say which version a
file is.

Sections, in order: ``META`` exactly once and first (at most 64 KiB; versions 1-3: canonical JSON,
UTF-8, sorted keys, no whitespace; version 4: the binary layout below); then, at most once each and in any order, ``ICCP`` (ICC profile),
``EXIF`` (EXIF block) and ``ALPH`` (the alpha plane, zlib-compressed, exactly width*height bytes
once inflated; present exactly when the mode is RGBA or LA, optional for P); then the ``TILE``
sections, ``n_tiles`` of them in raster order (row-major over
``ceil(height/tile_size) x ceil(width/tile_size)``), each::

    version 1:  u16 row | u16 col | u32 len_z | z bytes | u32 n_y | (u32 len | y bytes) * n_y
    version 2-4:  u16 row | u16 col | u16 n_checks | 4 bytes * n_checks
                   | u32 len_z | z bytes | u32 n_y | (u32 len | y bytes) * n_y

and last ``IEND`` with an empty payload. Following PNG, a tag whose first letter is lower case is
*ancillary*: a reader that does not know it skips it (room for later, optional additions); an
unknown upper-case tag is *critical* and refused. At most ``n_tiles + 8`` sections in all.

Version 2 differs from version 1 only in the tile checks: ``checks[k]`` is the first 4 bytes of
the SHA-256 of the tile's decoded symbols up to checkpoint ``k`` (checkpoint 0: after the z
symbols; checkpoint ``i + 1``: after y slice ``i``, in the byte form of the latent checksum). The
decoder compares each as it gets there, so a forged or damaged tile is refused after the first
slice it spoils instead of after the whole image (the whole-image ``latent_sha256`` in META is
still checked at the end, and stays the integrity check: the 4-byte checks only bound the work a
forgery can cause). The container layer checks only the layout; the codec checks that there is
one check per checkpoint of its model. Version 1 containers (no checks) decode as before, under
the same size limits.

Version 3 (issue 27) has the layout of version 2, but each check is *bound* to its container and
to its place in it::

    header_digest = SHA-256(every byte before the first TILE section: magic, version, header CRC,
                    META, ICCP, EXIF, ALPH and any ancillary section there, CRCs included)
    checks[k] of tile i = SHA-256(b"CXA3" | header_digest | u32 i | u16 k | D_k)[:4]

where ``D_k`` is the full 32-byte SHA-256 of the tile's symbols up to checkpoint ``k`` (whose
first 4 bytes are version 2's check). So a tile copied from another container, or moved or
copied to another position of its own, fails at its first checkpoint (after z, before any layer
runs), and so does a container whose META (quality, mode, size, model, ...), ICC profile, EXIF
or alpha plane was edited with the CRCs recomputed: every byte that decides what is
reconstructed is covered. None of this is a signature: the digests need no key, so whoever can
run the codec can write a valid container of any content (as an encoder can); what the binding
does is make a container that passes the checks cost its maker the decode of its own symbols,
so a cheap edit or splice of genuine bytes is refused after at most one tile's work.

Version 4 has the layout and the bound checks of version 3 (derived exactly as there, ``b"CXA3"``
included); only META's encoding changes, from JSON to fixed binary fields::

    u8 n | model_id (n printable ASCII bytes)     32 bytes  weights_sha256
    f64 quality                                    u32 width | u32 height
    u8 mode (index into MODES, append-only: RGB L RGBA LA P 1)
    u8 n | content_type (n printable ASCII bytes)  u64 original_bytes
    32 bytes original_sha256                       u16 tile_size | u32 n_tiles
    32 bytes latent_sha256
    extra: the rest of the payload, canonical JSON of a non-empty object, or nothing when empty

It carries the same fields with the same validation, in 149 bytes for a typical image instead of
about 417: the JSON's key names and hex digests were about 1 % of a Kodak-size stream at the
archive floor (0.45 BD-rate points against AVIF on Kodak), paid again by every stored image. The
mapping is one-to-one (a non-canonical ``extra``, a mode byte past the table, a short or long
payload are ``bad_meta``), so a container read by ``unpack`` still packs back to its own bytes.

Decode limits, so that a small forged file cannot cost what no encoder could have produced:
``tile_size`` above ``MAX_TILE_SIZE`` (what encoders write: 1024) is refused as
``tile_too_large`` before anything is allocated (``max_tile_size`` raises it, for a container
written by a library caller with a larger tile), and ``width * height`` above ``max_pixels`` as
``absurd_dimensions``.

Every failure raises :class:`~archiver.errors.ContainerError` with one of these codes:
``truncated``, ``bad_magic``, ``unsupported_version``, ``crc_mismatch``, ``bad_meta``,
``absurd_dimensions``, ``tile_too_large``, ``bad_section``. No length read from the data is used before it has been
checked against the bytes actually present, so no input can cause a large allocation (beyond the
alpha plane, bounded by ``max_pixels``), a hang, or an exception of another type.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ContainerError

MAGIC = b"\x89CXA\r\n\x1a\n"
VERSION = 4
#: every version this reader decodes: a bitstream once written must keep decoding
READABLE_VERSIONS = (1, 2, 3, 4)
#: the versions before bound tile checks, with the packaged models that wrote them: a container of
#: another model claiming one of these versions cannot be genuine (a downgrade that strips or
#: unbinds the checks) and is refused. Models from a model store are not listed and not refused.
LEGACY_WRITERS = {
    1: frozenset({"compact-v1", "compact-v2", "compact-v3", "compact-v4", "compact-v5"}),  # before issue 16
    2: frozenset({"compact-v1", "compact-v2", "compact-v3", "compact-v4", "compact-v5", "compact-v6"}),
}
HEADER_SIZE = len(MAGIC) + 2 + 4
SECTION_OVERHEAD = 4 + 4 + 4  # tag, length, crc

MAX_META_BYTES = 64 * 1024
MAX_BLOB_BYTES = 16 * 1024 * 1024  # ICCP, EXIF
MAX_SIDE = 65535
MAX_Y_STREAMS = 65535
EXTRA_SECTIONS = 8  # sections allowed beyond the tiles (META, ICCP, EXIF, ALPH, IEND, ancillary)
DEFAULT_MAX_PIXELS = 400_000_000
MAX_TILE_SIZE = 1024  # the largest tile an encoder writes (``Codec`` refuses larger)
CHECK_BYTES = 4  # per-checkpoint tile check (versions 2 to 4)
DIGEST_BYTES = 32  # a checkpoint's full symbol digest, from which versions 3 and 4 derive their check
MAX_CHECKS = 1024
_U32 = 0xFFFFFFFF

MODES = ("RGB", "L", "RGBA", "LA", "P", "1")
_ALPHA_REQUIRED = ("RGBA", "LA")
_ALPHA_ALLOWED = ("RGBA", "LA", "P")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_TAG = re.compile(rb"[A-Za-z]{4}")

_FIELDS = ("model_id", "weights_sha256", "quality", "width", "height", "mode", "content_type",
           "original_bytes", "original_sha256", "tile_size", "n_tiles", "latent_sha256")


@dataclass
class ContainerMeta:
    """Everything needed to decode (and to describe) the image, stored as the META section."""

    model_id: str
    weights_sha256: str
    quality: float
    width: int
    height: int
    mode: str
    content_type: str
    original_bytes: int
    original_sha256: str
    tile_size: int
    n_tiles: int
    latent_sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tile_rows(self) -> int:
        return math.ceil(self.height / self.tile_size)

    @property
    def tile_cols(self) -> int:
        return math.ceil(self.width / self.tile_size)

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _FIELDS}
        for name in ("width", "height", "original_bytes", "tile_size", "n_tiles"):
            try:  # accept numpy integers; anything else is left for validation to refuse
                d[name] = operator.index(d[name])
            except TypeError:
                pass
        if not isinstance(self.quality, bool) and hasattr(self.quality, "__float__"):
            try:
                d["quality"] = float(self.quality)
            except (TypeError, ValueError):
                pass
        d["extra"] = self.extra
        return d

    def to_json(self) -> bytes:
        """Canonical form (META of versions 1-3): the same metadata always gives the same bytes."""
        return _canonical_json(self.to_dict())

    def to_bytes(self, version: int = VERSION) -> bytes:
        """META's payload as container ``version`` writes it (validated as ``unpack`` will)."""
        meta_json = self.to_json()
        checked = _meta_from_dict(json.loads(meta_json), max_pixels=MAX_SIDE * MAX_SIDE)
        raw = _meta_binary(checked) if version >= 4 else meta_json
        if len(raw) > MAX_META_BYTES:
            raise _bad_meta(f"{len(raw)} bytes, over the {MAX_META_BYTES}-byte limit")
        return raw


@dataclass
class TilePayload:
    """One tile's entropy-coded streams: the hyper-latent ``z`` and the latent slice groups ``y``;
    ``checks`` (versions 2 to 4) are the stored tile checks at each checkpoint (see above);
    ``digests`` (only from an encoder, never read or written as such) the full 32-byte symbol
    digests at each checkpoint, from which ``pack`` derives the checks of the version it writes."""

    row: int
    col: int
    z: bytes
    y: list[bytes]
    checks: list[bytes] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list, repr=False, compare=False)


@dataclass
class Container:
    """A whole ``.cxa``; ``alpha`` is the raw H*W plane (uncompressed in memory)."""

    meta: ContainerMeta
    tiles: list[TilePayload]
    icc: bytes | None = None
    exif: bytes | None = None
    alpha: bytes | None = None
    version: int = VERSION  # of the container format; pack writes it, unpack reports it
    #: SHA-256 of every byte before the first TILE (set by ``unpack``; versions 3 and 4 bind their checks to it)
    header_digest: bytes | None = field(default=None, compare=False, repr=False)

    def tile_check(self, index: int) -> tuple[list[bytes] | None, Callable[[int, bytes], bytes] | None]:
        """What the decoder compares at tile ``index``'s checkpoints: ``(checks, check_of)``, where
        ``check_of(k, digest)`` turns the 32-byte symbol digest at checkpoint ``k`` into the check
        this version stores; ``(None, None)`` for version 1 (no checks)."""
        if self.version == 1:
            return None, None
        checks = self.tiles[index].checks
        if self.version == 2:
            return checks, lambda k, digest: digest[:CHECK_BYTES]
        if self.header_digest is None:
            raise ContainerError(f"a version-{self.version} container needs its header digest (unpack sets it)", code="bad_section")
        hd = self.header_digest
        return checks, lambda k, digest: bound_check(hd, index, k, digest)


def check_legacy_writer(version: int, model_id: str, packaged: bool) -> None:
    """Refuse a version-1 or -2 container naming a packaged model that never wrote that version:
    a genuine one cannot exist, so it is a downgrade (v2 -> v1 strips the tile checks, v3 -> v2
    unbinds them from the header). Models from a model store (``packaged`` false) are let through:
    which versions they wrote is not recorded."""
    writers = LEGACY_WRITERS.get(version)
    if writers is not None and packaged and model_id not in writers:
        raise ContainerError(f"container version {version} names model {model_id!r}, which only ever wrote version "
                             f"{max(v for v in READABLE_VERSIONS if v not in LEGACY_WRITERS or model_id in LEGACY_WRITERS[v])}"
                             " or later: a downgraded (edited) container", code="unsupported_version")


def bound_check(header_digest: bytes, index: int, k: int, digest: bytes) -> bytes:
    """Version 3's (and 4's) check at checkpoint ``k`` of tile ``index``: the symbol digest bound to the
    container (``header_digest``) and to the tile's place in it."""
    return hashlib.sha256(b"CXA3" + header_digest + struct.pack(">IH", index, k) + digest).digest()[:CHECK_BYTES]


# ------------------------------------------------------------------------------------------------
# validation shared by pack and unpack

def _bad_meta(msg: str) -> ContainerError:
    return ContainerError(f"invalid META: {msg}", code="bad_meta")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _meta_from_dict(d: Any, max_pixels: int, max_tile_size: int = MAX_TILE_SIZE) -> ContainerMeta:
    """Check every field's type and range; a forged META with a valid CRC must still fail here."""
    if not isinstance(d, dict):
        raise _bad_meta(f"expected a JSON object, got {type(d).__name__}")
    missing = [k for k in _FIELDS if k not in d]
    if missing:
        raise _bad_meta(f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(d) - set(_FIELDS) - {"extra"})
    if unknown:
        raise _bad_meta(f"unknown field(s) {', '.join(unknown)} (extensions belong in 'extra')")

    def text(name: str, limit: int) -> str:
        v = d[name]
        if not isinstance(v, str) or not 1 <= len(v) <= limit or not _PRINTABLE.fullmatch(v):
            raise _bad_meta(f"field {name!r} must be 1..{limit} printable ASCII characters, got {v!r:.80}")
        return v

    def sha(name: str) -> str:
        v = d[name]
        if not isinstance(v, str) or not _HEX64.fullmatch(v):
            raise _bad_meta(f"field {name!r} must be 64 lower-case hex digits, got {v!r:.80}")
        return v

    def integer(name: str) -> int:
        v = d[name]
        if not _is_int(v):
            raise _bad_meta(f"field {name!r} must be an integer, got {v!r:.80}")
        return v

    model_id = text("model_id", 128)
    weights = sha("weights_sha256")
    q = d["quality"]
    # the range test also refuses NaN, and is safe for integers too large to convert to float
    if not (_is_int(q) or isinstance(q, float)) or not 0.0 <= q <= 100.0:
        raise _bad_meta(f"field 'quality' must be a number in [0, 100], got {q!r:.80}")
    width, height = integer("width"), integer("height")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ContainerError(
            f"absurd dimensions {width}x{height}: each side must be 1..{MAX_SIDE}", code="absurd_dimensions")
    if width * height > max_pixels:
        raise ContainerError(
            f"absurd dimensions {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
            code="absurd_dimensions")
    mode = d["mode"]
    if mode not in MODES:
        raise _bad_meta(f"field 'mode' must be one of {', '.join(MODES)}, got {mode!r:.80}")
    content_type = text("content_type", 255)
    original_bytes = integer("original_bytes")
    if not 0 <= original_bytes < 2**63:
        raise _bad_meta(f"field 'original_bytes' must be >= 0, got {original_bytes}")
    original_sha = sha("original_sha256")
    tile = integer("tile_size")
    if tile % 64 or not 64 <= tile <= 4096:
        raise _bad_meta(f"field 'tile_size' must be a multiple of 64 in [64, 4096], got {tile}")
    if tile > max_tile_size:
        raise ContainerError(f"tile_size {tile} is larger than the {max_tile_size}-px tiles encoders write; refused "
                             "before decoding (a forged container, or pass a larger max_tile_size)",
                             code="tile_too_large")
    n_tiles = integer("n_tiles")
    expected = math.ceil(width / tile) * math.ceil(height / tile)
    if n_tiles != expected:
        raise _bad_meta(f"field 'n_tiles' is {n_tiles} but a {width}x{height} image in {tile}-px tiles "
                        f"has {expected}")
    latent = sha("latent_sha256")
    extra = d.get("extra", {})
    if not isinstance(extra, dict):
        raise _bad_meta(f"field 'extra' must be an object, got {type(extra).__name__}")
    return ContainerMeta(
        model_id=model_id, weights_sha256=weights, quality=float(q), width=width, height=height, mode=mode,
        content_type=content_type, original_bytes=original_bytes, original_sha256=original_sha,
        tile_size=tile, n_tiles=n_tiles, latent_sha256=latent, extra=extra,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"number {s[:40]} overflows")
    return v


def _strict_json(payload: bytes | memoryview) -> Any:
    try:
        text = bytes(payload).decode("utf-8")
        return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant,
                          parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad_meta(f"not valid JSON: {exc}") from exc


def _canonical_json(value: Any) -> bytes:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ContainerError(f"META is not serialisable as JSON: {exc}", code="bad_meta") from exc


def _meta_binary(m: ContainerMeta) -> bytes:
    """Version 4's META payload of an already validated ``m`` (the layout in the module docstring)."""
    def short(text: str) -> bytes:
        raw = text.encode("ascii")
        return bytes([len(raw)]) + raw

    return b"".join((
        short(m.model_id), bytes.fromhex(m.weights_sha256), struct.pack(">dII", m.quality, m.width, m.height),
        bytes([MODES.index(m.mode)]), short(m.content_type), struct.pack(">Q", m.original_bytes),
        bytes.fromhex(m.original_sha256), struct.pack(">HI", m.tile_size, m.n_tiles), bytes.fromhex(m.latent_sha256),
        _canonical_json(m.extra) if m.extra else b"",
    ))


def _meta_dict_from_binary(payload: bytes) -> dict[str, Any]:
    """Version 4's META payload as the dict that versions 1-3 carry as JSON (checked there)."""
    pos = 0

    def take(n: int, name: str) -> bytes:
        nonlocal pos
        if len(payload) - pos < n:
            raise _bad_meta(f"{len(payload)} bytes end inside field {name!r} (needs {n} more at byte {pos})")
        pos += n
        return payload[pos - n:pos]

    def short(name: str) -> str:
        raw = take(take(1, name)[0], name)
        if not _PRINTABLE.fullmatch(raw.decode("latin-1")):
            raise _bad_meta(f"field {name!r} must be 1..255 printable ASCII characters, got {raw!r:.80}")
        return raw.decode("ascii")

    d: dict[str, Any] = {"model_id": short("model_id"), "weights_sha256": take(32, "weights_sha256").hex()}
    d["quality"], d["width"], d["height"] = struct.unpack(">dII", take(16, "quality/width/height"))
    code = take(1, "mode")[0]
    if code >= len(MODES):
        raise _bad_meta(f"mode code {code} is not one of 0..{len(MODES) - 1} ({', '.join(MODES)})")
    d["mode"] = MODES[code]
    d["content_type"] = short("content_type")
    (d["original_bytes"],) = struct.unpack(">Q", take(8, "original_bytes"))
    d["original_sha256"] = take(32, "original_sha256").hex()
    d["tile_size"], d["n_tiles"] = struct.unpack(">HI", take(6, "tile_size/n_tiles"))
    d["latent_sha256"] = take(32, "latent_sha256").hex()
    rest = payload[pos:]
    if rest:
        extra = _strict_json(rest)
        if not isinstance(extra, dict) or not extra or _canonical_json(extra) != rest:
            raise _bad_meta("'extra' must be a non-empty JSON object in canonical form (sorted keys, no "
                            "whitespace), or absent")
        d["extra"] = extra
    return d


def _parse_meta(payload: bytes | memoryview, version: int, max_pixels: int,
                max_tile_size: int = MAX_TILE_SIZE) -> ContainerMeta:
    if len(payload) > MAX_META_BYTES:
        raise _bad_meta(f"{len(payload)} bytes, over the {MAX_META_BYTES}-byte limit")
    d = _meta_dict_from_binary(bytes(payload)) if version >= 4 else _strict_json(payload)
    return _meta_from_dict(d, max_pixels, max_tile_size)


# ------------------------------------------------------------------------------------------------
# writing

def _section(tag: bytes, payload: bytes) -> bytes:
    if len(payload) > _U32:
        raise ContainerError(f"{tag.decode()} section of {len(payload)} bytes does not fit a u32 length",
                             code="bad_section")
    head = tag + struct.pack(">I", len(payload))
    return head + payload + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head)))


def _tile_payload(t: TilePayload, version: int, index: int = 0, header_digest: bytes = b"") -> bytes:
    if not (0 <= t.row <= 0xFFFF and 0 <= t.col <= 0xFFFF):
        raise ContainerError(f"tile ({t.row},{t.col}) position out of range", code="bad_section")
    if len(t.y) > MAX_Y_STREAMS:
        raise ContainerError(f"tile ({t.row},{t.col}) has {len(t.y)} y streams, max {MAX_Y_STREAMS}",
                             code="bad_section")
    parts = [struct.pack(">HH", t.row, t.col)]
    if version >= 2 and t.digests:  # from an encoder: derive this version's checks
        if len(t.digests) > MAX_CHECKS or any(len(d) != DIGEST_BYTES for d in t.digests):
            raise ContainerError(f"tile ({t.row},{t.col}) digests must be at most {MAX_CHECKS} of {DIGEST_BYTES} "
                                 "bytes", code="bad_section")
        t = TilePayload(t.row, t.col, t.z, t.y, [
            d[:CHECK_BYTES] if version == 2 else bound_check(header_digest, index, k, d)
            for k, d in enumerate(t.digests)])
    if version >= 2:
        if len(t.checks) > MAX_CHECKS or any(len(c) != CHECK_BYTES for c in t.checks):
            raise ContainerError(f"tile ({t.row},{t.col}) checks must be at most {MAX_CHECKS} of {CHECK_BYTES} bytes",
                                 code="bad_section")
        parts += [struct.pack(">H", len(t.checks)), *map(bytes, t.checks)]
    elif t.checks:
        raise ContainerError("container version 1 has no tile checks", code="bad_section")
    parts += [struct.pack(">I", len(t.z)), bytes(t.z), struct.pack(">I", len(t.y))]
    for s in t.y:
        parts.append(struct.pack(">I", len(s)))
        parts.append(bytes(s))
    return b"".join(parts)


def pack(c: Container) -> bytes:
    """Serialise ``c``, validating it the same way ``unpack`` will (so what we write, we can read).

    Writes ``c.version`` (the current ``VERSION`` unless a caller asks otherwise: tests write
    versions 1 and 2 to check that old containers keep decoding). Tiles with ``digests`` (an
    encoder's) get the checks of that version derived from them (versions 3 and 4: bound to this
    container's header and the tile's index); tiles without are written with ``checks`` as given
    (a container read by ``unpack`` packs back to its own bytes)."""
    meta = c.meta
    if c.version not in READABLE_VERSIONS:
        raise ContainerError(f"cannot write container version {c.version}", code="unsupported_version")
    meta_raw = meta.to_bytes(c.version)
    expected = [(r, col) for r in range(meta.tile_rows) for col in range(meta.tile_cols)]
    got = [(t.row, t.col) for t in c.tiles]
    if got != expected:
        raise ContainerError(f"tiles must be the {len(expected)} positions of the grid in raster order; "
                             f"got {len(got)} tiles", code="bad_section")
    _check_alpha_presence(meta.mode, c.alpha is not None)
    out = [MAGIC + struct.pack(">H", c.version)]
    out.append(struct.pack(">I", zlib.crc32(out[0])))
    out.append(_section(b"META", meta_raw))
    for tag, blob in ((b"ICCP", c.icc), (b"EXIF", c.exif)):
        if blob:
            if len(blob) > MAX_BLOB_BYTES:
                raise ContainerError(f"{tag.decode()} of {len(blob)} bytes is over {MAX_BLOB_BYTES}",
                                     code="bad_section")
            out.append(_section(tag, bytes(blob)))
    if c.alpha is not None:
        if len(c.alpha) != meta.width * meta.height:
            raise ContainerError(f"alpha plane has {len(c.alpha)} bytes, expected {meta.width * meta.height}",
                                 code="bad_section")
        out.append(_section(b"ALPH", zlib.compress(bytes(c.alpha), 9)))
    header_digest = hashlib.sha256(b"".join(out)).digest()
    for i, t in enumerate(c.tiles):
        out.append(_section(b"TILE", _tile_payload(t, c.version, i, header_digest)))
    out.append(_section(b"IEND", b""))
    return b"".join(out)


def _check_alpha_presence(mode: str, has_alpha: bool) -> None:
    if has_alpha and mode not in _ALPHA_ALLOWED:
        raise ContainerError(f"an alpha plane is not allowed for mode {mode}", code="bad_section")
    if not has_alpha and mode in _ALPHA_REQUIRED:
        raise ContainerError(f"mode {mode} needs an ALPH section and there is none", code="bad_section")


# ------------------------------------------------------------------------------------------------
# reading

_KNOWN_IMAGES = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"RIFF", "a RIFF file (WebP image?)"),
    (b"BM", "a BMP image"), (b"\x1f\x8b", "gzip data"), (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"),
)


def _check_header(data: memoryview) -> int:
    n = len(data)
    head = bytes(data[:len(MAGIC)])
    if n < len(MAGIC):
        if n == 0:
            raise ContainerError("empty input: not a .cxa container (0 bytes)", code="truncated")
        if head == MAGIC[:n]:
            raise ContainerError(f"truncated: only {n} bytes, the container header is {HEADER_SIZE}",
                                 code="truncated")
    if head != MAGIC:
        raise ContainerError(_magic_message(bytes(data[:16])), code="bad_magic")
    if n < HEADER_SIZE:
        raise ContainerError(f"truncated: only {n} bytes, the container header is {HEADER_SIZE}", code="truncated")
    (crc,) = struct.unpack(">I", data[10:14])
    if zlib.crc32(data[:10]) != crc:
        raise ContainerError("CRC mismatch in the container header (bytes 0-13): the file is damaged",
                             code="crc_mismatch")
    (version,) = struct.unpack(">H", data[8:10])
    if version not in READABLE_VERSIONS:
        raise ContainerError(f"unsupported container version {version}; this reader understands versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))} (a newer archiver wrote it?)",
                             code="unsupported_version")
    return version


def _magic_message(head: bytes) -> str:
    for magic, what in _KNOWN_IMAGES:
        if head.startswith(magic):
            return f"not a .cxa container: this looks like {what}"
    if head.startswith(b"\x89CXA\n"):
        return "not a valid .cxa container: the magic's CR LF became LF (transferred in text mode)"
    if head.startswith(b"\x09CXA") or head.startswith(b"\x89CXA\r\r\n"):
        return "not a valid .cxa container: the magic was altered in transfer (7-bit or text-mode damage)"
    return f"not a .cxa container: bad magic bytes {head[:8].hex()}"


@dataclass
class _Section:
    tag: bytes
    offset: int
    payload: memoryview


def _read_section(data: memoryview, pos: int) -> tuple[_Section, int]:
    """Read one section at ``pos``; check bounds before touching the payload, then the CRC."""
    remaining = len(data) - pos
    if remaining < 8:
        raise ContainerError(
            f"truncated at byte {len(data)}: expected a section header at offset {pos}"
            + (" (the IEND section is missing)" if remaining == 0 else ""), code="truncated")
    tag = bytes(data[pos:pos + 4])
    (length,) = struct.unpack(">I", data[pos + 4:pos + 8])
    name = tag.decode("latin-1") if _TAG.fullmatch(tag) else tag.hex()
    if length + 4 > remaining - 8:
        raise ContainerError(
            f"truncated: section {name!r} at offset {pos} declares {length} payload bytes but only "
            f"{max(0, remaining - 12)} remain (the file is cut short, or its length field is damaged)",
            code="truncated")
    end = pos + 8 + length
    (crc,) = struct.unpack(">I", data[end:end + 4])
    if zlib.crc32(data[pos:end]) != crc:
        raise ContainerError(f"CRC mismatch in section {name!r} at offset {pos} ({length} bytes): the file is "
                             "damaged", code="crc_mismatch")
    if not _TAG.fullmatch(tag):
        raise ContainerError(f"invalid section tag {tag!r} at offset {pos}", code="bad_section")
    return _Section(tag, pos, data[pos + 8:end]), end + 4


def _first_meta(data: memoryview, max_pixels: int,
                max_tile_size: int = MAX_TILE_SIZE) -> tuple[ContainerMeta, int, int]:
    version = _check_header(data)
    sec, pos = _read_section(data, HEADER_SIZE)
    if sec.tag != b"META":
        raise ContainerError(f"the first section must be META, found {sec.tag.decode()!r} at offset {sec.offset}",
                             code="bad_section")
    return _parse_meta(sec.payload, version, max_pixels, max_tile_size), pos, version


def read_meta(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              max_tile_size: int = MAX_TILE_SIZE) -> ContainerMeta:
    """Read and validate only the header and META (for ``archiver info``).

    Needs only a prefix of the file (header + META, at most ~64 KiB), so a ranged GET suffices;
    the tiles are not checked.
    """
    meta, _, _ = _first_meta(memoryview(data), max_pixels, max_tile_size)
    return meta


def read_version(data: bytes) -> int:
    """The container format version (checks only the 14-byte header)."""
    return _check_header(memoryview(data))


def _parse_tile(sec: _Section, version: int) -> TilePayload:
    p = sec.payload
    n = len(p)

    def bad(msg: str) -> ContainerError:
        return ContainerError(f"malformed TILE section at offset {sec.offset}: {msg}", code="bad_section")

    head = 12 if version == 1 else 14  # versions 2 to 4 share the tile layout
    if n < head:
        raise bad(f"{n} bytes is shorter than the {head}-byte tile header")
    row, col = struct.unpack(">HH", p[:4])
    pos = 4
    checks: list[bytes] = []
    if version >= 2:
        (n_checks,) = struct.unpack(">H", p[4:6])
        pos = 6
        if n_checks > MAX_CHECKS or CHECK_BYTES * n_checks > n - pos - 8:
            raise bad(f"{n_checks} tile checks cannot fit in the remaining {n - pos} bytes")
        checks = [bytes(p[pos + CHECK_BYTES * k:pos + CHECK_BYTES * (k + 1)]) for k in range(n_checks)]
        pos += CHECK_BYTES * n_checks
    (len_z,) = struct.unpack(">I", p[pos:pos + 4])
    pos += 4
    if len_z > n - pos - 4:
        raise bad(f"z stream of {len_z} bytes overruns the {n}-byte payload")
    z = bytes(p[pos:pos + len_z])
    pos += len_z
    (n_y,) = struct.unpack(">I", p[pos:pos + 4])
    pos += 4
    if n_y > MAX_Y_STREAMS or n_y * 4 > n - pos:
        raise bad(f"{n_y} y streams cannot fit in the remaining {n - pos} bytes")
    ys = []
    for i in range(n_y):
        if n - pos < 4:
            raise bad(f"y stream {i} length overruns the payload")
        (ln,) = struct.unpack(">I", p[pos:pos + 4])
        pos += 4
        if ln > n - pos:
            raise bad(f"y stream {i} of {ln} bytes overruns the payload ({n - pos} bytes left)")
        ys.append(bytes(p[pos:pos + ln]))
        pos += ln
    if pos != n:
        raise bad(f"the stream lengths add up to {pos} bytes but the payload has {n}")
    return TilePayload(row=row, col=col, z=z, y=ys, checks=checks)


def _inflate_alpha(sec: _Section, size: int) -> bytes:
    """Inflate with the output capped at exactly ``size`` bytes: a zlib bomb cannot grow past it."""
    def bad(msg: str) -> ContainerError:
        return ContainerError(f"invalid ALPH section at offset {sec.offset}: {msg}", code="bad_section")

    d = zlib.decompressobj()
    try:
        out = d.decompress(sec.payload, size + 1)
    except zlib.error as exc:
        raise bad(f"corrupt zlib data ({exc})") from exc
    if len(out) > size:
        raise bad(f"the alpha plane inflates to more than width*height = {size} bytes")
    if not d.eof:
        raise bad("the zlib stream is incomplete")
    if d.unused_data:
        raise bad(f"{len(d.unused_data)} bytes after the end of the zlib stream")
    if len(out) != size:
        raise bad(f"the alpha plane has {len(out)} bytes, expected width*height = {size}")
    return out


def unpack(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_tile_size: int = MAX_TILE_SIZE) -> Container:
    """Parse and validate a whole container (any readable version); raises ``ContainerError`` on any
    defect."""
    mv = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
    meta, pos, version = _first_meta(mv, max_pixels, max_tile_size)
    max_sections = meta.n_tiles + EXTRA_SECTIONS
    grid = [(r, c) for r in range(meta.tile_rows) for c in range(meta.tile_cols)]
    blobs: dict[bytes, bytes] = {}
    alpha: bytes | None = None
    tiles: list[TilePayload] = []
    header_digest: bytes | None = None
    count = 1
    while True:
        start = pos
        sec, pos = _read_section(mv, pos)
        count += 1
        if count > max_sections:
            raise ContainerError(f"more than {max_sections} sections (n_tiles + {EXTRA_SECTIONS}); the file is "
                                 "malformed", code="bad_section")
        tag = sec.tag
        if tag == b"IEND":
            if len(sec.payload):
                raise ContainerError(f"IEND at offset {sec.offset} must be empty", code="bad_section")
            if pos != len(mv):
                raise ContainerError(f"{len(mv) - pos} trailing bytes after IEND (offset {pos})", code="bad_section")
            break
        if tag == b"TILE":
            if len(tiles) >= len(grid):
                raise ContainerError(f"TILE at offset {sec.offset} is one more than the {meta.n_tiles} declared",
                                     code="bad_section")
            if header_digest is None:
                header_digest = hashlib.sha256(mv[:start]).digest()
            t = _parse_tile(sec, version)
            if (t.row, t.col) != grid[len(tiles)]:
                raise ContainerError(f"TILE at offset {sec.offset} is at ({t.row},{t.col}) but raster order "
                                     f"expects {grid[len(tiles)]}", code="bad_section")
            tiles.append(t)
            continue
        if tiles:
            if tag in (b"ICCP", b"EXIF", b"ALPH", b"META"):
                raise ContainerError(f"{tag.decode()} at offset {sec.offset} comes after the tiles",
                                     code="bad_section")
        if tag == b"META":
            raise ContainerError(f"duplicate META at offset {sec.offset}", code="bad_section")
        if tag in (b"ICCP", b"EXIF", b"ALPH"):
            if tag in blobs or (tag == b"ALPH" and alpha is not None):
                raise ContainerError(f"duplicate {tag.decode()} at offset {sec.offset}", code="bad_section")
            if not len(sec.payload):
                raise ContainerError(f"empty {tag.decode()} section at offset {sec.offset}", code="bad_section")
            if tag == b"ALPH":
                _check_alpha_presence(meta.mode, True)
                alpha = _inflate_alpha(sec, meta.width * meta.height)
                blobs[tag] = b""
            else:
                if len(sec.payload) > MAX_BLOB_BYTES:
                    raise ContainerError(f"{tag.decode()} of {len(sec.payload)} bytes is over {MAX_BLOB_BYTES}",
                                         code="bad_section")
                blobs[tag] = bytes(sec.payload)
            continue
        if tag[:1].islower():
            continue  # ancillary section from a later writer: safe to skip
        raise ContainerError(f"unknown critical section {tag.decode()!r} at offset {sec.offset}", code="bad_section")
    if len(tiles) != meta.n_tiles:
        raise ContainerError(f"{len(tiles)} TILE sections but META declares {meta.n_tiles}", code="bad_section")
    _check_alpha_presence(meta.mode, alpha is not None)
    return Container(meta=meta, tiles=tiles, icc=blobs.get(b"ICCP"), exif=blobs.get(b"EXIF"), alpha=alpha,
                     version=version, header_digest=header_digest)
