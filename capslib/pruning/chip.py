"""CHIP channel-independence scores, exact and fast (Sui et al. 2021, eq. 8).

For one image let F be the C x P matrix of a conv layer's feature maps
(P = H*W, one row per channel). The channel independence of channel c is

    CI(c) = ||F||_* - ||F_c||_*        (F_c: F with row c set to zero)

where ||.||_* is the nuclear norm. CHIP's reference code computes one SVD per
(image, channel): C+1 SVDs of a C x P matrix per image. This module gets all C
scores of an image from ONE eigendecomposition of the C x C Gram matrix plus
two small matrix products, with no approximation beyond rounding.

Derivation. Let G = F F^T = U diag(lam) U^T and u = U^T e_c, so w_i = U[c, i]^2
(sum_i w_i = 1). Zeroing row c is a rank-one downdate: the nonzero spectrum of
F_c F_c^T is that of diag(lam) - z z^T with z_i = sqrt(lam_i) u_i. With the
Stieltjes integral  sqrt(a) = (2/pi) int_0^inf a / (a + x^2) dx  and
Sherman-Morrison for (diag(lam) - z z^T + x^2)^-1 one gets, for t = x^2,

    CI(c) = (2/pi) int_0^inf N_c(t) / D_c(t) dx,
    N_c(t) = sum_i w_ci lam_i / (lam_i + t)^2,   D_c(t) = sum_i w_ci / (lam_i + t).

(The usual denominator 1 - z^T (diag(lam) + t)^-1 z equals t * D_c(t) because
sum_i w_ci = 1, so no cancellation happens anywhere.) N and D are sums of
positive terms, i.e. for all channels at once they are one matrix product
W @ [lam/(lam+t)^2 | 1/(lam+t)] with W = U*U, and the integrand can be written
as sum_i [lam_i/(lam_i+x^2) - mu_i/(mu_i+x^2)] >= 0 (mu: downdated eigenvalues),
so the quadrature error is relative to CI(c) itself: small scores keep their
relative accuracy. Repeated eigenvalues, zero eigenvalues (C > P, dead
channels) and channels orthogonal to some eigenvectors need no special case.

Quadrature. With x = sigma_max * exp(s) the integrand in s is analytic in the
strip |Im s| < pi/2 and |f(s + i a)| <= f(s) / cos(a)^2 there, so the
trapezoidal rule with step h has relative error <= 2 sec(a)^2 / (exp(2 pi a/h) - 1),
minimised over a: 1.7e-14 for h = 0.25 (Trefethen & Weideman 2014, Thm 5.1).
Tails: f decays like exp(-|s|) outside the spectrum; the upper tail beyond
x = 1e5 sigma_max is summed as a geometric series (relative error ~ 1e-15),
the lower end sits at 1e3 eps (2e-13 in float64) times the smallest nonzero
singular value, which bounds the truncated part relative to CI(c).

Accuracy. The remaining error is that of the Gram eigendecomposition: each
eigenvalue is exact to ~(C + sqrt P) eps lam_max, so singular values are exact
to ~eps sigma_max^2 / sigma_i; eigenvalues below that rounding level are set to
exactly zero (they are zero to working precision). Measured against float64
SVDs: ~1e-13 relative on random, rank-deficient and ReLU maps, ~4e-11 at
condition number 1e5 (an SVD of F would not square the condition number, but
costs several times more than eigh on CPU). The float32 loop of CHIP's code is
at ~1e-5..1e-4. Use the default dtype=float64; float32 is allowed but squaring
then leaves ~1e-4 (worse for ill-conditioned maps).

The slow per-(image, channel) SVD reference lives in tests/test_chip.py and
the float32 nuclear-norm loop as CHIP's code runs it in benchmarks/bench_chip.py.
"""
from __future__ import annotations

import math
from typing import Iterable, Union

import torch

from ..engine.config import CHIP_ESTIMATORS

__all__ = ["ESTIMATORS", "channel_independence", "ci_scores", "authors_channel_independence"]

#: "per_image" (CHIP), "batch_mean", "batch_mean_r4" (the paper authors' code); see :func:`ci_scores`.
ESTIMATORS = CHIP_ESTIMATORS

QUAD_STEP = 0.25        # trapezoid step h in s = log(x / sigma_max); a-priori relative error 1.7e-14
QUAD_X_HI = 1e5         # upper end of the grid in units of sigma_max; beyond it: geometric tail
CHUNK_ELEMENTS = 2**21  # images per chunk ~ CHUNK_ELEMENTS / (C * max(P, C, 256)), bounds the memory


def channel_independence(F: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Exact CHIP channel independence CI(n, c) = ||F_n||_* - ||F_n with row c zeroed||_*.

    F: (N, C, P) or (N, C, H, W) feature maps of N images, any real dtype, any device.
    Returns (N, C) in `dtype` (float64 by default) on F's device. Per image: one
    Gram eigendecomposition plus one (C x C) @ (C x 2K) product (K ~ 150-250
    quadrature nodes), batched over images; see the module docstring for the
    method and its error.
    """
    if F.ndim not in (3, 4):
        raise ValueError(f"F must be (N, C, P) or (N, C, H, W), got shape {tuple(F.shape)}")
    if F.is_complex():
        raise TypeError("F must be real")
    N, C = F.shape[:2]
    F = F.flatten(2)  # (N, C, P)
    P = F.shape[-1]
    out = torch.zeros(N, C, dtype=dtype, device=F.device)
    if N == 0 or C == 0:
        return out
    chunk = max(1, CHUNK_ELEMENTS // (C * max(P, C, 256)))
    for start in range(0, N, chunk):
        block = F[start : start + chunk].to(dtype)  # (n, C, P), converted chunk by chunk
        out[start : start + chunk] = _channel_independence_block(block)
    return out


def _channel_independence_block(F: torch.Tensor) -> torch.Tensor:
    """CI for a block of images. F: (n, C, P) in the working dtype. Returns (n, C)."""
    n, C, P = F.shape
    eps = torch.finfo(F.dtype).eps

    # spectrum of each image: G = F F^T = U diag(lam) U^T, normalised so that lam_max = 1
    G = F @ F.mT  # (n, C, C)
    lam, U = torch.linalg.eigh(G)  # (n, C) ascending, (n, C, C)
    lam_max = lam[:, -1:].clamp_min(0)  # (n, 1) = sigma_max^2
    scale = torch.where(lam_max > 0, lam_max, torch.ones_like(lam_max))  # all-zero image: CI = 0
    lam = lam / scale  # (n, C) in [~0, 1]
    # eigenvalues at rounding level (eigh backward error ~C eps, Gram rounding ~sqrt(P) eps) are exact zeros
    zero_tol = (C + math.sqrt(P)) * eps
    lam = torch.where(lam > zero_tol, lam, torch.zeros_like(lam))
    W = U.square()  # (n, C, C): W[c, i] = U[c, i]^2, each row sums to 1

    # trapezoid nodes x_k = exp(s_k) (units of sigma_max), from QUAD_X_HI down to quad_tol * smallest sigma
    quad_tol = 1e3 * eps  # truncation tolerance of the lower end (2e-13 in float64)
    positive = lam[lam > 0]
    sigma_min = positive.min().sqrt().item() if positive.numel() else 1.0
    s_hi, s_lo = math.log(QUAD_X_HI), math.log(quad_tol * sigma_min)
    K = math.ceil((s_hi - s_lo) / QUAD_STEP) + 1
    s = s_hi - QUAD_STEP * torch.arange(K, dtype=F.dtype, device=F.device)  # (K,) descending
    x = s.exp()  # (K,)
    t = x.square()  # (K,)

    # N_c(t_k) and D_c(t_k) for all channels at once: one batched matrix product
    R = 1.0 / (lam[..., None] + t)  # (n, C, K): 1 / (lam_i + t_k); finite since t_k > 0
    A = torch.cat([(lam[..., None] * R) * R, R], dim=-1)  # (n, C, 2K): [lam/(lam+t)^2 | 1/(lam+t)]
    num, den = (W @ A).split(K, dim=-1)  # (n, C, K) each; den >= 1/(1 + t_k) > 0
    f = x * num / den  # (n, C, K): integrand in s, >= 0

    # f ~ f(s_hi) exp(-(s - s_hi)) above the grid: sum_{j>=1} f(s_hi) e^{-jh} = f(s_hi) / (e^h - 1)
    tail = f[..., 0] / math.expm1(QUAD_STEP)  # (n, C)
    ci = (2.0 / math.pi) * QUAD_STEP * (f.sum(-1) + tail) * scale.sqrt()  # (n, C)

    # an all-zero channel leaves F unchanged: CI is exactly 0 (not merely rounding-small)
    dead = G.diagonal(dim1=-2, dim2=-1) == 0  # (n, C)
    return ci.masked_fill(dead, 0.0)


def authors_channel_independence(mean_map: torch.Tensor) -> torch.Tensor:
    """CI of one batch-mean map the way the paper authors' code computes it (DESIGN.md §3b).

    mean_map: (C, H, W) or (C, P), the batch mean of a layer's feature maps. It is rounded to
    4 decimals, and CI(c) = ||F||_* - ||F with row c zeroed||_* with one float32 nuclear norm
    (an SVD) per channel - C + 1 float32 SVDs, as their loop does. Returns (C,) float64 on CPU.
    Kept as a faithful-reproduction switch: the rounding zeroes maps whose mean is below 5e-5 and
    the float32 differences of nuclear norms lose ~1e-5 relative, which can reorder low scores.
    """
    F = torch.round(mean_map.detach().float().flatten(1).cpu(), decimals=4)  # (C, P) float32
    C = F.shape[0]
    zeroed = F.expand(C, *F.shape).clone()  # (C, C, P): copy c has row c zeroed
    zeroed[torch.arange(C), torch.arange(C)] = 0.0
    full = torch.linalg.matrix_norm(F, ord="nuc")  # () float32
    return (full - torch.linalg.matrix_norm(zeroed, ord="nuc")).double()  # (C,)


def ci_scores(
    maps: Union[torch.Tensor, Iterable[torch.Tensor]], *, estimator: str = "per_image"
) -> torch.Tensor:
    """Per-channel CHIP score of a layer, averaged over images. Returns (C,) float64 on CPU.

    maps: (N, C, H, W) feature maps, or an iterable of such batches (streamed,
    e.g. 5 batches of 128 images; all batches must have the same C).
    estimator:
      "per_image"  - CHIP (Sui et al. 2021): CI of each image, averaged over all images.
      "batch_mean" - average the maps over the images of each batch, CI of that one
                     mean map (exact, float64), averaged over batches.
      "batch_mean_r4" - the paper authors' code: as "batch_mean", but the mean map is
                     rounded to 4 decimals and CI uses float32 nuclear norms
                     (:func:`authors_channel_independence`).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    batches = [maps] if torch.is_tensor(maps) else maps
    total, count, C = None, 0, None
    for batch in batches:
        if not torch.is_tensor(batch) or batch.ndim != 4:
            shape = tuple(batch.shape) if torch.is_tensor(batch) else type(batch).__name__
            raise ValueError(f"feature maps must be (N, C, H, W) tensors, got {shape}")
        if batch.shape[0] == 0:
            raise ValueError("empty batch of feature maps")
        if C is not None and batch.shape[1] != C:
            raise ValueError(f"batches have different channel counts: {C} and {batch.shape[1]}")
        C = batch.shape[1]
        if estimator == "per_image":
            ci = channel_independence(batch).sum(0)  # (C,) sum over the batch's images
            count += batch.shape[0]
        elif estimator == "batch_mean":
            mean_map = batch.to(torch.float64).mean(0, keepdim=True)  # (1, C, H, W)
            ci = channel_independence(mean_map)[0]  # (C,)
            count += 1
        else:  # "batch_mean_r4"
            ci = authors_channel_independence(batch.float().mean(0))  # (C,) from the (C, H, W) mean map
            count += 1
        total = ci.cpu() if total is None else total + ci.cpu()
    if total is None:
        raise ValueError("no feature maps given")
    return total / count
