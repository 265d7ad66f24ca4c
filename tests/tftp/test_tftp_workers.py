"""TFTP worker processes: configuration, limits, restart back-off, the channel's two ends."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from pxestack.config import ConfigError, load_config
from pxestack.metrics import Metrics
from pxestack.paths import PathNotFound
from pxestack.service import Extensions, build_service
from pxestack.service.tftp import TftpService
from pxestack.service.tftp_worker import ChannelSource, WorkerLink, transfer_record
from pxestack.service.tftp_workers import (
    AggregateStats,
    RestartBackoff,
    TftpWorkerPool,
    _Channel,
    split_limits,
)
from pxestack.tftp.channel import Frame, FrameDecoder, FrameKind, encode_frame
from pxestack.tftp.source import CallableSource, TftpClient
from pxestack.tftp.stats import Outcome, SessionStats

# ------------------------------------------------------------------------ configuration


def test_workers_default_to_the_usable_cpus(tmp_path: Path) -> None:
    config = load_config({"tftp": {}}, base_dir=tmp_path)
    assert config.tftp is not None
    assert config.tftp.workers == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", [0, -1, 65, "two", True])
def test_bad_workers_name_the_field(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"tftp": {"workers": value}}, base_dir=tmp_path)
    assert [p.path for p in info.value.problems] == ["tftp.workers"]


def test_one_worker_keeps_the_in_reactor_service(tmp_path: Path) -> None:
    config = load_config({"tftp": {"workers": 1}}, base_dir=tmp_path)
    assert isinstance(build_service(config).getServiceNamed("tftp"), TftpService)


def test_several_workers_make_a_pool_unless_the_embedder_says_no(tmp_path: Path) -> None:
    config = load_config({"tftp": {"workers": 2}}, base_dir=tmp_path)
    pool = build_service(config).getServiceNamed("tftp")
    assert isinstance(pool, TftpWorkerPool) and len(pool.workers) == 2
    embedded = build_service(config, Extensions(tftp_in_reactor=True))
    assert isinstance(embedded.getServiceNamed("tftp"), TftpService)


# ------------------------------------------------------------------------ limits


def test_split_limits_never_exceed_the_total() -> None:
    shares = [split_limits(512, 64, 3, index) for index in range(3)]
    assert [share for share, _ in shares] == [171, 171, 170]
    assert {per_client for _, per_client in shares} == {22}
    assert [split_limits(1, 1, 2, index) for index in range(2)] == [(1, 1), (1, 1)]


# ------------------------------------------------------------------------ back-off


def test_restart_backoff_grows_and_resets_after_a_stable_run() -> None:
    backoff = RestartBackoff(initial=0.5, factor=2.0, maximum=4.0, stable=10.0)
    assert [backoff.delay(0.0, 1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.delay(0.0, 10.0) == 0.5


class FakeProcess:
    def __init__(self, pid: int, protocol: Any) -> None:
        self.pid = pid
        self.protocol = protocol
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def end(self, signal: int = 15) -> None:
        self.protocol.processEnded(Failure(ProcessTerminated(signal=signal)))

    def closeStdin(self) -> None:
        pass


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.lost = False

    def write(self, data: bytes) -> None:
        self.written += data

    def loseConnection(self) -> None:
        self.lost = True


class PoolReactor(Clock):
    """A Clock that records spawned workers instead of starting processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []
        self.processes: list[FakeProcess] = []
        self.channels: list[_Channel] = []

    def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(FakeTransport())
        self.channels.append(protocol)

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any,
                     childFDs: dict[int, Any]) -> FakeProcess:
        self.spawned.append((protocol, args, childFDs))
        self.processes.append(FakeProcess(10000 + len(self.spawned), protocol))
        return self.processes[-1]


def make_pool(tmp_path: Path, workers: int = 2, **extra: Any) -> tuple[TftpWorkerPool,
                                                                       PoolReactor]:
    config = load_config({"tftp": {"workers": workers, "listen": "127.0.0.1:0",
                                   "root": str(tmp_path)}}, base_dir=tmp_path)
    reactor = PoolReactor()
    return TftpWorkerPool(config, reactor=reactor, **extra), reactor


def test_dead_worker_restarts_with_backoff(tmp_path: Path) -> None:
    pool, reactor = make_pool(tmp_path)
    pool.startService()
    try:
        assert len(reactor.spawned) == 2
        ports = {worker.listen.getsockname()[1] for worker in pool.workers}  # type: ignore[union-attr]
        assert len(ports) == 1  # every worker on the one port
        protocol, args, fds = reactor.spawned[0]
        assert args[1:3] == ["-m", "pxestack.service.tftp_worker"]
        assert fds[3] == pool.workers[0].listen.fileno()  # type: ignore[union-attr]
        killed = Failure(ProcessTerminated(signal=9))
        reactor.advance(1.0)
        protocol.processEnded(killed)
        assert len(reactor.spawned) == 2 and pool.workers[0].pid is None
        reactor.advance(0.49)
        assert len(reactor.spawned) == 2
        reactor.advance(0.01)
        assert len(reactor.spawned) == 3 and pool.workers[0].pid == 10003
        # Dying again at once doubles the wait.
        reactor.spawned[-1][0].processEnded(killed)
        reactor.advance(0.99)
        assert len(reactor.spawned) == 3
        reactor.advance(0.01)
        assert len(reactor.spawned) == 4
    finally:
        stopped = stop(pool)
    assert stopped.called
    assert all(worker.listen is None for worker in pool.workers)


def stop(pool: TftpWorkerPool) -> Any:
    """Stop *pool*, its fake workers obeying SIGTERM at once."""
    stopped = pool.stopService()
    for worker in pool.workers:
        if worker.process is not None:
            worker.process.end()
    return stopped


def test_stop_signals_every_worker_by_pid(tmp_path: Path) -> None:
    pool, reactor = make_pool(tmp_path)
    pool.startService()
    stopped = pool.stopService()
    first, second = reactor.processes
    assert first.signals == second.signals == ["TERM"]
    first.end()
    assert not stopped.called
    reactor.advance(10.0)  # the other one ignored SIGTERM
    assert second.signals == ["TERM", "KILL"]
    second.end(9)
    assert stopped.called
    assert len(reactor.spawned) == 2  # nothing restarted while stopping


# ------------------------------------------------------------------------ stats and logs


def finished(outcome: Outcome = Outcome.COMPLETE) -> SessionStats:
    return SessionStats(("10.0.0.9", 3000), "a.bin", outcome, 1000, 2, 0, 512, 1, 1000,
                        5.0, 6.5, 0.001, "")


def test_stats_reach_metrics_and_survive_a_restart(tmp_path: Path) -> None:
    pool, reactor = make_pool(tmp_path)
    metrics = Metrics()
    metrics.attach_tftp_server(pool)
    pool.startService()
    channel = reactor.channels[1]  # worker 0: source requests, then events
    channel.dataReceived(encode_frame(Frame(FrameKind.STATS, 0, {
        "counters": {"requests": 3, "completed": 1, "active": 2},
        "transfers": [transfer_record(finished()), ["garbage"]]})))
    assert pool.stats.active == 2
    text = metrics.render()[0].decode()
    assert 'pxestack_tftp_server_events_total{event="requests"} 3.0' in text
    assert "pxestack_tftp_active_transfers 2.0" in text
    assert 'pxestack_tftp_transfers_total{outcome="complete"} 1.0' in text
    assert "pxestack_tftp_acked_bytes_total 1000.0" in text
    reactor.spawned[0][0].processEnded(Failure(ProcessTerminated(signal=9)))
    text = metrics.render()[0].decode()
    assert 'pxestack_tftp_server_events_total{event="requests"} 3.0' in text
    assert "pxestack_tftp_active_transfers 0.0" in text
    stop(pool)


def test_aggregate_stats_sum_live_and_retired_workers() -> None:
    stats = AggregateStats()
    stats.report(0, {"requests": 2, "active": 1})
    stats.report(1, {"requests": 5, "active": 3, "unknown": 9})
    stats.retire(0)
    stats.report(0, {"requests": 1, "active": 0})
    assert stats.snapshot()["requests"] == 8
    assert stats.active == 3


def test_worker_log_events_join_the_main_log(tmp_path: Path) -> None:
    pool, reactor = make_pool(tmp_path)
    pool.startService()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor.channels[3].dataReceived(encode_frame(Frame(FrameKind.LOG, 0, {
            "level": "warn", "namespace": "pxestack.tftp.protocol", "text": "it broke",
            "fields": {"client": ["10.0.0.1", 99], "worker": "spoofed"}})))
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("worker_text") == "it broke"]
    assert event["worker"] == 1 and event["client"] == ["10.0.0.1", 99]
    assert event["log_level"].name == "warn"
    stop(pool)


# ------------------------------------------------------------------------ dynamic sources


def test_channel_source_reads_through_the_main_process(tmp_path: Path) -> None:
    """The worker's ChannelSource against the pool's answers over a real socketpair."""
    content = bytes(range(256)) * 1000  # 256000 octets: several READ chunks

    def generate(client: TftpClient, path: str) -> bytes | None:
        return content + client.host.encode() if path == "per-mac.cfg" else None

    pool, _ = make_pool(tmp_path, source=CallableSource(generate))
    worker_end, main_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = _Channel(pool.workers[0])

    class SocketTransport:
        def write(self, data: bytes) -> None:
            main_end.sendall(data)

        def loseConnection(self) -> None:
            pass

    channel.makeConnection(SocketTransport())  # type: ignore[arg-type]
    closes: list[Frame] = []

    def serve() -> None:
        decoder = FrameDecoder()
        while data := main_end.recv(65536):
            for frame in decoder.feed(data):
                if frame.kind is FrameKind.CLOSE:
                    closes.append(frame)
                pool.frame(channel, frame)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        source = ChannelSource(WorkerLink(worker_end))
        reader = source.open("per-mac.cfg", TftpClient(("10.1.2.3", 4000)))
        expected = content + b"10.1.2.3"
        assert reader.size() == len(expected)
        received = bytearray()
        buffer = bytearray(1468)
        while count := reader.readinto(memoryview(buffer)):
            received += buffer[:count]
            if count < len(buffer):
                break
        assert bytes(received) == expected
        reader.close()
        with pytest.raises(PathNotFound):
            source.open("missing.cfg", TftpClient(("10.1.2.3", 4001)))
    finally:
        worker_end.close()
        thread.join(timeout=5)
        main_end.close()
    assert len(closes) == 1 and not channel.readers


EMBEDDER = """
import sys
from pxestack.cli._run import run_service
from pxestack.config import load_config
from pxestack.service import Extensions, build_service
from pxestack.tftp.source import CallableSource

def generate(client, path):
    if path == "pxelinux.cfg/default":
        return ("DEFAULT for " + client.host + "\\n") * 200
    return None

config = load_config({"tftp": {"listen": "127.0.0.1:" + sys.argv[1], "root": sys.argv[2],
                               "workers": 2}})
sys.exit(run_service(build_service(config, Extensions(tftp_source=CallableSource(generate))),
                     config))
"""


def test_embedded_dynamic_source_served_by_workers(tmp_path: Path) -> None:
    """An embedder's source runs in the main process; both workers serve its names."""
    import subprocess
    import sys

    from pxestack.wire.tftp import Data, Error, ReadRequest, decode_tftp, encode_tftp

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen([sys.executable, "-c", EMBEDDER, str(port), str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    expected = ("DEFAULT for 127.0.0.1\n" * 200).encode()
    try:
        assert server.stderr is not None
        serving = 0
        while serving < 2:
            line = server.stderr.readline()
            assert line, "the embedder exited"
            serving += "serving (pid" in line
        for _ in range(6):  # several source ports: both workers, by hash
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.settimeout(10)
            client.sendto(encode_tftp(ReadRequest("pxelinux.cfg/default")), ("127.0.0.1", port))
            received = b""
            while True:
                data, tid = client.recvfrom(2048)
                packet = decode_tftp(data)
                assert isinstance(packet, Data)
                received += packet.payload
                client.sendto(b"\x00\x04" + packet.block.to_bytes(2, "big"), tid)
                if len(packet.payload) < 512:
                    break
            assert received == expected
            client.sendto(encode_tftp(ReadRequest("missing")), ("127.0.0.1", port))
            data, _ = client.recvfrom(2048)
            assert isinstance(decode_tftp(data), Error)
            client.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert server.returncode == 0


def test_transfers_finished_in_workers_join_the_machines_timelines(tmp_path: Path) -> None:
    """The dashboard's TFTP step comes from the pool's relayed transfers, as it does from
    an in-reactor server: build_tftp_services wires the pool to ``ext.events``."""
    from pxestack.bootevents import BootEventRecorder
    from pxestack.service.tftp import build_tftp_services

    config = load_config({"tftp": {"workers": 2, "listen": "127.0.0.1:0",
                                   "root": str(tmp_path)}}, base_dir=tmp_path)
    events = BootEventRecorder()
    reactor = PoolReactor()
    [pool] = build_tftp_services(config, Extensions(events=events), reactor=reactor,
                                 mac_of={"10.0.0.9": bytes.fromhex("525400e2e0aa")}.get)
    assert isinstance(pool, TftpWorkerPool)
    pool.startService()
    reactor.channels[1].dataReceived(encode_frame(Frame(FrameKind.STATS, 0, {
        "counters": {"requests": 1, "completed": 1},
        "transfers": [transfer_record(finished())]})))
    steps = [e for e in events.since(0) if e.phase == "tftp"]
    assert len(steps) == 1 and steps[0].ip == "10.0.0.9"
    stop(pool)
