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
from ..experiments.depth_screen import depth_config
from ..experiments.grids import TABLE5, _small, get_experiment
from ..experiments.results import read_store_csv
from .collapse_runs import MIN_SEEDS, at_chance, results_root

EXPERIMENT = "table5_limits"
#: [20, 8]'s depths, trained by the collapse study (float32, one epoch, the same configs).
COLLAPSE_DEPTHS = (6, 7, 8)
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
    points = [(p.label, p.config) for p in get_experiment(EXPERIMENT).grid(profile)]
    if not _small(profile):  # [20, 8] from the collapse study, same configs
        points += [(f"Table 5 [20, 8]: I={I} (collapse study)",
                    lambda prof, seed, I=I: depth_config(20, 8, I, prof, seed)) for I in COLLAPSE_DEPTHS]
    for label, make in points:
        for seed in range(seeds):
            cfg = make(profile, seed)
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
            rows.append(dict(label=label, C=m.C, D=m.D, I=m.I, init_std=m.init_std, seed=seed,
                             config_hash=cfg.config_hash(), first_step=step, seed_limit=limit, predicted=pred))
    return pd.DataFrame(rows)


def outcomes(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """:func:`predictions` joined to the runs: ``test_acc`` (%), ``observed`` ("chance" within 2 points of 10 %,
    else "trains") and ``as_predicted`` (None while the run has no row)."""
    root = results_root(root)
    pred = predictions(root, profile)
    stores = [read_store_csv(p) for p in (root / EXPERIMENT / f"{profile}.csv", root / "collapse" / f"{profile}.csv")
              if p.is_file()]
    runs = pd.concat(stores, ignore_index=True) if stores else pd.DataFrame(columns=["config_hash", "status",
                                                                                      "test_acc"])
    runs = runs[(runs["status"].astype(str) == "ok") & (runs.get("stage", "train") == "train")]
    runs = runs.drop_duplicates("config_hash", keep="last")
    acc = dict(zip(runs["config_hash"], 100 * runs["test_acc"].astype(float)))
    pred["test_acc"] = pred["config_hash"].map(acc)
    pred["observed"] = pred["test_acc"].map(lambda a: "" if pd.isna(a) else
                                            ("chance" if at_chance(a / 100) else "trains"))
    pred["as_predicted"] = [None if not o or not p else o == p for o, p in zip(pred["observed"], pred["predicted"])]
    return pred


def _majority(observed: pd.Series, kind: str) -> bool:
    return int((observed == kind).sum()) * 2 > len(observed)


def limit_table(out: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (std 0.5): the screen's limit per seed, the deepest depth run that trained in most seeds,
    the shallowest at chance in most seeds (depths with every seed in only), and the paper's maximum."""
    rows = []
    for (C, D), g in out[out["init_std"] == 0.5].groupby(["C", "D"], sort=False):
        done = g.dropna(subset=["test_acc"])
        full = {I: d["observed"] for I, d in done.groupby("I") if len(d) >= MIN_SEEDS}
        trains = [I for I, o in full.items() if _majority(o, "trains")]
        dies = [I for I, o in full.items() if _majority(o, "chance")]
        limits = g.drop_duplicates("seed").sort_values("seed")["seed_limit"]
        rows.append({"CapsNet": f"[{C}, {D}]", "C": C, "D": D,
                     "screen limit per seed": ", ".join("none" if pd.isna(v) else str(int(v)) for v in limits),
                     "deepest trained": max(trains) if trains else None,
                     "first at chance": min(dies) if dies else None,
                     "depths run": ", ".join(str(I) for I in sorted(full)) or "none yet",
                     "complete": len(full) == g["I"].nunique(), "paper max I": TABLE5.get((C, D), "")})
    return pd.DataFrame(rows)


def agrees_with_paper(row: pd.Series) -> Optional[bool]:
    """Whether a complete configuration's trained maximum is the paper's: the depth one below its first depth at
    chance equals the paper's maximum and that depth trained; for [10, 8] ("> 30") every depth run trained."""
    if not row["complete"]:
        return None
    paper, first, deepest = row["paper max I"], row["first at chance"], row["deepest trained"]
    if isinstance(paper, str):  # "> 30"
        return bool(pd.isna(first) and pd.notna(deepest) and deepest > 30)
    return bool(pd.notna(first) and first - 1 == paper and deepest == paper)


def predictions_markdown(pred: pd.DataFrame) -> str:
    """The committed predictions as a Markdown table."""
    lines = ["| run | seed | first step at init | seed's screened limit | predicted |", "|---|---|---|---|---|"]
    for r in pred.itertuples():
        step = "beyond the screen" if pd.isna(r.first_step) else f"{r.first_step:.2e}"
        lim = "none" if r.seed_limit is None or pd.isna(r.seed_limit) else str(int(r.seed_limit))
        lines.append(f"| {r.label} | {r.seed} | {step} | {lim} | {r.predicted or 'no screen'} |")
    return "\n".join(lines)
