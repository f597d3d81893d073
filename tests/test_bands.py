"""Row bands (archiver/codec/bands.py): one tile's layers on several threads give the one-thread
result, bit for bit: exact heads by arithmetic, the float synthesis by the backends' fixed sum
order (checked here on real images), and the encoder's bytes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from archiver.codec import Codec
from archiver.codec import bands
from archiver.codec import exact as ex
from archiver.codec.model import SpatialContext

from shared_paths import KODAK


@pytest.fixture()
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_bounds_cover_every_row_once() -> None:
    for rows in (1, 7, 8, 64, 65, 129):
        for parts in (1, 2, 3, 5):
            b = bands.bounds(rows, parts)
            assert [r for lo, hi in b for r in range(lo, hi)] == list(range(rows))
            assert max(hi - lo for lo, hi in b) - min(hi - lo for lo, hi in b) <= 1


@pytest.mark.parametrize("workers", [2, 3])
def test_exact_heads_on_bands_equal_one_piece(workers: int) -> None:
    """An exact head (two blocks: halo 4) and a spatial context on bands give the integers of one
    piece; with a halo one row short the band edges differ, so the halo is what makes it exact."""
    gen = torch.Generator().manual_seed(workers)
    head = ex.ExactMLPHead(24, 32, 16, blocks=2)
    ctx = SpatialContext(8, 16)
    with torch.no_grad():
        for p in [*head.parameters(), *ctx.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    x = torch.randint(-2000, 2001, (1, 24, 37, 29), generator=gen).double()
    sym = torch.randint(-40, 41, (1, 8, 37, 29), generator=gen).double()
    mu = torch.randint(-900, 901, (1, 8, 37, 29), generator=gen).double() / ex.GRID
    scale = torch.randint(0, 2000, (1, 8, 37, 29), generator=gen).double() / ex.GRID
    assert head.halo == 4
    with torch.inference_mode():
        want = head.forward_units(x)
        want_ctx = ctx(sym, mu, scale)
        with ThreadPoolExecutor(workers) as pool, bands.row_bands(pool, workers):
            assert bands.active()
            got = bands.banded(head.forward_units, [x], head.halo)
            short = bands.banded(head.forward_units, [x], head.halo - 1)
            got_ctx = ctx(sym, mu, scale)
        assert not bands.active()
    assert torch.equal(got, want)
    assert not torch.equal(short, want)
    assert all(torch.equal(g, w) for g, w in zip(got_ctx, want_ctx))


@pytest.mark.parametrize("name, how", [("kodim03", {"quality": 40}),
                                       ("kodim20", {"target_psnr": 40.0, "effort": 1})], ids=["q40", "floor-effort1"])
def test_one_tile_on_two_threads_gives_one_threads_bytes_and_pixels(name: str, how: dict, threads) -> None:
    """A one-tile image coded with two threads (row bands) and with one (no bands): the same
    container bytes (the encoder's exact path, RDOQ, and the synthesis that the quality search's
    probes decode) and the same decoded pixels (the float synthesis on bands)."""
    img = Image.open(KODAK / f"{name}.png").convert("RGB")
    codec = Codec.load("compact-v7", "cpu")
    used = []
    real = bands.banded

    def counting(fn, inputs, halo, scale=1):
        used.append(bands.active())
        return real(fn, inputs, halo, scale)

    out = {}
    for n in (1, 2):
        threads(n)
        with pytest.MonkeyPatch.context() as mp:
            for mod in ("archiver.codec.bands", "archiver.codec.model"):
                mp.setattr(f"{mod}.banded", counting)
            used.clear()
            data = codec.encode(img, **how)
            rgb = codec.decode(data).rgb
        out[n] = (data, rgb, any(used))
        assert torch.get_num_threads() == n  # the pool restored the caller's thread count
    assert out[1][2] is False and out[2][2] is True  # bands ran with two threads only
    assert out[2][0] == out[1][0]
    assert np.array_equal(out[2][1], out[1][1])
