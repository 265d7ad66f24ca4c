"""The Twisted adapter, in memory: task.Clock for time, fake sockets and transports."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from tftp_loopback import FdReactor as FakeReactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pxestack.tftp.protocol import TftpListener, TftpServer
from pxestack.tftp.session import SessionSettings
from pxestack.tftp.source import (
    CallableSource,
    FilesystemSource,
    TftpClient,
    UploadDirectory,
)
from pxestack.tftp.stats import Outcome, SessionStats
from pxestack.tftp.transport import socket_transport
from pxestack.wire.tftp import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    TftpPacket,
    WriteRequest,
    decode_tftp,
    encode_tftp,
)

CLIENT = ("198.18.0.2", 40000)
OTHER = ("198.18.0.3", 40001)


class FakeSocket:
    """A non-blocking UDP socket: an inbox to fill and a list of what was sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inbox: deque[tuple[bytes, tuple[str, int]]] = deque()
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False

    def fileno(self) -> int:
        return 1000 + self.port

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            raise BlockingIOError
        data, address = self.inbox.popleft()
        return data[:size], address

    def sendto(self, data: Any, address: tuple[str, int]) -> int:
        self.sent.append((bytes(data), address))
        return len(data)

    def getsockname(self) -> tuple[str, int]:
        return ("198.18.0.1", self.port)

    def close(self) -> None:
        self.closed = True


class FakeHost:
    host = "198.18.0.1"
    port = 69


class FakeDatagramTransport:
    """The listener's transport: records writes."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.written.append((bytes(data), address))

    def getHost(self) -> FakeHost:
        return FakeHost()


def decoded(entries: list[tuple[bytes, tuple[str, int]]]) -> list[TftpPacket]:
    return [decode_tftp(data) for data, _ in entries]


class Harness:
    """A server wired to fakes, with helpers to play the client."""

    def __init__(self, tmp: Path, **kwargs: Any) -> None:
        self.reactor = FakeReactor()
        self.sockets: list[FakeSocket] = []
        self.stats: list[SessionStats] = []
        self.root = tmp / "root"
        self.root.mkdir(exist_ok=True)
        kwargs.setdefault("source", FilesystemSource(self.root))
        # The production transport with fake sockets: unconnected (a fake has no kernel to
        # route a client's datagrams to a connected socket) and read by the reactor (the
        # epoll refuses fake descriptors).  tests/tftp/test_tftp_transport.py runs the
        # connected, multiplexed path on a fake network.
        kwargs.setdefault("transport", socket_transport(
            host="198.18.0.1", open_socket=self._socket, open_connected=None))
        self.server = TftpServer(
            reactor=self.reactor,
            on_stats=self.stats.append,
            **kwargs,
        )
        self.listener: TftpListener = self.server.listener()
        self.transport = FakeDatagramTransport()
        self.listener.transport = self.transport  # type: ignore[assignment]

    def _socket(self, host: str) -> FakeSocket:
        sock = FakeSocket(50000 + len(self.sockets))
        self.sockets.append(sock)
        return sock

    def request(self, packet: TftpPacket, client: tuple[str, int] = CLIENT) -> None:
        self.listener.datagramReceived(encode_tftp(packet), client)

    def to_transfer(self, packet: TftpPacket | bytes, client: tuple[str, int] = CLIENT,
                    index: int = -1) -> None:
        raw = packet if isinstance(packet, bytes) else encode_tftp(packet)
        sock = self.sockets[index]
        sock.inbox.append((raw, client))
        port = next(r for r in self.reactor.readers if r.sock is sock)
        port.doRead()


class AdapterTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Not trial's mktemp(): that writes under the current directory (the source tree).
        self.tmp = Path(tempfile.mkdtemp(prefix="pxestack-tftp-adapter-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def harness(self, **kwargs: Any) -> Harness:
        return Harness(self.tmp, **kwargs)

    def test_read_transfer_on_its_own_port(self) -> None:
        h = self.harness()
        data = random.Random(1).randbytes(3000)
        (h.root / "boot.bin").write_bytes(data)
        h.request(ReadRequest("boot.bin", "octet", (("blksize", "1432"), ("tsize", "0"))))
        self.assertEqual(len(h.sockets), 1)
        sock = h.sockets[0]
        self.assertEqual(decoded(sock.sent), [OptionAck((("blksize", "1432"),
                                                          ("tsize", "3000")))])
        self.assertEqual(h.transport.written, [])  # nothing from port 69
        received = b""
        for block in range(0, 3):
            h.to_transfer(Ack(block))
            packet = decode_tftp(sock.sent[-1][0])
            assert isinstance(packet, Data)
            received += packet.payload
        h.to_transfer(Ack(3))
        self.assertEqual(received, data)
        self.assertTrue(sock.closed)
        self.assertEqual(h.reactor.readers, [])
        self.assertEqual(h.reactor.getDelayedCalls(), [])
        [stats] = h.stats
        self.assertEqual((stats.outcome, stats.bytes_acked, stats.blksize),
                         (Outcome.COMPLETE, 3000, 1432))
        self.assertEqual(h.server.stats.completed, 1)
        self.assertEqual(h.server.stats.active, 0)

    def test_missing_file_and_traversal(self) -> None:
        h = self.harness()
        h.request(ReadRequest("nope"))
        h.request(ReadRequest("../../etc/passwd"), OTHER)
        self.assertEqual(decoded(h.transport.written), [
            Error(ErrorCode.FILE_NOT_FOUND, "File not found"),
            Error(ErrorCode.ACCESS_VIOLATION, "Access violation"),
        ])
        self.assertEqual(h.sockets, [])
        self.assertEqual(h.server.stats.refused, 2)

    def test_write_refused_by_default(self) -> None:
        """WRQ gets ERROR 2 unless an upload directory is configured."""
        h = self.harness()
        h.request(WriteRequest("evil.bin"))
        self.assertEqual(decoded(h.transport.written),
                         [Error(ErrorCode.ACCESS_VIOLATION, "Access violation")])

    def test_unsupported_mode(self) -> None:
        h = self.harness()
        (h.root / "f").write_bytes(b"x")
        h.request(ReadRequest("f", "mail"))
        [error] = decoded(h.transport.written)
        self.assertEqual(error, Error(ErrorCode.ILLEGAL_OPERATION, "Unsupported mode"))

    def test_foreign_tid_gets_error_5_and_transfer_continues(self) -> None:
        """RFC 1350 §4: an ACK for a block not in flight is ignored."""
        h = self.harness()
        (h.root / "f").write_bytes(b"a" * 1000)
        h.request(ReadRequest("f"))
        sock = h.sockets[0]
        h.to_transfer(Ack(1), client=("198.18.0.2", 40999))
        self.assertEqual(sock.sent[-1], (encode_tftp(Error(5, "Unknown transfer ID")),
                                         ("198.18.0.2", 40999)))
        # A foreign ERROR is never answered.
        before = len(sock.sent)
        h.to_transfer(Error(0, "x"), client=OTHER)
        self.assertEqual(len(sock.sent), before)
        h.to_transfer(Ack(1))
        h.to_transfer(Ack(2))
        self.assertEqual(h.stats[0].outcome, Outcome.COMPLETE)
        self.assertEqual(h.server.stats.foreign_tid, 2)

    def test_flood_does_not_monopolize_the_reactor(self) -> None:
        """Not an amplifier: one doRead handles a bounded number of datagrams."""
        from pxestack.tftp.transport import MAX_DATAGRAMS_PER_READ

        h = self.harness()
        (h.root / "f").write_bytes(b"a" * 1000)
        h.request(ReadRequest("f"))
        sock = h.sockets[0]
        flood = MAX_DATAGRAMS_PER_READ + 10
        for port in range(flood):
            sock.inbox.append((encode_tftp(Ack(7)), ("198.18.0.9", 1000 + port % 50000)))
        h.reactor.readers[0].doRead()
        self.assertEqual(len(sock.inbox), 10)
        h.reactor.readers[0].doRead()
        self.assertEqual(len(sock.inbox), 0)
        h.to_transfer(Ack(1))
        h.to_transfer(Ack(2))
        self.assertEqual(h.stats[0].outcome, Outcome.COMPLETE)

    def test_timeouts_retransmit_then_give_up(self) -> None:
        settings = SessionSettings(max_retries=2, initial_rto=1.0, min_rto=0.05, max_rto=2.0)
        h = self.harness(settings=settings)
        (h.root / "f").write_bytes(b"a" * 100)
        h.request(ReadRequest("f"))
        sock = h.sockets[0]
        self.assertEqual(len(sock.sent), 1)
        h.reactor.advance(1.0)
        self.assertEqual(len(sock.sent), 2)
        self.assertEqual(sock.sent[0], sock.sent[1])
        h.reactor.advance(2.0)
        self.assertEqual(len(sock.sent), 3)
        h.reactor.advance(2.0)
        # Never acknowledged: the transfer ends without an ERROR (no reflection).
        self.assertEqual(len(sock.sent), 3)
        self.assertTrue(sock.closed)
        self.assertEqual(h.stats[0].outcome, Outcome.TIMED_OUT)
        self.assertEqual(h.stats[0].retransmits, 2)
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_timer_is_lazily_rearmed(self) -> None:
        """Healthy ACKs do not reschedule the timer per block; it re-arms when it fires."""
        h = self.harness(settings=SessionSettings(min_rto=0.05))
        (h.root / "f").write_bytes(b"a" * 512 * 40)
        h.request(ReadRequest("f"))
        h.reactor.advance(0.001)
        h.to_transfer(Ack(1))  # first RTT sample: the RTO drops, the timer moves earlier
        armed = list(h.reactor.getDelayedCalls())
        self.assertEqual(len(armed), 1)
        for block in range(2, 20):
            h.reactor.advance(0.001)
            h.to_transfer(Ack(block))
        self.assertEqual(h.reactor.getDelayedCalls(), armed)
        sent = len(h.sockets[0].sent)
        h.reactor.advance(armed[0].getTime() - h.reactor.seconds())
        # It fired before the (later) deadline: nothing resent, re-armed once.
        self.assertEqual(len(h.sockets[0].sent), sent)
        self.assertEqual(len(h.reactor.getDelayedCalls()), 1)
        self.assertNotEqual(h.reactor.getDelayedCalls(), armed)

    def test_per_client_and_total_caps(self) -> None:
        """Concurrent transfers are capped per client IP and in total.  A source at its
        per-client cap whose transfers all progress gets ERROR "Busy"; a request over the
        total cap, with nothing to evict, is dropped without an answer (an ERROR ends a
        PXE boot, and the firmware resends)."""
        h = self.harness(per_client_limit=2, max_transfers=3)
        (h.root / "f").write_bytes(b"a" * 5000)
        for index, port in enumerate((1, 2)):
            h.request(ReadRequest("f"), ("198.18.0.2", port))
            h.to_transfer(Ack(1), ("198.18.0.2", port), index)
        h.request(ReadRequest("f"), ("198.18.0.2", 3))
        self.assertEqual(decoded(h.transport.written), [Error(ErrorCode.NOT_DEFINED, "Busy")])
        h.request(ReadRequest("f"), ("198.18.0.4", 1))
        h.to_transfer(Ack(1), ("198.18.0.4", 1))
        h.request(ReadRequest("f"), ("198.18.0.5", 1))
        self.assertEqual(len(h.sockets), 3)
        self.assertEqual(len(h.transport.written), 1)  # no answer to the last one
        self.assertEqual(h.server.stats.over_limit, 2)
        self.assertEqual(h.server.stats.refused, 0)
        self.assertEqual(h.server.stats.requests, 5)
        refused = [e for e in self.events if "refused" in e.get("log_format", "")]
        self.assertEqual([e["log_level"] for e in refused], [LogLevel.info, LogLevel.info])
        self.assertEqual([e["reason"] for e in refused],
                         ["per-client transfer limit", "server transfer limit"])
        self.assertEqual([e["client"] for e in refused],
                         [("198.18.0.2", 3), ("198.18.0.5", 1)])

    def test_request_dropped_over_cap_is_served_when_resent_after_a_slot_frees(self) -> None:
        """The client's own RRQ retransmission is what gets it served after an overload."""
        h = self.harness(max_transfers=1)
        (h.root / "f").write_bytes(b"a" * 600)
        h.request(ReadRequest("f"))
        h.to_transfer(Ack(1))  # acknowledged and progressing: never evicted
        h.request(ReadRequest("f"), OTHER)
        self.assertEqual((len(h.sockets), h.server.stats.over_limit), (1, 1))
        h.to_transfer(Ack(2))  # the 600-octet file fits two blocks: the first transfer ends
        self.assertTrue(h.sockets[0].closed)
        h.request(ReadRequest("f"), OTHER)  # the client's retransmitted RRQ
        self.assertEqual(len(h.sockets), 2)
        self.assertEqual(decoded(h.sockets[1].sent), [Data(1, b"a" * 512)])
        self.assertEqual(h.transport.written, [])

    def test_write_request_over_cap_is_dropped_too(self) -> None:
        h = self.harness(max_transfers=1, upload=UploadDirectory(self.tmp / "up"))
        (self.tmp / "up").mkdir()
        (h.root / "f").write_bytes(b"a" * 5000)
        h.request(ReadRequest("f"))
        h.to_transfer(Ack(1))
        h.request(WriteRequest("new.bin"), OTHER)
        self.assertEqual((len(h.sockets), h.transport.written), (1, []))
        self.assertEqual(h.server.stats.over_limit, 1)

    def test_refusals_are_still_answered_when_over_cap(self) -> None:
        """A request that is refused anyway (mode, disabled uploads) still gets its ERROR."""
        h = self.harness(max_transfers=1)
        (h.root / "f").write_bytes(b"a" * 5000)
        h.request(ReadRequest("f"))
        h.request(WriteRequest("x"), OTHER)
        self.assertEqual(decoded(h.transport.written),
                         [Error(ErrorCode.ACCESS_VIOLATION, "Access violation")])
        self.assertEqual(h.server.stats.over_limit, 0)

    def test_duplicate_request_is_ignored(self) -> None:
        h = self.harness()
        (h.root / "f").write_bytes(b"a" * 5000)
        h.request(ReadRequest("f"))
        h.request(ReadRequest("f"))
        self.assertEqual(len(h.sockets), 1)

    def test_malformed_datagrams_are_logged_and_dropped(self) -> None:
        h = self.harness()
        h.listener.datagramReceived(b"\x00\x01no-terminator", CLIENT)
        h.listener.datagramReceived(b"\x00", CLIENT)
        h.listener.datagramReceived(encode_tftp(Ack(1)), CLIENT)  # not for port 69
        self.assertEqual(h.transport.written, [])
        self.assertEqual(h.server.stats.malformed, 2)
        self.assertTrue(any("malformed" in e.get("log_format", "") for e in self.events))
        (h.root / "f").write_bytes(b"ok")
        h.request(ReadRequest("f"))  # still serving
        self.assertEqual(len(h.sockets), 1)
        h.to_transfer(b"\x00\x09garbage")
        self.assertEqual(h.server.stats.malformed, 3)
        h.to_transfer(Ack(1))
        self.assertEqual(h.stats[0].outcome, Outcome.COMPLETE)

    def test_ovmf_probe_abort_then_second_request(self) -> None:
        """OVMF's tsize probe, ERROR 'User aborted', then the real RRQ."""
        h = self.harness()
        (h.root / "ipxe.efi").write_bytes(b"e" * 4000)
        h.request(ReadRequest("ipxe.efi", "octet",
                              (("tsize", "0"), ("blksize", "1468"), ("windowsize", "4"))))
        h.to_transfer(Error(0, "User aborted the transfer."))
        self.assertEqual(h.stats[0].outcome, Outcome.ABORTED)
        self.assertEqual(len(h.sockets[0].sent), 1)  # the OACK, no answer to the ERROR
        aborted = [e for e in self.events if e.get("log_level") == LogLevel.debug
                   and "aborted" in e.get("log_format", "")]
        self.assertTrue(aborted)
        h.request(ReadRequest("ipxe.efi", "octet", (("blksize", "1468"), ("windowsize", "4"))))
        h.to_transfer(Ack(0))
        self.assertEqual([p.block for p in decoded(h.sockets[1].sent)[1:]],  # type: ignore[union-attr]
                         [1, 2, 3])
        h.to_transfer(Ack(3))
        self.assertEqual(h.stats[1].outcome, Outcome.COMPLETE)

    def test_single_port_mode(self) -> None:
        h = self.harness(single_port=True)
        (h.root / "f").write_bytes(b"z" * 700)
        h.request(ReadRequest("f"))
        self.assertEqual(h.sockets, [])
        h.listener.datagramReceived(encode_tftp(Ack(1)), CLIENT)
        h.listener.datagramReceived(encode_tftp(Ack(2)), CLIENT)
        self.assertEqual(decoded(h.transport.written),
                         [Data(1, b"z" * 512), Data(2, b"z" * 188)])
        self.assertEqual(h.stats[0].outcome, Outcome.COMPLETE)

    def test_stop_cancels_transfers(self) -> None:
        h = self.harness()
        (h.root / "f").write_bytes(b"a" * 5000)
        h.request(ReadRequest("f"))
        h.server.stop()
        self.assertIsInstance(decode_tftp(h.sockets[0].sent[-1][0]), Error)
        self.assertEqual(h.stats[0].outcome, Outcome.CANCELLED)
        self.assertTrue(h.sockets[0].closed)

    def test_failing_source_gets_error_0_and_server_survives(self) -> None:
        def explode(client: TftpClient, path: str) -> bytes:
            raise RuntimeError("backend down")

        h = self.harness(source=CallableSource(explode))
        h.request(ReadRequest("x"))
        self.assertEqual(decoded(h.transport.written), [Error(0, "Server error")])
        self.assertTrue(any(e.get("log_level") == LogLevel.error for e in self.events))

    def test_stats_callback_failure_is_logged(self) -> None:
        h = self.harness()

        def broken(stats: SessionStats) -> None:
            raise ValueError("sink broken")

        h.server.on_stats = broken
        (h.root / "f").write_bytes(b"x")
        h.request(ReadRequest("f"))
        h.to_transfer(Ack(1))
        self.assertEqual(h.server.stats.completed, 1)
        self.assertTrue(any(e.get("log_level") == LogLevel.critical for e in self.events))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_upload_directory(self) -> None:
        """An optional upload directory: WRQ written atomically, existing files kept."""
        uploads = self.tmp / "up"
        uploads.mkdir()
        h = self.harness(upload=UploadDirectory(uploads))
        h.request(WriteRequest("log.txt", "octet", (("blksize", "1024"),)))
        sock = h.sockets[0]
        self.assertEqual(decoded(sock.sent), [OptionAck((("blksize", "1024"),))])
        h.to_transfer(Data(1, b"a" * 1024))
        self.assertEqual(next(iter(uploads.iterdir())).name.endswith(".part"), True)
        h.to_transfer(Data(1, b"a" * 1024))  # our ACK was lost: ACK again
        h.to_transfer(Data(2, b"tail"))
        self.assertEqual(decoded(sock.sent)[1:], [Ack(1), Ack(1), Ack(2)])
        self.assertEqual((uploads / "log.txt").read_bytes(), b"a" * 1024 + b"tail")
        h.reactor.advance(5)
        self.assertEqual(h.stats[0].outcome, Outcome.COMPLETE)
        self.assertEqual([p.name for p in uploads.iterdir()], ["log.txt"])
        h.request(WriteRequest("log.txt"))
        self.assertEqual(decoded(h.transport.written), [Error(6, "File already exists")])

    def test_upload_aborted_leaves_nothing(self) -> None:
        uploads = self.tmp / "up"
        uploads.mkdir()
        h = self.harness(upload=UploadDirectory(uploads))
        h.request(WriteRequest("x.bin"))
        h.to_transfer(Data(1, b"a" * 512))
        h.to_transfer(Error(0, "client gave up"))
        self.assertEqual(list(uploads.iterdir()), [])
        self.assertEqual(h.stats[0].outcome, Outcome.ABORTED)


@pytest.mark.parametrize("windowsize", [1, 4])
def test_lossy_transfer_with_clock(tmp_path: Path, windowsize: int) -> None:
    """Random loss both ways through the adapter; the clock drives retransmissions."""
    h = Harness(tmp_path)
    data = random.Random(3).randbytes(60_000)
    (h.root / "f").write_bytes(data)
    rng = random.Random(windowsize)
    from tftp_simclient import SimClient

    client = SimClient()
    options = (("blksize", "1000"), ("windowsize", str(windowsize)))
    h.request(ReadRequest("f", "octet", options))
    sock = h.sockets[0]
    delivered = 0
    for _ in range(20_000):
        if h.stats:
            break
        new = sock.sent[delivered:]
        delivered = len(sock.sent)
        replies = [r for raw, _ in new if rng.random() > 0.1 for r in client.handle(raw)]
        replies = [r for r in replies if rng.random() > 0.1]
        for reply in replies:
            sock.inbox.append((reply, CLIENT))
        if replies:
            h.reactor.advance(0.0005)
            next(r for r in h.reactor.readers if r.sock is sock).doRead()
        else:
            h.reactor.advance(0.05)
            if rng.random() < 0.2:
                for reply in client.on_timeout():
                    sock.inbox.append((reply, CLIENT))
                readers = [r for r in h.reactor.readers if r.sock is sock]
                if readers:
                    readers[0].doRead()
    assert h.stats and h.stats[0].outcome is Outcome.COMPLETE
    assert bytes(client.received) == data


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_tftp_like = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda op, rest: bytes([0, op]) + rest, st.integers(0, 7), st.binary(max_size=30)),
    st.sampled_from([encode_tftp(Ack(n)) for n in (0, 1, 2, 3, 65535)]),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["listener", "transfer"]), st.booleans(), _tftp_like),
                max_size=30))
def test_hostile_datagrams_never_escape(tmp_path_factory: pytest.TempPathFactory,
                                       events: list[tuple[str, bool, bytes]]) -> None:
    """Arbitrary bytes on port 69 and on a transfer port, from the client or a stranger:
    nothing is raised, and the bookkeeping stays consistent."""
    h = Harness(tmp_path_factory.mktemp("hostile"))
    (h.root / "f").write_bytes(b"q" * 3000)
    h.request(ReadRequest("f"))
    for where, from_client, raw in events:
        source = CLIENT if from_client else OTHER
        if where == "listener" or not h.reactor.readers:
            h.listener.datagramReceived(raw, source)
        else:
            port = h.reactor.readers[0]
            port.sock.inbox.append((raw, source))
            port.doRead()
        h.reactor.advance(0.3)
    assert h.server.stats.active == len(h.server.transfers) == len(h.reactor.readers)
    assert h.server.stats.active >= 0
