"""Connected transfer sockets on real loopback sockets: the foreign-TID sibling, the
descriptors a transfer holds and releases, and the fallbacks to unconnected sockets.

Time comes from a task.Clock (timers never fire here); only the datagrams are real.
Every wait is bounded by a socket time-out.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import socket
from pathlib import Path
from typing import Any

import pytest
from tftp_loopback import LOOPBACK, WAIT, FdReactor, SocketTransport, pump

from pxestack.service import tftp as tftp_service_module
from pxestack.service.tftp import TftpService
from pxestack.tftp import protocol
from pxestack.tftp.protocol import TftpServer
from pxestack.tftp.source import FilesystemSource, UploadDirectory
from pxestack.tftp.transport import TransferPort
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


def open_descriptors() -> set[str]:
    """This process's open descriptors (less the one ``listdir`` itself used)."""
    still_open = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        still_open.add(name)
    return still_open


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(WAIT)
    return sock


def receive(client: socket.socket) -> tuple[TftpPacket, tuple[str, int]]:
    data, tid = client.recvfrom(70000)
    return decode_tftp(data), tid


class Lab:
    """A server with the default (connected) socket factory, its listener and clients."""

    def __init__(self, tmp: Path, **kwargs: Any) -> None:
        self.root = tmp / "root"
        self.root.mkdir(parents=True)
        self.reactor = FdReactor()
        self.server = TftpServer(FilesystemSource(self.root), reactor=self.reactor,
                                 transfer_host=LOOPBACK, inline=False, **kwargs)
        self.listener = self.server.listener()
        self.transport = SocketTransport()
        self.listener.transport = self.transport  # type: ignore[assignment]

    def request(self, client: socket.socket, packet: ReadRequest | WriteRequest) -> None:
        self.listener.datagramReceived(encode_tftp(packet), client.getsockname())

    def pump(self) -> None:
        """Wait (bounded) until the multiplexer is readable, then let it run."""
        pump(self.reactor)

    def port(self) -> TransferPort:
        [transfer] = self.server.transfers.values()
        assert isinstance(transfer, TransferPort)
        return transfer

    def close(self) -> None:
        self.server.stop()
        self.transport.sock.close()


@pytest.fixture
def lab(tmp_path: Path) -> Any:
    made: list[Lab] = []

    def make(**kwargs: Any) -> Lab:
        made.append(Lab(tmp_path / str(len(made)), **kwargs))
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.mark.parametrize("windowsize", [1, 4])
def test_foreign_tid_gets_error_5_from_the_transfer_port_and_nothing_leaks(
        lab: Any, windowsize: int) -> None:
    """The sibling answers a stranger; the client gets every byte; both sockets close."""
    lab = lab()
    data = random.Random(windowsize).randbytes(512 * 20 + 77)
    (lab.root / "f").write_bytes(data)
    client, stranger = udp_client(), udp_client()
    before = open_descriptors()
    options = (("windowsize", str(windowsize)),) if windowsize > 1 else ()
    lab.request(client, ReadRequest("f", options=options))
    port = lab.port()
    assert port.connected and port.foreign is not None
    sibling = port.foreign.sock.getsockname()
    assert port.sock.getsockname() == sibling
    assert port.sock.getpeername() == client.getsockname()  # type: ignore[attr-defined]
    held = {str(port.sock.fileno()), str(port.foreign.fileno())}
    assert held <= open_descriptors() - before
    received = b""
    acked = 0
    if windowsize > 1:
        packet, tid = receive(client)
        assert isinstance(packet, OptionAck)
        client.sendto(encode_tftp(Ack(0)), tid)
        lab.pump()
    stranger_answered = False
    while True:
        packet, tid = receive(client)
        assert tid == sibling
        assert isinstance(packet, Data) and packet.block == acked + 1
        received += packet.payload
        acked = packet.block
        if len(packet.payload) < 512:
            client.sendto(encode_tftp(Ack(acked)), tid)
            break
        if acked % windowsize:
            continue
        if not stranger_answered:
            # A stranger's ACK (and an ERROR, which is never answered) mid-transfer.
            stranger.sendto(encode_tftp(Error(ErrorCode.NOT_DEFINED, "x")), tid)
            stranger.sendto(encode_tftp(Ack(acked)), tid)
            lab.pump()
            answer, source = receive(stranger)
            assert answer == Error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID")
            assert source == sibling
            stranger.settimeout(0.05)
            with pytest.raises(TimeoutError):
                stranger.recvfrom(100)
            stranger_answered = True
        client.sendto(encode_tftp(Ack(acked)), tid)
        lab.pump()
    lab.pump()
    assert received == data
    assert not lab.server.transfers
    assert lab.server.stats.completed == 1 and lab.server.stats.foreign_tid == 2
    assert held.isdisjoint(open_descriptors())
    lab.server.stop()  # no transfers left: the multiplexer's epoll closes too
    assert open_descriptors() == before
    client.close()
    stranger.close()


def test_write_transfer_is_connected_too(lab: Any, tmp_path: Path) -> None:
    """A WRQ runs on a connected socket; a stranger's DATA gets ERROR 5, not written."""
    uploads = tmp_path / "up"
    uploads.mkdir()
    lab = lab(upload=UploadDirectory(uploads))
    data = random.Random(3).randbytes(512 * 3 + 9)
    client, stranger = udp_client(), udp_client()
    lab.request(client, WriteRequest("new"))
    assert lab.port().connected
    packet, tid = receive(client)
    assert packet == Ack(0)
    stranger.sendto(encode_tftp(Data(1, b"evil" * 128)), tid)
    lab.pump()
    assert receive(stranger)[0] == Error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID")
    for block in range(1, 5):
        client.sendto(encode_tftp(Data(block, data[(block - 1) * 512: block * 512])), tid)
        lab.pump()
        assert receive(client)[0] == Ack(block)
    assert (uploads / "new").read_bytes() == data
    lab.reactor.advance(5)  # the dally for a lost last ACK ends
    assert not lab.server.transfers and lab.server.stats.completed == 1
    client.close()
    stranger.close()


def test_icmp_errors_on_the_connected_socket_stay_inside(lab: Any) -> None:
    """A client whose port is gone: ECONNREFUSED never escapes; retries end the transfer."""
    lab = lab()
    (lab.root / "f").write_bytes(b"x" * 2000)
    client = udp_client()
    lab.request(client, ReadRequest("f"))
    receive(client)
    client.close()  # the next DATA draws an ICMP port unreachable
    port = lab.port()
    port.send_all([b"\x00\x03\x00\x01" + b"x" * 512])
    lab.pump()  # the pending error is read (and dropped) by doRead
    assert lab.server.transfers
    for _ in range(100):
        if not lab.server.transfers:
            break
        lab.reactor.advance(5.0)
    assert not lab.server.transfers
    assert lab.server.stats.completed == 0


def test_unopenable_pair_falls_back_to_an_unconnected_socket(
        lab: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors for the pair: the transfer is served unconnected, not refused."""
    def refuse(host: str, client: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(protocol, "open_connected_transfer_sockets", refuse)
    lab = lab()
    (lab.root / "f").write_bytes(b"y" * 100)
    client = udp_client()
    lab.request(client, ReadRequest("f"))
    port = lab.port()
    assert not port.connected and port.foreign is None
    packet, tid = receive(client)
    assert packet == Data(1, b"y" * 100)
    client.sendto(encode_tftp(Ack(1)), tid)
    lab.pump()
    assert lab.server.stats.completed == 1
    client.close()


def test_transfer_descriptors_raise_the_soft_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limits["soft"], limits["hard"]))

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        limits["soft"], limits["hard"] = value

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert tftp_service_module.ensure_transfer_descriptors(512) is True
    assert limits == {"soft": 512 * 3 + 256, "hard": 4096}
    assert tftp_service_module.ensure_transfer_descriptors(5000) is False
    assert limits["soft"] == 512 * 3 + 256  # left as it was


def test_service_falls_back_to_unconnected_when_the_limit_is_too_low(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tftp_service_module, "ensure_transfer_descriptors",
                        lambda max_transfers: False)
    reactor = FdReactor()
    server = TftpServer(FilesystemSource(tmp_path), reactor=reactor)
    service = TftpService(server, (LOOPBACK, 0), reactor=reactor)
    service._budget_descriptors()
    assert server.connected is False
