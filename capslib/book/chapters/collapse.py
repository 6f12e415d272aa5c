"""The collapse chapter: why deep CapsNets die at initialisation.

* :func:`load_depth_limits`, :func:`depth_limit_table`, :func:`depth_limit_views`, :func:`depth_limit_footer` -
  the predicted-vs-paper depth table (``results/depth_limits/fmnist.csv``, written by ``scripts/depth_limits.py``),
  shown one preset at a time, float32 and float64 side by side, so that it fits the text column;
* :func:`live_length_map`, :func:`length_figure` - measured vs recurrence capsule lengths per layer
  (live forward passes at initialisation, :mod:`capslib.experiments.init_study`, seconds on one thread);
* :func:`screen`, :func:`screen_panel`, :func:`slider_screens`, :func:`slider_explorers` - the
  precomputed slider panels over C, D, PR and init std.

The decisive training runs it shows are read by :mod:`capslib.book.collapse_runs`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...experiments.results import read_store_csv
from ..collapse_runs import DATASET_LABELS, _ranges, _rc, results_root
from ..plots import FONT, PAGE_WIDTH_IN, book_figsize, legend_outside, wrap_title
from ..runner import cpu_threads


# ======================================================================================
# Depth limits at initialisation (results/depth_limits/fmnist.csv)
# ======================================================================================
def load_depth_limits(root: Optional[str | Path] = None) -> pd.DataFrame:
    """Every row of ``<root>/depth_limits/fmnist.csv`` (empty DataFrame when the file is missing)."""
    path = results_root(root) / "depth_limits" / "fmnist.csv"
    if not path.is_file():
        return pd.DataFrame()
    return read_store_csv(path)


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


#: How the depth-limit views name each preset, in the order they are shown.
PRESET_NAMES = {"authors": "The authors' settings", "default": "capslib's corrected defaults"}


def depth_limit_views(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """:func:`depth_limit_table` (``dtype=None``) as one narrow table per preset, keyed by a caption
    (Markdown): one row per CapsNet[C, D] (and PR, with the C' it leaves), the float32 screen's first dead I
    and max trainable I, the float64 screen's max trainable I, the recurrence's (float32), the paper's, and
    whether float32 agrees with the paper. Seeds and screens per row are in the footer (provenance)."""
    views = {}
    order = {p: i for i, p in enumerate(PRESET_NAMES)}
    for preset, t in sorted(table.groupby("preset", sort=False), key=lambda kv: order.get(kv[0], len(order))):
        rows = {}
        for _, r in t.iterrows():
            c_after = r["C'"]
            label = f"[{r['C']}, {r['D']}]" + (f" PR {r['PR']:g} → C′ {c_after}" if r["PR"] else "")
            row = rows.setdefault(label, {"first dead I": "", "max I, float32": "", "max I, float64": "",
                                          "recurrence": "", "paper (CIFAR-10)": r["paper max I"], "agrees": ""})
            if r["dtype"] == "float32":
                row.update({"first dead I": r["first dead I"], "max I, float32": r["max trainable I"],
                            "recurrence": r["predicted max I"], "agrees": r["agrees"]})
            else:
                row["max I, float64"] = r["max trainable I"]
        view = pd.DataFrame.from_dict(rows, orient="index")
        view.index.name = "CapsNet[C, D]"
        stds = ", ".join(f"{v:g}" for v in dict.fromkeys(t["init std"]))
        views[f"**{PRESET_NAMES.get(preset, preset)}** (`{preset}`, ConvCaps init std {stds})"] = view
    return views


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


def live_footer(seed: int, n_images: int, note: Optional[str] = None) -> str:
    """Provenance line (Markdown) for a figure or table computed live in this build: images, seed, this
    machine's CPU and capslib version; initialisation only, so no profile applies."""
    import torch

    from ...engine.provenance import provenance

    p = provenance(torch.device("cpu"))
    text = (f"*Provenance:* Fashion-MNIST, test images 0–{n_images - 1} · computed live when this page was built, "
            f"at initialisation (no training; no profile applies) · seed {seed} · device "
            f"{p.get('device_name') or 'cpu'} · numerics ATen {p['cpu_isa']}, oneDNN {p['onednn_isa']}, kernel "
            f"{p['kernel_march']} · capslib {p['capslib_version']}")
    return text + (f" · {note}" if note else "")


# ======================================================================================
# Lengths per layer, measured and predicted (live, a few seconds)
# ======================================================================================
def _model_config(C: int, D: int, I: int, std: float, preset: str = "authors", pr: float = 0.0):
    """CapsNet[C, D, I] with the preset's model fields, ConvCaps init std ``std`` and, for ``pr > 0``,
    the C' and backbone widths a prune at ratio ``pr`` leaves (:func:`capslib.experiments.init_study.pruned_model_config`)."""
    from ...engine.config import PRESETS, ModelConfig
    from ...experiments.init_study import pruned_model_config

    cfg = ModelConfig(C=C, D=D, I=I).replace(**PRESETS[preset]["model"]).replace(init_std=std)
    return pruned_model_config(cfg, pr) if pr > 0 else cfg


def live_length_map(C: int = 20, D: int = 8, I: int = 8, std: float = 0.5, preset: str = "default",
                    seed: int = 0, batch=None) -> pd.DataFrame:
    """:func:`capslib.experiments.init_study.length_map` of CapsNet[C, D, I] at ConvCaps init std ``std`` on one batch,
    one seed (one forward at init, under ``torch.no_grad``). ``batch``: (x, y) or x; default the first 32
    Fashion-MNIST test images. ``attrs`` record the config for captions."""
    from ...experiments.init_study import eval_batches, length_map

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
    from ...experiments.grids import TABLE5

    fig6 = {0.125: "7", 0.25: "9", 0.375: "12"}
    if pr:
        return fig6.get(pr, "") if (C, D) == (20, 8) else ""
    v = TABLE5.get((C, D))
    return "" if v is None else str(v)


def screen(C: int, D: int, std: float, x, pr: float = 0.0, seed: int = 0, I_max: int = 10,
           preset: str = "authors") -> Screen:
    """One forward screen at initialisation on images ``x`` (B, 1, 28, 28): per-layer mean lengths, the
    depth limit (:func:`capslib.experiments.init_study.depth_limit`) and the recurrence (measured PrimaryCaps start).
    One thread, ``torch.no_grad``; a few seconds on one CPU core for C = 20, D = 8, I_max = 10, B = 32."""
    import torch

    from ...experiments.init_study import depth_limit, length_recurrence, primary_m2_maps

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
                    "first zero layer": "—" if zero is None else zero,
                    "class = 0 from I": f">{s.I_max}" if s.limit is None else s.limit,
                    "max trainable I": f">={s.I_max}" if s.limit is None else s.limit - 1,
                    "paper max I": s.paper or "—"})
    return pd.DataFrame(out).astype({"first zero layer": str, "class = 0 from I": str, "max trainable I": str})


def slider_explorers(grid: Mapping[tuple, Screen], by_pr: Mapping[float, Screen]):
    """``(grid explorer, PR explorer)``: two sliders (C/D, init std) over ``grid`` and one (PR) over
    ``by_pr``, each switching precomputed PNG panels in the browser (:mod:`capslib.book.widgets`)."""
    from ..widgets import figure_png, slider_grid, slider_panels

    a = slider_grid({k: figure_png(screen_panel(s)) for k, s in grid.items()}, names=("C/D", "init std"))
    b = slider_panels({k: figure_png(screen_panel(s)) for k, s in by_pr.items()}, description="PR")
    return a, b
