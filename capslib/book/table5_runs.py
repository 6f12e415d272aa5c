"""Table 5 at the decisive runs' profile, read from the committed rows: the first-step rule's prediction for every
run of the ``table5_limits`` grid (from its screens), the outcome, and each configuration's trained depth limit
against the screen's and the paper's (the verdict page).

Nothing here trains a model. The screens are ``results/table5_limits/screen_cpu.csv`` (std 0.5) and
``screen_std03_cpu.csv`` (std 0.3), made by :mod:`capslib.experiments.depth_screen` on the exact configs the grid
trains; the runs are ``results/table5_limits/cpu.csv``; [20, 8] comes from the collapse study
(``results/collapse/cpu.csv``, float32 points at I = 6, 7, 8). The prediction for a run: *chance* when its
first Adam step at initialisation is below :data:`capslib.engine.criterion.VANISHING_STEP` (or, beyond the
screened depths, when the seed's screened limit is at or below the run's depth: lengths only shrink with more
layers), else *trains* (outside the chance band, above 12 %).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from ..engine.criterion import VANISHING_STEP
from ..experiments.grids import TABLE5, get_experiment
from ..experiments.results import read_store_csv
from .collapse_runs import CHANCE, CHANCE_BAND, MIN_SEEDS, results_root

EXPERIMENT = "table5_limits"
SCREENS = ("screen_{profile}.csv", "screen_std03_{profile}.csv")


def _screens(root: Path, profile: str) -> pd.DataFrame:
    parts = [read_store_csv(p) for name in SCREENS
             if (p := root / EXPERIMENT / name.format(profile=profile)).is_file()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def predictions(root: Optional[str | Path] = None, profile: str = "cpu", seeds: int = MIN_SEEDS) -> pd.DataFrame:
    """One row per grid point × seed: C, D, I, init std, the screened first step (NaN beyond the screen), the
    seed's screened limit and the prediction ("chance", "trains", or "" without a screen)."""
    root = results_root(root)
    screen = _screens(root, profile)
    rows = []
    for point in get_experiment(EXPERIMENT).grid(profile):
        for seed in range(seeds):
            cfg = point.config(profile, seed)
            m = cfg.model
            hit = screen[screen["config_hash"] == cfg.config_hash()] if len(screen) else screen
            same = screen[(screen["C"] == m.C) & (screen["D"] == m.D) & (screen["seed"] == seed)
                          & (screen["init_std"].astype(float) == m.init_std)] if len(screen) else screen
            below = same[same["update_max.all"].astype(float) < VANISHING_STEP] if len(same) else same
            limit = int(below["I"].min()) if len(below) else None
            step = float(hit["update_max.all"].iloc[0]) if len(hit) else float("nan")
            if len(hit):
                pred = "chance" if step < VANISHING_STEP else "trains"
            elif limit is not None and m.I >= limit:
                pred = "chance"
            else:
                pred = ""
            rows.append(dict(label=point.label, C=m.C, D=m.D, I=m.I, init_std=m.init_std, seed=seed,
                             config_hash=cfg.config_hash(), first_step=step, seed_limit=limit, predicted=pred))
    return pd.DataFrame(rows)


def outcomes(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """:func:`predictions` joined to the runs: ``test_acc`` (%), ``observed`` ("chance" within 2 points of 10 %,
    else "trains") and ``as_predicted`` (None while the run has no row)."""
    root = results_root(root)
    pred = predictions(root, profile)
    path = root / EXPERIMENT / f"{profile}.csv"
    runs = read_store_csv(path) if path.is_file() else pd.DataFrame(columns=["config_hash", "status", "test_acc"])
    runs = runs[runs["status"].astype(str) == "ok"].drop_duplicates("config_hash", keep="last")
    acc = dict(zip(runs["config_hash"], 100 * runs["test_acc"].astype(float)))
    pred["test_acc"] = pred["config_hash"].map(acc)
    pred["observed"] = pred["test_acc"].map(lambda a: "" if pd.isna(a) else
                                            ("chance" if abs(a / 100 - CHANCE) <= CHANCE_BAND else "trains"))
    pred["as_predicted"] = [None if not o or not p else o == p for o, p in zip(pred["observed"], pred["predicted"])]
    return pred


def limit_table(out: pd.DataFrame, collapse_rows: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Per configuration (std 0.5): the screen's limit per seed, the deepest depth trained in every seed, the
    shallowest at chance in every seed, and the paper's maximum."""
    rows = []
    for (C, D), g in out[out["init_std"] == 0.5].groupby(["C", "D"], sort=False):
        done = g.dropna(subset=["test_acc"])
        per_I = done.groupby("I")["observed"].agg(lambda s: (len(s), (s == "trains").all(), (s == "chance").all()))
        full = {I: v for I, v in per_I.items() if v[0] >= MIN_SEEDS}
        trains = [I for I, v in full.items() if v[1]]
        dies = [I for I, v in full.items() if v[2]]
        limits = g.drop_duplicates("seed").sort_values("seed")["seed_limit"]
        rows.append({"CapsNet": f"[{C}, {D}]", "screen limit per seed": ", ".join("none" if pd.isna(v) else
                                                                                   str(int(v)) for v in limits),
                     "deepest trained (all seeds)": max(trains) if trains else None,
                     "first at chance (all seeds)": min(dies) if dies else None,
                     "depths run": ", ".join(str(I) for I in sorted(full)) or "none yet",
                     "paper max I": TABLE5.get((C, D), "")})
    return pd.DataFrame(rows)


def predictions_markdown(pred: pd.DataFrame) -> str:
    """The committed predictions as a Markdown table."""
    lines = ["| run | seed | first step at init | seed's screened limit | predicted |", "|---|---|---|---|---|"]
    for r in pred.itertuples():
        step = "beyond the screen" if pd.isna(r.first_step) else f"{r.first_step:.2e}"
        lim = "none" if r.seed_limit is None or pd.isna(r.seed_limit) else str(int(r.seed_limit))
        lines.append(f"| {r.label} | {r.seed} | {step} | {lim} | {r.predicted or 'no screen'} |")
    return "\n".join(lines)
