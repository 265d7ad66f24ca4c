"""Loopback plumbing shared by the TFTP adapter tests that use real sockets."""

from __future__ import annotations

import select
import socket
from typing import Any

from fake_reactor import FdReactor

LOOPBACK = "127.0.0.1"
#: Seconds a test waits for a datagram before it fails.
WAIT = 5.0


class SocketTransport:
    """The listener's transport over a real bound socket (so it has a descriptor)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))

    def fileno(self) -> int:
        return self.sock.fileno()

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.sock.sendto(data, address)

    def getHost(self) -> Any:
        host, port = self.sock.getsockname()
        return type("Host", (), {"host": host, "port": port})()


def pump(reactor: FdReactor) -> None:
    """Wait (bounded by :data:`WAIT`) until the one watched reader is readable, then run it."""
    [reader] = reactor.readers
    readable, _, _ = select.select([reader.fileno()], [], [], WAIT)
    assert readable, "no datagram arrived"
    reader.doRead()
