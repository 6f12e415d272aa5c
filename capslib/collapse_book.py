"""The collapse chapter and the verdict page of the book (issue 10, part 5).

One job: read the committed evidence about the depth collapse, summarise it, draw it, and turn it into
one stated verdict per claim. Nothing here trains a model; the live parts are forward passes at
initialisation (:mod:`capslib.init_study`), a few seconds each on one CPU thread.

Evidence read (never hard-coded; whatever rows exist when the chapter runs):

* ``results/depth_limits/fmnist.csv`` - depth limits at initialisation (``scripts/depth_limits.py``):
  one row per (preset, C, D, PR, dtype, seed, batch), columns ``limit`` (first I whose class capsule
  lengths are exactly zero on the batch; empty: alive up to ``I_max``), ``max_depth``,
  ``predicted_limit`` (the length recurrence), ``paper_max_I``, ``paper_source``, provenance.
* ``results/collapse/<profile>.csv`` - the decisive training runs (results-store rows, one per run or
  pipeline stage; :mod:`capslib.results`). :func:`collapse_points` says which points decide which
  claim; :func:`point_of_row` maps a row to its point. These two functions are the only places that
  know the point layout.
* ``results/<table>/<profile>.csv`` of the paper-table sweeps and seed 002's depth study.

Public pieces, by chapter section:

* :func:`load_depth_limits`, :func:`depth_limit_table`, :func:`depth_limit_footer` - the
  predicted-vs-paper depth table;
* :func:`live_length_map`, :func:`length_figure` - measured vs recurrence lengths per layer;
* :func:`screen`, :func:`screen_panel`, :func:`slider_screens` - the precomputed slider panels;
* :func:`load_collapse`, :func:`run_summary`, :func:`runs_figure`, :func:`runs_footer` - the decisive runs;
* :class:`Verdict`, :func:`grade`, :func:`verdicts`, :func:`verdict_table`, :func:`verdict_markdown` -
  the verdict page.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .plots import BOOK_RC, FONT, PAGE_WIDTH_IN, book_figsize, legend_outside, wrap_title

__all__ = [
    "MIN_SEEDS",
    "CHANCE",
    "VERDICTS",
    "results_root",
    "load_depth_limits",
    "depth_limit_table",
    "depth_limit_footer",
    "paper_max_value",
    "live_length_map",
    "length_figure",
    "live_footer",
    "Screen",
    "screen",
    "screens_table",
    "screen_panel",
    "slider_screens",
    "CollapsePoint",
    "collapse_points",
    "point_of_row",
    "load_collapse",
    "final_rows",
    "run_summary",
    "runs_figure",
    "runs_footer",
    "Verdict",
    "grade",
    "verdicts",
    "verdict_table",
    "verdict_markdown",
    "verdicts_as_dicts",
]

#: A verdict rests on at least this many seeds per decisive point (and on its control).
MIN_SEEDS = 3
#: The profile of the committed decisive runs (``results/collapse/cpu.csv``, see its README).
RUNS_PROFILE = "cpu"
#: Chance accuracy of a 10-class problem, and the band around it that counts as collapsed.
CHANCE = 0.10
CHANCE_BAND = 0.02
#: The only verdicts the page states.
VERDICTS = ("reproduced", "not reproduced", "explained by …", "inconclusive", "inconclusive (smoke scale)",
            "untestable here (CIFAR-10)")
DATASET_LABELS = {"fashion-mnist": "Fashion-MNIST", "fashion-mnist test": "Fashion-MNIST (test images)",
                  "mnist": "MNIST", "cifar10": "CIFAR-10"}


def results_root(root: Optional[str | Path] = None) -> Path:
    """The results folder: ``root``, else :func:`capslib.results.default_results_dir`."""
    from .results import default_results_dir

    return Path(root) if root is not None else default_results_dir()


def _rc():
    """The book's matplotlib settings (:data:`capslib.plots.BOOK_RC`) as a context manager."""
    import matplotlib

    return matplotlib.rc_context(BOOK_RC)


# ======================================================================================
# Depth limits at initialisation (results/depth_limits/fmnist.csv)
# ======================================================================================
def load_depth_limits(root: Optional[str | Path] = None) -> pd.DataFrame:
    """Every row of ``<root>/depth_limits/fmnist.csv`` (empty DataFrame when the file is missing)."""
    path = results_root(root) / "depth_limits" / "fmnist.csv"
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path)


def paper_max_value(text: Any) -> tuple[Optional[float], str]:
    """The paper's maximum depth as printed (``"6"``, ``">30"``, ``">=10"``) -> (number, relation).

    Relation ``"="`` for an exact value, ``">"`` / ``">="`` for a bound; (None, "") when unreadable.
    """
    m = re.fullmatch(r"\s*(>=|>)?\s*(\d+)\s*", str(text))
    if not m:
        return None, ""
    return float(m.group(2)), m.group(1) or "="


def _fmt_limit(v: float, i_max: int) -> str:
    return f">{i_max}" if v > i_max else str(int(v))


def depth_limit_table(df: pd.DataFrame, dtype: Optional[str] = "float32",
                      presets: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Per (preset, C, D, PR, dtype): the measured depth limit over seeds × batches beside the paper's.

    Columns: ``preset``, ``C``, ``D``, ``PR``, ``C'`` (capsule types after the prune), ``init std``,
    ``dtype``, ``seeds`` (distinct model seeds), ``runs`` (seed × batch screens), ``first dead I``
    (min-max of the limit), ``max trainable I`` (median limit − 1; ``>=I_max`` when alive to I_max),
    ``predicted max I`` (the recurrence's, median), ``paper max I`` (as printed), ``agrees``
    ("yes" / "no" / "bound ok" / "bound violated" / "": the median max trainable I against the paper's).
    """
    if df.empty:
        return pd.DataFrame(columns=["preset", "C", "D", "PR", "C'", "init std", "dtype", "seeds", "runs",
                                     "first dead I", "max trainable I", "predicted max I", "paper max I",
                                     "agrees"])
    d = df if dtype is None else df[df["dtype"] == dtype]
    if presets is not None:
        d = d[d["preset"].isin(presets)]
    out = []
    for (preset, C, D, pr, dt), g in d.groupby(["preset", "C", "D", "pr", "dtype"], sort=False):
        i_max = int(g["I_max"].max())
        lim = pd.to_numeric(g["limit"], errors="coerce").fillna(i_max + 1)
        pred = pd.to_numeric(g["predicted_limit"], errors="coerce").fillna(i_max + 1)
        med = float(lim.median())
        ours = None if med > i_max else med - 1
        paper, rel = paper_max_value(g["paper_max_I"].iloc[0])
        if paper is None:
            agrees = ""
        elif rel == "=":
            agrees = "" if ours is None and i_max < paper else ("yes" if ours == paper else "no")
        else:  # the paper gives a bound: ours must not be below it
            lower = paper + (1 if rel == ">" else 0)
            agrees = "bound ok" if ours is None and i_max >= lower - 1 or (ours is not None and ours >= lower) \
                else ("bound violated" if ours is not None else "")
        out.append({
            "preset": preset, "C": int(C), "D": int(D), "PR": float(pr), "C'": int(g["C_eff"].iloc[0]),
            "init std": float(g["init_std"].iloc[0]), "dtype": dt, "seeds": int(g["seed"].nunique()),
            "runs": len(g), "first dead I": f"{_fmt_limit(lim.min(), i_max)}–{_fmt_limit(lim.max(), i_max)}",
            "max trainable I": f">={i_max}" if ours is None else str(int(math.floor(ours))),
            "predicted max I": f">={i_max}" if pred.median() > i_max else str(int(pred.median() - 1)),
            "paper max I": str(g["paper_max_I"].iloc[0]), "agrees": agrees,
        })
    return pd.DataFrame(out)


def depth_limit_footer(df: pd.DataFrame, note: Optional[str] = None) -> str:
    """Provenance line (Markdown) for numbers from the depth-limit rows: dataset, images, seeds, device,
    capslib version, and that these are initialisation screens, not trained models."""
    if df.empty:
        return "*Provenance:* no rows in `results/depth_limits/fmnist.csv` yet."
    ds = ", ".join(DATASET_LABELS.get(x, x) for x in dict.fromkeys(df["dataset"].astype(str)))
    seeds = sorted(int(s) for s in df["seed"].unique())
    batches = sorted(int(b) for b in df["batch"].unique())
    bs = ", ".join(str(int(b)) for b in df["batch_size"].unique())
    dev = "; ".join(str(x) for x in dict.fromkeys(df["device_name"].astype(str)))
    ver = ", ".join(str(x) for x in dict.fromkeys(df["capslib_version"].astype(str)))
    text = (f"*Provenance:* {ds}, batches {_ranges(batches)} of {bs} images · initialisation screen, no training "
            f"(`results/depth_limits/fmnist.csv`, {len(df)} rows) · seeds {_ranges(seeds)} · device {dev} · "
            f"capslib {ver}")
    return text + (f" · {note}" if note else "")


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


def live_footer(seed: int, n_images: int, note: Optional[str] = None) -> str:
    """Provenance line (Markdown) for a figure or table computed live in this build: images, seed, this
    machine's CPU and capslib version; initialisation only, so no profile applies."""
    import torch

    from .provenance import provenance

    p = provenance(torch.device("cpu"))
    text = (f"*Provenance:* Fashion-MNIST, test images 0–{n_images - 1} · computed live when this page was built, "
            f"at initialisation (no training; no profile applies) · seed {seed} · device "
            f"{p.get('device_name') or 'cpu'} · capslib {p['capslib_version']}")
    return text + (f" · {note}" if note else "")


# ======================================================================================
# Lengths per layer, measured and predicted (live, a few seconds)
# ======================================================================================
def _model_config(C: int, D: int, I: int, std: float, preset: str = "authors", pr: float = 0.0):
    """CapsNet[C, D, I] with the preset's model fields, ConvCaps init std ``std`` and, for ``pr > 0``,
    the C' and backbone widths a prune at ratio ``pr`` leaves (:func:`capslib.init_study.pruned_model_config`)."""
    from .config import PRESETS, ModelConfig
    from .init_study import pruned_model_config

    cfg = ModelConfig(C=C, D=D, I=I).replace(**PRESETS[preset]["model"]).replace(init_std=std)
    return pruned_model_config(cfg, pr) if pr > 0 else cfg


def live_length_map(C: int = 20, D: int = 8, I: int = 8, std: float = 0.5, preset: str = "default",
                    seed: int = 0, batch=None) -> pd.DataFrame:
    """:func:`capslib.init_study.length_map` of CapsNet[C, D, I] at ConvCaps init std ``std`` on one batch,
    one seed (one forward at init, under ``torch.no_grad``). ``batch``: (x, y) or x; default the first 32
    Fashion-MNIST test images. ``attrs`` record the config for captions."""
    from .init_study import eval_batches, length_map

    batch = eval_batches(1, 32)[0] if batch is None else batch
    cfg = _model_config(C, D, I, std, preset)
    table = length_map(cfg, [batch], seeds=(seed,))
    table.attrs.update(C=C, D=D, I=I, std=std, preset=preset, seed=seed, class_std=cfg.class_std,
                       eps=cfg.squash_eps, layout=cfg.convcaps_layout)
    return table


def length_figure(tables: Mapping[str, pd.DataFrame], title: Optional[str] = None) -> Figure:
    """Measured (dots) vs recurrence (dashes) mean capsule length per layer, one panel per table of
    :func:`live_length_map`, log axis. A layer measured *exactly* zero is a red triangle on the floor."""
    with _rc():
        n = len(tables)
        fig = Figure(figsize=book_figsize(PAGE_WIDTH_IN, 3.6), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
        for ax, (name, t) in zip(axes, tables.items()):
            d = t["depth"].to_numpy()
            meas = t["measured"].to_numpy(dtype=float)
            pred = 10.0 ** t["log10_predicted"].to_numpy(dtype=float)
            pos = meas > 0
            ax.set_yscale("log")
            shown = np.concatenate([meas[pos], pred[pred > 0]])
            floor = max(1e-60, float(shown.min()) / 100) if shown.size else 1e-45
            ax.plot(d, np.clip(pred, floor, None), "--", color="0.45", marker=".", label="recurrence (eqs. 1–2)")
            ax.plot(d[pos], meas[pos], "o-", color="tab:blue", ms=4, label="measured at init")
            if (~pos).any():
                ax.plot(d[~pos], np.full((~pos).sum(), floor * 10), "v", color="tab:red", ms=7,
                        label="measured: exactly 0")
            ax.axhline(0.01, color="0.3", lw=0.8, ls=":")
            ax.text(d[-1], 0.005, "dead ≤ 0.01", fontsize=FONT["small"], color="0.3", va="top", ha="right")
            ax.set_xticks(d, [s.replace("inter", "") if s.startswith("inter") else ("prim" if s == "primary" else s) for s in t["layer"]],
                          fontsize=FONT["small"])
            ax.set_xlabel("capsule layer (primary, ConvCaps 1…I, class)")
            ax.set_ylim(floor, 3)
            ax.set_title(wrap_title(name, PAGE_WIDTH_IN / n - 0.3), fontsize=FONT["base"])
            ax.grid(True, which="major", alpha=0.3)
        axes[0].set_ylabel("mean capsule length")
        axes[-1].legend(loc="lower left", fontsize=FONT["small"], frameon=True)
        if title:
            fig.suptitle(wrap_title(title, PAGE_WIDTH_IN, FONT["suptitle"]))
    return fig


# ======================================================================================
# Slider panels: one cheap forward screen per (C, D, PR, init std)
# ======================================================================================
@dataclass
class Screen:
    """One initialisation screen: CapsNet[C, D] (C' after a prune at ``pr``) at ConvCaps std ``std``.

    ``layer_mean``: mean capsule length of primary, ConvCaps 1..I_max (measured, one forward);
    ``predicted``: log10 of the recurrence's mean length of the same layers; ``limit``: first I whose class
    lengths are all exactly zero (None: alive to I_max); ``paper``: the paper's maximum depth, as printed.
    """

    C: int
    D: int
    pr: float
    std: float
    C_eff: int
    I_max: int
    layer_mean: list[float]
    predicted: list[float]
    limit: Optional[int]
    paper: str = ""
    preset: str = "authors"

    @property
    def label(self) -> str:
        pr = f", PR {self.pr:g} → C' = {self.C_eff}" if self.pr else ""
        return f"CapsNet[C={self.C}, D={self.D}]{pr}, ConvCaps std {self.std:g}"


#: The paper's maximum depth per (C, D, PR), for panel captions (Table 5, Table 2, Fig. 6).
def _paper_max(C: int, D: int, pr: float) -> str:
    from .experiments import TABLE5

    fig6 = {0.125: "7", 0.25: "9", 0.375: "12"}
    if pr:
        return fig6.get(pr, "") if (C, D) == (20, 8) else ""
    v = TABLE5.get((C, D))
    return "" if v is None else str(v)


def screen(C: int, D: int, std: float, x, pr: float = 0.0, seed: int = 0, I_max: int = 10,
           preset: str = "authors") -> Screen:
    """One forward screen at initialisation on images ``x`` (B, 1, 28, 28): per-layer mean lengths, the
    depth limit (:func:`capslib.init_study.depth_limit`) and the recurrence (measured PrimaryCaps start).
    One thread, ``torch.no_grad``; a few seconds on one CPU core for C = 20, D = 8, I_max = 10, B = 32."""
    import torch

    from .init_study import depth_limit, length_recurrence, primary_m2_maps
    from .notebook import cpu_threads

    cfg = _model_config(C, D, 0, std, preset, pr)
    with cpu_threads(1), torch.no_grad():
        res = depth_limit(cfg, x, seed=seed, I_max=I_max, check_prefix=False)
        m2 = primary_m2_maps(cfg, x, seed)
    rec = length_recurrence(cfg.replace(I=I_max), primary_m2=m2)
    return Screen(C=C, D=D, pr=pr, std=std, C_eff=cfg.C, I_max=I_max, layer_mean=list(res.layer_mean),
                  predicted=rec["log10_mean"].to_list()[:-1], limit=res.limit, paper=_paper_max(C, D, pr),
                  preset=preset)


def screen_panel(s: Screen, title: Optional[str] = None) -> Figure:
    """A slider panel: mean capsule length per ConvCaps layer of one :class:`Screen` (log axis), the
    recurrence beside it, the first exactly-zero layer, and the depth limit against the paper's."""
    with _rc():
        fig = Figure(figsize=book_figsize(7.0, 3.6), layout="constrained")
        ax = fig.add_subplot()
        d = np.arange(len(s.layer_mean))
        meas = np.asarray(s.layer_mean, dtype=float)
        pred = 10.0 ** np.asarray(s.predicted, dtype=float)
        pos = meas > 0
        floor = 1e-60  # the same axis on every panel, so the slider compares like with like
        ax.set_yscale("log")
        ax.plot(d, np.clip(pred, floor, None), "--", color="0.45", marker=".", label="recurrence")
        ax.plot(d[pos], meas[pos], "o-", color="tab:blue", ms=4, label="measured at init")
        if (~pos).any():
            ax.plot(d[~pos], np.full((~pos).sum(), floor * 10), "v", color="tab:red", ms=7, label="exactly 0")
        ax.axhline(0.01, color="0.3", lw=0.8, ls=":")
        ax.set_ylim(floor, 3)
        ax.set_xticks(d, ["prim"] + [str(i) for i in d[1:]])
        ax.set_xlabel("ConvCaps layer (0 = PrimaryCaps)")
        ax.set_ylabel("mean capsule length")
        nb = "\u00a0"  # no line break inside "I = 7" when the title wraps
        ours = f"class lengths exactly 0 from I{nb}={nb}{s.limit} (max trainable I{nb}={nb}{s.limit - 1})" \
            if s.limit is not None else f"class lengths non-zero up to I{nb}={nb}{s.I_max}"
        paper = f"; paper's max I: {s.paper}" if s.paper else ""
        ax.set_title(wrap_title(title or f"{s.label}: {ours}{paper}", 5.6), fontsize=FONT["base"])
        legend_outside(ax)
    return fig


def slider_screens(x, cds: Sequence[tuple[int, int]] = ((20, 8), (20, 6), (10, 8)),
                   stds: Sequence[float] = (0.3, 0.5, 0.7), prs: Sequence[float] = (0.125, 0.25, 0.375),
                   pr_std: float = 0.5, seed: int = 0, I_max: int = 10,
                   preset: str = "authors") -> tuple[dict, dict]:
    """The chapter's precomputed panels: ``(grid, by_pr)``.

    ``grid[("C/D", std)]`` for every C/D in ``cds`` and std in ``stds``; ``by_pr[PR]`` for CapsNet[20, 8]
    at ``pr_std`` and PR 0 plus ``prs`` (PR 0 reuses the grid's screen). Values are :class:`Screen`;
    len(cds)·len(stds) + len(prs) forwards in all (12 with the defaults).
    """
    grid = {(f"{c}/{d}", float(s)): screen(c, d, s, x, seed=seed, I_max=I_max, preset=preset)
            for c, d in cds for s in stds}
    base = grid.get(("20/8", float(pr_std))) or screen(20, 8, pr_std, x, seed=seed, I_max=I_max, preset=preset)
    by_pr = {0.0: base}
    for pr in prs:
        by_pr[float(pr)] = screen(20, 8, pr_std, x, pr=pr, seed=seed, I_max=I_max, preset=preset)
    return grid, by_pr


def screens_table(grid: Mapping[tuple, Screen], by_pr: Mapping[float, Screen]) -> pd.DataFrame:
    """The slider panels as one table (for print and for readers without JavaScript): per screen C, D, PR,
    C', init std, first exactly-zero ConvCaps layer, depth limit (first I with class lengths exactly 0),
    the max trainable I it implies and the paper's maximum depth."""
    seen, out = set(), []
    for s in list(grid.values()) + list(by_pr.values()):
        key = (s.C, s.D, s.pr, s.std)
        if key in seen:
            continue
        seen.add(key)
        zero = next((i for i, v in enumerate(s.layer_mean) if i > 0 and v == 0.0), None)
        out.append({"C": s.C, "D": s.D, "PR": f"{s.pr:g}", "C'": s.C_eff, "init std": s.std,
                    "first all-zero ConvCaps layer": "—" if zero is None else zero,
                    "depth limit (class = 0 from I)": f">{s.I_max}" if s.limit is None else s.limit,
                    "max trainable I": f">={s.I_max}" if s.limit is None else s.limit - 1,
                    "paper max I": s.paper or "—"})
    return pd.DataFrame(out).astype({"first all-zero ConvCaps layer": str, "depth limit (class = 0 from I)": str,
                                     "max trainable I": str})


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


def _fallback_points() -> list[CollapsePoint]:
    """The decisive runs as designed (issue 10), used while ``capslib.experiments`` has no ``collapse``
    experiment: CapsNet[20, 8] at the authors' ConvCaps std 0.5 (where the init screen puts the limit at
    the paper's), I = 6 and 7; I = 7 pruned at PR 0.125 / 0.25 / 0.375; and the control for the rescue:
    fresh, unpruned CapsNet[C', 8, 7] with the C' each prune leaves (authors' rule: 18, 15, 13)."""
    pts = [
        CollapsePoint("C20 D8 I6", 20, 8, 6, 0.0, 0.5, "collapse", "control",
                      "one layer below the cliff: must train"),
        CollapsePoint("C20 D8 I7", 20, 8, 7, 0.0, 0.5, "collapse", "test", "the paper's collapse: must sit at chance"),
    ]
    for pr in (0.125, 0.25, 0.375):
        pts.append(CollapsePoint(f"C20 D8 I7 PR{pr:g}", 20, 8, 7, pr, 0.5, "rescue", "test",
                                 "CCM + CHIP prune of the base model, 7 fresh ConvCaps"))
    for c in (18, 15, 13):
        pts.append(CollapsePoint(f"C{c} D8 I7 fresh", c, 8, 7, 0.0, 0.5, "rescue", "control",
                                 "no pruning, just fewer capsule types (C' of a prune)"))
    return pts


def collapse_points(profile: str = RUNS_PROFILE) -> list[CollapsePoint]:
    """The decisive points and what each decides: from the ``collapse`` experiment of
    :mod:`capslib.experiments` when it exists (its point labels; role "control" when the label says so),
    else :func:`_fallback_points`. The one place to adapt when the experiment's layout changes."""
    from . import experiments

    exp = experiments.EXPERIMENTS.get("collapse")
    if exp is None:
        return _fallback_points()
    fallback = {p.key(): p for p in _fallback_points()}
    out = []
    for p in exp.grid(profile):
        ov = dict(p.overrides)
        C, D = int(ov.get("C", 20)), int(ov.get("D", 8))
        I = int(p.I_after if p.I_after is not None else ov.get("I", 0))
        std = float(ov.get("init_std", 0.5))
        pr = float(p.pr or 0.0)
        label = p.label or f"C{C} D{D} I{I}" + (f" PR{pr:g}" if pr else "")
        claim, role, why = _claim_of(label, C, I, pr, str(ov.get("dtype", "float32")),
                                     fallback.get((C, D, I, round(pr, 4), round(std, 4))))
        out.append(CollapsePoint(label, C, D, I, pr, std, claim, role, why))
    return out


def _claim_of(label: str, C: int, I: int, pr: float, dtype: str, known: Optional[CollapsePoint]) -> tuple:
    """(claim, role, why) of an experiment point, from what its label and config say it is: float64 runs
    test precision, the remedy its own claim, the pretrained-unpruned and same-width-from-scratch runs are
    the rescue's controls, a prune the rescue's test, and C20 from scratch the collapse (control below
    the limit, test at and beyond it)."""
    low = label.lower()
    if dtype == "float64" or "float64" in low:
        return "precision", "test", "the same net in float64: does the cliff move by more than one layer?"
    if "remedy" in low:
        return "remedy", "test", "no pruning: an init scale chosen from the length map, at ≥ 1.5× the limit"
    if "pretrained" in low or "control" in low or "fresh" in low or ("from scratch" in low and C != 20):
        return "rescue", "control", "no CHIP selection: decides whether pruning or fewer types C′ rescues"
    if pr:
        return "rescue", "test", "CCM + CHIP prune of the base model, fresh ConvCaps"
    if known is not None:
        return known.claim, known.role, known.why
    return "collapse", ("control" if "(l-1)" in low else "test"), ""


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
    from .results import ResultsStore

    store = ResultsStore.for_experiment("collapse", profile, root=results_root(root))
    if not store.path.is_file():
        return pd.DataFrame()
    return final_rows(store.read())


def _collapsed(row: Mapping[str, Any]) -> bool:
    """A run is collapsed when the store says so or its test accuracy is within 2 points of chance."""
    flag = str(row.get("collapsed", "")).strip().lower() == "true"
    acc = _num(row.get("test_acc"))
    return flag or (not math.isnan(acc) and abs(acc - CHANCE) <= CHANCE_BAND)


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


def runs_footer(rows: pd.DataFrame, profile: str, note: Optional[str] = None) -> str:
    """Provenance line for the decisive runs, or where they will appear while there are none."""
    if rows.empty:
        return (f"*Provenance:* no rows in `results/collapse/{profile}.csv` yet: every point is a run in progress "
                "(nothing on this table is a measurement).")
    from .figures import footer_rows
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


# ======================================================================================
# Verdicts
# ======================================================================================
@dataclass
class Verdict:
    """One claim and what the committed rows say about it.

    ``verdict`` is one of :data:`VERDICTS` (``explained by …`` spelled out); ``evidence``: which rows
    (files, dataset, profile, seeds, device) and what they show; ``scale``: the scale of that evidence;
    ``seeds``: seeds per decisive point (min over points; 0 when none); ``control``: the run that could
    refute the claim; ``would_change``: what would change the verdict (for "inconclusive": which
    committed rows would decide it).
    """

    claim: str
    source: str
    verdict: str
    evidence: str
    scale: str
    seeds: int
    control: str
    would_change: str
    paper: str = ""
    details: dict = field(default_factory=dict)


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


#: What a rescue control that trains shows: a narrower net from scratch (C' < 20), or the C = 20 net on
#: the CCM-trained backbone with fresh ConvCaps, unpruned.
_RESCUE_CAUSE_NARROW = "fewer capsule types C' (a larger per-layer length gain ≈ 9σ²D/C')"
_RESCUE_CAUSE_BACKBONE = "the trained backbone (the unpruned C = 20 net on it trains too)"


def _collapse_pair(summary: pd.DataFrame) -> tuple[Optional[pd.Series], Optional[pd.Series]]:
    """(below, at) the collapse: the collapse claim's control point (one layer below the limit) and its
    shallowest test point (at the limit), whatever the points are labelled."""
    pts = summary[summary["claim"] == "collapse"] if "claim" in summary else summary.iloc[0:0]
    ctrl, test = pts[pts["role"] == "control"], pts[pts["role"] == "test"]
    below = ctrl.sort_values("I").iloc[-1] if len(ctrl) else None
    at = test.sort_values("I").iloc[0] if len(test) else None
    return below, at


def _frac(collapsed: str) -> Optional[float]:
    if not collapsed:
        return None
    k, n = collapsed.split("/")
    return int(k) / int(n) if int(n) else None


def _limits_row(table: pd.DataFrame, preset: str, C: int, D: int, pr: float = 0.0) -> Optional[pd.Series]:
    if table.empty:
        return None
    hit = table[(table["preset"] == preset) & (table["C"] == C) & (table["D"] == D) & (table["PR"] == pr)]
    return None if hit.empty else hit.iloc[0]


def _labels(summary: pd.DataFrame, claim: str, role: Optional[str] = None) -> str:
    """The labels of the points deciding ``claim`` (of one ``role`` if given), for a verdict's text."""
    rows = summary[(summary["claim"] == claim) & ((summary["role"] == role) if role else True)]
    return " / ".join(f"`{p}`" for p in rows["point"]) or "(none in the grid)"


def _store_grade(scale: str, seeds: int) -> str:
    """The verdict of a claim that rests on a results store's rows alone (no decisive point): smoke and
    missing stores are inconclusive, and so is anything else until a point decides it."""
    return grade(supported=None, n_seeds=seeds, control_seen=False,
                 scale=scale if scale in ("smoke", "none") else "full")


def _points_text(summary: pd.DataFrame, claim: str) -> str:
    rows = summary[summary["claim"] == claim]
    parts = []
    for _, r in rows.iterrows():
        if r["seeds"] == 0:
            parts.append(f"{r['point']} ({r['role']}): runs in progress")
        else:
            sd = "" if pd.isna(r["± std"]) else f" ± {r['± std']:.1f}"
            parts.append(f"{r['point']} ({r['role']}): {r['test acc (%)']:.1f}{sd} % over {r['seeds']} seed{'s' if r['seeds'] != 1 else ''} "
                         f"({r['seed list']}), collapsed {r['collapsed']}, {r['dataset']}, profile {r['profile']}, "
                         f"{r['device']}")
    return "; ".join(parts)


def _store_scale(root: Path, table: str) -> tuple[str, list[str], int]:
    """(scale, profiles with rows, max seeds) of ``results/<table>/``: "full" when an fmnist or paper store
    has rows, "smoke" when only smoke rows exist, "none" otherwise."""
    found, seeds = [], 0
    for prof in ("paper", "fmnist", "smoke"):
        p = root / table / f"{prof}.csv"
        if p.is_file():
            df = pd.read_csv(p)
            if len(df):
                found.append(prof)
                if "seed" in df:
                    seeds = max(seeds, int(df["seed"].nunique()))
    scale = "full" if {"paper", "fmnist"} & set(found) else ("smoke" if found else "none")
    return scale, found, seeds


def _seed002_smoke_text(root: Path) -> str:
    """What seed 002's smoke rows show: mean dead share of the ConvCaps types per routing and depth."""
    p = root / "seed002_depth" / "smoke.csv"
    if not p.is_file():
        return "no rows"
    df = pd.read_csv(p)
    parts = []
    for routing, g in df.groupby("routing", sort=False):
        cells = []
        for _, r in g.sort_values("depth").iterrows():
            try:
                dead = json.loads(r["dead_002"])
            except (TypeError, ValueError):
                continue
            inter = [v for k, v in dead.items() if k.startswith("inter")]
            if inter:
                cells.append(f"I={int(r['depth'])}: {100 * np.mean(inter):.0f} %")
        parts.append(f"{routing} " + ", ".join(cells))
    return "; ".join(parts)


def verdicts(runs_profile: str = RUNS_PROFILE, root: Optional[str | Path] = None,
             summary: Optional[pd.DataFrame] = None, limits: Optional[pd.DataFrame] = None) -> list[Verdict]:
    """One :class:`Verdict` per claim, from the committed rows under ``root`` (default ``results/``).

    ``summary`` (:func:`run_summary` of the decisive runs) and ``limits`` (:func:`depth_limit_table`) may
    be passed in (tests); by default they are read from ``collapse/<runs_profile>.csv`` and
    ``depth_limits/fmnist.csv``.
    """
    root = results_root(root)
    if summary is None:
        summary = run_summary(load_collapse(runs_profile, root), collapse_points(runs_profile))
    raw_limits = load_depth_limits(root) if limits is None else None
    if limits is None:
        limits = depth_limit_table(raw_limits)
    store = f"`results/collapse/{runs_profile}.csv`"
    out: list[Verdict] = []

    # --- 1. CapsNet[20, 8] collapses at I >= 7 (Table 2) ----------------------------------------------
    i6, i7 = _collapse_pair(summary)
    n = min(int(i6["seeds"]) if i6 is not None else 0, int(i7["seeds"]) if i7 is not None else 0)
    f6 = _frac(i6["collapsed"]) if i6 is not None and i6["seeds"] else None
    f7 = _frac(i7["collapsed"]) if i7 is not None and i7["seeds"] else None
    supported = None if f6 is None or f7 is None else (f7 == 1.0 and f6 == 0.0)
    lim = _limits_row(limits, "authors", 20, 8)
    init = (f"initialisation screen, authors' settings (ConvCaps std 0.5, class std 0.1, ε 1e-6, their layouts), "
            f"float32: first exactly-zero class layer at I = {lim['first dead I']} over {lim['runs']} screens "
            f"({lim['seeds']} seeds), i.e. max trainable I = {lim['max trainable I']} "
            f"(paper: {lim['paper max I']})") if lim is not None else "no initialisation-screen row yet"
    explained = "the length cliff at initialisation (class lengths exactly 0, gradient exactly 0)" \
        if supported and lim is not None and lim["max trainable I"] == "6" else None
    out.append(Verdict(
        claim="CapsNet[C=20, D=8] collapses to chance at I ≥ 7 and trains at I = 6",
        source="paper 000, Table 2, Table 3 (PR 0), Fig. 2",
        paper="I = 6: 76.2 %; I = 7..10: 10 % (CIFAR-10)",
        verdict=grade(supported=supported, n_seeds=n, control_seen=i6 is not None and i6["seeds"] > 0,
                      scale="full", explained_by=explained),
        evidence=f"{_points_text(summary, 'collapse')}. Mechanism: {init} (`results/depth_limits/fmnist.csv`).",
        scale=f"Fashion-MNIST, paper-scale CapsNet[20, 8, I], profile {runs_profile}",
        seeds=n,
        control="CapsNet[20, 8, 6] with the same init and budget must train (else the collapse is not specific "
                "to I ≥ 7); the init std (0.3 collapses earlier, 0.7 not at all: slider below) is the lever.",
        would_change=(f"Decided by {store} rows of points {_labels(summary, 'collapse', 'control')} (below the "
                      f"limit) and {_labels(summary, 'collapse', 'test')} (at and beyond it), ≥ {MIN_SEEDS} seeds "
                      "each: reproduced if every seed at the limit sits at chance and no seed below it does; not "
                      "reproduced if the limit's depth trains in any seed or the depth below it collapses. It is CIFAR-10 in the paper: a Fashion-MNIST "
                      "result tests the mechanism, not the paper's accuracies."),
        details={"supported": supported, "init": init}))

    # --- 2. PR 0.125-0.375 rescues I = 7 (Table 3) ----------------------------------------------------
    tests = summary[(summary["claim"] == "rescue") & (summary["role"] == "test")]
    ctrls = summary[(summary["claim"] == "rescue") & (summary["role"] == "control")]
    n_t = int(tests["seeds"].min()) if len(tests) else 0
    n_c = int(ctrls["seeds"].min()) if len(ctrls) else 0
    rescued = None
    if len(tests) and (tests["seeds"] > 0).all():
        rescued = all(_frac(c) == 0.0 for c in tests["collapsed"])
    ctrl_trains, causes = None, []
    if len(ctrls) and (ctrls["seeds"] > 0).all():
        trained = ctrls[[_frac(c) == 0.0 for c in ctrls["collapsed"]]]
        ctrl_trains = bool(len(trained))
        for C_ctrl in sorted(set(int(c) for c in trained["C"])):  # each control that trains: what it changes
            causes.append(_RESCUE_CAUSE_NARROW if C_ctrl != 20 else _RESCUE_CAUSE_BACKBONE)
    base_collapses = f7 == 1.0 if f7 is not None else None
    supported = None if rescued is None or base_collapses is None else (rescued and base_collapses)
    out.append(Verdict(
        claim="Pruning at PR 0.125–0.375 rescues CapsNet[C=20, D=8, I=7]",
        source="paper 000, Table 3, Figs. 4–5",
        paper="I = 7: 10 % unpruned, 79.3 / 79.6 / 79.2 % at PR 0.125 / 0.25 / 0.375 (CIFAR-10)",
        verdict=grade(supported=supported, n_seeds=min(n_t, n_c, n), control_seen=n_c > 0, scale="full",
                      explained_by=(" and ".join(dict.fromkeys(causes)) + ", not by which channels CCM + CHIP "
                                    "keep") if ctrl_trains else None),
        evidence=_points_text(summary, "rescue") + ". At initialisation a prune is a smaller, freshly initialised "
                 "CapsNet[C', 8]: see the PR slider above.",
        scale=f"Fashion-MNIST, paper-scale CapsNet[20, 8, 7], profile {runs_profile}",
        seeds=min(n_t, n_c, n),
        control=f"{_labels(summary, 'rescue', 'control')}: no CHIP selection (a fresh, unpruned CapsNet[C', 8, 7] "
                "with the C' a prune leaves, and the pretrained backbone kept whole). If they train too, the rescue "
                "is explained by C' or by the pretrained backbone, not by pruning.",
        would_change=(f"Decided by {store} rows of {_labels(summary, 'rescue', 'test')} and the controls, "
                      f"≥ {MIN_SEEDS} seeds each: reproduced if the pruned models train and every control "
                      "collapses; explained by what a control changes if it trains too (fewer types C′ from "
                      "scratch, or the trained backbone kept whole); not reproduced if the pruned models collapse."),
        details={"rescued": rescued, "control_trains": ctrl_trains}))

    # --- 3. Higher PR allows more depth (Fig. 6) ------------------------------------------------------
    pr_rows = [(pr, _limits_row(limits, "authors", 20, 8, pr)) for pr in (0.0, 0.125, 0.25, 0.375)]
    have = [(pr, r) for pr, r in pr_rows if r is not None]
    cp = "C'"
    init_txt = ("initialisation screen, authors' settings, float32: max trainable I " +
                ", ".join(f"PR {pr:g} (C' = {r[cp]}): {r['max trainable I']} over {r['seeds']} "
                          f"seeds (paper {r['paper max I']})" for pr, r in have)) if have else \
        "no initialisation-screen rows for the authors' pruned configs yet"
    dl = summary[(summary["claim"] == "depth")] if "claim" in summary else summary.iloc[0:0]
    out.append(Verdict(
        claim="The higher the pruning ratio, the deeper CapsNet[C=20, D=8] can go (max I 6 → 7, 9, 12)",
        source="paper 000, Fig. 6, §4.3",
        paper="max I: 6 (PR 0), 7 (0.125), 9 (0.25), 12 (0.375) (CIFAR-10)",
        verdict=grade(supported=None, n_seeds=int(dl["seeds"].min()) if len(dl) else 0, control_seen=False,
                      scale="full"),
        evidence=init_txt + " (`results/depth_limits/fmnist.csv`). No trained depth search with pruning at "
                 "paper scale is committed.",
        scale="Fashion-MNIST, initialisation screens only",
        seeds=int(have[0][1]["seeds"]) if have else 0,
        control="The same depth search on fresh, unpruned CapsNet[C', 8] (C' = 18, 15, 13): if it reaches the "
                "same depths, depth follows C', not pruning.",
        would_change=("Decided by trained depth searches with pruning (points of kind 'depth' at PR 0.125, "
                      f"0.25, 0.375 and their C' controls, ≥ {MIN_SEEDS} seeds, in {store} or "
                      "`results/table5/fmnist.csv`). The init screen alone predicts, it does not decide: a "
                      "pruned model keeps its trained backbone, which the screen cannot see."),
        details={"init": init_txt}))

    # --- 4. Table 1's trends --------------------------------------------------------------------------
    scale1, profs1, seeds1 = _store_scale(root, "table1")
    out.append(Verdict(
        claim="Table 1's trends: accuracy rises then falls with PR; doubling C or D raises accuracy",
        source="paper 000, Table 1, §4",
        paper="e.g. [C=10, D=8]: 73.92 % (PR 0) → 74.71 % (PR 0.5) → 73.84 % (PR 0.75) (CIFAR-10)",
        verdict=_store_grade(scale1, seeds1),
        evidence=(f"`results/table1/` holds only {', '.join(profs1) or 'no'} rows "
                  f"({seeds1} seed{'s' if seeds1 != 1 else ''}; smoke: CapsNet[C=8, D=4 and 8], one epoch, "
                  "Fashion-MNIST subset): a code-path check, not a test of the trend."),
        scale="smoke" if scale1 == "smoke" else scale1,
        seeds=seeds1,
        control="PR 0 trained for the same total epochs as base + CCM + retrain (the pruned cells get three "
                "times the training), so that a gain is not just more training.",
        would_change=(f"`results/table1/fmnist.csv` with ≥ {MIN_SEEDS} seeds per cell would test the trends on "
                      "Fashion-MNIST; the paper's accuracies themselves are CIFAR-10 and untestable here. "
                      "Differences of 0.2–1.5 points need their seed spread to mean anything."),
        details={"profiles": profs1}))

    # --- 5. Table 5's limits --------------------------------------------------------------------------
    cfgs5 = [(20, 10), (20, 8), (20, 6), (16, 6), (10, 6), (10, 8)]
    t5 = [(c, d, _limits_row(limits, "authors", c, d)) for c, d in cfgs5]
    t5_txt = ", ".join(f"[{c}, {d}]: {r['max trainable I']} (paper {r['paper max I']}, {r['seeds']} seeds)"
                       for c, d, r in t5 if r is not None)
    missing5 = [f"[{c}, {d}]" for c, d, r in t5 if r is None]
    scale5, profs5, seeds5 = _store_scale(root, "table5")
    out.append(Verdict(
        claim="Table 5's maximum depths without pruning: 4 to > 30, deeper with larger D at fixed C and with "
              "smaller C at fixed D",
        source="paper 000, Table 5",
        paper="[20,10]: 8, [20,8]: 6, [20,6]: 4, [16,6]: 5, [10,6]: 7, [10,8]: > 30 (CIFAR-10)",
        verdict=grade(supported=None, n_seeds=0, control_seen=False,
                      scale="smoke" if scale5 == "smoke" and not any(r is not None for _, _, r in t5) else "full"),
        evidence=("Initialisation screen, authors' settings, float32, max trainable I: " + (t5_txt or "none yet")
                  + (f"; not screened yet: {', '.join(missing5)}" if missing5 else "")
                  + f" (`results/depth_limits/fmnist.csv`). Trained depth searches: `results/table5/` holds "
                  f"{', '.join(profs5) or 'no'} rows only."),
        scale="Fashion-MNIST initialisation screens; smoke-scale training",
        seeds=min((int(r["seeds"]) for _, _, r in t5 if r is not None), default=0),
        control="The init screen in float64 (a float32 underflow would move the limit) and at the default std "
                "0.3 (every config collapses at 4–5 layers: the limits are set by the init, not by C and D alone).",
        would_change=(f"`results/table5/fmnist.csv` (trained depth searches, ≥ {MIN_SEEDS} seeds per config) "
                      "decides it; until then the init screen is a prediction. A trained limit one layer below "
                      "the screen's is expected where the PrimaryCaps gradient is below Adam's ε."),
        details={"missing": missing5}))

    # --- 6. Seed 002 ----------------------------------------------------------------------------------
    scale2, profs2, seeds2 = _store_scale(root, "seed002_depth")
    out.append(Verdict(
        claim="Dead capsules grow with depth under EM, self- and VB routing (and accuracy falls)",
        source="seed 002 (Everett et al.), Figs. 1–5",
        paper="more dead capsules at more ConvCaps layers, 1..10, on MNIST, Fashion-MNIST, CIFAR-10, "
              "smallNORB, ImageWoof (figures, no table)",
        verdict=_store_grade(scale2, seeds2),
        evidence=(f"`results/seed002_depth/` holds {', '.join(profs2) or 'no'} rows only ({seeds2} seed; "
                  "C = 4, D = 9, I = 1..3, two epochs on a Fashion-MNIST subset). Dead ConvCaps types "
                  f"(seed 002's definition): {_seed002_smoke_text(root)}."),
        scale="smoke",
        seeds=seeds2,
        control="Dynamic routing at the same depths and budget (the main paper's), and depth 1 of each routing.",
        would_change=(f"`results/seed002_depth/fmnist.csv`: 16 types, 4×4 poses, depths 1..10, ≥ {MIN_SEEDS} seeds "
                      "per (routing, depth). Fashion-MNIST is one of seed 002's datasets, so this is testable here."),
        details={"profiles": profs2}))

    # --- 7. Seed 004 ----------------------------------------------------------------------------------
    out.append(Verdict(
        claim="Kernel cosine similarity measures redundancy: fewer kernels → higher minimum cosine distance "
              "(capsule network conv layers)",
        source="seed 004 (T. Wang), §4.3, Figs. 14–15",
        paper="negative correlation between kernels per layer and minimum cosine distance (DHCD, 46 classes)",
        verdict=grade(supported=None, n_seeds=1, control_seen=False, scale="smoke"),
        evidence=("The kernels chapter computes seed 004's measure on the smoke models of the Table 1 sweep "
                  "(`results/table1/smoke.csv`, seed 0, one epoch); no paper-scale model is scored. Seed 004's "
                  "dataset (DHCD) is not available here."),
        scale="smoke",
        seeds=1,
        control="The same measure on untrained (initial) kernels of the same widths: random kernels in fewer "
                "dimensions also have larger minimum distances.",
        would_change=(f"Trained CapsNets at several backbone widths (e.g. the Table 1 configs, "
                      f"`results/table1/fmnist.csv`, ≥ {MIN_SEEDS} seeds) scored against their initial kernels; "
                      "DHCD itself is untestable here."),
        details={}))

    # --- H. The companion's mechanism: precision does not move the cliff, an init remedy does ---------
    prec = summary[summary["claim"] == "precision"].sort_values("I")
    rem = summary[summary["claim"] == "remedy"]
    h_pts = pd.concat([prec, rem])
    n_h = int(h_pts["seeds"].min()) if len(h_pts) else 0
    beyond = prec.iloc[-1] if len(prec) else None  # float64 one layer beyond the float32 limit
    f64_dies = _frac(beyond["collapsed"]) == 1.0 if beyond is not None and beyond["seeds"] else None
    rem_fracs = [_frac(c) for c, k in zip(rem["collapsed"], rem["seeds"]) if k]
    rem_trains = all(f == 0.0 for f in rem_fracs) if len(rem) and len(rem_fracs) == len(rem) else None
    supported = None if f64_dies is None or rem_trains is None else (f64_dies and rem_trains)
    out.append(Verdict(
        claim="(Hypothesis H, this companion's) The cliff is the capsule-length map at initialisation: float64 "
              "moves it by at most one layer, and an init scale chosen from the map trains at ≥ 1.5× the limit "
              "without pruning",
        source="issue 10; the length map of the collapse chapter",
        paper="not a claim of the paper, which attributes the collapse to vanishing activations and offers "
              "pruning as the remedy",
        verdict=grade(supported=supported, n_seeds=min(n_h, n), control_seen=i7 is not None and i7["seeds"] > 0,
                      scale="full"),
        evidence=_points_text(summary, "precision") + "; " + _points_text(summary, "remedy"),
        scale=f"Fashion-MNIST, paper-scale CapsNet[20, 8, I], profile {runs_profile}",
        seeds=min(n_h, n),
        control=f"The float32 points at the same depths ({_labels(summary, 'collapse', 'test')}): the float64 "
                "runs differ from them only in precision, the remedy only in its init std.",
        would_change=(f"Decided by {store} rows of {_labels(summary, 'precision')} and "
                      f"{_labels(summary, 'remedy')}, ≥ {MIN_SEEDS} seeds each: not reproduced if the float64 net "
                      "trains one layer beyond the float32 limit (precision, not the map, sets the cliff) or if "
                      "the remedy collapses."),
        details={"float64_beyond_collapses": f64_dies, "remedy_trains": rem_trains}))
    return out


def verdict_table(vs: Sequence[Verdict]) -> pd.DataFrame:
    """One line per verdict: claim, source, verdict, seeds, scale."""
    return pd.DataFrame([{"claim": v.claim, "source": v.source, "verdict": v.verdict, "seeds": v.seeds,
                          "scale": v.scale} for v in vs])


def verdict_markdown(v: Verdict, number: int) -> str:
    """One claim's block (CommonMark: no headings or tables, so that it renders as a notebook output):
    the claim and its verdict, the paper's numbers, the evidence, scale and seeds, the control that could
    refute it and what would change the verdict."""
    seeds = f"{v.seeds} seed{'s' if v.seeds != 1 else ''}"
    return "\n".join([
        f"**{number}. {v.claim}** ({v.source})", "",
        f"Verdict: **{v.verdict}**", "",
        f"* **The claim's numbers:** {v.paper}.",
        f"* **Evidence:** {v.evidence}",
        f"* **Scale and seeds:** {v.scale}; {seeds} (the fewest over the points it rests on; a verdict other "
        f"than inconclusive needs ≥ {MIN_SEEDS} and its control).",
        f"* **Control that could refute it:** {v.control}",
        f"* **What would change the verdict:** {v.would_change}", ""])


def verdicts_as_dicts(vs: Iterable[Verdict]) -> list[dict]:
    """The verdicts as plain dicts (for JSON or tests)."""
    return [asdict(v) for v in vs]


# ======================================================================================
# The chapters' parameters and sliders
# ======================================================================================
def chapter_params(chapter: str) -> dict:
    """Parameter specs of the ``collapse`` and ``verdicts`` chapters, for
    :func:`capslib.notebook.check_parameters` (same rules as the other chapters: an unknown name or a
    value out of range stops the run before anything is computed)."""
    from .config import PROFILES
    from .notebook import Param

    common = {
        "PROFILE": Param("choice", "smoke", "the book's profile (this page trains nothing; accepted for the build)",
                         choices=tuple(PROFILES)),
        "RUNS_PROFILE": Param("choice", RUNS_PROFILE, "profile of the decisive runs read from results/collapse/",
                              choices=tuple(PROFILES)),
    }
    if chapter == "verdicts":
        return common
    if chapter != "collapse":
        raise ValueError(f"no parameter spec for {chapter!r}; chapters: collapse, verdicts")
    return {
        **common,
        "SEED": Param("int", 0, "model seed of the live initialisation screens", low=0),
        "BATCH": Param("int", 32, "Fashion-MNIST test images in the live screens", low=2, high=256),
        "C": Param("int", 20, "capsule types of the length-per-layer figure", low=1, high=64),
        "D": Param("int", 8, "capsule dimensions of the length-per-layer figure", low=1, high=32),
        "I": Param("int", 8, "ConvCaps layers of the length-per-layer figure", low=0, high=16),
        "INIT_STD": Param("float", 0.5, "ConvCaps init std of the length-per-layer figure", low=0, low_open=True,
                          high=5),
        "STDS": Param("float_list", [0.3, 0.5, 0.7], "init std values of the slider", low=0, low_open=True, high=5),
        "PRS": Param("float_list", [0.125, 0.25, 0.375], "pruning ratios of the PR slider", low=0, low_open=True,
                     high=1, high_open=True),
        "I_MAX": Param("int", 10, "deepest model of each slider screen", low=1, high=16),
    }


def slider_explorers(grid: Mapping[tuple, Screen], by_pr: Mapping[float, Screen]):
    """``(grid explorer, PR explorer)``: two sliders (C/D, init std) over ``grid`` and one (PR) over
    ``by_pr``, each switching precomputed PNG panels in the browser (:mod:`capslib.widgets`)."""
    from .widgets import figure_png, slider_grid, slider_panels

    a = slider_grid({k: figure_png(screen_panel(s)) for k, s in grid.items()}, names=("C/D", "init std"))
    b = slider_panels({k: figure_png(screen_panel(s)) for k, s in by_pr.items()}, description="PR")
    return a, b
