"""Classical codecs (AVIF, JPEG XL, WebP, JPEG) as baselines for the pilot.

``codecs`` holds the four codecs behind one small interface, their presets and library versions;
``search`` finds, per image, the smallest file of one codec that meets a PSNR floor. The pilot
(:mod:`archiver.report.compare`) runs them beside ConvNeXt-ChARM; nothing else in the archive
uses them: recompress archives with ConvNeXt-ChARM only.
"""

from __future__ import annotations

from .codecs import CODEC_NAMES, LABELS, MODES, PRESETS, BaselineCodec, BaselineUnavailable, baseline_codecs, library_versions
from .search import SearchResult, smallest_at_floor

__all__ = ["CODEC_NAMES", "LABELS", "MODES", "PRESETS", "BaselineCodec", "BaselineUnavailable", "SearchResult",
           "baseline_codecs", "library_versions", "smallest_at_floor"]
