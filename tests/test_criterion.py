"""capslib.engine.criterion (the training signal per parameter group) and what fit logs of it."""
from __future__ import annotations

import pytest
import torch

from capslib.engine.config import profile
from capslib.engine.criterion import ADAM_EPS, gradient_signal, length_signal, parameter_groups, snapshot, step_signal
from capslib.engine.losses import margin_loss
from capslib.engine.model import CapsNet
from capslib.engine.train import fit

TINY = dict(C=4, D=4, I=2, train_size=256, val_size=256, test_size=128, batch_size=64, init_std=0.5)


def _model_and_batch(seed=0, **kw):
    cfg = profile("smoke", **{**TINY, **kw})
    torch.manual_seed(seed)
    model = CapsNet(cfg.model).train()
    x = torch.randn(16, 1, 28, 28)
    y = torch.arange(16) % 10
    return cfg, model, x, y


def test_groups_cover_every_parameter_once_in_forward_order():
    _, model, _, _ = _model_and_batch()
    groups = parameter_groups(model)
    assert list(groups) == ["backbone", "primary", "inter1", "inter2", "class"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_gradient_signal_equals_a_slow_reference():
    _, model, x, y = _model_and_batch()
    out = model(x)
    margin_loss(out.lengths, y).backward()
    lr = 1e-3
    sig = gradient_signal(model, lr)
    for name, params in parameter_groups(model).items():
        g = torch.cat([p.grad.flatten().double() for p in params])
        w = torch.cat([p.detach().flatten().double() for p in params])
        rms = w.square().mean().sqrt()
        u = [lr * abs(float(gi)) / (abs(float(gi)) + ADAM_EPS) for gi in g[:2000]]  # the formula, one by one
        assert sig[name]["grad_max"] == pytest.approx(float(g.abs().max()), rel=1e-12)
        assert sig[name]["update_max"] >= max(u) / float(rms) * (1 - 1e-9)
        assert sig[name]["update_mean"] == pytest.approx(float((lr * g.abs() / (g.abs() + ADAM_EPS)).mean() / rms),
                                                         rel=1e-9)


def test_adams_first_step_is_the_implied_update_and_zero_gradient_moves_nothing():
    _, model, x, y = _model_and_batch()
    out = model(x)
    margin_loss(out.lengths, y).backward()
    sig = gradient_signal(model, 1e-3)
    before = snapshot(model)
    torch.optim.Adam(model.parameters(), lr=1e-3).step()
    steps = step_signal(model, before)
    for name in sig:
        assert steps[name]["step_max"] == pytest.approx(sig[name]["update_max"], rel=1e-4, abs=1e-12)
        assert steps[name]["step_mean"] == pytest.approx(sig[name]["update_mean"], rel=1e-4, abs=1e-12)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    assert all(v["update_max"] == 0 and v["grad_max"] == 0 for v in gradient_signal(model, 1e-3).values())


def test_lengths_are_the_mean_capsule_lengths_per_layer():
    _, model, x, _ = _model_and_batch()
    out = model(x)
    lengths = length_signal(out)
    assert set(lengths) == {"primary", "inter1", "inter2", "class", "class_max"}
    assert lengths["class"] == pytest.approx(float(out.lengths.detach().mean()), rel=1e-6)
    assert lengths["class_max"] == pytest.approx(float(out.lengths.detach().max()), rel=1e-6)


def test_fit_logs_the_signal_each_epoch_and_stops_on_a_plateau(real_data_root):
    cfg = profile("smoke", **TINY, epochs=6, patience=1, lr=1e-2)  # lr 1e-2 overshoots: epoch 2 is worse
    result, _ = fit(cfg, progress=False)
    h = result.history
    assert 2 <= len(h) < 6
    vals = [r["val_acc"] for r in h]
    # the plateau rule, read off the history: every epoch but the last improved on all before it
    assert all(vals[i] > max(vals[:i], default=-1) for i in range(len(h) - 1)) and vals[-1] <= max(vals[:-1])
    assert result.best_epoch == len(h) - 1
    for e, rec in enumerate(h):
        sig = rec["signal"]
        assert sig["step"] == e * 4  # 256 images / 64 per batch
        assert set(sig["groups"]) == {"backbone", "primary", "inter1", "inter2", "class"}
        assert all({"grad_max", "update_max", "step_max"} <= set(v) for v in sig["groups"].values())
        assert 0 < sig["lengths"]["class"] < 1


def test_patience_is_validated_and_left_out_of_old_hashes():
    assert profile("smoke").config_hash() == profile("smoke", patience=0).config_hash()
    assert profile("smoke").config_hash() != profile("smoke", patience=3).config_hash()
    with pytest.raises(Exception, match="patience"):
        profile("smoke", patience=-1)
