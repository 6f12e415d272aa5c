"""Kernel cosine similarity and similarity pruning with weight folding (capslib.pruning.similarity).

Exactness claims checked on a tiny eval-mode CapsNet:
* duplicate channel (same kernel, bias, BN params/stats) in conv1/conv2/conv3:
  fold + remove leaves the class capsules unchanged (1e-5), both in the
  zeroed original-size model and in a smaller model sliced by hand;
* a positive BN scale ratio (channel j = r · channel i) is folded exactly with fold_bn=True;
* a zeroed PrimaryCaps capsule type is the same network as one sliced away.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from capslib.engine.config import ModelConfig
from capslib.engine.model import CapsNet
from capslib.pruning.similarity import (
                                        LAYER_NAMES,
                                        capsule_type_kernels,
                                        effective_kernels,
                                        kernel_similarity,
                                        layer_similarities,
                                        min_cosine_distance,
                                        min_cosine_distances,
                                        similarity_plan,
                                        similarity_prune_layer,
                                        )

TOL = 1e-5
WIDTHS = (4, 6, 8)  # conv1..conv3; PrimaryCaps has C·D = 3·2 = 6 channels
C, D = 3, 2


def tiny_model(seed: int = 0) -> CapsNet:
    """Eval-mode CapsNet with random, non-trivial BN parameters and running statistics."""
    torch.manual_seed(seed)
    cfg = ModelConfig(C=C, D=D, I=0, in_channels=1, image_size=12, num_classes=3, class_dim=4,
                      backbone_widths=WIDTHS, routing_iters=2)
    model = CapsNet(cfg)
    with torch.no_grad():
        for layer in model.backbone:
            n = layer.bn.num_features
            layer.bn.weight.copy_(torch.randn(n))  # some gammas negative
            layer.bn.bias.copy_(torch.randn(n) * 0.3)
            layer.bn.running_mean.copy_(torch.randn(n) * 0.2)
            layer.bn.running_var.copy_(torch.rand(n) + 0.5)
        model.classcaps.weight.mul_(30.0)  # class capsule lengths O(0.1), not O(1e-3): TOL is meaningful
    return model.eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def class_caps(model: CapsNet, x: torch.Tensor) -> torch.Tensor:
    return model(x).class_caps  # (B, N, M)


@torch.no_grad()
def duplicate_channel(model: CapsNet, name: str, src: int, dst: int, scale: float = 1.0) -> None:
    """Channel dst := scale · channel src (post-BN-ReLU), scale > 0, via BN gamma and beta."""
    layer = model.backbone[LAYER_NAMES.index(name)]
    layer.conv.weight[dst] = layer.conv.weight[src]
    layer.conv.bias[dst] = layer.conv.bias[src]
    layer.bn.running_mean[dst] = layer.bn.running_mean[src]
    layer.bn.running_var[dst] = layer.bn.running_var[src]
    layer.bn.weight[dst] = scale * layer.bn.weight[src]
    layer.bn.bias[dst] = scale * layer.bn.bias[src]


@torch.no_grad()
def sliced_model(model: CapsNet, state: dict, kept: dict[str, list[int]]) -> CapsNet:
    """A smaller CapsNet built by hand: keep ``kept`` channels of each layer (I = 0 only)."""
    cfg = model.config
    assert cfg.I == 0
    widths = tuple(len(kept[f"conv{i + 1}"]) for i in range(3))
    types = [c // cfg.D for c in kept["primary"][::cfg.D]]
    small = CapsNet(cfg.replace(backbone_widths=widths, C=len(types))).eval()
    prev = list(range(cfg.in_channels))
    for i, layer in enumerate(small.backbone):
        k, p = kept[f"conv{i + 1}"], f"backbone.{i}."
        layer.conv.weight.copy_(state[p + "0.weight"][k][:, prev])
        layer.conv.bias.copy_(state[p + "0.bias"][k])
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(layer.bn, attr).copy_(state[p + "1." + attr][k])
        prev = k
    small.primary.conv.weight.copy_(state["primary.conv.weight"][kept["primary"]][:, prev])
    small.primary.conv.bias.copy_(state["primary.conv.bias"][kept["primary"]])
    w = state["classcaps.weight"]  # (G·G·C, N, M, D), child k = location·C + type
    G2 = w.shape[0] // cfg.C
    small.classcaps.weight.copy_(w.view(G2, cfg.C, *w.shape[1:])[:, types].reshape(-1, *w.shape[1:]))
    return small


def numpy_cosine(w: np.ndarray) -> np.ndarray:
    """Slow reference: one dot product per pair of flattened kernels."""
    v = w.reshape(w.shape[0], -1).astype(np.float64)
    n = v.shape[0]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = v[i] @ v[j] / (np.linalg.norm(v[i]) * np.linalg.norm(v[j]))
    return out


# ----------------------------------------------------------------------------- measurement


def test_similarity_matches_numpy_reference():
    w = torch.randn(7, 3, 3, 3)
    conv = torch.nn.Conv2d(3, 7, 3)
    with torch.no_grad():
        conv.weight.copy_(w)
    ref = numpy_cosine(w.numpy())
    assert np.allclose(kernel_similarity(w).numpy(), ref, atol=1e-12)
    assert np.allclose(kernel_similarity(conv).numpy(), ref, atol=1e-12)


def test_effective_kernels_match_bn_folding_reference():
    model = tiny_model()
    layer = model.backbone[1]
    w = layer.conv.weight.detach().double().numpy().reshape(6, -1)
    b = layer.conv.bias.detach().double().numpy()
    g, beta, mu, var = (t.detach().double().numpy() for t in
                        (layer.bn.weight, layer.bn.bias, layer.bn.running_mean, layer.bn.running_var))
    s = g / np.sqrt(var + layer.bn.eps)
    ref = np.concatenate([w * s[:, None], ((b - mu) * s + beta)[:, None]], axis=1)
    v = effective_kernels(layer.conv, layer.bn)
    assert np.allclose(v.numpy(), ref, atol=1e-12)
    assert np.allclose(kernel_similarity(v).numpy(), numpy_cosine(ref), atol=1e-12)


def test_similarity_matrix_properties():
    sim = kernel_similarity(torch.randn(9, 4, 3, 3))
    assert sim.shape == (9, 9) and sim.dtype == torch.float64
    assert torch.equal(sim, sim.T)
    assert torch.all(sim.diagonal() == 1)
    assert sim.abs().max() <= 1.0
    assert 0 < min_cosine_distance(sim) <= 2


def test_min_distance_zero_for_duplicates_and_positive_multiples_only():
    w = torch.randn(5, 2, 3, 3)
    w[3] = w[1]
    assert min_cosine_distance(kernel_similarity(w)) == pytest.approx(0.0, abs=1e-12)
    w[3] = 2.5 * w[1]  # cosine ignores length
    assert min_cosine_distance(kernel_similarity(w)) == pytest.approx(0.0, abs=1e-12)
    w[3] = -w[1]  # anti-parallel is not redundant through a ReLU
    assert min_cosine_distance(kernel_similarity(w)) > 1e-3
    assert math.isnan(min_cosine_distance(kernel_similarity(torch.randn(1, 4))))


def test_zero_kernel_has_zero_similarity():
    w = torch.randn(3, 4)
    w[2] = 0
    sim = kernel_similarity(w)
    assert torch.all(sim[2] == 0) and not torch.isnan(sim).any()


def test_layer_similarities_names_shapes_and_bn_folding():
    model = tiny_model()
    sims = layer_similarities(model)
    assert list(sims) == list(LAYER_NAMES)
    assert [s.shape[0] for s in sims.values()] == [*WIDTHS, C * D]
    duplicate_channel(model, "conv2", 0, 3, scale=-1.0)  # same kernel, BN flips the sign
    assert min_cosine_distances(model, fold_bn=False)["conv2"] == pytest.approx(0.0, abs=1e-12)
    assert min_cosine_distances(model, fold_bn=True)["conv2"] > 1e-3
    assert capsule_type_kernels(model).shape == (C, D * (WIDTHS[2] * 9 + 1))


# ----------------------------------------------------------------------------- greedy criterion


def test_greedy_removes_a_duplicate_first():
    model = tiny_model()
    duplicate_channel(model, "conv2", 1, 4)
    kept, folded = similarity_prune_layer(model, "conv2", 1)
    removed = set(range(WIDTHS[1])) - set(kept)
    assert len(removed) == 1 and removed <= {1, 4}
    (r,) = removed
    w3 = model.backbone[2].conv.weight.detach()
    twin = 5 - r  # the other of {1, 4}
    assert torch.allclose(folded[:, twin], w3[:, 1] + w3[:, 4])
    assert torch.all(folded[:, r] == 0)


def test_prune_layer_leaves_model_untouched():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    similarity_plan(model, {"conv1": 2, "conv3": 3, "primary": D})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["conv1", "conv2", "conv3"])
@pytest.mark.parametrize("scale,fold_bn", [(1.0, True), (1.0, False), (2.5, True)])
def test_fold_of_duplicate_channel_is_exact(name, scale, fold_bn):
    model = tiny_model()
    duplicate_channel(model, name, 0, 2, scale=scale)
    x = images()
    ref = class_caps(model, x)
    plan = similarity_plan(model, {name: 1}, fold_bn=fold_bn)
    (step,) = plan.removals[name]
    assert {step.removed, step.twin} == {0, 2}
    assert step.scale == pytest.approx(scale if step.removed == 2 else 1 / scale)
    assert len(plan.kept[name]) == WIDTHS[LAYER_NAMES.index(name)] - 1
    zeroed = plan.folded_model(model)
    assert torch.allclose(class_caps(zeroed, x), ref, atol=TOL, rtol=0)
    small = sliced_model(model, plan.state_dict, plan.kept)
    assert torch.allclose(class_caps(small, x), ref, atol=TOL, rtol=0)


def test_removal_without_fold_is_detected():
    """Control: dropping the duplicate WITHOUT folding moves the output far beyond TOL."""
    model = tiny_model()
    duplicate_channel(model, "conv2", 0, 2)
    x = images()
    ref = class_caps(model, x)
    plan = similarity_plan(model, {"conv2": 1})
    state = plan.state_dict
    w_next = model.backbone[2].conv.weight.detach().clone()  # conv3, before the fold
    w_next[:, plan.removals["conv2"][0].removed] = 0
    state["backbone.2.0.weight"] = w_next  # removal, no fold
    unfolded = tiny_model()
    unfolded.load_state_dict(state)
    assert (class_caps(unfolded, x) - ref).abs().max() > 100 * TOL


def test_primary_removes_whole_capsule_types_without_folding():
    model = tiny_model()
    with torch.no_grad():  # type 2 := type 0 (same D kernels and biases)
        model.primary.conv.weight[2 * D:3 * D] = model.primary.conv.weight[0:D]
        model.primary.conv.bias[2 * D:3 * D] = model.primary.conv.bias[0:D]
    kept, folded = similarity_prune_layer(model, "primary", D)
    assert folded is None
    assert kept in ([0, 1, 2, 3], [2, 3, 4, 5])  # channels of the kept types
    with pytest.raises(ValueError, match="multiple of D"):
        similarity_prune_layer(model, "primary", 1)


def test_zeroed_plan_equals_sliced_model_for_all_layers():
    """Zeroing = removal, for a plan touching every layer (no duplicates: output changes)."""
    model = tiny_model()
    plan = similarity_plan(model, {"conv1": 1, "conv2": 2, "conv3": 3, "primary": D})
    assert [len(plan.kept[n]) for n in LAYER_NAMES] == [3, 4, 5, (C - 1) * D]
    x = images()
    zeroed = plan.folded_model(model)
    out = zeroed(x)
    for name in ("conv1", "conv2", "conv3", "primary"):
        removed = sorted(set(range(out.feature_maps[name].shape[1])) - set(plan.kept[name]))
        assert torch.all(out.feature_maps[name][:, removed] == 0)
    small = sliced_model(model, plan.state_dict, plan.kept)
    assert torch.allclose(class_caps(small, x), out.class_caps, atol=TOL, rtol=0)


def test_invalid_requests():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown conv layer"):
        similarity_plan(model, {"conv4": 1})
    with pytest.raises(ValueError, match="n_remove"):
        similarity_prune_layer(model, "conv1", WIDTHS[0])
