"""The README's picture of the dashboard (docs/dashboard.png): a two-node cluster on this machine running a small
program (actors, tasks running, finished and failed, objects, a placement group), seen by headless Chromium.

    python benchmarks/dashboard_screenshot.py [--out docs/dashboard.png]

Needs /usr/bin/chromium and /usr/bin/chromedriver (tests/install-browser.sh) and selenium (the test extra).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def anyray_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "anyray.cli", *args], check=True, stdout=subprocess.DEVNULL)


def run_program():
    """A small program: two actors, tasks that ran, two that run on, one that failed, objects, a group."""
    import numpy as np

    import anyray
    from anyray.util.placement_group import placement_group

    anyray.init(address="auto")

    class Trainer:
        def __init__(self, name):
            self.name, self.steps = name, 0

        def step(self):
            self.steps += 1
            print(f"{self.name}: step {self.steps}, loss {1 / self.steps:.3f}", flush=True)
            return self.steps

    def preprocess(i):
        time.sleep(0.2)
        return np.ones(200_000) * i

    def long_job(seconds):
        time.sleep(seconds)
        return seconds

    def validate(batch):
        raise ValueError(f"batch {batch} has 3 rows with NaN labels")

    for f in (Trainer, preprocess, long_job, validate):  # short names on the page
        f.__qualname__ = f.__name__
    Trainer = anyray.remote(Trainer)
    preprocess, long_job, validate = (anyray.remote(f) for f in (preprocess, long_job, validate))
    group = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="SPREAD", name="trainers")
    anyray.get(group.ready(), timeout=60)
    trainers = [Trainer.options(name=f"trainer-{i}", num_cpus=0.5).remote(f"trainer-{i}") for i in range(2)]
    anyray.get([t.step.remote() for t in trainers for _ in range(3)])
    arrays = anyray.get([preprocess.remote(i) for i in range(4)])
    kept = [anyray.put(a) for a in arrays]
    running = [long_job.remote(120) for _ in range(2)]
    try:
        anyray.get(validate.remote(7))
    except ValueError:
        pass
    pid = anyray.util.state.list_actors(filters=[("name", "=", "trainer-0")])[0].pid
    return pid, (trainers, kept, running)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "dashboard.png"))
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="anyray-screenshot-")
    os.environ["ANYRAY_CLUSTER_DIR"] = directory
    port = free_port()
    anyray_cli("start", "--head", "--port", "0", "--ray-client-server-port", "0", "--num-cpus", "4",
               "--dashboard-port", str(port))
    head = next(json.load(open(f)) for f in glob.glob(os.path.join(directory, "nodes", "*")))
    anyray_cli("start", "--address", head["address"], "--num-cpus", "4")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        browser.get(head["dashboard_url"] + "/login")  # the first look: every node keeps its workers' output
        with open(os.path.join(directory, "token")) as f:
            browser.find_element(By.ID, "token").send_keys(f.read().strip())
        browser.find_element(By.ID, "login").click()
        pid, _program = run_program()
        time.sleep(4)  # a few polls
        for row in browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr"):
            if f" {pid} " in f" {row.text} ":
                row.find_element(By.CSS_SELECTOR, "button.show-log").click()
        time.sleep(2)
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1400, height + 160)
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(1.5)
        browser.save_screenshot(args.out)
        print(f"saved {args.out}")
    finally:
        browser.quit()
        import anyray

        anyray.shutdown()
        anyray_cli("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
