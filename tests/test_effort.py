"""Encoder effort (issue 24): rate-distortion optimised quantisation on the encoder side only.

What must hold: effort 0 is the encoder of every earlier release (same entropy-coded streams as
the golden ones); streams made at effort 1 decode with the one decoder, as when they were
written; RDOQ's rate model is the coder's real cost; and effort 1 gives fewer bytes at the same
verified PSNR, on real photos.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from archiver.codec import Codec
from archiver.codec import container as cx
from archiver.codec.default import EFFORTS
from archiver.codec.model import anchor_mask
from archiver.images import from_pil
from archiver.metrics import psnr

import make_effort_streams as effort_streams
from make_golden import CASES, golden_dir, source
from shared_paths import KODAK

MODEL = "compact-v6"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(MODEL, "cpu")


def _kodak_crop(n: int, size: int = 128) -> Image.Image:
    im = Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB")
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return im.crop((left, top, left + size, top + size))


@pytest.mark.parametrize("case", sorted(effort_streams.CASES))
def test_effort_streams_decode_as_when_written(case: str, codec: Codec) -> None:
    path = effort_streams.OUT / f"{case}.cxa"
    data = path.read_bytes()
    got = np.asarray(codec.decode(data).image).astype(int)
    want = np.asarray(Image.open(path.with_suffix(".png"))).astype(int)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1  # the float synthesis' documented 1-LSB tolerance
    # and the picture is the photo (not a desynchronised decode that happens to pass)
    assert psnr(np.asarray(effort_streams.source(case)), got.astype(np.uint8)) > 33.0


@pytest.mark.parametrize("case", sorted(CASES))
def test_effort_0_writes_the_entropy_streams_of_earlier_releases(case: str, codec: Codec) -> None:
    """Effort 0 is not a new encoder: its z and y streams equal the golden ones written when
    compact-v6 was registered (compared per tile, so a new container version does not matter)."""
    _, _, _, quality = CASES[case]
    golden = cx.unpack((golden_dir(MODEL, 2) / f"{case}.cxa").read_bytes())
    now = cx.unpack(codec.encode(source(case), quality=quality, effort=0))
    assert [(t.z, t.y) for t in now.tiles] == [(t.z, t.y) for t in golden.tiles]


def test_rate_table_is_what_the_coder_pays(codec: Codec) -> None:
    """RDOQ prices symbols from the shipped CDF tables: summed over a real tile, those prices are
    the y stream's real length within 1 %."""
    img = from_pil(_kodak_crop(23))
    gain, _ = codec._gains(50.0)
    with torch.inference_mode():
        y = codec.model.g_a(codec._to_tensor(img.rgb)) * gain
        coded = codec.coder.encode(y, hashlib.sha256())
        # re-derive every symbol and its scale index exactly as the encoder did
        m, rates, med = codec.model, codec.coder.rates(y.device), codec.coder.medians
        z_hat = torch.clamp(torch.floor(m.h_a(y).double() - med + 0.5), -2**15, 2**15) + med
        means_h, scales_h = m.hyper(z_hat, exact=True)
        decoded, bits = [], 0.0
        for i, y_i in enumerate(y.double().chunk(m.preset.slices, dim=1)):
            mu, scale, sup = m.slice_params(i, means_h, scales_h, decoded)
            sym = torch.floor(y_i - mu + 0.5)
            anchors = anchor_mask(sym.shape[2], sym.shape[3], sym.device).expand_as(sym)
            bits += float(rates.cost(sym[anchors], m.scale_indexes(scale)[anchors]).sum())
            mu2, scale2 = m.spatial(i, sym * anchors, mu, scale)
            sym2 = torch.floor(y_i - mu2 + 0.5)
            bits += float(rates.cost(sym2[~anchors], m.scale_indexes(scale2)[~anchors]).sum())
            sym, mu = torch.where(anchors, sym, sym2), torch.where(anchors, mu, mu2)
            decoded.append(sym + mu + m.lrp(i, sup, sym + mu))
    assert abs(bits / 8 - len(coded.y)) / len(coded.y) < 0.01, (bits / 8, len(coded.y))


@pytest.mark.parametrize("kodak", [23, 1])
def test_effort_1_is_smaller_at_the_same_verified_floor(kodak: int, codec: Codec) -> None:
    """On a smooth (kodim23) and a detailed (kodim01) photo: the smallest stream meeting 40 dB,
    measured by decoding the real bytes, is smaller at effort 1 than at effort 0."""
    img = from_pil(_kodak_crop(kodak))
    sizes = {}
    for effort in (0, 1):
        res = codec.encode_detailed(img, target_psnr=40.0, effort=effort)
        decoded = codec.decode(res.data)
        assert psnr(img.rgb, decoded.rgb) >= 40.0
        sizes[effort] = len(res.data)
    assert sizes[1] < sizes[0], sizes


def test_effort_is_validated(codec: Codec) -> None:
    img = _kodak_crop(23, 64)
    with pytest.raises(ValueError, match="effort"):
        codec.encode(img, quality=50, effort=max(EFFORTS) + 1)
    from pydantic import ValidationError

    from archiver.settings import Settings

    with pytest.raises(ValidationError):
        Settings(effort=max(EFFORTS) + 1)
    assert Settings().effort in EFFORTS


def test_per_slice_strengths_price_each_slice_apart(codec: Codec) -> None:
    """``rdo_strength`` as a tuple (a study setting): each slice's channels get their own lambda'
    multiplier, the last value repeating; a single value is the same as a tuple of that value;
    and the encoder follows it (a much larger strength on slice 0 moves its symbols toward plain
    rounding, so the stream changes, and it still decodes to the photo)."""
    from archiver.codec.rdo import distortion_weight

    sc = codec.model.slice_ch
    inv_gain = torch.linspace(0.5, 2.0, codec.model.preset.slices * sc).reshape(1, -1, 1, 1)
    one = distortion_weight(0.01, inv_gain, 1.5)
    assert torch.equal(distortion_weight(0.01, inv_gain, (1.5,), sc), one)
    two = distortion_weight(0.01, inv_gain, (3.0, 1.5), sc)
    assert torch.allclose(two[:, :sc], 2 * one[:, :sc]) and torch.equal(two[:, sc:], one[:, sc:])
    with pytest.raises(ValueError):
        distortion_weight(0.01, inv_gain, (1.5, 0.0), sc)
    img = _kodak_crop(23)
    plain = codec.encode(img, quality=50, effort=1)
    saved = codec.rdo_strength
    try:
        codec.rdo_strength = (50.0, saved)
        tilted = codec.encode(img, quality=50, effort=1)
    finally:
        codec.rdo_strength = saved
    assert tilted != plain
    assert psnr(np.asarray(img), codec.decode(tilted).rgb) > 35.0
