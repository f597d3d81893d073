"""ROI report and pilot projection.

``build_report`` (``core``) turns ``results`` rows into a typed :class:`Report` (``as_dict()``: its
JSON form); ``render`` turns that into a rich table, CSV, JSON or a self-contained HTML page;
``run_pilot`` / ``load_pilot`` (``pilot``) sample a source, recompress the sample in memory and
project the saving onto the whole source.
"""

from __future__ import annotations

from .core import GB, Pricing, Report, ReportError, ReportFilters, build_report, parse_when, prefix_of
from .pilot import load_pilot, run_pilot
from .sampling import ratio_projection, reservoir_sample
from .render import FORMATS, print_pilot, print_report, render

__all__ = [
    "FORMATS",
    "GB",
    "Pricing",
    "Report",
    "ReportError",
    "ReportFilters",
    "build_report",
    "load_pilot",
    "parse_when",
    "prefix_of",
    "print_pilot",
    "print_report",
    "ratio_projection",
    "render",
    "reservoir_sample",
    "run_pilot",
]
