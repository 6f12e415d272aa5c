"""Seed 002's depth study (Everett, Zhong, Leontidis, *Vanishing Activations*, Figs. 1-7).

For a routing algorithm (dynamic routing, or EM, self-routing, VB; :mod:`capslib.routing_alt`)
and a dataset, train networks with 1..10 ConvCaps layers and record, per depth, the test accuracy
and the average number of dead capsules across the ConvCaps layers (a capsule type is dead when
its mean activation over the evaluation pass, eq. 12, is ≤ 0.01, §3.3). Figs. 6-7 show every
capsule's mean validation activation, one circle per capsule and one row per layer, at epoch 1 and
at the last epoch.

    rows = depth_study("em", "fashion-mnist", depths=(1, 2, 3), profile="smoke")
    rows = routing_comparison(depths=(1, 2, 3))  # dynamic, em, self, vb: the book's routing chapter
    df = depth_frame(rows)                       # routing, depth, test_acc, dead_caps, weakest_act, ...
    fig = plot_depth_study(df)                   # Figs. 1-5: accuracy, dead capsules against depth
    fig = plot_capsule_activations(rows[-1])     # Figs. 6-7 for one run

The runs are the grid points of the named experiment ``seed002_depth``
(:func:`capslib.experiments.seed002_point`, "snapshots" points; ``capslib sweep seed002_depth``),
and both routes store their rows in the same ``results/seed002_depth/<profile>.csv`` under the
same keys, so the sweep and the book share results. A row has the sweep row's keys, plus:

* ``routing``, ``depth``, ``loss`` (the class loss actually used);
* ``dead_caps``: dead capsule types averaged over the ConvCaps layers (final model, test split,
  the count of seed 002's figures) and ``dead_frac`` (the same as a fraction of the types);
* ``acts_first`` / ``acts_last``: JSON ``{layer: [mean activation per type]}`` on the validation
  split after epoch 1 and after the last epoch (Figs. 6-7), ``acts_test`` for the final model.

How the epoch-1 activations are obtained (the simplest honest route): the run trains with a
checkpoint folder, stops after epoch 1 (``fit(..., stop_after_epochs=1)``), the epoch-1 model in
``last.pt`` is probed on the validation split (the probe is saved as ``acts_first.json`` beside the
checkpoint, so a crashed run resumes without losing it), and the run then resumes to the end.
Resuming gives exactly the metrics of an uninterrupted run (tested in ``tests/test_train.py``), so
the study changes nothing it measures. The last-epoch activations come from the last epoch's
``last.pt``, not from the model selected on validation (Fig. 6b is "the end of epoch 50").
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from .config import RunConfig, apply_overrides
from .experiments import SEED002_ROUTINGS, STUDY_ROUTINGS, Point, seed002_point
from .probes import DEAD_THRESHOLD, ProbeResult

__all__ = ["SEED002_ROUTINGS", "STUDY_ROUTINGS", "depth_config", "fit_with_snapshots", "study_row", "depth_study",
           "routing_comparison", "depth_frame", "plot_depth_study", "plot_capsule_activations",
           "plot_capsule_activation_grid", "deepest_runs", "activation_panels", "EXPERIMENT"]

#: Name of the experiment (results/<EXPERIMENT>/<profile>.csv) the rows belong to.
EXPERIMENT = "seed002_depth"
_DEFINITION = "paper002"  # eq. (12): for EM/self/VB layers this is the scalar activation itself
Acts = dict[str, list[float]]  # {layer: [mean activation per capsule type]}


def depth_config(routing: str, depth: int, dataset: Optional[str] = None, profile: str = "smoke",
                 seed: int = 0, **overrides: Any) -> RunConfig:
    """The config of one run of the study: the ``seed002_depth`` grid point, on ``dataset``."""
    cfg = seed002_point(routing, depth, profile).config(profile, seed=seed)
    if dataset is not None:
        overrides["dataset"] = dataset
    return apply_overrides(cfg, **overrides) if overrides else cfg


def _acts(probe: ProbeResult) -> Acts:
    return {k: [float(x) for x in v] for k, v in probe.activations[_DEFINITION].items()}


def fit_with_snapshots(cfg: RunConfig, data=None, progress: bool = False,
                       checkpoint_dir: Optional[str | Path] = None):
    """Train as :func:`capslib.train.fit` does and probe the validation split after epoch 1 and
    after the last epoch.

    With ``checkpoint_dir``, an interrupted run resumes there (epochs and the epoch-1 snapshot);
    without it, the checkpoints live in a temporary folder.

    Returns ``(result, model, first, last)``: the :class:`capslib.train.RunResult`, the model
    selected on validation, and the two snapshots as ``{layer: [mean activation per type]}``.
    """
    import torch

    from .atomic import save_text_atomic
    from .data import load_splits
    from .provenance import resolve_device
    from .train import evaluate, fit, load_model

    data = data if data is not None else load_splits(cfg.data)
    device = resolve_device(cfg.train.device)

    def probe_last(folder: Path) -> Acts:
        model = load_model(cfg, folder / "last.pt", device=str(device))
        return _acts(evaluate(model, data, "val", device=device, probe=True)[1])

    def run(folder: Path):
        first_file, last_file = folder / "acts_first.json", folder / "last.pt"
        if first_file.exists():
            first = json.loads(first_file.read_text())
        else:
            done = int(torch.load(last_file, map_location="cpu", weights_only=True)["epoch"]) \
                if last_file.exists() else 0
            if done > 1:
                raise ValueError(f"{folder} holds a run past epoch 1 without its epoch-1 activations "
                                 f"({first_file.name}); use a fresh checkpoint folder")
            if done == 0:
                fit(cfg, data=data, checkpoint_dir=folder, progress=progress, stop_after_epochs=1)
            first = probe_last(folder)
            save_text_atomic(first_file, json.dumps(first))
        result, model = fit(cfg, data=data, checkpoint_dir=folder, progress=progress)  # resumes after epoch 1
        last = first if cfg.train.epochs == 1 else probe_last(folder)
        return result, model, first, last

    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        return run(Path(checkpoint_dir))
    with tempfile.TemporaryDirectory() as tmp:
        return run(Path(tmp))


def _dead_summary(dead_fraction: Mapping[str, float], C: int) -> tuple[float, float]:
    """(mean dead count, mean dead fraction) over the ConvCaps layers inter1..interI (NaN if none)."""
    fr = [float(v) for k, v in dead_fraction.items() if str(k).startswith("inter")]
    if not fr:
        return float("nan"), float("nan")
    return float(np.mean(fr) * C), float(np.mean(fr))


def study_row(cfg: RunConfig, point: Point, experiment: str = EXPERIMENT, data=None,
              checkpoint_dir: Optional[str | Path] = None, progress: bool = False) -> dict[str, Any]:
    """Run one "snapshots" point (:func:`fit_with_snapshots`) and return its result row: the
    :func:`capslib.results.run_row` columns plus those of the module docstring (not yet tagged
    with the sweep's point columns; :func:`capslib.sweeps.run_point` and :func:`depth_study` do that).
    """
    from .results import run_row

    result, _, first, last = fit_with_snapshots(cfg, data=data, progress=progress, checkpoint_dir=checkpoint_dir)
    dead, frac = _dead_summary(result.probe["dead_fraction"][_DEFINITION], cfg.model.C)
    extra = dict(routing=cfg.model.routing, depth=cfg.model.I, loss=cfg.loss, dead_caps=dead, dead_frac=frac,
                 acts_first=json.dumps(first), acts_last=json.dumps(last),
                 acts_test=json.dumps(result.probe["activations"][_DEFINITION]))
    return run_row(cfg, result, experiment=experiment, stage="train", key_extra=point.key_extra(), extra=extra)


def depth_study(routing: str, dataset: Optional[str] = None, depths: Iterable[int] = (1, 2, 3),
                profile: str = "smoke", seed: int = 0, store: bool = True, results_root: Optional[str] = None,
                data=None, progress: bool = False, **overrides: Any) -> list[dict[str, Any]]:
    """Seed 002's depth study for one routing algorithm and one dataset: one result row per depth.

    Args:
        routing: "dynamic", "em", "self" or "vb".
        dataset: dataset name; None keeps the profile's.
        depths: numbers of ConvCaps layers (seed 002: 1..10).
        profile: "smoke" (CPU miniature: C = 4, 3×3 poses, 2,000 images, 2 epochs), "fmnist", "paper".
        store: read finished rows from, and append new rows to, ``results/seed002_depth/<profile>.csv``
            (the sweep's store and keys; a stored row is returned without training).
        data: preloaded :class:`capslib.data.DataSplits` of the config's data section.
        overrides: config fields, e.g. ``epochs=3`` or ``C=16``.

    Returns:
        rows as :func:`study_row` makes them, tagged like the sweep's (stored rows parsed back with
        :func:`capslib.results.parse_row`, so numbers are numbers either way).
    """
    from .results import ResultsStore, parse_row, run_key
    from .sweeps import _tag

    rows = []
    for depth in depths:
        point = seed002_point(routing, depth, profile)
        cfg = depth_config(routing, depth, dataset=dataset, profile=profile, seed=seed, **overrides)
        st = ResultsStore.for_experiment(EXPERIMENT, cfg.profile, results_root) if store else None
        row = st.get(run_key(cfg, "train", point.key_extra())) if st is not None else None
        if row is not None:
            row = parse_row(row)
        else:
            row = _tag([study_row(cfg, point, data=data, progress=progress)], EXPERIMENT, cfg, point)[0]
            if st is not None:
                st.append(row)
        rows.append(dict(row))
    return rows


def routing_comparison(routings: Sequence[str] = STUDY_ROUTINGS, depths: Sequence[int] = (1, 2, 3),
                       dataset: Optional[str] = None, profile: str = "smoke", seed: int = 0,
                       results_root: Optional[str] = None, progress: bool = False,
                       **overrides: Any) -> list[dict[str, Any]]:
    """:func:`depth_study` for each routing in turn (the book's routing chapter): the rows of every
    (routing, depth), stored runs read rather than retrained, the data loaded once and only when a
    run must train."""
    from .data import load_splits

    if not routings or not depths:
        raise ValueError("routing_comparison needs at least one routing and one depth")
    rows, splits = [], {}
    for routing in routings:  # the data section does not depend on the depth
        data_cfg = depth_config(routing, depths[0], dataset=dataset, profile=profile, seed=seed, **overrides).data
        data = splits.setdefault(data_cfg.to_json(), _LazyData(lambda d=data_cfg: load_splits(d)))
        rows += depth_study(routing, dataset, depths, profile=profile, seed=seed, results_root=results_root,
                            data=data, progress=progress, **overrides)
    return rows


class _LazyData:
    """Data splits loaded on first use: only when a run actually trains."""

    def __init__(self, loader):
        self._loader, self._data = loader, None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._data is None:
            self._data = self._loader()
        return getattr(self._data, name)


def _num(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _weakest_layer_activation(acts: Any) -> float:
    """The smallest per-layer mean activation over the ConvCaps layers (NaN without them)."""
    if acts is None or (isinstance(acts, float) and np.isnan(acts)):
        return float("nan")
    means = [float(np.mean(v)) for k, v in _as_acts(acts).items() if str(k).startswith("inter") and len(v)]
    return min(means) if means else float("nan")


def depth_frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """A tidy table, one line per run: routing, dataset, depth, C, D, loss, epochs, seed, test_acc,
    best_val_acc, dead_caps, dead_frac, weakest_act, collapsed, wall_time, profile, config_hash.

    ``weakest_act`` is the smallest mean activation of a ConvCaps layer on the test split (from
    ``acts_test``; NaN for rows without it). Accepts rows of :func:`depth_study`, of the
    ``seed002_depth`` sweep store or of :func:`capslib.cache.cached_fit` (dead counts are
    recomputed from ``dead_002``).
    """
    records = rows.to_dict(orient="records") if isinstance(rows, pd.DataFrame) else list(rows)
    out = []
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        C = int(_num(r.get("model.C")))
        dead = r.get("dead_002")
        dead = json.loads(dead) if isinstance(dead, str) else (dead or {})
        dead_caps, dead_frac = _dead_summary(dead, C)
        routing = r.get("model.routing", r.get("routing"))
        loss = r.get("loss")
        if not isinstance(loss, str) or not loss:
            loss = r.get("train.loss", "auto")
            if loss in ("auto", None, "") or (isinstance(loss, float) and np.isnan(loss)):
                loss = "spread" if routing in ("em", "vb") else "margin"
        out.append({
            "routing": routing, "dataset": r.get("data.dataset"), "depth": int(_num(r.get("model.I"))),
            "C": C, "D": int(_num(r.get("model.D"))), "loss": loss, "epochs": int(_num(r.get("train.epochs"))),
            "seed": int(_num(r.get("seed", 0))), "test_acc": float(_num(r.get("test_acc"))),
            "best_val_acc": float(_num(r.get("best_val_acc"))), "dead_caps": dead_caps, "dead_frac": dead_frac,
            "weakest_act": _weakest_layer_activation(r.get("acts_test")),
            "collapsed": str(r.get("collapsed")) in ("True", "true", "1"), "wall_time": float(_num(r.get("wall_time"))),
            "profile": r.get("profile"), "config_hash": r.get("config_hash"),
        })
    cols = ["routing", "dataset", "depth", "C", "D", "loss", "epochs", "seed", "test_acc", "best_val_acc",
            "dead_caps", "dead_frac", "weakest_act", "collapsed", "wall_time", "profile", "config_hash"]
    frame = pd.DataFrame(out, columns=cols)
    order = {r: i for i, r in enumerate(STUDY_ROUTINGS)}
    frame["_order"] = frame["routing"].map(lambda r: order.get(r, len(order)))
    return frame.sort_values(["_order", "routing", "dataset", "depth", "seed"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


# ----------------------------------------------------------------------------- Figs. 1-5

def plot_depth_study(frame: pd.DataFrame, title: Optional[str] = None, threshold: float = DEAD_THRESHOLD):
    """Seed 002 Figs. 1-5 with every routing on the same axes: test accuracy, dead capsule types
    (averaged over the ConvCaps layers) and the weakest ConvCaps layer's mean activation (log scale,
    the dead threshold dashed), each against the number of ConvCaps layers. Means over seeds.
    """
    from matplotlib.figure import Figure

    from .plots import PAGE_WIDTH_IN, _sns, integer_ticks, wrap_title

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

def _as_acts(x: Any) -> dict[str, list[float]]:
    if isinstance(x, ProbeResult):
        return _acts(x)
    if isinstance(x, str):
        return json.loads(x)
    return {k: list(np.asarray(v, dtype=float)) for k, v in dict(x).items()}


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
            activations as a :class:`capslib.probes.ProbeResult`, ``{layer: [a_t]}`` or its JSON.
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
