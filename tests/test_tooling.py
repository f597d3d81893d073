"""Training and evaluation tooling on tiny real data: the commands run, write what they promise,
and resume from their own weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

from archiver.bdrate import bd_rate, bd_rate_files
from archiver.cli import main
from archiver.train import CropSampler, TrainConfig, learning_rate

from shared_paths import KODAK, SHARED  # noqa: E402
ANCHORS = SHARED / "anchors" / "kodak"


def test_bd_rate_matches_the_anchor_tool() -> None:
    # ../shared/anchors/README.md: BPG-444 vs CompressAI-VTM on Kodak = +21.99 % (PCHIP)
    assert abs(bd_rate_files(ANCHORS / "published/vtm.json", ANCHORS / "published/bpg_444_x265_ycbcr.json") - 21.99) < 0.01
    # a curve that needs exactly 10 % fewer bits everywhere
    assert abs(bd_rate([1, 2, 3], [30, 35, 40], [0.9, 1.8, 2.7], [30, 35, 40]) + 10.0) < 1e-9


def test_train_writes_weights_and_log_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVER_LOG_PROGRESS_EVERY", "0.000001")  # CliRunner's stderr is not a terminal
    data = tmp_path / "imgs"
    data.mkdir()
    for i, n in enumerate((4, 8)):
        Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB").crop((0, 0, 160, 128)).save(data / f"{i}.jpg", quality=95)
    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), "--steps", "2", "--batch", "2",
                                  "--crop", "64", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "training: step 2/2 | bpp " in r.output, r.output  # plain progress lines where a bar cannot animate
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["steps"] == "2"
        assert f.get_tensor("g_a.stem.conv.weight").dtype.itemsize == 2  # float transforms ship as fp16
    log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and {"bpp", "psnr", "loss"} <= set(log[-1])
    out2 = tmp_path / "w2.safetensors"
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out2), "--steps", "1", "--batch", "2",
                                  "--crop", "64", "--device", "cpu", "--resume", str(out)])
    assert r.exit_code == 0, r.output
    assert out2.exists()


def _detail(batch) -> float:
    """Mean squared difference of horizontally adjacent pixels: the crops' fine detail."""
    return float(((batch[..., 1:] - batch[..., :-1]) ** 2).mean())


def test_sampler_enlarges_a_share_of_crops_into_smooth_content() -> None:
    files = [KODAK / f"kodim{n:02d}.png" for n in (1, 8, 13)]  # detailed photos: enlarging shows clearly
    plain = CropSampler(files, 128, seed=3)
    assert CropSampler(files, 128, seed=3).batch(4).equal(plain.batch(4))  # off by default: crops as before
    smooth = CropSampler(files, 128, seed=3, upsample_prob=1.0, upsample_max=2.5)
    a, b = plain.batch(48), smooth.batch(48)
    assert b.shape == a.shape == (48, 3, 128, 128) and 0.0 <= float(b.min()) and float(b.max()) <= 1.0
    # an enlargement by 1..2.5 removes the finest detail: far less energy between neighbours
    assert _detail(b) < 0.6 * _detail(a), (_detail(a), _detail(b))
    # the same seed gives the same crops (a resumed or repeated run sees the same data)
    assert CropSampler(files, 128, seed=3, upsample_prob=1.0, upsample_max=2.5).batch(48).equal(b)
    half = CropSampler(files, 128, seed=3, upsample_prob=0.5, upsample_max=2.5).batch(48)
    assert _detail(b) < _detail(half) < _detail(a)
    with pytest.raises(ValueError, match="upsample_prob"):
        CropSampler(files, 128, seed=3, upsample_prob=1.5)
    with pytest.raises(ValueError, match="upsample_max"):
        CropSampler(files, 128, seed=3, upsample_max=0.5)


def test_lr_schedule_warms_up_and_follows_the_budget_that_ends_first() -> None:
    cfg = TrainConfig(data=[], out=Path("w"), steps=1000, lr=1e-3, warmup=100)
    assert learning_rate(cfg, 1, 0.0) == pytest.approx(1e-5, rel=1e-2)  # warm-up: 1/100 of the peak
    assert learning_rate(cfg, 100, 0.0) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.1))))
    assert learning_rate(cfg, 500, 0.0) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert learning_rate(cfg, 1000, 0.0) == pytest.approx(5e-5)
    timed = TrainConfig(data=[], out=Path("w"), steps=10**6, lr=1e-3, warmup=0, max_minutes=10)
    assert learning_rate(timed, 200, 300.0) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))  # half the time gone
    assert learning_rate(timed, 200, 900.0) == pytest.approx(5e-5)  # past the time cap: the floor
    step = TrainConfig(data=[], out=Path("w"), steps=1000, lr=1e-3, warmup=0, schedule="step")
    assert learning_rate(step, 900, 0.0) == 1e-3 and learning_rate(step, 901, 0.0) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(TrainConfig(data=[], out=Path("w"), schedule="linear"), 1, 0.0)


def test_eval_writes_compressai_json_bd_rates_and_plot(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    folder.mkdir()
    for n in (3, 23):
        Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB").crop((0, 0, 128, 128)).save(folder / f"{n}.png")
    out, plot = tmp_path / "rd.json", tmp_path / "rd.png"
    r = CliRunner().invoke(main, ["eval", str(folder), "--device", "cpu", "--qualities", "20,90", "--out", str(out),
                                  "--plot", str(plot), "--reference", str(ANCHORS / "published/vtm.json"),
                                  "--anchor", str(ANCHORS / "measured/jpeg_420.json")])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    for k in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"):
        assert len(res["results"][k]) == 2
    assert res["results"]["bpp"][0] < res["results"]["bpp"][1]
    assert [row["anchor"] for row in res["bd_rate"]] == ["vtm.json", "jpeg_420.json"]
    assert Image.open(plot).size[0] > 400


def test_train_only_grows_split_anchors_and_trains_nothing_else(tmp_path: Path) -> None:
    """`--extend-to complete8-cb-split --train-only anchor_tf.`: the grown layers move, every other
    tensor of the file stays bit-identical (the study's premise: same transforms, same
    distortion)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from archiver.codec.model import build_model
    from archiver.codec.registry import save_weights
    from archiver.train import train

    torch.manual_seed(0)
    start = tmp_path / "start.safetensors"
    save_weights(build_model("complete8-cb").eval(), start, {"steps": "0"})
    crops = {f"k{n}": np.asarray(Image.open(KODAK / f"kodim{n:02d}.png").convert("RGB"))[:128, :128].copy()
             for n in (3, 23)}
    out = tmp_path / "grown.safetensors"
    cfg = TrainConfig(data=[], out=out, resume=start, extend_to="complete8-cb-split", train_only=("anchor_tf.",),
                      steps=3, batch=2, crop=64, lr=1e-2, warmup=0, threads=1, device="cpu")
    train(cfg, sampler=CropSampler.from_arrays(crops, 64, seed=1))
    before, after = load_file(str(start)), load_file(str(out))
    grown = [k for k in after if k.startswith("anchor_tf.")]
    assert grown and all(k not in before for k in grown)
    assert any(float(after[k].abs().max()) > 0 for k in grown if k.endswith("out.weight"))  # it learnt
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen tensor changed"
    with pytest.raises(ValueError, match="no parameter"):
        train(TrainConfig(data=[], out=tmp_path / "x.safetensors", resume=start, train_only=("nothing.",), steps=1,
                          batch=1, crop=64, threads=1, device="cpu"), sampler=CropSampler.from_arrays(crops, 64, seed=1))
