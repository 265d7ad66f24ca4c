"""An operator imports Fedora CoreOS from the dashboard's Images page in a real browser.

``pxestack serve`` runs a copy of the quickstart with an image cache; a miniature Fedora CoreOS
mirror (:mod:`vendor_mirror`, on 127.0.0.1, slowed down so that the fetch takes a few
seconds) stands in for the vendor.  Chromium (through the system chromedriver, as in
``test_dashboard_browser.py``) logs in, opens the Images page, fills the fetch form and
submits it; the page follows the fetch through its event stream without a reload (the phases
the fetch row shows are recorded as they change) until it is ``done`` and the version is in
the cached versions, and the verified files are in the cache on disk.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from vendor_mirror import FCOS_FILES, FCOS_VERSION, Mirror

from pxestack.config import quickstart_text
from pxestack.provision.images import ImageStore
from tests.test_dashboard_browser import browser, screenshot, wait_for
from tests.test_simulate import PXESTACK, _free_port, _free_udp_pair, _read_until

__all__ = ["browser"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.slow

#: The whole test, start to end (seconds).
BUDGET = 90.0
#: Seconds the mirror sleeps per KiB it sends: the FCOS miniature (about 38 KiB) takes ~4 s.
MIRROR_DELAY = 0.1


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    """The Fedora CoreOS miniature, served slowly from 127.0.0.1."""
    served = Mirror(delay=MIRROR_DELAY)
    server, thread = served.serve()
    served.add_fcos()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def images_server(tmp_path: Path) -> Iterator[tuple[Path, int, subprocess.Popen[str]]]:
    """``pxestack serve`` on the quickstart with ``provision.images_dir`` and free ports; no
    proxy in its environment (the mirror is on loopback)."""
    ports = {"dhcp": _free_udp_pair(), "tftp": _free_port(socket.SOCK_DGRAM),
             "http": _free_port(socket.SOCK_STREAM)}
    data = yaml.safe_load(quickstart_text())
    data["dhcp"]["listen"] = f"127.0.0.1:{ports['dhcp']}"
    data["tftp"]["listen"] = f"127.0.0.1:{ports['tftp']}"
    data["http"]["listen"] = f"127.0.0.1:{ports['http']}"
    data["http"]["public_url"] = f"http://127.0.0.1:{ports['http']}"
    data["provision"]["images_dir"] = "pxestack-state/images"
    config = tmp_path / "pxestack.yaml"
    config.write_text(yaml.safe_dump(data))
    (tmp_path / "pxestack-state" / "tftproot").mkdir(parents=True)
    os.chmod(tmp_path / "pxestack-state", 0o700)
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "pxestack_token")}
    server = subprocess.Popen([*PXESTACK, "serve", "--config", str(config)], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        yield tmp_path, ports["http"], server
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_fetch_a_release_from_the_images_page(
    images_server: tuple[Path, int, subprocess.Popen[str]], mirror: Mirror, browser: Any,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    started = time.monotonic()
    workdir, http_port, server = images_server
    _read_until(server, "pxestack running", started + 20)
    base = f"http://127.0.0.1:{http_port}"
    token = (workdir / "pxestack-state" / "admin-token").read_text().strip()

    browser.get(base + "/dashboard/images")
    assert "/dashboard/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "form.fetch-form"),
             "the fetch form")
    assert "No fetch since pxestack started." in browser.find_element(By.ID, "live").text

    # -- fill the form and start the fetch ---------------------------------------------------
    form = browser.find_element(By.CSS_SELECTOR, "form.fetch-form")
    Select(form.find_element(By.NAME, "os")).select_by_value("fcos")
    form.find_element(By.NAME, "line").send_keys("stable")
    form.find_element(By.NAME, "base_url").send_keys(mirror.base)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    flash = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, ".flash.ok").text,
                     "the fetch to be started")
    assert "Fetch of fcos stable current started." in flash, flash  # resolved later
    page_id = browser.execute_script("return window.pxestackPageId")
    assert page_id
    # The phases the fetch row shows, as the page's own script swaps the live part in.
    browser.execute_script("""
        window.seenPhases = [];
        window.seenProgress = [];
        function look() {
          const row = document.querySelector('table.fetches tbody tr');
          if (!row) return;
          const phase = row.className.replace('phase-', '');
          if (window.seenPhases[window.seenPhases.length - 1] !== phase) {
            window.seenPhases.push(phase);
          }
          const file = row.querySelector('.file-progress');
          if (file) window.seenProgress.push(row.innerText.replace(/\\s+/g, ' '));
        }
        look();
        new MutationObserver(look).observe(document.getElementById('live'),
                                           {childList: true, subtree: true});
    """)

    # -- follow it to the end without a reload ---------------------------------------------
    def ended() -> str:
        rows = browser.find_elements(By.CSS_SELECTOR, "table.fetches tbody tr")
        return rows[0].get_attribute("class") if rows and "phase-downloading" not in \
            rows[0].get_attribute("class") and "phase-resolving" not in \
            rows[0].get_attribute("class") else ""

    try:
        ended_as = wait_for(ended, "the fetch to end", timeout=45)
    except AssertionError:  # say what the page shows and what the server knows
        request = urllib.request.Request(base + "/admin/images",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            api = answer.read().decode()
        raise AssertionError(f"the page shows:\n{browser.find_element(By.ID, 'live').text}"
                             f"\nGET /admin/images:\n{api}") from None
    assert ended_as == "phase-done", browser.find_element(By.ID, "live").text
    assert browser.execute_script("return window.pxestackPageId") == page_id, "page reloaded"
    phases = browser.execute_script("return window.seenPhases")
    progress = browser.execute_script("return window.seenProgress")
    assert phases[-1] == "done" and "downloading" in phases, phases
    # While it ran the row showed the file's and the release's bytes, speed and ETA.
    shown = re.compile(r"\d+(\.\d)? (Bytes|KiB|MiB) / \d+(\.\d)? (KiB|MiB) .*"
                       r"file \d+(\.\d)? (Bytes|KiB|MiB)/s total \S+ \S+/s file (\d+ s|\S) total")
    assert any(shown.search(text) for text in progress), progress
    versions = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "table.versions").text,
                        "the cached versions")
    assert "fcos" in versions and FCOS_VERSION in versions, versions
    for name in ("vmlinuz", "initrd.img", "rootfs.img"):
        assert name in versions
    screenshot(browser, tmp_path, "dashboard-images")

    # -- what the page says is what the cache holds ------------------------------------------
    directory = workdir / "pxestack-state" / "images" / "fcos" / FCOS_VERSION
    stored = {"kernel": "vmlinuz", "initramfs": "initrd.img", "rootfs": "rootfs.img"}
    for artifact, name in stored.items():
        assert (directory / name).read_bytes() == FCOS_FILES[artifact]
        assert ImageStore.recorded_sha256(directory / name) is not None
    assert not (workdir / "pxestack-state" / "images" / ".staging" / "fcos" / FCOS_VERSION
                ).exists()
    gets = [path for method, path, _range in mirror.requests if method == "GET"]
    assert "/streams/stable.json" in gets and len(gets) == 4, gets
    assert time.monotonic() - started < BUDGET
