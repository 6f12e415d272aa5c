"""CapsNet shapes and parameter counts, capsule grouping, config validation."""
from __future__ import annotations

import json

import pytest
import torch

from capslib.engine.capsules import PrimaryCaps
from capslib.engine.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, profile
from capslib.engine.model import CapsNet, count_params
from capslib.engine.routing import squash


def expected_params(C, D, I, cin, size, N=10, M=16):
    """Parameter count written out from the paper's architecture (§3.1)."""
    w = (C * D // 4, C * D // 2, C * D)
    chans = (cin,) + w
    n = sum(9 * chans[i] * chans[i + 1] + chans[i + 1] + 2 * chans[i + 1] for i in range(3))  # conv + bias + BN
    n += 9 * w[2] * C * D + C * D  # PrimaryCaps conv
    s = size
    for k, st, p in ((3, 1, 1), (3, 2, 1), (3, 1, 1), (3, 2, 0)):
        s = (s + 2 * p - k) // st + 1
    n += I * 9 * C * C * D * D  # one D×D matrix per (kernel position, input type, output type)
    n += s * s * C * N * M * D  # ClassCaps: one M×D matrix per (input capsule, class)
    return n, s


@pytest.mark.parametrize("C,D,I", [(20, 8, 0), (20, 8, 7), (16, 12, 0)])
@pytest.mark.parametrize("cin,size", [(3, 32), (1, 28)])
def test_paper_configs_shapes_and_params(C, D, I, cin, size):
    cfg = ModelConfig(C=C, D=D, I=I, in_channels=cin, image_size=size)
    model = CapsNet(cfg)
    n, grid = expected_params(C, D, I, cin, size)
    assert grid == (7 if size == 32 else 6) == cfg.grid
    assert count_params(model) == n
    out = model(torch.randn(2, cin, size, size))
    assert out.class_caps.shape == (2, 10, 16)
    assert out.lengths.shape == (2, 10)
    assert list(out.capsules) == ["primary"] + [f"inter{i + 1}" for i in range(I)] + ["class"]
    for name in out.capsules:
        if name != "class":
            assert out.capsules[name].shape == (2, grid, grid, C, D)
    assert out.capsules["class"].shape == (2, 1, 1, 10, 16)
    assert out.feature_maps["conv3"].shape[1] == C * D
    assert out.feature_maps["primary"].shape == (2, C * D, grid, grid)
    assert (out.lengths >= 0).all() and (out.lengths < 1).all()


def test_paper_param_count_c20_d8_cifar():
    # CapsNet[C=20, D=8, I=0] on CIFAR-10: 1,630,880 parameters (1.25 M of them in ClassCaps).
    assert count_params(CapsNet(ModelConfig(C=20, D=8, I=0, in_channels=3, image_size=32))) == 1_630_880


def test_deep_network_i12_runs_and_backprops():
    cfg = ModelConfig(C=4, D=4, I=12)
    model = CapsNet(cfg)
    out = model(torch.randn(2, 1, 28, 28))
    out.lengths.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert len(out.capsules) == 14


def test_zero_input_no_nan():
    model = CapsNet(ModelConfig(C=4, D=4, I=2)).eval()
    out = model(torch.zeros(2, 1, 28, 28))
    assert torch.isfinite(out.class_caps).all()
    assert all(torch.isfinite(u).all() for u in out.capsules.values())


def test_channel_layout_groups_channels_not_spatial_neighbours():
    B, C, D, H, W = 2, 3, 4, 5, 5
    pc = PrimaryCaps(8, C, D, layout="channel")
    # encode (channel, y, x) in the value, so any mix-up is visible
    ch = torch.arange(C * D).view(1, C * D, 1, 1)
    yy = torch.arange(H).view(1, 1, H, 1)
    xx = torch.arange(W).view(1, 1, 1, W)
    pre = (ch * 10000 + yy * 100 + xx).float().expand(B, -1, -1, -1).contiguous()
    caps = pc.group(pre)  # (B, H, W, C, D)
    assert caps.shape == (B, H, W, C, D)
    for t in range(C):
        for d in range(D):
            for y in range(H):
                for x in range(W):
                    assert caps[0, y, x, t, d] == pre[0, t * D + d, y, x]
    # one capsule's D entries share one location and differ only in channel
    cap = caps[1, 2, 3, 1]
    assert torch.equal(cap % 10000, torch.full((D,), 203.0))


def test_reshape_layout_is_exactly_the_authors_plain_reshape():
    B, C, D = 2, 3, 4
    pc = PrimaryCaps(8, C, D, layout="reshape")
    x = torch.randn(B, 8, 11, 11)
    caps, pre = pc(x)
    assert torch.equal(caps.reshape(B, -1, D), squash(pre.view(B, -1, D)))  # view(B, -1, D) of NCHW
    # ... which builds capsules from spatial neighbours of one channel (the trap)
    grouped = pc.group(pre)
    torch.testing.assert_close(grouped[0, 0, 0, 0], pre[0, 0, 0, :D])


def test_model_layout_switch():
    torch.manual_seed(0)
    a = CapsNet(ModelConfig(C=4, D=4, I=1))
    b = CapsNet(ModelConfig(C=4, D=4, I=1, capsule_layout="reshape"))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(a(x).capsules["primary"], b(x).capsules["primary"])


@pytest.mark.parametrize("kwargs,words", [
    (dict(D=0), ["D", "positive"]),
    (dict(D=-3), ["D"]),
    (dict(C=0), ["C", "positive"]),
    (dict(I=-1), ["I", ">= 0"]),
    (dict(routing_iters=0), ["routing_iters"]),
    (dict(capsule_layout="nchw"), ["capsule_layout"]),
    (dict(backbone_kernels=(5, 5, 5), backbone_strides=(1, 1, 1), backbone_padding=(0, 0, 0), primary_kernel=5,
          primary_stride=1, image_size=14), ["collapses", "PrimaryCaps conv", "2x2", "kernel 5"]),
])
def test_bad_model_configs(kwargs, words):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_collapse_message_names_the_backbone_layer():
    with pytest.raises(ConfigError, match=r"backbone conv2: input 4x4, kernel 5"):
        ModelConfig(image_size=8, backbone_kernels=5, backbone_strides=1, backbone_padding=0)


def test_table4_kernel5_config_builds_on_cifar():
    cfg = RunConfig(model=ModelConfig(C=32, D=8, backbone_kernels=5, backbone_strides=1, backbone_padding=0,
                                      primary_kernel=5, primary_stride=1), data=DataConfig(dataset="cifar10"))
    assert cfg.model.grid == 16  # 32 -> 28 -> 24 -> 20 -> 16
    assert cfg.model.in_channels == 3


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(select_on="train"), dict(alpha=-0.1),
                                 dict(device="tpu")])
def test_bad_train_configs(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'"):
        DataConfig(dataset="svhn")


def test_dataset_sets_model_input():
    cfg = profile("smoke", dataset="cifar10")
    assert (cfg.model.in_channels, cfg.model.image_size, cfg.model.num_classes) == (3, 32, 10)
    assert profile("smoke").model.image_size == 28


def test_config_json_round_trip_and_hash():
    cfg = profile("smoke", C=6, D=4, I=2, alpha=0.01, backbone_widths=(8, 16, 24))
    text = cfg.to_json()
    back = RunConfig.from_json(text)
    assert back == cfg
    assert back.config_hash() == cfg.config_hash()
    assert json.loads(text)["model"]["backbone_widths"] == [8, 16, 24]
    assert profile("smoke", seed=1).config_hash() != profile("smoke").config_hash()
    assert profile("smoke", root="/elsewhere").config_hash() == profile("smoke").config_hash()
    with pytest.raises(ConfigError, match="unknown field"):
        RunConfig.from_dict({"model": {"Q": 1}})
