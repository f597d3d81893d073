"""Entropy coding of one tile's latents in CompressAI's rANS stream format.

The coder is rans.py's (compiled, without the GIL, the same bytes) where numba is installed, else
CompressAI's own binding; ``TileCoder(model, fast=False)`` forces the latter.

The probability model that the coder sees is computed entirely by exact layers in float64 (see
exact.py) from shipped CDF tables, so encoder and decoder agree bit for bit on any device. A
SHA-256 of every decoded symbol is stored in the container and checked after decoding, so any
desynchronisation (a forged stream, or a bug) is reported instead of returning garbage pixels.

Container version 2 also stores, per tile, the first bytes of the running SHA-256 of the tile's
symbols at each checkpoint (after z, after each y slice): the decoder compares them as it goes,
so a forged tile fails after the first slice it spoils, before the rest of the tile's entropy
decoding and before the synthesis, instead of after the whole image (issue 16). Version 3 (issue
27) stores those checks bound to the container's header and the tile's index (see container.py):
the coder hands out and compares the full checkpoint digests, the container derives the checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from .compressai_imports import BufferedRansEncoder, RansDecoder, RansEncoder
from torch import Tensor

from ..errors import ContainerError
from . import rans
from .container import CHECK_BYTES
from .exact import round_half_up
from .model import SYMBOL_LIMIT, ConvNeXtCharm
from .rdo import RateTable, RdoParams, choose


@dataclass
class CodedTile:
    z: bytes
    y: bytes
    z_shape: tuple[int, int]
    y_hat: Tensor | None = None  # the decoded latents (gained), exactly what the decoder will rebuild
    # the full symbol digest at each checkpoint (after z, after each y slice): the container
    # derives its version's tile checks from them (v2: their first bytes; v3: bound to the header)
    digests: list[bytes] = field(default_factory=list)


class _TileHasher:
    """Feeds the image-wide latent hasher and the tile's own running hash; ``check()`` is the
    tile check at the current checkpoint."""

    def __init__(self, image: "hashlib._Hash") -> None:
        self.image = image
        self.tile = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.image.update(data)
        self.tile.update(data)

    def check(self) -> bytes:
        return self.digest()[:CHECK_BYTES]

    def digest(self) -> bytes:
        return self.tile.digest()


def _int_array(t: Tensor) -> np.ndarray:
    """An integer-valued tensor as the flat int32 array rans.py takes."""
    return t.detach().to("cpu", torch.int32).numpy().reshape(-1)


def _int_list(t: Tensor) -> list[int]:
    """An integer-valued tensor as the list of Python ints CompressAI's coder takes. Through
    numpy: ``Tensor.tolist`` is about 10x slower, and a decode converts every symbol's index."""
    return _int_array(t).tolist()


def _symbols_tensor(vals: list[int] | np.ndarray, device: torch.device) -> Tensor:
    """The rANS decoder's symbols as a clamped float64 tensor on ``device``. Through numpy:
    ``torch.tensor`` on a list of Python ints is 4x slower (a tenth of a decode)."""
    sym = torch.from_numpy(np.asarray(vals, dtype=np.float64)).to(device=device)
    return torch.clamp(sym, -SYMBOL_LIMIT, SYMBOL_LIMIT)


def _symbols_bytes(t: Tensor) -> bytes:
    return t.to(torch.int32).cpu().numpy().astype("<i4").tobytes()


class TileCoder:
    """Holds the CDF tables once: as numpy arrays for rans.py, as Python lists for CompressAI's
    coder (which wants lists, and is the fallback and the rate tables' source)."""

    def __init__(self, model: ConvNeXtCharm, fast: bool | None = None) -> None:
        self.model = model
        self.fast = rans.available() if fast is None else fast
        if self.fast and not rans.available():
            raise RuntimeError("the compiled rANS coder needs numba")
        eb, gc = model.entropy_bottleneck, model.gaussian_conditional
        if eb._quantized_cdf.numel() == 0 or gc._quantized_cdf.numel() == 0:
            raise RuntimeError("model has no CDF tables: call update_tables() before coding")
        self.eb_cdf = eb._quantized_cdf.tolist()
        self.eb_len = eb._cdf_length.reshape(-1).int().tolist()
        self.eb_off = eb._offset.reshape(-1).int().tolist()
        self.gc_cdf = gc._quantized_cdf.tolist()
        self.gc_len = gc._cdf_length.reshape(-1).int().tolist()
        self.gc_off = gc._offset.reshape(-1).int().tolist()
        self.eb_tables = rans.Tables(eb._quantized_cdf.numpy(), self.eb_len, self.eb_off)
        self.gc_tables = rans.Tables(gc._quantized_cdf.numpy(), self.gc_len, self.gc_off)
        self.medians = eb._get_medians().detach().reshape(1, -1, 1, 1).double()
        self._rates: RateTable | None = None
        self._passes_cache: dict[tuple, list[tuple[Tensor, Tensor]]] = {}

    def rates(self, device: torch.device) -> RateTable:
        """Bits per symbol from the coder's own tables (for RDOQ; built on first use)."""
        if self._rates is None:
            self._rates = RateTable(self.gc_cdf, self.gc_len, self.gc_off)
        return self._rates.to(device)

    # the coder: rans.py's or CompressAI's (same streams) -------------------------------------
    def _y_encoder(self) -> "rans.Encoder | BufferedRansEncoder":
        return rans.Encoder(self.gc_tables) if self.fast else BufferedRansEncoder()

    def _code(self, enc: "rans.Encoder | BufferedRansEncoder", sym: Tensor, idx: Tensor) -> None:
        if self.fast:
            enc.encode(_int_array(sym), _int_array(idx))
        else:
            enc.encode_with_indexes(_int_list(sym), _int_list(idx), self.gc_cdf, self.gc_len, self.gc_off)

    def _encode_z(self, zs: Tensor) -> bytes:
        idx = self._z_indexes(tuple(zs.shape))
        if self.fast:
            return rans.encode(_int_array(zs), idx, self.eb_tables)
        return RansEncoder().encode_with_indexes(_int_list(zs), idx.tolist(), self.eb_cdf, self.eb_len,
                                                 self.eb_off)

    def _decode_z(self, z_bytes: bytes, n_z: int, idx: np.ndarray, fill: int, where: str) -> np.ndarray | list[int]:
        if self.fast:
            try:
                return rans.Decoder(z_bytes, self.eb_tables, pad=_pad_length(z_bytes, n_z), fill=fill).decode(idx)
            except rans.StreamOverrun as exc:
                raise ContainerError(f"{where}: the z stream ends before its symbols do ({exc})",
                                     code="bad_section") from exc
        return RansDecoder().decode_with_indexes(_padded(z_bytes, n_z, fill=fill), idx.tolist(), self.eb_cdf,
                                                 self.eb_len, self.eb_off)

    def _y_decoder(self, y_bytes: bytes, n_symbols: int) -> "rans.Decoder | RansDecoder":
        if self.fast:
            return rans.Decoder(y_bytes, self.gc_tables, pad=_pad_length(y_bytes, n_symbols))
        dec = RansDecoder()
        dec.set_stream(_padded(y_bytes, n_symbols))
        return dec

    def _decode(self, dec: "rans.Decoder | RansDecoder", idx: Tensor, device: torch.device) -> Tensor:
        if self.fast:
            try:
                vals = dec.decode(_int_array(idx))
            except rans.StreamOverrun as exc:
                # unreachable within _pad_length's bound for any stream the length check admits
                raise ContainerError(f"the y stream ends before its symbols do ({exc})", code="bad_section") from exc
        else:
            vals = dec.decode_stream(_int_list(idx), self.gc_cdf, self.gc_len, self.gc_off)
        return _symbols_tensor(vals, device)

    def _passes(self, i: int, shape: torch.Size, device: torch.device) -> list[tuple[Tensor, Tensor]]:
        """Slice ``i``'s coding passes (``model.passes``) for a (1, C, h, w) tensor: each pass's
        (1, 1, h, w) mask and its flat positions, in the order a boolean mask selects them.
        Cached per shape (every tile of a size shares them), so a pass costs an
        index_select/index_copy_, not a mask scan (a benign race between threads at most builds
        an entry twice)."""
        _, c, h, w = shape
        p = self.model.preset
        key = (c, h, w, p.split_depth if i < p.split_anchors else 0, str(device))
        got = self._passes_cache.get(key)
        if got is None:
            if len(self._passes_cache) > 64:  # odd sizes (edge tiles): never more than a few
                self._passes_cache.clear()
            got = [(m, m.expand(1, c, h, w).reshape(-1).nonzero().squeeze(1))
                   for m in self.model.passes(i, h, w, device)]
            self._passes_cache[key] = got
        return got

    # z ---------------------------------------------------------------------------------------
    def _z_indexes(self, shape: tuple[int, int, int, int]) -> np.ndarray:
        _, c, h, w = shape
        return np.repeat(np.arange(c, dtype=np.int32), h * w)

    @torch.no_grad()
    def encode(self, y_g: Tensor, hasher: "hashlib._Hash", code: bool = True,
               rdo: RdoParams | None = None,
               observe: Callable[[int, Tensor, Tensor], None] | None = None) -> CodedTile:
        """Code one tile's gained latent ``y_g`` (1, M, h, w). ``code=False`` only computes the
        decoded latents (``y_hat``), for the quality search. ``rdo``: choose each symbol by rate
        and distortion (rdo.py) instead of rounding it; the decoder is the same either way.
        ``observe(slice, symbols, indexes)`` sees every y symbol with its scale index, flat and
        in coding order, whether or not ``code`` (``archiver.table_fit`` counts them).
        Keeps no state between calls, so several threads may code with one model
        (``workers.codec_slots``)."""
        m = self.model
        th = _TileHasher(hasher)
        digests: list[bytes] = []
        z = m.h_a(y_g)
        med = self.medians.to(z.device)
        zs = torch.clamp(round_half_up(z.double() - med), -SYMBOL_LIMIT, SYMBOL_LIMIT)
        if code:
            th.update(_symbols_bytes(zs))
            digests.append(th.digest())
        z_bytes = b""
        if code:
            z_bytes = self._encode_z(zs)
        z_hat = zs + med
        means_h, scales_h = m.hyper(z_hat, exact=True)
        enc = self._y_encoder()
        decoded: list[Tensor] = []
        checkerboard = m.preset.context == "checkerboard"
        rates = self.rates(y_g.device) if rdo is not None else None
        sc = m.slice_ch
        for i, y_i in enumerate(y_g.double().chunk(m.preset.slices, dim=1)):
            mu, scale, mean_sup = m.slice_params(i, means_h, scales_h, decoded)
            idx = m.scale_indexes(scale, on_grid=True)
            if rdo is None:
                sym = torch.clamp(round_half_up(y_i - mu), -SYMBOL_LIMIT, SYMBOL_LIMIT)
            else:
                assert rates is not None
                weight = rdo.weight[:, i * sc:(i + 1) * sc]
                sym = choose(y_i - mu, idx, weight, rates, SYMBOL_LIMIT)
            if not checkerboard:
                if observe is not None:
                    observe(i, sym.reshape(-1), idx.reshape(-1))
                if code:
                    self._code(enc, sym.reshape(-1), idx.reshape(-1))
            else:
                # pass by pass (anchors first, with the channel context; then the positions
                # refined from the passes before them): model.coding_passes
                passes = self._passes(i, sym.shape, sym.device)
                done = torch.zeros_like(sym)
                mu_f = mu
                for k, (mask, pos) in enumerate(passes):
                    if k:
                        mu_k, scale_k = m.pass_params(i, k, len(passes), done, mu, scale, mu_f)
                        idx_k = m.scale_indexes(scale_k, on_grid=True)
                        if rdo is None:
                            sym_k = torch.clamp(round_half_up(y_i - mu_k), -SYMBOL_LIMIT, SYMBOL_LIMIT)
                        else:
                            sym_k = choose(y_i - mu_k, idx_k, weight, rates, SYMBOL_LIMIT)
                        mu_f = torch.where(mask, mu_k, mu_f)
                    else:
                        sym_k, idx_k = sym, idx
                    if observe is not None:
                        observe(i, sym_k.reshape(-1)[pos], idx_k.reshape(-1)[pos])
                    if code:
                        self._code(enc, sym_k.reshape(-1)[pos], idx_k.reshape(-1)[pos])
                    done = torch.where(mask, sym_k, done)
                sym, mu = done, mu_f
            if code:
                th.update(_symbols_bytes(sym))
                digests.append(th.digest())
            y_hat_i = sym + mu
            decoded.append(y_hat_i + m.lrp(i, mean_sup, y_hat_i))
        return CodedTile(z=z_bytes, y=enc.flush() if code else b"", z_shape=(int(z.shape[2]), int(z.shape[3])),
                         y_hat=torch.cat(decoded, dim=1), digests=digests)

    def n_checks(self) -> int:
        """Checkpoints per tile (container v2): after z, then after each y slice."""
        return 1 + self.model.preset.slices

    @torch.no_grad()
    def decode(self, z_bytes: bytes, y_bytes: bytes, z_shape: tuple[int, int], device: torch.device,
               hasher: "hashlib._Hash", checks: list[bytes] | None = None,
               tick: Callable[[], None] | None = None, where: str = "tile",
               check_of: Callable[[int, bytes], bytes] | None = None) -> Tensor:
        """Decode one tile to its gained latent y_hat (1, M, 4*hz, 4*wz), float64.

        ``checks`` (container v2, v3): the tile checks, compared at each checkpoint, so that a forged
        stream costs at most one slice's work; ``check_of(k, digest)`` turns the checkpoint's full
        symbol digest into the stored check (default: its first bytes, version 2; version 3 binds
        it to the container and the tile's index, ``Container.tile_check``); ``tick`` is called between slices (the caller's
        time budget raises from it)."""
        m = self.model
        if checks is not None and len(checks) != self.n_checks():
            raise ContainerError(f"{where} has {len(checks)} tile checks; this model codes {self.n_checks()} "
                                 "checkpoints per tile", code="bad_section")
        th = _TileHasher(hasher)

        def checkpoint(k: int, what: str) -> None:
            got = None if checks is None else check_of(k, th.digest()) if check_of else th.check()
            if checks is not None and got != checks[k]:
                raise ContainerError(f"{where}: decoded symbols do not match the tile check after {what}: the "
                                     "entropy-coded data is corrupt or forged (from container version 3 on, also a "
                                     "tile copied or moved, or an edited header)", code="latent_mismatch")
            if tick is not None:
                tick()

        hz, wz = z_shape
        c = m.preset.z_channels
        n_z = c * hz * wz
        # a forged stream is read into padding (_pad_length derives how much), never into memory
        # beyond the buffer: allocated for CompressAI's unchecked decoder, virtual and bounds
        # checked in rans.py's
        z_idx = self._z_indexes((1, c, hz, wz))
        zs = self._decode_z(z_bytes, n_z, z_idx, 0, where)
        # An honest stream is read exactly to its end; one too short for its symbols (the issue-16
        # forgery: 8 bytes for a whole tile) makes the decoder read the padding. Decoding z again
        # over other padding tells the two apart for 1/25 of the tile's symbols and before any
        # layer runs, in every container version.
        if not np.array_equal(zs, self._decode_z(z_bytes, n_z, z_idx, _ALT_FILL, where)):
            raise ContainerError(f"{where}: the z stream of {len(z_bytes):,} bytes ends before its {n_z:,} symbols "
                                 "do (truncated or forged)", code="bad_section")
        zs_t = _symbols_tensor(zs, device).reshape(1, c, hz, wz)
        th.update(_symbols_bytes(zs_t))
        checkpoint(0, "z")
        z_hat = zs_t + self.medians.to(device)
        means_h, scales_h = m.hyper(z_hat, exact=True)
        h, w = 4 * hz, 4 * wz
        dec = self._y_decoder(y_bytes, m.preset.latent * h * w)
        decoded: list[Tensor] = []
        checkerboard = m.preset.context == "checkerboard"
        for i in range(m.preset.slices):
            mu, scale, mean_sup = m.slice_params(i, means_h, scales_h, decoded)
            if not checkerboard:
                sym = self._decode(dec, m.scale_indexes(scale, on_grid=True).reshape(-1), device).reshape(mu.shape)
            else:
                passes = self._passes(i, mu.shape, device)
                sym = torch.zeros_like(mu)
                flat = sym.view(-1)
                mu_f = mu
                for k, (mask, pos) in enumerate(passes):
                    if k:
                        mu_k, scale_k = m.pass_params(i, k, len(passes), sym, mu, scale, mu_f)
                        # only this pass's positions need an index
                        flat.index_copy_(0, pos, self._decode(dec, m.scale_indexes(scale_k.reshape(-1)[pos], on_grid=True), device))
                        mu_f = torch.where(mask, mu_k, mu_f)
                    else:
                        flat.index_copy_(0, pos, self._decode(dec, m.scale_indexes(scale.reshape(-1)[pos], on_grid=True), device))
                mu = mu_f
            th.update(_symbols_bytes(sym))
            checkpoint(i + 1, f"y slice {i}")
            y_hat_i = sym + mu
            decoded.append(y_hat_i + m.lrp(i, mean_sup, y_hat_i))
        return torch.cat(decoded, dim=1)


#: the longest stream the encoder can write, in bytes per symbol: <= 16 bits for a symbol in the
#: table plus, for one clamped to +-SYMBOL_LIMIT, about 24 bits of bypass groups (~5 bytes)
MAX_STREAM_BYTES_PER_SYMBOL = 8


#: the second padding of the z stream (see TileCoder.decode): 4-bit groups of 1, never the 0xF that
#: extends a bypass run, so the bound below holds for it as for zeros
_ALT_FILL = 0x11


def _padded(data: bytes, n_symbols: int, fill: int = 0) -> bytes:
    """The stream followed by ``_pad_length`` bytes of ``fill`` (for CompressAI's decoder)."""
    n = _pad_length(data, n_symbols)
    return data + (bytes(n) if fill == 0 else bytes([fill]) * n)


def _pad_length(data: bytes, n_symbols: int) -> int:
    """How many zero bytes must follow the stream so that CompressAI's decoder never reads past
    them (rans.py's decoder takes the same padding as given, without allocating it, and checks
    its reads).

    Its rANS decoder (64-bit state, 32-bit refills, no bounds checks) refills at most once per
    call, and a refill happens only after 16 or more bits of state were consumed; so, reading
    zeros past the data:
    * a symbol in the table consumes <= 16 bits: 2 bytes per symbol (4 are given);
    * bypass groups are 4 bits; a run of 0xF groups adds 15 raw groups each, so bits taken from
      the data can make the decoder read at most ~15x their length past it (16 x given);
    * what is left is a bypass symbol decoded past the data from state bits alone (<= 16 groups
      of 0xF in a 64-bit state, so <= 240 raw groups, <= 128 bytes); the 2 spare bytes per symbol
      and 64 KiB cover such symbols at a rate over 1.5 %, where the tables give bypass under
      0.1 % and zeros drive the state towards the first (most likely) symbols.
    A stream longer than the encoder can produce is refused first, which also bounds the padding
    of a forged one. Whatever is read, the latent checksum rejects the result.
    """
    if len(data) < 8:
        raise ContainerError("entropy-coded stream is shorter than the coder state", code="bad_section")
    if len(data) > MAX_STREAM_BYTES_PER_SYMBOL * n_symbols + 64:
        raise ContainerError(f"entropy-coded stream of {len(data):,} bytes for {n_symbols:,} symbols is longer than "
                             "the encoder can produce", code="bad_section")
    return 4 * n_symbols + 16 * len(data) + 65536
