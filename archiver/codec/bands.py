"""Row bands: one tile's layers on several threads, with the same result as one thread (issue 25).

Why: a photo of several tiles keeps every core busy with whole tiles (``api._TilePool``), but
most photos in an archive and every Kodak image are one tile, and there the second core did
nothing: the exact path's operations (matrix products over 1,024 positions, compiled one-pass
kernels) are too small for torch's intra-op threads, so a 768x512 decode took as long on two
threads as on one. Every layer of the exact heads and of the synthesis is convolutional: its
output at a position depends only on the input within the layers' summed kernel radius (the
*halo*). So a layer stack can run on horizontal bands of rows, each band with ``halo`` extra rows
above and below (zero padding only at the image's own edges), keeping each band's own rows.

Why the result is the same:
* the exact heads compute integers with exact arithmetic (exact.py): every kept position sees
  the same inputs, so it gets the same integers, whatever float32/float64 path each band takes
  (each band checks its own float32 bound);
* the synthesis is float, so its bits depend on each position's sum order: its convolutions
  and matrix products sum each output over the same taps or channels in the same order whatever
  the number of rows around it, which ``tests/test_bands.py`` checks bit for bit on real images
  (decoded pixels and encoder bytes against the unbanded path).

Bands are used only while ``row_bands`` is active on the calling thread (a context variable, so
concurrent requests on other threads are unaffected): ``api._TilePool`` activates it for a
one-tile image when more than one thread is allowed.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor

_EXECUTOR: contextvars.ContextVar[ThreadPoolExecutor | None] = contextvars.ContextVar("row_bands", default=None)
_WORKERS: contextvars.ContextVar[int] = contextvars.ContextVar("row_band_workers", default=1)

#: fewer rows than this per band and the threads' hand-offs cost more than they save
MIN_BAND_ROWS = 8


@contextmanager
def row_bands(executor: ThreadPoolExecutor, workers: int) -> Iterator[None]:
    """Run ``banded`` calls made on this thread on ``executor``, in ``workers`` bands."""
    t1, t2 = _EXECUTOR.set(executor), _WORKERS.set(workers)
    try:
        yield
    finally:
        _EXECUTOR.reset(t1)
        _WORKERS.reset(t2)


def active() -> bool:
    return _EXECUTOR.get() is not None and _WORKERS.get() > 1


def bounds(rows: int, parts: int) -> list[tuple[int, int]]:
    """``rows`` split into ``parts`` contiguous bands of (nearly) equal height."""
    edges = [round(k * rows / parts) for k in range(parts + 1)]
    return [(edges[k], edges[k + 1]) for k in range(parts) if edges[k + 1] > edges[k]]


def banded(fn: Callable[..., Tensor | tuple[Tensor, ...]], inputs: Sequence[Tensor], halo: int,
           scale: int = 1) -> Tensor | tuple[Tensor, ...]:
    """``fn(*inputs)`` computed on row bands in parallel where ``row_bands`` is active.

    ``inputs`` are (N, C, H, W) tensors of one height; ``fn`` must be convolutional along H with
    a total kernel radius of at most ``halo`` rows, and its output(s) ``scale`` times as tall as
    its input (the synthesis: 8). Returns what ``fn`` returns (a tensor or a tuple of them)."""
    executor, workers = _EXECUTOR.get(), _WORKERS.get()
    h = inputs[0].shape[2]
    if not active() or h < workers * MIN_BAND_ROWS:
        return fn(*inputs)
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
    parts = bounds(h, workers)
    result: list[tuple[tuple[Tensor, ...], bool]] = []  # (the whole outputs, fn returns a tuple)
    lock = threading.Lock()

    def band(lo: int, hi: int) -> None:
        a, b = max(0, lo - halo), min(h, hi + halo)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            got = fn(*(x[:, :, a:b] for x in inputs))
            outs = got if isinstance(got, tuple) else (got,)
            with lock:  # the first band to finish allocates the whole output
                if not result:
                    result.append((tuple(o.new_empty((*o.shape[:2], h * scale, *o.shape[3:])) for o in outs),
                                   isinstance(got, tuple)))
            # each band copies its own rows on its own thread: no serial concatenation afterwards
            for dst, o in zip(result[0][0], outs):
                dst[:, :, lo * scale : hi * scale].copy_(o[:, :, (lo - a) * scale : (hi - a) * scale])

    futures = [executor.submit(band, lo, hi) for lo, hi in parts[1:]]
    band(*parts[0])  # the calling thread takes the first band itself
    for f in futures:
        f.result()
    whole, is_tuple = result[0]
    return whole if is_tuple else whole[0]
