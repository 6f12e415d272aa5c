"""Issue 20's remaining claims: the depth scan of the screens, the t interval of Table 1's paired differences, and the
rules that grade Fig. 6, Table 1 and seed 002 from their stores (on stores written here, so each rule's every
branch is reached; the committed rows are graded by the verdict page's tests)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from capslib.book import fig6_runs, seed002_runs, table1_runs
from capslib.experiments.depth_screen import _scan
from capslib.experiments.grids import FIG6_LIMITS, TABLE1_TREND, get_experiment


# ----------------------------------------------------------------------------------- the depth scan
@pytest.mark.parametrize("limit", [1, 2, 5, 9, 14, None])
@pytest.mark.parametrize("start", [1, 4, 7, 12])
def test_scan_finds_the_first_depth_below_the_rule_from_any_start(limit, start):
    seen = []

    def below(I):
        return limit is not None and I >= limit

    def screened(I):
        seen.append(I)
        return below(I)

    _scan(screened, start, I_max=20, after=2)
    # the slow obvious reference: the first depth of 1..20 below the rule
    first = next((I for I in range(1, 21) if below(I)), None)
    assert min((I for I in seen if below(I)), default=None) == first
    assert len(seen) == len(set(seen))  # no depth screened twice
    if first is not None and first > 1:
        assert first - 1 in seen  # the depth above the rule next to it was screened too
    if first is not None and start <= first:
        assert max(seen) == min(first + 2, 20)  # two depths past the limit, no further
    if first is None:
        assert max(seen) == 20


# ----------------------------------------------------------------------------------- the t interval
def _t_cdf(x: float, df: int, steps: int = 200_000) -> float:
    """The t distribution's CDF by the trapezoid rule on its density (slow, obvious)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    f = lambda t: c * (1 + t * t / df) ** (-(df + 1) / 2)  # noqa: E731
    h = x / steps
    return 0.5 + h * (sum(f(i * h) for i in range(1, steps)) + (f(0) + f(x)) / 2)


@pytest.mark.parametrize("df", [1, 2, 4, 9, 15])
def test_t975_is_the_quantile_of_students_t(df):
    assert _t_cdf(table1_runs.t975(df), df) == pytest.approx(0.975, abs=2e-4)


def test_paired_interval_matches_its_formula():
    acc = pd.DataFrame({"a": [80.0, 81.0, 82.5, 79.0, 80.5], "b": [79.0, 80.5, 81.0, 79.5, 79.0]})
    r = table1_runs.paired(acc, "a", "b")
    d = acc["a"] - acc["b"]
    half = 2.776 * d.std(ddof=1) / math.sqrt(5)
    assert r["n"] == 5 and r["mean"] == pytest.approx(d.mean())
    assert (r["lo"], r["hi"]) == pytest.approx((d.mean() - half, d.mean() + half))


# ----------------------------------------------------------------------------------- Table 1's rule
def _write(root, experiment, rows):
    (root / experiment).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / experiment / "cpu.csv", index=False)


def _table1_store(root, acc_of):
    rows = []
    for p in get_experiment("table1_pr").grid("cpu"):
        for seed in range(5):
            rows.append(dict(run_key=f"{p.label}-{seed}", timestamp="2026-12-04T00:00:00", status="ok", kind=p.kind,
                             stage="retrain" if p.kind == "prune" else "train", label=p.label, seed=seed,
                             test_acc=acc_of(p.label, seed) / 100, wall_time=60.0))
    _write(root, "table1_pr", rows)


def _cells(**means):
    """acc_of(label, seed): the cell's mean plus a small seed-dependent wobble shared by every cell (pairing)."""
    by_label = {table1_runs.label(cell): v for cell, v in means.items()}
    return lambda label, seed: by_label[label] + 0.3 * seed + 0.05 * (seed % 2) * (1 if "0.5" in label else -1)


BASE = dict(plain=80.0, pipeline=80.2, **{"0.125": 80.2, "0.25": 80.2, "0.5": 79.0, "0.75": 77.0},
            **{"random 0.5": 79.0})


def test_table1_rise_and_fall_reproduce(tmp_path):
    _table1_store(tmp_path, _cells(**{**BASE, "0.125": 81.2}))
    c = table1_runs.claim(tmp_path)
    assert c["seeds"] == 5 and c["rise"] == 1 and c["fall"] == -1
    assert c["supported"] is True and c["explained_by"] is None


def test_table1_no_rise_over_the_pipeline_is_explained_by_extra_training(tmp_path):
    _table1_store(tmp_path, _cells(**{**BASE, "pipeline": 81.2, "0.125": 81.2}))
    c = table1_runs.claim(tmp_path)
    assert c["supported"] is True and c["explained_by"].startswith("the extra training")


def test_table1_fall_from_the_first_pr_is_not_reproduced(tmp_path):
    _table1_store(tmp_path, _cells(**{**BASE, "0.125": 79.5, "0.25": 79.0}))
    c = table1_runs.claim(tmp_path)
    assert c["rise"] == -1 and c["supported"] is False


def test_table1_with_a_noisy_rise_stays_inconclusive_and_says_why(tmp_path):
    noisy = _cells(**{**BASE, "plain": 80.2})
    _table1_store(tmp_path, lambda label, seed: noisy(label, seed) + (1.5 if "0.125" in label and seed % 2 else 0))
    c = table1_runs.claim(tmp_path)
    assert c["supported"] is None and "spans 0" in c["why"]


def test_table1_needs_five_seeds(tmp_path):
    _table1_store(tmp_path, _cells(**{**BASE, "0.125": 81.2}))
    df = pd.read_csv(tmp_path / "table1_pr" / "cpu.csv")
    df[df["seed"] < 4].to_csv(tmp_path / "table1_pr" / "cpu.csv", index=False)
    assert table1_runs.claim(tmp_path)["supported"] is None


# ----------------------------------------------------------------------------------- seed 002's rule
def _seed002_store(root, dead_of, acc=60.0, seeds=3):
    rows = []
    for p in get_experiment("seed002_dead").grid("cpu"):
        over = dict(p.overrides)
        for seed in range(seeds):
            rows.append({"run_key": f"{p.label}-{seed}", "timestamp": "2026-12-04T00:00:00", "status": "ok",
                         "kind": p.kind, "stage": "train", "label": p.label, "seed": seed,
                         "model.routing": over["routing"], "model.I": over["I"], "test_acc": acc / 100,
                         "dead_frac": dead_of(over["routing"], over["I"]), "dead_frac_init": 0.0, "wall_time": 10.0})
    _write(root, "seed002_dead", rows)


def test_seed002_dead_share_growing_under_every_claimed_routing_reproduces(tmp_path):
    _seed002_store(tmp_path, lambda r, I: 0.0 if r == "dynamic" else 0.1 * (I - 1))
    c = seed002_runs.claim(tmp_path)
    assert c["supported"] is True
    assert {o["routing"]: o["deepest"] for o in c["outcomes"]} == {"em": 5, "self": 5, "vb": 5, "dynamic": 5}
    assert all(o["acc"] == (60.0, 60.0) for o in c["outcomes"])
    assert "test accuracy 60.0 → 60.0 %)" in seed002_runs.outcome_text(c["outcomes"][0])
    assert c["cpu_hours"] == pytest.approx(len(get_experiment("seed002_dead").grid("cpu")) * 3 * 10 / 3600)


def test_seed002_a_flat_routing_is_not_reproduced_and_an_undecided_one_inconclusive(tmp_path):
    _seed002_store(tmp_path, lambda r, I: 0.0 if r == "self" else 0.1 * (I - 1))
    c = seed002_runs.claim(tmp_path)
    assert c["supported"] is False
    assert [o["grows"] for o in c["outcomes"]] == [True, False, True, True]  # em, self, vb, dynamic
    _seed002_store(tmp_path, lambda r, I: 0.1 * (I - 1), seeds=2)
    assert seed002_runs.claim(tmp_path)["supported"] is None


def test_seed002_verdict_names_the_routings_it_has_not_decided(tmp_path):
    _seed002_store(tmp_path, lambda r, I: 0.0)
    df = pd.read_csv(tmp_path / "seed002_dead" / "cpu.csv")
    started = (df["model.routing"] == "em") & (df["model.I"] == 1) & (df["seed"] == 0)  # one EM run in
    df[~df["model.routing"].isin(["em", "vb"]) | started].to_csv(tmp_path / "seed002_dead" / "cpu.csv", index=False)
    f = seed002_runs.verdict_fields(tmp_path, "cpu", "one epoch")
    untested = dict(f["breakdown"])["What is untested"]
    assert f["supported"] is False and "em and vb routing" in untested
    assert f["n_seeds"] == 3  # the decided points' seeds; the undecided EM point's one seed does not count
    _seed002_store(tmp_path, lambda r, I: 0.0)
    assert "routing" not in dict(seed002_runs.verdict_fields(tmp_path, "cpu", "one epoch")["breakdown"])["What is untested"]


# ----------------------------------------------------------------------------------- Fig. 6's rule
def _fig6_store(root, trains):
    rows = []
    for p in get_experiment("fig6_depth").grid("cpu"):
        for seed in range(3):
            I = p.I_after if p.kind == "prune" else dict(p.overrides)["I"]
            acc = 0.7 if trains(fig6_runs._arm(p.label), p.pr if p.kind == "prune" else fig6_runs._scratch_pr(p.label),
                                I) else 0.099
            rows.append(dict(run_key=f"{p.label}-{seed}", timestamp="2026-12-04T00:00:00", status="ok", kind=p.kind,
                             stage="retrain" if p.kind == "prune" else "train", label=p.label, seed=seed,
                             test_acc=acc, wall_time=60.0))
    _write(root, "fig6_depth", rows)


def test_fig6_pruned_depth_growing_with_pr_reproduces_and_a_missed_window_stays_inconclusive(tmp_path):
    _fig6_store(tmp_path, lambda arm, pr, I: arm == "pruned" and I < FIG6_LIMITS[pr])
    c = fig6_runs.claim(tmp_path)
    m = c["maxima"].set_index(["arm", "pr"])
    assert m.loc[("pruned", 0.25), "trained_max"] == FIG6_LIMITS[0.25] - 1 and m["complete"].all()
    assert c["supported"] is True and c["explained_by"] is None and c["seeds"] == 3
    assert pd.isna(m.loc[("scratch", 0.25), "trained_max"]) and pd.isna(m.loc[("backbone", 0.0), "trained_max"])
    _fig6_store(tmp_path, lambda arm, pr, I: arm == "pruned" and pr < 0.375 and I < FIG6_LIMITS[pr])
    assert fig6_runs.claim(tmp_path)["supported"] is None  # PR 0.375's maximum lies below its window


def test_a_run_below_chance_did_not_learn(tmp_path):
    from capslib.book.collapse_runs import at_chance

    assert at_chance(0.07) and at_chance(0.12) and at_chance(0.0) and not at_chance(0.125)
    _fig6_store(tmp_path, lambda arm, pr, I: arm == "pruned" and I < FIG6_LIMITS[pr])
    df = pd.read_csv(tmp_path / "fig6_depth" / "cpu.csv")
    df.loc[df["label"].str.contains("PR 0.375: CCM") & (df["test_acc"] < 0.5), "test_acc"] = 0.07  # I = 21, 22
    df.to_csv(tmp_path / "fig6_depth" / "cpu.csv", index=False)
    out = fig6_runs.outcomes(tmp_path)
    assert (out[(out["pr"] == 0.375) & (out["arm"] == "pruned") & (out["I"] >= 21)]["observed"] == "chance").all()
    m = fig6_runs.maxima(out).set_index(["arm", "pr"])
    assert m.loc[("pruned", 0.375), "trained_max"] == 20


def test_fig6_growth_is_explained_by_the_backbone_or_by_c_prime_when_they_go_as_deep(tmp_path):
    pruned = lambda arm, pr, I: arm == "pruned" and I <= FIG6_LIMITS[pr]  # noqa: E731
    _fig6_store(tmp_path, lambda arm, pr, I: pruned(arm, pr, I) or (arm == "backbone" and I <= FIG6_LIMITS[0.0] + 1))
    c = fig6_runs.claim(tmp_path)
    assert FIG6_LIMITS[0.0] + 1 < FIG6_LIMITS[0.125]  # the backbone arm's window lies below PR 0.125's
    assert c["supported"] is True and c["explained_by"] is None
    _fig6_store(tmp_path, lambda arm, pr, I: pruned(arm, pr, I) or (arm == "scratch" and I <= FIG6_LIMITS[pr]))
    c = fig6_runs.claim(tmp_path)
    assert c["supported"] is True and c["explained_by"].startswith("fewer capsule types")
    below = lambda arm, pr, I: arm == "pruned" and I < FIG6_LIMITS[pr]  # noqa: E731  PR 0.125 trains to 10
    _fig6_store(tmp_path, lambda arm, pr, I: below(arm, pr, I) or arm == "backbone")  # the backbone to 10 too
    c = fig6_runs.claim(tmp_path)
    assert c["supported"] is True and c["explained_by"].startswith("the trained backbone")


def test_table1_trend_grid_is_plannable_at_every_pr():
    from capslib.experiments.sweeps import check_plan, plan

    check_plan("table1_pr", plan("table1_pr", "cpu", 1))
    assert TABLE1_TREND["prs"] == (0.125, 0.25, 0.5, 0.75)


def test_fig6_prediction_per_run_reads_the_screen():
    s = pd.DataFrame(dict(arm=["pruned"] * 3 + ["scratch"], pr=[0.25] * 4, seed=[0] * 4, I=[10, 11, 12, 8],
                          **{"update_max.all": [0.06, 2e-7, 0.0, 1e-3]}))
    assert fig6_runs.predicted(s, "pruned", 0.25, 0, 10) == "trains"
    assert fig6_runs.predicted(s, "pruned", 0.25, 0, 11) == "chance"
    assert fig6_runs.predicted(s, "pruned", 0.25, 0, 14) == "chance"  # beyond the screen, past the limit
    assert fig6_runs.predicted(s, "scratch", 0.25, 0, 9) == ""  # unscreened and no limit seen
    assert fig6_runs.predicted(s, "pruned", 0.25, 1, 10) == ""  # another seed


def test_fig6_screened_nets_are_the_trained_ones():
    """The screen rebuilt each net from base and CCM stages of its own: every training pipeline's base and CCM test
    accuracy equals the one the screen reproduced for its seed, and every screened arm is a grid arm."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "results" / "fig6_depth"
    screen = pd.read_csv(root / "screen_cpu.csv")
    runs = pd.read_csv(root / "cpu.csv")
    for stage in ("base", "ccm"):
        want = screen.groupby("seed")[f"{stage}_test_acc"].agg(["min", "max"])
        assert (want["min"] == want["max"]).all()  # one base and one CCM model per seed
        got = runs[runs["stage"] == stage]
        assert len(got) and all(a == want.loc[s, "min"] for s, a in zip(got["seed"], got["test_acc"]))
    arms = {(fig6_runs._arm(p.label), p.pr if p.kind == "prune" else fig6_runs._scratch_pr(p.label))
            for p in get_experiment("fig6_depth").grid("cpu")}
    assert set(map(tuple, fig6_runs.screen()[["arm", "pr"]].to_numpy())) - {("scratch", 0.0)} <= arms
    assert sorted(FIG6_LIMITS) == [0.0, 0.125, 0.25, 0.375]
    med = fig6_runs.screen().groupby(["arm", "pr"])["limit"].median()
    for pr, L in FIG6_LIMITS.items():  # the grid sits at the screen's median limit per PR
        assert med[("backbone" if pr == 0 else "pruned", pr)] == L


def test_table1_committed_predictions_are_scored_once_every_cell_has_five_seeds(tmp_path):
    _table1_store(tmp_path, _cells(**{**BASE, "0.75": 78.0}))  # the fall: 0.75 − pipeline = −2.2, every seed
    scored = table1_runs.scored_predictions(table1_runs.claim(tmp_path)).set_index("comparison")
    assert scored["held"].tolist() == [True, True, True, True]
    _table1_store(tmp_path, _cells(**{**BASE, "0.125": 81.2}))
    scored = table1_runs.scored_predictions(table1_runs.claim(tmp_path))
    assert scored["held"].tolist() == [False, True, True, True]  # a rise beyond the pipeline's PR 0


def test_fig6_screen_predictions_are_scored_per_seed():
    rows = []
    for arm, pr, lims in (("pruned", 0.125, (9, 9, 9)), ("scratch", 0.125, (8, 8, 8)), ("pruned", 0.25, (10, 10, 11)),
                          ("scratch", 0.25, (9, 9, 10)), ("pruned", 0.375, (13, 13, 13)),
                          ("scratch", 0.375, (12, 12, 12)), ("backbone", 0.0, (8, 9, 10))):
        rows += [dict(arm=arm, pr=pr, seed=s, limit=L) for s, L in enumerate(lims)]
    got = [ok for _, ok in fig6_runs.screen_predictions(pd.DataFrame(rows))]
    assert got == [True, True, True]
    rows[-1]["limit"] = 11  # the backbone two layers beyond PR 0.125's rebuilt net in seed 2
    assert [ok for _, ok in fig6_runs.screen_predictions(pd.DataFrame(rows))] == [True, True, False]
