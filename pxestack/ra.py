"""Answer IPv6 router solicitations with "nothing to configure here" (RFC 4861 §6.2.6).

Why a network-boot server sends router advertisements at all: iPXE (at least the
1.0.0+git-20190125 snapshot Debian 12 ships in ipxe-qemu and ipxe) runs its DHCPv4 and IPv6
configurators together and only reads the boot file once *both* are done.  Without any
router on the segment the IPv6 one retransmits router solicitations for 15.75 s and then
gives up, so every boot idles ~13 s after the DHCPv4 ACK.  Any router advertisement with
M=0 and O=0 finishes it at once; booting QEMU machines measured the boot-script GET moving from
~13 s after the ACK to 0.08 s.  (An RA with M or O set makes iPXE start DHCPv6 and wait
again.)  Newer iPXE (v1.21.1+) waits only ~3.9 s, so the gain is smaller there.

The advertisement is the mildest one possible: M=0, O=0, router lifetime 0 (so nobody uses
pxestack as a default router, §6.3.4), no prefix information (so nobody autoconfigures an
address).  It is still an RA: on a shared LAN with real IPv6 routers it may change what
other hosts believe about M/O, and RA-Guard switches drop it.  That is why the service is
off unless the operator enables it for a dedicated provisioning segment, and why it answers
by unicast to the soliciting address by default (RFC 4861 §6.2.6 allows that) instead of
to all nodes.

One raw ICMPv6 socket per interface (``SO_BINDTODEVICE``), joined to all-routers (ff02::2),
with an ``ICMP6_FILTER`` that passes only router solicitations.  The kernel verifies the
ICMPv6 checksum of what it delivers and computes it for what we send (RFC 3542 §3.1).
"""

from __future__ import annotations

import random as random_module
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from typing import Any, Protocol

from twisted.application import service
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pxestack.errors import MalformedPacket
from pxestack.wire.icmpv6 import (
    ALL_NODES,
    ALL_ROUTERS,
    MAX_RA_DELAY_TIME,
    MIN_DELAY_BETWEEN_RAS,
    NDP_HOP_LIMIT,
    ROUTER_SOLICITATION,
    UNSPECIFIED,
    RouterAdvertisement,
    decode_router_solicitation,
    encode_router_advertisement,
)

#: Linux ``<netinet/icmp6.h>``: the ICMP6_FILTER socket option (level IPPROTO_ICMPV6); the
#: ``socket`` module does not export it.
ICMP6_FILTER = 1
#: How many datagrams one readiness notification reads at most (bounds a flood's turn).
READS_PER_WAKEUP = 32
#: Unicast answers waiting for their delay at most at once; more solicitations are dropped.
MAX_PENDING_UNICAST = 256

#: Decides whether a solicitation gets an answer: (source address, link-layer address or
#: None) -> bool.  Lets an embedder answer only MACs it is provisioning.
AnswerPolicy = Callable[[IPv6Address, bytes | None], bool]


class RawSocket(Protocol):
    """The part of ``socket.socket`` the responder uses (a fake in tests)."""

    def fileno(self) -> int:
        """The descriptor the reactor watches."""
        ...

    def recvmsg(
        self, bufsize: int, ancbufsize: int = ..., flags: int = ...
    ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        """One datagram with its ancillary data and sender address."""
        ...

    def sendto(self, data: bytes, address: tuple[str, int, int, int]) -> int:
        """Send one datagram."""
        ...

    def close(self) -> None:
        """Close the socket."""
        ...


def icmp6_filter_passing(*types: int) -> bytes:
    """A Linux ``struct icmp6_filter`` that blocks every ICMPv6 type except *types*.

    Linux's bitmap marks *blocked* types (``ICMP6_FILTER_SETBLOCK`` sets the bit), the
    opposite of the RFC 3542 §3.2 macros' pass-bitmap on BSD.
    """
    words = [0xFFFFFFFF] * 8
    for message_type in types:
        words[message_type >> 5] &= ~(1 << (message_type & 31))
    return struct.pack("=8I", *words)


def open_solicitation_socket(interface: str) -> socket.socket:
    """A non-blocking raw ICMPv6 socket on *interface* that receives router solicitations.

    Needs CAP_NET_RAW; call it from ``privilegedStartService``.
    """
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER,
                        icmp6_filter_passing(ROUTER_SOLICITATION))
        # RFC 4861 §6.1.2: hop limit 255 on everything we send ...
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, NDP_HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, NDP_HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        # ... and §6.1.1: we must see the hop limit of what we receive to check it.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        membership = ALL_ROUTERS.packed + struct.pack("@I", socket.if_nametoindex(interface))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, membership)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def hop_limit_of(ancillary: Sequence[tuple[int, int, bytes]]) -> int | None:
    """The IPV6_HOPLIMIT value in recvmsg's ancillary data, if present."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(data) >= 4:
            value: int = struct.unpack("@i", data[:4])[0]
            return value
    return None


@dataclass
class _Schedule:
    """The advertisements one interface has promised but not yet sent."""

    #: IDelayedCall providers (typed Any: zope interfaces are not mypy types).
    multicast: Any = None
    last_multicast: float | None = None
    unicast: dict[IPv6Address, Any] = field(default_factory=dict)


@implementer(IReadDescriptor)
class SolicitationResponder:
    """Reads router solicitations from one interface's socket and schedules the answers.

    RFC 4861 §6.2.6: each answer waits a random 0..MAX_RA_DELAY_TIME; multicast answers
    are coalesced and spaced at least MIN_DELAY_BETWEEN_RAS apart; a unicast answer goes to
    the solicitation's source when it is not the unspecified address.
    """

    log = Logger()

    def __init__(
        self,
        interface: str,
        sock: RawSocket,
        scope_id: int,
        reactor: Any,
        *,
        advertisement: RouterAdvertisement,
        unicast: bool,
        max_delay: float,
        random: random_module.Random,
        answer: AnswerPolicy | None,
    ) -> None:
        self.interface = interface
        self.socket = sock
        self.scope_id = scope_id
        self.reactor = reactor
        self.wire = encode_router_advertisement(advertisement)
        self.unicast = unicast
        self.max_delay = max_delay
        self.random = random
        self.answer = answer
        self.schedule = _Schedule()
        self.sent = 0

    # IReadDescriptor -------------------------------------------------------------------

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.socket.fileno()

    def logPrefix(self) -> str:
        """Prefix for Twisted's legacy log lines."""
        return f"RouterAdvertisement({self.interface})"

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the descriptor; nothing to do (stop() closes the socket)."""

    def doRead(self) -> None:
        """Read the waiting solicitations; never raises into the reactor."""
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancillary, _flags, address = self.socket.recvmsg(
                    1500, socket.CMSG_SPACE(4)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.log.warn("recvmsg on {interface} failed: {error}",
                              interface=self.interface, error=str(error))
                return
            self.solicitation_received(data, hop_limit_of(ancillary), address[0])

    # the responder ---------------------------------------------------------------------

    def solicitation_received(self, data: bytes, hop_limit: int | None, source: str) -> None:
        """Validate one solicitation (RFC 4861 §6.1.1) and schedule its answer."""
        try:
            sender = IPv6Address(source.split("%", 1)[0])
        except ValueError:
            self.log.warn("dropped RS with unparsable source {source!r}", source=source)
            return
        if hop_limit != NDP_HOP_LIMIT:
            # §6.1.1: a solicitation with any other hop limit may have been forwarded.
            self.log.info("dropped RS from {source} on {interface}: hop limit {hop_limit}",
                          source=str(sender), interface=self.interface, hop_limit=hop_limit)
            return
        try:
            solicitation = decode_router_solicitation(data, sender)
        except MalformedPacket as error:
            self.log.info("dropped malformed RS from {source} on {interface}: {error}",
                          source=str(sender), interface=self.interface, error=str(error))
            return
        link_layer = solicitation.source_link_layer
        self.log.debug("RS from {source} on {interface}: {data}", source=str(sender),
                       interface=self.interface, data=data.hex())
        if self.answer is not None and not self.answer(sender, link_layer):
            self.log.debug("not answering RS from {source}", source=str(sender))
            return
        if self.unicast and sender != UNSPECIFIED:
            self._schedule_unicast(sender)
        else:
            self._schedule_multicast()

    def _delay(self) -> float:
        return self.random.uniform(0.0, self.max_delay)

    def _schedule_unicast(self, destination: IPv6Address) -> None:
        pending = self.schedule.unicast
        if destination in pending:
            return  # one answer is already on its way to this host
        if len(pending) >= MAX_PENDING_UNICAST:
            self.log.warn("dropped RS from {source}: {count} answers already pending",
                          source=str(destination), count=len(pending))
            return
        pending[destination] = self.reactor.callLater(
            self._delay(), self._send_unicast, destination
        )

    def _schedule_multicast(self) -> None:
        if self.schedule.multicast is not None:
            return  # §6.2.6: the already-scheduled multicast RA answers this one too
        now = self.reactor.seconds()
        when = now + self._delay()
        if self.schedule.last_multicast is not None:
            when = max(when, self.schedule.last_multicast + MIN_DELAY_BETWEEN_RAS)
        self.schedule.multicast = self.reactor.callLater(when - now, self._send_multicast)

    def _send_unicast(self, destination: IPv6Address) -> None:
        self.schedule.unicast.pop(destination, None)
        self._send(destination)

    def _send_multicast(self) -> None:
        self.schedule.multicast = None
        self.schedule.last_multicast = self.reactor.seconds()
        self._send(ALL_NODES)

    def _send(self, destination: IPv6Address) -> None:
        try:
            self.socket.sendto(self.wire, (str(destination), 0, 0, self.scope_id))
        except OSError as error:
            self.log.warn("sending RA to {destination} on {interface} failed: {error}",
                          destination=str(destination), interface=self.interface,
                          error=str(error))
            return
        self.sent += 1
        self.log.debug("sent RA to {destination} on {interface}",
                       destination=str(destination), interface=self.interface)

    def stop(self) -> None:
        """Cancel every pending answer and close the socket."""
        calls = list(self.schedule.unicast.values())
        if self.schedule.multicast is not None:
            calls.append(self.schedule.multicast)
        for call in calls:
            if call.active():
                call.cancel()
        self.schedule = _Schedule()
        self.socket.close()


class RouterAdvertisementService(service.Service):
    """Answer router solicitations on *interfaces* with an M=0, O=0, lifetime-0 RA.

    :param unicast: answer to the soliciting address (default) instead of ff02::1.
    :param answer: optional policy deciding per solicitation whether to answer.
    :param max_delay: RFC 4861 §6.2.6 random delay bound (MAX_RA_DELAY_TIME, 0.5 s).
    :param socket_factory: opens the socket for one interface (tests pass a fake).
    :param scope_id_of: interface name -> index (for link-local destinations).
    """

    log = Logger()
    name = "router-advertisements"

    def __init__(
        self,
        interfaces: Sequence[str],
        *,
        unicast: bool = True,
        advertisement: RouterAdvertisement | None = None,
        answer: AnswerPolicy | None = None,
        max_delay: float = MAX_RA_DELAY_TIME,
        random: random_module.Random | None = None,
        reactor: Any = None,
        socket_factory: Callable[[str], RawSocket] = open_solicitation_socket,
        scope_id_of: Callable[[str], int] = socket.if_nametoindex,
    ) -> None:
        if not interfaces:
            raise ValueError("router advertisements need at least one interface")
        self.interfaces = tuple(interfaces)
        self.unicast = unicast
        self.advertisement = advertisement or RouterAdvertisement()
        self.answer = answer
        self.max_delay = max_delay
        # Only spreads answers in time (§6.2.6); nothing secret depends on it.
        self.random = random or random_module.Random()  # noqa: S311
        self._reactor = reactor
        self.socket_factory = socket_factory
        self.scope_id_of = scope_id_of
        self.responders: list[SolicitationResponder] = []

    @property
    def reactor(self) -> Any:
        """The reactor (the global one unless one was injected)."""
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def privilegedStartService(self) -> None:
        """Open the raw sockets (needs CAP_NET_RAW) before twistd drops privileges."""
        if not self.responders:
            opened: list[SolicitationResponder] = []
            try:
                for interface in self.interfaces:
                    opened.append(SolicitationResponder(
                        interface,
                        self.socket_factory(interface),
                        self.scope_id_of(interface),
                        self.reactor,
                        advertisement=self.advertisement,
                        unicast=self.unicast,
                        max_delay=self.max_delay,
                        random=self.random,
                        answer=self.answer,
                    ))
            except BaseException:
                for responder in opened:
                    responder.stop()
                raise
            self.responders = opened
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        """Start reading (opening the sockets first if twistd did not)."""
        if not self.responders:
            self.privilegedStartService()
        service.Service.startService(self)
        for responder in self.responders:
            self.reactor.addReader(responder)
            self.log.info("answering router solicitations on {interface} ({mode})",
                          interface=responder.interface,
                          mode="unicast" if self.unicast else "multicast")

    def stopService(self) -> None:
        """Stop reading, cancel pending answers and close the sockets."""
        service.Service.stopService(self)
        for responder in self.responders:
            self.reactor.removeReader(responder)
            responder.stop()
        self.responders = []


__all__ = [
    "AnswerPolicy",
    "RouterAdvertisementService",
    "SolicitationResponder",
    "hop_limit_of",
    "icmp6_filter_passing",
    "open_solicitation_socket",
]
