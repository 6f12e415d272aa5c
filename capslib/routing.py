"""Squash and dynamic routing (Sabour et al. 2017; paper §3.2, eqs. 1-4).

Both capsule layers of the model reduce to one routing problem. Given the
votes ``u_hat`` of ``K`` child capsules for ``J`` parent capsules, in the
layout ``(n, J, K, D)`` where ``n`` is an independent batch (images, or images
× output locations for a convolutional capsule layer):

    c = softmax_J(b)                  coupling coefficients, over the PARENTS
    s_j = Σ_k c_jk u_hat[j|k]         (eq. 3)
    v_j = squash(s_j)                 (eq. 4, squared form)
    b_jk += u_hat[j|k] · v_j          (eq. 1)

The layout ``(n, J, K, D)`` is chosen so that both the weighted sum and the
agreement are batched matrix-vector products that read ``u_hat`` once and
never build a temporary of its size (typical public code multiplies
``c[..., None] * u_hat`` and sums, which allocates a full copy per iteration).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["squash", "dynamic_routing", "RoutingTrace"]

SQUASH_EPS = 1e-8


def squash(s: Tensor, dim: int = -1, eps: float = SQUASH_EPS) -> Tensor:
    """v = ‖s‖²/(1+‖s‖²) · s/‖s‖, with ``eps`` so that squash(0) = 0, never NaN.

    The paper's eq. (4) prints ‖s‖/(1+‖s‖); that is a typo: Sabour et al. and
    the authors' code use the squared norm, which we follow. The output length
    is in [0, 1).
    """
    sq = (s * s).sum(dim=dim, keepdim=True)  # ‖s‖²
    scale = sq / (1.0 + sq) / torch.sqrt(sq + eps)
    return scale * s


@dataclass
class RoutingTrace:
    """Per-iteration coupling coefficients and agreements, for the book's plots.

    ``c[r]`` has shape (n, J, K) (sums to 1 over J); ``agreement[r]`` is
    u_hat·v of iteration r, shape (n, J, K); ``v[r]`` is (n, J, D).
    """

    c: list[Tensor]
    agreement: list[Tensor]
    v: list[Tensor]


def dynamic_routing(
    u_hat: Tensor,
    iters: int = 3,
    trace: Optional[RoutingTrace] = None,
) -> tuple[Tensor, Tensor]:
    """Route votes to parents by agreement.

    Args:
        u_hat: votes, (n, J, K, D): n independent problems, J parents, K children.
        iters: routing iterations r >= 1 (the paper uses 3).
        trace: if given, filled with each iteration's c, agreement and v.

    Returns:
        v: parent capsules, (n, J, D), each of length < 1.
        c: final coupling coefficients, (n, J, K), summing to 1 over J.

    Runs in float32 even under autocast: routing is a sum of many small terms.
    """
    if iters < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iters}")
    with torch.autocast(device_type=u_hat.device.type, enabled=False):
        u_hat = u_hat.float()
        n, J, K, D = u_hat.shape
        b = u_hat.new_zeros(n, J, K)  # logits b_jk, initialised to zero (eq. 1)
        for r in range(iters):
            c = torch.softmax(b, dim=1)  # (n, J, K): normalised over the parents J
            s = torch.matmul(c.unsqueeze(2), u_hat).squeeze(2)  # (n, J, 1, K)@(n, J, K, D) -> (n, J, D)
            v = squash(s)  # (n, J, D)
            last = r == iters - 1
            if trace is not None or not last:
                agreement = torch.matmul(u_hat, v.unsqueeze(-1)).squeeze(-1)  # (n, J, K)
                if trace is not None:
                    trace.c.append(c.detach())
                    trace.agreement.append(agreement.detach())
                    trace.v.append(v.detach())
                if not last:
                    b = b + agreement
    return v, c
