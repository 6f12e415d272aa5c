"""Kernel-similarity redundancy and similarity-based channel pruning (T. Wang, seed 004, §2.1).

Seed 004's argument. If two channels i, j of layer l-1 compute the same
activation, a_j = a_i, then every unit of the next layer sees

    w_next[:, i]·a_i + w_next[:, j]·a_j = (w_next[:, i] + w_next[:, j])·a_i,

so channel j can be removed once its outgoing weights are folded into its
twin's. Two channels compute (nearly) the same activation when their kernels
are (nearly) parallel, which the cosine of the flattened kernels measures:

    cos(a, b) = a·b / (|a| |b|)        (seed 004 calls this number "cdist")

Here ``similarity`` is that cosine and ``cosine distance`` is 1 - cosine, so
the *minimum* cosine distance of a layer (1 - the largest off-diagonal
similarity) is small when the layer holds a redundant pair, as in the seed's
figures. The signed cosine is used: anti-parallel kernels (cos = -1) give
opposite pre-activations, which a ReLU does not let one fold into the other.

What is compared: ``fold_bn`` (default True). A backbone channel is
ReLU(BN(conv(x))); in eval mode BN is the per-channel affine map
z -> gamma·(z - mu)/sigma + beta, so the channel's pre-ReLU value is the affine
map of the input patch

    v_c = [ w_c·s_c ,  (b_c - mu_c)·s_c + beta_c ],   s_c = gamma_c / sigma_c

(the BN-folded kernel with the folded bias appended; ``effective_kernels``).
This is the choice made here because it is what actually produces the channel:

* cos(v_i, v_j) = 1  <=>  v_j = r·v_i with r > 0  <=>  pre-activations
  z_j = r·z_i everywhere (padding included)  =>  a_j = ReLU(r·z_i) = r·a_i,
  so the fold w_next[:, i] += r·w_next[:, j] is EXACT (seed 004's remark
  "w·(c a) = (c w)·a", made precise). A positive BN scale ratio is handled.
* The raw kernel cosine (``fold_bn=False``, seed 004 literally) is blind to
  the bias and to BN: two equal kernels with different BN shifts give different
  features after the ReLU, yet have cosine 1; and since cosine ignores length,
  BN's scale only enters through the sign of gamma, which the raw kernel misses.
  With ``fold_bn=False`` the fold uses r = 1 (seed 004's w_i + w_j) and is exact
  only if the kernels, biases and all BN parameters/statistics are identical.

BN is folded with its running statistics, i.e. the eval-mode network; in train
mode BN normalises with batch statistics and no fold is exact. For the
PrimaryCaps conv (no BN) the folded vector is [w_c, b_c].

Pruning criterion (``similarity_prune_layer``, ``similarity_plan``): take the
most similar pair of remaining channels, remove one, fold its outgoing weights
into its twin with the least-squares scale r = <v_i, v_j>/|v_i|^2 (clamped at
0), repeat. r equals the exact ratio when the vectors are parallel; otherwise
the fold is only the seed's approximation a_j ~ r·a_i. Of the pair, the member
whose removal perturbs the next layer least is removed: the one with the
smaller |v_c|·|w_next[:, c]| (ties: the higher index).

PrimaryCaps is different. Its channels are grouped into C capsule types of D
channels, squashed together, and every later capsule layer has weights per
type; removing single channels would break the capsule dimension, and the next
layer is a squash + dynamic routing, where a fold is not exact (routing gives
each child its own coupling coefficients). So for "primary" whole capsule
types are removed, ranked by the cosine of the type's concatenated D kernels
(``capsule_type_kernels``), WITHOUT folding. Zeroing a type's kernels and bias
removes it exactly: squash(0) = 0 and a zero vote adds nothing to any routed sum.

Results are expressed in the ORIGINAL model size: ``SimilarityPlan.state_dict``
is the model's state dict with the folds applied and every removed channel
zeroed (its kernel, bias, BN gamma and beta, hence its post-ReLU activation,
and its outgoing weights). Loading it into the unpruned model gives exactly the
network that slicing ``kept`` out of it gives, so a pruner can rebuild the
smaller CapsNet by slicing and verify it against the zeroed one.
"""
from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.model import CapsNet

__all__ = [
    "LAYER_NAMES",
    "Removal",
    "SimilarityPlan",
    "capsule_type_kernels",
    "effective_kernels",
    "kernel_similarity",
    "layer_kernels",
    "layer_similarities",
    "min_cosine_distance",
    "min_cosine_distances",
    "similarity_plan",
    "similarity_prune_layer",
]

#: Conv layers of a CapsNet, in forward order. The "next layer" of each is the
#: one after it; PrimaryCaps feeds capsule layers, not a conv.
LAYER_NAMES = ("conv1", "conv2", "conv3", "primary")


# --------------------------------------------------------------------------- measurement


def effective_kernels(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d] = None) -> Tensor:
    """Affine map producing each channel's pre-ReLU value: (C, Cin·k·k + 1), float64 on CPU.

    Row c is [w_c·s_c, (b_c - mu_c)·s_c + beta_c] with s_c = gamma_c/sqrt(var_c + eps)
    (eval-mode BN folded into the conv); without ``bn`` it is [w_c, b_c].
    """
    w = conv.weight.detach().to('cpu', torch.float64).flatten(1)  # (C, Cin·k·k)
    b = (conv.bias.detach().to('cpu', torch.float64) if conv.bias is not None
         else w.new_zeros(w.shape[0]))  # (C,)
    if bn is not None:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("BatchNorm without running statistics cannot be folded")
        mu = bn.running_mean.detach().to('cpu', torch.float64)
        var = bn.running_var.detach().to('cpu', torch.float64)
        gamma = bn.weight.detach().to('cpu', torch.float64) if bn.affine else torch.ones_like(mu)
        beta = bn.bias.detach().to('cpu', torch.float64) if bn.affine else torch.zeros_like(mu)
        s = gamma / torch.sqrt(var + bn.eps)  # (C,)
        w = w * s[:, None]
        b = (b - mu) * s + beta
    return torch.cat([w, b[:, None]], dim=1)  # (C, Cin·k·k + 1)


def kernel_similarity(kernels: Union[nn.Conv2d, Tensor]) -> Tensor:
    """Pairwise cosine similarity of flattened kernels: (C, C), float64 on CPU.

    ``kernels``: a Conv2d (its raw weight, seed 004's measure), a weight tensor
    (C, Cin, k, k), or any (C, ...) tensor whose rows are flattened (e.g.
    :func:`effective_kernels`). Exactly symmetric, in [-1, 1], diagonal 1; an all-zero
    kernel (e.g. a pruned channel) has similarity 0 with everything, itself included.
    """
    if isinstance(kernels, nn.Conv2d):
        kernels = kernels.weight
    x = kernels.detach().to('cpu', torch.float64).flatten(1)  # (C, n)
    unit = F.normalize(x, dim=1)  # zero rows stay zero
    sim = unit @ unit.T  # (C, C), symmetric up to BLAS rounding
    sim = 0.5 * (sim + sim.T)  # exactly symmetric: ties in the greedy search stay ties
    nonzero = x.abs().amax(dim=1) > 0  # (C,)
    sim.diagonal().masked_fill_(nonzero, 1.0)  # exactly 1, not 1 ± eps
    return sim.clamp_(-1.0, 1.0)


def min_cosine_distance(sim: Tensor) -> float:
    """1 - the largest off-diagonal similarity: 0 when some pair is parallel.

    NaN for a layer with fewer than two channels (there is no pair).
    """
    C = sim.shape[0]
    if C < 2:
        return math.nan
    off = sim.masked_fill(torch.eye(C, dtype=torch.bool, device=sim.device), -math.inf)
    return float(1.0 - off.max())


def _conv_bn(model: CapsNet, name: str) -> tuple[nn.Conv2d, Optional[nn.BatchNorm2d]]:
    """The conv of layer ``name`` and the BatchNorm that follows it (None for "primary")."""
    if name == "primary":
        return model.primary.conv, None
    if name in LAYER_NAMES:
        layer = model.backbone[LAYER_NAMES.index(name)]
        return layer.conv, layer.bn
    raise ValueError(f"unknown conv layer {name!r}; expected one of {LAYER_NAMES}")


def _next_conv(model: CapsNet, name: str) -> Optional[nn.Conv2d]:
    """The conv reading layer ``name``'s channels: conv2, conv3, PrimaryCaps, or None."""
    index = LAYER_NAMES.index(name)
    return _conv_bn(model, LAYER_NAMES[index + 1])[0] if index + 1 < len(LAYER_NAMES) else None


def layer_kernels(model: CapsNet, name: str, fold_bn: bool = True) -> Tensor:
    """Per-channel vectors compared for layer ``name``: (C, n), float64.

    ``fold_bn=True``: :func:`effective_kernels` (BN and bias folded, see the
    module docstring); ``False``: the raw flattened conv weight (seed 004).
    """
    conv, bn = _conv_bn(model, name)
    if fold_bn:
        return effective_kernels(conv, bn)
    return conv.weight.detach().to('cpu', torch.float64).flatten(1)


def capsule_type_kernels(model: CapsNet, fold_bn: bool = True) -> Tensor:
    """One vector per PrimaryCaps capsule type: its D channel vectors concatenated, (C, D·n).

    Two types with equal vectors produce equal capsules. Only defined for the
    "channel" capsule layout, where type t is channels [t·D, (t+1)·D).
    """
    if model.primary.layout != "channel":
        raise ValueError("capsule types are channel groups only with capsule_layout='channel'")
    C, D = model.primary.C, model.primary.D
    v = layer_kernels(model, "primary", fold_bn)  # (C·D, n)
    return v.reshape(C, D * v.shape[1])  # (C, D·n)


def layer_similarities(model: CapsNet, fold_bn: bool = True) -> dict[str, Tensor]:
    """Channel similarity matrix of each conv layer: {"conv1": (C1, C1), ..., "primary": (C·D, C·D)}."""
    return {name: kernel_similarity(layer_kernels(model, name, fold_bn)) for name in LAYER_NAMES}


def min_cosine_distances(model: CapsNet, fold_bn: bool = True) -> dict[str, float]:
    """Seed 004's redundancy diagnostic: the minimum cosine distance of each conv layer."""
    return {name: min_cosine_distance(sim) for name, sim in layer_similarities(model, fold_bn).items()}


# --------------------------------------------------------------------------- pruning


@dataclass
class Removal:
    """One greedy step: ``removed`` was dropped, its twin ``twin`` kept.

    Indices are channels for conv1..conv3 and capsule types for "primary".
    ``scale`` is r in a_removed ~ r·a_twin, the factor its outgoing weights were
    folded with (0.0: not folded, as for "primary").
    """

    removed: int
    twin: int
    similarity: float
    scale: float


@dataclass
class SimilarityPlan:
    """Result of :func:`similarity_plan`.

    kept: layer name -> sorted kept channel indices (all four layers; for
        "primary" whole groups of D channels).
    removals: layer name -> the greedy steps, in order.
    state_dict: the original-size model's state dict with the folds applied and
        removed channels zeroed (see the module docstring).
    fold_bn: which similarity was used.
    """

    kept: dict[str, list[int]]
    removals: dict[str, list[Removal]] = field(default_factory=dict)
    state_dict: dict[str, Tensor] = field(default_factory=dict)
    fold_bn: bool = True

    def folded_model(self, model: CapsNet) -> CapsNet:
        """A copy of ``model`` (original size) carrying this plan's folded, zeroed weights."""
        out = copy.deepcopy(model)
        out.load_state_dict(self.state_dict)
        return out


def _most_similar_pair(sim: Tensor, alive: Tensor) -> tuple[int, int, float]:
    """(i, j, cos) with i < j the most similar pair among ``alive`` (C,) bool units."""
    C = sim.shape[0]
    usable = alive[:, None] & alive[None, :] & ~torch.eye(C, dtype=torch.bool)  # (C, C)
    masked = sim.masked_fill(~usable, -math.inf)
    flat = int(masked.argmax())  # first maximum: deterministic ties
    i, j = divmod(flat, C)
    return min(i, j), max(i, j), float(sim[i, j])


def _pick_removed(i: int, j: int, cost: Tensor) -> tuple[int, int]:
    """(removed, kept) of the pair: remove the smaller cost; on a tie the higher index."""
    if (float(cost[i]), -i) < (float(cost[j]), -j):
        return i, j
    return j, i


def _fold_scale(v_keep: Tensor, v_drop: Tensor) -> float:
    """Least-squares r with v_drop ~ r·v_keep, clamped at 0 (a ReLU passes only r >= 0)."""
    denom = float(v_keep @ v_keep)
    return max(0.0, float(v_keep @ v_drop) / denom) if denom > 0 else 0.0


@torch.no_grad()
def _zero_channels(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], channels: list[int]) -> None:
    """Make ``channels`` output exactly 0: zero kernel and bias, and BN gamma, beta."""
    conv.weight[channels] = 0
    if conv.bias is not None:
        conv.bias[channels] = 0
    if bn is not None and bn.affine:
        bn.weight[channels] = 0
        bn.bias[channels] = 0


@torch.no_grad()
def _prune_backbone_inplace(model: CapsNet, name: str, n_remove: int, fold_bn: bool) -> list[Removal]:
    """Greedy remove-and-fold on conv1..conv3 of ``model`` (modified in place)."""
    conv, bn = _conv_bn(model, name)
    nxt = _next_conv(model, name)
    v = layer_kernels(model, name, fold_bn)  # (C, n); rows of kept channels never change
    sim = kernel_similarity(v)  # (C, C)
    v_norm = v.norm(dim=1)  # (C,)
    alive = torch.ones(v.shape[0], dtype=torch.bool)
    steps = []
    for _ in range(n_remove):
        i, j, cos = _most_similar_pair(sim, alive)
        w_out = nxt.weight.detach().to('cpu', torch.float64).transpose(0, 1).flatten(1)  # (C, Cout·k·k)
        drop, keep = _pick_removed(i, j, v_norm * w_out.norm(dim=1))
        r = _fold_scale(v[keep], v[drop]) if fold_bn else 1.0
        nxt.weight[:, keep] += r * nxt.weight[:, drop]  # (Cout, k, k): seed 004's w_i + w_j
        nxt.weight[:, drop] = 0
        _zero_channels(conv, bn, [drop])
        alive[drop] = False
        steps.append(Removal(drop, keep, cos, r))
    return steps


@torch.no_grad()
def _prune_primary_inplace(model: CapsNet, n_remove: int, fold_bn: bool) -> list[Removal]:
    """Greedy removal of whole PrimaryCaps capsule types (n_remove channels), no folding."""
    D = model.primary.D
    v = capsule_type_kernels(model, fold_bn)  # (C, D·n)
    sim = kernel_similarity(v)  # (C, C) over capsule types
    alive = torch.ones(v.shape[0], dtype=torch.bool)
    steps = []
    for _ in range(n_remove // D):
        i, j, cos = _most_similar_pair(sim, alive)
        drop, keep = _pick_removed(i, j, v.norm(dim=1))  # shorter pre-squash capsule goes
        _zero_channels(model.primary.conv, None, list(range(drop * D, (drop + 1) * D)))
        alive[drop] = False
        steps.append(Removal(drop, keep, cos, 0.0))
    return steps


def _check_count(model: CapsNet, name: str, n_remove: int) -> None:
    conv, _ = _conv_bn(model, name)  # validates the name
    C = conv.out_channels
    if not isinstance(n_remove, numbers.Integral) or not 0 <= n_remove < C:
        raise ValueError(f"{name}: n_remove must be an integer in [0, {C}), got {n_remove!r}")
    if name == "primary":
        D = model.primary.D
        if model.primary.layout != "channel":
            raise ValueError("primary: pruning capsule types needs capsule_layout='channel'")
        if n_remove % D:
            raise ValueError(f"primary: n_remove must be a multiple of D={D} "
                             f"(whole capsule types are removed), got {n_remove}")


def _prune_inplace(model: CapsNet, name: str, n_remove: int, fold_bn: bool) -> tuple[list[int], list[Removal]]:
    """Prune one layer of ``model`` in place; returns (kept channel indices, steps)."""
    _check_count(model, name, n_remove)
    if name == "primary":
        steps = _prune_primary_inplace(model, n_remove, fold_bn)
        D = model.primary.D
        dropped = {s.removed * D + d for s in steps for d in range(D)}
    else:
        steps = _prune_backbone_inplace(model, name, n_remove, fold_bn)
        dropped = {s.removed for s in steps}
    C = _conv_bn(model, name)[0].out_channels
    return [c for c in range(C) if c not in dropped], steps


def similarity_prune_layer(
    model: CapsNet, layer_name: str, n_remove: int, *, fold_bn: bool = True
) -> tuple[list[int], Optional[Tensor]]:
    """Remove ``n_remove`` channels of one layer by greedy kernel similarity. ``model`` is not modified.

    Returns:
        kept: sorted kept channel indices of ``layer_name``.
        folded_next_weight: the next conv's weight, ORIGINAL size (Cout, C, k, k),
            with each removed channel's input weights folded into its twin's and
            then zeroed; the pruned model uses ``folded_next_weight[:, kept]``.
            None for "primary" (capsule types are removed without folding;
            ``n_remove`` must then be a multiple of D).
    """
    work = copy.deepcopy(model)
    kept, _ = _prune_inplace(work, layer_name, n_remove, fold_bn)
    nxt = _next_conv(work, layer_name)
    return kept, (nxt.weight.detach().clone() if nxt is not None else None)


def similarity_plan(model: CapsNet, counts: dict[str, int], *, fold_bn: bool = True) -> SimilarityPlan:
    """Greedy similarity pruning of several layers; ``model`` is not modified.

    ``counts``: layer name -> number of channels to remove (missing: 0; for
    "primary" a multiple of D). Layers are processed in forward order
    conv1, conv2, conv3, primary, each on the weights left by the previous
    folds (pruning conv1 changes conv2's kernels, so conv2 is measured after).
    """
    unknown = set(counts) - set(LAYER_NAMES)
    if unknown:
        raise ValueError(f"unknown conv layer(s) {sorted(unknown)}; expected names from {LAYER_NAMES}")
    for name, n in counts.items():
        _check_count(model, name, n)
    work = copy.deepcopy(model)
    plan = SimilarityPlan(kept={}, fold_bn=fold_bn)
    for name in LAYER_NAMES:
        plan.kept[name], plan.removals[name] = _prune_inplace(work, name, counts.get(name, 0), fold_bn)
    plan.state_dict = {k: t.detach().clone() for k, t in work.state_dict().items()}
    return plan
