"""Capsule layers: PrimaryCaps, ConvCaps (IntermediateCaps) and ClassCaps.

Capsule tensors are laid out as ``(B, H, W, C, D)``: C capsule types of D
dimensions at each of H×W locations. A capsule is the D channels of one type
at one location (trap 2 of DESIGN.md: never D consecutive *spatial* values).

ConvCaps and ClassCaps both compute votes ``u_hat[j|k] = W_kj u_k`` with
:func:`capsule_votes` and route them with :func:`capslib.engine.routing.dynamic_routing`.

Three remedies for vanishing activations, each off by default (ModelConfig ``squash_bias``,
``squash_fn``, ``residual``): a trainable parent bias before the squash of ConvCaps and ClassCaps
(Peer et al. 2021), Efficient-CapsNet's squash in every capsule layer (Mazzia et al. 2021), and an
identity shortcut around a ConvCaps layer whose input and output shapes match (DeepCaps, Rajasegaran
et al. 2019). See :class:`ConvCaps` for the exact forms and their sources.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from . import fused_routing
from .routing import SQUASH_EPS, dynamic_routing, get_squash, routing_dtype

__all__ = ["PrimaryCaps", "ConvCaps", "ClassCaps", "capsule_votes", "unfold_capsules", "use_fused_routing"]


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


def unfold_capsules(u: Tensor, kernel: int, stride: int, padding: int,
                    layout: str = "channel") -> tuple[Tensor, int, int]:
    """Gather each output location's k×k×C window of input capsules.

    Args:
        u: (B, H, W, C, D).
        layout: "channel" (correct): child = the D dims of one type at one window position.
            "reshape" (the authors' code, trap 2 of DESIGN.md): the capsule memory, in the
            (B, H, W, C, D) order, is re-viewed as an NCHW map (B, C·D, H, W) with no permute,
            unfolded, and the (B, C·D·k·k, L) unfold output is re-viewed as (B, L, k·k·C, D), again
            with no permute: a "child" is then D consecutive unfold values (mostly one input channel
            at one kernel offset over D consecutive locations).

    Returns:
        windows: (B·L, k·k·C, D) with L = Ho·Wo; child index = kernel_pos·C + type ("channel").
        Ho, Wo: output grid size.
    """
    B, H, W, C, D = u.shape
    Ho = (H + 2 * padding - kernel) // stride + 1
    Wo = (W + 2 * padding - kernel) // stride + 1
    L = Ho * Wo
    if layout == "reshape":
        x = u.reshape(B, C * D, H, W)  # (B, C·D, H, W): the (H, W, C, D) memory read as NCHW, no permute
        cols = F.unfold(x, kernel_size=kernel, stride=stride, padding=padding)  # (B, C·D·k·k, L)
        return cols.reshape(B * L, kernel * kernel * C, D), Ho, Wo  # plain re-view, no permute
    if layout != "channel":
        raise ValueError(f"layout must be 'channel' or 'reshape', got {layout!r}")
    x = u.permute(0, 3, 4, 1, 2).reshape(B, C * D, H, W)  # (B, C·D, H, W), channel = type·D + dim
    cols = F.unfold(x, kernel_size=kernel, stride=stride, padding=padding)  # (B, C·D·k·k, L)
    cols = cols.view(B, C, D, kernel * kernel, L)  # unfold orders (channel, kernel_pos)
    cols = cols.permute(0, 4, 3, 1, 2)  # (B, L, k·k, C, D)
    return cols.reshape(B * L, kernel * kernel * C, D), Ho, Wo


def use_fused_routing(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every ConvCaps/ClassCaps of ``model`` to the fused CPU kernel (``enabled``, the
    default wherever it runs) or to the PyTorch path (which e.g. ``FlopCounterMode`` can see into).
    Same numbers either way, to rounding. Returns ``model``."""
    for m in model.modules():
        if isinstance(m, (ConvCaps, ClassCaps)):
            m.fused = enabled
    return model


def _routed_forward(layer: nn.Module, u: Tensor) -> Tensor:
    """The forward of ConvCaps and ClassCaps: decide once whether the fused kernel routes ``u``; on the
    PyTorch path with ``recompute``, checkpoint so the votes are recomputed in backward (the fused kernel
    keeps no votes for backward in the first place)."""
    with torch.autocast(device_type=u.device.type, enabled=False):
        u = routing_dtype(u)
        fused = layer.fused and fused_routing.usable(u, layer.weight, layer.kernel_lacks)
        if not fused and layer.recompute and torch.is_grad_enabled() and u.requires_grad:
            return checkpoint(layer._route, u, False, use_reentrant=False)
        return layer._route(u, fused)


class PrimaryCaps(nn.Module):
    """Conv2d with C·D channels, grouped into C types of D dims per location, then squashed.

    ``layout="channel"`` (correct): channels [t·D, (t+1)·D) of type t at one
    location form a capsule. ``layout="reshape"``: the authors' public code,
    ``conv_out.view(B, -1, D)`` on the NCHW tensor, which groups D consecutive
    spatial values of one channel; kept only as a faithful-reproduction switch.

    ``squash_fn``: "sabour" (default) or "efficient" (:func:`capslib.engine.routing.efficient_squash`).
    """

    def __init__(self, in_channels: int, C: int, D: int, kernel: int = 3, stride: int = 2,
                 padding: int = 0, layout: str = "channel", squash_eps: float = SQUASH_EPS,
                 squash_fn: str = "sabour"):
        super().__init__()
        if layout not in ("channel", "reshape"):
            raise ValueError(f"layout must be 'channel' or 'reshape', got {layout!r}")
        self.C, self.D, self.layout, self.squash_eps = C, D, layout, squash_eps
        self.squash_fn = squash_fn
        get_squash(squash_fn)  # ValueError now, not in forward()
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
            caps = get_squash(self.squash_fn)(routing_dtype(self.group(pre)), eps=self.squash_eps)
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

    Remedies for vanishing activations (all off by default; ModelConfig fields of the same names):

    * ``squash_bias`` (None, or the initial value): a trainable ``bias`` of shape (Cout, Dout), one
      vector per output capsule type, shared over locations and images, added to s_j before the squash
      in every routing iteration: v_j = squash(Σ_k c_jk u_hat[j|k] + b_j). Peer, Stabinger &
      Rodríguez-Sánchez, "Limitation of capsule networks", Pattern Recognit. Lett. 2021: their code
      (peerdavid/capsnet-limitations, capsule/capsule_layer.py, class ``Capsule``) keeps a bias of shape
      (1, out_capsules, out_dim), initialised to the constant 0.1, and computes
      ``s_j = reduce_sum(c_ij * u_hat, axis=2) + bias`` inside the routing loop, before ``squash``.
      (Two versions of peerdavid/limitation-of-capsule-networks initialise it to 0.0 and to ``stdev``
      = 0.1; the value is a config field.) Their capsule layers are fully connected, so sharing the
      bias over the locations of a ConvCaps layer is our choice: a conv layer's bias is shared the
      same way, and so is the 0.1-initialised routing bias of DeepCaps' ConvCapsuleLayer3D
      (brjathu/deepcaps, capslayers.py: ``b`` of shape (num_capsule, num_atoms, 1, 1), tiled over
      height and width and added before the squash in ``update_routing``).
    * ``squash_fn``: "sabour" or "efficient" (:func:`capslib.engine.routing.efficient_squash`).
    * ``residual``: v = (routed output) + u, the input poses added to the output AFTER its squash,
      where the shapes match (Cin == Cout, Din == Dout, stride 1 and 2·padding == kernel − 1, so the
      grid keeps its size); at any other shape it is skipped (``residual`` then reads False, and
      ``residual_requested`` True). After the squash, as DeepCaps does (brjathu/deepcaps, deepcaps.py:
      ``layers.Add()([l, l_skip])`` of two Conv2DCaps outputs, each squashed at its end, with no squash
      after the sum): the shortcut is an exact identity, so a capsule that the routing leaves short
      still reaches the next layer at its input's length. Re-squashing the sum would undo that (squash
      maps a short s to ≈ ‖s‖², the very collapse the shortcut is to bypass). The price: a length is no
      longer ≤ 1. Each residual layer adds at most 1 (its squashed output), so after l of them a length
      is below l + 1; ClassCaps squashes its own output, so the class lengths stay in [0, 1).
    """

    def __init__(self, Cin: int, Din: int, Cout: int, Dout: int, kernel: int = 3, stride: int = 1,
                 padding: int = 1, iters: int = 3, init_std: float = 0.3, recompute: bool = True,
                 squash_eps: float = SQUASH_EPS, layout: str = "channel", squash_bias: Optional[float] = None,
                 squash_fn: str = "sabour", residual: bool = False):
        super().__init__()
        if layout not in ("channel", "reshape"):
            raise ValueError(f"layout must be 'channel' or 'reshape', got {layout!r}")
        self.layout = layout  # window layout of unfold_capsules: "reshape" = the authors' code
        self.Cout, self.Dout = Cout, Dout
        self.kernel, self.stride, self.padding, self.iters = kernel, stride, padding, iters
        self.recompute, self.squash_eps = recompute, squash_eps
        self.fused = True  # route with capslib.engine.fused_routing where it runs (CPU); False: the PyTorch path
        self.weight = nn.Parameter(torch.randn(kernel * kernel * Cin, Cout, Dout, Din) * init_std)
        self.bias = _squash_bias(squash_bias, Cout, Dout)  # (Cout, Dout) or None
        self.squash_fn = squash_fn
        get_squash(squash_fn)  # ValueError now, not in forward()
        self.keeps_shape = Cin == Cout and Din == Dout and stride == 1 and 2 * padding == kernel - 1
        self.residual_requested = residual
        self.residual = residual and self.keeps_shape  # skipped where the shapes differ

    def _route(self, u: Tensor, fused: bool = False) -> Tensor:
        B = u.shape[0]
        windows, Ho, Wo = unfold_capsules(u, self.kernel, self.stride, self.padding, self.layout)  # (B·L, 9Cin, Din)
        weight = self.weight.to(u.dtype)  # (9Cin, Cout, Dout, Din)
        if fused:  # votes never materialised (capslib.engine.fused_routing)
            bias = _kernel_bias(self, u)  # (Cout, Dout) or None; v: (B·L, Cout, Dout)
            v = fused_routing.route(windows, weight, self.iters, self.squash_eps, bias, self.squash_fn)
        else:
            u_hat = capsule_votes(windows, weight, contiguous=False)  # (B·L, Cout, 9Cin, Dout)
            v, _ = dynamic_routing(u_hat, self.iters, eps=self.squash_eps, bias=self.bias,
                                   squash_fn=self.squash_fn)  # (B·L, Cout, Dout)
        return v.view(B, Ho, Wo, self.Cout, self.Dout)

    @property
    def kernel_lacks(self) -> Optional[str]:
        """The remedies of this layer that the fused kernel does not implement (None: it routes it)."""
        return _kernel_lacks(self)

    def forward(self, u: Tensor) -> Tensor:
        """(B, H, W, Cin, Din) -> (B, Ho, Wo, Cout, Dout)."""
        v = _routed_forward(self, u)
        if self.residual:  # after the squash, as DeepCaps (see the class docstring)
            v = v + routing_dtype(u)  # (B, H, W, C, D)
        return v


class ClassCaps(nn.Module):
    """Fully connected capsule layer: every input capsule votes for every class.

    ``weight`` is (K, N, M, D) with K = H·W·C input capsules, N classes of M
    dims. Routing normalises over the N classes.

    ``squash_bias`` (a trainable (N, M) ``bias`` added before every squash, initialised to the
    value) and ``squash_fn`` as in :class:`ConvCaps`; there is no residual (the shapes differ).
    """

    def __init__(self, num_inputs: int, Din: int, num_classes: int, Dout: int = 16, iters: int = 3,
                 init_std: float = 0.3, recompute: bool = True, squash_eps: float = SQUASH_EPS,
                 squash_bias: Optional[float] = None, squash_fn: str = "sabour"):
        super().__init__()
        self.iters, self.recompute, self.squash_eps = iters, recompute, squash_eps
        self.fused = True  # as in ConvCaps
        self.weight = nn.Parameter(torch.randn(num_inputs, num_classes, Dout, Din) * init_std)
        self.bias = _squash_bias(squash_bias, num_classes, Dout)  # (N, M) or None
        self.squash_fn = squash_fn
        get_squash(squash_fn)  # ValueError now, not in forward()

    def _route(self, u: Tensor, fused: bool = False) -> Tensor:
        B = u.shape[0]
        children = u.reshape(B, -1, u.shape[-1])  # (B, K, D)
        weight = self.weight.to(u.dtype)  # (K, N, M, D)
        if fused:
            bias = _kernel_bias(self, u)  # (N, M) or None
            return fused_routing.route(children, weight, self.iters, self.squash_eps, bias, self.squash_fn)  # (B, N, M)
        u_hat = capsule_votes(children, weight)  # (B, N, K, M)
        v, _ = dynamic_routing(u_hat, self.iters, eps=self.squash_eps, bias=self.bias,
                               squash_fn=self.squash_fn)  # (B, N, M)
        return v

    @property
    def kernel_lacks(self) -> Optional[str]:
        """As :attr:`ConvCaps.kernel_lacks`."""
        return _kernel_lacks(self)

    def forward(self, u: Tensor) -> Tensor:
        """(B, H, W, C, D) -> (B, N, M)."""
        return _routed_forward(self, u)


def _squash_bias(value: Optional[float], J: int, D: int) -> Optional[nn.Parameter]:
    """The parent bias of a routing layer: a (J, D) parameter filled with ``value``, or None."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"squash_bias must be None or a finite number (the bias's initial value), got {value!r}")
    return nn.Parameter(torch.full((J, D), float(value)))


def _kernel_lacks(layer: nn.Module) -> Optional[str]:
    """What of ``layer``'s routing the fused kernel does not implement, or None. It takes the parent bias
    (``squash_bias``) and the squashes of :data:`capslib.engine.fused_routing.SQUASHES`."""
    lacks = [f"squash_fn={layer.squash_fn!r}"] if layer.squash_fn not in fused_routing.SQUASHES else []
    return " and ".join(lacks) or None


def _kernel_bias(layer: nn.Module, u: Tensor) -> Optional[Tensor]:
    """``layer.bias`` in ``u``'s dtype for the fused kernel (as its weight), or None."""
    return None if layer.bias is None else layer.bias.to(u.dtype)
