"""Write golden bitstreams for one registered model (run once, when a model is registered).

    .venv/bin/python tests/make_golden.py compact-v3

Each case is a small image cut from Kodak (never trained on), encoded with the model, and stored
with the image the decoder gave at that moment (``<case>.png``). ``tests/test_golden.py`` decodes
every stored stream on every run, forever: a bitstream written today must keep decoding after any
later change to the code or the registry. Existing files are never overwritten: a golden file
that changes is no longer golden.

Where, by container format version (``archiver.codec.container.VERSION``, what the encoder writes):

* ``tests/data/golden/<model>/``: container version 1, written when compact-v1 .. compact-v5 were
  registered. Kept as they are, as decode-compatibility fixtures: the encoder no longer writes
  version 1, and these are the proof that version-1 archives still decode bit-exactly.
* ``tests/data/golden/container-v<N>/<model>/`` for N >= 2: written by this script for the
  current version (container v2, issue 16: per-tile checks; v3, issue 27: checks bound to the
  header and the tile index; v4, issue 24, 2026-12-07: META as binary fields). When the format version is bumped
  again, run this script for every registered model: it writes a new ``container-v<N>`` set
  beside the old ones, which stay.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from shared_paths import KODAK  # noqa: E402

GOLDEN = HERE / "data" / "golden"


def golden_dir(model_id: str, version: int) -> Path:
    """Where the golden streams of ``model_id`` in container format ``version`` live."""
    return GOLDEN / model_id if version == 1 else GOLDEN / f"container-v{version}" / model_id

#: case -> (Kodak image, crop box, mode, quality): the container paths worth freezing
CASES: dict[str, tuple[int, tuple[int, int, int, int], str, float]] = {
    "rgb-96x64-q60": (19, (300, 300, 396, 364), "RGB", 60.0),
    "rgb-37x23-q20": (23, (200, 100, 237, 123), "RGB", 20.0),  # odd size: padding and crop
    "gray-64x48-q90": (5, (400, 200, 464, 248), "L", 90.0),
    "rgba-48x40-q40": (7, (100, 100, 148, 140), "RGBA", 40.0),  # alpha kept losslessly
}


def source(case: str) -> Image.Image:
    n, box, mode, _ = CASES[case]
    im = Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB").crop(box)
    if mode == "RGBA":
        a = np.tile(np.linspace(0, 255, im.width, dtype=np.uint8), (im.height, 1))
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(a, "L"))
        return im
    return im.convert(mode)


def main(model_id: str) -> None:
    from archiver.codec import Codec
    from archiver.codec import container as cx

    codec = Codec.load(model_id, "cpu")
    out = golden_dir(model_id, cx.VERSION)
    out.mkdir(parents=True, exist_ok=True)
    for case, (_, _, _, quality) in CASES.items():
        cxa, png = out / f"{case}.cxa", out / f"{case}.png"
        if cxa.exists() or png.exists():
            print(f"{cxa}: exists, kept")
            continue
        data = codec.encode(source(case), quality=quality)
        assert cx.read_version(data) == cx.VERSION
        cxa.write_bytes(data)
        codec.decode(data).image.save(png)
        print(f"{cxa}: {len(data)} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
