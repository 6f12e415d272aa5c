"""Where the first-step rule puts each configuration's depth limit, screened on the runs' own configs.

For a from-scratch CapsNet[C, D, I] of a profile (the ``cpu`` profile's init std 0.5 unless ``--std``), each
seed and I = 1, 2, …, :func:`screen_depths` screens the exact config a grid point would train
(:func:`capslib.experiments.criterion_screen.screen_config`: the model ``fit`` builds from the seed, the first
training batch its run sees) and records the largest first Adam step over every parameter group. The rule
committed with hypothesis H (:data:`capslib.engine.criterion.VANISHING_STEP`) says a run whose step is below
1e-5 sits at chance, so a seed's **limit** is the first I below it (the screen stops two depths later), and its
maximum trainable depth is one less. Table 5's trained runs are placed at these limits.

    python -m capslib.experiments.depth_screen --profile cpu --seeds 3 --configs 20x10 20x6 16x6 10x6 10x8 \\
        --out results/table5_limits/screen_cpu.csv [--std 0.5] [--I-max 40]

Resumable: a (config hash) already in ``--out`` is not screened again.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
import torch

from ..engine.criterion import VANISHING_STEP
from ..engine.data import load_splits
from ..engine.provenance import provenance
from .criterion_screen import screen_config
from .grids import Point, _cd, make_profile
from .results import ResultsStore, _timestamp

_PROV = provenance(torch.device("cpu"))


def depth_config(C: int, D: int, I: int, profile: str, seed: int, std: Optional[float] = None):
    """The RunConfig a grid's "train" point ``_cd(C, D, I=I[, init_std=std])`` trains for ``seed``."""
    over = dict(I=I) if std is None else dict(I=I, init_std=std)
    return Point("train", _cd(C, D, **over)).config(profile, seed)


def screen_depths(C: int, D: int, profile: str, seed: int, I_max: int = 40, std: Optional[float] = None,
                  data=None, done: Optional[dict[str, bool]] = None, after: int = 2) -> list[dict[str, Any]]:
    """One row per screened depth I = 1, 2, …: stops ``after`` depths past the first one below the rule, or at
    ``I_max``. ``done``: config hash → below the rule, for configs already stored (not screened again)."""
    done = done or {}
    rows, first_below = [], None
    for I in range(1, I_max + 1):
        cfg = depth_config(C, D, I, profile, seed, std)
        if cfg.config_hash() not in done:
            r = screen_config(cfg, batches=1, data=data, label=f"C{C} D{D} I={I}")[0]
            rows.append({"run_key": f"{cfg.config_hash()}-0", "experiment": "depth_screen", "stage": "screen",
                         "status": "ok", "profile": profile, **r,
                         "below_rule": bool(r["update_max.all"] < VANISHING_STEP), **_PROV, "timestamp": _timestamp()})
            below = rows[-1]["below_rule"]
        else:
            below = done[cfg.config_hash()]
        if below and first_below is None:
            first_below = I
        if first_below is not None and I >= first_below + after:
            break
    return rows


def limits(screen: pd.DataFrame) -> pd.DataFrame:
    """Per (C, D, init std, seed): the first I whose first step is below the rule (NaN if none was)."""
    s = screen.sort_values("I")
    out = []
    for (C, D, std, seed), g in s.groupby(["C", "D", "init_std", "seed"]):
        below = g[g["update_max.all"] < VANISHING_STEP]
        out.append(dict(C=C, D=D, init_std=std, seed=seed, limit=int(below["I"].iloc[0]) if len(below) else None,
                        screened_to=int(g["I"].max())))
    return pd.DataFrame(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Screen the first-step rule's depth limit of each CapsNet[C, D]")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--configs", nargs="+", required=True, metavar="CxD", help="e.g. 20x10 10x8")
    ap.add_argument("--std", type=float, default=None, help="ConvCaps init std (default: the profile's)")
    ap.add_argument("--I-max", dest="I_max", type=int, default=40)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs]
        assert all(len(c) == 2 and min(c) > 0 for c in configs)
    except (ValueError, AssertionError):
        ap.error(f"--configs takes CxD pairs such as 20x8, got {args.configs}")
    store = ResultsStore(Path(args.out))
    done = {r["config_hash"]: float(r["update_max.all"]) < VANISHING_STEP
            for r in (store.rows() if store.path.exists() else [])}
    data = load_splits(make_profile(args.profile).data)
    for C, D in configs:
        for seed in range(args.seeds):
            rows = screen_depths(C, D, args.profile, seed, args.I_max, args.std, data, done)
            if rows:
                store.append_many(rows)
            print(f"C{C} D{D} seed {seed}: screened I = {', '.join(str(r['I']) for r in rows) or '(stored)'}",
                  flush=True)
    print(limits(store.read()).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
