"""The syslog receiver: UDP and TCP servers that give each line to the machine that sent it.

Every message is bounded (``max_message_bytes``: a longer datagram is dropped, a longer TCP
frame closes the connection), rate-limited per source address (a token bucket of ``rate``
lines per second and ``burst`` lines; at most ``max_sources`` buckets, the least recently
used dropped first), parsed (RFC 5424 or RFC 3164; over UDP a datagram without a ``<PRI>``
is read as the kernel's netconsole output unless ``netconsole`` is off), and attributed
to a machine by its source address
(:meth:`pxestack.extensions.ExtensionContext.machine_of`: the DHCP lease, the host
record's ``InternalAddr``, the address of a recorded boot step; remembered for
``attribution_ttl`` seconds).  A line from an address no machine is known at is dropped.
Every outcome is counted in ``pxestack_syslog_messages_total{outcome}``.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from twisted.application import internet, service
from twisted.internet import protocol
from twisted.logger import Logger

from pxestack.extensions import ExtensionContext, Machine
from pxestack_syslog.parse import FrameError, Framer, parse_message, parse_netconsole

log = Logger()

OUTCOMES = ("accepted", "rate_limited", "malformed", "oversize", "unknown_source",
            "refused_connection")


@dataclass(frozen=True, slots=True)
class SyslogSettings:
    """The extension's validated ``config`` (docs/extensions.md)."""

    listen: tuple[str, int] = ("0.0.0.0", 514)
    udp: bool = True
    tcp: bool = True
    max_message_bytes: int = 2048
    rate: float = 50.0
    burst: int = 200
    max_sources: int = 4096
    max_connections: int = 64
    idle_timeout: float = 300.0
    attribution_ttl: float = 10.0
    #: Read a UDP datagram without a ``<PRI>`` as netconsole output (kernel console lines).
    netconsole: bool = True
    #: The UDP socket's receive buffer (bytes): what a burst may hold while the reactor is
    #: busy elsewhere (netconsole sends a kernel's whole log at once).
    udp_receive_buffer: int = 2 << 20


class TokenBuckets:
    """One token bucket per source address, at most *max_sources* (LRU)."""

    def __init__(self, rate: float, burst: int, max_sources: int,
                 clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str) -> bool:
        """Take one token of *source*'s bucket; False when it is empty."""
        now = self._clock()
        tokens, then = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[source] = (tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class SyslogReceiver:
    """What both transports share: limits, parsing, attribution, the recorder."""

    def __init__(self, context: ExtensionContext, settings: SyslogSettings) -> None:
        self.context = context
        self.settings = settings
        clock = context.reactor.seconds
        self._clock = clock
        self.buckets = TokenBuckets(settings.rate, settings.burst, settings.max_sources, clock)
        self._machines: OrderedDict[str, tuple[Machine | None, float]] = OrderedDict()
        registry = context.metrics.registry
        self.counter = Counter("pxestack_syslog_messages", "syslog messages received, by "
                               "what became of them", ["outcome"], registry=registry)
        for outcome in OUTCOMES:
            self.counter.labels(outcome=outcome)
        self.connections_gauge = Gauge("pxestack_syslog_connections",
                                       "open syslog TCP connections", registry=registry)
        self.connections = 0
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self._warned: set[str] = set()

    def count(self, outcome: str) -> None:
        """Count one message (or connection) with *outcome*."""
        self.counts[outcome] += 1
        self.counter.labels(outcome=outcome).inc()

    def machine(self, ip: str) -> Machine | None:
        """The machine at *ip* (remembered for ``attribution_ttl`` seconds)."""
        now = self._clock()
        cached = self._machines.get(ip)
        if cached is not None and now - cached[1] < self.settings.attribution_ttl:
            return cached[0]
        found = self.context.machine_of(ip)
        self._machines[ip] = (found, now)
        self._machines.move_to_end(ip)
        while len(self._machines) > self.settings.max_sources:
            self._machines.popitem(last=False)
        return found

    def receive(self, data: bytes, ip: str, *, datagram: bool = False) -> None:
        """One message (framing removed) from *ip*; a *datagram* (UDP) without a
        ``<PRI>`` is read as netconsole output when the ``netconsole`` setting is on."""
        if len(data) > self.settings.max_message_bytes:
            self.count("oversize")
            return
        if not self.buckets.allow(ip):
            self.count("rate_limited")
            return
        message = parse_message(data)
        messages = [message] if message is not None else []
        if message is None and datagram and self.settings.netconsole:
            messages = parse_netconsole(data)
        if not messages:
            self.count("malformed")
            return
        machine = self.machine(ip)
        if machine is None:
            self.count("unknown_source")
            if ip not in self._warned and len(self._warned) < 256:
                self._warned.add(ip)
                log.info("syslog from {ip}: no machine is known at this address; dropped",
                         ip=ip)
            return
        # A datagram of several console lines takes a token per line: the rate stays one of
        # lines, whatever the packing.
        for index in range(1, len(messages)):
            if not self.buckets.allow(ip):
                self.count("rate_limited")
                messages = messages[:index]
                break
        kept = [self.context.events.log(m.line(), serial=machine.serial, mac=machine.mac,
                                        ip=ip) for m in messages]
        self.count("accepted" if any(e is not None for e in kept) else "malformed")


class SyslogUdp(protocol.DatagramProtocol):
    """Syslog over UDP (RFC 5426): one message per datagram."""

    def __init__(self, receiver: SyslogReceiver) -> None:
        self.receiver = receiver

    def startProtocol(self) -> None:
        """Give the socket ``udp_receive_buffer`` bytes of receive buffer (UDP has no flow
        control: a burst the buffer cannot hold is lost in the kernel, uncounted)."""
        wanted = self.receiver.settings.udp_receive_buffer
        size = set_receive_buffer(self.transport.getHandle(), wanted)
        if size >= wanted:
            log.info("syslog: UDP receive buffer {size} bytes", size=size)
        else:
            log.warn("syslog: UDP receive buffer only {size} of the {wanted} bytes asked for "
                     "(net.core.rmem_max caps it without CAP_NET_ADMIN): a burst beyond it is "
                     "lost", size=size, wanted=wanted)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            self.receiver.receive(datagram, str(addr[0]), datagram=True)
        except Exception:
            log.failure("a syslog datagram from {ip} could not be handled", ip=addr[0])


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Set *sock*'s receive buffer to *size* bytes: ``SO_RCVBUFFORCE`` (past
    ``net.core.rmem_max``, with ``CAP_NET_ADMIN``), else ``SO_RCVBUF``; returns the size the
    kernel granted (it reports twice what it was asked, its bookkeeping included)."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // 2


class SyslogTcp(protocol.Protocol):
    """Syslog over TCP (RFC 6587): octet-counted or LF-terminated messages."""

    factory: SyslogTcpFactory
    transport: Any

    def connectionMade(self) -> None:
        receiver = self.factory.receiver
        self.ip = str(getattr(self.transport.getPeer(), "host", "?"))
        if receiver.connections >= receiver.settings.max_connections:
            receiver.count("refused_connection")
            self.transport.loseConnection()
            self.counted = False
            return
        self.counted = True
        receiver.connections += 1
        receiver.connections_gauge.set(receiver.connections)
        self.framer = Framer(receiver.settings.max_message_bytes)
        self._timer = receiver.context.reactor.callLater(receiver.settings.idle_timeout,
                                                         self._idle)

    def _idle(self) -> None:
        self._timer = None
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if not self.counted:
            return
        receiver = self.factory.receiver
        if self._timer is not None and self._timer.active():
            self._timer.reset(receiver.settings.idle_timeout)
        try:
            messages = self.framer.feed(data)
        except FrameError as exc:
            receiver.count("oversize")
            log.info("closing the syslog connection from {ip}: {why}", ip=self.ip, why=str(exc))
            self.counted_close()
            return
        for message in messages:
            receiver.receive(message, self.ip)

    def counted_close(self) -> None:
        """Drop the connection at once (what is buffered is not worth reading)."""
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            receiver = self.factory.receiver
            receiver.connections -= 1
            receiver.connections_gauge.set(receiver.connections)
            timer = getattr(self, "_timer", None)
            if timer is not None and timer.active():
                timer.cancel()


class SyslogTcpFactory(protocol.ServerFactory):
    """Makes a :class:`SyslogTcp` per connection, all sharing one receiver."""

    protocol = SyslogTcp  # type: ignore[assignment]

    def __init__(self, receiver: SyslogReceiver) -> None:
        self.receiver = receiver


def syslog_services(context: ExtensionContext, settings: SyslogSettings) -> service.IService:
    """The UDP and TCP servers of *settings*, under one parent."""
    receiver = SyslogReceiver(context, settings)
    parent = service.MultiService()
    parent.setName("syslog")
    host, port = settings.listen
    if settings.udp:
        udp = internet.UDPServer(port, SyslogUdp(receiver), interface=host,
                                 maxPacketSize=settings.max_message_bytes + 1,
                                 reactor=context.reactor)
        udp.setServiceParent(parent)
    if settings.tcp:
        tcp = internet.TCPServer(port, SyslogTcpFactory(receiver), interface=host,
                                 reactor=context.reactor)
        tcp.setServiceParent(parent)
    parent.receiver = receiver  # type: ignore[attr-defined]
    return parent


__all__ = ["OUTCOMES", "SyslogReceiver", "SyslogSettings", "TokenBuckets", "syslog_services"]
