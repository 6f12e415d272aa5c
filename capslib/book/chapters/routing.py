"""The routing chapter (paper §3.2, seed 002): dynamic routing traced on a real batch
(:func:`routing_trace`, :func:`trace_summary`, :func:`trace_matches_forward`, :func:`squash_table`) and
seed 002's depth study of four routing algorithms (:func:`routing_study`, :func:`study_table`; Figs. 1-7:
:func:`plot_depth_study`, :func:`plot_capsule_activations`, :func:`plot_capsule_activation_grid`,
:func:`activation_panels`; rows from :mod:`capslib.experiments.depth_study`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ...engine.probes import DEAD_THRESHOLD
from ...experiments.depth_study import Acts, _as_acts, _num
from ...experiments.grids import STUDY_ROUTINGS
from ..runner import _device, book_threads, quiet_run


def routing_study(PROFILE: str, DATASET: Optional[str], SEED: int, routings: Sequence[str],
                  depths: Sequence[int]) -> list[dict]:
    """The routing chapter's depth comparison: :func:`capslib.experiments.depth_study.routing_comparison` rows,
    stored in (and read from) ``results/seed002_depth/<profile>.csv``, the ``seed002_depth`` sweep's
    store; a run on the CPU trains with :data:`BOOK_CPU_THREADS` threads."""
    from ...experiments.depth_study import depth_config, routing_comparison

    with quiet_run(depth_config(routings[0], depths[0], dataset=DATASET, profile=PROFILE, seed=SEED)):
        return routing_comparison(routings, depths, dataset=DATASET, profile=PROFILE, seed=SEED)


def study_table(rows: Iterable[Mapping[str, Any]], precise: bool = False) -> pd.DataFrame:
    """One line per (routing, depth) of :func:`routing_study`: loss, test accuracy (%), dead capsule
    types averaged over the ConvCaps layers, and the weakest ConvCaps layer's mean activation.
    Rounded for print (whole percent, one decimal, two significant digits) unless ``precise``."""
    from ...experiments.depth_study import depth_frame

    df = depth_frame(rows)
    table = pd.DataFrame({
        "routing": df["routing"], "ConvCaps layers": df["depth"], "C": df["C"], "D": df["D"], "loss": df["loss"],
        "epochs": df["epochs"], "test acc (%)": 100 * df["test_acc"], "dead types": df["dead_caps"],
        "weakest mean activation": df["weakest_act"],
    })
    if not precise:
        table["test acc (%)"] = table["test acc (%)"].round(0).astype(int)
        table["dead types"] = table["dead types"].round(1)
        table["weakest mean activation"] = table["weakest mean activation"].map(lambda v: float(f"{v:.2g}"))
    return table.set_index(["routing", "ConvCaps layers"])


# ======================================================================================
# Routing on a real batch
# ======================================================================================
@book_threads
@torch.no_grad()
def layer_votes(model, x: Tensor, layer: str = "class") -> Tensor:
    """The votes ``u_hat`` a trained capsule layer routes for the batch ``x``.

    ``layer`` is ``"class"`` (ClassCaps: every capsule of the last grid votes
    for every class) or ``"inter1"``, ``"inter2"``, ... (a ConvCaps layer: each
    of the k·k·C capsules of a window votes for the C types at its location).

    Returns ``(n, J, K, D)`` as :func:`capslib.engine.routing.dynamic_routing` reads it:
    n = B for ClassCaps, B·H·W for ConvCaps; J parents; K children.
    """
    from ...engine.capsules import capsule_votes, unfold_capsules

    if model.config.routing != "dynamic":
        raise ValueError(f"routing traces are for dynamic routing; this model uses {model.config.routing!r}")
    model.eval()
    out = model(x.to(_device(model)))
    names = model.capsule_layer_names  # primary, inter1.., class
    if layer not in names or layer == "primary":
        raise ValueError(f"layer must be one of {names[1:]}, got {layer!r}")
    below = names[names.index(layer) - 1]
    u = out.capsules[below]  # (B, H, W, C, D)
    if layer == "class":
        B = u.shape[0]
        return capsule_votes(u.reshape(B, -1, u.shape[-1]), model.classcaps.weight.float())  # (B, N, K, M)
    conv = model.intermediate[int(layer.removeprefix("inter")) - 1]
    windows, _, _ = unfold_capsules(u, conv.kernel, conv.stride, conv.padding)  # (B·L, 9C, D)
    return capsule_votes(windows, conv.weight.float())  # (B·L, C, 9C, D)


@book_threads
@torch.no_grad()
def routing_trace(model, x: Tensor, layer: str = "class", iters: int = 3):
    """Re-run dynamic routing of a trained layer on ``x`` for ``iters`` iterations, recording each one.

    Returns ``(trace, v)``: a :class:`capslib.engine.routing.RoutingTrace` (c,
    agreement and v per iteration) and the final parent capsules. With
    ``iters`` equal to the model's ``routing_iters``, ``v`` is exactly what the
    layer outputs in the forward pass.
    """
    from ...engine.routing import RoutingTrace, dynamic_routing

    trace = RoutingTrace([], [], [])
    v, _ = dynamic_routing(layer_votes(model, x, layer), iters, trace=trace)
    return trace, v


def _entropy(c: Tensor) -> Tensor:
    """Entropy over the parents (dim 1) of coupling coefficients (n, J, K), normalised by log J: in [0, 1]."""
    J = c.shape[1]
    h = -(c * torch.log(c.clamp_min(1e-30))).sum(dim=1)  # (n, K)
    return h / math.log(J) if J > 1 else torch.zeros_like(h)


def trace_summary(trace, labels: Optional[Tensor] = None, layer: str = "") -> pd.DataFrame:
    """Per routing iteration r: how peaked the couplings are and how much the votes agree.

    Columns (means over images, locations and child capsules):
      * ``entropy c``: entropy of c over the parents / log J (1 = uniform, 0 = one parent);
      * ``max c``: the largest coupling of each child;
      * ``agreement``: u_hat·v, the update added to the logits b after iteration r (eq. 1);
      * ``agreement (coupled)``: Σ_j c_j·(u_hat_j·v_j), the agreement with the parents a child is routed to;
      * ``|v| max``: the length of the longest parent capsule;
      * ``acc``: for ClassCaps with ``labels``, the accuracy of the longest class at iteration r.
    """
    rows = []
    for r, (c, a, v) in enumerate(zip(trace.c, trace.agreement, trace.v), start=1):
        lengths = torch.linalg.vector_norm(v, dim=-1)  # (n, J)
        rec = {
            "layer": layer, "r": r,
            "entropy c": _entropy(c).mean().item(),
            "max c": c.max(dim=1).values.mean().item(),
            "agreement": a.mean().item(),
            "agreement (coupled)": (c * a).sum(dim=1).mean().item(),
            "|v| max": lengths.max(dim=1).values.mean().item(),
        }
        if labels is not None and lengths.shape[0] == len(labels):
            rec["acc"] = (lengths.argmax(dim=1).cpu() == labels.cpu()).float().mean().item()
        rows.append(rec)
    return pd.DataFrame(rows)


def trace_samples(trace, layer: str = "", max_samples: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Per-child values for distribution plots: one row per (iteration, sampled child).

    Columns ``layer``, ``r``, ``max c``, ``entropy c``. Children are subsampled
    (the same ones at every iteration) to at most ``max_samples``.
    """
    c0 = trace.c[0]
    n, J, K = c0.shape
    total = n * K
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=g)[:max_samples] if total > max_samples else torch.arange(total)
    parts = []
    for r, c in enumerate(trace.c, start=1):
        flat_max = c.max(dim=1).values.reshape(-1).cpu()[idx]
        flat_h = _entropy(c).reshape(-1).cpu()[idx]
        parts.append(pd.DataFrame({"layer": layer, "r": r, "max c": flat_max.cpu().numpy(),
                                   "entropy c": flat_h.cpu().numpy()}))
    return pd.concat(parts, ignore_index=True)


def routed_layers(model) -> list[str]:
    """The layers that route: ``inter1`` ... ``interI`` and ``class``."""
    return [n for n in model.capsule_layer_names if n != "primary"]


def routing_traces(model, x: Tensor, iters: int = 3) -> dict[str, Any]:
    """:func:`routing_trace` of every routed layer of ``model`` on ``x``: ``{layer: RoutingTrace}``."""
    return {layer: routing_trace(model, x, layer, iters)[0] for layer in routed_layers(model)}


def trace_table(traces: Mapping[str, Any], labels: Optional[Tensor] = None,
                decimals: Optional[int] = None) -> pd.DataFrame:
    """:func:`trace_summary` of every layer of ``traces``, one row per (layer, r); rounded if ``decimals``."""
    df = pd.concat([trace_summary(t, labels, layer) for layer, t in traces.items()], ignore_index=True)
    df = df.set_index(["layer", "r"])
    return df.round(decimals) if decimals is not None else df


def trace_sample_table(traces: Mapping[str, Any], max_samples: int = 1500) -> pd.DataFrame:
    """:func:`trace_samples` of every layer of ``traces``."""
    return pd.concat([trace_samples(t, layer, max_samples) for layer, t in traces.items()], ignore_index=True)


@book_threads
@torch.no_grad()
def trace_matches_forward(model, x: Tensor) -> pd.DataFrame:
    """max |v_trace − v_forward| per routed layer: the re-run routing is the layer's own.

    Routing the votes of :func:`layer_votes` for the model's own
    ``routing_iters`` must give exactly the capsules of the forward pass; this
    checks that the traces in the chapter are those of the trained model. The
    forward pass here takes the PyTorch routing path, the code the trace re-runs
    (on CPU the layers otherwise use the fused kernel, which computes the same
    capsules to float32 rounding: tests/test_fused_routing.py).
    """
    from ...engine.capsules import use_fused_routing

    model.eval()
    fused = {m: m.fused for m in model.modules() if hasattr(m, "fused")}
    use_fused_routing(model, False)
    try:
        caps = model(x.to(_device(model))).capsules
        out = []
        for layer in routed_layers(model):
            _, v = routing_trace(model, x, layer, model.config.routing_iters)  # (n, J, D)
            ref = caps[layer].reshape(v.shape)
            out.append({"layer": layer, "votes u_hat": "x".join(str(s) for s in layer_votes(model, x, layer).shape),
                        "max |v_trace - v_forward|": float((v - ref).abs().max())})
    finally:
        for m, flag in fused.items():
            m.fused = flag
    return pd.DataFrame(out).set_index("layer")


def squash_table(lengths: Sequence[float] = (0.0, 0.1, 0.5, 1.0, 3.0, 10.0)) -> pd.DataFrame:
    """‖v‖ for inputs of length ‖s‖: :func:`capslib.engine.routing.squash` and eq. (4) as printed.

    Each input is ``s = (‖s‖, 0, 0, 0)``; the squash of the zero vector is 0, not NaN.
    """
    from ...engine.routing import squash

    s = torch.zeros(len(lengths), 4)
    s[:, 0] = torch.tensor([float(v) for v in lengths])
    v = torch.linalg.vector_norm(squash(s), dim=-1)
    n = s[:, 0]
    return pd.DataFrame({"|s|": n.numpy(), "|v| = squash (code)": v.numpy().round(4),
                         "|s|/(1+|s|) (eq. 4 as printed)": (n / (1 + n)).numpy().round(4),
                         "NaN": torch.isnan(v).numpy()}).set_index("|s|")


# ----------------------------------------------------------------------------- Figs. 1-5

def plot_depth_study(frame: pd.DataFrame, title: Optional[str] = None, threshold: float = DEAD_THRESHOLD):
    """Seed 002 Figs. 1-5 with every routing on the same axes: test accuracy, dead capsule types
    (averaged over the ConvCaps layers) and the weakest ConvCaps layer's mean activation (log scale,
    the dead threshold dashed), each against the number of ConvCaps layers. Means over seeds.
    """
    from matplotlib.figure import Figure

    from ..plots import PAGE_WIDTH_IN, _sns, integer_ticks, wrap_title

    sns = _sns()
    if frame.empty:
        raise ValueError("plot_depth_study needs at least one run")
    df = frame.assign(**{"test accuracy (%)": 100 * frame["test_acc"]})
    palette = dict(zip(STUDY_ROUTINGS, sns.color_palette("deep", len(STUDY_ROUTINGS))))
    hue_order = [r for r in STUDY_ROUTINGS if r in set(df["routing"])] + \
        sorted(set(df["routing"]) - set(STUDY_ROUTINGS))
    palette.update({r: "gray" for r in hue_order if r not in palette})
    panels = [("test accuracy (%)", "test accuracy (%)", "linear"),
              ("dead_caps", f"dead capsule types (of C = {int(df['C'].max())})", "linear"),
              ("weakest_act", "weakest ConvCaps layer: mean activation", "log")]
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.9), layout="constrained")  # the book's text width
    axes = fig.subplots(1, 3)
    for ax, (col, label, scale) in zip(axes, panels):
        sns.lineplot(data=df, x="depth", y=col, hue="routing", hue_order=hue_order, palette=palette,
                     marker="o", errorbar=None, ax=ax, legend=ax is axes[0])
        ax.set_yscale(scale)
        integer_ticks(ax, sorted(set(df["depth"])))
        ax.set_xlabel("ConvCaps layers")
        ax.set_ylabel("")
        ax.set_title(wrap_title(label, PAGE_WIDTH_IN / 3 - 0.2))
        if col == "test accuracy (%)":
            ax.axhline(100 / 10, color="0.5", ls=":", lw=1)  # chance, 10 classes
        if col == "dead_caps":
            ax.set_ylim(-0.2, max(float(df["C"].max()), 1.0) + 0.2)
        if col == "weakest_act":
            ax.axhline(threshold, color="red", ls="--", lw=1)
            ax.set_ylim(min(threshold / 2, float(np.nanmin(df[col])) / 2) if df[col].notna().any() else threshold / 2,
                        1.0)
    legend = axes[0].get_legend()
    if legend is not None:
        handles, labels = axes[0].get_legend_handles_labels()
        legend.remove()
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), title="routing", frameon=False)
    if title:
        fig.suptitle(wrap_title(title, PAGE_WIDTH_IN))
    return fig


# ----------------------------------------------------------------------------- Figs. 6-7


def _snapshot_pair(source: Any, last: Any = None) -> tuple[Acts, Acts, dict[str, Any]]:
    """(epoch-1 acts, last-epoch acts, labels) from a depth_study row or from two snapshots."""
    labels: dict[str, Any] = {}
    if isinstance(source, Mapping) and "acts_first" in source:
        row = source
        source, last = row["acts_first"], row["acts_last"]
        labels = dict(routing=row.get("model.routing", row.get("routing")), depth=row.get("model.I"),
                      dataset=row.get("data.dataset"), test_acc=float(row["test_acc"]),
                      epochs=row.get("train.epochs", "last"))
    if last is None:
        raise ValueError("plot_capsule_activations needs the last-epoch activations (or a depth_study row)")
    return _as_acts(source), _as_acts(last), labels


def _draw_snapshot(ax, acts: Acts, layers: Sequence[str], width: int, title: str, threshold: float, cmap: str,
                   norm) -> None:
    """One panel of Figs. 6-7: a row of circles per layer, coloured by mean activation."""
    for row_i, layer in enumerate(layers):
        vals = np.asarray(acts[layer], dtype=float)
        dead = vals <= threshold
        ax.scatter(np.arange(len(vals)), np.full(len(vals), len(layers) - 1 - row_i), s=150, c=vals, cmap=cmap,
                   norm=norm, edgecolors=np.where(dead, "red", "black"), linewidths=np.where(dead, 1.6, 0.5))
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels(list(reversed(layers)))
    ax.set_xticks(range(width))
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-0.7, len(layers) - 0.3)
    ax.set_xlabel("capsule type")
    ax.grid(False)
    n_dead = sum(int((np.asarray(acts[k]) <= threshold).sum()) for k in layers)
    ax.set_title(f"{title} ({n_dead} dead)", fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _default_layers(acts: Acts, include_class: bool) -> list[str]:
    return [k for k in acts if k != "class"] + (["class"] if include_class and "class" in acts else [])


def plot_capsule_activations(first: Any, last: Any = None, layers: Optional[Sequence[str]] = None,
                             include_class: bool = False, threshold: float = DEAD_THRESHOLD,
                             titles: Optional[tuple[str, str]] = None, suptitle: Optional[str] = None,
                             cmap: str = "viridis"):
    """Seed 002 Figs. 6-7: one circle per capsule (type), one row per layer, at epoch 1 and at the end.

    Args:
        first: a :func:`depth_study` row (then ``last`` is taken from it too), or the epoch-1
            activations as a :class:`capslib.engine.probes.ProbeResult`, ``{layer: [a_t]}`` or its JSON.
        last: the last-epoch activations, in the same forms.
        layers: rows to draw, top to bottom (default: PrimaryCaps and the ConvCaps layers, plus the
            class layer with ``include_class``).
        threshold: circles of dead capsules (mean activation ≤ threshold) get a red edge.

    Returns:
        a matplotlib Figure (not pyplot's) with two panels. The colour of a circle is its mean
        validation activation on a fixed [0, 1] scale.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    a_first, a_last, lab = _snapshot_pair(first, last)
    if lab:
        suptitle = suptitle or (f"{lab['routing']} routing, {lab['depth']} ConvCaps layers, {lab['dataset']}: "
                                f"test accuracy {lab['test_acc']:.1%}")
        titles = titles or ("end of epoch 1", f"end of epoch {lab['epochs']}")
    titles = titles or ("end of epoch 1", "end of the last epoch")
    layers = list(layers) if layers is not None else _default_layers(a_first, include_class)
    width = max(len(s[k]) for s in (a_first, a_last) for k in layers)
    norm = Normalize(0.0, 1.0)
    fig = Figure(figsize=(max(7.0, 2.6 + 0.84 * width), 1.0 + 0.45 * len(layers)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, acts, title in zip(axes, (a_first, a_last), titles):
        _draw_snapshot(ax, acts, layers, width, title, threshold, cmap, norm)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.9, label="mean activation")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def plot_capsule_activation_grid(rows: Sequence[Mapping[str, Any]], threshold: float = DEAD_THRESHOLD,
                                 include_class: bool = False, title: Optional[str] = None, cmap: str = "viridis"):
    """Figs. 6-7 for several runs at once (e.g. one per routing): one line of two panels
    (epoch 1, last epoch) per :func:`depth_study` row, on one colour scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("plot_capsule_activation_grid needs at least one depth_study row")
    snaps = [_snapshot_pair(r) for r in rows]
    layer_lists = [_default_layers(a, include_class) for a, _, _ in snaps]
    width = max(len(a[k]) for (a, b, _), ls in zip(snaps, layer_lists) for k in ls)
    height = sum(0.75 + 0.42 * len(ls) for ls in layer_lists)
    norm = Normalize(0.0, 1.0)
    fig = Figure(figsize=(max(8.0, 3.5 + 0.84 * width), height + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False, height_ratios=[len(ls) + 1 for ls in layer_lists])
    for (a_first, a_last, lab), layers, pair in zip(snaps, layer_lists, axes):
        _draw_snapshot(pair[0], a_first, layers, width, "epoch 1", threshold, cmap, norm)
        _draw_snapshot(pair[1], a_last, layers, width, f"epoch {lab['epochs']}", threshold, cmap, norm)
        pair[0].set_ylabel(f"{lab['routing']} routing\n{lab['depth']} ConvCaps layers\ntest acc. {lab['test_acc']:.0%}",
                           fontsize=10)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.6, label="mean activation")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _routing_depth(row: Mapping[str, Any]) -> tuple[str, int]:
    return str(row.get("model.routing", row.get("routing"))), int(_num(row.get("model.I", row.get("depth"))))


def deepest_runs(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The deepest run of each routing, in the order the routings first appear."""
    best: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        routing, depth = _routing_depth(r)
        if routing not in best or depth > _routing_depth(best[routing])[1]:
            best[routing] = r
    return list(best.values())


def activation_panels(rows: Iterable[Mapping[str, Any]], **kwargs: Any) -> dict[tuple[str, int], Any]:
    """:func:`plot_capsule_activations` of every row, keyed ``(routing, depth)`` (for a slider grid)."""
    return {_routing_depth(r): plot_capsule_activations(r, **kwargs) for r in rows}
