"""Exact CHIP channel independence (capslib.pruning.chip) against a slow SVD reference.

Reference: one float64 SVD per (image, channel), CI = ||F||_* - ||F_c||_*.
Accuracy criterion (``assert_ci_close``): elementwise
    |CI - CI_ref| <= RTOL * |CI_ref| + ATOL * max_c |CI_ref|   (per image),
i.e. 1e-6 relative wherever CI is not tiny, with an absolute floor of 1e-9 of
the image's largest score for (near-)zero scores. Rankings must be identical:
argsort of the per-channel mean CI. The fast path actually reaches ~1e-13
(~4e-11 for the near-duplicate and graded-spectrum cases, where the Gram matrix
squares the condition number); TIGHT guards that, e.g. it catches a missing
deflation of rounding-level eigenvalues (3e-7 on the rank-deficient cases).
"""
from __future__ import annotations

import pytest
import torch

from capslib.pruning.chip import channel_independence, ci_scores

RTOL = 1e-6
ATOL = 1e-9  # relative to max_c |CI_ref| of the image
TIGHT = 1e-9  # regression guard on the same scaled error


def reference_ci(F: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, C): one float64 SVD per image and per channel."""
    F = F.reshape(F.shape[0], F.shape[1], -1).to(torch.float64)  # (N, C, P)
    N, C, _ = F.shape
    out = torch.empty(N, C, dtype=torch.float64)
    for n in range(N):
        full = torch.linalg.svdvals(F[n]).sum()
        for c in range(C):
            masked = F[n].clone()
            masked[c] = 0
            out[n, c] = full - torch.linalg.svdvals(masked).sum()
    return out


def float32_loop_ci(F: torch.Tensor) -> torch.Tensor:
    """CHIP-code style: float32 nuclear norms, one per (image, channel)."""
    F = F.reshape(F.shape[0], F.shape[1], -1).to(torch.float32)
    out = torch.empty(F.shape[:2], dtype=torch.float32)
    for n in range(F.shape[0]):
        full = torch.linalg.matrix_norm(F[n], ord="nuc")
        for c in range(F.shape[1]):
            masked = F[n].clone()
            masked[c] = 0
            out[n, c] = full - torch.linalg.matrix_norm(masked, ord="nuc")
    return out.to(torch.float64)


def scaled_error(ci: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ci - ref| / (RTOL |ref| + ATOL max|ref|) * RTOL: the error in units of the criterion."""
    scale = ref.abs().amax(dim=-1, keepdim=True)
    return ((ci - ref).abs() / (ref.abs() + ATOL / RTOL * scale)).max().item()


def assert_ci_close(ci: torch.Tensor, ref: torch.Tensor) -> None:
    assert ci.shape == ref.shape
    assert ci.dtype == torch.float64
    assert torch.isfinite(ci).all()
    err = scaled_error(ci, ref)
    assert err <= RTOL, f"relative error {err:.3e} > {RTOL}"


def assert_same_ranking(ci: torch.Tensor, ref: torch.Tensor) -> None:
    order = ci.mean(0).argsort(stable=True)
    order_ref = ref.mean(0).argsort(stable=True)
    assert torch.equal(order, order_ref), f"rankings differ:\n{order}\n{order_ref}"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian() -> torch.Tensor:
    return torch.randn(3, 12, 30, dtype=torch.float64, generator=_gen(0))  # C < P


def rank_deficient_wide() -> torch.Tensor:
    return torch.randn(3, 24, 9, dtype=torch.float64, generator=_gen(1))  # C > P: rank 9 of 24


def rank_deficient_low_rank() -> torch.Tensor:
    g = _gen(2)
    A = torch.randn(3, 16, 5, dtype=torch.float64, generator=g)
    B = torch.randn(3, 5, 40, dtype=torch.float64, generator=g)
    return A @ B  # (3, 16, 40) of rank 5


def zero_channels() -> torch.Tensor:
    F = torch.randn(3, 12, 25, dtype=torch.float64, generator=_gen(3))
    F[:, 2] = 0  # dead in every image
    F[:, 7] = 0
    F[1, 5] = 0  # dead in one image only
    return F


def near_duplicates() -> torch.Tensor:
    g = _gen(4)
    F = torch.randn(3, 10, 30, dtype=torch.float64, generator=g)
    F[:, 3] = F[:, 1] + 1e-4 * torch.randn(3, 30, dtype=torch.float64, generator=g)  # near copy
    F[:, 6] = 1.001 * F[:, 1]  # collinear copy: F is rank-deficient
    return F


def relu_sparse() -> torch.Tensor:
    x = torch.randn(4, 16, 5, 5, generator=_gen(5)) - 0.7
    return torch.relu(x)  # float32, nonnegative, ~25 % nonzero, (N, C, H, W)


def graded_spectrum() -> torch.Tensor:
    g = _gen(6)
    U = torch.linalg.qr(torch.randn(2, 10, 10, dtype=torch.float64, generator=g))[0]
    V = torch.linalg.qr(torch.randn(2, 20, 10, dtype=torch.float64, generator=g))[0]
    sigma = torch.logspace(0, -5, 10, dtype=torch.float64)  # condition number 1e5
    return (U * sigma) @ V.mT  # (2, 10, 20)


def repeated_eigenvalues() -> torch.Tensor:
    g = _gen(8)
    U = torch.linalg.qr(torch.randn(2, 8, 8, dtype=torch.float64, generator=g))[0]
    V = torch.linalg.qr(torch.randn(2, 20, 8, dtype=torch.float64, generator=g))[0]
    sigma = torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.5], dtype=torch.float64)
    return (U * sigma) @ V.mT  # (2, 8, 20): triple and double singular values


CASES = {
    "gaussian": gaussian,
    "rank_deficient_wide": rank_deficient_wide,
    "rank_deficient_low_rank": rank_deficient_low_rank,
    "zero_channels": zero_channels,
    "near_duplicates": near_duplicates,
    "relu_sparse": relu_sparse,
    "graded_spectrum": graded_spectrum,
    "repeated_eigenvalues": repeated_eigenvalues,
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_svd_reference(name):
    F = CASES[name]()
    ci = channel_independence(F)
    ref = reference_ci(F)
    assert_ci_close(ci, ref)
    assert_same_ranking(ci, ref)
    assert scaled_error(ci, ref) <= TIGHT


def test_zero_channels_score_zero():
    F = zero_channels()
    ci = channel_independence(F)
    scale = ci.abs().amax()
    assert (ci[:, [2, 7]].abs() <= 1e-12 * scale).all()
    assert ci[1, 5].abs() <= 1e-12 * scale
    assert (ci[0, 5] > 0) and (ci[2, 5] > 0)
    alive = torch.ones_like(ci, dtype=torch.bool)
    alive[:, [2, 7]] = False
    alive[1, 5] = False
    assert (ci[alive] > 1e-3 * scale).all()


def test_known_values():
    f64 = torch.float64
    # one channel: CI = ||f||
    f = torch.tensor([[[3.0, 4.0]]], dtype=f64)  # (1, 1, 2)
    assert channel_independence(f).item() == pytest.approx(5.0, rel=1e-12)
    # orthogonal rows: CI(c) = ||f_c||
    F = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=f64))[None]  # (1, 3, 3)
    assert torch.allclose(channel_independence(F), torch.tensor([[3.0, 1.0, 0.5]], dtype=f64), rtol=1e-12)
    # orthogonal rows of equal norm (G = 4 I, one eigenvalue of multiplicity 4): CI(c) = 2
    Q = torch.linalg.qr(torch.randn(10, 4, dtype=f64, generator=_gen(9)))[0]  # (10, 4)
    assert torch.allclose(channel_independence(2 * Q.mT[None]), torch.full((1, 4), 2.0, dtype=f64), rtol=1e-12)
    # all-zero image: exactly 0
    Z = torch.zeros(2, 4, 3, 3)
    assert torch.equal(channel_independence(Z), torch.zeros(2, 4, dtype=f64))


def test_shapes_dtype_and_scale():
    F = relu_sparse()  # float32 (4, 16, 5, 5)
    ci = channel_independence(F)
    assert ci.shape == (4, 16) and ci.dtype == torch.float64 and ci.device == F.device
    assert torch.allclose(channel_independence(F.reshape(4, 16, 25)), ci, rtol=0, atol=0)
    # CI is positively homogeneous: CI(a F) = a CI(F)
    assert torch.allclose(channel_independence(1e3 * F.double()), 1e3 * ci, rtol=1e-11)
    # no cross-talk between images: chunking/batching gives per-image results
    assert torch.allclose(channel_independence(F[1:2]), ci[1:2], rtol=1e-12)


def test_channel_independence_rejects_bad_input():
    with pytest.raises(ValueError):
        channel_independence(torch.randn(4, 5))
    with pytest.raises(ValueError):
        channel_independence(torch.randn(1, 2, 3, 4, 5))


def test_float32_loop_is_less_accurate():
    F = relu_sparse()
    ref = reference_ci(F)
    err_fast = scaled_error(channel_independence(F), ref)
    err_loop = scaled_error(float32_loop_ci(F), ref)
    assert err_fast < 1e-9
    assert err_loop > 100 * err_fast  # float32 loop error is ~1e-6..1e-4
    assert err_loop < 1e-2


# ---- ci_scores: the two estimators over a stream of batches ----

def relu_batches() -> list[torch.Tensor]:
    g = _gen(7)
    return [torch.relu(torch.randn(n, 8, 4, 4, generator=g) - 0.3) for n in (3, 2, 4)]


def test_ci_scores_per_image():
    batches = relu_batches()
    ref = reference_ci(torch.cat(batches))  # (9, 8)
    scores = ci_scores(batches, estimator="per_image")
    assert scores.shape == (8,) and scores.dtype == torch.float64 and scores.device.type == "cpu"
    assert_ci_close(scores[None], ref.mean(0, keepdim=True))
    assert torch.equal(scores.argsort(stable=True), ref.mean(0).argsort(stable=True))
    # a single tensor and a stream of its batches agree; default estimator is per_image
    assert torch.allclose(ci_scores(torch.cat(batches)), scores, rtol=1e-12, atol=0)


def test_ci_scores_batch_mean():
    batches = relu_batches()
    means = torch.cat([b.double().mean(0, keepdim=True) for b in batches])  # (3, 8, 4, 4)
    ref = reference_ci(means).mean(0)  # (8,)
    scores = ci_scores(iter(batches), estimator="batch_mean")
    assert scores.shape == (8,) and scores.dtype == torch.float64
    assert_ci_close(scores[None], ref[None])
    assert torch.equal(scores.argsort(stable=True), ref.argsort(stable=True))
    # the two estimators really differ
    assert not torch.allclose(scores, ci_scores(batches, estimator="per_image"), rtol=1e-3)


def test_ci_scores_rejects_bad_input():
    maps = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="estimator"):
        ci_scores(maps, estimator="mean")
    with pytest.raises(ValueError):
        ci_scores(torch.rand(2, 3, 16))  # ndim 3
    with pytest.raises(ValueError):
        ci_scores([])
    with pytest.raises(ValueError):
        ci_scores(torch.rand(0, 3, 4, 4))
    with pytest.raises(ValueError):
        ci_scores([maps, torch.rand(2, 5, 4, 4)])  # channel counts differ


def test_fast_ci_on_real_feature_maps_of_a_trained_model(real_data_root):
    """The fast CI agrees with the per-channel SVD reference on maps of a CapsNet trained on Fashion-MNIST."""
    from capslib.engine.config import profile
    from capslib.engine.data import load_splits
    from capslib.engine.train import fit

    cfg = profile("smoke", C=4, D=4, I=0, train_size=512, val_size=128, test_size=128)
    data = load_splits(cfg.data)
    _, model = fit(cfg, data=data, progress=False)
    model.eval()
    x, _ = next(data.batches("val", 12))
    with torch.no_grad():
        maps = model(x).feature_maps
    for name in ("conv1", "conv2", "conv3", "primary"):
        F = maps[name].double().flatten(2)  # (N, C, H·W); conv3/primary have C > H·W here: rank-deficient
        fast = channel_independence(F)
        ref = reference_ci(F)
        scale = ref.abs().amax(dim=1, keepdim=True)
        assert ((fast - ref).abs() <= 1e-6 * ref.abs() + 1e-9 * scale).all(), name
        assert torch.equal(torch.argsort(fast.mean(0), stable=True), torch.argsort(ref.mean(0), stable=True)), name
