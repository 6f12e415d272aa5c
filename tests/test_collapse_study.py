"""The collapse study (issue 10, part 4): its profile, grid, unversioned resume keys and report.

Tiny and fast: nothing here trains the study; the one training test runs the smoke miniature on a
few hundred images.
"""
from __future__ import annotations

import pandas as pd
import pytest

import capslib.experiments.grids as grids
import capslib.experiments.sweeps as sweeps
from capslib.engine.config import profile
from capslib.experiments.grids import COLLAPSE, COLLAPSE_SMOKE, EXPERIMENTS
from capslib.experiments.results import ResultsStore


def test_cpu_profile_is_the_study_profile():
    cfg = profile("cpu")
    assert (cfg.model.C, cfg.model.D, cfg.model.init_std, cfg.model.class_std) == (20, 8, 0.5, 0.5)
    assert (cfg.data.dataset, cfg.data.train_size, cfg.data.val_size, cfg.data.test_size) == \
        ("fashion-mnist", 3000, 500, 1000)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.device) == (1, 64, "cpu")
    # adding the profile left the others alone
    assert profile("smoke").model.init_std == 0.3 and profile("smoke").data.train_size == 5000


@pytest.mark.parametrize("prof,k", [("cpu", COLLAPSE), ("smoke", COLLAPSE_SMOKE)])
def test_collapse_grid_shape_and_pruned_architecture(prof, k):
    from capslib.experiments.init_study import pruned_model_config
    from capslib.experiments.pipeline import check_prunable
    from capslib.pruning.prune import pruned_config

    grid = EXPERIMENTS["collapse"].grid(prof)
    labels = [p.label for p in grid]
    assert len(set(labels)) == len(labels) == 9
    L = k["L"]
    scratch = [p.config(prof).model.I for p in grid if p.kind == "train" and "C'" not in p.label]
    assert scratch[:3] == [L - 1, L, L + 1]
    assert k["remedy_I"] >= (11 if prof == "cpu" else 3)
    # the same-width control is exactly the architecture the prune pipeline rebuilds at depth L
    ctrl = next(p for p in grid if "same-width" in p.label).config(prof).model
    prune = next(p for p in grid if p.kind == "prune" and p.pr > 0)
    base = prune.config(prof)
    rebuilt = pruned_config(check_prunable(base, prune.pr, I=prune.I_after), prune.I_after)
    assert ctrl == rebuilt.replace(prune_rule=ctrl.prune_rule)
    assert ctrl == pruned_model_config(base.model, prune.pr).replace(I=L)
    assert ctrl.C == k["C_pruned"] and ctrl.widths == k["widths_pruned"]
    # float64 points differ from their float32 twins only in dtype
    f64 = [p.config(prof) for p in grid if dict(p.overrides).get("dtype") == "float64"]
    assert [c.model.I for c in f64] == [L, L + 1] and all(c.train.dtype == "float64" for c in f64)
    unpruned = next(p for p in grid if p.kind == "prune" and p.pr == 0.0)
    assert unpruned.I_after == L


def test_plan_is_point_major_for_the_study_and_seed_major_elsewhere():
    runs = sweeps.plan("collapse", "cpu", seeds=3)
    grid = EXPERIMENTS["collapse"].grid("cpu")
    assert [(p.label, c.train.seed) for p, c in runs[:6]] == [(grid[0].label, 0), (grid[0].label, 1),
                                                              (grid[0].label, 2), (grid[1].label, 0),
                                                              (grid[1].label, 1), (grid[1].label, 2)]
    t2 = sweeps.plan("table2", "smoke", seeds=2)
    assert [c.train.seed for _, c in t2] == [0, 0, 0, 1, 1, 1]


def test_unversioned_points_stay_done_when_the_library_version_changes(tmp_path, monkeypatch, capsys):
    runs = sweeps.plan("collapse", "smoke", seeds=1)
    point, cfg = runs[0]
    monkeypatch.setattr(grids, "capslib_version", lambda: "0.1.0+aaaaaaaa")
    key_a = grids.point_key("collapse", cfg, point)
    versioned_a = grids.point_key("table2", cfg, point)
    store = ResultsStore.for_experiment("collapse", "smoke", tmp_path)
    store.append({"run_key": "r1", "status": "ok", "point_key": key_a, "test_acc": 0.5, "seed": 0,
                  "capslib_version": "0.1.0+aaaaaaaa"})
    monkeypatch.setattr(grids, "capslib_version", lambda: "0.1.0+bbbbbbbb")  # a library edit
    assert grids.point_key("collapse", cfg, point) == key_a
    assert grids.point_key("table2", cfg, point) != versioned_a  # other experiments still re-run
    assert grids.point_key("collapse", cfg, point, versioned=True) != key_a
    s = sweeps.sweep("collapse", profile="smoke", seeds=1, results_root=tmp_path, dry_run=True, progress=False)
    assert s.skipped == 1 and s.planned == len(runs)
    out = capsys.readouterr().out
    assert out.count("[done]") == 1 and point.label in out.splitlines()[0]


def test_report_keeps_rows_of_every_version_for_an_unversioned_study():
    from capslib.experiments.report import ours_table

    rows = []
    for seed, (ver, ts) in enumerate([("0.1.0+aaaaaaaa", "2026-01-01T00:00:00+0000"),
                                      ("0.1.0+bbbbbbbb", "2026-01-02T00:00:00+0000")]):
        rows.append({"status": "ok", "kind": "train", "stage": "train", "label": "C20 I=6 (L-1)", "grid.C": 20,
                     "grid.D": 8, "grid.I": 6, "pr": 0.0, "seed": seed, "test_acc": 0.6 + 0.1 * seed,
                     "capslib_version": ver, "timestamp": ts})
    rows.append({"status": "ok", "kind": "prune", "stage": "ccm", "label": "p", "grid.C": 20, "grid.D": 8,
                 "grid.I": 0, "pr": 0.25, "I_after": 7, "seed": 0, "test_acc": 0.8,
                 "capslib_version": "0.1.0+bbbbbbbb", "timestamp": "2026-01-02T00:00:00+0000"})
    rows.append(dict(rows[-1], stage="retrain", test_acc=0.7))
    t = ours_table("collapse", pd.DataFrame(rows))
    first = t[t["label"] == "C20 I=6 (L-1)"].iloc[0]
    assert first["seeds"] == 2 and first["ours"] == pytest.approx(65.0)
    pruned = t[t["label"] == "p"].iloc[0]  # the retrain stage is the point's result, at I_after
    assert pruned["ours"] == pytest.approx(70.0) and pruned["I"] == 7 and pruned["seeds"] == 1
    # a versioned table still keeps only the newest version's rows
    t2 = ours_table("table2", pd.DataFrame(rows[:2]))
    assert t2["seeds"].iloc[0] == 1


def test_collapse_smoke_miniature_runs_end_to_end(real_data_root, tmp_path, monkeypatch):
    """Every point kind of the grid (float64, the PR 0 pretrained control, the pruned point) runs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tiny = dict(train_size=128, val_size=64, test_size=64, batch_size=64)
    s = sweeps.sweep("collapse", profile="smoke", overrides=tiny, results_root=tmp_path, checkpoint_root="",
                     progress=False)
    assert s.failed == 0, s.errors
    df = ResultsStore(s.store).read()
    ctrl = df[(df["kind"] == "prune") & (df["pr"] == 0.0) & (df["stage"] == "retrain")]
    assert len(ctrl) == 1 and int(ctrl["model.C"].iloc[0]) == COLLAPSE_SMOKE["C"]  # nothing pruned
    assert int(ctrl["model.I"].iloc[0]) == COLLAPSE_SMOKE["L"]
    assert set(df.loc[df["stage"] == "train", "train.dtype"]) == {"float32", "float64"}
