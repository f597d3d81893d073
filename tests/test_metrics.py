"""PSNR and MS-SSIM on 8-bit RGB arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pytorch_msssim import ms_ssim as ref_ms_ssim
from pytorch_msssim import ssim as ref_ssim

from archiver.metrics import MS_SSIM_MIN_SIDE, PSNR_CAP, ms_ssim, psnr


def noisy(shape: tuple[int, int, int], amplitude: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(amplitude, 256 - amplitude, shape, dtype=np.int32)
    sign = rng.choice([-1, 1], size=shape)
    return a.astype(np.uint8), (a + sign * amplitude).astype(np.uint8)


def test_psnr_known_noise() -> None:
    a, b = noisy((50, 70, 3), 3)  # every sample off by exactly 3: MSE = 9
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 9), abs=1e-12)
    assert psnr(b, a) == psnr(a, b)


def test_psnr_single_sample_difference() -> None:
    a = np.zeros((10, 10, 3), np.uint8)
    b = a.copy()
    b[3, 4, 1] = 255  # MSE = 255^2 / 300
    assert psnr(a, b) == pytest.approx(10 * math.log10(300), abs=1e-12)


def test_psnr_identical_is_capped() -> None:
    a, _ = noisy((8, 8, 3), 1)
    assert psnr(a, a.copy()) == PSNR_CAP == 100.0
    assert math.isfinite(psnr(a, a))


def test_psnr_chunked_matches_direct() -> None:
    a, b = noisy((1500, 1200, 3), 7, seed=3)  # 5.4 M samples: more than one chunk
    b[::17, ::13] = 0
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)


def test_psnr_rejects_bad_input() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError):
        psnr(a, np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError):
        psnr(a, a.astype(np.float32))
    with pytest.raises(ValueError):
        psnr(a[:, :, 0], a[:, :, 0])


def test_ms_ssim_identical_is_one() -> None:
    a, _ = noisy((170, 180, 3), 1)
    assert ms_ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_matches_reference_and_orders_noise() -> None:
    import torch
    a, b = noisy((170, 170, 3), 10)
    _, c = noisy((170, 170, 3), 40)
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(b).permute(2, 0, 1)[None].float()
    ref = float(ref_ms_ssim(x, y, data_range=255))
    assert ms_ssim(a, b) == pytest.approx(ref, abs=1e-6)
    assert ms_ssim(a, b) > ms_ssim(a, c)


@pytest.mark.parametrize("side", [1, 7, 64, MS_SSIM_MIN_SIDE - 1])
def test_small_images_fall_back_to_ssim(side: int) -> None:
    import torch
    a, b = noisy((side, side + 3, 3), 5)
    v = ms_ssim(a, b)
    assert math.isfinite(v) and -1.0 <= v <= 1.0
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(b).permute(2, 0, 1)[None].float()
    import warnings
    if side > 1:  # the reference cannot take a side of 1 (it squeezes it away)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert v == pytest.approx(float(ref_ssim(x, y, data_range=255)), abs=1e-6)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_one_pixel_side_equals_duplicated() -> None:
    a, b = noisy((1, 30, 3), 9)
    assert ms_ssim(a, b) == pytest.approx(ms_ssim(np.repeat(a, 3, axis=0), np.repeat(b, 3, axis=0)), abs=1e-6)
    assert ms_ssim(a[:, :1], b[:, :1]) <= 1.0


def test_ms_ssim_at_threshold_uses_five_scales() -> None:
    a, b = noisy((MS_SSIM_MIN_SIDE, 300, 3), 20)
    v = ms_ssim(a, b)
    assert 0.0 < v < 1.0
