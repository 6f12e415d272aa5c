"""The book build (capslib.book) and the static sliders (capslib.book.widgets).

Most tests build the tiny fixture book in ``tests/fixtures/book`` (one chapter
with math, a figure and a ``slider_panels`` widget) in a temporary copy,
through the same functions as ``python -m capslib.book build``.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from capslib.book import build as book
from capslib.book import site
from capslib.book.build import build_book, chapters_from_toc, strip_notebook
from capslib.book.site import BookBuildError

FIXTURE = Path(__file__).parent / "fixtures" / "book"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def fixture_copy(tmp_path: Path, toc_chapters: list[str] | None = None) -> Path:
    """A fresh copy of the fixture book; ``toc_chapters`` rewrites its _toc.yml."""
    root = tmp_path / "fixture-book"
    shutil.copytree(FIXTURE, root)
    if toc_chapters is not None:
        entries = "".join(f"  - file: book/{name}\n" for name in toc_chapters)
        (root / "_toc.yml").write_text(
            f"format: jb-book\nroot: book/intro\nchapters:\n{entries}", encoding="utf8"
        )
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The fixture book built once (smoke, online, with --refresh-sources)."""
    root = fixture_copy(tmp_path_factory.mktemp("built"))
    start = time.perf_counter()
    html = build_book(root=root, refresh_sources=True)
    print(f"fixture book built in {time.perf_counter() - start:.1f} s")
    return root, html


def page(html: Path, name: str) -> str:
    return (html / name).read_text(encoding="utf8")


def widget_state(html_text: str) -> dict:
    """The widget state that myst-nb embeds in a page."""
    match = re.search(
        rf'<script type="{re.escape(WIDGET_STATE)}">(.*?)</script>', html_text, re.S
    )
    assert match, "page has no embedded widget state"
    return json.loads(match.group(1))["state"]


# ---------------------------------------------------------------- the build
def test_build_writes_html(built):
    root, html = built
    assert html == root / "_build" / "html"
    for name in ("index.html", "book/intro.html", "book/demo.html"):
        assert (html / name).is_file(), name


def test_page_has_math(built):
    _, html = built
    text = page(html, "book/demo.html")
    assert '<div class="math notranslate nohighlight">' in text
    assert r"\frac{\|\mathbf{s}\|^2}{1 + \|\mathbf{s}\|^2}" in text
    assert "mathjax@3.2.2/es5/tex-chtml.js" in text


def test_page_has_figure(built):
    _, html = built
    images = re.findall(r'<img[^>]+src="\.\./(_images/[^"]+\.png)"', page(html, "book/demo.html"))
    assert images, "the matplotlib figure is not in the page"
    assert all((html / img).is_file() for img in images)


def _models(state: dict) -> dict[str, list[tuple[str, dict]]]:
    """Widget models of a page's state, grouped by model name."""
    by_name: dict[str, list[tuple[str, dict]]] = {}
    for model_id, model in state.items():
        by_name.setdefault(model["model_name"], []).append((model_id, model["state"]))
    return by_name


def test_page_has_slider_state(built):
    """Both explorers' sliders, Stacks, images and jslinks are in the page."""
    _, html = built
    text = page(html, "book/demo.html")
    state = widget_state(text)
    models = _models(state)
    assert len(models["ImageModel"]) == 3 + 4
    labels = sorted(m["_options_labels"] for _, m in models["SelectionSliderModel"])
    assert labels == [["0", "0.25", "0.5"], ["0", "0.5"], ["8/4", "16/8"]]
    sliders = {tuple(m["_options_labels"]): i for i, m in models["SelectionSliderModel"]}
    stacks = {i: m for i, m in models["StackModel"]}
    links = [(m["source"], m["target"]) for _, m in models["LinkModel"]]
    # slider_panels: the PR slider drives a Stack of three images
    pr_links = [t for s, t in links if s == [f"IPY_MODEL_{sliders[('0', '0.25', '0.5')]}", "index"]]
    assert len(pr_links) == 1 and pr_links[0][1] == "selected_index"
    assert len(stacks[pr_links[0][0].removeprefix("IPY_MODEL_")]["children"]) == 3
    # slider_grid: C/D drives the outer Stack, PR drives both inner Stacks
    cd_links = [t for s, t in links if s == [f"IPY_MODEL_{sliders[('8/4', '16/8')]}", "index"]]
    inner_links = [t for s, t in links if s == [f"IPY_MODEL_{sliders[('0', '0.5')]}", "index"]]
    outer = stacks[cd_links[0][0].removeprefix("IPY_MODEL_")]
    assert sorted(t[0] for t in inner_links) == sorted(outer["children"])
    view_ids = re.findall(r'widget-view\+json">\s*(\{.*?\})', text)
    assert len([v for v in view_ids if json.loads(v)["model_id"] in state]) == 2
    assert "capslib/widgets-glue.js" in text
    assert (html / "_static" / site.WIDGETS_GLUE).is_file()


def test_launch_buttons_open_source_notebook(built):
    """Where a repository is configured (the fixture's), launch buttons open notebooks/<name>.ipynb."""
    _, html = built
    text = page(html, "book/demo.html")
    colab = "colab.research.google.com/github/fixture-org/capslib-fixture/blob/main/notebooks/demo.ipynb"
    assert colab in text
    assert "/book/demo.ipynb" not in text


def test_real_book_has_no_placeholder_buttons():
    """There is no public repository: the real book configures no repository, Binder or Colab button
    (a placeholder URL would send readers nowhere), and sets the theme's colour mode."""
    import yaml

    config = yaml.safe_load((book.REPO_ROOT / "_config.yml").read_text(encoding="utf8"))
    assert "your-org" not in (book.REPO_ROOT / "_config.yml").read_text(encoding="utf8")
    assert not config.get("repository", {}).get("url")
    assert not config["html"].get("use_repository_button")
    assert not config.get("launch_buttons", {}).get("binderhub_url")
    assert not config.get("launch_buttons", {}).get("colab_url")
    assert config["sphinx"]["config"]["html_context"]["default_mode"] in ("light", "dark", "auto")


def test_executed_copy_is_clean(built):
    root, _ = built
    nb = nbformat.read(root / "book" / "demo.ipynb", as_version=4)
    assert "papermill" not in nb.metadata
    assert WIDGET_STATE in nb.metadata["widgets"]
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    for cell in nb.cells:
        assert not {"papermill", "execution"} & set(cell.metadata), cell.metadata


def test_refresh_sources_writes_outputs_back(built):
    root, _ = built
    src = nbformat.read(root / "notebooks" / "demo.ipynb", as_version=4)
    fixture = nbformat.read(FIXTURE / "notebooks" / "demo.ipynb", as_version=4)
    assert len(src.cells) == len(fixture.cells), "injected parameters cell left behind"
    assert [c.source for c in src.cells] == [c.source for c in fixture.cells]
    assert all(c.outputs for c in src.cells if c.cell_type == "code" and c.source.strip()
               and "parameters" not in c.metadata.get("tags", []))
    assert "papermill" not in src.metadata
    assert WIDGET_STATE in src.metadata["widgets"]


# ---------------------------------------------------------------- failures
def test_failing_chapter_fails_the_build(tmp_path, capsys):
    """A raising cell exits non-zero, naming the notebook, the cell and the error."""
    root = fixture_copy(tmp_path, toc_chapters=["broken"])
    status = book.main(["build", "--root", str(root)])
    err = capsys.readouterr().err
    assert status == 1
    assert "broken.ipynb" in err
    assert "cell 2 (0-based" in err
    assert "raise RuntimeError(\"fixture failure in cell 2\")" in err
    assert "RuntimeError: fixture failure in cell 2" in err
    assert "Traceback" in err or "Cell In[" in err  # the IPython traceback is shown
    assert not (root / "_build" / "html").exists(), "Jupyter Book ran after a failure"


def test_missing_chapter_is_an_error(tmp_path):
    root = fixture_copy(tmp_path, toc_chapters=["demo", "nothere"])
    with pytest.raises(BookBuildError, match=r"notebooks/nothere\.ipynb"):
        build_book(root=root)
    assert not (root / "book" / "demo.ipynb").exists(), "executed before checking sources"


def test_unknown_only_is_an_error(tmp_path):
    with pytest.raises(BookBuildError, match="not a chapter"):
        build_book(root=fixture_copy(tmp_path), only=["nothere"])


def test_refresh_sources_needs_smoke(tmp_path):
    with pytest.raises(BookBuildError, match="smoke"):
        build_book(root=fixture_copy(tmp_path), profile="paper", refresh_sources=True)


def test_sphinx_warning_fails_the_build(tmp_path):
    root = fixture_copy(tmp_path)
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n", encoding="utf8")
    (root / "book" / "intro.md").write_text("# Intro\n\nSee {doc}`no-such-page`.\n")
    with pytest.raises(BookBuildError, match="no-such-page"):
        build_book(root=root, chapters=[])


# ---------------------------------------------------------------- offline
def test_offline_site_loads_no_remote_script(tmp_path):
    """--offline serves MathJax, require.js and the widget manager from the site."""
    html = build_book(root=fixture_copy(tmp_path), offline=True)
    assert site.remote_scripts(html) == []
    text = page(html, "book/demo.html")
    for asset in ("offline/mathjax/tex-chtml.js", "offline/require.js",
                  "offline/html-manager/embed-amd.js"):
        assert f'src="../_static/{asset}' in text, asset
        assert (html / "_static" / asset).is_file(), asset
    assert not (tmp_path / "fixture-book" / "_static").exists(), "assets leaked into _static"


def test_remote_scripts_finds_cdn_links(built):
    _, html = built
    urls = [url for _, url in site.remote_scripts(html)]
    assert any("html-manager@1.0.15/dist/embed-amd.js" in u for u in urls)


# ---------------------------------------------------------------- pieces
def test_real_toc_lists_the_paper_chapters():
    assert chapters_from_toc(book.REPO_ROOT) == list(book.CHAPTERS)


def test_config_pins_the_offline_versions():
    """The CDN URLs of the online site match the versions fetched for --offline."""
    text = (book.REPO_ROOT / "_config.yml").read_text(encoding="utf8")
    assert f"html-manager@{site.HTML_MANAGER_VERSION}/dist/embed-amd.js" in text
    assert f"mathjax@{site.MATHJAX_VERSION}/es5/{site.MATHJAX_BUNDLE}" in text
    assert f"requirejs@{site.REQUIREJS_VERSION}/require.js" in text


def test_strip_notebook_drops_run_metadata():
    nb = nbformat.v4.new_notebook(metadata={
        "papermill": {"duration": 1.0},
        "kernelspec": {"name": "python3", "display_name": "Python 3"},
        "widgets": {WIDGET_STATE: {"state": {}}},
    })
    params = nbformat.v4.new_code_cell("PROFILE = 'smoke'", metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell("PROFILE = 'paper'",
                                         metadata={"tags": ["injected-parameters"]})
    run = nbformat.v4.new_code_cell("1", metadata={
        "tags": [], "papermill": {"status": "completed"},
        "execution": {"iopub.status.idle": "2025-01-01T00:00:00Z"}})
    nb.cells = [params, injected, run]
    out = strip_notebook(nb, drop_injected=True)
    assert set(out.metadata) == {"kernelspec", "widgets"}
    assert [c.source for c in out.cells] == ["PROFILE = 'smoke'", "1"]
    assert out.cells[1].metadata == {}
    assert "papermill" in nb.metadata, "strip_notebook must not modify its input"
    assert len(strip_notebook(nb).cells) == 3


# ---------------------------------------------------------------- widgets
def _figure(value: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, value])
    return fig


def _links(box):
    """The jslinks of an explorer as ((widget, trait), (widget, trait)) pairs."""
    return [(tuple(link.source), tuple(link.target)) for link in box.links]


def test_slider_panels_links_slider_index_to_stack():
    import ipywidgets as widgets

    from capslib.book.widgets import figure_png, slider_panels

    panels = {0.0: _figure(0.0), 0.125: figure_png(_figure(1.0)), "all": _figure(2.0)}
    box = slider_panels(panels, description="PR")
    slider, stack = box.children
    assert isinstance(slider, widgets.SelectionSlider) and isinstance(stack, widgets.Stack)
    assert slider.options == ("0", "0.125", "all")
    assert all(isinstance(c, widgets.Image) and c.value[:4] == b"\x89PNG" for c in stack.children)
    assert _links(box) == [((slider, "index"), (stack, "selected_index"))]
    assert repr(box) == "slider_panels(PR: 0, 0.125, all)"
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == [], "figures were left open (they would show twice)"


def test_slider_grid_nests_stacks():
    from capslib.book.widgets import figure_png, slider_grid

    png = {key: figure_png(_figure(i)) for i, key in enumerate(
        [(a, b) for a in ("8/4", "16/8") for b in (0.0, 0.25, 0.5)])}
    box = slider_grid(png, names=("C/D", "PR"))
    outer_slider, inner_slider, outer = box.children
    assert outer_slider.options == ("8/4", "16/8")
    assert inner_slider.options == ("0", "0.25", "0.5")
    assert len(outer.children) == 2 and all(len(s.children) == 3 for s in outer.children)
    assert outer.children[1].children[2].value == png[("16/8", 0.5)]
    links = _links(box)
    assert links[0] == ((outer_slider, "index"), (outer, "selected_index"))
    assert links[1:] == [((inner_slider, "index"), (s, "selected_index")) for s in outer.children]


def test_slider_grid_rejects_missing_pairs():
    from capslib.book.widgets import figure_png, slider_grid

    png = figure_png(_figure(0))
    with pytest.raises(ValueError, match=r"missing \[\('b', 2\)\]"):
        slider_grid({("a", 1): png, ("a", 2): png, ("b", 1): png})


def test_panels_must_be_figures_or_png():
    from capslib.book.widgets import slider_panels

    with pytest.raises(ValueError, match="not a PNG"):
        slider_panels({1: b"GIF89a..."})
    with pytest.raises(TypeError, match="Figure or PNG"):
        slider_panels({1: "figure.png"})


def test_kernel_runs_this_python():
    """Chapters run in the interpreter (venv) that runs the build."""
    import sys

    book.ensure_kernel()
    assert book._kernel_python(book.KERNEL_NAME) == Path(sys.executable)


def test_only_reuses_committed_outputs_of_other_chapters(tmp_path, capsys):
    root = fixture_copy(tmp_path)
    chapter, = book.resolve_chapters(root, ["demo"])
    book._reuse_unexecuted([chapter])
    assert "committed outputs of demo.ipynb" in capsys.readouterr().out
    copied = nbformat.read(chapter.output, as_version=4)
    assert [c.source for c in copied.cells] == [
        c.source for c in nbformat.read(chapter.source, as_version=4).cells]


def test_capslib_cli_has_book_build():
    """``capslib book build`` parses into the same command as ``python -m capslib.book``."""
    from capslib.cli import build_parser

    args = build_parser().parse_args(["book", "build", "--offline", "--only", "depth"])
    assert args.func is book._cmd_build
    assert args.offline and args.only == ["depth"] and args.profile == "smoke"


def test_test_runs_do_not_execute_fixture_notebooks():
    """nbval (make test: pytest tests notebooks --nbval-lax) must not run tests/fixtures' notebooks: run in
    place, fixtures/batch/tiny.ipynb stored a run in results/batch-test/ of the checkout."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--nbval-lax",
                          "-p", "no:cacheprovider", "tests/fixtures"],
                         cwd=book.REPO_ROOT, capture_output=True, text=True)
    assert "no tests collected" in out.stdout, out.stdout[-2000:]


def test_sweep_help_and_list_name_every_experiment():
    import contextlib
    import io

    from capslib.cli import build_parser, main
    from capslib.experiments.grids import EXPERIMENTS

    sweep = build_parser()._subparsers._group_actions[0].choices["sweep"]
    assert all(name in sweep.format_help().replace("\n", " ").replace("  ", " ") for name in EXPERIMENTS)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["sweep", "list"]) == 0
    lines = buf.getvalue().splitlines()
    assert [line.split()[0] for line in lines[1:]] == list(EXPERIMENTS)
    # each run count ends where its header ends, on every line (the longest name, seed002_depth, included)
    smoke_end = lines[0].index("runs (smoke)") + len("runs (smoke)")
    paper_end = lines[0].index("runs (paper)") + len("runs (paper)")
    for line, exp in zip(lines[1:], EXPERIMENTS.values()):
        assert line[:smoke_end].rstrip().endswith(f" {len(exp.grid('smoke'))}"), line
        assert line[smoke_end:paper_end].strip() == str(len(exp.grid("paper"))), line
