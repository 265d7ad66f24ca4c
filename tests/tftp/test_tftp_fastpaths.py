"""The adapter's fast paths on real loopback sockets: one epoll for all transfers, the
lone lock-step loop, and windows sent with UDP segmentation offload.

Time still comes from a task.Clock (timers never fire here); only the datagrams are real.
Every wait is bounded by a socket time-out.
"""

from __future__ import annotations

import errno
import random
import select
import socket
from pathlib import Path
from typing import Any

import pytest
from tftp_loopback import LOOPBACK, WAIT, FdReactor, SocketTransport, pump

from pxestack.tftp.protocol import TftpServer
from pxestack.tftp.source import FilesystemSource
from pxestack.tftp.transport import open_transfer_socket
from pxestack.wire.tftp import (
    Ack,
    Data,
    Error,
    OptionAck,
    ReadRequest,
    TftpPacket,
    decode_tftp,
    encode_tftp,
)


class CountingSocket(socket.socket):
    """A transfer socket that counts its send calls (and can refuse segmentation)."""

    refuse_segmentation = False

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_DGRAM)
        self.sendmsg_calls: list[int] = []
        self.sendto_calls = 0

    def sendmsg(self, buffers: Any, *args: Any) -> int:  # type: ignore[override]
        if self.refuse_segmentation:
            raise OSError(errno.EMSGSIZE, "segment larger than the MTU")
        self.sendmsg_calls.append(len(buffers))
        return super().sendmsg(buffers, *args)

    def sendto(self, data: Any, *args: Any) -> int:  # type: ignore[override]
        self.sendto_calls += 1
        return super().sendto(data, *args)


class Lab:
    """A server on loopback sockets and helpers to play clients."""

    def __init__(self, tmp: Path, **kwargs: Any) -> None:
        self.root = tmp / "root"
        self.root.mkdir()
        self.reactor = FdReactor()
        self.sockets: list[Any] = []
        self.server = TftpServer(FilesystemSource(self.root), reactor=self.reactor,
                                 transfer_host=LOOPBACK, socket_factory=self._socket,
                                 **kwargs)
        self.listener = self.server.listener()
        self.transport = SocketTransport()
        self.listener.transport = self.transport  # type: ignore[assignment]
        self.clients: list[socket.socket] = []
        self.counting = False

    def _socket(self, host: str) -> Any:
        if not self.counting:
            sock = open_transfer_socket(host)
        else:
            sock = CountingSocket()
            sock.bind((host, 0))
            sock.setblocking(False)
        self.sockets.append(sock)
        return sock

    def client(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        sock.settimeout(WAIT)
        self.clients.append(sock)
        return sock

    def request(self, client: socket.socket, packet: ReadRequest) -> None:
        self.listener.datagramReceived(encode_tftp(packet), client.getsockname())

    def pump(self) -> None:
        """Wait (bounded) until a watched socket is readable, then let the reader run."""
        pump(self.reactor)

    def close(self) -> None:
        for sock in self.clients:
            sock.close()
        self.transport.sock.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def lab(tmp_path: Path) -> Any:
    made: list[Lab] = []

    def make(**kwargs: Any) -> Lab:
        made.append(Lab(tmp_path / str(len(made)), **kwargs))
        return made[-1]

    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    yield make
    for item in made:
        item.close()


def receive(client: socket.socket) -> tuple[TftpPacket, tuple[str, int]]:
    data, tid = client.recvfrom(70000)
    return decode_tftp(data), tid


def test_all_transfers_share_one_reactor_reader(lab: Any) -> None:
    """With several transfers, one epoll descriptor stands for all transfer sockets."""
    lab = lab()
    files = {f"f{i}": random.Random(i).randbytes(512 * 3 + i) for i in range(3)}
    for name, data in files.items():
        (lab.root / name).write_bytes(data)
    clients = {name: lab.client() for name in files}
    for name, client in clients.items():
        lab.request(client, ReadRequest(name))
    assert len(lab.reactor.readers) == 1  # the multiplexer, not one reader per transfer
    received = {name: b"" for name in files}
    tids = {}
    for name, client in clients.items():
        packet, tids[name] = receive(client)
        assert isinstance(packet, Data) and packet.block == 1
        received[name] += packet.payload
    for block in range(1, 4):
        for name, client in clients.items():
            client.sendto(encode_tftp(Ack(block)), tids[name])
        pending = set(clients)
        while pending:
            ready = [n for n in pending if select.select([clients[n]], [], [], 0)[0]]
            if not ready:
                lab.pump()
                continue
            for name in ready:
                packet, _ = receive(clients[name])
                assert isinstance(packet, Data) and packet.block == block + 1
                received[name] += packet.payload
                pending.remove(name)
    for name, client in clients.items():
        client.sendto(encode_tftp(Ack(4)), tids[name])
    while lab.server.transfers:
        lab.pump()
    assert received == files
    assert lab.server.stats.completed == 3
    multiplexer = lab.server.transport.multiplexer
    assert multiplexer is not None and multiplexer.ports == {}


def test_lone_lockstep_transfer_answers_waiting_acks_in_one_read(lab: Any) -> None:
    """Alone, a lock-step transfer answers ACKs in its own loop, not one reactor turn each."""
    lab = lab()
    data = random.Random(7).randbytes(512 * 9 + 100)
    (lab.root / "f").write_bytes(data)
    client = lab.client()
    lab.request(client, ReadRequest("f"))
    first, tid = receive(client)
    assert first == Data(1, data[:512])
    for block in range(1, 6):  # ACKs queued before the server runs at all
        client.sendto(encode_tftp(Ack(block)), tid)
    client.sendto(encode_tftp(Ack(5)), tid)  # a duplicate: never answered (Sorcerer)
    lab.pump()  # a single reactor turn
    got = [receive(client)[0] for _ in range(5)]
    assert got == [Data(b, data[(b - 1) * 512: b * 512]) for b in range(2, 7)]
    client.settimeout(0.05)
    with pytest.raises(TimeoutError):
        client.recvfrom(70000)
    [sock] = lab.sockets
    assert sock.getblocking() is False  # back to non-blocking for the reactor
    assert lab.server.transfers  # still running; the reactor watches it again
    client.settimeout(WAIT)
    for block in range(6, 11):
        client.sendto(encode_tftp(Ack(block)), tid)
        if block < 10:
            lab.pump()
            packet, _ = receive(client)
            assert isinstance(packet, Data) and packet.block == block + 1
    lab.pump()
    assert not lab.server.transfers
    assert lab.server.stats.completed == 1


def test_window_goes_out_in_one_segmented_send(lab: Any) -> None:
    """RFC 7440 window of 4: one sendmsg with UDP_SEGMENT, four datagrams arrive."""
    lab = lab()
    lab.counting = True
    data = random.Random(3).randbytes(512 * 4 + 10)
    (lab.root / "f").write_bytes(data)
    client = lab.client()
    lab.request(client, ReadRequest("f", "octet", (("windowsize", "4"),)))
    oack, tid = receive(client)
    assert oack == OptionAck((("windowsize", "4"),))
    client.sendto(encode_tftp(Ack(0)), tid)
    lab.pump()
    [sock] = lab.sockets
    try:
        got = [receive(client)[0] for _ in range(4)]
    except TimeoutError:  # pragma: no cover - a kernel without UDP GSO on loopback
        pytest.skip("this kernel does not segment UDP")
    assert got == [Data(b, data[(b - 1) * 512: b * 512]) for b in range(1, 5)]
    assert sock.sendmsg_calls == [4]
    client.sendto(encode_tftp(Ack(4)), tid)
    lab.pump()
    assert receive(client)[0] == Data(5, data[2048:])
    client.sendto(encode_tftp(Ack(5)), tid)
    lab.pump()
    assert lab.server.stats.completed == 1


def test_refused_segmentation_falls_back_to_one_send_per_block(lab: Any) -> None:
    lab = lab()
    lab.counting = True
    CountingSocket.refuse_segmentation = True
    try:
        data = random.Random(4).randbytes(512 * 3 + 1)
        (lab.root / "f").write_bytes(data)
        client = lab.client()
        lab.request(client, ReadRequest("f", "octet", (("windowsize", "4"),)))
        _, tid = receive(client)
        client.sendto(encode_tftp(Ack(0)), tid)
        lab.pump()
        got = [receive(client)[0] for _ in range(4)]
        assert got == [Data(b, data[(b - 1) * 512: b * 512]) for b in range(1, 5)]
        [sock] = lab.sockets
        assert sock.sendmsg_calls == []
        assert sock.sendto_calls == 1 + 4  # OACK, then each block on its own
    finally:
        CountingSocket.refuse_segmentation = False


def test_stop_cancels_transfers_and_releases_the_epoll(lab: Any) -> None:
    lab = lab()
    (lab.root / "f").write_bytes(b"x" * 5000)
    clients = [lab.client() for _ in range(2)]
    for client in clients:
        lab.request(client, ReadRequest("f"))
    [multiplexer] = lab.reactor.readers
    lab.server.stop()
    assert lab.reactor.readers == [] and multiplexer.epoll.closed
    assert not lab.server.transfers
    for client in clients:
        assert receive(client)[0] == Data(1, b"x" * 512)
        error, _ = receive(client)
        assert isinstance(error, Error)

