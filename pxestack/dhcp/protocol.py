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
  the broadcast flag clear, accepts broadcast replies (docs/reference/pxe-wire.md).

Hostile input never reaches the reactor: :class:`~pxestack.errors.MalformedPacket` (from the
decoder or from a typed option getter in the core) is logged with structured fields and
dropped, and a catch-all logs anything else as a bug in pxestack and drops the datagram too.

:class:`DeadlineTimer` keeps one ``IDelayedCall`` armed at the core's next deadline (offer
holds, lease expiry), re-armed only when a sooner deadline appears, so the hot path does
not cancel and reschedule a timer per packet.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address
from typing import Any, Final, Protocol

from twisted.internet import defer, error, udp
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from pxestack._memo import BoundedMemo
from pxestack.dhcp.outgoing import DestinationKind, Outgoing
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo
from pxestack.errors import ApiMisuse, MalformedPacket
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp
from pxestack.wire.ipv4 import ipv4_udp_packet

_BROADCAST = "255.255.255.255"
_ETH_P_IP = 0x0800
#: Datagrams a :class:`BatchingUdpPort` reads per readiness event at most.
DEFAULT_MAX_BATCH = 64
#: ``recvfrom`` errors that only mean "nothing more to read now".
_READ_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
#: Receive buffer a :class:`BatchingUdpPort` asks for (bytes).  The kernel default (about
#: 200 KiB, some 200 queued datagrams) overflows when a busy machine deschedules the server
#: for a few milliseconds during a boot storm.  Much more is harmful too: under sustained
#: overload the queue stays full, and a 4 MiB queue held requests for most of a second,
#: longer than clients wait (perfdhcp gives up after 1 s), so the server spent its time on
#: answers nobody wanted.  1 MiB (about 800 datagrams) bounds the added wait to ~0.1 s.
DEFAULT_RECEIVE_BUFFER = 1 << 20
#: Destination kinds as module constants: reading a member through its Enum class costs
#: about a thousand machine instructions on CPython 3.11 (``EnumType.__getattr__``'s hook).
_LINK_UNICAST: Final = DestinationKind.LINK_UNICAST
_BROADCAST_KIND: Final = DestinationKind.BROADCAST
#: Bound of the address -> text memo of each protocol.
_ADDRESS_TEXT_ENTRIES = 4096
#: The reply key of :attr:`DhcpDatagramProtocol.outcomes` for a datagram a bug dropped
#: (never a valid option 53 value: those are one octet).
BUG: Final = b"bug"


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


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


class GroupCommit(Protocol):
    """A lease journal that can make a batch of records durable at once
    (:class:`~pxestack.dhcp.journal.LeaseJournal` implements it)."""

    @property
    def pending(self) -> bool:
        """Whether the open batch holds records that are not durable yet."""

    def begin_batch(self) -> None:
        """Start collecting records."""

    def commit(self) -> None:
        """Make every collected record durable; raises ``OSError`` on failure."""


#: What a claim commit's Deferred fires with: called with the datagrams of the batch that
#: got replies and ``now``, it applies the lease table's answers and returns the datagrams
#: to handle again (:meth:`pxestack.dhcp.sharedleases.ClaimBatch.settle`).
Settle = Callable[[set[int], float], set[int]]


class ClaimCommit(Protocol):
    """A lease table shared with other servers, committed once per batch off the reactor
    thread (:class:`pxestack.service.pgleases.LeaseGroupCommit` implements it)."""

    def begin_batch(self) -> None:
        """Start collecting the claims of a batch."""

    def start_datagram(self, index: int) -> None:
        """Claims from now on come from datagram *index* of the batch."""

    def recorded(self, index: int) -> bool:
        """Whether datagram *index* claimed something (its replies wait for the table)."""
        ...

    def commit(self) -> defer.Deferred[Settle] | None:
        """Send the batch's claims; None when there are none.  The Deferred fails when the
        table could not apply them."""
        ...


def _grow_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a *size*-byte receive buffer: ``SO_RCVBUFFORCE`` when privileged (it may
    exceed ``net.core.rmem_max``), else ``SO_RCVBUF`` (capped by the kernel); never fails."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class DatagramSocket(Protocol):
    """What :class:`BatchedDatagrams` needs of a socket (a non-blocking UDP socket, or an
    in-memory stand-in in tests)."""

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        """One datagram and its source; ``OSError`` with ``EAGAIN`` when none is queued."""
        ...

    def sendto(self, data: bytes, address: Any) -> int:
        """Send one datagram."""
        ...


class BatchedDatagrams:
    """The read and write halves of a batching DHCP port, over any :class:`DatagramSocket`.

    :meth:`read` takes up to *max_batch* datagrams per readiness event (non-blocking
    ``recvfrom`` until ``EAGAIN``) and passes them to the protocol's ``receive_batch`` at
    once: the DHCP server commits its lease journal once per batch (one ``fdatasync`` for
    every ACK of the batch).  The bound keeps one busy socket from starving the rest of the
    reactor; epoll is level-triggered, so what is left is read on the next iteration.
    :meth:`write` is a plain ``sendto``: the adapter only ever passes dotted-quad
    addresses, so ``udp.Port``'s per-call host name checks are not needed.

    :class:`BatchingUdpPort` runs it on a kernel socket; tests run the same code on an
    in-memory socket (the port factory of :class:`~pxestack.service.dhcp.DhcpService`
    is injected).
    """

    def __init__(self, sock: DatagramSocket, protocol: DhcpDatagramProtocol, *,
                 max_batch: int = DEFAULT_MAX_BATCH, max_size: int = 8192) -> None:
        self.socket = sock
        self.protocol = protocol
        self.max_batch = max_batch
        self.max_size = max_size

    def read(self) -> None:
        """Read until ``EAGAIN`` or :attr:`max_batch` datagrams, then hand the batch over.

        A socket error other than "nothing more to read" or ``ECONNREFUSED`` is raised
        after the batch is handed over (as ``udp.Port`` does: the reactor logs it)."""
        recvfrom = self.socket.recvfrom
        size = self.max_size
        limit = self.max_batch
        batch: list[tuple[bytes, tuple[str, int]]] = []
        failure: OSError | None = None
        while len(batch) < limit:
            try:
                batch.append(recvfrom(size))
            except OSError as exc:
                if exc.errno not in _READ_AGAIN:
                    failure = exc
                break
        if batch:
            try:
                self.protocol.receive_batch(batch)
            except BaseException:  # the protocol logs its own failures; this is a backstop
                DhcpDatagramProtocol.log.failure("DHCP batch handling failed")
        if failure is not None and failure.errno != errno.ECONNREFUSED:
            raise failure

    def write(self, datagram: bytes, addr: Any) -> None:
        """``sendto``; errors as in ``udp.Port`` (``EMSGSIZE`` becomes
        ``MessageLengthError``, ``ECONNREFUSED`` is ignored, others are raised)."""
        while True:
            try:
                self.socket.sendto(datagram, addr)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                if exc.errno == errno.EMSGSIZE:
                    raise error.MessageLengthError("message too long") from exc
                if exc.errno != errno.ECONNREFUSED:
                    raise
            return


class BatchingUdpPort(udp.Port):
    """Twisted's UDP port with :class:`BatchedDatagrams` as its read and write halves.

    Twisted's ``udp.Port`` calls ``datagramReceived`` once per datagram, so the protocol
    cannot tell where a burst ends; this port hands each burst over at once.  It also
    applies ``SO_REUSEADDR`` and ``SO_BINDTODEVICE`` before binding (one socket per
    interface, as :class:`~pxestack.service.ports.UdpPortService` does) and asks for a
    large receive buffer (:data:`DEFAULT_RECEIVE_BUFFER`) so bursts queue instead of being
    dropped while the server is descheduled.
    """

    #: Datagrams handed over per batch at most.
    max_batch = DEFAULT_MAX_BATCH

    def __init__(
        self,
        port: int,
        protocol: DhcpDatagramProtocol,
        interface: str = "",
        *,
        reactor: Any = None,
        device: str | None = None,
        reuse_address: bool = False,
        max_batch: int = DEFAULT_MAX_BATCH,
        receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
    ) -> None:
        super().__init__(port, protocol, interface, reactor=reactor)  # type: ignore[no-untyped-call]
        self.device = device
        self.reuse_address = reuse_address
        self.max_batch = max_batch
        self.receive_buffer = receive_buffer
        self.batching_protocol = protocol
        self.datagrams: BatchedDatagrams | None = None

    def createInternetSocket(self) -> socket.socket:
        """The socket, with the options that must be set before ``bind``."""
        sock: socket.socket = super().createInternetSocket()
        if self.reuse_address or self.device is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.device is not None:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.device.encode() + b"\0"
            )
        if self.receive_buffer:
            _grow_receive_buffer(sock, self.receive_buffer)
        return sock

    def _bindSocket(self) -> None:
        super()._bindSocket()  # type: ignore[no-untyped-call]
        self.datagrams = BatchedDatagrams(self.socket, self.batching_protocol,
                                          max_batch=self.max_batch,
                                          max_size=self.maxPacketSize)

    def doRead(self) -> None:
        """Hand the datagrams ready now to the protocol (:meth:`BatchedDatagrams.read`)."""
        assert self.datagrams is not None  # bound before the reactor reads it
        self.datagrams.read()

    def write(self, datagram: bytes, addr: Any = None) -> None:
        """Send one reply (:meth:`BatchedDatagrams.write`)."""
        assert self.datagrams is not None
        self.datagrams.write(datagram, addr)


class ListeningPort(Protocol):
    """What the DHCP service keeps of an open port."""

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """Allow replies to broadcast addresses."""
        ...

    def stopListening(self) -> object:
        """Close the port (may return a Deferred)."""
        ...


class DhcpSockets(Protocol):
    """Opens what the DHCP adapters send and receive through: the factory the DHCP service
    is given (kernel sockets in production, in-memory ones in tests, so that both run
    :class:`BatchedDatagrams` and the protocols' batch handling)."""

    def listen(self, port: int, protocol: DhcpDatagramProtocol, host: str, *,
               device: str | None, reuse_address: bool) -> ListeningPort:
        """Open and start a batching UDP port for *protocol* on *host*:*port*."""
        ...

    def frame_sender(self, device: str) -> FrameSender | None:
        """A sender of raw frames on *device*, or None where raw sockets are unavailable."""
        ...


class KernelSockets:
    """:class:`DhcpSockets` over the kernel: :class:`BatchingUdpPort` on *reactor* (which
    must watch file descriptors, as every real Twisted reactor on Linux does) and
    :class:`RawUnicastSender`."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def listen(self, port: int, protocol: DhcpDatagramProtocol, host: str, *,
               device: str | None, reuse_address: bool) -> ListeningPort:
        """Bind a :class:`BatchingUdpPort` (privileged ports: call before dropping root)."""
        listening = BatchingUdpPort(port, protocol, host, reactor=self.reactor, device=device,
                                    reuse_address=reuse_address)
        listening.startListening()  # type: ignore[no-untyped-call]
        return listening

    def frame_sender(self, device: str) -> FrameSender | None:
        """:meth:`RawUnicastSender.open` (None without CAP_NET_RAW)."""
        return RawUnicastSender.open(device)


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
        #: Group commit of the lease journal around each batch (the full server only).
        self.journal: GroupCommit | None = None
        #: The shared lease table the batches' claims are committed to (the full server
        #: with ``dhcp.lease_store: postgresql`` only); replaces :attr:`journal`.
        self.claims: ClaimCommit | None = None
        #: Replies not sent because the lease table refused or could not confirm them
        #: (a second lost race; a lost database).
        self.refused = 0
        self.unconfirmed = 0
        #: Datagrams dropped as malformed / because of a bug (bounded counters).
        self.malformed = 0
        self.bugs = 0
        #: Handled datagrams by (received option 53 value, first reply's option 53 value),
        #: both raw octets (None: absent; no reply); :data:`BUG` as the second for a
        #: datagram a bug dropped.  Malformed ones are :attr:`malformed`.  Read at scrape
        #: time by :meth:`pxestack.metrics.Metrics.attach_dhcp_protocol`; bounded, because
        #: only a single-octet option 53 is used as a key (anything else counts as None).
        self.outcomes: dict[tuple[bytes | None, bytes | None], int] = {}
        self._address_text: BoundedMemo[int, tuple[IPv4Address, str]] = BoundedMemo(
            _ADDRESS_TEXT_ENTRIES
        )

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
        self.receive_batch(((datagram, addr),))

    def receive_batch(self, datagrams: Iterable[tuple[bytes, tuple[str, int]]]) -> None:
        """Handle datagrams that arrived together (one read event of a
        :class:`BatchingUdpPort`), with one group commit of the lease journal.

        A reply is sent as soon as it is ready unless a binding made in this batch is not
        durable yet (:attr:`GroupCommit.pending`); from then on replies wait, in order, for
        the one ``commit()`` at the end of the batch (an ACK only after its
        lease record is durable).  If the commit fails, the waiting replies are dropped.
        Never raises into the reactor.
        """
        if self.claims is not None:
            self._receive_claimed(list(datagrams), again=False)
            return
        journal = self.journal
        if journal is not None:
            journal.begin_batch()
        held: list[Outgoing] = []
        now = self.reactor.seconds()
        handle_one = self._handle_one
        send = self.send
        for datagram, addr in datagrams:
            replies = handle_one(datagram, addr, now)
            if not replies:
                continue
            # Nothing between one datagram's replies changes ``pending``: test it once.
            if held or (journal is not None and journal.pending):
                held += replies
            else:
                for reply in replies:
                    send(reply)
        if journal is not None:
            try:
                journal.commit()
            except OSError:
                self.bugs += 1
                self.log.failure(
                    "lease journal commit failed; {count} replies not sent", count=len(held)
                )
                held = []
        self.batch_done()
        for reply in held:
            self.send(reply)

    def _receive_claimed(self, datagrams: list[tuple[bytes, tuple[str, int]]], *,
                         again: bool) -> None:
        """:meth:`receive_batch` with a shared lease table (:attr:`claims`).

        A datagram that claimed nothing (an INFORM, a NAK, a request for another server)
        is answered at once.  The others wait, in order, for the batch's one commit, which
        runs off the reactor thread: then their replies are sent, except those of datagrams
        whose claim the table refused (another server took the address first) or whose
        client the table knew better; those are handled once more with what the table
        answered (another offer, a NAK, the ACK of a lease another server granted).  A
        datagram refused again gets no reply (the client retransmits).  If the commit
        fails, no reply of the waiting datagrams is sent (no ACK the table did not store).
        """
        claims = self.claims
        assert claims is not None
        claims.begin_batch()
        now = self.reactor.seconds()
        held: dict[int, list[Outgoing]] = {}
        handle_one = self._handle_one
        send = self.send
        for index, (datagram, addr) in enumerate(datagrams):
            claims.start_datagram(index)
            replies = handle_one(datagram, addr, now)
            if claims.recorded(index):
                held[index] = replies
            else:
                for reply in replies:
                    send(reply)
        try:
            pending = claims.commit()
        except Exception:
            self.bugs += 1
            self.log.failure("lease claim commit failed (a bug in pxestack); "
                             "{count} replies not sent", count=len(held))
            pending, held = None, {}
        self.batch_done()
        if pending is None:
            for replies in held.values():
                for reply in replies:
                    send(reply)
            return
        pending.addCallbacks(self._claims_settled, self._claims_failed,
                             callbackArgs=(datagrams, held, again), errbackArgs=(held,))
        pending.addErrback(self._claims_bug)

    def _claims_settled(self, settle: Settle, datagrams: list[tuple[bytes, tuple[str, int]]],
                        held: dict[int, list[Outgoing]], again: bool) -> None:
        replied = {index for index, replies in held.items() if replies}
        redo = settle(replied, self.reactor.seconds())
        for index, replies in held.items():
            if index in redo:
                continue
            for reply in replies:
                self.send(reply)
        self.batch_done()
        if not redo:
            return
        if again:
            self.refused += len(redo)
            self.log.debug("{count} DHCP requests lost a second race for an address; "
                           "no reply (the clients retransmit)", count=len(redo))
            return
        self._receive_claimed([datagrams[index] for index in sorted(redo)], again=True)

    def _claims_failed(self, failure: Any, held: dict[int, list[Outgoing]]) -> None:
        dropped = sum(len(replies) for replies in held.values())
        self.unconfirmed += dropped
        if getattr(failure.value, "database_down", False):
            # The lease store logs the loss once; each refused batch is a debug line.
            self.log.debug("lease table did not confirm a batch ({error}); {count} replies "
                           "not sent", error=str(failure.value), count=dropped)
            return
        self.log.failure("lease table refused a batch; {count} replies not sent",
                         failure=failure, count=dropped)

    def _claims_bug(self, failure: Any) -> None:
        self.bugs += 1
        self.log.failure("handling a lease table answer failed (a bug in pxestack)",
                         failure=failure)

    def batch_done(self) -> None:
        """Called after every batch, before held replies go out (subclasses: timers)."""

    def _handle_one(self, datagram: bytes, addr: tuple[str, int], now: float) -> list[Outgoing]:
        """Decode and dispatch one datagram; hostile input and bugs are logged, not raised.

        Counts the outcome in :attr:`outcomes` (or :attr:`malformed`, :attr:`bugs`)."""
        received: bytes | None = None
        try:
            message = decode_dhcp(datagram)
            received = message.options.by_code.get(c.OPT_MESSAGE_TYPE)
            if received is not None and len(received) != 1:
                received = None  # the key stays one of 257 values (bounded memory)
            replies = self.dispatch(message, addr, now)
            key = (received, replies[0].reply_type if replies else None)
            outcomes = self.outcomes
            outcomes[key] = outcomes.get(key, 0) + 1
            return replies
        except MalformedPacket as exc:
            self.malformed += 1
            self.log.debug(
                "dropped malformed DHCP datagram from {peer} on {iface}: {error}",
                peer=addr[0], port=addr[1], iface=self.interface.name, error=str(exc),
                size=len(datagram),
            )
        except Exception:
            self.bugs += 1
            bug_key = (received, BUG)
            self.outcomes[bug_key] = self.outcomes.get(bug_key, 0) + 1
            self.log.failure(
                "DHCP datagram from {peer} on {iface} hit a bug in pxestack; dropped",
                peer=addr[0], iface=self.interface.name, size=len(datagram),
            )
        return []

    def send(self, reply: Outgoing) -> None:
        """Encode *reply* and carry out its destination (RFC 2131 §4.1, decided by the core)."""
        try:
            payload = reply.encoded()
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
        if kind is _LINK_UNICAST:
            if self.frames is not None and self.frames.send(
                payload, self.interface.address, destination.address, destination.chaddr, port
            ):
                return
            # No raw socket: broadcast, which iPXE and every OS client accept.
            target = (self.broadcast_address, port)
        elif kind is _BROADCAST_KIND:
            target = (self.broadcast_address, port)
        else:
            target = (self._text_address(destination.address), port)
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

    def _text_address(self, address: IPv4Address) -> str:
        """``str(address)``, memoised (relays and renewing clients repeat; bounded in size).

        Keyed by ``id(address)`` (a C call; ``int()`` and ``IPv4Address`` hashing run
        Python code): the decoder shares one object per address.  The entry keeps the
        object, so its ``id`` cannot be reused while the entry lives."""
        entry = self._address_text.entries.get(id(address))
        if entry is not None and entry[0] is address:
            return entry[1]
        return self._address_text.put(id(address), (address, str(address)))[1]


class DhcpServerProtocol(DhcpDatagramProtocol):
    """The full server on one interface.  Several interfaces share one core (one lease DB).

    :param timer: re-armed after every batch so offer holds and leases expire on time.
    :param journal: the lease journal, committed once per batch (group commit); None when
        the lease store has no journal or syncs each record itself.
    :param claims: the shared lease table (``dhcp.lease_store: postgresql``), committed once
        per batch off the reactor thread; used instead of *journal*.
    """

    def __init__(
        self,
        core: DhcpServerCore,
        interface: InterfaceInfo,
        *,
        timer: DeadlineTimer | None = None,
        journal: GroupCommit | None = None,
        claims: ClaimCommit | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(interface, **kwargs)
        self.core = core
        self.timer = timer
        self.journal = journal
        self.claims = claims

    def dispatch(self, message: DhcpMessage, source: tuple[str, int], now: float) -> list[Outgoing]:
        """Full-server handling of one message."""
        return self.core.handle(message, self.interface, now)

    def batch_done(self) -> None:
        """Re-arm the expiry timer once per batch (not per message)."""
        if self.timer is not None:
            self.timer.rearm()


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



__all__ = [
    "BUG",
    "DEFAULT_MAX_BATCH",
    "BatchedDatagrams",
    "BatchingUdpPort",
    "ClaimCommit",
    "DatagramSocket",
    "DeadlineTimer",
    "DhcpDatagramProtocol",
    "DhcpServerProtocol",
    "DhcpSockets",
    "FrameSender",
    "GroupCommit",
    "KernelSockets",
    "ListeningPort",
    "ProxyDhcpProtocol",
    "RawUnicastSender",
    "Settle",
    "ipv4_udp_packet",
]
