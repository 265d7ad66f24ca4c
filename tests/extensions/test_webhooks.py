"""The webhooks extension: back-off, the durable queue and restarts with task.Clock; then a
real receiver that fails (500), recovers and checks the signature (an endpoint with another
secret is refused), against ``pxestack serve`` restarted as ``twistd pxestack``."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task

from pxestack.bootevents import BootEventRecorder
from pxestack.config import load_config
from pxestack.extensions import check_extensions, setup_extensions
from pxestack.service import Extensions
from pxestack_webhooks import WebhookService, WebhooksExtension, document, event_kinds

PXESTACK = [sys.executable, "-m", "pxestack"]
SECRET = "0123456789abcdef-secret"


class FakePost:
    """Answers each POST with the next status of *statuses* (the last one repeats)."""

    def __init__(self, statuses: list[int | Exception]) -> None:
        self.statuses = statuses
        self.calls: list[tuple[float, str, bytes, dict[str, str]]] = []
        self.clock: task.Clock | None = None

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> Any:
        assert self.clock is not None
        self.calls.append((self.clock.seconds(), url, body, dict(headers)))
        status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        if isinstance(status, Exception):
            return defer.fail(status)
        return defer.succeed(status)


def make_service(tmp_path: Path, post: FakePost, clock: task.Clock,
                 **config: Any) -> tuple[WebhookService, Extensions]:
    settings = {"endpoints": [{"url": "http://127.0.0.1:9/hook", "secret": SECRET}],
                "retry_initial": 1, "retry_max_delay": 8, "retry_window": 60} | config
    cfg = load_config({"state_dir": str(tmp_path),
                       "extensions": [{"use": "webhooks", "config": settings}]})
    ext = Extensions(events=BootEventRecorder())
    loaded = setup_extensions(cfg, ext, reactor=clock,
                              available={"webhooks": WebhooksExtension})
    service = loaded[0].context.services[0]
    assert isinstance(service, WebhookService)
    post.clock = clock
    service.set_post(post)
    return service, ext


def record(ext: Extensions, service: WebhookService, phase: str, **kw: Any) -> None:
    event = ext.events.record(phase, 100.0, **kw)
    assert event is not None
    service.on_event(event)


def test_backoff_then_delivery(tmp_path: Path) -> None:
    clock = task.Clock()
    clock.advance(1000)
    post = FakePost([500, 500, ConnectionRefusedError("refused"), 200])
    service, ext = make_service(tmp_path, post, clock)
    service.startService()
    record(ext, service, "enrolled", serial="node-1")
    assert len(post.calls) == 1
    for _ in range(20):
        clock.advance(0.5)
    times = [t - 1000 for t, *_ in post.calls]
    assert times == [0, 1, 3, 7]  # 1, 2, 4 seconds apart
    assert service.counts.delivered == 1 and service.counts.failed_attempts == 3
    assert service.pending() == 0
    assert not list((tmp_path / "extensions" / "webhooks" / "queue").rglob("*.json"))
    _t, _url, body, headers = post.calls[-1]
    assert headers["X-Pxestack-Signature"] == "sha256=" + hmac.new(
        SECRET.encode(), body, hashlib.sha256).hexdigest()
    doc = json.loads(body)
    assert doc["event"] == "enrolled" and doc["serial"] == "node-1"
    assert doc["id"] == headers["X-Pxestack-Delivery"]
    # Every attempt carried the same delivery.
    assert len({c[2] for c in post.calls}) == 1


def test_max_delay_caps_and_window_expires(tmp_path: Path) -> None:
    clock = task.Clock()
    post = FakePost([503])
    service, ext = make_service(tmp_path, post, clock, retry_window=30)
    service.startService()
    record(ext, service, "installed", serial="node-2")  # state_changed and installed
    for _ in range(100):
        clock.advance(1)
    gaps = [b[0] - a[0] for a, b in zip(post.calls, post.calls[1:], strict=False)]
    assert max(gaps) == 8
    assert service.counts.expired == 2
    assert service.pending() == 0


def test_pending_deliveries_survive_a_restart_in_order(tmp_path: Path) -> None:
    clock = task.Clock()
    failing = FakePost([500])
    first, ext = make_service(tmp_path, failing, clock)
    first.startService()
    record(ext, first, "enrolled", serial="node-3")
    record(ext, first, "running", serial="node-3")
    clock.advance(2)
    first.stopService()
    files = sorted((tmp_path / "extensions" / "webhooks" / "queue").rglob("*.json"))
    assert len(files) == 2

    working = FakePost([200])
    second, _ext = make_service(tmp_path, working, clock)
    second.startService()
    clock.advance(0)
    clock.advance(0)
    assert [json.loads(c[2])["event"] for c in working.calls] == ["enrolled", "state_changed"]
    assert [c[2] for c in working.calls] == [c[2] for c in failing.calls[:1]] + \
        [working.calls[1][2]]
    assert not list((tmp_path / "extensions" / "webhooks" / "queue").rglob("*.json"))


def test_the_queue_is_bounded(tmp_path: Path) -> None:
    clock = task.Clock()
    post = FakePost([500])
    service, ext = make_service(tmp_path, post, clock, max_queue=3)
    service.startService()
    for i in range(5):
        record(ext, service, "enrolled", serial=f"node-{i}")
    assert service.pending() == 3
    assert service.counts.dropped_full == 2


def test_chosen_events_only(tmp_path: Path) -> None:
    clock = task.Clock()
    post = FakePost([200])
    service, ext = make_service(tmp_path, post, clock, endpoints=[
        {"url": "http://127.0.0.1:9/a", "secret": SECRET, "events": ["boot_failed"]}])
    service.startService()
    record(ext, service, "enrolled", serial="node-5")
    record(ext, service, "tftp", mac="52:54:00:00:00:05", detail="undionly.kpxe complete")
    record(ext, service, "tftp", mac="52:54:00:00:00:05", detail="undionly.kpxe timed-out")
    clock.advance(0)
    assert [json.loads(c[2])["event"] for c in post.calls] == ["boot_failed"]


def test_event_kinds_and_admin_documents() -> None:
    recorder = BootEventRecorder()
    notice = recorder.announce("admin", 5.0, serial="node-6", detail="set_state by admin:ops")
    assert notice is not None and event_kinds(notice) == ["admin_action"]
    doc = json.loads(document("admin_action", notice, "x"))
    assert (doc["action"], doc["actor"], doc["serial"]) == ("set_state", "admin:ops", "node-6")


def test_schema_errors(tmp_path: Path) -> None:
    cfg = load_config({"state_dir": str(tmp_path), "extensions": [{"use": "webhooks", "config": {
        "endpoints": [{"url": "ftp://x", "secret": "short", "events": ["boom"]},
                      {"url": "http://x", "secret": SECRET, "secret_file": "/nonexistent"}],
        "retry_initial": 0}}]})
    problems = {str(p) for p in check_extensions(cfg, available={"webhooks": WebhooksExtension})}
    assert problems == {
        "extensions[0].config.endpoints[0].url: 'ftp://x' is not an http:// or https:// URL",
        "extensions[0].config.endpoints[0].secret: is shorter than 16 characters",
        "extensions[0].config.endpoints[0].events[0]: 'boom' is not one of enrolled, "
        "state_changed, installed, boot_failed, admin_action",
        "extensions[0].config.endpoints[1].secret: give exactly one of secret and secret_file",
        "extensions[0].config.endpoints[1].secret_file: cannot be read: [Errno 2] No such "
        "file or directory: '/nonexistent'",
        "extensions[0].config.retry_initial: 0 is below the minimum 0.01",
    }
    empty = load_config({"extensions": [{"use": "webhooks"}]})
    assert [str(p) for p in check_extensions(empty, available={"webhooks": WebhooksExtension})] \
        == ["extensions[0].config.endpoints: is required: a list of {url, secret, events}"]


# -- a real receiver and pxestack serve, restarted in between ---------------------------


class Receiver:
    """A local HTTP receiver: 500 while ``failing``, else 200 for a valid signature (the HMAC
    of the body with :data:`SECRET`, compared in constant time), 401 for another."""

    def __init__(self) -> None:
        self.failing = True
        self.attempts = 0
        self.accepted: list[dict[str, Any]] = []
        self.bad_signatures: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                outer.attempts += 1
                if outer.failing:
                    self.send_response(500)
                elif not hmac.compare_digest(
                        self.headers.get("X-Pxestack-Signature") or "",
                        "sha256=" + hmac.new(SECRET.encode(), body, "sha256").hexdigest()):
                    outer.bad_signatures.append(self.path)
                    self.send_response(401)
                else:
                    outer.accepted.append(json.loads(body) | {"_path": self.path})
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Any, what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_serve(tmp_path: Path, config: Path, base: str,
                runner: str = "serve") -> subprocess.Popen[str]:
    """``pxestack serve`` or (*runner* ``twistd``) ``twistd --nodaemon pxestack``."""
    command = [*PXESTACK, "serve", "--config", str(config)]
    if runner == "twistd":
        command = [str(Path(sys.executable).parent / "twistd"), "--nodaemon", "--pidfile=",
                   "pxestack", "--config", str(config)]
    proc = subprocess.Popen(command, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def up() -> bool:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2):
                return True
        except OSError:
            return False

    wait_for(up, "pxestack serve")
    return proc


def stop_serve(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err


def test_receiver_fails_then_recovers_across_a_restart(tmp_path: Path,
                                                       receiver: Receiver) -> None:
    """Deliveries queued while the receiver fails under ``pxestack serve`` are delivered,
    signed, by ``twistd pxestack`` after the restart (the extension found through its entry
    point by both)."""
    forged_url = receiver.url.replace("/hook", "/forged")
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "webhook.secret").write_text(SECRET + "\n")
    config = tmp_path / "pxestack.yaml"
    config.write_text(
        "state_dir: state\n"
        f"http:\n  listen: 127.0.0.1:{http_port}\n  public_url: {base}\n"
        "provision:\n"
        "  cluster_dir: state/cluster\n"
        "  enrolment: open\n"
        "  first_contact_rate: 0\n"
        "  network:\n"
        "    ip_range: {start: 127.0.20.10, end: 127.0.20.250}\n"
        "    subnet_size: 8\n"
        "    subnet_gateway: 127.0.0.1\n"
        "  api: {token_file: state/admin-token, generate_token: true}\n"
        "extensions:\n"
        "  - use: webhooks\n"
        "    config:\n"
        "      endpoints:\n"
        f"        - {{url: '{receiver.url}', secret_file: webhook.secret}}\n"
        # A second endpoint whose secret the receiver does not share: every signature it
        # sends is refused (401), so its delivery stays queued, never accepted.
        f"        - {{url: '{forged_url}', secret: another-secret-0123456789,"
        " events: [enrolled]}\n"
        "      retry_initial: 0.1\n"
        "      retry_max_delay: 0.5\n"
    )
    proc = start_serve(tmp_path, config, base)
    try:
        with urllib.request.urlopen(f"{base}/ipxebootscript?serial=hook-1&mac=52-54-00-00-01-01",
                                    timeout=10) as answer:
            answer.read()
        token = (tmp_path / "state" / "admin-token").read_text().strip()
        request = urllib.request.Request(
            f"{base}/admin/host/hook-1/set_state", method="PUT",
            data=json.dumps({"State": "installed"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 202
        wait_for(lambda: receiver.attempts >= 3, "failed attempts")
    finally:
        stop_serve(proc)
    queue = tmp_path / "state" / "extensions" / "webhooks" / "queue"
    assert len(list(queue.rglob("*.json"))) >= 3
    assert receiver.accepted == []

    receiver.failing = False
    proc = start_serve(tmp_path, config, base, runner="twistd")
    try:
        wait_for(lambda: len(list(queue.rglob("*.json"))) == 1
                 and len(receiver.bad_signatures) >= 2, "the good endpoint's queue to drain")
    finally:
        stop_serve(proc)
    # Only the endpoint with the wrong secret was refused (and retried), and its delivery is
    # still queued.
    assert set(receiver.bad_signatures) == {"/forged"}
    [left] = queue.rglob("*.json")
    assert "enrolled" in left.read_text()
    assert {doc["_path"] for doc in receiver.accepted} == {"/hook"}
    events = [doc["event"] for doc in receiver.accepted]
    assert events[0] == "enrolled"
    assert set(events) == {"enrolled", "admin_action", "state_changed", "installed"}
    assert all(doc["serial"] == "hook-1" for doc in receiver.accepted)
    assert len({doc["id"] for doc in receiver.accepted}) == len(events)


@pytest.mark.parametrize(("url", "logged"), [
    ("https://ops.example.com/pxestack", "https://ops.example.com/pxestack"),
    ("https://user:s3cret@ops.example.com:8443/hook?token=s3cret",
     "https://ops.example.com:8443/hook (query not shown)"),
    ("http://[2001:db8::1]/x", "http://[2001:db8::1]/x"),
])
def test_a_receivers_credentials_never_reach_the_log(url: str, logged: str) -> None:
    from pxestack_webhooks import loggable_url

    assert loggable_url(url) == logged
    assert "s3cret" not in loggable_url(url)
