"""The smallest file a classical codec makes whose decoded PSNR meets a floor.

Assumption: on one image, decoded PSNR rises with the quality setting, and so does the file size
("near-monotone": real encoders have small wiggles, a few hundredths of a dB). Under it the
smallest passing file is at the lowest passing quality, which a bisection over the integer
quality range finds in about log2(101) ~ 7 encodes (JPEG XL: log2(996) ~ 10, its distance is
searched in steps of 0.01), plus one at the top of the range.

Robustness to the wiggles:

* the top of the range is encoded first; if even it misses the floor the image is "not
  reached" for this codec (exactly as our codec's ``psnr_unreachable``);
* the answer is never a guess: it is the smallest file among *all* settings actually encoded
  and decoded that met the floor (so a non-monotone size can only help), and its PSNR is the
  one measured by decoding those very bytes with the library's decoder;
* PSNR is :func:`archiver.metrics.psnr`, the function the pipeline's verify step uses (RGB,
  8 bits, peak 255, over all pixels).

Time counts every encode, decode and PSNR of the search: what the buyer's own search would cost.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..metrics import psnr
from .codecs import BaselineCodec


@dataclass
class SearchResult:
    """The outcome for one image and one codec. ``decoded`` (the chosen file's pixels) is kept
    only for a task check and is never serialised."""

    codec: str
    reached: bool
    quality: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    psnr: float | None = None
    best_psnr: float | None = None  # the highest PSNR seen (the top setting's), also when not reached
    seconds: float = 0.0
    encodes: int = 0
    error: str | None = None
    decoded: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"reached": self.reached, "quality": self.quality, "bytes": self.bytes, "sha256": self.sha256,
                "psnr": self.psnr, "best_psnr": self.best_psnr, "seconds": self.seconds, "encodes": self.encodes,
                "error": self.error}


def smallest_at_floor(codec: BaselineCodec, rgb: np.ndarray, floor: float) -> SearchResult:
    """Search ``codec``'s quality for the smallest file decoding at PSNR >= ``floor`` dB.

    Never raises for a codec error (a library may refuse an odd size): the result is then
    ``reached=False`` with ``error`` set, and the pilot goes on.
    """
    res = SearchResult(codec=codec.name, reached=False)
    passing: dict[int, tuple[bytes, float, np.ndarray]] = {}
    tried: dict[int, bool] = {}
    t0 = time.perf_counter()

    def ok(q: int) -> bool:
        if q not in tried:
            data = codec.encode(rgb, q)
            dec = codec.decode(data)
            p = psnr(rgb, dec)
            res.encodes += 1
            res.best_psnr = p if res.best_psnr is None else max(res.best_psnr, p)
            tried[q] = p >= floor
            if tried[q]:
                passing[q] = (data, p, dec)
        return tried[q]

    try:
        lo, hi = codec.qualities
        if ok(hi):
            # invariant: hi passes; lo is below every passing setting found, or untried
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if ok(mid):
                    hi = mid
                else:
                    lo = mid
            ok(lo)  # the bottom of the range, if the bisection never tried it
    except Exception as e:  # noqa: BLE001 - a library error on one image must not stop the pilot
        res.error = f"{type(e).__name__}: {e}"
    if passing:
        q = min(passing, key=lambda k: (len(passing[k][0]), k))
        data, p, dec = passing[q]
        res.reached, res.quality, res.bytes, res.psnr, res.decoded = True, q, len(data), p, dec
        res.sha256 = hashlib.sha256(data).hexdigest()
    res.seconds = time.perf_counter() - t0
    return res


__all__ = ["SearchResult", "smallest_at_floor"]
