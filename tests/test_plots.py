"""capslib.book.plots (figures, provenance footer) and the analyses of capslib.book.runner, on tiny untrained models.

No training and no dataset: the chapters' real runs are checked by nbval.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from capslib.book import plots, runner
from capslib.book.chapters import ccm as ccm_ch
from capslib.book.chapters import routing as routing_ch
from capslib.book.widgets import figure_png, slider_panels
from capslib.engine.config import profile
from capslib.engine.model import CapsNet
from capslib.engine.probes import ProbeResult

ROW = {"config_hash": "0123456789ab", "profile": "smoke", "data.dataset": "fashion-mnist", "seed": 0,
       "device": "cpu", "device_name": "x86_64", "capslib_version": "0.1.0", "test_acc": 0.634,
       "best_val_acc": 0.64, "dead_000": {"primary": 0.0, "inter1": 0.25, "class": 0.0}}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = profile("smoke", C=3, D=4, I=1, routing_iters=2)
    return cfg, CapsNet(cfg.model).eval(), torch.randn(5, 1, 28, 28)


# ------------------------------------------------------------------ provenance
def test_footer_from_a_row_says_smoke_is_not_a_reproduction():
    text = plots.provenance_text(ROW)
    for part in ("Fashion-MNIST", "`smoke`", "not a reproduction", "seed 0", "device cpu (x86_64)",
                 "capslib 0.1.0", "config `0123456789ab`"):
        assert part in text, part
    md = plots.provenance_footer(ROW, note="first 256 test images")
    assert md.data.endswith("· first 256 test images")


def test_footer_from_several_rows_and_configs():
    other = {**ROW, "config_hash": "ba9876543210", "seed": 1}
    text = plots.provenance_text({1: ROW, 2: other})
    assert "configs `0123456789ab`, `ba9876543210`" in text and "seeds 0, 1" in text
    cfg = profile("paper", seed=3)
    text = plots.provenance_text(cfg)
    assert "CIFAR-10" in text and "`paper`" in text and "seed 3" in text and cfg.config_hash() in text
    assert "not a reproduction" not in text
    assert plots.run_label([ROW, other]).startswith("Fashion-MNIST · smoke (check, not a reproduction)")
    with pytest.raises(ValueError):
        plots.provenance_text([])


# ------------------------------------------------------------------ figures
def _probe(layers=("primary", "inter1", "class"), types=(3, 3, 10)) -> ProbeResult:
    rng = np.random.default_rng(0)
    acts = {k: rng.uniform(0, 0.6, n) for k, n in zip(layers, types)}
    acts["inter1"][0] = 0.0  # a dead type
    return ProbeResult(layers=list(layers), activations={"paper000": acts, "paper002": acts})


def test_every_figure_function_returns_a_figure(tiny):
    _, model, x = tiny
    traces = routing_ch.routing_traces(model, x, 3)
    corrs = ccm_ch.layer_correlations(model, x)
    grid = runner.grid_table({1: ROW, 2: ROW}, "r", precise=True)
    ccm = ccm_ch.correlation_table({0.0: corrs, 0.1: corrs}, "α", {0.0: ROW, 0.1: ROW}, precise=True)
    figures = [
        plots.squash_curve(),
        plots.activation_heatmap(_probe()),
        plots.activation_heatmaps({1: _probe(), 2: _probe()}, "r", title="t"),
        plots.routing_evolution(routing_ch.trace_table(traces).reset_index(), routing_ch.trace_sample_table(traces), trained_r=2),
        plots.accuracy_dead_panels(grid),
        plots.ccm_panels(ccm),
        plots.correlation_heatmaps(corrs),
        plots.correlation_grid({0.0: corrs, 0.1: corrs}, "α", title="t"),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert figure_png(fig, dpi=40)[:4] == b"\x89PNG"
    slider_panels({1: plots.activation_heatmap(_probe()), 2: plots.activation_heatmap(_probe())}, "r")


# ------------------------------------------------------------------ analyses
def test_routing_trace_is_the_layers_own_routing(tiny):
    _, model, x = tiny
    check = routing_ch.trace_matches_forward(model, x)
    assert list(check.index) == ["inter1", "class"]
    assert (check["max |v_trace - v_forward|"] == 0).all()
    assert routing_ch.layer_votes(model, x, "inter1").shape == (5 * 6 * 6, 3, 9 * 3, 4)
    assert routing_ch.layer_votes(model, x, "class").shape == (5, 10, 6 * 6 * 3, 16)
    with pytest.raises(ValueError):
        routing_ch.layer_votes(model, x, "primary")


def test_trace_summary_starts_uniform(tiny):
    _, model, x = tiny
    traces = routing_ch.routing_traces(model, x, 4)
    y = torch.zeros(5, dtype=torch.long)
    table = routing_ch.trace_table(traces, y)
    first = table.xs(1, level="r")
    assert np.allclose(first["entropy c"], 1.0)  # c = 1/J at r = 1
    assert math.isclose(first.loc["class", "max c"], 0.1, rel_tol=1e-5)
    assert math.isclose(first.loc["inter1", "max c"], 1 / 3, rel_tol=1e-5)
    assert table.loc["class", "acc"].notna().all() and table.loc["inter1", "acc"].isna().all()
    assert len(routing_ch.trace_sample_table(traces, max_samples=50)) == 2 * 4 * 50


def test_correlations_and_switch_table(tiny):
    _, model, x = tiny
    corrs = ccm_ch.layer_correlations(model, x)
    assert list(corrs) == ["conv1", "conv2", "conv3", "primary"]
    assert corrs["primary"].shape == (12, 12)
    same = ccm_ch.switch_table((ROW, model, corrs), {"same": (ROW, model, corrs)})
    assert (same.loc[[i for i in same.index if "Δ" in i], "same"] == 0).all()
    assert same.loc["test acc (%)", "same"] == 63
    table = ccm_ch.correlation_table({0.0: corrs}, "α", {0.0: ROW})
    assert table.loc[0.0, "test acc (%)"] == 63


def test_grid_table_orders_layers_and_rounds():
    table = runner.grid_table({3: ROW}, "r")
    assert list(table.columns) == ["test acc (%)", "best val acc (%)", "dead primary (%)", "dead inter1 (%)",
                                   "dead class (%)"]
    assert table.loc[3].tolist() == [63, 64, 0, 25, 0]


def test_squash_table_and_alpha_grid():
    table = routing_ch.squash_table()
    assert table.loc[0.0, "|v| = squash (code)"] == 0 and not table["NaN"].any()
    assert table.loc[1.0, "|v| = squash (code)"] == 0.5
    assert ccm_ch.alpha_grid(0.1, [0.01, 0.1]) == [0.0, 0.01, 0.1]
