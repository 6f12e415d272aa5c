"""nbval's cells marked ``# CHECK_NUMBERS <label>``: trained metrics within a measured tolerance.

nbval ignores their output (``# NBVAL_IGNORE_OUTPUT``), because the last digits of a model trained in the
test run depend on the CPU's instruction set; right after nbval ran such a cell, this hook compares its fresh
output with the committed one by ``tests/nbval_numbers.py``: same text around the numbers, counts equal,
every other number within the label's tolerance.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nbval_numbers import check_cell, label_of  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    cell = getattr(item, "cell", None)
    label = label_of(cell.source) if cell is not None and hasattr(cell, "source") else None
    if label is None or item.test_outputs is None or cell.execution_count is None:
        return result
    fresh = item.sanitize_outputs(item.test_outputs)
    committed = item.sanitize_outputs(cell.outputs)
    found = check_cell(label, fresh, committed)
    if not found.ok:
        pytest.fail(f"{item.name} ({label}): the trained metrics moved beyond their measured tolerance:\n"
                    + "\n".join(found.problems), pytrace=False)
    return result
