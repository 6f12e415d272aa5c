"""Trained metrics in the chapters, checked within a measured tolerance instead of exactly.

nbval compares a cell marked ``# NBVAL_CHECK_OUTPUT`` character by character. That is right for what every
CPU computes the same (shapes, parameter and MAC counts, prune-plan counts, configs, the paper's tables,
numbers read from the committed result rows), and wrong for a metric of a model that the test run trains
itself: PyTorch's oneDNN and ATen kernels and the fused routing kernel (``-march=native``) round in a
different order on AVX-512, AVX2 and SSE machines, and one smoke epoch turns the last digit into a visible
one (a channel correlation 0.66 on one CPU is 0.65 on another).

Such a cell is marked::

    # NBVAL_IGNORE_OUTPUT
    # CHECK_NUMBERS <label>

nbval runs it and ignores its output; :func:`check_cell` (called by ``notebooks/conftest.py`` right after
nbval ran the cell) then compares the fresh output with the committed one: the text with its numbers taken
out must be the same (same rows, columns, labels, booleans), counts of 1,000 or more (parameters, MACs) must
be equal, a list of channel indices must have the same length (which channels a trained model's scores
pick is categorical: it is not compared), and every other number must lie within ``TOLERANCES[label]`` of
the committed one, in the units the cell prints: one tolerance for the numbers printed as integers
(accuracies in %, small counts) and one for those printed with decimals (correlations, lengths).

How the tolerances were measured: ``scripts/numerics_spread.py`` runs the chapters under nbval with an
empty model cache and empty pipeline checkpoints at three instruction-set levels of the same code and
records, per label, the largest deviation of its integers and of its decimals from the committed outputs
(which this machine's native level produced): see ``results/numerics/README.md`` for the run, the machine and
the figures. Each tolerance below is twice the largest deviation measured, rounded up to the cell's printed
precision, and never less than one unit of that precision.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional


@dataclass(frozen=True)
class Tolerance:
    """How far a cell's numbers may move, in the units it prints: ``integers`` for numbers printed without a
    decimal point (accuracies in %, counts below 1,000, depths), ``decimals`` for the others (correlations,
    lengths). ``measured_*``: the largest deviation from the committed outputs measured across instruction
    sets (results/numerics/spread.csv); each tolerance is twice that, and at least one printed unit."""

    integers: float
    decimals: float
    measured_integers: float
    measured_decimals: float


#: Per CHECK_NUMBERS label, measured on 2026-12-04 (results/numerics/README.md: native AVX-512, AVX2 and SSE
#: levels of commit 470ee40's chapters on the project's AMD EPYC, empty model caches, fresh clones). The
#: depth search's accuracies move by up to 6 points: its I = 2 runs sit near chance after one smoke epoch.
TOLERANCES: dict[str, Tolerance] = {
    "ccm-correlations": Tolerance(1, 0.02, 0, 0.01),
    "ccm-switch": Tolerance(1, 0.2, 0, 0.1),
    "chip-plan": Tolerance(1, 0.01, 0, 0),
    "chip-rank-agreement": Tolerance(2, 0.14, 1, 0.07),
    "chip-stages": Tolerance(4, 0.01, 2, 0),
    "depth-search-pruned": Tolerance(12, 0.01, 6, 0),
    "kernels-min-distance": Tolerance(1, 0.04, 0, 0.02),
    "kernels-overlap": Tolerance(1, 0.01, 0, 0),
    "kernels-retrained": Tolerance(4, 0.1, 2, 0),
    "routing-traces": Tolerance(1, 0.008, 0, 0.004),
}

MARKER = "CHECK_NUMBERS"
#: Numbers as the chapters print them: 0.66, 70, -1.5e-05, 199,568 (thousands separators), 3/4.
#: A digit right after a letter, a digit or a dot belongs to a name (conv1, inter2, k5), not a number.
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
#: A list of channel indices as the prune tables print it (``0,2,6,10``; not a thousands-separated count).
#: Which channels a trained model's scores pick is categorical and differs between CPUs; how many is exact.
INDEX_LIST = re.compile(r"(?<![\w.,])\d+(?:,\d+)+(?![\w.,])")
#: Placeholders in a skeleton: a number, a list of indices, a boolean a label lets flip (:data:`FLAGS_FREE`).
SLOT, INDICES, FLAG = "\u2022", "\u27e8indices\u27e9", "\u27e8flag\u27e9"
#: Labels whose True/False may differ between CPUs: a decision thresholded on a trained metric. The depth
#: search calls a run collapsed when its validation accuracy is within 2 points of chance; the smoke search's
#: I = 2 run sits at 13-14 %, so a one-point move across instruction sets flips the call (measured: see
#: results/numerics/README.md). The accuracies behind it are still checked within the tolerance.
FLAGS_FREE = {"depth-search-pruned"}
#: Integers this large are counts (parameters, MACs, images): equal on every CPU.
COUNT_FROM = 1000


def label_of(source: str) -> Optional[str]:
    """The ``# CHECK_NUMBERS <label>`` of a cell's source, or None."""
    for line in source.splitlines():
        m = re.match(rf"\s*#\s*{MARKER}\s+(\S+)\s*$", line)
        if m:
            return m.group(1)
    return None


def output_texts(outputs: Iterable[dict[str, Any]]) -> list[str]:
    """The texts of a cell's outputs that carry its numbers: streams, the HTML of a table (which never
    wraps its columns, unlike the plain text) or else the plain text, and Markdown (footers). Images and
    widget views are left out: they are checked by the browser test."""
    texts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            texts.append(_text(out.get("text", "")))
            continue
        data = out.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data or "image/png" in data:
            continue
        if "text/html" in data:
            texts.append(_text(data["text/html"]))
        elif "text/plain" in data and "text/markdown" not in data:
            texts.append(_text(data["text/plain"]))
        if "text/markdown" in data:
            texts.append(_text(data["text/markdown"]))
    return texts


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def split_numbers(text: str, flags_free: bool = False) -> tuple[str, list[str], list[int]]:
    """``(skeleton, numbers, list_lengths)``: the text with every list of channel indices replaced by
    :data:`INDICES`, every other number by :data:`SLOT` (and, with ``flags_free``, every True/False by
    :data:`FLAG`) and runs of white space collapsed; the numbers as printed; and the length of each index
    list."""
    lengths: list[int] = []

    def _indices(m: re.Match) -> str:
        if re.fullmatch(r"\d{1,3}(?:,\d{3})+", m.group(0)):  # 199,568: a count, not a list
            return m.group(0)
        lengths.append(m.group(0).count(",") + 1)
        return INDICES

    text = INDEX_LIST.sub(_indices, text)
    if flags_free:
        text = re.sub(r"\b(True|False)\b", FLAG, text)
    numbers = NUMBER.findall(text)
    skeleton = re.sub(r"\s+", " ", NUMBER.sub(SLOT, text)).strip()
    return skeleton, numbers, lengths


def _value(token: str) -> float:
    return float(token.replace(",", ""))


def _is_count(token: str) -> bool:
    return re.fullmatch(r"[-+]?[\d,]+", token) is not None and abs(_value(token)) >= COUNT_FROM


@dataclass
class Comparison:
    """What :func:`compare` found: the largest deviation of the integers and of the decimals (counts of
    1,000 or more excluded: they must be equal), how many numbers were compared, and every problem."""

    max_integers: float
    max_decimals: float
    problems: list[str]
    numbers: int

    @property
    def ok(self) -> bool:
        return not self.problems


def compare(fresh: list[str], committed: list[str], tolerance: Tolerance, flags_free: bool = False) -> Comparison:
    """Compare the output texts of a fresh run with the committed ones (see the module's docstring)."""
    problems: list[str] = []
    worst = {"integers": 0.0, "decimals": 0.0}
    count = 0
    if len(fresh) != len(committed):
        return Comparison(math.inf, math.inf, [f"{len(fresh)} outputs, committed {len(committed)}"], 0)
    for i, (new, old) in enumerate(zip(fresh, committed)):
        new_skel, new_nums, new_lists = split_numbers(new, flags_free)
        old_skel, old_nums, old_lists = split_numbers(old, flags_free)
        if new_skel != old_skel:
            problems.append(f"output {i}: the text around the numbers differs:\n  committed: "
                            f"{_first_difference(old_skel, new_skel)}")
            continue
        if new_lists != old_lists:
            problems.append(f"output {i}: index lists of lengths {new_lists}, committed {old_lists} (exact)")
        for new_tok, old_tok in zip(new_nums, old_nums):
            count += 1
            if _is_count(old_tok) or _is_count(new_tok):
                if _value(new_tok) != _value(old_tok):
                    problems.append(f"output {i}: count {new_tok} != committed {old_tok} (counts are exact)")
                continue
            kind = "decimals" if re.search(r"[.eE]", old_tok) else "integers"
            dev = abs(_value(new_tok) - _value(old_tok))
            worst[kind] = max(worst[kind], dev)
            tol = getattr(tolerance, kind)
            if dev > tol + 1e-12:
                problems.append(f"output {i}: {new_tok} vs committed {old_tok}: |Δ| = {dev:.4g} > "
                                f"tolerance {tol:g} ({kind})")
    return Comparison(worst["integers"], worst["decimals"], problems, count)


def _first_difference(a: str, b: str, context: int = 60) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, at - context)
    return f"…{a[lo:at + context]}…\n  fresh:     …{b[lo:at + context]}…"


def check_cell(label: str, fresh_outputs: list[dict], committed_outputs: list[dict]) -> Comparison:
    """Compare one cell's fresh and committed outputs under its label's tolerance. With
    ``$CAPSLIB_NBVAL_RECORD`` set to a file, also append what was found there as a JSON line (that is how
    ``scripts/numerics_spread.py`` measures the spread); in that mode a missing tolerance is no error."""
    record = os.environ.get("CAPSLIB_NBVAL_RECORD")
    if label not in TOLERANCES and not record:
        raise KeyError(f"CHECK_NUMBERS label {label!r} has no tolerance in tests/nbval_numbers.py TOLERANCES")
    tolerance = TOLERANCES.get(label, Tolerance(math.inf, math.inf, math.nan, math.nan))
    result = compare(output_texts(fresh_outputs), output_texts(committed_outputs), tolerance,
                     flags_free=label in FLAGS_FREE)
    if record:
        from capslib.engine.provenance import numerics_info

        with open(record, "a") as f:
            f.write(json.dumps({"label": label, "max_integers": result.max_integers,
                                "max_decimals": result.max_decimals, "numbers": result.numbers,
                                "problems": result.problems, **numerics_info()}) + "\n")
    return result
