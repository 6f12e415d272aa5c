"""Going deep without pruning: the committed evidence about each remedy, read and summarised (the deep chapter
and the verdict on CapsNet[20, 8, 30]).

Nothing here trains a model. :func:`deep_points` is the one place that knows which committed point belongs to
which remedy and depth: the ``remedies`` and ``remedies_deep`` experiments (each remedy of
:data:`capslib.experiments.grids.REMEDIES` alone, and the prune beside them), the length-map init of the
collapse study (its remedy at I = 11, and hypothesis H's arm at I = 30) and the unremedied baseline (std 0.5)
at its cliff. From their rows:

* :func:`length_maps`, :func:`length_map_figure`, :func:`length_map_explorer`, :func:`length_map_text` - the mean
  capsule length per layer at initialisation (the initialisation screens, float32, each seed's first
  training batch);
* :data:`PREDICTIONS`, :func:`predicted_vs_trained`, :func:`predictions_view` - what was predicted before the
  runs (``results/remedies/predictions.md``) against what trained;
* :func:`depth_outcomes`, :func:`accuracy_vs_depth_figure` - test accuracy against depth, per remedy;
* :func:`cost_table` - what each remedy costs per training image (``benchmarks/bench_remedies.py``);
* :func:`deep_claim` - what the verdict page grades.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..experiments.grids import COLLAPSE
from ..experiments.results import read_store_csv
from .collapse_runs import CHANCE, CHANCE_BAND, MIN_SEEDS, _rc, at_chance, final_rows, results_root
from .collapse_runs import runs_footer as _collapse_footer
from .plots import FONT, PAGE_WIDTH_IN, book_figsize, integer_ticks, legend_outside, provenance_text, wrap_title
from .study_points import H_PREDICTIONS, point_outcomes
from .tables import footer_rows

#: The lines of the chapter's figures that are not a remedy of ``grids.REMEDIES``.
BASELINE = f"no remedy (std {COLLAPSE['std']:g})"
LENGTH_MAP = f"length-map init (std {COLLAPSE['remedy_std']:g}, class std {COLLAPSE['remedy_class_std']:g})"
#: The verdict on CapsNet[20, 8, 30]: a remedy trains it when every seed is above this test accuracy (%).
DEEP_THRESHOLD = 60.0
#: The floor of the length-map figures: a length below it (exactly 0 included) is a triangle on it. Nine
#: decades keep the remedies' lengths (0.005 to 5) apart and show where the unremedied net falls off.
ZERO_FLOOR = 1e-8


# ======================================================================================
# The points
# ======================================================================================
@dataclass(frozen=True)
class DeepPoint:
    """One committed point: the ``remedy`` (a figure's line) it belongs to, its depth ``I``, the experiment
    whose store holds its rows, its label there, and its ``kind``: "remedy" (one of ``grids.REMEDIES``),
    "init" (the length-map init), "baseline" (no remedy), "prune" (CCM + CHIP) or "narrow" (C′ from scratch);
    ``role``: its role in its grid (a baseline point below the cliff is a "control", at and beyond it a "test")."""

    remedy: str
    I: int
    experiment: str
    label: str
    kind: str
    role: str = ""


def _depth(p) -> int:
    return int(p.I_after if p.I_after is not None else dict(p.overrides).get("I", 0))


def deep_points(profile: str = "cpu") -> list[DeepPoint]:
    """Every point the chapter shows, from the experiments' own grids (:mod:`capslib.experiments.grids`), in the
    order the page shows them: the length-map init at I = 11 (``collapse``) and 30 (``collapse_h``: the arm at the
    remedy's stds), the remedies at both depths and the prune with its C′ control, and the float32 points of the
    collapse claim (no remedy)."""
    from ..experiments.grids import COLLAPSE_SMOKE, REMEDIES, _small, get_experiment

    k = COLLAPSE_SMOKE if _small(profile) else COLLAPSE
    init, base = [], []
    for p in get_experiment("collapse").grid(profile):
        if p.claim == "remedy":
            init.append(DeepPoint(LENGTH_MAP, _depth(p), "collapse", p.label, "init"))
        elif p.claim == "collapse" and dict(p.overrides).get("dtype", "float32") == "float32":
            base.append(DeepPoint(BASELINE, _depth(p), "collapse", p.label, "baseline", p.role))
    for p in get_experiment("collapse_h").grid(profile):
        ov = dict(p.overrides)
        if (ov.get("init_std"), ov.get("class_init_std")) == (k["remedy_std"], k["remedy_class_std"]):
            init.append(DeepPoint(LENGTH_MAP, _depth(p), "collapse_h", p.label, "init"))
    names = [name for name, _, _ in REMEDIES]
    out = list(init)
    for exp in ("remedies", "remedies_deep"):
        for p in get_experiment(exp).grid(profile):
            name = next((n for n in names if p.label.startswith(n + ",")), None)
            kind = "remedy" if name else ("prune" if p.kind == "prune" else "narrow")
            out.append(DeepPoint(name or re.sub(r"\s*I=\d+$", "", p.label), _depth(p), exp, p.label, kind))
    out += base
    return out


def remedies_table() -> pd.DataFrame:
    """What each remedy changes (its ModelConfig fields) and where it comes from: the rows of
    ``grids.REMEDIES``, the length-map init and the prune, for the page."""
    from ..experiments.grids import REMEDIES, REMEDY_PRUNE

    pr, c_pruned, widths = REMEDY_PRUNE["cpu"]
    rows = [(LENGTH_MAP, f"init_std={COLLAPSE['remedy_std']:g}, class_init_std={COLLAPSE['remedy_class_std']:g}",
             "this companion: ConvCaps and class std chosen from the length map at initialisation")]
    rows += [(name, ", ".join(f"{k}={v!r}" for k, v in over.items()), why) for name, over, why in REMEDIES]
    rows.append((f"CCM+CHIP PR {pr:g} (C'={c_pruned})", f"pr={pr:g}: C′ = {c_pruned}, backbone widths "
                 f"{'/'.join(str(w) for w in widths)}", "the paper's remedy: prune, then fresh ConvCaps"))
    return pd.DataFrame(rows, columns=["remedy", "config change (std 0.5 elsewhere)", "source"]).set_index("remedy")


# ======================================================================================
# Length maps at initialisation (the screens)
# ======================================================================================
def _screens(root: Path, profile: str) -> pd.DataFrame:
    """Batch-0, float32 rows of the three screen files, each with the file it came from (``source``)."""
    frames = []
    for exp in ("remedies", "remedies_deep", "collapse"):
        path = root / exp / f"screen_{profile}.csv"
        if path.is_file():
            df = read_store_csv(path)
            if {"label", "batch", "lengths"} <= set(df.columns):
                frames.append(df.assign(source=f"results/{exp}/screen_{profile}.csv"))
    if not frames:
        return pd.DataFrame(columns=["label", "batch", "lengths", "seed", "source"])
    df = pd.concat(frames, ignore_index=True)
    dtype = df["dtype"].fillna("float32") if "dtype" in df else pd.Series("float32", index=df.index)
    return df[(df["batch"] == 0) & (dtype == "float32")]


def _layer_index(layer: str, I: int) -> Optional[int]:
    if layer == "primary":
        return 0
    if layer == "class":
        return I + 1
    m = re.fullmatch(r"inter(\d+)", layer)
    return int(m.group(1)) if m else None


def length_maps(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """Per point and layer, the mean capsule length at initialisation: the median over seeds of the
    screen's first training batch (float32). Columns ``remedy``, ``kind``, ``label``, ``I``, ``layer``,
    ``index`` (0 PrimaryCaps, 1..I ConvCaps, I + 1 class capsules), ``length``, ``class_max`` (the longest
    class capsule, median over seeds), ``seeds`` and ``source`` (the screen file)."""
    points = {p.label: p for p in deep_points(profile)}
    screens = screen_rows(root, profile)
    out = []
    for label, g in screens.groupby("label", sort=False):
        p = points[label]
        maps = [json.loads(s) for s in g.drop_duplicates("seed", keep="last")["lengths"]]
        class_max = float(np.median([m.get("class_max", math.nan) for m in maps]))
        for layer in maps[0]:
            index = _layer_index(layer, p.I)
            if index is None:
                continue
            out.append(dict(remedy=p.remedy, kind=p.kind, label=label, I=p.I, layer=layer, index=index,
                            length=float(np.median([m[layer] for m in maps if layer in m])),
                            class_max=class_max, seeds=len(maps), source=g["source"].iloc[0]))
    cols = ["remedy", "kind", "label", "I", "layer", "index", "length", "class_max", "seeds", "source"]
    order = {label: i for i, label in enumerate(points)}
    table = pd.DataFrame(out, columns=cols)
    table = table.assign(_o=table["label"].map(order)).sort_values(["I", "_o", "index"], kind="stable",
                                                                     ignore_index=True).drop(columns="_o")
    return table


def screen_rows(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """The screen rows behind :func:`length_maps`: batch 0, float32, of every point of :func:`deep_points`."""
    labels = {p.label for p in deep_points(profile)}
    screens = _screens(results_root(root), profile)
    return screens[screens["label"].isin(labels)]


#: A fixed colour per line, so that every panel and figure draws a remedy alike.
COLOURS = {LENGTH_MAP: "tab:green", "squash bias 0.1": "tab:blue", "Efficient-CapsNet squash": "tab:orange",
           "residual ConvCaps": "tab:purple", "C'=12 from scratch": "tab:brown", BASELINE: "0.45"}


def _remedy_depths(maps: pd.DataFrame) -> list[int]:
    return sorted(int(i) for i in maps.loc[maps["kind"] != "baseline", "I"].unique())


def length_map_figure(maps: pd.DataFrame, I: int) -> Figure:
    """Mean capsule length per layer at initialisation (log axis) of every point screened at depth ``I``, one
    line per remedy; the deepest unremedied net screened (no deeper than ``I``) in grey for reference. A
    length that is exactly 0 is a red triangle on the floor; dotted lines at 0.01 (dead) and 1 (the squash's
    ceiling, which residual layers pass)."""
    floor = ZERO_FLOOR
    with _rc():
        fig = Figure(figsize=book_figsize(PAGE_WIDTH_IN, 3.9), layout="constrained")
        ax = fig.add_subplot()
        ax.set_yscale("log")
        here = maps[(maps["I"] == I) & (maps["kind"] != "baseline")]
        base = maps[(maps["kind"] == "baseline") & (maps["I"] <= I)]
        lines = [(r, g, "-") for r, g in here.groupby("remedy", sort=False)]
        if len(base):
            deepest = int(base["I"].max())
            lines.append((f"{BASELINE}, I = {deepest}", base[base["I"] == deepest], "--"))
        drawn = set()
        for name, g, ls in lines:
            g = g.sort_values("index")
            up = g["length"] >= floor
            ax.plot(g.loc[up, "index"], g.loc[up, "length"], ls, marker="o", ms=3,
                    color=COLOURS.get(name.split(", I =")[0]), label=name)
            for what, mask, face in (("exactly 0", g["length"] == 0, "tab:red"),
                                     (f"below {floor:.0e}, not 0", (g["length"] > 0) & ~up, "none")):
                if mask.any():
                    ax.scatter(g.loc[mask, "index"], np.full(int(mask.sum()), floor), marker="v", s=50,
                               facecolors=face, edgecolors="tab:red", zorder=3,
                               label=None if what in drawn else f"{what} (on the floor)")
                    drawn.add(what)
        if here.empty:
            ax.text(0.5, 0.5, f"no screen at I = {I} yet", transform=ax.transAxes, ha="center", color="0.35")
        for y, text, va in ((0.01, "dead ≤ 0.01", "top"), (1.0, "squash ceiling 1", "bottom")):
            ax.axhline(y, color="0.3", lw=0.8, ls=":")
            ax.text(0.1, y * (0.8 if va == "top" else 1.2), text, fontsize=FONT["small"], color="0.3", va=va)
        top = max(3.0, float(maps["length"].max()) * 2) if len(maps) else 3.0
        ax.set_ylim(floor / 3, top)
        ticks = sorted({0, I + 1, *range(5, I - 1, 5)}) if I > 12 else list(range(I + 2))
        ax.set_xticks(ticks, ["prim" if t == 0 else ("class" if t == I + 1 else str(t)) for t in ticks])
        ax.set_xlabel(f"capsule layer (PrimaryCaps, ConvCaps 1…{I}, class capsules)")
        ax.set_ylabel("mean capsule length")
        ax.set_title(wrap_title(f"CapsNet[20, 8, {I}] at initialisation: mean capsule length per layer (median over "
                                "seeds, first training batch, float32)", PAGE_WIDTH_IN - 2.6))
        legend_outside(ax)
    return fig


def length_map_explorer(maps: pd.DataFrame):
    """A slider over the remedies' depths, switching precomputed :func:`length_map_figure` panels in the
    browser (:func:`capslib.book.widgets.slider_panels`); ``None`` when nothing is screened yet."""
    from .widgets import figure_png, slider_panels

    depths = _remedy_depths(maps)
    if not depths:
        return None
    return slider_panels({I: figure_png(length_map_figure(maps, I)) for I in depths}, description="I")


def length_map_text(maps: pd.DataFrame) -> str:
    """Per screened point, from its rows: the mean length of PrimaryCaps, of the last ConvCaps layer and of the
    class capsules, and the longest class capsule; where a point starts saturated (class ≥ 0.99) or dead (0)."""
    if maps.empty:
        return "*No initialisation screen of these points is committed yet.*"
    parts = []
    for (label, I), g in maps.groupby(["label", "I"], sort=False):
        g = g.set_index("index")
        r = g.iloc[0]
        last, cls = g.loc[I, "length"] if I in g.index else math.nan, g.loc[I + 1, "length"]
        state = ("class capsules all at the ceiling: saturated" if r["class_max"] >= 0.99 else
                 "class capsules exactly 0: dead" if r["class_max"] == 0 else
                 "every class capsule below 0.01: vanishing" if r["class_max"] < 0.01 else
                 "class capsules inside the squash's window")
        parts.append(f"*{r['remedy']}*, I = {I}: PrimaryCaps {g.loc[0, 'length']:.2g} → last ConvCaps {last:.2g}, "
                     f"class mean {cls:.2g}, max {r['class_max']:.2g} ({state}; {r['seeds']} seeds)")
    return "Median over seeds: " + "; ".join(parts) + "."


def screens_footer(root: Optional[str | Path] = None, profile: str = "cpu") -> str:
    """Provenance line for numbers from the screens (:func:`screen_rows`)."""
    rows = screen_rows(root, profile)
    if rows.empty:
        return "*Provenance:* no initialisation screen of these points is committed yet."
    files = ", ".join(f"`{s}`" for s in dict.fromkeys(rows["source"]))
    return provenance_text(footer_rows(rows), note=f"initialisation screens, no training ({files}; batch 0, float32)")


# ======================================================================================
# The runs: predicted against trained, and accuracy against depth
# ======================================================================================
@dataclass(frozen=True)
class Prediction:
    """One committed prediction: the ``point`` as ``predictions.md`` names it, the ``outcome`` predicted
    ("trains" or "saturates: at chance") and, for "trains", the test accuracy (%) every seed must exceed."""

    point: str
    outcome: str
    above: float = 50.0

    def text(self) -> str:
        return (f"{self.outcome} (above {self.above:g} % in every seed)" if self.outcome == "trains" else
                f"{self.outcome} (at most {100 * (CHANCE + CHANCE_BAND):g} % in every seed)")


#: The predictions of ``results/remedies/predictions.md`` (its tables, by the point's label in the
#: ``remedies`` grid); a test keeps them in sync with the file.
PREDICTIONS = {
    "squash bias 0.1, C20 I=11": Prediction("squash bias 0.1", "trains", 50.0),
    "Efficient-CapsNet squash, C20 I=11": Prediction("Efficient-CapsNet squash", "saturates: at chance"),
    "residual ConvCaps, C20 I=11": Prediction("residual ConvCaps", "saturates: at chance"),
    "C'=12 from scratch I=11": Prediction("C′ = 12 from scratch", "trains", 12.0),
    "CCM+CHIP PR 0.375 (C'=12) I=11": Prediction("CCM + CHIP PR 0.375 (C′ = 12)", "trains", 12.0),
    "squash bias 0.1, C20 I=30": Prediction("squash bias 0.1", "at chance"),
    "Efficient-CapsNet squash, C20 I=30": Prediction("Efficient-CapsNet squash", "at chance"),
    "residual ConvCaps, C20 I=30": Prediction("residual ConvCaps", "at chance"),
}
PREDICTIONS_FILE = "results/remedies/predictions.md"
#: When the predictions were fixed.
PREDICTIONS_NOTE = ("written 2026-12-04 from the initialisation screens: those at I = 11 before any row of "
                    "`results/remedies/cpu.csv` existed, those at I = 30 before any I = 30 row")


def _prediction(p: DeepPoint) -> tuple[Optional[Prediction], str]:
    """The committed prediction of a point and its file: :data:`PREDICTIONS`, or hypothesis H's for the
    length-map init's arm (``results/collapse/predictions_h.md``)."""
    if p.label in PREDICTIONS:
        return PREDICTIONS[p.label], PREDICTIONS_FILE
    arm = next((a for a in H_PREDICTIONS if p.label.startswith(f"H: {a},")), None)
    if arm is not None and H_PREDICTIONS[arm] == "trains":
        return Prediction(arm, "trains", 50.0), "results/collapse/predictions_h.md"
    return None, ""


def _seed_outcome(acc: float, above: float) -> str:
    if at_chance(acc / 100):
        return "chance"
    return "trains" if acc > above else f"below {above:g} %"


def depth_outcomes(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """One row per point of :func:`deep_points` (in order): remedy, kind, role, I, label, experiment, ``seeds``,
    ``accs`` (test accuracy % per seed), ``mean`` and ``std`` over seeds (NaN without rows), read by
    :func:`capslib.book.study_points.point_outcomes` from each experiment's store."""
    stores = {}
    out = []
    for p in deep_points(profile):
        if p.experiment not in stores:
            stores[p.experiment] = point_outcomes(p.experiment, profile, root).set_index("label")
        got = stores[p.experiment]
        r = got.loc[p.label] if p.label in got.index else None
        out.append(dict(remedy=p.remedy, kind=p.kind, role=p.role, I=p.I, label=p.label, experiment=p.experiment,
                        seeds=int(r["seeds"]) if r is not None else 0, accs=list(r["accs"]) if r is not None else [],
                        mean=float(r["mean"]) if r is not None else math.nan,
                        std=float(r["std"]) if r is not None else math.nan))
    return pd.DataFrame(out)


def predicted_vs_trained(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """One row per (point, depth), the baseline left out: the prediction and its file, the seeds' test
    accuracies, the observed outcome, ``status`` ("matched", "missed", "not run yet", "running (k of 3
    seeds)", "no prediction") with ``as_predicted`` (True / False / None), and ``refutes``: a "trains" point
    at chance, or an "at chance" point above 20 % in any seed (the refutation ``predictions.md`` states)."""
    points = {p.label: p for p in deep_points(profile)}
    order = {"init": 0, "remedy": 1, "narrow": 2, "prune": 3}
    outcomes = depth_outcomes(root, profile)
    outcomes = outcomes.assign(_o=outcomes["kind"].map(order)).sort_values(["I", "_o"], kind="stable")
    out = []
    for r in outcomes.itertuples():
        if r.kind == "baseline":
            continue
        pred, source = _prediction(points[r.label])
        above = pred.above if pred else 50.0
        seeds = [_seed_outcome(a, above) for a in r.accs]
        observed = "" if not seeds else (seeds[0] if len(set(seeds)) == 1 else "mixed (" + ", ".join(seeds) + ")")
        want = None if pred is None else ("trains" if pred.outcome == "trains" else "chance")
        if pred is None:
            status, ok = "no prediction", None
        elif not seeds:
            status, ok = "not run yet", None
        elif any(s != want for s in seeds):
            status, ok = "missed", False
        elif len(seeds) >= MIN_SEEDS:
            status, ok = "matched", True
        else:
            status, ok = f"running ({len(seeds)} of {MIN_SEEDS} seeds)", None
        refutes = bool(pred) and (("chance" in seeds) if want == "trains" else any(a > 20 for a in r.accs))
        out.append(dict(remedy=r.remedy, I=r.I, label=r.label, prediction=pred.text() if pred else "none committed",
                        source=source, seeds=r.seeds, accs=", ".join(f"{a:.1f}" for a in r.accs), mean=r.mean,
                        std=r.std, observed=observed, status=status, as_predicted=ok, refutes=refutes))
    return pd.DataFrame(out)


def predictions_view(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`predicted_vs_trained` narrow enough for the text column: per point (remedy, I), the prediction,
    the test accuracy of each seed, the observed outcome and whether it matched."""
    view = pd.DataFrame({"predicted": table["prediction"].to_numpy(),
                         "test acc (%) per seed": table["accs"].where(table["seeds"] > 0, "—").to_numpy(),
                         "observed": table["observed"].where(table["seeds"] > 0, "—").to_numpy(),
                         "matched": table["status"].to_numpy()},
                        index=pd.Index([f"{r}, I = {i}" for r, i in zip(table["remedy"], table["I"])], name="point"))
    return view


def predictions_text(table: pd.DataFrame) -> str:
    """Where the predictions were committed and how they fared, from the rows: how many matched, missed or
    have not run, each miss named with its seeds, and whether any result refutes the length map."""
    pred = table[table["status"] != "no prediction"]
    count = {s: int((pred["status"] == s).sum()) for s in ("matched", "missed", "not run yet")}
    running = len(pred) - sum(count.values())
    text = (f"Predictions: `{PREDICTIONS_FILE}` ({PREDICTIONS_NOTE}); the length-map init's at I = 30: "
            f"`results/collapse/predictions_h.md`. Of {len(pred)}: {count['matched']} matched, {count['missed']} "
            f"missed, {running} running, {count['not run yet']} not run yet.")
    for r in pred[pred["status"] == "missed"].itertuples():
        text += f" Missed: *{r.remedy}*, I = {r.I}, predicted {r.prediction}, observed {r.observed} ({r.accs} %)."
    refuting = pred[pred["refutes"]]
    text += (" Refuting the map (a \"trains\" point at chance, or an \"at chance\" point above 20 % in a seed): "
             + "; ".join(f"*{r.remedy}*, I = {r.I}" for r in refuting.itertuples()) + "." if len(refuting) else
             " No result refutes the map so far (a \"trains\" point at chance, or an \"at chance\" point above "
             "20 % in a seed, would).")
    return text


def deep_rows(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """The final store rows (:func:`capslib.book.collapse_runs.final_rows`) of every point of
    :func:`deep_points`, for provenance footers; empty while none has run."""
    root = results_root(root)
    labels = {p.experiment: set() for p in deep_points(profile)}
    for p in deep_points(profile):
        labels[p.experiment].add(p.label)
    frames = []
    for exp, want in labels.items():
        path = root / exp / f"{profile}.csv"
        if path.is_file():
            df = read_store_csv(path)
            if {"status", "label"} <= set(df.columns):
                frames.append(final_rows(df)[lambda d: d["label"].isin(want)])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def runs_footer(rows: pd.DataFrame, profile: str, note: Optional[str] = None) -> str:
    """Provenance line for the runs, or where they will appear while there are none."""
    stores = f"`results/remedies/{profile}.csv` or `results/remedies_deep/{profile}.csv`"
    return _collapse_footer(rows, profile, note, stores=stores)


def accuracy_vs_depth_figure(outcomes: pd.DataFrame, title: Optional[str] = None) -> Figure:
    """Test accuracy against depth I, mean ± std over seeds: one line per remedy (the length-map init and the
    unremedied baseline included), the CCM + CHIP prune and C′ from scratch as markers; chance dotted, the
    verdict's 60 % dashed. A remedy with no row yet is left out and named in the legend as a run in progress."""
    with _rc():
        fig = Figure(figsize=book_figsize(PAGE_WIDTH_IN, 3.9), layout="constrained")
        ax = fig.add_subplot()
        have = outcomes[outcomes["seeds"] > 0]
        for remedy, g in outcomes[outcomes["kind"].isin(["remedy", "init", "baseline"])].groupby("remedy", sort=False):
            d = g[g["seeds"] > 0].sort_values("I")
            if d.empty:
                ax.plot([], [], ls="none", label=f"{remedy}: runs in progress")
                continue
            n = d["seeds"].astype(int)
            ax.plot(d["I"], d["mean"], marker="o", ms=5, lw=1.4, ls="--" if remedy == BASELINE else "-",
                    color=COLOURS.get(remedy), label=f"{remedy} (n = {n.min()}–{n.max()})" if n.nunique() > 1
                    else f"{remedy} (n = {n.iloc[0]})")  # lines, not error-bar containers: the legend keeps this order
            ax.errorbar(d["I"], d["mean"], yerr=d["std"].fillna(0), fmt="none", capsize=3, ecolor=COLOURS.get(remedy))
            pending = g[g["seeds"] == 0]
            if len(pending):
                ax.plot([], [], ls="none", label=f"  {remedy} at I = {', '.join(str(i) for i in pending['I'])}: "
                                                  "runs in progress")
        for kind, marker, colour in (("prune", "*", "tab:red"), ("narrow", "D", "tab:brown")):
            for r in outcomes[outcomes["kind"] == kind].itertuples():
                if r.seeds:
                    ax.plot([r.I], [r.mean], marker=marker, ms=10 if marker == "*" else 6, ls="none", color=colour,
                            label=f"{r.remedy}, I = {r.I} (n = {r.seeds})")
                    ax.errorbar([r.I], [r.mean], yerr=[0 if math.isnan(r.std) else r.std], fmt="none", capsize=3,
                                ecolor=colour)
                else:
                    ax.plot([], [], ls="none", label=f"{r.remedy}, I = {r.I}: runs in progress")
        ax.axhline(100 * CHANCE, color="tab:red", ls=":", lw=1, label="chance (10 %)")
        ax.axhline(DEEP_THRESHOLD, color="0.5", ls="--", lw=0.8, label=f"verdict threshold ({DEEP_THRESHOLD:g} %)")
        integer_ticks(ax, outcomes["I"].unique())
        ax.set_ylim(0, 100)
        ax.set_xlabel("IntermediateCaps (ConvCaps) layers I")
        ax.set_ylabel("test accuracy (%), mean ± std over seeds")
        missing = int((outcomes["seeds"] == 0).sum())
        text = title or ("CapsNet[20, 8, I], Fashion-MNIST, one epoch" + (
            f" ({missing} point{'s' if missing != 1 else ''}: runs in progress)" if missing else ""))
        ax.set_title(wrap_title(text, PAGE_WIDTH_IN - 3.2))
        legend_outside(ax)
        if have.empty:
            ax.text(0.5, 0.5, "runs in progress (no row yet)", transform=ax.transAxes, ha="center", color="0.35")
    return fig


# ======================================================================================
# Cost per training image (benchmarks/bench_remedies.py)
# ======================================================================================
def load_bench(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """The committed benchmark rows, ``results/remedies/bench_<profile>.csv`` (empty when missing)."""
    path = results_root(root) / "remedies" / f"bench_{profile}.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def cost_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: the routing path, CPU time per training image (median over the timed steps, and
    their range) and its ratio to the no-remedy net's."""
    if bench.empty:
        return pd.DataFrame(columns=["routing", "ms per training image", "range", "× no remedy"])
    return pd.DataFrame({"routing": bench["routing"].to_numpy(),
                         "ms per training image": [f"{v:.0f}" for v in bench["ms_per_img"]],
                         "range": [f"{a:.0f}–{b:.0f}" for a, b in zip(bench["ms_per_img_min"],
                                                                     bench["ms_per_img_max"])],
                         "× no remedy": [f"{v:.2f}" for v in bench["ratio"]]},
                        index=pd.Index(bench["config"].to_numpy(), name="CapsNet[20, 8, 11]"))


def cost_footer(bench: pd.DataFrame, profile: str = "cpu") -> str:
    """Provenance line for :func:`cost_table`: the script, model, batch, steps, timer, machine and versions."""
    if bench.empty:
        return f"*Provenance:* no `results/remedies/bench_{profile}.csv` yet (`benchmarks/bench_remedies.py`)."
    r = bench.iloc[0]
    text = (f"*Provenance:* `benchmarks/bench_remedies.py` → `results/remedies/bench_{profile}.csv` · "
            f"CapsNet[{r['C']}, {r['D']}, {r['I']}], profile `{profile}`, batch {r['batch']} of Fashion-MNIST training "
            f"images, {r['steps']} timed steps per config after one warm-up, configs timed in turns · "
            f"{r['timing']} · "
            f"CPU {r['cpu']} (ATen {r['cpu_isa']}, kernel {r['kernel_march']}) · torch {r['torch_version']} · "
            f"capslib {r['capslib_version']} · {r['timestamp']}")
    note = r.get("note")
    return text + (f" · {note}" if isinstance(note, str) and note else "")


# ======================================================================================
# The verdict on CapsNet[20, 8, 30]
# ======================================================================================
def deep_claim(root: Optional[str | Path] = None, profile: str = "cpu",
               threshold: float = DEEP_THRESHOLD) -> dict:
    """What the verdict on "CapsNet[20, 8, 30] trains without pruning" rests on, from the rows.

    At the deepest depth of the remedies, each remedy (the length-map init included) "trains" when it has
    ≥ :data:`MIN_SEEDS` seeds, every one above ``threshold``; "fails" when any seed is at or below it;
    "running" with fewer seeds and none below; "not run yet" without rows. ``supported``: True when one
    trains; None when none does yet and one is running or none has run; else False. ``seeds``: the fewest
    seeds of the remedies that train (else the most of those that ran). The control is the unremedied net
    at the collapse study's cliff (its shallowest test point, I = 7 in profile cpu): ``control_seeds``,
    ``control_text``. ``evidence``: every remedy's seeds, as text."""
    out = depth_outcomes(root, profile)
    remedies = out[out["kind"].isin(["remedy", "init"])]
    deep_I = int(remedies["I"].max())
    deep = remedies[remedies["I"] == deep_I]
    status = {}
    for r in deep.itertuples():
        if not r.seeds:
            status[r.remedy] = "not run yet"
        elif min(r.accs) <= threshold:
            status[r.remedy] = "fails"
        else:
            status[r.remedy] = "trains" if r.seeds >= MIN_SEEDS else "running"
    names = {s: [k for k, v in status.items() if v == s] for s in ("trains", "fails", "running", "not run yet")}
    ran = deep[deep["seeds"] > 0]
    if names["trains"]:
        supported, seeds = True, int(deep[deep["remedy"].isin(names["trains"])]["seeds"].min())
    elif names["running"] or ran.empty:
        supported, seeds = None, int(ran["seeds"].max()) if len(ran) else 0
    else:
        supported, seeds = False, int(ran["seeds"].max())
    ctrl = out[(out["kind"] == "baseline") & (out["role"] == "test")].sort_values("I").head(1)
    c = ctrl.iloc[0] if len(ctrl) else None
    n_chance = sum(at_chance(a / 100) for a in c["accs"]) if c is not None else 0
    control_text = ("no row yet" if c is None or not c["seeds"] else
                    f"`{c['label']}` (`results/{c['experiment']}/{profile}.csv`): "
                    + ", ".join(f"{a:.1f}" for a in c["accs"])
                    + f" % over {c['seeds']} seeds, {n_chance} at chance")

    def line(r) -> str:
        where = f"`results/{r.experiment}/{profile}.csv`, `{r.label}`"
        if not r.seeds:
            return f"{r.remedy}: not run yet ({where})"
        return f"{r.remedy}: " + ", ".join(f"{a:.1f}" for a in r.accs) + f" % over {r.seeds} seeds ({where})"
    return dict(supported=supported, seeds=seeds, I=deep_I, threshold=threshold, status=status, **names,
                control_seeds=int(c["seeds"]) if c is not None else 0, control_at_chance=n_chance,
                control_text=control_text, evidence="; ".join(line(r) for r in deep.itertuples()))


def deep_claim_text(d: dict) -> str:
    """:func:`deep_claim` in one paragraph for the chapter: which remedies train CapsNet[20, 8, I] without
    pruning (every seed above the threshold), which do not, which have not run, and the control."""
    def names(key: str) -> str:
        return ", ".join(f"*{n}*" for n in d[key]) or "none"
    return (f"**CapsNet[20, 8, {d['I']}] without pruning.** Every seed above {d['threshold']:g} %: {names('trains')}. "
            f"Not: {names('fails')}. Fewer than {MIN_SEEDS} seeds so far: {names('running')}. Not run yet: "
            f"{names('not run yet')}. Control, the unremedied net at the cliff: {d['control_text']}. Per seed: "
            f"{d['evidence']}. The verdict is stated on the [verdict page](verdicts.ipynb).")
