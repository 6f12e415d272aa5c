"""Seed 002's depth study (Everett, Zhong, Leontidis, *Vanishing Activations*, Figs. 1-7).

For a routing algorithm (EM, self-routing, VB; :mod:`capslib.routing_alt`) and a dataset, train
networks with 1..10 ConvCaps layers and record, per depth, the test accuracy and the average number
of dead capsules across the ConvCaps layers (a capsule type is dead when its mean activation over
the evaluation pass, eq. 12, is ≤ 0.01, §3.3). Figs. 6-7 show every capsule's mean validation
activation, one circle per capsule and one row per layer, at epoch 1 and at the last epoch.

    rows = depth_study("em", "fashion-mnist", depths=(1, 2, 3), profile="smoke")
    df = depth_frame(rows)                       # routing, depth, test_acc, dead_caps, ...
    fig = plot_capsule_activations(rows[-1])     # Figs. 6-7 for the deepest run
    df = routing_comparison(depths=(1, 2, 3))    # for the book: trains or loads via cached_fit

The runs are the grid points of the named experiment ``seed002_depth``
(:func:`capslib.experiments.seed002_point`; ``capslib sweep seed002_depth --profile smoke``), so a
row of :func:`depth_study` has the sweep row's keys, plus:

* ``routing``, ``depth``, ``loss`` (the class loss actually used);
* ``dead_caps``: dead capsule types averaged over the ConvCaps layers (final model, test split,
  the count of seed 002's figures) and ``dead_frac`` (the same as a fraction of the types);
* ``acts_first`` / ``acts_last``: JSON ``{layer: [mean activation per type]}`` on the validation
  split after epoch 1 and after the last epoch (Figs. 6-7), ``acts_test`` for the final model.

How the epoch-1 activations are obtained (the simplest honest route): the run trains with a
checkpoint folder, stops after epoch 1 (``fit(..., stop_after_epochs=1)``), the epoch-1 model in
``last.pt`` is probed on the validation split, and the run then resumes to the end. Resuming gives
exactly the metrics of an uninterrupted run (tested in ``tests/test_train.py``), so the study
changes nothing it measures. The last-epoch activations come from the last epoch's ``last.pt``,
not from the model selected on validation (Fig. 6b is "the end of epoch 50").
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from .config import RunConfig, apply_overrides
from .experiments import SEED002_ROUTINGS, seed002_point
from .probes import DEAD_THRESHOLD, ProbeResult

__all__ = ["SEED002_ROUTINGS", "depth_config", "fit_with_snapshots", "depth_study", "depth_frame",
           "routing_comparison", "plot_capsule_activations", "EXPERIMENT"]

#: Name of the experiment (results/<EXPERIMENT>/<profile>.csv) the rows belong to.
EXPERIMENT = "seed002_depth"
_DEFINITION = "paper002"  # eq. (12): for EM/self/VB layers this is the scalar activation itself


def depth_config(routing: str, depth: int, dataset: Optional[str] = None, profile: str = "smoke",
                 seed: int = 0, **overrides: Any) -> RunConfig:
    """The config of one run of the study: the ``seed002_depth`` grid point, on ``dataset``."""
    cfg = seed002_point(routing, depth, profile).config(profile, seed=seed)
    if dataset is not None:
        overrides["dataset"] = dataset
    return apply_overrides(cfg, **overrides) if overrides else cfg


def _acts(probe: ProbeResult) -> dict[str, list[float]]:
    return {k: [float(x) for x in v] for k, v in probe.activations[_DEFINITION].items()}


def fit_with_snapshots(cfg: RunConfig, data=None, progress: bool = False):
    """Train as :func:`capslib.train.fit` does and probe the validation split after epoch 1 and
    after the last epoch.

    Returns ``(result, model, first, last)``: the :class:`capslib.train.RunResult`, the model
    selected on validation, and the two :class:`capslib.probes.ProbeResult` snapshots.
    """
    from .data import load_splits
    from .provenance import resolve_device
    from .train import evaluate, fit, load_model

    data = data if data is not None else load_splits(cfg.data)
    device = resolve_device(cfg.train.device)

    def probe_last(folder: Path) -> ProbeResult:
        model = load_model(cfg, folder / "last.pt", device=str(device))
        return evaluate(model, data, "val", device=device, probe=True)[1]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result, model = fit(cfg, data=data, checkpoint_dir=folder, progress=progress, stop_after_epochs=1)
        first = probe_last(folder)
        if cfg.train.epochs == 1:
            return result, model, first, first
        result, model = fit(cfg, data=data, checkpoint_dir=folder, progress=progress)  # resumes after epoch 1
        return result, model, first, probe_last(folder)


def _dead_summary(dead_fraction: Mapping[str, float], C: int) -> tuple[float, float]:
    """(mean dead count, mean dead fraction) over the ConvCaps layers inter1..interI (NaN if none)."""
    fr = [float(v) for k, v in dead_fraction.items() if str(k).startswith("inter")]
    if not fr:
        return float("nan"), float("nan")
    return float(np.mean(fr) * C), float(np.mean(fr))


def depth_study(routing: str, dataset: Optional[str] = None, depths: Iterable[int] = (1, 2, 3),
                profile: str = "smoke", seed: int = 0, store: bool = True, results_root: Optional[str] = None,
                data=None, progress: bool = False, **overrides: Any) -> list[dict[str, Any]]:
    """Seed 002's depth study for one routing algorithm and one dataset: one result row per depth.

    Args:
        routing: "em", "self" or "vb" (or "dynamic", for comparison).
        dataset: dataset name; None keeps the profile's.
        depths: numbers of ConvCaps layers (seed 002: 1..10).
        profile: "smoke" (CPU miniature: C = 4, 4×4 poses, 5,000 images, 1 epoch), "fmnist", "paper".
        store: read finished rows from, and append new rows to, ``results/seed002_depth/<profile>.csv``
            (keyed like the sweep's rows; a stored row is returned without training).
        data: preloaded :class:`capslib.data.DataSplits` of the config's data section.
        overrides: config fields, e.g. ``epochs=2`` or ``C=16``.

    Returns:
        rows as :func:`capslib.results.run_row` makes them, tagged like the sweep's, with the extra
        columns of the module docstring.
    """
    from .results import ResultsStore, run_key, run_row
    from .sweeps import _tag

    rows = []
    for depth in depths:
        point = seed002_point(routing, depth, profile)
        cfg = depth_config(routing, depth, dataset=dataset, profile=profile, seed=seed, **overrides)
        st = ResultsStore.for_experiment(EXPERIMENT, cfg.profile, results_root) if store else None
        row = st.get(run_key(cfg, "train", point.key_extra())) if st is not None else None
        if row is None:
            result, _, first, last = fit_with_snapshots(cfg, data=data, progress=progress)
            dead, frac = _dead_summary(result.probe["dead_fraction"][_DEFINITION], cfg.model.C)
            extra = dict(routing=cfg.model.routing, depth=cfg.model.I, loss=cfg.loss, dead_caps=dead, dead_frac=frac,
                         acts_first=json.dumps(_acts(first)), acts_last=json.dumps(_acts(last)),
                         acts_test=json.dumps({k: [float(x) for x in v] for k, v in
                                               result.probe["activations"][_DEFINITION].items()}))
            row = run_row(cfg, result, experiment=EXPERIMENT, stage="train", key_extra=point.key_extra(), extra=extra)
            row = _tag([row], EXPERIMENT, cfg, point)[0]
            if st is not None:
                st.append(row)
        rows.append(dict(row))
    return rows


def _num(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def depth_frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """A tidy table, one line per run: routing, dataset, depth, C, D, loss, epochs, seed, test_acc,
    best_val_acc, dead_caps, dead_frac, collapsed, wall_time, profile, config_hash.

    Accepts rows of :func:`depth_study`, of the ``seed002_depth`` sweep store or of
    :func:`capslib.cache.cached_fit` (dead counts are recomputed from ``dead_002`` where missing).
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
            "collapsed": str(r.get("collapsed")) in ("True", "true", "1"), "wall_time": float(_num(r.get("wall_time"))),
            "profile": r.get("profile"), "config_hash": r.get("config_hash"),
        })
    cols = ["routing", "dataset", "depth", "C", "D", "loss", "epochs", "seed", "test_acc", "best_val_acc",
            "dead_caps", "dead_frac", "collapsed", "wall_time", "profile", "config_hash"]
    return pd.DataFrame(out, columns=cols).sort_values(["routing", "dataset", "depth", "seed"],
                                                       kind="stable").reset_index(drop=True)


def routing_comparison(routings: Sequence[str] = SEED002_ROUTINGS, depths: Sequence[int] = (1, 2, 3),
                       dataset: Optional[str] = None, profile: str = "smoke", seed: int = 0,
                       experiment: str = "book", results_root: Optional[str] = None, progress: bool = False,
                       **overrides: Any) -> pd.DataFrame:
    """Each routing at each depth, trained or loaded through :func:`capslib.cache.cached_fit`, as a
    tidy :func:`depth_frame` (one line per run) for the book's routing chapter.

    The configs are the ``seed002_depth`` grid points (:func:`depth_config`); a stored result is
    never retrained (the cache key holds the config and the library version).
    """
    from .cache import cached_fit
    from .data import load_splits

    rows, splits = [], {}
    for routing in routings:
        for depth in depths:
            cfg = depth_config(routing, depth, dataset=dataset, profile=profile, seed=seed, **overrides)
            data = splits.setdefault(cfg.data.to_json(), _LazyData(lambda d=cfg.data: load_splits(d)))
            row, _ = cached_fit(cfg, experiment=experiment, results_root=results_root, progress=progress, data=data)
            rows.append(row)
    return depth_frame(rows)


class _LazyData:
    """Data splits loaded on first use: only when :func:`cached_fit` actually trains."""

    def __init__(self, loader):
        self._loader, self._data = loader, None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._data is None:
            self._data = self._loader()
        return getattr(self._data, name)


# ----------------------------------------------------------------------------- Figs. 6-7

def _as_acts(x: Any) -> dict[str, list[float]]:
    if isinstance(x, ProbeResult):
        return _acts(x)
    if isinstance(x, str):
        return json.loads(x)
    return {k: list(np.asarray(v, dtype=float)) for k, v in dict(x).items()}


def plot_capsule_activations(first: Any, last: Any = None, layers: Optional[Sequence[str]] = None,
                             include_class: bool = False, threshold: float = DEAD_THRESHOLD,
                             titles: Optional[tuple[str, str]] = None, suptitle: Optional[str] = None,
                             cmap: str = "viridis"):
    """Seed 002 Figs. 6-7: one circle per capsule (type), one row per layer, at epoch 1 and at the end.

    Args:
        first: a :func:`depth_study` row (then ``last`` is taken from it too), or the epoch-1
            activations as a :class:`capslib.probes.ProbeResult`, ``{layer: [a_t]}`` or its JSON.
        last: the last-epoch activations, in the same forms.
        layers: rows to draw, top to bottom (default: PrimaryCaps and the ConvCaps layers, plus the
            class layer with ``include_class``).
        threshold: circles of dead capsules (mean activation ≤ threshold) get a red edge.

    Returns:
        a matplotlib Figure with two panels. The colour (and the fill) of a circle is its mean
        validation activation on a fixed [0, 1] scale.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    if isinstance(first, Mapping) and "acts_first" in first:
        row = first
        first, last = row["acts_first"], row["acts_last"]
        if suptitle is None:
            suptitle = (f"{row.get('model.routing', row.get('routing'))} routing, {row.get('model.I')} ConvCaps "
                        f"layers, {row.get('data.dataset')}: test accuracy {float(row['test_acc']):.1%}")
        if titles is None:
            titles = ("end of epoch 1", f"end of epoch {row.get('train.epochs', 'last')}")
    if last is None:
        raise ValueError("plot_capsule_activations needs the last-epoch activations (or a depth_study row)")
    snaps = [_as_acts(first), _as_acts(last)]
    titles = titles or ("end of epoch 1", "end of the last epoch")
    if layers is None:
        names = list(snaps[0])
        layers = [k for k in names if k != "class"] + (["class"] if include_class and "class" in names else [])
    width = max(len(s[k]) for s in snaps for k in layers)
    norm = Normalize(0.0, 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 2.6 + 0.84 * width), 1.0 + 0.45 * len(layers)), squeeze=False,
                             sharey=True)
    for ax, acts, title in zip(axes[0], snaps, titles):
        for row_i, layer in enumerate(layers):
            vals = np.asarray(acts[layer], dtype=float)
            xs = np.arange(len(vals))
            ys = np.full(len(vals), len(layers) - 1 - row_i)
            dead = vals <= threshold
            ax.scatter(xs, ys, s=150, c=vals, cmap=cmap, norm=norm, edgecolors=np.where(dead, "red", "black"),
                       linewidths=np.where(dead, 1.6, 0.5))
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels(list(reversed(layers)))
        ax.set_xticks(range(width))
        ax.set_xlim(-0.7, width - 0.3)
        ax.set_ylim(-0.7, len(layers) - 0.3)
        ax.set_xlabel("capsule type")
        n_dead = sum(int((np.asarray(acts[k]) <= threshold).sum()) for k in layers)
        ax.set_title(f"{title} ({n_dead} dead)", fontsize=10)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes[0].tolist(), shrink=0.9, label="mean activation (validation)")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10, y=1.0 + 0.25 / fig.get_figheight())
    return fig
