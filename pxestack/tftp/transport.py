"""The TFTP transfer transport: the sockets a transfer's datagrams move through.

:class:`~pxestack.tftp.protocol.TftpServer` decides which requests become transfers and
logs what happens to them; this module moves each transfer's datagrams.  The server talks
to it through two small interfaces:

* :class:`TransferTransport` (what the server asks of a transport): ``start`` a transfer
  for an accepted session and client, ``stop`` when the server stops, and whether
  transfers are ``connected``.  :class:`SocketTransport` is the production one; the
  server receives a :data:`TransportFactory` (``TftpServer(transport=...)``), so tests
  inject the same class with fake sockets and a fake poller and run the production path.
* :class:`TransferOwner` (what a transport reports back): a malformed datagram, a datagram
  from a foreign TID (RFC 1350 §4), a finished transfer.  The server implements it.

The per-block path is kept short because lock-step TFTP is round-trip bound (about 15 µs
per round trip when client and server share a CPU; docs/reference/benchmark-method.md):

* a transfer socket is registered as a plain ``IReadDescriptor`` (:class:`TransferPort`),
  not a ``DatagramProtocol`` port: its ``doRead`` drains the socket with non-blocking
  receives and answers each ACK at once, skipping ``udp.Port.write``'s per-datagram
  address validation;
* the transfer socket is connected (``connect()``) to the client
  (:func:`open_connected_transfer_sockets`), so blocks go out with ``send`` and ACKs come
  in with ``recv``: no address to parse or build per datagram, no route lookup per send.
  Datagrams from other TIDs then reach an unconnected sibling socket on the same port
  (``SO_REUSEPORT``: the kernel prefers the connected socket for the client's datagrams
  and never picks it for anyone else's), which answers them with ERROR 5
  (:class:`ForeignTidPort`);
* DATA datagrams are built in reused buffers by the session (no per-block allocation of
  the payload);
* the retransmission timer is re-armed lazily: it is moved only when the session's deadline
  comes *earlier* than the armed one.  Each ACK pushes the deadline later, so a healthy
  transfer costs one timer event per RTO, not one heap operation per block;
* all transfer sockets sit behind one epoll of the transport's own
  (:class:`TransferMultiplexer`), so the reactor dispatches once per batch of ready
  transfers, not once per datagram;
* a transfer running alone waits for its client itself (a bounded blocking ``recv`` in
  lock-step, a ``poll`` with the listeners when windowed) instead of returning to the
  reactor between blocks; the reactor is held for at most :data:`INLINE_BUDGET`;
* a window of DATA leaves in one ``sendmsg`` with Linux UDP segmentation offload.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pxestack._types import Address
from pxestack.errors import MalformedPacket
from pxestack.tftp.session import Datagram, ReadSession, WriteSession

#: Largest datagram read from a socket: the largest DATA (65464 + 4) with room to spare.
MAX_DATAGRAM = 65536 + 64
#: Receive buffer of a read transfer: ACKs are 4 octets, ERRORs carry a short message.
READ_RECEIVE_SIZE = 2048
#: Datagrams one ``doRead`` handles before returning to the reactor.
MAX_DATAGRAMS_PER_READ = 1024
#: ``setsockopt``/cmsg level and type of Linux UDP segmentation offload (linux/udp.h).
UDP_SEGMENT: int = getattr(socket, "UDP_SEGMENT", 103)
#: A segmented send stays under the 65507-octet UDP payload limit ...
GSO_MAX_BYTES = 65000
#: ... and under the kernel's UDP_MAX_SEGMENTS.
GSO_MAX_SEGMENTS = 64
#: The cmsg data of ``UDP_SEGMENT``: the segment size, a native ``u16``.
_GSO_SIZE = struct.Struct("=H")
#: Errors meaning "this kernel, device or path cannot segment": EMSGSIZE (segment larger
#: than the device MTU, e.g. blksize 8192 on Ethernet), EINVAL (likewise on older
#: kernels), EIO (no checksum offload), ENOPROTOOPT/EOPNOTSUPP (kernel before 4.18).
_GSO_UNSUPPORTED = frozenset(
    (errno.EMSGSIZE, errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
)
#: Ready transfer sockets one multiplexer ``doRead`` serves before returning.
MAX_READY_PER_POLL = 256
#: How long a lone transfer waits in its own ``poll`` for the client's next datagram
#: before handing control back to the reactor (milliseconds; ``poll``'s resolution).
INLINE_WAIT_MS = 1
#: Longest a lone transfer keeps the reactor (seconds), so timers of other services in
#: the same process (DHCP, HTTP) run late by no more than this.
INLINE_BUDGET = 0.02
#: Datagrams one ``doRead`` of a foreign-TID socket answers before returning: strangers
#: get less of the reactor than the transfer's own client.
MAX_FOREIGN_PER_READ = 64
#: Descriptors a connected transfer holds: its socket, the foreign-TID sibling and the
#: file it sends (an unconnected transfer holds one less).
DESCRIPTORS_PER_CONNECTED_TRANSFER = 3


class TransferSocket(Protocol):
    """What a transfer needs of its UDP socket (a ``socket.socket`` fits; tests fake it)."""

    def fileno(self) -> int:
        """The descriptor the reactor watches."""

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        """Receive one datagram; raise ``BlockingIOError`` when none is waiting."""

    def sendto(self, data: Datagram, address: Address) -> int:
        """Send one datagram."""

    def getsockname(self) -> Any:
        """The local (host, port)."""

    def close(self) -> None:
        """Release the socket."""


def _tune_transfer_socket(sock: socket.socket) -> None:
    """The buffer and time-out every transfer socket gets before it is bound."""
    # Windowed transfers at 64 KiB blocks burst more than the default buffer holds.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    # Bounds the blocking receive of a lone lock-step transfer (TransferPort._lockstep);
    # the socket is otherwise non-blocking, where this has no effect.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("@ll", 0, INLINE_WAIT_MS * 1000))


def open_transfer_socket(host: str) -> TransferSocket:
    """A non-blocking UDP socket on an ephemeral port of *host* (a new TID, RFC 1350 §4)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _tune_transfer_socket(sock)
        sock.bind((host, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def open_connected_transfer_sockets(host: str,
                                    client: Address) -> tuple[socket.socket, socket.socket]:
    """A transfer socket connected to *client*, and its foreign-TID sibling.

    Both are non-blocking, bound with ``SO_REUSEPORT`` to the same ephemeral port of
    *host* (one TID).  Linux delivers the client's datagrams to the connected socket (an
    exact four-tuple match scores higher) and everyone else's to the unconnected sibling
    (``SO_REUSEPORT`` selection skips connected sockets), so RFC 1350 §4's ERROR 5 for a
    foreign TID still works.  ``SO_REUSEPORT`` lets the kernel give two transfers of the
    same user one port number; that is harmless, since each connected socket only sees
    its own client and every sibling answers strangers alike.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sibling: socket.socket | None = None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _tune_transfer_socket(sock)
        sock.bind((host, 0))
        sock.connect(client)
        sock.setblocking(False)
        # Whatever arrived between bind and connect came from a stranger: the client
        # cannot know the port yet.  After connect only the client's datagrams arrive.
        with contextlib.suppress(OSError):
            for _ in range(MAX_FOREIGN_PER_READ):
                sock.recv(1)
        sibling = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sibling.bind((host, sock.getsockname()[1]))
        sibling.setblocking(False)
    except BaseException:
        sock.close()
        if sibling is not None:
            sibling.close()
        raise
    return sock, sibling


Session = ReadSession | WriteSession


class TransferOwner(Protocol):
    """What a transport reports to, and reads from, the server that owns the transfers."""

    log: Logger

    @property
    def reactor(self) -> Any:
        """The reactor (``IReactorTime`` and ``IReactorFDSet``) transfers run on."""

    @property
    def transfers(self) -> Mapping[Address, Any]:
        """The running transfers by client (a lone one may wait for its client inline)."""

    def listener_descriptors(self) -> list[int]:
        """Descriptors of the listening sockets; raises if a listener has none (fakes)."""

    def malformed(self, client: Address, error: MalformedPacket) -> None:
        """A transfer's client sent a datagram that does not decode; it was dropped."""

    def foreign_tid(self, data: bytes, address: Address,
                    send: Callable[[Datagram, Address], Any]) -> None:
        """A datagram from another TID reached a transfer's port; *send* answers it."""

    def transfer_finished(self, transfer: Transfer) -> None:
        """*transfer* has ended and released its sockets (called once per transfer)."""


class Poller(Protocol):
    """The readiness poller of :class:`TransferMultiplexer` (``select.epoll`` fits)."""

    def register(self, fd: int, eventmask: int = ...) -> None:
        """Watch *fd*; raises ``OSError``/``ValueError`` for a descriptor it cannot watch."""

    def unregister(self, fd: int) -> None:
        """Stop watching *fd*."""

    def poll(self, timeout: float = ..., maxevents: int = ...) -> list[tuple[int, int]]:
        """The ready descriptors and their events."""

    def fileno(self) -> int:
        """The descriptor the reactor watches."""

    def close(self) -> None:
        """Release the poller."""


class Transfer:
    """One transfer: a session, its client, a way to send, and one lazily armed timer."""

    def __init__(self, owner: TransferOwner, session: Session, client: Address,
                 send: Callable[[Datagram, Address], Any]) -> None:
        self.owner = owner
        self.session = session
        self.client = client
        self._send = send
        self._timer: IDelayedCall | None = None
        self._timer_at = 0.0
        self.closed = False

    def send_all(self, datagrams: list[Datagram]) -> None:
        """Send *datagrams* to the client in order, one call each."""
        send = self._send
        client = self.client
        for datagram in datagrams:
            try:
                send(datagram, client)
            except OSError as exc:
                # A full send buffer or an ICMP error: the datagram counts as lost and
                # the retransmission timer recovers.
                self.owner.log.debug("send to {client} failed: {error}", client=client,
                                      error=str(exc))

    def flush(self, now: float) -> None:
        """Send what the session queued, then finish or re-arm the timer."""
        self.send_all(self.session.datagrams_to_send(now))
        if self.session.finished:
            self.close()
        else:
            self.arm(now)

    def datagram(self, data: bytes, now: float) -> None:
        """A datagram from the client's TID."""
        try:
            self.session.receive(data, now)
        except MalformedPacket as exc:
            self.owner.malformed(self.client, exc)
            return
        self.flush(now)

    def arm(self, now: float) -> None:
        """Make sure a timer fires no later than the session's next deadline."""
        deadline = self.session.next_deadline()
        if deadline is None:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return  # fires early; on_timer re-arms (see module doc)
            timer.cancel()
        self._timer_at = deadline
        self._timer = self.owner.reactor.callLater(max(deadline - now, 0.0), self.on_timer)

    def on_timer(self) -> None:
        """The timer fired: let the session handle time passing."""
        self._timer = None
        if self.closed:
            return
        now = self.owner.reactor.seconds()
        self.session.on_deadline(now)
        self.flush(now)

    def cancel(self, now: float) -> None:
        """Stop the transfer (server shutdown)."""
        if not self.closed:
            self.session.cancel(now)
            self.flush(now)

    def evict(self, now: float, reason: str) -> None:
        """End the transfer without an answer, to give its slot to another request."""
        if not self.closed:
            self.session.evict(now, reason)
            self.close()

    def close(self) -> None:
        """Release everything and report the outcome to the server (once)."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.owner.transfer_finished(self)


@implementer(IReadDescriptor)
class TransferPort(Transfer):
    """A transfer on its own ephemeral socket, read by the reactor directly.

    With a *sibling* (see :func:`open_connected_transfer_sockets`), *sock* is connected to
    the client: datagrams go out with ``send`` and come in with ``recv``, and the sibling
    (:attr:`foreign`) answers other TIDs.
    """

    def __init__(self, transport: SocketTransport, session: Session, client: Address,
                 sock: TransferSocket, sibling: socket.socket | None = None) -> None:
        #: *sock* is connected to the client: no addresses on the per-block path.
        self.connected = sibling is not None
        super().__init__(transport.owner, session, client,
                         self._send_connected if self.connected else sock.sendto)
        self.sock = sock
        #: The transport that opened the socket (multiplexer, segmentation, lone-transfer
        #: polling).
        self.transport = transport
        #: The foreign-TID sibling of a connected socket, closed with the transfer.
        self.foreign = ForeignTidPort(self, sibling) if sibling is not None else None
        #: The session's lock-step fast path (``ReadSession.next_after_ack``), if any.
        self.fast: Callable[[bytes, float], Datagram | None] | None = getattr(
            session, "next_after_ack", None)
        #: Watched through the transport's ``TransferMultiplexer`` (else by the reactor).
        self.multiplexed = False
        #: The transfer's ``select.poll`` while it runs alone (``SocketTransport.inline_poller``).
        self.poller: select.poll | None = None
        #: Lone lock-step transfers wait with a blocking receive (see :meth:`_lockstep`);
        #: needs a real socket with ``SO_RCVTIMEO``, as ``open_transfer_socket`` sets.
        self.lockstep_inline = (session.windowsize == 1
                                and callable(getattr(sock, "setblocking", None)))
        #: Send windows with UDP segmentation offload (see :meth:`send_all`).
        self.segmentation = transport.segmentation and callable(getattr(sock, "sendmsg", None))
        # A read transfer only receives ACKs and ERRORs: a small buffer avoids allocating
        # 64 KiB per datagram.  A write transfer receives whole DATA blocks (+1 octet so an
        # oversized block is seen as such, not silently truncated).
        self.receive_size = (
            READ_RECEIVE_SIZE if isinstance(session, ReadSession)
            else min(session.blksize + 5, MAX_DATAGRAM)
        )

    def _send_connected(self, datagram: Datagram, address: Address) -> int:
        """``sendto``'s signature on the connected socket (*address* is the client's)."""
        return self.sock.send(datagram)  # type: ignore[attr-defined, no-any-return]

    def send_all(self, datagrams: list[Datagram]) -> None:
        """Send *datagrams* in order; a run of equal-sized ones goes out in one call.

        A window of DATA is a run of full blocks, the last one possibly shorter.  With
        Linux UDP segmentation offload (``UDP_SEGMENT``, Linux 4.18) the run is passed to
        one ``sendmsg`` as a list of buffers and the kernel cuts it into one datagram per
        block, so a window costs one system call instead of one per block.  When the
        kernel refuses (a block larger than the path MTU, no checksum offload on the
        device, an old kernel), segmentation is switched off for this transfer and the
        run is sent a datagram at a time.
        """
        if not self.segmentation:
            super().send_all(datagrams)
            return
        sendmsg = self.sock.sendmsg  # type: ignore[attr-defined]
        client = self.client
        connected = self.connected
        count = len(datagrams)
        start = 0
        while start < count:
            size = len(datagrams[start])
            limit = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
            end = start + 1
            while end < count and end - start < limit and len(datagrams[end]) == size:
                end += 1
            if end < count and end - start < limit and len(datagrams[end]) < size:
                end += 1  # the transfer's last, shorter block closes the run
            if end - start == 1:
                super().send_all(datagrams[start:end])
                start = end
                continue
            segment = [(socket.SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))]
            try:
                if connected:
                    sendmsg(datagrams[start:end], segment)
                else:
                    sendmsg(datagrams[start:end], segment, 0, client)
            except OSError as exc:
                if exc.errno in _GSO_UNSUPPORTED:
                    self.segmentation = False
                    self.owner.log.debug("UDP segmentation off for {client}: {error}",
                                          client=client, error=str(exc))
                    super().send_all(datagrams[start:])
                    return
                self.owner.log.debug("send to {client} failed: {error}", client=client,
                                      error=str(exc))
            start = end

    def fileno(self) -> int:
        """The socket's descriptor (IReadDescriptor)."""
        return self.sock.fileno()

    def logPrefix(self) -> str:
        """Prefix for Twisted's own log lines."""
        return "TftpTransfer"

    def doRead(self) -> None:
        """Drain the socket: every datagram waiting is handled before returning.

        When this is the server's only transfer, the answer to a datagram is followed by a
        short ``poll`` on this socket and the listening sockets instead of a return to the
        reactor (:meth:`SocketTransport.inline_poller`): the client's next ACK is handled
        without the reactor's dispatch and without a failing ``recvfrom``.  Any datagram
        on a listener, a quiet millisecond or :data:`INLINE_BUDGET` seconds hand control
        back to the reactor.  That ``poll`` blocks the reactor on purpose, for the reason
        and within the bounds given in :meth:`_lockstep`: 1 ms per wait, 20 ms in all, and
        only while no other transfer runs.
        """
        sock = self.sock
        client = self.client
        session = self.session
        connected = self.connected
        # Connected: ``recv``/``send`` without addresses (a fake socket may lack them).
        recv = sock.recv if connected else None  # type: ignore[attr-defined]
        send_connected = sock.send if connected else None  # type: ignore[attr-defined]
        send = sock.sendto
        owner = self.owner
        seconds = owner.reactor.seconds
        fast = self.fast
        now = seconds()
        poll = None
        transport = self.transport
        if transport.inline and len(owner.transfers) == 1:
            poll = transport.inline_poller(self)
            own = [(self.fileno(), select.POLLIN)]
            inline_until = now + INLINE_BUDGET
        # Bounded, so a flood on one transfer socket cannot starve the reactor; the
        # reactor calls again while data is waiting (level-triggered).
        for _ in range(MAX_DATAGRAMS_PER_READ):
            if self.closed:
                return
            try:
                if recv is not None:
                    data = recv(self.receive_size)
                else:
                    data, address = sock.recvfrom(self.receive_size)
                    if address != client:
                        self.owner.foreign_tid(data, address, send)
                        continue
            except BlockingIOError:
                break
            except OSError as exc:
                # ECONNREFUSED: an ICMP port unreachable (reported on connected sockets);
                # the session's retransmission and retry limit deal with a gone client.
                if exc.errno in (errno.ECONNREFUSED, errno.EINTR):
                    continue
                self.owner.log.warn("transfer socket error: {error}", error=str(exc))
                break
            now = seconds()
            if fast is not None:
                datagram = fast(data, now)
                if datagram is not None:
                    try:
                        if send_connected is not None:
                            send_connected(datagram)
                        else:
                            send(datagram, client)
                    except OSError as exc:
                        self.owner.log.debug("send to {client} failed: {error}",
                                              client=client, error=str(exc))
                    if poll is not None:
                        if self.lockstep_inline:
                            now = self._lockstep(fast, inline_until)
                            if self.closed:
                                return
                            break
                        if now > inline_until or poll(INLINE_WAIT_MS) != own:
                            break
                        continue
                    # Lock-step: the client answers this DATA, so its next ACK cannot be
                    # waiting yet; asking would cost a failing recvfrom.  A datagram that
                    # does wait makes the descriptor readable again (level-triggered).
                    break
            try:
                session.receive(data, now)
            except MalformedPacket as exc:
                self.owner.malformed(client, exc)
                continue
            outbox = session.datagrams_to_send(now)
            if len(outbox) == 1:
                try:
                    if send_connected is not None:
                        send_connected(outbox[0])
                    else:
                        send(outbox[0], client)
                except OSError as exc:
                    self.owner.log.debug("send to {client} failed: {error}",
                                          client=client, error=str(exc))
            elif outbox:
                self.send_all(outbox)
            if session.finished:
                self.close()
                return
            if poll is not None and (now > inline_until or poll(INLINE_WAIT_MS) != own):
                break
        if not self.closed:
            self.arm(now)

    def _lockstep(self, fast: Callable[[bytes, float], Datagram | None],
                  until: float) -> float:
        """Serve lock-step ACKs with blocking receives until *until*; returns the time.

        The tightest loop this adapter has, for a transfer running alone at windowsize 1:
        one blocking receive (bounded by ``SO_RCVTIMEO``, :data:`INLINE_WAIT_MS`) and one
        send per block (``recv``/``send`` when connected), no ``poll``.  Anything but the
        next in-order ACK from the client (a foreign TID, an ERROR, a duplicate, the end
        of the read-ahead) ends the loop after handing that datagram to the general path;
        so do a quiet millisecond and *until*.  The listener is not watched meanwhile, so a
        new request waits at most :data:`INLINE_BUDGET`.

        This is the one blocking receive inside the reactor, kept on purpose: it runs only
        while this transfer is the server's only one, each receive is bounded by
        ``SO_RCVTIMEO`` (:data:`INLINE_WAIT_MS`) and the loop by *until*
        (:data:`INLINE_BUDGET`), so timers of other services in the process run at most
        that late, while the lone lock-step transfer, round-trip bound, skips the reactor's
        dispatch between blocks.  ``TftpServer(inline=False)`` turns it off.
        """
        sock = self.sock
        recvfrom = sock.recvfrom
        send = sock.sendto
        connected = self.connected
        recv = sock.recv if connected else None  # type: ignore[attr-defined]
        send_connected = sock.send if connected else None  # type: ignore[attr-defined]
        client = self.client
        size = self.receive_size
        seconds: Callable[[], float] = self.owner.reactor.seconds
        now = seconds()
        sock.setblocking(True)  # type: ignore[attr-defined]
        try:
            while now < until:
                try:
                    if recv is not None:
                        data = recv(size)
                        address = client
                    else:
                        data, address = recvfrom(size)
                except OSError:
                    return now  # time-out (EAGAIN) or an ICMP error: the reactor's turn
                now = seconds()
                datagram = fast(data, now) if address == client else None
                if datagram is None:
                    sock.setblocking(False)  # type: ignore[attr-defined]
                    self._general(data, address, now)
                    return now
                try:
                    if send_connected is not None:
                        send_connected(datagram)
                    else:
                        send(datagram, client)
                except OSError as exc:
                    self.owner.log.debug("send to {client} failed: {error}",
                                          client=client, error=str(exc))
            return now
        finally:
            if not self.closed:
                sock.setblocking(False)  # type: ignore[attr-defined]

    def _general(self, data: bytes, address: Address, now: float) -> None:
        """Handle one datagram the lock-step loop does not: the general path of doRead."""
        if address != self.client:
            self.owner.foreign_tid(data, address, self.sock.sendto)
            return
        session = self.session
        try:
            session.receive(data, now)
        except MalformedPacket as exc:
            self.owner.malformed(self.client, exc)
            return
        self.send_all(session.datagrams_to_send(now))
        if session.finished:
            self.close()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the descriptor (shutdown): end the transfer."""
        if not self.closed:
            self.session.cancel(self.owner.reactor.seconds())
            self.close()

    def close(self) -> None:
        """Unregister and close the socket (and the sibling), then report the outcome."""
        if self.closed:
            return
        multiplexer = self.transport.multiplexer
        if self.multiplexed and multiplexer is not None:
            multiplexer.remove(self)
        else:
            self.owner.reactor.removeReader(self)
        if self.foreign is not None:
            self.foreign.close()
        super().close()
        self.sock.close()


@implementer(IReadDescriptor)
class ForeignTidPort:
    """The unconnected sibling of a connected transfer socket: datagrams of other TIDs.

    Bound to the transfer's port, it receives what the connected socket does not (RFC
    1350 §4): each datagram gets ERROR 5 from the transfer's port through
    :meth:`TransferOwner.foreign_tid`; the transfer goes on.  Closed with the transfer.
    """

    def __init__(self, transfer: TransferPort, sock: socket.socket) -> None:
        self.transfer = transfer
        self.sock = sock
        #: Watched through the transport's ``TransferMultiplexer`` (else by the reactor).
        self.multiplexed = False
        #: The socket is closed (with the transfer, or after a reactor error).
        self.closed = False

    @property
    def client(self) -> Address:
        """The transfer's client (for log lines)."""
        return self.transfer.client

    def fileno(self) -> int:
        """The sibling socket's descriptor (IReadDescriptor)."""
        return self.sock.fileno()

    def logPrefix(self) -> str:
        """Prefix for Twisted's own log lines."""
        return "TftpForeignTid"

    def doRead(self) -> None:
        """Answer every waiting datagram (a bounded number) with ERROR 5."""
        sock = self.sock
        transfer = self.transfer
        owner = transfer.owner
        for _ in range(MAX_FOREIGN_PER_READ):
            if self.closed:
                return
            try:
                data, address = sock.recvfrom(READ_RECEIVE_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EINTR):
                    continue
                owner.log.warn("foreign-TID socket error: {error}", error=str(exc))
                return
            if address == transfer.client:
                # Not expected (the connected socket gets the client's datagrams), but
                # should the kernel route one here, the transfer still gets it.
                if not transfer.closed:
                    transfer._general(data, address, owner.reactor.seconds())
                continue
            owner.foreign_tid(data, address, sock.sendto)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the descriptor: stop answering strangers (the transfer goes on)."""
        self.close()

    def close(self) -> None:
        """Unregister and close the socket (once)."""
        if self.closed:
            return
        self.closed = True
        multiplexer = self.transfer.transport.multiplexer
        if self.multiplexed and multiplexer is not None:
            multiplexer.remove(self)
        else:
            self.transfer.owner.reactor.removeReader(self)
        self.sock.close()


@implementer(IReadDescriptor)
class TransferMultiplexer:
    """All transfer sockets of a transport behind one ``epoll`` the reactor watches.

    With many concurrent transfers, the reactor's own dispatch (an ``epoll_wait``, then
    a logging context and method lookups per ready descriptor) is a large share of each
    block's cost.  The reactor watches only this object's epoll descriptor; one ``doRead``
    collects every ready transfer socket with a single ``epoll.poll`` and calls each
    transfer's ``doRead`` directly.
    """

    def __init__(self, owner: TransferOwner, epoll: Poller) -> None:
        self.owner = owner
        #: The readiness poller (``select.epoll()``; tests pass a fake).
        self.epoll = epoll
        self.ports: dict[int, TransferPort | ForeignTidPort] = {}
        self.watched = False

    def add(self, port: TransferPort | ForeignTidPort) -> None:
        """Watch *port*'s socket; raises ``OSError``/``ValueError`` if it has no real fd."""
        descriptor = port.fileno()
        self.epoll.register(descriptor, select.EPOLLIN)
        self.ports[descriptor] = port
        if not self.watched:
            self.owner.reactor.addReader(self)
            self.watched = True

    def remove(self, port: TransferPort | ForeignTidPort) -> None:
        """Stop watching *port* (before its socket closes)."""
        descriptor = port.fileno()
        if self.ports.get(descriptor) is port:
            del self.ports[descriptor]
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(descriptor)

    def fileno(self) -> int:
        """The epoll descriptor (IReadDescriptor)."""
        return self.epoll.fileno()

    def logPrefix(self) -> str:
        """Prefix for Twisted's own log lines."""
        return "TftpTransfers"

    def doRead(self) -> None:
        """Serve every transfer socket that is ready."""
        ports = self.ports
        for descriptor, _ in self.epoll.poll(0, MAX_READY_PER_POLL):
            port = ports.get(descriptor)
            if port is None or port.closed:
                continue
            try:
                port.doRead()
            except Exception:
                # A bug in one transfer must not take the others (or the reactor) down.
                self.owner.log.failure("unexpected error in a transfer to {client}",
                                       client=port.client)
                port.connectionLost(Failure())  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the epoll descriptor (shutdown): end every transfer."""
        self.watched = False
        for port in list(self.ports.values()):
            port.connectionLost(reason)

    def close(self) -> None:
        """Stop being watched and close the epoll descriptor."""
        if self.watched:
            self.owner.reactor.removeReader(self)
            self.watched = False
        self.epoll.close()


class TransferTransport(Protocol):
    """What :class:`~pxestack.tftp.protocol.TftpServer` asks of a transfer transport."""

    #: Transfers get a socket connected to their client (and a foreign-TID sibling).
    #: The service switches it off when the open-file limit cannot hold the pairs.
    connected: bool

    def start(self, session: Session, client: Address) -> Transfer:
        """Open the transfer's socket and watch it; raises ``OSError`` if none opens."""

    def stop(self) -> None:
        """The server stopped and its transfers ended: release what the transport holds."""


#: Builds the transport of a server: ``TftpServer(transport=factory)`` calls it once.
TransportFactory = Callable[[TransferOwner], TransferTransport]
#: Opens the socket pair of a connected transfer: (connected socket, foreign-TID sibling).
ConnectedOpener = Callable[[str, Address], "tuple[TransferSocket, Any]"]


class SocketTransport:
    """The production transport: one UDP socket (pair) per transfer on an ephemeral port.

    :param owner: the server the transfers report to.
    :param host: local address the per-transfer sockets bind to.
    :param open_socket: opens an unconnected transfer socket (``open_transfer_socket``).
    :param open_connected: opens a connected socket and its foreign-TID sibling
        (``open_connected_transfer_sockets``); ``None`` serves every transfer unconnected.
    :param epoll: makes the multiplexer's poller (``select.epoll``).
    :param inline: let a transfer that is the only one running wait for its client's next
        datagram itself (see :meth:`inline_poller`).
    :param segmentation: send a window's blocks in one ``sendmsg`` with Linux UDP
        segmentation offload where the kernel allows (``TransferPort.send_all``).
    :param multiplex: watch all transfer sockets through one poller of the transport's
        own (:class:`TransferMultiplexer`) rather than one reactor reader each.  Connected
        sockets need it: the reactor would take a connected socket's ICMP errors for a
        lost connection.
    """

    def __init__(
        self,
        owner: TransferOwner,
        *,
        host: str = "0.0.0.0",
        open_socket: Callable[[str], TransferSocket] | None = None,
        open_connected: ConnectedOpener | None = None,
        epoll: Callable[[], Poller] | None = None,
        inline: bool = True,
        segmentation: bool = True,
        multiplex: bool = True,
    ) -> None:
        self.owner = owner
        self.host = host
        self.open_socket = open_socket or open_transfer_socket
        self.open_connected = open_connected
        self.epoll = epoll or getattr(select, "epoll", None)
        self.inline = inline
        self.segmentation = segmentation
        self.multiplex = multiplex and self.epoll is not None
        self.connected = open_connected is not None
        #: Watches every transfer socket once the first transfer starts (if *multiplex*).
        self.multiplexer: TransferMultiplexer | None = None
        #: A connected pair failed to open once already (log throttle).
        self._connected_failed = False

    def start(self, session: Session, client: Address) -> TransferPort:
        """Open the transfer's socket(s), watch them, and return the transfer."""
        sock, sibling = self._open(client)
        port = TransferPort(self, session, client, sock, sibling)
        self._watch(port)
        return port

    def _open(self, client: Address) -> tuple[TransferSocket, Any]:
        """A transfer socket for *client* and, when connected, its foreign-TID sibling.

        If the pair cannot be opened (out of descriptors, say), the transfer gets an
        unconnected socket; the first failure is logged at warning level.
        """
        if self.connected and self.multiplex and self.open_connected is not None:
            try:
                return self.open_connected(self.host, client)
            except OSError as exc:
                log = self.owner.log.debug if self._connected_failed else self.owner.log.warn
                self._connected_failed = True
                log("cannot open connected transfer sockets ({error}); using an "
                    "unconnected one", error=str(exc))
        return self.open_socket(self.host), None

    def _watch(self, port: TransferPort) -> None:
        """Have *port* (and its foreign-TID sibling) read: by the multiplexer or reactor."""
        foreign = port.foreign
        if self.multiplex and self.epoll is not None:
            try:
                if self.multiplexer is None:
                    self.multiplexer = TransferMultiplexer(self.owner, self.epoll())
                self.multiplexer.add(port)
                port.multiplexed = True
                if foreign is not None:
                    self.multiplexer.add(foreign)
                    foreign.multiplexed = True
                return
            except (OSError, ValueError):
                # A socket the poller cannot watch: the reactor reads it (and every
                # later transfer's socket) instead.
                self.multiplex = False
        if not port.multiplexed:
            self.owner.reactor.addReader(port)
        if foreign is not None:
            self.owner.reactor.addReader(foreign)

    def inline_poller(self, transfer: TransferPort) -> Callable[[int], list[Any]] | None:
        """A ``poll`` over *transfer*'s socket and the listeners, or ``None``.

        Lock-step TFTP is round-trip bound, and on a busy or single CPU most of a round
        trip is the reactor's own dispatch (``epoll_wait``, logging context, a failing
        ``recvfrom`` to learn the socket is drained).  While *transfer* is the only one
        running, nothing else of this server needs the reactor, so it may wait for its
        client in a direct ``poll``.  The listeners are in the poll set, so a new request
        ends the wait at once.  ``None`` (use the reactor) when other transfers run, when
        disabled, or when a listener has no real descriptor (tests' fakes).
        """
        if not self.inline or len(self.owner.transfers) != 1:
            return None
        poller = transfer.poller
        if poller is None:
            try:
                descriptors = self.owner.listener_descriptors()
                poller = select.poll()
                poller.register(transfer.fileno(), select.POLLIN)
                for descriptor in descriptors:
                    poller.register(descriptor, select.POLLIN)
            except (AttributeError, OSError, TypeError, ValueError):
                self.inline = False
                return None
            transfer.poller = poller
        return poller.poll

    def stop(self) -> None:
        """Close the multiplexer once no transfer socket is left in it."""
        multiplexer = self.multiplexer
        if multiplexer is not None and not multiplexer.ports:
            self.multiplexer = None
            multiplexer.close()


def socket_transport(**options: Any) -> TransportFactory:
    """A :data:`TransportFactory` making a :class:`SocketTransport` with *options*."""
    def factory(owner: TransferOwner) -> TransferTransport:
        return SocketTransport(owner, **options)

    return factory


__all__ = [
    "DESCRIPTORS_PER_CONNECTED_TRANSFER",
    "MAX_DATAGRAM",
    "ForeignTidPort",
    "Poller",
    "SocketTransport",
    "Transfer",
    "TransferMultiplexer",
    "TransferOwner",
    "TransferPort",
    "TransferSocket",
    "TransferTransport",
    "TransportFactory",
    "open_connected_transfer_sockets",
    "open_transfer_socket",
    "socket_transport",
]
