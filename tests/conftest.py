"""Shared fixtures. Real-data tests read $CAPSLIB_DATA (set by .ci/run to a copy of ../shared/datasets)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from capslib.engine.data import data_root

ROOT = Path(__file__).resolve().parent.parent

# tests/fixtures holds inputs of tests (a fixture book, a batch notebook), not tests: nbval
# (`pytest tests --nbval-lax`) must not execute them. Run in place, fixtures/batch/tiny.ipynb
# trained and stored its run in results/batch-test/ of the checkout.
collect_ignore_glob = ["fixtures/*"]

# Ray >= 2.5x warns (FutureWarning) that it will stop overriding CUDA_VISIBLE_DEVICES for tasks
# with num_gpus=0; opting in to that future behaviour now silences it (our tasks never ask for a GPU
# they do not use). Set before any test starts Ray; Ray's workers inherit it.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    root = data_root()
    if not (root / "FashionMNIST" / "raw").exists():
        pytest.fail(
            f"Fashion-MNIST is not in {root}. Copy ../shared/datasets there or set CAPSLIB_DATA "
            "(.ci/run does this)."
        )
    return root


@pytest.fixture(autouse=True)
def _quiet_tqdm(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
