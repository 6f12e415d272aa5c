"""Dead-capsule probes (paper 000 §3.5 and paper 002 §3.3, eq. 12).

For every capsule layer (PrimaryCaps, each IntermediateCaps, ClassCaps) and
every capsule type, over an evaluation pass:

* ``"paper000"``: the norm, along the capsule dimension, of the capsule output
  averaged over images and locations: ‖mean_{b,h,w} u[b,h,w,t,:]‖;
* ``"paper002"``: the mean over images and locations of the capsule lengths
  ‖u[b,h,w,t,:]‖ (eq. 12).

A capsule type is *dead* when its activation is ≤ 0.01 (both papers). The
first definition is never larger than the second (triangle inequality): vectors
pointing different ways cancel in the mean.

Routings with a separate scalar activation (EM, self-routing, VB; the model's
``CapsNetOutput.activations``): for the layers given there, eq. (12) of paper 002
is applied to that activation a ∈ [0, 1] - A_t = mean_{b,h,w} a[b,h,w,t] - and
both definitions report it (for a non-negative scalar, the norm of the mean and
the mean of the norms coincide). Seed 002 §3.3: dead when A_t ≤ 0.01.

Probing only reads the forward outputs under ``torch.no_grad``; it changes
neither the outputs nor training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["DEAD_THRESHOLD", "ActivationProbe", "ProbeResult", "probe_model"]

DEAD_THRESHOLD = 0.01
DEFINITIONS = ("paper000", "paper002")


@dataclass
class ProbeResult:
    """Per-layer, per-type mean activations under both definitions.

    ``activations[defn][layer]`` is a 1-D array of length = the layer's type
    count (C for capsule layers, N for ClassCaps). Use :meth:`matrix` for a
    heatmap (layers × types, NaN-padded) and :meth:`dead_fraction` for the
    fraction of dead types per layer.
    """

    layers: list[str]
    activations: dict[str, dict[str, np.ndarray]]
    threshold: float = DEAD_THRESHOLD

    def dead_fraction(self, definition: str = "paper000") -> dict[str, float]:
        acts = self.activations[definition]
        return {k: float((acts[k] <= self.threshold).mean()) for k in self.layers}

    def matrix(self, definition: str = "paper000", layers: Optional[list[str]] = None) -> np.ndarray:
        """(n_layers, max_types) activation matrix, NaN where a layer has fewer types."""
        layers = layers or self.layers
        acts = self.activations[definition]
        width = max(len(acts[k]) for k in layers)
        out = np.full((len(layers), width), np.nan)
        for i, k in enumerate(layers):
            out[i, : len(acts[k])] = acts[k]
        return out

    def to_dict(self) -> dict:
        return {
            "layers": self.layers,
            "threshold": self.threshold,
            "activations": {d: {k: v.tolist() for k, v in a.items()} for d, a in self.activations.items()},
            "dead_fraction": {d: self.dead_fraction(d) for d in self.activations},
        }


@dataclass
class ActivationProbe:
    """Accumulates capsule statistics batch by batch; call :meth:`update` then :meth:`result`."""

    threshold: float = DEAD_THRESHOLD
    _vec_sum: dict[str, Tensor] = field(default_factory=dict)  # layer -> (types, dims) Σ u
    _len_sum: dict[str, Tensor] = field(default_factory=dict)  # layer -> (types,) Σ ‖u‖
    _count: dict[str, int] = field(default_factory=dict)       # layer -> images × locations
    _act_sum: dict[str, Tensor] = field(default_factory=dict)  # layer -> (types,) Σ a (scalar activations)
    _act_count: dict[str, int] = field(default_factory=dict)   # layer -> images × locations

    @torch.no_grad()
    def update(self, capsules: dict[str, Tensor], activations: Optional[dict[str, Tensor]] = None) -> None:
        """Add one batch: ``capsules`` (B, H, W, T, D) per layer and, where a routing has them, the
        scalar ``activations`` (B, H, W, T) per layer, which then define that layer's activation."""
        for name, a in (activations or {}).items():  # a: (B, H, W, T)
            s = a.detach().double().sum(dim=(0, 1, 2)).cpu()  # (T,)
            n = a.shape[0] * a.shape[1] * a.shape[2]
            if name in self._act_sum:
                self._act_sum[name] += s
                self._act_count[name] += n
            else:
                self._act_sum[name], self._act_count[name] = s, n
        for name, u in capsules.items():  # u: (B, H, W, T, D)
            u = u.detach().double()
            vec = u.sum(dim=(0, 1, 2)).cpu()  # (T, D)
            lens = torch.linalg.vector_norm(u, dim=-1).sum(dim=(0, 1, 2)).cpu()  # (T,)
            n = u.shape[0] * u.shape[1] * u.shape[2]
            if name in self._vec_sum:
                self._vec_sum[name] += vec
                self._len_sum[name] += lens
                self._count[name] += n
            else:
                self._vec_sum[name], self._len_sum[name], self._count[name] = vec, lens, n

    def result(self) -> ProbeResult:
        if not self._count and not self._act_count:
            raise ValueError("ActivationProbe.result() called before any update()")
        layers = list(self._vec_sum) + [k for k in self._act_sum if k not in self._vec_sum]
        a000 = {k: torch.linalg.vector_norm(self._vec_sum[k] / self._count[k], dim=-1).numpy() for k in self._vec_sum}
        a002 = {k: (self._len_sum[k] / self._count[k]).numpy() for k in self._vec_sum}
        for k in self._act_sum:  # scalar activations: eq. (12) on a itself, under both names
            a000[k] = a002[k] = (self._act_sum[k] / self._act_count[k]).numpy()
        return ProbeResult(layers=layers, activations={"paper000": a000, "paper002": a002},
                           threshold=self.threshold)


@torch.no_grad()
def probe_model(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: Optional[torch.device] = None,
                threshold: float = DEAD_THRESHOLD) -> ProbeResult:
    """Run ``model`` in eval mode over ``batches`` and return the capsule activations.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    probe = ActivationProbe(threshold=threshold)
    try:
        for x, _ in batches:
            out = model(x.to(device))
            probe.update(out.capsules, getattr(out, "activations", None))
    finally:
        model.train(was_training)
    return probe.result()
