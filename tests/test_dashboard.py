"""The dashboard in memory: login and sessions, CSRF, confirmed and audited actions, pages,
escaping, and the charts behind the pictures.  (tests/system/test_dashboard_browser.py
drives it in a real browser.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import treq
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from pxestack.bootevents import BootEventRecorder
from pxestack.dashboard.charts import human_duration, storm_chart, timeline
from pxestack.dashboard.sessions import SessionStore
from tests.test_openapi import ADMIN_TOKEN, SERIAL, Answer, Stack

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line written while the test runs."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class Browser:
    """A cookie-keeping client of the in-memory site."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.cookie: str | None = None

    def get(self, path: str, **headers: str) -> Answer:
        return self.send("GET", path, None, headers)

    def post(self, path: str, fields: dict[str, str], **headers: str) -> Answer:
        return self.send("POST", path, urlencode(fields).encode(), {**FORM, **headers})

    def send(self, method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> Answer:
        if self.cookie:
            headers = {**headers, "Cookie": f"pxestack_session={self.cookie}"}
        raw = {name.encode(): [value.encode()] for name, value in headers.items()}
        results: list[Any] = []
        d = self.stack.stub.request(method, "http://127.0.0.1:8080" + path, data=body,
                                    headers=raw, allow_redirects=False)
        d.addCallback(lambda r: treq.content(r).addCallback(
            lambda b: Answer(r.code, r.headers, b)))
        d.addBoth(results.append)
        self.stack.stub.flush()
        assert results and isinstance(results[0], Answer), results
        answer: Answer = results[0]
        for value in answer.headers.getRawHeaders("set-cookie") or []:
            name, _, rest = value.partition("=")
            if name == "pxestack_session":
                self.cookie = rest.split(";", 1)[0] or None
        return answer

    def login(self, token: str = ADMIN_TOKEN) -> Answer:
        return self.post("/dashboard/login", {"token": token, "next": "/"})

    def csrf(self, page: str = "/") -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', self.get(page).body.decode())
        assert match, "no CSRF field on " + page
        return match.group(1)


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    built = Stack(tmp_path)
    assert built.request("GET", f"/first-stage-script/{SERIAL}").code == 200
    return built


@pytest.fixture
def browser(stack: Stack) -> Browser:
    return Browser(stack)


def test_pages_need_a_session_and_the_login_sets_a_strict_cookie(
        browser: Browser, logged: list[str]) -> None:
    answer = browser.get("/")
    assert answer.code == 303
    assert answer.header("location") == "/dashboard/login?next=%2F"
    assert browser.get("/dashboard/rows").code == 401
    assert browser.get("/dashboard/events").code == 401
    form = browser.get("/dashboard/login?next=/")
    assert form.code == 200 and b'name="token"' in form.body
    assert "script-src 'self'" in (form.header("content-security-policy") or "")
    wrong = browser.login("not-the-token-" + ADMIN_TOKEN[:6])
    assert wrong.code == 401 and b"That is not an admin token." in wrong.body
    assert browser.cookie is None
    assert any("wrong admin token from" in line for line in logged)
    good = browser.login()
    assert good.code == 303 and good.header("location") == "/"
    cookie = good.header("set-cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    page = browser.get("/")
    assert page.code == 200 and f'data-serial="{SERIAL}"'.encode() in page.body
    assert not any(ADMIN_TOKEN in line or ADMIN_TOKEN[:12] in line for line in logged)
    assert not any(browser.cookie and browser.cookie in line for line in logged)


def test_logout_needs_csrf_and_ends_the_session(browser: Browser) -> None:
    browser.login()
    assert browser.post("/dashboard/logout", {}).code == 403
    csrf = browser.csrf()
    assert browser.post("/dashboard/logout", {"csrf": csrf}).code == 303
    browser_cookie_cleared = browser.cookie is None
    assert browser_cookie_cleared
    assert browser.get("/").code == 303


def test_an_action_is_confirmed_then_stored_in_the_history_and_logged(
        stack: Stack, browser: Browser, logged: list[str]) -> None:
    browser.login()
    csrf = browser.csrf(f"/dashboard/machine/{SERIAL}")
    action = f"/dashboard/machine/{SERIAL}/action"
    assert browser.post(action, {"action": "reinstall"}).code == 403  # no CSRF token
    assert browser.post(action, {"action": "reinstall", "csrf": "x" * 43}).code == 403
    foreign = browser.post(action, {"action": "reinstall", "csrf": csrf},
                           Origin="http://evil.example")
    assert foreign.code == 403
    history_before = json.loads(stack.request("GET", f"/admin/host/{SERIAL}/history").body)
    confirm = browser.post(action, {"action": "reinstall", "csrf": csrf})
    assert confirm.code == 200 and b'name="confirm" value="yes"' in confirm.body
    assert json.loads(stack.request("GET", f"/admin/host/{SERIAL}").body)["State"] != "configured"
    done = browser.post(action, {"action": "reinstall", "csrf": csrf, "confirm": "yes"})
    assert done.code == 303 and done.header("location") == f"/dashboard/machine/{SERIAL}"
    assert json.loads(stack.request("GET", f"/admin/host/{SERIAL}").body)["State"] == "configured"
    history = json.loads(stack.request("GET", f"/admin/host/{SERIAL}/history").body)
    assert len(history) == len(history_before) + 1
    # The audit names who acted: the admin token the session logged in with.
    assert history[0]["Author"] == "admin"
    page = browser.get(f"/dashboard/machine/{SERIAL}").body.decode()
    assert history[0]["Message"].splitlines()[0] in page
    assert "state unknown -&gt; configured" in page
    assert "Reinstall" in page and "done" in page  # the outcome, once
    assert "done" not in browser.get(f"/dashboard/machine/{SERIAL}").body.decode().split(
        "<h1>", 1)[1].split("</h1>", 1)[1].split('id="live"', 1)[0]
    assert any("dashboard session" in line and "reinstall" in line and SERIAL in line
               for line in logged)
    set_state = browser.post(action, {"action": "set_state", "state": "installed",
                                      "csrf": csrf, "confirm": "yes"})
    assert set_state.code == 303
    assert json.loads(stack.request("GET", f"/admin/host/{SERIAL}").body)["State"] == "installed"
    bad = browser.post(action, {"action": "format-disks", "csrf": csrf, "confirm": "yes"})
    assert bad.code == 400
    fresh = browser.post(action, {"action": "mark_fresh", "csrf": csrf, "confirm": "yes"})
    assert fresh.code == 303
    nowhere = browser.post(action, {"action": "move", "profile": "no-such-profile",
                                    "csrf": csrf, "confirm": "yes"})
    assert nowhere.code == 400
    moved = browser.post(action, {"action": "move", "profile": "default", "csrf": csrf,
                                  "confirm": "yes"})
    assert moved.code == 303
    record = json.loads(stack.request("GET", f"/admin/host/{SERIAL}").body)
    assert record["Profile"] == "default" and record.get("ProfilePinned") is True
    removed = browser.post(action, {"action": "remove", "csrf": csrf, "confirm": "yes"})
    assert removed.code == 303 and removed.header("location") == "/"
    assert stack.request("GET", f"/admin/host/{SERIAL}").code in (400, 404)
    unknown = browser.post("/dashboard/machine/no-such-host/action",
                           {"action": "mark_fresh", "csrf": csrf, "confirm": "yes"})
    assert unknown.code == 303
    assert browser.get("/dashboard/machine/no-such-host").code == 404


def test_machine_page_shows_timeline_history_and_configs(stack: Stack, browser: Browser) -> None:
    mac = "52:54:00:aa:bb:cc"
    events = stack.service.events
    events.dhcp(bytes.fromhex(mac.replace(":", "")), False, 1000.0)
    events.dhcp(bytes.fromhex(mac.replace(":", "")), True, 1000.2)
    events.record("tftp", 1001.0, mac=mac, duration=0.7, detail="undionly.kpxe complete")
    # A log line keyed by the MAC joins the serial's page once the script links them.
    events.log("info installer: <b>partitioning</b>", 1001.2, mac=mac, ip="10.0.0.9")
    events.record("script", 1001.5, serial=SERIAL, mac=mac)
    browser.login()
    page = browser.get(f"/dashboard/machine/{SERIAL}").body.decode()
    assert 'id="logs"' in page and "installer: &lt;b&gt;partitioning&lt;/b&gt;" in page
    assert '<svg id="timeline"' in page
    assert 'data-phase="tftp"' in page and "DHCP (PXE)" in page
    assert "Ignition config" in page and "iPXE script" in page and "#!ipxe" in page
    assert 'id="history"' in page
    live = browser.get(f"/dashboard/machine/{SERIAL}?part=live")
    assert live.code == 200 and b"<html" not in live.body and b"timeline" in live.body
    assert browser.get("/dashboard/machine/nobody").code == 404
    storm = browser.get("/dashboard/storm").body.decode()
    assert '<svg id="storm"' in storm
    rows = browser.get("/dashboard/rows").body.decode()
    assert "<html" not in rows and f'data-serial="{SERIAL}"' in rows
    listed = json.loads(browser.get("/dashboard/events?since=0").body)
    assert [e["phase"] for e in listed][-3:] == ["dhcp_pxe", "tftp", "script"]
    css = browser.get("/dashboard/static/dashboard.css")
    assert css.code == 200 and css.media_type == "text/css"
    assert browser.get("/dashboard/static/../web.py").code == 404
    assert browser.get("/dashboard/static/nothing.js").code == 404


def test_everything_rendered_is_escaped(browser: Browser) -> None:
    hostile = '"><script>alert(1)</script>'
    form = browser.get("/dashboard/login?" + urlencode({"next": "/" + hostile})).body.decode()
    assert "<script>alert" not in form and "&lt;script&gt;" in form
    answer = browser.post("/dashboard/login", {"token": ADMIN_TOKEN, "next": "//evil.example/"})
    assert answer.header("location") == "/"


def test_sessions_expire_and_are_bounded() -> None:
    now = [0.0]
    store = SessionStore(lifetime=10.0, max_sessions=2, clock=lambda: now[0])
    first = store.create("10.0.0.1")
    second = store.create("10.0.0.1")
    assert store.get(first.id) is first
    third = store.create("10.0.0.2")
    assert store.get(first.id) is None and len(store) == 2
    now[0] = 11.0
    assert store.get(second.id) is None and store.get(third.id) is None
    assert store.get("x" * 500) is None and store.get(None) is None
    assert not second.csrf_ok(None) and second.csrf_ok(second.csrf)


def test_the_cookie_is_secure_over_tls(stack: Stack) -> None:
    dashboard = stack.root.children[b"dashboard"]
    request = Request(DummyChannel())
    request.method = b"POST"
    request.uri = b"/dashboard/login"
    request.postpath = [b"login"]
    request.isSecure = lambda: True  # type: ignore[method-assign]
    request.args = {b"token": [ADMIN_TOKEN.encode()]}
    dashboard.render(request)
    assert request.code == 303
    [cookie] = request.cookies
    assert b"Secure" in cookie and b"HttpOnly" in cookie and b"SameSite=strict" in cookie


def test_undocumented_methods_are_refused(browser: Browser) -> None:
    browser.login()
    assert browser.send("DELETE", "/", None, {}).code == 405
    assert browser.send("GET", "/dashboard/logout", None, {}).code == 405
    assert browser.send("GET", "/dashboard/nothing", None, {}).code == 404


# -- the pictures ------------------------------------------------------------------------------


def test_timeline_bars_follow_the_newest_boot() -> None:
    recorder = BootEventRecorder()
    mac = b"\x52\x54\x00\x00\x00\x01"
    recorder.dhcp(mac, False, 10.0)
    recorder.dhcp(mac, True, 10.5)
    recorder.record("installed", 50.0, serial="vm-1", mac=mac)
    recorder.dhcp(mac, False, 100.0)  # a reboot: the newest boot starts here
    recorder.dhcp(mac, True, 100.2)
    recorder.record("tftp", 101.0, mac=mac, duration=0.5)
    recorder.record("running", 130.0, serial="vm-1")
    picture = timeline(recorder.steps("vm-1"))
    phases = [bar.phase for bar in picture["bars"]]
    assert phases == ["dhcp_pxe", "tftp", "running"]
    dhcp, tftp, running = picture["bars"]
    # a phase lasts until the next one starts (the TFTP transfer began at 100.5)
    assert dhcp.duration == "500 ms" and tftp.duration == "29.5 s"
    assert running.moment and picture["total"] == "30.0 s"
    assert timeline([])["bars"] == []


def test_storm_chart_stacks_phases() -> None:
    recorder = BootEventRecorder()
    for i in range(3):
        recorder.record("enrolled", 10.0 + i, serial=f"vm-{i}")
    recorder.record("installed", 20.0, serial="vm-0")
    chart = storm_chart(recorder.storm(buckets=5, now=20.0))
    assert chart["peak"] == 3
    assert chart["latest"] == {"enrolled": 2, "installed": 1}
    assert len(chart["columns"]) == 5
    assert storm_chart(BootEventRecorder().storm())["columns"] == []


@pytest.mark.parametrize(("seconds", "text"), [
    (0.25, "250 ms"), (4.21, "4.2 s"), (185, "3 min 5 s"), (7440, "2 h 4 min")])
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_login_accepts_every_named_admin_token_and_names_it_as_the_actor() -> None:
    """Named tokens (``provision.api.tokens``) log in as themselves; anything else does not,
    and only an API without any admin credential (loopback only) lets anyone in."""
    from types import SimpleNamespace

    from pxestack.dashboard.web import DashboardResource

    tokens = {"ops-bob": "b" * 40, "ci-robot": "c" * 40}
    api = SimpleNamespace(open_admin=False, admin_tokens=tokens)
    resource = DashboardResource.__new__(DashboardResource)
    resource.dashboard = SimpleNamespace(api=api)  # type: ignore[assignment]
    assert resource.actor_of("b" * 40, "198.18.0.9") == "ops-bob"
    assert resource.actor_of("c" * 40, "198.18.0.9") == "ci-robot"
    assert resource.actor_of("x" * 40, "198.18.0.9") is None
    assert resource.actor_of("", "198.18.0.9") is None
    api.open_admin = True
    assert resource.actor_of("", "127.0.0.1") == "local:127.0.0.1"


def test_with_an_admin_listener_the_dashboard_is_only_there() -> None:
    from types import SimpleNamespace

    from pxestack.dashboard.web import Dashboard
    from pxestack.http.site import ADMIN_LISTENER

    dashboard = Dashboard.__new__(Dashboard)
    dashboard.api = SimpleNamespace(admin_listener_only=True)  # type: ignore[assignment]
    plain = Request(DummyChannel())
    assert not dashboard.on_admin_listener(plain)
    admin = Request(DummyChannel())
    admin.channel.listener = ADMIN_LISTENER  # type: ignore[attr-defined]
    assert dashboard.on_admin_listener(admin)
    dashboard.api.admin_listener_only = False
    assert dashboard.on_admin_listener(plain)


def test_a_trusted_network_logs_in_without_a_token() -> None:
    """The admin API's other credentials (trusted networks, client certificates) count for
    the dashboard's login too; an empty token from anywhere else does not."""
    from ipaddress import ip_network
    from types import SimpleNamespace

    from pxestack.dashboard.web import DashboardResource

    api = SimpleNamespace(open_admin=False, admin_tokens={"ops": "o" * 40},
                          trusted_networks=(ip_network("198.18.7.0/24"),),
                          client_certificates=False, admin_listener_only=False)
    api.trusted_network_of = lambda host: (
        "198.18.7.0/24" if host.startswith("198.18.7.") else None)
    resource = DashboardResource.__new__(DashboardResource)
    resource.dashboard = SimpleNamespace(api=api)  # type: ignore[assignment]

    def request_from(host: str) -> Request:
        request = Request(DummyChannel())
        request.client = type("Peer", (), {"host": host, "port": 4000})()  # type: ignore[assignment]
        return request

    assert resource.recognised(request_from("198.18.7.9")) == "trusted:198.18.7.9"
    assert resource.recognised(request_from("198.18.9.9")) is None


# -- the images page -----------------------------------------------------------------------


def test_images_page_lists_and_starts_a_fetch_with_csrf(stack: Stack, browser: Browser,
                                                        monkeypatch) -> None:
    from vendor_mirror import FCOS_VERSION, Mirror

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    mirror = Mirror()
    server, thread = mirror.serve()
    mirror.add_fcos()
    try:
        api = stack.root.children[b"admin"].api
        api.image_fetches.run = lambda work: work()  # inline, as the store work here
        assert browser.get("/dashboard/images").code == 303  # to the login form
        browser.login()
        page = browser.get("/dashboard/images")
        assert page.code == 200
        text = page.body.decode()
        assert 'action="/dashboard/images/fetch"' in text and "flatcar" in text
        csrf = browser.csrf("/dashboard/images")
        form = {"os": "fcos", "line": "stable", "base_url": mirror.base}
        assert browser.post("/dashboard/images/fetch", form).code == 403
        assert browser.post("/dashboard/images/fetch", {**form, "csrf": csrf}).code == 303
        after = browser.get("/dashboard/images").body.decode()
        assert "Fetch of fcos stable current started." in after
        assert FCOS_VERSION in after and "rootfs.img" in after and ">done<" in after
        live = browser.get("/dashboard/images?part=live").body.decode()
        assert "<html" not in live and FCOS_VERSION in live
        # A refusal comes back as a message naming the field.
        assert browser.post("/dashboard/images/fetch",
                            {"os": "debian", "csrf": csrf}).code == 303
        assert "release is required" in browser.get("/dashboard/images").body.decode()
        assert browser.send("GET", "/dashboard/images/fetch", None, {}).code == 405
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_pages_event_stream_carries_image_fetch_progress() -> None:
    """The images page refreshes on ``event: image``: the dashboard's stream must send image
    fetches' progress as well as boot steps (log lines stay out)."""
    from pxestack.bootevents import BootEventRecorder
    from pxestack.dashboard.web import Dashboard
    from pxestack.http.events import sse_message

    recorder = BootEventRecorder()
    dashboard = Dashboard(api=None, events=recorder)  # type: ignore[arg-type]
    image = recorder.record_image(1.0, "progress", {"os": "fcos", "phase": "downloading"})
    step = recorder.record("script", 1.0, serial="s-1", mac="52:54:00:00:00:01")
    line = recorder.log("installer: hello", 1.0, serial="s-1")
    assert step is not None and line is not None
    assert dashboard.feed.accept(image) and dashboard.feed.accept(step)
    assert not dashboard.feed.accept(line)
    assert sse_message(image).startswith(b"id: ") and b"event: image\n" in sse_message(image)
