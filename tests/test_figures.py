"""capslib.book.tables: the helpers and figures of the chip, depth and kernels chapters, on synthetic inputs.

No training and no dataset: the chapters' real runs are checked by nbval.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from capslib.book import params, reproduction, runner, tables
from capslib.book.chapters import chip as chip_ch
from capslib.book.chapters import depth as depth_ch
from capslib.book.chapters import kernels as kernels_ch
from capslib.engine.config import ModelConfig, profile
from capslib.engine.model import CapsNet
from capslib.pruning.prune import LAYERS, make_plan, plan_from_removed


def _scores(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    widths = list(cfg.widths) + [cfg.C * cfg.D]
    return {name: rng.uniform(0.1, 2.0, n) for name, n in zip(LAYERS, widths)}


# ------------------------------------------------------------------ scale and parameters
def test_chapter_defaults_and_overrides():
    cfg = runner.chapter_cfg("smoke", chapter="chip")
    assert (cfg.model.C, cfg.model.D, cfg.model.I) == (8, 4, 0)
    assert (cfg.data.train_size, cfg.data.val_size, cfg.data.test_size) == (1000, 1000, 500)
    assert cfg.train.collapse_epochs == 1 and cfg.profile == "smoke"
    assert runner.chapter_cfg("smoke", C=6, I=1, chapter="chip").model.C == 6
    assert runner.chapter_cfg("paper", chapter="chip").model.C == 20
    assert runner.chapter_cfg("paper", chapter="depth").model.I == 12
    assert tables.sweep_overrides("table1", "smoke")["I"] == 0
    assert "I" not in tables.sweep_overrides("table3", "smoke")
    assert tables.sweep_overrides("table2", "paper", "fashion-mnist") == {"dataset": "fashion-mnist"}


def test_kernels_spec_has_pr():
    spec = params.CHAPTER_PARAMS["kernels"]
    assert "PR" in spec and set(params.COMMON_PARAMS) <= set(spec)
    ns = {name: p.default for name, p in spec.items()}
    params.check_parameters(ns, spec)
    with pytest.raises(params.ParameterError):
        params.check_parameters({**ns, "PR": 1.0}, spec)


def test_sweep_points_follow_the_grid():
    pts = tables.sweep_points("table1", "smoke")
    assert len(pts) == 6 and all(c.model.I == 0 and c.data.val_size == 1000 for _, c, _ in pts)
    assert len({k for _, _, k in pts}) == 6


# ------------------------------------------------------------------ rank agreement
def test_spearman_and_kendall():
    a = [1.0, 2.0, 3.0, 4.0]
    assert chip_ch.spearman(a, a) == pytest.approx(1.0)
    assert chip_ch.kendall_tau(a, a[::-1]) == pytest.approx(-1.0)
    assert chip_ch.kendall_tau(a, [1, 3, 2, 4]) == pytest.approx(2 / 3)
    assert chip_ch.spearman(a, [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(chip_ch.spearman(a, [1, 1, 1, 1]))
    # tau-b with ties: pandas' definition
    x, y = [1, 1, 2, 3], [1, 2, 2, 3]
    assert chip_ch.kendall_tau(x, y) == pytest.approx(0.8)


def test_rank_agreement_and_ci_frame():
    cfg = ModelConfig(C=8, D=4)
    s1, s2 = _scores(cfg, 0), _scores(cfg, 1)
    scores = {"per_image": s1, "batch_mean": s1}
    plans = {k: make_plan(cfg, v, 0.25) for k, v in scores.items()}
    t = chip_ch.rank_agreement(scores, plans)
    assert list(t.index) == list(LAYERS)
    assert (t["Spearman ρ"] == 1.0).all() and (t["Kendall τ"] == 1.0).all()
    assert t.loc["conv1", "same removed"] == "4/4"
    df = chip_ch.ci_frame(s2, make_plan(cfg, s2, 0.25))
    assert len(df) == sum(len(v) for v in s2.values())
    assert df.groupby("layer")["relative CI"].max().eq(1.0).all()
    assert df[df["layer"] == "conv1"]["removed"].sum() == 4
    conv1 = df[df["layer"] == "conv1"].sort_values("CI")
    assert conv1["removed"].head(4).all() and not conv1["removed"].tail(4).any()


def test_plannability_marks_the_rounding_failures():
    t = chip_ch.plannability([(10, 8), (8, 4)], [0.25, 0.5])
    assert t.loc[("[C=10, D=8]", 0.25), "plannable"] == "yes"
    assert t.loc[("[C=10, D=8]", 0.5), "plannable"] == "no: conv1 keeps 4 < D=8"
    assert t.loc[("[C=10, D=8]", 0.5), "conv1"] == "20→4"
    assert t.loc[("[C=8, D=4]", 0.5), "plannable"] == "yes"


def test_plans_for_returns_the_reason():
    cfg = ModelConfig(C=8, D=4)
    plans = chip_ch.plans_for(cfg, _scores(cfg), [0.25, 0.75])
    assert plans[0.25].C_after == 6
    assert isinstance(plans[0.75], str) and "fewer than D=4" in plans[0.75]


# ------------------------------------------------------------------ figures
def test_chip_figures():
    cfg = ModelConfig(C=8, D=4)
    s = _scores(cfg)
    plan = make_plan(cfg, s, 0.25)
    assert isinstance(chip_ch.ci_bars({"per_image": s, "batch_mean": s}, {"per_image": plan, "batch_mean": plan}), Figure)
    assert isinstance(chip_ch.ci_panel(s, plan, "t"), Figure)
    cells = {("8/4", 0.25): (s, plan, "a"), ("8/4", 0.75): (s, "layer 'conv1' would keep 0", "b")}
    fig = chip_ch.ci_grid(cells, title="x")
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_pivots_and_lines():
    paper = tables.paper_pivot("table1", "PR")
    assert paper.shape == (6, 7) and paper.loc["[C=10, D=8]", "0.6 / 0.625*"] == 74.09
    assert paper.loc["[C=16, D=6]", "0.6 / 0.625*"] == 73.02
    assert tables.paper_pivot("table3", "I", index="PR").loc[0.0, 7] == 10
    rep = pd.DataFrame([dict(C=8, D=4, PR=0.0, ours=51.6), dict(C=8, D=4, PR=0.25, ours=58.0),
                        dict(C=10, D=8, PR=0.0, ours=np.nan)])
    ours = tables.ours_pivot(rep, "PR")
    assert ours.loc["[C=8, D=4]"].tolist() == [52, 58] and len(ours) == 1
    assert isinstance(tables.table_lines(paper, ours, "PR", "ours"), Figure)
    assert tables.paper_table("table5").loc["[C=10, D=8]", "paper"] == ">30"


def _row(**kw):
    base = {"status": "ok", "kind": "train", "stage": "train", "pr": 0.0, "grid.C": 4, "grid.D": 4,
            "model.C": 4, "model.D": 4, "model.I": 1, "test_acc": 0.42, "best_val_acc": 0.4,
            "dead_000": json.dumps({"primary": 0.0, "inter1": 0.25, "class": 0.0}),
            "history": json.dumps([{"epoch": 1, "val_acc": 0.3, "dead": {"primary": 0.0, "inter1": 0.5, "class": 0.1}},
                                   {"epoch": 2, "val_acc": 0.4, "dead": {"primary": 0.0, "inter1": 0.25, "class": 0.0}}])}
    return {**base, **kw}


def test_depth_tables():
    rows = pd.DataFrame([_row(), _row(**{"model.I": 0, "dead_000": json.dumps({"primary": 0.0, "class": 0.0})}),
                         _row(kind="prune", stage="ccm"), _row(kind="prune", stage="retrain", pr=0.25)])
    t = depth_ch.grid_dead_table(rows, "table3")
    assert len(t) == 3 and t.loc[("[C=4, D=4]", 0.0, 1), "dead inter1 (%)"] == 25
    assert t.loc[("[C=4, D=4]", 0.0, 0), "dead inter1 (%)"] == "–"
    assert list(t.columns)[-3:] == ["dead primary (%)", "dead inter1 (%)", "dead class (%)"]
    assert isinstance(depth_ch.dead_bars(t), Figure)
    hist = depth_ch.dead_history(rows.iloc[:1])
    ht = depth_ch.dead_history_table(hist)
    assert ht["val acc (%)"].tolist() == [30, 40] and ht["dead inter1 (%)"].tolist() == [50, 25]
    assert isinstance(depth_ch.dead_history_figure(hist), Figure)
    depth = pd.DataFrame([
        {"stage": "depth", "depth_I": 1, "test_acc": 0.5, "best_val_acc": 0.5, "collapsed": "False",
         "grid.C": 8, "grid.D": 4, "pr": 0.0},
        {"stage": "depth", "depth_I": 2, "test_acc": 0.1, "best_val_acc": 0.1, "collapsed": "True",
         "grid.C": 8, "grid.D": 4, "pr": 0.0},
        {"stage": "depth_summary", "depth_I": 2, "max_depth": 1.0, "collapsed_at": 2.0,
         "depths_tried": "[1, 2]", "grid.C": 8, "grid.D": 4, "pr": 0.0}])
    dt = depth_ch.depth_table(depth)
    assert dt.loc["[C=8, D=4]", "max depth I"] == 1 and dt.loc["[C=8, D=4]", "collapsed at I"] == 2
    tr = depth_ch.depth_trials(depth, C=8, D=4)
    assert tr["collapsed"].tolist() == [False, True]
    assert isinstance(depth_ch.depth_curves(tr), Figure)


# ------------------------------------------------------------------ kernels
def test_overlap_and_similarity_figures():
    torch.manual_seed(0)
    cfg = profile("smoke", C=4, D=4, I=0).model
    chip = plan_from_removed(cfg, {"conv2": [0, 1, 2, 3], "primary": [0, 1, 2, 3]}, pr=0.25)
    sim = plan_from_removed(cfg, {"conv2": [0, 1, 4, 5], "primary": [4, 5, 6, 7]}, pr=0.25, mode="capsule")
    t = kernels_ch.overlap_table(chip, sim)
    assert t.loc["conv2", "both"] == 2 and t.loc["conv2", "Jaccard"] == pytest.approx(2 / 6, abs=0.01)
    assert t.loc["primary", "both"] == 0 and math.isnan(t.loc["conv1", "Jaccard"])
    model = CapsNet(cfg).eval()
    d = kernels_ch.min_distance_table({"a": model, "b": model})
    assert list(d.index) == list(LAYERS) and (d["a"] == d["b"]).all()
    assert ((d["a"] >= 0) & (d["a"] <= 2)).all()
    assert isinstance(kernels_ch.similarity_heatmaps(model), Figure)
    points = tables.sweep_points("table4", "smoke")
    kc = kernels_ch.kernel_configs(points)
    assert kc.loc[("[C=4, D=4]", "k5"), "capsule grid"] == "12×12"
    assert kc.loc[("[C=4, D=4]", "k3"), "capsule grid"] == "6×6"


# ------------------------------------------------------------------ reproduction page
def test_reproduction_page_without_runs(tmp_path):
    text = reproduction.reproduction_markdown(results_root=str(tmp_path))
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "Fig. 3"):
        assert f"## {title}" in text
    assert "no full-scale run has been done yet" in text
    assert text.count("The smoke grid has not been run yet") == 6
    assert "cannot be planned" in text and "no: conv1 keeps 4 < D=8" in text
    assert "not a reproduction" in text and "74.71" in text


# ------------------------------------------------------------------ the book as a reader sees it (issue 13)
def _bar_colours(ax) -> list[tuple]:
    """Face colour of each hue level's bars, in hue order."""
    return [tuple(np.round(c.patches[0].get_facecolor(), 3)) for c in ax.containers]


def test_kernel_bars_give_a_setting_one_colour_in_both_panels():
    from capslib.book import plots

    paper = tables.paper_pivot("table4", "kernels")  # the paper lists k5 first
    ours = pd.DataFrame({"k3": [42], "k5": [51]}, index=pd.Index(["[C=4, D=4]"], name="model"))
    fig = kernels_ch.kernel_bars(paper, ours, ours_label="ours: " + "Fashion-MNIST · smoke (check, not a reproduction) · "
                                                             "seed 0 · cpu")
    left, right = fig.axes[:2]
    assert _bar_colours(left) == _bar_colours(right) and len(_bar_colours(left)) == 2
    heights = {round(p.get_height()) for p in right.containers[0].patches}
    assert heights == {42}, "the first colour is k3 in both panels"
    assert "\n" in right.get_title(), "a long panel title is wrapped, not cut off"
    assert fig.get_figwidth() <= plots.PAGE_WIDTH_IN


def test_table_lines_have_whole_number_depth_ticks_and_legends_beside_the_data():
    paper = tables.paper_pivot("table2", "I")
    ours = pd.DataFrame({0: [48], 1: [42], 2: [18]}, index=pd.Index(["[C=4, D=4]"], name="model"))
    fig = tables.table_lines(paper, ours, "I", ours_label="ours")
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = ax.get_xticks()
        assert all(float(t).is_integer() for t in ticks), ticks
        legend = ax.get_legend()
        assert legend is not None
        box, frame = legend.get_window_extent(), ax.get_window_extent()
        assert box.x0 >= frame.x1 - 1, "the legend sits right of the axes, never on the lines"


def test_dead_bars_say_when_a_panel_is_all_zero():
    table = pd.DataFrame({"model": ["[C=8, D=4]"] * 4, "PR": [0.0, 0.0, 0.25, 0.25], "I": [1, 2, 1, 2],
                          "dead primary (%)": [0, 0, 0, 0], "dead inter1 (%)": [0, 0, 0, 0],
                          "dead inter2 (%)": ["–", 0, "–", 0], "dead class (%)": [40, 0, 0, 0]})
    fig = depth_ch.dead_bars(table.set_index(["model", "PR", "I"]))
    left, right = fig.axes[:2]
    texts = [t.get_text() for t in right.texts]
    assert any("no dead capsule types" in t for t in texts)
    assert "0" in texts, "every bar carries its value, a 0 % bar too"
    assert _bar_colours(left) == _bar_colours(right)


def test_paper_note_names_what_the_table_holds():
    assert "maximum depth" in tables.paper_note("Table 5 (maximum depth without pruning)").data
    assert "test accuracy in %" not in tables.paper_note("Table 5 (maximum depth without pruning)").data
    assert "test accuracy in %" in tables.paper_note("Table 2").data


def test_reproduction_table5_prints_a_depth_as_a_whole_number_and_stays_narrow():
    table = pd.DataFrame([{"C": 8, "D": 4, "ours": 2.0, "ours_std": math.nan, "seeds": 1, "paper": math.nan,
                           "delta": math.nan, "dataset": "fashion-mnist", "profile": "smoke", "device": "AMD EPYC",
                           "capslib_version": "0.1.0"}])
    text = reproduction._ours_md("table5", table, smoke=True)
    row = [line for line in text.splitlines() if line.startswith("| 8")][0]
    assert "| 2 " in row and "2.00" not in row
    header = text.splitlines()[0]
    assert "capslib" not in header and "dataset" not in header  # same on every row: said once, under the table
    assert "All rows: dataset fashion-mnist, profile smoke, device AMD EPYC, capslib 0.1.0." in text


def test_every_figure_fits_the_text_column():
    """The book shows figures at 100 dpi in a column about PAGE_WIDTH_IN wide: wider ones would be shrunk,
    and their text with them."""
    from capslib.book import plots

    cfg = ModelConfig(C=8, D=4)
    s = _scores(cfg)
    plans = {"per_image": make_plan(cfg, s, 0.25), "batch_mean": make_plan(cfg, s, 0.25)}
    cells = {(cd, pr): (s, make_plan(cfg, s, pr), f"[C=8, D=4] · PR {pr:g} · test acc 52%")
             for cd in ("8/4", "16/8") for pr in (0.0, 0.25, 0.5)}
    trials = pd.DataFrame({"I": [1, 2], "test acc (%)": [50.0, 16.0], "collapsed": [False, False],
                           "series": ["no pruning"] * 2})
    figures = [chip_ch.ci_bars({"per_image": s, "batch_mean": s}, plans, title="t"), chip_ch.ci_grid(cells, title="t"),
               chip_ch.ci_panel(*cells[("8/4", 0.25)]), depth_ch.depth_curves(trials, title="t")]
    assert all(f.get_figwidth() <= plots.PAGE_WIDTH_IN + 1e-9 for f in figures)
    assert plots.BOOK_RC["xtick.labelsize"] >= 9 and plots.FONT["small"] >= 9
