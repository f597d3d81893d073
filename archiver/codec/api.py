"""The codec's public face: ``Codec.load``, ``encode`` and ``decode``.

Images are coded in independent tiles (default 1024 px) so that memory stays bounded for any
image size; each tile is padded (edge replication) to the model's hyper-latent stride (64 or 32) and cropped on
decode; tiles are coded on a thread pool (``_TilePool``). ``target_psnr`` searches the continuous
quality knob from a cheap PSNR prediction confirmed by real probes (``predicted_quality``), falling
back to bisection (``smallest_quality``), on the encoder's own reconstruction, which is bit-identical in latents to what the decoder will
produce, so the search needs no entropy decoding; callers that must be sure (the pipeline) still
decode the real bytes afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ArchiverError, ContainerError
from ..images import LoadedImage, delivered, from_pil, to_pil  # noqa: F401 - delivered re-exported
from ..metrics import psnr
from . import container as cx
from .bands import row_bands
from .entropy import TileCoder
from .model import quality_to_lambda
from .rdo import RdoParams, distortion_weight
from .default import EFFORTS
from .registry import DEFAULT_MODEL, load_model

if TYPE_CHECKING:
    from concurrent.futures import Future

    from ..model_store import ModelStore
    from ..settings import Settings

log = logging.getLogger(__name__)

PAD_MULTIPLE = 64
DEFAULT_TILE = 1024
assert DEFAULT_TILE <= cx.MAX_TILE_SIZE
RDO_STRENGTH = 1.5  # lambda' multiplier of RDOQ (rdo.py): 0.7 / 1.0 / 1.5 / 2.5 measured in BENCHMARKS.md
#: default time budget of a version-1/2 decode (see ``Codec.decode``): about 10x what an honest
#: decode takes with one thread of the 2-core dev CPU (~13 s per megapixel), so that no honest old
#: archive is refused on a slower or loaded machine, while copied-tile forgeries stay bounded
LEGACY_SECONDS_PER_MEGAPIXEL = 120.0
LEGACY_BASE_S = 60.0
#: bisection steps on [0, 100]: a grid of 2048 qualities (0.049 apart, under 0.01 dB at 40 dB).
#: 7 steps (0.78 apart) overshot the target by 0.068 dB on average over Kodak at 40 dB; 9 steps by
#: 0.014 dB and stored 0.65 % fewer bytes; 11 steps overshoot by 0.004 dB and store another 0.12 %
#: fewer, for 0.33 more exact probes per image (the predicted search needs about as many guesses
#: on any grid; docs/BENCHMARKS.md, *Search grid*)
SEARCH_STEPS = 11


class TargetNotReached(ArchiverError):
    code = "psnr_unreachable"


@dataclass
class EncodeResult:
    data: bytes
    quality: float
    psnr: float  # of the encoder-side reconstruction (equal latents to the decoder's)
    width: int
    height: int
    seconds: float
    probes: int = 1

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.width * self.height)


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, as delivered (gray images replicated)
    alpha: np.ndarray | None
    meta: cx.ContainerMeta
    icc: bytes | None = None
    exif: bytes | None = None
    seconds: float = 0.0
    _image: Image.Image | None = field(default=None, repr=False)

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = to_pil(self.rgb, self.alpha, self.meta.mode)
            if self.icc:
                self._image.info["icc_profile"] = self.icc
        return self._image


def apply_torch_threads(threads: int) -> None:
    """Size torch's CPU thread pool (``torch_threads`` setting; 0 keeps torch's default).

    Torch starts one thread per core; a worker that shares the machine with other processes
    (several Celery children, an I/O pool, a database) is faster with fewer, because
    oversubscribed intra-op threads spin against each other. Process-wide, so it is applied by
    each front door (CLI, worker process, server) right after loading settings.
    """
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _model_store(model: str, settings: Settings | None) -> ModelStore | None:
    """The model store to ask for ``model``: none for packaged models (they never need one)."""
    from ..model_store import ModelStore
    from .registry import read_registry

    if model in read_registry() or settings is None:  # without settings: packaged models only
        return None
    return ModelStore.from_settings(settings)


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch reports allocator failures as RuntimeError subclasses whose message says so."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "failed to allocate" in msg


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _prepare_device(device: str) -> torch.device:
    """The device a codec runs on, with TF32 off: it would change float results between GPUs
    (the exact path is float64 anyway)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return pick_device(device)


class _Recorded:
    """Stands in for the image-wide latent hasher while a tile is coded on a pool thread: keeps
    what the tile fed it, to be replayed into the real hasher in tile order (the image hash is
    over the tiles in order, whichever finished first)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def update(self, data: bytes) -> None:
        self.chunks.append(data)

    def replay(self, hasher: "hashlib._Hash") -> None:
        for c in self.chunks:
            hasher.update(c)
        self.chunks.clear()


_POOL_LOCK = threading.Lock()
_pool_users = 0
_threads_before = 0


class _TilePool:
    """Tiles are independent: with more than one tile and more than one torch thread, code them
    on a thread pool of ``torch.get_num_threads()`` workers (the ``torch_threads`` setting, else
    one per core) instead of one tile at a time with intra-op threads. Most exact-path operations
    are too small to keep several intra-op threads busy (and on a shared machine their barriers
    spin against each other), so while a pool runs torch's intra-op pool is set to one thread,
    process-wide (reference-counted, restored when the last pool ends). Tiles go in windows of
    ``workers``, so at most that many tiles' intermediates are alive at once. With one tile the
    workers take row bands of its layers instead (bands.py), the tile itself runs on the
    calling thread."""

    def __init__(self, n_tiles: int, device: torch.device) -> None:
        # CPU only: an accelerator runs one tile's kernels in parallel already (and the per-thread
        # accelerator-time accounting must stay on the caller's thread)
        threads = torch.get_num_threads() if device.type == "cpu" else 1
        self.workers = min(n_tiles, threads)
        #: one tile and several threads: the tile runs on the calling thread and its layers on row
        #: bands across the threads instead (bands.py; the same result)
        self.band_workers = threads if n_tiles == 1 and threads > 1 else 1
        self.size = max(self.workers, self.band_workers)  # the executor's threads
        self._bands = None

    def __enter__(self) -> "_TilePool":
        global _pool_users, _threads_before
        if self.size > 1:
            with _POOL_LOCK:
                if _pool_users == 0:
                    _threads_before = torch.get_num_threads()
                    torch.set_num_threads(1)
                _pool_users += 1
            from concurrent.futures import ThreadPoolExecutor

            self._ex = ThreadPoolExecutor(self.size, thread_name_prefix="archiver-tile")
            if self.band_workers > 1:
                self._bands = row_bands(self._ex, self.band_workers)
                self._bands.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        global _pool_users
        if self.size > 1:
            if self._bands is not None:
                self._bands.__exit__(None, None, None)
                self._bands = None
            self._ex.shutdown(wait=True, cancel_futures=True)
            with _POOL_LOCK:
                _pool_users -= 1
                if _pool_users == 0:
                    torch.set_num_threads(_threads_before)

    def map(self, fn: Callable, items: list) -> list:
        """``fn`` over ``items`` (a window), results in order; the first failure in order raises."""
        if self.workers <= 1:
            return [fn(it) for it in items]
        futures = [self._ex.submit(torch.inference_mode()(fn), it) for it in items]
        return [f.result() for f in futures]

    def windows(self, items: list) -> list[list]:
        return [items[i:i + self.workers] for i in range(0, len(items), self.workers)]

    def ordered(self, fn: Callable, items: list) -> Iterator:
        """``fn`` over ``items`` with at most ``workers`` running at once, results yielded in order
        (the first failure in order raises). Unlike ``windows`` + ``map``, a worker that finishes
        takes the next item at once instead of waiting for its window's slowest tile (an image's
        last column and row of tiles are narrow, and content makes equal tiles unequal); results
        finished ahead of their turn wait, so ``fn`` should return little (the decode's tile task
        returns its hash record, not its latents)."""
        if self.workers <= 1:
            for it in items:
                yield fn(it)
            return
        from concurrent.futures import FIRST_COMPLETED, wait

        task = torch.inference_mode()(fn)
        futures: dict[int, "Future"] = {}
        running: set = set()
        nxt = 0

        def fill() -> None:
            nonlocal nxt
            while nxt < len(items) and len(running) < self.workers:
                f = self._ex.submit(task, items[nxt])
                futures[nxt] = f
                running.add(f)
                nxt += 1

        for k in range(len(items)):
            fill()
            while not futures[k].done():
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                running.difference_update(done)
                fill()
            running.discard(futures[k])
            yield futures.pop(k).result()


def tile_grid(height: int, width: int, tile: int) -> list[tuple[int, int, slice, slice]]:
    out = []
    for r in range(math.ceil(height / tile)):
        for c in range(math.ceil(width / tile)):
            out.append((r, c, slice(r * tile, min((r + 1) * tile, height)), slice(c * tile, min((c + 1) * tile, width))))
    return out


def smallest_quality(psnr_at: Callable[[float], float], target: float, steps: int = SEARCH_STEPS,
                     hint: float | None = None, spread: float = 0.0) -> float:
    """The smallest quality on the grid k * 100 / 2**steps (k = 0 .. 2**steps) whose PSNR reaches
    ``target``.

    Every probe is a grid point, so the answer does not depend on where the search started: with
    PSNR rising with quality, an image gets the same quality, hence the same bitstream, whichever
    hint its worker had learnt from the objects before it (a batch re-run, or the same photo in
    two buckets, gives identical bytes).

    Without a hint: probe both ends, then bisect (2 + ``steps`` probes). With a ``hint`` (the
    answer for similar images, see ``QualityHints``): probe the hint, gallop away from it in
    doubling strides (the first as wide as ``spread``, how far recent answers strayed from the
    hint, and at least two grid steps) until the answer is bracketed, then bisect the bracket;
    an answer within a grid step of the hint costs 3-4 probes instead of 11, a few steps away 5-7. When the hint
    misses the target, quality 100 is probed next, so an image that cannot reach the target
    still costs only two.
    Each probe is a full encoder-side reconstruction (entropy model + synthesis), by far the
    largest cost of an archive encode. Interpolating inside the bracket was tried and measured on
    Kodak crops: PSNR(q) is concave (it flattens at high q) and regula falsi needed 6-13 probes.
    """
    n = 2**steps
    res = 100 / n

    def meets(k: int) -> bool:
        return psnr_at(k * res) >= target

    def unreachable() -> TargetNotReached:
        return TargetNotReached(f"even quality 100 stays below {target:.2f} dB PSNR for this image")

    if hint is None or not math.isfinite(hint):
        if not meets(n):
            raise unreachable()
        if meets(0):
            return 0.0
        lo, hi = 0, n
    else:
        h = min(max(round(float(hint) / res), 0), n)
        stride = max(2, math.ceil(float(spread) / res) if math.isfinite(spread) else 0)
        if meets(h):
            if h == 0:
                return 0.0
            hi = h
            while True:
                k = hi - stride
                if k <= 0:
                    if meets(0):
                        return 0.0
                    lo = 0
                    break
                if meets(k):
                    hi, stride = k, stride * 2
                else:
                    lo = k
                    break
        else:
            if h >= n or not meets(n):
                raise unreachable()
            lo, hi = h, n
            while lo + stride < hi:
                k = lo + stride
                if meets(k):
                    hi = k
                    break
                lo, stride = k, stride * 2
    while hi - lo > 1:  # invariant: lo misses the target, hi meets it
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi * res


def predicted_quality(psnr_at: Callable[[float], float], predict_at: Callable[[float], float], target: float,
                      steps: int = SEARCH_STEPS, spread: float = 0.0, max_guesses: int = 3) -> float:
    """``smallest_quality``'s answer, found with about two calls of ``psnr_at`` (issue 25).

    ``predict_at`` is a cheap estimate of ``psnr_at`` (the coefficient-domain error, see
    ``Codec._predicted_psnr``) that is off by a roughly constant amount for one image. Bisect the
    grid on the prediction, measure the real PSNR there, shift the prediction by the miss and
    bisect again, until the shifted prediction points at a grid point already measured; then
    measure its neighbour below (if it met the target) or above (if not). A point that meets the
    target with its lower neighbour missing it is a boundary of the grid: for PSNR rising with
    quality the one bisection returns. When ``max_guesses`` guesses did not settle, fall back to
    ``smallest_quality`` (hinted at the last guess), which reuses every measurement made.
    """
    n = 2**steps
    res = 100 / n
    measured: dict[int, float] = {}
    predicted: dict[int, float] = {}

    def real(k: int) -> float:
        if k not in measured:
            measured[k] = psnr_at(k * res)
        return measured[k]

    def pred(k: int) -> float:
        if k not in predicted:
            predicted[k] = predict_at(k * res)
        return predicted[k]

    def guess(offset: float) -> int:  # the smallest grid point whose shifted prediction meets the target
        if pred(n) + offset < target:
            return n
        if pred(0) + offset >= target:
            return 0
        lo, hi = 0, n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if pred(mid) + offset >= target else (mid, hi)
        return hi

    offset, k = 0.0, None
    for _ in range(max_guesses):
        k_new = guess(offset)
        if k_new == k or k_new in measured:
            k = k_new
            break
        k = k_new
        offset = real(k) - pred(k)
    assert k is not None
    if real(k) >= target:
        if k == 0 or real(k - 1) < target:
            return k * res
    elif k < n and real(k + 1) >= target:
        return (k + 1) * res
    elif k == n:
        raise TargetNotReached(f"even quality 100 stays below {target:.2f} dB PSNR for this image")
    return smallest_quality(lambda q: real(round(q / res)), target, steps, hint=k * res, spread=spread)


class QualityHints:
    """Recent answers of the quality search, per (model, target PSNR), for the next search.

    Photos from one bucket tend to need similar qualities for one target, so the median of the
    last few answers is a good place to start (``smallest_quality(hint=...)``). Thread-safe; one
    per process (the pipeline keeps one), so a Celery worker learns its job's typical quality
    within a few objects. Only a speed-up: the search returns the same grid quality whatever the
    hint (for PSNR rising with quality).
    """

    def __init__(self, keep: int = 15) -> None:
        self.keep = keep
        self._seen: dict[tuple[str, float], list[float]] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str, target: float) -> tuple[float | None, float]:
        """(median of the recent answers or None, their median distance from it)."""
        with self._lock:
            seen = self._seen.get((model_id, round(target, 2)))
            if not seen:
                return None, 0.0
            mid = float(np.median(seen))
            return mid, float(np.median(np.abs(np.asarray(seen) - mid)))

    def add(self, model_id: str, target: float, quality: float) -> None:
        with self._lock:
            seen = self._seen.setdefault((model_id, round(target, 2)), [])
            seen.append(float(quality))
            del seen[:-self.keep]


def rdo_params(model, quality: float, inv_gain: torch.Tensor, effort: int,
               strength: float | tuple[float, ...] = RDO_STRENGTH) -> RdoParams | None:
    """The RDOQ setting of ``effort`` at ``quality`` for ``model`` (None: plain rounding, effort
    0): what ``Codec`` encodes with, and what ``archiver.table_fit`` counts symbols with."""
    if effort <= 0:
        return None
    lam = quality_to_lambda(quality, model.preset)
    return RdoParams(weight=distortion_weight(lam, inv_gain, strength, model.slice_ch))


class Codec:
    #: lambda' multiplier of RDOQ at effort 1 (a tuple: one per slice); a study
    #: (benchmarks/rdo_study.py) sets another
    rdo_strength: float | tuple[float, ...] = RDO_STRENGTH

    def __init__(self, model, entry, device: torch.device, tile_size: int = DEFAULT_TILE) -> None:
        if tile_size % PAD_MULTIPLE or not 64 <= tile_size <= cx.MAX_TILE_SIZE:
            # decoders refuse larger tiles (container.MAX_TILE_SIZE): one tile's decode is the unit of
            # work a forged container could ask for, so it is kept to what encoders write
            raise ValueError(f"tile_size must be a multiple of 64 in [64, {cx.MAX_TILE_SIZE}]")
        self.model = model
        self.entry = entry
        self.model_id = entry.model_id
        self.weights_sha256 = entry.sha256
        self.device = device
        self.tile_size = tile_size
        self.coder = TileCoder(model)
        self._accounting = threading.local()

    @property
    def gpu_seconds(self) -> float:
        """Accelerator time spent by codec calls of the calling thread (for the ROI report's
        compute cost; a caller takes the difference around its own encode/decode). Per thread,
        so that several threads sharing one codec (``workers.codec_slots``) each see their own;
        overlapping calls are each counted in full, so the total is an upper bound."""
        return getattr(self._accounting, "seconds", 0.0)

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, device: str = "auto", tile_size: int = DEFAULT_TILE, *,
             settings: Settings | None = None, expect_sha256: str | None = None) -> Codec:
        """The codec of ``model``: shipped with the package, else published in the model store
        (``settings.model_store``; without ``settings``, packaged models only). ``expect_sha256``
        (a container's weights sha256) must match a stored model's weights. Front doors load
        through their runtime (:meth:`archiver.runtime.Runtime.codec`), which keeps one codec
        per model and device for the whole process."""
        dev = _prepare_device(device)
        m, entry = load_model(model, dev, _model_store(model, settings), expect_sha256)
        return cls(m, entry, dev, tile_size)

    @classmethod
    def from_weights_file(cls, path, device: str = "auto", tile_size: int = DEFAULT_TILE,
                          model_id: str | None = None) -> Codec:
        """A codec on an unregistered weights file (candidate evaluation; see load_weights_file).
        ``model_id``: the id it is to be published under, so that measured containers carry the
        header they will have (the default ``file:NAME`` is longer or shorter by a few bytes)."""
        from .registry import load_weights_file

        dev = _prepare_device(device)
        m, entry = load_weights_file(path, dev, model_id)
        return cls(m, entry, dev, tile_size)

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{self.device.index or 0} ({torch.cuda.get_device_name(self.device)})"
        return "cpu"

    # ------------------------------------------------------------------------------------------
    def _gains(self, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.tensor([float(quality)], dtype=torch.float32, device=self.device)
        return self.model.gains(q)

    def _to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        h, w = x.shape[2:]
        pad = self.model.preset.z_stride
        ph, pw = (-h) % pad, (-w) % pad
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x

    def _synth(self, y_hat: torch.Tensor, inv_gain: torch.Tensor, h: int, w: int) -> np.ndarray:
        x = self.model.g_s(y_hat.float() * inv_gain)[:, :, :h, :w]
        x = torch.floor(x.clamp(0, 1) * 255.0 + 0.5)
        return x[0].permute(1, 2, 0).to(torch.uint8).cpu().numpy()

    def _rdo(self, quality: float, inv_gain: torch.Tensor, effort: int) -> RdoParams | None:
        """The RDOQ setting of ``effort`` at ``quality`` (None: plain rounding, effort 0)."""
        return rdo_params(self.model, quality, inv_gain, effort, self.rdo_strength)

    def _timed(self, fn):
        t = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._accounting.seconds = self.gpu_seconds + time.perf_counter() - t
        return out

    @torch.inference_mode()
    def _encode_at(self, img: LoadedImage, latents: list[torch.Tensor], quality: float, dry: bool,
                   recon: np.ndarray | None = None, effort: int = 0) -> tuple[list[cx.TilePayload], np.ndarray, str]:
        """Code (or with ``dry`` only reconstruct) at ``quality``; a ``recon`` already made at this
        quality by a search probe is reused instead of running the synthesis again."""
        gain, inv_gain = self._gains(quality)
        rdo = self._rdo(quality, inv_gain, effort)
        synth = recon is None
        if recon is None:
            recon = np.empty_like(img.rgb)
        tiles = []
        hasher = hashlib.sha256()
        grid = list(zip(tile_grid(img.height, img.width, self.tile_size), latents))

        def one(item):
            (r, c, rs, cs), y = item
            rec = _Recorded()
            coded = self._timed(lambda: self.coder.encode(y * gain, rec, code=not dry, rdo=rdo))
            if synth:  # tiles write disjoint parts of recon
                recon[rs, cs] = self._timed(lambda: self._synth(coded.y_hat, inv_gain,
                                                                rs.stop - rs.start, cs.stop - cs.start))
            coded.y_hat = None
            return r, c, coded, rec

        with _TilePool(len(grid), self.device) as pool:
            for r, c, coded, rec in pool.ordered(one, grid):
                rec.replay(hasher)
                if not dry:
                    tiles.append(cx.TilePayload(row=r, col=c, z=coded.z, y=[coded.y], digests=coded.digests))
        return tiles, recon, hasher.hexdigest()

    def _predicted_psnr(self, img: LoadedImage, latents: list[torch.Tensor], quality: float) -> float:
        """PSNR predicted from the coefficient-domain error, without the entropy model or g_s.

        The complete design's analysis is near-orthonormal (a DCT stem), so the quantisation
        error of the gained latents, ``(round(y g) - y g) / g``, has about the energy of the
        pixel error. Only the search uses it, to pick where the exact probes go; it is shifted by
        the measured miss at the first exact probe (``predicted_quality``)."""
        gain, inv_gain = self._gains(quality)
        sq, count = 0.0, 0
        for y in latents:
            yg = y.double() * gain.double()
            err = (torch.floor(yg + 0.5) - yg) * inv_gain.double()
            sq += float((err * err).sum())
            count += err.numel()
        mse = sq / max(count, 1) * 255.0**2 + 1 / 12  # plus the output's rounding to 8 bits
        return 10.0 * math.log10(255.0**2 / mse)

    def encode_detailed(self, image: Image.Image | LoadedImage, quality: float | None = None,
                        target_psnr: float | None = None, quality_hint: float | None = None,
                        hint_spread: float = 0.0, search: str = "predicted", effort: int = 0,
                        search_steps: int = SEARCH_STEPS) -> EncodeResult:
        """Encode; with ``target_psnr`` return the smallest quality whose decoded image meets it
        (``quality_hint``, where the search starts, only changes how many probes that takes).
        ``search``: "predicted" (``predicted_quality``: about two exact probes) or "bisect"
        (``smallest_quality`` alone); both return the same grid quality for PSNR rising with
        quality. ``effort`` (``EFFORTS``): 0 rounds every latent, as every release before it did;
        higher efforts spend encoder time on rate-distortion optimisation (rdo.py). Every effort
        writes the same container version, decoded by the same decoder. ``search_steps``: the
        search's grid, 2**steps qualities on [0, 100] (benchmarks compare grids with it)."""
        if search not in ("predicted", "bisect"):
            raise ValueError(f"unknown search {search!r}")
        if effort not in EFFORTS:
            raise ValueError(f"effort must be one of {EFFORTS}, not {effort!r}")
        if (quality is None) == (target_psnr is None):
            raise ValueError("give exactly one of quality or target_psnr")
        t0 = time.perf_counter()
        img = image if isinstance(image, LoadedImage) else from_pil(image)
        with torch.inference_mode():
            latents = [
                self._timed(lambda: self.model.g_a(self._to_tensor(img.rgb[rs, cs])))
                for _, _, rs, cs in tile_grid(img.height, img.width, self.tile_size)
            ]
        target_rgb = delivered(img.rgb, img.mode)
        probes = 0
        # the smallest probe that met the target: the answer so far. The predicted search's probes
        # also entropy-code (a small extra cost), so that its answer's probe is the final encode.
        kept: dict[float, tuple[list[cx.TilePayload], np.ndarray, str]] = {}
        code_probes = search == "predicted"

        def quality_psnr(q: float) -> float:
            nonlocal probes
            probes += 1
            tiles_q, recon, hash_q = self._encode_at(img, latents, q, dry=not code_probes, effort=effort)
            p = psnr(target_rgb, delivered(recon, img.mode))
            if target_psnr is not None and p >= target_psnr and (not kept or q < min(kept)):
                kept.clear()
                kept[q] = (tiles_q, recon, hash_q)
            return p

        if target_psnr is not None and search == "predicted":
            quality = predicted_quality(quality_psnr, lambda q: self._predicted_psnr(img, latents, q), target_psnr,
                                        search_steps, spread=hint_spread)
        elif target_psnr is not None:
            quality = smallest_quality(quality_psnr, target_psnr, search_steps, hint=quality_hint, spread=hint_spread)
        assert quality is not None
        quality = float(min(max(quality, 0.0), 100.0))
        if code_probes and quality in kept:
            tiles, recon, latent_hash = kept[quality]
        else:
            tiles, recon, latent_hash = self._encode_at(img, latents, quality, dry=False,
                                                        recon=kept[quality][1] if quality in kept else None,
                                                        effort=effort)
            probes += 1
        meta = cx.ContainerMeta(
            model_id=self.model_id, weights_sha256=self.weights_sha256, quality=quality,
            width=img.width, height=img.height, mode=img.mode, content_type=img.content_type,
            original_bytes=img.original_bytes, original_sha256=img.original_sha256,
            tile_size=self.tile_size, n_tiles=len(tiles), latent_sha256=latent_hash, extra={},
        )
        alpha = img.alpha.tobytes() if img.alpha is not None else None
        data = cx.pack(cx.Container(meta=meta, tiles=tiles, icc=img.icc, exif=img.exif, alpha=alpha))
        return EncodeResult(data=data, quality=quality, psnr=psnr(target_rgb, delivered(recon, img.mode)),
                            width=img.width, height=img.height, seconds=time.perf_counter() - t0, probes=probes)

    def encode(self, image: Image.Image | LoadedImage, quality: float | None = None,
               target_psnr: float | None = None, effort: int = 0) -> bytes:
        return self.encode_detailed(image, quality=quality, target_psnr=target_psnr, effort=effort).data

    # ------------------------------------------------------------------------------------------
    def decode(self, data: bytes, max_pixels: int = cx.DEFAULT_MAX_PIXELS, *, max_tile_size: int = cx.MAX_TILE_SIZE,
               time_budget_s: float | None = None, deadline: float | None = None,
               legacy_s_per_mp: float | None = LEGACY_SECONDS_PER_MEGAPIXEL) -> DecodedImage:
        """Decode a container of any readable version; every failure is a ``ContainerError``.

        The work a container can ask for is bounded: ``max_pixels`` (the front doors pass the
        ``max_pixels`` setting) and ``max_tile_size`` are checked from META before anything is
        allocated; version-2 tile checks stop a forged tile after the first slice it spoils; the
        whole-image latent checksum is compared before the last tile's synthesis. With
        ``time_budget_s`` (seconds from now) or ``deadline`` (a ``time.monotonic()`` value) the
        decode stops between slices once it is over, with code ``decode_timeout``. Versions 1 and 2
        (tile checks not bound to their container: copied tiles pass them) get, when the caller
        gives neither, a budget of ``LEGACY_BASE_S`` + ``legacy_s_per_mp`` seconds per declared
        megapixel (None or 0: none), and are refused (``unsupported_version``) when they name a
        packaged model that never wrote that version (a downgrade). An allocator
        failure becomes ``out_of_memory``, any other error inside decoding ``decode_failed``, so
        that every front door reports one line and a reason instead of a traceback.
        """
        if time_budget_s is not None:
            until = time.monotonic() + time_budget_s
            deadline = until if deadline is None else min(deadline, until)
        try:
            return self._decode(data, max_pixels, max_tile_size, deadline, legacy_s_per_mp)
        except ArchiverError:
            raise
        except MemoryError as exc:
            raise ContainerError(f"out of memory while decoding: {exc or 'MemoryError'}", code="out_of_memory") from exc
        except Exception as exc:  # torch / CompressAI / numpy errors: one clear, recorded reason
            if _is_out_of_memory(exc):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise ContainerError(f"out of memory while decoding: {_one_line(exc)}", code="out_of_memory") from exc
            log.debug("decode failed", exc_info=True)
            raise ContainerError(f"decoding failed: {type(exc).__name__}: {_one_line(exc)}", code="decode_failed") from exc

    @torch.inference_mode()
    def _decode(self, data: bytes, max_pixels: int, max_tile_size: int, deadline: float | None,
                legacy_s_per_mp: float | None = None) -> DecodedImage:
        t0 = time.perf_counter()

        def tick() -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise ContainerError(f"decode stopped after {time.perf_counter() - t0:.2f} s: over its time budget",
                                     code="decode_timeout")

        c = cx.unpack(data, max_pixels=max_pixels, max_tile_size=max_tile_size)
        meta = c.meta
        if meta.model_id != self.model_id:
            raise ContainerError(
                f"bitstream was made by model {meta.model_id!r}; this codec holds {self.model_id!r}",
                code="model_mismatch",
            )
        if meta.weights_sha256 != self.weights_sha256:
            raise ContainerError(
                f"bitstream was made with other weights for {meta.model_id!r} (sha256 {meta.weights_sha256[:16]}...)",
                code="weights_mismatch",
            )
        if c.version < 3:
            from .registry import read_registry

            cx.check_legacy_writer(c.version, meta.model_id, packaged=meta.model_id in read_registry())
            if deadline is None and legacy_s_per_mp:  # no bound checks: bound the time instead
                deadline = time.monotonic() + LEGACY_BASE_S + legacy_s_per_mp * meta.width * meta.height / 1e6
        _, inv_gain = self._gains(meta.quality)
        rgb = np.empty((meta.height, meta.width, 3), dtype=np.uint8)
        hasher = hashlib.sha256()
        grid = tile_grid(meta.height, meta.width, meta.tile_size)
        for (r, col, _, _), tile in zip(grid, c.tiles):
            if (tile.row, tile.col) != (r, col) or len(tile.y) != 1:
                raise ContainerError(f"tile ({tile.row},{tile.col}) is out of place or malformed", code="bad_section")

        def entropy(k: int) -> tuple[torch.Tensor, _Recorded]:
            (r, col, rs, cs), tile = grid[k], c.tiles[k]
            tick()
            h, w = rs.stop - rs.start, cs.stop - cs.start
            z_shape = (math.ceil(h / self.model.preset.z_stride), math.ceil(w / self.model.preset.z_stride))
            checks, check_of = c.tile_check(k)
            rec = _Recorded()
            y_hat = self._timed(lambda: self.coder.decode(tile.z, tile.y[0], z_shape, self.device, rec,
                                                          checks=checks, tick=tick, where=f"tile ({r},{col})",
                                                          check_of=check_of))
            return y_hat, rec

        def synth(item: tuple[int, torch.Tensor]) -> None:
            k, y_hat = item
            _, _, rs, cs = grid[k]
            rgb[rs, cs] = self._timed(lambda: self._synth(y_hat, inv_gain, rs.stop - rs.start, cs.stop - cs.start))

        def whole(k: int) -> _Recorded:
            y_hat, rec = entropy(k)
            synth((k, y_hat))
            return rec

        def check_image_hash() -> None:
            if hasher.hexdigest() != meta.latent_sha256:
                raise ContainerError(
                    "decoded latents do not match the checksum recorded at encode time: the entropy-coded data "
                    "is corrupt or forged (or was decoded with a different probability model)",
                    code="latent_mismatch",
                )

        order = list(range(len(grid)))
        with _TilePool(len(grid), self.device) as pool:
            if c.version >= 2 and len(grid) > 1:
                # every tile's symbols are checked by its own tile checks before entropy() returns,
                # so a tile is synthesised right after its entropy decoding, on the same worker, and
                # workers never wait for each other; the image-wide hash is compared at the end
                for rec in pool.ordered(whole, order):
                    rec.replay(hasher)
                check_image_hash()
            else:
                # version 1 (no tile checks), or one tile: entropy decoding of a window of tiles in
                # parallel, the latent hash fed in tile order, then the window's syntheses
                for window in pool.windows(order):
                    decoded = pool.map(entropy, window)
                    for y_hat, rec in decoded:
                        rec.replay(hasher)
                    if window[-1] == len(grid) - 1:
                        # before the last synthesis: a one-tile container (most images; every
                        # version-1 forgery of one tile) is refused before its most memory-hungry step
                        check_image_hash()
                    pool.map(synth, [(k, y) for k, (y, _) in zip(window, decoded)])
                    del decoded
        alpha = None
        if c.alpha is not None:
            alpha = np.frombuffer(c.alpha, dtype=np.uint8).reshape(meta.height, meta.width).copy()
        return DecodedImage(rgb=delivered(rgb, meta.mode), alpha=alpha, meta=meta, icc=c.icc, exif=c.exif,
                            seconds=time.perf_counter() - t0)
