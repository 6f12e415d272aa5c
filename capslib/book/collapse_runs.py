"""The committed evidence about the depth collapse, read and summarised (the collapse and verdict chapters).

Nothing here trains a model. ``results/collapse/<profile>.csv`` holds the decisive training runs
(results-store rows, one per run or pipeline stage; :mod:`capslib.experiments.results`).
:func:`collapse_points` says which points decide which claim and :func:`point_of_row` maps a row to its
point: the only places that know the point layout. :func:`load_collapse`, :func:`run_summary`,
:func:`summary_view`, :func:`runs_figure` and :func:`runs_footer` give the chapter's table and figure. Also the constants a
verdict rests on (:data:`MIN_SEEDS`, :data:`CHANCE`, :data:`VERDICTS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .params import RUNS_PROFILE
from .plots import BOOK_RC, FONT, PAGE_WIDTH_IN, book_figsize, legend_outside, wrap_title
from .tables import footer_rows

#: A verdict rests on at least this many seeds per decisive point (and on its control).
MIN_SEEDS = 3


#: Chance accuracy of a 10-class problem, and the band around it that counts as collapsed.
CHANCE = 0.10
CHANCE_BAND = 0.02


def at_chance(acc: float) -> bool:
    """Whether a test accuracy (a fraction) says the run did not learn: at most the chance band's top. Below the
    band counts too: a net whose outputs collapsed onto a wrong class scores 5-8 % on balanced test images, and
    that is no more learning than 10 %."""
    return acc <= CHANCE + CHANCE_BAND


#: The only verdicts the page states.
VERDICTS = ("reproduced", "not reproduced", "explained by …", "inconclusive", "inconclusive (smoke scale)",
            "untestable here (CIFAR-10)")


def grade(*, supported: Optional[bool], n_seeds: int, control_seen: bool, scale: str,
          explained_by: Optional[str] = None) -> str:
    """The verdict rule, in order:

    1. evidence only on CIFAR-10, which is not available here: "untestable here (CIFAR-10)";
    2. only smoke-scale rows: "inconclusive (smoke scale)" - a smoke number is never a reproduction;
    3. fewer than :data:`MIN_SEEDS` seeds at a decisive point, no control run, or no outcome yet:
       "inconclusive";
    4. the effect is absent: "not reproduced";
    5. the effect is there but the control shows another cause: "explained by <cause>";
    6. else "reproduced".
    """
    if scale == "cifar10":
        return "untestable here (CIFAR-10)"
    if scale == "smoke":
        return "inconclusive (smoke scale)"
    if supported is None or n_seeds < MIN_SEEDS or not control_seen:
        return "inconclusive"
    if not supported:
        return "not reproduced"
    if explained_by:
        return f"explained by {explained_by}"
    return "reproduced"


DATASET_LABELS = {"fashion-mnist": "Fashion-MNIST", "fashion-mnist test": "Fashion-MNIST (test images)",
                  "mnist": "MNIST", "cifar10": "CIFAR-10"}


def results_root(root: Optional[str | Path] = None) -> Path:
    """The results folder: ``root``, else :func:`capslib.experiments.results.default_results_dir`."""
    from ..experiments.results import default_results_dir

    return Path(root) if root is not None else default_results_dir()


def _rc():
    """The book's matplotlib settings (:data:`capslib.book.plots.BOOK_RC`) as a context manager."""
    import matplotlib

    return matplotlib.rc_context(BOOK_RC)


# ======================================================================================
# The decisive runs (results/collapse/<profile>.csv)
# ======================================================================================
@dataclass(frozen=True)
class CollapsePoint:
    """One point of the decisive runs: CapsNet[C, D, I] at ConvCaps std ``std``, pruned at ``pr``
    (0: unpruned), its ``role`` for the claim it decides ("test" or "control") and that claim's key."""

    label: str
    C: int
    D: int
    I: int
    pr: float
    std: float
    claim: str
    role: str
    why: str = ""

    def key(self) -> tuple:
        return (self.C, self.D, self.I, round(self.pr, 4), round(self.std, 4))


def collapse_points(profile: str = RUNS_PROFILE) -> list[CollapsePoint]:
    """The decisive points of the ``collapse`` experiment (:mod:`capslib.experiments.grids`), each with the
    claim it decides, its role (test or control) and why, as the experiment declares them."""
    from ..experiments.grids import get_experiment

    out = []
    for p in get_experiment("collapse").grid(profile):
        ov = dict(p.overrides)
        C, D = int(ov.get("C", 20)), int(ov.get("D", 8))
        I = int(p.I_after if p.I_after is not None else ov.get("I", 0))
        out.append(CollapsePoint(p.label, C, D, I, float(p.pr or 0.0), float(ov.get("init_std", 0.5)), p.claim,
                                 p.role, p.why))
    return out


def _num(v: Any, default: float = float("nan")) -> float:
    try:
        f = float(v)
        return default if math.isnan(f) else f
    except (TypeError, ValueError):
        return default


def point_of_row(row: Mapping[str, Any]) -> tuple:
    """The (C, D, I, PR, std) key of a store row: ``grid.C``/``grid.D`` (the configuration before any
    prune), I = ``I_after`` for a prune point else ``model.I``, PR = ``pr``, std = ``model.init_std``."""
    C = _num(row.get("grid.C"), _num(row.get("model.C")))
    D = _num(row.get("grid.D"), _num(row.get("model.D")))
    I_after = _num(row.get("I_after"))
    I = I_after if not math.isnan(I_after) else _num(row.get("model.I"), _num(row.get("grid.I")))
    return (int(C), int(D), int(I), round(_num(row.get("pr"), 0.0), 4), round(_num(row.get("model.init_std")), 4))


#: The stage whose row is a point's result, by point kind (others: the only stage, "train").
FINAL_STAGE = {"prune": "retrain", "depth": "depth_summary"}


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows that are a point's result: stage ``retrain`` of a prune point, ``depth_summary`` of a
    depth search, else the run's own row."""
    if df.empty:
        return df
    ok = df[df["status"].astype(str) == "ok"] if "status" in df else df
    kind = ok["kind"].astype(str) if "kind" in ok else pd.Series("train", index=ok.index)
    want = kind.map(lambda k: FINAL_STAGE.get(k, None))
    stage = ok["stage"].astype(str) if "stage" in ok else pd.Series("train", index=ok.index)
    keep = want.isna() | (stage == want)
    return ok[keep]


def load_collapse(profile: str = RUNS_PROFILE, root: Optional[str | Path] = None) -> pd.DataFrame:
    """The final rows (:func:`final_rows`) of ``<root>/collapse/<profile>.csv``; empty when it does not exist."""
    from ..experiments.results import ResultsStore

    store = ResultsStore.for_experiment("collapse", profile, root=results_root(root))
    if not store.path.is_file():
        return pd.DataFrame()
    return final_rows(store.read())


def _collapsed(row: Mapping[str, Any]) -> bool:
    """A run is collapsed when the store says so or its test accuracy is at chance (:func:`at_chance`)."""
    flag = str(row.get("collapsed", "")).strip().lower() == "true"
    acc = _num(row.get("test_acc"))
    return flag or (not math.isnan(acc) and at_chance(acc))


def run_summary(rows: pd.DataFrame, points: Optional[Sequence[CollapsePoint]] = None) -> pd.DataFrame:
    """One line per decisive point (in ``points`` order), then any other point that has rows.

    Columns: ``point``, ``claim``, ``role``, ``C``, ``D``, ``I``, ``PR``, ``init std``, ``seeds`` (number of
    distinct seeds), ``seed list``, ``test acc (%)`` (mean over seeds), ``± std`` (sample std over seeds;
    NaN with one seed), ``collapsed`` (``k/n`` seeds at chance), ``dataset``, ``profile``, ``device``,
    ``status`` ("runs in progress" when the point has no row yet, else "n seeds").
    """
    points = list(points if points is not None else collapse_points())
    labels = {p.label for p in points}
    groups: dict[Any, list[dict]] = {}
    if not rows.empty:
        for r in rows.to_dict(orient="records"):  # a row's own point label first: float64 and control rows
            lab = r.get("label")                   # share (C, D, I, PR, std) with other points
            groups.setdefault(lab if isinstance(lab, str) and lab in labels else point_of_row(r), []).append(r)
    out = []

    def line(label, claim, role, key, rs, why=""):
        C, D, I, pr, std = key
        base = {"point": label, "claim": claim, "role": role, "C": C, "D": D, "I": I, "PR": pr, "init std": std}
        if not rs:
            return {**base, "seeds": 0, "seed list": "", "test acc (%)": np.nan, "± std": np.nan,
                    "collapsed": "", "dataset": "", "profile": "", "device": "", "status": "runs in progress",
                    "why": why}
        by_seed = {}
        for r in rs:  # one result per seed: the newest row wins
            by_seed[int(_num(r.get("seed"), 0))] = r
        accs = np.array([_num(r.get("test_acc")) * 100 for r in by_seed.values()])
        n = len(by_seed)
        return {**base, "seeds": n, "seed list": _ranges(list(by_seed)),
                "test acc (%)": float(np.nanmean(accs)),
                "± std": float(np.nanstd(accs, ddof=1)) if n > 1 else np.nan,
                "collapsed": f"{sum(_collapsed(r) for r in by_seed.values())}/{n}",
                "dataset": ", ".join(dict.fromkeys(DATASET_LABELS.get(str(r.get('data.dataset', '')),
                                                                       str(r.get("data.dataset", "")))
                                                    for r in rs)),
                "profile": ", ".join(dict.fromkeys(str(r.get("profile", "")) for r in rs)),
                "device": "; ".join(dict.fromkeys(str(r.get("device_name") or r.get("device", "")) for r in rs)),
                "status": f"{n} seed{'s' if n != 1 else ''}" + ("" if n >= MIN_SEEDS else f" (< {MIN_SEEDS})"),
                "why": why}

    seen = set()
    for p in points:
        out.append(line(p.label, p.claim, p.role, p.key(), groups.get(p.label) or groups.get(p.key(), []), p.why))
        seen.update((p.key(), p.label))
    for key, rs in groups.items():
        if key not in seen and isinstance(key, tuple):
            C, D, I, pr, std = key
            out.append(line(f"C{C} D{D} I{I}" + (f" PR{pr:g}" if pr else "") + f" std{std:g}", "other", "",
                            key, rs))
    return pd.DataFrame(out)


def summary_view(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`run_summary` narrow enough for the text column: per point (the index; its label names C, I,
    PR, std and dtype) its role, seeds, test accuracy as "mean ± std" (or "runs in progress") and how many
    seeds sat at chance. Dataset, profile, device and configs go to the footer (:func:`runs_footer`)."""
    def acc(r) -> str:
        if r["seeds"] == 0:
            return "runs in progress"
        return f"{r['test acc (%)']:.1f}" + ("" if pd.isna(r["± std"]) else f" ± {r['± std']:.1f}")

    view = pd.DataFrame({"role": summary["role"].to_numpy(), "seeds": summary["seed list"].where(
        summary["seeds"] > 0, "—").to_numpy(), "test acc (%)": [acc(r) for _, r in summary.iterrows()],
        "at chance": summary["collapsed"].where(summary["seeds"] > 0, "—").to_numpy()},
        index=pd.Index(summary["point"].to_numpy(), name="point"))
    return view


def runs_footer(rows: pd.DataFrame, profile: str, note: Optional[str] = None,
                stores: Optional[str] = None) -> str:
    """Provenance line for the decisive runs, or where they will appear while there are none (``stores``:
    where they will appear, as Markdown; default the collapse store)."""
    if rows.empty:
        stores = stores or f"`results/collapse/{profile}.csv`"
        return (f"*Provenance:* no rows in {stores} yet: every point is a run in progress "
                "(nothing on this table is a measurement).")
    from .plots import provenance_text

    return provenance_text(footer_rows(rows), note=note)


def runs_figure(summary: pd.DataFrame, title: Optional[str] = None) -> Figure:
    """Mean test accuracy ± std over seeds per decisive point (bars; n seeds printed on each), chance
    level dashed; a point with no rows says "runs in progress" instead of a bar."""
    with _rc():
        n = max(len(summary), 1)
        fig = Figure(figsize=book_figsize(PAGE_WIDTH_IN, 1.2 + 0.38 * n), layout="constrained")
        ax = fig.add_subplot()
        y = np.arange(len(summary))[::-1]
        colors = {"test": "tab:blue", "control": "tab:orange", "": "0.6"}
        for yi, (_, r) in zip(y, summary.iterrows()):
            if r["seeds"] == 0:
                ax.text(CHANCE * 100 + 3, yi, "runs in progress (no row yet)", va="center", fontsize=FONT["small"],
                        color="0.35", style="italic")
                continue
            err = None if pd.isna(r["± std"]) else r["± std"]
            ax.barh(yi, r["test acc (%)"], xerr=err, color=colors.get(r["role"], "0.6"), height=0.6,
                    error_kw={"lw": 1, "capsize": 3})
            ax.text(min(r["test acc (%)"] + (err or 0) + 1, 93), yi, f"n = {r['seeds']}", va="center",
                    fontsize=FONT["small"])
        ax.axvline(CHANCE * 100, color="tab:red", ls="--", lw=1, label="chance (10 %)")
        ax.set_yticks(y)
        ax.set_yticklabels([f"{p} ({r})" if r else p for p, r in zip(summary["point"], summary["role"])])
        ax.set_xlim(0, 100)
        ax.set_xlabel("test accuracy (%), mean ± std over seeds")
        legend_outside(ax)
        if title:
            ax.set_title(wrap_title(title, PAGE_WIDTH_IN - 1.5))
    return fig


def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 4]`` -> ``"0–2, 4"``."""
    values = sorted(set(int(v) for v in values))
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}–{v}")
            start = None
    return ", ".join(out) or "none"
