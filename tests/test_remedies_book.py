"""capslib.book.remedies_runs and the deep chapter: length maps, predictions against runs, the figures, the cost
table and the verdict on CapsNet[20, 8, 30], on small stores written to ``tmp_path`` (no training)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from matplotlib.figure import Figure

from capslib.book import params, remedies_runs as rr
from capslib.book.chapters import collapse as collapse_ch
from capslib.book.chapters import verdicts as verdicts_ch

ROOT = Path(__file__).resolve().parent.parent
LENGTH_MAP_30 = "H: remedy at I=30, C20 I=30"


def _lengths(I: int, first: float, step: float, cls: float, cls_max: float) -> str:
    layers = {"primary": first, **{f"inter{i}": max(first * step ** i, 0.0) for i in range(1, I + 1)}}
    return json.dumps({**layers, "class": cls, "class_max": cls_max})


def _screen(label: str, I: int, seed: int, batch: int = 0, dtype: str = "float32", **kw) -> dict:
    return {"label": label, "I": I, "seed": seed, "batch": batch, "dtype": dtype, "config_hash": f"s{I}{seed}",
            "profile": "cpu", "data.dataset": "fashion-mnist", "device": "cpu", "device_name": "TestCPU",
            "capslib_version": "0.1.0+test", "lengths": _lengths(I, **kw)}


def _write(root: Path, experiment: str, name: str, rows: list[dict]) -> None:
    (root / experiment).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / experiment / name, index=False)


def _run(label: str, seed: int, acc: float, kind: str = "train", stage: str = "train") -> dict:
    return {"run_key": re.sub(r"\W", "", f"{label}{seed}{stage}"), "status": "ok", "kind": kind, "stage": stage,
            "label": label, "seed": seed, "test_acc": acc, "epochs_run": 1,
            "config_hash": re.sub(r"\W", "", label)[:12],
            "profile": "cpu", "data.dataset": "fashion-mnist", "device": "cpu", "device_name": "TestCPU",
            "capslib_version": "0.1.0+test", "timestamp": "2026-12-04T00:00:00+0000"}


def _seeds(label: str, accs, **kw) -> list[dict]:
    return [_run(label, s, a, **kw) for s, a in enumerate(accs)]


@pytest.fixture
def screens(tmp_path):
    rows = [_screen("squash bias 0.1, C20 I=11", 11, s, first=0.5, step=0.8, cls=0.3, cls_max=0.35 + s / 100)
            for s in range(3)]
    rows += [_screen("squash bias 0.1, C20 I=11", 11, 0, batch=1, first=9.0, step=1.0, cls=9.0, cls_max=9.0)]
    rows += [_screen("residual ConvCaps, C20 I=11", 11, s, first=0.5, step=1.2, cls=1.0, cls_max=1.0) for s in range(3)]
    _write(tmp_path, "remedies", "screen_cpu.csv", rows)
    _write(tmp_path, "remedies_deep", "screen_cpu.csv",
           [_screen("squash bias 0.1, C20 I=30", 30, s, first=0.5, step=0.9, cls=0.3, cls_max=0.4) for s in range(2)])
    base = [_screen("C20 I=8 (L+1)", 8, s, first=0.5, step=0.01, cls=0.0, cls_max=0.0) for s in range(3)]
    base += [_screen("C20 I=8 (L+1)", 8, 0, dtype="float64", first=0.5, step=0.1, cls=1e-30, cls_max=1e-29)]
    base += [_screen(LENGTH_MAP_30, 30, s, first=0.5, step=0.99, cls=0.27, cls_max=0.78) for s in range(3)]
    _write(tmp_path, "collapse", "screen_cpu.csv", base)
    return tmp_path


# ------------------------------------------------------------------ the points and the length maps
def test_points_come_from_the_grids():
    pts = {p.label: p for p in rr.deep_points("cpu")}
    assert pts["squash bias 0.1, C20 I=11"].I == 11 and pts["squash bias 0.1, C20 I=30"].experiment == "remedies_deep"
    assert pts["CCM+CHIP PR 0.375 (C'=12) I=11"].kind == "prune" and pts["C'=12 from scratch I=11"].kind == "narrow"
    assert pts[LENGTH_MAP_30].remedy == rr.LENGTH_MAP and pts[LENGTH_MAP_30].experiment == "collapse_h"
    assert pts["remedy: C20 I=11 std 0.6, class std 0.1"].kind == "init"
    assert {(p.I, p.role) for p in pts.values() if p.kind == "baseline"} == {(6, "control"), (7, "test"), (8, "test")}
    assert set(rr.PREDICTIONS) <= set(pts), "every prediction names a point of the grids"


def test_length_maps_take_the_median_of_batch_0_float32(screens):
    maps = rr.length_maps(screens)
    assert set(maps["label"]) == {"squash bias 0.1, C20 I=11", "residual ConvCaps, C20 I=11",
                                  "squash bias 0.1, C20 I=30", "C20 I=8 (L+1)", LENGTH_MAP_30}
    bias = maps[maps["label"] == "squash bias 0.1, C20 I=11"].set_index("layer")
    assert bias.loc["primary", "length"] == 0.5 and bias.loc["class", "index"] == 12  # batch 1 (9.0) left out
    assert list(bias["index"]) == list(range(13)) and bias["seeds"].iloc[0] == 3
    assert bias["class_max"].iloc[0] == pytest.approx(0.36)  # the median over seeds
    base = maps[maps["label"] == "C20 I=8 (L+1)"].set_index("layer")
    assert base.loc["class", "length"] == 0.0 and base["seeds"].iloc[0] == 3  # the float64 row is not read
    assert base["kind"].iloc[0] == "baseline" and base["source"].iloc[0] == "results/collapse/screen_cpu.csv"
    text = rr.length_map_text(maps)
    assert "all at the ceiling: saturated" in text and "exactly 0: dead" in text
    foot = rr.screens_footer(screens)
    assert "TestCPU" in foot and "no training" in foot and "results/remedies_deep/screen_cpu.csv" in foot
    assert rr.length_maps(screens / "nothing").empty
    assert "no initialisation screen" in rr.screens_footer(screens / "nothing")


def test_length_map_figure_draws_one_line_per_remedy_and_zeros_on_the_floor(screens):
    maps = rr.length_maps(screens)
    fig = rr.length_map_figure(maps, 11)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["squash bias 0.1", "residual ConvCaps", f"{rr.BASELINE}, I = 8"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "exactly 0 (on the floor)" in legend
    deep = rr.length_map_figure(maps, 30)
    names = [t.get_text() for t in deep.axes[0].get_legend().get_texts()]
    assert "squash bias 0.1" in names and rr.LENGTH_MAP in names and "residual ConvCaps" not in names
    assert deep.axes[0].get_ylim() == ax.get_ylim(), "every panel has the same axes"
    explorer = rr.length_map_explorer(maps)
    assert repr(explorer) == "slider_panels(I: 11, 30)"
    assert rr.length_map_explorer(maps.iloc[0:0]) is None


# ------------------------------------------------------------------ predictions against runs
def _runs(root: Path) -> None:
    _write(root, "remedies", "cpu.csv",
           _seeds("squash bias 0.1, C20 I=11", [0.70, 0.66, 0.72])            # predicted trains: matched
           + _seeds("residual ConvCaps, C20 I=11", [0.099, 0.55, 0.099])      # predicted chance: missed, refutes
           + _seeds("C'=12 from scratch I=11", [0.40, 0.45])                 # two seeds so far
           + _seeds("CCM+CHIP PR 0.375 (C'=12) I=11", [0.3, 0.3, 0.3], kind="prune", stage="base")
           + _seeds("CCM+CHIP PR 0.375 (C'=12) I=11", [0.5, 0.52, 0.48], kind="prune", stage="retrain"))


def test_predictions_are_matched_missed_or_not_run_yet(tmp_path):
    _runs(tmp_path)
    t = rr.predicted_vs_trained(tmp_path).set_index("label")
    assert t.loc["squash bias 0.1, C20 I=11", "status"] == "matched"
    assert t.loc["squash bias 0.1, C20 I=11", "as_predicted"] is True
    assert t.loc["residual ConvCaps, C20 I=11", "status"] == "missed"
    assert t.loc["residual ConvCaps, C20 I=11", "observed"] == "mixed (chance, trains, chance)"
    assert bool(t.loc["residual ConvCaps, C20 I=11", "refutes"])
    assert t.loc["Efficient-CapsNet squash, C20 I=11", "status"] == "not run yet"
    assert t.loc["C'=12 from scratch I=11", "status"] == "running (2 of 3 seeds)"
    assert t.loc["CCM+CHIP PR 0.375 (C'=12) I=11", "accs"] == "50.0, 52.0, 48.0"  # the retrain stage, not base
    assert t.loc["CCM+CHIP PR 0.375 (C'=12) I=11", "status"] == "matched"
    assert t.loc[LENGTH_MAP_30, "prediction"].startswith("trains (above 50 %")  # hypothesis H's committed arm
    assert t.loc["remedy: C20 I=11 std 0.6, class std 0.1", "status"] == "no prediction"
    assert not t.index.str.startswith("C20 I=").any(), "the unremedied baseline has no prediction row"
    text = rr.predictions_text(t.reset_index())
    assert "2 matched, 1 missed, 1 running" in text and "Missed: *residual ConvCaps*, I = 11" in text
    assert "Refuting the map" in text and "*residual ConvCaps*, I = 11" in text
    view = rr.predictions_view(t.reset_index())
    assert view.loc["Efficient-CapsNet squash, I = 11", "test acc (%) per seed"] == "—"
    assert "TestCPU" in rr.runs_footer(rr.deep_rows(tmp_path), "cpu")
    assert "a run in progress" in rr.runs_footer(rr.deep_rows(tmp_path / "none"), "cpu")


def test_predictions_match_the_committed_file():
    """Every prediction of PREDICTIONS is a row of results/remedies/predictions.md's table for its depth, with the
    same outcome (and threshold), and every row of those tables is in PREDICTIONS."""
    text = (ROOT / rr.PREDICTIONS_FILE).read_text(encoding="utf8")
    sections = dict(re.findall(r"^## Predictions at I = (\d+)[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    tables = {int(I): [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()
                       if line.startswith("|") and not line.startswith("|---") and not line.startswith("| point")]
              for I, body in sections.items()}
    assert set(tables) >= {11, 30}
    for label, p in rr.PREDICTIONS.items():
        I = int(re.search(r"I=(\d+)$", label).group(1))
        row = next((r for r in tables[I] if r[0] == p.point), None)
        assert row is not None, f"{p.point!r} has no row at I = {I} in {rr.PREDICTIONS_FILE}"
        assert f"**{p.outcome}**" in " | ".join(row), (label, row)
        if p.outcome == "trains":
            assert f"above {p.above:g} %" in " | ".join(row), (label, row)
    listed = {(re.search(r"I=(\d+)$", k).group(1), p.point) for k, p in rr.PREDICTIONS.items()}
    for I, rows in tables.items():
        for r in rows:
            assert (str(I), r[0]) in listed, f"predictions.md predicts {r[0]!r} at I = {I}: add it to PREDICTIONS"


def test_accuracy_figure_names_the_runs_in_progress(tmp_path):
    _runs(tmp_path)
    _write(tmp_path, "collapse", "cpu.csv", _seeds("C20 I=7 (L)", [0.099] * 3) + _seeds("C20 I=6 (L-1)", [0.7] * 3))
    out = rr.depth_outcomes(tmp_path)
    fig = rr.accuracy_vs_depth_figure(out)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "squash bias 0.1 (n = 3)" in legend and f"{rr.BASELINE} (n = 3)" in legend
    assert "Efficient-CapsNet squash: runs in progress" in legend
    assert "  squash bias 0.1 at I = 30: runs in progress" in legend
    assert f"{rr.LENGTH_MAP}: runs in progress" in legend
    assert "CCM+CHIP PR 0.375 (C'=12), I = 11 (n = 3)" in legend and "chance (10 %)" in legend
    assert "7 points: runs in progress" in ax.get_title().replace("\n", " ")
    empty = rr.accuracy_vs_depth_figure(rr.depth_outcomes(tmp_path / "none"))
    assert any("no row yet" in t.get_text() for t in empty.axes[0].texts)


# ------------------------------------------------------------------ the verdict on CapsNet[20, 8, 30]
@pytest.mark.parametrize("length_map, squash_bias, expected", [
    ([0.65, 0.62, 0.70], None, "reproduced"),                  # the length-map init: every seed above 60 %
    ([0.65, 0.55, 0.70], [0.099] * 3, "not reproduced"),       # one seed below, the squash bias at chance
    ([0.65, 0.62, 0.70], [0.099] * 3, "reproduced"),           # one remedy is enough
    (None, None, "inconclusive"),                              # no I = 30 row at all
    ([0.65, 0.55, 0.70], [0.7, 0.7], "inconclusive"),          # the squash bias is still running
])
def test_deep_verdict_follows_the_i30_rows(tmp_path, length_map, squash_bias, expected):
    _write(tmp_path, "collapse", "cpu.csv", _seeds("C20 I=7 (L)", [0.099] * 3))
    if length_map is not None:
        _write(tmp_path, "collapse_h", "cpu.csv", _seeds(LENGTH_MAP_30, length_map))
    if squash_bias is not None:
        _write(tmp_path, "remedies_deep", "cpu.csv", _seeds("squash bias 0.1, C20 I=30", squash_bias))
    d = rr.deep_claim(tmp_path)
    assert d["I"] == 30 and d["control_seeds"] == 3 and d["control_at_chance"] == 3
    v = verdicts_ch.verdicts("cpu", tmp_path, limits=collapse_ch.depth_limit_table(pd.DataFrame()))
    deep = next(x for x in v if x.claim.startswith("(This companion's) CapsNet[20, 8, 30]"))
    assert v[-1] is deep and deep.verdict == expected, deep.evidence
    assert deep.decided_in[0] == "deep" and "issue" not in deep.source
    if expected == "reproduced":
        assert d["trains"][0] == rr.LENGTH_MAP and deep.seeds == 3
        assert dict(deep.breakdown)["Remedies that train it"] == rr.LENGTH_MAP
    if squash_bias == [0.099] * 3:
        assert "squash bias 0.1" in d["fails"] and "Efficient-CapsNet squash" in d["not run yet"]
    assert "C20 I=7 (L)" in deep.evidence and "not run yet" in deep.evidence
    assert "*Efficient-CapsNet squash*" in rr.deep_claim_text(d)


def test_deep_verdict_without_the_control_is_inconclusive(tmp_path):
    _write(tmp_path, "collapse_h", "cpu.csv", _seeds(LENGTH_MAP_30, [0.65, 0.62, 0.70]))
    v = verdicts_ch.verdicts("cpu", tmp_path, limits=collapse_ch.depth_limit_table(pd.DataFrame()))
    assert v[-1].verdict == "inconclusive" and "no row yet" in v[-1].evidence


# ------------------------------------------------------------------ cost, parameters, the chapter
def test_benchmark_quick_mode_writes_the_cost_table(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_remedies", ROOT / "benchmarks" / "bench_remedies.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "remedies" / "bench_cpu.csv"
    assert bench.main(["--quick", "--out", str(out), "--note", "a test"]) == 0
    rows = rr.load_bench(tmp_path)
    assert list(rows["config"]) == [rr.BASELINE, rr.LENGTH_MAP, "squash bias 0.1", "Efficient-CapsNet squash",
                                    "residual ConvCaps"]
    assert rows.loc[0, "ratio"] == 1.0 and (rows["ms_per_img"] > 0).all() and rows["I"].eq(2).all()
    table = rr.cost_table(rows)
    assert table.index.name == "CapsNet[20, 8, 11]" and table.loc[rr.BASELINE, "× no remedy"] == "1.00"
    foot = rr.cost_footer(rows)
    assert "time.process_time" in foot and "a test" in foot and "torch" in foot
    assert rr.cost_table(rr.load_bench(tmp_path / "none")).empty


def test_committed_benchmark_compares_every_remedy_to_no_remedy():
    rows = rr.load_bench()
    assert set(rows["config"]) == {rr.BASELINE, rr.LENGTH_MAP, "squash bias 0.1", "Efficient-CapsNet squash",
                                   "residual ConvCaps"}
    assert rows[["C", "D", "I"]].drop_duplicates().values.tolist() == [[20, 8, 11]]
    assert rows.set_index("config").loc[rr.BASELINE, "ratio"] == 1.0 and rows["cpu"].notna().all()


def test_chapter_parameters_cell_and_check():
    spec = params.CHAPTER_PARAMS["deep"]
    params.check_parameters({n: p.default for n, p in spec.items()}, "deep")
    with pytest.raises(params.ParameterError, match="unknown parameter"):
        params.check_parameters({**{n: p.default for n, p in spec.items()}, "I": 30}, "deep")
    nb = nbformat.read(ROOT / "notebooks" / "deep.ipynb", as_version=4)
    i = next(k for k, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    ns: dict = {}
    exec(compile(ast.parse(nb.cells[i].source), "parameters", "exec"), ns)
    ns.pop("__builtins__")
    assert ns == {n: p.default for n, p in spec.items()}
    following = [c for c in nb.cells[i + 1:] if c.cell_type == "code"][0]
    assert 'params.check_parameters(globals(), "deep")' in following.source
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []) and cell.get("outputs"):
            assert cell.source.splitlines()[0] in ("# NBVAL_CHECK_OUTPUT", "# NBVAL_IGNORE_OUTPUT"), cell.source[:60]
    headings = {line.lstrip("#").strip() for c in nb.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("#")}
    assert "Accuracy against depth" in headings
