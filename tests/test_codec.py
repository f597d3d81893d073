"""Codec core: real bitstreams, exactness of the entropy parameters, sizes, modes, bad input.

The shipped model's *quality* is checked in test_model_quality.py; here every expectation is a
property that must hold for any weights (round trips, bit-exactness, error handling).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from archiver.codec import Codec, TargetNotReached
from archiver.codec import container as cx
from archiver.codec import registry
from archiver.codec.api import SEARCH_STEPS, QualityHints, delivered, smallest_quality
from archiver.codec.exact import GRID, ExactBlock, ExactDepthwise, ExactPointwise, float_twin
from archiver.codec.model import PRESETS, build_model
from archiver.errors import ContainerError, UnknownModelError, WeightsIntegrityError
from archiver.images import load_image
from archiver.metrics import psnr

from shared_paths import KODAK  # noqa: E402


def kodak_crop(n: int, box: tuple[int, int, int, int], mode: str = "RGB") -> Image.Image:
    return Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB").crop(box).convert(mode)


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(registry.DEFAULT_MODEL, "cpu")  # the shipped default (scale rule "nearest")


@pytest.fixture(scope="module")
def small_tile_codec() -> Codec:
    return Codec.load(registry.DEFAULT_MODEL, "cpu", tile_size=64)


@pytest.fixture(scope="module")
def crop_rgb() -> Image.Image:
    return kodak_crop(23, (200, 100, 392, 228))  # 192 x 128


# ---- exact arithmetic ------------------------------------------------------------------------

def _int_reference_pointwise(layer: ExactPointwise, x_units: np.ndarray) -> np.ndarray:
    """Pure-integer reference (Python/numpy int64) of one exact pointwise layer."""
    with torch.no_grad():
        w = torch.round(torch.clamp(layer.weight.double(), -128, 128) * GRID).long().numpy()
        b = torch.floor(torch.clamp(layer.bias.double(), -4096, 4096) * GRID * GRID + 0.5).long().numpy()
    acc = np.einsum("oc,nchw->nohw", w, x_units.astype(np.int64)) + b[None, :, None, None]
    out = np.floor_divide(acc + 128, 256)  # floor(acc / 256 + 1/2) in integers
    return np.clip(out, -4096 * 256, 4096 * 256)


def test_exact_pointwise_equals_integer_reference() -> None:
    torch.manual_seed(1)
    layer = ExactPointwise(48, 32)
    with torch.no_grad():
        layer.weight.mul_(7.3)  # spread weights over many grid values
        layer.bias.normal_(0, 3)
    x_units = np.random.default_rng(0).integers(-300_000, 300_000, size=(2, 48, 5, 7))
    got = layer(torch.from_numpy(x_units).double() / GRID)
    want = _int_reference_pointwise(layer, x_units)
    assert np.array_equal((got * GRID).long().numpy(), want)


def test_exact_layers_do_not_depend_on_summation_order() -> None:
    """Permuting input channels (and weights alike) reorders every sum: results must not move."""
    torch.manual_seed(2)
    layer = ExactPointwise(64, 16)
    x = torch.randint(-2**18, 2**18, (1, 64, 9, 9)).double() / GRID
    perm = torch.randperm(64)
    base = layer(x)
    permuted = ExactPointwise(64, 16)
    with torch.no_grad():
        permuted.weight.copy_(layer.weight[:, perm])
        permuted.bias.copy_(layer.bias)
    assert torch.equal(base, permuted(x[:, perm]))
    dw = ExactDepthwise(8, 5)
    xd = torch.randint(-2**18, 2**18, (1, 8, 11, 13)).double() / GRID
    y1 = dw(xd)
    torch.set_num_threads(1)
    try:
        y2 = dw(xd.contiguous(memory_format=torch.channels_last))
    finally:
        torch.set_num_threads(2)
    assert torch.equal(y1, y2)


def test_training_path_matches_exact_path() -> None:
    """float32 + straight-through rounding (training) computes the same grid values as float64."""
    torch.manual_seed(3)
    layer = ExactPointwise(16, 8)
    x = torch.randint(-2000, 2000, (1, 16, 6, 6)).double() / GRID
    assert torch.equal(layer(x.float()).double(), layer(x))


def test_scale_rules_pick_the_entry_up_or_nearest_in_log() -> None:
    up = build_model("compact")
    nearest = build_model(dataclasses.replace(PRESETS["compact"], scale_rule="nearest"))
    t = up.scale_table.double()
    mid = math.sqrt(float(t[10]) * float(t[11]))
    s = torch.tensor([float(t[10]), float(t[10]) * 1.001, mid * 0.999, mid * 1.001, 1e-3, 1e6], dtype=torch.float64)
    assert up.scale_indexes(s).tolist() == [10, 11, 11, 11, 0, 63]
    assert nearest.scale_indexes(s).tolist() == [10, 10, 10, 11, 0, 63]
    # a model registered before the rule existed keeps its rule (its bitstreams depend on it)
    assert registry.read_registry()["compact-v1"].preset.scale_rule == "up"
    with pytest.raises(ValueError, match="scale_rule"):
        dataclasses.replace(PRESETS["compact"], scale_rule="down")


def test_float_twin_is_off_grid_only_inside_its_block() -> None:
    """The RD-cost benchmark's float twin must really leave the grid, and never leak out of it."""
    torch.manual_seed(4)
    block = ExactBlock(8)
    x = torch.randn(1, 8, 6, 6)
    on_grid = block(x)
    assert torch.equal(on_grid * GRID, torch.round(on_grid * GRID))
    with float_twin():
        twin = block(x)
    assert not torch.equal(twin * GRID, torch.round(twin * GRID))
    assert torch.equal(block(x), on_grid)


# ---- round trips -----------------------------------------------------------------------------

def test_round_trip_is_deterministic_and_matches_encoder(codec: Codec, crop_rgb: Image.Image) -> None:
    res = codec.encode_detailed(crop_rgb, quality=60)
    again = codec.encode(crop_rgb, quality=60)
    assert res.data == again, "encoding must be deterministic"
    dec = codec.decode(res.data)
    assert dec.rgb.shape == (128, 192, 3)
    assert dec.meta.quality == 60 and dec.meta.model_id == registry.DEFAULT_MODEL
    assert abs(psnr(np.asarray(crop_rgb), dec.rgb) - res.psnr) < 0.05
    assert res.bpp == pytest.approx(len(res.data) * 8 / (192 * 128))


def test_decode_bit_exact_across_thread_counts(codec: Codec, crop_rgb: Image.Image) -> None:
    data = codec.encode(crop_rgb, quality=35)
    outs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        outs.append(codec.decode(data).rgb)  # decode() itself checks the latent sha256
    torch.set_num_threads(2)
    assert np.array_equal(outs[0], outs[1])


def test_rate_grows_with_quality(codec: Codec, crop_rgb: Image.Image) -> None:
    sizes = [len(codec.encode(crop_rgb, quality=q)) for q in (0, 50, 100)]
    assert sizes[0] < sizes[1] < sizes[2]


@pytest.mark.parametrize("size", [(1, 1), (1, 67), (67, 1), (63, 127), (130, 70)])
def test_any_size(small_tile_codec: Codec, size: tuple[int, int]) -> None:
    w, h = size
    im = kodak_crop(5, (100, 100, 100 + w, 100 + h))
    data = small_tile_codec.encode(im, quality=80)
    meta = cx.read_meta(data)
    assert (meta.width, meta.height) == (w, h)
    assert meta.n_tiles == -(-w // 64) * -(-h // 64)
    dec = small_tile_codec.decode(data)
    assert dec.rgb.shape == (h, w, 3)
    assert dec.image.size == (w, h)


def test_tiles_decode_like_one_piece(codec: Codec, small_tile_codec: Codec) -> None:
    im = kodak_crop(1, (0, 0, 160, 96))
    tiled = small_tile_codec.decode(small_tile_codec.encode(im, quality=90))
    whole = codec.decode(codec.encode(im, quality=90))
    orig = np.asarray(im)
    # tiles cost a little quality at seams, never a broken image
    assert psnr(orig, tiled.rgb) > psnr(orig, whole.rgb) - 3.0


def test_gray_alpha_palette_modes(codec: Codec) -> None:
    gray = kodak_crop(7, (0, 0, 96, 64), "L")
    dec = codec.decode(codec.encode(gray, quality=70))
    assert dec.meta.mode == "L" and dec.image.mode == "L"
    assert (dec.rgb[:, :, 0] == dec.rgb[:, :, 1]).all()

    rgba = kodak_crop(3, (0, 0, 96, 64), "RGBA")
    alpha = np.tile(np.arange(96, dtype=np.uint8)[None, :] * 2, (64, 1))
    rgba.putalpha(Image.fromarray(alpha))
    img = load_image(png_bytes(rgba), max_pixels=10**7)
    dec = codec.decode(codec.encode(img, quality=70))
    assert dec.image.mode == "RGBA"
    assert np.array_equal(dec.alpha, alpha), "alpha must be lossless"

    pal = kodak_crop(3, (0, 0, 64, 64)).convert("P", palette=Image.ADAPTIVE, colors=32)
    dec = codec.decode(codec.encode(load_image(png_bytes(pal), max_pixels=10**7), quality=70))
    assert dec.meta.mode == "P" and dec.image.size == (64, 64)


def test_icc_and_exif_are_preserved(codec: Codec) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = kodak_crop(2, (0, 0, 64, 64))
    exif = Image.Exif()
    exif[0x010E] = "inspection shot 42"  # ImageDescription
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, icc_profile=icc, exif=exif.tobytes())
    img = load_image(buf.getvalue(), max_pixels=10**7)
    dec = codec.decode(codec.encode(img, quality=50))
    assert dec.icc == icc
    assert dec.exif is not None and b"inspection shot 42" in dec.exif
    assert dec.meta.original_sha256 == hashlib.sha256(buf.getvalue()).hexdigest()
    assert dec.meta.content_type == "image/jpeg"


def _concave_psnr(q: float) -> float:
    """Shaped like the shipped model's PSNR(q) on a photo: steep at low q, flat near 100."""
    return 20.0 + 15.0 * (1.0 - math.exp(-q / 25.0))


@pytest.mark.parametrize("answer", [0.0, 0.4, 7.7, 42.0, 63.1, 99.6, 100.0])
def test_quality_search_finds_the_smallest_quality_from_any_hint(answer: float) -> None:
    target = _concave_psnr(answer)
    res = 100 / 2**SEARCH_STEPS
    unhinted = smallest_quality(_concave_psnr, target)
    cases = [(h, 0.0) for h in [None, answer, answer - 0.5, answer + 0.5, answer - 1.4, answer + 20, 0.0, 100.0,
                                -5.0, 150.0, answer + 0.37, answer - 3.3, answer + res, answer - 1.5 * res,
                                answer + 1.9 * res]]
    cases += [(answer + 5.1, 4.2), (answer - 9.9, 0.3), (answer + 0.2, 17.0)]
    for hint, spread in cases:
        calls: list[float] = []

        def probe(q: float) -> float:
            calls.append(q)
            return _concave_psnr(q)

        q = smallest_quality(probe, target, hint=hint, spread=spread)
        assert q == unhinted, (answer, hint, spread, q)  # the same grid point from any start
        assert all((c / res).is_integer() for c in calls), calls
        assert _concave_psnr(q) >= target, (answer, hint, q)
        assert q == 0.0 or q - res < answer <= q + 1e-9, (answer, hint, q)  # within one step above the answer
        if hint is None:
            assert len(calls) <= 2 + SEARCH_STEPS
        elif abs(hint - answer) <= res and spread == 0.0 and 0.0 < answer < 100.0:
            # the point of a hint: an answer within a grid step of it costs at most 4 probes
            assert len(calls) <= 4, (answer, hint, calls)
        assert len(calls) <= 2 * (2 + SEARCH_STEPS), (answer, hint, calls)  # a bad hint is never pathological


def test_quality_search_gives_up_early_when_the_target_is_out_of_reach() -> None:
    for hint in [None, 30.0, 100.0]:
        calls: list[float] = []
        with pytest.raises(TargetNotReached):
            smallest_quality(lambda q: calls.append(q) or _concave_psnr(q), 40.0, hint=hint)
        assert len(calls) <= (1 if hint is None or hint == 100.0 else 2)


def test_quality_hints_remember_the_median_and_spread_per_model_and_target() -> None:
    h = QualityHints(keep=5)
    assert h.get("m", 40.0) == (None, 0.0)
    for q in [10, 12, 11, 90, 13, 12]:  # the oldest (10) falls out; one outlier does not move the median
        h.add("m", 40.0, q)
    mid, spread = h.get("m", 40.0)
    assert mid == 12.0 and spread == 1.0
    assert h.get("m", 41.0) == (None, 0.0) and h.get("other", 40.0) == (None, 0.0)


def test_target_psnr_is_met_and_smallest(codec: Codec, crop_rgb: Image.Image) -> None:
    orig = np.asarray(crop_rgb)
    top = psnr(orig, codec.decode(codec.encode(crop_rgb, quality=100)).rgb)
    bottom = psnr(orig, codec.decode(codec.encode(crop_rgb, quality=0)).rgb)
    target = bottom + 0.6 * (top - bottom)
    res = codec.encode_detailed(crop_rgb, target_psnr=target, search="bisect")
    got = psnr(orig, codec.decode(res.data).rgb)
    assert got >= target - 0.01
    # one search step lower would have missed the target: the search returns the smallest
    step = 100 / 2**SEARCH_STEPS
    if res.quality >= step:
        lower = codec.decode(codec.encode(crop_rgb, quality=res.quality - step)).rgb
        assert psnr(orig, lower) < target
    with pytest.raises(TargetNotReached):
        codec.encode(crop_rgb, target_psnr=top + 5)
    # started from a good hint the search probes far less and still returns a quality that meets
    # the target and lies within one search step of the unhinted answer
    hinted = codec.encode_detailed(crop_rgb, target_psnr=target, quality_hint=res.quality + 0.6 * step, search="bisect")
    assert hinted.probes <= 5 < res.probes
    assert psnr(orig, codec.decode(hinted.data).rgb) >= target - 0.01
    assert abs(hinted.quality - res.quality) <= step
    # the predicted search (the default, issue 25) returns bisection's stream with fewer exact probes
    predicted = codec.encode_detailed(crop_rgb, target_psnr=target)
    assert predicted.data == res.data and predicted.probes < res.probes
    # a coarser grid (search_steps, what benchmarks compare grids with) answers on its own grid
    # points, never below the fine grid's smallest quality, and both searches agree on it
    coarse = codec.encode_detailed(crop_rgb, target_psnr=target, search="bisect", search_steps=4)
    assert coarse.quality % (100 / 2**4) == 0 and coarse.quality >= res.quality
    assert psnr(orig, codec.decode(coarse.data).rgb) >= target - 0.01
    assert codec.encode_detailed(crop_rgb, target_psnr=target, search_steps=4).data == coarse.data


def test_gray_psnr_is_measured_on_delivered_pixels(codec: Codec) -> None:
    gray = kodak_crop(7, (0, 0, 96, 64), "L")
    res = codec.encode_detailed(gray, quality=60)
    dec = codec.decode(res.data)
    g = np.asarray(gray)
    assert abs(psnr(np.repeat(g[:, :, None], 3, 2), delivered(dec.rgb, "L")) - res.psnr) < 0.05


# ---- bad containers, models and weights ------------------------------------------------------

def _sections(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, tag, length) of every section."""
    out, off = [], cx.HEADER_SIZE
    while off < len(data):
        tag = data[off : off + 4]
        (n,) = struct.unpack(">I", data[off + 4 : off + 8])
        out.append((off, tag, n))
        off += 12 + n
    return out


def _reforge(data: bytes, off: int, tag: bytes, payload: bytes) -> bytes:
    """Replace one section's payload and recompute its CRC, as a forger would."""
    (n,) = struct.unpack(">I", data[off + 4 : off + 8])
    body = tag + struct.pack(">I", len(payload)) + payload
    return data[:off] + body + struct.pack(">I", zlib.crc32(body)) + data[off + 12 + n :]


def test_truncated_and_flipped_containers_fail_clearly(codec: Codec, crop_rgb: Image.Image) -> None:
    data = codec.encode(crop_rgb, quality=40)
    cuts = {0, 5, cx.HEADER_SIZE - 1, len(data) - 1}
    for off, _, n in _sections(data):
        cuts |= {off, off + 6, off + 12, off + 12 + n // 2, off + 12 + n}
    for cut in sorted(c for c in cuts if c < len(data)):
        with pytest.raises(ContainerError):
            codec.decode(data[:cut])
    rng = np.random.default_rng(0)
    for pos in rng.integers(0, len(data), 40):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        with pytest.raises(ContainerError):
            codec.decode(bytes(bad))


def test_forged_entropy_data_is_detected(codec: Codec, crop_rgb: Image.Image) -> None:
    """A forger who recomputes the CRCs still cannot slip garbage past the latent checksum."""
    data = codec.encode(crop_rgb, quality=40)
    off, tag, n = next(s for s in _sections(data) if s[1] == b"TILE")
    payload = bytearray(data[off + 8 : off + 8 + n])
    rng = np.random.default_rng(1)
    for trial in range(5):
        forged = bytearray(payload)
        for pos in rng.integers(12, len(forged), 8):
            forged[pos] = int(rng.integers(0, 256))
        with pytest.raises(ContainerError) as e:
            codec.decode(_reforge(data, off, tag, bytes(forged)))
        assert e.value.code in ("latent_mismatch", "bad_section", "truncated")


@pytest.mark.parametrize("fill", [0xFF, 0x00, 0xF0, None])
def test_worst_case_forged_streams_are_refused_cleanly(codec: Codec, crop_rgb: Image.Image, fill: int | None) -> None:
    """All-ones streams drive CompressAI's decoder into its longest bypass runs (every 4-bit group
    0xF); with the padding bound it reads only our zeros, and the result is a clear error. An
    absurdly long stream is refused before decoding."""
    from archiver.codec.entropy import MAX_STREAM_BYTES_PER_SYMBOL

    data = codec.encode(crop_rgb, quality=40)
    off, tag, n = next(s for s in _sections(data) if s[1] == b"TILE")
    payload = data[off + 8 : off + 8 + n]
    (n_checks,) = struct.unpack(">H", payload[4:6])
    head = 6 + 4 * n_checks  # row, col and (container version 2) the tile checks, kept as they are
    row_col, z_len = payload[:head], struct.unpack(">I", payload[head : head + 4])[0]
    z = payload[head + 4 : head + 4 + z_len]
    pre = codec.model.preset  # y symbols of the tile: M per latent position, on the padded grid
    n_y = pre.latent * (math.ceil(crop_rgb.height / pre.z_stride) * pre.z_stride // pre.stride) * (
        math.ceil(crop_rgb.width / pre.z_stride) * pre.z_stride // pre.stride)
    (y_len,) = struct.unpack(">I", payload[head + 8 + z_len : head + 12 + z_len])  # after the count of y streams (1)

    def tile(z_bytes: bytes, y_bytes: bytes) -> bytes:
        return row_col + struct.pack(">I", len(z_bytes)) + z_bytes + struct.pack(">II", 1, len(y_bytes)) + y_bytes

    assert tile(z, payload[head + 12 + z_len :]) == payload and len(payload) == head + 12 + z_len + y_len
    for length in (y_len, MAX_STREAM_BYTES_PER_SYMBOL * n_y + 64):
        y = bytes([fill]) * length if fill is not None else np.random.default_rng(length).bytes(length)
        for z_forged in (z, bytes([fill if fill is not None else 0xFF]) * len(z)):
            with pytest.raises(ContainerError) as e:
                codec.decode(_reforge(data, off, tag, tile(z_forged, y)))
            assert e.value.code in ("latent_mismatch", "bad_section"), e.value
    too_long = tile(z, bytes(9 * n_y + 64))
    with pytest.raises(ContainerError, match="longer than the encoder can produce"):
        codec.decode(_reforge(data, off, tag, too_long))


def test_forged_dimensions_and_model(codec: Codec, crop_rgb: Image.Image) -> None:
    data = codec.encode(crop_rgb, quality=40)
    from forged import meta_fields, meta_payload

    off, tag, n = _sections(data)[0]
    version = cx.read_version(data)
    meta = meta_fields(data[off + 8 : off + 8 + n], version)
    for field, value in [("width", 60000), ("height", 0), ("n_tiles", 7), ("tile_size", 100)]:
        forged = dict(meta, **{field: value})
        blob = meta_payload(forged, version)
        with pytest.raises(ContainerError):
            codec.decode(_reforge(data, off, tag, blob))
    for field, value, code in [("model_id", "compact-v0", "model_mismatch"), ("weights_sha256", "0" * 64, "weights_mismatch")]:
        blob = meta_payload(dict(meta, **{field: value}), version)
        with pytest.raises(ContainerError) as e:
            codec.decode(_reforge(data, off, tag, blob))
        assert e.value.code == code


def test_unknown_model_id_is_a_clear_error() -> None:
    with pytest.raises(UnknownModelError, match="knows: compact-v1"):
        Codec.load("no-such-model", "cpu")


def test_tampered_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = registry.WEIGHTS_DIR
    shutil.copy(src / "registry.json", tmp_path / "registry.json")
    entry = registry.read_registry()["compact-v1"]
    blob = bytearray(entry.file.read_bytes())
    blob[-100] ^= 1
    (tmp_path / entry.file.name).write_bytes(bytes(blob))
    monkeypatch.setattr(registry, "REGISTRY_FILE", tmp_path / "registry.json")
    with pytest.raises(WeightsIntegrityError, match="do not match"):
        registry.load_model("compact-v1")


def test_registry_refuses_to_reuse_an_id(tmp_path: Path) -> None:
    reg = tmp_path / "registry.json"
    entry = registry.read_registry()["compact-v1"]
    registry.register("m1", entry.file, entry.sha256, entry.preset, {}, registry=reg)
    registry.register("m1", entry.file, entry.sha256, entry.preset, {}, registry=reg)  # same weights: fine
    with pytest.raises(ValueError, match="new id"):
        registry.register("m1", entry.file, "f" * 64, entry.preset, {}, registry=reg)
    with pytest.raises(ValueError, match="new id"):  # same weights, other scale rule: other bitstreams
        registry.register("m1", entry.file, entry.sha256, dataclasses.replace(entry.preset, scale_rule="nearest"), {},
                          registry=reg)


def test_register_model_ships_weights_under_a_new_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     crop_rgb: Image.Image) -> None:
    """`archiver register-model`: the file is checked, copied and recorded with its scale rule, and
    the new id encodes and decodes; an id is never given other weights; a broken file is refused."""
    from click.testing import CliRunner

    from archiver.cli import main as cli

    shutil.copy(registry.WEIGHTS_DIR / "registry.json", tmp_path / "registry.json")
    shutil.copy(registry.WEIGHTS_DIR / "compact-v1.safetensors", tmp_path / "compact-v1.safetensors")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(registry, "REGISTRY_FILE", tmp_path / "registry.json")
    trained = tmp_path / "run" / "w.safetensors"  # "newly trained": compact-v1 with the synthesis nudged
    trained.parent.mkdir()
    model, _ = registry.load_model("compact-v1")
    with torch.no_grad():
        next(model.g_s.parameters()).add_(1e-3)
    registry.save_weights(model, trained)

    res = CliRunner().invoke(cli, ["register-model", "test-near", str(trained), "--note", "copy", "--steps", "7"])
    assert res.exit_code == 0, res.output
    entry = registry.read_registry()["test-near"]
    assert entry.file == tmp_path / "test-near.safetensors" and entry.file.read_bytes() == trained.read_bytes()
    assert entry.preset.scale_rule == "nearest" and entry.info == {"note": "copy", "trained_steps": 7}
    near = Codec.load("test-near", "cpu")
    data = near.encode(crop_rgb, quality=50)
    assert cx.unpack(data).meta.model_id == "test-near"
    assert psnr(np.asarray(crop_rgb), near.decode(data).rgb) > 15

    res = CliRunner().invoke(cli, ["register-model", "test-near", str(trained)])  # again: nothing changes
    assert res.exit_code == 0 and registry.read_registry()["test-near"] == entry
    # compact-v1's own weights under a new id with the other scale rule: shipped once, not copied
    res = CliRunner().invoke(cli, ["register-model", "test-v1-near", str(trained.parent.parent / "compact-v1.safetensors")])
    again = registry.read_registry()["test-v1-near"]
    assert res.exit_code == 0 and again.file == tmp_path / "compact-v1.safetensors"
    assert again.preset.scale_rule == "nearest" and not (tmp_path / "test-v1-near.safetensors").exists()

    other = tmp_path / "other.safetensors"
    other.write_bytes(trained.read_bytes()[:-1] + b" ")
    res = CliRunner().invoke(cli, ["register-model", "test-near", str(other)])
    assert res.exit_code != 0 and "new id" in res.output
    other.write_bytes(trained.read_bytes()[: len(trained.read_bytes()) // 2])
    res = CliRunner().invoke(cli, ["register-model", "test-broken", str(other)])
    assert res.exit_code == 1 and "not a complete weights file" in res.output
    assert "test-broken" not in registry.read_registry()
    assert not (tmp_path / "test-broken.safetensors").exists()


def test_models_lists_verifies_and_names_models_the_archive_needs(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`archiver models`: the shipped registry verifies intact; a damaged or missing weights file,
    or a model that stored containers need but this installation lacks, exits 1 and says so.
    Containers are counted by location: an upgrade in place leaves the older model unneeded."""
    import json as jsonlib

    from click.testing import CliRunner

    from archiver.cli import main as cli
    from archiver.db import ArchivedObject, session_factory, upgrade

    res = CliRunner().invoke(cli, ["models", "--verify", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["model_id"]: r for r in jsonlib.loads(res.output)["models"]}
    assert set(rows) == set(registry.read_registry()) and all(r["intact"] for r in rows.values())
    assert [m for m, r in rows.items() if r["default"]] == [registry.DEFAULT_MODEL]

    db = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(db)
    factory = session_factory(db)
    with factory() as s:
        for key, etag, model in (("a.png", "e1", "compact-v1"), ("a.png", "e1", "compact-v2"),  # upgraded in place
                                 ("b.png", "e2", "compact-v1"), ("c.png", "e3", "compact-v0-retired")):
            s.add(ArchivedObject(bucket="b", key=key, etag=etag, model_id=model, dest_url=f"s3://b/{key}.cxa",
                                 compressed_sha256="0" * 64, compressed_bytes=10, original_bytes=100))
            s.flush()
        s.commit()
    factory.kw["bind"].dispose()
    res = CliRunner().invoke(cli, ["models", "--db", db, "--json"])
    assert res.exit_code == 1, res.output
    out = jsonlib.loads(res.output)
    assert {r["model_id"]: r["containers"] for r in out["models"]}["compact-v1"] == 1
    assert {r["model_id"]: r["containers"] for r in out["models"]}["compact-v2"] == 1
    assert out["missing_models"] == {"compact-v0-retired": 1}
    res = CliRunner().invoke(cli, ["models", "--db", db])
    assert res.exit_code == 1 and "compact-v0-retired is not installed" in res.output, res.output

    shutil.copy(registry.WEIGHTS_DIR / "registry.json", tmp_path / "registry.json")
    damaged = bytearray((registry.WEIGHTS_DIR / "compact-v1.safetensors").read_bytes())
    damaged[-100] ^= 0x01
    (tmp_path / "compact-v1.safetensors").write_bytes(bytes(damaged))  # the others are missing
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(registry, "REGISTRY_FILE", tmp_path / "registry.json")
    res = CliRunner().invoke(cli, ["models", "--verify"])
    assert res.exit_code == 1, res.output
    assert "compact-v1: weights file missing or not matching its sha256" in res.output
    assert "MISSING" in res.output


def test_torch_threads_setting_sizes_the_pool() -> None:
    from archiver.codec.api import apply_torch_threads

    before = torch.get_num_threads()
    try:
        apply_torch_threads(1)
        assert torch.get_num_threads() == 1
        apply_torch_threads(0)  # 0 leaves it alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_sharing_one_codec_get_the_same_bytes(codec: Codec, crop_rgb: Image.Image) -> None:
    """The codec keeps no per-call state, so ``workers.codec_slots > 1`` (several images in one
    codec at once) gives exactly the bytes and pixels of one-at-a-time use."""
    import concurrent.futures

    crops = [kodak_crop(n, (64, 64, 192, 192)) for n in (3, 7, 11, 15)]
    expected = [codec.encode_detailed(im, quality=30 + 10 * i) for i, im in enumerate(crops)]

    def work(i: int) -> tuple[bytes, float, np.ndarray]:
        res = codec.encode_detailed(crops[i], quality=30 + 10 * i)  # its psnr comes from its own recon
        return res.data, res.psnr, codec.decode(res.data).rgb

    order = [0, 1, 2, 3, 3, 2, 1, 0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(work, order))
    for i, (data, p, rgb) in zip(order, got):
        assert data == expected[i].data and p == expected[i].psnr
        assert np.array_equal(rgb, codec.decode(expected[i].data).rgb)
