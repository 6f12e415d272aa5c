"""The verdict page: one stated verdict per claim of the paper and its seeds - reproduced / not
reproduced / explained by ... / inconclusive / untestable here (CIFAR-10) - with its evidence, scale,
seeds and what would change it (:class:`Verdict`, :func:`grade`, :func:`verdicts`, :func:`verdict_table`,
:func:`verdict_markdown`). It reads the committed rows (:mod:`capslib.book.collapse_runs`, the depth
limits, the paper-table sweeps); it trains nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd

from ..collapse_runs import MIN_SEEDS, collapse_points, grade, load_collapse, results_root, run_summary
from ..criterion_runs import criterion_table, rebuilt_short, rebuilt_table, rule_text
from .. import fig6_runs, seed002_runs, table1_runs, table5_runs
from ..rescue_evidence import (RESCUE_UNTESTED, first_step_text, ok_rows, plateau_of, plateau_stages_text, study_hours,
                               plateau_sufficient_text, plateau_trains, rerun_failures, selection_text,
                               selection_untested)
from ..kernel_runs import load_similarity, seed004_outcome
from ..params import RUNS_PROFILE
from ..remedies_runs import deep_claim
from ..study_points import arm_outcomes, outcomes_text, point_outcomes
from .collapse import depth_limit_table, load_depth_limits


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
    committed rows would decide it). For the claims table of the front page: ``title``, the claim in a
    few words; ``cause``, the short form of an "explained by" cause; ``decided_in``, the (chapter, section
    heading, short link text) whose evidence decides it; ``untestable``, the part of the claim no machine here can test.
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
    title: str = ""
    cause: str = ""
    decided_in: tuple[str, str, str] = ("", "", "")
    untestable: str = ""
    #: How the effect comes about, on its own line (a mechanism is not another cause: it does not make a
    #: verdict "explained by").
    mechanism: str = ""
    #: ``(what, text)`` lines that split a verdict: what the rows show, what they show is sufficient, what
    #: is still untested.
    breakdown: tuple[tuple[str, str], ...] = ()

    @property
    def badge(self) -> str:
        """The verdict in a few words, for a table cell: its category (:data:`VERDICTS`), and for
        "explained by …" the short cause (:attr:`cause`); the full text is :attr:`verdict`."""
        if self.verdict.startswith("explained by"):
            return f"explained by {self.cause}" if self.cause else "explained by …"
        if self.verdict.startswith("untestable here"):
            return "untestable here"
        return self.verdict


#: What a rescue control that trains shows: a narrower net from scratch (C' < 20), or the C = 20 net on
#: the CCM-trained backbone with fresh ConvCaps, unpruned. Each with its short form for a badge.
_RESCUE_CAUSE_NARROW = "fewer capsule types C' (a larger per-layer length gain ≈ 9σ²D/C')"
_RESCUE_CAUSE_BACKBONE = "the trained backbone (the unpruned C = 20 net on it trains too)"
_SHORT_CAUSE = {_RESCUE_CAUSE_NARROW: "fewer types C′", _RESCUE_CAUSE_BACKBONE: "the trained backbone"}
#: What explains seed 004's trend when the initial kernels show it too.
_WIDTH_CAUSE = "width alone (the initial kernels show the same trend)"
#: The scale of a claim whose only rows are smoke runs.
_SMOKE_SCALE = "smoke: Fashion-MNIST subsets, small models, one or two epochs"
_PLATEAU_BUDGET = "plateau runs: at most 10 epochs, stopped after 3 without a better validation accuracy"

#: Where the evidence of each kind of claim is shown: (chapter, section heading, short link text).
_DECISIVE_RUNS = ("collapse", "The decisive runs", "Collapse: the decisive runs")
_CIFAR = "the paper's CIFAR-10 accuracies"



def budget(profile: str) -> str:
    """The training budget of ``profile`` in words, read from its config: "profile cpu: 3,000 training
    images, one epoch"."""
    from ...engine.config import PROFILES

    if profile not in PROFILES:
        return f"profile {profile}"
    cfg = PROFILES[profile]()
    n = f"{cfg.data.train_size:,}" if cfg.data.train_size else "all"
    epochs = "one epoch" if cfg.train.epochs == 1 else f"{cfg.train.epochs} epochs"
    steps = ""
    if cfg.data.train_size:
        per_epoch = -(-cfg.data.train_size // cfg.train.batch_size)
        steps = f" ({per_epoch * cfg.train.epochs} Adam steps at batch {cfg.train.batch_size})"
    return f"profile {profile}: {n} training images, {epochs}{steps}"


def _collapse_pair(summary: pd.DataFrame) -> tuple[Optional[pd.Series], Optional[pd.Series]]:
    """(below, at) the collapse: the collapse claim's control point (one layer below the limit) and its
    shallowest test point (at the limit), whatever the points are labelled."""
    pts = summary[summary["claim"] == "collapse"] if "claim" in summary else summary.iloc[0:0]
    ctrl, test = pts[pts["role"] == "control"], pts[pts["role"] == "test"]
    below = ctrl.sort_values("I").iloc[-1] if len(ctrl) else None
    at = test.sort_values("I").iloc[0] if len(test) else None
    return below, at


def _acc_text(outcomes: pd.DataFrame, label_start: str) -> str:
    hit = outcomes[outcomes["label"].str.startswith(label_start)] if not outcomes.empty else outcomes
    if hit.empty:
        return "no rows yet"
    r = hit.iloc[0]
    sd = "" if pd.isna(r["std"]) else f" ± {r['std']:.1f}"
    return f"{r['mean']:.1f}{sd} %, {r['seeds']} seeds"


def _paired_text(outcomes: pd.DataFrame, a: str, b: str) -> str:
    """Seed-paired difference of two points' test accuracies (points by label start), mean ± std."""
    ra = outcomes[outcomes["label"].str.startswith(a)] if not outcomes.empty else outcomes
    rb = outcomes[outcomes["label"].str.startswith(b)] if not outcomes.empty else outcomes
    if ra.empty or rb.empty or ra.iloc[0]["seeds"] != rb.iloc[0]["seeds"] or ra.iloc[0]["seeds"] < 2:
        return "not computable yet"
    d = pd.Series(ra.iloc[0]["accs"]) - pd.Series(rb.iloc[0]["accs"])
    return f"{d.mean():+.1f} ± {d.std():.1f} points over {len(d)} seeds"


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




def _from_fields(fields: dict, **extra) -> Verdict:
    """A :class:`Verdict` from a study module's ``verdict_fields`` (its grade's inputs included)."""
    f = dict(fields)
    verdict = grade(supported=f.pop("supported"), n_seeds=f.pop("n_seeds"), control_seen=f.pop("control_seen"),
                    scale="full", explained_by=f.pop("explained_by"))
    return Verdict(verdict=verdict, **f, **extra)


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
    signal = criterion_table(root, runs_profile)
    signal = signal[signal["study"] == "collapse"] if len(signal) else signal  # this claim's own runs
    plateau = point_outcomes("collapse_plateau", runs_profile, root)
    out.append(Verdict(
        claim="CapsNet[C=20, D=8] collapses to chance at I ≥ 7 and trains at I = 6",
        source="paper 000, Table 2, Table 3 (PR 0), Fig. 2",
        paper="I = 6: 76.2 %; I = 7..10: 10 % (CIFAR-10)",
        verdict=grade(supported=supported, n_seeds=n, control_seen=i6 is not None and i6["seeds"] > 0,
                      scale="full"),
        evidence=(f"{_points_text(summary, 'collapse')} ({budget(runs_profile)}). "
                  + outcomes_text(plateau_of(plateau, "C20 I="), f"Beside them, {_PLATEAU_BUDGET}") + "."),
        mechanism=(f"{rule_text(signal)} (the screens of the trained configs themselves, "
                   f"`results/collapse/screen_{runs_profile}.csv`; float64 runs start with class lengths of "
                   f"1e-28 and less, not 0, and collapse all the same, so it is Adam's step, not an exact zero, "
                   f"that decides). With the authors' own settings the screen gives the same cliff: {init} "
                   "(`results/depth_limits/fmnist.csv`)."),
        scale=f"Fashion-MNIST, paper-scale CapsNet[20, 8, I], {budget(runs_profile)}",
        seeds=n,
        control="CapsNet[20, 8, 6] with the same init and budget must train (else the collapse is not specific "
                "to I ≥ 7); the init std (0.3 collapses earlier, 0.7 not at all: the collapse chapter's init-std "
                "slider) is the lever.",
        would_change=(f"Decided by {store} rows of points {_labels(summary, 'collapse', 'control')} (below the "
                      f"limit) and {_labels(summary, 'collapse', 'test')} (at and beyond it), ≥ {MIN_SEEDS} seeds "
                      "each: reproduced if every seed at the limit sits at chance and no seed below it does; not "
                      "reproduced if the limit's depth trains in any seed or the depth below it collapses. It is CIFAR-10 in the paper: a Fashion-MNIST "
                      "result tests the mechanism, not the paper's accuracies."),
        details={"supported": supported, "init": init},
        title="Deep CapsNets collapse: CapsNet[20, 8] dies at I ≥ 7",
        decided_in=_DECISIVE_RUNS, untestable=_CIFAR))

    # --- 2. PR 0.125-0.375 rescues I = 7 (Table 3) ----------------------------------------------------
    one_epoch = point_outcomes("collapse", runs_profile, root)
    rebuilt_nets = rebuilt_table(root, runs_profile)
    rebuilt = rebuilt_short(rebuilt_nets)
    rerun_unpruned = rerun_failures(rebuilt_nets, "C20 pretrained")
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
    plateau_rescued = plateau_trains(plateau_of(plateau, "CCM+CHIP"))
    supported = None if rescued is None or base_collapses is None else (
        rescued and base_collapses and plateau_rescued is not False)
    plateau_line = ("" if plateau_rescued is None else
                    f"; with every stage trained to a plateau ({plateau_stages_text(root, runs_profile)}) it "
                    + ("trains too (" if plateau_rescued else "sits at chance (")
                    + _acc_text(plateau_of(plateau, "CCM+CHIP"), "plateau: CCM+CHIP") + ")"
                    + first_step_text(root, runs_profile, "plateau: CCM+CHIP"))
    out.append(Verdict(
        claim="Pruning at PR 0.125–0.375 rescues CapsNet[C=20, D=8, I=7]",
        source="paper 000, Table 3, Figs. 4–5",
        paper="I = 7: 10 % unpruned, 79.3 / 79.6 / 79.2 % at PR 0.125 / 0.25 / 0.375 (CIFAR-10)",
        verdict=grade(supported=supported, n_seeds=min(n_t, n_c, n), control_seen=n_c > 0, scale="full",
                      explained_by=" or ".join(dict.fromkeys(causes)) if ctrl_trains else None),
        evidence=(_points_text(summary, "rescue") + f" ({budget(runs_profile)}). At initialisation a prune is a "
                  "smaller, freshly initialised CapsNet[C', 8]: see the PR slider of the collapse chapter. "
                  + outcomes_text(plateau_of(plateau, ("C'", "CCM", "C20 pretrained", "PR ")),
                                  f"Beside them, {_PLATEAU_BUDGET}") + "."),
        breakdown=(
            ("What the rows show", f"after one epoch the CCM + CHIP pruned C′ = 15 net trains at I = 7 "
             f"({_acc_text(one_epoch, 'CCM+CHIP')}) where the unpruned C = 20 net from scratch sits at chance"
             f"{plateau_line}."),
            ("What they show is sufficient", "after one epoch, fewer capsule types alone: C′ = 15 from scratch "
             f"({_acc_text(one_epoch, 'C' + chr(39) + '=15')}); the trained backbone alone, unpruned "
             f"({_acc_text(one_epoch, 'C20 pretrained')}{rerun_unpruned}). Removing channels is not needed: pruned − unpruned on "
             f"the same backbone, paired by seed, {_paired_text(one_epoch, 'CCM+CHIP', 'C20 pretrained')}"
             + plateau_sufficient_text(plateau) + "."),
            *((("Before retraining", rebuilt[0].upper() + rebuilt[1:] + "."),) if rebuilt else ()),
            ("Which channels", selection_text(plateau) + " No outcome was predicted for the channel-choice arms "
             "themselves before they ran; the first-step rule, committed before them, covered them and held."),
            ("What is untested", RESCUE_UNTESTED if plateau_rescued is not None else selection_untested()),
        ),
        scale=f"Fashion-MNIST, paper-scale CapsNet[20, 8, 7], {budget(runs_profile)}"
              + ("; and every stage to a plateau (≤ 10 epochs each)" if plateau_rescued is not None else ""),
        seeds=min(n_t, n_c, n),
        control=f"{_labels(summary, 'rescue', 'control')}: no CHIP selection (a fresh, unpruned CapsNet[C', 8, 7] "
                "with the C' a prune leaves, and the pretrained backbone kept whole). If they train too, the rescue "
                "is explained by C' or by the pretrained backbone, not by pruning.",
        would_change=(f"Decided by {store} rows of {_labels(summary, 'rescue', 'test')} and the controls, "
                      f"≥ {MIN_SEEDS} seeds each, and the plateau rows (`results/collapse_plateau/{runs_profile}.csv`): "
                      "reproduced if the pruned models train at both budgets and every control collapses; explained "
                      "by what a control changes if it trains too (fewer types C′ from scratch, or the trained "
                      "backbone kept whole); not reproduced if the pruned models collapse at either budget. A "
                      "pruned net that trains with every stage at a plateau, in any seed, would reopen it."),
        details={"rescued": rescued, "control_trains": ctrl_trains},
        title="Pruning rescues the collapsed CapsNet[20, 8, 7]",
        cause=" or ".join(_SHORT_CAUSE[c] for c in dict.fromkeys(causes)),
        decided_in=_DECISIVE_RUNS, untestable=_CIFAR))

    # --- 3. Higher PR allows more depth (Fig. 6) ------------------------------------------------------
    out.append(_from_fields(fig6_runs.verdict_fields(root, runs_profile, budget(runs_profile)), untestable=_CIFAR))

    # --- 4. Table 1's trend ---------------------------------------------------------------------------
    out.append(_from_fields(table1_runs.verdict_fields(root, runs_profile), untestable=_CIFAR))

    # --- 5. Table 5's limits --------------------------------------------------------------------------
    t5_out = table5_runs.outcomes(root, runs_profile)
    t5 = table5_runs.limit_table(t5_out)
    t5["agrees"] = t5.apply(table5_runs.agrees_with_paper, axis=1) if len(t5) else []
    complete = t5[t5["complete"]] if len(t5) else t5
    ran = t5_out.dropna(subset=["test_acc"])
    in_complete = ran[[f"[{c}, {d}]" in set(complete["CapsNet"]) for c, d in zip(ran["C"], ran["D"])]] \
        if len(complete) else ran.iloc[0:0]
    t5_seeds = int(in_complete.groupby("label")["seed"].nunique().min()) if len(in_complete) else 0
    # not reproduced as soon as one complete configuration's maximum differs; reproduced when all agree
    supported5 = (False if len(complete) and not complete["agrees"].all() else
                  True if len(t5) and len(complete) == len(t5) else None)
    low = t5_out[t5_out["init_std"] != 0.5].dropna(subset=["test_acc"])
    low_txt = (f"at std 0.3, each configuration's std-0.5 maximum depth: {int((low['observed'] == 'chance').sum())} "
               f"of {len(low)} runs at chance" if len(low) else "the std-0.3 arms have no rows yet")
    judged = ran.dropna(subset=["as_predicted"])
    missed5 = ", ".join(f"{r.label} seed {r.seed}" for r in judged[~judged["as_predicted"].astype(bool)].itertuples())
    rule_txt = (f"the first-step rule predicted {int(judged['as_predicted'].sum())} of {len(judged)} runs "
                f"(missed: {missed5 or 'none'})" if len(judged) else "no run has finished yet")
    per_cfg = "; ".join(
        f"{r['CapsNet']}: screen limit per seed {r['screen limit per seed']}, depths run {r['depths run']}, "
        f"deepest trained in most seeds {'–' if pd.isna(r['deepest trained']) else int(r['deepest trained'])} "
        f"(paper {r['paper max I']})" for _, r in t5.iterrows())
    t5_cost = study_hours(root, f"table5_limits/{runs_profile}.csv")
    out.append(Verdict(
        claim="Table 5's maximum depths without pruning: 4 to > 30, deeper with larger D at fixed C and with "
              "smaller C at fixed D",
        source="paper 000, Table 5",
        paper="[20,10]: 8, [20,8]: 6, [20,6]: 4, [16,6]: 5, [10,6]: 7, [10,8]: > 30 (CIFAR-10)",
        verdict=grade(supported=supported5, n_seeds=t5_seeds, control_seen=len(low) > 0, scale="full"),
        evidence=(f"Each configuration from scratch one layer below, at and beyond the depth limit that the "
                  f"first-step screen of its own configs gives (`results/table5_limits/screen_{runs_profile}.csv`; "
                  f"predictions committed before the runs in `results/table5_limits/predictions.md`), "
                  f"{budget(runs_profile)}, std 0.5: {per_cfg}. The runs (`results/table5_limits/{runs_profile}.csv`; "
                  f"[20, 8] from `results/collapse/{runs_profile}.csv`): {rule_txt}; {low_txt}; "
                  f"{t5_cost:.2f} CPU-hours of training so far."),
        scale=f"Fashion-MNIST, CapsNet[C, D, I] at six configurations, {budget(runs_profile)}",
        seeds=t5_seeds,
        control="Each configuration at std 0.3 at its std-0.5 maximum depth (the screen puts every std-0.3 limit at "
                "3–5 layers): if those train, the limits are not set by the init scale.",
        would_change=(f"Reproduced when every configuration has ≥ {MIN_SEEDS} seeds at every depth run and its "
                      "trained maximum (the depth below the first one at chance in most seeds) is the paper's; "
                      "[10, 8] when I = 31 trains. Not reproduced if any complete configuration's maximum differs. "
                      "Inconclusive while a configuration is running. The paper's limits are CIFAR-10's; these "
                      "are Fashion-MNIST's at one epoch."),
        details={"supported": supported5, "complete": list(complete["CapsNet"]) if len(complete) else []},
        breakdown=(
            ("What the rows show", "the screen's majority limit minus one equals the paper's maximum in every "
             "configuration; trained, " + (", ".join(f"{r['CapsNet']} {'matches' if r['agrees'] else 'differs'}"
                                                    for _, r in complete.iterrows()) or "nothing complete yet") + "."),
            ("What is sufficient", "the init scale sets the limits: at std 0.3 every configuration dies at its std-0.5 "
             "maximum (" + low_txt + "). The first-step rule is not sufficient to place a run: " + rule_txt + "."),
            ("What is untested", "budgets beyond one epoch, other init scales between 0.3 and 0.5, float64, CIFAR-10."),
        ),
        title="Table 5's depth limits without pruning",
        decided_in=("depth", "Table 5 at the decisive runs' profile", "Depth: Table 5 at the cpu profile"),
        untestable=_CIFAR))

    # --- 6. Seed 002 ----------------------------------------------------------------------------------
    out.append(_from_fields(seed002_runs.verdict_fields(root, runs_profile, budget(runs_profile))))

    # --- 7. Seed 004 ----------------------------------------------------------------------------------
    sim = load_similarity(runs_profile, root)
    s4 = seed004_outcome(sim) if not sim.empty else None
    decided = s4 is not None and s4["seeds"] >= MIN_SEEDS
    if decided:
        ok = ok_rows(root, f"kernel_widths/{runs_profile}.csv")
        cost = (f"; {ok['wall_time'].astype(float).sum() / 3600:.2f} CPU-hours of training, "
                f"test accuracy {100 * ok['test_acc'].astype(float).min():.1f}–"
                f"{100 * ok['test_acc'].astype(float).max():.1f} %") if len(ok) else ""
        evidence7 = (f"Seed 004's minimum cosine distance (raw kernels), per conv layer, of CapsNet[C, 8, 0] at "
                     f"C = {', '.join(str(int(c)) for c in sorted(sim['C'].unique()))} trained to a plateau "
                     f"(`results/kernel_widths/{runs_profile}.csv`{cost}), against the same models' initial "
                     f"kernels and Gaussian kernels of each layer's shape "
                     f"(`results/kernel_widths/similarity_{runs_profile}.csv`): {s4['text']}. The rule was "
                     "committed before training (`results/kernel_widths/predictions.md`).")
    else:
        evidence7 = ("The kernels chapter computes seed 004's measure on the smoke models of the Table 1 sweep "
                     "(`results/table1/smoke.csv`, seed 0, one epoch); the `kernel_widths` study "
                     "(`results/kernel_widths/`) has no trained model at every width in "
                     f"{MIN_SEEDS} seeds yet. Seed 004's dataset (DHCD) is not available here.")
    out.append(Verdict(
        claim="Kernel cosine similarity measures redundancy: fewer kernels → higher minimum cosine distance "
              "(capsule network conv layers)",
        source="seed 004 (T. Wang), §4.3, Figs. 14–15",
        paper="negative correlation between kernels per layer and minimum cosine distance (DHCD, 46 classes)",
        verdict=grade(supported=s4["supported"] if decided else None, n_seeds=s4["seeds"] if decided else 1,
                      control_seen=decided, scale="full" if decided else "smoke",
                      explained_by=_WIDTH_CAUSE if decided and s4["explained"] else None),
        evidence=evidence7,
        scale=(f"Fashion-MNIST, CapsNet[C, 8, 0] at three widths, 3,000 training images (profile {runs_profile}), "
               "every run to a plateau (≤ 10 epochs)" if decided else _SMOKE_SCALE),
        seeds=s4["seeds"] if decided else 1,
        control="The same measure on the models' initial kernels and on Gaussian kernels of the same shapes: "
                "random kernels in fewer or more dimensions have their own minimum distances, and in these "
                "configurations a wider layer also has longer kernels.",
        would_change=("Decided by `results/kernel_widths/` (≥ 3 seeds per width) by the rule committed in its "
                      "`predictions.md`: reproduced if the trained distance falls with width in a layer whose "
                      "initial kernels do not already fall; explained by width if it falls only where they do; "
                      "not reproduced if it falls in no layer. Other widths (a fixed fan-in at several widths), "
                      "other datasets and DHCD itself are untested."),
        details={"supported": s4["supported"] if decided else None,
                 "holds_in": s4["holds_in"] if decided else []},
        breakdown=((("What the rows show", "the trained distance falls with width in "
                      + (", ".join(s4["holds_in"]) or "no layer") + ", in every seed."),
                     ("What is sufficient", "training, not width: in these layers the initial and Gaussian kernels "
                      "of the same shapes rise with width."),
                     ("What is untested", "a fixed fan-in at several widths, longer training, other datasets, DHCD."))
                   if decided else ()),
        title="Seed 004: kernel similarity measures redundancy",
        cause="width alone" if decided and s4["explained"] else "",
        decided_in=("kernels", "Seed 004: minimum cosine distance against width", "Kernels: distance against width"),
        untestable="seed 004's dataset (DHCD)"))

    # --- H. The companion's mechanism: precision does not move the cliff, an init remedy does ---------
    prec = summary[summary["claim"] == "precision"].sort_values("I")
    rem = summary[summary["claim"] == "remedy"]
    h_pts = pd.concat([prec, rem])
    n_h = int(h_pts["seeds"].min()) if len(h_pts) else 0
    beyond = prec.iloc[-1] if len(prec) else None  # float64 one layer beyond the float32 limit
    f64_dies = _frac(beyond["collapsed"]) == 1.0 if beyond is not None and beyond["seeds"] else None
    rem_fracs = [_frac(c) for c, k in zip(rem["collapsed"], rem["seeds"]) if k]
    rem_trains = all(f == 0.0 for f in rem_fracs) if len(rem) and len(rem_fracs) == len(rem) else None
    arms = arm_outcomes(runs_profile, root)
    arms_ok = None if arms["as_predicted"].isna().any() else bool(arms["as_predicted"].all())
    n_h = min(n_h, int(arms["seeds"].min()))
    supported = None if f64_dies is None or rem_trains is None or arms_ok is None else (
        f64_dies and rem_trains and arms_ok)
    arms_txt = "; ".join(f"{a.arm}: predicted {a.predicted}, " + (f"observed {a.observed} ({a.accs} %)"
                                                                  if a.seeds else "no rows yet")
                         for a in arms.itertuples())
    out.append(Verdict(
        claim="(Hypothesis H, this companion's) The cliff is the capsule-length map at initialisation: float64 "
              "moves it by at most one layer, an init scale chosen from the map trains at ≥ 1.5× the limit "
              "without pruning, and each of its factors, alone, does what the map predicts",
        source="this companion's collapse study; the length map of the collapse chapter",
        paper="not a claim of the paper, which attributes the collapse to vanishing activations and offers "
              "pruning as the remedy",
        verdict=grade(supported=supported, n_seeds=min(n_h, n), control_seen=i7 is not None and i7["seeds"] > 0,
                      scale="full"),
        evidence=(_points_text(summary, "precision") + "; " + _points_text(summary, "remedy")
                  + f" ({budget(runs_profile)}). The arms, one factor each, predictions committed before they ran "
                  f"(`results/collapse/predictions_h.md`; rows `results/collapse_h/{runs_profile}.csv`, same budget): "
                  + arms_txt + ". " + outcomes_text(plateau_of(plateau, "remedy"), f"Beside them, {_PLATEAU_BUDGET}")
                  + "."),
        scale=f"Fashion-MNIST, paper-scale CapsNet[20, 8, I], {budget(runs_profile)}",
        seeds=min(n_h, n),
        control=f"The float32 points at the same depths ({_labels(summary, 'collapse', 'test')}): the float64 "
                "runs differ from them only in precision, the remedy only in its init std.",
        would_change=(f"Decided by {store} rows of {_labels(summary, 'precision')} and "
                      f"{_labels(summary, 'remedy')} and by the four arms, ≥ {MIN_SEEDS} seeds each: not reproduced "
                      "if the float64 net trains one layer beyond the float32 limit (precision, not the map, sets "
                      "the cliff), if the remedy collapses, or if any arm misses its committed prediction."),
        details={"float64_beyond_collapses": f64_dies, "remedy_trains": rem_trains, "arms_as_predicted": arms_ok},
        breakdown=(
            ("What the rows show", f"float64 {'does not move' if f64_dies else 'moves'} the cliff; the length-map "
             f"init {'trains' if rem_trains else 'does not train'} at depth; "
             f"{int(arms['as_predicted'].eq(False).sum())} of {len(arms)} single-factor arms missed their committed "
             "predictions."),
            ("What is sufficient", "the whole init (ConvCaps std 0.6 with class std 0.1); of the arms that change one "
             f"factor, {int((arms['observed'] == 'chance').sum())} of {len(arms)} sit at chance."),
            ("What is untested", "the length-map init at I = 30 to a plateau; the map's saturation side, which "
             "predicted neither saturation arm; CIFAR-10."),
        ),
        title="Hypothesis H (ours): the cliff is the init length map; an init chosen from it trains deeper, "
              "unpruned",
        decided_in=_DECISIVE_RUNS))

    # --- 9. The companion's: CapsNet[20, 8, 30] trains without pruning ------------------------------
    d = deep_claim(root, runs_profile)
    names = {k: ", ".join(d[k]) or "none" for k in ("trains", "fails", "running", "not run yet")}
    out.append(Verdict(
        claim=f"(This companion's) CapsNet[20, 8, {d['I']}] trains without pruning: at least one remedy for vanishing "
              f"activations keeps every seed above {d['threshold']:g} % test accuracy",
        source="this companion's remedies study",
        paper="not a claim of the paper, whose Table 5 gives 6 as CapsNet[20, 8]'s maximum depth without pruning "
              "and which reaches depth only by pruning",
        verdict=grade(supported=d["supported"], n_seeds=min(d["seeds"], d["control_seeds"]),
                      control_seen=d["control_seeds"] > 0, scale="full"),
        evidence=(f"At I = {d['I']}, test accuracy per seed: {d['evidence']} ({budget(runs_profile)}). Control: "
                  f"{d['control_text']}."),
        breakdown=(("Remedies that train it", names["trains"]), ("Remedies that do not", names["fails"]),
                   ("Not run yet, or fewer than three seeds", ", ".join(x for x in (names["not run yet"],
                                                                               names["running"]) if x != "none")
                    or "none")),
        scale=f"Fashion-MNIST, paper-scale CapsNet[20, 8, {d['I']}], {budget(runs_profile)}",
        seeds=min(d["seeds"], d["control_seeds"]),
        control="The unremedied net (std 0.5 everywhere) at the cliff, which sits at chance (claim 1): each remedy "
                "changes one thing of it, so a remedy that trains at depth is what makes the difference.",
        would_change=(f"Decided by the I = {d['I']} rows (`results/remedies_deep/{runs_profile}.csv`; the length-map "
                      f"init's in `results/collapse_h/{runs_profile}.csv`), ≥ {MIN_SEEDS} seeds each: reproduced while "
                      f"one remedy is above {d['threshold']:g} % in every seed; not reproduced if none is. One epoch "
                      "decides whether a net learns at all, not which remedy is best."),
        details={k: d[k] for k in ("supported", "trains", "fails", "running", "not run yet", "threshold")},
        title=f"CapsNet[20, 8, {d['I']}] trains without pruning (ours)",
        decided_in=("deep", "Accuracy against depth", "Deep: accuracy against depth")))
    return out


def verdict_table(vs: Sequence[Verdict]) -> pd.DataFrame:
    """One line per verdict: the claim in a few words, its badge, scale and seeds, source, and the full
    verdict (the front page and the verdict page show it as HTML: :mod:`capslib.book.claims`)."""
    return pd.DataFrame([{"claim": v.title or v.claim, "verdict": v.badge, "scale": v.scale, "seeds": v.seeds,
                          "source": v.source, "full verdict": v.verdict} for v in vs])


def verdict_markdown(v: Verdict, number: int) -> str:
    """One claim's block (CommonMark: no headings or tables, so that it renders as a notebook output):
    the claim and its verdict, the paper's numbers, the evidence, scale and seeds, the control that could
    refute it and what would change the verdict."""
    seeds = f"{v.seeds} seed{'s' if v.seeds != 1 else ''}"
    return "\n".join([
        f'<span id="{claim_anchor(number)}"></span>**{number}. {v.claim}** ({v.source})', "",
        f"Verdict: **{v.verdict}**", "",
        f"* **The claim's numbers:** {v.paper}.",
        f"* **Evidence:** {v.evidence}",
        *([f"* **Mechanism:** {v.mechanism}"] if v.mechanism else []),
        *(f"* **{what}:** {text}" for what, text in v.breakdown),
        f"* **Scale and seeds:** {v.scale}; {seeds} (the fewest over the points it rests on; a verdict other "
        f"than inconclusive needs ≥ {MIN_SEEDS} and its control).",
        f"* **Control that could refute it:** {v.control}",
        f"* **What would change the verdict:** {v.would_change}", ""])


def claim_anchor(number: int) -> str:
    """The HTML id of claim ``number``'s block on the verdict page (the claims table links to it)."""
    return f"claim-{number}"


def verdicts_as_dicts(vs: Iterable[Verdict]) -> list[dict]:
    """The verdicts as plain dicts (for JSON or tests)."""
    return [asdict(v) for v in vs]
