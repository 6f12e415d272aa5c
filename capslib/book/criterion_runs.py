"""The training signal at initialisation against what each decisive run did (the collapse chapter).

Nothing here trains. ``results/collapse/screen_cpu.csv`` holds the screens of every from-scratch decisive
config (:mod:`capslib.experiments.criterion_screen`); the stores of :data:`STUDIES` hold the runs (the collapse
study's, the remedies' and Table 5's at the same profile). :func:`criterion_table` joins each run to the screen of its
very config hash, seed and dtype (the first training batch it saw); a pipeline's retrain stage, which has
no from-scratch screen, is joined to the signal ``fit`` logged at its first step, when its history has it.
:func:`criterion_figure` plots the largest first Adam step at initialisation against the final test
accuracy, marked by dtype; :func:`rule_check` says whether one threshold separates the runs that learned
from those that sat at chance, and which rows would refute it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..engine.criterion import VANISHING_STEP
from ..experiments.results import read_store_csv
from .collapse_runs import CHANCE, _rc, at_chance, final_rows, results_root
from .plots import FONT, PAGE_WIDTH_IN, book_figsize, legend_outside

#: The rule committed with hypothesis H's predictions: :data:`capslib.engine.criterion.VANISHING_STEP`.
THRESHOLD = VANISHING_STEP
#: Steps below this (exactly 0 in float32; down to 1e-77 in float64) are drawn at it, on the left edge.
ZERO_AT = 1e-14
STUDIES = ("collapse", "collapse_h", "collapse_plateau", "remedies", "remedies_deep", "table5_limits")


def _signal_max(groups: dict) -> float:
    return max(float(v.get("update_max", 0.0)) for v in groups.values()) if groups else math.nan


def criterion_table(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """One row per decisive run: study, label, seed, dtype, epochs run, test accuracy (%), whether it sat at
    chance, the largest first Adam step at initialisation (``update_max``) and the class capsules' max length,
    and where the signal came from ("screen" or "fit log")."""
    root = results_root(root)
    screen_path = root / "collapse" / f"screen_{profile}.csv"
    screen = read_store_csv(screen_path) if screen_path.is_file() else pd.DataFrame(columns=["config_hash"])
    first = screen[screen.get("batch", pd.Series(dtype=int)) == 0].drop_duplicates("config_hash")
    by_hash = first.set_index("config_hash") if len(first) else first
    out = []
    for study in STUDIES:
        path = root / study / f"{profile}.csv"
        if not path.is_file():
            continue
        rows = read_store_csv(path)
        if not {"status", "stage", "config_hash", "seed", "test_acc"} <= set(rows.columns):
            continue
        rows = final_rows(rows)
        for _, r in rows.iterrows():
            signal, class_max, source = math.nan, math.nan, ""
            if r["stage"] == "train" and r["config_hash"] in by_hash.index:
                s = by_hash.loc[r["config_hash"]]
                signal, class_max, source = float(s["update_max.all"]), float(s["class_max"]), "screen"
            else:
                hist = json.loads(r["history"]) if isinstance(r.get("history"), str) else []
                sig = hist[0].get("signal") if hist else None
                if sig:
                    signal, class_max, source = _signal_max(sig["groups"]), sig["lengths"].get("class_max", math.nan), \
                        "fit log"
            acc = float(r["test_acc"])
            out.append(dict(study=study, label=r.get("label", ""), seed=int(r["seed"]),
                            dtype=r.get("train.dtype", "float32") if isinstance(r.get("train.dtype"), str) else "float32",
                            epochs=int(r.get("epochs_run", 1) or 1), test_acc=100 * acc,
                            at_chance=at_chance(acc), update_max=signal, class_max=class_max,
                            source=source, config_hash=r["config_hash"]))
    return pd.DataFrame(out, columns=["study", "label", "seed", "dtype", "epochs", "test_acc", "at_chance",
                                      "update_max", "class_max", "source", "config_hash"])


def rule_check(table: pd.DataFrame, threshold: float = THRESHOLD) -> dict:
    """How the runs with a signal bear on the rule, both ways: ``refuting`` are the runs below the threshold
    that learned (each refutes "below ⇒ at chance"); ``not_sufficient`` those above it that sat at chance
    anyway (each shows the threshold is necessary, not sufficient: another failure, e.g. saturation)."""
    t = table.dropna(subset=["update_max"])
    below = t["update_max"] < threshold
    cols = ["study", "label", "seed", "dtype", "update_max", "test_acc"]
    return {"runs": len(t), "below": int(below.sum()), "at_chance": int(t["at_chance"].sum()),
            "refuting": t[below & ~t["at_chance"]][cols], "not_sufficient": t[~below & t["at_chance"]][cols],
            "largest_dead": float(t.loc[t["at_chance"], "update_max"].max()) if t["at_chance"].any() else math.nan,
            "smallest_alive": float(t.loc[~t["at_chance"], "update_max"].min()) if (~t["at_chance"]).any()
            else math.nan}


def criterion_figure(table: pd.DataFrame, threshold: float = THRESHOLD, title: Optional[str] = None) -> Figure:
    """The largest first Adam step at initialisation (relative to the weights' RMS, log scale; exactly 0
    and anything below :data:`ZERO_AT` drawn at the left edge) against the final test accuracy, one marker per run: circles float32, squares
    float64, filled for one-epoch runs and hollow for plateau runs; the rule's threshold dashed, chance
    dotted."""
    with _rc():
        fig = Figure(figsize=book_figsize(PAGE_WIDTH_IN, 3.8), layout="constrained")
        ax = fig.add_subplot()
        t = table.dropna(subset=["update_max"]).copy()
        t["x"] = t["update_max"].clip(lower=ZERO_AT)
        rng = np.random.default_rng(0)
        t["x"] = t["x"] * np.exp(rng.uniform(-0.15, 0.15, len(t)))  # a little jitter: seeds overlap
        for dtype, marker in (("float32", "o"), ("float64", "s")):
            for plateau, face in ((False, None), (True, "none")):
                d = t[(t["dtype"] == dtype) & ((t["study"] == "collapse_plateau") == plateau)]
                if d.empty:
                    continue
                label = f"{dtype}, {'plateau (≤ 10 epochs)' if plateau else 'one epoch'}"
                kw = {"facecolors": face} if face else {}
                ax.scatter(d["x"], d["test_acc"], marker=marker, s=36, label=label,
                           edgecolors="tab:blue" if dtype == "float32" else "tab:red",
                           c=None if face else ("tab:blue" if dtype == "float32" else "tab:red"), **kw)
        ax.set_xscale("log")
        ax.axvline(threshold, color="0.3", ls="--", lw=1)
        ax.text(threshold * 1.3, 95, f"rule: {threshold:g}", fontsize=FONT["small"], va="top")
        ax.axhline(100 * CHANCE, color="tab:red", ls=":", lw=1)
        ax.set_ylim(0, 100)
        lo = ZERO_AT / 3
        ax.set_xlim(lo, max(1.0, float(t["x"].max()) * 3) if len(t) else 1.0)
        ax.text(ZERO_AT, 3, f"≤ {ZERO_AT:g} (or 0)", fontsize=FONT["small"], ha="left", color="0.35")
        ax.set_xlabel("largest first Adam step at initialisation, relative to the weights' RMS (all groups)")
        ax.set_ylabel("test accuracy (%)")
        legend_outside(ax)
        if title:
            ax.set_title(title)
    return fig


def rule_text(table: pd.DataFrame, threshold: float = THRESHOLD) -> str:
    """The rule and how the committed runs bear on it, in Markdown: how many runs it classifies, the
    largest step of a run that sat at chance against the smallest of a run that learned, and every run
    that breaks it (each one refutes it)."""
    r = rule_check(table, threshold)
    if not r["runs"]:
        return "*No decisive run has a screened or logged training signal yet.*"
    def named(rows: pd.DataFrame) -> str:
        return "; ".join(f"{x.label} seed {x.seed} ({x.dtype}): step {x.update_max:.2g}, {x.test_acc:.1f} %"
                         for x in rows.itertuples())

    text = (f"**Rule:** a run whose largest first Adam step at initialisation (relative to its weights' RMS, over "
            f"every parameter group) is below **{threshold:g}** cannot learn: it sits at chance. Over the "
            f"**{r['runs']}** committed runs with a signal, {r['below']} are below the threshold and "
            f"{r['at_chance']} sat at chance; the smallest step of a run that learned is "
            f"**{r['smallest_alive']:.2g}**. ")
    text += (f"**Runs that refute it** (below the threshold, yet they learned): {named(r['refuting'])}. "
             if len(r["refuting"]) else "No run below the threshold learned; one that did would refute the rule. ")
    if len(r["not_sufficient"]):
        text += (f"The threshold is necessary, not sufficient: these runs had a full-size step and still sat at "
                 f"chance: {named(r['not_sufficient'])}.")
    else:
        text += "Every run above the threshold learned."
    return text


# ----------------------------------------------------------------------------- the rebuilt nets

#: Layers the rebuilt-net table shows (mean capsule length), in forward order.
REBUILT_LAYERS = ("primary", "inter1", "inter4", "inter7", "class_max")


def rebuilt_table(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """The rebuilt nets of the ``collapse`` experiment's prune points at the start of retraining
    (``results/collapse/screen_rebuilt_<profile>.csv``, batch 0 of each seed): per point, seed and BatchNorm
    mode, the mean capsule length of :data:`REBUILT_LAYERS` (``class_max``: the longest class capsule), the
    largest first Adam step (training mode only: that is the step retraining takes), and the base stage's
    test accuracy in the rerun that produced the net beside the committed run's (``base_rerun`` /
    ``base_committed``, %), and the test accuracy (%) after retraining this very net for the point's budget
    (``retrained``, from ``rebuilt_retrain_<profile>.csv``; NaN until it has run)."""
    root = results_root(root)
    path = root / "collapse" / f"screen_rebuilt_{profile}.csv"
    cols = ["label", "seed", "mode", *REBUILT_LAYERS, "update_max", "base_rerun", "base_committed", "retrained"]
    if not path.is_file():
        return pd.DataFrame(columns=cols)
    screen = read_store_csv(path)
    screen = screen[screen["batch"] == 0]
    runs_path = root / "collapse" / f"{profile}.csv"
    runs = read_store_csv(runs_path) if runs_path.is_file() else pd.DataFrame(columns=["stage", "label", "seed"])
    base = {(r.label, int(r.seed)): 100 * float(r.test_acc) for r in runs[runs["stage"] == "base"].itertuples()}
    retrain_path = root / "collapse" / f"rebuilt_retrain_{profile}.csv"
    retrained = {}
    if retrain_path.is_file():
        rr = read_store_csv(retrain_path)
        retrained = {(r.label, int(r.seed)): 100 * float(r.test_acc) for r in rr[rr["stage"] == "retrain"].itertuples()}
    out = []
    for r in screen.to_dict(orient="records"):
        for mode, column in (("train", "lengths"), ("eval", "eval_lengths")):
            lengths = json.loads(r[column])
            out.append(dict(label=r["label"], seed=int(r["seed"]), mode=mode,
                            **{k: float(lengths.get(k, math.nan)) for k in REBUILT_LAYERS},
                            update_max=float(r["update_max.all"]) if mode == "train" else math.nan,
                            base_rerun=100 * float(r["base_test_acc"]),
                            base_committed=base.get((r["label"], int(r["seed"])), math.nan),
                            retrained=retrained.get((r["label"], int(r["seed"])), math.nan) if mode == "train"
                            else math.nan))
    return pd.DataFrame(out, columns=cols)


def rebuilt_view(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`rebuilt_table` for the page: one row per point and BatchNorm mode, each length as its median
    over seeds (two significant digits, exact zeros as 0), the step as its smallest over seeds."""
    if table.empty:
        return table
    g = table.groupby(["label", "mode"], sort=False)
    view = g[list(REBUILT_LAYERS)].median().map(lambda v: "0" if v == 0 else f"{v:.2g}")
    view["largest first Adam step (min over seeds)"] = g["update_max"].min().map(
        lambda v: "–" if math.isnan(v) else f"{v:.2g}")
    view["retrained (%)"] = g["retrained"].agg(lambda a: ", ".join("–" if math.isnan(v) else f"{v:.1f}" for v in a))
    view.loc[view.index.get_level_values("mode") == "eval", "retrained (%)"] = ""
    view["seeds"] = g["seed"].nunique()
    return view.rename(columns={"class_max": "class (max)"})


def rebuilt_text(table: pd.DataFrame) -> str:
    """What the rebuilt-net screen shows, from its rows: the pruned and unpruned nets' PrimaryCaps and
    deepest ConvCaps lengths in training mode (what retraining starts from) and in eval mode (what the
    pruned stage's evaluation and dead-capsule probe saw), and how closely the rerun reproduced the
    committed base stage."""
    if table.empty:
        return "*The rebuilt nets have not been screened yet (`results/collapse/screen_rebuilt_cpu.csv`).*"
    med = table.groupby(["label", "mode"], sort=False)[["primary", "inter7", "class_max"]].median()
    train = table[table["mode"] == "train"]
    parts = []
    for label in table["label"].unique():
        tr, ev = med.loc[(label, "train")], med.loc[(label, "eval")]
        parts.append(f"*{label}*: PrimaryCaps {tr['primary']:.2g} in training mode against {ev['primary']:.2g} "
                     f"in eval mode (× {ev['primary'] / tr['primary']:.2g}), the deepest ConvCaps "
                     f"{tr['inter7']:.2g} against {ev['inter7']:.2g}")
    text = "Median over seeds, batch 0 of each retraining stage: " + "; ".join(parts) + ". "
    low = train[train["update_max"] < THRESHOLD]

    def outcome(r) -> str:
        if math.isnan(r.retrained):
            return "not retrained yet"
        return f"retrained to {r.retrained:.1f} %, " + ("at chance, as the rule predicts" if at_chance(
            r.retrained / 100) else "it learned: this refutes the rule")

    text += ("Every rebuilt net's first Adam step in training mode is full-size (at least "
             f"{train['update_max'].min():.2g}). " if low.empty else
             "In training mode the first Adam step is full-size except in " + "; ".join(
                 f"{r.label} seed {r.seed} (step {r.update_max:.2g}; {outcome(r)})" for r in low.itertuples()) + ". ")
    high = train[train["update_max"] >= THRESHOLD].dropna(subset=["retrained"])
    if len(high):
        text += (f"The {len(high)} retrained nets with a full-size step reached "
                 f"{high['retrained'].min():.1f}–{high['retrained'].max():.1f} %. ")
    diff = (train["base_rerun"] - train["base_committed"]).abs()
    return (text + f"The rerun of stages 1–4 that produced these nets is not bit-identical to the committed runs "
            f"(its base stage's test accuracy differs from the committed one by up to {diff.max():.1f} points), so "
            "these are the same pipeline's nets, not the very weights the committed runs retrained.")


def rebuilt_rows(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """The raw rows behind :func:`rebuilt_table` (the screen's and the retraining's), for its provenance
    footer; empty when neither exists."""
    root = results_root(root)
    frames = [read_store_csv(p) for p in (root / "collapse" / f"screen_rebuilt_{profile}.csv",
                                          root / "collapse" / f"rebuilt_retrain_{profile}.csv") if p.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def rebuilt_short(table: pd.DataFrame) -> str:
    """One sentence for the rescue verdict: how the pruned rebuilt net starts in each BatchNorm mode."""
    pruned = table[table["label"].astype(str).str.startswith("CCM")]
    if pruned.empty:
        return ""
    med = pruned.groupby("mode")[["primary", "inter7"]].median()
    step = pruned.loc[pruned["mode"] == "train", "update_max"].min()
    return (f"the pruned net looks dead before retraining only in eval mode, where BatchNorm uses running statistics "
            f"copied from before the pruning (PrimaryCaps length {med.loc['eval', 'primary']:.2g}, deepest ConvCaps "
            f"{med.loc['eval', 'inter7']:.2g}); retraining runs in training mode, where it starts alive "
            f"({med.loc['train', 'primary']:.2g} and {med.loc['train', 'inter7']:.2g}, first Adam step ≥ {step:.2g}; "
            f"median over {pruned['seed'].nunique()} seeds of a rerun, `results/collapse/screen_rebuilt_cpu.csv`)"
            + _rerun_outcomes(table))


def _rerun_outcomes(table: pd.DataFrame) -> str:
    """How the retrained rerun nets ended, per point, naming any that sat at chance and its first step."""
    train = table[(table["mode"] == "train")].dropna(subset=["retrained"])
    if train.empty:
        return ""
    parts = []
    for label, g in train.groupby("label", sort=False):
        dead = g[(g["retrained"] / 100).map(at_chance)]
        text = f"{label}: " + ", ".join(f"{a:.1f}" for a in g["retrained"]) + " %"
        if len(dead):
            text += " (" + "; ".join(f"seed {r.seed} at chance, its first step {r.update_max:.2g}"
                                     for r in dead.itertuples()) + ")"
        parts.append(text)
    return (". Retrained for one epoch, these very nets reached " + "; ".join(parts)
            + " (`results/collapse/rebuilt_retrain_cpu.csv`; the outcome was predicted before the runs in "
              "`results/collapse/predictions_rebuilt.md`)")
