"""Quality metrics for the archive's verify step and the RD evaluation.

Both take (H, W, 3) uint8 RGB arrays: the comparison is always between what the user gave and
what the user gets back, at 8 bits per channel.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

PSNR_CAP = 100.0  # dB, reported for identical images (see psnr)
MS_SSIM_MIN_SIDE = 161  # pytorch_msssim's 5 scales with an 11-px window need a side > 160
_CHUNK_ELEMENTS = 1 << 22  # bounded temporary memory, whatever the image size


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) RGB arrays, got {a.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 arrays, got {a.dtype} and {b.dtype}")
    if a.size == 0:
        raise ValueError("empty images")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all pixels and the three channels, peak 255.

    Identical images would give +inf, which neither JSON nor most database columns accept, so the
    result is capped at ``PSNR_CAP`` (100 dB): any real difference between 8-bit images of fewer
    than ~3e5 megapixels scores below it, so the cap only ever means "identical or equivalent".
    The squared error is summed exactly in int64 over row chunks, so memory stays bounded and the
    value does not depend on float summation order.
    """
    _check_pair(a, b)
    h, w, _ = a.shape
    rows = max(1, _CHUNK_ELEMENTS // (w * 3))
    sse = 0
    for r in range(0, h, rows):
        d = a[r:r + rows].astype(np.int32) - b[r:r + rows].astype(np.int32)
        sse += int(np.einsum("ijk,ijk->", d, d, dtype=np.int64))
    if sse == 0:
        return PSNR_CAP
    mse = sse / a.size
    return min(PSNR_CAP, 10.0 * math.log10(255.0 * 255.0 / mse))


def ms_ssim(a: np.ndarray, b: np.ndarray, *, device: str = "cpu") -> float:
    """MS-SSIM (5 scales, Gaussian window 11, data_range 255) via ``pytorch_msssim``.

    MS-SSIM downsamples four times and is undefined when the short side is 160 px or less
    (pytorch_msssim asserts); for such small images this returns single-scale SSIM instead, which
    is the first (finest) factor of MS-SSIM, so that verifying a thumbnail does not crash. On
    images under 11 px the Gaussian smoothing is skipped along that dimension (pytorch_msssim's
    own behaviour; its warning is silenced). ``device`` lets callers put a large image on a GPU.
    """
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim
    from pytorch_msssim import ssim as _ssim

    _check_pair(a, b)
    # pytorch_msssim squeezes away any dimension of size 1; a side of 1 is doubled instead. Below
    # the window size no smoothing happens along that side, so the duplicate row (or column) has
    # exactly the same SSIM map values and the mean is unchanged.
    if a.shape[0] == 1:
        a, b = np.repeat(a, 2, axis=0), np.repeat(b, 2, axis=0)
    if a.shape[1] == 1:
        a, b = np.repeat(a, 2, axis=1), np.repeat(b, 2, axis=1)
    x = torch.from_numpy(np.ascontiguousarray(a)).to(device).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(np.ascontiguousarray(b)).to(device).permute(2, 0, 1)[None].float()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if min(a.shape[0], a.shape[1]) >= MS_SSIM_MIN_SIDE:
            v = _ms_ssim(x, y, data_range=255, size_average=True)
        else:
            v = _ssim(x, y, data_range=255, size_average=True)
    return float(v.item())
