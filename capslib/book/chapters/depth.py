"""The depth chapter (paper §4.1-4.3: Tables 2, 3, 5, Figs. 2-6): accuracy and dead capsules against
depth (:func:`depth_table`, :func:`depth_trials`, :func:`depth_curves`, :func:`grid_dead_table`,
:func:`dead_bars`), their history over training (:func:`dead_history`) and the depth search with
pruning (:func:`depth_with_pruning`).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...engine.config import RunConfig
from .. import plots as pl
from ..build import REPO_ROOT
from ..runner import _pct, layer_order, load_data, probe, quiet_threads
from ..tables import _config_label


def heatmap_size(probes: Mapping[Any, Any]) -> tuple[float, float]:
    """One figure size for the activation heatmaps of several probes, so that slider panels do not jump."""
    width = max(max(len(v) for v in p.activations["paper000"].values()) for p in probes.values())
    rows = max(len(p.layers) for p in probes.values())
    return pl.heatmap_figsize(width, rows)


def probes_of(models: Iterable[tuple[Any, RunConfig, Any]], key) -> dict[Any, Any]:
    """Capsule activations over the test split (:func:`capslib.book.runner.probe`) of :func:`point_models` output.

    ``key(point, cfg)`` names each model (e.g. its I, or its (PR, I)).
    """

    return {key(p, c): probe(m, c) for p, c, m in models}


# ======================================================================================
# Depth (§4.1-4.3: Tables 2, 3, 5, Figs. 2-6)
# ======================================================================================
def _dead(v: Any) -> dict[str, float]:
    if isinstance(v, str):
        return json.loads(v) if v else {}
    return dict(v or {})


def grid_dead_table(rows: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """One line per grid point of a sweep: PR, I, test accuracy and dead capsule types per layer (whole %).

    For a "prune" point the numbers are those of the retrained pruned model; the
    dead fractions use paper 000's definition on the test set.
    """

    recs = []
    for _, r in rows.iterrows():
        kind, stage = r.get("kind", "train"), r.get("stage", "train")
        if not ((kind == "train" and stage == "train") or (kind == "prune" and stage == "retrain")):
            continue
        I = int(r["model.I"])
        rec = {"model": _config_label(r["grid.C"], r["grid.D"]), "PR": float(r.get("pr", 0.0) or 0.0), "I": I,
               "test acc (%)": _pct(r["test_acc"]), "val acc (%)": _pct(r["best_val_acc"])}
        dead = _dead(r["dead_000"])
        for layer in sorted(dead, key=layer_order):
            rec[f"dead {layer} (%)"] = _pct(dead[layer])
        recs.append(rec)
    if not recs:
        return pd.DataFrame()
    df = pd.DataFrame(recs).sort_values(["model", "PR", "I"], kind="stable")
    cols = [c for c in df.columns if not c.startswith("dead")]
    dead_cols = sorted([c for c in df.columns if c.startswith("dead")],
                       key=lambda c: layer_order(c.split()[1]))
    for c in dead_cols:  # "–": the model has no such layer
        df[c] = [("–" if pd.isna(v) else int(v)) for v in df[c]]
    return df[cols + dead_cols].set_index(["model", "PR", "I"])


def depth_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 5 from a depth-search sweep: the largest I that trained, where it stopped, what was tried."""
    recs = []
    for _, r in rows[rows["stage"] == "depth_summary"].iterrows():
        tried = json.loads(r["depths_tried"]) if isinstance(r.get("depths_tried"), str) else []
        md = r.get("max_depth")
        recs.append({"model": _config_label(r["grid.C"], r["grid.D"]),
                     "PR": "none" if not r.get("pr") else float(r["pr"]),
                     "max depth I": "none" if pd.isna(md) or md == "" else int(float(md)),
                     "collapsed at I": ("-" if pd.isna(r.get("collapsed_at")) or r.get("collapsed_at") == ""
                                        else int(float(r["collapsed_at"]))),
                     "depths tried": ", ".join(map(str, tried))})
    return pd.DataFrame(recs).set_index("model") if recs else pd.DataFrame()


def depth_trials(rows: pd.DataFrame, series: str = "no pruning", C: Optional[int] = None,
                 D: Optional[int] = None) -> pd.DataFrame:
    """Accuracy of each depth a depth-search sweep tried: I, test acc (%), collapsed, series.

    ``C``, ``D``: keep only that configuration of the grid (when the grid has it).
    """
    d = rows[rows["stage"] == "depth"]
    if C is not None and D is not None:
        mine = d[(d["grid.C"] == C) & (d["grid.D"] == D)]
        d = mine if len(mine) else d
    return pd.DataFrame({"I": d["depth_I"].astype(int).to_numpy(), "test acc (%)": 100 * d["test_acc"].to_numpy(),
                         "val acc (%)": 100 * d["best_val_acc"].to_numpy(),
                         "collapsed": d["collapsed"].astype(str).eq("True").to_numpy(), "series": series})


def search_trials(result, series: str) -> pd.DataFrame:
    """The same for a :class:`capslib.experiments.pipeline.DepthSearchResult`."""
    return pd.DataFrame({"I": [t.I for t in result.trials], "test acc (%)": [100 * t.test_acc for t in result.trials],
                         "val acc (%)": [100 * t.val_acc for t in result.trials],
                         "collapsed": [t.collapsed for t in result.trials], "series": series})


def depth_with_pruning(cfg: RunConfig, pr: float, max_I: int):
    """:func:`capslib.experiments.pipeline.depth_search` on the backbone pruned at ``pr`` (checkpoints under ``runs/book/``)."""
    from ...experiments.pipeline import depth_search

    # the stage folders of the base, CCM and pruned stages are keyed by their own settings, so the search shares
    # them with chip_pipeline() on the same base model (CapsNet[C, D, 0]) and reuses what the CHIP chapter trained
    base = RunConfig(model=cfg.model.replace(I=0), data=cfg.data, train=cfg.train, profile=cfg.profile)
    ckpt = REPO_ROOT / "runs" / "book" / f"pipeline-{base.config_hash()}"
    with quiet_threads():
        return depth_search(cfg, pr=pr, max_I=max_I, checkpoint_dir=ckpt, experiment="book",
                            data=load_data(cfg), progress=False)


def depth_curves(trials: pd.DataFrame, chance: float = 10.0, title: Optional[str] = None) -> Figure:
    """Accuracy against the number of IntermediateCaps, one line per series (like the paper's Fig. 6).

    ``trials``: rows with ``I``, ``test acc (%)``, ``collapsed``, ``series``;
    collapsed runs are marked with a cross, chance level is dotted.
    """
    sns = pl._sns()
    fig = Figure(figsize=(7.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    sns.lineplot(data=trials, x="I", y="test acc (%)", hue="series", style="series", markers=True, dashes=False,
                 ax=ax)
    bad = trials[trials["collapsed"]]
    if len(bad):
        ax.scatter(bad["I"], bad["test acc (%)"], marker="x", s=80, color="k", zorder=5, label="collapsed")
    ax.axhline(chance, color="0.4", lw=0.8, ls=":")
    ax.text(ax.get_xlim()[0], chance + 0.5, " chance", fontsize=pl.FONT["small"], color="0.3", va="bottom")
    pl.integer_ticks(ax, trials["I"].unique())
    ax.set_xlabel("IntermediateCaps layers I")
    pl.legend_outside(ax)
    if title:
        ax.set_title(pl.wrap_title(title, 5.4))
    return fig


def dead_history(rows: pd.DataFrame) -> pd.DataFrame:
    """Per epoch and capsule layer: dead capsule types (%, paper 000, validation set) and validation accuracy."""

    recs = []
    for _, r in rows[rows["stage"] == "train"].iterrows():
        model = f"CapsNet[C={int(r['model.C'])}, D={int(r['model.D'])}, I={int(r['model.I'])}]"
        for h in json.loads(r["history"]):
            for layer in sorted(h["dead"], key=layer_order):
                recs.append({"model": model, "epoch": h["epoch"], "layer": layer,
                             "dead types (%)": 100 * h["dead"][layer], "val acc (%)": 100 * h["val_acc"]})
    return pd.DataFrame(recs)


def dead_history_table(hist: pd.DataFrame) -> pd.DataFrame:
    """:func:`dead_history` as a table: one row per (model, epoch), dead types per layer and val acc, whole %."""

    t = hist.pivot_table(index=["model", "epoch"], columns="layer", values="dead types (%)", sort=False)
    t = t[sorted(t.columns, key=layer_order)].round(0).astype(int)
    t.columns = [f"dead {c} (%)" for c in t.columns]
    acc = hist.drop_duplicates(["model", "epoch"]).set_index(["model", "epoch"])["val acc (%)"]
    t.insert(0, "val acc (%)", acc.round(0).astype(int))
    return t


def dead_history_figure(hist: pd.DataFrame, title: Optional[str] = None) -> Figure:
    """Dead capsule types per layer and validation accuracy over the epochs (like the paper's Fig. 3)."""
    sns = pl._sns()
    fig = Figure(figsize=(pl.PAGE_WIDTH_IN, 3.4), layout="constrained")
    a, b = fig.subplots(1, 2)
    sns.lineplot(data=hist, x="epoch", y="dead types (%)", hue="layer", marker="o", ax=a)
    a.set_ylim(-3, 103)
    a.set_title(pl.wrap_title("dead capsule types (activation ≤ 0.01)", 3.0))
    acc = hist.drop_duplicates(["model", "epoch"])
    sns.lineplot(data=acc, x="epoch", y="val acc (%)", marker="o", ax=b, color="0.2")
    b.set_title("validation accuracy")
    for ax in (a, b):
        pl.integer_ticks(ax, hist["epoch"].unique())
    pl.legend_outside(a)
    if title:
        fig.suptitle(pl.wrap_title(title, pl.PAGE_WIDTH_IN, pl.FONT["suptitle"]))
    return fig


def dead_bars(table: pd.DataFrame, title: Optional[str] = None) -> Figure:
    """Dead capsule types per layer for each (PR, I) of a :func:`grid_dead_table` (like the paper's Fig. 5).

    One panel per I, one bar per PR with the same colour in every panel; every bar carries its value,
    so a panel of 0 % bars says so instead of looking empty.
    """
    sns = pl._sns()
    long = table.reset_index().melt(id_vars=["model", "PR", "I"],
                                    value_vars=[c for c in table.columns if c.startswith("dead")],
                                    var_name="layer", value_name="dead types (%)")
    long["dead types (%)"] = pd.to_numeric(long["dead types (%)"], errors="coerce")
    long = long.dropna(subset=["dead types (%)"])
    long["layer"] = long["layer"].str.split().str[1]
    prs = sorted(long["PR"].unique())
    long["PR"] = long["PR"].map(lambda p: f"PR {p:g}")
    hue_order = [f"PR {p:g}" for p in prs]
    palette = pl.level_palette(hue_order)  # the same colour for a PR in every panel
    Is = sorted(long["I"].unique())
    fig = Figure(figsize=pl.book_figsize(3.6 * len(Is) + 0.3, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(Is), sharey=True))
    for ax, I in zip(axes, Is):
        part = long[long["I"] == I]
        sns.barplot(data=part, x="layer", y="dead types (%)", hue="PR", hue_order=hue_order, palette=palette,
                    ax=ax, legend=ax is axes[0])
        for bars in ax.containers:  # print every value: a 0 % bar has no height, but its "0" shows
            ax.bar_label(bars, fmt="%.0f", fontsize=pl.FONT["small"], padding=2)
        if not part["dead types (%)"].any():
            ax.text(0.5, 0.55, "no dead capsule types\n(every bar is 0 %)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=pl.FONT["base"], color="0.35")
        ax.set_title(f"I = {I}")
        ax.set_ylim(0, 110)
        ax.set_xlabel("capsule layer")
    handles, labels = axes[0].get_legend_handles_labels()
    if axes[0].get_legend() is not None:
        axes[0].get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    if title:
        fig.suptitle(pl.wrap_title(title, pl.PAGE_WIDTH_IN, pl.FONT["suptitle"]))
    return fig
