"""Losses of paper §3.3: the capsule margin loss (eq. 6) and the CCM loss (eq. 7).

The total loss (eq. 5) is ``margin − alpha · Σ_l CCM(l)``: *subtracting* the
mean absolute channel correlation rewards channels that are linearly related,
which concentrates shared information in fewer channels before CHIP pruning
(Wang et al. 2023).

Which activations CCM reads: the maps in :attr:`CapsNetOutput.feature_maps`,
i.e. the post-ReLU outputs of the three backbone layers and the PrimaryCaps
conv output before squash - the same maps CHIP scores.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

__all__ = ["margin_loss", "channel_correlation", "ccm_loss", "total_loss"]

CORR_EPS = 1e-8


def margin_loss(lengths: Tensor, targets: Tensor, m_pos: float = 0.9, m_neg: float = 0.1,
                lam: float = 0.5) -> Tensor:
    """Eq. (6): T·max(0, m+ − ‖v‖)² + λ(1−T)·max(0, ‖v‖ − m−)², summed over classes, mean over batch.

    Args:
        lengths: (B, N) class-capsule lengths.
        targets: (B,) integer labels.
    """
    T = torch.nn.functional.one_hot(targets, lengths.shape[1]).to(lengths.dtype)  # (B, N)
    pos = T * torch.clamp(m_pos - lengths, min=0) ** 2
    neg = lam * (1 - T) * torch.clamp(lengths - m_neg, min=0) ** 2
    return (pos + neg).sum(dim=1).mean()


def channel_correlation(fmap: Tensor, eps: float = CORR_EPS) -> Tensor:
    """Pearson correlation matrix (C, C) of the channels of a batch-mean feature map.

    Args:
        fmap: (B, C, H, W). The maps are averaged over the batch, flattened over
            H·W, centred and scaled per channel. A constant channel has zero
            variance; ``eps`` makes its correlations 0 instead of NaN (and its
            diagonal entry 0 instead of 1).
    """
    f = fmap.float().mean(dim=0).flatten(1)  # (C, H·W)
    f = f - f.mean(dim=1, keepdim=True)
    z = f / torch.sqrt((f * f).sum(dim=1, keepdim=True) + eps)  # unit rows (or zero)
    return z @ z.T  # (C, C)


def ccm_loss(fmap: Tensor, detached: bool = False) -> Tensor:
    """Eq. (7): mean |corr(f_i, f_j)| over all C×C channel pairs, diagonal included.

    ``detached=True`` reproduces the authors' code, which computes CCM on
    ``.detach()``ed maps, so the term has no gradient and cannot shape training.
    """
    if detached:
        fmap = fmap.detach()
    return channel_correlation(fmap).abs().mean()


def total_loss(lengths: Tensor, targets: Tensor, feature_maps: Iterable[Tensor] = (),
               alpha: float = 0.0, ccm_detached: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. (5): margin − alpha · Σ_l CCM(l). Returns (total, margin, ccm_sum)."""
    margin = margin_loss(lengths, targets)
    if alpha == 0:
        ccm = margin.new_zeros(())
        return margin, margin, ccm
    ccm = sum(ccm_loss(f, detached=ccm_detached) for f in feature_maps)
    return margin - alpha * ccm, margin, ccm
