"""Where the read-only shared material (Kodak, anchors) is, wherever the checkout lives.

``$SHARED_DATA_DIR`` if set; else ``../shared`` beside the checkout (the usual layout); else
``/work/shared`` (a clone made elsewhere on the same machine, as CI may do).
"""

from __future__ import annotations

import os
from pathlib import Path


def _find() -> Path:
    candidates = [Path(os.environ["SHARED_DATA_DIR"])] if os.environ.get("SHARED_DATA_DIR") else []
    candidates += [Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")]
    for c in candidates:
        if (c / "data" / "kodak").is_dir():
            return c
    return candidates[0]


SHARED = _find()
KODAK = SHARED / "data" / "kodak"
