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

Two remedies for vanishing activations (ModelConfig ``squash_bias`` and ``squash_fn``) change this
loop in one place each: a parent bias ``s_j = Σ_k c_jk u_hat[j|k] + bias_j`` before every squash, and
the squash itself (:data:`SQUASHES`). Both are off by default, and the default loop runs the very ops
it ran before they existed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["squash", "efficient_squash", "SQUASHES", "get_squash", "dynamic_routing", "RoutingTrace",
           "routing_dtype", "SQUASH_EPS"]

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


def efficient_squash(s: Tensor, dim: int = -1, eps: float = SQUASH_EPS) -> Tensor:
    """Efficient-CapsNet's squash, v = (1 − e^(−‖s‖)) · s/‖s‖ (Mazzia, Salvetti & Chiaberge 2021,
    Sci. Rep. 11:14634, arXiv 2101.12491; the squash of their primary-capsule section).

    Where :func:`squash` maps a short s to length ≈ ‖s‖² (so lengths fall doubly exponentially through
    deep layers, DESIGN.md §3c), this one maps it to length ≈ ‖s‖ (slope 1 at 0): a short capsule stays
    as short as it was instead of shrinking. The output length is in [0, 1).

    Their public code (EscVM/Efficient-CapsNet, utils/layers.py, class ``Squash``) computes
    ``(1 - 1/(exp(n) + eps)) * s/(n + eps)`` with n = ‖s‖ and eps = 1e-20. Here, for the same reason as
    in :func:`squash` (squash(0) = 0 with a finite gradient, trap 4), n = sqrt(‖s‖² + ε) with the
    layer's ``eps``, and 1 − e^(−n) is ``-expm1(-n)``, which keeps every digit of a short n (in float32,
    1 − exp(−1e-4) keeps about three). For ‖s‖ ≫ √ε the two are the same function.
    """
    n = torch.sqrt((s * s).sum(dim=dim, keepdim=True) + eps)  # ‖s‖, never 0
    return -torch.expm1(-n) / n * s


#: :attr:`ModelConfig.squash_fn` name -> squash function ``f(s, dim=-1, eps=...)``.
SQUASHES = {"sabour": squash, "efficient": efficient_squash}


def get_squash(name: str):
    """The squash function named ``name`` (a key of :data:`SQUASHES`); ValueError naming the choices."""
    if name not in SQUASHES:
        raise ValueError(f"squash_fn must be one of {tuple(SQUASHES)}, got {name!r}")
    return SQUASHES[name]


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
    bias: Optional[Tensor] = None,
    squash_fn: str = "sabour",
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
        bias: None (Sabour et al.), or a parent bias (J, D), broadcast over the n problems and added
            to s_j before the squash in every iteration (Peer et al. 2021, ModelConfig.squash_bias);
            differentiable, on both backward paths.
        squash_fn: "sabour" (:func:`squash`) or "efficient" (:func:`efficient_squash`).

    Returns:
        v: parent capsules, (n, J, D), each of length < 1.
        c: final coupling coefficients, (n, J, K), summing to 1 over J (not differentiable on
            the fused path; no caller differentiates it).

    Runs in float32 even under autocast (routing is a sum of many small terms), or in float64
    when the votes are float64.
    """
    if iters < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iters}")
    squash_of = get_squash(squash_fn)
    with torch.autocast(device_type=u_hat.device.type, enabled=False):
        u_hat = routing_dtype(u_hat)
        if bias is not None:
            bias = _checked_bias(bias, u_hat)  # (J, D)
        needs_grad = u_hat.requires_grad or (bias is not None and bias.requires_grad)
        if fused_backward and trace is None and torch.is_grad_enabled() and needs_grad:
            return _RoutingFunction.apply(u_hat, iters, eps, bias, squash_fn)
        n, J, K, D = u_hat.shape
        b = u_hat.new_zeros(n, J, K)  # logits b_jk, initialised to zero (eq. 1)
        for r in range(iters):
            c = torch.softmax(b, dim=1)  # (n, J, K): normalised over the parents J
            s = torch.matmul(c.unsqueeze(2), u_hat).squeeze(2)  # (n, J, 1, K)@(n, J, K, D) -> (n, J, D)
            if bias is not None:
                s = s + bias  # (n, J, D) + (J, D): Peer et al.'s s_j + b_j, before every squash
            v = squash_of(s, eps=eps)  # (n, J, D)
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

    The remedies need little: a parent bias enters s_r = c_r·u_hat + bias, so dL/dbias = Σ_r Σ_n g_s_r
    and nothing else changes (s_r is saved with the bias in it); another squash changes only the small
    squash backward, which autograd differentiates anyway (tests/test_remedies.py).
    """

    @staticmethod
    def forward(ctx, u_hat: Tensor, iters: int, eps: float, bias: Optional[Tensor] = None,
                squash_fn: str = "sabour") -> tuple[Tensor, Tensor]:
        squash_of = get_squash(squash_fn)
        n, J, K, D = u_hat.shape
        uf = u_hat.reshape(n * J, K, D)  # a view for contiguous votes and for ConvCaps' strided ones
        b = u_hat.new_zeros(n, J, K)
        cs, ss, vs = [], [], []
        for r in range(iters):
            c = torch.softmax(b, dim=1)  # (n, J, K)
            s = torch.bmm(c.view(n * J, 1, K), uf).view(n, J, D)
            if bias is not None:
                s = s + bias  # (n, J, D) + (J, D)
            v = squash_of(s, eps=eps)
            cs.append(c)
            ss.append(s)
            vs.append(v)
            if r < iters - 1:
                b = b + torch.bmm(uf, v.view(n * J, D, 1)).view(n, J, K)
        ctx.iters, ctx.eps, ctx.squash_fn, ctx.has_bias = iters, eps, squash_fn, bias is not None
        ctx.save_for_backward(u_hat, *cs, *ss, *vs)
        ctx.mark_non_differentiable(cs[-1])
        return v, cs[-1]

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out: Tensor, _g_c: Optional[Tensor]):
        R = ctx.iters
        squash_of = get_squash(ctx.squash_fn)
        u_hat, *rest = ctx.saved_tensors
        cs, ss, vs = rest[:R], rest[R:2 * R], rest[2 * R:]
        n, J, K, D = u_hat.shape
        uf = u_hat.reshape(n * J, K, D)
        cols, rows = [], []  # grad u_hat = Σ_q cols[q] ⊗ rows[q]
        g_b_next = None  # dL/db_{r+1}
        g_bias = None  # dL/dbias, (J, D), when routing with a parent bias
        for r in reversed(range(R)):
            if r == R - 1:
                g_v = g_out if g_out is not None else u_hat.new_zeros(n, J, D)
            else:  # b_{r+1} = b_r + u_hat·v_r, so dL/d(u_hat·v_r) = dL/db_{r+1}
                g_v = torch.bmm(g_b_next.view(n * J, 1, K), uf).view(n, J, D)
                cols.append(g_b_next)
                rows.append(vs[r])
            with torch.enable_grad():  # squash's backward, on the small (n, J, D) tensors
                s = ss[r].detach().requires_grad_()
                (g_s,) = torch.autograd.grad(squash_of(s, eps=ctx.eps), s, g_v)
            if ctx.has_bias:  # s_r = c_r·u_hat + bias: dL/dbias = Σ_r Σ_n g_s_r
                g_bias = g_s.sum(dim=0) if g_bias is None else g_bias + g_s.sum(dim=0)
            cols.append(cs[r])
            rows.append(g_s)
            g_c = torch.bmm(uf, g_s.reshape(n * J, D, 1)).view(n, J, K)
            c = cs[r]
            g_b = c * (g_c - (g_c * c).sum(dim=1, keepdim=True))  # softmax over J; b_0 = 0 ends the chain
            g_b_next = g_b if g_b_next is None else g_b_next + g_b
        Q = len(cols)
        A = torch.stack(cols, dim=-2).view(n * J, Q, K).transpose(1, 2)  # (n·J, K, Q)
        Bm = torch.stack(rows, dim=-2).view(n * J, Q, D)  # (n·J, Q, D)
        return torch.bmm(A, Bm).view(n, J, K, D), None, None, g_bias, None


def _checked_bias(bias: Tensor, u_hat: Tensor) -> Tensor:
    """``bias`` as a (J, D) tensor in the votes' dtype, or ValueError naming the shapes."""
    n, J, K, D = u_hat.shape
    if tuple(bias.shape) != (J, D):
        raise ValueError(f"routing bias must be (J, D) = {(J, D)} for votes {tuple(u_hat.shape)}, "
                         f"got {tuple(bias.shape)}")
    return bias.to(u_hat.dtype)
