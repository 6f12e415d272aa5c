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
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd
import torch

from ..engine.config import RunConfig, apply_overrides
from ..engine.criterion import gradient_signal, length_signal
from ..engine.data import DataSplits, load_splits
from ..engine.losses import margin_loss
from ..engine.provenance import provenance
from ..engine.routing import routing_dtype
from .grids import get_experiment
from .init_study import build_model
from .results import ResultsStore, _timestamp

__all__ = ["screen_config", "screen_experiment", "summary_columns"]


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
    tc = cfg.train
    data = data if data is not None else load_splits(cfg.data)
    it = data.batches("train", tc.batch_size, shuffle=True, seed=tc.seed, epoch=0)
    rows = []
    for b, (x, y) in zip(range(batches), it):
        t0 = time.perf_counter()
        model = build_model(cfg.model, tc.seed, tc.dtype)  # torch.manual_seed(seed); CapsNet(cfg.model), as fit
        out = model(x)
        loss = margin_loss(routing_dtype(out.lengths), y)
        loss.backward()
        groups = gradient_signal(model, tc.lr)
        lengths = length_signal(out)
        rows.append({"label": label, "config_hash": cfg.config_hash(), "seed": tc.seed, "dtype": tc.dtype,
                     "batch": b, "C": cfg.model.C, "D": cfg.model.D, "I": cfg.model.I,
                     "init_std": cfg.model.init_std, "class_std": cfg.model.class_std, "loss": float(loss.detach()),
                     "class_mean": lengths["class"], "class_max": lengths["class_max"],
                     **summary_columns(groups), "groups": json.dumps(groups), "lengths": json.dumps(lengths),
                     "seconds": round(time.perf_counter() - t0, 3)})
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
        data.setdefault(key, load_splits(cfg.data))
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
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    df = screen_experiment(args.experiment, args.profile, args.seeds, args.batches, args.dtypes, args.out)
    print(f"{len(df)} rows in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
