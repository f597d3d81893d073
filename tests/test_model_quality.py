"""The shipped model's real quality, from bitstream bytes, on a Kodak crop (never trained on).

The floors sit a little below what `compact-v1` measured when it was registered (see
docs/BENCHMARKS.md), so a broken weights file, a broken export (CDF tables, fp16 rounding of the
float transforms) or a regression in the codec fails here, while the exact numbers may move by a
few hundredths with library versions.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from archiver.codec import Codec
from archiver.metrics import psnr

from shared_paths import KODAK  # noqa: E402

# (quality, bpp ceiling, PSNR floor in dB) for kodim19 crop (256, 256, 512, 512), measured at registration
EXPECTED = [
    (20.0, 0.25, 20.6),
    (80.0, 0.82, 21.4),
]


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load("compact-v1", "cpu")


@pytest.mark.parametrize("quality,bpp_max,psnr_min", EXPECTED)
def test_shipped_model_quality_on_kodak_crop(codec: Codec, quality: float, bpp_max: float, psnr_min: float) -> None:
    im = Image.open(KODAK / "kodim19.png").convert("RGB").crop((256, 256, 512, 512))
    data = codec.encode(im, quality=quality)
    bpp = len(data) * 8 / (256 * 256)
    got = psnr(np.asarray(im), codec.decode(data).rgb)
    assert bpp <= bpp_max, f"{bpp:.3f} bpp"
    assert got >= psnr_min, f"{got:.2f} dB"
