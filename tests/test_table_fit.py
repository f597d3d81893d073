"""Fitted y tables (archiver/table_fit.py, issue 24): fitted on a few training crops (never
Kodak), the shipped compact-v11's tables must code a held-out Kodak crop at effort 1 in fewer
bytes, through the real container and the unchanged exact decoder; the tables keep the Gaussian
tables' layout, survive export, and training drops them again. It fails if the fit counts the
wrong symbols (then the tables cost more than the Gaussian on held-out data), if the layout
changes (the decoder would read other symbols), or if exporting rebuilds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

from archiver.cli import main
from archiver.codec import Codec
from archiver.codec.model import Preset
from archiver.codec.registry import file_preset, load_weights_file, resolve, save_weights
from archiver.metrics import psnr
from archiver.table_fit import fit_tables, gaussian_tables, table_pmf
from archiver.train import CropSampler, find_images

from shared_paths import KODAK, SHARED  # noqa: E402

TRAIN = SHARED / "data" / "train" / "shard-01"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(2)
    model, _ = load_weights_file(resolve("compact-v11").file, "cpu")
    sampler = CropSampler(find_images([TRAIN])[:30], 256, seed=5, upsample_prob=0.6, upsample_max=4.0)
    fit = fit_tables(model, sampler.batch(8), qualities=(30.0, 50.0, 70.0), effort=1, rounds=1)
    out = tmp_path_factory.mktemp("tables") / "fitted.safetensors"
    save_weights(model, out, {"steps": "0"})
    return out, fit, model


def test_old_presets_read_as_gaussian_and_unknown_kinds_are_refused() -> None:
    d = resolve("compact-v11").preset.to_dict()
    d.pop("y_tables")
    assert Preset.from_dict(d).y_tables == "gaussian"
    with pytest.raises(ValueError, match="y_tables"):
        Preset.from_dict({**d, "y_tables": "laplace"})


def test_fitted_tables_keep_the_layout_and_beat_the_gaussian_on_held_out_halves(fitted) -> None:
    path, fit, model = fitted
    g_cdf, offset, length = gaussian_tables(model)
    gc = model.gaussian_conditional
    assert torch.equal(gc._offset, offset) and torch.equal(gc._cdf_length, length)
    cdf = gc._quantized_cdf.long()
    assert not torch.equal(cdf, g_cdf.long())
    for k in range(len(cdf)):
        row = cdf[k, : int(length[k])]
        assert row[0] == 0 and row[-1] == 1 << 16 and bool((row[1:] > row[:-1]).all()), k
    # the small scales gain most: RDOQ writes far more zeros there than their Gaussian expects
    zero = (-offset).long()
    p_fit, p_gauss = table_pmf(cdf, length), table_pmf(g_cdf.long(), length)
    assert p_fit[12, zero[12]] > p_gauss[12, zero[12]]
    assert fit.change_pct < -0.5 and fit.heldout_pct < 0.0, (fit.change_pct, fit.heldout_pct)


def test_export_keeps_the_fitted_tables(fitted) -> None:
    path, _, model = fitted
    assert file_preset(path)[0].y_tables == "fitted"
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("gaussian_conditional._quantized_cdf"),
                           model.gaussian_conditional._quantized_cdf)


def test_a_held_out_kodak_crop_codes_smaller_and_decodes_exactly(fitted) -> None:
    path, _, _ = fitted
    im = Image.open(KODAK / "kodim23.png").convert("RGB").crop((128, 64, 512, 448))
    base, cand = Codec.load("compact-v11", "cpu"), Codec.from_weights_file(path, "cpu")
    a = base.encode_detailed(im, quality=50, effort=1)
    b = cand.encode_detailed(im, quality=50, effort=1)
    assert len(b.data) < 0.995 * len(a.data), (len(a.data), len(b.data))
    out = cand.decode(b.data)
    assert abs(psnr(out.rgb, __import__("numpy").asarray(im)) - b.psnr) < 0.01
    # the fitted tables only move RDOQ's choices a little: PSNR within 0.1 dB of the Gaussian's
    assert abs(a.psnr - b.psnr) < 0.1


def test_training_from_fitted_weights_goes_back_to_gaussian_tables(fitted, tmp_path: Path) -> None:
    from archiver.train import TrainConfig, train

    path, _, _ = fitted
    out = tmp_path / "t.safetensors"
    train(TrainConfig(data=[TRAIN], out=out, resume=path, steps=0, batch=1, crop=128, threads=2))
    assert file_preset(out)[0].y_tables == "gaussian"
    model, _ = load_weights_file(out, "cpu")
    assert torch.equal(model.gaussian_conditional._quantized_cdf, gaussian_tables(model)[0].to(torch.int32))


def test_the_command_writes_fitted_weights_with_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    r = CliRunner().invoke(main, ["fit-tables", str(resolve("compact-v11").file), "--data", str(TRAIN), "--out",
                                  str(out), "--crops", "2", "--crop", "128", "--rounds", "1", "--threads", "2"])
    assert r.exit_code == 0, r.output
    preset, meta = file_preset(out)
    assert preset.y_tables == "fitted"
    info = json.loads(meta["table_fit"])
    assert info["crops"] == 2 and info["effort"] == 1 and info["symbols"] > 0
    bad = CliRunner().invoke(main, ["fit-tables", str(resolve("compact-v11").file), "--data", str(tmp_path),
                                    "--out", str(tmp_path / "g.safetensors")])
    assert bad.exit_code != 0 and "no training images" in bad.output


def test_training_only_the_synthesis_keeps_the_fitted_tables_and_every_symbol(fitted, tmp_path: Path) -> None:
    """The synthesis runs after the entropy path: training only g_s (e.g. on RDOQ's symbols) leaves
    every stream as it was, so the fitted tables stay (and stay valid) while the decoded image
    moves. Any other parameter in the set sends the file back to Gaussian tables."""
    from archiver.codec import container as cx
    from archiver.train import TrainConfig, symbol_free, train

    path, _, model = fitted
    assert symbol_free(model, ("g_s",)) and not symbol_free(model, ("g_s", "lrp_tf"))
    assert not symbol_free(model, ("log_inv_gain",)) and not symbol_free(model, ("nothing",))
    out = tmp_path / "gs.safetensors"
    train(TrainConfig(data=[TRAIN], out=out, resume=path, steps=3, batch=1, crop=128, threads=2, lr=1e-3,
                      warmup=0, train_only=("g_s",), rdo_strength=1.5))
    assert file_preset(out)[0].y_tables == "fitted"
    with safe_open(str(path), framework="pt") as a, safe_open(str(out), framework="pt") as b:
        moved = [k for k in a.keys() if not torch.equal(a.get_tensor(k), b.get_tensor(k))]
    assert moved and all(k.startswith("g_s.") for k in moved), moved
    im = Image.open(KODAK / "kodim23.png").convert("RGB").crop((128, 64, 320, 256))
    before, after = Codec.from_weights_file(path, "cpu"), Codec.from_weights_file(out, "cpu")
    da, db = before.encode(im, quality=50, effort=1), after.encode(im, quality=50, effort=1)
    a, b = cx.unpack(da), cx.unpack(db)
    assert [(t.z, t.y) for t in a.tiles] == [(t.z, t.y) for t in b.tiles]
    assert a.meta.latent_sha256 == b.meta.latent_sha256 and a.meta.weights_sha256 != b.meta.weights_sha256
    assert not (before.decode(da).rgb == after.decode(db).rgb).all()
    other = tmp_path / "lrp.safetensors"
    train(TrainConfig(data=[TRAIN], out=other, resume=path, steps=0, batch=1, crop=128, threads=2,
                      train_only=("g_s", "lrp_tf")))
    assert file_preset(other)[0].y_tables == "gaussian"
