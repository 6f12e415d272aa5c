"""The kernels chapter (Table 4 and seed 004 §2.1): kernel weight similarity against CHIP
(:func:`similarity_vs_chip`, :func:`overlap_table`, :func:`min_distance_table`,
:func:`similarity_heatmaps`) and Table 4's kernel configurations (:func:`kernel_configs`, :func:`kernel_bars`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import pandas as pd
from matplotlib.figure import Figure

from ...engine.config import RunConfig
from .. import plots as pl
from ..build import REPO_ROOT
from ..runner import _pct, load_data, quiet_threads
from ..tables import _config_label
from .chip import stage_model


# ======================================================================================
# Kernels: Table 4 and seed 004's kernel weight similarity
# ======================================================================================
def kernel_configs(points: Sequence[tuple[Any, RunConfig, str]]) -> pd.DataFrame:
    """The backbone / PrimaryCaps convolutions of each Table 4 configuration, the capsule grid, params, MACs."""
    from ...pruning.prune import count_macs, params_of

    rows = []
    for point, cfg, _ in points:
        m = cfg.model
        rows.append({"model": _config_label(m.C, m.D), "kernels": point.label,
                     "backbone k / s / p": f"{m.backbone_kernels} / {m.backbone_strides} / {m.backbone_padding}",
                     "PrimaryCaps k / s / p": f"{m.primary_kernel} / {m.primary_stride} / {m.primary_padding}",
                     "capsule grid": f"{m.grid}×{m.grid}", "params": params_of(m), "MACs/image": count_macs(m)})
    return pd.DataFrame(rows).set_index(["model", "kernels"])


def kernel_bars(paper: pd.DataFrame, ours: pd.DataFrame, ours_label: str, title: Optional[str] = None) -> Figure:
    """Table 4 as bars: accuracy per model and convolution setting, the paper's (left) and ours (right)."""
    sns = pl._sns()
    # one order and one colour per setting for both panels (the paper's table lists k5 first, ours k3)
    levels = sorted({str(c) for tab in (paper, ours) for c in tab.columns})
    palette = pl.level_palette(levels)
    fig = Figure(figsize=(pl.PAGE_WIDTH_IN, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, tab, label in ((axes[0], paper, "paper (CIFAR-10)"), (axes[1], ours, ours_label)):
        long = tab.reset_index().melt(id_vars="model", var_name="kernels", value_name="test accuracy (%)")
        long["kernels"] = long["kernels"].astype(str)
        long["test accuracy (%)"] = pd.to_numeric(long["test accuracy (%)"], errors="coerce")
        sns.barplot(data=long.dropna(), x="model", y="test accuracy (%)", hue="kernels", hue_order=levels,
                    palette=palette, ax=ax, legend=ax is axes[0])
        for bars in ax.containers:
            ax.bar_label(bars, fmt="%.0f", fontsize=pl.FONT["small"], padding=2)
        ax.set_title(pl.wrap_title(label, pl.PAGE_WIDTH_IN / 2 - 0.3))
        ax.set_xlabel("")
    handles, labels = axes[0].get_legend_handles_labels()
    if axes[0].get_legend() is not None:
        axes[0].get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False, title="kernels")
    if title:
        fig.suptitle(pl.wrap_title(title, pl.PAGE_WIDTH_IN, pl.FONT["suptitle"]))
    return fig


def similarity_vs_chip(result, cfg: RunConfig, fold_bn: bool = True) -> dict[str, Any]:
    """Prune the model CHIP pruned (the CCM model of ``result``) by kernel similarity instead, and retrain it.

    Same model, same number of channels removed per layer as the CHIP plan,
    same retraining. Seed 004's greedy criterion (:func:`capslib.pruning.similarity.similarity_plan`)
    folds each removed backbone channel into its most similar twin and removes
    whole PrimaryCaps types. Returns ``{"chip": PrunePlan, "similarity": PrunePlan,
    "removals": SimilarityPlan, "models": {...}, "rows": {...}, "table": DataFrame}``;
    the retrained model's row is stored in ``results/book/<profile>.csv``
    (stage ``similarity-retrain``).
    """
    from ...engine.train import evaluate, fit
    from ...experiments.results import ResultsStore, run_row
    from ...pruning.prune import LAYERS, plan_from_removed, rebuild
    from ...pruning.similarity import similarity_plan

    chip_plan = result.plan
    ccm = stage_model(result, "ccm")
    data = load_data(cfg)
    counts = {lp.name: lp.n_removed for lp in chip_plan.layers}
    sim = similarity_plan(ccm, counts, fold_bn=fold_bn)
    folded = sim.folded_model(ccm)
    removed = {name: sorted(set(range(lp.channels_before)) - set(sim.kept[name]))
               for name, lp in zip(LAYERS, chip_plan.layers)}
    sim_plan = plan_from_removed(folded, removed, pr=chip_plan.pr, mode="capsule", estimator="kernel similarity")
    retrain_rec = result.stages["retrain"]
    with quiet_threads():
        pruned = rebuild(folded, sim_plan, seed=cfg.train.seed)
        val0, _ = evaluate(pruned, data, "val", probe=False)
        test0, _ = evaluate(pruned, data, "test", probe=False)
        rcfg = RunConfig(model=pruned.config, data=cfg.data, train=retrain_rec.config.train, profile=cfg.profile)
        key = f"similarity-{rcfg.config_hash()}-{result.stages['ccm'].row['stage_key']}-fold{int(fold_bn)}"
        res, retrained = fit(rcfg, data=data, model=pruned, checkpoint_dir=REPO_ROOT / "runs" / "book" / key,
                             progress=False)
    row = run_row(rcfg, res, experiment="book", stage="similarity-retrain", key_extra=key,
                  extra={"pr": chip_plan.pr, "prune_mode": "kernel similarity", "fold_bn": fold_bn,
                         "parent_stage_key": result.stages["ccm"].row["stage_key"]})
    ResultsStore.for_experiment("book", cfg.profile).append(row)
    table = pd.DataFrame([
        {"criterion": "CHIP (per-image CI)", "model after": f"CapsNet[C={chip_plan.C_after}]",
         "params": chip_plan.params_after,
         "right after pruning: val acc (%)": _pct(result.stages["pruned"].val_acc),
         "right after pruning: test acc (%)": _pct(result.stages["pruned"].test_acc),
         "retrained: test acc (%)": _pct(retrain_rec.test_acc)},
        {"criterion": "kernel similarity (seed 004)", "model after": f"CapsNet[C={sim_plan.C_after}]",
         "params": sim_plan.params_after,
         "right after pruning: val acc (%)": _pct(val0), "right after pruning: test acc (%)": _pct(test0),
         "retrained: test acc (%)": _pct(res.test_acc)},
    ]).set_index("criterion")
    return {"chip": chip_plan, "similarity": sim_plan, "removals": sim,
            "models": {"base": stage_model(result, "base"), "CCM (pruned from)": ccm,
                       "CHIP, retrained": stage_model(result, "retrain"), "similarity, retrained": retrained},
            "rows": {"chip": retrain_rec.row, "similarity": row}, "table": table}


def overlap_table(chip_plan, sim_plan) -> pd.DataFrame:
    """Per layer: how many channels each plan removes and how many of them are the same (Jaccard index)."""
    rows = []
    for a, b in zip(chip_plan.layers, sim_plan.layers):
        ra, rb = set(a.removed), set(b.removed)
        union = ra | rb
        rows.append({"layer": a.name, "channels": a.channels_before, "removed": len(ra),
                     "CHIP removes": _short(a.removed), "similarity removes": _short(b.removed),
                     "both": len(ra & rb), "Jaccard": round(len(ra & rb) / len(union), 2) if union else math.nan})
    return pd.DataFrame(rows).set_index("layer")


def _short(idx: Sequence[int], limit: int = 10) -> str:
    idx = list(idx)
    return ",".join(map(str, idx[:limit])) + (f",… (+{len(idx) - limit})" if len(idx) > limit else "")


def min_distance_table(models: Mapping[str, Any], fold_bn: bool = True, decimals: int = 3) -> pd.DataFrame:
    """Seed 004's redundancy diagnostic per conv layer (rows) and model (columns): minimum cosine distance.

    0 means some two channels of the layer are parallel (one is redundant); see
    :func:`capslib.pruning.similarity.min_cosine_distances`.
    """
    from ...pruning.similarity import min_cosine_distances

    return pd.DataFrame({name: {k: round(v, decimals) for k, v in min_cosine_distances(m, fold_bn).items()}
                         for name, m in models.items()})


def similarity_heatmaps(model, title: Optional[str] = None) -> Figure:
    """Cosine similarity of every pair of channels of each conv layer: BN-folded (top) and raw kernels (bottom)."""
    from ...pruning.similarity import layer_similarities, min_cosine_distance

    sns = pl._sns()
    sims = {True: layer_similarities(model, fold_bn=True), False: layer_similarities(model, fold_bn=False)}
    layers = list(sims[True])
    side = min(2.1, (pl.PAGE_WIDTH_IN - 1.1) / len(layers))
    fig = Figure(figsize=pl.book_figsize(side * len(layers) + 1.1, 2 * (side + 0.5) + (0.6 if title else 0)),
                 layout="constrained")
    gs = fig.add_gridspec(2, len(layers) + 1, width_ratios=[1] * len(layers) + [0.06])
    cax = fig.add_subplot(gs[:, -1])
    for i, fold in enumerate((True, False)):
        for j, layer in enumerate(layers):
            ax = fig.add_subplot(gs[i, j])
            m = sims[fold][layer].numpy()
            sns.heatmap(m, ax=ax, vmin=-1, vmax=1, center=0, cmap="vlag", square=True, xticklabels=False,
                        yticklabels=False, cbar=(i, j) == (0, 0), cbar_ax=cax if (i, j) == (0, 0) else None,
                        cbar_kws={"label": "cosine similarity"} if (i, j) == (0, 0) else None)
            ax.set_title(f"{layer}: {m.shape[0]} ch\nmin dist {min_cosine_distance(sims[fold][layer]):.3f}",
                         fontsize=pl.FONT["small"])
            if j == 0:
                ax.set_ylabel("BN-folded [w·s, b']" if fold else "raw kernel w\n(seed 004)", fontsize=pl.FONT["small"])
    if title:
        fig.suptitle(pl.wrap_title(title, pl.PAGE_WIDTH_IN, pl.FONT["suptitle"]))
    return fig
