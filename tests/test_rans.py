"""rans.py writes and reads CompressAI's rANS streams exactly: the same bytes for the same symbols,
the same symbols for any stream (honest, short, or read into its padding), so containers written
by either coder decode with the other, and every golden stream with both."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from archiver.codec import Codec, rans
from archiver.codec.compressai_imports import BufferedRansEncoder, RansDecoder, RansEncoder
from archiver.codec.entropy import _ALT_FILL, TileCoder, _pad_length, _padded

from make_golden import GOLDEN
from shared_paths import KODAK

pytestmark = pytest.mark.skipif(not rans.available(), reason="numba is not installed")


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(device="cpu")


@pytest.fixture(scope="module")
def tables(codec: Codec) -> tuple[rans.Tables, tuple[list, list, list]]:
    gc = codec.model.gaussian_conditional
    lists = (gc._quantized_cdf.tolist(), gc._cdf_length.reshape(-1).int().tolist(), gc._offset.reshape(-1).int().tolist())
    return rans.Tables(gc._quantized_cdf.numpy(), lists[1], lists[2]), lists


def _symbols(n: int, n_tables: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbols at every scale of every table, with ~5 % far outside the tables (bypass coding,
    up to the +-2^15 the product clamps to) and the extremes themselves."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_tables, n).astype(np.int32)
    spread = rng.choice([0.3, 1.0, 6.0, 60.0, 5000.0], n, p=[0.3, 0.3, 0.25, 0.1, 0.05])
    sym = np.clip(np.round(rng.standard_normal(n) * spread), -(2**15), 2**15).astype(np.int32)
    sym[:4] = [2**15, -(2**15), 0, -1]
    return sym, idx


def test_streams_are_byte_identical_to_compressai(tables) -> None:
    t, (cdf, lengths, offsets) = tables
    sym, idx = _symbols(120_000, t.cdf.shape[0], seed=1)
    assert (sym > 200).sum() > 1000 and (sym < -200).sum() > 1000  # bypass values present
    ref = BufferedRansEncoder()
    ours = rans.Encoder(t)
    for s, e in ((0, 1), (1, 50_000), (50_000, 50_000), (50_000, 120_000)):  # several calls, one empty
        ref.encode_with_indexes(sym[s:e].tolist(), idx[s:e].tolist(), cdf, lengths, offsets)
        ours.encode(sym[s:e], idx[s:e])
    stream = ref.flush()
    assert ours.flush() == stream
    # one-call form (the z stream's)
    assert rans.encode(sym[:999], idx[:999], t) == RansEncoder().encode_with_indexes(
        sym[:999].tolist(), idx[:999].tolist(), cdf, lengths, offsets)
    # and read back call by call, as the tile decoder does
    dec = rans.Decoder(stream, t)
    got = np.concatenate([dec.decode(idx[:70_000]), dec.decode(idx[70_000:70_000]), dec.decode(idx[70_000:])])
    assert np.array_equal(got, sym)


def test_short_and_forged_streams_decode_as_compressai_read_them(tables) -> None:
    """What the tile coder relies on for forgeries: within the padding, a stream that runs short
    gives exactly the symbols CompressAI's decoder read from the padded bytes (zeros, or the
    second fill that the z check uses); past the padding, an error instead of foreign memory."""
    t, (cdf, lengths, offsets) = tables
    sym, idx = _symbols(20_000, t.cdf.shape[0], seed=2)
    stream = rans.encode(sym, idx, t)
    rng = np.random.default_rng(3)
    cases = [stream[: len(stream) // 2], stream[:10], stream[:-3], bytes(rng.integers(0, 256, 4_001, dtype=np.uint8))]
    for data in cases:
        pad = _pad_length(data, len(idx))
        for fill in (0, _ALT_FILL):
            want = RansDecoder().decode_with_indexes(_padded(data, len(idx), fill=fill), idx.tolist(), cdf, lengths,
                                                     offsets)
            assert rans.Decoder(data, t, pad=pad, fill=fill).decode(idx).tolist() == want
    with pytest.raises(rans.StreamOverrun):
        rans.Decoder(stream[:40], t).decode(idx)  # no padding allowed: runs out
    with pytest.raises(rans.StreamOverrun):
        rans.Decoder(b"\x01\x02\x03", t, pad=0)
    with pytest.raises(ValueError, match="index out of range"):
        rans.Decoder(stream, t).decode(np.array([t.cdf.shape[0]], dtype=np.int32))


def test_tile_coder_streams_are_the_same_with_either_coder(codec: Codec) -> None:
    """A real image through the product: the compiled coder (default) and CompressAI's write the
    same container, and each reads the other's."""
    img = Image.open(KODAK / "kodim23.png").convert("RGB").crop((0, 0, 320, 256))
    assert codec.coder.fast
    fast = codec.encode(img, quality=40)
    slow_codec = Codec.load(device="cpu")
    slow_codec.coder = TileCoder(slow_codec.model, fast=False)
    slow = slow_codec.encode(img, quality=40)
    assert fast == slow
    a, b = codec.decode(slow), slow_codec.decode(fast)
    assert np.array_equal(a.rgb, b.rgb)


def test_golden_streams_decode_with_both_coders(codec: Codec) -> None:
    """One golden stream per container version of the default model, decoded to the same pixels
    by both coders (test_golden.py decodes all of them with the default coder)."""
    paths = sorted(GOLDEN.glob(f"container-v*/{codec.entry.model_id}/*.cxa"))
    assert paths
    slow_codec = Codec.load(device="cpu")
    slow_codec.coder = TileCoder(slow_codec.model, fast=False)
    for p in paths[:2]:
        data = p.read_bytes()
        assert np.array_equal(codec.decode(data).rgb, slow_codec.decode(data).rgb)


def test_tables_are_checked() -> None:
    with pytest.raises(ValueError):
        rans.Tables(np.zeros((2, 5), np.int32), [5, 9], [0, 0])  # a row longer than the table
    with pytest.raises(ValueError):
        rans.Tables(np.zeros((2, 5), np.int32), [5, 5], [0])
