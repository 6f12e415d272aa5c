"""Screens of the training signal at initialisation, on the very config a grid point trains.

A mechanism is screened on the config that is trained, not on a neighbour (DESIGN.md §3d): for every
"train" point of an experiment, every seed and each dtype, :func:`screen_config` builds the model exactly
as :func:`capslib.engine.train.fit` does for that config (same seed, same dtype), takes the first training
batches that run sees (same split, batch size and shuffle) and records, per batch, one forward and backward
pass of the margin loss in training mode: per parameter group the largest gradient and the Adam step it
implies (:mod:`capslib.engine.criterion`), and the capsule lengths of every layer. Each row carries the
config hash of the screened config, which equals the hash of the trained row (a test checks it).

    python -m capslib.experiments.criterion_screen collapse --profile cpu --seeds 3 \
        --out results/collapse/screen_cpu.csv

resumes: a (config hash, batch) already in ``--out`` is not screened again; each config's rows are
appended atomically as it finishes. Seconds per config in float32, a few times that in float64.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import pandas as pd
import torch
from torch import nn

from ..engine.config import RunConfig, apply_overrides
from ..engine.criterion import gradient_signal, length_signal
from ..engine.data import DataSplits, load_splits
from ..engine.losses import margin_loss
from ..engine.provenance import provenance
from ..engine.routing import routing_dtype
from .grids import get_experiment
from .init_study import build_model
from .results import ResultsStore, _timestamp

__all__ = ["screen_config", "screen_model", "screen_experiment", "screen_rebuilt", "retrain_rebuilt", "summary_columns"]


def summary_columns(groups: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flat columns of one screen's groups: ``update_max.<group>`` and ``grad_max.<group>`` for the backbone,
    PrimaryCaps and class capsules, the smallest and largest over the ConvCaps layers (``convcaps_min`` /
    ``convcaps_max``), and ``update_max.all``: the largest over every group."""
    out: dict[str, float] = {}
    inter = {k: v for k, v in groups.items() if k.startswith("inter")}
    for q in ("update_max", "grad_max"):
        for g in ("backbone", "primary", "class"):
            out[f"{q}.{g}"] = groups[g][q]
        if inter:
            out[f"{q}.convcaps_min"] = min(v[q] for v in inter.values())
            out[f"{q}.convcaps_max"] = max(v[q] for v in inter.values())
        out[f"{q}.all"] = max(v[q] for v in groups.values())
    return out


def screen_config(cfg: RunConfig, batches: int = 3, data: Optional[DataSplits] = None,
                  label: str = "") -> list[dict[str, Any]]:
    """Rows of the training signal of ``cfg``'s model at initialisation on the first ``batches`` training
    batches its run sees (see the module docstring)."""
    # torch.manual_seed(seed); CapsNet(cfg.model), as fit builds it
    return screen_model(lambda: build_model(cfg.model, cfg.train.seed, cfg.train.dtype), cfg, batches, data, label)


def screen_model(make_model: Callable[[], nn.Module], cfg: RunConfig, batches: int = 3,
                 data: Optional[DataSplits] = None, label: str = "", eval_lengths: bool = False) -> list[dict[str, Any]]:
    """Rows of the training signal of the model ``make_model()`` returns (a fresh one per batch, so that no
    gradient accumulates), in training mode, on the first ``batches`` training batches a run of ``cfg``
    sees: same split, batch size and shuffle. With ``eval_lengths``, also the capsule lengths of the same
    batch in eval mode (``eval_lengths``, ``eval_class_max``): BatchNorm then normalises with its running
    statistics instead of the batch's, as every evaluation and dead-capsule probe does."""
    tc = cfg.train
    data = data if data is not None else load_splits(cfg.data)
    it = data.batches("train", tc.batch_size, shuffle=True, seed=tc.seed, epoch=0)
    rows = []
    for b, (x, y) in zip(range(batches), it):
        t0 = time.perf_counter()
        model = make_model().train()
        out = model(x)
        loss = margin_loss(routing_dtype(out.lengths), y)
        loss.backward()
        groups = gradient_signal(model, tc.lr)
        lengths = length_signal(out)
        extra = {}
        if eval_lengths:
            with torch.no_grad():
                ev = length_signal(model.eval()(x))
            extra = {"eval_class_max": ev["class_max"], "eval_lengths": json.dumps(ev)}
        rows.append({"label": label, "config_hash": cfg.config_hash(), "data.dataset": cfg.data.dataset,
                     "seed": tc.seed, "dtype": tc.dtype,
                     "batch": b, "C": cfg.model.C, "D": cfg.model.D, "I": cfg.model.I,
                     "init_std": cfg.model.init_std, "class_std": cfg.model.class_std, "loss": float(loss.detach()),
                     "class_mean": lengths["class"], "class_max": lengths["class_max"],
                     **summary_columns(groups), "groups": json.dumps(groups), "lengths": json.dumps(lengths),
                     **extra, "seconds": round(time.perf_counter() - t0, 3)})
    return rows


def _configs(experiment: str, profile: str, seeds: int, dtypes: Sequence[str]) -> Iterable[tuple[str, RunConfig]]:
    """(label, config) of every "train" point × seed × dtype of the experiment (a point that trains in
    float64 is screened in float32 too, and the other way round)."""
    for point in get_experiment(experiment).grid(profile):
        if point.kind != "train":
            continue
        for seed in range(seeds):
            cfg = point.config(profile, seed)
            for dtype in dtypes:
                yield point.label, apply_overrides(cfg, dtype=dtype)


def screen_experiment(experiment: str, profile: str, seeds: int = 3, batches: int = 3,
                      dtypes: Sequence[str] = ("float32", "float64"), out: Optional[Path] = None,
                      progress: bool = True) -> pd.DataFrame:
    """Screen every from-scratch point of an experiment (see :func:`_configs`); with ``out``, resume from
    and append to that CSV. Returns the screen's rows."""
    store = ResultsStore(out) if out is not None else None
    done = set() if store is None else {r["config_hash"] for r in store.rows()}
    data: dict[Any, DataSplits] = {}
    rows: list[dict[str, Any]] = []
    prov = provenance(torch.device("cpu"))
    for label, cfg in _configs(experiment, profile, seeds, dtypes):
        if cfg.config_hash() in done:  # screened already (another point trains the same config in this dtype)
            continue
        done.add(cfg.config_hash())
        key = json.dumps(cfg.data.to_dict(), sort_keys=True)
        if key not in data:
            data[key] = load_splits(cfg.data)
        new = [{"run_key": f"{cfg.config_hash()}-{r['batch']}", "experiment": experiment, "stage": "screen",
                "status": "ok", "profile": profile, **r, **prov, "timestamp": _timestamp()}
               for r in screen_config(cfg, batches, data[key], label)]
        if progress:
            r = new[0]
            print(f"{label} seed {cfg.train.seed} {cfg.train.dtype}: class max {r['class_max']:.2e}, "
                  f"max Adam step/|W| class {r['update_max.class']:.2e} primary {r['update_max.primary']:.2e} "
                  f"all {r['update_max.all']:.2e}", flush=True)
        if store is not None:
            store.append_many(new)
        rows += new
    return pd.DataFrame(rows) if store is None else store.read()


def screen_rebuilt(experiment: str, profile: str, seeds: int = 3, batches: int = 3, out: Optional[Path] = None,
                   checkpoints: Optional[Path] = None, progress: bool = True) -> pd.DataFrame:
    """Screen what every "prune" point of an experiment retrains: the rebuilt model of its pipeline (stages
    1-4 of :func:`capslib.experiments.pipeline.prune_pipeline` with ``retrain=False``, run with the point's
    own arguments, or resumed from ``checkpoints``) on the first ``batches`` batches of its retraining stage. Each row also
    carries the test accuracy of the base, CCM and pruned stages it reproduced (``<stage>_test_acc``), to be
    checked against the experiment's committed stage rows, and the lengths of the same batches in eval mode
    (what the pruned stage's evaluation and probe see). With ``out``, resume from and append to that CSV."""
    from .pipeline import prune_pipeline

    store = ResultsStore(out) if out is not None else None
    done = set() if store is None else {r["run_key"].rsplit("-", 1)[0] for r in store.rows()}
    data: dict[Any, DataSplits] = {}
    rows: list[dict[str, Any]] = []
    prov = provenance(torch.device("cpu"))
    for point in get_experiment(experiment).grid(profile):
        if point.kind != "prune":
            continue
        for seed in range(seeds):
            cfg = point.config(profile, seed)
            tag = f"{cfg.config_hash()}-pr{point.pr:g}-I{point.I_after}-{point.selection}"
            if tag in done:
                continue
            key = json.dumps(cfg.data.to_dict(), sort_keys=True)
            if key not in data:
                data[key] = load_splits(cfg.data)
            with tempfile.TemporaryDirectory() as tmp:  # the stage rows are not the experiment's rows
                res = prune_pipeline(cfg, point.pr, I=point.I_after, selection=point.selection, retrain=False,
                                     checkpoint_dir=checkpoints, store=Path(tmp) / "rows.csv",
                                     experiment=experiment, data=data[key], progress=progress)
            model, retrain_cfg = res.model, res.stages["pruned"].config
            stages = {f"{stage}_test_acc": r.test_acc for stage, r in res.stages.items()}
            dtype = retrain_cfg.train.torch_dtype
            new = [{"run_key": f"{tag}-{r['batch']}", "experiment": experiment, "stage": "screen_rebuilt",
                    "status": "ok", "profile": profile, **r, "pr": point.pr, "I_after": point.I_after,
                    "selection": point.selection, **stages, **prov, "timestamp": _timestamp()}
                   for r in screen_model(lambda: copy.deepcopy(model).to(dtype=dtype), retrain_cfg, batches,
                                         data[key], point.label, eval_lengths=True)]
            if progress:
                r = new[0]
                print(f"{point.label} seed {seed}: lengths {r['lengths']}, max Adam step/|W| "
                      f"all {r['update_max.all']:.2e}", flush=True)
            if store is not None:
                store.append_many(new)
            rows += new
    return pd.DataFrame(rows) if store is None else store.read()


def retrain_rebuilt(experiment: str, profile: str, seeds: int, checkpoints: Path, out: Path,
                    progress: bool = True) -> pd.DataFrame:
    """Finish the pipelines :func:`screen_rebuilt` screened: resume stages 1-4 of every "prune" point and seed
    from ``checkpoints`` and run stage 5 (retraining), with its rows in ``out`` (not the experiment's store),
    so that each screened net's outcome is known. A pipeline whose retrain row is in ``out`` is skipped."""
    from .pipeline import prune_pipeline

    store = ResultsStore(out)
    done = {(r["label"], int(r["seed"])) for r in store.rows() if r.get("stage") == "retrain"}
    data: dict[Any, DataSplits] = {}
    for point in get_experiment(experiment).grid(profile):
        if point.kind != "prune":
            continue
        for seed in range(seeds):
            if (point.label, seed) in done:
                continue
            cfg = point.config(profile, seed)
            key = json.dumps(cfg.data.to_dict(), sort_keys=True)
            if key not in data:
                data[key] = load_splits(cfg.data)
            with tempfile.TemporaryDirectory() as tmp:  # stage rows go to ``out``, each tagged with its point
                res = prune_pipeline(cfg, point.pr, I=point.I_after, selection=point.selection,
                                     checkpoint_dir=checkpoints, store=Path(tmp) / "rows.csv",
                                     experiment=f"{experiment}_rerun", data=data[key], progress=progress)
            store.append_many([{**r.row, "label": point.label} for r in res.stages.values()])
    return store.read()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m capslib.experiments.criterion_screen",
                                 description="Screen the training signal of every from-scratch point of an "
                                             "experiment at initialisation, in float32 and float64.")
    ap.add_argument("experiment")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rebuilt", action="store_true",
                    help="screen the rebuilt models the experiment's prune points retrain (screen_rebuilt)")
    ap.add_argument("--checkpoints", type=Path, default=None,
                    help="with --rebuilt: pipeline stage folders (finished stages are reused)")
    ap.add_argument("--retrain-out", type=Path, default=None,
                    help="with --rebuilt and --checkpoints: then retrain every screened net (retrain_rebuilt), "
                         "its stage rows in this CSV")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.retrain_out is not None and not (args.rebuilt and args.checkpoints):
        ap.error("--retrain-out needs --rebuilt and --checkpoints")
    if args.rebuilt:
        df = screen_rebuilt(args.experiment, args.profile, args.seeds, args.batches, args.out, args.checkpoints)
        if args.retrain_out is not None:
            retrain_rebuilt(args.experiment, args.profile, args.seeds, args.checkpoints, args.retrain_out)
    else:
        df = screen_experiment(args.experiment, args.profile, args.seeds, args.batches, args.dtypes, args.out)
    print(f"{len(df)} rows in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
