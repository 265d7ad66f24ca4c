"""The production transfer transport, in memory: ``SocketTransport`` injected into the
server with fake sockets and a fake poller, so the path a real server takes (connected
sockets, the foreign-TID sibling, the multiplexer, segmented windows) runs under a
``task.Clock``.  Nothing touches the network.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from fake_reactor import FdReactor

from pxestack.errors import ApiMisuse
from pxestack.tftp.protocol import TftpListener, TftpServer
from pxestack.tftp.session import SessionSettings
from pxestack.tftp.source import FilesystemSource
from pxestack.tftp.stats import Outcome, SessionStats
from pxestack.tftp.transport import (
    UDP_SEGMENT,
    SocketTransport,
    TransferMultiplexer,
    TransferPort,
    socket_transport,
)
from pxestack.wire.tftp import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    TftpPacket,
    decode_tftp,
    encode_tftp,
)

SERVER_IP = "198.18.0.1"
CLIENT = ("198.18.0.2", 40000)
STRANGER = ("198.18.0.3", 40001)


class FakeNetwork:
    """Fake UDP sockets on numbered descriptors, and the pollers that watch them."""

    def __init__(self) -> None:
        self.sockets: dict[int, FakeSocket] = {}
        self.pollers: list[FakePoller] = []
        self.next_fd = 100
        self.next_port = 50000
        #: Make every segmented send fail with this errno (None: segmentation works).
        self.refuse_segmentation: int | None = None
        #: Make opening a connected pair fail with this errno (None: it opens).
        self.refuse_pairs: int | None = None

    def _socket(self, port: int, peer: tuple[str, int] | None) -> FakeSocket:
        sock = FakeSocket(self, self.next_fd, port, peer)
        self.sockets[sock.fd] = sock
        self.next_fd += 1
        return sock

    def open_socket(self, host: str) -> FakeSocket:
        self.next_port += 1
        return self._socket(self.next_port, None)

    def open_connected(self, host: str, client: tuple[str, int]) -> tuple[FakeSocket, FakeSocket]:
        if self.refuse_pairs is not None:
            raise OSError(self.refuse_pairs, "refused by the test")
        self.next_port += 1
        return self._socket(self.next_port, client), self._socket(self.next_port, None)

    def poller(self) -> FakePoller:
        poller = FakePoller(self)
        self.pollers.append(poller)
        return poller

    def deliver(self, data: bytes, source: tuple[str, int], port: int) -> None:
        """A datagram to *port*: the connected socket for its peer, else the unconnected one."""
        candidates = [s for s in self.sockets.values() if s.port == port and not s.closed]
        for sock in candidates:
            if sock.peer == source:
                sock.inbox.append((data, source))
                return
        [sock] = [s for s in candidates if s.peer is None]
        sock.inbox.append((data, source))


class FakeSocket:
    """A non-blocking UDP socket; connected ones have ``recv``/``send`` like the real thing."""

    def __init__(self, net: FakeNetwork, fd: int, port: int,
                 peer: tuple[str, int] | None) -> None:
        self.net = net
        self.fd = fd
        self.port = port
        self.peer = peer
        self.inbox: deque[tuple[bytes, tuple[str, int]]] = deque()
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.sendmsg_calls = 0
        self.closed = False
        self.blocking = False

    def fileno(self) -> int:
        return -1 if self.closed else self.fd

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            # A blocking receive times out after SO_RCVTIMEO: EAGAIN either way.
            raise BlockingIOError(errno.EAGAIN, "no datagram")
        data, source = self.inbox.popleft()
        return data[:size], source

    def recv(self, size: int) -> bytes:
        return self.recvfrom(size)[0]

    def sendto(self, data: Any, address: tuple[str, int]) -> int:
        self.sent.append((bytes(data), address))
        return len(data)

    def send(self, data: Any) -> int:
        assert self.peer is not None, "send() on an unconnected socket"
        return self.sendto(data, self.peer)

    def sendmsg(self, buffers: list[Any], ancdata: list[Any], flags: int = 0,
                address: tuple[str, int] | None = None) -> int:
        if self.net.refuse_segmentation is not None:
            raise OSError(self.net.refuse_segmentation, "no segmentation")
        [(level, kind, size)] = ancdata
        assert (level, kind) == (socket.SOL_UDP, UDP_SEGMENT)
        self.sendmsg_calls += 1
        destination = address or self.peer
        assert destination is not None
        # The kernel cuts the run into datagrams of the segment size, the last one shorter.
        payload = b"".join(bytes(buffer) for buffer in buffers)
        [segment] = struct.unpack("=H", size)
        for start in range(0, len(payload), segment):
            self.sendto(payload[start:start + segment], destination)
        return len(payload)

    def getsockname(self) -> tuple[str, int]:
        return (SERVER_IP, self.port)

    def close(self) -> None:
        self.closed = True


class FakePoller:
    """``select.epoll`` over fake sockets: a registered one is ready while its inbox is not
    empty (level-triggered)."""

    def __init__(self, net: FakeNetwork) -> None:
        self.net = net
        self.watched: set[int] = set()
        self.closed = False

    def register(self, fd: int, eventmask: int = 0) -> None:
        if fd not in self.net.sockets:
            raise OSError(errno.EBADF, "not a socket")
        self.watched.add(fd)

    def unregister(self, fd: int) -> None:
        self.watched.discard(fd)

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        ready = [(fd, 1) for fd in sorted(self.watched) if self.net.sockets[fd].inbox]
        return ready[:maxevents] if maxevents > 0 else ready

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        self.closed = True


class FakeListenerTransport:
    """The listener's transport (no descriptor: a lone transfer waits through the reactor)."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.written.append((bytes(data), address))

    def getHost(self) -> Any:
        return type("Host", (), {"host": SERVER_IP, "port": 69})()


class Lab:
    """A server whose transport is the production ``SocketTransport`` over a fake network."""

    def __init__(self, tmp: Path, **options: Any) -> None:
        self.net = FakeNetwork()
        self.reactor = FdReactor()
        self.root = tmp
        self.stats: list[SessionStats] = []
        options.setdefault("open_connected", self.net.open_connected)
        self.server = TftpServer(
            FilesystemSource(tmp), reactor=self.reactor, on_stats=self.stats.append,
            settings=SessionSettings(min_rto=0.05),
            transport=socket_transport(host=SERVER_IP, open_socket=self.net.open_socket,
                                       epoll=self.net.poller, **options))
        self.listener: TftpListener = self.server.listener()
        self.listener_transport = FakeListenerTransport()
        self.listener.transport = self.listener_transport  # type: ignore[assignment]

    def request(self, packet: TftpPacket, client: tuple[str, int] = CLIENT) -> None:
        self.listener.datagramReceived(encode_tftp(packet), client)

    def port(self) -> TransferPort:
        [transfer] = self.server.transfers.values()
        assert isinstance(transfer, TransferPort)
        return transfer

    def send(self, packet: TftpPacket, port: int, source: tuple[str, int] = CLIENT) -> None:
        """The client (or *source*) sends *packet* to the transfer's port; the reactor runs."""
        self.net.deliver(encode_tftp(packet), source, port)
        for reader in list(self.reactor.readers):
            reader.doRead()

    def received(self, client: tuple[str, int] = CLIENT) -> list[TftpPacket]:
        """Everything the server sent to *client*, from any transfer socket, in order."""
        return [decode_tftp(data) for sock in self.net.sockets.values()
                for data, address in sock.sent if address == client]


@pytest.fixture
def lab(tmp_path: Path) -> Any:
    def make(**options: Any) -> Lab:
        return Lab(tmp_path, **options)

    return make


def _download(lab: Lab, name: str, options: tuple[tuple[str, str], ...]) -> bytes:
    """Play a client reading *name* through the fake network; returns the bytes received."""
    lab.request(ReadRequest(name, options=options))
    port = lab.port().sock.getsockname()[1]
    received: dict[int, bytes] = {}
    acked = 0
    for _ in range(10_000):
        if not lab.server.transfers:
            break
        packets = lab.received()
        for sock in lab.net.sockets.values():
            sock.sent.clear()
        for packet in packets:
            if isinstance(packet, Data):
                received.setdefault(packet.block, packet.payload)
        if isinstance(packets[-1] if packets else None, OptionAck):
            lab.send(Ack(0), port)
            continue
        while acked + 1 in received:
            acked += 1
        lab.send(Ack(acked), port)
    assert not lab.server.transfers
    return b"".join(received[block] for block in sorted(received))


def test_a_transfer_gets_a_connected_socket_and_a_sibling_behind_one_reader(
        lab: Any) -> None:
    """The production path: a connected socket, its sibling, one reader for the reactor;
    stopping the server releases all three."""
    lab = lab()
    (lab.root / "boot.bin").write_bytes(b"b" * 5000)
    lab.request(ReadRequest("boot.bin", options=(("windowsize", "4"),)))
    port = lab.port()
    assert isinstance(lab.server.transport, SocketTransport)
    assert port.connected and port.multiplexed and port.foreign is not None
    assert port.foreign.multiplexed
    [multiplexer] = lab.reactor.readers
    assert isinstance(multiplexer, TransferMultiplexer)
    [poller] = lab.net.pollers
    assert poller.watched == {port.sock.fileno(), port.foreign.sock.fileno()}
    sock, sibling = port.sock, port.foreign.sock
    lab.server.stop()
    assert not lab.server.transfers and sock.closed and sibling.closed
    assert poller.watched == set() and poller.closed
    assert lab.reactor.readers == [] and lab.reactor.getDelayedCalls() == []
    assert lab.received()[-1] == Error(ErrorCode.NOT_DEFINED, "Server shutting down")


@pytest.mark.parametrize("windowsize", [1, 4])
def test_a_whole_file_goes_through_the_injected_transport(lab: Any, windowsize: int) -> None:
    lab = lab()
    data = random.Random(windowsize).randbytes(1432 * 9 + 100)
    (lab.root / "boot.bin").write_bytes(data)
    got = _download(lab, "boot.bin", (("blksize", "1432"), ("windowsize", str(windowsize))))
    assert got == data
    [stats] = lab.stats
    assert stats.outcome is Outcome.COMPLETE and stats.bytes_acked == len(data)
    assert all(sock.closed for sock in lab.net.sockets.values())
    assert lab.net.pollers[0].watched == set()
    assert lab.reactor.getDelayedCalls() == []


def test_foreign_tid_is_answered_by_the_sibling_and_the_transfer_goes_on(lab: Any) -> None:
    lab = lab()
    (lab.root / "f").write_bytes(b"a" * 1000)
    lab.request(ReadRequest("f"))
    port = lab.port()
    number = port.sock.getsockname()[1]
    assert port.foreign is not None
    lab.send(Ack(1), number, source=STRANGER)
    assert port.foreign.sock.sent == [(encode_tftp(Error(ErrorCode.UNKNOWN_TID,
                                                         "Unknown transfer ID")), STRANGER)]
    lab.send(Error(ErrorCode.NOT_DEFINED, "x"), number, source=STRANGER)
    assert len(port.foreign.sock.sent) == 1  # an ERROR is never answered
    lab.send(Ack(1), number)
    lab.send(Ack(2), number)
    assert lab.stats[0].outcome is Outcome.COMPLETE
    assert lab.server.stats.foreign_tid == 2
    assert [type(p) for p in lab.received()] == [Data, Data]


def test_malformed_datagram_on_a_transfer_is_counted_and_dropped(lab: Any) -> None:
    lab = lab()
    (lab.root / "f").write_bytes(b"a" * 1000)
    lab.request(ReadRequest("f", options=(("windowsize", "2"),)))
    number = lab.port().sock.getsockname()[1]
    lab.net.deliver(b"\x00\x04\x00", CLIENT, number)  # a 3-octet ACK
    lab.reactor.readers[0].doRead()
    assert lab.server.stats.malformed == 1
    assert lab.server.transfers  # the transfer goes on


def test_a_window_leaves_in_one_segmented_send(lab: Any) -> None:
    lab = lab()
    data = b"w" * (512 * 8)
    (lab.root / "f").write_bytes(data)
    got = _download(lab, "f", (("windowsize", "8"),))
    assert got == data
    segmented = sum(sock.sendmsg_calls for sock in lab.net.sockets.values())
    assert segmented >= 1


@pytest.mark.parametrize("code", [errno.EIO, errno.EMSGSIZE])
def test_refused_segmentation_falls_back_to_one_send_per_block(lab: Any, code: int) -> None:
    lab = lab()
    lab.net.refuse_segmentation = code
    data = random.Random(code).randbytes(512 * 8 + 5)
    (lab.root / "f").write_bytes(data)
    assert _download(lab, "f", (("windowsize", "8"),)) == data
    assert lab.stats[0].outcome is Outcome.COMPLETE


def test_unopenable_pair_falls_back_to_an_unconnected_socket(lab: Any) -> None:
    lab = lab()
    lab.net.refuse_pairs = errno.EMFILE
    (lab.root / "f").write_bytes(b"y" * 100)
    lab.request(ReadRequest("f"))
    port = lab.port()
    assert not port.connected and port.foreign is None and port.multiplexed
    lab.send(Ack(1), port.sock.getsockname()[1])
    assert lab.server.stats.completed == 1


def test_without_connected_pairs_every_transfer_is_unconnected(lab: Any) -> None:
    lab = lab(open_connected=None)
    assert lab.server.connected is False
    (lab.root / "f").write_bytes(b"z" * 10)
    lab.request(ReadRequest("f"))
    assert not lab.port().connected
    lab.send(Ack(1), lab.port().sock.getsockname()[1])
    assert lab.server.stats.completed == 1


def test_the_service_can_switch_connected_sockets_off(lab: Any) -> None:
    lab = lab()
    assert lab.server.connected is True
    lab.server.connected = False
    (lab.root / "f").write_bytes(b"z" * 10)
    lab.request(ReadRequest("f"))
    assert not lab.port().connected


def test_a_socket_the_poller_refuses_is_read_by_the_reactor(lab: Any) -> None:
    """A descriptor the poller cannot watch: that transfer and later ones use the reactor."""
    lab = lab(open_connected=None)
    (lab.root / "f").write_bytes(b"z" * 10)
    real_open = lab.net.open_socket
    lab.server.transport.open_socket = lambda host: _unregistered(lab.net, real_open(host))
    lab.request(ReadRequest("f"))
    port = lab.port()
    assert not port.multiplexed
    assert port in lab.reactor.readers
    port.sock.inbox.append((encode_tftp(Ack(1)), CLIENT))
    port.doRead()
    assert lab.server.stats.completed == 1
    assert lab.reactor.readers == []


def _unregistered(net: FakeNetwork, sock: FakeSocket) -> FakeSocket:
    """Hide *sock* from the fake poller, which then refuses to register it (EBADF)."""
    del net.sockets[sock.fd]
    return sock


def test_a_transport_and_a_socket_factory_together_are_refused(tmp_path: Path) -> None:
    net = FakeNetwork()
    with pytest.raises(ApiMisuse, match="not both"):
        TftpServer(FilesystemSource(tmp_path), reactor=FdReactor(),
                   transport=socket_transport(open_socket=net.open_socket),
                   socket_factory=net.open_socket)
