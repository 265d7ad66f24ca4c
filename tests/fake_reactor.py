"""Fake reactor pieces for adapter tests: a ``task.Clock`` with IReactorFDSet's reader
registry, and in-memory sockets for the DHCP service's socket factory."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock


class FdReactor(Clock):
    """task.Clock plus the reader registry (``addReader``/``removeReader``) adapters use."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


class MemorySocket:
    """A non-blocking datagram socket in memory: :attr:`inbox` is read by ``recvfrom``
    (``EAGAIN`` when empty), ``sendto`` appends to :attr:`sent`; :attr:`send_errors`
    makes the next sends fail with those errno values."""

    def __init__(self) -> None:
        self.inbox: list[tuple[bytes, tuple[str, int]]] = []
        self.sent: list[tuple[bytes, Any]] = []
        self.send_errors: list[int] = []

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "nothing queued")
        data, source = self.inbox.pop(0)
        return data[:size], source

    def sendto(self, data: bytes, address: Any) -> int:
        if self.send_errors:
            code = self.send_errors.pop(0)
            raise OSError(code, os.strerror(code))
        self.sent.append((data, address))
        return len(data)


class MemoryUdpPort:
    """A DHCP port over a :class:`MemorySocket` that runs pxestack's own batching code
    (:class:`~pxestack.dhcp.protocol.BatchedDatagrams`), as the kernel port does; it is
    the protocol's transport, and registers with the reactor's readers when it has them."""

    def __init__(self, reactor: Any, port: int, protocol: Any, host: str, *,
                 device: str | None, reuse_address: bool, max_batch: int) -> None:
        from pxestack.dhcp.protocol import BatchedDatagrams

        self.reactor = reactor
        self.port = port
        self.interface = host
        self.device = device
        self.reuse_address = reuse_address
        self.protocol = protocol
        self.socket = MemorySocket()
        self.datagrams = BatchedDatagrams(self.socket, protocol, max_batch=max_batch)
        self.broadcast = False
        self.listening = False

    def startListening(self) -> None:
        self.listening = True
        self.protocol.makeConnection(self)
        if hasattr(self.reactor, "addReader"):
            self.reactor.addReader(self)

    def doRead(self) -> None:
        self.datagrams.read()

    def write(self, datagram: bytes, addr: Any = None) -> None:
        self.datagrams.write(datagram, addr)

    def receive(self, *datagrams: tuple[bytes, tuple[str, int]]) -> None:
        """Queue *datagrams* and let the port read them, as one readiness event."""
        self.socket.inbox.extend(datagrams)
        self.doRead()

    @property
    def written(self) -> list[tuple[bytes, Any]]:
        """What the protocol sent through this port."""
        return self.socket.sent

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.broadcast = enabled

    def getHost(self) -> Any:
        return SimpleNamespace(host=self.interface, port=self.port)

    def stopListening(self) -> None:
        if self.listening:
            self.listening = False
            if hasattr(self.reactor, "removeReader") and self in getattr(
                    self.reactor, "readers", [self]):
                self.reactor.removeReader(self)
            self.protocol.doStop()


class MemorySockets:
    """The DHCP service's socket factory for tests (``DhcpService(sockets=...)``): ports
    are :class:`MemoryUdpPort` (the production batching code on memory sockets), raw
    senders come from *frame_senders* (default: none, so replies are broadcast)."""

    def __init__(self, reactor: Any = None, *, max_batch: int = 64,
                 frame_senders: Callable[[str], Any] | None = None) -> None:
        self.reactor = reactor
        self.max_batch = max_batch
        self.frame_senders = frame_senders
        self.ports: list[MemoryUdpPort] = []

    def listen(self, port: int, protocol: Any, host: str, *, device: str | None,
               reuse_address: bool) -> MemoryUdpPort:
        opened = MemoryUdpPort(self.reactor, port, protocol, host, device=device,
                               reuse_address=reuse_address, max_batch=self.max_batch)
        opened.startListening()
        self.ports.append(opened)
        return opened

    def frame_sender(self, device: str) -> Any:
        return None if self.frame_senders is None else self.frame_senders(device)
