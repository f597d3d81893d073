"""Training on the symbols RDOQ writes (``archiver train --rdo-strength``, issue 24): the training
quantiser must make effort 1's choice (round toward the cheaper integer when the distortion
weight is small, plain rounding when it is large), keep straight-through gradients, and leave a
forward pass without it exactly as it was."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from archiver.codec.registry import load_weights_file, resolve
from archiver.train import rd_loss

from shared_paths import SHARED  # noqa: E402

CROP = SHARED / "data" / "train" / "shard-00"


def _model():
    model, _ = load_weights_file(resolve("compact-v12").file, "cpu")
    return model


def test_the_training_quantiser_chooses_as_rdoq_and_passes_gradients_straight() -> None:
    m = _model()
    r = torch.tensor([0.6, -0.6, 0.6, 2.4], requires_grad=True)
    scale = torch.tensor([0.2, 0.2, 8.0, 8.0])
    # cheap distortion: a symbol of 1 at scale 0.2 costs many bits, so 0 wins; at scale 8 the
    # two integers cost about the same and the nearer one wins
    small = m._train_quantize(r, scale, torch.full((4,), 0.5))
    assert small.tolist() == [0.0, 0.0, 1.0, 2.0]
    large = m._train_quantize(r, scale, torch.full((4,), 1e6))
    assert large.tolist() == [1.0, -1.0, 1.0, 2.0]  # the limit is plain rounding
    assert m._train_quantize(r, scale, None).tolist() == [1.0, -1.0, 1.0, 2.0]
    small.sum().backward()
    assert r.grad is not None and torch.equal(r.grad, torch.ones(4))


def test_forward_with_rdoq_symbols_trades_distortion_for_rate_and_trains() -> None:
    m = _model()
    m.train().requires_grad_(True)  # loaded for inference: frozen
    path = sorted(p for p in CROP.iterdir() if p.suffix.lower() in (".jpg", ".png"))[0]
    a = np.asarray(Image.open(path).convert("RGB"))[:128, :128]
    x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255.0
    q = torch.tensor([40.0])
    out = {}
    for strength in (0.0, 1e9, 1.5):
        m.train_rdo_strength = strength
        torch.manual_seed(0)  # the likelihood's training noise
        out[strength] = rd_loss(m, x, q)
    # an infinite weight is plain rounding: the same pass, to the last bit
    assert torch.equal(out[0.0]["mse"], out[1e9]["mse"]) and torch.equal(out[0.0]["bpp"], out[1e9]["bpp"])
    # RDOQ's symbols: more distortion (toward zero where rate pays), and the pass still trains
    assert out[1.5]["mse"] > out[0.0]["mse"]
    out[1.5]["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.g_s.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.lrp_tf.parameters())
