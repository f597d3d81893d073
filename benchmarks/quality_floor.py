"""What a model measures on the crop that ``tests/test_model_quality.py`` checks, at registration.

    python benchmarks/quality_floor.py compact-v10 [--weights FILE]

Why: each registered model gets two rows in that test's ``EXPECTED`` (a bpp ceiling and a PSNR
floor a little outside what it measured when registered), so a broken weights file or export
fails the suite. This prints the measured bpp and PSNR from real bytes and the real decoder, on
the same kodim19 crop (256, 256, 512, 512) at qualities 20 and 80, and the rows to add.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from shared_paths import KODAK  # noqa: E402

from archiver.codec import Codec  # noqa: E402
from archiver.metrics import psnr  # noqa: E402

CROP = (256, 256, 512, 512)
#: the margins the test's rows have kept since compact-v7: ceilings and floors per quality
ROWS = {20.0: (1.28, 35.2), 80.0: (3.72, 44.5)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--weights", help="an unregistered weights file to measure under the model id")
    a = ap.parse_args(argv)
    codec = (Codec.from_weights_file(a.weights, "cpu", model_id=a.model) if a.weights
             else Codec.load(a.model, "cpu"))
    im = Image.open(KODAK / "kodim19.png").convert("RGB").crop(CROP)
    for q, (bpp_max, psnr_min) in ROWS.items():
        data = codec.encode(im, quality=q)
        bpp = len(data) * 8 / (im.width * im.height)
        got = psnr(np.asarray(im), codec.decode(data).rgb)
        ok = bpp <= bpp_max and got >= psnr_min
        print(f"{a.model} q{q:g}: {bpp:.3f} bpp / {got:.2f} dB -> ({a.model!r}, {q}, {bpp_max}, {psnr_min}),"
              f"{'' if ok else '  # OUTSIDE the usual margins: choose new ones'}")


if __name__ == "__main__":
    main()
