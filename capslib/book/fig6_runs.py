"""Fig. 6 (the higher the PR, the deeper) read from the committed rows of the ``fig6_depth`` study: each arm's
screened depth limit per seed, the trained outcome at every depth, and the rule that grades the claim (the depth
chapter and the verdict page).

Nothing here trains a model. The screen is ``results/fig6_depth/screen_<profile>.csv``
(:func:`capslib.experiments.depth_screen.screen_pruned_depths`: the rebuilt net exactly as the pipeline hands it to
retraining, and the same C' from scratch); the runs are ``results/fig6_depth/<profile>.csv``. Three arms per PR:
``pruned`` (CCM + CHIP, rebuilt with fresh ConvCaps, retrained), ``scratch`` (the same C' and widths, fresh) and,
at PR 0, ``backbone`` (the pipeline without pruning: the CCM-trained CapsNet[20, 8] backbone, fresh ConvCaps).
The rule, with the predictions committed before the runs (``results/fig6_depth/predictions.md``):

* an arm's **trained maximum** is the deepest depth run that trains (outside the chance band) in most seeds, once
  every depth of it has :data:`~capslib.book.collapse_runs.MIN_SEEDS` seeds;
* the claim is *reproduced* when the pruned maximum grows with PR (never falls, and PR 0.375's exceeds PR
  0.125's), *not reproduced* when it does not, *explained by the trained backbone* when it grows but the
  unpruned trained backbone goes as deep as the shallowest prune, and *explained by fewer types C'* when each
  C' from scratch goes as deep as its prune; it stays *inconclusive* while a pruned arm trains at none of its
  depths (its maximum lies below the window the screen put it in, and may be below a smaller PR's).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
from matplotlib.figure import Figure

from ..engine.criterion import VANISHING_STEP
from ..experiments.depth_screen import limits as screen_limits
from ..experiments.grids import FIG6_LIMITS, get_experiment
from ..experiments.results import read_store_csv
from .collapse_runs import CHANCE, CHANCE_BAND, MIN_SEEDS, _rc, at_chance, final_rows, grade, results_root
from .plots import PAGE_WIDTH_IN, book_figsize, integer_ticks, wrap_title
from .rescue_evidence import study_hours

EXPERIMENT = "fig6_depth"
#: The first predictions' threshold (``predictions.md``: "trains (test accuracy > 20 %)"): the verdict is also
#: graded with it, so that a run just outside the chance band cannot decide it alone.
STRICT_TRAINS = 20.0
#: The paper's maximum depth per PR (Fig. 6, CIFAR-10).
PAPER = {0.0: 6, 0.125: 7, 0.25: 9, 0.375: 12}


def _arm(label: str) -> str:
    return "backbone" if "unpruned" in label else ("scratch" if "from scratch" in label else "pruned")


def _screen_rows(root: Optional[str | Path], profile: str) -> pd.DataFrame:
    path = results_root(root) / EXPERIMENT / f"screen_{profile}.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["arm", "pr", "seed", "I", "update_max.all"])
    s = read_store_csv(path)
    s["arm"] = [("backbone" if a == "pruned" else "scratch") if float(pr) == 0 else a
                for a, pr in zip(s["arm"], s["pr"])]
    return s


def screen(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """Per arm ("pruned", "scratch", "backbone": PR 0's rebuilt net), PR and seed: the screened limit
    (:func:`capslib.experiments.depth_screen.limits`)."""
    rows = _screen_rows(root, profile)
    return screen_limits(rows) if len(rows) else pd.DataFrame(columns=["arm", "pr", "seed", "limit"])


def predicted(screen_rows: pd.DataFrame, arm: str, pr: float, seed: int, I: int) -> str:
    """The first-step rule's prediction for one run: "chance" when its screened first step is below 1e-5 (or,
    beyond the screened depths, when the seed's limit is at or below I), "trains" when above, "" unscreened."""
    g = screen_rows[(screen_rows["arm"] == arm) & (screen_rows["pr"].astype(float) == pr)
                    & (screen_rows["seed"].astype(int) == seed)]
    hit = g[g["I"].astype(int) == I]
    if len(hit):
        return "chance" if float(hit["update_max.all"].iloc[0]) < VANISHING_STEP else "trains"
    below = g[g["update_max.all"].astype(float) < VANISHING_STEP]
    return "chance" if len(below) and int(below["I"].min()) <= I else ""


def outcomes(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """One row per grid point and seed that ran: label, arm, PR, I, seed, test accuracy (%), observed outcome,
    the first-step rule's prediction from the screen (:func:`predicted`) and whether the run went as predicted."""
    path = results_root(root) / EXPERIMENT / f"{profile}.csv"
    points = {p.label: p for p in get_experiment(EXPERIMENT).grid(profile)}
    cols = ["label", "arm", "pr", "I", "seed", "test_acc", "observed", "predicted", "as_predicted"]
    if not path.is_file():
        return pd.DataFrame(columns=cols)
    screen_rows = _screen_rows(root, profile)
    df = final_rows(read_store_csv(path))
    df = df[df["label"].isin(points)].drop_duplicates(["label", "seed"], keep="last")
    rows = []
    for r in df.itertuples():
        p = points[r.label]
        acc = 100 * float(r.test_acc)
        arm, pr = _arm(r.label), (p.pr if p.kind == "prune" else _scratch_pr(r.label))
        I = p.I_after if p.kind == "prune" else dict(p.overrides)["I"]
        observed = "chance" if at_chance(acc / 100) else "trains"
        pred = predicted(screen_rows, arm, pr, int(r.seed), I)
        rows.append(dict(label=r.label, arm=arm, pr=pr, I=I, seed=int(r.seed), test_acc=acc, observed=observed,
                         predicted=pred, as_predicted=(pred == observed) if pred else None))
    return pd.DataFrame(rows, columns=cols)


def _scratch_pr(label: str) -> float:
    return float(label.split("PR ", 1)[1].split(":", 1)[0])


def screen_predictions(lim: pd.DataFrame) -> list[tuple[str, Optional[bool]]]:
    """The screen predictions committed in ``results/fig6_depth/predictions.md`` (before the screen, and before the
    PR 0 screen for the third), each with whether it held (None without the rows)."""
    def per_seed(arm: str, pr: float) -> pd.Series:
        g = lim[(lim["arm"] == arm) & (lim["pr"].astype(float) == pr)]
        return g.set_index("seed")["limit"].astype(float).sort_index()

    prs = [pr for pr in sorted(FIG6_LIMITS) if pr > 0]
    scratch = {pr: per_seed("scratch", pr) for pr in prs}
    pruned = {pr: per_seed("pruned", pr) for pr in prs}
    back, first = per_seed("backbone", 0.0), pruned[prs[0]]
    have = all(len(v) for v in (*scratch.values(), *pruned.values()))
    medians = [float(scratch[pr].median()) for pr in prs] if have else []
    return [
        ("the C′ from scratch limit does not fall as PR grows and is ≥ 12 at PR 0.375",
         (all(b >= a for a, b in zip(medians, medians[1:])) and medians[-1] >= 12) if have else None),
        ("the rebuilt pruned net's limit is within one layer of its C′ from scratch in every seed",
         all(((pruned[pr] - scratch[pr]).abs() <= 1).all() for pr in prs) if have else None),
        ("the unpruned trained backbone's limit is within one layer of PR 0.125's rebuilt net in every seed",
         bool(((back - first).abs() <= 1).all()) if len(back) and len(first) else None),
    ]


def maxima(out: pd.DataFrame) -> pd.DataFrame:
    """Per arm and PR: the depths run (each with ≥ MIN_SEEDS seeds), the deepest that trains in most seeds
    (None when none does) and whether the arm is complete (every planned depth has its seeds)."""
    planned = {0.0: FIG6_LIMITS[0.0]} | {pr: L for pr, L in FIG6_LIMITS.items() if pr > 0}
    rows = []
    for (arm, pr), g in out.groupby(["arm", "pr"], sort=False):
        full = {I: d["observed"] for I, d in g.groupby("I") if len(d) >= MIN_SEEDS}
        trains = [I for I, o in full.items() if int((o == "trains").sum()) * 2 > len(o)]
        L = planned.get(float(pr))
        rows.append(dict(arm=arm, pr=float(pr), depths=", ".join(str(i) for i in sorted(full)) or "none yet",
                         trained_max=max(trains) if trains else None,
                         complete=L is not None and set(full) >= {L - 1, L, L + 1}))
    return pd.DataFrame(rows, columns=["arm", "pr", "depths", "trained_max", "complete"])


def claim(root: Optional[str | Path] = None, profile: str = "cpu") -> dict:
    """The rule of the module docstring: ``supported`` (True / False / None), ``explained_by`` (or None),
    ``maxima`` (:func:`maxima`), ``screen`` (:func:`screen`), ``outcomes``, ``seeds``, and ``strict``: the same
    rule when a run counts as trained only above :data:`STRICT_TRAINS` % (the first predictions' threshold), as
    (supported, explained_by, maxima)."""
    out = outcomes(root, profile)
    m = maxima(out)
    supported, explained = _grade(m)
    strict = maxima(out.assign(observed=["trains" if a > STRICT_TRAINS else "chance" for a in out["test_acc"]]))
    seeds = int(out.groupby("label")["seed"].nunique().min()) if len(out) else 0
    return dict(supported=supported, explained_by=explained, maxima=m, screen=screen(root, profile),
                outcomes=out, seeds=seeds, strict=(*_grade(strict), strict))


def _grade(m: pd.DataFrame) -> tuple[Optional[bool], Optional[str]]:
    """(supported, explained_by) from the arms' trained maxima (:func:`maxima`)."""
    prs = sorted(pr for pr in FIG6_LIMITS if pr > 0)
    pruned = {r.pr: r for r in m[m["arm"] == "pruned"].itertuples()}
    supported, explained = None, None
    complete = all(pr in pruned and pruned[pr].complete for pr in prs)
    if complete and all(pd.notna(pruned[pr].trained_max) for pr in prs):  # else a maximum lies below its window
        depth = [int(pruned[pr].trained_max) for pr in prs]
        supported = all(b >= a for a, b in zip(depth, depth[1:])) and depth[-1] > depth[0]
        back = m[(m["arm"] == "backbone") & m["complete"]]
        scratch = {r.pr: r for r in m[(m["arm"] == "scratch") & m["complete"]].itertuples()}
        if supported and len(back) and (back["trained_max"].fillna(-1) >= min(depth)).all():
            explained = "the trained backbone (the unpruned trained backbone goes as deep)"
        elif supported and len(scratch) == len(prs) and all(
                (scratch[pr].trained_max or -1) >= d for pr, d in zip(prs, depth)):
            explained = "fewer capsule types C' (each C' from scratch goes as deep)"
    return supported, explained


def maxima_text(m: pd.DataFrame) -> str:
    names = {"pruned": "CCM + CHIP", "scratch": "C' from scratch", "backbone": "trained backbone, unpruned"}
    return "; ".join(f"PR {r.pr:g} {names[r.arm]}: depths {r.depths}, trained maximum "
                     f"{'none of them' if r.trained_max is None or pd.isna(r.trained_max) else int(r.trained_max)}"
                     f"{'' if r.complete else ' (incomplete)'}" for r in m.itertuples()) or "no runs yet"


def _maxima_list(m: pd.DataFrame, arm: str) -> str:
    """"10, 11 and 18 (PR 0.125, 0.25, 0.375)", "none" for an arm whose maximum lies below its depths."""
    g = m[m["arm"] == arm].sort_values("pr")
    vals = ["none" if pd.isna(v) else str(int(v)) for v in g["trained_max"]]
    if not vals:
        return "not run yet"
    joined = vals[0] if len(vals) == 1 else ", ".join(vals[:-1]) + " and " + vals[-1]
    return f"{joined} (PR {', '.join(f'{pr:g}' for pr in g['pr'])})"


def _grade_word(supported: Optional[bool], explained: Optional[str]) -> str:
    """The verdict page's word for a grade of the rule (:func:`capslib.book.collapse_runs.grade`), seeds and
    controls taken as present: this module only varies the threshold."""
    return grade(supported=supported, n_seeds=MIN_SEEDS, control_seen=True, scale="full", explained_by=explained)


def screen_text(lim: pd.DataFrame) -> str:
    if lim.empty:
        return "no screen yet"
    parts = []
    for (arm, pr), g in lim.groupby(["arm", "pr"], sort=False):
        vals = ", ".join("none" if pd.isna(v) else str(int(v)) for v in g.sort_values("seed")["limit"])
        parts.append(f"PR {float(pr):g} {arm}: {vals}")
    return "; ".join(parts)



def verdict_fields(root: Optional[str | Path], profile: str, budget: str) -> dict:
    """The verdict page's fields for Fig. 6 (every :class:`~capslib.book.chapters.verdicts.Verdict` field but the
    verdict itself) and the grade's inputs: ``supported``, ``explained_by``, ``n_seeds``, ``control_seen``."""
    c = claim(root, profile)
    m, out = c["maxima"], c["outcomes"]
    hours = study_hours(root, f"{EXPERIMENT}/{profile}.csv")
    controls = set(out["arm"]) >= {"scratch", "backbone"} if len(out) else False
    pruned = m[m["arm"] == "pruned"]
    shown = maxima_text(m)
    judged = out.dropna(subset=["as_predicted"]) if len(out) else out
    missed = ", ".join(f"{r.label} seed {r.seed}" for r in judged[~judged["as_predicted"].astype(bool)].itertuples())
    planned = len(get_experiment(EXPERIMENT).grid(profile)) * MIN_SEEDS
    progress = f"{len(out)} of the {planned} planned runs committed"
    below = [f"PR {r.pr:g}" for r in pruned.itertuples() if r.complete and pd.isna(r.trained_max)]
    if c["supported"] is None and below:
        progress += (f"; inconclusive because the {' and '.join(below)} prune{'s' if len(below) > 1 else ''} "
                     "train at none of the depths the screen put them at (their trained maxima lie below L′ − 1, "
                     "so shallower runs would decide whether depth grows with PR)")
    strict_ok, strict_why, strict_m = c["strict"]
    strict = (f"counting a run as trained only above {STRICT_TRAINS:g} % (the first predictions' threshold), the "
              f"pruned maxima are {_maxima_list(strict_m, 'pruned')} and the rule gives "
              f"{_grade_word(strict_ok, strict_why)}")
    rule = (f"the first-step rule predicted {int(judged['as_predicted'].sum())} of {len(judged)} runs (missed: "
            f"{missed or 'none'})" if len(judged) else "no run has finished yet")
    return dict(
        supported=c["supported"], explained_by=c["explained_by"], n_seeds=c["seeds"], control_seen=controls,
        claim="The higher the pruning ratio, the deeper CapsNet[C=20, D=8] can go (max I 6 → 7, 9, 12)",
        source="paper 000, Fig. 6, §4.3",
        paper="max I: 6 (PR 0), 7 (0.125), 9 (0.25), 12 (0.375) (CIFAR-10)",
        evidence=(f"The first-step screen of the rebuilt nets exactly as the pipeline hands them to retraining, and of "
                  f"the same C′ from scratch (`results/fig6_depth/screen_{profile}.csv`), limit per seed: "
                  f"{screen_text(c['screen'])}. Trained around the rebuilt nets' limit ({budget}; "
                  f"`results/fig6_depth/{profile}.csv`, {hours:.2f} CPU-hours so far; "
                  f"predictions committed first in `results/fig6_depth/predictions.md`): {progress}; {shown}; {rule}; "
                  f"{strict}."),
        scale=f"Fashion-MNIST, CapsNet[20, 8] pruned at PR 0.125, 0.25, 0.375, {budget}",
        seeds=c["seeds"],
        control="At every depth, the same C′ trained from scratch (does depth follow C′?) and the pipeline without "
                "pruning, the CCM-trained C = 20 backbone with fresh ConvCaps (does depth follow the trained "
                "backbone?).",
        would_change=("Reproduced when, with every depth of every arm at ≥ 3 seeds, the pruned nets' trained "
                      "maximum grows with PR; explained by the trained backbone if the unpruned backbone goes as deep, "
                      "by C′ if each C′ from scratch does; not reproduced if it does not grow. At a plateau budget "
                      "the answer may differ: there the trained backbone sank the PR 0.25 prune at I = 7 (claim 2)."),
        breakdown=(
            ("What the rows show", shown if len(pruned) else "no pruned run has finished yet"),
            ("The rule at a stricter threshold", strict),
            ("The committed screen predictions", "; ".join(
                f"{text}: {'held' if ok else 'missed' if ok is False else 'open'}"
                for text, ok in screen_predictions(c["screen"]))),
            ("What is sufficient", "the screen: a rebuilt net whose first step is above 1e-5 learns in one epoch; "
             "whether removing channels is needed is what the unpruned trained backbone's depths decide."),
            ("What is untested", "every stage to a plateau; PR 0.5 and beyond; channels chosen at random in the "
             "same counts (does the depth come from CHIP's choice or from the count?); the authors' prune rule "
             "(C′ 18, 15, 13); CIFAR-10."),
        ),
        title="More pruning, more depth (Fig. 6)",
        decided_in=("depth", "Fig. 6 at the decisive runs' profile", "Depth: Fig. 6"))


def figure(out: pd.DataFrame, title: Optional[str] = None) -> Figure:
    """One panel per PR: test accuracy against depth for each arm (every seed a dot, the mean a line), the chance
    band shaded."""
    arms = {"pruned": ("CCM + CHIP pruned", "C3"), "scratch": ("same C′ from scratch", "C0"),
            "backbone": ("trained backbone, unpruned (PR 0)", "C2")}
    prs = sorted(pr for pr in FIG6_LIMITS if pr > 0)
    with _rc():
        fig = Figure(figsize=book_figsize(PAGE_WIDTH_IN, 3.0), layout="constrained")
        axes = fig.subplots(1, len(prs), sharey=True)
        for ax, pr in zip(axes, prs):
            ax.axhspan(100 * (CHANCE - CHANCE_BAND), 100 * (CHANCE + CHANCE_BAND), color="0.85", lw=0)
            for arm, (name, color) in arms.items():
                g = out[(out["arm"] == arm) & ((out["pr"] == pr) | (arm == "backbone"))]
                if g.empty:
                    continue
                ax.scatter(g["I"], g["test_acc"], s=10, color=color, alpha=0.5)
                mean = g.groupby("I")["test_acc"].mean()
                ax.plot(mean.index, mean.values, marker="o", ms=3, color=color, label=name,
                        ls="--" if arm == "backbone" else "-")
            ax.set_title(f"PR {pr:g} (C′ = {_c_prime(pr)})")
            ax.set_xlabel("ConvCaps layers I")
            if len(out):
                integer_ticks(ax, sorted(out["I"].unique()))
        axes[0].set_ylabel("test accuracy (%)")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
        if title:
            fig.suptitle(wrap_title(title, PAGE_WIDTH_IN))
    return fig


def _c_prime(pr: float) -> int:
    from ..experiments.init_study import pruned_model_config
    from ..engine.config import profile

    return pruned_model_config(profile("cpu").model, pr).C
