"""rANS coding in CompressAI's exact stream format, compiled by numba, without the GIL.

Why this exists. Every container's y and z streams are CompressAI 1.2.8's rANS format (Fabian
Giesen's 64-bit rANS, 32-bit words, 16-bit probabilities, values outside a table coded in 4-bit
bypass groups). CompressAI's coder is C++, but its Python binding
* holds the GIL for the whole call, so while one tile thread decodes symbols the other tile
  threads cannot even dispatch their next tensor operation (a 4-tile decode gained 1.33x from a
  second core, not 2x; issue 25), and
* converts its arguments on every call: the whole 200,512-entry CDF table of the Gaussian
  conditional, as nested Python lists, 16 times per tile.
Here the tables are numpy arrays built once, the loops are compiled with ``nogil=True``, and the
symbols go in and out as numpy arrays. The format does not change: the same symbols give the same
bytes, and any stream decodes to the same symbols (tests/test_rans.py checks both against
CompressAI's coder, on random data with bypass values and on every golden stream).

Without numba (a platform it does not support yet), ``available()`` is false and the coder falls
back to CompressAI's binding; the streams are the same either way, only slower.

What a decoder reads past the end of its buffer is undefined in CompressAI's coder (the tile
coder pads every stream so that it never happens, entropy._padded); here every read is bounds
checked and running out is an error (``StreamOverrun``), never a read of foreign memory.
"""

from __future__ import annotations

import numpy as np

try:  # optional at import: the product works without it, through CompressAI's coder
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

PRECISION = 16  # bits of probability (CompressAI's ``precision``)
BYPASS_BITS = 4  # bits per bypass group
MAX_BYPASS = (1 << BYPASS_BITS) - 1
RANS_L = 1 << 31  # lower bound of the normalised state (RANS64_L)


class StreamOverrun(ValueError):
    """The decoder needed more words than the stream (with its padding) holds."""


def available() -> bool:
    return numba is not None


class Tables:
    """A coder's CDF tables as contiguous int32 arrays: ``cdf`` (n, max_len), ``sizes`` (n,),
    ``offsets`` (n,); row ``i`` is used for a symbol whose index is ``i``."""

    def __init__(self, cdf, sizes, offsets) -> None:
        self.cdf = np.ascontiguousarray(np.asarray(cdf, dtype=np.int32))
        self.sizes = np.ascontiguousarray(np.asarray(sizes, dtype=np.int32).reshape(-1))
        self.offsets = np.ascontiguousarray(np.asarray(offsets, dtype=np.int32).reshape(-1))
        n = self.cdf.shape[0]
        if self.cdf.ndim != 2 or self.sizes.shape != (n,) or self.offsets.shape != (n,):
            raise ValueError("CDF tables: cdf must be (n, L), sizes and offsets (n,)")
        if self.sizes.min() < 3 or self.sizes.max() > self.cdf.shape[1]:
            raise ValueError("CDF tables: every row needs 3 to L entries (two symbols and the bypass escape)")

    def check_indexes(self, idx: np.ndarray) -> None:
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.cdf.shape[0]):
            raise ValueError(f"symbol index out of range [0, {self.cdf.shape[0]})")


if numba is not None:
    _jit = numba.njit(nogil=True, cache=True)
    _inline = numba.njit(nogil=True, cache=True, inline="always")

    @_jit
    def _decode_into(words, limit, fill, state, idx, cdf, sizes, offsets, out):  # pragma: no cover - compiled
        """Decode ``len(idx)`` symbols into ``out``; ``state`` = [x, next word]. Words past
        ``words`` read as ``fill`` up to ``limit`` words in all. Returns 0, or -1 when the stream
        runs out. The renormalisation is written out at its three places on purpose: as a shared
        helper (even inlined) it made decoding 15-25 % slower."""
        x = np.uint64(state[0])
        ptr = np.int64(state[1])
        n_words = words.shape[0]
        fill_word = np.uint64(fill)
        mask = np.uint64((1 << PRECISION) - 1)
        low = np.uint64(RANS_L)
        for i in range(idx.shape[0]):
            row = idx[i]
            size = sizes[row]
            max_value = size - 2
            cum = np.int64(x & mask)
            # first entry above cum (rows are non-decreasing, so the binary search finds what
            # CompressAI's linear scan does)
            lo = 0
            hi = size - 1  # cdf[row, size - 1] == 1 << PRECISION > cum
            while lo < hi:
                mid = (lo + hi) >> 1
                if cdf[row, mid] > cum:
                    hi = mid
                else:
                    lo = mid + 1
            s = lo - 1
            start = np.uint64(cdf[row, s])
            freq = np.uint64(cdf[row, s + 1] - cdf[row, s])
            x = freq * (x >> np.uint64(PRECISION)) + (x & mask) - start
            if x < low:
                if ptr >= limit:
                    return -1
                x = (x << np.uint64(32)) | (np.uint64(words[ptr]) if ptr < n_words else fill_word)
                ptr += 1
            value = np.int64(s)
            if value == max_value:
                # bypass: a count in 4-bit groups (runs of 15 extend it), then the raw groups
                groups = np.int64(0)
                val = np.int64(MAX_BYPASS)
                first = True
                while first or val == MAX_BYPASS:
                    first = False
                    val = np.int64(x & np.uint64(MAX_BYPASS))
                    x = x >> np.uint64(BYPASS_BITS)
                    if x < low:
                        if ptr >= limit:
                            return -1
                        x = (x << np.uint64(32)) | (np.uint64(words[ptr]) if ptr < n_words else fill_word)
                        ptr += 1
                    groups += val
                raw = np.int64(0)
                for j in range(groups):
                    val = np.int64(x & np.uint64(MAX_BYPASS))
                    x = x >> np.uint64(BYPASS_BITS)
                    if x < low:
                        if ptr >= limit:
                            return -1
                        x = (x << np.uint64(32)) | (np.uint64(words[ptr]) if ptr < n_words else fill_word)
                        ptr += 1
                    # an honest value fits 8 groups; past them (a forged stream) the shift wraps
                    # at 32 bits, as the C++ coder's int32 shift does on x86
                    raw |= val << ((j * BYPASS_BITS) & 31)
                raw &= 0xFFFFFFFF
                if raw >= 0x80000000:  # CompressAI's raw value is an int32
                    raw -= 0x100000000
                value = raw >> 1
                if raw & 1:
                    value = -value - 1
                else:
                    value += max_value
            out[i] = np.int32(value + offsets[row])
        state[0] = x
        state[1] = ptr
        return 0

    @_inline
    def _escape(value, max_value):  # pragma: no cover - compiled
        """A value outside the table [0, max_value) is coded as the escape ``max_value`` followed
        by a raw value in 4-bit bypass groups: (raw, groups), groups -1 for a value in the table
        (0 for the escape with raw 0)."""
        if value < 0:
            raw = -2 * value - 1
        elif value >= max_value:
            raw = 2 * (value - max_value)
        else:
            return np.int64(0), -1
        raw &= 0xFFFFFFFF
        groups = 0
        while groups < 8 and (raw >> (groups * BYPASS_BITS)) != 0:
            groups += 1
        return raw, groups

    @_jit
    def _count_entries(sym, idx, sizes, offsets):  # pragma: no cover - compiled
        """How many coder entries ``sym`` needs (one per symbol, plus its bypass groups)."""
        n = 0
        for i in range(sym.shape[0]):
            row = idx[i]
            _, groups = _escape(np.int64(sym[i]) - offsets[row], sizes[row] - 2)
            n += 1
            if groups >= 0:  # the group count (runs of 15), then the groups
                n += groups // MAX_BYPASS + 1 + groups
        return n

    @_jit
    def _entries(sym, idx, cdf, sizes, offsets, starts, freqs):  # pragma: no cover - compiled
        """Fill (start, freq) per coder entry; a bypass group is stored as freq 0 (start = group)."""
        k = 0
        for i in range(sym.shape[0]):
            row = idx[i]
            max_value = sizes[row] - 2
            value = np.int64(sym[i]) - offsets[row]
            raw, groups = _escape(value, max_value)
            if groups >= 0:
                value = max_value
            starts[k] = cdf[row, value]
            freqs[k] = cdf[row, value + 1] - cdf[row, value]
            k += 1
            if groups >= 0:
                val = groups
                while val >= MAX_BYPASS:
                    starts[k] = MAX_BYPASS
                    freqs[k] = 0
                    k += 1
                    val -= MAX_BYPASS
                starts[k] = val
                freqs[k] = 0
                k += 1
                for j in range(groups):
                    starts[k] = (raw >> (j * BYPASS_BITS)) & MAX_BYPASS
                    freqs[k] = 0
                    k += 1
        return k

    @_jit
    def _flush(starts, freqs, out):  # pragma: no cover - compiled
        """Encode the entries last to first into the tail of ``out`` (uint32); returns the index of
        the first word written. A bypass group renormalises like a symbol of frequency 2^12 (one
        of 16 equal slots of the 16-bit range), then shifts its 4 bits in."""
        x = np.uint64(RANS_L)
        ptr = out.shape[0]
        for k in range(starts.shape[0] - 1, -1, -1):
            f = freqs[k]
            freq = np.uint64(f if f != 0 else 1 << (PRECISION - BYPASS_BITS))
            if x >= np.uint64((RANS_L >> PRECISION) << 32) * freq:
                ptr -= 1
                out[ptr] = np.uint32(x & np.uint64(0xFFFFFFFF))
                x = x >> np.uint64(32)
            if f != 0:
                x = ((x // freq) << np.uint64(PRECISION)) + (x % freq) + np.uint64(starts[k])
            else:
                x = (x << np.uint64(BYPASS_BITS)) | np.uint64(starts[k])
        ptr -= 2
        out[ptr] = np.uint32(x & np.uint64(0xFFFFFFFF))
        out[ptr + 1] = np.uint32(x >> np.uint64(32))
        return ptr


def _as_i32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).reshape(-1), dtype=np.int32)


class Decoder:
    """Decodes one stream, call after call (the state carries over, as CompressAI's
    ``set_stream``/``decode_stream``).

    ``pad`` bytes of ``fill`` are taken to follow the data (without being allocated): CompressAI's
    decoder was always handed such padding (entropy._padded), so a stream that runs short decodes
    here to exactly what it decoded there; past the padding, ``decode`` raises ``StreamOverrun``."""

    def __init__(self, data: bytes, tables: Tables, pad: int = 0, fill: int = 0) -> None:
        if not 0 <= fill <= 255 or pad < 0:
            raise ValueError("fill is a byte value and pad a byte count")
        tail = -len(data) % 4  # the last partial word is completed from the padding
        if tail > pad:
            raise StreamOverrun("the entropy-coded stream is not a whole number of 32-bit words")
        self.words = np.frombuffer(bytes(data) + bytes([fill]) * tail, dtype="<u4")
        self.limit = (len(data) + pad) // 4
        self.fill = int.from_bytes(bytes([fill]) * 4, "little")
        if self.limit < 2:
            raise StreamOverrun("a rANS stream needs at least 8 bytes of state")
        self.tables = tables
        w = np.frombuffer(bytes(data[:8]) + bytes([fill]) * max(0, 8 - len(data)), dtype="<u4")
        self.state = np.array([int(w[0]) | (int(w[1]) << 32), 2], dtype=np.uint64)

    def decode(self, indexes) -> np.ndarray:
        """The symbols (int32 array) for these table indexes."""
        idx = _as_i32(indexes)
        self.tables.check_indexes(idx)
        out = np.empty(idx.shape[0], dtype=np.int32)
        t = self.tables
        if _decode_into(self.words, self.limit, self.fill, self.state, idx, t.cdf, t.sizes, t.offsets, out) != 0:
            raise StreamOverrun("the entropy-coded stream ended before its symbols did")
        return out


class Encoder:
    """Collects symbols call after call and writes them as one stream on ``flush`` (the same
    bytes as CompressAI's ``BufferedRansEncoder``)."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self._starts: list[np.ndarray] = []
        self._freqs: list[np.ndarray] = []

    def encode(self, symbols, indexes) -> None:
        sym, idx = _as_i32(symbols), _as_i32(indexes)
        if sym.shape != idx.shape:
            raise ValueError("one index per symbol")
        self.tables.check_indexes(idx)
        t = self.tables
        n = _count_entries(sym, idx, t.sizes, t.offsets)
        starts = np.empty(n, dtype=np.int32)
        freqs = np.empty(n, dtype=np.int32)
        _entries(sym, idx, t.cdf, t.sizes, t.offsets, starts, freqs)
        self._starts.append(starts)
        self._freqs.append(freqs)

    def flush(self) -> bytes:
        starts = np.concatenate(self._starts) if self._starts else np.empty(0, np.int32)
        freqs = np.concatenate(self._freqs) if self._freqs else np.empty(0, np.int32)
        self._starts, self._freqs = [], []
        out = np.empty(starts.shape[0] + 2, dtype="<u4")
        first = _flush(starts, freqs, out)
        return out[first:].tobytes()


def encode(symbols, indexes, tables: Tables) -> bytes:
    """One call's symbols as a stream (CompressAI's ``RansEncoder.encode_with_indexes``)."""
    enc = Encoder(tables)
    enc.encode(symbols, indexes)
    return enc.flush()
