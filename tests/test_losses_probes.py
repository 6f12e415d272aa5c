"""Margin and CCM losses; dead-capsule probes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from capslib.engine.config import ModelConfig
from capslib.engine.losses import ccm_loss, channel_correlation, margin_loss, total_loss
from capslib.engine.model import CapsNet
from capslib.engine.probes import ActivationProbe, probe_model


def test_margin_loss_values():
    lengths = torch.tensor([[0.95, 0.05, 0.5], [0.2, 0.3, 0.0]])
    y = torch.tensor([0, 1])
    # row 0: pos max(0, .9-.95)=0; neg: .5*(0 + max(0,.5-.1)^2)=.5*.16=.08
    # row 1: pos (.9-.3)^2=.36; neg: .5*((.2-.1)^2 + 0)=.005
    assert margin_loss(lengths, y).item() == pytest.approx((0.08 + 0.365) / 2)


def test_correlation_matches_numpy_and_ccm_definition():
    torch.manual_seed(0)
    f = torch.randn(4, 5, 6, 6)
    got = channel_correlation(f)
    want = np.corrcoef(f.mean(0).flatten(1).numpy())
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    assert ccm_loss(f).item() == pytest.approx(np.abs(want).mean(), abs=1e-5)  # diagonal included


def test_ccm_constant_channel_no_nan():
    f = torch.randn(3, 4, 5, 5, requires_grad=True)
    g = torch.cat([f[:, :2], torch.full((3, 2, 5, 5), 2.5)], dim=1)  # two constant channels (dead ReLU)
    loss = ccm_loss(g)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()
    corr = channel_correlation(g)
    assert corr[2, 2] == 0 and corr[0, 3] == 0


def test_ccm_gradient_default_vs_detached():
    torch.manual_seed(1)
    fmap = torch.randn(4, 6, 5, 5, requires_grad=True)
    lengths = torch.rand(4, 10, requires_grad=True)
    y = torch.randint(0, 10, (4,))
    total, margin, ccm = total_loss(lengths, y, [fmap], alpha=0.01)
    total.backward()
    assert fmap.grad.abs().sum() > 0
    fmap.grad = None
    total, margin, ccm = total_loss(lengths, y, [fmap], alpha=0.01, ccm_detached=True)
    total.backward()
    assert fmap.grad is None or fmap.grad.abs().sum() == 0
    assert ccm > 0  # the term is still computed and reported


def test_ccm_gradient_reaches_backbone_weights_only_when_attached():
    torch.manual_seed(2)
    model = CapsNet(ModelConfig(C=4, D=4))
    out = model(torch.randn(4, 1, 28, 28))
    ccm = sum(ccm_loss(f) for f in out.feature_maps.values())
    (g,) = torch.autograd.grad(ccm, model.backbone[0].conv.weight)
    assert g.abs().sum() > 0


def test_probe_definitions_on_constructed_capsules():
    # layer with 3 types, D=2: type0 always (1,0): alive under both;
    # type1 alternates (+1,0)/(-1,0): mean vector 0 -> dead under paper 000, alive under 002;
    # type2 is tiny (0.005): dead under both.
    u = torch.zeros(4, 2, 2, 3, 2)
    u[..., 0, 0] = 1.0
    u[0::2, ..., 1, 0] = 1.0
    u[1::2, ..., 1, 0] = -1.0
    u[..., 2, 1] = 0.005
    p = ActivationProbe()
    p.update({"L": u[:2]})
    p.update({"L": u[2:]})
    r = p.result()
    np.testing.assert_allclose(r.activations["paper000"]["L"], [1.0, 0.0, 0.005], atol=1e-12)
    np.testing.assert_allclose(r.activations["paper002"]["L"], [1.0, 1.0, 0.005], atol=1e-12)
    assert r.dead_fraction("paper000") == {"L": pytest.approx(2 / 3)}
    assert r.dead_fraction("paper002") == {"L": pytest.approx(1 / 3)}
    assert r.matrix().shape == (1, 3)


def test_probing_changes_neither_outputs_nor_training():
    torch.manual_seed(3)
    model = CapsNet(ModelConfig(C=4, D=4, I=1))
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    model.eval()
    before = model(x).class_caps.detach()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = probe_model(model, [(x, y)])
    assert model.training  # mode restored
    assert set(res.layers) == {"primary", "inter1", "class"}
    assert res.matrix().shape == (3, 10)  # class layer has 10 types, others 4 (NaN-padded)
    for k, v in model.state_dict().items():  # BN running stats untouched
        assert torch.equal(v, state[k]), k
    model.eval()
    torch.testing.assert_close(model(x).class_caps.detach(), before)
