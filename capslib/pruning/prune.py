"""Channel pruning of CapsNet (paper §3.4): CHIP scores, prune plans, rebuild, params and MACs.

Four conv layers are pruned: the three backbone convs (``conv1``..``conv3``,
each with its BatchNorm) and the PrimaryCaps conv (``primary``). A prune
happens in three steps, each inspectable on its own:

1. **Score.** :func:`ci_layer_scores` runs the model in eval mode over a few
   training batches (CHIP: 5 batches of 128) and scores every channel with
   :func:`capslib.pruning.chip.ci_scores` - the backbone on its post-ReLU maps, the
   PrimaryCaps on its conv output before squash.
2. **Plan.** :func:`make_plan` removes, in each layer, the lowest-CI channels.
   How many is :func:`prune_count`: PR × channels rounded *up* to a multiple
   of D (§3.4: 12 channels, PR 0.25, D 4 -> 4 removed, 8 kept); a layer with
   fewer than D channels is skipped. ``rule="authors"`` (``ModelConfig.prune_rule``)
   is the authors' code instead: int(PR × channels) rounded *down* to a multiple
   of D, at least D. The result is a :class:`PrunePlan`: per
   layer the channels before and after and the removed indices, plus the
   whole-model parameters and MACs before and after.
3. **Rebuild.** :func:`rebuild` builds a plain, smaller ``CapsNet`` (explicit
   ``backbone_widths``, C' = kept PrimaryCaps channels / D capsule types) and
   copies the kept channels' conv weights (out side, and in side of the next
   conv), BatchNorm affine parameters and running statistics. The capsule
   layers are re-initialised, as in the paper (or, for whole dropped types,
   sliced). With ``ModelConfig.prune_bn == "fresh"`` (the authors' code) the
   BatchNorm layers are new instead of copied.

Two ways to prune PrimaryCaps (``mode``):

* ``"channel"`` (the paper's): PrimaryCaps channels are pruned one by one like
  any conv layer. The kept channels, in their original order, are *regrouped*:
  kept channel k becomes dimension k % D of capsule type k // D. A new capsule
  may therefore mix dimensions of several original types; it has no
  counterpart in the original capsule layers.
* ``"capsule"``: a capsule type is scored by the summed CI of its D channels
  and whole types are dropped. The kept types keep their D dimensions in order,
  so every new capsule *is* an original capsule type, and the capsule weights
  of the next layers can be sliced instead of re-initialised
  (``rebuild(..., slice_capsule_weights=True)``).

The backbone convs are pruned channel by channel in both modes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..engine.config import PRUNE_RULES, ModelConfig
from ..engine.model import CapsNet, count_params
from .chip import ci_scores

__all__ = [
    "LAYERS",
    "MODES",
    "LayerPlan",
    "PrunePlan",
    "prune_count",
    "chip_batches",
    "ci_layer_scores",
    "make_plan",
    "plan_from_removed",
    "pruned_config",
    "rebuild",
    "count_macs",
    "mac_breakdown",
    "params_of",
]

#: The pruned conv layers, in forward order; also the keys of ``CapsNetOutput.feature_maps``.
LAYERS = ("conv1", "conv2", "conv3", "primary")
MODES = ("channel", "capsule")


# ----------------------------------------------------------------------------- counting


def prune_count(channels: int, pr: float, D: int, rule: str = "paper") -> int:
    """Number of channels removed from a layer of ``channels`` channels at ratio ``pr`` (paper §3.4).

    ``rule="paper"`` (default): the ideal count PR·channels is rounded *up* to the next
    multiple of D ("pruned in multiple of D"; 12 channels, PR 0.25, D 4: 3 -> 4). For a
    layer whose width is a multiple of D - always the PrimaryCaps, C·D - the kept count
    is then a multiple of D too. A layer with fewer than D channels is skipped (0).

    ``rule="authors"`` (their public code): n = int(PR·channels); if n > D, n is rounded
    *down* to a multiple of D, else n = D (so any PR > 0 removes at least D). 160 channels,
    D 8: PR 0.125 -> 16 (paper rule: 24), 0.375 -> 56 (paper rule: 64). The authors' code
    has no skip for layers narrower than D; here such layers are skipped under both rules.

    PR 0 removes nothing under both rules. This can leave fewer than D channels (or
    none); :func:`make_plan` refuses such plans.
    """
    _check_ratio(pr)
    _check_positive_int(channels, "channels")
    _check_positive_int(D, "D")
    if rule not in PRUNE_RULES:
        raise ValueError(f"prune rule must be one of {PRUNE_RULES}, got {rule!r}")
    if channels < D or pr == 0:
        return 0
    if rule == "authors":
        n = int(pr * channels + 1e-9)  # int() as their code; the tolerance keeps 0.6 * 20 = 11.999.. at 12
        return n - n % D if n > D else D
    ideal = pr * channels / D  # in units of D channels
    return D * math.ceil(ideal - 1e-9)  # tolerance: 0.6 * 20 / 4 = 3.0000000000000004 must give 3


def mac_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Multiply-accumulates of one image's forward pass, per layer (analytic).

    * conv (backbone, PrimaryCaps): Ho·Wo · Cout · Cin · k² (bias, BatchNorm, ReLU
      and squash are not multiply-accumulates of a matrix product and are left out);
    * IntermediateCaps (ConvCaps k×k, stride 1): votes L · (k²·C) · C · D·D for the
      L = G² output locations, plus routing;
    * ClassCaps: votes K · N · M · D with K = G²·C input capsules, plus routing;
    * dynamic routing with r iterations over (J parents, K children, D dims) per
      problem: r weighted sums and r−1 agreements, each J·K·D, i.e. (2r−1)·J·K·D.

    These are exactly half the FLOPs that ``torch.utils.flop_counter`` counts for
    the convolutions and (batched) matrix products of ``CapsNet.forward``.
    """
    sizes = [s for _, s in cfg.feature_sizes()]  # conv1, conv2, conv3, primary output sides
    chans = (cfg.in_channels,) + tuple(cfg.widths)
    out: dict[str, int] = {}
    for i in range(3):
        k = cfg.backbone_kernels[i]
        out[f"conv{i + 1}"] = sizes[i] ** 2 * chans[i + 1] * chans[i] * k * k
    G, C, D = sizes[3], cfg.C, cfg.D
    out["primary"] = G * G * C * D * chans[3] * cfg.primary_kernel ** 2
    passes = 2 * cfg.routing_iters - 1  # weighted sums + agreements
    L, K = G * G, 9 * C  # ConvCaps: 3×3 window, stride 1, padding 1 keeps the G×G grid
    for j in range(cfg.I):
        out[f"inter{j + 1}"] = L * K * C * D * D + passes * L * C * K * D
    K, N, M = G * G * C, cfg.num_classes, cfg.class_dim
    out["class"] = K * N * M * D + passes * N * K * M
    return out


def count_macs(model_config: ModelConfig) -> int:
    """Multiply-accumulates of one image's forward pass: convs, capsule votes and routing.

    See :func:`mac_breakdown` for what is counted per layer.
    """
    return sum(mac_breakdown(model_config).values())


def params_of(model_config: ModelConfig) -> int:
    """Trainable parameters of ``CapsNet(model_config)``, via :func:`capslib.engine.model.count_params`.

    The model is built on the ``meta`` device: no memory, no initialisation cost.
    """
    with torch.device("meta"):
        model = CapsNet(model_config)
    return count_params(model)


# ----------------------------------------------------------------------------- scoring


def chip_batches(data, num_batches: int = 5, batch_size: int = 128, seed: int = 0,
                 device: Optional[torch.device] = None) -> Iterable[tuple[Tensor, Tensor]]:
    """The first ``num_batches`` shuffled training batches of ``data`` (a :class:`capslib.engine.data.DataSplits`).

    CHIP scores on 5 batches of 128 training images; the shuffle depends only on ``seed``.
    """
    for i, batch in enumerate(data.batches("train", batch_size, shuffle=True, seed=seed, epoch=0, device=device)):
        if i >= num_batches:
            break
        yield batch


@torch.no_grad()
def ci_layer_scores(model: CapsNet, batches: Iterable[Union[Tensor, tuple[Tensor, Tensor]]], *,
                    estimator: Optional[str] = "per_image") -> dict[str, Tensor]:
    """CHIP channel-independence score of every channel of the four pruned conv layers.

    Args:
        model: a CapsNet; it is run in eval mode (BatchNorm running statistics),
            and its train/eval mode is restored afterwards.
        batches: images ``x`` (B, Cin, S, S) or ``(x, y)`` pairs, e.g. :func:`chip_batches`.
        estimator: ``"per_image"`` (CHIP), ``"batch_mean"``, or ``"batch_mean_r4"`` (the
            authors' code); see :func:`capslib.pruning.chip.ci_scores`. None: the model config's
            ``chip_estimator``.

    Returns:
        ``{"conv1": (w1,), "conv2": (w2,), "conv3": (w3,), "primary": (C·D,)}`` float64
        scores on the CPU. The backbone is scored on its post-ReLU maps, the
        PrimaryCaps on its conv output before squash (``CapsNetOutput.feature_maps``).
    """
    if estimator is None:
        estimator = model.config.chip_estimator
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    maps: dict[str, list[Tensor]] = {name: [] for name in LAYERS}
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            out = model(x.to(device))
            for name in LAYERS:
                maps[name].append(out.feature_maps[name].float())  # (B, ch, H, W)
    finally:
        model.train(was_training)
    if not maps["conv1"]:
        raise ValueError("ci_layer_scores needs at least one batch of images")
    return {name: ci_scores(maps[name], estimator=estimator) for name in LAYERS}


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class LayerPlan:
    """The prune of one conv layer.

    Attributes:
        name: "conv1", "conv2", "conv3" or "primary".
        channels_before, channels_after: output channels of the layer.
        removed: original indices of the removed channels, ascending.
        skipped: the layer has fewer than D channels and is never pruned (§3.4).
        scores: the CI score of every original channel (empty for hand-made plans).
    """

    name: str
    channels_before: int
    channels_after: int
    removed: tuple[int, ...]
    skipped: bool = False
    scores: tuple[float, ...] = ()

    @property
    def kept(self) -> tuple[int, ...]:
        """Original indices of the kept channels, ascending: new channel k is original ``kept[k]``."""
        gone = set(self.removed)
        return tuple(c for c in range(self.channels_before) if c not in gone)

    @property
    def n_removed(self) -> int:
        return len(self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "channels_before": self.channels_before, "channels_after": self.channels_after,
                "removed": list(self.removed), "skipped": self.skipped, "scores": list(self.scores)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerPlan":
        return cls(name=d["name"], channels_before=int(d["channels_before"]),
                   channels_after=int(d["channels_after"]), removed=tuple(int(c) for c in d["removed"]),
                   skipped=bool(d["skipped"]), scores=tuple(float(s) for s in d.get("scores", ())))


@dataclass(frozen=True)
class PrunePlan:
    """What a prune at ratio ``pr`` removes, and what it leaves (see the module docstring).

    Attributes:
        pr: pruning ratio (NaN for a plan built from explicit indices).
        mode: "channel" or "capsule".
        layers: one :class:`LayerPlan` per pruned layer, in :data:`LAYERS` order.
        before, after: the model configs; ``after`` has explicit ``backbone_widths``,
            C' = kept PrimaryCaps channels / D and the same I as ``before``.
        kept_types: the original PrimaryCaps types that survive whole (new type t is
            original ``kept_types[t]``), or None when the kept channels are regrouped
            into new capsules (channel mode that removed partial types).
        params_before, params_after: trainable parameters of the whole model.
        macs_before, macs_after: multiply-accumulates per image (:func:`count_macs`).
        estimator: the CHIP estimator the scores came from ("" if none).
    """

    pr: float
    mode: str
    layers: tuple[LayerPlan, ...]
    before: ModelConfig
    after: ModelConfig
    kept_types: Optional[tuple[int, ...]]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    estimator: str = ""

    @property
    def D(self) -> int:
        return self.before.D

    @property
    def C_before(self) -> int:
        return self.before.C

    @property
    def C_after(self) -> int:
        return self.after.C

    def layer(self, name: str) -> LayerPlan:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise KeyError(f"no layer {name!r} in the plan; layers are {[lp.name for lp in self.layers]}")

    def to_frame(self) -> pd.DataFrame:
        """One row per layer plus a "model" row with the whole-model params and MACs."""
        rows = [{"layer": lp.name, "before": lp.channels_before, "after": lp.channels_after,
                 "removed": lp.n_removed, "skipped": lp.skipped,
                 "removed_idx": _short_list(lp.removed)} for lp in self.layers]
        rows.append({"layer": "types C", "before": self.C_before, "after": self.C_after,
                     "removed": self.C_before - self.C_after, "skipped": "",
                     "removed_idx": "" if self.kept_types is None else _short_list(
                         sorted(set(range(self.C_before)) - set(self.kept_types)))})
        rows.append({"layer": "params", "before": self.params_before, "after": self.params_after,
                     "removed": self.params_before - self.params_after, "skipped": "", "removed_idx": ""})
        rows.append({"layer": "MACs/image", "before": self.macs_before, "after": self.macs_after,
                     "removed": self.macs_before - self.macs_after, "skipped": "", "removed_idx": ""})
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        head = (f"PrunePlan PR={self.pr:g} mode={self.mode} D={self.D}"
                + (f" estimator={self.estimator}" if self.estimator else "")
                + f": CapsNet[C={self.C_before}] -> CapsNet[C={self.C_after}], "
                  f"params {self.params_before:,} -> {self.params_after:,} "
                  f"({_pct(self.params_after, self.params_before)}), "
                  f"MACs {self.macs_before:,} -> {self.macs_after:,} ({_pct(self.macs_after, self.macs_before)})")
        return head + "\n" + self.to_frame().to_string(index=False)

    def to_dict(self) -> dict[str, Any]:
        return {"pr": self.pr, "mode": self.mode, "layers": [lp.to_dict() for lp in self.layers],
                "before": self.before.to_dict(), "after": self.after.to_dict(),
                "kept_types": None if self.kept_types is None else list(self.kept_types),
                "params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after, "estimator": self.estimator}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PrunePlan":
        return cls(pr=float(d["pr"]), mode=d["mode"], layers=tuple(LayerPlan.from_dict(x) for x in d["layers"]),
                   before=ModelConfig.from_dict(d["before"]), after=ModelConfig.from_dict(d["after"]),
                   kept_types=None if d["kept_types"] is None else tuple(d["kept_types"]),
                   params_before=int(d["params_before"]), params_after=int(d["params_after"]),
                   macs_before=int(d["macs_before"]), macs_after=int(d["macs_after"]),
                   estimator=d.get("estimator", ""))

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        return cls.from_dict(json.loads(text))


def make_plan(model: Union[CapsNet, ModelConfig], scores: Mapping[str, Union[Tensor, Sequence[float]]], pr: float,
              *, mode: str = "channel", estimator: str = "", rule: Optional[str] = None) -> PrunePlan:
    """Plan a prune at ratio ``pr``: in each layer remove the lowest-CI channels.

    Args:
        model: the model to prune, or its :class:`ModelConfig`.
        scores: one CI score per channel for each of :data:`LAYERS`
            (e.g. from :func:`ci_layer_scores`).
        pr: pruning ratio in [0, 1); :func:`prune_count` says how many go per layer.
        mode: "channel" removes PrimaryCaps channels one by one and regroups the
            kept ones; "capsule" sums the CI of each type's D channels and removes
            the lowest-scored whole types (module docstring). Backbone layers are
            pruned channel by channel in both modes.
        estimator: recorded in the plan (which CHIP estimator made ``scores``).
        rule: the :func:`prune_count` rule, "paper" or "authors"; None: the config's ``prune_rule``.

    Ties are broken towards the lower channel index (a stable sort).

    Raises:
        ValueError: ``pr`` outside [0, 1); an unknown mode; scores of the wrong
            length; a layer left with fewer than D channels; capsule mode with
            ``capsule_layout="reshape"``.
    """
    cfg = _model_config(model)
    _check_ratio(pr)
    _check_mode(mode, cfg)
    rule = cfg.prune_rule if rule is None else rule
    arrays = {name: _score_array(scores, name, n) for name, n in zip(LAYERS, _layer_widths(cfg))}  # (n,) each
    removed: dict[str, np.ndarray] = {}
    for name, s in arrays.items():
        if name == "primary" and mode == "capsule":
            removed[name] = _lowest_types(s, cfg.C, cfg.D, pr, rule)
        else:
            removed[name] = np.argsort(s, kind="stable")[: prune_count(len(s), pr, cfg.D, rule)]
    return plan_from_removed(cfg, removed, pr=pr, mode=mode, scores=arrays, estimator=estimator)


def plan_from_removed(model: Union[CapsNet, ModelConfig], removed: Mapping[str, Iterable[int]], *,
                      pr: float = float("nan"), mode: str = "channel",
                      scores: Optional[Mapping[str, Any]] = None, estimator: str = "") -> PrunePlan:
    """A plan that removes exactly the given channel indices (a layer left out keeps all channels).

    :func:`make_plan` ends here; use it directly to prune hand-picked channels.

    Raises:
        ValueError: an unknown layer; indices out of range or repeated; channels
            removed from a layer with fewer than D channels; a layer left with
            fewer than D channels; PrimaryCaps left with a channel count that is
            not a whole number of D-dimensional capsules; capsule mode that
            removes partial capsule types.
    """
    cfg = _model_config(model)
    _check_mode(mode, cfg)
    unknown = set(removed) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown layer(s) {sorted(unknown)}; prunable layers are {list(LAYERS)}")
    layers = []
    for name, n in zip(LAYERS, _layer_widths(cfg)):
        gone = _check_indices(name, removed.get(name, ()), n)
        _check_kept(name, n, len(gone), cfg.D, pr)
        s = () if scores is None or name not in scores else tuple(float(v) for v in np.asarray(scores[name]))
        layers.append(LayerPlan(name=name, channels_before=n, channels_after=n - len(gone), removed=gone,
                                skipped=n < cfg.D, scores=s))
    primary = layers[-1]
    C_new = _capsule_count(primary.channels_after, cfg.D)
    kept_types = _whole_types(primary.removed, cfg.C, cfg.D) if cfg.capsule_layout == "channel" else None
    if mode == "capsule" and kept_types is None:
        raise ValueError("capsule mode must remove whole PrimaryCaps types (all D channels of a type), "
                         f"but removed channels {list(primary.removed)} split some types (D={cfg.D})")
    after = cfg.replace(C=C_new, backbone_widths=tuple(lp.channels_after for lp in layers[:3]))
    return PrunePlan(pr=float(pr), mode=mode, layers=tuple(layers), before=cfg, after=after, kept_types=kept_types,
                     params_before=params_of(cfg), params_after=params_of(after),
                     macs_before=count_macs(cfg), macs_after=count_macs(after), estimator=estimator)


def pruned_config(plan: PrunePlan, I: Optional[int] = None) -> ModelConfig:
    """The rebuilt model's config: ``plan.after``, with ``I`` IntermediateCaps when given (§3.5 step 7)."""
    if I is None:
        return plan.after
    return plan.after.replace(I=I)


# ----------------------------------------------------------------------------- rebuild


@torch.no_grad()
def rebuild(model: CapsNet, plan: PrunePlan, *, I: Optional[int] = None, slice_capsule_weights: bool = False,
            seed: Optional[int] = 0, fresh_bn: Optional[bool] = None) -> CapsNet:
    """Build the pruned model: a plain ``CapsNet(pruned_config(plan, I))`` holding the kept channels.

    Copied from ``model`` (same device and dtype):

    * each backbone conv: weight[kept_out][:, kept_in] and bias[kept_out], where
      kept_in are the kept channels of the previous layer (all input channels for conv1);
    * each BatchNorm: weight, bias, running_mean, running_var of the kept channels,
      and num_batches_tracked - so eval-mode outputs on kept channels are unchanged;
    * the PrimaryCaps conv, the same way (in side: conv3's kept channels).

    With ``fresh_bn=True`` (None: ``plan.before.prune_bn == "fresh"``, the authors' code) the
    BatchNorm layers are left as freshly built (weight 1, bias 0, running mean 0 and variance 1)
    instead of copied; the conv weights and biases are copied either way.

    The IntermediateCaps and ClassCaps are sized for C' types and freshly
    initialised (the paper's "new ClassCaps layer"), from ``seed`` when given
    (the global RNG is left untouched). With ``slice_capsule_weights=True`` they are
    instead sliced from ``model`` on the kept types: ClassCaps weight
    (G·G·C, N, M, D), indexed by location·C + type, keeps the kept types at every
    location; each ConvCaps weight (k·k·C, C, D, D), indexed by (kernel_pos·C +
    type_in, type_out), keeps the kept types on both sides. Slicing needs whole
    types removed (capsule mode, or a channel plan that happened to remove whole
    types) and the same I as ``model``.

    The result references nothing of ``model``: ``state_dict`` + its config JSON
    save and load it like any other CapsNet.
    """
    if model.config != plan.before:
        raise ValueError("the plan was made for another model config:\n"
                         f"  plan:  {plan.before.to_json()}\n  model: {model.config.to_json()}")
    new_cfg = pruned_config(plan, I)
    if slice_capsule_weights:
        _check_sliceable(plan, new_cfg)
    ref = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        new = CapsNet(new_cfg)
    new = new.to(device=ref.device, dtype=ref.dtype)
    if fresh_bn is None:
        fresh_bn = plan.before.prune_bn == "fresh"
    _copy_convs(model, new, plan, copy_bn=not fresh_bn)
    if slice_capsule_weights:
        _slice_capsules(model, new, plan.kept_types)
    new.train(model.training)
    return new


def _copy_convs(old: CapsNet, new: CapsNet, plan: PrunePlan, copy_bn: bool = True) -> None:
    """Copy the kept channels of the backbone convs, their BatchNorms (unless ``copy_bn`` is False)
    and the PrimaryCaps conv."""
    dev = next(old.parameters()).device
    keep_in = torch.arange(old.config.in_channels, device=dev)
    for i in range(3):
        keep = torch.tensor(plan.layers[i].kept, dtype=torch.long, device=dev)
        _copy_conv(old.backbone[i].conv, new.backbone[i].conv, keep, keep_in)
        if copy_bn:
            _copy_bn(old.backbone[i].bn, new.backbone[i].bn, keep)
        keep_in = keep
    keep = torch.tensor(plan.layer("primary").kept, dtype=torch.long, device=dev)
    _copy_conv(old.primary.conv, new.primary.conv, keep, keep_in)


def _copy_conv(old: nn.Conv2d, new: nn.Conv2d, keep_out: Tensor, keep_in: Tensor) -> None:
    new.weight.copy_(old.weight[keep_out][:, keep_in])  # (out', in', k, k)
    if old.bias is not None:
        new.bias.copy_(old.bias[keep_out])


def _copy_bn(old: nn.BatchNorm2d, new: nn.BatchNorm2d, keep: Tensor) -> None:
    for attr in ("weight", "bias", "running_mean", "running_var"):
        src = getattr(old, attr)
        if src is not None:
            getattr(new, attr).copy_(src[keep])
    if old.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(old.num_batches_tracked)


def _check_sliceable(plan: PrunePlan, new_cfg: ModelConfig) -> None:
    if plan.kept_types is None:
        raise ValueError(
            "slice_capsule_weights=True needs whole PrimaryCaps types removed (mode='capsule'). This plan "
            "regroups the kept channels (kept channel k -> capsule k//D, dim k%D), so the new capsules mix "
            "dimensions of several original types and have no counterpart in the original IntermediateCaps/"
            "ClassCaps weights; re-initialise them (the default) or plan with mode='capsule'.")
    if new_cfg.I != plan.before.I:
        raise ValueError(f"slice_capsule_weights=True keeps the capsule layers, so I must stay {plan.before.I} "
                         f"(got I={new_cfg.I}); rebuild with fresh capsule layers to change the depth")


def _slice_capsules(old: CapsNet, new: CapsNet, kept_types: Sequence[int]) -> None:
    """Copy the kept types' transformation matrices (and squash biases, ``ModelConfig.squash_bias``) into the
    new capsule layers."""
    C = old.config.C
    kt = torch.tensor(kept_types, dtype=torch.long, device=old.classcaps.weight.device)
    for lo, ln in zip(old.intermediate, new.intermediate):
        kk = lo.kernel * lo.kernel
        w = lo.weight.view(kk, C, C, *lo.weight.shape[2:])  # (k·k, C_in, C_out, D, D)
        ln.weight.copy_(w[:, kt][:, :, kt].reshape(ln.weight.shape))  # (k·k·C', C', D, D)
        if getattr(lo, "bias", None) is not None:
            ln.bias.copy_(lo.bias[kt])  # (C', D): one bias per output type
    w = old.classcaps.weight
    w = w.view(-1, C, *w.shape[1:])  # (G·G, C, N, M, D)
    new.classcaps.weight.copy_(w[:, kt].reshape(new.classcaps.weight.shape))  # (G·G·C', N, M, D)
    if getattr(old.classcaps, "bias", None) is not None:
        new.classcaps.bias.copy_(old.classcaps.bias)  # (N, M): the classes are all kept


# ----------------------------------------------------------------------------- checks and helpers


def _check_ratio(pr: float) -> None:
    if not isinstance(pr, (int, float)) or isinstance(pr, bool) or not (0.0 <= pr < 1.0):
        raise ValueError(f"pruning ratio PR must be in [0, 1), got {pr!r}")


def _check_positive_int(v: int, name: str) -> None:
    if not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _check_mode(mode: str, cfg: ModelConfig) -> None:
    if mode not in MODES:
        raise ValueError(f"prune mode must be one of {MODES}, got {mode!r}")
    if mode == "capsule" and cfg.capsule_layout != "channel":
        raise ValueError("capsule mode needs capsule_layout='channel': with 'reshape' a capsule is D spatial "
                         "values of one channel, not D channels, so there are no whole types to drop")


def _model_config(model: Union[CapsNet, ModelConfig]) -> ModelConfig:
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, CapsNet):
        return model.config
    raise TypeError(f"expected a CapsNet or a ModelConfig, got {type(model).__name__}")


def _layer_widths(cfg: ModelConfig) -> tuple[int, int, int, int]:
    """Output channels of conv1, conv2, conv3 and the PrimaryCaps conv."""
    w1, w2, w3 = cfg.widths
    return w1, w2, w3, cfg.C * cfg.D


def _score_array(scores: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    if name not in scores:
        raise ValueError(f"no CI scores for layer {name!r}; need scores for {list(LAYERS)}")
    s = scores[name]
    s = s.detach().cpu().double().numpy() if torch.is_tensor(s) else np.asarray(s, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"layer {name!r} has {n} channels but got scores of shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"layer {name!r} has non-finite CI scores")
    return s


def _lowest_types(s: np.ndarray, C: int, D: int, pr: float, rule: str = "paper") -> np.ndarray:
    """Channel indices of the lowest-scored whole capsule types (score = Σ CI of its D channels)."""
    type_scores = s.reshape(C, D).sum(axis=1)  # (C,): type t owns channels [t·D, (t+1)·D)
    n_types = prune_count(C * D, pr, D, rule) // D
    types = np.sort(np.argsort(type_scores, kind="stable")[:n_types])
    return (types[:, None] * D + np.arange(D)[None, :]).reshape(-1)


def _check_indices(name: str, idx: Iterable[int], n: int) -> tuple[int, ...]:
    idx = [int(i) for i in np.asarray(list(idx), dtype=np.int64).reshape(-1)]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer {name!r} has channels 0..{n - 1}; cannot remove {bad}")
    if len(set(idx)) != len(idx):
        raise ValueError(f"layer {name!r}: channel indices to remove are repeated: {sorted(idx)}")
    return tuple(sorted(idx))


def _check_kept(name: str, n: int, n_removed: int, D: int, pr: float) -> None:
    if n < D:
        if n_removed:
            raise ValueError(f"layer {name!r} has {n} channels, fewer than D={D}: such layers are never pruned (§3.4)")
        return
    kept = n - n_removed
    if kept < D:
        why = f" at PR={pr:g} (the prune-count rule removes {n_removed})" if not math.isnan(pr) else ""
        raise ValueError(f"layer {name!r} would keep {max(kept, 0)} of {n} channels{why}, fewer than D={D}; "
                         f"use a smaller pruning ratio (or wider backbone_widths)")


def _capsule_count(kept: int, D: int) -> int:
    """C' = kept PrimaryCaps channels / D, which must be a whole number."""
    if kept % D:
        raise ValueError(f"PrimaryCaps would keep {kept} channels, which is not a whole number of capsules "
                         f"of D={D} dimensions (C' = {kept}/{D} = {kept / D:g}); remove a multiple of D channels")
    return kept // D


def _whole_types(removed: Sequence[int], C: int, D: int) -> Optional[tuple[int, ...]]:
    """Kept types when ``removed`` is a union of whole types [t·D, (t+1)·D), else None."""
    gone = set(removed)
    types = {c // D for c in gone}
    if any(t * D + d not in gone for t in types for d in range(D)):
        return None
    return tuple(t for t in range(C) if t not in types)


def _short_list(idx: Sequence[int], limit: int = 12) -> str:
    idx = list(idx)
    if len(idx) <= limit:
        return ",".join(map(str, idx))
    return ",".join(map(str, idx[:limit])) + f",… (+{len(idx) - limit})"


def _pct(after: int, before: int) -> str:
    return f"{after / before:.1%}" if before else "n/a"
