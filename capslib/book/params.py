"""Chapter parameters: every chapter's papermill parameters, their ranges, and the check that runs first.

The cell tagged ``parameters`` sets ``PROFILE``, ``DATASET``, ``SEED``, ``C``, ``D``, ``I``, ``EPOCHS``
and the chapter's own knobs (:data:`CHAPTER_PARAMS`, the one place they are declared). The next cell
calls :func:`check_parameters` (``check_parameters(globals(), "routing")``), which stops the run at
once, before any training, on an unknown name (``papermill -p FOO 1`` injects ``FOO`` as a global) or
a value out of range, with a message that lists every valid parameter and its range.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from ..engine.config import DATASETS, PROFILES, ROUTINGS, ConfigError, canonical_dataset
from ..experiments.grids import STUDY_ROUTINGS

#: The profile of the committed decisive collapse runs (``results/collapse/cpu.csv``, see its README).
RUNS_PROFILE = "cpu"


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
    "PROFILE": Param("choice", "smoke", "named profile (capslib.engine.config.PROFILES)", choices=tuple(PROFILES)),
    "DATASET": Param("choice", None, "dataset; None: the profile's (smoke, fmnist: fashion-mnist; paper: cifar10)",
                     choices=tuple(DATASETS), optional=True),
    "SEED": _int(0, "training seed (initial weights and batch order)", low=0),
    "C": _int(None, "capsule types per capsule layer", low=1, optional=True),
    "D": _int(None, "capsule dimensions", low=1, optional=True),
    "I": _int(None, "IntermediateCaps (ConvCaps) layers", low=0, optional=True),
    "EPOCHS": _int(None, "training epochs", low=1, optional=True),
}

#: The collapse, deep and verdict pages train nothing: their own parameters, no C/D/I/EPOCHS of a trained model.
_EVIDENCE_PARAMS: dict[str, Param] = {
    "PROFILE": Param("choice", "smoke", "the book's profile (this page trains nothing; accepted for the build)",
                     choices=tuple(PROFILES)),
    "RUNS_PROFILE": Param("choice", RUNS_PROFILE, "profile of the decisive runs read from results/collapse/",
                          choices=tuple(PROFILES)),
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
    "collapse": {
        **_EVIDENCE_PARAMS,
        "SEED": Param("int", 0, "model seed of the live initialisation screens", low=0),
        "BATCH": Param("int", 32, "Fashion-MNIST test images in the live screens", low=2, high=256),
        "C": Param("int", 20, "capsule types of the length-per-layer figure", low=1, high=64),
        "D": Param("int", 8, "capsule dimensions of the length-per-layer figure", low=1, high=32),
        "I": Param("int", 8, "ConvCaps layers of the length-per-layer figure", low=0, high=16),
        "INIT_STD": Param("float", 0.5, "ConvCaps init std of the length-per-layer figure", low=0, low_open=True,
                          high=5),
        "STDS": Param("float_list", [0.3, 0.5, 0.7], "init std values of the slider", low=0, low_open=True, high=5),
        "PRS": Param("float_list", [0.125, 0.25, 0.375], "pruning ratios of the PR slider", low=0, low_open=True,
                     high=1, high_open=True),
        "I_MAX": Param("int", 10, "deepest model of each slider screen", low=1, high=16),
    },
    "deep": dict(_EVIDENCE_PARAMS),
    "verdicts": dict(_EVIDENCE_PARAMS),
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
