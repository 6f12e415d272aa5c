"""Table 5 at the cpu profile: the screen is of the very configs the grid trains, and the committed rule grades the
runs (prediction per run, trained maximum per configuration against the paper)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from capslib.book import table5_runs
from capslib.experiments.grids import TABLE5_LIMITS, get_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_every_grid_point_within_the_screen_has_its_own_config_screened():
    pred = table5_runs.predictions(profile="cpu")
    screen = pd.concat([pd.read_csv(ROOT / "results/table5_limits" / n.format(profile="cpu"),
                                    dtype={"config_hash": str}) for n in table5_runs.SCREENS])
    hashes = set(screen["config_hash"])
    inside = pred[pred["first_step"].notna()]
    assert set(inside["config_hash"]) <= hashes
    # every std-0.5 point of the grid is inside the screen except [10, 8]'s, screened to I = 40 above 20-31
    std05 = pred[(pred["init_std"] == 0.5)]
    assert std05["first_step"].notna().all()
    assert (pred["predicted"] != "").all()
    assert len(pred) == 3 * (len(get_experiment("table5_limits").grid("cpu")) + len(table5_runs.COLLAPSE_DEPTHS))


def test_screen_limits_match_the_grid_constants():
    pred = table5_runs.predictions(profile="cpu")
    for (C, D), (L, _depths) in TABLE5_LIMITS.items():
        limits = pred[(pred["C"] == C) & (pred["D"] == D) & (pred["init_std"] == 0.5)].drop_duplicates("seed")
        got = sorted(v for v in limits["seed_limit"] if pd.notna(v))
        if L is None:
            assert not got
        else:  # the grid's L is the seeds' majority (their median)
            assert got[len(got) // 2] == L


def _fake_runs(root: Path, acc_of) -> None:
    """A store with one ok row per grid point × seed whose test accuracy is ``acc_of(pred_row)``."""
    pred = table5_runs.predictions(root, "cpu")
    grid = pred[~pred["label"].str.contains("collapse study")]
    _store(grid, acc_of).to_csv(root / "table5_limits" / "cpu.csv", index=False)


def _store(pred: pd.DataFrame, acc_of) -> pd.DataFrame:
    return pd.DataFrame([{"run_key": f"{r.config_hash}-{r.seed}", "timestamp": "2026-12-04T00:00:00",
                          "config_hash": r.config_hash, "status": "ok", "kind": "train", "stage": "train",
                          "label": r.label, "seed": r.seed, "model.C": r.C, "model.D": r.D, "model.I": r.I,
                          "model.init_std": r.init_std, "pr": 0.0, "test_acc": acc_of(r), "wall_time": 60.0}
                         for r in pred.itertuples()])


@pytest.fixture
def root(tmp_path):
    (tmp_path / "table5_limits").mkdir()
    for name in table5_runs.SCREENS:
        shutil.copy(ROOT / "results/table5_limits" / name.format(profile="cpu"), tmp_path / "table5_limits")
    return tmp_path


def test_runs_as_predicted_reproduce_the_papers_maxima(root):
    _fake_runs(root, lambda r: 0.099 if r.predicted == "chance" else 0.7)
    out = table5_runs.outcomes(root, "cpu")
    done = out[out["test_acc"].notna()]
    assert done["as_predicted"].all()
    lt = table5_runs.limit_table(out).set_index("CapsNet")
    lt = lt[lt["complete"]]
    agree = lt.apply(table5_runs.agrees_with_paper, axis=1)
    assert agree.all() and set(lt.index) == {"[10, 6]", "[10, 8]", "[16, 6]", "[20, 6]", "[20, 10]"}
    assert lt.loc["[10, 6]", "deepest trained"] == 7 and lt.loc["[10, 6]", "first at chance"] == 8


def test_a_limit_depth_that_trains_breaks_the_agreement(root):
    _fake_runs(root, lambda r: 0.7 if (r.C, r.D, r.I) == (16, 6, 6) or r.predicted == "trains" else 0.099)
    out = table5_runs.outcomes(root, "cpu")
    missed = out[out["as_predicted"].eq(False)]
    assert set(missed["label"]) == {"Table 5 [16, 6]: I=6"}
    lt = table5_runs.limit_table(out).set_index("CapsNet")
    assert table5_runs.agrees_with_paper(lt.loc["[16, 6]"]) is False


def test_the_verdict_page_grades_table5_from_the_runs(root):
    from capslib.book.chapters import verdicts as verdicts_ch

    def table5():
        return verdicts_ch.verdicts("cpu", root)[4]

    assert table5().verdict == "inconclusive"
    _fake_runs(root, lambda r: 0.099 if r.predicted == "chance" else 0.7)
    pred = table5_runs.predictions(root, "cpu")
    c = pred[pred["label"].str.contains("collapse study")]
    (root / "collapse").mkdir()
    _store(c, lambda r: 0.7 if r.I == 6 else 0.099).to_csv(root / "collapse" / "cpu.csv", index=False)
    v = table5()
    assert v.verdict == "reproduced" and v.seeds == 3
    assert "the first-step rule predicted 69 of 69 runs (missed: none)" in v.evidence
    assert "15 of 15 runs at chance" in v.evidence


def test_one_complete_configuration_that_disagrees_decides_the_verdict(root):
    """Not reproduced as soon as a complete configuration's trained maximum differs from the paper's, even while
    another configuration (here [20, 8], whose collapse-study rows are absent) is incomplete."""
    from capslib.book.chapters import verdicts as verdicts_ch

    _fake_runs(root, lambda r: 0.7 if (r.C, r.D, r.I) == (16, 6, 6) or r.predicted == "trains" else 0.099)
    v = verdicts_ch.verdicts("cpu", root)[4]
    assert v.verdict == "not reproduced" and v.seeds == 3
    assert "[16, 6]: screen limit per seed 6, 6, 6, depths run 5, 6, 7, deepest trained in most seeds 6" in v.evidence
