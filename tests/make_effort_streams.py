"""Write the effort-1 fixture streams (once, for issue 24): ``tests/data/effort/``.

    .venv/bin/python tests/make_effort_streams.py

Each is a Kodak crop encoded by compact-v6 at effort 1 (RDOQ, codec/rdo.py), stored with the
image the decoder gave then. ``tests/test_effort.py`` decodes them on every run: streams made at
any effort must keep decoding with the one decoder. Existing files are never overwritten.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from shared_paths import KODAK  # noqa: E402

OUT = HERE / "data" / "effort"
MODEL = "compact-v6"
#: case -> (Kodak image, crop box, quality, effort)
CASES = {
    "sky-128x96-q40-e1": (23, (60, 20, 188, 116), 40.0, 1),
    "detail-96x64-q60-e1": (1, (300, 300, 396, 364), 60.0, 1),
}


def source(case: str) -> Image.Image:
    n, box, _, _ = CASES[case]
    return Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB").crop(box)


def main() -> None:
    from archiver.codec import Codec

    codec = Codec.load(MODEL, "cpu")
    OUT.mkdir(parents=True, exist_ok=True)
    for case, (_, _, q, effort) in CASES.items():
        path = OUT / f"{case}.cxa"
        if path.exists():
            continue
        data = codec.encode(source(case), quality=q, effort=effort)
        path.write_bytes(data)
        codec.decode(data).image.save(path.with_suffix(".png"))
        print(path, len(data))


if __name__ == "__main__":
    main()
