"""Listening-port services that bind in ``privilegedStartService``.

twistd calls ``privilegedStartService`` before it drops privileges, so ports 67, 69 and 4011
are opened there, as ``twisted.application.internet``'s servers do.  UDP cannot be described
with a strports string (``listenUDP`` takes no endpoint), hence this small service.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.logger import Logger

log = Logger()


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class UdpPortService(service.Service):
    """Listen on one UDP port with one datagram protocol.

    :param device: bind to this network interface (``SO_BINDTODEVICE``) so that several
        interfaces can each have their own socket on the same port, and each packet's
        receiving interface is known (Twisted's ``listenUDP`` exposes no ``IP_PKTINFO``).
    :param broadcast: allow sending to broadcast addresses (DHCP replies).
    """

    def __init__(
        self,
        port: int,
        protocol: AbstractDatagramProtocol,
        interface: str = "",
        *,
        device: str | None = None,
        broadcast: bool = False,
        reuse_address: bool = False,
        reactor: Any = None,
    ) -> None:
        self.port_number = port
        self.protocol = protocol
        self.interface = interface
        self.device = device
        self.broadcast = broadcast
        self.reuse_address = reuse_address
        self._reactor = reactor
        self.port: IListeningPort | None = None

    @property
    def reactor(self) -> Any:
        """The reactor this service listens with."""
        return self._reactor if self._reactor is not None else _default_reactor()

    def privilegedStartService(self) -> None:
        """Bind the port (possibly privileged) before twistd drops root."""
        if self.device is None and not self.reuse_address:
            self.port = self.reactor.listenUDP(self.port_number, self.protocol, self.interface)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.device is not None:
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.device.encode() + b"\0"
                    )
                sock.bind((self.interface, self.port_number))
                sock.setblocking(False)
                self.port = self.reactor.adoptDatagramPort(
                    sock.fileno(), socket.AF_INET, self.protocol
                )
            finally:
                sock.close()  # adoptDatagramPort dup()s the descriptor
        if self.broadcast and self.port is not None:
            self.port.setBroadcastAllowed(True)  # type: ignore[attr-defined]
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        """Bind now if twistd did not call ``privilegedStartService`` (library use)."""
        if self.port is None:
            self.privilegedStartService()
        service.Service.startService(self)
        host = self.port.getHost() if self.port is not None else None
        log.info(
            "listening on udp {host}:{port}{device}",
            host=getattr(host, "host", self.interface),
            port=getattr(host, "port", self.port_number),
            device=f" ({self.device})" if self.device else "",
        )

    def stopService(self) -> Any:
        """Close the port; returns the Deferred of ``stopListening``."""
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


__all__ = ["UdpPortService"]
