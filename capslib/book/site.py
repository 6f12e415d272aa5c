"""What the built book serves and how Sphinx renders it.

* Offline assets: require.js, the ipywidgets HTML manager and MathJax, fetched from npm (pinned) and
  copied into the built site, plus the small widgets glue script every site gets; ``remote_scripts``
  checks that an offline site loads nothing over the network.
* A tiny Sphinx extension (``setup``, listed in ``_config.yml``): it points the Binder and Colab
  launch buttons at ``notebooks/<name>.ipynb``, since the executed copies under ``book/`` are not
  committed, and drops duplicated inline scripts.

Used by :mod:`capslib.book.build`; imports nothing of capslib.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import yaml

__all__ = ["BookBuildError", "fetch_offline_assets", "install_offline_assets", "install_widgets_glue",
           "offline_sphinx_config", "remote_scripts", "setup", "write_offline_config", "WIDGETS_GLUE"]

NOTEBOOKS_DIR = "notebooks"  # committed chapter sources, with smoke outputs
BOOK_DIR = "book"            # hand-written pages and executed chapter copies


class BookBuildError(RuntimeError):
    """The book could not be built; the message says which step and why."""


#: npm packages served by an offline build, pinned so every build is the same.
REQUIREJS_VERSION = "2.3.7"
HTML_MANAGER_VERSION = "1.0.15"  # @jupyter-widgets/html-manager for ipywidgets 8.1
MATHJAX_VERSION = "3.2.2"
OFFLINE_PACKAGES = {
    "requirejs": REQUIREJS_VERSION,
    "@jupyter-widgets/html-manager": HTML_MANAGER_VERSION,
    "mathjax": MATHJAX_VERSION,
}
#: Where the offline assets go inside the built site, relative to ``_static``.
OFFLINE_STATIC = "offline"
MATHJAX_BUNDLE = "tex-chtml.js"

#: A small script written into every built site and listed first in
#: ``nb_ipywidgets_js``; its ``data-assets-path`` names the manager's folder.
WIDGETS_GLUE = "capslib/widgets-glue.js"
_WIDGETS_GLUE_JS = r"""/* Written by capslib.book; loaded before the ipywidgets HTML manager.
 * 1. Fonts: each module of the manager's bundle (@jupyter-widgets/base, controls,
 *    html-manager, ...) resolves its web fonts against its own require.js URL, which
 *    without a `paths` entry is relative to the page (a 404, depending on which
 *    module's stylesheet wins). data-assets-path names the manager's folder, which
 *    holds the fonts; map every @jupyter-widgets module there.
 * 2. MathJax: ipywidgets 8 typesets widget labels with the MathJax v2 call
 *    MathJax.Hub.Queue, which throws under the book's MathJax v3; route it to
 *    MathJax.typesetPromise instead. */
(function () {
  "use strict";
  var me = document.currentScript;
  var assets = me && me.getAttribute("data-assets-path");
  if (assets) {
    var base = new URL(assets, me.src).href;
    var folder = base.replace(/\/$/, "");
    var paths = {"@jupyter-widgets": folder, "@jupyter-widgets/html-manager/dist": folder};
    window.__jupyter_widgets_assets_path__ = base;
    if (typeof window.require === "function" && window.require.config) {
      window.require.config({paths: paths});
    } else {
      window.require = {paths: paths};  /* require.js reads this object as its config */
    }
  }
  var hub = {
    Queue: function (job) {
      var mj = window.MathJax, el = job && job[2];
      if (el && mj && mj.typesetPromise) {
        mj.typesetPromise([el]).catch(function (err) { console.warn("MathJax:", err); });
      }
    }
  };
  window.MathJax = window.MathJax || {};
  window.MathJax.Hub = hub;  /* for widgets rendered before MathJax v3 starts */
  var startup = window.MathJax.startup = window.MathJax.startup || {};
  var ready = startup.ready;
  startup.ready = function () {
    if (ready) { ready(); } else { window.MathJax.startup.defaultReady(); }
    window.MathJax.Hub = hub;  /* MathJax v3 replaced window.MathJax */
  };
})();
"""


# --------------------------------------------------------------------------
# Offline assets
# --------------------------------------------------------------------------
def _package_dir(cache: Path, name: str, version: str) -> Path:
    """Where npm package ``name@version`` is unpacked inside ``cache``."""
    return cache / f"{name.replace('@', '').replace('/', '-')}-{version}" / "package"


def fetch_offline_assets(cache: Path) -> dict[str, Path]:
    """Unpacked npm packages for an offline site, fetched once into ``cache``.

    ``npm pack`` downloads the registry's tarball and checks its integrity
    without installing any dependency (all three packages ship ready bundles).
    ``cache``: the build passes ``.offline_assets/`` of this checkout (gitignored).
    Returns ``{package name: unpacked package folder}``.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, version in OFFLINE_PACKAGES.items():
        folder = _package_dir(cache, name, version)
        if not (folder / "package.json").is_file():
            _npm_unpack(f"{name}@{version}", folder.parent, cache)
        found[name] = folder
    return found


def _npm_unpack(spec: str, dest: Path, cache: Path) -> None:
    """``npm pack spec`` into ``cache`` and extract the tarball into ``dest``."""
    npm = shutil.which("npm")
    if npm is None:
        raise BookBuildError(
            "--offline needs npm (Node.js) to fetch MathJax and the widget manager"
        )
    print(f"fetching {spec} from the npm registry", flush=True)
    proc = subprocess.run(
        [npm, "pack", spec, "--pack-destination", str(cache), "--silent"],
        capture_output=True, text=True,
    )
    tarball = cache / (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0 or not tarball.is_file():
        raise BookBuildError(f"npm pack {spec} failed:\n{proc.stderr.strip()}")
    partial = dest.with_name(dest.name + ".partial")  # never leave half a package
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(partial, filter="data")
    tarball.unlink()
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)


def install_offline_assets(packages: dict[str, Path], html_dir: Path) -> Path:
    """Copy the offline assets into ``<html_dir>/_static/offline`` and return it.

    MathJax keeps its component folders (it lazy-loads fonts and extensions
    relative to its own script); the widget manager keeps its web fonts.
    """
    dest = Path(html_dir) / "_static" / OFFLINE_STATIC
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy2(packages["requirejs"] / "require.js", dest / "require.js")
    manager = dest / "html-manager"
    manager.mkdir()
    for f in (packages["@jupyter-widgets/html-manager"] / "dist").iterdir():
        if f.name == "embed-amd.js" or f.suffix in {".woff", ".woff2"}:
            shutil.copy2(f, manager / f.name)
    es5 = packages["mathjax"] / "es5"
    mathjax = dest / "mathjax"
    mathjax.mkdir()
    shutil.copy2(es5 / MATHJAX_BUNDLE, mathjax / MATHJAX_BUNDLE)
    for sub in ("input", "output", "ui", "a11y", "adaptors", "sre"):
        shutil.copytree(es5 / sub, mathjax / sub)
    return dest


def install_widgets_glue(html_dir: Path) -> Path:
    """Write the widgets glue script (see ``_WIDGETS_GLUE_JS``) into the built site.

    It goes into the *built* ``_static``, like the offline assets: a ``.js``
    in the source ``_static`` would be injected into every page.
    """
    dest = Path(html_dir) / "_static" / WIDGETS_GLUE
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(_WIDGETS_GLUE_JS, encoding="utf8")
    return dest


def offline_sphinx_config() -> dict:
    """Sphinx settings that load MathJax and the widget scripts from the site.

    Relative paths are resolved by Sphinx against ``_static`` of the built
    site, which is where :func:`install_offline_assets` puts the files.
    """
    return {
        "mathjax_path": f"{OFFLINE_STATIC}/mathjax/{MATHJAX_BUNDLE}",
        "nb_ipywidgets_js": {
            WIDGETS_GLUE: {"data-assets-path": f"../{OFFLINE_STATIC}/html-manager/"},
            f"{OFFLINE_STATIC}/require.js": {},
            f"{OFFLINE_STATIC}/html-manager/embed-amd.js": {},
        },
    }


def write_offline_config(root: Path, dest: Path) -> Path:
    """``<root>/_config.yml`` plus :func:`offline_sphinx_config`, written to ``dest``."""
    config = yaml.safe_load((Path(root) / "_config.yml").read_text(encoding="utf8")) or {}
    sphinx_config = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx_config.update(offline_sphinx_config())
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf8")
    return dest


class _ScriptSources(HTMLParser):
    """Collect ``<script src>`` and stylesheet ``<link href>`` URLs of a page."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.urls.append(attrs["src"])
        elif tag == "link" and "stylesheet" in (attrs.get("rel") or "") and attrs.get("href"):
            self.urls.append(attrs["href"])


def remote_scripts(html_dir: Path) -> list[tuple[str, str]]:
    """``(page, url)`` for every script or stylesheet a page loads over http(s)."""
    found = []
    for page in sorted(Path(html_dir).rglob("*.html")):
        parser = _ScriptSources()
        parser.feed(page.read_text(encoding="utf8", errors="replace"))
        rel = str(page.relative_to(html_dir))
        found += [(rel, u) for u in parser.urls if re.match(r"(https?:)?//", u)]
    return found


# --------------------------------------------------------------------------
# Sphinx extension: launch buttons open the committed source notebooks
# --------------------------------------------------------------------------
def _fix_launch_urls(app, pagename, templatename, context, doctree) -> None:
    """Point Binder/Colab buttons of ``book/<name>`` at ``notebooks/<name>.ipynb``.

    sphinx-book-theme links ``<repo>/book/<name>.ipynb``, the executed copy,
    which is a build output and not in the repository.
    """
    if not pagename.startswith(f"{BOOK_DIR}/"):
        return
    name = pagename.split("/", 1)[1]
    old, new = f"{BOOK_DIR}/{name}.ipynb", f"{NOTEBOOKS_DIR}/{name}.ipynb"

    def fix(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "url" and isinstance(value, str):
                    node[key] = value.replace(old, new)
                else:
                    fix(value)
        elif isinstance(node, list):
            for value in node:
                fix(value)

    fix(context.get("header_buttons", []))


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    """Drop repeated ``<script>`` entries from a page.

    Under Jupyter Book 1, sphinx-thebe and sphinx-togglebutton register their
    inline configuration twice; the second ``const THEBE_JS_URL`` is a
    SyntaxError in every page's console, which would hide real errors.
    """
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {}) or {}
        filename = str(getattr(script, "filename", script) or "")  # None and "" alike
        key = (filename, tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    """Sphinx entry point (``sphinx: extra_extensions: [capslib.book.site]``)."""
    app.connect("html-page-context", _fix_launch_urls, priority=900)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
