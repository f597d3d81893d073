"""The complete design (compact-v5 on): it must start as a working transform coder, so these
check the properties the design study relies on, on a real Kodak crop, for untrained weights."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from archiver.codec import Codec
from archiver.codec.complete import basis, dct_matrix, frequency_order
from archiver.codec.model import PRESETS, Preset, build_model, quality_to_lambda
from archiver.codec.registry import read_registry, save_weights
from archiver.metrics import psnr

from shared_paths import KODAK  # noqa: E402


def kodak_tensor(n: int = 23, size: int = 128) -> torch.Tensor:
    a = np.asarray(Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB"))[:size, :size]
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255.0


def db(x: torch.Tensor, ref: torch.Tensor) -> float:
    return -10 * math.log10(float(((x - ref) ** 2).mean()))


@pytest.mark.parametrize("stride", [8, 16])
def test_stem_basis_is_orthonormal_and_frequency_ordered(stride: int) -> None:
    d = dct_matrix(stride)
    assert torch.allclose(d @ d.t(), torch.eye(stride, dtype=torch.float64), atol=1e-12)
    b = basis(stride).reshape(3 * stride * stride, -1)
    assert torch.allclose(b @ b.t(), torch.eye(b.shape[0], dtype=torch.float64), atol=1e-12)
    order = frequency_order(stride)
    assert order[:3] == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]  # the three DC coefficients code first
    assert [u + v for _, u, v in order] == sorted(u + v for _, u, v in order)


def test_untrained_complete_model_is_already_a_transform_coder() -> None:
    """At step 0: the transforms invert each other, and rounding the coefficients at a level's
    initial gain costs what a uniform quantiser of that step costs (D = step^2 / 12)."""
    torch.manual_seed(0)
    m = build_model("complete8").eval()
    x = kodak_tensor()
    with torch.no_grad():
        y = m.g_a(x)
        assert db(m.g_s(y), x) > 55.0  # near identity: nothing learnt, nothing lost
        for q in (0.0, 100.0 * 5 / 7):
            gain, inv = m.gains(torch.tensor([q]))
            step = 1.0 / float(gain.flatten()[0])
            got = db(m.g_s(torch.round(y * gain) * inv).clamp(0, 1), x)
            # the high-rate formula, and the rounding never costs more than it predicts
            assert got >= 10 * math.log10(12 / step**2) - 0.5, (q, got)
    # the initial quantiser steps follow lambda: q 100/7*5 sits near the archive's 40 dB
    with torch.no_grad():
        step_40 = 1.0 / float(m.gains(torch.tensor([100.0 * 5 / 7]))[0].flatten()[0])
    assert 38.0 < 10 * math.log10(12 / step_40**2) < 44.0
    assert quality_to_lambda(100, m.preset) == pytest.approx(1.6)


def test_older_presets_keep_their_meaning() -> None:
    """Registered compact models have no design fields: they read as the compact design."""
    for mid in ("compact-v1", "compact-v4"):
        p = read_registry()[mid].preset
        assert (p.design, p.stride, p.z_stride, p.lambda_max) == ("compact", 16, 64, 0.45)
    with pytest.raises(ValueError, match="3 \\* stride"):
        dataclasses.replace(PRESETS["complete8"], latent=96)
    with pytest.raises(ValueError, match="design"):
        dataclasses.replace(PRESETS["complete8"], design="wavelet")
    d = PRESETS["complete8"].to_dict()
    assert Preset.from_dict(d) == PRESETS["complete8"]


@pytest.mark.parametrize("preset,size", [("complete8", (77, 50)), ("complete8", (128, 96)),
                                         ("complete8-cb", (77, 50)), ("complete8-cb", (160, 96)),
                                         ("complete8-cb-split", (77, 50)), ("complete8-cb-split", (160, 96)),
                                         ("complete8-cb-split1", (77, 50)), ("complete8-cb-split1d3", (77, 50)),
                                         ("complete8-cb-split1d3", (160, 96))])
def test_untrained_complete_weights_round_trip_bit_exactly(tmp_path: Path, preset: str, size: tuple[int, int]) -> None:
    """A candidate weights file (not registered) encodes and decodes through the real container,
    at sizes that are not multiples of the 32-px hyper-latent stride; with the checkerboard
    context switched on (non-zero), both coding passes agree between encoder and decoder (the
    decoder checks the latent checksum)."""
    torch.manual_seed(1)
    m = build_model(preset).eval()
    if "-cb" in preset:
        with torch.no_grad():
            lattice = [c for row in getattr(m, "lattice_tf", []) for c in row]
            for sc in [*m.spatial_tf, *getattr(m, "anchor_tf", []), *lattice]:
                sc.head.out.weight.normal_(0, 0.2)
                sc.head.out.bias.normal_(0, 0.5)
    f = tmp_path / "cand.safetensors"
    save_weights(m, f, {"steps": "0"})
    codec = Codec.from_weights_file(f, "cpu")
    assert codec.model_id == "file:cand.safetensors"
    im = Image.open(KODAK / "kodim19.png").convert("RGB").crop((0, 0, *size))
    data = codec.encode(im, quality=60)
    again = Codec.from_weights_file(f, "cpu").encode(im, quality=60)
    assert data == again
    out = codec.decode(data).rgb
    assert out.shape == (size[1], size[0], 3)
    assert psnr(np.asarray(im), out) > 30.0


def test_a_channel_model_grows_a_checkerboard_context_that_starts_as_a_no_op(tmp_path: Path) -> None:
    from archiver.train import grow_checkpoint

    torch.manual_seed(2)
    base = build_model("complete8").eval()
    f = tmp_path / "base.safetensors"
    save_weights(base, f, {"steps": "0"})
    grown = build_model("complete8-cb").eval()
    grow_checkpoint(grown, f)
    plain = build_model("complete8").eval()
    from archiver.train import load_checkpoint

    load_checkpoint(plain, f)
    x = kodak_tensor(19, 128)
    with torch.no_grad():
        a, b = plain(x, torch.tensor([60.0])), grown(x, torch.tensor([60.0]))
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["y_lik"], b["y_lik"])
    with pytest.raises(SystemExit, match="cannot grow"):
        grow_checkpoint(build_model("complete16"), f)


def test_coding_passes_cover_every_position_once_in_checkerboard_order() -> None:
    from archiver.codec.model import anchor_mask, coding_passes

    for h, w in ((5, 7), (6, 4), (1, 1)):
        anchors = anchor_mask(h, w, "cpu")
        plain, split = coding_passes(h, w, "cpu", False), coding_passes(h, w, "cpu", True)
        assert torch.equal(plain[0], anchors) and torch.equal(plain[1], ~anchors)
        assert len(split) == 3 and torch.equal(split[2], ~anchors)
        assert torch.equal(split[0] | split[1], anchors) and not (split[0] & split[1]).any()
        # the first quarter: even rows and columns; every second-pass anchor has a first-pass
        # anchor on a diagonal (the context it is refined from)
        assert bool(split[0][0, 0, 0, 0]) and (h < 2 or w < 2 or bool(split[1][0, 0, 1, 1]))
        assert int(split[0].sum()) == ((h + 1) // 2) * ((w + 1) // 2)
    with pytest.raises(ValueError, match="checkerboard"):
        dataclasses.replace(PRESETS["complete8"], split_anchors=1)
    with pytest.raises(ValueError, match="split_anchors"):
        dataclasses.replace(PRESETS["complete8-cb"], split_anchors=9)


@pytest.mark.parametrize("depth", [2, 3])
def test_deeper_splits_code_every_position_once_after_the_neighbours_their_context_reads(depth: int) -> None:
    """A deeper split (split_depth) halves the first quarter as a checkerboard at twice the
    spacing: only an eighth (depth 2) or a sixteenth (depth 3) of the positions has no decoded
    neighbour, and every later pass's four nearest neighbours (pass_neighbours, what a fitted
    context averages) are decoded before it wherever they lie inside the image."""
    from archiver.codec.model import coding_passes, pass_neighbours

    h, w = 12, 16
    passes = coding_passes(h, w, "cpu", True, depth)
    assert len(passes) == 2 + depth
    total = torch.stack(passes).sum(0)
    assert bool((total == 1).all())  # a partition
    assert torch.equal(passes[-1], ~coding_passes(h, w, "cpu", False)[0])  # the non-anchors last
    assert int(passes[0].sum()) == h * w // (4 * 2 ** (depth - 1))
    assert bool(passes[0][0, 0, 0, 0])
    for k in range(1, len(passes)):
        done = torch.stack(passes[:k]).any(0)[0, 0]
        for r, c in passes[k][0, 0].nonzero().tolist():
            for dy, dx in pass_neighbours(len(passes), k):
                if 0 <= r + dy < h and 0 <= c + dx < w:
                    assert bool(done[r + dy, c + dx]), (depth, k, r, c, dy, dx)
    m = build_model(f"complete8-cb-split1d{depth}")
    assert len(m.lattice_tf[0]) == depth - 1
    assert [len(m.passes(i, 8, 8, "cpu")) for i in range(8)] == [2 + depth] + [2] * 7
    with pytest.raises(ValueError, match="split_depth"):
        dataclasses.replace(PRESETS["complete8-cb"], split_depth=2)
    with pytest.raises(ValueError, match="split_depth"):
        dataclasses.replace(PRESETS["complete8-cb-split1"], split_depth=4)


def test_grown_passes_names_the_contexts_a_deeper_split_adds() -> None:
    from archiver.train import grown_passes

    d3 = build_model("complete8-cb-split1d3")
    assert grown_passes(d3, PRESETS["complete8-cb"]) == [(0, 1), (0, 2), (0, 3)]
    assert grown_passes(d3, PRESETS["complete8-cb-split1"]) == [(0, 1), (0, 2)]
    assert grown_passes(d3, PRESETS["complete8-cb-split1d2"]) == [(0, 1)]
    assert grown_passes(build_model("complete8-cb-split1"), PRESETS["complete8-cb"]) == [(0, 1)]


@pytest.mark.parametrize("preset,n_split", [("complete8-cb-split1", 1), ("complete8-cb-split", 8),
                                            ("complete8-cb-split1d3", 1)])
def test_a_checkerboard_model_grows_split_anchors_that_start_as_a_no_op(tmp_path: Path, preset: str,
                                                                         n_split: int) -> None:
    """Grown from a checkerboard model, the split-anchor model (slice 0 only, or every slice)
    codes the same symbols (real container) and decodes to the same pixels until its new layers
    are trained; once they are not zero, its streams change and still decode exactly (the tile
    checks compare every slice's symbols)."""
    from archiver.train import grow_checkpoint

    torch.manual_seed(3)
    base = build_model("complete8-cb").eval()
    with torch.no_grad():
        for sc in base.spatial_tf:
            sc.head.out.weight.normal_(0, 0.2)
            sc.head.out.bias.normal_(0, 0.5)
    f = tmp_path / "base.safetensors"
    save_weights(base, f, {"steps": "0"})
    grown = build_model(preset).eval()
    assert len(grown.anchor_tf) == n_split
    depth = grown.preset.split_depth
    assert [len(grown.passes(i, 4, 4, "cpu")) for i in range(8)] == [2 + depth] * n_split + [2] * (8 - n_split)
    grow_checkpoint(grown, f)
    g = tmp_path / "grown.safetensors"
    save_weights(grown, g, {"steps": "0"})
    im = Image.open(KODAK / "kodim23.png").convert("RGB").crop((100, 100, 260, 228))
    a = Codec.from_weights_file(f, "cpu").encode(im, quality=70)
    b = Codec.from_weights_file(g, "cpu").encode(im, quality=70)
    from archiver.codec.container import unpack

    ca, cb = unpack(a), unpack(b)
    assert ca.meta.latent_sha256 == cb.meta.latent_sha256
    # the same symbols (the anchors come in another order, so the rANS bytes differ slightly)
    assert [t.z for t in ca.tiles] == [t.z for t in cb.tiles]
    assert abs(len(b) - len(a)) < 0.002 * len(a)
    assert np.array_equal(Codec.from_weights_file(g, "cpu").decode(b).rgb, Codec.from_weights_file(f, "cpu").decode(a).rgb)
    with torch.no_grad():
        for sc in [*grown.anchor_tf, *(c for row in getattr(grown, "lattice_tf", []) for c in row)]:
            sc.head.out.weight.normal_(0, 0.2)
            sc.head.out.bias.normal_(0, 0.5)
    save_weights(grown, g, {"steps": "1"})
    codec = Codec.from_weights_file(g, "cpu")
    c = codec.encode(im, quality=70)
    assert unpack(c).meta.latent_sha256 != ca.meta.latent_sha256
    assert psnr(np.asarray(im), codec.decode(c).rgb) > 30.0
    with pytest.raises(SystemExit, match="cannot grow"):
        grow_checkpoint(build_model("complete8-cb"), g)


def test_scale_index_lookup_equals_bucketize_on_every_grid_value() -> None:
    """The exact path's scale indexes come from a lookup table (model.scale_indexes); on grid
    values, negative ones and ones past the table it must pick what bucketize picks."""
    from archiver.codec.model import SCALE_MAX

    for rule in ("up", "nearest"):
        m = build_model(dataclasses.replace(PRESETS["complete8-cb"], scale_rule=rule))
        grid = torch.arange(-512, int(SCALE_MAX * 256) + 4096, dtype=torch.float64).reshape(1, 1, -1, 64) / 256
        want = torch.bucketize(grid.contiguous(), m.scale_bounds.double(), right=False)
        got = m.scale_indexes(grid, on_grid=True)
        assert torch.equal(got, want) and int(got.max()) == len(m.scale_bounds) and int(got.min()) == 0
