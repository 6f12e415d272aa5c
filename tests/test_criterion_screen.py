"""Screens of the training signal (capslib.experiments.criterion_screen): the screened model is the trained one."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from capslib.engine.config import apply_overrides, profile
from capslib.engine.train import fit
from capslib.experiments.criterion_screen import screen_config
from capslib.experiments.grids import get_experiment

ROOT = Path(__file__).resolve().parents[1]
SCREEN = ROOT / "results" / "collapse" / "screen_cpu.csv"


def test_the_screen_sees_what_fit_logs_at_its_first_step(real_data_root):
    cfg = profile("smoke", C=4, D=4, I=2, train_size=256, val_size=256, test_size=128, batch_size=64, epochs=1,
                  init_std=0.5)
    row = screen_config(cfg, batches=1)[0]
    result, _ = fit(cfg, progress=False)
    logged = result.history[0]["signal"]
    assert row["config_hash"] == result.config_hash
    screened = json.loads(row["groups"])
    assert set(screened) == set(logged["groups"])
    for group, values in screened.items():
        for q in ("grad_max", "update_max", "update_mean"):
            assert values[q] == pytest.approx(logged["groups"][group][q], rel=1e-5, abs=1e-30), (group, q)
    assert json.loads(row["lengths"]) == pytest.approx(logged["lengths"], rel=1e-5)


@pytest.mark.skipif(not SCREEN.exists(), reason="no committed screen yet")
@pytest.mark.parametrize("experiment", ["collapse", "collapse_h", "collapse_plateau"])
def test_every_trained_decisive_config_is_screened_in_both_dtypes(experiment):
    """Each committed from-scratch run of the study has screen rows of its very config hash, and of the same
    config in the other dtype, on the same seeds."""
    store = ROOT / "results" / experiment / "cpu.csv"
    if not store.exists():
        pytest.skip(f"no rows of {experiment} yet")
    trained = set(pd.read_csv(store).query("status == 'ok' and stage == 'train'")["config_hash"])
    screened = set(pd.read_csv(SCREEN)["config_hash"])
    checked = 0
    for point in get_experiment(experiment).grid("cpu"):
        if point.kind != "train":
            continue
        for seed in range(3):
            cfg = point.config("cpu", seed)
            if cfg.config_hash() not in trained:
                continue
            other = apply_overrides(cfg, dtype="float64" if cfg.train.dtype == "float32" else "float32")
            assert {cfg.config_hash(), other.config_hash()} <= screened, (point.label, seed)
            checked += 1
    assert checked or not trained
