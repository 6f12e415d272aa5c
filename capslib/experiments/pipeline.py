"""The pruning pipeline of paper §3.5 and the depth search of §4.1/§4.3 (Table 5, Fig. 6).

:func:`prune_pipeline` runs, for one pruning ratio PR:

1. ``base``    - train CapsNet with the margin loss (α = 0), keep the best on validation;
2. ``ccm``     - retrain that model with margin − α·ΣCCM (α = 0.01 by default);
3. + 4. ``pruned`` - CHIP scores of the CCM model, prune at PR, rebuild (optionally
   with another number I of IntermediateCaps, §3.5 step 7) and evaluate right away;
5. ``retrain`` - retrain the rebuilt model with the margin loss.

Every stage gives one row in a :class:`capslib.experiments.results.ResultsStore` (validation
and test accuracy, params, MACs, dead fractions per layer, wall time) and, with a
``checkpoint_dir``, one folder ``<stage>-<key>/`` holding ``best.pt`` (a plain
state_dict), ``config.json`` (its RunConfig) and ``result.json`` (its RunResult;
written last, it marks the stage finished). The key chains the stage's settings
with its parent's key, so a second call - or a call for another PR - reuses every
finished stage it shares (base and ccm do not depend on PR) and resumes an
interrupted training stage from its ``last.pt``.

:func:`depth_search` adds IntermediateCaps one at a time until training collapses
(validation accuracy within 2 points of chance for ``collapse_epochs`` epochs,
:attr:`capslib.engine.train.RunResult.collapsed`), without pruning or on the pruned
backbone of one PR, and reports the largest depth that still trains.

The ``capslib prune`` and ``capslib depth`` commands (:mod:`capslib.cli_prune`) wrap both.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..engine.atomic import CheckpointError, read_json, save_atomic, save_text_atomic
from ..engine.config import CHIP_ESTIMATORS, RunConfig
from ..engine.data import DataSplits, load_splits
from ..engine.model import CapsNet, count_params
from ..engine.provenance import capslib_version, provenance, resolve_device
from ..engine.train import RunResult, evaluate, fit, load_model
from ..pruning.prune import (
    LAYERS,
    MODES,
    PrunePlan,
    chip_batches,
    ci_layer_scores,
    count_macs,
    make_plan,
    pruned_config,
    rebuild,
)
from .results import ResultsStore, run_row

__all__ = [
    "DEFAULT_ALPHA",
    "STAGES",
    "StageRecord",
    "PipelineResult",
    "DepthTrial",
    "DepthSearchResult",
    "prune_pipeline",
    "depth_search",
    "stage_table",
    "check_prunable",
]

#: CCM weight of stage 2 when neither the argument nor the config sets one (the authors' code).
DEFAULT_ALPHA = 0.01
STAGES = ("base", "ccm", "pruned", "retrain")
ESTIMATORS = CHIP_ESTIMATORS  # CHIP estimators a pipeline takes

StoreLike = Union[ResultsStore, str, os.PathLike, None]


# ----------------------------------------------------------------------------- records


@dataclass
class StageRecord:
    """One finished stage: its config, its :class:`RunResult`, MACs and the row written to the store.

    ``resumed`` is True when the stage was loaded from its checkpoint folder rather than run.
    For the ``pruned`` stage the RunResult has no history: ``best_val_acc`` and ``test_acc``
    are the accuracies right after the rebuild, before any retraining.
    """

    stage: str
    config: RunConfig
    result: RunResult
    macs: int
    resumed: bool
    row: dict[str, Any]
    path: Optional[Path] = None

    @property
    def val_acc(self) -> float:
        return self.result.best_val_acc

    @property
    def test_acc(self) -> float:
        return self.result.test_acc

    @property
    def params(self) -> int:
        return self.result.params

    @property
    def dead(self) -> dict[str, float]:
        """Fraction of dead capsule types per capsule layer (paper 000 definition, test set)."""
        return self.result.dead_fraction


def stage_table(records: list[StageRecord]) -> pd.DataFrame:
    """One line per stage: model size, accuracies, params, MACs, dead fractions, wall time."""
    rows = []
    for r in records:
        m = r.config.model
        rows.append({
            "stage": r.stage,
            "C": m.C, "D": m.D, "I": m.I,
            "widths": "/".join(map(str, m.widths)),
            "val_acc": round(r.val_acc, 4),
            "test_acc": round(r.test_acc, 4),
            "params": r.params,
            "MACs": r.macs,
            "dead": _dead_text(r.dead),
            "collapsed": r.result.collapsed,
            "wall_s": round(r.result.wall_time, 1),
            "resumed": r.resumed,
        })
    return pd.DataFrame(rows)


def _dead_text(dead: dict[str, float]) -> str:
    """"primary:0% inter1:25% class:0%": dead fractions in forward order (stored JSON sorts the keys)."""
    def order(name: str) -> tuple[int, int]:
        if name.startswith("inter") and name[5:].isdigit():
            return 1, int(name[5:])
        return (0, 0) if name == "primary" else (2, 0)

    return " ".join(f"{k}:{dead[k]:.0%}" for k in sorted(dead, key=order))


@dataclass
class PipelineResult:
    """What :func:`prune_pipeline` returns: the four stages, the plan and the final model."""

    pr: float
    mode: str
    estimator: str
    alpha: float
    stages: dict[str, StageRecord]
    plan: PrunePlan
    model: CapsNet
    checkpoint_dir: Optional[Path] = None

    def to_frame(self) -> pd.DataFrame:
        return stage_table(list(self.stages.values()))

    def __str__(self) -> str:
        return (f"prune pipeline PR={self.pr:g} mode={self.mode} estimator={self.estimator} α={self.alpha:g}\n"
                + self.to_frame().to_string(index=False))

    def to_dict(self) -> dict[str, Any]:
        return {"pr": self.pr, "mode": self.mode, "estimator": self.estimator, "alpha": self.alpha,
                "stages": self.to_frame().to_dict(orient="records"), "plan": self.plan.to_dict(),
                "checkpoint_dir": None if self.checkpoint_dir is None else str(self.checkpoint_dir)}


@dataclass
class DepthTrial:
    """One depth tried by :func:`depth_search`."""

    I: int
    val_acc: float
    test_acc: float
    collapsed: bool
    params: int
    macs: int
    dead: dict[str, float]
    wall_time: float
    resumed: bool


@dataclass
class DepthSearchResult:
    """The depths tried, in order, and the largest that trained without collapse (None: none did)."""

    pr: Optional[float]
    max_depth: Optional[int]
    trials: list[DepthTrial]
    collapsed_at: Optional[int]
    setup: list[StageRecord] = field(default_factory=list)  # base/ccm/pruned stages when pr is given

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{
            "pr": "none" if self.pr is None else self.pr, "I": t.I, "val_acc": round(t.val_acc, 4),
            "test_acc": round(t.test_acc, 4), "collapsed": t.collapsed, "params": t.params, "MACs": t.macs,
            "dead": _dead_text(t.dead), "wall_s": round(t.wall_time, 1),
            "resumed": t.resumed} for t in self.trials])

    def __str__(self) -> str:
        pr = "no pruning" if self.pr is None else f"PR={self.pr:g}"
        return (f"depth search ({pr}): max depth without collapse = {self.max_depth}"
                + (f", collapsed at I={self.collapsed_at}" if self.collapsed_at is not None else "")
                + "\n" + self.to_frame().to_string(index=False))


# ----------------------------------------------------------------------------- stage machinery


def _chain_key(parent: str, stage: str, **settings: Any) -> str:
    """Key of a stage: its parent's key + its own settings (12 hex digits).

    The root of every chain holds the capslib version (with its source fingerprint), so a stage
    checkpoint written by another library version is never resumed.
    """
    if parent == "root":
        parent = f"root|{capslib_version()}"
    blob = json.dumps({"parent": parent, "stage": stage, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _train_cfg(cfg: RunConfig, *, alpha: float, epochs: int, model=None) -> RunConfig:
    """``cfg`` with another CCM weight, epoch count and (optionally) model config."""
    train = cfg.train.replace(alpha=alpha, epochs=epochs)
    return RunConfig(model=model or cfg.model, data=cfg.data, train=train, profile=cfg.profile)


@dataclass
class _Runner:
    """Shared state of one pipeline call: data, device, checkpoint root, store and row columns."""

    data: DataSplits
    device: torch.device
    root: Optional[Path]
    store: ResultsStore
    experiment: str
    progress: bool
    key_extra: str
    extra: dict[str, Any]

    def stage_dir(self, stage: str, key: str) -> Optional[Path]:
        return None if self.root is None else self.root / f"{stage}-{key}"

    def say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)

    def load_finished(self, path: Optional[Path], cfg: Optional[RunConfig] = None):
        """(RunConfig, RunResult, model) of a finished stage folder, or None."""
        if path is None or not (path / "result.json").exists():
            return None
        restart = f"this stage (or delete the folder {path})"
        config_fields = read_json(path / "config.json", restart=restart, what="stage config")
        try:
            stored = RunConfig.from_dict(config_fields)
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"stage config {path / 'config.json'} is not a capslib RunConfig ({err}). "
                                  f"Delete {path} to rerun this stage, or restore the file.") from None
        if cfg is not None and stored.config_hash() != cfg.config_hash():
            raise ValueError(f"{path} belongs to another config ({stored.config_hash()} != {cfg.config_hash()}); "
                             "use a fresh checkpoint_dir")
        fields = read_json(path / "result.json", restart=restart, what="stage result")
        try:
            result = RunResult(**fields)
        except TypeError as err:
            raise CheckpointError(f"stage result {path / 'result.json'} is not a capslib RunResult ({err}). "
                                  f"Delete {path} to rerun this stage, or restore the file.") from None
        model = load_model(stored, path / "best.pt", device=str(self.device))
        return stored, result, model

    def finish(self, path: Optional[Path], cfg: RunConfig, result: RunResult, model: CapsNet) -> None:
        """Write best.pt, config.json and, last, result.json (the stage's completion mark)."""
        if path is None:
            return
        path.mkdir(parents=True, exist_ok=True)
        save_atomic(model.state_dict(), path / "best.pt")
        save_text_atomic(path / "config.json", cfg.to_json(indent=2))
        result.to_json(path / "result.json")

    def record(self, stage: str, cfg: RunConfig, result: RunResult, key: str, resumed: bool,
               path: Optional[Path], extra: Optional[dict[str, Any]] = None) -> StageRecord:
        """Append the stage's row to the store and return its :class:`StageRecord`."""
        macs = count_macs(cfg.model)
        cols = {**self.extra, "stage_key": key, "macs": macs, "widths": json.dumps(list(cfg.model.widths)),
                **(extra or {})}
        row = run_row(cfg, result, experiment=self.experiment, stage=stage, key_extra=f"{self.key_extra}|{key}",
                      extra=cols)
        self.store.append(row)
        rec = StageRecord(stage=stage, config=cfg, result=result, macs=macs, resumed=resumed, row=row, path=path)
        self.say(f"[{stage}] {'resumed from ' + str(path) if resumed else 'done'}: val {rec.val_acc:.4f} "
                 f"test {rec.test_acc:.4f} | {rec.params:,} params | {macs:,} MACs | {result.wall_time:.1f}s")
        return rec

    def fit_stage(self, stage: str, cfg: RunConfig, key: str, model: Optional[CapsNet] = None,
                  extra: Optional[dict[str, Any]] = None) -> tuple[StageRecord, CapsNet]:
        """Train (or load a finished) stage with :func:`capslib.engine.train.fit`."""
        path = self.stage_dir(stage, key)
        done = self.load_finished(path, cfg)
        if done is not None:
            _, result, trained = done
            return self.record(stage, cfg, result, key, True, path, extra), trained
        self.say(f"[{stage}] training CapsNet[C={cfg.model.C}, D={cfg.model.D}, I={cfg.model.I}] for "
                 f"{cfg.train.epochs} epoch(s), α={cfg.train.alpha:g}")
        result, trained = fit(cfg, data=self.data, model=model, checkpoint_dir=path, progress=self.progress)
        self.finish(path, cfg, result, trained)
        return self.record(stage, cfg, result, key, False, path, extra), trained


def _make_runner(cfg: RunConfig, data: Optional[DataSplits], checkpoint_dir, store: StoreLike, experiment: str,
                 progress: bool, key_extra: str, extra: dict[str, Any]) -> _Runner:
    if store is None:
        store = ResultsStore.for_experiment(experiment, cfg.profile)
    elif not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    return _Runner(data=data if data is not None else load_splits(cfg.data),
                   device=resolve_device(cfg.train.device),
                   root=None if checkpoint_dir is None else Path(checkpoint_dir),
                   store=store, experiment=experiment, progress=progress, key_extra=key_extra, extra=extra)


def _resolve_alpha(cfg: RunConfig, alpha: Optional[float]) -> float:
    """The CCM weight of stage 2: the argument, else the config's α if > 0, else :data:`DEFAULT_ALPHA`."""
    a = alpha if alpha is not None else (cfg.train.alpha if cfg.train.alpha > 0 else DEFAULT_ALPHA)
    if a <= 0:
        raise ValueError(f"the CCM stage needs alpha > 0, got {a}")
    return float(a)


def _check_epochs(**epochs: Optional[int]) -> None:
    for name, e in epochs.items():
        if e is not None and (not isinstance(e, int) or e < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {e!r}")


@dataclass
class _Setup:
    """Result of stages 1-3(+4): the CCM model, the plan and the records so far."""

    records: list[StageRecord]
    ccm_model: CapsNet
    ccm_key: str
    base_model: Optional[CapsNet] = None


def _run_base_and_ccm(run: _Runner, cfg: RunConfig, alpha: float, epochs_base: int, epochs_ccm: int) -> _Setup:
    """Stages 1 and 2: margin-loss training, then margin − α·CCM retraining of the best model."""
    base_cfg = _train_cfg(cfg, alpha=0.0, epochs=epochs_base)
    base_key = _chain_key("root", "base", config=base_cfg.config_hash())
    base, base_model = run.fit_stage("base", base_cfg, base_key)
    ccm_cfg = _train_cfg(cfg, alpha=alpha, epochs=epochs_ccm)
    ccm_key = _chain_key(base_key, "ccm", config=ccm_cfg.config_hash())
    ccm, ccm_model = run.fit_stage("ccm", ccm_cfg, ccm_key, model=copy.deepcopy(base_model))
    return _Setup(records=[base, ccm], ccm_model=ccm_model, ccm_key=ccm_key, base_model=base_model)


def _prune_stage(run: _Runner, cfg: RunConfig, setup: _Setup, *, pr: float, mode: str, estimator: str,
                 I: Optional[int], slice_capsule_weights: bool, epochs_retrain: int, ci_batches: int,
                 ci_batch_size: int, selection: str = "chip") -> tuple[StageRecord, PrunePlan, CapsNet, str]:
    """Stages 3 and 4: CHIP scores of the CCM model, the plan, the rebuild and its evaluation (for a
    ``selection`` other than "chip", the channel-selection control of :data:`SELECTIONS`)."""
    sel = {} if selection == "chip" else {"selection": selection}  # the paper's keys stay as they were
    key = _chain_key(setup.ccm_key, "pruned", pr=pr, mode=mode, estimator=estimator, I=I,
                     slice=slice_capsule_weights, ci_batches=ci_batches, ci_batch_size=ci_batch_size,
                     seed=cfg.train.seed, epochs=epochs_retrain, **sel)
    path = run.stage_dir("pruned", key)
    done = run.load_finished(path)
    if done is not None:
        stored, result, model = done
        plan_fields = read_json(path / "plan.json", restart=f"this stage (or delete the folder {path})",
                                what="prune plan")
        try:
            plan = PrunePlan.from_dict(plan_fields)
        except (TypeError, KeyError, ValueError) as err:
            raise CheckpointError(f"prune plan {path / 'plan.json'} is not a capslib PrunePlan ({err}). "
                                  f"Delete {path} to rerun this stage, or restore the file.") from None
        return run.record("pruned", stored, result, key, True, path, _plan_columns(plan)), plan, model, key
    run.say(f"[pruned] CHIP scores ({estimator}, {ci_batches}×{ci_batch_size} training images), PR={pr:g}, "
            f"mode={mode}")
    t0 = time.perf_counter()
    source = setup.base_model if selection == "chip_base" else setup.ccm_model
    batches = chip_batches(run.data, ci_batches, ci_batch_size, seed=cfg.train.seed, device=run.device)
    scores = _selection_scores(ci_layer_scores(source, batches, estimator=estimator), selection, cfg.train.seed)
    ci_time = time.perf_counter() - t0
    plan = make_plan(source, scores, pr, mode=mode, estimator=estimator)
    run.say(str(plan).splitlines()[0])
    model = rebuild(source, plan, I=I, slice_capsule_weights=slice_capsule_weights, seed=cfg.train.seed)
    pruned_cfg = _train_cfg(cfg, alpha=0.0, epochs=epochs_retrain, model=model.config)
    result = _evaluate_result(model, pruned_cfg, run, time.perf_counter() - t0)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        save_text_atomic(path / "plan.json", plan.to_json(indent=2))
    run.finish(path, pruned_cfg, result, model)
    extra = {**_plan_columns(plan), "ci_time": round(ci_time, 3)}
    return run.record("pruned", pruned_cfg, result, key, False, path, extra), plan, model, key


#: How the pruned channels are chosen. "chip": the lowest CHIP scores of the CCM model (the paper).
#: The channel-selection controls, with the same per-layer counts (a plan's counts depend only on PR and
#: the widths): "random" (uniform, seeded by the run's seed), "anti_chip" (the *highest* CHIP scores) and
#: "chip_base" (CHIP on the base model, which is then pruned: no CCM).
SELECTIONS = ("chip", "random", "anti_chip", "chip_base")


def _selection_scores(scores: dict[str, Tensor], selection: str, seed: int) -> dict[str, Tensor]:
    """The scores a plan of ``selection`` prunes by (lowest first); see :data:`SELECTIONS`."""
    if selection == "random":
        g = torch.Generator().manual_seed(seed)
        return {layer: torch.rand(len(s), generator=g, dtype=torch.float64) for layer, s in scores.items()}
    if selection == "anti_chip":
        return {layer: -s for layer, s in scores.items()}
    return scores


def _evaluate_result(model: CapsNet, cfg: RunConfig, run: _Runner, t_before: float) -> RunResult:
    """A RunResult for a model that was not trained: validation and test accuracy, probe, params."""
    t0 = time.perf_counter()
    model = model.to(run.device)
    val_acc, _ = evaluate(model, run.data, "val", device=run.device, probe=False)
    test_acc, probe = evaluate(model, run.data, "test", device=run.device, probe=True)
    return RunResult(config=cfg.to_dict(), config_hash=cfg.config_hash(), history=[], best_epoch=0,
                     best_val_acc=val_acc, test_acc=test_acc, params=count_params(model),
                     wall_time=t_before + time.perf_counter() - t0, collapsed=False, probe=probe.to_dict(),
                     provenance=provenance(run.device))


def _plan_columns(plan: PrunePlan) -> dict[str, Any]:
    return {"C_before": plan.C_before, "C_after": plan.C_after, "params_before": plan.params_before,
            "macs_before": plan.macs_before,
            "channels_removed": json.dumps({lp.name: lp.n_removed for lp in plan.layers})}


# ----------------------------------------------------------------------------- public API


def prune_pipeline(
    cfg: RunConfig,
    pr: float,
    *,
    alpha: Optional[float] = None,
    mode: str = "channel",
    estimator: Optional[str] = None,
    I: Optional[int] = None,
    slice_capsule_weights: bool = False,
    epochs_base: Optional[int] = None,
    epochs_ccm: Optional[int] = None,
    epochs_retrain: Optional[int] = None,
    ci_batches: int = 5,
    ci_batch_size: int = 128,
    selection: str = "chip",
    checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
    store: StoreLike = None,
    experiment: str = "prune",
    data: Optional[DataSplits] = None,
    progress: bool = True,
    retrain: bool = True,
) -> PipelineResult:
    """Run the §3.5 pipeline for one pruning ratio: base -> ccm -> pruned -> retrain.

    Args:
        cfg: the base model, data and training settings (``cfg.train.alpha`` is
            ignored for stages 1 and 5, which use the margin loss only).
        pr: pruning ratio in [0, 1).
        alpha: CCM weight of stage 2 (default: ``cfg.train.alpha`` if > 0, else 0.01).
        mode: "channel" (the paper) or "capsule" (drop whole PrimaryCaps types);
            see :mod:`capslib.pruning.prune`.
        estimator: CHIP estimator (:data:`capslib.engine.config.CHIP_ESTIMATORS`): "per_image" (CHIP),
            "batch_mean", or "batch_mean_r4" (the authors' code); None takes ``cfg.model.chip_estimator``
            ("per_image" unless the authors' preset is on).
        I: IntermediateCaps of the rebuilt model (default: as ``cfg.model.I``).
        slice_capsule_weights: slice the capsule weights of the kept types instead
            of re-initialising them (needs mode="capsule" and the same I).
        epochs_base, epochs_ccm, epochs_retrain: epochs of stages 1, 2 and 5
            (default ``cfg.train.epochs``).
        ci_batches, ci_batch_size: training images CHIP scores on (5 × 128 as in CHIP).
        selection: which channels go (:data:`SELECTIONS`): "chip" (the paper) or a channel-selection
            control with the same per-layer counts.
        checkpoint_dir: stage folders go here; finished stages are reused (module docstring).
            None: nothing is written except the store rows, and nothing resumes.
        store: a :class:`ResultsStore` or CSV path; default ``results/<experiment>/<profile>.csv``.
        experiment: the rows' experiment name.
        data: preloaded splits of ``cfg.data`` (loaded when None).
        progress: print stage lines and training progress.
        retrain: False stops before stage 5: the result's ``model`` is then the rebuilt model exactly as
            retraining would receive it, and ``stages["pruned"].config`` the retraining stage's config (what
            :func:`capslib.experiments.criterion_screen.screen_rebuilt` measures).

    Returns:
        :class:`PipelineResult` with one :class:`StageRecord` per stage (each also a store
        row whose ``run_key`` encodes PR, mode, estimator, α and the stage's settings),
        the :class:`PrunePlan` and the retrained model.
    """
    estimator = resolve_estimator(cfg, estimator)
    _check_pipeline_args(pr, mode, estimator, I, ci_batches, ci_batch_size)
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    _check_epochs(epochs_base=epochs_base, epochs_ccm=epochs_ccm, epochs_retrain=epochs_retrain)
    _check_against_config(cfg, mode, I, slice_capsule_weights)
    check_prunable(cfg, pr, mode=mode, I=I, slice_capsule_weights=slice_capsule_weights)
    a = _resolve_alpha(cfg, alpha)
    e = cfg.train.epochs
    eb, ec, er = epochs_base or e, epochs_ccm or e, epochs_retrain or e
    key_extra = f"pipeline|pr={pr:g}|mode={mode}|estimator={estimator}|alpha={a:g}|I={I}|slice={slice_capsule_weights}"
    key_extra += "" if selection == "chip" else f"|selection={selection}"
    extra = {"pr": pr, "prune_mode": mode, "ci_estimator": estimator, "ccm_alpha": a,
             "prune_I": "" if I is None else I, "slice_capsule_weights": slice_capsule_weights,
             "selection": selection}
    run = _make_runner(cfg, data, checkpoint_dir, store, experiment, progress, key_extra, extra)
    setup = _run_base_and_ccm(run, cfg, a, eb, ec)
    pruned, plan, model, key = _prune_stage(run, cfg, setup, pr=pr, mode=mode, estimator=estimator, I=I,
                                            slice_capsule_weights=slice_capsule_weights, epochs_retrain=er,
                                            ci_batches=ci_batches, ci_batch_size=ci_batch_size,
                                            selection=selection)
    if not retrain:
        return PipelineResult(pr=pr, mode=mode, estimator=estimator, alpha=a, plan=plan, model=model,
                              stages={r.stage: r for r in setup.records + [pruned]}, checkpoint_dir=run.root)
    retrain_cfg = pruned.config
    retrain_key = _chain_key(key, "retrain", config=retrain_cfg.config_hash())
    retrain, model = run.fit_stage("retrain", retrain_cfg, retrain_key, model=model, extra=_plan_columns(plan))
    stages = {r.stage: r for r in setup.records + [pruned, retrain]}
    return PipelineResult(pr=pr, mode=mode, estimator=estimator, alpha=a, stages=stages, plan=plan, model=model,
                          checkpoint_dir=run.root)


def depth_search(
    cfg: RunConfig,
    pr: Optional[float] = None,
    max_I: int = 10,
    *,
    start_I: int = 1,
    base_I: int = 0,
    epochs: Optional[int] = None,
    alpha: Optional[float] = None,
    mode: str = "channel",
    estimator: Optional[str] = None,
    epochs_base: Optional[int] = None,
    epochs_ccm: Optional[int] = None,
    ci_batches: int = 5,
    ci_batch_size: int = 128,
    checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
    store: StoreLike = None,
    experiment: str = "depth",
    data: Optional[DataSplits] = None,
    progress: bool = True,
) -> DepthSearchResult:
    """The largest number of IntermediateCaps that trains without collapse (§4.1, §4.3, Table 5).

    For I = start_I, start_I + 1, ..., max_I it trains CapsNet[C, D, I] with the
    margin loss for ``epochs`` epochs and stops at the first depth whose run
    collapses (:attr:`RunResult.collapsed`: validation accuracy within 2 points
    of chance for ``cfg.train.collapse_epochs`` consecutive epochs - so ``epochs``
    must be at least that for a collapse to be seen).

    * ``pr=None``: each depth is a fresh CapsNet with ``cfg.model``'s C and D.
    * ``pr`` given: stages 1-3 of :func:`prune_pipeline` run once on the base model
      CapsNet[C, D, base_I] (the paper's BaseCapsNet has I = 0), then each depth
      rebuilds the pruned backbone and PrimaryCaps with I fresh IntermediateCaps
      and retrains it.

    Each depth tried is a store row (stage "depth", column ``depth_I``) and a
    :class:`DepthTrial`; with a ``checkpoint_dir`` finished depths are reused.

    Returns:
        :class:`DepthSearchResult`: ``max_depth`` is the largest I tried that did not
        collapse (None if the first one did), ``collapsed_at`` the depth that stopped
        the search (None if none did), ``trials`` every depth tried, in order.
    """
    if not isinstance(max_I, int) or not isinstance(start_I, int) or start_I < 0 or max_I < start_I:
        raise ValueError(f"need integers 0 <= start_I <= max_I, got start_I={start_I!r}, max_I={max_I!r}")
    estimator = resolve_estimator(cfg, estimator)
    if pr is not None:
        _check_pipeline_args(pr, mode, estimator, base_I, ci_batches, ci_batch_size)
        check_prunable(RunConfig(model=cfg.model.replace(I=base_I), data=cfg.data, train=cfg.train,
                                 profile=cfg.profile), pr, mode=mode)
    _check_epochs(epochs=epochs, epochs_base=epochs_base, epochs_ccm=epochs_ccm)
    e = cfg.train.epochs
    ed = epochs or e
    a = _resolve_alpha(cfg, alpha) if pr is not None else 0.0
    if ed < cfg.train.collapse_epochs and progress:
        print(f"depth search: {ed} epoch(s) per depth < collapse_epochs={cfg.train.collapse_epochs}: "
              "no run can be marked collapsed", flush=True)
    key_extra = (f"depth|pr={'none' if pr is None else f'{pr:g}'}|mode={mode}|estimator={estimator}|alpha={a:g}"
                 f"|base_I={base_I}")
    extra = {"pr": "" if pr is None else pr, "prune_mode": mode if pr is not None else "",
             "ci_estimator": estimator if pr is not None else "", "ccm_alpha": a if pr is not None else ""}
    run = _make_runner(cfg, data, checkpoint_dir, store, experiment, progress, key_extra, extra)

    setup_records: list[StageRecord] = []
    parent, source, plan = "root", None, None
    if pr is not None:
        base = RunConfig(model=cfg.model.replace(I=base_I), data=cfg.data, train=cfg.train, profile=cfg.profile)
        setup = _run_base_and_ccm(run, base, a, epochs_base or e, epochs_ccm or e)
        pruned, plan, _, parent = _prune_stage(run, base, setup, pr=pr, mode=mode, estimator=estimator, I=None,
                                               slice_capsule_weights=False, epochs_retrain=ed,
                                               ci_batches=ci_batches, ci_batch_size=ci_batch_size)
        setup_records, source = setup.records + [pruned], setup.ccm_model

    trials: list[DepthTrial] = []
    collapsed_at = None
    for depth in range(start_I, max_I + 1):
        rec = _depth_trial(run, cfg, depth, ed, parent, source, plan)
        trials.append(DepthTrial(I=depth, val_acc=rec.val_acc, test_acc=rec.test_acc,
                                 collapsed=rec.result.collapsed, params=rec.params, macs=rec.macs, dead=rec.dead,
                                 wall_time=rec.result.wall_time, resumed=rec.resumed))
        if rec.result.collapsed:
            collapsed_at = depth
            break
    ok = [t.I for t in trials if not t.collapsed]
    return DepthSearchResult(pr=pr, max_depth=max(ok) if ok else None, trials=trials, collapsed_at=collapsed_at,
                             setup=setup_records)


def _depth_trial(run: _Runner, cfg: RunConfig, depth: int, epochs: int, parent: str,
                 source: Optional[CapsNet], plan: Optional[PrunePlan]) -> StageRecord:
    """Train one depth: a fresh CapsNet[C, D, depth], or the pruned model rebuilt with ``depth`` layers."""
    if plan is None:
        model_cfg, model = cfg.model.replace(I=depth), None
    else:
        model = rebuild(source, plan, I=depth, seed=cfg.train.seed)
        model_cfg = model.config
    depth_cfg = _train_cfg(cfg, alpha=0.0, epochs=epochs, model=model_cfg)
    key = _chain_key(parent, "depth", config=depth_cfg.config_hash())
    extra = {"depth_I": depth, **({} if plan is None else _plan_columns(plan))}
    rec, _ = run.fit_stage("depth", depth_cfg, key, model=model, extra=extra)
    return rec


def resolve_estimator(cfg: RunConfig, estimator: Optional[str]) -> str:
    """The CHIP estimator a pipeline uses: the one asked for, else the config's ``chip_estimator``
    ("per_image" by default, "batch_mean_r4" under the authors' preset)."""
    return estimator if estimator is not None else cfg.model.chip_estimator


def _check_pipeline_args(pr: float, mode: str, estimator: str, I: Optional[int], ci_batches: int,
                         ci_batch_size: int) -> None:
    if not isinstance(pr, (int, float)) or isinstance(pr, bool) or not 0.0 <= pr < 1.0:
        raise ValueError(f"pruning ratio PR must be in [0, 1), got {pr!r}")
    if mode not in MODES:
        raise ValueError(f"prune mode must be one of {MODES}, got {mode!r}")
    if estimator is not None and estimator not in ESTIMATORS:  # None: the config's chip_estimator
        raise ValueError(f"CHIP estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if I is not None and (not isinstance(I, int) or I < 0):
        raise ValueError(f"I (IntermediateCaps after pruning) must be an integer >= 0, got {I!r}")
    if ci_batches < 1 or ci_batch_size < 1:
        raise ValueError(f"ci_batches and ci_batch_size must be >= 1, got {ci_batches}, {ci_batch_size}")


def _check_against_config(cfg: RunConfig, mode: str, I: Optional[int], slice_capsule_weights: bool) -> None:
    """Refuse, before any training, the settings that the prune or rebuild would refuse."""
    if mode == "capsule" and cfg.model.capsule_layout != "channel":
        raise ValueError("capsule mode needs capsule_layout='channel': with 'reshape' a capsule is D spatial "
                         "values of one channel, not D channels, so there are no whole types to drop")
    if slice_capsule_weights and I is not None and I != cfg.model.I:
        raise ValueError(f"slice_capsule_weights=True keeps the capsule layers, so I must stay {cfg.model.I} "
                         f"(got I={I}); rebuild with fresh capsule layers to change the depth")


def check_prunable(cfg: RunConfig, pr: float, *, mode: str = "channel", I: Optional[int] = None,
                   slice_capsule_weights: bool = False) -> PrunePlan:
    """Plan the prune of ``cfg.model`` at ``pr`` now, before any training, and return that plan.

    How many channels each layer loses depends only on the widths, PR and D, never on the CHIP
    scores, so a plan made with placeholder scores fails exactly when the real one would (a layer
    left with fewer than D channels, ...), and so does the rebuilt model's config.

    Raises:
        ValueError: naming the model, PR and what is wrong; nothing has been trained.
    """
    from ..pruning.prune import _check_sliceable

    m = cfg.model
    widths = (*m.widths, m.C * m.D)
    try:
        plan = make_plan(m, {name: np.arange(n, dtype=np.float64) for name, n in zip(LAYERS, widths)}, pr,
                         mode=mode)
        after = pruned_config(plan, I)
        if slice_capsule_weights:
            _check_sliceable(plan, after)
    except ValueError as err:
        raise ValueError(f"PR={pr:g} cannot be planned for CapsNet[C={m.C}, D={m.D}, I={m.I}] (widths "
                         f"{'/'.join(map(str, m.widths))}, mode {mode}): {err}. Nothing was trained.") from None
    return plan
