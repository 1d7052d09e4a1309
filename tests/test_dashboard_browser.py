"""The dashboard in a real browser: headless Chromium from the system's packages (tests/install-browser.sh),
driven by Selenium. The page loads after the login, lists a running actor, updates when a task finishes, shows a
failed task's traceback, and refuses a visitor without the token.

Never skipped: without /usr/bin/chromium and /usr/bin/chromedriver the test fails and says how to install them.
With ``ANYRAY_DASHBOARD_SCREENSHOT=path.png`` it also saves the page (the README's picture).
"""

from __future__ import annotations

import os
import time

import pytest

import anyray

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 60.0


@pytest.fixture
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"the dashboard's browser test needs {' and '.join(missing)}: run tests/install-browser.sh "
                    f"(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1800", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def wait_until(driver, condition, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # a table redrawn between finding a row and reading it: look again
        return WebDriverWait(driver, WAIT, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: condition(d))
    except Exception as exc:
        raise AssertionError(f"the page never showed {what}; it shows:\n{driver.find_element('tag name', 'body').text}"
                             ) from exc


def row_state(driver, table: str, name: str) -> str | None:
    """The state of the first row of ``table`` that shows ``name``, read in one script (the page redraws)."""
    return driver.execute_script(
        "for (const row of document.querySelectorAll(`#${arguments[0]} tbody tr`)) {"
        "  if (row.textContent.includes(arguments[1])) return row.dataset.state || null; }"
        "return null;", table, name)


@anyray.remote
class Greeter:
    def hello(self):
        print("hello from the greeter", flush=True)
        return "hello"


@anyray.remote
def held_until(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.05)
    return "released"


@anyray.remote
def broken():
    raise ZeroDivisionError("the traceback the page shows")


def test_the_page_shows_live_work_to_a_visitor_with_the_token_only(browser, tmp_path):
    from selenium.webdriver.common.by import By

    ctx = anyray.init(backend="multiprocess", num_cpus=3, include_dashboard=True, dashboard_port=0)
    try:
        url = ctx.dashboard_url
        with open(ctx.dashboard_token_file) as f:
            token = f.read()

        # a visitor without the token: the page sends them to the login, the API refuses them
        browser.get(url + "/")
        assert browser.current_url == url + "/login"
        browser.get(url + "/api/actors")
        assert "log in first" in browser.find_element(By.TAG_NAME, "body").text
        browser.get(url + "/login")
        browser.find_element(By.ID, "token").send_keys("not the token")
        browser.find_element(By.ID, "login").click()
        # the refusal is a new page: wait for it (the old page's elements go stale as it loads)
        wait_until(browser, lambda d: "not the cluster's token" in d.find_element(By.ID, "error").text,
                   "the refusal of a wrong token")
        assert browser.get_cookies() == []

        # the login: the page loads and lists a running actor
        greeter = Greeter.options(name="greeter").remote()
        assert anyray.get(greeter.hello.remote(), timeout=WAIT) == "hello"
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "login").click()
        wait_until(browser, lambda d: d.current_url == url + "/", "the page after the login")
        cookie = browser.get_cookies()[0]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and token not in cookie["value"]
        wait_until(browser, lambda d: row_state(d, "actors", "Greeter") == "ALIVE", "the running actor")
        wait_until(browser, lambda d: "CPU" in d.find_element(By.ID, "nodes").text, "the node's resources")
        job = anyray.get_runtime_context().get_job_id()  # the jobs table: this driver's job, running
        wait_until(browser, lambda d: row_state(d, "drivers", job) == "RUNNING", "this driver's job")

        # a task shows running, then finished once it ends
        gate = tmp_path / "release"
        held = held_until.remote(str(gate))
        wait_until(browser, lambda d: row_state(d, "tasks", "held_until") == "RUNNING", "the task running")
        gate.touch()
        assert anyray.get(held, timeout=WAIT) == "released"
        wait_until(browser, lambda d: row_state(d, "tasks", "held_until") == "FINISHED", "the task finished")

        # a failed task's traceback
        with pytest.raises(ZeroDivisionError):
            anyray.get(broken.remote(), timeout=WAIT)
        traceback = wait_until(browser, lambda d: [p.text for p in d.find_elements(By.CSS_SELECTOR, "pre.traceback")
                                                   if "the traceback the page shows" in p.text], "the traceback")
        assert "Traceback (most recent call last)" in traceback[0] and "ZeroDivisionError" in traceback[0]

        # each worker's log, and the timeline's download link
        actor_pid = anyray.util.state.list_actors(filters=[("name", "=", "greeter")])[0].pid
        def open_log(d) -> bool:
            for row in d.find_elements(By.CSS_SELECTOR, "#workers tbody tr"):
                if str(actor_pid) in row.text.split():
                    row.find_element(By.CSS_SELECTOR, "button.show-log").click()
                    return True
            return False

        wait_until(browser, open_log, "the actor's worker")
        wait_until(browser, lambda d: "hello from the greeter" in d.find_element(By.ID, "log").text, "the log")
        link = browser.find_element(By.ID, "timeline")
        assert link.get_attribute("href") == url + "/api/timeline" and link.get_attribute("download")

        shot = os.environ.get("ANYRAY_DASHBOARD_SCREENSHOT")
        if shot:
            browser.execute_script("document.getElementById('log-section').hidden = true")
            browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight") + 40)
            browser.save_screenshot(shot)

        # logged out: refused again
        browser.find_element(By.ID, "logout").click()
        wait_until(browser, lambda d: d.current_url == url + "/login", "the login page after logging out")
        browser.get(url + "/")
        assert browser.current_url == url + "/login"
    finally:
        anyray.shutdown()
