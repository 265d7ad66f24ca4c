"""``pxestack http`` as a real server on 127.0.0.1, exercised with curl, wget and raw sockets.

These tests check what only a real kernel socket shows: that the sendfile fast path is
really taken (its byte counter, read from /healthz), that concurrent downloads are
byte-exact, that a client vanishing mid-transfer leaks no descriptor in the server, and that
a client that stops reading is dropped.  Every wait is bounded; the server is a child
process stopped by PID.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require

BIG = 16 * 1024 * 1024
LISTENING = re.compile(rb"http listening on http://127\.0\.0\.1:(\d+)/")


@dataclass
class Server:
    """A running ``pxestack http`` child process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def status(self) -> dict[str, dict[str, int]]:
        """The /healthz JSON counters (the request itself is counted as a connection)."""
        with urllib.request.urlopen(self.url("/healthz?format=json"), timeout=5) as reply:
            document: dict[str, dict[str, int]] = json.loads(reply.read())
            return document

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll *predicate* until it holds; fail naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("loopback")
    root = base / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "small.txt").write_bytes(b"0123456789" * 100)
    (root / "escape").symlink_to(base / "secret")
    (base / "secret").write_bytes(b"secret")
    return root


@pytest.fixture(scope="module")
def start_server(
    assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Server]]:
    require(shutil.which("curl") is not None, "needs curl")
    started: list[Server] = []

    def start(*extra: str) -> Server:
        log = tmp_path_factory.mktemp("log") / "server.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "pxestack", "http", "--root", str(assets),
                 "--listen", "127.0.0.1:0", *extra],
                stdout=sink, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = LISTENING.search(log.read_bytes())
            if found:
                server = Server(process, int(found.group(1)), log)
                started.append(server)
                return server
            if process.poll() is not None:
                break
            time.sleep(0.05)
        process.kill()
        process.wait(timeout=5)
        raise AssertionError(f"server did not start:\n{log.read_text()}")

    yield start
    for server in started:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "--silent", "--show-error", *args],
                          capture_output=True, timeout=timeout, check=False)


def test_concurrent_downloads_are_byte_exact_and_use_sendfile(
    server: Server, assets: Path, tmp_path: Path
) -> None:
    expected = hashlib.sha256((assets / "big.bin").read_bytes()).hexdigest()
    before = server.status()["totals"]
    outputs = [tmp_path / f"copy{i}" for i in range(8)]
    processes = [
        subprocess.Popen(["curl", "--silent", "--fail", "--max-time", "60", "-o", str(out),
                          server.url("/assets/big.bin")])
        for out in outputs
    ]
    for process in processes:
        assert process.wait(timeout=90) == 0
    for out in outputs:
        assert hashlib.sha256(out.read_bytes()).hexdigest() == expected
    after = server.status()["totals"]
    assert after["completed"] - before["completed"] == 8
    # every body byte took the zero-copy path
    assert after["sendfile_bytes"] - before["sendfile_bytes"] == 8 * BIG
    assert after["copied_bytes"] == before["copied_bytes"]


def test_copy_path_over_a_real_socket(
    start_server: Callable[..., Server], assets: Path, tmp_path: Path
) -> None:
    copy_server = start_server("--no-sendfile")
    out = tmp_path / "copy"
    result = curl("--fail", "-o", str(out), copy_server.url("/big.bin"))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (assets / "big.bin").read_bytes()
    totals = copy_server.status()["totals"]
    assert totals["copied_bytes"] == BIG and totals["sendfile_bytes"] == 0


@pytest.mark.parametrize(
    ("curl_range", "first", "last"),
    [("0-0", 0, 0), (f"{BIG - 1}-{BIG - 1}", BIG - 1, BIG - 1), ("-10", BIG - 10, BIG - 1),
     (f"{BIG - 5}-{BIG + 100}", BIG - 5, BIG - 1), ("1000-1999999", 1000, 1999999)],
)
def test_ranges_with_curl(
    server: Server, assets: Path, curl_range: str, first: int, last: int
) -> None:
    result = curl("-r", curl_range, "-D", "-", server.url("/big.bin"))
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206")
    assert f"Content-Range: bytes {first}-{last}/{BIG}".encode() in head
    with (assets / "big.bin").open("rb") as stream:
        stream.seek(first)
        assert body == stream.read(last - first + 1)


def test_range_past_the_end_is_416(server: Server) -> None:
    result = curl("-r", f"{BIG}-", "-D", "-", "-o", "/dev/null", server.url("/big.bin"))
    assert result.stdout.startswith(b"HTTP/1.1 416")
    assert f"Content-Range: bytes */{BIG}".encode() in result.stdout


def test_head_and_conditional_get(server: Server) -> None:
    head = curl("-I", server.url("/small.txt")).stdout.decode()
    assert head.startswith("HTTP/1.1 200")
    assert "Content-Length: 1000" in head
    etag = re.search(r"ETag: (\S+)", head)
    modified = re.search(r"Last-Modified: ([^\r\n]+)", head)
    assert etag and modified
    by_etag = curl("-o", "/dev/null", "-w", "%{http_code}", "-H",
                   f"If-None-Match: {etag.group(1)}", server.url("/small.txt"))
    assert by_etag.stdout == b"304"
    by_date = curl("-o", "/dev/null", "-w", "%{http_code}", "-H",
                   f"If-Modified-Since: {modified.group(1)}", server.url("/small.txt"))
    assert by_date.stdout == b"304"


@pytest.mark.parametrize(
    "path", ["/assets/../secret", "/assets/%2e%2e/secret", "/escape", "/assets/"],
)
def test_traversal_and_symlink_escape_are_404(server: Server, path: str) -> None:
    result = curl("--path-as-is", "-o", "-", "-w", "\n%{http_code}", server.url(path))
    assert result.stdout.endswith(b"404")
    assert b"secret" not in result.stdout.split(b"\n")[0]


def test_wget_downloads_and_resumes(server: Server, assets: Path, tmp_path: Path) -> None:
    require(shutil.which("wget") is not None, "needs wget")
    original = (assets / "big.bin").read_bytes()
    target = tmp_path / "big.bin"
    target.write_bytes(original[:1234567])  # an interrupted earlier download
    result = subprocess.run(
        ["wget", "--quiet", "--continue", "--tries=1", "--timeout=30", "-O", str(target),
         server.url("/assets/big.bin")],
        capture_output=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == original  # resumed with Range: bytes=1234567-


def stable_fd_count(server: Server) -> int:
    """The server's descriptor count once idle connections have gone away."""
    counts = [server.open_fds()]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.1)
        counts.append(server.open_fds())
        if counts[-1] == counts[-2] == counts[-3 if len(counts) > 2 else -2]:
            return counts[-1]
    return counts[-1]


def slow_reader() -> socket.socket:
    """A client socket with a tiny receive buffer, so the server fills it quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(10)
    return sock


def test_client_vanishing_mid_transfer_leaks_no_descriptor(server: Server) -> None:
    aborted_before = server.status()["totals"]["aborted"]
    baseline = stable_fd_count(server)
    sock = slow_reader()
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    wait_for(lambda: server.open_fds() >= baseline + 2, "the transfer to start")
    # close with unread data: the kernel answers the server with a reset
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    wait_for(lambda: server.status()["totals"]["aborted"] > aborted_before, "the abort")
    wait_for(lambda: server.open_fds() == baseline, "descriptors to be released")


def test_stalled_reader_is_dropped(start_server: Callable[..., Server]) -> None:
    strict = start_server("--stall-timeout", "1")
    sock = slow_reader()
    try:
        sock.connect(("127.0.0.1", strict.port))
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        # read nothing more: the server must drop us within its stall timeout
        wait_for(lambda: strict.status()["connections"]["stalled"] == 1, "the watchdog")
        totals = strict.status()["totals"]
        assert totals["aborted"] == 1 and totals["completed"] == 0
        # the connection is really gone: reading drains the buffered data, then EOF/reset
        received = 0
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < BIG
    finally:
        sock.close()


def test_per_client_connection_cap_answers_503(
    start_server: Callable[..., Server],
) -> None:
    capped = start_server("--max-connections-per-client", "2")
    holders = []
    try:
        for _ in range(2):
            holder = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
            holder.sendall(b"GET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            assert holder.recv(65536).startswith(b"HTTP/1.1 200")  # kept alive
            holders.append(holder)
        refused = curl("-o", "/dev/null", "-w", "%{http_code}", capped.url("/small.txt"))
        assert refused.stdout == b"503"
    finally:
        for holder in holders:
            holder.close()
    wait_for(lambda: curl("-o", "/dev/null", "-w", "%{http_code}",
                          capped.url("/small.txt")).stdout == b"200", "slots to free up")


def test_keep_alive_after_sendfile_and_http_10(
    server: Server, assets: Path, tmp_path: Path
) -> None:
    before = server.status()["connections"]["accepted"]
    first, second = tmp_path / "a", tmp_path / "b"
    # one curl, two URLs: the second request reuses the connection the first body used
    result = curl("--fail", "-o", str(first), server.url("/big.bin"),
                  "-o", str(second), server.url("/assets/big.bin"))
    assert result.returncode == 0, result.stderr
    expected = (assets / "big.bin").read_bytes()
    assert first.read_bytes() == expected and second.read_bytes() == expected
    assert server.status()["connections"]["accepted"] - before == 2  # curl's + this status
    old = curl("--http1.0", "--fail", "-o", "-", server.url("/small.txt"))
    assert old.returncode == 0 and old.stdout == (assets / "small.txt").read_bytes()


def read_answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sent until it closed (or *timeout*), without failing on a reset."""
    sock.settimeout(timeout)
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def test_a_real_client_gets_its_file_during_a_slow_head_flood(
    start_server: Callable[..., Server], record_property: Callable[[str, object], None],
) -> None:
    """300 half-sent heads against 128 slots: a new client is served at once, and the
    flood is answered 503 (evicted) or 408 (head deadline) within seconds."""
    server = start_server("--max-connections", "128", "--max-connections-per-client", "1000",
                          "--header-timeout", "2")
    flood: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /small.txt HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            flood.append(sock)
        started = time.monotonic()
        with urllib.request.urlopen(server.url("/small.txt"), timeout=5) as reply:
            assert reply.status == 200
            assert reply.read() == b"0123456789" * 100
        elapsed = time.monotonic() - started
        record_property("real_client_seconds_during_flood", round(elapsed, 3))
        assert elapsed < 2.0, f"the real client waited {elapsed:.2f} s"
        answers = [read_answer(sock, timeout=6.0)[:12] for sock in flood[-40:]]
        assert all(answer in (b"HTTP/1.1 408", b"HTTP/1.1 503") for answer in answers), answers
        assert b"HTTP/1.1 408" in answers
    finally:
        for sock in flood:
            sock.close()
    counters = server.status()["connections"]
    assert counters["evicted"] > 0 and counters["head_timeouts"] > 0


def test_a_huge_declared_body_is_refused_before_it_is_sent(server: Server) -> None:
    for path in (b"/healthz", b"/small.txt"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: t\r\n"
                         b"Content-Length: 300000000\r\n\r\n")
            answer = read_answer(sock, timeout=3.0)
            assert answer.startswith(b"HTTP/1.1 413 "), answer
            assert time.monotonic() - started < 2.0


def test_a_request_line_over_the_header_cap_gets_400(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /" + b"a" * 20000)
        assert read_answer(sock, timeout=3.0).startswith(b"HTTP/1.1 400 ")
