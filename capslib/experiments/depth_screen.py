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

Fig. 6 (the higher the PR, the deeper): ``--prune`` screens, for each PR, seed and depth, the rebuilt CCM + CHIP
pruned net exactly as the pipeline hands it to retraining, and the same C' from scratch
(:func:`screen_pruned_depths`); the trained grid ``fig6_depth`` is placed at the rebuilt net's limits:

    python -m capslib.experiments.depth_screen --profile cpu --seeds 3 --configs 20x8 --prune 0.125 0.25 0.375 \
        --checkpoints runs/fig6_screen --start 7 --out results/fig6_depth/screen_cpu.csv

Resumable: a config (a row key, with ``--prune``) already in ``--out`` is not screened again.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd
import torch

from ..engine.criterion import VANISHING_STEP
from ..engine.data import load_splits
from ..engine.provenance import provenance
from .criterion_screen import screen_config
from .grids import Point, _cd, make_profile
from .results import ResultsStore, _timestamp

_PROV = provenance(torch.device("cpu"))


def depth_config(C: int, D: int, I: int, profile: str, seed: int, std: Optional[float] = None,
                 widths: Optional[tuple[int, int, int]] = None):
    """The RunConfig a grid's "train" point ``_cd(C, D, I=I[, init_std=std][, backbone_widths=widths])`` trains
    for ``seed``."""
    over: dict[str, Any] = dict(I=I)
    if std is not None:
        over["init_std"] = std
    if widths is not None:
        over["backbone_widths"] = tuple(widths)
    return Point("train", _cd(C, D, **over)).config(profile, seed)


def _row(r: dict[str, Any], run_key: str, profile: str, **extra: Any) -> dict[str, Any]:
    return {"run_key": run_key, "experiment": "depth_screen", "stage": "screen", "status": "ok", "profile": profile,
            **r, **extra, "below_rule": bool(r["update_max.all"] < VANISHING_STEP), **_PROV,
            "timestamp": _timestamp()}


def _scan(below_at: Callable[[int], bool], start: int, I_max: int, after: int) -> None:
    """Call ``below_at`` on the depths a limit search needs: up from ``start`` to the first depth below the rule
    and ``after`` more (or ``I_max``); when ``start`` (> 1) is below already, down to the last depth above it."""
    at_start = below_at(start)
    if start > 1 and at_start:
        I = start - 1
        while I >= 1 and below_at(I):
            I -= 1
        return
    for I in range(start, I_max + 1):
        if at_start if I == start else below_at(I):
            for J in range(I + 1, min(I + after, I_max) + 1):
                below_at(J)
            return


def screen_depths(C: int, D: int, profile: str, seed: int, I_max: int = 40, std: Optional[float] = None,
                  data=None, done: Optional[dict[str, bool]] = None, after: int = 2,
                  widths: Optional[tuple[int, int, int]] = None, start: int = 1) -> list[dict[str, Any]]:
    """One row per screened depth I = ``start``, ``start`` + 1, …: stops ``after`` depths past the first one below
    the rule, or at ``I_max`` (:func:`_scan`). ``done``: config hash → below the rule, for configs already stored
    (not screened again). ``widths``: explicit backbone widths (a pruned net's C' trained from scratch)."""
    done = done or {}
    rows: list[dict[str, Any]] = []

    def below_at(I: int) -> bool:
        cfg = depth_config(C, D, I, profile, seed, std, widths)
        if cfg.config_hash() not in done:
            r = screen_config(cfg, batches=1, data=data, label=f"C{C} D{D} I={I}")[0]
            rows.append(_row(r, f"{cfg.config_hash()}-0", profile))
            done[cfg.config_hash()] = rows[-1]["below_rule"]
        return done[cfg.config_hash()]

    _scan(below_at, start, I_max, after)
    return rows


def screen_pruned_depths(C: int, D: int, pr: float, profile: str, seed: int, checkpoints: Path,
                         I_max: int = 40, data=None, done: Optional[dict[str, bool]] = None, after: int = 2,
                         start: int = 1, experiment: str = "fig6_depth") -> list[dict[str, Any]]:
    """Fig. 6's two nets at ``pr``, screened by depth like :func:`screen_depths`: the **rebuilt** CCM + CHIP pruned
    net exactly as a grid's prune point ``Point("prune", _cd(C, D, I=0), pr=pr, I_after=I)`` retrains it (stages 1-4
    of :func:`capslib.experiments.pipeline.prune_pipeline` with ``retrain=False``; the base and CCM stages are
    trained once into ``checkpoints`` and reused for every depth), then the same C' **from scratch**
    (:func:`capslib.experiments.init_study.pruned_model_config`'s widths). Rows carry ``arm`` ("pruned" or
    "scratch"), ``pr`` and the stage accuracies the rebuilt screen reproduced (``<stage>_test_acc``), to be checked
    against the trained grid's stage rows. ``done``: row key → below the rule."""
    import copy
    import tempfile

    from .criterion_screen import screen_model
    from .init_study import pruned_model_config
    from .pipeline import prune_pipeline

    done = done if done is not None else {}
    rows: list[dict[str, Any]] = []
    base = Point("prune", _cd(C, D, I=0), pr=pr).config(profile, seed)
    tag = f"{base.config_hash()}-pr{pr:g}"

    def pruned_below(I: int) -> bool:
        key = f"{tag}-I{I}-pruned"
        if key not in done:
            with tempfile.TemporaryDirectory() as tmp:  # the stage rows are not a grid's rows
                res = prune_pipeline(base, pr, I=I, retrain=False, checkpoint_dir=checkpoints,
                                     store=Path(tmp) / "rows.csv", experiment=experiment, data=data, progress=False)
            model, cfg = res.model, res.stages["pruned"].config
            stages = {f"{stage}_test_acc": rec.test_acc for stage, rec in res.stages.items()}
            r = screen_model(lambda: copy.deepcopy(model).to(dtype=cfg.train.torch_dtype), cfg, 1, data,
                             f"CCM+CHIP PR {pr:g} C{cfg.model.C} I={I}")[0]
            rows.append(_row(r, key, profile, arm="pruned", pr=pr, **stages))
            done[key] = rows[-1]["below_rule"]
        return done[key]

    _scan(pruned_below, start, I_max, after)
    widths = pruned_model_config(base.model, pr).widths
    C_pruned = pruned_model_config(base.model, pr).C
    scratch_done = {k[len("scratch|"):].rsplit("-", 1)[0]: v for k, v in done.items() if k.startswith("scratch|")}
    new = screen_depths(C_pruned, D, profile, seed, I_max, data=data, done=scratch_done, after=after,
                        widths=widths, start=start)
    rows += [{**r, "run_key": f"scratch|{r['run_key']}", "arm": "scratch", "pr": pr} for r in new]
    return rows


def limits(screen: pd.DataFrame) -> pd.DataFrame:
    """Per (C, D, init std[, arm, PR], seed): the first I whose first step is below the rule (None if none was).
    A screen that started below the rule (:func:`_scan` going down) has its limit one above the last depth
    above it, which is the same first-below depth."""
    s = screen.sort_values("I")
    keys = ["C", "D", "init_std"] + [k for k in ("arm", "pr") if k in s.columns] + ["seed"]
    out = []
    for vals, g in s.groupby(keys):
        below = g[g["update_max.all"] < VANISHING_STEP]
        out.append(dict(zip(keys, vals), limit=int(below["I"].iloc[0]) if len(below) else None,
                        screened_from=int(g["I"].min()), screened_to=int(g["I"].max())))
    return pd.DataFrame(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Screen the first-step rule's depth limit of each CapsNet[C, D]")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--configs", nargs="+", required=True, metavar="CxD", help="e.g. 20x10 10x8")
    ap.add_argument("--std", type=float, default=None, help="ConvCaps init std (default: the profile's)")
    ap.add_argument("--I-max", dest="I_max", type=int, default=40)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prune", nargs="+", type=float, default=None, metavar="PR",
                    help="Fig. 6: screen the rebuilt CCM + CHIP pruned net and its C' from scratch at each PR "
                         "(screen_pruned_depths; needs --checkpoints)")
    ap.add_argument("--checkpoints", default=None, help="with --prune: base and CCM stage folders (reused)")
    ap.add_argument("--start", type=int, default=1, help="first depth screened (the scan goes down if it is "
                                                         "below the rule already)")
    args = ap.parse_args(argv)
    if args.prune and not args.checkpoints:
        ap.error("--prune needs --checkpoints")
    try:
        configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs]
        assert all(len(c) == 2 and min(c) > 0 for c in configs)
    except (ValueError, AssertionError):
        ap.error(f"--configs takes CxD pairs such as 20x8, got {args.configs}")
    store = ResultsStore(Path(args.out))
    done = {r["config_hash"]: float(r["update_max.all"]) < VANISHING_STEP
            for r in (store.rows() if store.path.exists() else [])}
    data = load_splits(make_profile(args.profile).data)
    if args.prune:
        done = {r["run_key"]: str(r["below_rule"]) == "True" for r in (store.rows() if store.path.exists() else [])}
        for C, D in configs:
            for pr in args.prune:
                for seed in range(args.seeds):
                    rows = screen_pruned_depths(C, D, pr, args.profile, seed, Path(args.checkpoints), args.I_max,
                                                data, done, start=args.start)
                    if rows:
                        store.append_many(rows)
                    print(f"C{C} D{D} PR {pr:g} seed {seed}: screened "
                          + ", ".join(f"{r['arm']} I={r['I']}" for r in rows), flush=True)
        print(limits(store.read()).to_string(index=False))
        return 0
    for C, D in configs:
        for seed in range(args.seeds):
            rows = screen_depths(C, D, args.profile, seed, args.I_max, args.std, data, done, start=args.start)
            if rows:
                store.append_many(rows)
            print(f"C{C} D{D} seed {seed}: screened I = {', '.join(str(r['I']) for r in rows) or '(stored)'}",
                  flush=True)
    print(limits(store.read()).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
