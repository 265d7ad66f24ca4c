"""The Twisted adapters of the DHCP cores: datagrams in, replies out, nothing else.

:class:`DhcpServerProtocol` (full server) and :class:`ProxyDhcpProtocol` (proxyDHCP, port 67
snooping or port 4011) do the same three things for every datagram: decode it
(:func:`~pxestack.wire.dhcp.decode_dhcp`), hand it with the interface and
``reactor.seconds()`` to their sans-IO core, and encode and send what the core returns.
The transmission rules are decided by the core (:func:`~pxestack.dhcp.decide.reply_destination`,
RFC 2131 §4.1); this module only carries them out:

* ``RELAY`` / ``UNICAST``: an ordinary ``sendto``.
* ``BROADCAST``: to the interface's broadcast target (255.255.255.255 on a real link).
* ``LINK_UNICAST``: the client has no address yet, so the kernel has no ARP entry for
  yiaddr.  Like ISC dhcpd and dnsmasq, the reply is written as a raw Ethernet/IPv4/UDP
  frame to ``chaddr`` through an ``AF_PACKET`` socket (:class:`RawUnicastSender`, needs
  CAP_NET_RAW).  Without one the reply is broadcast instead: iPXE, the client that leaves
  the broadcast flag clear, accepts broadcast replies (firmware.md §1).

Hostile input never reaches the reactor: :class:`~pxestack.errors.MalformedPacket` (from the
decoder or from a typed option getter in the core) is logged with structured fields and
dropped, and a catch-all logs anything else as a bug in pxestack and drops the datagram too.

:class:`DeadlineTimer` keeps one ``IDelayedCall`` armed at the core's next deadline (offer
holds, lease expiry), re-armed only when a sooner deadline appears, so the hot path does
not cancel and reschedule a timer per packet.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any, Protocol

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from pxestack.dhcp.decide import DestinationKind, Outgoing
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo
from pxestack.errors import ApiMisuse, MalformedPacket
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp

_BROADCAST = "255.255.255.255"
_ETH_P_IP = 0x0800


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ipv4_udp_packet(
    source: IPv4Address, destination: IPv4Address, source_port: int, destination_port: int,
    payload: bytes, *, ttl: int = 64,
) -> bytes:
    """An IPv4 header (RFC 791) and UDP header (RFC 768, with checksum) around *payload*.

    The kernel adds the Ethernet header when the packet goes out on an ``AF_PACKET``
    ``SOCK_DGRAM`` socket with the client's MAC as link-layer destination.
    """
    udp_length = 8 + len(payload)
    pseudo = source.packed + destination.packed + struct.pack("!BBH", 0, 17, udp_length)
    udp_header = struct.pack("!HHHH", source_port, destination_port, udp_length, 0)
    checksum = 0xFFFF - _ones_complement_sum(pseudo + udp_header + payload)
    udp_header = struct.pack(
        "!HHHH", source_port, destination_port, udp_length, checksum or 0xFFFF
    )
    total_length = 20 + udp_length
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total_length, 0, 0x4000, ttl, 17, 0,
        source.packed, destination.packed,
    )
    header_checksum = 0xFFFF - _ones_complement_sum(header)
    header = header[:10] + struct.pack("!H", header_checksum) + header[12:]
    return header + udp_header + payload


class FrameSender(Protocol):
    """Sends a DHCP reply to a client that has no IPv4 address yet."""

    def send(
        self, payload: bytes, source: IPv4Address, destination: IPv4Address,
        mac: bytes, destination_port: int,
    ) -> bool:
        """Send; False if the frame could not be sent (the caller then broadcasts)."""


class RawUnicastSender:
    """Link-layer unicast through an ``AF_PACKET``/``SOCK_DGRAM`` socket on one interface.

    Open it with :meth:`open` while still privileged (it needs CAP_NET_RAW); it returns
    None where raw sockets are unavailable, and the adapter falls back to broadcast.
    """

    log = Logger()

    def __init__(self, sock: socket.socket, interface: str) -> None:
        self._socket = sock
        self.interface = interface

    @classmethod
    def open(cls, interface: str) -> RawUnicastSender | None:
        """A sender for *interface*, or None without privileges or ``AF_PACKET``."""
        family = getattr(socket, "AF_PACKET", None)
        if family is None:
            return None
        try:
            # Protocol 0: this socket only sends; it receives nothing.
            sock = socket.socket(family, socket.SOCK_DGRAM, 0)
        except OSError as exc:
            cls.log.info(
                "no raw socket on {interface} ({error}): address-less clients get broadcasts",
                interface=interface, error=str(exc),
            )
            return None
        sock.setblocking(False)
        return cls(sock, interface)

    def send(
        self, payload: bytes, source: IPv4Address, destination: IPv4Address,
        mac: bytes, destination_port: int,
    ) -> bool:
        """Write one frame to *mac*; False on any socket error (EAGAIN included)."""
        packet = ipv4_udp_packet(source, destination, c.DHCP_SERVER_PORT, destination_port,
                                 payload)
        try:
            self._socket.sendto(packet, (self.interface, _ETH_P_IP, 0, 0, mac))
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                self.log.warn("raw send on {interface} failed: {error}",
                              interface=self.interface, error=str(exc))
            return False
        return True

    def close(self) -> None:
        """Close the socket."""
        self._socket.close()


class _DeadlineCore(Protocol):
    def next_deadline(self) -> float | None: ...

    def on_deadline(self, now: float) -> object: ...


class DeadlineTimer:
    """One ``IDelayedCall`` at the core's next deadline (offer holds and lease expiry)."""

    def __init__(self, core: _DeadlineCore, reactor: Any = None) -> None:
        self.core = core
        self.reactor = reactor if reactor is not None else _default_reactor()
        #: The armed ``IDelayedCall`` (typed Any: zope interfaces confuse mypy here).
        self._call: Any = None
        self._when: float | None = None

    def rearm(self) -> None:
        """Make sure a call is scheduled no later than the core's next deadline."""
        deadline = self.core.next_deadline()
        if deadline is None:
            return
        if self._call is not None and self._call.active():
            if self._when is not None and self._when <= deadline:
                return  # the armed call comes first; it re-arms when it fires
            self._call.cancel()
        delay = max(0.0, deadline - self.reactor.seconds())
        self._when = deadline
        self._call = self.reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        self._when = None
        try:
            self.core.on_deadline(self.reactor.seconds())
        except Exception:  # a bug in the core must not kill the timer chain
            DhcpDatagramProtocol.log.failure("lease expiry failed (a bug in pxestack)")
        self.rearm()

    def stop(self) -> None:
        """Cancel the pending call."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._when = None


class DhcpDatagramProtocol(DatagramProtocol):
    """Shared plumbing: decode, dispatch, encode, send; hostile input logged and dropped.

    :param interface: the interface this socket is bound to (name, our address, network).
    :param broadcast_address: where BROADCAST replies go (255.255.255.255 on a real link;
        the loopback quickstart uses 127.255.255.255).
    :param client_port: the port replies to clients go to (68; quick tests on loopback use
        another).
    :param frames: a :class:`FrameSender` for LINK_UNICAST replies, or None to broadcast.
    """

    log = Logger()

    def __init__(
        self,
        interface: InterfaceInfo,
        *,
        reactor: Any = None,
        broadcast_address: str = _BROADCAST,
        client_port: int = c.DHCP_CLIENT_PORT,
        frames: FrameSender | None = None,
    ) -> None:
        self.interface = interface
        self._reactor = reactor
        self.broadcast_address = broadcast_address
        self.client_port = client_port
        self.frames = frames
        #: Datagrams dropped as malformed / because of a bug (bounded counters, D11).
        self.malformed = 0
        self.bugs = 0

    @property
    def reactor(self) -> Any:
        """The reactor whose ``seconds()`` is ``now``."""
        if self._reactor is None:
            self._reactor = _default_reactor()
        return self._reactor

    def dispatch(self, message: DhcpMessage, source: tuple[str, int], now: float) -> list[Outgoing]:
        """Hand one decoded message to the core (subclasses)."""
        raise NotImplementedError

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """Decode, dispatch, send.  Never raises into the reactor."""
        try:
            message = decode_dhcp(datagram)
            replies = self.dispatch(message, addr, self.reactor.seconds())
        except MalformedPacket as exc:
            self.malformed += 1
            self.log.debug(
                "dropped malformed DHCP datagram from {peer} on {iface}: {error}",
                peer=addr[0], port=addr[1], iface=self.interface.name, error=str(exc),
                size=len(datagram),
            )
            return
        except Exception:
            self.bugs += 1
            self.log.failure(
                "DHCP datagram from {peer} on {iface} hit a bug in pxestack; dropped",
                peer=addr[0], iface=self.interface.name, size=len(datagram),
            )
            return
        for reply in replies:
            self.send(reply)

    def send(self, reply: Outgoing) -> None:
        """Encode *reply* and carry out its destination (RFC 2131 §4.1, decided by the core)."""
        try:
            payload = encode_dhcp(reply.message, max_size=reply.max_size)
        except ApiMisuse:
            self.bugs += 1
            self.log.failure("could not encode a DHCP reply (a bug in pxestack)",
                             xid=reply.message.xid, mac=reply.message.mac)
            return
        destination = reply.destination
        kind = destination.kind
        port = destination.port
        if port == c.DHCP_CLIENT_PORT:
            port = self.client_port
        if kind is DestinationKind.LINK_UNICAST:
            if self.frames is not None and self.frames.send(
                payload, self.interface.address, destination.address, destination.chaddr, port
            ):
                return
            # No raw socket: broadcast, which iPXE and every OS client accept (firmware.md).
            target = (self.broadcast_address, port)
        elif kind is DestinationKind.BROADCAST:
            target = (self.broadcast_address, port)
        else:
            target = (str(destination.address), port)
        transport: Any = self.transport
        if transport is None:
            return
        try:
            transport.write(payload, target)
        except OSError as exc:
            # ENETUNREACH, EPERM from a firewall, ...: log, never raise into the reactor.
            self.log.warn("sending DHCP reply to {target} failed: {error}",
                          target=f"{target[0]}:{target[1]}", error=str(exc),
                          xid=reply.message.xid)


class DhcpServerProtocol(DhcpDatagramProtocol):
    """The full server on one interface.  Several interfaces share one core (one lease DB).

    :param timer: re-armed after every message so offer holds and leases expire on time.
    """

    def __init__(
        self,
        core: DhcpServerCore,
        interface: InterfaceInfo,
        *,
        timer: DeadlineTimer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(interface, **kwargs)
        self.core = core
        self.timer = timer

    def dispatch(self, message: DhcpMessage, source: tuple[str, int], now: float) -> list[Outgoing]:
        """Full-server handling of one message."""
        replies = self.core.handle(message, self.interface, now)
        if self.timer is not None:
            self.timer.rearm()
        return replies


class ProxyDhcpProtocol(DhcpDatagramProtocol):
    """proxyDHCP on one socket: port 67 (snooping broadcasts) or the PXE port 4011.

    :param port: the port this socket listens on; the core treats its ``proxy_port`` as
        port 4011 (replies to the sender) and anything else as port 67.
    """

    def __init__(self, core: ProxyDhcpCore, interface: InterfaceInfo, *, port: int,
                 **kwargs: Any) -> None:
        super().__init__(interface, **kwargs)
        self.core = core
        self.port = port

    def dispatch(self, message: DhcpMessage, source: tuple[str, int], now: float) -> list[Outgoing]:
        """proxyDHCP handling of one message."""
        return self.core.handle(message, self.interface.name, now, port=self.port, source=source)


#: The signature of the factory the service uses to open raw senders (swapped in tests).
FrameSenderFactory = Callable[[str], FrameSender | None]

__all__ = [
    "DeadlineTimer",
    "DhcpDatagramProtocol",
    "DhcpServerProtocol",
    "FrameSender",
    "FrameSenderFactory",
    "ProxyDhcpProtocol",
    "RawUnicastSender",
    "ipv4_udp_packet",
]
