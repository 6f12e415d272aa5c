"""Seed 002's claim read from the committed rows of the ``seed002_dead`` study: the share of dead capsule types
against depth for each routing, at initialisation and after training, with test accuracy (the routing and depth
chapters and the verdict page).

Nothing here trains a model. The rows are ``results/seed002_dead/<profile>.csv`` ("snapshots" points of
:func:`capslib.experiments.grids._seed002_dead`: C = 16 types, 4×4 poses, depths 1, 3, 5). A type is dead when
its mean activation (seed 002, eq. 12) is ≤ 0.01; ``dead_frac_init`` is the share over the ConvCaps layers of the
untrained model on the validation split, ``dead_frac`` that of the trained model on the test split. The rule,
from ``results/seed002_dead/predictions.md``:

* a routing is **decided** when depth 1 and a deeper depth each have :data:`MIN_SEEDS` seeds; its deepest such
  depth is compared with depth 1;
* the dead share **grows** when the trained dead share at that depth exceeds depth 1's by at least
  :data:`GROWTH` (mean over seeds);
* seed 002's claim (dead capsules grow with depth under EM, self- and VB routing) is *reproduced* when it grows
  under all three, *not reproduced* when a decided one of them does not grow, else *inconclusive*.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
from matplotlib.figure import Figure

from ..experiments.grids import SEED002_ROUTINGS, get_experiment
from ..experiments.results import read_store_csv
from .collapse_runs import CHANCE, CHANCE_BAND, MIN_SEEDS, _rc, at_chance, final_rows, results_root
from .plots import PAGE_WIDTH_IN, book_figsize, integer_ticks, wrap_title
from .rescue_evidence import study_hours

EXPERIMENT = "seed002_dead"
#: The least growth of the dead share (a fraction of the types) that counts as "grows": one type in ten.
GROWTH = 0.10


def runs(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """One row per run: routing, depth, seed, test accuracy (%), dead share after training and at init (%)."""
    path = results_root(root) / EXPERIMENT / f"{profile}.csv"
    cols = ["routing", "depth", "seed", "test_acc", "dead", "dead_init"]
    if not path.is_file():
        return pd.DataFrame(columns=cols)
    df = final_rows(read_store_csv(path))
    df = df.drop_duplicates(["label", "seed"], keep="last")
    return pd.DataFrame({"routing": df["model.routing"].astype(str), "depth": df["model.I"].astype(int),
                         "seed": df["seed"].astype(int), "test_acc": 100 * df["test_acc"].astype(float),
                         "dead": 100 * df["dead_frac"].astype(float),
                         "dead_init": 100 * df["dead_frac_init"].astype(float)},
                        columns=cols)


def summary(r: pd.DataFrame) -> pd.DataFrame:
    """Per routing and depth: seeds, mean test accuracy, mean dead share at init and after training (%)."""
    if r.empty:
        return pd.DataFrame(columns=["routing", "depth", "seeds", "test_acc", "dead_init", "dead"])
    return (r.groupby(["routing", "depth"], sort=False)
            .agg(seeds=("seed", "nunique"), test_acc=("test_acc", "mean"), dead_init=("dead_init", "mean"),
                 dead=("dead", "mean")).reset_index())


def routing_outcome(s: pd.DataFrame, routing: str) -> dict:
    """For one routing: ``decided``, the depths compared, the growth of the trained dead share (points) and
    whether it ``grows``; ``depth1_trains``: depth 1 above the chance band; ``acc``: mean test accuracy (%) at
    depth 1 and at the deepest decided depth."""
    g = s[(s["routing"] == routing) & (s["seeds"] >= MIN_SEEDS)].set_index("depth")
    deeper = [d for d in g.index if d > 1]
    if 1 not in g.index or not deeper:
        return dict(routing=routing, decided=False, deepest=None, growth=None, grows=None, depth1_trains=None,
                    acc=None)
    d = max(deeper)
    growth = float(g.loc[d, "dead"] - g.loc[1, "dead"])
    return dict(routing=routing, decided=True, deepest=int(d), growth=growth, grows=growth >= 100 * GROWTH,
                depth1_trains=not at_chance(g.loc[1, "test_acc"] / 100),
                acc=(float(g.loc[1, "test_acc"]), float(g.loc[d, "test_acc"])))


def claim(root: Optional[str | Path] = None, profile: str = "cpu") -> dict:
    """The rule of the module docstring: ``supported`` (True / False / None), ``outcomes`` (one per routing of
    seed 002, then dynamic routing for comparison), ``summary``, ``seeds`` (the fewest of any decided point)
    and ``cpu_hours`` of training so far."""
    r = runs(root, profile)
    s = summary(r)
    outs = [routing_outcome(s, x) for x in (*SEED002_ROUTINGS, "dynamic")]
    claimed = [o for o in outs if o["routing"] in SEED002_ROUTINGS]
    if any(o["decided"] and not o["grows"] for o in claimed):
        supported = False
    elif all(o["decided"] and o["grows"] for o in claimed):
        supported = True
    else:
        supported = None
    used = [(o["routing"], d) for o in outs if o["decided"] for d in (1, o["deepest"])]
    seeds = int(s.set_index(["routing", "depth"]).loc[used, "seeds"].min()) if used else 0
    return dict(supported=supported, outcomes=outs, summary=s, seeds=seeds,
                cpu_hours=study_hours(root, f"{EXPERIMENT}/{profile}.csv"))


def summary_text(s: pd.DataFrame) -> str:
    """"em I=1: 62.3 %, dead 0 % at init → 0 % trained (3 seeds)" per routing and depth."""
    return "; ".join(f"{x.routing} I={x.depth}: {x.test_acc:.1f} %, dead {x.dead_init:.0f} % at init → "
                     f"{x.dead:.0f} % trained ({x.seeds} seed{'s' if x.seeds != 1 else ''})"
                     for x in s.itertuples()) or "no rows yet"


def outcome_text(o: dict) -> str:
    if not o["decided"]:
        return f"{o['routing']}: not decided yet"
    verb = "grows" if o["grows"] else "does not grow"
    a1, ad = o["acc"]
    return (f"{o['routing']}: the trained dead share {verb} from I = 1 to {o['deepest']} ({o['growth']:+.0f} "
            f"points; test accuracy {a1:.1f} → {ad:.1f} %{', at chance' if at_chance(ad / 100) else ''})"
            f"{'' if o['depth1_trains'] else '; depth 1 itself sits at chance'}")


def verdict_fields(root: Optional[str | Path], profile: str, budget: str) -> dict:
    """The verdict page's fields for seed 002 (every :class:`~capslib.book.chapters.verdicts.Verdict` field but the
    verdict itself) and the grade's inputs: ``supported``, ``explained_by``, ``n_seeds``, ``control_seen``."""
    c = claim(root, profile)
    outs = "; ".join(outcome_text(o) for o in c["outcomes"])
    planned = len(get_experiment(EXPERIMENT).grid(profile)) * MIN_SEEDS
    done = int(c["summary"]["seeds"].sum()) if len(c["summary"]) else 0
    dyn = next(o for o in c["outcomes"] if o["routing"] == "dynamic")
    undecided = [o["routing"] for o in c["outcomes"] if not o["decided"]]
    return dict(
        supported=c["supported"], explained_by=None, n_seeds=c["seeds"], control_seen=dyn["decided"],
        claim="Dead capsules grow with depth under EM, self- and VB routing (and accuracy falls)",
        source="seed 002 (Everett et al.), Figs. 1–7",
        paper="more dead capsules at more ConvCaps layers, 1..10, on MNIST, Fashion-MNIST, CIFAR-10, smallNORB, "
              "ImageWoof; capsules are not dead at the start but die during training (figures, no table)",
        evidence=(f"Seed 002's capsule sizes (16 types, 4×4 poses), depths 1, 3, 5, Fashion-MNIST, {budget}, init std "
                  f"0.3 (`results/seed002_dead/{profile}.csv`, {c['cpu_hours']:.2f} CPU-hours so far; predictions "
                  f"committed first in `results/seed002_dead/predictions.md`; per-image costs measured first in "
                  f"`results/seed002_depth/bench_{profile}.csv`; {done} of the {planned} planned runs committed): "
                  f"{summary_text(c['summary'])}. {outs}."),
        scale=f"Fashion-MNIST, C = 16, 4×4 poses, depths 1, 3, 5, {budget}",
        seeds=c["seeds"],
        control="Dynamic routing at the same sizes, depths and budget (the main paper's routing), and depth 1 of "
                "each routing, which must train well above chance.",
        would_change=("Decided per routing when depth 1 and a deeper depth have ≥ 3 seeds: reproduced when the "
                      f"trained dead share grows by ≥ {100 * GROWTH:.0f} points under EM, self- and VB routing, not "
                      "reproduced when one of them does not. EM and VB cost 12–21× dynamic routing per image, so "
                      "their deeper points run last or are cut (`results/seed002_dead/README.md` says which); a "
                      "routing left undecided cannot turn a refutation by another into a reproduction. More epochs "
                      "(seed 002 trains 50) may let capsules die that one epoch leaves alive, and a dead-share "
                      "measure other than eq. 12's mean activation may see what it misses."),
        breakdown=(
            ("What the rows show", outs),
            ("What is sufficient", "one epoch of 3,000 images, when depth 1 trains well above chance: the dead "
             "share is measured on a net that learned."),
            ("What is untested", "depths 7-10, seed 002's 50 epochs and its other datasets" + (
                f"; {' and '.join(undecided)} routing (depth 1 and a deeper depth not both at 3 seeds yet)"
                if undecided else "") + "."),
        ),
        title="Seed 002: dead capsules grow with depth under EM, self- and VB routing",
        decided_in=("routing", "Seed 002 at the decisive runs' profile", "Routing: seed 002's dead capsules"))


def figure(r: pd.DataFrame, title: Optional[str] = None) -> Figure:
    """Per routing: test accuracy (left) and the dead share of ConvCaps types (right: at initialisation dashed,
    after training solid) against depth, every seed a dot."""
    routings = [x for x in ("dynamic", *SEED002_ROUTINGS) if x in set(r["routing"])]
    with _rc():
        fig = Figure(figsize=book_figsize(PAGE_WIDTH_IN, 3.2), layout="constrained")
        acc_ax, dead_ax = fig.subplots(1, 2)
        for i, routing in enumerate(routings):
            g = r[r["routing"] == routing]
            m = g.groupby("depth")[["test_acc", "dead", "dead_init"]].mean()
            color = f"C{i}"
            acc_ax.scatter(g["depth"], g["test_acc"], s=10, color=color, alpha=0.5)
            acc_ax.plot(m.index, m["test_acc"], marker="o", ms=3, color=color, label=routing)
            dead_ax.scatter(g["depth"], g["dead"], s=10, color=color, alpha=0.5)
            dead_ax.plot(m.index, m["dead"], marker="o", ms=3, color=color)
            dead_ax.plot(m.index, m["dead_init"], ls="--", color=color, alpha=0.7)
        for ax in (acc_ax, dead_ax):
            ax.set_xlabel("ConvCaps layers")
            if len(r):
                integer_ticks(ax, sorted(r["depth"].unique()))
        acc_ax.axhspan(100 * (CHANCE - CHANCE_BAND), 100 * (CHANCE + CHANCE_BAND), color="0.85", lw=0)
        acc_ax.set_ylabel("test accuracy (%)")
        dead_ax.set_ylabel("dead ConvCaps types (%): trained —, init - -")
        dead_ax.set_ylim(-5, 105)
        handles, labels = acc_ax.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
        if title:
            fig.suptitle(wrap_title(title, PAGE_WIDTH_IN))
    return fig
