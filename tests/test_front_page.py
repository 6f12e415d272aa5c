"""The front page and what a reader meets first (capslib.book.claims, capslib.book.frontpage).

* the claims table has one row per verdict of the verdict page, with a badge, the full verdict a click away,
  the scale and a link to the section that decides it;
* the negative results, the cost of the evidence and what could not be tested come from the rows;
* the headline figure and its caption say what the data say;
* the build hides papermill's injected cell and writes the generated front page only for books that include it;
* the intro lists every chapter and the ``cpu`` profile with its real sizes; the README opens with findings
  that match the verdicts; no reader-facing text cites an issue number.

Nothing here trains a model; the forward passes of the headline figure run in the book build (and the browser
test), not here.
"""
from __future__ import annotations

import json
import math
import re

import nbformat
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from capslib.book import build as book
from capslib.book import claims, collapse_runs, frontpage
from capslib.book.chapters import collapse as collapse_ch
from capslib.book.chapters import verdicts as verdicts_ch
from capslib.book.site import BookBuildError
from capslib.book import table5_runs
from capslib.book.study_points import point_outcomes

ROOT = book.REPO_ROOT


@pytest.fixture(scope="module")
def committed():
    """The verdicts of the committed rows, as the verdict page and the front page compute them."""
    return verdicts_ch.verdicts()


# ------------------------------------------------------------------ the claims table
def test_claims_table_has_one_row_per_verdict_with_badge_full_text_and_links(committed):
    page = claims.claims_html(committed)
    rows = re.findall(r'<tr class="capslib-claim">(.*?)</tr>', page, re.S)
    assert len(rows) == len(committed) == 9
    for number, (row, v) in enumerate(zip(rows, committed), start=1):
        assert f'<span class="capslib-badge {claims.badge_class(v)}">' in row
        assert re.search(r"<details><summary>.*</summary><p>", row), "the full verdict is one click away"
        assert f'href="verdicts.html#{verdicts_ch.claim_anchor(number)}"' in row
        assert v.decided_in[0] and f'href="{claims.section_href(v.decided_in[0], v.decided_in[1])}"' in row
        full = re.search(r"</summary><p>(.*?)</p>", row, re.S).group(1)
        assert "…" not in full and "..." not in full, "the full text is never truncated"
    own = claims.claims_html(committed, here="verdicts")
    assert 'href="#claim-1"' in own and "verdicts.html#claim-1" not in own
    assert "table-layout: fixed" in page, "fixed column widths: the table never outgrows the text column"


@pytest.mark.parametrize("verdict,cause,badge,cls", [
    ("reproduced", "", "reproduced", "reproduced"),
    ("not reproduced", "", "not reproduced", "not-reproduced"),
    ("explained by the length cliff at initialisation (class lengths exactly 0)", "the init length cliff",
     "explained by the init length cliff", "explained"),
    ("explained by something long", "", "explained by …", "explained"),
    ("inconclusive (smoke scale)", "", "inconclusive (smoke scale)", "inconclusive"),
    ("untestable here (CIFAR-10)", "", "untestable here", "untestable"),
])
def test_badge_is_short_and_the_full_verdict_is_kept(verdict, cause, badge, cls):
    v = verdicts_ch.Verdict(claim="c", source="s", verdict=verdict, evidence="e", scale="x", seeds=3, control="k",
                            would_change="w", cause=cause)
    assert v.badge == badge and claims.badge_class(v) == cls
    assert verdicts_ch.verdict_table([v]).iloc[0]["full verdict"] == verdict


def test_every_verdict_names_its_section_and_no_issue_number(committed):
    for v in committed:
        assert v.title and len(v.title) < len(v.claim) + 1
        assert v.decided_in[0] in book.CHAPTERS and v.decided_in[1] and v.decided_in[2]
        text = " ".join(str(x) for x in (v.claim, v.source, v.verdict, v.evidence, v.scale, v.control,
                                         v.would_change, v.paper, v.title))
        assert not re.search(r"\bissue\s*#?\d", text, re.I), v.claim
    md = verdicts_ch.verdict_markdown(committed[0], 1)
    assert md.startswith('<span id="claim-1"></span>**1. ')


def test_the_decided_in_sections_exist_in_the_chapters(committed):
    """Every section a claim links to is a heading of that chapter's notebook (the browser test follows the
    links on the built site)."""
    for v in committed:
        chapter, heading, _ = v.decided_in
        nb = nbformat.read(ROOT / "notebooks" / f"{chapter}.ipynb", as_version=4)
        headings = {line.lstrip("#").strip() for c in nb.cells if c.cell_type == "markdown"
                    for line in c.source.splitlines() if line.startswith("#")}
        assert heading in headings, f"{chapter} has no section {heading!r}"


# ------------------------------------------------------------------ negative results, cost, untestable
def _row(label, I, seed, acc, dtype="float32", stage="train", C=20, pr=0.0, wall=100.0, kind="train", I_after=None):
    return {"run_key": re.sub(r"\W", "", f"{label}{seed}{stage}{dtype}"), "experiment": "collapse", "stage": stage,
            "status": "ok",
            "config_hash": f"h{C}{I}{dtype}{pr}", "profile": "cpu", "seed": seed, "test_acc": acc, "collapsed": False,
            "wall_time": wall, "kind": kind, "pr": pr, "I_after": I_after, "label": label, "grid.C": C, "grid.D": 8,
            "model.C": C, "model.D": 8, "model.I": I if I_after is None else I_after, "model.init_std": 0.5,
            "train.dtype": dtype, "data.dataset": "fashion-mnist", "device_name": "TestCPU",
            "dead_000": json.dumps({"class": 1.0 if stage == "pruned" else 0.0}),
            "timestamp": "2026-01-01T00:00:00+0000", "capslib_version": "0.1.0+test"}


def _store(tmp_path, rows):
    path = tmp_path / "collapse" / "cpu.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return tmp_path


def test_float64_negative_follows_the_rows(tmp_path):
    rows = [_row("C20 I=7 (L)", 7, s, 0.099) for s in range(3)]
    rows += [_row("C20 I=7 (L) float64", 7, s, 0.099, dtype="float64", wall=3600) for s in range(3)]
    negs = claims.negative_results("cpu", _store(tmp_path, rows))
    f64 = next(n for n in negs if n.title.startswith("Float64"))
    assert f64.title == "Float64 did not move the cliff"
    assert "3 of 3 runs, as in float32 (3 of 3)" in f64.text
    assert list(f64.rows["dtype"]) == ["float32"] * 3 + ["float64"] * 3 and set(f64.rows["at chance"]) == {"yes"}
    rows[-1] = _row("C20 I=7 (L) float64", 7, 2, 0.70, dtype="float64")  # one float64 seed trains
    f64 = next(n for n in claims.negative_results("cpu", _store(tmp_path, rows)) if n.title.startswith("Float64"))
    assert f64.title == "Float64 did move the cliff" and "trained in 1 of 3 runs" in f64.text


def test_missed_predictions_are_the_rows_that_disagree_with_the_paper():
    rows = []
    for seed in range(3):
        for C, D, limit, paper in ((20, 8, 7, "6"), (10, 8, 21, ">30")):
            rows.append({"preset": "authors", "C": C, "D": D, "pr": 0.0, "dtype": "float32", "seed": seed, "batch": 0,
                         "C_eff": C, "init_std": 0.5, "I_max": 32, "limit": limit, "predicted_limit": limit,
                         "paper_max_I": paper})
    limits = collapse_ch.depth_limit_table(pd.DataFrame(rows), dtype=None)
    neg = claims._missed_predictions(limits)
    assert list(neg.rows["CapsNet"]) == ["[10, 8]"] and neg.rows.iloc[0]["screen: max I"] == "20"
    assert "1 of 2 configurations" in neg.text and "[10, 8]: 20 against the paper's >30" in neg.text


def test_rescue_and_pipeline_negatives(tmp_path):
    rows = []
    for s in range(3):
        for stage, acc in (("base", 0.3), ("ccm", 0.32), ("pruned", 0.099), ("retrain", 0.58)):
            for label, pr in (("pruned", 0.25), ("backbone", 0.0)):
                rows.append(_row(label, 0, s, acc, stage=stage, pr=pr, kind="prune", I_after=7,
                                 C=15 if pr and stage in ("pruned", "retrain") else 20))
        rows.append(_row("narrow", 7, s, 0.68, C=15))
    root = _store(tmp_path, rows)
    CP = collapse_runs.CollapsePoint
    pts = [CP("narrow", 15, 8, 7, 0.0, 0.5, "rescue", "control"), CP("pruned", 20, 8, 7, 0.25, 0.5, "rescue", "test"),
           CP("backbone", 20, 8, 7, 0.0, 0.5, "rescue", "control")]
    summary = collapse_runs.run_summary(collapse_runs.load_collapse("cpu", root), pts)
    negs = {n.title: n for n in claims.negative_results("cpu", root, summary=summary)}
    rescue = negs["The CCM + CHIP prune did not beat its controls"]
    assert "(58.0 % over 3 seeds), no better than" in rescue.text and "`narrow` (68.0 %)" in rescue.text
    stages = negs["One-epoch pipeline stages barely trained the backbone"]
    assert list(stages.rows["stage"]) == ["base", "ccm"] and list(stages.rows["seeds"]) == ["0, 1, 2"] * 2
    assert "30.0 % to 32.0 %" in stages.text
    probe = claims.dead_at_retrain_start(root, "cpu")
    assert probe == {"pr": 0.25, "C": 15, "I": 7, "dead": 3, "seeds": 3, "label": "pruned", "retrained": 0.58}


def test_evidence_cost_sums_the_rows_wall_times(tmp_path):
    _store(tmp_path, [_row("a", 6, s, 0.7, wall=1800.0) for s in range(2)])
    smoke = tmp_path / "table1" / "smoke.csv"
    smoke.parent.mkdir()
    pd.DataFrame({"wall_time": [360.0, 360.0], "device_name": ["TestCPU", "TestCPU"]}).to_csv(smoke, index=False)
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "table1" / "smoke_report.csv", index=False)
    cost = claims.evidence_cost(tmp_path).set_index("evidence")
    assert cost.loc["decisive training runs", "hours"] == pytest.approx(1.0)
    assert cost.loc["smoke runs of the chapters and paper-table sweeps", "hours"] == pytest.approx(0.2)
    assert cost.loc["decisive training runs", "devices"] == "TestCPU" and len(cost) == 2


def test_make_book_cost_is_quoted_from_the_readme():
    where, steps = claims.make_book_cost(ROOT / "README.md")
    assert where.startswith("Measured on") and steps
    readme = (ROOT / "README.md").read_text(encoding="utf8")
    for step, time in steps:
        assert "`make book`" in step and re.search(r"\d+ s", time) and f"| {time} |" in readme


def test_could_not_test_names_cifar_gpu_and_what_verdicts_mark(committed):
    items = claims.could_not_test(committed)
    assert items[0].startswith("**CIFAR-10**") and items[1].startswith("**GPU-scale runs**")
    assert any("DHCD" in i for i in items)


# ------------------------------------------------------------------ the headline figure
def _headline_data():
    rows = []
    for key, C, lengths in (("authors", 20, [0.9, 0.5, 1e-3, 1e-19, 0.0, 0.0]),
                            ("narrow", 15, [0.9, 0.7, 0.2, 3e-4, 1e-9, 0.0]),
                            ("remedy", 20, [0.3, 0.25, 0.2, 0.2, 0.21, 0.2])):
        for I, m in enumerate(lengths):
            rows.append({"route": key, "label": f"{key} net", "colour": "tab:blue", "C": C, "D": 8,
                         "std": 0.6 if key == "remedy" else 0.5, "I": I, "measured": m,
                         "log10_predicted": math.log10(m) if m else -400.0})
    data = pd.DataFrame(rows)
    data.attrs.update(seed=0, n_images=32, I_max=5)
    return data


def test_headline_figure_and_caption_follow_the_data():
    data = _headline_data()
    pruned = {"pr": 0.25, "C": 15, "I": 3, "dead": 3, "seeds": 3, "label": "p", "retrained": 0.581}
    fig = frontpage.headline_figure(data, cliff=3, pruned=pruned)
    assert isinstance(fig, Figure) and fig.axes[0].get_yscale() == "log"
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "cliff: the runs sit at chance from I = 3" in legend and any("3/3 seeds" in t for t in legend)
    cap = frontpage.headline_caption(data, cliff=3, pruned=pruned)
    assert "it is 1e-19 at I = 3" in cap and "exactly 0 from I = 4" in cap
    assert "stays non-zero to I = 4" in cap and "between 0.20 and 0.30 up to I = 5" in cap
    assert "trained to 58.1 %" in cap and 2 <= cap.count(". ") + 1 <= 4


def test_cliff_is_read_from_the_decisive_runs():
    summary = pd.DataFrame([
        {"claim": "collapse", "I": 6, "seeds": 3, "collapsed": "0/3"},
        {"claim": "collapse", "I": 7, "seeds": 3, "collapsed": "3/3"},
        {"claim": "collapse", "I": 8, "seeds": 3, "collapsed": "3/3"},
        {"claim": "precision", "I": 5, "seeds": 3, "collapsed": "3/3"}])
    assert frontpage.cliff_depth(summary) == 7
    assert frontpage.cliff_depth(summary.assign(collapsed="2/3")) is None


def test_headline_routes_are_the_decisive_runs_configs():
    from capslib.engine.config import profile
    from capslib.experiments.grids import COLLAPSE

    routes = {r.key: r.cfg for r in frontpage.headline_routes()}
    base = profile("cpu").model
    assert routes["authors"].C == 20 and routes["authors"].init_std == base.init_std == COLLAPSE["std"]
    assert routes["narrow"].C == COLLAPSE["C_pruned"] and routes["narrow"].widths == tuple(COLLAPSE["widths_pruned"])
    remedy = routes["remedy"]
    assert (remedy.init_std, remedy.class_std) == (COLLAPSE["remedy_std"], COLLAPSE["remedy_class_std"])


# ------------------------------------------------------------------ the build
def test_injected_parameters_cell_is_hidden_not_deleted():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("PROFILE = 'smoke'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("PROFILE = 'paper'", metadata={"tags": ["injected-parameters"]})]
    out = book.hide_injected(book.strip_notebook(nb))
    assert len(out.cells) == 2 and out.cells[1].metadata["tags"] == ["injected-parameters", book.HIDDEN_TAG]
    assert out.cells[0].metadata["tags"] == ["parameters"]
    assert book.hide_injected(out).cells[1].metadata["tags"].count(book.HIDDEN_TAG) == 1
    assert len(book.strip_notebook(out, drop_injected=True).cells) == 1  # --refresh-sources still drops it


def test_reused_chapters_get_their_injected_cell_hidden(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("P = 1", metadata={"tags": ["injected-parameters"]})]
    nbformat.write(nb, tmp_path / "notebooks" / "x.ipynb")
    nbformat.write(nb, tmp_path / "book" / "x.ipynb")  # executed by an older build
    book._reuse_unexecuted(book.resolve_chapters(tmp_path, ["x"]))
    again = nbformat.read(tmp_path / "book" / "x.ipynb", as_version=4)
    assert book.HIDDEN_TAG in again.cells[0].metadata["tags"]


def test_generated_parts_only_for_books_that_include_them(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n", encoding="utf8")
    assert book.write_generated(tmp_path) == []
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\n```{include} _generated/other.md\n```\n", encoding="utf8")
    with pytest.raises(BookBuildError, match="other.md"):
        book.write_generated(tmp_path)
    assert book.included_fragments(ROOT / "book") == {f"{book.GENERATED_DIR}/{book.FRONT_PAGE}"}
    assert "/book/_generated/" in (ROOT / ".gitignore").read_text(encoding="utf8").split()


# ------------------------------------------------------------------ the intro and the README
def _intro() -> str:
    return (ROOT / "book" / "intro.md").read_text(encoding="utf8")


def test_intro_lists_every_chapter_and_the_cpu_profile():
    from capslib.engine.config import PROFILES

    intro = _intro()
    listed = re.findall(r"^\* \{doc\}`(\w+)`", intro, re.M)
    assert listed == list(book.CHAPTERS), "the chapter list is every chapter of _toc.yml, in order"
    assert "{doc}`reproduction`" in intro
    for name in PROFILES:
        assert re.search(rf"^`{name}`", intro, re.M), f"profile {name} is not in the intro's list"
    cpu = re.search(r"^`cpu`.*?(?=\n\n)", intro, re.M | re.S).group(0)
    cpu = re.sub(r"\s+", " ", cpu)
    cfg = PROFILES["cpu"]()
    d, t, m = cfg.data, cfg.train, cfg.model
    assert f"{d.train_size:,} / {d.val_size:,} / {d.test_size:,} training / validation / test images" in cpu
    assert f"batch {t.batch_size}" in cpu and (t.epochs == 1 and "one epoch" in cpu)
    assert f"std {m.init_std:g}" in cpu and m.class_init_std is None and "class capsules" in cpu
    assert f"({math.ceil(d.train_size / t.batch_size)} Adam steps)" in cpu
    assert f"CapsNet[C={m.C}, D={m.D}, I]" in cpu or "CapsNet[C=20, D=8, I]" in cpu


def test_intro_says_what_nbval_compares():
    intro = re.sub(r"\s+", " ", _intro())
    assert "(parameter counts, shapes and smoke metrics)" not in intro
    assert "# CHECK_NUMBERS <label>" in intro and "tests/nbval_numbers.py" in intro
    assert "AVX-512, AVX2 and SSE" in intro
    assert "```{include} _generated/frontpage.md" in _intro()


def test_readme_opens_with_findings_that_match_the_verdicts(committed):
    from capslib.book import fig6_runs, seed002_runs, table1_runs
    from capslib.book.collapse_runs import at_chance

    readme = (ROOT / "README.md").read_text(encoding="utf8")
    opening = readme.split("## ", 1)[0]
    assert opening.index("**What it found**") < 600, "the findings are the README's first screen"
    text = re.sub(r"\s+", " ", opening)
    collapse, rescue, *others, h, deep = committed
    assert "collapse of deep CapsNets is reproduced" in text and collapse.verdict == "reproduced"
    assert "Its mechanism is a cliff in the capsule lengths at initialisation" in text and collapse.mechanism
    assert "in float64 too" in text and h.details["float64_beyond_collapses"] is True
    assert 'The pruning "rescue" is not reproduced' in text and rescue.verdict == "not reproduced"
    plateau = {r.label: r for r in point_outcomes("collapse_plateau", "cpu").itertuples()}
    chip = plateau["plateau: CCM+CHIP PR 0.25 I=7"]
    assert "sits at chance in all three seeds" in text and chip.seeds == 3 and chip.at_chance == 3
    arms = [r for label, r in plateau.items() if label.startswith("plateau: PR 0.25")]
    assert "so do random channels, the highest-CI channels removed and CHIP without CCM" in text
    assert len(arms) == 3 and all(r.seeds == 3 and r.at_chance == 3 for r in arms)
    narrow = plateau["plateau: C'=15 from scratch I=7"]
    assert "reaches 84 %" in text and round(narrow.mean) == 84 and narrow.at_chance == 0
    summary = collapse_runs.run_summary(collapse_runs.load_collapse("cpu"), collapse_runs.collapse_points("cpu"))
    pts = summary[summary["claim"] == "rescue"].set_index("role")
    test_acc = float(pts.loc["test", "test acc (%)"])
    ctrl = summary[(summary["claim"] == "rescue") & (summary["role"] == "control")]
    narrow = ctrl[ctrl["C"] != 20].iloc[0]
    backbone = ctrl[ctrl["C"] == 20].iloc[0]
    assert "trained from scratch does at least as well" in text and narrow["test acc (%)"] >= test_acc
    assert "backbone trains too" in text and backbone["collapsed"].startswith("0/")
    assert "trains well past the cliff without pruning" in text and h.details["remedy_trains"] is True
    assert "tested factor by factor" in text and "arms_as_predicted" in h.details
    assert "none of the three trains CapsNet[20, 8, 30]" in text
    assert set(deep.details["fails"]) == {"squash bias 0.1", "Efficient-CapsNet squash", "residual ConvCaps"}
    fig6, table1, table5, seed002, seed004 = others
    assert "Seed 004's kernel-similarity trend is reproduced" in text and seed004.verdict == "reproduced"
    assert "against our committed prediction" in text and "missed" in seed004.evidence
    assert "two of four conv layers" in text and len(seed004.details["holds_in"]) == 2
    t5 = table5_runs.outcomes(profile="cpu")
    assert "three runs trained below the rule's threshold" in text
    assert len(t5[(t5["predicted"] == "chance") & (t5["observed"] == "trains")]) == 3
    assert "Table 5 is not reproduced" in text and table5.verdict == "not reproduced"
    limits = table5_runs.limit_table(t5).set_index("CapsNet")
    for cfg in ("[16, 6]", "[20, 6]", "[20, 8]"):
        assert table5_runs.agrees_with_paper(limits.loc[cfg]) is True, cfg
    assert "[10, 6] and [20, 10] train one layer deeper in two of three seeds" in text
    for cfg in ("[10, 6]", "[20, 10]"):
        assert limits.loc[cfg, "deepest trained"] == limits.loc[cfg, "paper max I"] + 1, cfg
    ten8 = t5[(t5["C"] == 10) & (t5["D"] == 8) & (t5["init_std"] == 0.5)]
    assert "[10, 8] sits at chance at I = 20, 25 and 31" in text
    assert all((g["observed"] == "chance").sum() >= 2 for _, g in ten8.groupby("I")) and set(ten8["I"]) == {20, 25, 31}
    assert limits["complete"].all()
    assert "Table 1's rise with PR is explained by extra training" in text
    assert table1.verdict.startswith("explained by the extra training") and table1.seeds == 5
    t1 = {r["comparison"]: r for _, r in table1_runs.claim(profile="cpu")["table"].iterrows()}
    for comparison, shown in (("0.125 − plain", "+1.2"), ("0.25 − plain", "+0.8"), ("0.125 − pipeline", "+0.5"),
                              ("0.25 − pipeline", "+0.1"), ("0.75 − pipeline", "−0.5")):
        assert f"{t1[comparison]['mean']:+.1f}".replace("-", "−") == shown and shown in text, comparison
    assert t1["0.125 − plain"]["lo"] > 0 and t1["0.25 − plain"]["lo"] > 0
    assert t1["0.125 − pipeline"]["lo"] < 0 < t1["0.125 − pipeline"]["hi"] and t1["0.75 − pipeline"]["hi"] > 0
    assert "Fig. 6 is reproduced on Fashion-MNIST" in text and fig6.verdict == "reproduced" and fig6.seeds == 3
    f6 = fig6_runs.claim(profile="cpu")
    m = f6["maxima"].set_index(["arm", "pr"])
    assert m["complete"].all()
    assert "trains to 10, 11 and 18 ConvCaps layers at PR 0.125, 0.25 and 0.375" in text
    assert [m.loc[("pruned", pr), "trained_max"] for pr in (0.125, 0.25, 0.375)] == [10, 11, 18]
    strict = f6["strict"][2].set_index(["arm", "pr"])
    assert "10, 10 and 18 if a run must pass 20 %" in text and f6["strict"][:2] == (True, None)
    assert [strict.loc[("pruned", pr), "trained_max"] for pr in (0.125, 0.25, 0.375)] == [10, 10, 18]
    assert "the same C′ from scratch trains at none of those depths" in text
    assert all(pd.isna(m.loc[("scratch", pr), "trained_max"]) for pr in (0.125, 0.25, 0.375))
    assert "the unpruned trained backbone stops at 8" in text and m.loc[("backbone", 0.0), "trained_max"] == 8
    med = f6["screen"].groupby(["arm", "pr"])["limit"].median()
    assert "at 11, 13 and 21 layers (medians of three seeds)" in text
    assert [med[("pruned", pr)] for pr in (0.125, 0.25, 0.375)] == [11, 13, 21]
    assert "8, 9 and 15 for C′ from scratch" in text and [med[("scratch", pr)] for pr in (0.125, 0.25, 0.375)] == [8, 9, 15]
    assert "9 for the unpruned trained backbone" in text and med[("backbone", 0.0)] == 9
    s002 = seed002_runs.claim(profile="cpu")
    outs = {o["routing"]: o for o in s002["outcomes"]}
    summ = s002["summary"].set_index(["routing", "depth"])
    assert "Seed 002's claim that capsules die with depth under EM, self- and VB routing is not reproduced" in text
    assert seed002.verdict == "not reproduced" and outs["self"]["decided"] and not outs["self"]["grows"]
    assert "self-routing keeps every type alive at 1, 3 and 5 layers" in text
    assert all(summ.loc[("self", d), "dead"] == 0 and summ.loc[("self", d), "seeds"] >= 3 for d in (1, 3, 5))
    assert "dynamic routing loses 95 % of its types at 5 layers and sits at chance" in text
    assert "EM routing falls to chance at 3 layers (45 → 10 %) with no type dead" in text and not outs["em"]["grows"]
    assert [round(a) for a in outs["em"]["acc"]] == [45, 10] and at_chance(outs["em"]["acc"][1] / 100)
    assert summ.loc[("em", 1), "dead"] == summ.loc[("em", 3), "dead"] == 0 and summ.loc[("em", 3), "seeds"] >= 3
    assert round(summ.loc[("dynamic", 5), "dead"]) == 95 and at_chance(summ.loc[("dynamic", 5), "test_acc"] / 100)
    assert "notebooks/verdicts.ipynb" in text and "make book" in text and "make test" in text


def test_no_reader_facing_page_cites_an_issue_number():
    pattern = re.compile(r"\bissue\s*#?\d+", re.I)
    for page in (ROOT / "book").glob("*.md"):
        assert not pattern.search(page.read_text(encoding="utf8")), page.name
    for name in book.CHAPTERS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            shown = [cell.source] if cell.cell_type == "markdown" else [
                str(o.get("data", {}).get("text/markdown", "")) + str(o.get("data", {}).get("text/html", ""))
                + str(o.get("text", "")) for o in cell.get("outputs", [])]
            for text in shown:
                assert not pattern.search(text), f"{name}: {text[:80]}"


# ------------------------------------------------------------------ narrow tables
def test_wide_tables_are_split_into_narrow_views():
    rows = []
    for preset, std in (("authors", 0.5), ("default", 0.3)):
        for dtype, limit in (("float32", 7), ("float64", 9)):
            for pr, c_eff in ((0.0, 20), (0.25, 15)):
                rows.append({"preset": preset, "C": 20, "D": 8, "pr": pr, "dtype": dtype, "seed": 0, "batch": 0,
                             "C_eff": c_eff, "init_std": std, "I_max": 16, "limit": limit, "predicted_limit": limit,
                             "paper_max_I": "6"})
    views = collapse_ch.depth_limit_views(collapse_ch.depth_limit_table(pd.DataFrame(rows), dtype=None))
    assert [k.split("**")[1] for k in views] == ["The authors' settings", "capslib's corrected defaults"]
    v = next(iter(views.values()))
    assert v.shape == (2, 6) and list(v.index) == ["[20, 8]", "[20, 8] PR 0.25 → C′ 15"]
    assert v.loc["[20, 8]", "max I, float32"] == "6" and v.loc["[20, 8]", "max I, float64"] == "8"
    point = collapse_runs.CollapsePoint("p", 20, 8, 7, 0, 0.5, "collapse", "test")
    summary = collapse_runs.run_summary(pd.DataFrame(), [point])
    view = collapse_runs.summary_view(summary)
    assert view.shape == (1, 4) and view.iloc[0]["test acc (%)"] == "runs in progress"
    assert np.isnan(summary.iloc[0]["test acc (%)"])


def test_front_page_fragment_holds_table_figure_cost_and_untested(committed):
    data = _headline_data()
    md = frontpage.front_page_markdown(committed, data, cliff=3, pruned=None, root=None,
                                       readme=ROOT / "README.md", footer="*Provenance:* test")
    assert md.startswith("## What this book found")
    assert md.count('<tr class="capslib-claim">') == len(committed)
    assert f"```{{figure}} {book.GENERATED_DIR}/{frontpage.HEADLINE_PNG}" in md and "*Provenance:* test" in md
    assert "### What the evidence cost" in md and "CPU-hours" in md and "**One `make book`**" in md
    assert "### What we could not test" in md and "* **CIFAR-10**" in md
    assert "{ref}`on the verdict page too <what-did-not-work>`" in md
    verdicts_nb = nbformat.read(ROOT / "notebooks" / "verdicts.ipynb", as_version=4)
    assert any(c.source.startswith("(what-did-not-work)=") for c in verdicts_nb.cells)


def test_committed_negatives_list_every_missed_run_prediction_and_the_plateau_rescue():
    """From the committed rows: every H arm, remedy point, Table 5 run and seed-004 rule that missed its committed
    prediction is listed (and only those), and the plateau rescue with its selection arms is reported as not working."""
    from capslib.book.remedies_runs import predicted_vs_trained
    from capslib.book.study_points import arm_outcomes

    from capslib.book import fig6_runs, table1_runs
    from capslib.book.kernel_runs import load_similarity, seed004_outcome

    negs = {n.title: n for n in claims.negative_results("cpu")}
    missed = negs["Run predictions that missed"]
    arms = arm_outcomes("cpu")
    rem = predicted_vs_trained(profile="cpu")
    t5 = table5_runs.outcomes(profile="cpu")
    t5 = t5[t5["as_predicted"].eq(False)]
    expected = {*arms.loc[arms["as_predicted"].eq(False), "label"],
                *(f"{r}, I = {i}" for r, i in zip(rem.loc[rem["status"] == "missed", "remedy"],
                                                  rem.loc[rem["status"] == "missed", "I"])),
                *(f"{r.label}, seed {r.seed}" for r in t5.itertuples())}
    if "missed" in seed004_outcome(load_similarity("cpu"))["text"]:
        expected.add("seed 004's measure against width")
    f6 = fig6_runs.outcomes(profile="cpu")
    expected |= {f"{r.label}, seed {r.seed}" for r in f6[f6["as_predicted"].eq(False)].itertuples()}
    t1 = table1_runs.scored_predictions(table1_runs.claim(profile="cpu"))
    expected |= {f"Table 1 [16, 6]: {c}" for c in t1.loc[t1["held"].eq(False), "comparison"]}
    assert "Table 1 [16, 6]: 0.75 − pipeline" in expected  # the fall predicted before the rows, which missed
    assert set(missed.rows["point"]) == expected and "residual ConvCaps, I = 30" in expected
    assert "Table 5 [10, 6]: I=8, seed 2" in expected and "seed 004's measure against width" in expected
    assert f"{len(expected)} predictions committed before their runs missed" in missed.text
    plateau = negs["No channel choice rescued the plateau-trained backbone"]
    assert len(plateau.rows) == 5 and (plateau.rows["at_chance"] == plateau.rows["seeds"]).all()
    assert "first Adam step of exactly 0" in plateau.text
