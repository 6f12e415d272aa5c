"""Seed 004's study: kernel_study's rows against slow references, and kernel_runs' committed rule."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from capslib.book import kernel_runs
from capslib.experiments import kernel_study
from capslib.experiments.grids import point_key
from capslib.experiments.init_study import build_model
from capslib.experiments.sweeps import plan
from capslib.pruning.similarity import LAYER_NAMES


def _slow_min_distance(rows: np.ndarray) -> float:
    """1 − the largest cosine similarity over all pairs, by a loop."""
    best = -math.inf
    for i, j in itertools.combinations(range(len(rows)), 2):
        a, b = rows[i], rows[j]
        best = max(best, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return 1.0 - best


def test_gaussian_null_matches_a_slow_loop_over_the_same_draws():
    mean, sd = kernel_study.gaussian_min_distance((7, 5), draws=4, seed=3)
    g = torch.Generator().manual_seed(3)
    slow = [_slow_min_distance(torch.randn((7, 5), generator=g, dtype=torch.float64).numpy()) for _ in range(4)]
    assert mean == pytest.approx(np.mean(slow), abs=1e-12) and sd == pytest.approx(np.std(slow, ddof=1), abs=1e-12)


def test_null_falls_with_more_kernels_and_rises_with_longer_ones():
    """What width alone does: more random directions → a smaller minimum distance; longer ones → larger."""
    few, many = (kernel_study.gaussian_min_distance((n, 9), 30)[0] for n in (10, 60))
    short, long = (kernel_study.gaussian_min_distance((40, d), 30)[0] for d in (20, 400))
    assert many < few and long > short


def test_study_rows_score_the_initial_and_the_trained_kernels(tmp_path):
    """The smoke grid: init columns equal a recomputation from the seed; a checkpoint in the sweep's folder
    (here: the initial model with conv1's first two kernels made parallel) is read as the trained model."""
    runs = plan("kernel_widths", "smoke", 1)
    point, cfg = runs[0]
    model = build_model(cfg.model, cfg.train.seed).eval()
    with torch.no_grad():
        conv1 = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv1.weight[1] = 2.0 * conv1.weight[0]  # a positive multiple: distance exactly 0
    folder = tmp_path / point_key("kernel_widths", cfg, point)
    folder.mkdir()
    torch.save(model.state_dict(), folder / "best.pt")
    df = kernel_study.study_rows("smoke", 1, str(tmp_path), draws=3, finished={cfg.config_hash()})
    assert len(df) == len(runs) * len(LAYER_NAMES) * 2
    raw = df[(df["label"] == point.label) & (df["measure"] == "raw")].set_index("layer")
    init = build_model(cfg.model, cfg.train.seed)
    conv = [m for m in init.modules() if isinstance(m, torch.nn.Conv2d)]
    first = conv[0].weight.detach().flatten(1).double().numpy()
    assert raw.loc["conv1", "init"] == pytest.approx(_slow_min_distance(first))
    assert raw.loc["conv1", "trained"] == pytest.approx(0.0, abs=1e-12)
    assert raw.loc["conv1", "channels"] == conv[0].out_channels and raw.loc["conv1", "entries"] == 9
    other = df[df["label"] != point.label]
    assert other["trained"].isna().all() and (other["checkpoint"].fillna("") == "").all()  # not trained yet


def _rows(trained: dict, init: dict, sd: float = 0.01, seeds: int = 3) -> pd.DataFrame:
    """Synthetic study rows: per layer, a list of values over C = 10, 20, 32 (the same in every seed)."""
    out = []
    for layer in kernel_runs.LAYERS:
        for seed in range(seeds):
            for k, C in enumerate((10, 20, 32)):
                out.append(dict(layer=layer, measure="raw", C=C, seed=seed, channels=C * 2, entries=9,
                                trained=trained[layer][k], init=init[layer][k], gauss_mean=init[layer][k],
                                gauss_sd=sd))
    return pd.DataFrame(out)


FALL, RISE = [0.3, 0.2, 0.1], [0.7, 0.8, 0.9]


@pytest.mark.parametrize("trained, init, supported, explained", [
    ({"conv1": FALL, "conv2": RISE, "conv3": RISE, "primary": RISE},
     {"conv1": FALL, "conv2": RISE, "conv3": RISE, "primary": RISE}, True, True),   # only where init falls
    ({"conv1": FALL, "conv2": FALL, "conv3": RISE, "primary": RISE},
     {"conv1": FALL, "conv2": RISE, "conv3": RISE, "primary": RISE}, True, False),  # conv2: beyond the init
    ({"conv1": RISE, "conv2": RISE, "conv3": RISE, "primary": RISE},
     {"conv1": FALL, "conv2": RISE, "conv3": RISE, "primary": RISE}, False, False),  # falls nowhere
])
def test_seed004_rule(trained, init, supported, explained):
    out = kernel_runs.seed004_outcome(_rows(trained, init))
    assert out["supported"] is supported and out["explained"] is explained and out["seeds"] == 3


def test_seed004_rule_needs_three_seeds_and_reports_what_training_adds():
    same = {layer: RISE for layer in kernel_runs.LAYERS}
    assert kernel_runs.seed004_outcome(_rows(same, same, seeds=2))["supported"] is None
    closer = {layer: [v - 0.05 for v in RISE] for layer in kernel_runs.LAYERS}
    lo = kernel_runs.layer_outcomes(_rows(closer, same)).set_index("layer")
    assert (lo["training"] == "closer").all()
    assert (kernel_runs.layer_outcomes(_rows(same, same)).set_index("layer")["training"] == "width alone").all()


def test_the_verdict_page_grades_seed004_from_the_study(tmp_path):
    """Without rows the claim stays at smoke scale; with three seeds it is graded by the committed rule and
    says what the training cost."""
    from capslib.book.chapters import collapse as collapse_ch
    from capslib.book.chapters import verdicts as verdicts_ch

    def seed004():
        return verdicts_ch.verdicts("cpu", tmp_path,
                                    limits=collapse_ch.depth_limit_table(pd.DataFrame()))[6]

    assert seed004().verdict == "inconclusive (smoke scale)"
    same = {layer: (FALL if layer == "conv1" else RISE) for layer in kernel_runs.LAYERS}
    (tmp_path / "kernel_widths").mkdir()
    _rows(same, same).to_csv(tmp_path / "kernel_widths" / "similarity_cpu.csv", index=False)
    pd.DataFrame([dict(status="ok", wall_time=1800.0, test_acc=0.8), dict(status="ok", wall_time=1800.0,
                                                                        test_acc=0.85)]) \
        .to_csv(tmp_path / "kernel_widths" / "cpu.csv", index=False)
    v = seed004()
    assert v.verdict.startswith("explained by width alone") and v.badge == "explained by width alone"
    assert "1.00 CPU-hours of training, test accuracy 80.0–85.0 %" in v.evidence and v.seeds == 3
