"""Initialisation study (capslib.experiments.init_study): the one-forward depth-limit finder against models built per
depth, known limits, the length recurrence's pieces against closed forms, and the recurrence against
the measured length map on real Fashion-MNIST images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from capslib.engine.config import ModelConfig
from capslib.experiments.init_study import (_chi_nodes, _log_g, _logmeanexp_weights, _window_counts, build_model, depth_limit,
                                            eval_batches, gain, gradient_at, length_map, length_map_figure, length_recurrence,
                                            predicted_limit, primary_m2_maps, pruned_model_config, squash_length)
from capslib.engine.routing import squash


@pytest.fixture(scope="module")
def batch(real_data_root):
    torch.set_num_threads(1)
    return eval_batches(1, batch_size=8)[0]  # 8 real Fashion-MNIST test images


def test_limit_finder_matches_models_built_per_depth(batch):
    """The one-forward finder gives, for every I, the class lengths of CapsNet[C, D, I] built and run on
    its own (the slow obvious reference), including where they become exactly zero."""
    x, _ = batch
    cfg = ModelConfig(C=4, D=4, I=0, init_std=0.2, squash_eps=1e-4)  # near the cliff: limit 4 on this batch
    res = depth_limit(cfg, x, seed=3, I_max=6)
    for I in range(7):
        with torch.no_grad():
            lens = build_model(cfg.replace(I=I), 3).forward(x).lengths.double()  # (B, N)
        assert res.class_max[I] == pytest.approx(lens.max().item(), rel=1e-5, abs=0)
        assert res.class_zero_frac[I] == (lens == 0).double().mean().item()
    first_dead = next(I for I in range(7) if res.class_max[I] == 0)
    assert res.limit == first_dead and 2 <= res.limit <= 6
    assert all(v > 0 for v in res.class_max[:res.limit])


def test_known_limits_tiny_and_large_init(batch):
    """std 1e-20: the class votes are ~1e-19, squash gives ~1e-53 < float32's smallest subnormal, so
    even I = 0 is exactly zero, with exactly zero gradient. std 1 with C = 4, D = 8 (gain 14): lengths
    saturate near 1 at every depth, no limit up to I_max."""
    x, y = batch
    tiny = ModelConfig(C=4, D=4, I=0, init_std=1e-20)
    assert depth_limit(tiny, x, I_max=2).limit == 0
    g = gradient_at(tiny, x, y, I=0)
    assert g["primary"] == 0.0
    # float64 represents 1e-53: the same model is alive at I = 0 there
    assert depth_limit(tiny, x, I_max=0, dtype="float64").class_max[0] > 0
    big = depth_limit(ModelConfig(C=4, D=8, I=0, init_std=1.0), x, I_max=4)
    assert big.limit is None and big.max_depth is None
    assert min(big.class_max) > 0.9


def test_gradient_is_zero_at_the_limit_and_not_below(batch):
    x, y = batch
    cfg = ModelConfig(C=4, D=4, I=0, init_std=0.2, squash_eps=1e-4)
    lim = depth_limit(cfg, x, seed=3, I_max=6).limit
    at, below = gradient_at(cfg, x, y, lim, seed=3), gradient_at(cfg, x, y, lim - 1, seed=3)
    assert at["primary"] == 0.0 and at["inter1"] == 0.0
    assert below["primary"] > 0.0


def test_log_squash_length_is_squash():
    """_log_g is log of the squash length, also far below float range; squash_length is the library's squash."""
    s = torch.randn(1000, 8, dtype=torch.float64) * torch.logspace(-6, 1, 1000, dtype=torch.float64)[:, None]
    x = torch.linalg.vector_norm(s, dim=-1).numpy()
    ref = torch.linalg.vector_norm(squash(s, eps=1e-8), dim=-1).numpy()
    np.testing.assert_allclose(squash_length(x, 1e-8), ref, rtol=1e-12)
    np.testing.assert_allclose(np.exp(_log_g(np.log(x), 1e-8)), ref, rtol=1e-12)
    # cubic regime, analytically: g(x) = x³/√ε for x ≪ √ε, at 1e-200 where floats cannot follow
    assert _log_g(np.log(1e-200), 1e-8) == pytest.approx(3 * math.log(1e-200) - 0.5 * math.log(1e-8), rel=1e-12)


@pytest.mark.parametrize("dof", [8, 16, 5])
def test_chi_quadrature_moments(dof):
    """E X^(2m) of X ~ χ_dof is dof(dof+2)...(dof+2m-2): checked for m = 1, 2, 3 (and E X for the mean)."""
    log_x, logw = _chi_nodes(dof)
    for m in (1, 2, 3):
        exact = math.prod(dof + 2 * i for i in range(m))
        got = math.exp(_logmeanexp_weights(2 * m * log_x, logw))
        assert got == pytest.approx(exact, rel=1e-6)
    mean = math.sqrt(2) * math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2))
    assert math.exp(_logmeanexp_weights(log_x, logw)) == pytest.approx(mean, rel=1e-6)


def test_gain_and_window_counts():
    """6×6 grid, 3×3 window, padding 1: 4 at corners, 6 on edges, 9 inside; mean (16/6)²."""
    n = _window_counts(6)
    assert n[0, 0] == 4 and n[0, 3] == 6 and n[2, 3] == 9 and n.mean() == pytest.approx((16 / 6) ** 2)
    cfg = ModelConfig(C=20, D=8, init_std=0.5)
    assert gain(cfg) == pytest.approx(0.25 * (16 / 6) ** 2 * 8 / 20)
    assert gain(cfg.replace(C=10)) == pytest.approx(2 * gain(cfg))


def test_pruned_configs_by_rule():
    """C = 20, D = 8: the paper's round-up gives C' = 17 / 15 / 12, the authors' round-down 18 / 15 / 13."""
    cfg = ModelConfig(C=20, D=8)
    assert [pruned_model_config(cfg, pr).C for pr in (0.125, 0.25, 0.375)] == [17, 15, 12]
    assert [pruned_model_config(cfg, pr, "authors").C for pr in (0.125, 0.25, 0.375)] == [18, 15, 13]
    assert pruned_model_config(cfg, 0.125).widths == (32, 64, 136)  # 40-8, 80-16, 160-24


def test_recurrence_tracks_the_measured_length_map(batch):
    """On CapsNet[8, 8, 4] at std 0.5 the recurrence, started from the measured PrimaryCaps maps, is
    within a factor 2 of the measured mean length at every layer (log10 error ≤ 0.3), and within 10%
    on the first ConvCaps, where the routing correction matters (uniform couplings alone are ≥ 20% low)."""
    x, _ = batch
    cfg = ModelConfig(C=8, D=8, I=4, init_std=0.5)
    t = length_map(cfg, [x], seeds=(0, 1))
    err = np.abs(np.log10(t["measured"]) - t["log10_predicted"])
    assert err.max() <= 0.3, t
    assert err[1] <= math.log10(1.1)
    plain = length_recurrence(cfg, primary_m2=primary_m2_maps(cfg, x, 0), routing=False)
    assert plain["mean"][1] < 0.8 * t["measured"][1]
    fig = length_map_figure(t, "test")
    assert fig.axes[0].get_yscale() == "log"


def test_predicted_limit_orders_like_the_gain(batch):
    """The recurrence's limit rises with the init std, never falls with a smaller C (a larger gain), and float64
    (smallest subnormal 5e-324 instead of 1.4e-45) never gives a shallower limit."""
    x, _ = batch
    cfg = ModelConfig(C=8, D=4, init_std=0.25)
    m2 = primary_m2_maps(cfg, x, 0)
    lim = predicted_limit(cfg, m2, "float32", I_max=8)
    assert lim is not None
    assert predicted_limit(cfg.replace(init_std=0.15), m2, "float32", 8) < lim
    assert predicted_limit(cfg, m2, "float64", 8) >= lim
    small = cfg.replace(C=4)
    lim_small = predicted_limit(small, primary_m2_maps(small, x, 0), "float32", 8)
    assert lim_small is None or lim_small >= lim
