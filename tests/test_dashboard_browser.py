"""The dashboard in a real browser: Debian's chromium and chromedriver, driven by selenium.

``pxestack serve`` runs a copy of the quickstart on free ports; the test logs in with the
generated token, runs ``pxestack simulate --machines 1`` and watches the machine appear and
reach ``installed`` on the page through Server-Sent Events (the page is never reloaded: a
marker the script set at load survives), opens its timeline, reinstalls it through the
confirm step and finds the audit entry in its history.  Then a small boot storm fills the
storm view.

Selenium is given the system chromedriver (``/usr/bin/chromedriver``) and chromium, and
Selenium Manager is made to fail if anything calls it, so nothing is downloaded.  Without
chromium the test skips locally and fails in CI (tests/conftest.py ``require``).

Screenshots of the machines list, a machine's page and the storm view are saved in the
test's temporary directory, and copied to the directory ``PXESTACK_SCREENSHOTS`` names when
it is set (docs/images/ was made so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.test_simulate import (  # the fixture is shared with the simulate tests
    PXESTACK,
    Server,
    _read_until,
    quickstart_server,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: The whole test, start to end (seconds).
BUDGET = 90.0
#: One wait for the page.
WAIT = 20.0

__all__ = ["quickstart_server"]  # re-exported for pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless chromium through the system chromedriver; Selenium Manager is forbidden."""
    require(CHROMIUM.exists() and CHROMEDRIVER.exists(),
            "needs chromium and chromium-driver (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common import selenium_manager
    except ImportError:
        require(False, "needs selenium (the dev extras)")
        raise

    def no_downloads(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("Selenium Manager was called: it would fetch a driver")

    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", no_downloads)
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--hide-scrollbars", "--no-first-run", "--disable-extensions",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll *condition* until it returns something true; fail naming *what*."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # the DOM is being swapped: try again
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def simulate(workdir: Path, ports: dict[str, int], machines: int, rate: float = 20) -> str:
    """Run ``pxestack simulate`` against the test server; its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PXESTACK_TOKEN", "PXESTACK_SERVER")}
    result = subprocess.run(
        [*PXESTACK, "simulate", "--machines", str(machines), "--rate", str(rate),
         "--url", f"http://127.0.0.1:{ports['http']}",
         "--dhcp-server", f"127.0.0.1:{ports['dhcp']}", "--tftp-port", str(ports["tftp"]),
         "--timeout", "20"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=40, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    """Save the page as *name*.png (and copy it to $PXESTACK_SCREENSHOTS when set)."""
    target = tmp_path / f"{name}.png"
    body = driver.find_element("tag name", "body")
    body.screenshot(str(target))
    assert target.stat().st_size > 1000
    wanted = os.environ.get("PXESTACK_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, Path(wanted) / target.name)


def test_watch_a_machine_install_live_then_reinstall_it(
    quickstart_server: Server, browser: Any, tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    workdir, ports, _server = quickstart_server
    _read_until(_server, "pxestack running", started + 20)
    base = f"http://127.0.0.1:{ports['http']}"
    token = (workdir / "pxestack-state" / "admin-token").read_text().strip()

    # -- log in (a wrong token first) ---------------------------------------------------------
    browser.get(base + "/")
    assert "/dashboard/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys("wrong-token")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    assert "not an admin token" in wait_for(
        lambda: browser.find_element(By.ID, "login-error").text, "the login error")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(lambda: browser.find_elements(By.ID, "machines"), "the machines table")
    assert not browser.find_elements(By.CSS_SELECTOR, "tr[data-serial]")
    page_id = browser.execute_script("return window.pxestackPageId")
    assert page_id
    wait_for(lambda: browser.find_element(By.ID, "live-state").text == "live",
             "the event stream to open")
    # Every state the row shows, as the page changes (the page's own script swaps the DOM).
    browser.execute_script("""
        window.seenStates = [];
        new MutationObserver(function () {
          const cell = document.querySelector('tr[data-serial] [data-key="state"]');
          const state = cell && cell.textContent.trim();
          if (state && window.seenStates[window.seenStates.length - 1] !== state) {
            window.seenStates.push(state);
          }
        }).observe(document.getElementById('live'), {childList: true, subtree: true});
    """)

    # -- one machine boots: the row appears and reaches "installed" without a reload -------
    output = simulate(workdir, ports, 1)
    assert "1 of 1 machines installed" in output
    serial = wait_for(
        lambda: browser.execute_script(
            "const r = document.querySelector('tr[data-serial]');"
            "return r && r.dataset.state === 'installed' ? r.dataset.serial : null"),
        "the machine to show up installed")
    assert browser.execute_script("return window.pxestackPageId") == page_id, "page reloaded"
    assert browser.execute_script("return window.pxestackUpdates") >= 1
    seen = browser.execute_script("return window.seenStates")
    assert seen[-1] == "installed", seen
    # (the live part may be swapped once more while a late refresh lands: look again)
    wait_for(lambda: browser.find_element(
        By.CSS_SELECTOR, f'tr[data-serial="{serial}"] [data-key="phase"]',
    ).get_attribute("data-phase") == "installed", "the boot phase installed")

    # -- its page: the timeline picture ---------------------------------------------------------
    def open_machine() -> bool:
        browser.find_element(By.LINK_TEXT, serial).click()
        return True

    wait_for(open_machine, "a click on the machine's link")
    timeline = wait_for(lambda: browser.find_element(By.ID, "timeline"), "the timeline")
    phases = {g.get_attribute("data-phase")
              for g in timeline.find_elements(By.CSS_SELECTOR, "g.bar")}
    assert {"dhcp_pxe", "tftp", "dhcp_ipxe", "script", "enrolled", "installing",
            "installed"} <= phases, phases
    assert browser.find_element(By.ID, "host-state").text == "installed"
    history_before = len(browser.find_elements(By.CSS_SELECTOR, "#history li"))
    screenshot(browser, tmp_path, "dashboard-machine")

    # -- reinstall it: confirm, then the audit entry ----------------------------------------
    machine_page_id = browser.execute_script("return window.pxestackPageId")
    browser.find_element(By.ID, "action-reinstall").click()
    confirm = wait_for(lambda: browser.find_element(By.ID, "confirm"), "the confirm step")
    assert serial in browser.find_element(By.TAG_NAME, "main").text
    confirm.click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".flash.ok"), "the outcome")
    assert browser.execute_script("return window.pxestackPageId") != machine_page_id
    assert browser.find_element(By.ID, "host-state").text == "configured"
    entries = browser.find_elements(By.CSS_SELECTOR, "#history li")
    assert len(entries) == history_before + 1
    assert "installed -> configured" in entries[0].text, entries[0].text

    # -- a small storm, for the storm view and the list ------------------------------------
    browser.get(base + "/dashboard/storm")
    storm_id = browser.execute_script("return window.pxestackPageId")
    wait_for(lambda: browser.find_element(By.ID, "live-state").text == "live", "the stream")
    simulate(workdir, ports, 12, rate=6)
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#storm-legend [data-phase=installed] b")
             .text == "12", "twelve more machines installed in the storm view")
    assert browser.execute_script("return window.pxestackPageId") == storm_id
    screenshot(browser, tmp_path, "dashboard-storm")
    browser.get(base + "/")
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "tr[data-serial]")) == 13,
             "thirteen machines in the list")
    browser.find_element(By.ID, "filter").send_keys(serial)
    visible = [r for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-serial]")
               if r.is_displayed()]
    assert [r.get_attribute("data-serial") for r in visible] == [serial]
    browser.find_element(By.ID, "filter").clear()
    browser.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="state"]').click()
    states = [r.get_attribute("data-state")
              for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-serial]")]
    assert states == sorted(states)
    screenshot(browser, tmp_path, "dashboard-machines")
    assert time.monotonic() - started < BUDGET
