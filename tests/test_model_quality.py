"""The shipped models' real quality, from bitstream bytes, on a Kodak crop (never trained on).

The floors sit a little below what each model measured when it was registered (see
docs/BENCHMARKS.md), so a broken weights file, a broken export (CDF tables, fp16 rounding of the
float transforms) or a regression in the codec fails here, while the exact numbers may move by a
few hundredths with library versions. Every shipped model stays here: old ids must keep working.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from archiver.codec import Codec
from archiver.metrics import psnr

from shared_paths import KODAK  # noqa: E402

# (model, quality, bpp ceiling, PSNR floor in dB) for kodim19 crop (256, 256, 512, 512), measured
# at registration: compact-v1 0.232 bpp / 20.97 dB and 0.780 / 21.82; compact-v2 0.297 / 22.10
# and 0.877 / 22.79; compact-v3 0.361 / 22.78 and 1.096 / 23.47; compact-v4 0.422 / 23.75 and
# 1.166 / 24.51; compact-v5 (complete design) 1.249 / 35.55 and 3.680 / 44.81; compact-v6 (compact-v5
# trained on) 1.241 / 35.53 and 3.618 / 44.81; compact-v7 (compact-v6 trained on) 1.232 / 35.54 and
# 3.607 / 44.79; compact-v8 (compact-v7 trained on) 1.228 / 35.50 and 3.592 / 44.76; compact-v9
# (compact-v8 trained on) 1.225 / 35.51 and 3.588 / 44.74; compact-v10 (compact-v9 trained on, slice 0's
# anchors split with a fitted context) 1.212 / 35.52 and 3.580 / 44.72; compact-v11 (compact-v10
# trained on, slice 0's first quarter split twice more with fitted contexts) 1.192 / 35.50 and
# 3.543 / 44.73; compact-v12 (compact-v11 with fitted y tables) 1.178 / 35.50 and 3.531 / 44.73
# (its ceilings are tighter: 5 % above what it measured); compact-v13 (compact-v11 trained on,
# fitted y tables) 1.176 / 35.51 and 3.523 / 44.72; compact-v14 (compact-v13's network trained on,
# fitted y tables) 1.175 / 35.50 and 3.516 / 44.72; compact-v15 (compact-v14 with its synthesis tuned to
# effort 1's RDOQ symbols, in container version 4: 273 bytes = 0.033 bpp less on this crop than
# version 3) 1.142 / 35.45 and 3.483 / 44.66 (these rows encode at effort 0, the symbols its
# synthesis was not tuned to: 0.05-0.06 dB below compact-v14's 35.50 / 44.72 at the same bytes);
# compact-v16 (the training checkpoint 4,092 steps on, fitted y tables, synthesis tuned to effort 1's
# symbols) 1.136 / 35.45 and 3.487 / 44.63, also at effort 0; compact-v17 (its training checkpoint
# 1,817 steps on, fitted y tables, synthesis tuned at uniformly drawn qualities) 1.135 / 35.46 and
# 3.477 / 44.64, at effort 0; compact-v18 (its training checkpoint 2,164 steps on, the last 1,900 at
# uniformly drawn qualities, fitted y tables, synthesis tuned at uniformly drawn qualities) 1.131 / 35.47
# and 3.475 / 44.63, at effort 0
EXPECTED = [
    ("compact-v1", 20.0, 0.25, 20.6),
    ("compact-v1", 80.0, 0.82, 21.4),
    ("compact-v2", 20.0, 0.32, 21.8),
    ("compact-v2", 80.0, 0.92, 22.5),
    ("compact-v3", 20.0, 0.39, 22.5),
    ("compact-v3", 80.0, 1.15, 23.2),
    ("compact-v4", 20.0, 0.45, 23.4),
    ("compact-v4", 80.0, 1.22, 24.2),
    ("compact-v5", 20.0, 1.30, 35.2),
    ("compact-v5", 80.0, 3.80, 44.5),
    ("compact-v6", 20.0, 1.29, 35.2),
    ("compact-v6", 80.0, 3.74, 44.5),
    ("compact-v7", 20.0, 1.28, 35.2),
    ("compact-v7", 80.0, 3.73, 44.5),
    ("compact-v8", 20.0, 1.28, 35.2),
    ("compact-v8", 80.0, 3.72, 44.5),
    ("compact-v9", 20.0, 1.28, 35.2),
    ("compact-v9", 80.0, 3.72, 44.5),
    ("compact-v10", 20.0, 1.28, 35.2),
    ("compact-v10", 80.0, 3.72, 44.5),
    ("compact-v11", 20.0, 1.28, 35.2),
    ("compact-v11", 80.0, 3.72, 44.5),
    ("compact-v12", 20.0, 1.24, 35.2),
    ("compact-v12", 80.0, 3.71, 44.5),
    ("compact-v13", 20.0, 1.24, 35.2),
    ("compact-v13", 80.0, 3.70, 44.5),
    ("compact-v14", 20.0, 1.24, 35.2),
    ("compact-v14", 80.0, 3.70, 44.5),
    ("compact-v15", 20.0, 1.20, 35.2),
    ("compact-v15", 80.0, 3.66, 44.4),
    ("compact-v16", 20.0, 1.20, 35.2),
    ("compact-v16", 80.0, 3.67, 44.4),
    ("compact-v17", 20.0, 1.19, 35.2),
    ("compact-v17", 80.0, 3.65, 44.4),
    ("compact-v18", 20.0, 1.19, 35.2),
    ("compact-v18", 80.0, 3.65, 44.4),
]
_codecs: dict[str, Codec] = {}


@pytest.mark.parametrize("model,quality,bpp_max,psnr_min", EXPECTED)
def test_shipped_model_quality_on_kodak_crop(model: str, quality: float, bpp_max: float, psnr_min: float) -> None:
    codec = _codecs.get(model) or _codecs.setdefault(model, Codec.load(model, "cpu"))
    im = Image.open(KODAK / "kodim19.png").convert("RGB").crop((256, 256, 512, 512))
    data = codec.encode(im, quality=quality)
    bpp = len(data) * 8 / (256 * 256)
    got = psnr(np.asarray(im), codec.decode(data).rgb)
    assert bpp <= bpp_max, f"{bpp:.3f} bpp"
    assert got >= psnr_min, f"{got:.2f} dB"
