"""Bitstreams written by earlier versions keep decoding: the archive's promise, checked forever.

``tests/data/golden/<model>/`` holds small containers written when each model was registered
(``tests/make_golden.py``) with the image the decoder gave then. Every run decodes them with
today's code: the latents are exact by construction (the container's latent hash is checked in
``decode``), and the float synthesis may move a pixel by at most 1 LSB across libraries/devices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archiver.codec import Codec, registry
from archiver.codec import container as cx

from make_golden import CASES, GOLDEN

STREAMS = sorted(GOLDEN.glob("*/*.cxa"))


def test_every_registered_model_has_golden_streams() -> None:
    for model_id in registry.read_registry():
        have = {p.stem for p in (GOLDEN / model_id).glob("*.cxa")}
        assert have == set(CASES), f"{model_id}: golden streams {sorted(have)}; run tests/make_golden.py {model_id}"


@pytest.fixture(scope="module")
def codecs() -> dict[str, Codec]:
    return {}


@pytest.mark.parametrize("path", STREAMS, ids=[f"{p.parent.name}/{p.stem}" for p in STREAMS])
def test_golden_stream_decodes_as_when_written(path: Path, codecs: dict[str, Codec]) -> None:
    model_id = path.parent.name
    codec = codecs.get(model_id) or codecs.setdefault(model_id, Codec.load(model_id, "cpu"))
    data = path.read_bytes()
    meta = cx.unpack(data).meta
    _, _, mode, quality = CASES[path.stem]
    assert (meta.model_id, meta.quality, meta.mode) == (model_id, quality, mode)

    got = codec.decode(data).image
    want = Image.open(path.with_suffix(".png"))
    want.load()
    assert (got.mode, got.size) == (want.mode, want.size) == (mode, (meta.width, meta.height))
    g, w = np.asarray(got).astype(int), np.asarray(want).astype(int)
    if mode == "RGBA":
        assert np.array_equal(g[..., 3], w[..., 3])  # alpha is lossless
    assert np.abs(g - w).max() <= 1
