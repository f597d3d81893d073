"""Forged containers that try to make the decoder spend time and memory (issue 16, part 2).

Written with their own byte writer (not ``container.pack``, which refuses what the format
refuses), so that a forged container can declare anything the byte layout can express: a tile
larger than any encoder writes, a few bytes of stream for a whole tile, a real tile's header in
front of garbage. Shared by ``tests/test_decode_limits.py`` and ``benchmarks/forged_decode.py``.

Each case is decoded in a fresh process (``measure``), because torch allocates outside Python's
heap (tracemalloc cannot see it): the figure is the growth of the process's peak RSS
(``ru_maxrss``) across the decode call, after the model was loaded.
"""

from __future__ import annotations

import json
import math
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

MAGIC = b"\x89CXA\r\n\x1a\n"


def _section(tag: bytes, payload: bytes) -> bytes:
    head = tag + struct.pack(">I", len(payload))
    return head + payload + struct.pack(">I", zlib.crc32(head + payload))


_MODES = ("RGB", "L", "RGBA", "LA", "P", "1")  # version 4's mode codes, in the docstring's order


def meta_payload(meta: dict, version: int, *, mode_code: int | None = None, extra_raw: bytes | None = None) -> bytes:
    """META as container ``version`` carries it: JSON up to version 3, binary fields from 4 (written
    from the layout in the container docstring; ``mode_code`` and ``extra_raw`` replace what those
    fields would hold, for forgeries)."""
    if version < 4:
        return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def short(text: str) -> bytes:
        raw = text.encode("latin-1")
        return bytes([len(raw)]) + raw

    if extra_raw is None:
        extra_raw = (json.dumps(meta["extra"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
                     if meta["extra"] else b"")
    mode = _MODES.index(meta["mode"]) if mode_code is None else mode_code
    return (short(meta["model_id"]) + bytes.fromhex(meta["weights_sha256"])
            + struct.pack(">dIIB", meta["quality"], meta["width"], meta["height"], mode)
            + short(meta["content_type"]) + struct.pack(">Q", meta["original_bytes"])
            + bytes.fromhex(meta["original_sha256"]) + struct.pack(">HI", meta["tile_size"], meta["n_tiles"])
            + bytes.fromhex(meta["latent_sha256"]) + extra_raw)


def meta_fields(payload: bytes, version: int) -> dict:
    """The inverse of ``meta_payload`` for a well-formed META (nothing is checked)."""
    if version < 4:
        return json.loads(payload)
    n = payload[0]
    m: dict = {"model_id": payload[1:1 + n].decode(), "weights_sha256": payload[1 + n:33 + n].hex()}
    pos = 33 + n
    m["quality"], m["width"], m["height"], mode = struct.unpack(">dIIB", payload[pos:pos + 17])
    m["mode"] = _MODES[mode]
    pos += 17
    n = payload[pos]
    m["content_type"] = payload[pos + 1:pos + 1 + n].decode()
    pos += 1 + n
    (m["original_bytes"],) = struct.unpack(">Q", payload[pos:pos + 8])
    m["original_sha256"] = payload[pos + 8:pos + 40].hex()
    m["tile_size"], m["n_tiles"] = struct.unpack(">HI", payload[pos + 40:pos + 46])
    m["latent_sha256"] = payload[pos + 46:pos + 78].hex()
    m["extra"] = json.loads(payload[pos + 78:]) if payload[pos + 78:] else {}
    return m


def tile_payload(row: int, col: int, z: bytes, ys: list[bytes], checks: list[bytes] | None = None) -> bytes:
    """A TILE payload; with ``checks`` (container version 2) the 4-byte tile checks come first."""
    p = struct.pack(">HH", row, col)
    if checks is not None:
        p += struct.pack(">H", len(checks)) + b"".join(checks)
    p += struct.pack(">I", len(z)) + z + struct.pack(">I", len(ys))
    for y in ys:
        p += struct.pack(">I", len(y)) + y
    return p


#: checkpoints per tile of the complete8-cb / compact presets (z + 8 slices)
N_CHECKS = 9


def container(meta: dict, tiles: list[bytes], version: int = 1) -> bytes:
    """A container from META fields and raw TILE payloads, CRCs computed as a forger would."""
    head = MAGIC + struct.pack(">H", version)
    out = head + struct.pack(">I", zlib.crc32(head))
    out += _section(b"META", meta_payload(meta, version))
    for t in tiles:
        out += _section(b"TILE", t)
    return out + _section(b"IEND", b"")


def meta_for(model_id: str, weights_sha256: str, side: int, tile: int) -> dict:
    n = math.ceil(side / tile) ** 2
    return dict(model_id=model_id, weights_sha256=weights_sha256, quality=50.0, width=side, height=side, mode="RGB",
                content_type="image/png", original_bytes=1000, original_sha256="0" * 64, tile_size=tile,
                n_tiles=n, latent_sha256="1" * 64, extra={})


def tiny_streams(model_id: str, weights_sha256: str, side: int, *, tile: int | None = None,
                 version: int = 1) -> bytes:
    """One ``side``-square tile (``tile`` defaults to ``side``) whose streams are 8 bytes each:
    the 503-byte container of the issue. Version 2 adds a (wrong) per-tile digest."""
    tile = tile or side
    meta = meta_for(model_id, weights_sha256, side, tile)
    checks = [b"\x5a" * 4] * N_CHECKS if version >= 2 else None
    tiles = [tile_payload(r, c, b"\x12\x34\x56\x78" * 2, [b"\x9a\xbc\xde\xf0" * 2], checks)
             for r in range(math.ceil(side / tile)) for c in range(math.ceil(side / tile))]
    return container(meta, tiles, version)


def garbage_after_header(model_id: str, weights_sha256: str, side: int, z: bytes, y_len: int,
                         version: int = 1, checks: list[bytes] | None = None) -> bytes:
    """A real tile's z stream (``z``, from an honest encode) followed by ``y_len`` random bytes;
    for version 2, ``checks`` (e.g. the real tile's: its z check then passes) or random ones."""
    import random

    rnd = random.Random(side * 7 + y_len)
    meta = meta_for(model_id, weights_sha256, side, side)
    if version >= 2 and checks is None:
        checks = [bytes(rnd.getrandbits(8) for _ in range(4)) for _ in range(N_CHECKS)]
    y = bytes(rnd.getrandbits(8) for _ in range(y_len))
    return container(meta, [tile_payload(0, 0, z, [y], checks)], version)


# --------------------------------------------------------------------------------------------------
# measuring one decode in a fresh process

_CHILD = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, {root!r})
from archiver.codec import Codec
from archiver.codec.container import read_meta
from archiver.errors import ArchiverError
torch.set_num_threads({threads})
data = open({path!r}, "rb").read()
codec = Codec.load({model!r}, "cpu")
torch.zeros(1)  # torch's own first allocations are not the decode's
ru = resource.getrusage(resource.RUSAGE_SELF)
before, cpu0 = ru.ru_maxrss, ru.ru_utime + ru.ru_stime
t = time.perf_counter()
code = None
try:
    codec.decode(data, **{kwargs})
except ArchiverError as e:
    code = e.code
secs = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": secs, "cpu_seconds": ru.ru_utime + ru.ru_stime - cpu0,
                  "peak_growth_mib": (ru.ru_maxrss - before) / 1024, "code": code}}))
"""


def measure(data: bytes, model_id: str, tmp: Path, *, threads: int = 2, kwargs: dict | None = None,
            timeout: float = 600) -> dict:
    """Decode ``data`` in a fresh interpreter: wall and CPU seconds of the decode call, peak RSS
    growth (MiB) across it, and the error code. CPU seconds are what the decode itself cost on a
    shared machine (wall time there also counts other processes' turns)."""
    path = tmp / f"forged-{time.monotonic_ns()}.cxa"
    path.write_bytes(data)
    src = _CHILD.format(root=str(HERE.parent), threads=threads, path=str(path), model=model_id,
                        kwargs=repr(kwargs or {}))
    run = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        return {"seconds": None, "cpu_seconds": None, "peak_growth_mib": None, "code": f"crashed rc={run.returncode}",
                "stderr": run.stderr[-2000:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def own_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------------
# splicing genuine containers (issue 27): copied or moved tiles, edited headers, downgrades

def _sections(data: bytes) -> list[tuple[bytes, bytes]]:
    """(tag, payload) of every section of a well-formed container, CRCs not checked."""
    out, pos = [], 14
    while pos < len(data):
        tag, (n,) = data[pos:pos + 4], struct.unpack(">I", data[pos + 4:pos + 8])
        out.append((tag, data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def _tile_fields(payload: bytes, version: int) -> tuple[list[bytes] | None, bytes]:
    """(checks or None, the rest of the payload after row/col/checks)."""
    if version == 1:
        return None, payload[4:]
    (n,) = struct.unpack(">H", payload[4:6])
    return [payload[6 + 4 * k:10 + 4 * k] for k in range(n)], payload[6 + 4 * n:]


def rebuild(data: bytes, *, meta: dict | None = None, version: int | None = None,
            tiles: list[tuple[int, int, int]] | None = None, keep_checks: bool = True) -> bytes:
    """A genuine container re-assembled as a forger would, every CRC recomputed: ``meta`` fields
    changed, the header ``version`` changed (to 1 the tile checks are dropped), and ``tiles`` a list
    of (source tile index, row, col): copies or moves of the genuine tiles to other positions."""
    old_version = struct.unpack(">H", data[8:10])[0]
    version = old_version if version is None else version
    secs = _sections(data)
    m = meta_fields(secs[0][1], old_version)
    m.update(meta or {})
    src_tiles = [p for t, p in secs if t == b"TILE"]
    others = [(t, p) for t, p in secs[1:] if t not in (b"TILE", b"IEND")]
    order = tiles if tiles is not None else [(i, *struct.unpack(">HH", p[:4])) for i, p in enumerate(src_tiles)]
    payloads = []
    for i, r, c in order:
        checks, rest = _tile_fields(src_tiles[i], old_version)
        p = struct.pack(">HH", r, c)
        if version >= 2:
            checks = checks if checks is not None and keep_checks else [b"\0" * 4] * N_CHECKS
            p += struct.pack(">H", len(checks)) + b"".join(checks)
        payloads.append(p + rest)
    head = MAGIC + struct.pack(">H", version)
    out = head + struct.pack(">I", zlib.crc32(head))
    out += _section(b"META", meta_payload(m, version))
    out += b"".join(_section(t, p) for t, p in others)
    out += b"".join(_section(b"TILE", p) for p in payloads)
    return out + _section(b"IEND", b"")


def copied_tile(data: bytes, rows: int, cols: int) -> bytes:
    """The issue's forgery: the one tile of a genuine one-tile container copied to every position
    of a ``rows`` x ``cols`` grid (META says so; its latent checksum is the genuine one's)."""
    m = meta_fields(_sections(data)[0][1], struct.unpack(">H", data[8:10])[0])
    t = m["tile_size"]
    assert m["n_tiles"] == 1 and m["width"] == m["height"] == t, "needs a one-tile container of a full tile"
    return rebuild(data, meta=dict(width=cols * t, height=rows * t, n_tiles=rows * cols),
                   tiles=[(0, r, c) for r in range(rows) for c in range(cols)])
