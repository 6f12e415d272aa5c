"""Capsule lengths at initialisation, and the depth at which they vanish (issue 10, hypothesis H).

Why a deep CapsNet collapses at a sharp depth (paper 000, Table 2: CapsNet[20, 8] trains at I = 6
and sits at 10% from I = 7 on) can be read off the untrained network. With the routing logits at
zero the couplings are uniform, c = 1/C_out, so the input of a ConvCaps capsule is

    s_j = (1/C_out) Σ_k W_kj u_k        over the K = k²·C_in children of its window,

and with W ~ N(0, σ²) independent of u, s_j is Gaussian given u with per-component variance

    τ² = σ² · Σ_k ‖u_k‖² / C_out²   ≈  σ² · n_pos · C_in · m2 / C_out²,                      (1)

m2 = E‖u‖² of the input capsules, n_pos the number of window positions inside the grid (9 inside,
4 or 6 on the border). ‖s‖ = τ·χ_D, and squash maps a length x to

    g(x) = x² / (1 + x²) · x / sqrt(x² + ε)   ≈ x² (√ε ≪ x ≪ 1),   ≈ x³/√ε (x ≪ √ε).        (2)

So each layer multiplies the squared length by a gain κ = σ²·n_pos·D·C_in/C_out² (≈ 9σ²D/C for
C_in = C_out = C) and then squares (or cubes) it: once lengths are small they fall doubly
exponentially, and within a few layers they underflow to *exactly* zero - then every later layer,
the class capsules and the gradient are exactly zero too, and Adam (which rescales any non-zero
gradient) cannot move. A cliff, not a slope. Pruning helps because a smaller C' raises κ.

This module measures that and predicts it:

* :func:`init_lengths` - per-layer capsule length statistics at initialisation on real batches
  (BatchNorm in training mode, as at the first training step), for any config, seed and dtype;
* :func:`depth_limit` - the first I at which the class capsule lengths of the whole batch are
  exactly zero, from ONE forward pass of a deep model (see its docstring for why that is exact),
  with an optional backward that checks the gradient reaching the PrimaryCaps is exactly zero;
* :func:`length_recurrence` - the per-layer map (1)-(2) as a recurrence on the G×G map of
  m2 (or its mean field for the authors' scrambled layout), evaluated in log space;
* :func:`length_map` and :func:`length_map_figure` - measured beside predicted, for the book;
* :func:`pruned_model_config` - the CapsNet[C', D] a prune at ratio PR leaves (fresh init);
* ``python -m capslib.experiments.init_study`` - the length map of one config, printed.

All screens run under ``torch.no_grad``; only :func:`gradient_at` runs a backward.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..engine.config import DataConfig, ModelConfig
from ..engine.losses import margin_loss
from ..engine.model import CapsNet

__all__ = [
    "DTYPE",
    "eval_batches",
    "build_model",
    "init_lengths",
    "LimitResult",
    "depth_limit",
    "gradient_at",
    "length_recurrence",
    "predicted_limit",
    "primary_m2_maps",
    "length_map",
    "length_map_figure",
    "pruned_model_config",
    "squash_length",
    "gain",
]

DTYPE = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------- data and models


def eval_batches(n_batches: int = 2, batch_size: int = 32, dataset: str = "fashion-mnist",
                 split: str = "test", root: Optional[str] = None) -> list[tuple[Tensor, Tensor]]:
    """The first ``n_batches`` unshuffled batches of ``split``, normalised with the training statistics.

    Batch b holds images [b·batch_size, (b+1)·batch_size) of the split (test: the whole test set in
    its stored order), so a (dataset, batch, batch_size) triple names the same images everywhere.
    Returns a list of (x (B, Cin, S, S) float32, y (B,) int64).
    """
    from ..engine.data import load_splits

    splits = load_splits(DataConfig(dataset=dataset, root=root))
    out = []
    for i, batch in enumerate(splits.batches(split, batch_size)):
        if i >= n_batches:
            break
        out.append(batch)
    return out


def build_model(cfg: ModelConfig, seed: int, dtype: str = "float32") -> CapsNet:
    """``CapsNet(cfg)`` initialised from ``torch.manual_seed(seed)`` (global RNG left as it was), in
    ``dtype`` and training mode (BatchNorm normalises with the batch statistics, as at step one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CapsNet(cfg)
    return model.to(DTYPE[dtype]).train()


def _stats(u: Tensor) -> dict[str, float]:
    """Length statistics of a capsule tensor (B, H, W, T, D): mean, median, max, the mean of ‖u‖²,
    and the fraction of capsules exactly zero. Computed in float64 (lengths of 1e-30 and below)."""
    lens = torch.linalg.vector_norm(u.double(), dim=-1).flatten()  # (B·H·W·T,)
    return {"mean": lens.mean().item(), "median": lens.median().item(), "max": lens.max().item(),
            "m2": lens.square().mean().item(), "zero_frac": (lens == 0).double().mean().item()}


@torch.no_grad()
def init_lengths(cfg: ModelConfig, x: Tensor, seed: int = 0, dtype: str = "float32") -> pd.DataFrame:
    """Per-layer capsule length statistics of ``CapsNet(cfg)`` at initialisation on one batch ``x``.

    Returns one row per capsule layer ("primary", "inter1".."interI", "class") with the columns of
    :func:`_stats` plus ``layer`` and ``depth`` (0 = primary, I + 1 = class).
    """
    model = build_model(cfg, seed, dtype)
    out = model(x.to(DTYPE[dtype]))
    rows = [{"layer": name, "depth": i, **_stats(u)} for i, (name, u) in enumerate(out.capsules.items())]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- depth limit


@dataclass
class LimitResult:
    """What :func:`depth_limit` found for one (config, seed, batch, dtype).

    Attributes:
        limit: the first I in 0..I_max whose class capsule lengths (as ``CapsNet.forward`` computes
            them, in the model's dtype) are all exactly zero on the batch, or None when every I up to
            I_max has a non-zero class length ("alive up to I_max").
        I_max: the deepest model screened.
        layer_mean: mean capsule length of primary, inter1..interI_max (inter layers after an
            all-zero layer are exactly zero and not run).
        layer_max: the largest capsule length of the same layers.
        class_max: for each I = 0..I_max, the largest class capsule length of CapsNet[C, D, I].
        class_zero_frac: for each I, the fraction of (image, class) lengths that are exactly zero.
        first_zero_layer: the first inter layer (1-based) whose output is exactly zero everywhere,
            or None.
        grad: filled by :func:`gradient_at` when asked: {"I": I, "primary": max |grad| of the
            PrimaryCaps conv weight, "inter1": ... of the first ConvCaps weight (if I ≥ 1)}.
    """

    limit: Optional[int]
    I_max: int
    layer_mean: list[float]
    layer_max: list[float]
    class_max: list[float]
    class_zero_frac: list[float]
    first_zero_layer: Optional[int]
    grad: dict = field(default_factory=dict)

    @property
    def max_depth(self) -> Optional[int]:
        """The deepest trainable I by this screen (paper's Table 5 'maximum intermediate layers'):
        limit − 1, or None when alive up to I_max (then the maximum is ≥ I_max)."""
        return None if self.limit is None else self.limit - 1


def _check_same_prefix(deep: CapsNet, shallow: CapsNet) -> None:
    """The I-model must share the deep model's backbone, PrimaryCaps and first I ConvCaps exactly.

    They do because CapsNet creates its parameters in forward order from one RNG stream (backbone,
    PrimaryCaps, ConvCaps 1..I, then ClassCaps); the check makes the one-forward limit finder fail
    loudly if that ever changes, instead of silently answering for another model.
    """
    sp, dp = dict(shallow.named_parameters()), dict(deep.named_parameters())
    for name, p in sp.items():
        if name.startswith("classcaps"):
            continue
        if not torch.equal(p, dp[name]):
            raise AssertionError(f"parameter {name} of CapsNet[I={len(shallow.intermediate)}] differs from the "
                                 "deep model's: parameter creation order changed, screen each I separately")


@torch.no_grad()
def depth_limit(cfg: ModelConfig, x: Tensor, seed: int = 0, dtype: str = "float32", I_max: int = 16,
                check_prefix: bool = True) -> LimitResult:
    """The first depth I at which CapsNet[C, D, I] (``cfg`` with that I, seed ``seed``) has exactly zero
    class capsule lengths on the whole batch ``x`` at initialisation.

    One forward pass serves every I ≤ I_max: with the same seed, CapsNet[C, D, I] has the same backbone,
    PrimaryCaps and first I ConvCaps as CapsNet[C, D, I_max] (parameters are created in forward order
    from one RNG stream; checked for every I when ``check_prefix``), and BatchNorm in training mode
    depends only on the batch, so its interI output *is* the deep model's interI output. Only the
    ClassCaps differ (drawn after the I ConvCaps), so each I gets its own ClassCaps, built by
    re-creating CapsNet[C, D, I] from the seed (cheap: initialisation only) and applied to interI.

    Cost: one forward of I_max ConvCaps layers (fewer: once a layer's output is exactly zero everywhere,
    all deeper ones are too and are not run) plus I_max + 1 small ClassCaps forwards.
    """
    dt = DTYPE[dtype]
    x = x.to(dt)
    deep = build_model(cfg.replace(I=I_max), seed, dtype)
    h = x
    for layer in deep.backbone:
        h = layer(h)  # (B, w, S', S')
    u, _ = deep.primary(h)  # (B, G, G, C, D)
    outs = [u]  # outs[i] = output of inter i (outs[0] = primary)
    first_zero = None
    for i, layer in enumerate(deep.intermediate):
        if first_zero is not None:
            outs.append(torch.zeros_like(u))  # exactly zero input -> exactly zero output (s = 0, v = 0)
            continue
        u = layer(u)  # (B, G, G, C, D)
        outs.append(u)
        if not bool(u.any()):
            first_zero = i + 1
    layer_mean = [torch.linalg.vector_norm(o.double(), dim=-1).mean().item() for o in outs]
    layer_max = [torch.linalg.vector_norm(o.double(), dim=-1).max().item() for o in outs]
    class_max, zero_frac, limit = [], [], None
    for I in range(I_max + 1):
        model = deep if I == I_max else build_model(cfg.replace(I=I), seed, dtype)
        if check_prefix and model is not deep:
            _check_same_prefix(deep, model)
        v = model.classcaps(outs[I])  # (B, N, M)
        # the lengths exactly as CapsNet.forward computes them (in the model's dtype): the loss sees these.
        # In float32 ‖v‖² underflows for ‖v‖ < ~3e-23, so a non-zero v can have length exactly 0.
        lens = torch.linalg.vector_norm(v, dim=-1).double()  # (B, N)
        class_max.append(lens.max().item())
        zero_frac.append((lens == 0).double().mean().item())
        if limit is None and not bool(lens.any()):
            limit = I
    return LimitResult(limit=limit, I_max=I_max, layer_mean=layer_mean, layer_max=layer_max, class_max=class_max,
                       class_zero_frac=zero_frac, first_zero_layer=first_zero)


def gradient_at(cfg: ModelConfig, x: Tensor, y: Tensor, I: int, seed: int = 0, dtype: str = "float32") -> dict:
    """Max |gradient| of the margin loss at initialisation on the PrimaryCaps conv weight and (I ≥ 1)
    the first ConvCaps weight of CapsNet[C, D, I]: exactly 0.0 means no optimiser can move them.

    One forward and backward of the I-model (training mode) on the batch (x, y).
    """
    model = build_model(cfg.replace(I=I), seed, dtype)
    out = model(x.to(DTYPE[dtype]))
    loss = margin_loss(out.lengths, y)
    loss.backward()
    g = {"I": I, "loss": loss.item(), "primary": model.primary.conv.weight.grad.abs().max().item()}
    if I >= 1:
        g["inter1"] = model.intermediate[0].weight.grad.abs().max().item()
    return g


# ----------------------------------------------------------------------------- the recurrence


def squash_length(x: Union[float, np.ndarray], eps: float) -> np.ndarray:
    """g(x) = x²/(1+x²) · x/sqrt(x²+ε): the length squash gives an input of length x (eq. 2)."""
    x = np.asarray(x, dtype=np.float64)
    return x * x / (1 + x * x) * x / np.sqrt(x * x + eps)


def _log_g(log_x: np.ndarray, eps: float) -> np.ndarray:
    """log g(e^log_x), exact for any log_x (no underflow): 3 log x − log(1+x²) − ½ log(x²+ε)."""
    x2_log = 2 * log_x
    return 3 * log_x - np.logaddexp(0.0, x2_log) - 0.5 * np.logaddexp(x2_log, math.log(eps))


def _routed_log_len(log_x1: np.ndarray, log_jtau2: np.ndarray, J: int, iters: int, eps: float) -> np.ndarray:
    """log of the output length after ``iters`` routing iterations, for first-iteration input lengths
    x1 = e^log_x1 (uniform couplings) and Jτ² = e^log_jtau2 (broadcastable).

    First order in the routing logits b_jk = Σ_r u_jk·v_j^(r): the softmax over the J parents gives
    c_jk ≈ (1 + b_jk − mean_j b_jk)/J, and Σ_k u_jk u_jkᵀ ≈ J²τ²·I (iid Gaussian votes), so each
    iteration adds (1 − 1/J)·Jτ²·v_j^(r) along s_j:

        x_{r+1} = x_1 + (1 − 1/J)·Jτ²·Σ_{r' ≤ r} g(x_{r'}).

    Negligible once lengths are small (g(x)/x → 0); it lengthens the first layers' capsules by ~40%.
    Evaluated as log x_1 + log1p(...) so no term underflows.
    """
    coef = math.log1p(-1.0 / J) + log_jtau2
    acc = np.zeros(np.broadcast_shapes(np.shape(log_x1), np.shape(log_jtau2)))  # Σ g(x_r') / x_1
    log_x = log_x1 + acc
    for _ in range(iters - 1):
        acc = acc + np.exp(_log_g(log_x, eps) - log_x1)
        log_x = log_x1 + np.log1p(np.exp(coef) * acc)
    return _log_g(log_x, eps)


def _chi_nodes(dof: int, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature for E f(X), X ~ χ_dof: nodes log X_i and log weights.

    Gauss-Laguerre in t = X²/2 (generalised weight t^(dof/2 − 1) e^(−t)): for an even dof the power is an
    integer and is folded into f; for an odd one we use a fine midpoint rule in t. Exact to ~1e-12
    relative for the polynomial-times-smooth integrands here (E X^6 of χ_8 to 1e-14).
    """
    a = dof / 2 - 1
    if a == int(a):
        t, w = np.polynomial.laguerre.laggauss(n)  # ∫ f(t) e^{-t} dt
        logw = np.log(w) + a * np.log(t) - math.lgamma(dof / 2)
    else:  # midpoint rule on [0, 80] in t with the full density
        edges = np.linspace(0.0, 80.0, 20001)
        t = 0.5 * (edges[1:] + edges[:-1])
        logw = np.log(np.diff(edges)) + a * np.log(t) - t - math.lgamma(dof / 2)
    return 0.5 * np.log(2 * t), logw  # log X = ½ log(2t)


def _logmeanexp_weights(logf: np.ndarray, logw: np.ndarray) -> np.ndarray:
    """log Σ_i w_i e^{logf[..., i]} for log weights logw (the weights sum to 1)."""
    z = logf + logw
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def _window_counts(G: int, kernel: int = 3, padding: int = 1) -> np.ndarray:
    """(G, G) number of in-grid positions of each location's kernel×kernel window (stride 1)."""
    idx = np.arange(G)
    n1 = np.array([sum(0 <= i - padding + k < G for k in range(kernel)) for i in idx])
    return np.outer(n1, n1).astype(np.float64)


def gain(cfg: ModelConfig, std: Optional[float] = None) -> float:
    """κ = σ²·n̄·D/C: the factor by which one ConvCaps layer multiplies E‖u‖² before squash
    (E‖s‖² = κ·E‖u‖², uniform couplings), with n̄ the mean in-grid window count (7.1 on a 6×6 grid,
    9 on an infinite one). κ < 1 shrinks lengths every layer; the paper's Table 5 orders by it."""
    std = cfg.init_std if std is None else std
    return std * std * _window_counts(cfg.grid).mean() * cfg.D / cfg.C


def _primary_var(cfg: ModelConfig) -> float:
    """Closed-form variance of one PrimaryCaps pre-squash component at init.

    BatchNorm(train)+ReLU makes conv3's outputs half-normal with E[h²] = 1/2; PyTorch's default conv
    init (kaiming_uniform with a = √5) has Var(w) = 1/(3·fan_in), and the bias Var(b) = 1/(3·fan_in).
    So each component has variance 1/6 + 1/(3·fan_in), and ‖s‖ = that^½·χ_D.
    """
    fan_in = cfg.widths[2] * cfg.primary_kernel ** 2
    return 1 / 6 + 1 / (3 * fan_in)


def _log_mean(a: np.ndarray, axis) -> np.ndarray:
    """log of the mean of e^a over ``axis`` (no underflow)."""
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.mean(np.exp(a - m), axis=axis))


def length_recurrence(cfg: ModelConfig, primary_m2: Optional[Union[float, np.ndarray]] = None,
                      mean_field: Optional[bool] = None, routing: bool = True) -> pd.DataFrame:
    """Predicted mean capsule length per layer at initialisation: primary, inter1..interI, class.

    The recurrence of the module docstring, eqs. (1)-(2), with Σ_k ‖u_k‖² replaced by its expectation
    given the previous layer's map of m2 = E‖u‖². Per image n and location p of the G×G grid:

        log τ_np² = log(σ²·C_in/C_out²) + log Σ_{q ∈ window(p)} m2_nq
        m2'_np = E[g_r(τ_np χ_D)²],   ℓ'_np = E[g_r(τ_np χ_D)]     (χ_D quadrature, in log space)

    where g_r is squash after r routing iterations (:func:`_routed_log_len`; g itself when
    ``routing=False``), and for the ClassCaps τ_n² = σ_class²·C·Σ_q m2_nq / N² with χ_{class_dim}. The
    predicted length of a layer is the mean of ℓ over images and locations. Everything is carried as
    logarithms, so predictions far below any float's range (1e-1000) are still numbers.

    Per image matters: each layer squares (or cubes) lengths, so the spread of log m2 between images
    and locations doubles (triples) per layer, and the mean is carried by the longest capsules. A
    recurrence on the batch-mean map is right for one layer (within 4% on CapsNet[20, 8] at std 0.5)
    but falls orders of magnitude short after five.

    Args:
        cfg: the model config (C, D, I, init_std, class_std, squash_eps, grid, convcaps_layout,
            routing_iters, num_classes, class_dim).
        primary_m2: E‖u‖² of the PrimaryCaps (mean over types): a scalar, a (G, G) map, or (n, G, G)
            maps of n images (e.g. measured: :func:`length_map` passes every image's). None: the
            closed form of :func:`_primary_var`, the same for every location.
        mean_field: replace each image's map by its grid mean before each layer, with the mean
            in-grid window count (None: True for the authors' ``convcaps_layout="reshape"``, whose
            scrambled windows mix locations; else False).
        routing: add the first-order effect of routing iterations 2..r (:func:`_routed_log_len`).

    Returns:
        DataFrame with ``layer``, ``depth``, ``log10_mean`` (log10 of the predicted mean length),
        ``mean`` (10**log10_mean; 0.0 below float64's range), ``log10_m2`` and ``gain`` (E‖s‖²/E‖u‖²
        of that layer's first routing iteration, over the grid mean; NaN for the primary).
    """
    if mean_field is None:
        mean_field = cfg.convcaps_layout == "reshape"
    G, eps, r = cfg.grid, cfg.squash_eps, cfg.routing_iters
    log_x, logw = _chi_nodes(cfg.D)
    counts = _window_counts(G)

    def out_len(log_s: np.ndarray, log_jtau2, J: int) -> np.ndarray:  # log length at the nodes
        return _routed_log_len(log_s, log_jtau2, J, r, eps) if routing else _log_g(log_s, eps)

    if primary_m2 is None:
        log_tau0 = 0.5 * math.log(_primary_var(cfg))
        nodes = _log_g(log_tau0 + log_x, eps)
        log_len = np.full((1, G, G), _logmeanexp_weights(nodes, logw))
        log_m2 = np.full((1, G, G), _logmeanexp_weights(2 * nodes, logw))
    else:
        m2 = np.asarray(primary_m2, dtype=np.float64)
        m2 = np.broadcast_to(m2, (G, G)) if m2.ndim < 2 else m2
        log_m2 = np.log(m2.reshape(-1, G, G))  # (n, G, G)
        # the primary's mean length needs the distribution, not only m2: ‖s‖ = τ χ_D with τ solved from m2
        log_tau0 = _solve_log_tau(log_m2, (log_x, logw), eps)  # (n, G, G)
        log_len = _logmeanexp_weights(_log_g(log_tau0[..., None] + log_x, eps), logw)
    rows = []

    def add(name: str, depth: int, log_len_: np.ndarray, log_m2_: np.ndarray, g: float) -> None:
        lm = float(_log_mean(log_len_.reshape(-1), 0))
        rows.append({"layer": name, "depth": depth, "log10_mean": lm / math.log(10),
                     "mean": math.exp(lm) if lm > -745 else 0.0,
                     "log10_m2": float(_log_mean(log_m2_.reshape(-1), 0)) / math.log(10), "gain": g})

    add("primary", 0, log_len, log_m2, float("nan"))
    C, sigma2 = cfg.C, cfg.init_std ** 2
    for i in range(cfg.I):
        if mean_field:
            win = _log_mean(log_m2, (1, 2))[:, None, None] + math.log(counts.mean()) + np.zeros((1, G, G))
        else:
            win = _log_window_sum(log_m2)  # (n, G, G) log Σ_{q ∈ window(p)} m2_nq
        log_tau2 = math.log(sigma2 * C / C ** 2) + win  # (n, G, G)
        gain_ = float(np.exp(_log_mean(log_tau2.reshape(-1), 0) - _log_mean(log_m2.reshape(-1), 0)) * cfg.D)
        nodes = out_len(0.5 * log_tau2[..., None] + log_x, math.log(C) + log_tau2[..., None], C)  # (n, G, G, q)
        log_len = _logmeanexp_weights(nodes, logw)
        log_m2 = _logmeanexp_weights(2 * nodes, logw)
        add(f"inter{i + 1}", i + 1, log_len, log_m2, gain_)

    N, M = cfg.num_classes, cfg.class_dim
    lx_c, lw_c = _chi_nodes(M)
    total = _log_mean(log_m2, (1, 2)) + math.log(G * G)  # (n,) log Σ_q m2_nq
    log_tau2 = math.log(cfg.class_std ** 2 * C / N ** 2) + total  # (n,)
    nodes = out_len(0.5 * log_tau2[:, None] + lx_c, math.log(N) + log_tau2[:, None], N)  # (n, q)
    class_log_len = _logmeanexp_weights(nodes, lw_c)  # (n,) per image
    add("class", cfg.I + 1, class_log_len, _logmeanexp_weights(2 * nodes, lw_c),
        cfg.class_std ** 2 * C * G * G * M / N ** 2)  # E‖s‖²/E‖u‖² with uniform couplings
    table = pd.DataFrame(rows)
    table.attrs["class_log_len"] = class_log_len.tolist()  # natural log of each image's predicted class length
    return table


#: Smallest positive (subnormal) number of each dtype: a predicted length below it is exactly zero.
TINY = {"float32": float(np.nextafter(np.float32(0), np.float32(1))), "float64": float(np.nextafter(0.0, 1.0))}


def predicted_limit(cfg: ModelConfig, primary_m2: Optional[Union[float, np.ndarray]] = None,
                    dtype: str = "float32", I_max: int = 16) -> Optional[int]:
    """The depth limit the recurrence predicts: the first I ≤ I_max at which every image's predicted
    class length (:func:`length_recurrence` of CapsNet[C, D, I]) lies below the dtype's smallest
    subnormal, i.e. would round to exactly zero; None if no I ≤ I_max does.

    Rough by design: the recurrence predicts each image's *expected* length over the weights, while
    the float zero needs every (image, class) length to underflow, and the real float path may flush
    earlier (‖s‖² underflows before g(‖s‖) does). Compare it with :func:`depth_limit`.
    """
    log_tiny = math.log(TINY[dtype])
    for I in range(I_max + 1):
        t = length_recurrence(cfg.replace(I=I), primary_m2=primary_m2)
        if t["log10_mean"].iloc[:-1].min() * math.log(10) < log_tiny or max(t.attrs["class_log_len"]) < log_tiny:
            return I
    return None


@torch.no_grad()
def primary_m2_maps(cfg: ModelConfig, x: Tensor, seed: int = 0, dtype: str = "float32") -> np.ndarray:
    """(B, G, G) E‖u‖² of each image's PrimaryCaps (mean over the C types) at init: the measured
    start of :func:`length_recurrence` (backbone and PrimaryCaps only, no capsule routing)."""
    model = build_model(cfg.replace(I=0), seed, dtype)
    h = x.to(DTYPE[dtype])
    for layer in model.backbone:
        h = layer(h)
    u, _ = model.primary(h)  # (B, G, G, C, D)
    return u.double().square().sum(-1).mean(dim=3).numpy()


def _log_window_sum(log_m2: np.ndarray, kernel: int = 3, padding: int = 1) -> np.ndarray:
    """(n, G, G) log of Σ over each location's in-grid kernel×kernel window of e^{log_m2} (stride 1)."""
    n, G, _ = log_m2.shape
    m = log_m2.max(axis=(1, 2), keepdims=True)
    e = np.pad(np.exp(log_m2 - m), ((0, 0), (padding, padding), (padding, padding)))  # zeros outside the grid
    out = np.zeros((n, G, G))
    for a in range(kernel):
        for b in range(kernel):
            out += e[:, a:a + G, b:b + G]
    return np.log(out) + m


def _solve_log_tau(log_m2: np.ndarray, nodes, eps: float) -> np.ndarray:
    """log τ such that E[g(τ χ_D)²] = e^{log_m2}, elementwise (bisection; E g² increases with τ)."""
    log_x, logw = nodes
    log_m2 = np.asarray(log_m2, dtype=np.float64)
    lo, hi = np.full(log_m2.shape, -400.0), np.full(log_m2.shape, 50.0)
    for _ in range(60):  # 450 / 2^60: exact to rounding
        mid = 0.5 * (lo + hi)
        below = _logmeanexp_weights(2 * _log_g(mid[..., None] + log_x, eps), logw) < log_m2
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- measured beside predicted


def length_map(cfg: ModelConfig, batches: Sequence[Union[Tensor, tuple[Tensor, Tensor]]], seeds: Sequence[int] = (0,),
               dtype: str = "float32", primary: str = "measured") -> pd.DataFrame:
    """Measured mean capsule length per layer (over seeds × batches) beside the recurrence's prediction.

    Args:
        cfg: model config (its I sets the depth).
        batches: images x (B, Cin, S, S) or (x, y) pairs, e.g. :func:`eval_batches`.
        seeds: model seeds; every (seed, batch) pair is one forward pass at init.
        dtype: "float32" or "float64".
        primary: seed the recurrence with the "measured" PrimaryCaps E‖u‖² maps (each image's, per
            location, averaged over types) or the "closed" form (:func:`_primary_var`).

    Returns:
        DataFrame per layer: ``layer``, ``depth``, ``measured`` (mean length over all runs),
        ``measured_min`` / ``measured_max`` (the smallest / largest per-run mean), ``zero_runs``
        (runs in which the layer is exactly zero everywhere), ``predicted``, ``log10_predicted``,
        ``gain``.
    """
    per_run, m2_maps = [], []
    for seed in seeds:
        model = build_model(cfg, seed, dtype)
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            with torch.no_grad():
                out = model(x.to(DTYPE[dtype]))
            per_run.append([torch.linalg.vector_norm(u.double(), dim=-1).mean().item() for u in out.capsules.values()])
            prim = out.capsules["primary"].double()  # (B, G, G, C, D)
            m2_maps.append(prim.square().sum(-1).mean(dim=3).numpy())  # (B, G, G) per image
    runs = np.array(per_run)  # (runs, layers)
    pred = length_recurrence(cfg, primary_m2=np.concatenate(m2_maps) if primary == "measured" else None)
    names = list(out.capsules)
    return pd.DataFrame({
        "layer": names, "depth": range(len(names)), "measured": runs.mean(0), "measured_min": runs.min(0),
        "measured_max": runs.max(0), "zero_runs": (runs == 0).sum(0), "predicted": pred["mean"].to_numpy(),
        "log10_predicted": pred["log10_mean"].to_numpy(), "gain": pred["gain"].to_numpy()})


def length_map_figure(table: pd.DataFrame, title: str = "", ax=None):
    """Measured vs predicted mean capsule length per layer on a log axis (a matplotlib Figure).

    ``table`` is :func:`length_map`'s output. Measured means that are exactly zero cannot sit on a log
    axis: they are drawn as downward triangles on the bottom edge, labelled "exactly 0".
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
    else:
        fig = ax.figure
    d = table["depth"].to_numpy()
    meas = table["measured"].to_numpy()
    pos = meas > 0
    pred = 10.0 ** table["log10_predicted"].to_numpy()
    ax.set_yscale("log")
    ax.plot(d, np.where(pred > 0, pred, np.nan), "--", color="tab:gray", marker=".", label="recurrence (eqs. 1-2)")
    ax.plot(d[pos], meas[pos], "o-", color="tab:blue", label="measured (mean over seeds × batches)")
    lo = table["measured_min"].to_numpy()
    hi = table["measured_max"].to_numpy()
    ok = (lo > 0) & pos
    ax.vlines(d[ok], lo[ok], hi[ok], color="tab:blue", alpha=0.4)
    floor = min(np.nanmin(np.where(meas > 0, meas, np.nan)) if pos.any() else 1e-40, np.nanmin(pred[pred > 0])) / 10
    if (~pos).any():
        ax.plot(d[~pos], np.full((~pos).sum(), floor), "v", color="tab:red", label="measured: exactly 0")
    ax.set_xticks(d)
    ax.set_xticklabels(table["layer"], rotation=45, ha="right")
    ax.set_ylabel("mean capsule length")
    ax.set_ylim(bottom=floor / 3, top=2)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- pruned configs


def pruned_model_config(cfg: ModelConfig, pr: float, rule: Optional[str] = None) -> ModelConfig:
    """The CapsNet[C', D] that a prune at ratio ``pr`` leaves, with the same I (every layer re-initialised).

    Each of the four pruned conv layers loses :func:`capslib.pruning.prune.prune_count` channels under
    ``rule`` (None: ``cfg.prune_rule``): the backbone widths become explicit and C' = kept PrimaryCaps
    channels / D. C = 20, D = 8: PR 0.125 / 0.25 / 0.375 give C' = 17 / 15 / 12 by the paper's rule
    (round up) and 18 / 15 / 13 by the authors' (round down). At initialisation which channels were
    removed does not matter; after training it does (the trained backbone is kept), which this
    initialisation screen cannot see.
    """
    from ..pruning.prune import prune_count

    rule = cfg.prune_rule if rule is None else rule
    widths = tuple(w - prune_count(w, pr, cfg.D, rule) for w in cfg.widths)
    kept = cfg.C * cfg.D - prune_count(cfg.C * cfg.D, pr, cfg.D, rule)
    if kept % cfg.D or kept < cfg.D or min(widths) < 1:
        raise ValueError(f"PR {pr} leaves {kept} PrimaryCaps channels and widths {widths}: not a CapsNet")
    return cfg.replace(C=kept // cfg.D, backbone_widths=widths, prune_rule=rule)


# ----------------------------------------------------------------------------- command line


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m capslib.experiments.init_study --C 20 --D 8 --I 8 --std 0.5``: measured vs predicted length map."""
    p = argparse.ArgumentParser(prog="python -m capslib.experiments.init_study", description=main.__doc__)
    p.add_argument("--C", type=int, default=20)
    p.add_argument("--D", type=int, default=8)
    p.add_argument("--I", type=int, default=8)
    p.add_argument("--std", type=float, default=0.5)
    p.add_argument("--class-std", type=float, default=None)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--preset", choices=("default", "authors"), default=None,
                   help="apply a preset's model fields first (then --std etc. are ignored)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--batches", type=int, default=1)
    p.add_argument("--dtype", choices=tuple(DTYPE), default="float32")
    p.add_argument("--figure", default=None, help="save the figure here (png/svg)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = ModelConfig(C=a.C, D=a.D, I=a.I, init_std=a.std, class_init_std=a.class_std, squash_eps=a.eps)
    if a.preset:
        from ..engine.config import PRESETS

        cfg = cfg.replace(**PRESETS[a.preset]["model"])
    table = length_map(cfg, eval_batches(a.batches), seeds=range(a.seeds), dtype=a.dtype)
    with pd.option_context("display.float_format", "{:.3g}".format, "display.width", 160):
        print(table.to_string(index=False))
    if a.figure:
        length_map_figure(table, f"CapsNet[{a.C}, {a.D}, {a.I}] std {cfg.init_std}").savefig(a.figure, dpi=120)


if __name__ == "__main__":
    main()
