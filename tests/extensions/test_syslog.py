"""The syslog extension: parsing, framing and limits in-process; real ``logger`` clients
(util-linux) against ``pxestack serve`` with the extension found through its entry point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task

from pxestack.bootevents import BootEventRecorder
from pxestack.config import load_config
from pxestack.errors import ConfigError
from pxestack.extensions import check_extensions, setup_extensions
from pxestack.service import Extensions
from pxestack_syslog import SyslogExtension
from pxestack_syslog.parse import FrameError, Framer, parse_message, parse_netconsole
from pxestack_syslog.server import SyslogReceiver, SyslogUdp, TokenBuckets

PXESTACK = [sys.executable, "-m", "pxestack"]
MAC = "52:54:00:12:34:56"


# -- parsing and framing -----------------------------------------------------------------


def test_rfc5424_with_structured_data() -> None:
    message = parse_message(
        b'<11>1 2026-12-07T10:00:00.000Z node1 anaconda 42 ID7 [ex@1 a="x\\]y"] disk ok\n')
    assert message is not None
    assert (message.format, message.hostname, message.app, message.text) == (
        "rfc5424", "node1", "anaconda", "disk ok")
    assert message.line() == "err anaconda: disk ok"


def test_rfc3164_with_and_without_hostname() -> None:
    message = parse_message(b"<14>Dec  7 10:00:00 node1 installer[99]: partitioning /dev/sda")
    assert message is not None
    assert (message.format, message.hostname, message.app, message.text) == (
        "rfc3164", "node1", "installer", "partitioning /dev/sda")
    bare = parse_message(b"<14>kernel: netconsole line")
    assert bare is not None and (bare.app, bare.text) == ("kernel", "netconsole line")


@pytest.mark.parametrize("data", [b"", b"no priority", b"<192>too high", b"<01>leading zero",
                                  b"<1", b"<>x"])
def test_hostile_messages_are_refused(data: bytes) -> None:
    assert parse_message(data) is None


def test_netconsole_plain_and_extended_datagrams() -> None:
    [plain] = parse_netconsole(b"[   12.345678] installer: partitioning /dev/vda\n")
    assert (plain.format, plain.app, plain.text, plain.severity_name) == (
        "netconsole", "kernel", "installer: partitioning /dev/vda", "info")
    [untimed] = parse_netconsole(b"netconsole: network logging started\n")
    assert untimed.line() == "info kernel: netconsole: network logging started"
    # Extended (netconsole=+...): the level comes from the header, continuation lines
    # (" KEY=value") are metadata.
    [extended] = parse_netconsole(
        b"3,1042,17234560,-;virtio_net virtio0 eth0: link down\n SUBSYSTEM=net\n")
    assert (extended.severity_name, extended.text) == (
        "err", "virtio_net virtio0 eth0: link down")
    # A facility in the prefix (kmsg writes are "user", 8 + level) keeps the level only.
    [user] = parse_netconsole(b"13,7,100,-;installer: step")
    assert user.severity_name == "notice"


@pytest.mark.parametrize("data", [b"", b"\n\n", b"\xff\xfe binary", b"bell\x07",
                                  b"nul\x00inside", b"  \t "])
def test_netconsole_refuses_what_is_not_text(data: bytes) -> None:
    assert parse_netconsole(data) == []


@given(st.binary(max_size=600))
def test_netconsole_parser_never_raises(data: bytes) -> None:
    for message in parse_netconsole(data):
        assert message.text and "\n" not in message.text and message.app == "kernel"


def test_framer_octet_counting_and_lines() -> None:
    framer = Framer(100)
    assert framer.feed(b"5 <1>ab6 <1>abc<2>line one\n<3>li") == [
        b"<1>ab", b"<1>abc", b"<2>line one"]
    assert framer.feed(b"ne two\0") == [b"<3>line two"]


@pytest.mark.parametrize("data", [b"101 ", b"99999999 ", b"x" * 101, b"0 "])
def test_framer_refuses_oversize_and_bad_counts(data: bytes) -> None:
    with pytest.raises(FrameError):
        Framer(100).feed(data)


def test_token_bucket_is_bounded_and_refills() -> None:
    clock = task.Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, max_sources=2, clock=clock.seconds)
    assert [buckets.allow("a") for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert buckets.allow("a") and not buckets.allow("a")
    buckets.allow("b")
    buckets.allow("c")
    assert len(buckets) == 2


# -- the receiver, in-process ------------------------------------------------------------


def receiver_for(tmp_path: Path, **settings: Any) -> tuple[SyslogReceiver, Extensions]:
    config = load_config({"state_dir": str(tmp_path),
                          "extensions": [{"use": "syslog", "config": settings}]})
    ext = Extensions(events=BootEventRecorder())
    clock = task.Clock()
    loaded = setup_extensions(config, ext, reactor=clock, available={"syslog": SyslogExtension})
    receiver = loaded[0].context.services[0].receiver  # type: ignore[attr-defined]
    assert isinstance(receiver, SyslogReceiver)
    return receiver, ext


def test_lines_reach_the_machine_known_at_the_address(tmp_path: Path) -> None:
    receiver, ext = receiver_for(tmp_path, burst=2, rate=0.1)
    ext.events.record("script", 1.0, serial="node-7", mac=MAC, ip="10.0.0.7")
    receiver.receive(b"<14>installer: step 1", "10.0.0.7")
    receiver.receive(b"<14>installer: step 2", "10.0.0.7")
    receiver.receive(b"<14>installer: step 3", "10.0.0.7")  # beyond the burst
    receiver.receive(b"<14>who: am I", "10.0.0.8")
    receiver.receive(b"junk", "10.0.0.7")
    receiver.receive(b"<14>" + b"x" * 5000, "10.0.0.9")
    lines = ext.events.logs("node-7")
    assert [e.detail for e in lines] == ["info installer: step 1", "info installer: step 2"]
    assert lines[0].ip == "10.0.0.7"
    assert receiver.counts == {"accepted": 2, "rate_limited": 2, "malformed": 0,
                               "oversize": 1, "unknown_source": 1, "refused_connection": 0}
    # Log lines do not change the boot timeline.
    assert [e.phase for e in ext.events.steps("node-7")] == ["script"]


def test_netconsole_datagrams_reach_the_machine(tmp_path: Path) -> None:
    receiver, ext = receiver_for(tmp_path)
    ext.events.record("script", 1.0, serial="node-8", mac=MAC, ip="10.0.0.8")
    receiver.receive(b"[    4.200000] netconsole: network logging started\n", "10.0.0.8",
                     datagram=True)
    receiver.receive(b"6,99,4300000,-;installer: step 1", "10.0.0.8", datagram=True)
    # Without a <PRI> only a datagram is netconsole: on TCP it is malformed.
    receiver.receive(b"installer: over tcp", "10.0.0.8")
    receiver.receive(b"\x00\x01binary", "10.0.0.8", datagram=True)
    assert [e.detail for e in ext.events.logs("node-8")] == [
        "info kernel: netconsole: network logging started", "info kernel: installer: step 1"]
    assert (receiver.counts["accepted"], receiver.counts["malformed"]) == (2, 2)


def test_lines_packed_in_one_datagram_each_take_a_token(tmp_path: Path) -> None:
    receiver, ext = receiver_for(tmp_path, burst=3, rate=0.1)
    ext.events.record("script", 1.0, serial="node-6", mac=MAC, ip="10.0.0.6")
    receiver.receive(b"same\nline 2\nsame\nline 4\nline 5\n", "10.0.0.6", datagram=True)
    assert [e.detail for e in ext.events.logs("node-6")] == [
        "info kernel: same", "info kernel: line 2", "info kernel: same"]
    assert (receiver.counts["accepted"], receiver.counts["rate_limited"]) == (1, 1)
    receiver.receive(b"line 6", "10.0.0.6", datagram=True)  # the bucket is empty
    assert receiver.counts["rate_limited"] == 2


def test_the_udp_socket_gets_the_receive_buffer_asked_for(tmp_path: Path) -> None:
    receiver, _ext = receiver_for(tmp_path, udp_receive_buffer=1 << 20)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2

        class Transport:
            def getHandle(self) -> socket.socket:
                return sock

        udp = SyslogUdp(receiver)
        udp.transport = Transport()  # type: ignore[assignment]
        udp.startProtocol()
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    with open("/proc/sys/net/core/rmem_max") as limit:
        rmem_max = int(limit.read())
    assert granted > default or rmem_max <= default
    assert granted == 1 << 20 or (os.geteuid() != 0 and granted == rmem_max)


def test_netconsole_can_be_turned_off(tmp_path: Path) -> None:
    receiver, ext = receiver_for(tmp_path, netconsole=False)
    ext.events.record("script", 1.0, serial="node-9", mac=MAC, ip="10.0.0.9")
    receiver.receive(b"[    4.2] plain kernel line", "10.0.0.9", datagram=True)
    assert ext.events.logs("node-9") == []
    assert receiver.counts["malformed"] == 1


def test_schema_errors(tmp_path: Path) -> None:
    config = load_config({"state_dir": str(tmp_path), "extensions": [
        {"use": "syslog", "config": {"listen": "1.2.3:514", "rate": 0, "udp": False,
                                     "tcp": False, "max_message_bytes": 10}}]})
    problems = {str(p) for p in check_extensions(config, available={"syslog": SyslogExtension})}
    assert problems == {
        "extensions[0].config.listen: '1.2.3:514' '1.2.3' is not an IPv4 address",
        "extensions[0].config.rate: 0 is below the minimum 0.1",
        "extensions[0].config.max_message_bytes: 10 is below the minimum 480",
        "extensions[0].config.tcp: udp and tcp are both false: nothing would listen",
    }
    with pytest.raises(ConfigError):
        setup_extensions(config, Extensions(), reactor=task.Clock(),
                         available={"syslog": SyslogExtension})


# -- real clients against pxestack serve ------------------------------------------------


def free_port() -> int:
    """A port free for both TCP and UDP on loopback."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


def wait_http(url: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def logger(port: int, *args: str, stdin: str | None = None) -> None:
    subprocess.run(["logger", "--server", "127.0.0.1", "--port", str(port), *args],
                   input=stdin, text=True, check=True, timeout=20)


def scrape(base: str, name: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        body = answer.read().decode()
    return {s.labels.get("outcome", ""): s.value
            for f in text_string_to_metric_families(body) for s in f.samples
            if s.name == name}


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """``pxestack serve`` (or ``twistd -n pxestack`` with the parameter ``twistd``) with the
    syslog extension enabled through its entry point."""
    require(shutil.which("logger") is not None, "logger (util-linux) is not installed")
    http_port, syslog_port = free_port(), free_port()
    (tmp_path / "state").mkdir(mode=0o700)
    config = tmp_path / "pxestack.yaml"
    config.write_text(
        "state_dir: state\n"
        "http:\n"
        f"  listen: 127.0.0.1:{http_port}\n"
        f"  public_url: http://127.0.0.1:{http_port}\n"
        "provision:\n"
        "  cluster_dir: state/cluster\n"
        "  enrolment: open\n"
        "  first_contact_rate: 0\n"
        "  network:\n"
        "    ip_range: {start: 127.0.20.10, end: 127.0.20.250}\n"
        "    subnet_size: 8\n"
        "    subnet_gateway: 127.0.0.1\n"
        "  api:\n"
        "    token_file: state/admin-token\n"
        "    generate_token: true\n"
        "extensions:\n"
        "  - use: syslog\n"
        f"    config: {{listen: '127.0.0.1:{syslog_port}', rate: 1, burst: 20}}\n"
    )
    command = [*PXESTACK, "serve", "--config", str(config)]
    if getattr(request, "param", "serve") == "twistd":
        command = [str(Path(sys.executable).parent / "twistd"), "--nodaemon", "--pidfile=",
                   "pxestack", "--config", str(config)]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_http(base + "/healthz")
        yield tmp_path, base, syslog_port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def ctl(tmp_path: Path, base: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PXESTACK, "ctl", "--server", base, "--token-file",
         str(tmp_path / "state" / "admin-token"), *args],
        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("server", ["serve", "twistd"], indirect=True)
def test_logger_lines_reach_the_timeline_and_ctl_logs(server: Any) -> None:
    tmp_path, base, port = server
    # First contact from 127.0.0.1: the iPXE script request names the serial and MAC.
    with urllib.request.urlopen(
            f"{base}/ipxebootscript?serial=node-1&mac={MAC.replace(':', '-')}",
            timeout=10) as answer:
        answer.read()
    logger(port, "--udp", "--rfc5424", "-t", "anaconda", "udp 5424 line")
    logger(port, "--tcp", "--rfc3164", "-t", "installer", "tcp 3164 line")
    logger(port, "--tcp", "--octet-count", "--rfc5424", "-t", "curtin", "tcp counted line")
    wanted = ["anaconda: udp 5424 line", "installer: tcp 3164 line",
              "curtin: tcp counted line"]
    end = time.monotonic() + 20
    while True:
        result = ctl(tmp_path, base, "logs", "node-1")
        assert result.returncode == 0, result.stderr
        if all(w in result.stdout for w in wanted) or time.monotonic() > end:
            break
        time.sleep(0.3)
    for line in wanted:
        assert line in result.stdout
    assert "127.0.0.1" in result.stdout

    # --follow prints a line sent after it started.
    follow = subprocess.Popen(
        [*PXESTACK, "ctl", "--server", base, "--token-file",
         str(tmp_path / "state" / "admin-token"), "logs", "node-1", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        seen = [follow.stdout.readline() for _ in range(3)]
        assert all(seen)
        logger(port, "--udp", "-t", "late", "a line while following")
        assert "late: a line while following" in follow.stdout.readline()
    finally:
        follow.send_signal(signal.SIGINT)
        follow.communicate(timeout=20)

    # The JSON form, and an unknown host.
    json_result = ctl(tmp_path, base, "-o", "json", "logs", "node-1")
    assert {e["phase"] for e in json.loads(json_result.stdout)} == {"log"}
    assert ctl(tmp_path, base, "logs", "nobody").returncode == 3


def test_a_burst_beyond_the_rate_is_dropped_and_counted(server: Any) -> None:
    tmp_path, base, port = server
    with urllib.request.urlopen(f"{base}/ipxebootscript?serial=node-2&mac=52-54-00-00-00-02",
                                timeout=10) as answer:
        answer.read()
    lines = "".join(f"burst line {i}\n" for i in range(200))
    logger(port, "--tcp", "--rfc5424", "-t", "burst", stdin=lines)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        counts = scrape(base, "pxestack_syslog_messages_total")
        if counts.get("accepted", 0) + counts.get("rate_limited", 0) >= 200:
            break
        time.sleep(0.3)
    assert counts["rate_limited"] >= 170
    assert 20 <= counts["accepted"] <= 30
    kept = ctl(tmp_path, base, "-o", "json", "logs", "node-2")
    assert len(json.loads(kept.stdout)) == counts["accepted"]


def test_unknown_source_is_dropped_and_counted(server: Any) -> None:
    _tmp_path, base, port = server
    logger(port, "--udp", "nobody booted from here")
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if scrape(base, "pxestack_syslog_messages_total").get("unknown_source", 0) >= 1:
            return
        time.sleep(0.2)
    raise AssertionError("the line from an unknown source was not counted")


def test_installed_through_the_entry_point() -> None:
    assert "pxestack_syslog" in {ep.value.split(":")[0] for ep in _entry_points()}


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group="pxestack.extensions"))

