"""A test of the tests: a real change planted in a copy of the library makes the test command fail.

Loosening nbval (trained metrics within a tolerance instead of exactly) must not leave a regression
unseen. Each case plants one change a careless edit could make into a temporary copy of ``capslib`` and
``tests`` and runs, in that copy, the part of the test command that owns the changed behaviour; it must
fail, and an unplanted copy must pass the same tests (so the failure comes from the plant, not the copy).
The planted copy never touches this checkout. The tolerance check on the chapters' trained metrics is
itself tested against the committed outputs in ``tests/test_nbval_numbers.py``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (name, file, text, planted text, the tests of the test command that own the behaviour)
PLANTS = [
    ("margin loss m+ 0.9 -> 0.8", "capslib/engine/losses.py", "m_pos: float = 0.9", "m_pos: float = 0.8",
     ["tests/test_losses_probes.py::test_margin_loss_values"]),
    ("CHIP score's sign", "capslib/pruning/chip.py", "ci = (2.0 / math.pi) * QUAD_STEP",
     "ci = -(2.0 / math.pi) * QUAD_STEP", ["tests/test_chip.py::test_matches_svd_reference"]),
    ("one routing iteration fewer in ConvCaps", "capslib/engine/capsules.py",
     "fused_routing.route(windows, weight, self.iters, self.squash_eps, bias, self.squash_fn)",
     "fused_routing.route(windows, weight, self.iters - 1, self.squash_eps, bias, self.squash_fn)",
     ["tests/test_routing.py::test_convcaps_matches_slow_loop"]),
]


def _copy_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in ("capslib", "tests"):
        shutil.copytree(ROOT / sub, dest / sub, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _pytest(copy: Path, tests: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    cmd = [sys.executable, "-m", "pytest", *tests, "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
           "--rootdir", str(copy)]
    return subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=900)


def _imports_the_copy(copy: Path) -> str:
    code = "import capslib, sys; sys.stdout.write(capslib.__file__)"
    return subprocess.run([sys.executable, "-c", code], cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)},
                          capture_output=True, text=True, check=True).stdout


def test_the_unplanted_copy_passes(tmp_path):
    copy = _copy_tree(tmp_path)
    assert _imports_the_copy(copy).startswith(str(copy))  # the copy, not this checkout, is under test
    tests = sorted({t for *_, ts in PLANTS for t in ts})
    proc = _pytest(copy, tests)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("name,path,old,new,tests", PLANTS, ids=[p[0] for p in PLANTS])
def test_a_planted_regression_fails_the_tests(tmp_path, name, path, old, new, tests):
    copy = _copy_tree(tmp_path)
    target = copy / path
    source = target.read_text()
    assert source.count(old) == 1, f"the plant site {old!r} moved: update PLANTS"
    target.write_text(source.replace(old, new))
    proc = _pytest(copy, tests)
    assert proc.returncode == 1, f"{name}: the tests did not fail:\n{proc.stdout[-3000:]}"
    assert "FAILED" in proc.stdout or "failed" in proc.stdout.splitlines()[-1]
