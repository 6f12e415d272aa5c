"""Shared fixtures. Real-data tests read $CAPSLIB_DATA (set by .ci/run to a copy of ../shared/datasets)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from capslib.data import data_root

ROOT = Path(__file__).resolve().parent.parent


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
