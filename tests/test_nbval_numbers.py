"""The tolerance check of the chapters' trained metrics (tests/nbval_numbers.py), on the committed outputs."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nbval_numbers import TOLERANCES, Tolerance, check_cell, compare, label_of, output_texts, split_numbers

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _labelled_cells():
    for nb in NOTEBOOKS:
        for cell in nbformat.read(nb, as_version=4).cells:
            if cell.cell_type == "code" and label_of(cell.source):
                yield nb.stem, cell


CELLS = list(_labelled_cells())


def test_every_trained_metric_cell_is_ignored_by_nbval_and_has_a_measured_tolerance():
    labels = [label_of(c.source) for _, c in CELLS]
    assert len(labels) >= 10 and len(set(labels)) == len(labels), labels
    for name, cell in CELLS:
        lines = [ln.strip() for ln in cell.source.splitlines()]
        assert "# NBVAL_IGNORE_OUTPUT" in lines and "# NBVAL_CHECK_OUTPUT" not in lines, (name, lines[:2])
        assert cell.outputs, f"{name}: {label_of(cell.source)} has no committed output to check against"
    assert set(labels) == set(TOLERANCES), "a label without a tolerance, or a tolerance without a cell"
    for label, t in TOLERANCES.items():
        assert t.integers >= max(1, 2 * t.measured_integers) - 1e-12, label
        assert 0 < t.decimals and t.decimals >= 2 * t.measured_decimals - 1e-12, label


def test_split_numbers_reads_the_chapters_formats():
    skel, nums, lists = split_numbers("<td>0,1,3,6</td> <td>199,568</td> conv1 0.66 3/4 [C=8, D=4] 1e-05 NaN")
    assert nums == ["199,568", "0.66", "3", "4", "8", "4", "1e-05"]
    assert lists == [4]
    assert "conv1" in skel and "NaN" in skel


@pytest.mark.parametrize("name,cell", CELLS, ids=[label_of(c.source) for _, c in CELLS])
def test_committed_outputs_pass_and_a_moved_metric_fails(name, cell):
    label = label_of(cell.source)
    same = check_cell(label, cell.outputs, cell.outputs)
    assert same.ok and same.max_integers == same.max_decimals == 0 and same.numbers > 0

    # move the first non-count number of the committed output by 3 tolerances: the check must fail
    moved = copy.deepcopy(cell.outputs)
    texts = output_texts(moved)
    target = next(i for i, t in enumerate(texts) if any(not _count(tok) for tok in split_numbers(t)[1]))
    tok = next(tok for tok in split_numbers(texts[target])[1] if not _count(tok))
    tol = TOLERANCES[label].decimals if "." in tok else TOLERANCES[label].integers
    new_value = float(tok) + 3 * tol
    _replace_first_number(moved, tok, f"{new_value:.6g}")
    assert not check_cell(label, moved, cell.outputs).ok


def _count(tok: str) -> bool:
    return re.fullmatch(r"[\d,]+", tok) is not None and float(tok.replace(",", "")) >= 1000


def _replace_first_number(outputs, token: str, new: str) -> None:
    pattern = re.compile(rf"(?<![\w.,]){re.escape(token)}(?![\w,]|\.\d)")
    for out in outputs:
        for key in ("text/html", "text/plain", "text/markdown"):
            data = out.get("data", {})
            if key in data:
                text = "".join(data[key]) if isinstance(data[key], list) else data[key]
                if pattern.search(text):
                    data[key] = pattern.sub(new, text, count=1)
                    return
        if out.get("output_type") == "stream" and pattern.search(out["text"]):
            out["text"] = pattern.sub(new, out["text"], count=1)
            return
    raise AssertionError(f"{token} not found")


def test_counts_text_and_index_lists_are_exact_and_each_kind_has_its_tolerance():
    tol = Tolerance(integers=2, decimals=0.01, measured_integers=1, measured_decimals=0.005)
    base = ["<td>conv1</td><td>199,568</td><td>0.66</td><td>0,1,3,6</td><td>70</td><td>True</td>"]

    def ok(text, flags_free=False):
        return compare([text], base, tol, flags_free).ok

    assert compare(base, base, tol).ok
    assert ok("<td>conv1</td><td>199,568</td><td>0.67</td><td>2,3,5,7</td><td>72</td><td>True</td>")  # which: free
    assert not ok("<td>conv1</td><td>199,569</td><td>0.66</td><td>0,1,3,6</td><td>70</td><td>True</td>")  # a count
    assert not ok("<td>conv2</td><td>199,568</td><td>0.66</td><td>0,1,3,6</td><td>70</td><td>True</td>")  # a label
    assert not ok("<td>conv1</td><td>199,568</td><td>0.66</td><td>0,1,3</td><td>70</td><td>True</td>")  # how many
    assert not ok("<td>conv1</td><td>199,568</td><td>0.68</td><td>0,1,3,6</td><td>70</td><td>True</td>")  # decimals
    assert not ok("<td>conv1</td><td>199,568</td><td>0.66</td><td>0,1,3,6</td><td>73</td><td>True</td>")  # integers
    flipped = "<td>conv1</td><td>199,568</td><td>0.66</td><td>0,1,3,6</td><td>70</td><td>False</td>"
    assert not ok(flipped) and ok(flipped, flags_free=True)  # a flag flips only where a label allows it
    assert not compare(base + base, base, tol).ok  # an extra output


def test_numerics_provenance_follows_the_environment():
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41", "CAPSLIB_FUSED_ROUTING": "0"}
    code = "from capslib.engine.provenance import numerics_info; print(numerics_info())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert eval(out) == {"cpu_isa": "default", "onednn_isa": "sse41", "kernel_march": "off"}


def test_the_footer_names_the_numerics_and_the_sanitizer_hides_them():
    from capslib.book.plots import provenance_text

    row = {"config_hash": "abc123abc123", "profile": "smoke", "data.dataset": "fashion-mnist", "seed": 0,
           "device": "cpu", "device_name": "AMD EPYC", "capslib_version": "0.1.0+00000000", "cpu_isa": "avx2",
           "onednn_isa": "native", "kernel_march": "x86-64-v3"}
    text = provenance_text(row)
    assert "numerics ATen avx2, oneDNN native, kernel x86-64-v3" in text
    other = provenance_text({**row, "cpu_isa": "avx512", "kernel_march": "native=znver4+avx512"})
    sections = re.findall(r"\[([\w-]+)\]\nregex: (.*)\nreplace: (.*)", (ROOT / "tests/nbval_sanitize.cfg").read_text())

    def sanitize(s: str) -> str:
        for _, regex, repl in sections:
            s = re.sub(regex, repl, s)
        return s

    assert text != other and sanitize(text) == sanitize(other)
