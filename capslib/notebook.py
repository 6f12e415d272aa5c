"""Helpers the book's chapters share: parameters, configs, cached runs and the analyses behind the figures.

A chapter is a papermill-parameterized notebook whose cells are a few lines
that call this module and :mod:`capslib.plots`. Everything a chapter computes
lives here, so that no logic exists only inside a notebook:

* **Parameters.** The cell tagged ``parameters`` sets ``PROFILE``, ``DATASET``,
  ``SEED``, ``C``, ``D``, ``I``, ``EPOCHS`` and the chapter's own knobs. The next
  cell calls :func:`check_parameters` (``check_parameters(globals(), "routing")``),
  which stops the run at once, before any training, on an unknown name
  (``papermill -p FOO 1`` injects ``FOO`` as a global) or a value out of range,
  with a message that lists every valid parameter and its range.
* **Configs.** :func:`chapter_config` derives a chapter's :class:`RunConfig`
  from a profile the same way in every chapter. ``None`` means "the chapter's
  size for this profile", taken from :data:`CHAPTER_SCALE`, the one place where
  the smoke profile is kept small (CPU minutes) while ``fmnist`` and ``paper``
  use the paper's CapsNet[C=20, D=8].
* **Runs.** :func:`run` and :func:`run_grid` go through
  :func:`capslib.cache.cached_fit`: a run already in the results store
  (``results/book/<profile>.csv``) is read, not retrained.
* **Analyses.** Routing traces of a trained layer on a real batch
  (:func:`routing_trace`, :func:`trace_summary`), capsule activations
  (:func:`probe`), channel correlations (:func:`layer_correlations`) and their
  comparisons.
* **Display.** :func:`show_table` and :func:`show_figure` put the provenance
  footer of :func:`capslib.plots.provenance_footer` under every table and figure.
"""
from __future__ import annotations

import difflib
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .config import (DATASETS, PROFILES, ROUTINGS, ConfigError, DataConfig, RunConfig, apply_overrides,
                     canonical_dataset)
from .experiments import STUDY_ROUTINGS
from .config import profile as make_profile

__all__ = [
    "ParameterError",
    "apply_overrides",
    "Param",
    "COMMON_PARAMS",
    "CHAPTER_PARAMS",
    "CHAPTER_SCALE",
    "check_parameters",
    "describe_parameters",
    "chapter_scale",
    "chapter_config",
    "BOOK_SMOKE_DATA",
    "sizes_phrase",
    "smoke_sizes",
    "ccm_alpha",
    "describe_config",
    "load_data",
    "real_batch",
    "BOOK_CPU_THREADS",
    "cpu_threads",
    "quiet_run",
    "run",
    "run_grid",
    "routing_study",
    "study_table",
    "grid_table",
    "layer_order",
    "probe",
    "probe_grid",
    "layer_votes",
    "routing_trace",
    "trace_summary",
    "trace_samples",
    "layer_correlations",
    "correlation_table",
    "max_abs_delta",
    "max_weight_delta",
    "routed_layers",
    "routing_traces",
    "trace_table",
    "trace_sample_table",
    "trace_matches_forward",
    "squash_table",
    "alpha_grid",
    "switch_table",
    "show_with_slider",
    "show_table",
    "show_figure",
]


# ======================================================================================
# Parameters
# ======================================================================================
class ParameterError(ValueError):
    """A chapter parameter is unknown or out of range; the message lists the valid ones."""


_NUMBER_KINDS = ("int", "float")
_LIST_KINDS = ("int_list", "float_list")


@dataclass(frozen=True)
class Param:
    """One chapter parameter: its kind, default, range or choices, and what it means.

    ``kind`` is ``"int"``, ``"float"``, ``"choice"``, ``"int_list"``,
    ``"float_list"`` or ``"choice_list"`` (distinct items of ``choices``).
    ``low``/``high`` bound numbers (and list items);
    ``high_open`` makes the upper bound exclusive. ``optional`` allows ``None``
    (meaning: the chapter's default for the profile).
    """

    kind: str
    default: Any
    help: str
    low: Optional[float] = None
    high: Optional[float] = None
    high_open: bool = False
    low_open: bool = False
    choices: tuple = ()
    optional: bool = False

    def describe(self) -> str:
        """The valid values in words, e.g. ``int >= 1, or None``."""
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "choice_list":
            text = "list of distinct items of " + ", ".join(repr(c) for c in self.choices)
        else:
            base = {"int": "int", "float": "number", "int_list": "list of ints",
                    "float_list": "list of numbers"}[self.kind]
            text = base + self._range_text(each=self.kind in _LIST_KINDS)
        if self.optional:
            text += ", or None"
        return text

    def _range_text(self, each: bool = False) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        if not parts:
            return ""
        return (" (each " if each else " ") + " and ".join(parts) + (")" if each else "")

    def _in_range(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        if self.high is not None and (x >= self.high if self.high_open else x > self.high):
            return False
        return True

    def _number(self, value: Any, kind: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError
        if kind == "int":
            if isinstance(value, (float, np.floating)):
                if not float(value).is_integer():
                    raise TypeError
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise TypeError
        if not self._in_range(value):
            raise ValueError
        return value

    def _choice_list(self, value: Any) -> list:
        if isinstance(value, str):  # "em,vb" or "[em, vb]", as `papermill -p` may pass it
            value = [v.strip().strip("'\"") for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
            raise TypeError
        lookup = {str(c).lower(): c for c in self.choices}
        out = [lookup.get(v.strip().lower()) for v in value]
        if None in out or len(set(out)) != len(out):
            raise ValueError
        return out

    def validate(self, value: Any) -> Any:
        """The value, normalised (aliases resolved, strings split into lists); raises ValueError/TypeError."""
        if value is None:
            if self.optional:
                return None
            raise TypeError
        if self.kind == "choice":
            if isinstance(value, str):
                key = value.strip()
                for c in self.choices:
                    if key.lower() == str(c).lower():
                        return c
                if self.choices == tuple(DATASETS):
                    try:
                        return canonical_dataset(key)
                    except ConfigError:
                        pass
            raise ValueError
        if self.kind in _NUMBER_KINDS:
            return self._number(value, self.kind)
        if self.kind == "choice_list":
            return self._choice_list(value)
        # lists: accept a list/tuple or a comma-separated string ("1,2,3", as `papermill -p` passes it)
        if isinstance(value, str):
            items = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            try:
                value = [float(v) for v in items]
            except ValueError:
                raise TypeError from None
        if not isinstance(value, (list, tuple)) or not value:
            raise TypeError
        item_kind = self.kind.split("_")[0]
        out = [self._number(v, item_kind) for v in value]
        if len(set(out)) != len(out):
            raise ValueError
        return out


def _int(default, help, low=None, high=None, optional=False, **kw) -> Param:
    return Param("int", default, help, low=low, high=high, optional=optional, **kw)


def _float(default, help, low=None, high=None, optional=False, **kw) -> Param:
    return Param("float", default, help, low=low, high=high, optional=optional, **kw)


#: Parameters every chapter has. ``None`` means the chapter's size for the profile (CHAPTER_SCALE).
COMMON_PARAMS: dict[str, Param] = {
    "PROFILE": Param("choice", "smoke", "named profile (capslib.config.PROFILES)", choices=tuple(PROFILES)),
    "DATASET": Param("choice", None, "dataset; None: the profile's (smoke, fmnist: fashion-mnist; paper: cifar10)",
                     choices=tuple(DATASETS), optional=True),
    "SEED": _int(0, "training seed (initial weights and batch order)", low=0),
    "C": _int(None, "capsule types per capsule layer", low=1, optional=True),
    "D": _int(None, "capsule dimensions", low=1, optional=True),
    "I": _int(None, "IntermediateCaps (ConvCaps) layers", low=0, optional=True),
    "EPOCHS": _int(None, "training epochs", low=1, optional=True),
}

#: Each chapter's parameters: the common ones plus its own knobs.
CHAPTER_PARAMS: dict[str, dict[str, Param]] = {
    "routing": {
        **COMMON_PARAMS,
        "R": _int(3, "routing iterations r of the traced model (the paper uses 3)", low=1, high=20),
        "R_VALUES": Param("int_list", [1, 2, 3], "routing iterations compared in the r grid", low=1, high=20),
        "TRACE_ITERS": _int(6, "iterations run when tracing the trained layers' routing", low=1, high=50),
        "BATCH": _int(256, "real images in the traced batch", low=1, high=10000),
        "ROUTINGS": Param("choice_list", list(STUDY_ROUTINGS), "routing algorithms compared at depth (seed 002)",
                          choices=tuple(ROUTINGS)),
        "STUDY_DEPTHS": Param("int_list", [1, 2, 3], "ConvCaps depths of the routing comparison (seed 002: 1..10)",
                              low=1, high=10),
    },
    "ccm": {
        **COMMON_PARAMS,
        "ALPHA": _float(None, "CCM weight α of the CCM model; None: the chapter's default for the profile",
                        low=0, low_open=True, optional=True),
        "ALPHAS": Param("float_list", [0.0, 0.01, 0.1], "α values compared in the α grid", low=0),
        "BATCH": _int(256, "real images whose feature maps give the correlations", low=2, high=10000),
    },
    "chip": {**COMMON_PARAMS, "PR": _float(0.25, "pruning ratio", low=0, high=1, high_open=True)},
    "depth": {**COMMON_PARAMS, "PR": _float(0.25, "pruning ratio", low=0, high=1, high_open=True)},
    "kernels": {**COMMON_PARAMS, "PR": _float(0.25, "pruning ratio", low=0, high=1, high_open=True)},
}

# Names IPython and Jupyter put in a kernel's namespace that are not parameters.
_KERNEL_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}
_PARAM_TYPES = (str, int, float, bool, list, tuple, dict, type(None), np.integer, np.floating)


def describe_parameters(spec: Mapping[str, Param] | str) -> str:
    """One line per parameter: ``NAME = default  # valid values: what it means``."""
    spec = _spec(spec)
    width = max(len(k) for k in spec)
    return "\n".join(f"  {name:<{width}}  {p.describe()}  (default {p.default!r}): {p.help}"
                     for name, p in spec.items())


def _spec(spec: Mapping[str, Param] | str) -> Mapping[str, Param]:
    if isinstance(spec, str):
        if spec not in CHAPTER_PARAMS:
            raise ParameterError(f"no parameter spec for chapter {spec!r}; chapters: {sorted(CHAPTER_PARAMS)}")
        return CHAPTER_PARAMS[spec]
    return spec


def _assigned_names(source: str) -> set[str]:
    """Names a cell assigns at top level (``NAME = ...``, ``A, B = ...``, ``NAME: int = ...``)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()

    def targets(node):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                targets(elt)

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            for t in stmt.targets:
                targets(t)
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            targets(stmt.target)
    return names


def _candidate_parameters(namespace: Mapping[str, Any]) -> list[str]:
    """Names in ``namespace`` that were set as parameters.

    In a kernel, IPython's input history ``In`` says which cells ran: the
    parameters are the names assigned by the cells that ran before the first
    call of ``check_parameters`` (the ``parameters`` cell and papermill's
    injected cell), so re-running the check later in a live session does not
    mistake the chapter's own variables for parameters. Without a history
    (a plain dict), every public global holding a plain value (str, number,
    bool, list, dict, None) counts.
    """
    history = namespace.get("In")
    if isinstance(history, list) and len(history) > 1 and all(isinstance(h, str) for h in history):
        first = next((i for i, src in enumerate(history) if "check_parameters(" in src), len(history))
        names: set[str] = set()
        for src in history[1:first]:
            names |= _assigned_names(src)
        return sorted(n for n in names if n in namespace and not n.startswith("_"))
    return sorted(
        name for name, value in namespace.items()
        if not name.startswith("_") and name not in _KERNEL_NAMES and isinstance(value, _PARAM_TYPES)
    )


def check_parameters(namespace: dict, spec: Mapping[str, Param] | str) -> dict[str, Any]:
    """Stop a chapter at once on an unknown parameter or a bad value.

    Call it in the first cell after the ``parameters`` cell as
    ``check_parameters(globals(), "routing")`` (or with a dict of
    :class:`Param`). papermill injects every ``-p NAME VALUE`` as a global, so
    a parameter name the spec does not list is an error (a typo such as
    ``-p d 8`` would otherwise be silently ignored), and so is a value out of
    range (``-p D 0``, ``-p PR 1.5``, ``-p PROFILE huge``) - before any data is
    loaded or any model trained, not deep inside training.

    Returns the validated values, and writes normalised values back into
    ``namespace`` (e.g. ``DATASET="FashionMNIST"`` becomes ``"fashion-mnist"``,
    ``R_VALUES="1,2"`` becomes ``[1, 2]``).

    Raises:
        ParameterError (a ValueError): naming every bad parameter, followed by
        the valid parameters with their ranges or choices and defaults.
    """
    spec = _spec(spec)
    problems: list[str] = []
    for name in _candidate_parameters(namespace):
        if name in spec:
            continue
        close = difflib.get_close_matches(name, list(spec), n=1) or difflib.get_close_matches(
            name.upper(), list(spec), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"unknown parameter {name} = {namespace[name]!r}{hint}")
    values: dict[str, Any] = {}
    for name, p in spec.items():
        if name not in namespace:
            problems.append(f"parameter {name} is not set (the parameters cell must define it)")
            continue
        try:
            values[name] = p.validate(namespace[name])
        except (TypeError, ValueError):
            problems.append(f"bad value {name} = {namespace[name]!r}: must be {p.describe()}")
    if problems:
        raise ParameterError(
            "; ".join(problems)
            + ".\nValid parameters (papermill -p NAME VALUE):\n" + describe_parameters(spec)
        )
    namespace.update(values)
    return values


# ======================================================================================
# Chapter configs
# ======================================================================================
#: Chapter sizes per profile: where the book's run sizes are set (except the
#: routing chapter's depth study, which runs the ``seed002_depth`` sweep points
#: of :func:`capslib.experiments.seed002_point`, so that book and sweep share
#: results). ``smoke`` keeps a chapter to about a minute of CPU (a real
#: Fashion-MNIST subset, one epoch, C·D small, votes kept in memory; the depth
#: study adds about five); its numbers are a smoke-scale check, never a
#: reproduction. ``fmnist`` and ``paper`` use the paper's CapsNet[C=20, D=8]
#: and the profile's data and epochs.
#: Keys are config fields (bare names, as :func:`capslib.config.profile` takes)
#: plus ``alpha`` for the CCM chapter; ``"*"`` holds every chapter's defaults.
#: The Fashion-MNIST subsets of the book's smoke runs: the one place where their sizes are set.
#: ``"chapters"``: the routing and CCM chapters (the routing chapter's seed-002 depth study uses the
#: same train/val sizes, set with its sweep points in :mod:`capslib.experiments`); ``"tables"``: the
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

    * ``"profile"``: the ``smoke`` profile itself (:data:`capslib.config.PROFILES`), used by
      ``capslib train`` / ``prune`` / ``sweep`` from the command line;
    * ``"routing, ccm"``: the routing and CCM chapters (:data:`CHAPTER_SCALE`);
    * ``"routing depth study"``: the routing chapter's seed-002 comparison (the ``seed002_depth`` points);
    * ``"chip, depth, kernels"``: those chapters and the paper-table sweeps they run
      (:data:`capslib.figures.CHAPTER_DEFAULTS`, :data:`capslib.figures.SWEEP_OVERRIDES`).
    """
    from . import figures as fg
    from .depth_study import depth_config

    def of(cfg: RunConfig) -> tuple[Optional[int], int, Optional[int]]:
        return (cfg.data.train_size, cfg.data.val_size, cfg.data.test_size)

    return {
        "profile": of(PROFILES["smoke"]()),
        "routing, ccm": of(chapter_config("smoke", chapter="routing")),
        "routing depth study": of(depth_config(STUDY_ROUTINGS[0], 1, profile="smoke")),
        "chip, depth, kernels": of(fg.chapter_cfg("smoke", chapter="chip")),
    }


def ccm_alpha(PROFILE: str, ALPHA: Optional[float] = None) -> float:
    """α of the CCM chapter's model: ``ALPHA``, else the chapter's default for the profile."""
    return float(ALPHA) if ALPHA is not None else float(chapter_scale(PROFILE, "ccm")["alpha"])


def describe_config(cfg: RunConfig) -> pd.DataFrame:
    """A one-row table of what a chapter trains: architecture, size, data and budget."""
    from .model import CapsNet, count_params

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
    from .data import load_splits

    return load_splits(data_cfg)


def load_data(cfg: RunConfig):
    """The :class:`capslib.data.DataSplits` of ``cfg`` (loaded once per process)."""
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
    from .provenance import resolve_device

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
    from .cache import cached_fit

    with quiet_run(cfg):
        return cached_fit(cfg, experiment=experiment, need_model=need_model, data=load_data(cfg))


def routing_study(PROFILE: str, DATASET: Optional[str], SEED: int, routings: Sequence[str],
                  depths: Sequence[int]) -> list[dict]:
    """The routing chapter's depth comparison: :func:`capslib.depth_study.routing_comparison` rows,
    stored in (and read from) ``results/seed002_depth/<profile>.csv``, the ``seed002_depth`` sweep's
    store; a run on the CPU trains with :data:`BOOK_CPU_THREADS` threads."""
    from .depth_study import depth_config, routing_comparison

    with quiet_run(depth_config(routings[0], depths[0], dataset=DATASET, profile=PROFILE, seed=SEED)):
        return routing_comparison(routings, depths, dataset=DATASET, profile=PROFILE, seed=SEED)


def study_table(rows: Iterable[Mapping[str, Any]], precise: bool = False) -> pd.DataFrame:
    """One line per (routing, depth) of :func:`routing_study`: loss, test accuracy (%), dead capsule
    types averaged over the ConvCaps layers, and the weakest ConvCaps layer's mean activation.
    Rounded for print (whole percent, one decimal, two significant digits) unless ``precise``."""
    from .depth_study import depth_frame

    df = depth_frame(rows)
    table = pd.DataFrame({
        "routing": df["routing"], "ConvCaps layers": df["depth"], "C": df["C"], "D": df["D"], "loss": df["loss"],
        "epochs": df["epochs"], "test acc (%)": 100 * df["test_acc"], "dead types": df["dead_caps"],
        "weakest mean activation": df["weakest_act"],
    })
    if not precise:
        table["test acc (%)"] = table["test acc (%)"].round(0).astype(int)
        table["dead types"] = table["dead types"].round(1)
        table["weakest mean activation"] = table["weakest mean activation"].map(lambda v: float(f"{v:.2g}"))
    return table.set_index(["routing", "ConvCaps layers"])


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


def _pct(v: Any, precise: bool) -> Any:
    v = 100 * float(v)
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
    """Capsule activations (:class:`capslib.probes.ProbeResult`) of ``model`` over ``split``."""
    from .probes import probe_model

    data = load_data(cfg)
    return probe_model(model, data.batches(split, batch_size), device=_device(model))


def probe_grid(models: Mapping[Any, Any], cfg: RunConfig, split: str = "test") -> dict:
    """:func:`probe` for every model of a grid."""
    return {k: probe(m, cfg, split) for k, m in models.items()}


# ======================================================================================
# Routing on a real batch
# ======================================================================================
@book_threads
@torch.no_grad()
def layer_votes(model, x: Tensor, layer: str = "class") -> Tensor:
    """The votes ``u_hat`` a trained capsule layer routes for the batch ``x``.

    ``layer`` is ``"class"`` (ClassCaps: every capsule of the last grid votes
    for every class) or ``"inter1"``, ``"inter2"``, ... (a ConvCaps layer: each
    of the k·k·C capsules of a window votes for the C types at its location).

    Returns ``(n, J, K, D)`` as :func:`capslib.routing.dynamic_routing` reads it:
    n = B for ClassCaps, B·H·W for ConvCaps; J parents; K children.
    """
    from .capsules import capsule_votes, unfold_capsules

    if model.config.routing != "dynamic":
        raise ValueError(f"routing traces are for dynamic routing; this model uses {model.config.routing!r}")
    model.eval()
    out = model(x.to(_device(model)))
    names = model.capsule_layer_names  # primary, inter1.., class
    if layer not in names or layer == "primary":
        raise ValueError(f"layer must be one of {names[1:]}, got {layer!r}")
    below = names[names.index(layer) - 1]
    u = out.capsules[below]  # (B, H, W, C, D)
    if layer == "class":
        B = u.shape[0]
        return capsule_votes(u.reshape(B, -1, u.shape[-1]), model.classcaps.weight.float())  # (B, N, K, M)
    conv = model.intermediate[int(layer.removeprefix("inter")) - 1]
    windows, _, _ = unfold_capsules(u, conv.kernel, conv.stride, conv.padding)  # (B·L, 9C, D)
    return capsule_votes(windows, conv.weight.float())  # (B·L, C, 9C, D)


@book_threads
@torch.no_grad()
def routing_trace(model, x: Tensor, layer: str = "class", iters: int = 3):
    """Re-run dynamic routing of a trained layer on ``x`` for ``iters`` iterations, recording each one.

    Returns ``(trace, v)``: a :class:`capslib.routing.RoutingTrace` (c,
    agreement and v per iteration) and the final parent capsules. With
    ``iters`` equal to the model's ``routing_iters``, ``v`` is exactly what the
    layer outputs in the forward pass.
    """
    from .routing import RoutingTrace, dynamic_routing

    trace = RoutingTrace([], [], [])
    v, _ = dynamic_routing(layer_votes(model, x, layer), iters, trace=trace)
    return trace, v


def _entropy(c: Tensor) -> Tensor:
    """Entropy over the parents (dim 1) of coupling coefficients (n, J, K), normalised by log J: in [0, 1]."""
    J = c.shape[1]
    h = -(c * torch.log(c.clamp_min(1e-30))).sum(dim=1)  # (n, K)
    return h / math.log(J) if J > 1 else torch.zeros_like(h)


def trace_summary(trace, labels: Optional[Tensor] = None, layer: str = "") -> pd.DataFrame:
    """Per routing iteration r: how peaked the couplings are and how much the votes agree.

    Columns (means over images, locations and child capsules):
      * ``entropy c``: entropy of c over the parents / log J (1 = uniform, 0 = one parent);
      * ``max c``: the largest coupling of each child;
      * ``agreement``: u_hat·v, the update added to the logits b after iteration r (eq. 1);
      * ``agreement (coupled)``: Σ_j c_j·(u_hat_j·v_j), the agreement with the parents a child is routed to;
      * ``|v| max``: the length of the longest parent capsule;
      * ``acc``: for ClassCaps with ``labels``, the accuracy of the longest class at iteration r.
    """
    rows = []
    for r, (c, a, v) in enumerate(zip(trace.c, trace.agreement, trace.v), start=1):
        lengths = torch.linalg.vector_norm(v, dim=-1)  # (n, J)
        rec = {
            "layer": layer, "r": r,
            "entropy c": _entropy(c).mean().item(),
            "max c": c.max(dim=1).values.mean().item(),
            "agreement": a.mean().item(),
            "agreement (coupled)": (c * a).sum(dim=1).mean().item(),
            "|v| max": lengths.max(dim=1).values.mean().item(),
        }
        if labels is not None and lengths.shape[0] == len(labels):
            rec["acc"] = (lengths.argmax(dim=1).cpu() == labels.cpu()).float().mean().item()
        rows.append(rec)
    return pd.DataFrame(rows)


def trace_samples(trace, layer: str = "", max_samples: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Per-child values for distribution plots: one row per (iteration, sampled child).

    Columns ``layer``, ``r``, ``max c``, ``entropy c``. Children are subsampled
    (the same ones at every iteration) to at most ``max_samples``.
    """
    c0 = trace.c[0]
    n, J, K = c0.shape
    total = n * K
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=g)[:max_samples] if total > max_samples else torch.arange(total)
    parts = []
    for r, c in enumerate(trace.c, start=1):
        flat_max = c.max(dim=1).values.reshape(-1).cpu()[idx]
        flat_h = _entropy(c).reshape(-1).cpu()[idx]
        parts.append(pd.DataFrame({"layer": layer, "r": r, "max c": flat_max.cpu().numpy(),
                                   "entropy c": flat_h.cpu().numpy()}))
    return pd.concat(parts, ignore_index=True)


def routed_layers(model) -> list[str]:
    """The layers that route: ``inter1`` ... ``interI`` and ``class``."""
    return [n for n in model.capsule_layer_names if n != "primary"]


def routing_traces(model, x: Tensor, iters: int = 3) -> dict[str, Any]:
    """:func:`routing_trace` of every routed layer of ``model`` on ``x``: ``{layer: RoutingTrace}``."""
    return {layer: routing_trace(model, x, layer, iters)[0] for layer in routed_layers(model)}


def trace_table(traces: Mapping[str, Any], labels: Optional[Tensor] = None,
                decimals: Optional[int] = None) -> pd.DataFrame:
    """:func:`trace_summary` of every layer of ``traces``, one row per (layer, r); rounded if ``decimals``."""
    df = pd.concat([trace_summary(t, labels, layer) for layer, t in traces.items()], ignore_index=True)
    df = df.set_index(["layer", "r"])
    return df.round(decimals) if decimals is not None else df


def trace_sample_table(traces: Mapping[str, Any], max_samples: int = 1500) -> pd.DataFrame:
    """:func:`trace_samples` of every layer of ``traces``."""
    return pd.concat([trace_samples(t, layer, max_samples) for layer, t in traces.items()], ignore_index=True)


@book_threads
@torch.no_grad()
def trace_matches_forward(model, x: Tensor) -> pd.DataFrame:
    """max |v_trace − v_forward| per routed layer: the re-run routing is the layer's own.

    Routing the votes of :func:`layer_votes` for the model's own
    ``routing_iters`` must give exactly the capsules of the forward pass; this
    checks that the traces in the chapter are those of the trained model. The
    forward pass here takes the PyTorch routing path, the code the trace re-runs
    (on CPU the layers otherwise use the fused kernel, which computes the same
    capsules to float32 rounding: tests/test_fused_routing.py).
    """
    from .capsules import use_fused_routing

    model.eval()
    fused = {m: m.fused for m in model.modules() if hasattr(m, "fused")}
    use_fused_routing(model, False)
    try:
        caps = model(x.to(_device(model))).capsules
        out = []
        for layer in routed_layers(model):
            _, v = routing_trace(model, x, layer, model.config.routing_iters)  # (n, J, D)
            ref = caps[layer].reshape(v.shape)
            out.append({"layer": layer, "votes u_hat": "x".join(str(s) for s in layer_votes(model, x, layer).shape),
                        "max |v_trace - v_forward|": float((v - ref).abs().max())})
    finally:
        for m, flag in fused.items():
            m.fused = flag
    return pd.DataFrame(out).set_index("layer")


def squash_table(lengths: Sequence[float] = (0.0, 0.1, 0.5, 1.0, 3.0, 10.0)) -> pd.DataFrame:
    """‖v‖ for inputs of length ‖s‖: :func:`capslib.routing.squash` and eq. (4) as printed.

    Each input is ``s = (‖s‖, 0, 0, 0)``; the squash of the zero vector is 0, not NaN.
    """
    from .routing import squash

    s = torch.zeros(len(lengths), 4)
    s[:, 0] = torch.tensor([float(v) for v in lengths])
    v = torch.linalg.vector_norm(squash(s), dim=-1)
    n = s[:, 0]
    return pd.DataFrame({"|s|": n.numpy(), "|v| = squash (code)": v.numpy().round(4),
                         "|s|/(1+|s|) (eq. 4 as printed)": (n / (1 + n)).numpy().round(4),
                         "NaN": torch.isnan(v).numpy()}).set_index("|s|")


# ======================================================================================
# Channel correlations (CCM)
# ======================================================================================
@book_threads
@torch.no_grad()
def layer_correlations(model, x: Tensor) -> dict[str, Tensor]:
    """Channel correlation matrix (C_l, C_l) of every conv layer CCM reads, on the batch ``x``.

    Uses :func:`capslib.losses.channel_correlation` on the maps of
    :attr:`CapsNetOutput.feature_maps` (three backbone convs, post-ReLU, and
    the PrimaryCaps conv before squash): exactly what the CCM loss sees.
    """
    from .losses import channel_correlation

    model.eval()
    maps = model(x.to(_device(model))).feature_maps
    return {name: channel_correlation(f).cpu() for name, f in maps.items()}


def correlation_table(corrs: Mapping[Any, Mapping[str, Tensor]], name: str = "run",
                      rows: Optional[Mapping[Any, dict]] = None, precise: bool = False) -> pd.DataFrame:
    """CCM value (eq. 7: mean |corr| over all channel pairs) per layer, one row per run.

    With ``rows`` (the runs' store rows) the test accuracy (%) is added.
    Rounded (CCM to 2 decimals, accuracy to whole percent) unless ``precise``.
    """
    out = []
    for key, layers in corrs.items():
        rec: dict[str, Any] = {name: key}
        for layer, m in layers.items():
            value = float(m.abs().mean())
            rec[f"CCM {layer}"] = value if precise else round(value, 2)
        if rows is not None:
            rec["test acc (%)"] = _pct(rows[key]["test_acc"], precise)
        out.append(rec)
    return pd.DataFrame(out).set_index(name)


def max_abs_delta(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, float]:
    """max |a − b| per layer of two ``{layer: matrix}`` dicts."""
    return {k: float((a[k] - b[k]).abs().max()) for k in a}


def max_weight_delta(m1, m2) -> float:
    """Largest absolute difference over all parameters and buffers of two models of the same shape."""
    s1, s2 = m1.state_dict(), m2.state_dict()
    if s1.keys() != s2.keys():
        raise ValueError("models have different parameters")
    return max(float((s1[k].cpu().float() - s2[k].cpu().float()).abs().max()) if s1[k].numel() else 0.0
               for k in s1)


def alpha_grid(alpha: float, alphas: Iterable[float]) -> list[float]:
    """The α values a CCM chapter trains: 0 (the base model), ``alpha`` and ``alphas``, sorted."""
    return sorted({0.0, float(alpha), *(float(a) for a in alphas)})


def switch_table(base: tuple, others: Mapping[str, tuple]) -> pd.DataFrame:
    """How far runs moved from a base run: max |Δcorr| per conv layer, max |Δweight|, test accuracy; one column per run.

    ``base`` and each value of ``others`` are ``(row, model, corrs)`` (a store
    row, the trained model, :func:`layer_correlations`). Differences are shown
    to 2 significant digits; an exact 0 means bit-identical.
    """
    b_row, b_model, b_corrs = base
    table: dict[str, dict[str, Any]] = {}
    for name, (row, model, corrs) in others.items():
        rec: dict[str, Any] = {}
        for layer, d in max_abs_delta(b_corrs, corrs).items():
            rec[f"max |Δcorr| {layer}"] = float(f"{d:.2g}")
        rec["max |Δweight|"] = float(f"{max_weight_delta(b_model, model):.2g}")
        rec["test acc (%)"] = _pct(row["test_acc"], False)
        rec["α = 0 test acc (%)"] = _pct(b_row["test_acc"], False)
        table[name] = rec
    # one column per run; object columns keep the accuracies as ints beside the float differences
    return pd.DataFrame({name: pd.Series(rec, dtype=object) for name, rec in table.items()})


# ======================================================================================
# Display
# ======================================================================================
def show_table(df: pd.DataFrame, footer) -> None:
    """Display a table and, under it, its provenance footer (:func:`capslib.plots.provenance_footer`)."""
    from IPython.display import display

    display(df)
    display(footer)


def show_figure(fig, footer, dpi: Optional[int] = None) -> None:
    """Display a figure as a PNG (at :data:`capslib.plots.BOOK_DPI`) with its provenance footer under it."""
    from IPython.display import Image, display

    from .plots import BOOK_DPI
    from .widgets import figure_png

    display(Image(data=figure_png(fig, dpi=dpi or BOOK_DPI)))
    display(footer)


def show_with_slider(static_fig, panels: Mapping[Any, Any], description: str, footer,
                     dpi: Optional[int] = None) -> None:
    """A static figure of a whole grid, a slider over the same grid, and the provenance footer.

    The slider (:func:`capslib.widgets.slider_panels`) switches precomputed
    panels in the browser, with no kernel; the static figure shows every panel
    at once, for print and for readers without JavaScript.
    """
    from IPython.display import Image, display

    from .plots import BOOK_DPI
    from .widgets import figure_png, slider_panels

    dpi = dpi or BOOK_DPI
    display(Image(data=figure_png(static_fig, dpi=dpi)))
    display(slider_panels({k: figure_png(f, dpi=dpi) for k, f in panels.items()}, description=description))
    display(footer)
