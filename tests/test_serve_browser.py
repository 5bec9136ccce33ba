"""The `ddlm serve` page as a person uses it: headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium through /usr/bin/chromedriver, never a download) types a prompt, sets the seed, presses Generate and
waits for the final state; the text on the page must be the library's sample for that seed, the slider must
scrub back to the first step (masks on the page). A screenshot goes into the test's tmp folder."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from ddlm import SequenceModel
from ddlm.serve.server import make_server

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ENABLE = "apt-get install chromium chromium-driver (and pip install selenium) to run the browser test"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,900"]


def chrome(user_data_dir: Path):
    """A headless Chromium under Selenium, offline: the driver and browser paths are given, so Selenium
    Manager (which would look for them on the network) never runs."""
    webdriver = pytest.importorskip("selenium.webdriver", reason=ENABLE)
    from selenium.webdriver.chrome.service import Service

    browser = CHROMIUM if CHROMIUM.exists() else Path(shutil.which("chromium") or "/nonexistent")
    driver_path = CHROMEDRIVER if CHROMEDRIVER.exists() else Path(shutil.which("chromedriver") or "/nonexistent")
    if not (browser.exists() and driver_path.exists()):
        pytest.skip(f"no chromium/chromedriver: {ENABLE}")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, should anything call it, stays off the network
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for flag in FLAGS + [f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)


def test_page_shows_the_librarys_sample_for_the_seed(tiny_run, tmp_path):
    driver = chrome(tmp_path / "profile")  # skips, naming what to install, without selenium or chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = SequenceModel.from_pretrained(tiny_run[0])
    server = make_server(model, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        state = lambda d: d.execute_script("return document.body.dataset.state")  # noqa: E731
        WebDriverWait(driver, 30).until(lambda d: state(d) == "ready")
        for field, value in (("prompt", "And God"), ("seed", "7"), ("steps", "6"), ("length", "16")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 60).until(lambda d: state(d) in ("done", "error"))
        assert state(driver) == "done", driver.find_element(By.ID, "status").text
        shown = driver.execute_script("return document.getElementById('sample-0').textContent")
        expected = model.generate(n=1, length=16, steps=6, seed=7, prompt="And God")
        assert shown == expected.texts[0]
        driver.save_screenshot(str(tmp_path / "serve.png"))
        assert (tmp_path / "serve.png").stat().st_size > 10_000
        # scrub back to the first step: masks on the page, and one frame per step plus the final one
        frames = int(driver.find_element(By.ID, "scrub").get_attribute("max")) + 1
        assert frames == len(list(model.stream(n=1, length=16, steps=6, seed=7, prompt="And God")))
        driver.execute_script("const s = document.getElementById('scrub'); s.value = 0;"
                              "s.dispatchEvent(new Event('input'));")
        first = driver.execute_script("return document.getElementById('sample-0').textContent")
        assert first.startswith("And God") and "_" in first and first != shown
        assert len(driver.find_elements(By.CSS_SELECTOR, "#sample-0 .tok.new")) >= 1
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
