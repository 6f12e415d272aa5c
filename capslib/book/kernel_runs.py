"""Seed 004's claim read from the committed rows of the ``kernel_widths`` study: the minimum cosine distance of
every conv layer's kernels against the layer's width, trained against initial and Gaussian kernels (the kernels
chapter and the verdict page).

Nothing here trains a model. The rows are ``results/kernel_widths/similarity_<profile>.csv``
(:mod:`capslib.experiments.kernel_study`); the rule that grades them was committed with the predictions,
before the models were trained (``results/kernel_widths/predictions.md``):

* seed 004's trend holds in a layer when the trained minimum distance falls with width in every seed;
* training adds to width in a layer when trained − init lies beyond 2 Gaussian sd at every width in every seed;
* the claim is *reproduced* if the trend holds in a layer whose initial kernels do not already show it,
  *explained by width* if it holds only where they do, *not reproduced* if it holds in no layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .collapse_runs import MIN_SEEDS, _rc, results_root
from .plots import PAGE_WIDTH_IN, book_figsize, wrap_title

LAYERS = ("conv1", "conv2", "conv3", "primary")
#: What ``results/kernel_widths/predictions.md`` predicted before training: the layers where the trend would hold
#: and the verdict.
PREDICTED = {"holds_in": ["conv1"], "verdict": "explained by width"}


def load_similarity(profile: str = "cpu", root: Optional[str | Path] = None) -> pd.DataFrame:
    """The study's rows (empty without a file)."""
    path = results_root(root) / "kernel_widths" / f"similarity_{profile}.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _falls(values: pd.Series) -> bool:
    """Strictly decreasing in the order given (widths ascending)."""
    v = values.to_numpy(dtype=float)
    return bool(len(v) > 1 and np.all(np.diff(v) < 0))


def layer_outcomes(df: pd.DataFrame, measure: str = "raw") -> pd.DataFrame:
    """Per layer: ``seeds`` (with a trained model at every width), whether the trained and the initial minimum
    distance fall with width in every seed (``trained_falls``, ``init_falls``), and ``training`` ("closer",
    "farther" or "width alone": trained − init beyond ∓2 Gaussian sd at every width in every seed, or not)."""
    out = []
    d = df[df["measure"] == measure] if not df.empty else df
    for layer in LAYERS:
        g = d[d["layer"] == layer].dropna(subset=["trained"]) if not d.empty else d
        seeds = [s for s, gs in g.groupby("seed") if gs["C"].nunique() == d["C"].nunique()] if not g.empty else []
        g = g[g["seed"].isin(seeds)] if seeds else g.iloc[0:0]
        by_seed = [gs.sort_values("channels") for _, gs in g.groupby("seed")]
        delta = (g["trained"] - g["init"]) / g["gauss_sd"] if len(g) else pd.Series(dtype=float)
        training = ("closer" if len(delta) and (delta < -2).all() else
                    "farther" if len(delta) and (delta > 2).all() else "width alone")
        out.append(dict(layer=layer, seeds=len(seeds),
                        trained_falls=bool(by_seed) and all(_falls(s["trained"]) for s in by_seed),
                        init_falls=bool(by_seed) and all(_falls(s["init"]) for s in by_seed),
                        training=training if seeds else ""))
    return pd.DataFrame(out)


def seed004_outcome(df: pd.DataFrame, measure: str = "raw") -> dict:
    """What the verdict page grades: ``supported`` (the committed rule; None with fewer than
    :data:`MIN_SEEDS` seeds), ``explained`` (the trend holds only where the initial kernels show it),
    ``holds_in``, the layers, ``seeds`` and ``text``."""
    if df.empty:
        return dict(supported=None, explained=False, holds_in=[], seeds=0, layers=pd.DataFrame(), outcome="",
                    text=f"fewer than {MIN_SEEDS} seeds with a trained model at every width yet")
    lo = layer_outcomes(df, measure)
    seeds = int(lo["seeds"].min()) if len(lo) else 0
    holds = lo[lo["trained_falls"]]
    beyond_init = holds[~holds["init_falls"]]
    supported = None if seeds < MIN_SEEDS else bool(len(holds))
    explained = supported is True and beyond_init.empty
    if seeds < MIN_SEEDS:
        text = f"fewer than {MIN_SEEDS} seeds with a trained model at every width yet"
    else:
        parts = [f"{r.layer}: trained {'falls' if r.trained_falls else 'does not fall'} with width, initial "
                 f"{'falls' if r.init_falls else 'does not fall'}; training moves kernels "
                 + {"closer": "closer together than 2 Gaussian sd", "farther": "farther apart than 2 Gaussian sd",
                    "width alone": "by less than 2 Gaussian sd somewhere (width alone)"}[r.training]
                 for r in lo.itertuples()]
        text = "; ".join(parts)
    outcome = ("not reproduced" if supported is False else "explained by width" if explained else
               "reproduced" if supported else "")
    if outcome:
        hit = outcome == PREDICTED["verdict"] and list(holds["layer"]) == PREDICTED["holds_in"]
        text += (f". Predicted before training: {PREDICTED['verdict']}, the trend in "
                 f"{', '.join(PREDICTED['holds_in'])} only; {'matched' if hit else 'missed'}")
    return dict(supported=supported, explained=explained, holds_in=list(holds["layer"]), seeds=seeds,
                layers=lo, text=text, outcome=outcome)


def width_table(df: pd.DataFrame, measure: str = "raw") -> pd.DataFrame:
    """Layer × width: trained (mean ± sd over seeds), initial (mean) and Gaussian (mean ± sd) minimum distance."""
    d = df[df["measure"] == measure]
    rows = []
    for (layer, C), g in d.groupby(["layer", "C"], sort=False):
        t = g["trained"].dropna()
        rows.append({"layer": layer, "C": int(C), "kernels": int(g["channels"].iloc[0]),
                     "entries": int(g["entries"].iloc[0]),
                     "trained": f"{t.mean():.3f} ± {t.std():.3f} ({len(t)})" if len(t) > 1 else
                     (f"{t.mean():.3f} (1)" if len(t) else "—"),
                     "initial": f"{g['init'].mean():.3f}",
                     "Gaussian": f"{g['gauss_mean'].iloc[0]:.3f} ± {g['gauss_sd'].iloc[0]:.3f}"})
    order = {name: i for i, name in enumerate(LAYERS)}
    return pd.DataFrame(rows).sort_values(["layer", "C"], key=lambda s: s.map(order) if s.name == "layer" else s)\
        .set_index(["layer", "C"])


def width_figure(df: pd.DataFrame, measure: str = "raw", title: Optional[str] = None) -> Figure:
    """One panel per conv layer: minimum cosine distance against the number of kernels, trained (mean ± sd over
    seeds, one line per seed faint), initial (dashed) and Gaussian (dotted, ± sd band)."""
    d = df[df["measure"] == measure]
    with _rc():
        fig = Figure(figsize=book_figsize(PAGE_WIDTH_IN, 3.2), layout="constrained")
        axes = fig.subplots(1, len(LAYERS))
        for ax, layer in zip(axes, LAYERS):
            g = d[d["layer"] == layer]
            by = g.groupby("channels")
            n = np.array(sorted(g["channels"].unique()))
            gauss = by[["gauss_mean", "gauss_sd"]].first().reindex(n)
            ax.fill_between(n, gauss["gauss_mean"] - gauss["gauss_sd"], gauss["gauss_mean"] + gauss["gauss_sd"],
                            color="0.8", alpha=0.6, lw=0)
            ax.plot(n, gauss["gauss_mean"], ls=":", color="0.35", label="Gaussian kernels (± sd)")
            ax.plot(n, by["init"].mean().reindex(n), ls="--", marker="s", ms=3, color="C0", label="initial kernels")
            for _, gs in g.dropna(subset=["trained"]).groupby("seed"):
                gs = gs.sort_values("channels")
                ax.plot(gs["channels"], gs["trained"], color="C3", alpha=0.3, lw=0.8)
            t = by["trained"].agg(["mean", "std"]).reindex(n)
            if t["mean"].notna().any():
                ax.errorbar(n, t["mean"], yerr=t["std"].fillna(0), color="C3", marker="o", ms=4, capsize=3,
                            label="trained (mean ± sd over seeds)")
            ax.set_title(layer)
            ax.set_xlabel("kernels in the layer")
        axes[0].set_ylabel(f"minimum cosine distance ({'raw' if measure == 'raw' else 'BN folded'})")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
        if title:
            fig.suptitle(wrap_title(title, PAGE_WIDTH_IN))
    return fig
