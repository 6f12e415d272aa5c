"""Seed 004's redundancy measure against layer width, with the nulls that could explain it.

Seed 004 (T. Wang, §4.3, Figs. 14-15) reads the minimum pairwise cosine distance of a conv layer's kernels as
a measure of redundancy and reports that layers with fewer kernels have a larger minimum distance. But the
minimum distance among n random directions in d dimensions falls as n grows whatever training does, so width
alone predicts the trend. This module scores, for every trained model of the ``kernel_widths`` sweep and every
conv layer (``conv1``-``conv3``, ``primary``):

* ``trained``: the minimum cosine distance of the trained kernels (the sweep's ``best.pt``);
* ``init``: the same of the model's own initial kernels (``CapsNet(cfg)`` from the run's seed, exactly the
  model :func:`capslib.engine.train.fit` starts from);
* ``gauss_mean`` / ``gauss_sd``: the same of ``draws`` Gaussian kernel sets of the layer's shape;

each as seed 004 computes it (raw flattened weights, ``measure="raw"``) and with BatchNorm folded into the conv
(``measure="bn_folded"``; capslib's pruning criterion; the Gaussian null has no BN and is the raw one).
The initial and Gaussian columns are known before any training: they are the prediction's baseline.

    python -m capslib.experiments.kernel_study --profile cpu --seeds 3 \\
        [--checkpoints runs/sweeps/kernel_widths] [--out results/kernel_widths/similarity_cpu.csv] [--init-only]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch

from ..pruning.similarity import LAYER_NAMES, kernel_similarity, layer_kernels, min_cosine_distance
from .grids import point_key
from .init_study import build_model
from .results import ResultsStore
from .sweeps import plan

EXPERIMENT = "kernel_widths"
MEASURES = {"raw": False, "bn_folded": True}  # measure -> fold_bn


def gaussian_min_distance(shape: tuple[int, int], draws: int, seed: int = 0) -> tuple[float, float]:
    """(mean, sd) over ``draws`` sets of the minimum cosine distance of ``shape[0]`` i.i.d. N(0, 1) vectors of
    ``shape[1]`` entries: what width alone gives."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.tensor([min_cosine_distance(kernel_similarity(torch.randn(shape, generator=g, dtype=torch.float64)))
                         for _ in range(draws)], dtype=torch.float64)
    return float(vals.mean()), float(vals.std()) if draws > 1 else math.nan


def layer_distances(model, fold_bn: bool) -> dict[str, tuple[float, tuple[int, int]]]:
    """{layer: (minimum cosine distance, (channels, entries per kernel))} of every conv layer of ``model``."""
    out = {}
    for name in LAYER_NAMES:
        k = layer_kernels(model, name, fold_bn)  # (C, n)
        out[name] = (min_cosine_distance(kernel_similarity(k)), tuple(k.shape))
    return out


def finished_runs(profile: str, results: Optional[str] = None) -> set[str]:
    """Config hashes with an ok row in the sweep's store (``results/kernel_widths/<profile>.csv``): their
    ``best.pt`` is the selected model of a finished run, not a checkpoint of one in progress."""
    path = Path(results or "results") / EXPERIMENT / f"{profile}.csv"
    if not path.is_file():
        return set()
    rows = ResultsStore(path).rows()
    return {r["config_hash"] for r in rows if r.get("status") == "ok"}


def study_rows(profile: str = "cpu", seeds: int = 3, checkpoints: Optional[str] = None, draws: int = 20,
               init_only: bool = False, finished: Optional[set[str]] = None) -> pd.DataFrame:
    """One row per (point, seed, layer, measure); ``trained`` is NaN with ``init_only`` or while the point's
    run has not finished (``finished``: config hashes of finished runs, default :func:`finished_runs`)."""
    from ..engine.train import load_model

    root = Path(checkpoints or Path("runs") / "sweeps" / EXPERIMENT)
    finished = finished_runs(profile) if finished is None else finished
    rows: list[dict[str, Any]] = []
    null_cache: dict[tuple[int, int], tuple[float, float]] = {}
    for point, cfg in plan(EXPERIMENT, profile, seeds):
        seed = cfg.train.seed
        init = build_model(cfg.model, seed).eval()
        folder = root / point_key(EXPERIMENT, cfg, point)
        trained = None
        if not init_only and cfg.config_hash() in finished and (folder / "best.pt").is_file():
            trained = load_model(cfg, folder / "best.pt").eval()
        for measure, fold in MEASURES.items():
            at_init = layer_distances(init, fold)
            at_end = layer_distances(trained, fold) if trained is not None else {}
            for layer, (d0, shape) in at_init.items():
                raw_shape = (shape[0], shape[1] - 1) if fold else shape  # the null: the raw kernel's shape
                if raw_shape not in null_cache:
                    null_cache[raw_shape] = gaussian_min_distance(raw_shape, draws,
                                                                  seed=raw_shape[0] * 1000 + raw_shape[1])
                g_mean, g_sd = null_cache[raw_shape]
                rows.append(dict(experiment=EXPERIMENT, profile=profile, label=point.label, C=cfg.model.C,
                                 D=cfg.model.D, seed=seed, config_hash=cfg.config_hash(), layer=layer,
                                 measure=measure, channels=shape[0], entries=raw_shape[1],
                                 trained=at_end[layer][0] if layer in at_end else math.nan, init=d0,
                                 gauss_mean=g_mean, gauss_sd=g_sd, draws=draws,
                                 checkpoint=str(folder) if trained is not None else ""))
    return pd.DataFrame(rows)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Seed 004's minimum cosine distance per conv layer against width, "
                                             "trained against initial and Gaussian kernels")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--checkpoints", default=None, help="the sweep's checkpoint folder "
                                                        "(default runs/sweeps/kernel_widths)")
    ap.add_argument("--draws", type=int, default=20, help="Gaussian kernel sets per layer shape")
    ap.add_argument("--init-only", action="store_true", help="score the initial and Gaussian kernels only")
    ap.add_argument("--out", default=None, help="CSV (default results/kernel_widths/similarity_<profile>.csv)")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.draws < 1:
        ap.error("--seeds and --draws must be >= 1")
    df = study_rows(args.profile, args.seeds, args.checkpoints, args.draws, args.init_only)
    out = Path(args.out or Path("results") / EXPERIMENT / f"similarity_{args.profile}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    done = df["trained"].notna().groupby([df["label"], df["seed"]]).all().sum()
    print(f"{len(df)} rows ({done} of {df.groupby(['label', 'seed']).ngroups} trained models scored) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
