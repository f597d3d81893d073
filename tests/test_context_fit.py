"""The fitted split-anchor context (archiver/context_fit.py, issue 24): grown from the shipped
compact-v9 and fitted on a few training photos (never Kodak), it must find the smooth DC maps'
linear structure (and, grown from compact-v10 to a deeper split, find it again two steps away)
and code a smooth, enlarged Kodak crop in fewer bytes than compact-v9 with the same pixels,
through the real container and the exact decoder. It fails if the fit finds
nothing, if the later passes see bare symbols instead of offsets (then the same fit made streams
27-45 % larger), or if encoder and decoder disagree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from archiver.codec import Codec
from archiver.codec.model import build_model
from archiver.codec.registry import resolve, save_weights
from archiver.context_fit import fit_split_context
from archiver.metrics import psnr
from archiver.train import CropSampler, find_images, grow_checkpoint

from shared_paths import KODAK, SHARED  # noqa: E402

TRAIN = SHARED / "data" / "train" / "shard-00"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    m = build_model("complete8-cb-split1")
    grow_checkpoint(m, resolve("compact-v9").file)
    sampler = CropSampler(find_images([TRAIN])[:40], 192, seed=3, upsample_prob=0.6, upsample_max=4.0)
    fits = fit_split_context(m, sampler, batches=6, batch=4)
    out = tmp_path_factory.mktemp("fit") / "fitted.safetensors"
    save_weights(m.eval(), out, {"steps": "0"})
    return out, fits


def test_the_fit_finds_the_smooth_dc_maps(fitted: tuple[Path, list]) -> None:
    _, fits = fitted
    chosen = {f.channel: f for f in fits}
    # slice 0's DC maps of the two smooth colour axes: the diagonal average predicts them almost
    # exactly (slope about 1), and the scale shrinks with the residual
    for k in (1, 2):
        assert k in chosen, [f.channel for f in fits]
        assert 0.8 < chosen[k].beta < 1.2 and chosen[k].gamma < 0.6 and chosen[k].gain_pct < -15
    assert all(f.bits_after < f.bits_before for f in fits)
    assert len(fits) <= 6  # the AC channels have no such structure and stay a no-op


def test_fitted_split_codes_smooth_content_smaller_with_the_same_pixels(fitted: tuple[Path, list]) -> None:
    path, _ = fitted
    im = Image.open(KODAK / "kodim23.png").convert("RGB")
    im = im.resize((im.width * 2, im.height * 2), Image.Resampling.LANCZOS).crop((512, 256, 768, 512))
    base, cand = Codec.load("compact-v9", "cpu"), Codec.from_weights_file(path, "cpu")
    a, b = base.encode(im, quality=40), cand.encode(im, quality=40)
    ra, rb = base.decode(a).rgb, cand.decode(b).rgb  # the decoder checks the latent checksum
    assert len(b) < 0.985 * len(a), (len(b), len(a))
    # same transforms and (up to the split pass's own rounding) the same latents
    assert abs(psnr(np.asarray(im), rb) - psnr(np.asarray(im), ra)) < 0.1
    assert np.array_equal(cand.decode(b).rgb, rb)  # deterministic


def test_fit_needs_a_split_context() -> None:
    m = build_model("complete8-cb")
    with pytest.raises(ValueError, match="no split-anchor context"):
        fit_split_context(m, CropSampler.from_arrays({}, 64, seed=0))


@pytest.fixture(scope="module")
def lattice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list]]:
    """compact-v10 (slice 0's anchors already split) grown to split_depth 3, its two new lattice
    passes fitted."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    m = build_model("complete8-cb-split1d3")
    grow_checkpoint(m, resolve("compact-v10").file)
    sampler = CropSampler(find_images([TRAIN])[:40], 192, seed=3, upsample_prob=0.6, upsample_max=4.0)
    fits = [fit_split_context(m, sampler, pass_index=k, batches=6, batch=4) for k in (1, 2)]
    out = tmp_path_factory.mktemp("lattice") / "d3.safetensors"
    save_weights(m.eval(), out, {"steps": "0"})
    return out, fits


def test_the_lattice_passes_find_the_dc_maps_two_steps_away(lattice: tuple[Path, list[list]]) -> None:
    """Two steps away the neighbours still predict the smooth colour DC maps (slope about 1
    on the training run's crops, lower on these few small ones); the fit chooses them and leaves
    the rest a no-op."""
    _, fits = lattice
    for per_pass in fits:
        chosen = {f.channel: f for f in per_pass}
        for k in (1, 2):
            assert k in chosen, [f.channel for f in per_pass]
            assert 0.6 < chosen[k].beta < 1.2 and chosen[k].gain_pct < -10
        assert len(per_pass) <= 6


def test_a_fitted_deeper_split_codes_smooth_content_smaller_than_compact_v10(lattice: tuple[Path, list[list]]) -> None:
    path, _ = lattice
    im = Image.open(KODAK / "kodim03.png").convert("RGB")
    im = im.resize((im.width * 2, im.height * 2), Image.Resampling.LANCZOS).crop((256, 256, 512, 512))
    base, cand = Codec.load("compact-v10", "cpu"), Codec.from_weights_file(path, "cpu")
    a, b = base.encode(im, quality=40), cand.encode(im, quality=40)
    ra, rb = base.decode(a).rgb, cand.decode(b).rgb
    assert len(b) < 0.99 * len(a), (len(b), len(a))
    assert abs(psnr(np.asarray(im), rb) - psnr(np.asarray(im), ra)) < 0.1


def test_fit_refuses_a_pass_without_a_fitted_context() -> None:
    m = build_model("complete8-cb-split1d3")
    for k in (0, 4):  # the first pass has no context; the last is the checkerboard's own
        with pytest.raises(ValueError, match="no split-anchor or lattice context"):
            fit_split_context(m, CropSampler.from_arrays({}, 64, seed=0), pass_index=k)
