"""The static slider works in a real browser, with no kernel and no network.

Builds the fixture book with ``--offline``, serves it from a local
``http.server`` thread and opens it in Debian's headless Chromium (selenium +
chromium-driver). Every host other than 127.0.0.1 is unresolvable, so a page
that still needed a CDN would fail here. Screenshots are kept in
``artifacts/browser/`` (gitignored).
"""
from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from capslib.book import REPO_ROOT, build_book

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FIXTURE = Path(__file__).parent / "fixtures" / "book"
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium not installed (apt-get install -y chromium chromium-driver)",
)

#: Panel background colours of the fixture notebook (tests/fixtures/book).
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
        "--window-size=1200,1000",
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
    """No request left 127.0.0.1, no script threw and no request failed.

    Console messages that page scripts log on purpose (the theme logs one as
    an error on a fresh profile) are not failures; uncaught exceptions
    ("javascript") and failed loads ("network") are.
    """
    resources = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    remote = [u for u in resources if not u.startswith((site, "blob:", "data:"))]
    assert remote == []
    errors = [entry["message"] for entry in page.get_log("browser")
              if entry["level"] == "SEVERE" and entry["source"] in ("javascript", "network")
              and "favicon.ico" not in entry["message"]]
    assert errors == []


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
