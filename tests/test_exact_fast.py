"""The fast exact path (issue 25) computes exactly what the reference layers computed.

The fast path evaluates the exact layers on grid units with the backend's float64 depthwise
convolution (CPU) and fused rounding (exact.py). Exactness is an argument about arithmetic, so it
is checked here against the reference layers (shift-and-add depthwise, value-domain matmul,
five-step ``to_grid``) on random grids, on worst-case magnitudes (activations at +-4096 with
weights at +-128, all of one sign, so that every partial sum is as large as the format allows),
and, end to end, on encoder bitstreams written by the issue's start commit (d651104).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from archiver.codec import Codec
from archiver.codec import container as cx
from archiver.codec import exact as ex
from archiver.codec.api import SEARCH_STEPS, TargetNotReached, predicted_quality, smallest_quality

from shared_paths import KODAK

STREAMS = Path(__file__).parent / "data" / "encoder-streams"


def _grid(shape, limit_units: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-limit_units, limit_units + 1, shape, generator=gen).double() / ex.GRID


def _reference_depthwise(x, w, b):
    return ex.to_grid(ex.shift_and_add(x, w, b))


def _reference_pointwise(x, w, b):
    y = torch.matmul(x.permute(0, 2, 3, 1), w.t()) + b
    return ex.to_grid(y.permute(0, 3, 1, 2))


def _layers(cin: int, cout: int, gen: torch.Generator, worst: bool):
    dw, pw = ex.ExactDepthwise(cin, 5), ex.ExactPointwise(cin, cout)
    with torch.no_grad():
        if worst:  # every weight at the bound, every bias at the bound: the largest partial sums
            dw.weight.fill_(ex.W_LIMIT), pw.weight.fill_(ex.W_LIMIT)
            dw.bias.fill_(ex.ACT_LIMIT), pw.bias.fill_(ex.ACT_LIMIT)
        else:  # off-grid float32 parameters, as trained weights are: quantised inside the layers
            for p in (dw.weight, pw.weight):
                p.copy_(torch.randn(p.shape, generator=gen) * 40)
            for p in (dw.bias, pw.bias):
                p.copy_(torch.randn(p.shape, generator=gen) * 300)
    return dw, pw


@pytest.mark.parametrize("worst", [False, True], ids=["random", "worst-case"])
@pytest.mark.parametrize("seed", range(3))
def test_fast_layers_equal_the_reference(seed: int, worst: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    cin, cout = 24 + 16 * seed, 40
    dw, pw = _layers(cin, cout, gen, worst)
    if worst:
        x = torch.full((1, cin, 19, 23), ex.ACT_LIMIT, dtype=torch.float64)
        x[:, :, ::3] = -ex.ACT_LIMIT  # and the other sign, so clamping at both ends is exercised
    else:
        x = _grid((1, cin, 19 + seed, 23), 2**20, gen)
        x[0, 0, 0, :5] = torch.tensor([ex.ACT_LIMIT, -ex.ACT_LIMIT, 1 / 256, -1 / 256, 0.5])
    with torch.no_grad():
        wq, bq = ex.quant_weight(dw.weight).double(), ex.quant_bias(dw.bias).double()
        want_dw = _reference_depthwise(x, wq, bq)
        got_dw = dw(x)
        assert torch.equal(got_dw, want_dw)
        # the backend convolution on its own, before rounding, equals shift-and-add term for term
        conv = F.conv2d(x * ex.GRID, wq, bq * ex.GRID, padding=2, groups=cin)
        assert torch.equal(conv, ex.shift_and_add(x * ex.GRID, wq, bq * ex.GRID))
        pwq, pbq = ex.quant_weight(pw.weight).double(), ex.quant_bias(pw.bias).double()
        assert torch.equal(pw(x), _reference_pointwise(x, pwq, pbq))
        assert torch.equal(pw.forward_units(x * ex.GRID, relu=True) / ex.GRID,
                           torch.relu(_reference_pointwise(x, pwq, pbq)))
        if worst:  # the bounds were reached: the test exercised the largest sums, not small ones
            assert want_dw.abs().max() == ex.ACT_LIMIT


def test_fast_blocks_equal_the_reference_path() -> None:
    """Whole heads and blocks, fast path against the value-domain path of the start commit."""
    gen = torch.Generator().manual_seed(7)
    head = ex.ExactMLPHead(48, 64, 24, blocks=2)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        x = _grid((1, 48, 17, 21), 2**14, gen)
        got = head(x)

        def ref_pw(m, v):
            return _reference_pointwise(v, ex.quant_weight(m.weight).double(), ex.quant_bias(m.bias).double())

        def ref_block(b, v):
            d = _reference_depthwise(v, ex.quant_weight(b.dw.weight).double(), ex.quant_bias(b.dw.bias).double())
            return ex.to_grid(v + ref_pw(b.pw2, torch.relu(ref_pw(b.pw1, d))))

        v = torch.relu(ref_pw(head.inp, x))
        for b in head.blocks:
            v = ref_block(b, v)
        assert torch.equal(got, ref_pw(head.out, v))
        assert got.abs().max() > 0


@pytest.mark.parametrize("path", sorted(STREAMS.glob("*.cxa")), ids=lambda p: p.stem)
def test_encoder_writes_the_start_commits_bitstream(path: Path) -> None:
    """The encoder's bitstream for an (image, quality) is what d651104 wrote: the same META and
    the same entropy-coded z and y streams in every tile (the container around them moved to
    version 3 since, issue 27, which changes only the version byte and how tile checks are made)."""
    name = path.stem
    n = int(name.split("-", 1)[0].removeprefix("k"))
    boxes = {"k01-256x192-q50": (200, 150, 456, 342), "k13-200x160-q85": (300, 200, 500, 360),
             "k21-192x160-q30-tiles128": (100, 100, 292, 260)}
    quality = float(name.split("-q")[1].split("-")[0])
    tile = 128 if name.endswith("tiles128") else 1024
    codec = Codec.load("compact-v6", "cpu", tile_size=tile)
    im = Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB").crop(boxes[name])
    data = codec.encode(im, quality=quality, effort=0)
    now, then = cx.unpack(data), cx.unpack(path.read_bytes())
    assert (then.version, now.version) == (2, cx.VERSION)
    assert now.meta == then.meta
    assert [(t.row, t.col, t.z, t.y) for t in now.tiles] == [(t.row, t.col, t.z, t.y) for t in then.tiles]
    assert codec.decode(data).image.size == im.size


def test_tiles_on_a_pool_give_the_serial_result() -> None:
    """Several tiles coded on the tile pool (2 torch threads) give the bytes and pixels of the
    serial path (1 thread), and the intra-op thread count is restored afterwards."""
    im = Image.open(KODAK / "kodim21.png").convert("RGB").crop((100, 100, 420, 292))  # 3 x 2 tiles of 128
    codec = Codec.load("compact-v6", "cpu", tile_size=128)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = codec.encode(im, quality=40.0)
        serial_px = np.asarray(codec.decode(serial).image)
        torch.set_num_threads(2)
        pooled = codec.encode(im, quality=40.0)
        assert torch.get_num_threads() == 2
        pooled_px = np.asarray(codec.decode(pooled).image)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert pooled == serial
    assert np.array_equal(pooled_px, serial_px)


def _concave(q: float) -> float:
    return 20.0 + 15.0 * (1.0 - math.exp(-q / 25.0))


@pytest.mark.parametrize("answer", [0.0, 0.4, 7.7, 42.0, 63.1, 99.6, 100.0])
def test_predicted_search_returns_bisections_answer(answer: float) -> None:
    target = _concave(answer)
    want = smallest_quality(_concave, target)
    predictors = {
        "offset": lambda q: _concave(q) - 1.3,  # off by a constant: two real probes
        "tilted": lambda q: _concave(q) * 0.97 + 0.2,  # off by a varying amount
        "useless": lambda q: 30.0,  # says nothing: the fallback search must still be right
    }
    for name, predict in predictors.items():
        calls: list[float] = []
        got = predicted_quality(lambda q: calls.append(q) or _concave(q), predict, target)
        assert got == want, (name, answer, got, want)
        assert len(calls) == len(set(calls)), calls  # no real probe twice
        if name == "offset" and 0 < answer:
            assert len(calls) <= 3, (answer, calls)
        assert len(calls) <= 4 + 2 * (2 + SEARCH_STEPS)


def test_predicted_search_gives_up_when_out_of_reach() -> None:
    calls: list[float] = []
    with pytest.raises(TargetNotReached):
        predicted_quality(lambda q: calls.append(q) or _concave(q), lambda q: _concave(q) - 1.0, 40.0)
    assert len(calls) <= 2
