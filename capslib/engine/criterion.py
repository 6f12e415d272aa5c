"""The training signal per parameter group: what decides whether a deep CapsNet can learn at all.

A capsule length that is exactly zero gives an exactly zero gradient, but "exactly zero" is not what
decides training: float64 runs whose class lengths were 1e-13 to 1e-46 sat at chance like float32 runs
whose lengths were 0, and a CapsNet[20, 8, 6] run trained with a PrimaryCaps gradient of 5.5e-11
(DESIGN.md §3d). What an optimiser does with a gradient is what matters. Adam's first step moves each
weight by lr·g/(|g| + ε) with ε = 1e-8: a gradient far below ε moves nothing, one far above it moves the
weight by a full lr whatever its size. So for every parameter group (the backbone convolutions, PrimaryCaps,
each ConvCaps layer, the class capsules) this module measures, after a backward pass:

* ``grad_max``: the largest |gradient|;
* ``update_max`` and ``update_mean``: the largest and the mean |Adam first-step update| the gradient
  implies, lr·|g|/(|g| + ε), relative to the group's weight scale (RMS), i.e. the fraction of its size a
  weight moves in one step;

and, from the forward output, the mean capsule length of every capsule layer and the class capsules' mean
and max length. :func:`capslib.engine.train.fit` logs these at the first step of every epoch (with the
update Adam really made at that step, ``step_max`` / ``step_mean``), and the screens of
:mod:`capslib.experiments.criterion_screen` compute them at initialisation on a run's own first batches.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ADAM_EPS", "VANISHING_STEP", "parameter_groups", "gradient_signal", "step_signal", "length_signal", "snapshot"]

#: torch.optim.Adam's default ε, which the library's training uses.
ADAM_EPS = 1e-8
#: The rule committed with hypothesis H's predictions (results/collapse/predictions_h.md): a run whose largest
#: first Adam step at initialisation (``update_max`` over every group) is below this cannot learn.
VANISHING_STEP = 1e-5


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """``{"backbone": [...], "primary": [...], "inter1": [...], ..., "class": [...]}`` of a CapsNet, in
    forward order; parameters of any other module are grouped under "other"."""
    groups: dict[str, list[nn.Parameter]] = {"backbone": list(model.backbone.parameters()),
                                             "primary": list(model.primary.parameters())}
    if getattr(model, "primary_head", None) is not None:
        groups["primary"] += list(model.primary_head.parameters())
    for i, layer in enumerate(model.intermediate):
        groups[f"inter{i + 1}"] = list(layer.parameters())
    groups["class"] = list(model.classcaps.parameters())
    seen = {id(p) for ps in groups.values() for p in ps}
    other = [p for p in model.parameters() if id(p) not in seen]
    if other:
        groups["other"] = other
    return groups


def _rms(params: list[nn.Parameter]) -> float:
    sq = sum(float(p.detach().double().square().sum()) for p in params)
    n = sum(p.numel() for p in params)
    return (sq / max(n, 1)) ** 0.5


def gradient_signal(model: nn.Module, lr: float, eps: float = ADAM_EPS) -> dict[str, dict[str, float]]:
    """Per group, after ``loss.backward()``: ``grad_max``, and the implied first Adam step relative to the
    weights' RMS, ``update_max`` and ``update_mean`` (see the module docstring). A parameter without a
    gradient counts as a zero gradient."""
    out: dict[str, dict[str, float]] = {}
    for name, params in parameter_groups(model).items():
        gmax, umax, usum, n = 0.0, 0.0, 0.0, 0
        for p in params:
            g = p.grad.detach().double().abs() if p.grad is not None else torch.zeros(p.shape, dtype=torch.float64)
            u = lr * g / (g + eps)  # |Adam's first step| per weight
            gmax = max(gmax, float(g.max())) if g.numel() else gmax
            umax = max(umax, float(u.max())) if u.numel() else umax
            usum += float(u.sum())
            n += u.numel()
        scale = _rms(params) or 1.0
        out[name] = {"grad_max": gmax, "update_max": umax / scale, "update_mean": usum / max(n, 1) / scale}
    return out


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A copy of every parameter, to measure the step an optimiser then takes (:func:`step_signal`)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def step_signal(model: nn.Module, before: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Per group, the update the optimiser really made since ``before`` (:func:`snapshot`), relative to the
    weights' RMS before it: ``step_max`` and ``step_mean``."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    out: dict[str, dict[str, float]] = {}
    for group, params in parameter_groups(model).items():
        dmax, dsum, n, sq = 0.0, 0.0, 0, 0.0
        for p in params:
            old = before[by_id[id(p)]].double()
            d = (p.detach().double() - old).abs()
            dmax = max(dmax, float(d.max())) if d.numel() else dmax
            dsum += float(d.sum())
            n += d.numel()
            sq += float(old.square().sum())
        scale = (sq / max(n, 1)) ** 0.5 or 1.0
        out[group] = {"step_max": dmax / scale, "step_mean": dsum / max(n, 1) / scale}
    return out


def length_signal(out: Any) -> dict[str, float]:
    """Mean capsule length of every capsule layer of a forward output (``primary``, ``inter1``, ...,
    ``class``), plus ``class_max``: the longest class capsule of the batch."""
    lengths = {name: float(caps.detach().double().norm(dim=-1).mean()) for name, caps in out.capsules.items()}
    lengths["class_max"] = float(out.lengths.detach().double().max())
    return lengths
