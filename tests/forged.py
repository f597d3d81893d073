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
    out += _section(b"META", json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
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
