"""How chapters set up and run their models: configs at the chapter's scale, data, cached runs, probes.

* **Configs.** :func:`chapter_config` derives a chapter's :class:`RunConfig` from a profile the same way
  in every chapter. ``None`` means "the chapter's size for this profile", taken from
  :data:`CHAPTER_SCALE` and, for the CHIP, depth and kernels chapters, :data:`CHAPTER_DEFAULTS`
  (:func:`chapter_cfg`): the one place where the smoke profile is kept small (CPU minutes) while
  ``fmnist`` and ``paper`` use the paper's CapsNet[C=20, D=8].
* **Runs.** :func:`run` and :func:`run_grid` go through :func:`capslib.experiments.cache.cached_fit`: a
  run already in the results store (``results/book/<profile>.csv``) is read, not retrained; CPU runs
  train with :data:`BOOK_CPU_THREADS` threads.
* **Probes.** :func:`probe`, :func:`probe_grid` and :func:`grid_table`: capsule activations of trained
  models, tabulated per layer.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd
import torch
from torch import Tensor

from ..engine.config import PROFILES, ConfigError, DataConfig, RunConfig, apply_overrides
from ..engine.config import profile as make_profile
from ..experiments.grids import STUDY_ROUTINGS

# ======================================================================================
# Chapter configs
# ======================================================================================
#: Chapter sizes per profile: where the book's run sizes are set (except the
#: routing chapter's depth study, which runs the ``seed002_depth`` sweep points
#: of :func:`capslib.experiments.grids.seed002_point`, so that book and sweep share
#: results). ``smoke`` keeps a chapter to about a minute of CPU (a real
#: Fashion-MNIST subset, one epoch, C·D small, votes kept in memory; the depth
#: study adds about five); its numbers are a smoke-scale check, never a
#: reproduction. ``fmnist`` and ``paper`` use the paper's CapsNet[C=20, D=8]
#: and the profile's data and epochs.
#: Keys are config fields (bare names, as :func:`capslib.engine.config.profile` takes)
#: plus ``alpha`` for the CCM chapter; ``"*"`` holds every chapter's defaults.
#: The Fashion-MNIST subsets of the book's smoke runs: the one place where their sizes are set.
#: ``"chapters"``: the routing and CCM chapters (the routing chapter's seed-002 depth study uses the
#: same train/val sizes, set with its sweep points in :mod:`capslib.experiments.grids`); ``"tables"``: the
#: CHIP, depth and kernels chapters and the paper-table sweeps they run (1,000 validation images, so
#: that chance level, 10 % ± 2 points, is a reliable collapse signal). :func:`smoke_sizes` reads the
#: sizes back from the configs the runs use, and the README and the book quote them (tests check it).
BOOK_SMOKE_DATA: dict[str, dict[str, int]] = {
    "chapters": dict(train_size=2000, val_size=500, test_size=1000),
    "tables": dict(train_size=1000, val_size=1000, test_size=500),
}

CHAPTER_SCALE: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "*": dict(C=4, D=4, I=1, epochs=1, **BOOK_SMOKE_DATA["chapters"], batch_size=64, recompute_votes=False),
        "ccm": dict(C=8, D=4, I=0, alpha=0.1),
    },
    "fmnist": {
        "*": dict(C=20, D=8, I=1),
        "ccm": dict(I=0, alpha=0.01),
    },
    "paper": {
        "*": dict(C=20, D=8, I=1),
        "ccm": dict(I=0, alpha=0.01),
    },
}


def chapter_scale(profile: str, chapter: Optional[str] = None) -> dict[str, Any]:
    """The chapter's default sizes for ``profile`` (see :data:`CHAPTER_SCALE`)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    table = CHAPTER_SCALE.get(profile, {})
    out = dict(table.get("*", {}))
    if chapter is not None:
        out.update(table.get(chapter, {}))
    return out


def chapter_config(PROFILE: str = "smoke", DATASET: Optional[str] = None, SEED: int = 0,
                   C: Optional[int] = None, D: Optional[int] = None, I: Optional[int] = None,
                   EPOCHS: Optional[int] = None, *, chapter: Optional[str] = None,
                   **overrides: Any) -> RunConfig:
    """The chapter's :class:`RunConfig`: profile, then chapter scale, then the parameters.

    ``None`` keeps the chapter's size for the profile. ``overrides`` are config
    fields (``routing_iters=2``, ``alpha=0.1``, ``model.init_std=0.1``).

    >>> chapter_config("smoke", chapter="routing").model.C
    4
    """
    values = chapter_scale(PROFILE, chapter)
    values.pop("alpha", None)  # not a config default: the CCM chapter sets α per run (ccm_alpha)
    for name, value in (("dataset", DATASET), ("C", C), ("D", D), ("I", I), ("epochs", EPOCHS)):
        if value is not None:
            values[name] = value
    values["seed"] = SEED
    values.update(overrides)
    return make_profile(PROFILE, **values)


def sizes_phrase(train: Optional[int], val: int, test: Optional[int]) -> str:
    """``"2,000 training, 500 validation and 1,000 test images"``: how the book and README quote a subset."""
    def n(v: Optional[int]) -> str:
        return "all" if v is None else f"{v:,}"

    return f"{n(train)} training, {n(val)} validation and {n(test)} test images"


def smoke_sizes() -> dict[str, tuple[Optional[int], int, Optional[int]]]:
    """``{runs: (train, val, test)}``: the image counts of every kind of smoke run, read from the configs
    those runs are built with (``None``: the whole split). The README and the book quote these.

    * ``"profile"``: the ``smoke`` profile itself (:data:`capslib.engine.config.PROFILES`), used by
      ``capslib train`` / ``prune`` / ``sweep`` from the command line;
    * ``"routing, ccm"``: the routing and CCM chapters (:data:`CHAPTER_SCALE`);
    * ``"routing depth study"``: the routing chapter's seed-002 comparison (the ``seed002_depth`` points);
    * ``"chip, depth, kernels"``: those chapters and the paper-table sweeps they run
      (:data:`capslib.book.runner.CHAPTER_DEFAULTS`, :data:`capslib.book.runner.SWEEP_OVERRIDES`).
    """
    from ..experiments.depth_study import depth_config

    def of(cfg: RunConfig) -> tuple[Optional[int], int, Optional[int]]:
        return (cfg.data.train_size, cfg.data.val_size, cfg.data.test_size)

    return {
        "profile": of(PROFILES["smoke"]()),
        "routing, ccm": of(chapter_config("smoke", chapter="routing")),
        "routing depth study": of(depth_config(STUDY_ROUTINGS[0], 1, profile="smoke")),
        "chip, depth, kernels": of(chapter_cfg("smoke", chapter="chip")),
    }


def ccm_alpha(PROFILE: str, ALPHA: Optional[float] = None) -> float:
    """α of the CCM chapter's model: ``ALPHA``, else the chapter's default for the profile."""
    return float(ALPHA) if ALPHA is not None else float(chapter_scale(PROFILE, "ccm")["alpha"])


def describe_config(cfg: RunConfig) -> pd.DataFrame:
    """A one-row table of what a chapter trains: architecture, size, data and budget."""
    from ..engine.model import CapsNet, count_params

    m, d, t = cfg.model, cfg.data, cfg.train
    return pd.DataFrame([{
        "model": f"CapsNet[C={m.C}, D={m.D}, I={m.I}]",
        "routing r": m.routing_iters,
        "backbone widths": "/".join(str(w) for w in m.widths),
        "capsule grid": f"{m.grid}x{m.grid}",
        "parameters": count_params(CapsNet(m)),
        "dataset": d.dataset,
        "train/val/test": f"{d.train_size or 'all'}/{d.val_size}/{d.test_size or 'all'}",
        "epochs": t.epochs,
        "seed": t.seed,
        "profile": cfg.profile,
    }]).set_index("model")


# ======================================================================================
# Data and cached runs
# ======================================================================================
@lru_cache(maxsize=4)
def _splits(data_cfg: DataConfig):
    from ..engine.data import load_splits

    return load_splits(data_cfg)


def load_data(cfg: RunConfig):
    """The :class:`capslib.engine.data.DataSplits` of ``cfg`` (loaded once per process)."""
    return _splits(cfg.data)


def real_batch(cfg: RunConfig, n: int = 256, split: str = "test") -> tuple[Tensor, Tensor]:
    """The first ``n`` images of ``split`` (normalised) and their labels: a fixed, real batch."""
    data = load_data(cfg)
    x, y = next(data.batches(split, n))
    return x, y


#: Intra-op threads of the book's CPU training runs. Pinned because the trained
#: weights depend on the thread count (1, 2 and 4 threads gave weights up to 1e-2
#: apart for the same seed), so a fixed count makes the smoke numbers that nbval
#: checks the same on every machine; one thread also avoids the many-fold
#: slowdown of oversubscribed OpenMP threads on a shared CPU.
BOOK_CPU_THREADS = 1


@contextmanager
def cpu_threads(n: Optional[int]):
    """Run the block with ``torch.set_num_threads(n)`` (no change when ``n`` is None); restore afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def book_threads(fn):
    """Decorator: run an analysis with :data:`BOOK_CPU_THREADS` threads (the chapters' models live on the CPU)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with cpu_threads(BOOK_CPU_THREADS):
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def quiet_run(cfg: Optional[RunConfig] = None):
    """How the book runs library code: :data:`BOOK_CPU_THREADS` threads (unless ``cfg`` trains on a
    GPU) and no library UserWarnings, which would clutter the chapters' outputs."""
    from ..engine.provenance import resolve_device

    threads = BOOK_CPU_THREADS if cfg is None or resolve_device(cfg.train.device).type == "cpu" else None
    with warnings.catch_warnings(), cpu_threads(threads):
        warnings.simplefilter("ignore", UserWarning)
        yield


def run(cfg: RunConfig, need_model: bool = False, experiment: str = "book"):
    """``cached_fit`` for the book: the stored result row of ``cfg`` (trained if missing) and the model.

    Returns ``(row, model)``; ``model`` is None unless ``need_model``. Rows are
    stored in ``results/<experiment>/<profile>.csv``; weights in the model cache.
    A run on the CPU trains with :data:`BOOK_CPU_THREADS` threads.
    """
    from ..experiments.cache import cached_fit

    with quiet_run(cfg):
        return cached_fit(cfg, experiment=experiment, need_model=need_model, data=load_data(cfg))


def run_grid(cfg: RunConfig, field: str, values: Iterable[Any], need_model: bool = False,
             experiment: str = "book") -> tuple[dict[Any, dict], dict[Any, Any]]:
    """Run ``cfg`` once per value of one config field; returns ``({value: row}, {value: model})``."""
    rows, models = {}, {}
    for v in values:
        row, model = run(apply_overrides(cfg, **{field: v}), need_model=need_model, experiment=experiment)
        rows[v], models[v] = row, model
    return rows, models


def layer_order(name: str) -> tuple[int, int]:
    """Sort key of capsule layer names in model order: primary, inter1, inter2, ..., class."""
    if name == "primary":
        return (0, 0)
    if name.startswith("inter") and name[5:].isdigit():
        return (1, int(name[5:]))
    return (2, 0)


def _pct(v: Any, precise: bool = False) -> Any:
    """A fraction as a percentage: whole percent unless ``precise``; NaN and non-numbers as they are."""
    try:
        v = 100 * float(v)
    except (TypeError, ValueError):
        return v
    return v if precise or math.isnan(v) else int(round(v))


def grid_table(rows: Mapping[Any, dict], name: str, layers: Optional[Sequence[str]] = None,
               precise: bool = False) -> pd.DataFrame:
    """Accuracy and dead capsule types per layer (paper 000 definition, test set), in %, of a grid of runs.

    Rounded to whole percent, so that the table is stable across CPUs (the
    exact values stay in the store); ``precise=True`` keeps full precision
    (for figures).
    """
    def pct(v: Any) -> Any:
        return _pct(v, precise)

    out = []
    for v, row in rows.items():
        dead = row.get("dead_000") or {}
        rec = {name: v, "test acc (%)": pct(row["test_acc"]), "best val acc (%)": pct(row["best_val_acc"])}
        for layer in (layers or sorted(dead, key=layer_order)):
            rec[f"dead {layer} (%)"] = pct(dead.get(layer, float("nan")))
        out.append(rec)
    return pd.DataFrame(out).set_index(name)


def _device(model) -> torch.device:
    """The device a model's weights are on (a model fresh from training may be on a GPU, one from the cache on CPU)."""
    return next(model.parameters()).device


@book_threads
def probe(model, cfg: RunConfig, split: str = "test", batch_size: int = 256):
    """Capsule activations (:class:`capslib.engine.probes.ProbeResult`) of ``model`` over ``split``."""
    from ..engine.probes import probe_model

    data = load_data(cfg)
    return probe_model(model, data.batches(split, batch_size), device=_device(model))


def probe_grid(models: Mapping[Any, Any], cfg: RunConfig, split: str = "test") -> dict:
    """:func:`probe` for every model of a grid."""
    return {k: probe(m, cfg, split) for k, m in models.items()}


# ======================================================================================
# Scale: the one place for the smoke sizes of these chapters and their sweeps
# ======================================================================================
def _smoke_data() -> dict[str, Any]:
    return dict(BOOK_SMOKE_DATA["tables"], collapse_epochs=1)


_SMOKE_DATA = _smoke_data()

#: Chapter sizes per profile, applied on top of :data:`capslib.book.runner.CHAPTER_SCALE`
#: (``None`` parameters take these). ``"*"`` holds every chapter's. Smoke: 1,000
#: training images, 1,000 validation images (chance-level collapse detection:
#: 10 % ± 2 points, with ``collapse_epochs=1`` because a smoke run has one
#: epoch), 500 test images; CapsNet[C=8, D=4] is the smallest configuration
#: whose every layer can be pruned in multiples of D (C=4, D=4 has a 4-channel
#: conv1, which any PR > 0 would empty).
CHAPTER_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "*": dict(_SMOKE_DATA),
        "chip": dict(C=8, D=4, I=0),
        "kernels": dict(C=8, D=4, I=0),
        "depth": dict(C=8, D=4, I=2),
    },
    "fmnist": {"chip": dict(I=0), "kernels": dict(I=0), "depth": dict(I=12)},
    "paper": {"chip": dict(I=0), "kernels": dict(I=0), "depth": dict(I=12)},
}

#: Config overrides of the paper-table sweeps the chapters run, per profile;
#: ``"*"`` applies to every table. Table 1 is the BaseCapsNet (I = 0), which the
#: smoke profile (I = 1) would otherwise not give.
SWEEP_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {"*": dict(_SMOKE_DATA, recompute_votes=False), "table1": dict(I=0)},
    "fmnist": {"table1": dict(I=0)},
    "paper": {"table1": dict(I=0)},
}


def _defaults(profile: str, chapter: str) -> dict[str, Any]:
    table = CHAPTER_DEFAULTS.get(profile, {})
    return {**table.get("*", {}), **table.get(chapter, {})}


def chapter_cfg(PROFILE: str = "smoke", DATASET: Optional[str] = None, SEED: int = 0, C: Optional[int] = None,
                D: Optional[int] = None, I: Optional[int] = None, EPOCHS: Optional[int] = None, *,
                chapter: str, **overrides: Any) -> RunConfig:
    """:func:`capslib.book.runner.chapter_config` with this module's :data:`CHAPTER_DEFAULTS`.

    >>> chapter_cfg("smoke", chapter="chip").model.C
    8
    """

    d = _defaults(PROFILE, chapter)
    C = d.pop("C", None) if C is None else C
    D = d.pop("D", None) if D is None else D
    I = d.pop("I", None) if I is None else I
    for k in ("C", "D", "I"):
        d.pop(k, None)
    d.update(overrides)
    return chapter_config(PROFILE, DATASET, SEED, C, D, I, EPOCHS, chapter=chapter, **d)


@contextmanager
def quiet_threads():
    """The book's CPU thread count (:data:`capslib.book.runner.BOOK_CPU_THREADS`) and no library warnings."""

    with quiet_run():
        yield
