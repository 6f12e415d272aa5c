"""The collapse chapter's and the verdict page's analysis (capslib.book.collapse_runs).

Every store here is a small CSV written by the test into a temporary results folder: the summariser's
numbers (mean ± std over seeds, number of seeds, "runs in progress"), the final-stage choice of prune
points, the verdict rule (never "reproduced" with fewer than three seeds or without the control; smoke
rows only ever give "inconclusive (smoke scale)"), and that the figures draw something.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from capslib.book import collapse_runs, params
from capslib.book.chapters import collapse as collapse_ch
from capslib.book.chapters import verdicts as verdicts_ch
from capslib.book.params import ParameterError, check_parameters


def _row(C, D, I, seed, acc, pr=0.0, stage="train", kind="train", collapsed=False, std=0.5, I_after=None):
    return {"run_key": f"k{C}{D}{I}{pr}{seed}{stage}", "experiment": "collapse", "stage": stage, "status": "ok",
            "config_hash": "abcdef123456", "profile": "fmnist", "seed": seed, "test_acc": acc,
            "collapsed": collapsed, "kind": kind, "pr": pr, "I_after": I_after, "grid.C": C, "grid.D": D,
            "grid.I": I if I_after is None else 0, "model.C": C, "model.D": D,
            "model.I": I if I_after is None else I_after, "model.init_std": std, "data.dataset": "fashion-mnist",
            "device": "cpu", "device_name": "TestCPU", "capslib_version": "0.1.0+test",
            "timestamp": "2026-01-01T00:00:00+0000"}


def _write(root, rows, name="collapse", profile="fmnist"):
    path = root / name / f"{profile}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


POINTS = [collapse_runs.CollapsePoint("C20 D8 I6", 20, 8, 6, 0.0, 0.5, "collapse", "control"),
          collapse_runs.CollapsePoint("C20 D8 I7", 20, 8, 7, 0.0, 0.5, "collapse", "test")]


def test_summary_mean_std_seeds_and_in_progress(tmp_path):
    rows = [_row(20, 8, 6, s, a) for s, a in zip(range(3), (0.80, 0.82, 0.84))]
    rows.append(_row(20, 8, 6, 2, 0.84))  # a repeated seed counts once
    _write(tmp_path, rows)
    s = collapse_runs.run_summary(collapse_runs.load_collapse("fmnist", tmp_path), POINTS).set_index("point")
    i6 = s.loc["C20 D8 I6"]
    assert i6["seeds"] == 3 and i6["seed list"] == "0–2"
    assert i6["test acc (%)"] == pytest.approx(82.0)
    assert i6["± std"] == pytest.approx(np.std([80, 82, 84], ddof=1))
    assert i6["collapsed"] == "0/3" and i6["dataset"] == "Fashion-MNIST" and i6["device"] == "TestCPU"
    i7 = s.loc["C20 D8 I7"]
    assert i7["seeds"] == 0 and i7["status"] == "runs in progress" and np.isnan(i7["test acc (%)"])


def test_summary_keeps_the_final_stage_of_a_prune_point_and_lists_other_points(tmp_path):
    rows = []
    for stage, acc in (("base", 0.5), ("ccm", 0.6), ("pruned", 0.1), ("retrain", 0.77)):
        rows.append(_row(20, 8, 0, 0, acc, pr=0.25, stage=stage, kind="prune", I_after=7))
    rows.append(_row(12, 4, 3, 0, 0.6))  # a point no claim uses
    _write(tmp_path, rows)
    final = collapse_runs.load_collapse("fmnist", tmp_path)
    assert list(final["stage"]) == ["retrain", "train"]
    pts = POINTS + [collapse_runs.CollapsePoint("C20 D8 I7 PR0.25", 20, 8, 7, 0.25, 0.5, "rescue", "test")]
    s = collapse_runs.run_summary(final, pts).set_index("point")
    assert s.loc["C20 D8 I7 PR0.25", "test acc (%)"] == pytest.approx(77.0)
    assert s.loc["C20 D8 I7 PR0.25", "seeds"] == 1 and "(< 3)" in s.loc["C20 D8 I7 PR0.25", "status"]
    assert "C12 D4 I3 std0.5" in s.index and s.loc["C12 D4 I3 std0.5", "claim"] == "other"


def test_missing_store_is_all_in_progress(tmp_path):
    s = collapse_runs.run_summary(collapse_runs.load_collapse("fmnist", tmp_path), POINTS)
    assert (s["status"] == "runs in progress").all()
    assert "no rows" in collapse_runs.runs_footer(pd.DataFrame(), "fmnist")


@pytest.mark.parametrize("kw,expected", [
    (dict(supported=True, n_seeds=2, control_seen=True, scale="full"), "inconclusive"),
    (dict(supported=True, n_seeds=5, control_seen=False, scale="full"), "inconclusive"),
    (dict(supported=None, n_seeds=5, control_seen=True, scale="full"), "inconclusive"),
    (dict(supported=True, n_seeds=10, control_seen=True, scale="smoke"), "inconclusive (smoke scale)"),
    (dict(supported=True, n_seeds=10, control_seen=True, scale="cifar10"), "untestable here (CIFAR-10)"),
    (dict(supported=False, n_seeds=3, control_seen=True, scale="full"), "not reproduced"),
    (dict(supported=True, n_seeds=3, control_seen=True, scale="full"), "reproduced"),
    (dict(supported=True, n_seeds=3, control_seen=True, scale="full", explained_by="C'"), "explained by C'"),
])
def test_grade(kw, expected):
    assert verdicts_ch.grade(**kw) == expected


def _designed_points():
    """The collapse claim's I = 6 / 7 pair, the rescue at three PRs and, as its controls, fresh unpruned
    nets with the C' each prune leaves (authors' rule: 18, 15, 13)."""
    CP = collapse_runs.CollapsePoint
    return [CP("C20 D8 I6", 20, 8, 6, 0.0, 0.5, "collapse", "control"),
            CP("C20 D8 I7", 20, 8, 7, 0.0, 0.5, "collapse", "test"),
            *[CP(f"C20 D8 I7 PR{pr:g}", 20, 8, 7, pr, 0.5, "rescue", "test") for pr in (0.125, 0.25, 0.375)],
            *[CP(f"C{c} D8 I7 fresh", c, 8, 7, 0.0, 0.5, "rescue", "control") for c in (18, 15, 13)]]


def _collapse_rows(n_seeds, i6_acc=0.8, i7_acc=0.1):
    rows = [_row(20, 8, 6, s, i6_acc, collapsed=i6_acc < 0.15) for s in range(n_seeds)]
    rows += [_row(20, 8, 7, s, i7_acc, collapsed=i7_acc < 0.15) for s in range(n_seeds)]
    return rows


def test_verdict_needs_three_seeds_and_the_control(tmp_path):
    pts = _designed_points()
    _write(tmp_path, _collapse_rows(2))
    summary = collapse_runs.run_summary(collapse_runs.load_collapse("fmnist", tmp_path), pts)
    v = verdicts_ch.verdicts("fmnist", tmp_path, summary=summary, limits=collapse_ch.depth_limit_table(pd.DataFrame()))
    assert v[0].verdict == "inconclusive" and v[0].seeds == 2
    _write(tmp_path, _collapse_rows(3))
    s = collapse_runs.run_summary(collapse_runs.load_collapse("fmnist", tmp_path), pts)
    v = verdicts_ch.verdicts("fmnist", tmp_path, summary=s, limits=collapse_ch.depth_limit_table(pd.DataFrame()))
    assert v[0].verdict == "reproduced" and v[0].seeds == 3
    # without the I = 6 control the same I = 7 collapse is not enough
    no_ctrl = s.copy()
    no_ctrl.loc[no_ctrl["point"] == "C20 D8 I6", "seeds"] = 0
    v = verdicts_ch.verdicts("fmnist", tmp_path, summary=no_ctrl, limits=collapse_ch.depth_limit_table(pd.DataFrame()))
    assert v[0].verdict == "inconclusive"
    # I = 7 training in every seed: not reproduced
    _write(tmp_path, _collapse_rows(3, i7_acc=0.8))
    s = collapse_runs.run_summary(collapse_runs.load_collapse("fmnist", tmp_path), pts)
    assert verdicts_ch.verdicts("fmnist", tmp_path, summary=s,
                               limits=collapse_ch.depth_limit_table(pd.DataFrame()))[0].verdict \
        == "not reproduced"


def test_rescue_explained_by_c_prime_when_the_control_trains_too(tmp_path):
    rows = _collapse_rows(3)
    for pr in (0.125, 0.25, 0.375):
        rows += [_row(20, 8, 0, s, 0.8, pr=pr, stage="retrain", kind="prune", I_after=7) for s in range(3)]
    for c in (18, 15, 13):
        rows += [_row(c, 8, 7, s, 0.8) for s in range(3)]
    _write(tmp_path, rows)
    s = collapse_runs.run_summary(collapse_runs.load_collapse("fmnist", tmp_path), _designed_points())
    v = verdicts_ch.verdicts("fmnist", tmp_path, summary=s, limits=collapse_ch.depth_limit_table(pd.DataFrame()))
    assert v[1].verdict.startswith("explained by fewer capsule types")


def test_smoke_only_claims_are_never_reproduced(tmp_path):
    _write(tmp_path, [_row(8, 8, 0, 0, 0.6)], name="table1", profile="smoke")
    seed002 = dict(_row(4, 9, 1, 0, 0.7), routing="em", depth=1, dead_002=json.dumps({"inter1": 0.5}))
    _write(tmp_path, [seed002], name="seed002_depth", profile="smoke")
    vs = verdicts_ch.verdicts("fmnist", tmp_path)
    by = {v.source.split(",")[0] + v.claim[:12]: v for v in vs}
    assert len(vs) == 9  # the paper's five, seeds 002 and 004, the companion's hypothesis H and its deep claim
    for v in vs:
        assert v.verdict in ("inconclusive", "inconclusive (smoke scale)") or v.verdict.startswith("untestable")
        assert v.would_change and v.control and v.evidence
    # the smoke sweeps' rows are a code path: these two claims are graded from their own studies' stores only
    table1 = next(v for v in vs if v.claim.startswith("Table 1"))
    assert table1.verdict == "inconclusive" and "0 of 5 seeds" in table1.evidence
    s002 = next(v for v in vs if v.source.startswith("seed 002"))
    assert s002.verdict == "inconclusive" and "no rows yet" in s002.evidence
    assert by  # every claim has a distinct key
    md = verdicts_ch.verdict_markdown(vs[0], 1)
    assert "Verdict: **inconclusive**" in md and "#" not in md.split("\n")[0]


def _limits_rows():
    rows = []
    for seed in range(3):
        for preset, std, limit in (("authors", 0.5, 7), ("default", 0.3, 5)):
            rows.append({"preset": preset, "C": 20, "D": 8, "pr": 0.0, "dtype": "float32", "seed": seed, "batch": 0,
                         "C_eff": 20, "init_std": std, "I_max": 16, "limit": limit, "predicted_limit": limit,
                         "paper_max_I": "6", "dataset": "fashion-mnist test", "batch_size": 32,
                         "device_name": "TestCPU", "capslib_version": "0.1.0+test"})
        rows.append({**rows[-1], "C": 10, "pr": 0.0, "preset": "authors", "C_eff": 10, "limit": "",
                     "predicted_limit": "", "paper_max_I": ">30", "I_max": 32})
    return pd.DataFrame(rows)


def test_depth_limit_table_against_the_paper(tmp_path):
    t = collapse_ch.depth_limit_table(_limits_rows()).set_index(["preset", "C", "D"])
    assert t.loc[("authors", 20, 8), "max trainable I"] == "6" and t.loc[("authors", 20, 8), "agrees"] == "yes"
    assert t.loc[("default", 20, 8), "max trainable I"] == "4" and t.loc[("default", 20, 8), "agrees"] == "no"
    assert t.loc[("authors", 10, 8), "max trainable I"] == ">=32"
    assert t.loc[("authors", 10, 8), "agrees"] == "bound ok"
    assert t.loc[("authors", 20, 8), "seeds"] == 3
    foot = collapse_ch.depth_limit_footer(_limits_rows())
    assert "seeds 0–2" in foot and "TestCPU" in foot and "no training" in foot
    assert collapse_ch.paper_max_value(">=10") == (10.0, ">=") and collapse_ch.paper_max_value("x") == (None, "")


def test_figures_are_not_empty():
    layers = ["primary", "inter1", "inter2", "class"]
    t = pd.DataFrame({"layer": layers, "depth": range(4), "measured": [0.5, 0.1, 1e-6, 0.0],
                      "log10_predicted": [-0.3, -1.1, -5.5, -40.0]})
    fig = collapse_ch.length_figure({"a": t, "b": t})
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and fig.axes[0].lines
    s = collapse_ch.Screen(C=20, D=8, pr=0.0, std=0.5, C_eff=20, I_max=3, layer_mean=[0.5, 0.1, 1e-8, 0.0],
                  predicted=[-0.3, -1.0, -8.0, -30.0], limit=3, paper="6")
    fig = collapse_ch.screen_panel(s)
    assert fig.axes[0].lines and "I = 3" in fig.axes[0].get_title().replace("\u00a0", " ")
    assert collapse_ch.screens_table({("20/8", 0.5): s}, {0.0: s}).iloc[0]["max trainable I"] == "2"
    summary = collapse_runs.run_summary(pd.DataFrame([_row(20, 8, 6, 0, 0.8)]), POINTS)
    fig = collapse_runs.runs_figure(summary, title="t")
    ax = fig.axes[0]
    assert ax.patches and any("in progress" in tx.get_text() for tx in ax.texts)


def test_chapter_parameters_are_validated():
    ns = {name: p.default for name, p in params.CHAPTER_PARAMS["collapse"].items()}
    check_parameters(dict(ns), params.CHAPTER_PARAMS["collapse"])
    with pytest.raises(ParameterError, match="PRS"):
        check_parameters({**ns, "PRS": [1.5]}, params.CHAPTER_PARAMS["collapse"])
    with pytest.raises(ParameterError, match="unknown parameter"):
        check_parameters({**ns, "STD": 0.5}, params.CHAPTER_PARAMS["collapse"])



def test_rows_are_grouped_by_their_point_label_and_the_verdict_finds_the_experiments_points():
    """float64 and control points share (C, D, I, PR, std) with the float32 from-scratch points: each row
    goes to its own labelled point, and the collapse verdict reads the experiment's L-1 / L points."""
    pts = [collapse_runs.CollapsePoint("C20 I=6 (L-1)", 20, 8, 6, 0.0, 0.5, "collapse", "control"),
           collapse_runs.CollapsePoint("C20 I=7 (L)", 20, 8, 7, 0.0, 0.5, "collapse", "test"),
           collapse_runs.CollapsePoint("C20 I=7 (L) float64", 20, 8, 7, 0.0, 0.5, "precision", "test")]
    rows = []
    for seed in range(3):
        base = {"status": "ok", "stage": "train", "kind": "train", "seed": seed, "model.C": 20, "model.D": 8,
                "model.init_std": 0.5, "pr": 0.0, "data.dataset": "fashion-mnist", "profile": "cpu"}
        rows += [{**base, "label": "C20 I=6 (L-1)", "model.I": 6, "test_acc": 0.70},
                 {**base, "label": "C20 I=7 (L)", "model.I": 7, "test_acc": 0.10},
                 {**base, "label": "C20 I=7 (L) float64", "model.I": 7, "test_acc": 0.60}]
    s = collapse_runs.run_summary(pd.DataFrame(rows), pts).set_index("point")
    assert s.loc["C20 I=7 (L)", "test acc (%)"] == pytest.approx(10.0)
    assert s.loc["C20 I=7 (L) float64", "test acc (%)"] == pytest.approx(60.0)
    below, at = verdicts_ch._collapse_pair(s.reset_index())
    assert below["point"] == "C20 I=6 (L-1)" and at["point"] == "C20 I=7 (L)"


def test_the_experiment_declares_what_each_point_decides():
    """collapse_points reads claim and role from the experiment's own points (capslib.experiments.grids)."""
    decides = {p.label: (p.claim, p.role) for p in collapse_runs.collapse_points("cpu")}
    assert decides == {
        "C20 I=6 (L-1)": ("collapse", "control"), "C20 I=7 (L)": ("collapse", "test"),
        "C20 I=8 (L+1)": ("collapse", "test"), "C'=15 from scratch I=7 (same-width control)": ("rescue", "control"),
        "CCM+CHIP PR 0.25 (C'=15) I=7": ("rescue", "test"),
        "C20 pretrained backbone, unpruned, I=7 (control)": ("rescue", "control"),
        "remedy: C20 I=11 std 0.6, class std 0.1": ("remedy", "test"),
        "C20 I=7 (L) float64": ("precision", "test"), "C20 I=8 (L+1) float64": ("precision", "test")}
    pruned = next(p for p in collapse_runs.collapse_points("cpu") if p.claim == "rescue" and p.role == "test")
    assert (pruned.C, pruned.I, pruned.pr) == (20, 7, 0.25) and pruned.why


def _h_summary(f64_beyond_acc: float, remedy_acc: float) -> pd.DataFrame:
    pts = [collapse_runs.CollapsePoint("C20 I=6 (L-1)", 20, 8, 6, 0.0, 0.5, "collapse", "control"),
           collapse_runs.CollapsePoint("C20 I=7 (L)", 20, 8, 7, 0.0, 0.5, "collapse", "test"),
           collapse_runs.CollapsePoint("remedy: C20 I=11 std 0.6", 20, 8, 11, 0.0, 0.6, "remedy", "test"),
           collapse_runs.CollapsePoint("C20 I=7 (L) float64", 20, 8, 7, 0.0, 0.5, "precision", "test"),
           collapse_runs.CollapsePoint("C20 I=8 (L+1) float64", 20, 8, 8, 0.0, 0.5, "precision", "test")]
    accs = {"C20 I=6 (L-1)": 0.7, "C20 I=7 (L)": 0.1, "remedy: C20 I=11 std 0.6": remedy_acc,
            "C20 I=7 (L) float64": 0.1, "C20 I=8 (L+1) float64": f64_beyond_acc}
    rows = [{"status": "ok", "stage": "train", "kind": "train", "seed": seed, "label": p.label, "model.C": p.C,
             "model.D": p.D, "model.I": p.I, "model.init_std": p.std, "pr": 0.0, "test_acc": accs[p.label]}
            for p in pts for seed in range(3)]
    return collapse_runs.run_summary(pd.DataFrame(rows), pts)


def _write_arms(root, outcome_of):
    """H's four arms in ``root/collapse_h/cpu.csv``, each seed at the accuracy of ``outcome_of(arm)``."""
    from capslib.book.study_points import H_PREDICTIONS

    acc = {"trains": 0.7, "chance": 0.099, "below 50 %": 0.3}
    rows = [dict(status="ok", kind="train", stage="train", label=f"H: {arm}, C20 I=11", seed=seed, epochs_run=1,
                 test_acc=acc[outcome_of(arm, predicted)]) for arm, predicted in H_PREDICTIONS.items()
            for seed in range(3)]
    (root / "collapse_h").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "collapse_h" / "cpu.csv", index=False)


@pytest.mark.parametrize("f64_beyond, remedy, arms, expected", [
    (0.10, 0.60, "as predicted", "reproduced"),      # float64 dies one layer beyond, the remedy trains, arms agree
    (0.55, 0.60, "as predicted", "not reproduced"),  # float64 trains beyond the float32 limit: precision sets it
    (0.10, 0.10, "as predicted", "not reproduced"),  # the remedy collapses
    (0.10, 0.60, "one missed", "not reproduced"),    # an arm misses its committed prediction
    (0.10, 0.60, None, "inconclusive"),              # the arms have not run
])
def test_hypothesis_h_verdict_follows_float64_the_remedy_and_its_arms(tmp_path, f64_beyond, remedy, arms, expected):
    if arms is not None:
        first = "ConvCaps std 0.6 alone"
        _write_arms(tmp_path, lambda arm, predicted: "chance" if arms == "one missed" and arm == first
                    else predicted)
    v = verdicts_ch.verdicts("cpu", tmp_path, summary=_h_summary(f64_beyond, remedy),
                    limits=collapse_ch.depth_limit_table(pd.DataFrame()))
    h = next(x for x in v if x.claim.startswith("(Hypothesis H"))
    assert h.verdict == expected and h.seeds == (3 if arms else 0)
    assert "`C20 I=8 (L+1) float64`" in h.would_change
    if arms == "one missed":
        assert "ConvCaps std 0.6 alone: predicted trains, observed chance" in h.evidence


@pytest.mark.parametrize("narrow_acc, backbone_acc, expected", [
    (0.1, 0.1, "reproduced"),  # both controls collapse: pruning (CCM + CHIP) is what rescues
    (0.7, 0.1, "explained by fewer capsule types C'"),
    (0.1, 0.6, "explained by the trained backbone"),
    (0.7, 0.6, "explained by fewer capsule types C' (a larger per-layer length gain ≈ 9σ²D/C') or the trained "
               "backbone"),
])
def test_rescue_is_explained_by_each_control_that_trains(tmp_path, narrow_acc, backbone_acc, expected):
    """The cpu grid's two rescue controls: C' = 15 from scratch and the C = 20 net on the CCM-trained backbone,
    unpruned. Whichever trains is named as the explanation; if neither does, the rescue is pruning's."""
    pts = [collapse_runs.CollapsePoint("C20 I=6 (L-1)", 20, 8, 6, 0.0, 0.5, "collapse", "control"),
           collapse_runs.CollapsePoint("C20 I=7 (L)", 20, 8, 7, 0.0, 0.5, "collapse", "test"),
           collapse_runs.CollapsePoint("C'=15 from scratch I=7 (same-width control)", 15, 8, 7, 0.0, 0.5, "rescue",
                                       "control"),
           collapse_runs.CollapsePoint("CCM+CHIP PR 0.25 (C'=15) I=7", 20, 8, 7, 0.25, 0.5, "rescue", "test"),
           collapse_runs.CollapsePoint("C20 pretrained backbone, unpruned, I=7 (control)", 20, 8, 7, 0.0, 0.5, "rescue",
                            "control")]
    accs = dict(zip([p.label for p in pts], (0.7, 0.1, narrow_acc, 0.6, backbone_acc)))
    rows = [{"status": "ok", "stage": "train", "kind": "train", "seed": seed, "label": p.label, "model.C": p.C,
             "model.D": p.D, "model.I": p.I, "model.init_std": p.std, "pr": p.pr, "test_acc": accs[p.label]}
            for p in pts for seed in range(3)]
    v = verdicts_ch.verdicts("cpu", tmp_path, summary=collapse_runs.run_summary(pd.DataFrame(rows), pts),
                    limits=collapse_ch.depth_limit_table(pd.DataFrame()))
    assert v[1].verdict.startswith(expected), v[1].verdict
    assert v[1].seeds == 3


@pytest.mark.parametrize("plateau_acc, expected", [
    (0.099, "not reproduced"),  # every stage at a plateau: the pruned net sits at chance in every seed
    (0.80, "explained by fewer capsule types C'"),  # it trains at both budgets: the one-epoch grade stands
])
def test_rescue_is_graded_at_both_budgets(tmp_path, plateau_acc, expected):
    """The rescue holds only if the pruned net trains after one epoch and with every stage at a plateau; the
    plateau rows (``collapse_plateau``) decide the second, and the channel-selection arms are reported."""
    pts = [collapse_runs.CollapsePoint("C20 I=6 (L-1)", 20, 8, 6, 0.0, 0.5, "collapse", "control"),
           collapse_runs.CollapsePoint("C20 I=7 (L)", 20, 8, 7, 0.0, 0.5, "collapse", "test"),
           collapse_runs.CollapsePoint("C'=15 from scratch I=7 (same-width control)", 15, 8, 7, 0.0, 0.5, "rescue",
                                       "control"),
           collapse_runs.CollapsePoint("CCM+CHIP PR 0.25 (C'=15) I=7", 20, 8, 7, 0.25, 0.5, "rescue", "test")]
    accs = dict(zip([p.label for p in pts], (0.7, 0.1, 0.7, 0.6)))
    rows = [{"status": "ok", "stage": "train", "kind": "train", "seed": seed, "label": p.label, "model.C": p.C,
             "model.D": p.D, "model.I": p.I, "model.init_std": p.std, "pr": p.pr, "test_acc": accs[p.label]}
            for p in pts for seed in range(3)]
    plateau = [{"status": "ok", "kind": "prune", "stage": stage, "seed": seed, "label": label, "epochs_run": 4,
                "test_acc": acc if stage == "retrain" else base}
               for seed, base in enumerate((0.826, 0.842, 0.848))
               for label, acc in (("plateau: CCM+CHIP PR 0.25 I=7", plateau_acc),
                                  ("plateau: PR 0.25 random channels I=7", 0.099))
               for stage in ("base", "ccm", "retrain")]
    (tmp_path / "collapse_plateau").mkdir()
    pd.DataFrame(plateau).to_csv(tmp_path / "collapse_plateau" / "cpu.csv", index=False)
    v = verdicts_ch.verdicts("cpu", tmp_path, summary=collapse_runs.run_summary(pd.DataFrame(rows), pts),
                             limits=collapse_ch.depth_limit_table(pd.DataFrame()))[1]
    assert v.verdict.startswith(expected), v.verdict
    parts = dict(v.breakdown)
    shown = parts["What the rows show"]
    assert "base 82.6–84.8 %" in shown
    assert ("sits at chance (9.9 ± 0.0 %, 3 seeds)" in shown) == (plateau_acc < 0.2)
    assert "random channels I=7: 9.9 ± 0.0 % over 3 seeds (3 at chance" in parts["Which channels"]
    assert ("Every choice sits at chance" in parts["Which channels"]) == (plateau_acc < 0.2)
    assert parts["What is untested"].startswith("PR 0.125 and 0.375 at the plateau")
