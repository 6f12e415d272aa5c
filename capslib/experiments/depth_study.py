"""Seed 002's depth study (Everett, Zhong, Leontidis, *Vanishing Activations*, Figs. 1-7).

For a routing algorithm (dynamic routing, or EM, self-routing, VB; :mod:`capslib.engine.routing_alt`)
and a dataset, train networks with 1..10 ConvCaps layers and record, per depth, the test accuracy
and the average number of dead capsules across the ConvCaps layers (a capsule type is dead when
its mean activation over the evaluation pass, eq. 12, is ≤ 0.01, §3.3). Figs. 6-7 show every
capsule's mean validation activation, one circle per capsule and one row per layer, at epoch 1 and
at the last epoch.

    rows = depth_study("em", "fashion-mnist", depths=(1, 2, 3), profile="smoke")
    rows = routing_comparison(depths=(1, 2, 3))  # dynamic, em, self, vb: the book's routing chapter
    df = depth_frame(rows)                       # routing, depth, test_acc, dead_caps, weakest_act, ...

The figures (Figs. 1-7) are drawn by the routing chapter, :mod:`capslib.book.chapters.routing`.

The runs are the grid points of the named experiment ``seed002_depth``
(:func:`capslib.experiments.grids.seed002_point`, "snapshots" points; ``capslib sweep seed002_depth``),
and both routes store their rows in the same ``results/seed002_depth/<profile>.csv`` under the
same keys, so the sweep and the book share results. A row has the sweep row's keys, plus:

* ``routing``, ``depth``, ``loss`` (the class loss actually used);
* ``dead_caps``: dead capsule types averaged over the ConvCaps layers (final model, test split,
  the count of seed 002's figures) and ``dead_frac`` (the same as a fraction of the types);
* ``dead_caps_init`` / ``dead_frac_init`` and ``acts_init``: the same for the untrained model (the one ``fit``
  builds from the seed) on the validation split (:func:`probe_init`);
* ``acts_first`` / ``acts_last``: JSON ``{layer: [mean activation per type]}`` on the validation
  split after epoch 1 and after the last epoch (Figs. 6-7), ``acts_test`` for the final model.

How the epoch-1 activations are obtained (the simplest honest route): the run trains with a
checkpoint folder, stops after epoch 1 (``fit(..., stop_after_epochs=1)``), the epoch-1 model in
``last.pt`` is probed on the validation split (the probe is saved as ``acts_first.json`` beside the
checkpoint, so a crashed run resumes without losing it), and the run then resumes to the end.
Resuming gives exactly the metrics of an uninterrupted run (tested in ``tests/test_train.py``), so
the study changes nothing it measures. The last-epoch activations come from the last epoch's
``last.pt``, not from the model selected on validation (Fig. 6b is "the end of epoch 50").
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ..engine.config import RunConfig, apply_overrides
from ..engine.probes import ProbeResult
from .grids import SEED002_ROUTINGS, STUDY_ROUTINGS, Point, seed002_point, tag_rows

__all__ = ["SEED002_ROUTINGS", "STUDY_ROUTINGS", "depth_config", "fit_with_snapshots", "study_row", "depth_study",
           "routing_comparison", "depth_frame", "EXPERIMENT"]

#: Name of the experiment (results/<EXPERIMENT>/<profile>.csv) the rows belong to.
EXPERIMENT = "seed002_depth"
_DEFINITION = "paper002"  # eq. (12): for EM/self/VB layers this is the scalar activation itself
Acts = dict[str, list[float]]  # {layer: [mean activation per capsule type]}


def depth_config(routing: str, depth: int, dataset: Optional[str] = None, profile: str = "smoke",
                 seed: int = 0, **overrides: Any) -> RunConfig:
    """The config of one run of the study: the ``seed002_depth`` grid point, on ``dataset``."""
    cfg = seed002_point(routing, depth, profile).config(profile, seed=seed)
    if dataset is not None:
        overrides["dataset"] = dataset
    return apply_overrides(cfg, **overrides) if overrides else cfg


def _acts(probe: ProbeResult) -> Acts:
    return {k: [float(x) for x in v] for k, v in probe.activations[_DEFINITION].items()}


def fit_with_snapshots(cfg: RunConfig, data=None, progress: bool = False,
                       checkpoint_dir: Optional[str | Path] = None):
    """Train as :func:`capslib.engine.train.fit` does and probe the validation split after epoch 1 and
    after the last epoch.

    With ``checkpoint_dir``, an interrupted run resumes there (epochs and the epoch-1 snapshot);
    without it, the checkpoints live in a temporary folder.

    Returns ``(result, model, first, last)``: the :class:`capslib.engine.train.RunResult`, the model
    selected on validation, and the two snapshots as ``{layer: [mean activation per type]}``.
    """
    import torch

    from ..engine.atomic import save_text_atomic
    from ..engine.data import load_splits
    from ..engine.provenance import resolve_device
    from ..engine.train import evaluate, fit, load_model

    data = data if data is not None else load_splits(cfg.data)
    device = resolve_device(cfg.train.device)

    def probe_last(folder: Path) -> Acts:
        model = load_model(cfg, folder / "last.pt", device=str(device))
        return _acts(evaluate(model, data, "val", device=device, probe=True)[1])

    def run(folder: Path):
        first_file, last_file = folder / "acts_first.json", folder / "last.pt"
        if first_file.exists():
            first = json.loads(first_file.read_text())
        else:
            done = int(torch.load(last_file, map_location="cpu", weights_only=True)["epoch"]) \
                if last_file.exists() else 0
            if done > 1:
                raise ValueError(f"{folder} holds a run past epoch 1 without its epoch-1 activations "
                                 f"({first_file.name}); use a fresh checkpoint folder")
            if done == 0:
                fit(cfg, data=data, checkpoint_dir=folder, progress=progress, stop_after_epochs=1)
            first = probe_last(folder)
            save_text_atomic(first_file, json.dumps(first))
        result, model = fit(cfg, data=data, checkpoint_dir=folder, progress=progress)  # resumes after epoch 1
        last = first if cfg.train.epochs == 1 else probe_last(folder)
        return result, model, first, last

    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        return run(Path(checkpoint_dir))
    with tempfile.TemporaryDirectory() as tmp:
        return run(Path(tmp))


def probe_init(cfg: RunConfig, data) -> tuple[Acts, dict[str, float]]:
    """The untrained model ``fit`` would build for ``cfg`` (same seed, dtype), probed on the validation split in
    eval mode as every later probe is: (mean activation per type per layer, dead fraction per layer)."""
    from ..engine.provenance import resolve_device
    from ..engine.train import evaluate
    from .init_study import build_model

    device = resolve_device(cfg.train.device)
    model = build_model(cfg.model, cfg.train.seed, cfg.train.dtype).to(device)
    probe = evaluate(model, data, "val", device=device, probe=True)[1]
    return _acts(probe), dict(probe.dead_fraction(_DEFINITION))


def _dead_summary(dead_fraction: Mapping[str, float], C: int) -> tuple[float, float]:
    """(mean dead count, mean dead fraction) over the ConvCaps layers inter1..interI (NaN if none)."""
    fr = [float(v) for k, v in dead_fraction.items() if str(k).startswith("inter")]
    if not fr:
        return float("nan"), float("nan")
    return float(np.mean(fr) * C), float(np.mean(fr))


def study_row(cfg: RunConfig, point: Point, experiment: str = EXPERIMENT, data=None,
              checkpoint_dir: Optional[str | Path] = None, progress: bool = False) -> dict[str, Any]:
    """Run one "snapshots" point (:func:`fit_with_snapshots`) and return its result row: the
    :func:`capslib.experiments.results.run_row` columns plus those of the module docstring (not yet tagged
    with the sweep's point columns; :func:`capslib.experiments.sweeps.run_point` and :func:`depth_study` do that).
    """
    from .results import run_row

    from ..engine.data import load_splits

    data = data if data is not None else load_splits(cfg.data)
    init_acts, init_dead = probe_init(cfg, data)
    result, _, first, last = fit_with_snapshots(cfg, data=data, progress=progress, checkpoint_dir=checkpoint_dir)
    dead, frac = _dead_summary(result.probe["dead_fraction"][_DEFINITION], cfg.model.C)
    dead_init, frac_init = _dead_summary(init_dead, cfg.model.C)
    extra = dict(routing=cfg.model.routing, depth=cfg.model.I, loss=cfg.loss, dead_caps=dead, dead_frac=frac,
                 dead_caps_init=dead_init, dead_frac_init=frac_init, acts_init=json.dumps(init_acts),
                 acts_first=json.dumps(first), acts_last=json.dumps(last),
                 acts_test=json.dumps(result.probe["activations"][_DEFINITION]))
    return run_row(cfg, result, experiment=experiment, stage="train", key_extra=point.key_extra(), extra=extra)


def depth_study(routing: str, dataset: Optional[str] = None, depths: Iterable[int] = (1, 2, 3),
                profile: str = "smoke", seed: int = 0, store: bool = True, results_root: Optional[str] = None,
                data=None, progress: bool = False, **overrides: Any) -> list[dict[str, Any]]:
    """Seed 002's depth study for one routing algorithm and one dataset: one result row per depth.

    Args:
        routing: "dynamic", "em", "self" or "vb".
        dataset: dataset name; None keeps the profile's.
        depths: numbers of ConvCaps layers (seed 002: 1..10).
        profile: "smoke" (CPU miniature: C = 4, 3×3 poses, 2,000 images, 2 epochs), "fmnist", "paper".
        store: read finished rows from, and append new rows to, ``results/seed002_depth/<profile>.csv``
            (the sweep's store and keys; a stored row is returned without training).
        data: preloaded :class:`capslib.engine.data.DataSplits` of the config's data section.
        overrides: config fields, e.g. ``epochs=3`` or ``C=16``.

    Returns:
        rows as :func:`study_row` makes them, tagged like the sweep's (stored rows parsed back with
        :func:`capslib.experiments.results.parse_row`, so numbers are numbers either way).
    """
    from .results import ResultsStore, parse_row, run_key

    rows = []
    for depth in depths:
        point = seed002_point(routing, depth, profile)
        cfg = depth_config(routing, depth, dataset=dataset, profile=profile, seed=seed, **overrides)
        st = ResultsStore.for_experiment(EXPERIMENT, cfg.profile, results_root) if store else None
        row = st.get(run_key(cfg, "train", point.key_extra())) if st is not None else None
        if row is not None:
            row = parse_row(row)
        else:
            row = tag_rows([study_row(cfg, point, data=data, progress=progress)], EXPERIMENT, cfg, point)[0]
            if st is not None:
                st.append(row)
        rows.append(dict(row))
    return rows


def routing_comparison(routings: Sequence[str] = STUDY_ROUTINGS, depths: Sequence[int] = (1, 2, 3),
                       dataset: Optional[str] = None, profile: str = "smoke", seed: int = 0,
                       results_root: Optional[str] = None, progress: bool = False,
                       **overrides: Any) -> list[dict[str, Any]]:
    """:func:`depth_study` for each routing in turn (the book's routing chapter): the rows of every
    (routing, depth), stored runs read rather than retrained, the data loaded once and only when a
    run must train."""
    from ..engine.data import load_splits

    if not routings or not depths:
        raise ValueError("routing_comparison needs at least one routing and one depth")
    rows, splits = [], {}
    for routing in routings:  # the data section does not depend on the depth
        data_cfg = depth_config(routing, depths[0], dataset=dataset, profile=profile, seed=seed, **overrides).data
        data = splits.setdefault(data_cfg.to_json(), _LazyData(lambda d=data_cfg: load_splits(d)))
        rows += depth_study(routing, dataset, depths, profile=profile, seed=seed, results_root=results_root,
                            data=data, progress=progress, **overrides)
    return rows


class _LazyData:
    """Data splits loaded on first use: only when a run actually trains."""

    def __init__(self, loader):
        self._loader, self._data = loader, None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._data is None:
            self._data = self._loader()
        return getattr(self._data, name)


def _num(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _weakest_layer_activation(acts: Any) -> float:
    """The smallest per-layer mean activation over the ConvCaps layers (NaN without them)."""
    if acts is None or (isinstance(acts, float) and np.isnan(acts)):
        return float("nan")
    means = [float(np.mean(v)) for k, v in _as_acts(acts).items() if str(k).startswith("inter") and len(v)]
    return min(means) if means else float("nan")


def depth_frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """A tidy table, one line per run: routing, dataset, depth, C, D, loss, epochs, seed, test_acc,
    best_val_acc, dead_caps, dead_frac, weakest_act, collapsed, wall_time, profile, config_hash.

    ``weakest_act`` is the smallest mean activation of a ConvCaps layer on the test split (from
    ``acts_test``; NaN for rows without it). Accepts rows of :func:`depth_study`, of the
    ``seed002_depth`` sweep store or of :func:`capslib.experiments.cache.cached_fit` (dead counts are
    recomputed from ``dead_002``).
    """
    records = rows.to_dict(orient="records") if isinstance(rows, pd.DataFrame) else list(rows)
    out = []
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        C = int(_num(r.get("model.C")))
        dead = r.get("dead_002")
        dead = json.loads(dead) if isinstance(dead, str) else (dead or {})
        dead_caps, dead_frac = _dead_summary(dead, C)
        routing = r.get("model.routing", r.get("routing"))
        loss = r.get("loss")
        if not isinstance(loss, str) or not loss:
            loss = r.get("train.loss", "auto")
            if loss in ("auto", None, "") or (isinstance(loss, float) and np.isnan(loss)):
                loss = "spread" if routing in ("em", "vb") else "margin"
        out.append({
            "routing": routing, "dataset": r.get("data.dataset"), "depth": int(_num(r.get("model.I"))),
            "C": C, "D": int(_num(r.get("model.D"))), "loss": loss, "epochs": int(_num(r.get("train.epochs"))),
            "seed": int(_num(r.get("seed", 0))), "test_acc": float(_num(r.get("test_acc"))),
            "best_val_acc": float(_num(r.get("best_val_acc"))), "dead_caps": dead_caps, "dead_frac": dead_frac,
            "weakest_act": _weakest_layer_activation(r.get("acts_test")),
            "collapsed": str(r.get("collapsed")) in ("True", "true", "1"), "wall_time": float(_num(r.get("wall_time"))),
            "profile": r.get("profile"), "config_hash": r.get("config_hash"),
        })
    cols = ["routing", "dataset", "depth", "C", "D", "loss", "epochs", "seed", "test_acc", "best_val_acc",
            "dead_caps", "dead_frac", "weakest_act", "collapsed", "wall_time", "profile", "config_hash"]
    frame = pd.DataFrame(out, columns=cols)
    order = {r: i for i, r in enumerate(STUDY_ROUTINGS)}
    frame["_order"] = frame["routing"].map(lambda r: order.get(r, len(order)))
    return frame.sort_values(["_order", "routing", "dataset", "depth", "seed"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


def _as_acts(x: Any) -> dict[str, list[float]]:
    if isinstance(x, ProbeResult):
        return _acts(x)
    if isinstance(x, str):
        return json.loads(x)
    return {k: list(np.asarray(v, dtype=float)) for k, v in dict(x).items()}
