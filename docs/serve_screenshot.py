"""Draw docs/serve.png: `ddlm serve MODEL` in headless Chromium (Debian's chromium + chromium-driver, Selenium),
one generation (ancestral sampler by default; --sampler planned --planner NAME for a decoding order), scrubbed back to a step in the middle so masks, new tokens and
confidence colours all show.

    .venv/bin/python docs/serve_screenshot.py runs/demo docs/serve.png [--prompt TEXT] [--sampler NAME] [--at 0.6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading

import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from ddlm import SequenceModel
from ddlm.serve.server import make_server

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1100,760", "--hide-scrollbars"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--prompt", default="And God said")
    ap.add_argument("--length", default="128")
    ap.add_argument("--steps", default="64")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--sampler", default="ancestral")
    ap.add_argument("--planner", default="top_margin")
    ap.add_argument("--at", type=float, default=0.6, help="the step shown, as a fraction of the run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ["SE_OFFLINE"] = "true"
    server = make_server(SequenceModel.from_pretrained(args.model), port=0, name=args.model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        for flag in FLAGS + [f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        try:
            driver.get(f"http://127.0.0.1:{server.server_port}/")
            state = lambda d: d.execute_script("return document.body.dataset.state")  # noqa: E731
            WebDriverWait(driver, 30).until(lambda d: state(d) == "ready")
            kind = driver.execute_script("return document.getElementById('puzzle-box').hidden") and "text"
            if kind == "text":
                Select(driver.find_element(By.ID, "sampler")).select_by_value(args.sampler)
                if args.sampler == "planned":
                    Select(driver.find_element(By.ID, "planner")).select_by_value(args.planner)
                for field in ("prompt", "length", "steps", "seed"):
                    box = driver.find_element(By.ID, field)
                    box.clear()
                    box.send_keys(getattr(args, field))
            driver.find_element(By.ID, "generate").click()
            WebDriverWait(driver, 300).until(lambda d: state(d) == "done")
            last = int(driver.find_element(By.ID, "scrub").get_attribute("max"))
            driver.execute_script("const s = document.getElementById('scrub'); s.value = arguments[0];"
                                  "s.dispatchEvent(new Event('input'));", int(args.at * last))
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
            server.shutdown()


if __name__ == "__main__":
    main()
