"""The classical codecs a buyer could use instead of ours: AVIF, JPEG XL, WebP and JPEG.

Each codec is a pair of plain functions, ``encode(rgb, quality) -> bytes`` and
``decode(bytes) -> rgb`` over (H, W, 3) uint8 arrays, behind one :class:`BaselineCodec` record,
so that the quality search (:mod:`archiver.baselines.search`) and the pilot treat them alike.

Bindings (well-kept, no hand-written codec code):

* AVIF, WebP and JPEG through Pillow (AVIF: Pillow's own plugin over libavif, encoder libaom);
* JPEG XL through ``imagecodecs`` (libjxl).

Settings are chosen so that each codec is at its best *for PSNR*, the quality the archive
verifies: no chroma subsampling (4:4:4) for AVIF and JPEG (WebP's lossy mode is 4:2:0 only, a
property of the format), and libaom tuned for PSNR (``tune=psnr``). Two presets bound the time:

* ``fast``: AVIF speed 9, JPEG XL effort 3, WebP method 2, JPEG without Huffman optimisation;
* ``all``: the settings we recommend for archival use: AVIF speed 6, JPEG XL effort 7
  (libjxl's default), WebP method 6, JPEG with optimised Huffman tables.

Both presets run all four codecs, so every report has the same four rows; ``fast`` is about 5x
quicker on CPU and its files 3-12% larger (benchmarks/pilot_baselines.py, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

CODEC_NAMES = ("avif", "jpegxl", "webp", "jpeg")  # the order of every report
PRESETS = ("fast", "all")
MODES = ("none", *PRESETS)

LABELS = {"avif": "AVIF", "jpegxl": "JPEG XL", "webp": "WebP", "jpeg": "JPEG"}


class BaselineUnavailable(RuntimeError):
    """A codec's library is missing (e.g. a Pillow built without AVIF)."""


@dataclass(frozen=True)
class BaselineCodec:
    """One classical codec at one preset. ``qualities`` is the searched range (inclusive), on the
    library's own 0-100 scale where a higher value means a larger, better file."""

    name: str
    label: str
    settings: dict[str, Any]
    encode: Callable[[np.ndarray, int], bytes]
    decode: Callable[[bytes], np.ndarray]
    qualities: tuple[int, int] = (0, 100)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "settings": dict(self.settings), "qualities": list(self.qualities),
                "notes": self.notes}


# ---- Pillow codecs -------------------------------------------------------------------------------

def _pil_encode(rgb: np.ndarray, quality: int, *, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, fmt, quality=int(quality), **kw)
    return buf.getvalue()


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _avif(preset: str) -> BaselineCodec:
    from PIL import features

    if not features.check("avif"):
        raise BaselineUnavailable("this Pillow has no AVIF support")
    speed = 9 if preset == "fast" else 6
    settings = {"library": "Pillow/libavif", "encoder": "aom", "subsampling": "4:4:4", "speed": speed,
                "tune": "psnr", "range": "full"}
    enc = partial(_pil_encode, fmt="AVIF", subsampling="4:4:4", speed=speed, codec="aom", range="full",
                  advanced={"tune": "psnr"})
    return BaselineCodec("avif", LABELS["avif"], settings, enc, _pil_decode,
                         notes="quality 100 is not lossless (RGB -> YUV 4:4:4 rounding)")


def _webp(preset: str) -> BaselineCodec:
    from PIL import features

    if not features.check("webp"):
        raise BaselineUnavailable("this Pillow has no WebP support")
    method = 2 if preset == "fast" else 6
    settings = {"library": "Pillow/libwebp", "lossy": True, "subsampling": "4:2:0 (the only one lossy WebP has)",
                "method": method}
    enc = partial(_pil_encode, fmt="WEBP", method=method)
    return BaselineCodec("webp", LABELS["webp"], settings, enc, _pil_decode,
                         notes="lossy only; lossless WebP is not searched")


def _jpeg(preset: str) -> BaselineCodec:
    optimize = preset != "fast"
    settings = {"library": "Pillow/libjpeg", "subsampling": "4:4:4", "optimize": optimize, "progressive": False}
    enc = partial(_pil_encode, fmt="JPEG", subsampling=0, optimize=optimize)
    return BaselineCodec("jpeg", LABELS["jpeg"], settings, enc, _pil_decode, qualities=(1, 100))


# ---- JPEG XL (imagecodecs) -------------------------------------------------------------------------

JXL_STEPS = 100  # search steps per unit of butteraugli distance


def jxl_distance(quality: int) -> float:
    """The searched JPEG XL setting ``quality`` (0..995) as libjxl's butteraugli distance,
    ``(1000 - quality) / 100`` (10 .. 0.05). libjxl's own 0-100 quality moves the distance in
    steps of 0.09, about 0.35 dB at 40 dB: too coarse to find the smallest file at a floor, so the
    distance is searched directly in steps of 0.01."""
    return (1000 - int(quality)) / JXL_STEPS


def _jxl_encode(rgb: np.ndarray, quality: int, *, effort: int) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(np.ascontiguousarray(rgb), distance=jxl_distance(quality), effort=effort))


def _jxl_decode(data: bytes) -> np.ndarray:
    import imagecodecs

    a = np.asarray(imagecodecs.jpegxl_decode(data))
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3]).astype(np.uint8, copy=False)


def _jpegxl(preset: str) -> BaselineCodec:
    try:
        import imagecodecs
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise BaselineUnavailable(f"imagecodecs is not installed: {e}") from None
    if not imagecodecs.JPEGXL.available:  # pragma: no cover
        raise BaselineUnavailable("this imagecodecs has no JPEG XL support")
    effort = 3 if preset == "fast" else 7
    settings = {"library": "imagecodecs/libjxl", "effort": effort, "mode": "VarDCT (lossy)",
                "searched": "butteraugli distance = (1000 - quality) / 100, 0.05 to 10"}
    return BaselineCodec("jpegxl", LABELS["jpegxl"], settings, partial(_jxl_encode, effort=effort), _jxl_decode,
                         qualities=(0, 995), notes="quality q means distance (1000 - q) / 100")


_MAKERS = {"avif": _avif, "jpegxl": _jpegxl, "webp": _webp, "jpeg": _jpeg}


def baseline_codecs(preset: str) -> list[BaselineCodec]:
    """The four codecs at ``preset`` (``fast`` or ``all``); ``none`` gives an empty list."""
    if preset == "none":
        return []
    if preset not in PRESETS:
        raise ValueError(f"unknown baselines preset {preset!r}; use one of {', '.join(MODES)}")
    return [_MAKERS[name](preset) for name in CODEC_NAMES]


def library_versions() -> dict[str, str | None]:
    """The versions of every library a baseline number depends on, for the report."""
    import PIL
    from PIL import features

    out: dict[str, str | None] = {"pillow": PIL.__version__, "libavif": features.version("avif"),
                                  "libwebp": features.version("webp"), "libjpeg": features.version("jpg")}
    try:
        from PIL import _avif

        out["avif_codecs"] = _avif.codec_versions()  # e.g. "dav1d [dec]:1.5.3, aom [enc]:3.14.1"
    except Exception:  # noqa: BLE001 - a Pillow without AVIF
        out["avif_codecs"] = None
    try:
        import imagecodecs

        out["imagecodecs"] = imagecodecs.__version__
        out["libjxl"] = imagecodecs.jpegxl_version()
    except Exception:  # noqa: BLE001
        out["imagecodecs"] = out["libjxl"] = None
    return out


__all__ = ["CODEC_NAMES", "LABELS", "MODES", "PRESETS", "BaselineCodec", "BaselineUnavailable", "baseline_codecs",
           "library_versions"]
