"""Task checks for ``archiver pilot --task-check`` in the tests (the README's example is ``edge_f1``).

A task check is ``f(original_rgb, decoded_rgb) -> float`` on (H, W, 3) uint8 arrays.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray
from skimage.feature import canny


def edge_f1(original_rgb: np.ndarray, decoded_rgb: np.ndarray) -> float:
    """F1 of the decoded image's Canny edges against the original's (1.0 = the same edge map)."""
    a = canny(rgb2gray(original_rgb), sigma=2.0)
    b = canny(rgb2gray(decoded_rgb), sigma=2.0)
    if not a.any() and not b.any():
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def edge_f1_strict(original_rgb: np.ndarray, decoded_rgb: np.ndarray) -> float:
    """Like ``edge_f1``, but refuses an original without edges (a user function that fails)."""
    if not canny(rgb2gray(original_rgb), sigma=2.0).any():
        raise ValueError("the original has no edges")
    return edge_f1(original_rgb, decoded_rgb)
