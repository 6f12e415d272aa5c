"""Capsule layers: PrimaryCaps, ConvCaps (IntermediateCaps) and ClassCaps.

Capsule tensors are laid out as ``(B, H, W, C, D)``: C capsule types of D
dimensions at each of H×W locations. A capsule is the D channels of one type
at one location (trap 2 of DESIGN.md: never D consecutive *spatial* values).

ConvCaps and ClassCaps both compute votes ``u_hat[j|k] = W_kj u_k`` with
:func:`capsule_votes` and route them with :func:`capslib.routing.dynamic_routing`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .routing import dynamic_routing, squash

__all__ = ["PrimaryCaps", "ConvCaps", "ClassCaps", "capsule_votes", "unfold_capsules"]


def capsule_votes(u: Tensor, weight: Tensor, contiguous: bool = True) -> Tensor:
    """Votes of K children for J parents.

    Args:
        u: child capsules, (n, K, Din).
        weight: one Dout×Din matrix per (child, parent), (K, J, Dout, Din).
        contiguous: copy the votes into the (n, J, K, Dout) memory layout. False returns a strided
            view of the matmul's (K, n, J, Dout) result, which :func:`dynamic_routing` reads
            without a copy (n and J merge); measured faster for ConvCaps on CPU, slower for
            ClassCaps (benchmarks/bench_routing.py).

    Returns:
        u_hat: (n, J, K, Dout), the layout :func:`dynamic_routing` reads.

    One batched matmul over the K children (no broadcast copies of u or W).
    """
    n, K, Din = u.shape
    _, J, Dout, _ = weight.shape
    w = weight.permute(0, 3, 1, 2).reshape(K, Din, J * Dout)  # (K, Din, J·Dout)
    uk = u.transpose(0, 1)  # (K, n, Din)
    votes = torch.bmm(uk, w).view(K, n, J, Dout).permute(1, 2, 0, 3)  # (n, J, K, Dout), strided
    return votes.contiguous() if contiguous else votes


def unfold_capsules(u: Tensor, kernel: int, stride: int, padding: int) -> tuple[Tensor, int, int]:
    """Gather each output location's k×k×C window of input capsules.

    Args:
        u: (B, H, W, C, D).

    Returns:
        windows: (B·L, k·k·C, D) with L = Ho·Wo; child index = kernel_pos·C + type.
        Ho, Wo: output grid size.
    """
    B, H, W, C, D = u.shape
    x = u.permute(0, 3, 4, 1, 2).reshape(B, C * D, H, W)  # (B, C·D, H, W), channel = type·D + dim
    cols = F.unfold(x, kernel_size=kernel, stride=stride, padding=padding)  # (B, C·D·k·k, L)
    Ho = (H + 2 * padding - kernel) // stride + 1
    Wo = (W + 2 * padding - kernel) // stride + 1
    L = Ho * Wo
    cols = cols.view(B, C, D, kernel * kernel, L)  # unfold orders (channel, kernel_pos)
    cols = cols.permute(0, 4, 3, 1, 2)  # (B, L, k·k, C, D)
    return cols.reshape(B * L, kernel * kernel * C, D), Ho, Wo


class PrimaryCaps(nn.Module):
    """Conv2d with C·D channels, grouped into C types of D dims per location, then squashed.

    ``layout="channel"`` (correct): channels [t·D, (t+1)·D) of type t at one
    location form a capsule. ``layout="reshape"``: the authors' public code,
    ``conv_out.view(B, -1, D)`` on the NCHW tensor, which groups D consecutive
    spatial values of one channel; kept only as a faithful-reproduction switch.
    """

    def __init__(self, in_channels: int, C: int, D: int, kernel: int = 3, stride: int = 2,
                 padding: int = 0, layout: str = "channel"):
        super().__init__()
        if layout not in ("channel", "reshape"):
            raise ValueError(f"layout must be 'channel' or 'reshape', got {layout!r}")
        self.C, self.D, self.layout = C, D, layout
        self.conv = nn.Conv2d(in_channels, C * D, kernel, stride=stride, padding=padding)

    def group(self, conv_out: Tensor) -> Tensor:
        """(B, C·D, H, W) conv output -> (B, H, W, C, D) capsules (before squash)."""
        B, _, H, W = conv_out.shape
        if self.layout == "reshape":
            return conv_out.reshape(B, H, W, self.C, self.D)  # plain reshape of NCHW memory
        return conv_out.view(B, self.C, self.D, H, W).permute(0, 3, 4, 1, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (capsules (B, H, W, C, D), conv output (B, C·D, H, W) before squash)."""
        pre = self.conv(x)
        with torch.autocast(device_type=pre.device.type, enabled=False):
            caps = squash(self.group(pre).float())
        return caps, pre


class ConvCaps(nn.Module):
    """Convolutional capsule layer (an IntermediateCaps of the paper, after EM's ConvCaps).

    Each (kernel position, input type, output type) has its own Dout×Din
    transformation matrix: ``weight`` is (k·k·Cin, Cout, Dout, Din). Every input
    capsule of the k×k×Cin window of an output location votes for the Cout
    output types at that location, and dynamic routing normalises its coupling
    coefficients over those Cout types.

    With ``recompute=True`` the votes are recomputed in the backward pass
    (gradient checkpointing): identical numbers, and the (B·L, Cout, k·k·Cin, D)
    vote tensor is never kept for backward - the dominant memory of deep nets.
    """

    def __init__(self, Cin: int, Din: int, Cout: int, Dout: int, kernel: int = 3, stride: int = 1,
                 padding: int = 1, iters: int = 3, init_std: float = 0.3, recompute: bool = True):
        super().__init__()
        self.Cout, self.Dout = Cout, Dout
        self.kernel, self.stride, self.padding, self.iters = kernel, stride, padding, iters
        self.recompute = recompute
        self.weight = nn.Parameter(torch.randn(kernel * kernel * Cin, Cout, Dout, Din) * init_std)

    def _route(self, u: Tensor) -> Tensor:
        B = u.shape[0]
        windows, Ho, Wo = unfold_capsules(u, self.kernel, self.stride, self.padding)  # (B·L, 9Cin, Din)
        u_hat = capsule_votes(windows, self.weight.float(), contiguous=False)  # (B·L, Cout, 9Cin, Dout)
        v, _ = dynamic_routing(u_hat, self.iters)  # (B·L, Cout, Dout)
        return v.view(B, Ho, Wo, self.Cout, self.Dout)

    def forward(self, u: Tensor) -> Tensor:
        """(B, H, W, Cin, Din) -> (B, Ho, Wo, Cout, Dout)."""
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.float()
            if self.recompute and torch.is_grad_enabled() and u.requires_grad:
                return checkpoint(self._route, u, use_reentrant=False)
            return self._route(u)


class ClassCaps(nn.Module):
    """Fully connected capsule layer: every input capsule votes for every class.

    ``weight`` is (K, N, M, D) with K = H·W·C input capsules, N classes of M
    dims. Routing normalises over the N classes.
    """

    def __init__(self, num_inputs: int, Din: int, num_classes: int, Dout: int = 16, iters: int = 3,
                 init_std: float = 0.3, recompute: bool = True):
        super().__init__()
        self.iters, self.recompute = iters, recompute
        self.weight = nn.Parameter(torch.randn(num_inputs, num_classes, Dout, Din) * init_std)

    def _route(self, u: Tensor) -> Tensor:
        B = u.shape[0]
        u_hat = capsule_votes(u.reshape(B, -1, u.shape[-1]), self.weight.float())  # (B, N, K, M)
        v, _ = dynamic_routing(u_hat, self.iters)  # (B, N, M)
        return v

    def forward(self, u: Tensor) -> Tensor:
        """(B, H, W, C, D) -> (B, N, M)."""
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.float()
            if self.recompute and torch.is_grad_enabled() and u.requires_grad:
                return checkpoint(self._route, u, use_reentrant=False)
            return self._route(u)
