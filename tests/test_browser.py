"""The page of ``siamdiff serve`` in a real browser (Debian's chromium driven by Playwright): compare two images,
search an index, denoise a noisy image, see an error; the tabs work from the keyboard.

With ``SIAMDIFF_SCREENSHOTS=docs/images`` it also writes the README's screenshots of the three panes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("SIAMDIFF_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'siamdiff[web]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium, or set SIAMDIFF_CHROMIUM)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def server(digit_folder, tmp_path_factory):
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.index import build_index

    index = tmp_path_factory.mktemp("browser") / "digits.index"
    build_index(digit_folder, SimilarityModel.load("mnist"), index)
    proc = subprocess.Popen([sys.executable, "-m", "siamdiff", "serve", "--port", "0", "--model", "mnist",
                             "--index", str(index)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
    if not match:
        proc.kill()
        pytest.fail(f"the server did not start: {line}{proc.stderr.read()}")
    yield match.group(1)
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1000, "height": 760})
        tab.set_default_timeout(60_000)
        tab.goto(server)
        sync_api.expect(tab.locator("#status")).to_contain_text("1 similarity model")
        yield tab
        browser.close()


def shoot(page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("SIAMDIFF_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"serve-{name}.png"), full_page=True)
    assert (folder / f"serve-{name}.png").stat().st_size > 1000


def test_compare_two_images(page, digit_folder, tmp_path):
    sevens = sorted((digit_folder / "7").glob("*.png"))
    pane = page.locator("#pane-compare")
    pane.locator("input[name=a]").set_input_files(str(sevens[0]))
    pane.locator("input[name=b]").set_input_files(str(sevens[1]))
    pane.get_by_label("Show why").check()
    pane.get_by_role("button", name="Compare").click()
    sync_api.expect(page.locator("#compare-result")).to_be_visible()
    sync_api.expect(page.locator("#compare-why-figure")).to_be_visible()
    page.wait_for_function("() => document.querySelector('#compare-why').naturalWidth > 100")  # a real picture
    score = float(page.locator("#compare-score").inner_text())
    assert 0.0 <= score <= 1.0
    sync_api.expect(page.locator("#compare-decision")).to_have_text(re.compile("category"))
    sync_api.expect(page.locator("#compare-details")).to_contain_text("distance")
    shoot(page, "compare", tmp_path)


def test_search_an_index(page, digit_folder, tmp_path):
    page.get_by_role("tab", name="Search").click()
    query = sorted((digit_folder / "3").glob("*.png"))[0]
    pane = page.locator("#pane-search")
    pane.locator("input[name=image]").set_input_files(str(query))
    pane.get_by_role("button", name="Search").click()
    results = page.locator("#search-results li")
    sync_api.expect(results).to_have_count(8)
    sync_api.expect(results.first.locator("img")).to_have_attribute("alt", str(query.resolve()))
    # every thumbnail loads (they arrive after the list: wait for them, as the page's reader does)
    page.wait_for_function("[...document.querySelectorAll('#search-results img')].every(i => i.naturalWidth > 0)")
    shoot(page, "search", tmp_path)


def test_denoise_a_noisy_image_and_see_an_error(page, digit_folder, tmp_path):
    from PIL import Image

    clean = np.asarray(Image.open(sorted((digit_folder / "8").glob("*.png"))[0]), dtype=np.float64) / 255
    noisy = np.clip(clean + 0.3 * np.random.default_rng(0).standard_normal(clean.shape), 0, 1)
    noisy_file = tmp_path / "noisy-eight.png"
    Image.fromarray(np.rint(noisy * 255).astype(np.uint8)).save(noisy_file)
    page.get_by_role("tab", name="Denoise").click()
    pane = page.locator("#pane-denoise")
    pane.locator("input[name=image]").set_input_files(str(noisy_file))
    pane.locator("select[name=method]").select_option("ddim")
    pane.locator("input[name=chain]").check()
    pane.get_by_role("button", name="Denoise").click()
    sync_api.expect(page.locator("#denoise-after")).to_have_attribute("src", re.compile("^data:image/png;base64,"))
    sync_api.expect(page.locator("#denoise-details")).to_contain_text("estimated")
    sync_api.expect(page.locator("#denoise-chain-figure")).to_be_visible()
    assert page.evaluate("document.getElementById('denoise-after').naturalWidth") == 28
    shoot(page, "denoise", tmp_path)

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture\n")
    pane.locator("input[name=image]").set_input_files(str(text_file))
    pane.get_by_role("button", name="Denoise").click()
    error = pane.locator(".error")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_contain_text("not an image file")


def test_tabs_work_from_the_keyboard(page):
    page.get_by_role("tab", name="Compare").click()
    page.keyboard.press("ArrowRight")
    sync_api.expect(page.get_by_role("tab", name="Search")).to_have_attribute("aria-selected", "true")
    sync_api.expect(page.locator("#pane-search")).to_be_visible()
    sync_api.expect(page.locator("#pane-compare")).to_be_hidden()
    page.keyboard.press("End")
    sync_api.expect(page.locator("#pane-denoise")).to_be_visible()
