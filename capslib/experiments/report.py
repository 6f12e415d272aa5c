"""The paper's tables beside ours: ``capslib report NAME`` and the book's reproduction page.

Our numbers come from the results store (mean ± std over seeds, with the
dataset, profile, device and capslib version they were produced with). The
paper's numbers are CIFAR-10; where our dataset differs, the delta compares
different datasets and the table says so in its ``dataset`` column.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..engine.atomic import check_writable
from .grids import PAPER_TABLES, get_experiment
from .results import ResultsStore

__all__ = ["Report", "ours_table", "report"]

KEYS = {
    "table1": ["C", "D", "PR"],
    "table2": ["C", "D", "I"],
    "table3": ["C", "D", "PR", "I"],
    "table4": ["C", "D", "kernels"],
    "table5": ["C", "D"],
    "fig3": ["C", "D", "I", "epoch"],
    "seed002_depth": ["routing", "C", "D", "I"],
    "collapse": ["label", "C", "D", "I"],
    "collapse_h": ["label", "C", "D", "I"],
    "collapse_plateau": ["label", "C", "D", "I"],
    "remedies": ["label", "C", "D", "I"],
    "remedies_deep": ["label", "C", "D", "I"],
    "kernel_widths": ["label", "C", "D", "I"],
    "table5_limits": ["label", "C", "D", "I"],
    "seed002_dead": ["label", "C", "D", "I"],
    "table1_pr": ["label", "C", "D", "I"],
    "fig6_depth": ["label", "C", "D", "I"],
}
#: The studies whose points are keyed by their label (one record per train row, or per pipeline's retrain row).
LABELLED = tuple(name for name, keys in KEYS.items() if keys[0] == "label")


def _num(v):
    try:
        f = float(v)
        return int(f) if f.is_integer() else f
    except (TypeError, ValueError):
        return v


def _latest_version(ok: pd.DataFrame) -> Optional[str]:
    """The capslib version of the newest row that has both a timestamp and a version (None: no such row)."""
    ts = ok["timestamp"].astype(str).str.strip()
    ver = ok["capslib_version"]
    usable = ok[ok["timestamp"].notna() & (ts != "") & ver.notna() & (ver.astype(str).str.strip() != "")]
    if usable.empty:
        return None
    return usable.sort_values("timestamp", kind="stable")["capslib_version"].iloc[-1]


def _long_rows(name: str, df: pd.DataFrame, source: str = "the rows given") -> pd.DataFrame:
    """Store rows -> one record per (table key, seed) with ``value`` (accuracy in %, or max depth).

    A row whose numbers or JSON cannot be read raises ``ValueError`` naming ``source``, the row
    (its position and run_key) and the column. An unversioned experiment (``Experiment.versioned``
    False, e.g. ``collapse``) keeps the rows of every library version: it spans several sittings."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    if get_experiment(name).versioned and {"capslib_version", "timestamp"} <= set(ok.columns) and not ok.empty:
        # one library version per table: that of the newest row (older versions' rows are stale);
        # rows without a timestamp or version never decide which version that is
        latest = _latest_version(ok)
        if latest is not None:
            ok = ok[ok["capslib_version"] == latest]
    recs: list[dict] = []
    for pos, (_, r) in enumerate(ok.iterrows()):
        try:
            _row_records(name, r, recs)
        except _CellError as err:
            raise ValueError(f"{source}: row {pos + 1} of the ok rows (run_key {r.get('run_key', '?')!s}), "
                             f"column {err.column!r}: {err.reason}") from None
    return pd.DataFrame(recs)


class _CellError(Exception):
    def __init__(self, column: str, reason: str):
        super().__init__(f"{column}: {reason}")
        self.column, self.reason = column, reason


def _json_cell(r: pd.Series, column: str):
    v = r.get(column)
    if not isinstance(v, str):
        raise _CellError(column, f"expected JSON text, found {v!r}")
    try:
        return json.loads(v)
    except ValueError as err:
        raise _CellError(column, f"not valid JSON ({err})") from None


def _acc_cell(r: pd.Series) -> float:
    v = r.get("test_acc")
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return np.nan
    try:
        return 100.0 * float(v)
    except (TypeError, ValueError):
        raise _CellError("test_acc", f"{v!r} is not a number") from None


def _row_records(name: str, r: pd.Series, recs: list[dict]) -> None:
    """Append the report records of one store row to ``recs``."""
    # a grid point's own C, D, I (a pruned stage's model has C' < C)
    C, D, I = (_num(r.get(f"grid.{k}")) if pd.notna(r.get(f"grid.{k}", np.nan)) else _num(r.get(f"model.{k}"))
               for k in "CDI")
    kind, stage = r.get("kind", "train"), r.get("stage", "train")
    pr = _num(r.get("pr", 0.0)) or 0.0
    base = dict(C=C, D=D, seed=_num(r.get("seed")), dataset=r.get("data.dataset"), profile=r.get("profile"),
                device=r.get("device_name") or r.get("device"), capslib_version=r.get("capslib_version"))
    acc = _acc_cell(r)
    if name == "table1" and ((kind == "train" and stage == "train") or (kind == "prune" and stage == "retrain")):
        recs.append(dict(base, PR=pr if kind == "prune" else 0.0, value=acc))
    elif name == "table2" and stage == "train":
        recs.append(dict(base, I=I, value=acc))
    elif name == "table3" and ((kind == "train" and stage == "train") or (kind == "prune" and stage == "retrain")):
        i_after = _num(r.get("I_after"))
        recs.append(dict(base, PR=pr if kind == "prune" else 0.0, I=I if kind == "train" else i_after, value=acc))
    elif name == "table4" and stage == "train":
        recs.append(dict(base, kernels=r.get("label"), value=acc))
    elif name == "table5" and stage == "depth_summary":
        recs.append(dict(base, value=_num(r.get("max_depth"))))
    elif name == "seed002_depth" and stage == "train":  # dead_inter: % of ConvCaps types dead (test split)
        dead = _json_cell(r, "dead_002") if isinstance(r.get("dead_002"), str) else {}
        inter = [v for k, v in dead.items() if k.startswith("inter")]
        recs.append(dict(base, routing=r.get("model.routing"), I=I, value=acc,
                         dead_inter=100.0 * float(np.mean(inter)) if inter else np.nan))
    elif name in LABELLED and ((kind in ("train", "snapshots") and stage == "train")
                               or (kind == "prune" and stage == "retrain")):
        i_after = _num(r.get("I_after"))
        recs.append(dict(base, label=r.get("label"), I=i_after if kind == "prune" else I, value=acc))
    elif name == "fig3" and stage == "train":
        history = _json_cell(r, "history")
        if not isinstance(history, list) or not all(isinstance(h, dict) and {"epoch", "val_acc", "dead"} <= set(h)
                                                    for h in history):
            raise _CellError("history", "not a list of epoch records with epoch, val_acc and dead")
        for h in history:
            inter = [v for k, v in h["dead"].items() if k.startswith("inter")]
            recs.append(dict(base, I=I, epoch=h["epoch"], value=100.0 * h["val_acc"],
                             dead_inter=100.0 * float(np.mean(inter)) if inter else np.nan))


def ours_table(name: str, df: pd.DataFrame, source: str = "the rows given") -> pd.DataFrame:
    """Aggregate store rows over seeds: mean, std and count per table key."""
    keys = KEYS[name]
    long = _long_rows(name, df, source)
    if long.empty:
        return pd.DataFrame(columns=keys + ["ours", "ours_std", "seeds"])
    agg = dict(ours=("value", "mean"), ours_std=("value", "std"), seeds=("seed", "nunique"),
               dataset=("dataset", "first"), profile=("profile", "first"), device=("device", "first"),
               capslib_version=("capslib_version", "first"))
    if "dead_inter" in long:
        agg["dead_inter"] = ("dead_inter", "mean")
    numeric = pd.to_numeric(long["value"], errors="coerce")
    if numeric.isna().any():  # e.g. a depth ">30": keep as text, no mean
        long["value"] = long["value"].astype(str)
        agg["ours"] = ("value", "first")
        agg["ours_std"] = ("value", lambda s: np.nan)
    return long.groupby(keys, dropna=False).agg(**agg).reset_index()


@dataclass
class Report:
    name: str
    title: str
    table: pd.DataFrame
    csv_path: Optional[Path] = None
    png_path: Optional[Path] = None
    notice: str = ""  # why there are no "ours" values, when there are none

    @property
    def has_ours(self) -> bool:
        return "ours" in self.table and bool(self.table["ours"].notna().any())

    def text(self) -> str:
        if self.table.empty:
            return f"{self.title}\n(no rows)" + (f"\n{self.notice}" if self.notice else "")
        keys = [k for k in KEYS[self.name] if k in self.table]
        shown = keys + [c for c in ("paper", "ours", "ours_std", "seeds", "delta", "dead_inter", "dataset", "profile",
                                    "device", "capslib_version") if c in self.table]
        t = self.table[shown].copy()
        for col in ("paper", "ours", "ours_std", "delta"):
            if col in t:
                t[col] = t[col].map(lambda v: "" if pd.isna(v) else (f"{v:.2f}" if isinstance(v, float) else str(v)))
        lines = [self.title, t.to_string(index=False)]
        if self.csv_path:
            lines.append(f"csv: {self.csv_path}")
        if self.png_path:
            lines.append(f"figure: {self.png_path}")
        if self.notice:
            lines.append(self.notice)
        return "\n".join(lines)


def report(name: str, profile: Optional[str] = None, results_root: Optional[str] = None,
           out_dir: Optional[str] = None, store_df: Optional[pd.DataFrame] = None, figure: bool = True) -> Report:
    """Join the paper's table with ours (mean ± std over seeds); write CSV (+ PNG) next to the store."""
    exp = get_experiment(name)
    profile = profile or exp.default_profile
    store = ResultsStore.for_experiment(name, profile, results_root)
    notice = ""
    if store_df is not None:
        df, source = store_df, f"the rows given for {name} [{profile}]"
    else:
        df, source = store.read(), str(store.path)
        if not store.path.exists():
            notice = (f"note: no results store at {store.path}, so the 'ours' column is empty; run "
                      f"'capslib sweep {name} --profile {profile}' first (or pass --results / --profile)")
    ours = ours_table(name, df, source)
    if not notice and ours.empty:
        n_ok = int((df["status"] == "ok").sum()) if "status" in df and not df.empty else 0
        notice = (f"note: {source} has {len(df)} row(s), {n_ok} ok, but none that this table reads, so the "
                  f"'ours' column is empty")
    keys = KEYS[name]
    paper = pd.DataFrame(PAPER_TABLES[name])
    if paper.empty:
        table = ours
    else:
        paper["paper_dataset"] = "cifar10"
        table = paper.merge(ours, on=[k for k in keys if k in paper.columns], how="outer")
        num = pd.to_numeric(table["ours"], errors="coerce") - pd.to_numeric(table["paper"], errors="coerce")
        table["delta"] = num
    table = table.sort_values([k for k in keys if k in table.columns], kind="stable").reset_index(drop=True)
    out = Path(out_dir) if out_dir else store.path.parent
    csv_path = out / f"{profile}_report.csv"
    check_writable(csv_path, "--out" if out_dir else "the report folder")
    table.to_csv(csv_path, index=False)
    rep = Report(name, f"{exp.title} — paper (CIFAR-10) vs ours [{profile}]", table, csv_path, notice=notice)
    if figure and not table.empty:
        rep.png_path = out / f"{profile}_report.png"
        _figure(name, table).savefig(rep.png_path, dpi=110, bbox_inches="tight")
    return rep


def _figure(name: str, table: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    x = {"table1": "PR", "table2": "I", "table3": "I", "table4": "kernels", "table5": "config",
         "fig3": "epoch", "seed002_depth": "I"}.get(name, "label")
    t = table.copy()
    t["config"] = t.apply(lambda r: f"C={r['C']}, D={r['D']}", axis=1)
    value_cols = [c for c in ("paper", "ours") if c in t]
    long = t.melt(id_vars=[c for c in t.columns if c not in value_cols], value_vars=value_cols,
                  var_name="source", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    fig, ax = plt.subplots(figsize=(7, 4))
    if name == "table3":
        long["config"] = long["PR"].map(lambda p: f"PR={p}")
    if name == "seed002_depth":
        long["config"] = long["routing"]
    if x in ("kernels", "config", "label"):
        sns.barplot(data=long, x=x, y="value", hue="source", ax=ax)
        if x == "label":
            ax.tick_params(axis="x", labelrotation=75)
    else:
        sns.lineplot(data=long, x=x, y="value", hue="config", style="source", markers=True, ax=ax)
    ax.set_ylabel("max depth I" if name == "table5" else "accuracy (%)")
    ax.set_title(name)
    fig.tight_layout()
    return fig
