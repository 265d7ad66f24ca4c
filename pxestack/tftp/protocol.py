"""The Twisted adapter of the TFTP server: a listener on port 69, one socket per transfer.

:class:`TftpServer` is the controller (Twisted names' ``DNSServerFactory`` role).  Its
:class:`TftpListener` receives requests on the well-known port; each accepted read or write
gets a fresh UDP socket on an ephemeral port, its transfer ID (RFC 1350 §4), driven by a
:class:`~pxestack.tftp.session.ReadSession` or
:class:`~pxestack.tftp.session.WriteSession`.  The sessions decide everything; this module
only moves datagrams and keeps one timer per transfer.

The per-block path is kept short because lock-step TFTP is round-trip bound (about 15 µs
per round trip when client and server share a CPU; docs/reference/benchmark-method.md):

* a transfer socket is registered with the reactor as a plain ``IReadDescriptor``
  (:class:`_TransferPort`), not a ``DatagramProtocol`` port: its ``doRead`` drains the
  socket with non-blocking receives and answers each ACK at once, skipping
  ``udp.Port.write``'s per-datagram address validation;
* the transfer socket is connected (``connect()``) to the client
  (:func:`open_connected_transfer_sockets`), so blocks go out with ``send`` and ACKs come
  in with ``recv``: no address to parse or build per datagram, no route lookup per send.
  Datagrams from other TIDs then reach an unconnected sibling socket on the same port
  (``SO_REUSEPORT``: the kernel prefers the connected socket for the client's datagrams
  and never picks it for anyone else's), which answers them with ERROR 5
  (:class:`_ForeignTidPort`);
* DATA datagrams are built in reused buffers by the session (no per-block allocation of
  the payload);
* the retransmission timer is re-armed lazily: it is moved only when the session's deadline
  comes *earlier* than the armed one.  Each ACK pushes the deadline later, so a healthy
  transfer costs one timer event per RTO, not one heap operation per block;
* all transfer sockets sit behind one epoll of the server's own (``_TransferMultiplexer``),
  so the reactor dispatches once per batch of ready transfers, not once per datagram;
* a transfer running alone waits for its client itself (a bounded blocking ``recvfrom`` in
  lock-step, a ``poll`` with the listeners when windowed) instead of returning to the
  reactor between blocks;
* a window of DATA leaves in one ``sendmsg`` with Linux UDP segmentation offload.

Optional single-port mode (for firewalls and NAT that only pass port 69): every transfer
shares the listener's socket and datagrams are routed by the client's address.

Caps: a total number of transfers and a number per client IP.  Which request gets a slot,
and which running transfer gives its slot up when the server is full, is decided by the
sans-IO :class:`~pxestack.tftp.admission.Admission`; this module only applies the
decision (see that module for the rule).  Hostile or garbled datagrams are logged and
dropped; nothing a peer sends is raised into the reactor.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pxestack._types import Address
from pxestack.errors import MalformedPacket
from pxestack.tftp.admission import Admission, Decision
from pxestack.tftp.session import (
    NO_ANSWER,
    SUPPORTED_MODES,
    UNKNOWN_TID_DATAGRAM,
    Datagram,
    ReadSession,
    SessionSettings,
    WriteSession,
    error_datagram,
    refusal_for,
    wrap_for_mode,
)
from pxestack.tftp.source import FileSource, TftpClient, UploadTarget
from pxestack.tftp.stats import Outcome, ServerStats, SessionStats, StatsCallback
from pxestack.wire.tftp import (
    OP_ERROR,
    ErrorCode,
    ReadRequest,
    WriteRequest,
    decode_tftp,
)

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
#: The ERROR message of a request refused because its source holds too many transfers:
#: shorter than the shortest request, so the answer never amplifies.
BUSY_MESSAGE = "Busy"
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
    # Bounds the blocking receive of a lone lock-step transfer (_TransferPort._lockstep);
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


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Transfer:
    """One transfer: a session, its client, a way to send, and one lazily armed timer."""

    def __init__(self, server: TftpServer, session: Session, client: Address,
                 send: Callable[[Datagram, Address], Any]) -> None:
        self.server = server
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
                self.server.log.debug("send to {client} failed: {error}", client=client,
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
            self.server.stats.malformed += 1
            self.server.log.info("dropped malformed datagram from {client}: {error}",
                                 client=self.client, error=str(exc))
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
        self._timer = self.server.reactor.callLater(max(deadline - now, 0.0), self.on_timer)

    def on_timer(self) -> None:
        """The timer fired: let the session handle time passing."""
        self._timer = None
        if self.closed:
            return
        now = self.server.reactor.seconds()
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
        self.server._transfer_finished(self)


@implementer(IReadDescriptor)
class _TransferPort(_Transfer):
    """A transfer on its own ephemeral socket, read by the reactor directly.

    With a *sibling* (see :func:`open_connected_transfer_sockets`), *sock* is connected to
    the client: datagrams go out with ``send`` and come in with ``recv``, and the sibling
    (:attr:`foreign`) answers other TIDs.
    """

    def __init__(self, server: TftpServer, session: Session, client: Address,
                 sock: TransferSocket, sibling: socket.socket | None = None) -> None:
        #: *sock* is connected to the client: no addresses on the per-block path.
        self.connected = sibling is not None
        super().__init__(server, session, client,
                         self._send_connected if self.connected else sock.sendto)
        self.sock = sock
        #: The foreign-TID sibling of a connected socket, closed with the transfer.
        self.foreign = _ForeignTidPort(self, sibling) if sibling is not None else None
        #: The session's lock-step fast path (``ReadSession.next_after_ack``), if any.
        self.fast: Callable[[bytes, float], Datagram | None] | None = getattr(
            session, "next_after_ack", None)
        #: Watched through the server's ``_TransferMultiplexer`` (else by the reactor).
        self.multiplexed = False
        #: The transfer's ``select.poll`` while it runs alone (``TftpServer.inline_poller``).
        self.poller: select.poll | None = None
        #: Lone lock-step transfers wait with a blocking receive (see :meth:`_lockstep`);
        #: needs a real socket with ``SO_RCVTIMEO``, as ``open_transfer_socket`` sets.
        self.lockstep_inline = (session.windowsize == 1
                                and callable(getattr(sock, "setblocking", None)))
        #: Send windows with UDP segmentation offload (see :meth:`send_all`).
        self.segmentation = server.segmentation and callable(getattr(sock, "sendmsg", None))
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
                    self.server.log.debug("UDP segmentation off for {client}: {error}",
                                          client=client, error=str(exc))
                    super().send_all(datagrams[start:])
                    return
                self.server.log.debug("send to {client} failed: {error}", client=client,
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
        reactor (:meth:`TftpServer.inline_poller`): the client's next ACK is handled
        without the reactor's dispatch and without a failing ``recvfrom``.  Any datagram
        on a listener, a quiet millisecond or :data:`INLINE_BUDGET` seconds hand control
        back to the reactor.
        """
        sock = self.sock
        client = self.client
        session = self.session
        connected = self.connected
        # Connected: ``recv``/``send`` without addresses (a fake socket may lack them).
        recv = sock.recv if connected else None  # type: ignore[attr-defined]
        send_connected = sock.send if connected else None  # type: ignore[attr-defined]
        send = sock.sendto
        server = self.server
        seconds = server.reactor.seconds
        fast = self.fast
        now = seconds()
        poll = None
        if server.inline and len(server.transfers) == 1:
            poll = server.inline_poller(self)
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
                        self.server._foreign_tid(data, address, send)
                        continue
            except BlockingIOError:
                break
            except OSError as exc:
                # ECONNREFUSED: an ICMP port unreachable (reported on connected sockets);
                # the session's retransmission and retry limit deal with a gone client.
                if exc.errno in (errno.ECONNREFUSED, errno.EINTR):
                    continue
                self.server.log.warn("transfer socket error: {error}", error=str(exc))
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
                        self.server.log.debug("send to {client} failed: {error}",
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
                self.server.stats.malformed += 1
                self.server.log.info("dropped malformed datagram from {client}: {error}",
                                     client=client, error=str(exc))
                continue
            outbox = session.datagrams_to_send(now)
            if len(outbox) == 1:
                try:
                    if send_connected is not None:
                        send_connected(outbox[0])
                    else:
                        send(outbox[0], client)
                except OSError as exc:
                    self.server.log.debug("send to {client} failed: {error}",
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
        """
        sock = self.sock
        recvfrom = sock.recvfrom
        send = sock.sendto
        connected = self.connected
        recv = sock.recv if connected else None  # type: ignore[attr-defined]
        send_connected = sock.send if connected else None  # type: ignore[attr-defined]
        client = self.client
        size = self.receive_size
        seconds: Callable[[], float] = self.server.reactor.seconds
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
                    self.server.log.debug("send to {client} failed: {error}",
                                          client=client, error=str(exc))
            return now
        finally:
            if not self.closed:
                sock.setblocking(False)  # type: ignore[attr-defined]

    def _general(self, data: bytes, address: Address, now: float) -> None:
        """Handle one datagram the lock-step loop does not: the general path of doRead."""
        if address != self.client:
            self.server._foreign_tid(data, address, self.sock.sendto)
            return
        session = self.session
        try:
            session.receive(data, now)
        except MalformedPacket as exc:
            self.server.stats.malformed += 1
            self.server.log.info("dropped malformed datagram from {client}: {error}",
                                 client=self.client, error=str(exc))
            return
        self.send_all(session.datagrams_to_send(now))
        if session.finished:
            self.close()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the descriptor (shutdown): end the transfer."""
        if not self.closed:
            self.session.cancel(self.server.reactor.seconds())
            self.close()

    def close(self) -> None:
        """Unregister and close the socket (and the sibling), then report the outcome."""
        if self.closed:
            return
        multiplexer = self.server._multiplexer
        if self.multiplexed and multiplexer is not None:
            multiplexer.remove(self)
        else:
            self.server.reactor.removeReader(self)
        if self.foreign is not None:
            self.foreign.close()
        super().close()
        self.sock.close()


@implementer(IReadDescriptor)
class _ForeignTidPort:
    """The unconnected sibling of a connected transfer socket: datagrams of other TIDs.

    Bound to the transfer's port, it receives what the connected socket does not (RFC
    1350 §4): each datagram gets ERROR 5 from the transfer's port through
    :meth:`TftpServer._foreign_tid`; the transfer goes on.  Closed with the transfer.
    """

    def __init__(self, transfer: _TransferPort, sock: socket.socket) -> None:
        self.transfer = transfer
        self.sock = sock
        #: Watched through the server's ``_TransferMultiplexer`` (else by the reactor).
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
        server = transfer.server
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
                server.log.warn("foreign-TID socket error: {error}", error=str(exc))
                return
            if address == transfer.client:
                # Not expected (the connected socket gets the client's datagrams), but
                # should the kernel route one here, the transfer still gets it.
                if not transfer.closed:
                    transfer._general(data, address, server.reactor.seconds())
                continue
            server._foreign_tid(data, address, sock.sendto)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the descriptor: stop answering strangers (the transfer goes on)."""
        self.close()

    def close(self) -> None:
        """Unregister and close the socket (once)."""
        if self.closed:
            return
        self.closed = True
        multiplexer = self.transfer.server._multiplexer
        if self.multiplexed and multiplexer is not None:
            multiplexer.remove(self)
        else:
            self.transfer.server.reactor.removeReader(self)
        self.sock.close()


@implementer(IReadDescriptor)
class _TransferMultiplexer:
    """All transfer sockets of a server behind one ``epoll`` the reactor watches.

    With many concurrent transfers, the reactor's own dispatch (an ``epoll_wait``, then
    a logging context and method lookups per ready descriptor) is a large share of each
    block's cost.  The reactor watches only this object's epoll descriptor; one ``doRead``
    collects every ready transfer socket with a single ``epoll.poll`` and calls each
    transfer's ``doRead`` directly.
    """

    def __init__(self, server: TftpServer) -> None:
        self.server = server
        self.epoll = select.epoll()
        self.ports: dict[int, _TransferPort | _ForeignTidPort] = {}
        self.watched = False

    def add(self, port: _TransferPort | _ForeignTidPort) -> None:
        """Watch *port*'s socket; raises ``OSError``/``ValueError`` if it has no real fd."""
        descriptor = port.fileno()
        self.epoll.register(descriptor, select.EPOLLIN)
        self.ports[descriptor] = port
        if not self.watched:
            self.server.reactor.addReader(self)
            self.watched = True

    def remove(self, port: _TransferPort | _ForeignTidPort) -> None:
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
                self.server.log.failure("unexpected error in a transfer to {client}",
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
            self.server.reactor.removeReader(self)
            self.watched = False
        self.epoll.close()


class TftpListener(DatagramProtocol):
    """The well-known port (69): requests, and in single-port mode all transfer traffic."""

    def __init__(self, server: TftpServer) -> None:
        self.server = server

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        """Route a datagram to its transfer (single-port) or treat it as a request."""
        try:
            self.server.listener_datagram(datagram, addr, self)
        except Exception:
            # Never let a bug in request handling kill the listener.
            self.server.log.failure("unexpected error handling a datagram from {client}",
                                    client=addr)

    def send(self, datagram: Datagram, address: Address) -> None:
        """Send from the well-known port."""
        if self.transport is not None:
            self.transport.write(bytes(datagram), address)


class TftpServer:
    """The TFTP server controller: accepts requests, runs transfers, keeps stats.

    :param source: where read requests are served from.
    :param settings: session tunables (limits, retries, RTO, deadline).
    :param upload: where write requests go; ``None`` refuses every WRQ with ERROR 2
        (like tftp-hpa without ``-c`` and dnsmasq).
    :param single_port: serve every transfer from the listener's socket.
    :param per_client_limit: concurrent transfers per client IP.
    :param max_transfers: concurrent transfers in total.
    :param on_stats: called with a :class:`~pxestack.tftp.stats.SessionStats` per transfer.
    :param transfer_host: local address the per-transfer sockets bind to.
    :param socket_factory: opens a transfer socket (tests pass a fake).
    :param inline: let a transfer that is the only one running wait for its client's
        next datagram in its own ``poll`` (see :meth:`inline_poller`).
    :param segmentation: send a window's blocks in one ``sendmsg`` with Linux UDP
        segmentation offload where the kernel allows (``_TransferPort.send_all``).
    :param multiplex: watch all transfer sockets through one epoll descriptor of the
        server's own (``_TransferMultiplexer``) rather than one reactor reader each.
    :param connected: serve each transfer from a socket connected to its client, with a
        sibling socket for foreign TIDs (:func:`open_connected_transfer_sockets`); only
        with the default *socket_factory* and *multiplex*.  Falls back to an unconnected
        socket per transfer when the pair cannot be opened (e.g. out of descriptors).
    """

    log = Logger()

    def __init__(
        self,
        source: FileSource,
        *,
        settings: SessionSettings | None = None,
        upload: UploadTarget | None = None,
        single_port: bool = False,
        per_client_limit: int = 64,
        max_transfers: int = 512,
        on_stats: StatsCallback | None = None,
        transfer_host: str = "0.0.0.0",
        reactor: Any = None,
        socket_factory: Callable[[str], TransferSocket] = open_transfer_socket,
        inline: bool = True,
        segmentation: bool = True,
        multiplex: bool = True,
        connected: bool = True,
    ) -> None:
        self.source = source
        self.settings = settings or SessionSettings()
        self.upload = upload
        self.single_port = single_port
        self.per_client_limit = per_client_limit
        self.max_transfers = max_transfers
        self.on_stats = on_stats
        self.transfer_host = transfer_host
        self._reactor = reactor
        self.socket_factory = socket_factory
        self.stats = ServerStats()
        self.transfers: dict[Address, _Transfer] = {}
        #: Slots per source address and the admission rule (sans-IO).
        self.admission = Admission(max_transfers, per_client_limit)
        self._listeners: list[TftpListener] = []
        #: Answer a lone transfer's datagrams from a ``poll`` loop (see ``inline_poller``).
        self.inline = inline
        #: Send a window's blocks with one segmented ``sendmsg`` where the kernel can.
        self.segmentation = segmentation
        #: Watch transfer sockets through one epoll (``_TransferMultiplexer``).
        self.multiplex = multiplex and hasattr(select, "epoll")
        self._multiplexer: _TransferMultiplexer | None = None
        #: Connect transfer sockets to their clients (see :meth:`_open_transfer_sockets`).
        self.connected = connected
        #: A connected pair failed to open once already (log throttle).
        self._connected_failed = False

    @property
    def reactor(self) -> Any:
        """The reactor (``IReactorTime`` and ``IReactorFDSet``) transfers run on."""
        if self._reactor is None:
            self._reactor = _default_reactor()
        return self._reactor

    def listener(self) -> TftpListener:
        """A new listener protocol bound to this server (pass it to ``listenUDP``)."""
        listener = TftpListener(self)
        self._listeners.append(listener)
        return listener

    def inline_poller(self, transfer: _TransferPort) -> Callable[[int], list[Any]] | None:
        """A ``poll`` over *transfer*'s socket and the listeners, or ``None``.

        Lock-step TFTP is round-trip bound, and on a busy or single CPU most of a round
        trip is the reactor's own dispatch (``epoll_wait``, logging context, a failing
        ``recvfrom`` to learn the socket is drained).  While *transfer* is the only one
        running, nothing else of this server needs the reactor, so it may wait for its
        client in a direct ``poll``.  The listeners are in the poll set, so a new request
        ends the wait at once.  ``None`` (use the reactor) when other transfers run, when
        disabled, or when a listener has no real descriptor (tests' fakes).
        """
        if not self.inline or len(self.transfers) != 1:
            return None
        poller = transfer.poller
        if poller is None:
            try:
                descriptors = [listener.transport.fileno()  # type: ignore[union-attr]
                               for listener in self._listeners]
                poller = select.poll()
                poller.register(transfer.fileno(), select.POLLIN)
                for descriptor in descriptors:
                    poller.register(descriptor, select.POLLIN)
            except (AttributeError, OSError, TypeError, ValueError):
                self.inline = False
                return None
            transfer.poller = poller
        return poller.poll

    # ----------------------------------------------------------------- requests

    def listener_datagram(self, data: bytes, addr: Address, listener: TftpListener) -> None:
        """Handle one datagram that arrived on the well-known port."""
        if self.single_port:
            transfer = self.transfers.get(addr)
            if transfer is not None:
                transfer.datagram(data, self.reactor.seconds())
                return
        try:
            packet = decode_tftp(data)
        except MalformedPacket as exc:
            self.stats.malformed += 1
            self.log.info("dropped malformed request from {client}: {error}", client=addr,
                          error=str(exc))
            return
        if isinstance(packet, ReadRequest | WriteRequest):
            self._request(packet, addr, listener)
        else:
            # ACK/DATA/ERROR/OACK to port 69 belong to no transfer.  Answering would make
            # the server a reflector for spoofed requests, so they are dropped.
            self.log.debug("ignored {kind} on the request port from {client}",
                           kind=type(packet).__name__, client=addr)

    def _request(self, request: ReadRequest | WriteRequest, addr: Address,
                 listener: TftpListener) -> None:
        self.stats.requests += 1
        write = isinstance(request, WriteRequest)
        if addr in self.transfers:
            # The client resent its request before our first answer arrived: the running
            # transfer's own retransmission covers it.  Starting a second one would double
            # every block (the request-level Sorcerer's Apprentice).
            self.log.debug("duplicate request from {client} ignored", client=addr)
            return
        refusal = self._validate(request, addr)
        decision: Decision | None = None
        if refusal is None:
            decision = self.admission.decide(addr, self.reactor.seconds())
            if not decision.admit:
                self._over_cap(request, addr, decision, listener)
                return
        if refusal is not None:
            code, message, reason = refusal
            self.stats.refused += 1
            self.log.info("refused {op} {path!r} from {client}: {reason}",
                          op="WRQ" if write else "RRQ", path=request.filename,
                          client=addr, reason=reason)
            listener.send(error_datagram(code, message), addr)
            return
        now = self.reactor.seconds()
        client = TftpClient(addr, self._listener_address(listener))
        try:
            session: Session
            if isinstance(request, WriteRequest):
                assert self.upload is not None
                upload = self.upload.create(request.filename, client)
                session = WriteSession(request, upload, now, settings=self.settings,
                                       client=addr)
            else:
                reader = self.source.open(request.filename, client)
                try:
                    reader = wrap_for_mode(reader, request.mode)
                except BaseException:
                    reader.close()
                    raise
                session = ReadSession(request, reader, now, settings=self.settings,
                                      client=addr)
        except Exception as exc:
            code, message = refusal_for(exc)
            self.stats.refused += 1
            log = self.log.info if code in (ErrorCode.FILE_NOT_FOUND,
                                            ErrorCode.ACCESS_VIOLATION,
                                            ErrorCode.FILE_EXISTS) else self.log.error
            log("refused {op} {path!r} from {client}: {reason}",
                op="WRQ" if write else "RRQ", path=request.filename, client=addr,
                reason=getattr(exc, "reason", None) or repr(exc))
            listener.send(error_datagram(code, message), addr)
            return
        if decision is not None and decision.evict is not None:
            self._evict(decision.evict, now, decision.reason, addr)
        transfer = self._start_transfer(session, addr, listener)
        if transfer is None:
            return
        self.log.info(
            "{op} {path!r} from {client}: blksize={blksize} windowsize={windowsize} "
            "tsize={tsize}",
            op="WRQ" if write else "RRQ", path=request.filename, client=addr,
            blksize=session.blksize, windowsize=session.windowsize,
            tsize=session.negotiated.tsize, options=dict(request.options),
        )
        transfer.flush(now)

    def _validate(self, request: ReadRequest | WriteRequest,
                   addr: Address) -> tuple[int, str, str] | None:
        if request.mode not in SUPPORTED_MODES:
            return ErrorCode.ILLEGAL_OPERATION, "Unsupported mode", f"mode {request.mode!r}"
        if isinstance(request, WriteRequest) and self.upload is None:
            return ErrorCode.ACCESS_VIOLATION, "Access violation", "uploads are disabled"
        if request.filename.endswith(("/", "\\")):
            # "undionly.kpxe/" names a directory, not the file "undionly.kpxe"; path
            # normalization would drop the slash and serve the file under a second name.
            return ErrorCode.FILE_NOT_FOUND, "File not found", "name ends with a separator"
        return None

    def _over_cap(self, request: ReadRequest | WriteRequest, addr: Address,
                  decision: Decision, listener: TftpListener) -> None:
        """Apply a refusing :class:`~pxestack.tftp.admission.Decision`.

        A source at the hard per-client limit gets ERROR 0 "Busy" (shorter than any
        request, so no amplification).  Every other refusal stays silent: PXE firmware
        (iPXE, OVMF, Intel/Broadcom option ROMs) gives up the boot on any ERROR answering
        its RRQ, while it resends an unanswered RRQ after its own time-out, which is
        served once a slot frees.  The refusal is logged at info level with the peer,
        once per source address per ``REFUSAL_LOG_INTERVAL`` (the rest at debug), so a
        flood cannot flood the log.
        """
        self.stats.over_limit += 1
        log = self.log.info if decision.log else self.log.debug
        log("refused {op} {path!r} from {client} ({reason}){answer}",
            op="WRQ" if isinstance(request, WriteRequest) else "RRQ",
            path=request.filename, client=addr, reason=decision.reason,
            answer=" with ERROR" if decision.answer else "; the client will retry")
        if decision.answer:
            listener.send(error_datagram(ErrorCode.NOT_DEFINED, BUSY_MESSAGE), addr)

    def _evict(self, victim: Address, now: float, reason: str, newcomer: Address) -> None:
        """End *victim*'s transfer silently so *newcomer*'s request takes its slot."""
        transfer = self.transfers.get(victim)
        if transfer is None:  # pragma: no cover - admission only names running transfers
            self.admission.remove(victim)
            return
        self.log.debug("evicted the transfer to {client} for {newcomer}: {reason}",
                       client=victim, newcomer=newcomer, reason=reason)
        transfer.evict(now, reason)

    def _listener_address(self, listener: TftpListener) -> Address | None:
        transport = listener.transport
        if transport is None:
            return None
        host = transport.getHost()
        return (getattr(host, "host", ""), getattr(host, "port", 0))

    def _start_transfer(self, session: Session, addr: Address,
                        listener: TftpListener) -> _Transfer | None:
        transfer: _Transfer
        if self.single_port:
            transfer = _Transfer(self, session, addr, listener.send)
        else:
            try:
                sock, sibling = self._open_transfer_sockets(addr)
            except OSError as exc:
                self.log.error("cannot open a transfer socket: {error}", error=str(exc))
                session.cancel(self.reactor.seconds(), "Server error")
                for datagram in session.datagrams_to_send(0.0):
                    listener.send(datagram, addr)
                self.stats.refused += 1
                return None
            port = _TransferPort(self, session, addr, sock, sibling)
            self._watch(port)
            transfer = port
        self.transfers[addr] = transfer
        self.admission.add(addr, session)
        self.stats.active += 1
        return transfer

    def _open_transfer_sockets(
        self, client: Address
    ) -> tuple[TransferSocket, socket.socket | None]:
        """A transfer socket for *client* and, when connected, its foreign-TID sibling.

        Connected sockets need real sockets (the default *socket_factory*) and the
        multiplexer (the reactor would take the connected socket's ICMP errors for a
        lost connection).  If the pair cannot be opened (out of descriptors, say), the
        transfer gets an unconnected socket as before; the first failure is logged.
        """
        if self.connected and self.multiplex and self.socket_factory is open_transfer_socket:
            try:
                return open_connected_transfer_sockets(self.transfer_host, client)
            except OSError as exc:
                log = self.log.debug if self._connected_failed else self.log.warn
                self._connected_failed = True
                log("cannot open connected transfer sockets ({error}); using an "
                    "unconnected one", error=str(exc))
        return self.socket_factory(self.transfer_host), None

    def _watch(self, port: _TransferPort) -> None:
        """Have *port* (and its foreign-TID sibling) read: by the multiplexer or reactor."""
        foreign = port.foreign
        if self.multiplex:
            try:
                if self._multiplexer is None:
                    self._multiplexer = _TransferMultiplexer(self)
                self._multiplexer.add(port)
                port.multiplexed = True
                if foreign is not None:
                    self._multiplexer.add(foreign)
                    foreign.multiplexed = True
                return
            except (OSError, ValueError):
                # A socket without a real descriptor (tests' fakes): the reactor reads it.
                self.multiplex = False
        if not port.multiplexed:
            self.reactor.addReader(port)
        if foreign is not None:
            self.reactor.addReader(foreign)

    def _foreign_tid(self, data: bytes, address: Address,
                     send: Callable[[Datagram, Address], Any]) -> None:
        """RFC 1350 §4: a packet from another TID gets ERROR 5; the transfer goes on."""
        self.stats.foreign_tid += 1
        self.log.debug("datagram from foreign TID {source}", source=address)
        if len(data) >= 2 and data[0] == 0 and data[1] == OP_ERROR:
            return  # never answer an ERROR (RFC 1350 §7)
        with contextlib.suppress(OSError):
            send(UNKNOWN_TID_DATAGRAM, address)

    def _transfer_finished(self, transfer: _Transfer) -> None:
        if self.transfers.get(transfer.client) is transfer:
            del self.transfers[transfer.client]
            self.admission.remove(transfer.client)
        self.stats.active -= 1
        stats = transfer.session.stats()
        self.stats.record(stats)
        self._log_finished(stats)
        if self.on_stats is not None:
            try:
                self.on_stats(stats)
            except Exception:
                self.log.failure("stats callback failed")

    def _log_finished(self, stats: SessionStats) -> None:
        fields = {
            "client": stats.client, "path": stats.path, "outcome": stats.outcome.value,
            "bytes": stats.bytes_acked, "duration": round(stats.duration, 6),
            "retransmits": stats.retransmits, "blksize": stats.blksize,
            "windowsize": stats.windowsize, "error": stats.error,
        }
        if stats.outcome is Outcome.COMPLETE:
            self.log.info("sent {path!r} to {client}: {bytes} bytes in {duration}s, "
                          "{retransmits} retransmits", **fields)
        elif stats.outcome is Outcome.ABORTED:
            # PXE ROMs and OVMF abort after reading tsize: normal, keep it quiet.
            self.log.debug("{path!r} to {client} aborted by the client: {error}", **fields)
        elif stats.outcome is Outcome.EVICTED or stats.error == NO_ANSWER:
            # Never acknowledged (a spoofed or flooding source) or evicted for another
            # request: one line each would let a flood flood the log.
            self.log.debug("{path!r} to {client} {outcome}: {error}", **fields)
        else:
            self.log.warn("{path!r} to {client} {outcome}: {error}", **fields)

    def stop(self) -> None:
        """Cancel every running transfer (each client gets an ERROR)."""
        now = self.reactor.seconds()
        for transfer in list(self.transfers.values()):
            transfer.cancel(now)
        multiplexer = self._multiplexer
        if multiplexer is not None and not multiplexer.ports:
            self._multiplexer = None
            multiplexer.close()


__all__ = [
    "DESCRIPTORS_PER_CONNECTED_TRANSFER",
    "MAX_DATAGRAM",
    "TftpListener",
    "TftpServer",
    "TransferSocket",
    "open_connected_transfer_sockets",
    "open_transfer_socket",
]
