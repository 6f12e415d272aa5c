"""Prune plans and rebuild (capslib.pruning.prune): the §3.4 rounding rule, channel choice, capsule-group mode,
params/MACs, the zero-channel identity, save/load, and every input error. No data files, tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from capslib.engine.capsules import capsule_votes, unfold_capsules, use_fused_routing
from capslib.pruning.chip import ci_scores
from capslib.engine.config import ModelConfig, profile
from capslib.engine.model import CapsNet, count_params
from capslib.pruning.prune import (LAYERS, PrunePlan, ci_layer_scores, count_macs, mac_breakdown, make_plan,
                                   plan_from_removed, params_of, prune_count, pruned_config, rebuild)
from capslib.engine.train import load_model

MNIST = dict(in_channels=1, image_size=28)


def tiny_cfg(**kw) -> ModelConfig:
    """CapsNet[C=8, D=4]: widths 8/16/32, PrimaryCaps 32 channels, 6×6 grid."""
    base = dict(C=8, D=4, I=0, **MNIST)
    base.update(kw)
    return ModelConfig(**base)


def model_of(cfg: ModelConfig, seed: int = 0) -> CapsNet:
    """A random model with non-trivial BatchNorm running statistics, in eval mode."""
    torch.manual_seed(seed)
    m = CapsNet(cfg)
    with torch.no_grad():
        for layer in m.backbone:
            n = layer.bn.num_features
            layer.bn.running_mean.copy_(torch.randn(n) * 0.1)
            layer.bn.running_var.copy_(torch.rand(n) + 0.5)
            layer.bn.weight.copy_(torch.rand(n) + 0.5)
            layer.bn.bias.copy_(torch.rand(n) * 0.5 + 0.5)  # positive: no channel is dead by chance
            layer.bn.num_batches_tracked.fill_(17)
    return m.eval()


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def random_scores(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    widths = list(cfg.widths) + [cfg.C * cfg.D]
    return {name: rng.permutation(n).astype(float) + 1.0 for name, n in zip(LAYERS, widths)}


# ----------------------------------------------------------------------------- §3.4 rounding


def test_paper_worked_example():
    """§3.4: 12 channels, PR 0.25, D 4: ideally 3, but 4 are pruned so that 8 (a multiple of D) remain."""
    assert prune_count(12, 0.25, 4) == 4
    assert 12 - prune_count(12, 0.25, 4) == 8


@pytest.mark.parametrize("channels,pr,D,expected", [
    (12, 0.0, 4, 0),      # PR 0 prunes nothing
    (16, 0.25, 4, 4),     # already a multiple of D
    (16, 0.125, 4, 4),    # 2 -> 4
    (12, 0.01, 4, 4),     # any positive PR removes at least D channels
    (64, 0.375, 8, 24),   # smoke PrimaryCaps at Table 3's PR: exact
    (64, 0.6, 8, 40),     # 38.4 -> 40
    (160, 0.125, 8, 24),  # CapsNet[C=20, D=8] PrimaryCaps: 20 -> 24
    (96, 0.6, 6, 60),     # Table 1's [C=16, D=6] at PR 0.60: 57.6 -> 60
    (20, 0.6, 4, 12),     # 0.6·20/4 = 3.0000000000000004 in floating point: still 12, not 16
    (40, 0.5, 8, 24),     # a width that is not a multiple of D: 20 -> 24, 16 kept
    (3, 0.5, 4, 0),       # fewer channels than D: the layer is skipped
    (4, 0.5, 4, 4),       # exactly D channels: pruned (and a plan refuses the empty layer)
])
def test_prune_count_rounds_up_to_multiple_of_D(channels, pr, D, expected):
    got = prune_count(channels, pr, D)
    assert got == expected
    assert got % D == 0


@pytest.mark.parametrize("pr", [-0.1, 1.0, 1.5, float("nan"), True])
def test_bad_ratio_is_refused(pr):
    with pytest.raises(ValueError, match=r"PR must be in \[0, 1\)"):
        prune_count(16, pr, 4)
    cfg = tiny_cfg()
    with pytest.raises(ValueError, match=r"PR must be in \[0, 1\)"):
        make_plan(cfg, random_scores(cfg), pr)


# ----------------------------------------------------------------------------- plans


def test_plan_removes_the_lowest_ci_channels():
    cfg = tiny_cfg()
    scores = random_scores(cfg, seed=3)
    plan = make_plan(cfg, scores, 0.25)
    expected_counts = {"conv1": 4, "conv2": 4, "conv3": 8, "primary": 8}
    for lp in plan.layers:
        s = scores[lp.name]
        k = expected_counts[lp.name]
        assert lp.removed == tuple(sorted(np.argsort(s)[:k].tolist()))
        assert max(s[list(lp.removed)]) < min(s[list(lp.kept)])  # every removed score is below every kept one
        assert lp.channels_after == lp.channels_before - k == len(lp.kept)
    assert plan.after.backbone_widths == (4, 12, 24)
    assert (plan.C_before, plan.C_after) == (8, 6)
    assert plan.after.I == cfg.I and plan.mode == "channel"


def test_ties_go_to_the_lower_index():
    cfg = tiny_cfg()
    scores = {name: np.zeros(n) for name, n in zip(LAYERS, list(cfg.widths) + [32])}
    plan = make_plan(cfg, scores, 0.25)
    assert plan.layer("conv1").removed == (0, 1, 2, 3)
    assert plan.layer("primary").removed == tuple(range(8))


def test_capsule_mode_drops_whole_types_by_summed_ci():
    cfg = tiny_cfg()
    s = np.full(32, 10.0)
    s[20:24] = 1.0  # type 5 (channels 20-23)
    s[8:12] = 1.5   # type 2 (channels 8-11)
    s[[1, 3, 6, 11, 16, 21, 26, 31]] = 0.0  # the 8 lowest channels, spread over 7 types
    # type sums: type 5 = 3, type 2 = 4.5, type 0 = 20, every other type >= 30
    scores = {**random_scores(cfg), "primary": s}
    caps = make_plan(cfg, scores, 0.25, mode="capsule")
    assert caps.layer("primary").removed == tuple(range(8, 12)) + tuple(range(20, 24))
    assert caps.kept_types == (0, 1, 3, 4, 6, 7)
    assert caps.C_after == 6
    chan = make_plan(cfg, scores, 0.25, mode="channel")  # the same scores, channel by channel
    assert chan.layer("primary").removed == (1, 3, 6, 11, 16, 21, 26, 31)
    assert chan.kept_types is None  # partial types removed: the kept channels are regrouped
    assert caps.layer("conv3").removed == chan.layer("conv3").removed  # backbone: channel-wise in both modes


def test_plan_params_and_macs_match_the_rebuilt_model():
    cfg = tiny_cfg(I=1)
    model = model_of(cfg)
    plan = make_plan(model, random_scores(cfg), 0.375)
    new = rebuild(model, plan)
    assert plan.params_before == count_params(model)
    assert plan.params_after == count_params(new) < plan.params_before
    assert plan.macs_after == count_macs(new.config) < plan.macs_before == count_macs(cfg)
    assert new.config == plan.after
    # another I: params of the config with that I
    deeper = rebuild(model, plan, I=3)
    assert deeper.config.I == 3 and len(deeper.intermediate) == 3
    assert count_params(deeper) == params_of(pruned_config(plan, I=3))


@pytest.mark.parametrize("cfg", [tiny_cfg(I=2), tiny_cfg(C=6, D=6, I=1, routing_iters=2),
                                 ModelConfig(C=4, D=8, I=0, in_channels=3, image_size=32)])
def test_count_macs_equals_the_flop_counter(cfg):
    """Analytic MACs are half the FLOPs torch counts for the convs and matmuls of one image (on the
    PyTorch routing path: FlopCounterMode cannot see inside the fused CPU kernel)."""
    model = use_fused_routing(CapsNet(cfg).eval(), False)
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    assert count_macs(cfg) * 2 * 3 == fc.get_total_flops()
    per_layer = mac_breakdown(cfg)
    assert list(per_layer) == ["conv1", "conv2", "conv3", "primary"] + [f"inter{i + 1}" for i in range(cfg.I)] + ["class"]
    flops = fc.get_flop_counts()
    assert per_layer["conv1"] * 6 == sum(flops["CapsNet.backbone.0"].values())
    assert per_layer["class"] * 6 == sum(flops["CapsNet.classcaps"].values())


def test_layer_with_fewer_than_D_channels_is_skipped():
    cfg = tiny_cfg(backbone_widths=(3, 16, 32))
    plan = make_plan(cfg, random_scores(cfg), 0.5)
    conv1 = plan.layer("conv1")
    assert conv1.skipped and conv1.removed == () and conv1.channels_after == 3
    assert plan.layer("conv2").channels_after == 8
    with pytest.raises(ValueError, match="fewer than D=4: such layers are never pruned"):
        plan_from_removed(cfg, {"conv1": [0]})


def test_pr_zero_keeps_everything():
    cfg = tiny_cfg(I=1)
    model = model_of(cfg)
    plan = make_plan(model, random_scores(cfg), 0.0)
    assert all(lp.removed == () for lp in plan.layers)
    assert plan.params_after == plan.params_before and plan.macs_after == plan.macs_before
    new = rebuild(model, plan, slice_capsule_weights=True)  # no type removed: the same model
    x = images()
    with torch.no_grad():
        assert torch.allclose(new(x).class_caps, model(x).class_caps, atol=1e-6)


def test_plan_is_readable_and_round_trips():
    cfg = tiny_cfg()
    plan = make_plan(cfg, random_scores(cfg), 0.25, estimator="per_image")
    text = str(plan)
    assert "PR=0.25" in text and "CapsNet[C=8] -> CapsNet[C=6]" in text and "primary" in text
    assert f"{plan.params_after:,}" in text
    frame = plan.to_frame()
    assert list(frame["layer"]) == ["conv1", "conv2", "conv3", "primary", "types C", "params", "MACs/image"]
    assert list(frame["after"][:4]) == [4, 12, 24, 24]
    again = PrunePlan.from_json(plan.to_json())
    assert again == plan
    assert again.layer("conv2").scores == tuple(random_scores(cfg)["conv2"])


# ----------------------------------------------------------------------------- CHIP scores


def test_ci_layer_scores_reads_post_relu_and_pre_squash_maps():
    cfg = tiny_cfg()
    model = model_of(cfg)
    batches = [images(4, seed=s) for s in (1, 2)]
    for estimator in ("per_image", "batch_mean"):
        scores = ci_layer_scores(model, [(x, None) for x in batches], estimator=estimator)
        assert list(scores) == list(LAYERS)
        with torch.no_grad():
            outs = [model(x).feature_maps for x in batches]
        for name in LAYERS:
            expected = ci_scores([o[name] for o in outs], estimator=estimator)
            assert torch.allclose(scores[name], expected, rtol=1e-10)
    assert not model.training  # mode restored
    assert (outs[0]["conv1"] >= 0).all() and (outs[0]["primary"] < 0).any()  # post-ReLU vs pre-squash maps


# ----------------------------------------------------------------------------- rebuild


ZEROED = {"conv1": [0, 5, 6, 7], "conv2": [1, 2, 9, 15], "conv3": [0, 3, 4, 10, 11, 20, 29, 31],
          "primary": [1, 6, 9, 14, 20, 23, 27, 30]}


def zero_channels(model: CapsNet, channels: dict[str, list[int]]) -> None:
    """Make channels exactly zero: conv weight and bias, and BatchNorm weight and bias (post-ReLU map 0)."""
    with torch.no_grad():
        for i in range(3):
            idx = channels.get(f"conv{i + 1}", [])
            layer = model.backbone[i]
            for t in (layer.conv.weight, layer.conv.bias, layer.bn.weight, layer.bn.bias):
                t[idx] = 0
        idx = channels.get("primary", [])
        model.primary.conv.weight[idx] = 0
        model.primary.conv.bias[idx] = 0


def test_pruning_zero_channels_keeps_every_kept_output():
    """Prune exactly the channels that are zero: the kept channels' maps do not change (eval mode)."""
    cfg = tiny_cfg(I=1)
    model = model_of(cfg)
    zero_channels(model, ZEROED)
    x = images(8)
    # CHIP gives a zero channel CI exactly 0, so the CI plan at PR 0.25 picks exactly these channels
    plan = make_plan(model, ci_layer_scores(model, [x]), 0.25)
    for name in LAYERS:
        assert plan.layer(name).removed == tuple(ZEROED[name]), name
    new = rebuild(model, plan).eval()
    with torch.no_grad():
        old_maps, new_maps = model(x).feature_maps, new(x).feature_maps
    for name in LAYERS:
        kept = list(plan.layer(name).kept)
        assert new_maps[name].shape[1] == len(kept)
        torch.testing.assert_close(new_maps[name], old_maps[name][:, kept], atol=1e-6, rtol=0)
    # BatchNorm statistics were copied, not reset
    bn_old, bn_new = model.backbone[1].bn, new.backbone[1].bn
    kept = list(plan.layer("conv2").kept)
    assert torch.equal(bn_new.running_var, bn_old.running_var[kept])
    assert torch.equal(bn_new.running_mean, bn_old.running_mean[kept])
    assert int(bn_new.num_batches_tracked) == 17


def test_channel_mode_regroups_kept_channels_into_capsules():
    cfg = tiny_cfg()
    model = model_of(cfg)
    plan = plan_from_removed(cfg, {"primary": ZEROED["primary"]})
    new = rebuild(model, plan)
    x = images(2)
    with torch.no_grad():
        pre_old, caps_new = model(x).feature_maps["primary"], new(x).capsules["primary"]  # (B, 32, 6, 6), (B, 6, 6, 6, 4)
    kept = plan.layer("primary").kept
    for k in (0, 5, 13, 23):  # kept channel k -> capsule k // D, dim k % D
        from capslib.engine.routing import squash
        expected = squash(pre_old[:, list(kept)].view(2, 6, 4, 6, 6).permute(0, 3, 4, 1, 2))
        torch.testing.assert_close(caps_new[..., k // 4, k % 4], expected[..., k // 4, k % 4])


def test_capsule_mode_with_sliced_weights_keeps_the_whole_output():
    """Zero whole PrimaryCaps types, drop them, slice ClassCaps: the class capsules are unchanged (I=0),
    because a zero capsule's votes are zero and routing treats each child independently."""
    cfg = tiny_cfg(I=0)
    model = model_of(cfg)
    dead_types = [2, 5]
    zero_channels(model, {**ZEROED, "primary": [t * 4 + d for t in dead_types for d in range(4)]})
    x = images(4)
    plan = make_plan(model, ci_layer_scores(model, [x]), 0.25, mode="capsule")
    assert plan.kept_types == (0, 1, 3, 4, 6, 7)
    new = rebuild(model, plan, slice_capsule_weights=True)
    with torch.no_grad():
        torch.testing.assert_close(new(x).class_caps, model(x).class_caps, atol=1e-6, rtol=0)
        fresh = rebuild(model, plan)  # default: a new ClassCaps, so the outputs differ
        assert not torch.allclose(fresh(x).class_caps, model(x).class_caps, atol=1e-3)


def test_sliced_convcaps_weights_index_type_in_and_type_out():
    cfg = tiny_cfg(I=2)
    model = model_of(cfg)
    plan = plan_from_removed(cfg, {"primary": list(range(4, 8)) + list(range(24, 28))}, mode="capsule")  # types 1, 6
    new = rebuild(model, plan, slice_capsule_weights=True)
    kt = plan.kept_types
    assert kt == (0, 2, 3, 4, 5, 7)
    w_old = model.intermediate[1].weight.view(9, 8, 8, 4, 4)  # (kernel_pos, type_in, type_out, D, D)
    w_new = new.intermediate[1].weight.view(9, 6, 6, 4, 4)
    for p, a, b in [(0, 0, 0), (4, 1, 5), (8, 5, 2), (3, 3, 4)]:
        assert torch.equal(w_new[p, a, b], w_old[p, kt[a], kt[b]])
    c_old = model.classcaps.weight.view(36, 8, 10, 16, 4)  # (location, type, N, M, D)
    c_new = new.classcaps.weight.view(36, 6, 10, 16, 4)
    assert torch.equal(c_new[17, 4], c_old[17, kt[4]])
    # functionally: the first IntermediateCaps' votes of kept children for kept parents are unchanged
    x = images(2)
    with torch.no_grad():
        win_old, _, _ = unfold_capsules(model(x).capsules["primary"], 3, 1, 1)  # (B·36, 9·8, 4)
        win_new, _, _ = unfold_capsules(new(x).capsules["primary"], 3, 1, 1)  # (B·36, 9·6, 4)
        votes_old = capsule_votes(win_old, model.intermediate[0].weight)  # (B·36, 8, 72, 4)
        votes_new = capsule_votes(win_new, new.intermediate[0].weight)  # (B·36, 6, 54, 4)
    children = [p * 8 + t for p in range(9) for t in kt]  # child index = kernel_pos·C + type
    torch.testing.assert_close(votes_new, votes_old[:, list(kt)][:, :, children], atol=1e-6, rtol=0)


def test_slicing_needs_whole_types_and_the_same_depth():
    cfg = tiny_cfg(I=1)
    model = model_of(cfg)
    chan = plan_from_removed(cfg, {"primary": ZEROED["primary"]})
    with pytest.raises(ValueError, match="regroups the kept channels"):
        rebuild(model, chan, slice_capsule_weights=True)
    caps = plan_from_removed(cfg, {"primary": [0, 1, 2, 3]}, mode="capsule")
    with pytest.raises(ValueError, match="I must stay 1"):
        rebuild(model, caps, I=2, slice_capsule_weights=True)
    # a channel-mode plan that happens to remove whole types can be sliced
    whole = plan_from_removed(cfg, {"primary": [4, 5, 6, 7]})
    assert whole.kept_types == (0, 2, 3, 4, 5, 6, 7)
    rebuild(model, whole, slice_capsule_weights=True)


def test_rebuild_refuses_a_plan_for_another_model():
    plan = make_plan(tiny_cfg(), random_scores(tiny_cfg()), 0.25)
    with pytest.raises(ValueError, match="another model config"):
        rebuild(model_of(tiny_cfg(C=6)), plan)


def test_rebuild_leaves_the_global_rng_alone_and_is_seeded():
    cfg = tiny_cfg(I=1)
    model = model_of(cfg)
    plan = make_plan(cfg, random_scores(cfg), 0.25)
    torch.manual_seed(123)
    a = rebuild(model, plan, seed=5)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = rebuild(model, plan, seed=5)
    assert torch.equal(torch.rand(1), after)
    assert torch.equal(a.classcaps.weight, b.classcaps.weight)
    assert not torch.equal(a.classcaps.weight, rebuild(model, plan, seed=6).classcaps.weight)


def test_pruned_model_saves_and_loads_like_any_capsnet(tmp_path):
    """state_dict + RunConfig JSON -> capslib.engine.train.load_model -> identical outputs."""
    run_cfg = profile("smoke", C=8, D=4, I=1)
    model = model_of(run_cfg.model)
    plan = make_plan(model, random_scores(run_cfg.model), 0.25)
    new = rebuild(model, plan, I=2).eval()
    pruned_run = run_cfg.replace(model=new.config)
    torch.save(new.state_dict(), tmp_path / "best.pt")
    (tmp_path / "config.json").write_text(pruned_run.to_json())
    del model  # nothing of the original is needed
    loaded = load_model((tmp_path / "config.json").read_text(), tmp_path / "best.pt").eval()
    assert loaded.config == new.config and loaded.config.backbone_widths == (4, 12, 24)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["C"] == 6
    x = images(3)
    with torch.no_grad():
        assert torch.equal(loaded(x).class_caps, new(x).class_caps)


# ----------------------------------------------------------------------------- errors


def test_plan_leaving_fewer_than_D_channels_is_refused():
    cfg = tiny_cfg(C=4, D=4)  # widths 4/8/16: conv1 has exactly D channels
    with pytest.raises(ValueError, match=r"layer 'conv1' would keep 0 of 4 channels at PR=0.25.*fewer than D=4"):
        make_plan(cfg, random_scores(cfg), 0.25)
    with pytest.raises(ValueError, match=r"layer 'conv2' would keep 2 of 8 channels, fewer than D=4"):
        plan_from_removed(cfg, {"conv2": range(6)})
    big = tiny_cfg()
    with pytest.raises(ValueError, match=r"'conv1' would keep 0 of 8"):
        make_plan(big, random_scores(big), 0.9)


def test_non_integer_capsule_count_is_refused():
    with pytest.raises(ValueError, match=r"PrimaryCaps would keep 29 channels.*C' = 29/4 = 7.25"):
        plan_from_removed(tiny_cfg(), {"primary": [0, 7, 30]})


def test_other_bad_inputs():
    cfg = tiny_cfg()
    scores = random_scores(cfg)
    with pytest.raises(ValueError, match="prune mode must be one of"):
        make_plan(cfg, scores, 0.25, mode="types")
    with pytest.raises(ValueError, match=r"layer 'conv2' has 16 channels but got scores of shape \(15,\)"):
        make_plan(cfg, {**scores, "conv2": scores["conv2"][:15]}, 0.25)
    with pytest.raises(ValueError, match="no CI scores for layer 'primary'"):
        make_plan(cfg, {k: v for k, v in scores.items() if k != "primary"}, 0.25)
    with pytest.raises(ValueError, match="non-finite"):
        make_plan(cfg, {**scores, "conv1": np.full(8, np.nan)}, 0.25)
    with pytest.raises(ValueError, match="capsule mode needs capsule_layout='channel'"):
        make_plan(tiny_cfg(capsule_layout="reshape"), scores, 0.25, mode="capsule")
    with pytest.raises(ValueError, match="capsule mode must remove whole PrimaryCaps types"):
        plan_from_removed(cfg, {"primary": [0, 1, 2, 5]}, mode="capsule")
    with pytest.raises(ValueError, match=r"channels 0..7; cannot remove \[8\]"):
        plan_from_removed(cfg, {"conv1": [8]})
    with pytest.raises(ValueError, match="repeated"):
        plan_from_removed(cfg, {"conv1": [1, 1]})
    with pytest.raises(ValueError, match="unknown layer"):
        plan_from_removed(cfg, {"conv4": [1]})
    with pytest.raises(TypeError, match="CapsNet or a ModelConfig"):
        make_plan("CapsNet[C=8]", scores, 0.25)


def test_sliced_capsule_layers_keep_the_kept_types_squash_biases():
    """With ModelConfig.squash_bias, slicing copies each ConvCaps bias of the kept output types and the
    class capsules' bias, instead of restarting them at the initial value."""
    cfg = tiny_cfg(I=2, squash_bias=0.1)
    model = model_of(cfg)
    with torch.no_grad():
        for layer in [*model.intermediate, model.classcaps]:
            layer.bias.normal_()  # as if trained: no longer 0.1 everywhere
    plan = plan_from_removed(cfg, {"primary": list(range(4, 8)) + list(range(24, 28))}, mode="capsule")  # types 1, 6
    new = rebuild(model, plan, slice_capsule_weights=True)
    kt = list(plan.kept_types)
    for lo, ln in zip(model.intermediate, new.intermediate):
        assert torch.equal(ln.bias, lo.bias[kt])  # (C', D)
    assert torch.equal(new.classcaps.bias, model.classcaps.bias)
    fresh = rebuild(model, plan)  # re-initialised capsule layers start at the configured value
    assert torch.all(fresh.intermediate[0].bias == 0.1)
