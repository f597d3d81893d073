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


def _pointwise_units(cin: int, cout: int, w_units: float, bias: float = 0.0) -> ex.ExactPointwise:
    pw = ex.ExactPointwise(cin, cout)
    with torch.no_grad():
        pw.weight.fill_(w_units / ex.GRID)
        pw.bias.fill_(bias)
    return pw


def _paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records which arithmetic each pointwise/depthwise call takes: 'f32:<ranges>' or 'f64'."""
    taken: list[str] = []
    chunks = ex.float32_chunks

    def spy(w_abs, a_max, max_chunks=ex.MAX_F32_CHUNKS, limit=ex.F32_EXACT):
        got = chunks(w_abs, a_max, max_chunks, limit)
        taken.append("f64" if got is None else f"f32:{len(got)}")
        return got

    monkeypatch.setattr(ex, "float32_chunks", spy)
    return taken


def test_float32_ranges_keep_every_partial_sum_within_two_to_the_24() -> None:
    gen = torch.Generator().manual_seed(5)
    w_abs = torch.randint(0, 2**9, (40, 96), generator=gen).double()
    a_max = torch.randint(0, 2**12, (96,), generator=gen).double()
    for scale in (1.0, 4.0, 8.0):
        got = ex.float32_chunks(w_abs, a_max * scale, max_chunks=96)
        assert got is not None and got[0][0] == 0 and got[-1][1] == 96
        assert all(e0 == s1 for (_, e0), (s1, _) in zip(got, got[1:]))  # contiguous, in order
        for s, e in got:
            assert float((w_abs[:, s:e] * a_max[s:e] * scale).sum(1).max()) <= ex.F32_EXACT
        if scale > 1:  # and as few ranges as the greedy cut can: each range plus one channel is over
            for s, e in got[:-1]:
                assert float((w_abs[:, s:e + 1] * a_max[s:e + 1] * scale).sum(1).max()) > ex.F32_EXACT
    assert ex.float32_chunks(w_abs, a_max / 64) == [(0, 96)]  # small activations: one float32 product
    one = a_max.clone()
    one[7] = 2.0**20
    w_one = w_abs.clone()
    w_one[:, 7] = 2.0**15  # a single product over 2^24: never float32
    assert ex.float32_chunks(w_one, one) is None
    assert ex.float32_chunks(w_abs, a_max * 64, max_chunks=3) is None  # too many ranges: float64


@pytest.mark.parametrize("a_units, want", [(257, "f32:1"), (2047, "f32:2"), (2**20, "f64")],
                         ids=["at-the-bound", "ranges", "float64"])
def test_pointwise_float32_path_equals_the_reference_at_its_bound(a_units: int, want: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """All weights and activations of one sign, so that the partial sums are as large as the
    bound allows; odd values where a float32 sum past 2^24 would round."""
    taken = _paths(monkeypatch)
    # 255 x 256 x 257 = 2^24 - 256 exactly (the float32 finish's bound: F32_FINISH, one range that
    # stays float32 to the end); 64 x 255 x 2047 = 1.99 x 2^24: two ranges
    cin, w_units = (255, 2**8) if a_units == 257 else (64, 255)
    pw = _pointwise_units(cin, 24, w_units, bias=3.25 + 255 / 2**16)  # b_frac = 255: the largest
    x = torch.full((1, cin, 9, 11), a_units / ex.GRID, dtype=torch.float64)
    x[:, :, ::2] *= -1 if a_units == 2**20 else 1
    with torch.no_grad():
        want_y = _reference_pointwise(x, ex.quant_weight(pw.weight).double(), ex.quant_bias(pw.bias).double())
        got = pw(x)
    assert taken == [want]
    assert torch.equal(got, want_y)
    if want == "f32:1":  # the sum reached the bound itself
        assert float(got.max()) == ex.F32_FINISH / ex.GRID / ex.GRID + 3.25 + 1 / ex.GRID  # rounded up


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "conv-then-finish"])
def test_depthwise_float32_path_equals_the_reference_at_its_bound(fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ex, "FUSED_DEPTHWISE", fused)
    dw = ex.ExactDepthwise(8, 5)
    with torch.no_grad():
        dw.weight.fill_(2**9 / ex.GRID)  # 25 taps x 2^9 = 12800 units per channel
        dw.bias.fill_(-1.5)
        a_units = ex.F32_EXACT // (25 * 2**9)  # the largest activation within the bound: 1310 units
        x = torch.full((1, 8, 12, 12), a_units / ex.GRID, dtype=torch.float64)
        x[:, 1::2] -= 1 / ex.GRID  # odd values in half the channels
        want = _reference_depthwise(x, ex.quant_weight(dw.weight).double(), ex.quant_bias(dw.bias).double())
        assert float((25 * 2**9) * ex.channel_max(x * ex.GRID).max()) <= ex.F32_EXACT  # the fast path's case
        assert torch.equal(dw(x), want)
        x[0, 0, 5, 5] = 2.0**19 / ex.GRID  # one activation past the bound: float64 for this call
        want = _reference_depthwise(x, ex.quant_weight(dw.weight).double(), ex.quant_bias(dw.bias).double())
        assert torch.equal(dw(x), want)


@pytest.mark.skipif(not ex._kernels.available(), reason="numba missing: the fused kernel is not built")
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (2, 5, 1, 9), (1, 7, 6, 3), (2, 4, 13, 17)], ids=str)
def test_fused_depthwise_equals_the_reference_within_its_bound(shape, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled 5x5 depthwise + finish (kernels.depthwise5_f32) against shift-and-add and
    against oneDNN's convolution + finish: borders (images smaller than the kernel), batches,
    both signs, activations drawn up to the float32 bound of each channel's weights."""
    gen = torch.Generator().manual_seed(sum(shape))
    n, c, h, w = shape
    dw = ex.ExactDepthwise(c, 5)
    calls = []
    real = ex._kernels.depthwise5_f32
    monkeypatch.setattr(ex._kernels, "depthwise5_f32", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        dw.weight.copy_(torch.randn(dw.weight.shape, generator=gen) * 3)
        dw.bias.copy_(torch.randn(c, generator=gen) * 50)
        wq, bq = ex.quant_weight(dw.weight).double(), ex.quant_bias(dw.bias).double()
        w_abs = (wq * ex.GRID).abs().flatten(1).sum(1)
        limit = int(min(2**20, ex.F32_FINISH // float(w_abs.max())))  # units: the bound holds
        x = _grid(shape, limit, gen)
        x[..., 0, 0] = limit / ex.GRID  # the largest activation itself, in every channel
        want = _reference_depthwise(x, wq, bq)
        got = dw(x)
        monkeypatch.setattr(ex, "FUSED_DEPTHWISE", False)
        unfused = dw(x)
    assert calls, "the fused kernel did not run"
    assert torch.equal(got, want)
    assert torch.equal(unfused, want)
    assert got.abs().max() > 0


def test_float32_path_only_with_ieee_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's "medium"/"high" float32 precision may let oneDNN use bf16 or TF32: float64 then."""
    x = torch.ones((1, 4, 3, 3), dtype=torch.float64)
    assert ex.float32_allowed(x)
    before = torch.get_float32_matmul_precision()
    try:
        for lowered in ("medium", "high"):
            torch.set_float32_matmul_precision(lowered)
            assert not ex.float32_allowed(x)
            taken = _paths(monkeypatch)
            pw = _pointwise_units(4, 2, 5)
            with torch.no_grad():
                assert torch.equal(pw(x), _reference_pointwise(x, ex.quant_weight(pw.weight).double(),
                                                               ex.quant_bias(pw.bias).double()))
            assert taken == []  # not even asked: the float64 path ran
    finally:
        torch.set_float32_matmul_precision(before)
    assert ex.float32_allowed(x)


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


@pytest.mark.parametrize("compiled", [True, False], ids=["numba-kernel", "tensor-ops"])
def test_float32_finish_rounds_like_the_float64_finish(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """floor(y / 256) + b_int in float32 equals floor((y + b_frac) / 256 + ...) done in float64, for
    sums up to the bound, biases with every fraction, both signs, with and without the ReLU; both
    with the compiled one-pass kernel (kernels.py) and with the tensor operations it replaces."""
    from archiver.codec import kernels

    if compiled and not kernels.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(kernels, "available", lambda: compiled)
    gen = torch.Generator().manual_seed(9)
    sums = torch.randint(-(2**24 - 256), 2**24 - 256 + 1, (1, 16, 40, 40), generator=gen).double()
    sums[0, 0, 0, :6] = torch.tensor([0.0, -1.0, 255.0, -256.0, 2**24 - 256.0, -(2**24 - 256.0)])
    b = torch.randint(-(2**28), 2**28, (16,), generator=gen).double() / 2**16  # 16 fractional bits
    b[:3] = torch.tensor([-4096.0, 4096.0, -1 / 2**16])
    b_units = ex.quant_bias(b) * ex.GRID + 0.5
    b_int, b_frac = ex.split_unit_bias(b_units)
    assert bool(((b_frac >= 0) & (b_frac < 256)).all()) and torch.equal(b_frac, b_frac.round())
    for relu in (False, True):
        want = ex.finish_units(sums / ex.GRID + b_units.view(1, -1, 1, 1), relu)
        y32 = (sums + b_frac.double().view(1, -1, 1, 1)).float()  # what the float32 sum holds: exact
        got = ex.float32_finish(y32, b_int, relu)
        assert got.dtype == torch.float32 and torch.equal(got.double(), want)
        got = ex.float32_finish(sums.float(), b_int, relu, b_frac)  # the bias's fraction added here
        assert got.dtype == torch.float32 and torch.equal(got.double(), want)


def test_cached_layer_constants_follow_every_weight_change() -> None:
    """prepared_weights caches a layer's derived constants: an in-place edit, a load_state_dict
    and an optimiser step must each be seen by the next exact call (never stale constants)."""
    torch.manual_seed(4)
    pw, dw = ex.ExactPointwise(6, 5), ex.ExactDepthwise(6, 3)
    x = torch.randint(-300, 300, (1, 6, 7, 9)).double() / ex.GRID

    def check() -> None:
        with torch.no_grad():
            assert torch.equal(pw(x), _reference_pointwise(x, ex.quant_weight(pw.weight).double(),
                                                           ex.quant_bias(pw.bias).double()))
            assert torch.equal(dw(x), _reference_depthwise(x, ex.quant_weight(dw.weight).double(),
                                                           ex.quant_bias(dw.bias).double()))

    check()
    before = pw(x)
    with torch.no_grad():
        pw.weight.mul_(-1.5)
        dw.bias.add_(0.75)
    check()
    assert not torch.equal(pw(x), before)
    pw.load_state_dict({"weight": torch.randn(5, 6), "bias": torch.randn(5)})
    check()
    opt = torch.optim.SGD([*pw.parameters(), *dw.parameters()], lr=0.5)
    pw(x.float()).sum().add(dw(x.float()).sum()).backward()  # the training path: float32, gradients
    opt.step()
    check()


def test_block_by_rows_equals_the_block_in_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """ExactBlock runs its pointwise pair over ``ROWS`` positions at a time on large inputs: the
    same integers as in one piece, including a chunk that takes the float64 path (one position
    with activations too large for the float32 bound)."""
    torch.manual_seed(12)
    block = ex.ExactBlock(8, kernel=5)
    with torch.no_grad():
        block.pw1.weight.normal_(0, 1.0)
        block.pw2.weight.normal_(0, 1.0)
    x = torch.randint(-2000, 2000, (1, 8, 30, 41)).double() / ex.GRID
    x[0, :, 29, 40] = 4000.0  # the last chunk's bound exceeds 2^24: float64 there
    with torch.no_grad():
        monkeypatch.setattr(ex.ExactBlock, "ROWS", 10**9)
        whole = block(x)
        monkeypatch.setattr(ex.ExactBlock, "ROWS", 100)  # 13 chunks, the last one short
        calls = []
        orig = ex.ExactBlock._pointwise_by_rows
        monkeypatch.setattr(ex.ExactBlock, "_pointwise_by_rows",
                            lambda self, a, d: calls.append(1) or orig(self, a, d))
        by_rows = block(x)
    assert calls and torch.equal(whole, by_rows)
    monkeypatch.setattr(ex, "float32_allowed", lambda a: False)  # float64 only: no chunks, no float32
    with torch.no_grad():
        assert torch.equal(whole, block(x))
