"""Straightforward capsule layers, written the way typical public CapsNet code writes them.

This is the comparison point of ``benchmarks/bench_routing.py``; it is not used by capslib.

Same parameters and the same function as :class:`capslib.engine.capsules.ConvCaps` and
:class:`capslib.engine.capsules.ClassCaps` (same weight shapes, child index
``kernel_pos·Cin + type``, coupling coefficients softmaxed over the output
types, squash with the same ``eps``), but computed the typical way:

* ``F.unfold`` to the k×k windows;
* the child capsules are ``expand``-ed to the full vote input
  ``(B, L, 9·Cin, Cout, Din, 1)`` and ``torch.matmul(W, u)`` forms the full vote
  tensor ``u_hat`` (``matmul`` broadcasts ``W`` over the batch, which
  materialises one copy of W per image and location, as ``torch.cat([W] * B)``
  does in many public implementations);
* a Python loop over the routing iterations with ``(c[..., None] * u_hat).sum(...)``,
  ``squash`` and ``(u_hat * v).sum(-1)`` agreements, each a full-size temporary;
* nothing fused, no gradient checkpointing: autograd keeps every vote tensor.

    python benchmarks/baseline_routing.py            # self-check against capslib (1e-4)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
from capslib.engine.config import ModelConfig  # noqa: E402
from capslib.engine.model import CapsNet  # noqa: E402

__all__ = ["squash", "BaselineConvCaps", "BaselineClassCaps", "baseline_capsnet", "check"]

EPS = 1e-8  # capslib.engine.routing.SQUASH_EPS, so squash(0) = 0 in both


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """v = ‖s‖²/(1+‖s‖²) · s/‖s‖ (squared form, as capslib and the authors' code)."""
    squared_norm = (s ** 2).sum(dim=dim, keepdim=True)
    scale = squared_norm / (1 + squared_norm)
    return scale * s / torch.sqrt(squared_norm + EPS)


class BaselineConvCaps(nn.Module):
    """ConvCaps, typical style. ``weight``: (k·k·Cin, Cout, Dout, Din), as capslib's."""

    def __init__(self, Cin: int, Din: int, Cout: int, Dout: int, kernel: int = 3, stride: int = 1,
                 padding: int = 1, iters: int = 3, init_std: float = 0.1):
        super().__init__()
        self.Cin, self.Din, self.Cout, self.Dout = Cin, Din, Cout, Dout
        self.kernel, self.stride, self.padding, self.iters = kernel, stride, padding, iters
        self.weight = nn.Parameter(torch.randn(kernel * kernel * Cin, Cout, Dout, Din) * init_std)

    def forward(self, u: Tensor) -> Tensor:
        """(B, H, W, Cin, Din) -> (B, Ho, Wo, Cout, Dout)."""
        B, H, W, Cin, Din = u.shape
        k = self.kernel
        x = u.permute(0, 3, 4, 1, 2).reshape(B, Cin * Din, H, W)
        cols = F.unfold(x, kernel_size=k, stride=self.stride, padding=self.padding)  # (B, Cin·Din·k·k, L)
        Ho = (H + 2 * self.padding - k) // self.stride + 1
        Wo = (W + 2 * self.padding - k) // self.stride + 1
        L = Ho * Wo
        K = k * k * Cin
        cols = cols.view(B, Cin, Din, k * k, L).permute(0, 4, 3, 1, 2).reshape(B, L, K, Din)
        # full vote input: every child copied for every parent type
        u_in = cols[:, :, :, None, :, None].expand(B, L, K, self.Cout, Din, 1)
        u_hat = torch.matmul(self.weight, u_in).squeeze(-1)  # (B, L, K, Cout, Dout)

        b = torch.zeros(B, L, K, self.Cout, device=u.device, dtype=u_hat.dtype)
        for i in range(self.iters):
            c = F.softmax(b, dim=-1)  # over the Cout parent types
            s = (c[..., None] * u_hat).sum(dim=2)  # (B, L, Cout, Dout)
            v = squash(s)
            if i < self.iters - 1:
                b = b + (u_hat * v[:, :, None, :, :]).sum(dim=-1)  # (B, L, K, Cout)
        return v.view(B, Ho, Wo, self.Cout, self.Dout)


class BaselineClassCaps(nn.Module):
    """ClassCaps, typical style. ``weight``: (K, N, M, D), as capslib's."""

    def __init__(self, num_inputs: int, Din: int, num_classes: int, Dout: int = 16, iters: int = 3,
                 init_std: float = 0.1):
        super().__init__()
        self.num_classes, self.Dout, self.iters = num_classes, Dout, iters
        self.weight = nn.Parameter(torch.randn(num_inputs, num_classes, Dout, Din) * init_std)

    def forward(self, u: Tensor) -> Tensor:
        """(B, H, W, C, D) -> (B, N, M)."""
        B = u.shape[0]
        u = u.reshape(B, -1, u.shape[-1])  # (B, K, D)
        K, D = u.shape[1], u.shape[2]
        u_in = u[:, :, None, :, None].expand(B, K, self.num_classes, D, 1)
        u_hat = torch.matmul(self.weight, u_in).squeeze(-1)  # (B, K, N, M)

        b = torch.zeros(B, K, self.num_classes, device=u.device, dtype=u_hat.dtype)
        for i in range(self.iters):
            c = F.softmax(b, dim=-1)  # over the N classes
            s = (c[..., None] * u_hat).sum(dim=1)  # (B, N, M)
            v = squash(s)
            if i < self.iters - 1:
                b = b + (u_hat * v[:, None, :, :]).sum(dim=-1)  # (B, K, N)
        return v


def baseline_capsnet(model_config: ModelConfig, like: Optional[CapsNet] = None) -> CapsNet:
    """A capslib CapsNet whose IntermediateCaps and ClassCaps are the baseline layers.

    The backbone and PrimaryCaps are capslib's. Weights are those of the
    freshly built CapsNet (so the same seed gives the same net as
    ``CapsNet(model_config)``), or copied from ``like`` when given.
    """
    cfg = model_config
    model = CapsNet(cfg)
    for i, layer in enumerate(model.intermediate):
        Cin_k, Cout, Dout, Din = layer.weight.shape
        new = BaselineConvCaps(Cin_k // (layer.kernel * layer.kernel), Din, Cout, Dout, kernel=layer.kernel,
                               stride=layer.stride, padding=layer.padding, iters=layer.iters)
        with torch.no_grad():
            new.weight.copy_(layer.weight)
        model.intermediate[i] = new
    K, N, M, D = model.classcaps.weight.shape
    new_cls = BaselineClassCaps(K, D, N, M, iters=model.classcaps.iters)
    with torch.no_grad():
        new_cls.weight.copy_(model.classcaps.weight)
    model.classcaps = new_cls
    if like is not None:
        model.load_state_dict(like.state_dict())
    return model


def check(atol: float = 1e-4, device: str = "cpu", verbose: bool = True) -> float:
    """Baseline and capslib agree (every capsule layer's output and all parameter gradients).

    Two small nets (C=4, D=8, I=2, 3×32×32, batch 3, train mode): the default
    ``init_std=0.1``, where deep capsule outputs are tiny (~1e-7), and
    ``init_std=0.5``, where they are O(1), so that an absolute tolerance is not
    vacuous. Each tensor must satisfy max|a-b| <= atol and
    max|a-b| / max|capslib| <= atol (the relative test is skipped for the conv
    biases right before BatchNorm, whose gradient is zero up to rounding).
    Returns the largest relative difference.
    """
    from capslib.engine.losses import margin_loss

    worst = 0.0
    for std in (0.1, 0.5):
        torch.manual_seed(0)
        cfg = ModelConfig(C=4, D=8, I=2, in_channels=3, image_size=32, init_std=std)
        ref = CapsNet(cfg).to(device)
        base = baseline_capsnet(cfg, like=ref).to(device)
        x = torch.randn(3, 3, 32, 32, device=device)
        y = torch.tensor([0, 3, 7], device=device)
        outs = []
        for net in (ref, base):
            net.train()
            net.zero_grad(set_to_none=True)
            out = net(x)
            margin_loss(out.lengths, y).backward()
            grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
            outs.append((out, grads))
        (o1, g1), (o2, g2) = outs
        pairs = [("lengths", o1.lengths, o2.lengths)]
        pairs += [(f"caps[{k}]", o1.capsules[k], o2.capsules[k]) for k in o1.capsules]
        pairs += [(f"grad[{k}]", g1[k], g2[k]) for k in g1]
        if verbose:
            print(f"init_std={std}:  {'tensor':30s} {'max|capslib|':>12s} {'max|diff|':>10s} {'rel':>10s}")
        for name, a, b in pairs:
            d = (a - b).abs().max().item()
            scale = a.abs().max().item()
            # a conv bias right before BatchNorm (backbone.i.0.bias) has zero gradient in
            # exact arithmetic: both nets give rounding noise there; compare it absolutely only
            zero_grad = name.startswith("grad[backbone.") and name.endswith(".0.bias]")
            rel = 0.0 if zero_grad or scale == 0 else d / scale
            worst = max(worst, rel)
            if verbose:
                print(f"  {'':12s}{name:30s} {scale:12.3e} {d:10.2e} {rel:10.2e}")
            assert d <= atol and rel <= atol, (
                f"baseline and capslib differ in {name} (init_std={std}): abs {d:.3e}, rel {rel:.3e} > {atol}")
    if verbose:
        print(f"baseline == capslib to {atol:g} (abs and relative): OK (worst relative {worst:.2e})")
    return worst


if __name__ == "__main__":
    check(device=sys.argv[1] if len(sys.argv) > 1 else "cpu")
