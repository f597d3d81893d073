"""Decoding at bounded cost (issue 16, part 2): a small forged container may not cost gigabytes
or minutes, and no decode failure may reach a front door as a traceback.

Forged containers come from ``tests/forged.py``; each costly case is decoded in a fresh process
whose peak RSS growth across the decode call is measured (torch allocates outside Python's heap,
where tracemalloc does not look). Before this work the issue measured +0.8 GB and 7.4 s for one
forged 1024² tile with 8-byte streams, and 32 s / 3.7 GB for a 2048² tile.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import forged
from archiver.codec import Codec
from archiver.codec import container as cx
from archiver.codec import registry
from archiver.errors import ContainerError
from archiver.restore import decode_container
from runtimes import runtime_for

from shared_paths import KODAK

ROOT = Path(__file__).resolve().parents[1]
MAX_GROWTH_MIB = 300
MAX_SECONDS = 2.0


#: a model that wrote container versions 2 and 3 (compact-v6): the forgeries below claim every
#: version, and a version-2 claim naming a model registered later (the default since compact-v7)
#: is refused from the header before anything else (test_the_default_model_never_wrote_version_2)
V2_MODEL = "compact-v6"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(V2_MODEL, "cpu")


def test_the_default_model_never_wrote_version_2() -> None:
    """compact-v7 on were registered after issue 27: a container of theirs that claims version 1 or 2
    (a downgrade that strips or unbinds the tile checks) is refused from the header."""
    default = Codec.load(registry.DEFAULT_MODEL, "cpu")
    assert default.model_id not in cx.LEGACY_WRITERS[2]
    now = (ROOT / f"tests/data/golden/container-v{cx.VERSION}" / default.model_id / "rgb-96x64-q60.cxa").read_bytes()
    assert default.decode(now).meta.quality == 60.0
    for version in (1, 2):
        with pytest.raises(ContainerError, match="downgraded") as e:
            default.decode(forged.rebuild(now, version=version))
        assert e.value.code == "unsupported_version"


@pytest.fixture(scope="module")
def honest_both(codec: Codec) -> dict[int, bytes]:
    """An honest one-tile 1024x1024 container (kodim01 enlarged), for real z streams and checks,
    as the encoder writes it (version 4) and the same tile written as version 2 (what the encoder
    wrote before issue 27: the pack call is watched to get the tile's checkpoint digests)."""
    img = Image.open(KODAK / "kodim01.png").convert("RGB").resize((1024, 1024), Image.BICUBIC)
    seen: list[cx.Container] = []
    pack = cx.pack
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cx, "pack", lambda c: seen.append(c) or pack(c))
        now = codec.encode(img, quality=40)
    return {cx.VERSION: now, 2: pack(dataclasses.replace(seen[0], version=2))}


@pytest.fixture(scope="module")
def honest_1024(honest_both: dict[int, bytes]) -> bytes:
    return honest_both[cx.VERSION]


#: a model that wrote container version 1 (before issue 16): version-1 forgeries must name one, or
#: they are refused as downgrades before anything else (see test_downgrades_are_refused)
V1_MODEL = "compact-v5"


@pytest.fixture(scope="module")
def v1_codec() -> Codec:
    return Codec.load(V1_MODEL, "cpu")


def _first_tile(data: bytes) -> cx.TilePayload:
    return cx.unpack(data).tiles[0]


def _assert_cheap(r: dict, code: str) -> None:
    """Error code, peak RSS growth, and CPU time of the decode call (one torch thread: on an idle
    machine that is its wall time; on the shared test machine wall time also counts other
    processes' turns)."""
    assert r["code"] == code, r
    assert r["peak_growth_mib"] < MAX_GROWTH_MIB, r
    assert r["cpu_seconds"] < MAX_SECONDS, r


# --- forged containers, in a fresh process: error code, memory, time ------------------------------
@pytest.mark.parametrize("version", [1, 2, 3])
def test_tiny_streams_for_a_whole_tile_cost_next_to_nothing(codec: Codec, v1_codec: Codec, tmp_path: Path,
                                                            version: int) -> None:
    """The issue's 503-byte container: one 1024² tile, 8 bytes of z and 8 of y. Refused after
    decoding z twice (the stream ends before its symbols do), before any layer runs."""
    c = v1_codec if version == 1 else codec
    data = forged.tiny_streams(c.model_id, c.weights_sha256, 1024, version=version)
    assert len(data) < 600
    r = forged.measure(data, c.model_id, tmp_path, threads=1)
    _assert_cheap(r, "bad_section")
    if version == 1:  # the same naming a model that never wrote version 1: refused from the header
        data = forged.tiny_streams(codec.model_id, codec.weights_sha256, 1024, version=1)
        with pytest.raises(ContainerError, match="downgraded") as e:
            codec.decode(data)
        assert e.value.code == "unsupported_version"


@pytest.mark.parametrize("side", [2048, 4096])
def test_a_declared_huge_tile_is_refused_before_allocation(codec: Codec, tmp_path: Path, side: int) -> None:
    """A 4096² tile is valid in the format's byte layout and asked the old decoder for > 10 GB."""
    for version in (1, 2, 3, 4):
        data = forged.tiny_streams(codec.model_id, codec.weights_sha256, side, version=version)
        r = forged.measure(data, codec.model_id, tmp_path, threads=1)
        _assert_cheap(r, "tile_too_large")
        assert r["peak_growth_mib"] < 20 and r["cpu_seconds"] < 0.5, r


def test_many_huge_declared_tiles_are_refused_as_well(codec: Codec) -> None:
    data = forged.tiny_streams(codec.model_id, codec.weights_sha256, 8192, tile=4096, version=2)
    with pytest.raises(ContainerError) as e:
        codec.decode(data)
    assert e.value.code == "tile_too_large"


def test_garbage_after_a_real_tile_header_fails_in_the_first_slice(codec: Codec, honest_both: dict[int, bytes],
                                                                   tmp_path: Path) -> None:
    """Version 2: a real tile's z stream and checks, then garbage y bytes of an honest length.
    The z check passes; the first y slice's check fails: one slice's work, no synthesis."""
    t = _first_tile(honest_both[2])
    data = forged.garbage_after_header(codec.model_id, codec.weights_sha256, 1024, t.z, len(t.y[0]), version=2,
                                       checks=t.checks)
    with pytest.raises(ContainerError, match="after y slice 0") as e:
        codec.decode(data)
    assert e.value.code == "latent_mismatch"
    r = forged.measure(data, codec.model_id, tmp_path, threads=1)
    _assert_cheap(r, "latent_mismatch")


def test_random_tile_checks_fail_right_after_z(codec: Codec, honest_1024: bytes) -> None:
    t = _first_tile(honest_1024)
    data = forged.garbage_after_header(codec.model_id, codec.weights_sha256, 1024, t.z, len(t.y[0]), version=2)
    with pytest.raises(ContainerError, match="after z") as e:
        codec.decode(data)
    assert e.value.code == "latent_mismatch"


def test_version_1_garbage_fails_within_its_one_tile(v1_codec: Codec, tmp_path: Path) -> None:
    """Version 1 has no tile checks: garbage behind a real z costs that tile's entropy decoding,
    and the whole-image checksum refuses it before the synthesis (the step that needs memory).
    (A 512² tile of a model that wrote version 1; the default model's would be a downgrade.)"""
    img = Image.open(KODAK / "kodim01.png").convert("RGB").crop((0, 0, 512, 512))
    t = _first_tile(v1_codec.encode(img, quality=40))
    data = forged.garbage_after_header(v1_codec.model_id, v1_codec.weights_sha256, 512, t.z, len(t.y[0]), version=1)
    r = forged.measure(data, v1_codec.model_id, tmp_path, threads=1)
    assert r["code"] == "latent_mismatch", r
    assert r["peak_growth_mib"] < MAX_GROWTH_MIB, r


def test_wrong_number_of_tile_checks_is_refused(codec: Codec, honest_1024: bytes) -> None:
    t = _first_tile(honest_1024)
    for checks in ([], t.checks[:-1], t.checks + [b"abcd"]):
        data = forged.garbage_after_header(codec.model_id, codec.weights_sha256, 1024, t.z, len(t.y[0]), version=2,
                                           checks=checks)
        with pytest.raises(ContainerError, match="tile checks") as e:
            codec.decode(data)
        assert e.value.code == "bad_section"


# --- honest containers: every version decodes, new ones carry checks -------------------------------
def test_new_containers_are_version_4_and_decode_like_versions_1_to_3(codec: Codec, v1_codec: Codec) -> None:
    img = Image.open(KODAK / "kodim05.png").convert("RGB").crop((0, 0, 160, 96))
    for c_ in (codec, v1_codec):
        seen: list[cx.Container] = []
        pack = cx.pack
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cx, "pack", lambda c: seen.append(c) or pack(c))
            data = c_.encode(img, quality=50)
        c = cx.unpack(data)
        assert c.version == 4 and [len(t.checks) for t in c.tiles] == [c_.coder.n_checks()]
        v3 = pack(dataclasses.replace(seen[0], version=3))  # what the encoder wrote until 2026-12-07: JSON META
        v2 = pack(dataclasses.replace(seen[0], version=2))  # what the encoder wrote before issue 27
        v1 = pack(cx.Container(meta=c.meta, tiles=[cx.TilePayload(t.row, t.col, t.z, t.y) for t in c.tiles],
                               version=1))
        assert len(v3) - len(data) == len(c.meta.to_json()) - len(c.meta.to_bytes(4)) > 250
        assert len(v2) == len(v3) and len(v1) == len(v3) - 2 - 4 * c_.coder.n_checks()
        want = c_.decode(data).rgb
        assert np.array_equal(c_.decode(v3).rgb, want) and np.array_equal(c_.decode(v2).rgb, want)
        if c_.model_id in cx.LEGACY_WRITERS[1]:
            assert np.array_equal(c_.decode(v1).rgb, want)
        else:  # compact-v6 never wrote version 1: a v1 claim is a downgrade
            with pytest.raises(ContainerError, match="downgraded") as e:
                c_.decode(v1)
            assert e.value.code == "unsupported_version"


# --- limits every front door passes -----------------------------------------------------------------
def test_max_pixels_and_time_budget_through_the_library(codec: Codec, honest_1024: bytes) -> None:
    with pytest.raises(ContainerError) as e:
        decode_container(honest_1024, runtime_for(), "cpu", max_pixels=1024 * 1024 - 1)
    assert e.value.code == "absurd_dimensions"
    with pytest.raises(ContainerError) as e:
        codec.decode(honest_1024, max_pixels=1000)
    assert e.value.code == "absurd_dimensions"
    with pytest.raises(ContainerError) as e:
        decode_container(honest_1024, runtime_for(), "cpu", time_budget_s=0.0)
    assert e.value.code == "decode_timeout"
    t = time.process_time()
    with pytest.raises(ContainerError) as e:
        codec.decode(honest_1024, time_budget_s=0.0)
    assert e.value.code == "decode_timeout" and time.process_time() - t < 0.5
    with pytest.raises(ContainerError) as e:
        codec.decode(honest_1024, deadline=time.monotonic() - 1)
    assert e.value.code == "decode_timeout"
    img = Image.open(KODAK / "kodim05.png").convert("RGB").crop((0, 0, 64, 64))
    small = codec.encode(img, quality=50)
    assert decode_container(small, runtime_for(), "cpu", max_pixels=64 * 64, time_budget_s=600).image.size == (64, 64)


def test_a_budget_stops_a_decode_between_slices(codec: Codec, honest_1024: bytes) -> None:
    """A budget shorter than one tile stops inside the tile, not after it."""
    t0 = time.perf_counter()
    codec.decode(honest_1024)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    with pytest.raises(ContainerError, match="time budget") as e:
        codec.decode(honest_1024, time_budget_s=full / 20)
    assert e.value.code == "decode_timeout"
    assert time.perf_counter() - t0 < full * 0.6


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archiver", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_cli_decode_honours_max_pixels_in_one_line(honest_1024: bytes, tmp_path: Path) -> None:
    src = tmp_path / "a.cxa"
    src.write_bytes(honest_1024)
    r = _cli(["decode", str(src), str(tmp_path / "a.png")], {"ARCHIVER_MAX_PIXELS": str(1024 * 1024 - 1)})
    assert r.returncode == 2, r.stderr
    assert "error (absurd_dimensions)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a.png").exists()


def test_cli_decode_of_a_forged_container_is_one_line(codec: Codec, tmp_path: Path) -> None:
    src = tmp_path / "f.cxa"
    src.write_bytes(forged.tiny_streams(codec.model_id, codec.weights_sha256, 4096, version=1))
    r = _cli(["decode", str(src), str(tmp_path / "f.png")])
    assert r.returncode == 2 and "error (tile_too_large)" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_decode_under_a_memory_cap_reports_out_of_memory(honest_1024: bytes, tmp_path: Path) -> None:
    """The issue: under a memory cap ``archiver decode`` printed a RuntimeError traceback. Here the
    address space is capped just above what the process has mapped once the model is loaded, so
    the decode's own allocations fail, for real, inside torch."""
    src = tmp_path / "a.cxa"
    src.write_bytes(honest_1024)
    script = textwrap.dedent(f"""
        import resource, sys
        import torch
        from archiver.codec import Codec
        from archiver.cli import main
        torch.set_num_threads(1)
        Codec.load({registry.DEFAULT_MODEL!r}, "cpu")  # imports and one model load, then the cap
        vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 160 * 2**20, resource.RLIM_INFINITY))
        sys.argv = ["archiver", "decode", {str(src)!r}, {str(tmp_path / "a.png")!r}, "--device", "cpu"]
        main()
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "error (out_of_memory)" in r.stderr, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_torch_and_other_errors_inside_decoding_become_container_errors(codec: Codec,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    img = Image.open(KODAK / "kodim05.png").convert("RGB").crop((0, 0, 64, 64))
    data = codec.encode(img, quality=50)
    for exc, code in [(MemoryError(), "out_of_memory"),
                      (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
                       "out_of_memory"),
                      (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
                      (RuntimeError("expected scalar type Double"), "decode_failed"),
                      (ValueError("bad value"), "decode_failed")]:
        def boom(*a, _exc=exc, **k):
            raise _exc
        monkeypatch.setattr(codec, "_synth", boom)
        with pytest.raises(ContainerError) as e:
            codec.decode(data)
        assert e.value.code == code, (exc, e.value)
        assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert codec.decode(data).image.size == (64, 64)


def test_decode_keeps_the_old_positional_signature(codec: Codec) -> None:
    img = Image.open(KODAK / "kodim05.png").convert("RGB").crop((0, 0, 64, 64))
    data = codec.encode(img, quality=50)
    assert codec.decode(data, 64 * 64).image.size == (64, 64)
    assert decode_container(data, runtime_for(), "cpu", 64 * 64).image.size == (64, 64)
    header = data[:14]
    assert struct.unpack(">H", header[8:10])[0] == cx.VERSION == 4


# --- issue 27: copied or moved tiles, edited headers, downgrades ----------------------------------
@pytest.mark.parametrize("rows,cols", [(1, 2), (2, 2), (4, 4), (10, 11)])
def test_copies_of_a_genuine_tile_are_refused_at_the_first_check(codec: Codec, honest_1024: bytes, tmp_path: Path,
                                                                  rows: int, cols: int) -> None:
    """The issue's forgery: one genuine 1024² tile copied to every position of a larger grid (2, 4,
    16 and 110 copies; before: 98 CPU-s for 4, past 60 s for 16 and 110). Version 3 binds each check
    to the header and the tile's index: refused after the first tile's z, before any layer runs."""
    data = forged.copied_tile(honest_1024, rows, cols)
    assert cx.unpack(data).meta.n_tiles == rows * cols
    r = forged.measure(data, codec.model_id, tmp_path, threads=1)
    _assert_cheap(r, "latent_mismatch")
    assert r["cpu_seconds"] < 1.0, r


@pytest.fixture(scope="module")
def small_codec() -> Codec:
    """The default model with 64-px tiles: genuine multi-tile containers that cost little to make."""
    return Codec.load(registry.DEFAULT_MODEL, "cpu", tile_size=64)


@pytest.fixture(scope="module")
def two_tiles(small_codec: Codec) -> bytes:
    img = Image.open(KODAK / "kodim05.png").convert("RGB").crop((0, 0, 128, 64))
    return small_codec.encode(img, quality=50)


def _refused(codec: Codec, data: bytes, code: str, match: str | None = None) -> ContainerError:
    with pytest.raises(ContainerError, match=match) as e:
        codec.decode(data)
    assert e.value.code == code, e.value
    return e.value


def test_a_copied_or_moved_tile_of_a_genuine_container_fails_at_its_first_check(small_codec: Codec,
                                                                                 two_tiles: bytes) -> None:
    assert cx.unpack(two_tiles).version == 4 and small_codec.decode(two_tiles).rgb.shape == (64, 128, 3)
    # tile 0 copied over tile 1: tile 0 decodes, tile 1 fails after its z (one tile's work)
    _refused(small_codec, forged.rebuild(two_tiles, tiles=[(0, 0, 0), (0, 0, 1)]), "latent_mismatch",
             r"tile \(0,1\).*after z")
    # the two tiles swapped: the first fails at once
    _refused(small_codec, forged.rebuild(two_tiles, tiles=[(1, 0, 0), (0, 0, 1)]), "latent_mismatch",
             r"tile \(0,0\).*after z")
    # the untouched re-assembly decodes: the forger's writer is faithful
    assert np.array_equal(small_codec.decode(forged.rebuild(two_tiles)).rgb, small_codec.decode(two_tiles).rgb)


@pytest.mark.parametrize("edit", [{"quality": 0.0}, {"quality": 59.0}, {"mode": "L"}, {"content_type": "image/jpeg"},
                                  {"original_sha256": "0" * 64}, {"extra": {"x": 1}}])
@pytest.mark.parametrize("version", [3, 4])
def test_an_edited_header_is_refused_with_a_code(codec: Codec, edit: dict, version: int) -> None:
    """The issue: with the CRC recomputed, quality 60 -> 0 gave a 12 dB image with exit 0. In
    versions 3 and 4 every META byte is covered (as are ICCP, EXIF and ALPH): refused after the first z."""
    data = (ROOT / f"tests/data/golden/container-v{version}" / codec.model_id / "rgb-96x64-q60.cxa").read_bytes()
    assert codec.decode(data).meta.quality == 60.0
    _refused(codec, forged.rebuild(data, meta=edit), "latent_mismatch", "after z")


def test_an_edited_alpha_plane_is_refused(codec: Codec) -> None:
    import zlib

    data = (ROOT / "tests/data/golden/container-v3" / codec.model_id / "rgba-48x40-q40.cxa").read_bytes()
    secs = forged._sections(data)
    alpha = bytes(255 - b for b in zlib.decompress(dict(secs)[b"ALPH"]))
    forged_alpha = data.replace(forged._section(b"ALPH", dict(secs)[b"ALPH"]),
                                forged._section(b"ALPH", zlib.compress(alpha)))
    assert forged_alpha != data and cx.unpack(forged_alpha).alpha == alpha
    _refused(codec, forged_alpha, "latent_mismatch", "after z")


def test_downgrades_are_refused(codec: Codec) -> None:
    """v4 -> v3 (META rewritten as JSON) keeps checks bound to another header, and v3 -> v2 keeps
    checks that are no v2 checks (both refused after z); v3 or v2 -> v1 of a model that never wrote
    version 1 (compact-v6 and later) is refused from the header."""
    assert codec.model_id not in cx.LEGACY_WRITERS[1]
    v4 = (ROOT / "tests/data/golden/container-v4" / codec.model_id / "rgb-96x64-q60.cxa").read_bytes()
    v3 = (ROOT / "tests/data/golden/container-v3" / codec.model_id / "rgb-96x64-q60.cxa").read_bytes()
    v2 = (ROOT / "tests/data/golden/container-v2" / codec.model_id / "rgb-96x64-q60.cxa").read_bytes()
    assert cx.unpack(forged.rebuild(v4, version=3)).meta == cx.unpack(v4).meta
    _refused(codec, forged.rebuild(v4, version=3), "latent_mismatch", "after z")
    _refused(codec, forged.rebuild(v3, version=2), "latent_mismatch", "after z")
    _refused(codec, forged.rebuild(v3, version=1), "unsupported_version", "downgraded")
    _refused(codec, forged.rebuild(v2, version=1), "unsupported_version", "downgraded")
    assert codec.decode(v2).meta.quality == 60.0  # the genuine version-2 file still decodes


def test_legacy_versions_get_a_default_time_budget(codec: Codec) -> None:
    """Versions 1 and 2 cannot tell a copied tile (their checks are not bound): their decode gets a
    budget proportional to the declared pixels unless the caller gives one; versions 3 and 4 need none."""
    golden = ROOT / "tests/data/golden"
    v2 = (golden / "container-v2" / codec.model_id / "rgb-96x64-q60.cxa").read_bytes()
    v3 = (golden / "container-v3" / codec.model_id / "rgb-96x64-q60.cxa").read_bytes()
    spent = -1e9  # seconds per megapixel: a default budget that is over before the first tile
    _refused_kw(codec, v2, "decode_timeout", legacy_s_per_mp=spent)
    assert codec.decode(v2, legacy_s_per_mp=spent, time_budget_s=600).rgb.shape == (64, 96, 3)  # the caller's wins
    assert codec.decode(v3, legacy_s_per_mp=spent).rgb.shape == (64, 96, 3)
    v4 = (golden / "container-v4" / codec.model_id / "rgb-96x64-q60.cxa").read_bytes()
    assert codec.decode(v4, legacy_s_per_mp=spent).rgb.shape == (64, 96, 3)
    assert np.array_equal(codec.decode(v2).rgb, codec.decode(v3).rgb)


def _refused_kw(codec: Codec, data: bytes, code: str, **kw) -> None:
    with pytest.raises(ContainerError) as e:
        codec.decode(data, **kw)
    assert e.value.code == code, e.value
