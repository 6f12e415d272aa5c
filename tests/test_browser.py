"""The book in a real browser, with no kernel and no network: a reader's check.

Two books are built with ``--offline``, served from a local ``http.server``
thread and opened in Debian's headless Chromium (selenium + chromium-driver);
every host other than 127.0.0.1 is unresolvable, so a page that still needed a
CDN would fail here.

* The fixture book (``tests/fixtures/book``): panels of known colours, so the
  tests can tell exactly which panel a slider shows.
* The real book (``_toc.yml``): rendered in a temporary folder from the
  chapters the last ``make book`` executed (``book/<name>.ipynb``), else from
  the committed notebooks. Every page of the table of contents loads with no
  console error and no request off the machine, every figure has pixels and is
  shown at its natural size, no table is wider than the text or scrolls inside
  its output, no papermill injected-parameters cell is shown, and every slider
  switches its panel. The front page shows the claims table, one row per verdict
  of the verdict page, whose links all land, and the headline figure at its
  natural size. A full-page screenshot of every page is kept in
  ``artifacts/browser/pages/`` (gitignored).
"""
from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from capslib.book.build import REPO_ROOT, _toc_files, build_book, chapters_from_toc

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FIXTURE = Path(__file__).parent / "fixtures" / "book"
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium not installed (apt-get install -y chromium chromium-driver)",
)

#: Panel background colours of the fixture notebook (tests/fixtures/book).
#: A common laptop window: the book's text column is then 854 px, which the figures are sized for
#: (capslib.book.plots.PAGE_WIDTH_IN at BOOK_DPI), so they are shown at their natural size.
WINDOW = (1440, 1000)

PANELS_RGB = [(0xF4, 0xCC, 0xCC), (0xCF, 0xE2, 0xF3), (0xD9, 0xEA, 0xD3)]  # PR 0, 0.25, 0.5
GRID_RGB = {("8/4", "0"): (0xFF, 0xF2, 0xCC), ("8/4", "0.5"): (0xD9, 0xD2, 0xE9),
            ("16/8", "0"): (0xD0, 0xE0, 0xE3), ("16/8", "0.5"): (0xEA, 0xD1, 0xDC)}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The offline fixture book, served on http://127.0.0.1:<port>/."""
    root = tmp_path_factory.mktemp("browser") / "fixture-book"
    shutil.copytree(FIXTURE, root)
    html = build_book(root=root, offline=True)
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output readable
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium that can reach 127.0.0.1 and nothing else."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-quic",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _explorers(driver) -> list:
    """The cell outputs that hold a slider explorer, in page order."""
    from selenium.webdriver.common.by import By

    return [out for out in driver.find_elements(By.CSS_SELECTOR, ".cell_output")
            if out.find_elements(By.CSS_SELECTOR, ".noUi-handle")]


def _visible_panels(explorer) -> list:
    """The widget images of an explorer that are currently displayed."""
    from selenium.webdriver.common.by import By

    return [img for img in explorer.find_elements(By.CSS_SELECTOR, ".widget-image")
            if img.is_displayed()]


def _readouts(explorer) -> list[str]:
    from selenium.webdriver.common.by import By

    return [r.text for r in explorer.find_elements(By.CSS_SELECTOR, ".widget-readout")]


def _shown_rgb(driver, explorer) -> tuple[int, int, int]:
    """Background colour of the one visible panel (a pixel above-left of its text)."""
    panels = _visible_panels(explorer)
    assert len(panels) == 1, f"{len(panels)} panels visible"
    return tuple(driver.execute_script(
        """const img = arguments[0], c = document.createElement('canvas');
           c.width = img.naturalWidth; c.height = img.naturalHeight;
           const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
           const x = Math.floor(c.width * 0.2), y = Math.floor(c.height * 0.25);
           return Array.from(ctx.getImageData(x, y, 1, 1).data).slice(0, 3);""",
        panels[0],
    ))


def _close(rgb, expected, tol=12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(rgb, expected))


def _press(driver, explorer, slider: int, key) -> None:
    """Focus the explorer's ``slider``-th handle and press ``key``."""
    from selenium.webdriver.common.by import By

    handle = explorer.find_elements(By.CSS_SELECTOR, ".noUi-handle")[slider]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle)
    handle.click()
    handle.send_keys(key)


@pytest.fixture
def page(site, browser):
    """book/demo.html, loaded, with its math typeset and its widgets rendered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{site}/book/demo.html")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "mjx-container mjx-math"))
    wait.until(lambda d: len(_explorers(d)) == 2
               and all(len(_visible_panels(e)) == 1 for e in _explorers(d)))
    return browser


def test_page_shows_figure_math_and_sliders(page):
    from selenium.webdriver.common.by import By

    figures = [img for img in page.find_elements(By.CSS_SELECTOR, "img")
               if "/_images/" in (img.get_attribute("src") or "")]
    assert figures and page.execute_script("return arguments[0].naturalWidth", figures[0]) > 0
    assert page.find_elements(By.CSS_SELECTOR, "mjx-container mjx-math")
    panels, grid = _explorers(page)
    assert _readouts(panels) == ["0"] and _readouts(grid) == ["8/4", "0"]


def test_slider_switches_panel_without_kernel(page):
    """Moving the slider with the keyboard shows the next precomputed panel."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    explorer = _explorers(page)[0]
    assert _close(_shown_rgb(page, explorer), PANELS_RGB[0])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _press(page, explorer, 0, Keys.HOME)
    page.save_screenshot(str(ARTIFACTS / "slider_before.png"))
    _press(page, explorer, 0, Keys.ARROW_RIGHT)
    WebDriverWait(page, 10).until(lambda d: _readouts(explorer) == ["0.25"])
    assert _close(_shown_rgb(page, explorer), PANELS_RGB[1])
    page.save_screenshot(str(ARTIFACTS / "slider_after.png"))


def test_grid_sliders_switch_panels_without_kernel(page):
    """In slider_grid the PR slider keeps its position when C/D changes."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    grid = _explorers(page)[1]
    wait = WebDriverWait(page, 10)
    assert _close(_shown_rgb(page, grid), GRID_RGB[("8/4", "0")])
    _press(page, grid, 1, Keys.ARROW_RIGHT)  # PR 0 -> 0.5
    wait.until(lambda d: _readouts(grid) == ["8/4", "0.5"])
    assert _close(_shown_rgb(page, grid), GRID_RGB[("8/4", "0.5")])
    _press(page, grid, 0, Keys.ARROW_RIGHT)  # C/D 8/4 -> 16/8
    wait.until(lambda d: _readouts(grid) == ["16/8", "0.5"])
    assert _close(_shown_rgb(page, grid), GRID_RGB[("16/8", "0.5")])
    page.save_screenshot(str(ARTIFACTS / "grid_after.png"))


def test_page_loaded_only_local_resources(site, page):
    """No request left 127.0.0.1 and the console holds no error: no script threw, no request failed,
    and no page script logged an error (the theme's "invalid theme mode" included)."""
    resources = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    remote = [u for u in resources if not u.startswith((site, "blob:", "data:"))]
    assert remote == []
    assert _console_errors(page) == []


def test_every_widget_module_resolves_its_fonts_to_the_managers_folder(site, page):
    """The manager's modules take their font URLs from their own require.js URLs; all of them must
    point into the offline html-manager folder (else a font 404s, depending on load order)."""
    folder = f"{site}/_static/offline/html-manager/"
    for module in ("@jupyter-widgets/base", "@jupyter-widgets/controls", "@jupyter-widgets/html-manager",
                   "@jupyter-widgets/html-manager/dist/libembed-amd"):
        url = page.execute_script("return new URL(requirejs.toUrl(arguments[0]), document.baseURI).href", module)
        assert url.startswith(folder) and url.rsplit("/", 1)[0] + "/" == folder, (module, url)
    fonts = page.execute_script(  # the manager's fonts carry webpack's 20-hex-digit names
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(u => /\\/[0-9a-f]{20}\\.(woff2?|ttf)$/.test(u))")
    assert fonts and all(u.startswith(folder) for u in fonts), fonts


def _console_errors(driver) -> list[str]:
    """Every error-level console entry since the last call (uncaught exceptions, failed loads, console.error)."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]]


# ======================================================================================
# The real book
# ======================================================================================
def _toc_pages(root: Path) -> list[str]:
    """``book/<name>`` of every page of ``_toc.yml``, in reading order."""
    import re

    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf8"))
    return [re.sub(r"\.(ipynb|md)$", "", f) for f in _toc_files(toc)]


REAL_PAGES = _toc_pages(REPO_ROOT)
PAGE_SHOTS = ARTIFACTS / "pages"


@pytest.fixture(scope="module")
def real_site(tmp_path_factory):
    """The real book rendered (not executed) in a temporary folder, served on 127.0.0.1.

    Chapters come from ``book/<name>.ipynb`` when ``make book`` executed them, else from the committed
    ``notebooks/<name>.ipynb``; nothing is written into the checkout but the offline assets cache.
    """
    root = tmp_path_factory.mktemp("browser") / "real-book"
    (root / "book").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "notebooks", root / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for page in REPO_ROOT.glob("book/*.md"):
        shutil.copy2(page, root / "book" / page.name)
    for name in chapters_from_toc(REPO_ROOT):
        executed = REPO_ROOT / "book" / f"{name}.ipynb"
        if executed.is_file():
            shutil.copy2(executed, root / "book" / executed.name)
    html = build_book(root=root, offline=True, only=[], assets_cache=REPO_ROOT / ".offline_assets")
    built = sorted(str(p.relative_to(html).with_suffix("")) for p in (html / "book").glob("*.html"))
    assert built == sorted(REAL_PAGES), "the HTML pages are not exactly the pages of _toc.yml"
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


_PIXELS_JS = """
const img = arguments[0];
if (!img.complete || img.naturalWidth === 0) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
const seen = new Set();
for (let i = 0; i < d.length; i += 4 * 97) { seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]); if (seen.size > 8) break; }
return {colours: seen.size, natural: img.naturalWidth, shown: img.getBoundingClientRect().width};
"""


#: Where a table sits against the text column: its width and right edge, the column's content edge, and the
#: first element between the table and the article that scrolls sideways (the table is cut off there).
_TABLE_FIT_JS = """
const t = arguments[0], art = arguments[1];
const r = t.getBoundingClientRect(), a = art.getBoundingClientRect(), cs = getComputedStyle(art);
let clipped = null;
for (let e = t.parentElement; e && e !== art; e = e.parentElement) {
  if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible') {
    clipped = (e.tagName + '.' + (e.className || '')).slice(0, 60); break;
  }
}
return {width: Math.max(r.width, t.scrollWidth), right: r.right, edge: a.right - parseFloat(cs.paddingRight),
        clipped: clipped};
"""


def _table_problems(driver, article) -> list[str]:
    """Every table of the article that is wider than the text column or cut off by a scrolling container."""
    from selenium.webdriver.common.by import By

    problems = []
    width = driver.execute_script("return arguments[0].clientWidth", article)
    for table in article.find_elements(By.CSS_SELECTOR, "table"):
        fit = driver.execute_script(_TABLE_FIT_JS, table, article)
        first = table.text.splitlines()[0][:80] if table.text else ""
        if fit["width"] > width + 1 or fit["right"] > fit["edge"] + 1:
            problems.append(f"table {fit['width']:.0f} px wide in a {width} px column: {first}")
        elif fit["clipped"]:
            problems.append(f"table cut off by a scrolling {fit['clipped']}: {first}")
    return problems


def _injected_cells(driver) -> list[str]:
    """Cells of papermill's injected parameters that the page shows (their tag class or their comment)."""
    from selenium.webdriver.common.by import By

    shown = driver.find_elements(By.CSS_SELECTOR, ".tag_injected-parameters")
    shown += [c for c in driver.find_elements(By.CSS_SELECTOR, ".cell_input")
              if c.text.lstrip().startswith("# Parameters")]
    return [c.text[:60] for c in shown]


def _image_ok(driver, img) -> dict:
    """Pixel facts of a loaded image (None when it has no pixels)."""
    return driver.execute_script(_PIXELS_JS, img)


def _wait_for_widgets(driver, timeout: float = 180) -> list:
    """Wait until every widget view of the page is rendered with one visible panel; return the explorers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    views = len(driver.find_elements(By.CSS_SELECTOR, 'script[type="application/vnd.jupyter.widget-view+json"]'))
    WebDriverWait(driver, timeout).until(
        lambda d: len(_explorers(d)) == views and all(len(_visible_panels(e)) == 1 for e in _explorers(d)))
    return _explorers(driver)


def _save_full_page(driver, name: str, tile: int = 4000) -> list[Path]:
    """Screenshots of the whole page as a reader scrolls it: the window made ``tile`` px tall, one PNG per
    window-full (``<name>-01.png``, ...; one ``<name>.png`` when the page fits)."""
    PAGE_SHOTS.mkdir(parents=True, exist_ok=True)
    for old in PAGE_SHOTS.glob(f"{name}*.png"):
        old.unlink()
    driver.set_window_size(WINDOW[0], tile)
    try:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        view = driver.execute_script("return window.innerHeight")
        tops = list(range(0, max(height - view, 0) + 1, view)) or [0]
        if tops[-1] < height - view:
            tops.append(height - view)
        paths = []
        for i, top in enumerate(tops, start=1):
            driver.execute_script("window.scrollTo(0, arguments[0])", top)
            path = PAGE_SHOTS / (f"{name}.png" if len(tops) == 1 else f"{name}-{i:02d}.png")
            driver.save_screenshot(str(path))
            paths.append(path)
        return paths
    finally:
        driver.set_window_size(*WINDOW)


@pytest.mark.parametrize("name", REAL_PAGES)
def test_real_book_page_as_a_reader_sees_it(real_site, browser, name):
    """One page of the real book: loads offline with no console error, every figure has pixels and is
    shown at its natural size, no table overflows the text, no link to a placeholder repository, every
    slider of every explorer switches its panel; a full-page screenshot is kept."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _console_errors(browser)  # drop what earlier pages logged
    browser.get(f"{real_site}/{name}.html")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    if browser.find_elements(By.CSS_SELECTOR, "div.math, span.math"):
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "mjx-container mjx-math"))
    explorers = _wait_for_widgets(browser)
    article = browser.find_element(By.CSS_SELECTOR, "article.bd-article")

    # figures: every image in the text (static figures and the visible slider panels) has pixels
    problems = []
    for img in article.find_elements(By.CSS_SELECTOR, "img"):
        if not img.is_displayed():
            continue  # a panel a slider does not show now; checked below when it does
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", img)
        WebDriverWait(browser, 20).until(lambda d: _image_ok(d, img) is not None)
        facts = _image_ok(browser, img)
        src = (img.get_attribute("src") or "")[-60:]
        if facts["colours"] < 2:
            problems.append(f"blank image {src}")
        elif facts["natural"] > 1.05 * facts["shown"] + 1:  # downscaled: its text is smaller than drawn
            problems.append(f"image {src} is {facts['natural']} px wide but shown at {facts['shown']:.0f} px")
    # tables: none wider than the text column, none cut off inside a scrolling output
    problems += _table_problems(browser, article)
    # papermill's injected-parameters cell is hidden (tagged remove-cell by the build)
    problems += [f"injected-parameters cell shown: {text!r}" for text in _injected_cells(browser)]
    # links: no button to a repository, Binder or Colab that does not exist
    hrefs = [a.get_attribute("href") or "" for a in browser.find_elements(By.CSS_SELECTOR, "a")]
    problems += [f"placeholder link {h}" for h in hrefs
                 if "your-org" in h or "mybinder.org" in h or "colab.research.google.com" in h]

    # sliders: each one moves to its last position and shows a different panel, then back
    for explorer in explorers:
        handles = explorer.find_elements(By.CSS_SELECTOR, ".noUi-handle")
        for k in range(len(handles)):
            before_read, before_panel = _readouts(explorer), _visible_panels(explorer)[0]
            _press(browser, explorer, k, Keys.END)
            try:
                WebDriverWait(browser, 10).until(lambda d: _readouts(explorer) != before_read)
            except Exception:
                continue  # a slider with a single position has nothing to switch
            WebDriverWait(browser, 10).until(lambda d: len(_visible_panels(explorer)) == 1
                                             and _visible_panels(explorer)[0].id != before_panel.id)
            shown = _visible_panels(explorer)[0]
            WebDriverWait(browser, 20).until(lambda d: _image_ok(d, shown) is not None)
            if _image_ok(browser, shown)["colours"] < 2:
                problems.append(f"slider {k} of an explorer shows a blank panel at {_readouts(explorer)}")
            _press(browser, explorer, k, Keys.HOME)
            WebDriverWait(browser, 10).until(lambda d: _readouts(explorer) == before_read)

    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    problems += [f"remote request {u}" for u in resources if not u.startswith((real_site, "blob:", "data:"))]
    browser.execute_script("window.scrollTo(0, 0)")
    _save_full_page(browser, name.replace("/", "_"))
    problems += [f"console: {m}" for m in _console_errors(browser)]
    assert problems == [], "\n".join(problems)


def test_front_page_shows_the_claims_table_and_the_headline_figure(real_site, browser):
    """The front page opens with the claims table (one row per verdict of the verdict page, a badge that opens
    to the full verdict, links that land on an existing claim or section) and the headline figure, with
    pixels, at its natural size."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def load(page):
        browser.get(f"{real_site}/book/{page}")
        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")

    load("verdicts.html")
    verdict_ids = [e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, "span[id^='claim-']")]
    assert verdict_ids == [f"claim-{i}" for i in range(1, len(verdict_ids) + 1)] and len(verdict_ids) >= 8
    own = browser.find_elements(By.CSS_SELECTOR, "table.capslib-claims tbody tr")
    assert len(own) == len(verdict_ids), "the verdict page's table has one row per claim block"

    load("intro.html")
    article = browser.find_element(By.CSS_SELECTOR, "article.bd-article")
    rows = article.find_elements(By.CSS_SELECTOR, "table.capslib-claims tbody tr")
    assert len(rows) == len(verdict_ids), f"{len(rows)} claims on the front page, {len(verdict_ids)} verdicts"
    first = rows[0].find_element(By.CSS_SELECTOR, "details")
    full = first.find_element(By.CSS_SELECTOR, "p")
    assert not full.is_displayed(), "the full verdict is folded under its badge"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", first)
    first.find_element(By.CSS_SELECTOR, "summary").click()
    WebDriverWait(browser, 5).until(lambda d: full.is_displayed())
    assert len(full.text) > len(first.find_element(By.CSS_SELECTOR, "summary").text)
    assert _table_problems(browser, article) == []
    links = article.find_elements(By.CSS_SELECTOR, "table.capslib-claims a")
    targets = sorted({a.get_attribute("href") for a in links})

    figure = [img for img in article.find_elements(By.CSS_SELECTOR, "img")
              if "headline" in (img.get_attribute("src") or "")]
    assert len(figure) == 1, "one headline figure on the front page"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", figure[0])
    WebDriverWait(browser, 20).until(lambda d: _image_ok(d, figure[0]) is not None)
    facts = _image_ok(browser, figure[0])
    assert facts["colours"] > 8 and facts["natural"] >= 700, facts
    assert abs(facts["natural"] - facts["shown"]) <= 1, f"shown at {facts['shown']:.0f} px, drawn at {facts['natural']}"
    caption = article.find_element(By.CSS_SELECTOR, "figure figcaption").text
    assert 2 <= caption.count(". ") + 1 <= 5 and "I = " in caption

    missing = []
    for href in targets:  # every link of the table lands on an element that exists
        page, _, fragment = href.partition("#")
        browser.get(page)
        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
        if fragment and not browser.find_elements(By.ID, fragment):
            missing.append(href.rsplit("/", 1)[-1])
    assert missing == [], f"links to nothing: {missing}"
