"""The paper-table sweeps the chapters run, and the paper's tables beside ours.

* **Sweeps.** :func:`run_sweep` runs a paper table's grid (:func:`capslib.experiments.sweeps.sweep`,
  resumable, rows in ``results/<table>/<profile>.csv``) at the sizes of
  :data:`capslib.book.runner.SWEEP_OVERRIDES`; :func:`sweep_rows` and :func:`sweep_report` read back
  exactly the rows of that grid; :func:`point_models` loads (or re-creates) the trained models of its points.
* **Paper beside ours.** :func:`paper_pivot`, :func:`paper_table`, :func:`ours_pivot`, :func:`paper_note`
  and the line plot :func:`table_lines`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd
import torch
from matplotlib.figure import Figure

from ..engine.config import RunConfig
from . import plots as pl
from .build import REPO_ROOT
from .runner import SWEEP_OVERRIDES, quiet_threads


# ======================================================================================
# Sweeps of the paper's tables
# ======================================================================================
def sweep_overrides(experiment: str, profile: str, dataset: Optional[str] = None) -> dict[str, Any]:
    """Config overrides of ``experiment``'s grid under ``profile`` (:data:`SWEEP_OVERRIDES`)."""
    table = SWEEP_OVERRIDES.get(profile, {})
    out = {**table.get("*", {}), **table.get(experiment, {})}
    if dataset is not None:
        out["dataset"] = dataset
    return out


def _checkpoints(experiment: str) -> Path:
    return REPO_ROOT / "runs" / "sweeps" / experiment


def sweep_points(experiment: str, profile: str, dataset: Optional[str] = None) -> list[tuple[Any, RunConfig, str]]:
    """``(Point, RunConfig, point_key)`` of every point of the grid (seed 0), in grid order."""
    from ..experiments.sweeps import plan, point_key

    return [(p, c, point_key(experiment, c, p))
            for p, c in plan(experiment, profile, 1, sweep_overrides(experiment, profile, dataset))]


def run_sweep(experiment: str, profile: str, dataset: Optional[str] = None):
    """Run the grid of ``experiment`` (points already in ``results/<experiment>/<profile>.csv`` are skipped).

    Checkpoints go to ``runs/sweeps/<experiment>/<point_key>/`` (see
    :func:`point_models`). Runs with the book's CPU threads. Returns the
    :class:`capslib.experiments.sweeps.SweepSummary`; a failed point raises.
    """
    from ..experiments.sweeps import sweep

    with quiet_threads():
        summary = sweep(experiment, profile=profile, overrides=sweep_overrides(experiment, profile, dataset),
                        progress=False, checkpoint_root=str(_checkpoints(experiment)), retries=0)
    if summary.failed:
        raise RuntimeError(f"sweep {experiment} [{profile}]: {summary.failed} point(s) failed: {summary.errors}")
    return summary


def sweep_rows(experiment: str, profile: str, dataset: Optional[str] = None,
               results_root: Optional[str] = None) -> pd.DataFrame:
    """The successful store rows of exactly this grid's points (other runs in the same store are left out)."""
    from ..experiments.results import ResultsStore

    keys = {k for _, _, k in sweep_points(experiment, profile, dataset)}
    df = ResultsStore.for_experiment(experiment, profile, results_root).read()
    if df.empty or "point_key" not in df:
        return df.iloc[0:0]
    return df[(df["status"] == "ok") & df["point_key"].isin(keys)].reset_index(drop=True)


def sweep_report(experiment: str, profile: str, dataset: Optional[str] = None,
                 results_root: Optional[str] = None):
    """:func:`capslib.experiments.report.report` on exactly this grid's rows (paper beside ours, deltas)."""
    from ..experiments.report import report

    rows = sweep_rows(experiment, profile, dataset, results_root)
    return report(experiment, profile=profile, store_df=rows, figure=False, results_root=results_root)


def footer_rows(rows: pd.DataFrame | Sequence[Mapping]) -> list[dict[str, Any]]:
    """Store rows as plain dicts for :func:`capslib.book.plots.provenance_footer` (NaN -> empty)."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.astype(object).where(rows.notna(), "").to_dict(orient="records")
    out = []
    for r in rows:
        r = dict(r)
        if isinstance(r.get("seed"), float) and float(r["seed"]).is_integer():
            r["seed"] = int(r["seed"])
        out.append(r)
    return out


def point_models(experiment: str, profile: str, dataset: Optional[str] = None, stage: str = "final",
                 kinds: Iterable[str] = ("train", "prune"),
                 keys: Optional[Iterable[str]] = None) -> list[tuple[Any, RunConfig, Any]]:
    """``(Point, RunConfig, CapsNet)`` of the trained model of every grid point of the given kinds.

    ``stage="final"``: for a "train" point its selected model, for a "prune" point
    the retrained pruned model; ``stage="ccm"`` / ``"base"`` / ``"pruned"``: that
    stage's model of a "prune" point (``"ccm"`` is the model CHIP scores). Models
    are read from the sweep's checkpoints (``runs/sweeps/<experiment>/<point_key>/``);
    when those are gone (a fresh clone with the results store committed) the point
    is re-run into them - deterministic on the CPU, so it is the same model.
    ``keys``: only these point keys (of :func:`sweep_points`).
    """
    from ..engine.train import load_model
    from ..experiments.sweeps import run_point

    keys = None if keys is None else set(keys)
    out = []
    for point, cfg, key in sweep_points(experiment, profile, dataset):
        if point.kind not in kinds or (keys is not None and key not in keys):
            continue
        root = _checkpoints(experiment) / key
        found = _model_path(root, point.kind, stage, cfg)
        if found is None:
            with quiet_threads():
                run_point(experiment, point, cfg, checkpoint_root=str(_checkpoints(experiment)))
            found = _model_path(root, point.kind, stage, cfg)
        if found is None:
            raise FileNotFoundError(f"no {stage} model of {experiment} point {point.describe()} under {root}")
        weights, config = found
        out.append((point, config, load_model(config, weights).eval()))
    return out


def _model_path(root: Path, kind: str, stage: str, cfg: RunConfig) -> Optional[tuple[Path, RunConfig]]:
    """(weights, config) of a finished point's model, or None."""
    if kind == "train":
        # fit() writes best.pt each time the selection improves and last.pt at every epoch's end
        done = (root / "best.pt").exists() and (root / "last.pt").exists()
        if done:
            last = torch.load(root / "last.pt", map_location="cpu", weights_only=True)
            done = int(last["epoch"]) >= cfg.train.epochs and last["config_hash"] == cfg.config_hash()
        return (root / "best.pt", cfg) if done else None
    name = {"final": "retrain", "ccm": "ccm", "base": "base", "pruned": "pruned"}[stage]
    found = sorted(root.glob(f"{name}-*/result.json"))
    if not found:
        return None
    folder = found[0].parent
    return folder / "best.pt", RunConfig.from_json((folder / "config.json").read_text())


# ======================================================================================
# Paper tables beside ours
# ======================================================================================
def _config_label(C: Any, D: Any) -> str:
    return f"[C={int(C)}, D={int(D)}]"


def paper_pivot(experiment: str, columns: str, index: str = "model") -> pd.DataFrame:
    """The paper's table as printed (CIFAR-10): rows ``[C=.., D=..]`` (or ``index``), one column per ``columns``."""
    from ..experiments.grids import PAPER_TABLES

    df = pd.DataFrame(PAPER_TABLES[experiment])
    df["model"] = [_config_label(c, d) for c, d in zip(df["C"], df["D"])]
    if experiment == "table1":  # one column for PR 0.6 (D = 8) and 0.625 (D = 6, 12), as the paper prints it
        df["PR"] = [("0.6 / 0.625*" if p in (0.6, 0.625) else f"{p:g}") for p in df["PR"]]
    order = list(dict.fromkeys(df[index]))
    out = df.pivot_table(index=index, columns=columns, values="paper", aggfunc="first", sort=False)
    out = out.reindex(order)
    out.columns.name = columns
    return out


def paper_table(experiment: str) -> pd.DataFrame:
    """A paper table in long form, indexed by model (Tables 4 and 5)."""
    from ..experiments.grids import PAPER_TABLES

    df = pd.DataFrame(PAPER_TABLES[experiment])
    df.insert(0, "model", [_config_label(c, d) for c, d in zip(df["C"], df["D"])])
    return df.drop(columns=["C", "D"]).set_index("model")


def ours_pivot(rep_table: pd.DataFrame, columns: str, decimals: int = 0, index: str = "model") -> pd.DataFrame:
    """Our numbers of a :func:`sweep_report` table, laid out like :func:`paper_pivot`.

    Accuracies are rounded to ``decimals`` (whole percent by default, so that the
    table is stable across CPUs; the exact values stay in the store).
    """
    t = rep_table.dropna(subset=["ours"]).copy()
    if t.empty:
        return pd.DataFrame()
    t["model"] = [_config_label(c, d) for c, d in zip(t["C"], t["D"])]
    vals = pd.to_numeric(t["ours"], errors="coerce")
    t["ours"] = vals.round(decimals) if decimals else vals.round(0).astype("Int64")
    out = t.pivot_table(index=index, columns=columns, values="ours", aggfunc="first", sort=False)
    out.columns.name = columns
    return out


#: What the numbers of each paper table are, for captions (``paper_note``) and the reproduction page.
PAPER_UNITS = {
    "table1": "test accuracy in %", "table2": "test accuracy in %", "table3": "test accuracy in %",
    "table4": "test accuracy in %", "table5": "maximum depth I (IntermediateCaps layers that still train)",
    "fig3": "validation accuracy in %",
}


def _table_key(table: str) -> Optional[str]:
    """``"Table 5 (maximum depth ...)"`` -> ``"table5"``, ``"Fig. 3"`` -> ``"fig3"``, else None."""
    m = re.match(r"\s*(table|fig\.?)\s*(\d+)", table, re.I)
    if not m:
        return None
    return ("table" if m[1].lower() == "table" else "fig") + m[2]


def paper_note(table: str, unit: Optional[str] = None):
    """Markdown footer of a paper table: where its numbers come from and what they are.

    ``unit`` defaults to the table's own (:data:`PAPER_UNITS`: accuracy in %, or Table 5's maximum
    depth), looked up from the table's name (``"Table 5 (...)"``).
    """
    from IPython.display import Markdown

    unit = unit or PAPER_UNITS.get(_table_key(table) or "", "test accuracy in %")
    return Markdown(f"*Source:* Sahu & Altahhan (2024), {table}, as printed: CIFAR-10, {unit}. "
                    "The paper's numbers, not computed here.")


def table_lines(paper: pd.DataFrame, ours: pd.DataFrame, x: str, ours_label: str,
                ylabel: str = "test accuracy (%)", title: Optional[str] = None) -> Figure:
    """Paper's table and ours as lines against ``x`` (one line per model), side by side.

    ``paper`` / ``ours``: pivots (rows: model, columns: x), e.g. from :func:`paper_pivot`.
    The two panels have their own y axes: they are different datasets.
    """
    sns = pl._sns()
    # one panel above the other, each with its legend to its right: a legend never covers a line
    fig = Figure(figsize=(pl.PAGE_WIDTH_IN, 6.6), layout="constrained")
    axes = fig.subplots(2, 1)
    for ax, tab, label in ((axes[0], paper, "paper (CIFAR-10)"), (axes[1], ours, ours_label)):
        ax.set_title(pl.wrap_title(label, pl.PAGE_WIDTH_IN - 1.8), loc="left")
        if tab is None or tab.empty:
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
            continue
        long = tab.reset_index().melt(id_vars="model", var_name=x, value_name=ylabel)
        long[ylabel] = pd.to_numeric(long[ylabel], errors="coerce")
        long[x] = [_num_label(v) for v in long[x]]
        long = long.dropna()
        sns.lineplot(data=long, x=x, y=ylabel, hue="model", marker="o", ax=ax)
        pl.integer_ticks(ax, long[x])
        pl.legend_outside(ax)
    if title:
        fig.suptitle(pl.wrap_title(title, pl.PAGE_WIDTH_IN, pl.FONT["suptitle"]))
    return fig


def _num_label(v: Any) -> float:
    """A number from a column label: 0.25 -> 0.25, "0.6 / 0.625*" -> 0.6."""
    try:
        return float(v)
    except (TypeError, ValueError):
        m = re.match(r"\s*([0-9.]+)", str(v))
        return float(m[1]) if m else math.nan
