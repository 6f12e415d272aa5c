"""The evidence of the rescue verdict (paper 000, Table 3) beyond the one-epoch runs: the plateau rows, the
channel-selection arms and the rerun of the rebuilt nets, as the verdict page's clauses.

Nothing here trains. Each function reads committed rows (``results/collapse_plateau/``, the criterion table,
the rebuilt-net rerun) and returns text or a small table for :func:`capslib.book.chapters.verdicts.verdicts`.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from ..experiments.results import read_store_csv
from .collapse_runs import MIN_SEEDS, at_chance, results_root
from .criterion_runs import THRESHOLD, criterion_table
from .study_points import outcomes_text


def plateau_of(outcomes: pd.DataFrame, prefix) -> pd.DataFrame:
    """The plateau points whose label (after "plateau: ") starts with ``prefix`` (a string or a tuple)."""
    if outcomes.empty:
        return outcomes
    return outcomes[outcomes["label"].str.replace("plateau: ", "", regex=False).str.startswith(prefix)]


def rerun_failures(rebuilt: pd.DataFrame, label_start: str) -> str:
    """", but not on every backbone: …" when a retrained rerun net of the point sat at chance, else ""."""
    t = rebuilt[(rebuilt["mode"] == "train") & rebuilt["label"].astype(str).str.startswith(label_start)]
    t = t.dropna(subset=["retrained"])
    dead = t[(t["retrained"] / 100).map(at_chance)]
    if dead.empty:
        return ""
    return (f", but not on every backbone: in a rerun of the pipeline {len(dead)} of {len(t)} such nets sat at chance "
            f"after retraining, {'each ' if len(dead) > 1 else ''}with a zero first step, as predicted (see below)")


def ok_rows(root, rel: str) -> pd.DataFrame:
    """The ok rows of the store ``results/<rel>`` (no columns without the file)."""
    path = results_root(root) / rel
    if not path.is_file():
        return pd.DataFrame(columns=["status", "wall_time", "test_acc"])
    df = read_store_csv(path)
    return df[df["status"].astype(str) == "ok"]


def study_hours(root, rel: str) -> float:
    """CPU-hours of the ok rows of ``results/<rel>`` so far: the sum of their wall times (one thread per run, on
    a shared machine, so an upper bound on the CPU time)."""
    return float(ok_rows(root, rel)["wall_time"].astype(float).sum()) / 3600


#: What the rescue verdict leaves untested once the plateau rows are in.
RESCUE_UNTESTED = ("PR 0.125 and 0.375 at the plateau (only PR 0.25 ran there); §3.5's extra stage, which retrains "
                    "the pruned net without IntermediateCaps before moving its backbone into the deep net (the "
                    "collapse chapter says where the pipeline differs from §3.5); CIFAR-10.")


def plateau_trains(points: pd.DataFrame) -> Optional[bool]:
    """True if every seed of the (single) point trained, False if every seed sat at chance, None while it has
    fewer than :data:`MIN_SEEDS` seeds or its seeds disagree."""
    if points.empty or int(points.iloc[0]["seeds"]) < MIN_SEEDS:
        return None
    r = points.iloc[0]
    return True if int(r["at_chance"]) == 0 else (False if int(r["at_chance"]) == int(r["seeds"]) else None)


def first_step_text(root, profile: str, label_start: str) -> str:
    """The largest first Adam step of a plateau point's runs (:func:`criterion_table`: their fit logs)
    against the rule's threshold, as a clause; "" without one."""
    t = criterion_table(root, profile)
    if t.empty:
        return ""
    t = t[(t["study"] == "collapse_plateau") & t["label"].astype(str).str.startswith(label_start)]
    if t.empty or t["update_max"].isna().any():
        return ""
    top = float(t["update_max"].max())
    side = "below" if top < THRESHOLD else "not all below"
    if top == 0:
        return f", its first Adam step exactly 0 in all {len(t)} seeds (the rule's threshold: {THRESHOLD:g})"
    return (f", its largest first Adam step at most {top:.2g} over {len(t)} seeds, {side} the rule's "
            f"threshold {THRESHOLD:g}")


def plateau_stages_text(root, profile: str) -> str:
    """"base 82.6–84.8 %, CCM 83.3–84.7 %": the plateaued rescue's base and CCM stages, range over seeds."""
    path = results_root(root) / "collapse_plateau" / f"{profile}.csv"
    if not path.is_file():
        return "base and CCM stages: no rows"
    df = read_store_csv(path)
    df = df[(df["status"] == "ok") & df["label"].astype(str).str.startswith("plateau: CCM+CHIP")]
    parts = []
    for stage, name in (("base", "base"), ("ccm", "CCM")):
        accs = 100 * df.loc[df["stage"] == stage, "test_acc"].astype(float)
        if len(accs):
            parts.append(f"{name} {accs.min():.1f}–{accs.max():.1f} %")
    return ", ".join(parts) or "base and CCM stages: no rows"


def plateau_sufficient_text(plateau: pd.DataFrame) -> str:
    """What still suffices with every stage at a plateau: each rescue control, trains or at chance."""
    ctrls = [(name, plateau_of(plateau, start)) for name, start in
             (("fewer types from scratch", "C'"), ("the trained backbone kept whole", "C20 pretrained"))]
    parts = []
    for name, pts in ctrls:
        t = plateau_trains(pts)
        if t is None:
            continue
        r = pts.iloc[0]
        parts.append(f"{name} {'trains' if t else 'sits at chance'} ({r['mean']:.1f} %, {r['seeds']} seeds)")
    return ". With every stage at a plateau: " + "; ".join(parts) if parts else ""


def selection_untested() -> str:
    return ("whether it matters which channels CCM + CHIP keep: no arm selects channels another way yet "
            "(random channels, the highest-CI channels removed, CHIP without CCM, at the same per-layer "
            "counts: `results/collapse_plateau/`, running); and " + RESCUE_UNTESTED.split("; ", 1)[1])


def selection_text(plateau: pd.DataFrame) -> str:
    """What the channel-selection controls show, or that they have not run."""
    arms = plateau_of(plateau, "PR ")
    chip = plateau_of(plateau, "CCM+CHIP")
    if arms.empty or chip.empty:
        return "no arm selects channels another way yet."
    both = pd.concat([chip, arms])
    text = ("at the same per-layer counts on the plateaued backbone, "
            + outcomes_text(both, "CHIP and its controls"))
    if (both["seeds"] >= MIN_SEEDS).all() and (both["at_chance"] == both["seeds"]).all():
        text += (". Every choice sits at chance in every seed, so no choice of channels rescues this backbone at "
                 "I = 7, and the arms cannot rank CHIP against the others")
    return text + "."
