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
from torch.autograd.function import once_differentiable

__all__ = ["squash", "dynamic_routing", "RoutingTrace", "routing_dtype", "SQUASH_EPS"]

SQUASH_EPS = 1e-8


def routing_dtype(t: Tensor) -> Tensor:
    """``t`` in the dtype capsule layers compute in: float64 stays float64 (the float64 training
    path), anything else (float32, and bf16/fp16 under autocast) becomes float32."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


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
    fused_backward: bool = True,
    eps: float = SQUASH_EPS,
) -> tuple[Tensor, Tensor]:
    """Route votes to parents by agreement.

    Args:
        u_hat: votes, (n, J, K, D): n independent problems, J parents, K children. A strided view
            is fine when n and J can be merged without a copy (e.g. the ConvCaps votes).
        iters: routing iterations r >= 1 (the paper uses 3).
        trace: if given, filled with each iteration's c, agreement and v.
        fused_backward: when gradients are needed, differentiate with :class:`_RoutingFunction`'s
            hand-written backward (the same gradient, with one vote-sized write instead of 4r-3);
            False differentiates the loop term by term with autograd (the reference).
        eps: squash's epsilon (see :func:`squash`).

    Returns:
        v: parent capsules, (n, J, D), each of length < 1.
        c: final coupling coefficients, (n, J, K), summing to 1 over J (not differentiable on
            the fused path; no caller differentiates it).

    Runs in float32 even under autocast (routing is a sum of many small terms), or in float64
    when the votes are float64.
    """
    if iters < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iters}")
    with torch.autocast(device_type=u_hat.device.type, enabled=False):
        u_hat = routing_dtype(u_hat)
        if fused_backward and trace is None and torch.is_grad_enabled() and u_hat.requires_grad:
            return _RoutingFunction.apply(u_hat, iters, eps)
        n, J, K, D = u_hat.shape
        b = u_hat.new_zeros(n, J, K)  # logits b_jk, initialised to zero (eq. 1)
        for r in range(iters):
            c = torch.softmax(b, dim=1)  # (n, J, K): normalised over the parents J
            s = torch.matmul(c.unsqueeze(2), u_hat).squeeze(2)  # (n, J, 1, K)@(n, J, K, D) -> (n, J, D)
            v = squash(s, eps=eps)  # (n, J, D)
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


class _RoutingFunction(torch.autograd.Function):
    """:func:`dynamic_routing`'s forward with a hand-written backward.

    Autograd differentiates the routing loop term by term: every iteration adds one vote-sized
    outer product to grad u_hat (c_r ⊗ g_s_r from the weighted sum, g_b_{r+1} ⊗ v_r from the
    agreement) and one vote-sized add to accumulate them: 2r-1 writes plus 2r-2 adds of the
    (n, J, K, D) tensor, which dominate a deep CapsNet's training time on CPU. Here grad u_hat is
    one batched matmul of rank 2r-1,

        grad u_hat = [c_0 .. c_{r-1}, g_b_1 .. g_b_{r-1}] @ [g_s_0 .. g_s_{r-1}; v_0 .. v_{r-2}],

    a single vote-sized write; the other backward terms only read u_hat (batched mat-vec
    products). Saved for backward: u_hat (a reference, not a copy) and the small c_r, s_r, v_r.
    Checked against the autograd loop and by ``gradcheck`` in float64 (tests/test_routing.py).
    """

    @staticmethod
    def forward(ctx, u_hat: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
        n, J, K, D = u_hat.shape
        uf = u_hat.reshape(n * J, K, D)  # a view for contiguous votes and for ConvCaps' strided ones
        b = u_hat.new_zeros(n, J, K)
        cs, ss, vs = [], [], []
        for r in range(iters):
            c = torch.softmax(b, dim=1)  # (n, J, K)
            s = torch.bmm(c.view(n * J, 1, K), uf).view(n, J, D)
            v = squash(s, eps=eps)
            cs.append(c)
            ss.append(s)
            vs.append(v)
            if r < iters - 1:
                b = b + torch.bmm(uf, v.view(n * J, D, 1)).view(n, J, K)
        ctx.iters, ctx.eps = iters, eps
        ctx.save_for_backward(u_hat, *cs, *ss, *vs)
        ctx.mark_non_differentiable(cs[-1])
        return v, cs[-1]

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out: Tensor, _g_c: Optional[Tensor]):
        R = ctx.iters
        u_hat, *rest = ctx.saved_tensors
        cs, ss, vs = rest[:R], rest[R:2 * R], rest[2 * R:]
        n, J, K, D = u_hat.shape
        uf = u_hat.reshape(n * J, K, D)
        cols, rows = [], []  # grad u_hat = Σ_q cols[q] ⊗ rows[q]
        g_b_next = None  # dL/db_{r+1}
        for r in reversed(range(R)):
            if r == R - 1:
                g_v = g_out if g_out is not None else u_hat.new_zeros(n, J, D)
            else:  # b_{r+1} = b_r + u_hat·v_r, so dL/d(u_hat·v_r) = dL/db_{r+1}
                g_v = torch.bmm(g_b_next.view(n * J, 1, K), uf).view(n, J, D)
                cols.append(g_b_next)
                rows.append(vs[r])
            with torch.enable_grad():  # squash's backward, on the small (n, J, D) tensors
                s = ss[r].detach().requires_grad_()
                (g_s,) = torch.autograd.grad(squash(s, eps=ctx.eps), s, g_v)
            cols.append(cs[r])
            rows.append(g_s)
            g_c = torch.bmm(uf, g_s.reshape(n * J, D, 1)).view(n, J, K)
            c = cs[r]
            g_b = c * (g_c - (g_c * c).sum(dim=1, keepdim=True))  # softmax over J; b_0 = 0 ends the chain
            g_b_next = g_b if g_b_next is None else g_b_next + g_b
        Q = len(cols)
        A = torch.stack(cols, dim=-2).view(n * J, Q, K).transpose(1, 2)  # (n·J, K, Q)
        Bm = torch.stack(rows, dim=-2).view(n * J, Q, D)  # (n·J, Q, D)
        return torch.bmm(A, Bm).view(n, J, K, D), None, None
