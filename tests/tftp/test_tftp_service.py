"""Service composition and the ``pxestack tftp`` quick mode."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from pxestack.cli import build_parser
from pxestack.cli.tftp import config_from_args
from pxestack.config import ConfigError, load_config
from pxestack.service import Extensions, build_service
from pxestack.service.tftp import TftpService, build_tftp_services, session_settings
from pxestack.service.tftp_workers import TftpWorkerPool
from pxestack.tftp.source import CallableSource, FilesystemSource, UploadDirectory
from pxestack.wire.tftp import Data, Error, ReadRequest, decode_tftp, encode_tftp


class FakePort:
    def __init__(self, port: int, protocol: Any, interface: str) -> None:
        self.port, self.protocol, self.interface = port, protocol, interface
        self.stopped = False

    def getHost(self) -> Any:
        return type("Host", (), {"host": self.interface, "port": self.port})()

    def stopListening(self) -> Any:
        self.stopped = True
        return succeed(None)


class FakeUdpReactor(Clock):
    """Clock + listenUDP recorder + the fd-set calls transfers use."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "") -> FakePort:
        fake = FakePort(port, protocol, interface)
        self.ports.append(fake)
        return fake

    def addReader(self, reader: Any) -> None:
        pass

    def removeReader(self, reader: Any) -> None:
        pass


def test_build_service_tree(tmp_path: Path) -> None:
    config = load_config({"tftp": {"root": "boot", "listen": "127.0.0.1:10069",
                                   "max_blksize": 8192, "upload_dir": "up", "workers": 1}},
                         base_dir=tmp_path)
    reactor = FakeUdpReactor()
    root = build_service(config, reactor=reactor)
    tftp = root.getServiceNamed("tftp")
    assert isinstance(tftp, TftpService)
    assert (tmp_path / "boot").is_dir() and (tmp_path / "up").is_dir()
    assert isinstance(tftp.server.source, FilesystemSource)
    assert isinstance(tftp.server.upload, UploadDirectory)
    assert tftp.server.settings.limits.max_blksize == 8192
    root.privilegedStartService()
    root.startService()
    [port] = reactor.ports
    assert (port.interface, port.port) == ("127.0.0.1", 10069)
    root.stopService()
    assert port.stopped


def test_extension_source_replaces_the_root(tmp_path: Path) -> None:
    config = load_config({"tftp": {"root": "unused", "workers": 1}}, base_dir=tmp_path)
    source = CallableSource(lambda client, path: b"generated")
    [svc] = build_tftp_services(config, Extensions(tftp_source=source),
                                reactor=FakeUdpReactor())
    assert isinstance(svc, TftpService)
    assert svc.server.source is source
    assert not (tmp_path / "unused").exists()
    # With workers, the source stays in this process and the workers ask it.
    config = load_config({"tftp": {"root": "unused", "workers": 2}}, base_dir=tmp_path)
    [pool] = build_tftp_services(config, Extensions(tftp_source=source))
    assert isinstance(pool, TftpWorkerPool) and pool.source is source
    assert pool.worker_settings(pool.workers[0])["remote_source"] is True
    assert not (tmp_path / "unused").exists()


def test_settings_follow_the_config(tmp_path: Path) -> None:
    config = load_config({"tftp": {"retries": 3, "min_rto": 0.01, "initial_rto": 0.5,
                                   "max_rto": 2, "windowsize_option": False}},
                         base_dir=tmp_path)
    assert config.tftp is not None
    settings = session_settings(config.tftp)
    assert (settings.max_retries, settings.min_rto, settings.initial_rto, settings.max_rto) \
        == (3, 0.01, 0.5, 2.0)
    assert settings.limits.allow_windowsize is False


def test_config_rejects_inconsistent_rto(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"tftp": {"min_rto": 2.0, "initial_rto": 1.0}}, base_dir=tmp_path)
    assert any(p.path == "tftp.initial_rto" for p in info.value.problems)


def test_cli_arguments_become_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["tftp", "--root", str(tmp_path), "--listen", "127.0.0.1:1069", "--max-blksize",
         "65464", "--single-port", "--per-client-limit", "4"])
    config = config_from_args(args)
    assert config.tftp is not None
    assert config.tftp.listen == ("127.0.0.1", 1069)
    assert (config.tftp.max_blksize, config.tftp.single_port,
            config.tftp.per_client_limit) == (65464, True, 4)


def test_cli_reports_bad_blksize(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pxestack", "tftp", "--root", str(tmp_path), "--max-blksize",
         "70000"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "tftp.max_blksize" in result.stderr


def test_cli_serves_on_loopback(tmp_path: Path) -> None:
    """End to end over loopback with a 20-line client: RRQ, DATA, ACK."""
    (tmp_path / "hello.txt").write_bytes(b"hello over tftp")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen(
        [sys.executable, "-m", "pxestack", "tftp", "--root", str(tmp_path), "--listen",
         f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for _ in range(200):
            line = server.stderr.readline()
            if "listening on udp" in line or not line:
                break
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(10)
        client.sendto(encode_tftp(ReadRequest("hello.txt")), ("127.0.0.1", port))
        data, tid = client.recvfrom(2048)
        assert decode_tftp(data) == Data(1, b"hello over tftp")
        assert tid[1] != port  # a fresh transfer ID (RFC 1350 §4)
        client.sendto(b"\x00\x04\x00\x01", tid)
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert server.returncode == 0


def _children(pid: int) -> list[int]:
    """PIDs whose parent is *pid* (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_cli_workers_share_the_port(tmp_path: Path) -> None:
    """--workers 2: two worker processes on one SO_REUSEPORT port, stopped with the main."""
    (tmp_path / "f.bin").write_bytes(b"w" * 3000)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen(
        [sys.executable, "-m", "pxestack", "tftp", "--root", str(tmp_path), "--listen",
         f"127.0.0.1:{port}", "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        serving = 0
        for _ in range(400):
            line = server.stderr.readline()
            if not line:
                break
            serving += "serving (pid" in line
            if serving == 2:
                break
        assert serving == 2
        workers = _children(server.pid)
        assert len(workers) == 2
        # Different source ports hash to either process; every one is served.
        for _ in range(6):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.settimeout(10)
            client.sendto(encode_tftp(ReadRequest("f.bin")), ("127.0.0.1", port))
            data, tid = client.recvfrom(2048)
            assert decode_tftp(data) == Data(1, b"w" * 512)
            client.sendto(encode_tftp(Error(0, "done")), tid)
            client.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert server.returncode == 0
    for pid in workers:
        # The main process waited for each worker: gone, not even a zombie.
        assert not Path(f"/proc/{pid}").exists()
