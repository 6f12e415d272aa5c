"""Chapter parameters: capslib.book.params.check_parameters / chapter_config, and a real papermill run.

A chapter must stop at once, before any data is loaded or any model trained,
when papermill passes an unknown parameter name (``-p FOO 1`` becomes a global)
or a value out of range (``-p D 0``), with a message listing the valid
parameters and their ranges.
"""
from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import nbformat
import pytest

from capslib.book import params, runner, tables
from capslib.engine.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS = ["routing", "ccm"]


def defaults(chapter: str) -> dict:
    """A namespace holding the chapter's default parameters, like the parameters cell leaves it."""
    return {name: p.default for name, p in params.CHAPTER_PARAMS[chapter].items()}


# ------------------------------------------------------------------ unknown names
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_defaults_pass(chapter):
    ns = defaults(chapter)
    values = params.check_parameters(ns, chapter)
    assert set(values) == set(params.CHAPTER_PARAMS[chapter])


def test_unknown_name_is_refused_with_the_valid_list():
    ns = {**defaults("routing"), "FOO": 1}
    with pytest.raises(params.ParameterError) as err:
        params.check_parameters(ns, "routing")
    msg = str(err.value)
    assert "unknown parameter FOO = 1" in msg
    assert "Valid parameters" in msg
    for name in params.CHAPTER_PARAMS["routing"]:
        assert f"  {name} " in msg, name
    assert "int >= 1, or None" in msg  # C's range
    assert "one of 'smoke', 'fmnist', 'paper'" in msg


def test_unknown_name_suggests_the_close_one():
    ns = {**defaults("routing"), "d": 8}
    with pytest.raises(ValueError, match=r"unknown parameter d = 8 \(did you mean D\?\)"):
        params.check_parameters(ns, "routing")


def test_parameter_error_is_a_value_error():
    assert issubclass(params.ParameterError, ValueError)


def test_modules_functions_and_private_names_are_not_parameters():
    import math

    ns = {**defaults("ccm"), "runner": runner, "math": math, "f": len, "_x": 1, "In": [], "Out": {},
          "get_ipython": object, "exit": object(), "cfg": object()}
    params.check_parameters(ns, "ccm")


def test_history_marks_only_the_parameter_cells():
    """In a kernel, names assigned by the cells before the check are the parameters."""
    cell = "\n".join(f"{k} = {v!r}" for k, v in defaults("ccm").items())
    check = 'from capslib.book import params\nparams.check_parameters(globals(), "ccm")'
    # papermill: parameters cell, injected cell with an unknown name, then the check
    ns = {**defaults("ccm"), "FOO": 1, "In": ["", cell, "# Parameters\nFOO = 1\n", check]}
    with pytest.raises(params.ParameterError, match="unknown parameter FOO"):
        params.check_parameters(ns, "ccm")
    # a live session that re-runs the check after later cells defined plain variables
    ns = {**defaults("ccm"), "alpha": 0.1, "rows": {}, "In": ["", cell, check, "alpha = 0.1\nrows = {}", check]}
    params.check_parameters(ns, "ccm")


def test_missing_parameter_is_reported():
    ns = defaults("routing")
    del ns["SEED"]
    with pytest.raises(params.ParameterError, match="parameter SEED is not set"):
        params.check_parameters(ns, "routing")


def test_unknown_chapter_spec():
    with pytest.raises(params.ParameterError, match="no parameter spec"):
        params.check_parameters({}, "nochapter")


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize("chapter,name,value", [
    ("routing", "D", 0),
    ("routing", "C", -3),
    ("routing", "C", 2.5),
    ("routing", "C", True),
    ("routing", "C", "8"),
    ("routing", "I", -1),
    ("routing", "EPOCHS", 0),
    ("routing", "SEED", -1),
    ("routing", "PROFILE", "huge"),
    ("routing", "PROFILE", None),
    ("routing", "DATASET", "imagenet"),
    ("routing", "R", 0),
    ("routing", "R_VALUES", []),
    ("routing", "R_VALUES", [1, 0]),
    ("routing", "R_VALUES", [1, 1]),
    ("routing", "R_VALUES", "a,b"),
    ("routing", "ROUTINGS", []),
    ("routing", "ROUTINGS", ["em", "em"]),
    ("routing", "ROUTINGS", ["capsule-em"]),
    ("routing", "ROUTINGS", [1, 2]),
    ("routing", "ROUTINGS", ""),
    ("routing", "STUDY_DEPTHS", [0, 1]),
    ("routing", "STUDY_DEPTHS", [11]),
    ("routing", "BATCH", 0),
    ("ccm", "ALPHA", 0.0),
    ("ccm", "ALPHA", -0.1),
    ("ccm", "ALPHA", float("nan")),
    ("ccm", "ALPHAS", [-0.01]),
    ("chip", "PR", 1.5),
    ("chip", "PR", 1.0),
    ("chip", "PR", -0.1),
])
def test_bad_values_are_refused(chapter, name, value):
    ns = {**defaults(chapter), name: value}
    with pytest.raises(params.ParameterError) as err:
        params.check_parameters(ns, chapter)
    msg = str(err.value)
    assert f"bad value {name} = {value!r}: must be" in msg
    assert "Valid parameters" in msg


def test_all_problems_are_listed_at_once():
    ns = {**defaults("chip"), "D": 0, "PR": 1.5, "FOO": 1}
    with pytest.raises(params.ParameterError) as err:
        params.check_parameters(ns, "chip")
    msg = str(err.value)
    assert "FOO" in msg and "bad value D = 0" in msg and "bad value PR = 1.5" in msg
    assert re.search(r"PR +number >= 0 and < 1", msg)


# ------------------------------------------------------------------ good values
@pytest.mark.parametrize("chapter,changes,expect", [
    ("routing", {"C": 20, "D": 8, "I": 3, "EPOCHS": 2, "SEED": 7}, {"C": 20, "D": 8, "I": 3}),
    ("routing", {"PROFILE": "paper"}, {"PROFILE": "paper"}),
    ("routing", {"PROFILE": "Smoke"}, {"PROFILE": "smoke"}),
    ("routing", {"DATASET": "FashionMNIST"}, {"DATASET": "fashion-mnist"}),
    ("routing", {"DATASET": "cifar-10"}, {"DATASET": "cifar10"}),
    ("routing", {"DATASET": "mnist"}, {"DATASET": "mnist"}),
    ("routing", {"R_VALUES": "1,2"}, {"R_VALUES": [1, 2]}),
    ("routing", {"R_VALUES": (3,)}, {"R_VALUES": [3]}),
    ("routing", {"ROUTINGS": "EM, vb"}, {"ROUTINGS": ["em", "vb"]}),
    ("routing", {"ROUTINGS": "['self', 'dynamic']"}, {"ROUTINGS": ["self", "dynamic"]}),
    ("routing", {"ROUTINGS": ("vb",)}, {"ROUTINGS": ["vb"]}),
    ("routing", {"STUDY_DEPTHS": "1,10"}, {"STUDY_DEPTHS": [1, 10]}),
    ("routing", {"C": 4.0}, {"C": 4}),
    ("ccm", {"ALPHA": 1}, {"ALPHA": 1.0}),
    ("ccm", {"ALPHAS": "[0, 0.5]"}, {"ALPHAS": [0.0, 0.5]}),
    ("chip", {"PR": 0.375}, {"PR": 0.375}),
    ("chip", {"PR": 0}, {"PR": 0.0}),
])
def test_good_values_pass_and_are_normalised(chapter, changes, expect):
    ns = {**defaults(chapter), **changes}
    values = params.check_parameters(ns, chapter)
    for k, v in expect.items():
        assert values[k] == v and ns[k] == v, k


def test_custom_spec_dict():
    spec = {"PROFILE": params.COMMON_PARAMS["PROFILE"], "K": params.Param("int", 3, "kernel", low=1, high=7)}
    assert params.check_parameters({"PROFILE": "smoke", "K": 5}, spec) == {"PROFILE": "smoke", "K": 5}
    with pytest.raises(params.ParameterError, match=r"K = 9: must be int >= 1 and <= 7"):
        params.check_parameters({"PROFILE": "smoke", "K": 9}, spec)


# ------------------------------------------------------------------ chapter configs
def test_chapter_config_smoke_is_small():
    cfg = runner.chapter_config("smoke", chapter="routing")
    m, d, t = cfg.model, cfg.data, cfg.train
    assert (m.C, m.D, m.I) == (4, 4, 1)
    assert (t.epochs, d.train_size, d.dataset, cfg.profile, t.device) == (1, 2000, "fashion-mnist", "smoke", "cpu")
    ccm = runner.chapter_config("smoke", chapter="ccm")
    assert (ccm.model.C, ccm.model.D, ccm.model.I) == (8, 4, 0)
    assert ccm.train.alpha == 0.0  # α is set per run, not by the chapter scale
    assert runner.ccm_alpha("smoke") == 0.1 and runner.ccm_alpha("paper") == 0.01 and runner.ccm_alpha("smoke", 0.5) == 0.5


def test_chapter_config_parameters_override_the_scale():
    cfg = runner.chapter_config("smoke", "mnist", 3, 6, 8, 2, 2, chapter="routing", routing_iters=2)
    assert (cfg.model.C, cfg.model.D, cfg.model.I, cfg.model.routing_iters) == (6, 8, 2, 2)
    assert (cfg.data.dataset, cfg.train.seed, cfg.train.epochs) == ("mnist", 3, 2)


def test_chapter_config_paper_uses_the_paper_sizes():
    cfg = runner.chapter_config("paper", chapter="routing")
    assert (cfg.model.C, cfg.model.D, cfg.data.dataset, cfg.profile) == (20, 8, "cifar10", "paper")
    assert cfg.data.train_size is None
    assert runner.chapter_config("fmnist", chapter="ccm").model.I == 0


def test_chapter_config_refuses_bad_values():
    with pytest.raises(ConfigError):
        runner.chapter_config("huge")
    with pytest.raises(ConfigError, match="D must be a positive integer"):
        runner.chapter_config("smoke", D=0, chapter="routing")


# ------------------------------------------------------------------ the committed chapters
def _parameters_cell(notebook: nbformat.NotebookNode) -> tuple[int, str]:
    for i, cell in enumerate(notebook.cells):
        if "parameters" in cell.metadata.get("tags", []):
            return i, cell.source
    raise AssertionError("no parameters cell")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_parameters_cell_matches_the_spec(chapter):
    """The parameters cell sets exactly the spec's names, to the spec's defaults; the check comes next."""
    notebook = nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", as_version=4)
    i, source = _parameters_cell(notebook)
    ns: dict = {}
    exec(compile(ast.parse(source), "parameters", "exec"), ns)
    ns.pop("__builtins__")
    assert ns == defaults(chapter)
    following = [c for c in notebook.cells[i + 1:] if c.cell_type == "code"][0]
    assert f'params.check_parameters(globals(), "{chapter}")' in following.source


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_committed_chapter_is_small_and_marked(chapter):
    """Under 2 MB; every code cell with outputs says whether nbval checks or ignores them; at least three
    cells are checked, exactly (``# NBVAL_CHECK_OUTPUT``) or within a measured tolerance (``# CHECK_NUMBERS``,
    tests/nbval_numbers.py)."""
    path = NOTEBOOKS / f"{chapter}.ipynb"
    assert path.stat().st_size < 2_000_000
    notebook = nbformat.read(path, as_version=4)
    checked = 0
    for cell in notebook.cells:
        if cell.cell_type != "code" or not cell.outputs:
            continue
        lines = cell.source.splitlines()
        assert lines[0] in ("# NBVAL_CHECK_OUTPUT", "# NBVAL_IGNORE_OUTPUT"), cell.source[:80]
        checked += lines[0] == "# NBVAL_CHECK_OUTPUT" or (len(lines) > 1 and lines[1].startswith("# CHECK_NUMBERS "))
        assert not any(o.output_type == "error" for o in cell.outputs)
    assert checked >= 3


# ------------------------------------------------------------------ papermill
@pytest.fixture(scope="module")
def kernel():
    from capslib.book.build import ensure_kernel

    ensure_kernel()
    return "python3"


@pytest.mark.parametrize("chapter,parameters,expected", [
    ("routing", {"FOO": 1}, "unknown parameter FOO = 1"),
    ("routing", {"D": 0}, "bad value D = 0: must be int >= 1, or None"),
    ("ccm", {"PROFILE": "huge"}, "bad value PROFILE = 'huge'"),
])
def test_papermill_bad_parameter_fails_fast(chapter, parameters, expected, kernel, tmp_path, monkeypatch):
    """A real papermill run stops in the check cell within seconds, trains nothing, and says why."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    results = tmp_path / "results"
    monkeypatch.setenv("CAPSLIB_RESULTS", str(results))  # the kernel inherits the environment
    monkeypatch.setenv("CAPSLIB_CACHE", str(tmp_path / "models"))
    out = tmp_path / f"{chapter}.ipynb"
    start = time.perf_counter()
    with pytest.raises(PapermillExecutionError) as err:
        pm.execute_notebook(str(NOTEBOOKS / f"{chapter}.ipynb"), str(out), parameters=parameters,
                            kernel_name=kernel, language="python", cwd=str(NOTEBOOKS),
                            progress_bar=False, log_output=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"took {elapsed:.0f} s: the check must run before any training"
    assert err.value.ename == "ParameterError"
    assert expected in err.value.evalue
    assert "Valid parameters" in err.value.evalue
    executed = nbformat.read(out, as_version=4)
    params_at, _ = _parameters_cell(executed)
    assert err.value.cell_index == params_at + 2  # parameters, injected parameters, the check
    assert not results.exists(), "a run was stored: training started before the check"


# ------------------------------------------------------------------ one source of truth for the smoke sizes
_SIZES = re.compile(r"(all|[\d,]+) training, ([\d,]+) validation and (all|[\d,]+) test images")


def _text(path: Path) -> str:
    """A document's prose with whitespace collapsed (a quote may wrap): markdown, or a notebook's markdown cells."""
    if path.suffix == ".ipynb":
        nbk = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nbk.cells if c.cell_type == "markdown")
    else:
        text = path.read_text(encoding="utf8")
    return re.sub(r"\s+", " ", text)


def test_smoke_sizes_are_read_from_the_configs_the_runs_use():
    from capslib.engine.config import PROFILES

    sizes = runner.smoke_sizes()
    d = PROFILES["smoke"]().data
    assert sizes["profile"] == (d.train_size, d.val_size, d.test_size)
    book = runner.BOOK_SMOKE_DATA
    assert sizes["routing, ccm"] == tuple(book["chapters"][k] for k in ("train_size", "val_size", "test_size"))
    assert sizes["chip, depth, kernels"] == tuple(book["tables"][k] for k in ("train_size", "val_size", "test_size"))
    for chapter in ("chip", "depth", "kernels"):
        cfg = runner.chapter_cfg("smoke", chapter=chapter).data
        assert (cfg.train_size, cfg.val_size, cfg.test_size) == sizes["chip, depth, kernels"], chapter
    for table in ("table1", "table2", "table3", "table4", "table5", "fig3"):  # the sweeps the chapters run
        for _, cfg, _ in tables.sweep_points(table, "smoke"):
            assert (cfg.data.train_size, cfg.data.val_size, cfg.data.test_size) == sizes["chip, depth, kernels"]
    assert runner.chapter_config("smoke", chapter="ccm").data.train_size == sizes["routing, ccm"][0]
    assert runner.sizes_phrase(2000, 500, 1000) == "2,000 training, 500 validation and 1,000 test images"


@pytest.mark.parametrize("document,runs", [
    ("README.md", {"profile", "routing, ccm", "chip, depth, kernels"}),
    ("book/intro.md", {"profile", "routing, ccm", "chip, depth, kernels"}),
    ("book/reproduction.md", {"chip, depth, kernels"}),
    ("notebooks/routing.ipynb", {"routing, ccm", "routing depth study"}),
    ("notebooks/ccm.ipynb", {"routing, ccm"}),
    ("notebooks/chip.ipynb", {"chip, depth, kernels"}),
    ("notebooks/depth.ipynb", {"chip, depth, kernels"}),
    ("notebooks/kernels.ipynb", {"chip, depth, kernels"}),
])
def test_quoted_smoke_sizes_match_the_source(document, runs):
    """Every "N training, M validation and K test images" the README and the book quote is the size of a
    run they describe (capslib.book.runner.smoke_sizes), and each of those runs is quoted."""
    sizes = runner.smoke_sizes()
    quoted = {m.group(0) for m in _SIZES.finditer(_text(ROOT / document))}
    expected = {runner.sizes_phrase(*sizes[r]) for r in runs}
    assert quoted == expected, f"{document}: quotes {sorted(quoted)}, the runs it describes use {sorted(expected)}"
    assert "2,000 training images)" not in _text(ROOT / document)  # the intro's old, partial quote
