"""The CHIP chapter (paper §3.4, eq. 8): the §3.5 pipeline at the chapter's scale
(:func:`chip_pipeline`, :func:`stage_model`, :func:`stage_table`), channel independence scores
(:func:`chip_scores`, :func:`ci_frame`), the agreement of the per-image and batch-mean estimators
(:func:`rank_agreement`: Spearman / Kendall), where the paper's rounding rule leaves too few channels
(:func:`plannability`), and the CI figures (:func:`ci_bars`, :func:`ci_panel`, :func:`ci_grid`).
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...engine.config import ModelConfig, RunConfig
from .. import plots as pl
from ..build import REPO_ROOT
from ..runner import layer_order, load_data, quiet_threads
from ..tables import _config_label, point_models, sweep_points


# ======================================================================================
# CHIP (paper §3.4, eq. 8)
# ======================================================================================
def chip_pipeline(cfg: RunConfig, pr: float, **kwargs: Any):
    """:func:`capslib.experiments.pipeline.prune_pipeline` for a chapter: stage checkpoints under ``runs/book/``.

    Finished stages are reused (the checkpoint folder is keyed by the config), the
    stage rows go to ``results/book/<profile>.csv``, and training uses the book's
    CPU threads. Returns the :class:`capslib.experiments.pipeline.PipelineResult`.
    """
    from ...experiments.pipeline import prune_pipeline

    ckpt = REPO_ROOT / "runs" / "book" / f"pipeline-{cfg.config_hash()}"
    with quiet_threads():
        return prune_pipeline(cfg, pr, checkpoint_dir=ckpt, experiment="book", data=load_data(cfg),
                              progress=False, **kwargs)


def stage_model(result, stage: str):
    """The model of one stage (``"base"``, ``"ccm"``, ``"pruned"``, ``"retrain"``) of a pipeline result."""
    from ...engine.train import load_model

    rec = result.stages[stage]
    if rec.path is None:
        raise ValueError("the pipeline ran without a checkpoint_dir: no stage models on disk")
    return load_model(rec.config, rec.path / "best.pt").eval()


def stage_table(result) -> pd.DataFrame:
    """One column per pipeline stage (base, ccm, pruned, retrain), one row per quantity: model, backbone
    widths, parameters, MACs per image, CCM α, epochs, accuracies (whole %) and dead types per layer (%).

    Stages are columns so that the table stays narrow on a page; every cell is text, formatted once.
    """

    cols = {}
    for name, rec in result.stages.items():
        m = rec.config.model
        dead = rec.dead
        col = {
            "model": f"[C={m.C}, D={m.D}, I={m.I}]", "backbone widths": "/".join(map(str, m.widths)),
            "params": f"{rec.params:,}", "MACs / image": f"{rec.macs:,}", "α (CCM)": f"{rec.config.train.alpha:g}",
            "epochs": str(len(rec.result.history)), "val acc (%)": str(int(round(100 * rec.val_acc))),
            "test acc (%)": str(int(round(100 * rec.test_acc))),
        }
        for k in sorted(dead, key=layer_order):
            col[f"dead {k} (%)"] = f"{100 * dead[k]:.0f}"
        cols[name] = col
    table = pd.DataFrame(cols).fillna("–")
    table.columns.name = "stage"
    return table


def chip_scores(model, cfg: RunConfig, estimators: Sequence[str] = ("per_image", "batch_mean"),
                num_batches: int = 5, batch_size: int = 128) -> dict[str, dict[str, np.ndarray]]:
    """CI of every channel of the four pruned conv layers, per estimator: ``{estimator: {layer: (n,)}}``.

    The same training images as the pipeline's (:func:`capslib.pruning.prune.chip_batches`,
    5 batches of 128 shuffled with the run's seed).
    """
    from ...pruning.prune import chip_batches, ci_layer_scores

    data = load_data(cfg)
    out = {}
    with quiet_threads():
        for est in estimators:
            batches = chip_batches(data, num_batches, batch_size, seed=cfg.train.seed)
            out[est] = {k: v.numpy() for k, v in ci_layer_scores(model, batches, estimator=est).items()}
    return out


def plans_for(model_cfg: ModelConfig, scores: Mapping[str, np.ndarray], prs: Iterable[float],
              estimator: str = "") -> dict[float, Any]:
    """``{pr: PrunePlan or the ValueError message}``: the plan of each ratio, or why there is none."""
    from ...pruning.prune import make_plan

    out: dict[float, Any] = {}
    for pr in prs:
        try:
            out[pr] = make_plan(model_cfg, scores, pr, estimator=estimator)
        except ValueError as err:
            out[pr] = str(err)
    return out


def ci_frame(scores: Mapping[str, np.ndarray], plan=None) -> pd.DataFrame:
    """Long table of one model's CI scores: layer, channel, CI, relative CI (÷ layer max), rank, removed."""
    rows = []
    for layer, s in scores.items():
        s = np.asarray(s, dtype=float)
        gone = set(plan.layer(layer).removed) if plan is not None and not isinstance(plan, str) else set()
        top = s.max() if s.size and s.max() > 0 else 1.0
        ranks = np.argsort(np.argsort(s, kind="stable"), kind="stable")
        for c, v in enumerate(s):
            rows.append({"layer": layer, "channel": c, "CI": v, "relative CI": v / top, "rank": int(ranks[c]),
                         "removed": c in gone})
    return pd.DataFrame(rows)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 0-based."""
    return pd.Series(np.asarray(x, dtype=float)).rank(method="average").to_numpy() - 1.0


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the average ranks (NaN if either is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b (ties in either ranking corrected); NaN when one ranking is all ties."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(a)
    if n < 2:
        return math.nan
    i, j = np.triu_indices(n, k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    s = float((da * db).sum())
    n0 = len(i)
    ta, tb = float((da == 0).sum()), float((db == 0).sum())
    denom = math.sqrt((n0 - ta) * (n0 - tb))
    return s / denom if denom > 0 else math.nan


def rank_agreement(scores: Mapping[str, Mapping[str, np.ndarray]], plans: Mapping[str, Any],
                   a: str = "per_image", b: str = "batch_mean", decimals: int = 2) -> pd.DataFrame:
    """How far two CHIP estimators agree, per layer: Spearman ρ, Kendall τ, and the channels both would prune.

    ``scores``: :func:`chip_scores`; ``plans``: ``{estimator: PrunePlan}`` at one PR.
    "same removed": how many of the channels the plan of ``a`` removes the plan of
    ``b`` removes too.
    """
    rows = []
    for layer in scores[a]:
        x, y = scores[a][layer], scores[b][layer]
        ra, rb = set(plans[a].layer(layer).removed), set(plans[b].layer(layer).removed)
        rows.append({"layer": layer, "channels": len(x), "Spearman ρ": round(spearman(x, y), decimals),
                     "Kendall τ": round(kendall_tau(x, y), decimals), "removed": len(ra),
                     "same removed": f"{len(ra & rb)}/{len(ra)}" if ra else "-"})
    return pd.DataFrame(rows).set_index("layer")


def plannability(configs: Iterable[tuple[int, int]], prs: Iterable[float], I: int = 0) -> pd.DataFrame:
    """Where the paper's rounding rule (§3.4) can plan a prune with the default widths (C·D/4, C·D/2, C·D).

    One row per (config, PR): the channels each layer keeps, and whether
    :func:`capslib.pruning.prune.make_plan` accepts the plan (a layer left with fewer
    than D channels is refused). Pure arithmetic: no model, no data.
    """
    from ...pruning.prune import LAYERS, make_plan, prune_count

    rows = []
    for C, D in configs:
        cfg = ModelConfig(C=C, D=D, I=I)
        widths = list(cfg.widths) + [C * D]
        for pr in prs:
            rec: dict[str, Any] = {"model": _config_label(C, D), "PR": pr}
            for name, n in zip(LAYERS, widths):
                rec[name] = f"{n}→{n - prune_count(n, pr, D)}"
            try:
                make_plan(cfg, {name: np.arange(n, dtype=float) for name, n in zip(LAYERS, widths)}, pr)
                rec["plannable"] = "yes"
            except ValueError as err:
                m = re.search(r"'(\w+)' would keep (\d+) of (\d+)", str(err))
                rec["plannable"] = f"no: {m[1]} keeps {m[2]} < D={D}" if m else f"no: {err}"
            rows.append(rec)
    return pd.DataFrame(rows).set_index(["model", "PR"])


# ======================================================================================
# CHIP figures
# ======================================================================================
_KEPT, _REMOVED = "#4c72b0", "#dd5143"


def ci_bars(scores: Mapping[str, Mapping[str, np.ndarray]], plans: Mapping[str, Any],
            title: Optional[str] = None) -> Figure:
    """CI of every channel, one row per estimator and one panel per layer; sorted, pruned channels red.

    ``scores``: :func:`chip_scores`; ``plans``: ``{estimator: PrunePlan}``.
    """
    sns = pl._sns()
    ests = list(scores)
    layers = list(next(iter(scores.values())))
    fig = Figure(figsize=(pl.PAGE_WIDTH_IN, 2.4 * len(ests) + 1.0), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(ests), len(layers), squeeze=False))
    for i, est in enumerate(ests):
        df = ci_frame(scores[est], plans.get(est))
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            d = df[df["layer"] == layer].sort_values("CI", kind="stable").reset_index(drop=True)
            d["order"] = np.arange(len(d))
            d["channel"] = np.where(d["removed"], "pruned", "kept")
            sns.barplot(data=d, x="order", y="CI", hue="channel", palette={"kept": _KEPT, "pruned": _REMOVED},
                        hue_order=["kept", "pruned"], dodge=False, ax=ax, width=0.9, legend=(i, j) == (0, 0))
            ax.set_xticks([])
            ax.set_xlabel(f"{len(d)} channels, by CI" if i == len(ests) - 1 else "")
            ax.set_ylabel(f"CI ({est})" if j == 0 else "")
            ax.set_title(f"{layer}: {int(d['removed'].sum())} pruned", fontsize=pl.FONT["base"])
    legend_ax = axes[0, 0]
    if legend_ax.get_legend() is not None:
        handles, labels = legend_ax.get_legend_handles_labels()
        legend_ax.get_legend().remove()
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    if title:
        fig.suptitle(pl.wrap_title(title, pl.PAGE_WIDTH_IN, pl.FONT["suptitle"]))
    return fig


def _ci_strip(ax, scores: Mapping[str, np.ndarray], plan, title: str, legend: bool = False) -> None:
    sns = pl._sns()
    width = ax.get_position().width * ax.figure.get_figwidth()
    if isinstance(plan, str):
        ax.text(0.5, 0.5, "no plan:\n" + pl.wrap_title(plan, width, pl.FONT["small"]), ha="center", va="center",
                fontsize=pl.FONT["small"], transform=ax.transAxes)
        # hide this panel's ticks only: set_yticks([]) would clear every panel that shares its y axis
        ax.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)
        ax.grid(False)
        ax.set_title(pl.wrap_title(title, width), fontsize=pl.FONT["base"])
        return
    df = ci_frame(scores, plan)
    df["channel"] = np.where(df["removed"], "pruned", "kept")
    sns.stripplot(data=df, x="layer", y="relative CI", hue="channel", hue_order=["kept", "pruned"],
                  palette={"kept": _KEPT, "pruned": _REMOVED}, jitter=0.25, size=4, ax=ax, legend=legend)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("")
    ax.set_title(pl.wrap_title(title, width), fontsize=pl.FONT["base"])
    if legend:
        pl.legend_outside(ax)


def ci_panel(scores: Mapping[str, np.ndarray], plan, title: str = "") -> Figure:
    """One model's CI per layer (÷ the layer's largest), the channels a plan prunes in red; one slider panel."""
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    _ci_strip(fig.add_subplot(), scores, plan, title, legend=True)
    return fig


def ci_grid(cells: Mapping[tuple[Any, Any], tuple[Mapping[str, np.ndarray], Any, str]],
            names: tuple[str, str] = ("C/D", "PR"), title: Optional[str] = None) -> Figure:
    """Static grid of :func:`ci_panel`: rows = first key, columns = second key.

    ``cells``: ``{(a, b): (scores, plan or message, panel title)}``.
    """
    rows = list(dict.fromkeys(a for a, _ in cells))
    cols = list(dict.fromkeys(b for _, b in cells))
    fig = Figure(figsize=pl.book_figsize(2.6 * len(cols) + 1.2, 2.8 * len(rows) + (0.6 if title else 0)),
                 layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), len(cols), squeeze=False, sharey=True))
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            scores, plan, t = cells[(a, b)]
            _ci_strip(axes[i, j], scores, plan, t, legend=(i, j) == (0, len(cols) - 1))
            if j:
                axes[i, j].set_ylabel("")
    if title:
        fig.suptitle(pl.wrap_title(title, pl.PAGE_WIDTH_IN, pl.FONT["suptitle"]))
    return fig


def ci_grid_cells(experiment: str, profile: str, dataset: Optional[str] = None,
                  report_table: Optional[pd.DataFrame] = None) -> dict[tuple[str, float], tuple]:
    """Cells of :func:`ci_grid` / panels of the slider grid for a pruning sweep (Table 1).

    For each configuration of the grid: the CHIP scores (per-image) of the CCM
    model its "prune" points scored, and for each PR of the grid the plan they
    give (or why there is none). ``report_table`` (:func:`sweep_report`) adds
    each cell's retrained test accuracy to its title. Keys are ``("C/D", PR)``.
    """
    points = sweep_points(experiment, profile, dataset)
    prs = sorted({float(p.pr) for p, _, _ in points})
    first: dict[tuple[int, int], str] = {}  # every prune point of a configuration scores the same CCM model
    for point, cfg, key in points:
        if point.kind == "prune":
            first.setdefault((cfg.model.C, cfg.model.D), key)
    models = {}
    for point, cfg, model in point_models(experiment, profile, dataset, stage="ccm", kinds=("prune",),
                                          keys=first.values()):
        models.setdefault((cfg.model.C, cfg.model.D), (model, cfg))
    acc = {}
    if report_table is not None:
        for _, r in report_table.dropna(subset=["ours"]).iterrows():
            acc[(int(r["C"]), int(r["D"]), float(r["PR"]))] = float(r["ours"])
    cells = {}
    for (C, D), (model, cfg) in models.items():
        scores = chip_scores(model, cfg, estimators=("per_image",))["per_image"]
        for pr, plan in plans_for(model.config, scores, prs, "per_image").items():
            a = acc.get((C, D, pr))
            title = f"[C={C}, D={D}] · PR {pr:g}" + (f" · test acc {a:.0f}%" if a is not None else "")
            cells[(f"{C}/{D}", pr)] = (scores, plan, title)
    return cells
