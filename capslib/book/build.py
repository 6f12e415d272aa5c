"""Build the companion book: run the chapters with papermill, then Jupyter Book 1.

The book follows the QuantEcon / Lightning pattern (DESIGN.md §5): notebooks
are executed *before* Sphinx sees them, and Jupyter Book runs with
``execute_notebooks: off``. One build is::

    python -m capslib.book build [--profile smoke] [--offline] [--only NAME ...]
                                 [--refresh-sources]

1. The chapter list comes from ``_toc.yml``: every ``book/<name>`` entry that
   has no hand-written page (``book/<name>.md``) is a chapter whose source is
   ``notebooks/<name>.ipynb``. A listed chapter without a source is an error.
2. Each chapter runs with papermill (parameter ``PROFILE``) in the kernel
   ``python3`` of *this* interpreter, into ``book/<name>.ipynb`` (a build
   output). papermill keeps the widget state, which the static sliders of
   :mod:`capslib.book.widgets` need. A failing cell fails the build, naming the
   notebook, the cell and the traceback.
   papermill's ``injected-parameters`` cell stays in the executed copy but is
   tagged ``remove-cell``, so the rendered page shows only the chapter's own
   parameters cell.
3. ``--refresh-sources`` writes the executed smoke outputs back to
   ``notebooks/<name>.ipynb`` (what nbval checks), without run-specific
   metadata.
4. The generated parts that hand-written pages include (``book/_generated/``,
   git-ignored: the front page's claims table, headline figure and cost,
   :mod:`capslib.book.frontpage`) are written from the committed rows.
5. ``jupyter-book build`` renders ``_build/html``; Sphinx warnings are errors.
6. ``--offline`` serves require.js, the ipywidgets HTML manager and MathJax
   from the site itself (fetched from npm into ``.offline_assets/``, copied to
   ``_build/html/_static/offline/``; never into the source ``_static``, whose
   every ``.js`` Jupyter Book would inject into every page) and checks that no
   page loads a remote script.

The offline assets and the book's Sphinx extension live in :mod:`capslib.book.site`.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import yaml

from ..engine.config import PROFILES
from .site import (
    BOOK_DIR,
    NOTEBOOKS_DIR,
    BookBuildError,
    fetch_offline_assets,
    install_offline_assets,
    install_widgets_glue,
    remote_scripts,
    write_offline_config,
)

__all__ = [
    "BookBuildError",
    "Chapter",
    "CHAPTERS",
    "REPO_ROOT",
    "build_book",
    "chapters_from_toc",
    "default_root",
    "execute_chapter",
    "hide_injected",
    "included_fragments",
    "write_generated",
    "main",
    "register_cli",
    "run_jupyter_book",
    "strip_notebook",
]

#: The folder that holds the ``capslib`` package (put on the kernels'
#: ``PYTHONPATH``); in a checkout, the repository root and the book root.
REPO_ROOT = Path(__file__).resolve().parents[2]

def default_root() -> Path:
    """The book root: this checkout, or the working directory if capslib is
    installed as a package (then ``REPO_ROOT`` is ``site-packages``)."""
    return REPO_ROOT if (REPO_ROOT / "_toc.yml").is_file() else Path.cwd()


#: The paper's sections, in reading order; ``_toc.yml`` must list exactly these.
CHAPTERS = ("routing", "ccm", "chip", "depth", "kernels", "collapse", "deep", "verdicts")

KERNEL_NAME = "python3"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------
# Chapters
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Chapter:
    """One chapter: its source notebook and where its executed copy goes."""

    name: str
    source: Path  # notebooks/<name>.ipynb
    output: Path  # book/<name>.ipynb


def _toc_files(entry) -> Iterator[str]:
    """Every ``file:`` of a ``_toc.yml`` node, depth first, in reading order."""
    if isinstance(entry, dict):
        for key in ("root", "file"):
            if isinstance(entry.get(key), str):
                yield entry[key]
        for key in ("parts", "chapters", "sections"):
            for child in entry.get(key) or []:
                yield from _toc_files(child)
    elif isinstance(entry, list):
        for child in entry:
            yield from _toc_files(child)


def chapters_from_toc(root: Optional[Path] = None) -> list[str]:
    """Names of the executed chapters listed in ``<root>/_toc.yml``, in order.

    An entry ``book/<name>`` is a chapter unless a hand-written page
    ``book/<name>.md`` exists: chapters have no source under ``book/``, only
    the executed copy that the build writes there.
    """
    root = Path(root) if root is not None else default_root()
    toc_path = root / "_toc.yml"
    if not toc_path.is_file():
        raise BookBuildError(f"no table of contents at {toc_path}")
    toc = yaml.safe_load(toc_path.read_text(encoding="utf8"))
    names = []
    for entry in _toc_files(toc):
        entry = re.sub(r"\.(ipynb|md)$", "", entry)
        parent, _, name = entry.rpartition("/")
        if parent == BOOK_DIR and not (root / BOOK_DIR / f"{name}.md").exists():
            names.append(name)
    return names


def resolve_chapters(root: Path, names: Sequence[str]) -> list[Chapter]:
    """Chapters for ``names``; a missing source notebook is an error, not a skip."""
    root = Path(root)
    chapters = [
        Chapter(n, root / NOTEBOOKS_DIR / f"{n}.ipynb", root / BOOK_DIR / f"{n}.ipynb")
        for n in names
    ]
    missing = [c for c in chapters if not c.source.is_file()]
    if missing:
        listed = ", ".join(f"{c.name} ({c.source.relative_to(root)})" for c in missing)
        raise BookBuildError(
            f"chapter source notebook(s) missing: {listed}. Every chapter listed in "
            f"_toc.yml needs notebooks/<name>.ipynb; add it or remove the entry."
        )
    return chapters


# --------------------------------------------------------------------------
# Executing a chapter
# --------------------------------------------------------------------------
def ensure_kernel(name: str = KERNEL_NAME) -> None:
    """Make sure kernel ``name`` runs this interpreter (the venv's python).

    A kernelspec whose ``argv[0]`` is ``python``/``python3`` is started with
    ``sys.executable`` by jupyter_client, so it already points here. Any other
    interpreter (a stale spec from another environment) would run the chapters
    with the wrong packages; then the spec is (re)installed with
    ``python -m ipykernel install --sys-prefix``, which a venv prefers.
    """
    if _kernel_python(name) == Path(sys.executable):
        return
    cmd = [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", name]
    subprocess.run(cmd, check=True, capture_output=True)
    found = _kernel_python(name)
    if found != Path(sys.executable):
        raise BookBuildError(
            f"kernel {name!r} runs {found}, not {sys.executable}; remove the stale "
            f"kernelspec (jupyter kernelspec list) and build again"
        )


def _kernel_python(name: str) -> Optional[Path]:
    """The interpreter kernel ``name`` would start, or None if there is none."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv0 = KernelSpecManager().get_kernel_spec(name).argv[0]
    except NoSuchKernel:
        return None
    if argv0 in {"python", f"python{sys.version_info[0]}",
                 f"python{sys.version_info[0]}.{sys.version_info[1]}"}:
        return Path(sys.executable)  # jupyter_client substitutes sys.executable
    return Path(argv0)


def _kernel_env() -> dict[str, str]:
    """Environment for kernels and Sphinx: ``capslib`` importable from here."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _parameters_index(nb) -> int:
    """Index of the cell tagged ``parameters`` (papermill injects after it)."""
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    return -1


def execute_chapter(chapter: Chapter, profile: str = "smoke") -> None:
    """Run one chapter with papermill into ``chapter.output``; raise on failure.

    The kernel's working directory is the notebook's own folder, as in
    Jupyter and nbval. The executed copy is stripped of run metadata. A cell
    error becomes a :class:`BookBuildError` naming the notebook and the cell.
    """
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source_nb = nbformat.read(chapter.source, as_version=4)
    params_at = _parameters_index(source_nb)
    if params_at < 0:
        raise BookBuildError(
            f"{chapter.source}: no cell tagged 'parameters'; every chapter needs one "
            f'with at least PROFILE = "smoke"'
        )
    chapter.output.parent.mkdir(parents=True, exist_ok=True)
    old_env = os.environ.copy()
    os.environ.update(_kernel_env())  # the kernel inherits this process's environment
    try:
        pm.execute_notebook(
            str(chapter.source), str(chapter.output),
            parameters={"PROFILE": profile}, kernel_name=KERNEL_NAME, language="python",
            cwd=str(chapter.source.parent), progress_bar=False, log_output=False,
        )
    except PapermillExecutionError as err:
        raise BookBuildError(_failure_message(chapter, err, params_at)) from None
    except Exception as err:  # the kernel died, would not start, timed out...
        raise BookBuildError(
            f"chapter {chapter.name!r} ({chapter.source}) could not run: "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    executed = nbformat.read(chapter.output, as_version=4)
    nbformat.write(hide_injected(strip_notebook(executed)), chapter.output)


def _failure_message(chapter: Chapter, err, params_at: int) -> str:
    """Say which notebook and which source cell failed, with the traceback."""
    index = err.cell_index
    if index == params_at + 1:
        where = "the injected parameters cell (check the --profile value)"
    else:
        src_index = index - 1 if index > params_at else index
        first = (err.source or "").strip().splitlines()[:1] or [""]
        where = f"cell {src_index} (0-based, In [{err.exec_count}]): {first[0]!r}"
    tb = _ANSI.sub("", "\n".join(err.traceback or [])) or f"{err.ename}: {err.evalue}"
    return (
        f"chapter {chapter.name!r} failed in {chapter.source}, {where}\n"
        f"{err.ename}: {err.evalue}\n\n{tb}\n\n"
        f"The executed notebook, with the failing cell marked, is {chapter.output}"
    )


# --------------------------------------------------------------------------
# Cleaning executed notebooks
# --------------------------------------------------------------------------
#: Cell metadata written by papermill/nbclient/Jupyter that only describes a run.
_RUN_CELL_KEYS = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")


def strip_notebook(nb, drop_injected: bool = False):
    """A copy of ``nb`` without run-specific metadata, so diffs show real changes.

    Removed: papermill's notebook and per-cell metadata (paths, timestamps,
    durations, status) and nbclient's execution timestamps. Kept: the
    kernelspec, ``language_info`` and ``metadata.widgets`` (the saved widget
    state that makes the static sliders work), cell ids, outputs and
    execution counts. ``drop_injected=True`` also removes papermill's
    ``injected-parameters`` cell, for writing results back to a source.
    """
    nb = copy.deepcopy(nb)
    nb.metadata.pop("papermill", None)
    if drop_injected:
        nb.cells = [c for c in nb.cells if "injected-parameters" not in _tags(c)]
    for cell in nb.cells:
        for key in _RUN_CELL_KEYS:
            cell.metadata.pop(key, None)
        if cell.metadata.get("tags") == []:  # papermill adds an empty list everywhere
            del cell.metadata["tags"]
    return nb


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


#: The tag that makes Jupyter Book (myst-nb) leave a cell out of the rendered page.
HIDDEN_TAG = "remove-cell"


def hide_injected(nb):
    """``nb`` with papermill's ``injected-parameters`` cell tagged :data:`HIDDEN_TAG` (in place; returned).

    The cell stays in the executed notebook, which records what the chapter ran with, but the rendered
    page shows only the chapter's own parameters cell: a reader of the book never set ``PROFILE``.
    """
    for cell in nb.cells:
        tags = _tags(cell)
        if "injected-parameters" in tags and HIDDEN_TAG not in tags:
            cell.metadata["tags"] = [*tags, HIDDEN_TAG]
    return nb


def refresh_source(chapter: Chapter) -> None:
    """Write the executed smoke outputs back to the chapter's source notebook."""
    import nbformat

    executed = nbformat.read(chapter.output, as_version=4)
    nbformat.write(strip_notebook(executed, drop_injected=True), chapter.source)


# --------------------------------------------------------------------------
# Jupyter Book
# --------------------------------------------------------------------------
def run_jupyter_book(root: Path, config: Optional[Path] = None, strict: bool = True) -> Path:
    """Run ``jupyter-book build <root>`` and return the HTML folder.

    ``--all`` rebuilds every page (an offline and an online build differ only
    in config). ``strict`` turns Sphinx warnings into a failed build
    (``-W --keep-going``: all warnings are listed before it fails).
    """
    root = Path(root)
    cmd = [sys.executable, "-c",
           "import sys; from jupyter_book.cli.main import main; "
           "sys.exit(main(prog_name='jupyter-book'))",
           "build", str(root), "--all"]
    if config is not None:
        cmd += ["--config", str(config)]
    if strict:
        cmd += ["-W", "--keep-going"]
    print(f"jupyter-book: building the HTML of {root}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_kernel_env(), cwd=root, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    html_dir = root / "_build" / "html"
    if proc.returncode != 0 or not (html_dir / "index.html").is_file():
        raise BookBuildError(f"jupyter-book build failed (exit {proc.returncode}):\n"
                             f"{_jb_summary(proc.stdout)}")
    for line in proc.stdout.splitlines():
        if "WARNING" in line:  # only reached with strict=False
            print(line, flush=True)
    print(f"jupyter-book: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return html_dir


def _jb_summary(output: str, tail: int = 60) -> str:
    """Warnings and errors of a Jupyter Book run, else its last lines."""
    lines = output.splitlines()
    flagged = [ln for ln in lines if re.search(r"WARNING|ERROR|Error|Exception", ln)]
    return "\n".join(flagged or lines[-tail:])


# --------------------------------------------------------------------------
# The whole build
# --------------------------------------------------------------------------
def build_book(
    profile: str = "smoke",
    offline: bool = False,
    only: Optional[Iterable[str]] = None,
    refresh_sources: bool = False,
    *,
    root: Optional[Path] = None,
    chapters: Optional[Sequence[str]] = None,
    strict: bool = True,
    assets_cache: Optional[Path] = None,
) -> Path:
    """Execute the chapters and build the HTML book; return ``_build/html``.

    ``root`` is the book root (``_config.yml``, ``_toc.yml``, ``notebooks/``,
    ``book/``; default :func:`default_root`); ``chapters`` overrides the list
    read from ``_toc.yml``.
    ``only`` executes a subset; the other chapters reuse their executed copy
    in ``book/``, or else the committed notebook with its smoke outputs.
    Raises :class:`BookBuildError` on any failure.
    """
    root = Path(root if root is not None else default_root()).resolve()
    names = list(chapters) if chapters is not None else chapters_from_toc(root)
    selected = _select(names, only)
    if refresh_sources and profile != "smoke":
        raise BookBuildError("--refresh-sources writes smoke outputs; use --profile smoke")
    all_chapters = resolve_chapters(root, names)
    start = time.perf_counter()
    _execute_all([c for c in all_chapters if c.name in selected], profile)
    _reuse_unexecuted([c for c in all_chapters if c.name not in selected])
    if refresh_sources:
        for chapter in all_chapters:
            if chapter.name in selected:
                refresh_source(chapter)
                print(f"refreshed {chapter.source.relative_to(root)}", flush=True)
    write_generated(root)
    html_dir = _render(root, offline, strict, assets_cache)
    print(f"book built in {time.perf_counter() - start:.1f} s", flush=True)
    print(f"HTML: {html_dir / 'index.html'}", flush=True)
    return html_dir


def _select(names: Sequence[str], only: Optional[Iterable[str]]) -> set[str]:
    """The chapters to execute: all of them, or the ``--only`` subset."""
    if only is None:
        return set(names)
    only = list(only)
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise BookBuildError(f"--only {' '.join(unknown)}: not a chapter; chapters are {names}")
    return set(only)


def _execute_all(chapters: Sequence[Chapter], profile: str) -> None:
    """Execute chapters in order with one progress line each."""
    if chapters:
        ensure_kernel()
    total = len(chapters)
    for i, chapter in enumerate(chapters, start=1):
        print(f"[{i}/{total}] {chapter.name}: running {chapter.source.name} "
              f"(profile {profile})", flush=True)
        t0 = time.perf_counter()
        execute_chapter(chapter, profile)
        print(f"[{i}/{total}] {chapter.name}: done in {time.perf_counter() - t0:.1f} s",
              flush=True)


def _reuse_unexecuted(chapters: Sequence[Chapter]) -> None:
    """Give chapters left out by ``--only`` a page: last executed copy or source."""
    import nbformat

    for chapter in chapters:
        if chapter.output.is_file():
            print(f"{chapter.name}: not executed, reusing {chapter.output.name}", flush=True)
            nb = nbformat.read(chapter.output, as_version=4)
            if any("injected-parameters" in _tags(c) and HIDDEN_TAG not in _tags(c) for c in nb.cells):
                nbformat.write(hide_injected(nb), chapter.output)  # executed by an older build
            continue
        print(f"{chapter.name}: not executed, using the committed outputs of "
              f"{chapter.source.name}", flush=True)
        chapter.output.parent.mkdir(parents=True, exist_ok=True)
        nb = nbformat.read(chapter.source, as_version=4)
        nbformat.write(strip_notebook(nb), chapter.output)


#: Where the build writes the generated parts of hand-written pages, inside ``book/`` (git-ignored), and
#: the one part it generates: the front page's (claims table, headline figure, cost; capslib.book.frontpage).
GENERATED_DIR = "_generated"
FRONT_PAGE = "frontpage.md"
_INCLUDE = re.compile(r"```\{include\}\s+(" + GENERATED_DIR + r"/[\w.-]+)")


def included_fragments(book_dir: Path) -> set[str]:
    """The generated parts (``_generated/<name>``) that a hand-written page of ``book_dir`` includes."""
    found = set()
    for page in Path(book_dir).glob("*.md"):
        found.update(_INCLUDE.findall(page.read_text(encoding="utf8")))
    return found


def write_generated(root: Path) -> list[Path]:
    """Write the generated parts that the hand-written pages of ``<root>/book`` include (``{include}
    _generated/...``): the front page's, from the committed rows of ``results/`` and a few seconds of
    forward passes. Nothing when no page includes one (the test fixture books); an include of an unknown
    part is an error. It runs as its own program (``python -m capslib.book.frontpage``), like the chapters
    and Jupyter Book, so the build does not import what the book shows."""
    wanted = included_fragments(Path(root) / BOOK_DIR)
    if not wanted:
        return []
    unknown = sorted(wanted - {f"{GENERATED_DIR}/{FRONT_PAGE}"})
    if unknown:
        raise BookBuildError(f"book pages include {', '.join(unknown)}, which the build does not generate "
                             f"(it writes {GENERATED_DIR}/{FRONT_PAGE})")
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "capslib.book.frontpage", str(Path(root) / BOOK_DIR)]
    readme = next((p for p in (Path(root) / "README.md", REPO_ROOT / "README.md") if p.is_file()), None)
    if readme is not None:
        cmd += ["--readme", str(readme)]
    proc = subprocess.run(cmd, env=_kernel_env(), cwd=root, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise BookBuildError(f"the front page's generated part could not be written "
                             f"(exit {proc.returncode}):\n{_ANSI.sub('', proc.stdout)[-4000:]}")
    print(f"front page: claims table, headline figure and cost written in {time.perf_counter() - t0:.1f} s",
          flush=True)
    return [Path(line) for line in proc.stdout.split("\n") if line.startswith(str(root))]


def _render(root: Path, offline: bool, strict: bool, assets_cache: Optional[Path]) -> Path:
    """Run Jupyter Book, and for an offline site install and check its assets."""
    if not offline:
        html_dir = run_jupyter_book(root, strict=strict)
        install_widgets_glue(html_dir)
        return html_dir
    packages = fetch_offline_assets(assets_cache if assets_cache is not None else default_root() / ".offline_assets")
    config = write_offline_config(root, root / "_build" / ".offline" / "_config.yml")
    html_dir = run_jupyter_book(root, config=config, strict=strict)
    install_widgets_glue(html_dir)
    install_offline_assets(packages, html_dir)
    remote = remote_scripts(html_dir)
    if remote:
        listed = "\n".join(f"  {page}: {url}" for page, url in remote[:20])
        raise BookBuildError(f"--offline site still loads remote scripts:\n{listed}")
    return html_dir


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def _add_build_commands(sub) -> None:
    """Add ``build`` and its options to an argparse subparsers object."""
    build = sub.add_parser("build", help="execute the chapters and build the HTML book")
    build.add_argument("--profile", default="smoke", choices=list(PROFILES),
                       help="PROFILE passed to every chapter (default: smoke)")
    build.add_argument("--offline", action="store_true",
                       help="serve MathJax and the widget scripts from the site itself")
    build.add_argument("--only", nargs="+", metavar="NAME",
                       help="execute only these chapters (others reuse earlier outputs)")
    build.add_argument("--refresh-sources", action="store_true",
                       help="write executed smoke outputs back to notebooks/ (for nbval)")
    build.add_argument("--root", type=Path, default=None,
                       help="book root (default: this checkout)")
    build.add_argument("--no-strict", dest="strict", action="store_false",
                       help="report Sphinx warnings instead of failing on them")
    build.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    """Run :func:`build_book` from parsed arguments; 1 and a message on failure."""
    try:
        build_book(profile=args.profile, offline=args.offline, only=args.only,
                   refresh_sources=args.refresh_sources, root=args.root, strict=args.strict)
    except BookBuildError as err:
        print(f"book build failed: {err}", file=sys.stderr)
        return 1
    return 0


def register_cli(subparsers) -> None:
    """``capslib book build ...``: the hook that :mod:`capslib.cli` calls."""
    book = subparsers.add_parser("book", help="build the companion book (Jupyter Book)")
    _add_build_commands(book.add_subparsers(dest="book_command", metavar="COMMAND",
                                            required=True))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m capslib.book build ...``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m capslib.book", description=__doc__.split("\n")[0]
    )
    _add_build_commands(parser.add_subparsers(dest="command", metavar="COMMAND",
                                              required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
