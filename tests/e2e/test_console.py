"""``orch console`` in a real headless Chromium, against the session's localcloud pipeline.

The console runs in this process on a free port, reading through the same client factory
as ``orch status``; Chromium (Debian's ``chromium`` with ``chromium-driver``, driven by
Selenium) uploads from the page and watches. Screenshots go to ``test-artifacts/console/``
(``ORCH_TEST_ARTIFACTS`` to put them elsewhere). Skipped where Chromium, its driver or
Selenium is missing (``make deps`` installs the first two, ``make venv`` the last).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from localcloud.testing import zip_tree
from orch import console as console_package
from tests.e2e.conftest import hello_source

pytestmark = pytest.mark.timeout(300)  # a browser, and up to two deployments, per test

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("ORCH_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "console"
STEPS = ("accepted", "build", "push", "deploy", "bind_triggers")


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


@pytest.fixture(scope="module")
def console_url(pipeline) -> Iterator[str]:
    running = console_package.start(
        pipeline.clients, pipeline.settings, port=0, refresh_seconds=2.0
    )
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium and chromedriver here (make deps installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield chrome
    chrome.quit()


def screenshot(browser: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def until(browser: Any, check: Any, timeout: float = 60.0, what: str = "") -> Any:
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    # The page replaces its live part while we look: an element may go stale mid-check.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(browser, timeout, poll_frequency=0.2, ignored_exceptions=ignored)
    try:
        return wait.until(lambda b: check(b))
    except TimeoutException:
        screenshot(browser, f"timeout-{int(time.time())}")
        raise AssertionError(
            f"timed out waiting for {what or check} on {browser.current_url}"
        ) from None


def step_states(browser: Any) -> dict[str, str]:
    return browser.execute_script(
        "const found = {};"
        "document.querySelectorAll('li.step').forEach("
        "  li => { found[li.dataset.step] = li.dataset.state; });"
        "return found;"
    )


def fill_deploy_form(
    browser: Any, console_url: str, archive: Path, service: str = "", overrides: str = ""
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(console_url + "deploy")
    browser.find_element(By.ID, "archive").send_keys(str(archive))
    if service:
        browser.find_element(By.ID, "service").send_keys(service)
    if overrides:
        browser.find_element(By.ID, "overrides").send_keys(overrides)


def submit(browser: Any) -> str:
    """Upload; the deployment id of the page it lands on."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "upload").click()
    until(browser, lambda b: "/deployments/d-" in b.current_url, 30, "the deployment's page")
    return browser.current_url.rsplit("/", 1)[-1]


def test_deploy_from_the_page_watch_five_steps_succeed_and_the_revision_take_all_traffic(
    browser, console_url, pipeline, tmp_path
):
    from selenium.webdriver.common.by import By

    name = unique("console")
    archive = tmp_path / f"{name}.zip"
    archive.write_bytes(zip_tree(hello_source(name, "from the page")))
    fill_deploy_form(browser, console_url, archive, overrides="env=GREETING=hi")
    dep_id = submit(browser)
    until(
        browser,
        lambda b: step_states(b) == dict.fromkeys(STEPS, "succeeded"),
        120,
        "five succeeded steps",
    )
    # Durations: the steps' own from the events at once; accepted's from the records.
    until(
        browser,
        lambda b: all(
            b.find_element(By.CSS_SELECTOR, f'li[data-step="{s}"] .duration').text.endswith(" s")
            for s in STEPS
        ),
        30,
        "a duration for every step",
    )
    # The deployment ends with `done`, a moment after bind_triggers' event.
    until(
        browser,
        lambda b: b.find_element(By.ID, "deployment-state").text == "succeeded",
        30,
        "the deployment to end",
    )
    assert browser.find_element(By.ID, "deployment-state").text == "succeeded"
    assert browser.find_element(By.CSS_SELECTOR, "dd.source").text.endswith(f"/{name}.zip")
    assert browser.find_element(By.CSS_SELECTOR, "dd.generation").text.isdigit()
    url = browser.find_element(By.CSS_SELECTOR, "a.url").get_attribute("href")
    revision = browser.find_element(By.CSS_SELECTOR, "dd.revision").text
    screenshot(browser, "deployment-succeeded")
    assert requests.get(url, timeout=30).text == "from the page"

    browser.get(console_url + "deployments")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-deployment="{dep_id}"]')
    assert row.get_attribute("data-state") == "succeeded"

    browser.get(console_url + "services")
    section = browser.find_element(By.ID, f"svc-{name}")
    serving = section.find_element(By.CSS_SELECTOR, f'tr[data-revision="{revision}"]')
    assert serving.get_attribute("data-percent") == "100"
    assert serving.find_element(By.CSS_SELECTOR, ".percent").text == "100%"
    assert dep_id in serving.text
    assert section.find_element(By.CSS_SELECTOR, "a.url").get_attribute("href") == url
    screenshot(browser, "services")


def test_a_broken_source_shows_the_failed_step_its_reason_and_the_build_log(
    browser, console_url, tmp_path
):
    from selenium.webdriver.common.by import By

    name = unique("broken")
    files = hello_source(name, "never")
    files["requirements.txt"] = "no-such-package-anywhere-xyz==1.0\n"
    archive = tmp_path / "broken.zip"
    archive.write_bytes(zip_tree(files))
    fill_deploy_form(browser, console_url, archive, service=name)
    submit(browser)
    until(browser, lambda b: step_states(b).get("build") == "failed", 120, "the failed build")
    states = step_states(browser)
    assert (states["accepted"], states["push"], states["deploy"]) == ("succeeded",) + (
        "pending",
    ) * 2
    reason = browser.find_element(By.CSS_SELECTOR, 'li[data-step="build"] .reason').text
    assert reason.startswith("BUILD_FAILED: ")
    until(browser, lambda b: b.find_element(By.ID, "deployment-state").text == "failed")
    assert "no-such-package-anywhere-xyz" in browser.find_element(By.CSS_SELECTOR, "pre.log").text
    screenshot(browser, "deployment-failed")


def test_a_second_deployment_of_the_service_waits_for_the_first(browser, console_url, tmp_path):
    """Two uploads of one service from two windows, a moment apart: one waits for the
    other's lock, and its page says so (live while it waits, as a fact afterwards).

    Two archive names (the service comes from function.yaml): two quick uploads under one
    object name would replace the first generation before intake reads it, where the
    bucket keeps no old versions (SOURCE_NOT_FOUND, as on Google Cloud without versioning).
    """
    from selenium.webdriver.common.by import By

    name = unique("queue")
    first_zip, second_zip = tmp_path / "first.zip", tmp_path / "second.zip"
    first_zip.write_bytes(zip_tree(hello_source(name, "first")))
    second_zip.write_bytes(zip_tree(hello_source(name, "second")))
    main = browser.current_window_handle
    fill_deploy_form(browser, console_url, first_zip)
    browser.switch_to.new_window("tab")
    other = browser.current_window_handle
    fill_deploy_form(browser, console_url, second_zip)
    browser.switch_to.window(main)
    browser.find_element(By.ID, "upload").click()
    browser.switch_to.window(other)
    second = submit(browser)
    browser.switch_to.window(main)
    until(browser, lambda b: "/deployments/d-" in b.current_url, 30, "the first's page")
    first = browser.current_url.rsplit("/", 1)[-1]
    browser.switch_to.window(other)
    browser.close()
    browser.switch_to.window(main)

    browser.get(console_url + f"deployments?service={name}")
    seen_waiting = until(
        browser,
        lambda b: (
            b.find_elements(By.CSS_SELECTOR, 'tr[data-state="waiting"]')
            or len(b.find_elements(By.CSS_SELECTOR, 'tr[data-state="succeeded"]')) == 2
        ),
        120,
        "a waiting deployment, or both done",
    )
    if seen_waiting is not True:  # caught while it waits
        screenshot(browser, "deployments-waiting")
    until(
        browser,
        lambda b: len(b.find_elements(By.CSS_SELECTOR, 'tr[data-state="succeeded"]')) == 2,
        120,
        "both deployments succeeded",
    )
    notes = {}
    for dep_id in (first, second):
        browser.get(console_url + f"deployments/{dep_id}")
        until(browser, lambda b: step_states(b).get("bind_triggers") == "succeeded", 30)
        notes[dep_id] = [
            note.get_attribute("data-waited-for")
            for note in browser.find_elements(By.CSS_SELECTOR, 'li[data-step="build"] .waited')
        ]
    waited = {dep_id: found for dep_id, found in notes.items() if found}
    assert waited in ({second: [first]}, {first: [second]}), notes
    browser.get(console_url + f"deployments/{next(iter(waited))}")
    note = browser.find_element(By.CSS_SELECTOR, 'li[data-step="build"] .waited').text
    assert note.startswith("waited ") and "which held the service" in note
    screenshot(browser, "deployment-waited")
