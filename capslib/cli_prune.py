"""``capslib prune`` and ``capslib depth``: the command line of :mod:`capslib.experiments.pipeline`.

Top layer, like :mod:`capslib.cli` (whose config options it shares): it may import every package.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Optional

from .cli import add_config_options, config_from_args
from .engine.atomic import check_writable, save_text_atomic
from .engine.config import RunConfig
from .engine.data import load_splits
from .experiments.pipeline import (
    DEFAULT_ALPHA,
    ESTIMATORS,
    MODES,
    _check_against_config,
    _check_pipeline_args,
    check_prunable,
    depth_search,
    prune_pipeline,
)
from .experiments.results import ResultsStore

__all__ = ["register_cli"]


def _add_prune_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``capslib prune`` and ``capslib depth``."""
    g = p.add_argument_group("pruning options")
    g.add_argument("--alpha", type=float, default=None,
                   help=f"CCM weight α of stage 2, margin − α·ΣCCM (default: the config's alpha if > 0, "
                        f"else {DEFAULT_ALPHA})")
    g.add_argument("--mode", choices=MODES, default="channel",
                   help="'channel': prune PrimaryCaps channels one by one and regroup the kept ones (paper); "
                        "'capsule': drop whole capsule types by their summed CI (default: channel)")
    g.add_argument("--estimator", choices=ESTIMATORS, default=None,
                   help="CHIP estimator: 'per_image' (CHIP), 'batch_mean', or 'batch_mean_r4' (the authors' code) "
                        "(default: the config's chip_estimator, per_image unless the authors' preset is on)")
    g.add_argument("--epochs-base", type=int, default=None, help="epochs of stage 1, base training (default --epochs)")
    g.add_argument("--epochs-ccm", type=int, default=None, help="epochs of stage 2, CCM retraining (default --epochs)")
    g.add_argument("--ci-batches", type=int, default=5, help="training batches CHIP scores on (default 5)")
    g.add_argument("--ci-batch-size", type=int, default=128, help="images per CHIP batch (default 128)")
    o = p.add_argument_group("output options")
    o.add_argument("--checkpoint-dir", default=None,
                   help="stage folders (best.pt, config.json, result.json); finished stages are reused "
                        "(default runs/<command>-<config hash>)")
    o.add_argument("--store", default=None,
                   help="results CSV (default results/<experiment>/<profile>.csv, or under $CAPSLIB_RESULTS)")
    o.add_argument("--out", default=None, help="also write the summary as JSON here")
    o.add_argument("--quiet", action="store_true", help="no progress bars or stage lines; only the final table")


def register_cli(subparsers) -> None:
    """Add ``capslib prune`` and ``capslib depth`` to the ``capslib`` command."""
    p = subparsers.add_parser(
        "prune", help="the §3.5 pipeline: train, CCM-retrain, CHIP-prune, rebuild, retrain",
        description="Run the pruning pipeline of Sahu & Altahhan §3.5 for each --pr: (1) train the base "
                    "CapsNet with the margin loss, (2) retrain it with margin − α·CCM, (3) score channels "
                    "with CHIP, (4) prune the lowest-CI channels (PR·channels rounded up to a multiple of D) "
                    "of the backbone and PrimaryCaps and rebuild a smaller CapsNet, (5) retrain it with the "
                    "margin loss. One results-store row per stage; --epochs is the default of every stage.")
    add_config_options(p, skip=("alpha",))
    p.add_argument("--pr", type=float, nargs="+", required=True, metavar="PR",
                   help="pruning ratio(s) in [0, 1); stages 1-2 are shared between ratios")
    p.add_argument("--prune-I", type=int, default=None, metavar="I",
                   help="IntermediateCaps of the rebuilt model (default: the base model's --I)")
    p.add_argument("--epochs-retrain", type=int, default=None,
                   help="epochs of stage 5, retraining after pruning (default --epochs)")
    p.add_argument("--slice-capsule-weights", action="store_true",
                   help="slice the kept types' capsule weights instead of re-initialising them "
                        "(needs --mode capsule and the same I)")
    p.add_argument("--experiment", default="prune", help="experiment name of the store rows (default prune)")
    _add_prune_options(p)
    p.set_defaults(func=_cmd_prune)

    d = subparsers.add_parser(
        "depth", help="largest number of IntermediateCaps that trains without collapse (Table 5)",
        description="Add IntermediateCaps one at a time (I = --start-I .. --max-I) and train each model until "
                    "one collapses (validation accuracy within 2 points of chance for --collapse_epochs "
                    "epochs). Without --pr each depth is a fresh CapsNet; with --pr the base model "
                    "CapsNet[C, D, --base-I] is trained, CCM-retrained and pruned once, and each depth "
                    "rebuilds the pruned backbone with I fresh IntermediateCaps.")
    add_config_options(d, skip=("alpha",))
    d.add_argument("--pr", type=float, default=None, help="pruning ratio; omit for no pruning")
    d.add_argument("--max-I", type=int, default=10, help="deepest model tried (default 10)")
    d.add_argument("--start-I", type=int, default=1, help="first depth tried (default 1)")
    d.add_argument("--base-I", type=int, default=0,
                   help="IntermediateCaps of the base model that is pruned (with --pr; default 0)")
    d.add_argument("--epochs-depth", type=int, default=None, help="epochs of each depth's training (default --epochs)")
    d.add_argument("--experiment", default="depth", help="experiment name of the store rows (default depth)")
    _add_prune_options(d)
    d.set_defaults(func=_cmd_depth)


def _cli_setup(args: argparse.Namespace, command: str):
    cfg = config_from_args(args)
    ckpt = args.checkpoint_dir or os.path.join("runs", f"{command}-{cfg.config_hash()}")
    store = ResultsStore(args.store) if args.store else ResultsStore.for_experiment(args.experiment, cfg.profile)
    # every output is checked before any data is loaded or anything trains
    check_writable(ckpt, "--checkpoint-dir", folder=True)
    check_writable(store.path, "--store")
    if args.out:
        check_writable(args.out, "--out")
    if not args.quiet:
        print(f"capslib {command}: CapsNet[C={cfg.model.C}, D={cfg.model.D}, I={cfg.model.I}] on "
              f"{cfg.data.dataset} (profile {cfg.profile}, config {cfg.config_hash()})", flush=True)
    return cfg, ckpt, store


def _write_out(path: Optional[str], payload: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_text_atomic(path, json.dumps(payload, indent=2, default=str))
        print(f"summary written to {path}")


def _cmd_prune(args: argparse.Namespace) -> int:
    for pr in args.pr:  # refuse a bad ratio before loading data or training anything
        _check_pipeline_args(pr, args.mode, args.estimator, args.prune_I, args.ci_batches, args.ci_batch_size)
    cfg, ckpt, store = _cli_setup(args, "prune")
    _check_against_config(cfg, args.mode, args.prune_I, args.slice_capsule_weights)
    for pr in args.pr:  # every ratio planned now, not after stages 1-2 have trained
        check_prunable(cfg, pr, mode=args.mode, I=args.prune_I, slice_capsule_weights=args.slice_capsule_weights)
    data = load_splits(cfg.data)
    results = []
    for pr in args.pr:
        res = prune_pipeline(cfg, pr, alpha=args.alpha, mode=args.mode, estimator=args.estimator, I=args.prune_I,
                             slice_capsule_weights=args.slice_capsule_weights, epochs_base=args.epochs_base,
                             epochs_ccm=args.epochs_ccm, epochs_retrain=args.epochs_retrain,
                             ci_batches=args.ci_batches, ci_batch_size=args.ci_batch_size, checkpoint_dir=ckpt,
                             store=store, experiment=args.experiment, data=data, progress=not args.quiet)
        results.append(res)
        print()
        print(str(res.plan))
        print()
        print(res)
    print(f"\nrows in {store.path}; stage checkpoints in {ckpt}")
    _write_out(args.out, [r.to_dict() for r in results])
    return 0


def _cmd_depth(args: argparse.Namespace) -> int:
    cfg, ckpt, store = _cli_setup(args, "depth")
    if args.pr is not None:
        _check_pipeline_args(args.pr, args.mode, args.estimator, args.base_I, args.ci_batches, args.ci_batch_size)
        check_prunable(RunConfig(model=cfg.model.replace(I=args.base_I), data=cfg.data, train=cfg.train,
                                 profile=cfg.profile), args.pr, mode=args.mode)
    res = depth_search(cfg, args.pr, args.max_I, start_I=args.start_I, base_I=args.base_I, epochs=args.epochs_depth,
                       alpha=args.alpha, mode=args.mode, estimator=args.estimator, epochs_base=args.epochs_base,
                       epochs_ccm=args.epochs_ccm, ci_batches=args.ci_batches, ci_batch_size=args.ci_batch_size,
                       checkpoint_dir=ckpt, store=store, experiment=args.experiment, progress=not args.quiet)
    print()
    print(res)
    print(f"\nrows in {store.path}; checkpoints in {ckpt}")
    _write_out(args.out, {"pr": res.pr, "max_depth": res.max_depth, "collapsed_at": res.collapsed_at,
                          "trials": res.to_frame().to_dict(orient="records")})
    return 0
