"""The outcomes of the rigorous-verdicts studies per point, and hypothesis H's arms against their predictions.

Reads ``results/collapse_h/<profile>.csv`` (H arm by arm, one epoch) and ``results/collapse_plateau/<profile>.csv``
(the decisive points trained to a plateau); trains nothing. :func:`point_outcomes` gives one row per point
label: seeds, test accuracy mean ± std, how many seeds sat at chance, epochs run. :func:`arm_outcomes`
sets each H arm beside the prediction committed before it ran (:data:`H_PREDICTIONS`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import pandas as pd

from ..experiments.results import read_store_csv
from .collapse_runs import MIN_SEEDS, at_chance, final_rows, results_root

#: The outcome predicted for each arm of hypothesis H, as committed in results/collapse/predictions_h.md
#: (commit 5fe609e, before any collapse_h row existed): "trains" (≥ 50 % test accuracy after one epoch in every
#: seed), "chance" (within 2 points of 10 % in every seed) or "below 50 %" (above chance, below 50 %, every seed).
H_PREDICTIONS = {"ConvCaps std 0.6 alone": "trains", "class std 0.1 alone": "chance",
                 "std 0.8, class std 0.1": "below 50 %", "remedy at I=30": "trains"}


def _where(rows: pd.DataFrame) -> str:
    """The provenance column naming the machine: ``device_name`` (the CPU model or GPU), else ``device``."""
    return next((c for c in ("device_name", "device") if c in rows), "")


def point_outcomes(experiment: str, profile: str = "cpu", root: Optional[str | Path] = None) -> pd.DataFrame:
    """One row per point label of ``experiment``'s store: ``seeds``, ``accs`` (test accuracy % per seed),
    ``mean``, ``std``, ``at_chance`` (seeds within 2 points of chance), ``epochs`` (runs' epochs, min–max),
    ``devices`` (where the final stage ran, by the rows' ``device_name``: "AMD EPYC", "NVIDIA H200", …).
    A from-scratch point's row is its train stage; a pipeline point's is its retrain stage."""
    path = results_root(root) / experiment / f"{profile}.csv"
    cols = ["label", "seeds", "accs", "mean", "std", "at_chance", "epochs", "devices"]
    if not path.is_file():
        return pd.DataFrame(columns=cols)
    df = read_store_csv(path)
    if not {"status", "kind", "stage", "label", "seed", "test_acc"} <= set(df.columns):  # not a grid's store
        return pd.DataFrame(columns=cols)
    df = final_rows(df)
    out = []
    for label, g in df.groupby("label", sort=False):
        g = g.drop_duplicates("seed", keep="last").sort_values("seed")
        accs = [100 * float(a) for a in g["test_acc"]]
        epochs = [int(e) for e in g["epochs_run"]] if "epochs_run" in g else []
        out.append(dict(label=label, seeds=len(g), accs=accs, mean=sum(accs) / len(accs),
                        std=float(pd.Series(accs).std()) if len(accs) > 1 else math.nan,
                        at_chance=sum(at_chance(a / 100) for a in accs),
                        epochs=f"{min(epochs)}–{max(epochs)}" if epochs and min(epochs) != max(epochs)
                        else (str(epochs[0]) if epochs else ""),
                        devices=", ".join(sorted(set(g[_where(g)].dropna().astype(str)))) if _where(g) else ""))
    return pd.DataFrame(out, columns=cols)


def _observed(accs: list[float]) -> str:
    """The outcome class of a point's seeds, in :data:`H_PREDICTIONS`' terms ("mixed" when seeds differ)."""
    def one(a: float) -> str:
        if at_chance(a / 100):
            return "chance"
        return "trains" if a >= 50 else "below 50 %"
    kinds = {one(a) for a in accs}
    return kinds.pop() if len(kinds) == 1 else "mixed (" + ", ".join(one(a) for a in accs) + ")"


def arm_outcomes(profile: str = "cpu", root: Optional[str | Path] = None) -> pd.DataFrame:
    """Hypothesis H's arms: label, prediction, seeds, test accuracy per seed, the observed outcome and whether
    it is the predicted one (None while an arm has fewer than :data:`MIN_SEEDS` seeds)."""
    got = point_outcomes("collapse_h", profile, root).set_index("label")
    rows = []
    for arm, predicted in H_PREDICTIONS.items():
        label = next((lbl for lbl in got.index if lbl.startswith(f"H: {arm},")), None)
        r = got.loc[label] if label is not None else None
        seeds = int(r["seeds"]) if r is not None else 0
        observed = _observed(r["accs"]) if seeds else ""
        rows.append(dict(arm=arm, label=label or f"H: {arm}", predicted=predicted, seeds=seeds,
                         accs=", ".join(f"{a:.1f}" for a in r["accs"]) if seeds else "",
                         observed=observed, as_predicted=(observed == predicted) if seeds >= MIN_SEEDS else None))
    return pd.DataFrame(rows)


def outcomes_text(outcomes: pd.DataFrame, what: str) -> str:
    """``what``: one entry per point: label, mean ± std over its seeds, seeds at chance, epochs."""
    if outcomes.empty:
        return f"{what}: no rows yet"
    parts = []
    for _, r in outcomes.iterrows():
        sd = "" if pd.isna(r["std"]) else f" ± {r['std']:.1f}"
        ep = f", {r['epochs']} epochs" if r["epochs"] else ""
        ep += f", on {r['devices']}" if r.get("devices") else ""
        parts.append(f"{r['label']}: {r['mean']:.1f}{sd} % over {r['seeds']} seed{'s' if r['seeds'] != 1 else ''}"
                     f" ({r['at_chance']} at chance{ep})")
    return f"{what}: " + "; ".join(parts)
