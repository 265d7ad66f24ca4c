"""The Twisted adapter of the TFTP server: requests on port 69, admission, and logging.

:class:`TftpServer` is the controller (Twisted names' ``DNSServerFactory`` role).  Its
:class:`TftpListener` receives requests on the well-known port.  For each request the
server checks it (mode, uploads allowed, a name that is not a directory), asks the sans-IO
:class:`~pxestack.tftp.admission.Admission` for a slot, opens the file and builds a
:class:`~pxestack.tftp.session.ReadSession` or :class:`~pxestack.tftp.session.WriteSession`
(RFC 1350 transfers with the RFC 2347 option negotiation, RFC 2348 blksize, RFC 2349 tsize
and RFC 7440 windowsize).  An accepted transfer gets its own transfer ID, a fresh port
(RFC 1350 §4), from the transfer transport (:mod:`pxestack.tftp.transport`), which moves
its datagrams; the sessions decide everything that goes on the wire.  This module logs
what happened to each request and transfer.

Optional single-port mode (for firewalls and NAT that only pass port 69): every transfer
shares the listener's socket and datagrams are routed by the client's address.

Caps: a total number of transfers and a number per client IP.  Which request gets a slot,
and which running transfer gives its slot up when the server is full, is decided by
:class:`~pxestack.tftp.admission.Admission`; this module only applies the decision (see
that module for the rule).  Hostile or garbled datagrams are logged and dropped; nothing a
peer sends is raised into the reactor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from pxestack._types import Address
from pxestack.errors import ApiMisuse, MalformedPacket
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
from pxestack.tftp.transport import (
    DESCRIPTORS_PER_CONNECTED_TRANSFER,
    MAX_DATAGRAM,
    SocketTransport,
    Transfer,
    TransferOwner,
    TransferSocket,
    TransferTransport,
    TransportFactory,
    open_connected_transfer_sockets,
    open_transfer_socket,
)
from pxestack.wire.tftp import (
    OP_ERROR,
    ErrorCode,
    ReadRequest,
    WriteRequest,
    decode_tftp,
)

#: The ERROR message of a request refused because its source holds too many transfers:
#: shorter than the shortest request, so the answer never amplifies.
BUSY_MESSAGE = "Busy"

Session = ReadSession | WriteSession


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


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
    :param transport: builds the transfer transport (:mod:`pxestack.tftp.transport`); the
        default is a :class:`~pxestack.tftp.transport.SocketTransport` set up from the
        options below, which a given *transport* replaces.  Tests pass
        ``socket_transport(...)`` with fake sockets.
    :param socket_factory: opens a plain (unconnected) transfer socket.  A custom one
        serves every transfer from the sockets it opens, unconnected.
    :param inline: let a transfer that is the only one running wait for its client's
        next datagram itself (``SocketTransport.inline_poller``).
    :param segmentation: send a window's blocks in one ``sendmsg`` with Linux UDP
        segmentation offload where the kernel allows.
    :param multiplex: watch all transfer sockets through one epoll descriptor of the
        transport's own rather than one reactor reader each.
    :param connected: serve each transfer from a socket connected to its client, with a
        sibling socket for foreign TIDs (``open_connected_transfer_sockets``); needs
        *multiplex*.  Falls back to an unconnected socket per transfer when the pair
        cannot be opened (e.g. out of descriptors).
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
        transport: TransportFactory | None = None,
        socket_factory: Callable[[str], TransferSocket] | None = None,
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
        self.stats = ServerStats()
        self.transfers: dict[Address, Transfer] = {}
        #: Slots per source address and the admission rule (sans-IO).
        self.admission = Admission(max_transfers, per_client_limit)
        self._listeners: list[TftpListener] = []
        if transport is not None and socket_factory is not None:
            raise ApiMisuse("TftpServer takes a transport or a socket_factory, not both")
        if transport is None:
            transport = _socket_transport_factory(
                transfer_host, socket_factory, inline=inline, segmentation=segmentation,
                multiplex=multiplex, connected=connected)
        #: Opens, watches and closes the transfers' sockets (pxestack.tftp.transport).
        self.transport: TransferTransport = transport(self)

    @property
    def reactor(self) -> Any:
        """The reactor (``IReactorTime`` and ``IReactorFDSet``) transfers run on."""
        if self._reactor is None:
            self._reactor = _default_reactor()
        return self._reactor

    @property
    def connected(self) -> bool:
        """Whether transfers get a socket connected to their client (see the transport)."""
        return self.transport.connected

    @connected.setter
    def connected(self, value: bool) -> None:
        self.transport.connected = value

    def listener(self) -> TftpListener:
        """A new listener protocol bound to this server (pass it to ``listenUDP``)."""
        listener = TftpListener(self)
        self._listeners.append(listener)
        return listener

    def listener_descriptors(self) -> list[int]:
        """Descriptors of the listening sockets (the transport polls them with a lone
        transfer, so a new request ends its wait); raises when a listener has none."""
        return [listener.transport.fileno()  # type: ignore[union-attr]
                for listener in self._listeners]

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
                        listener: TftpListener) -> Transfer | None:
        transfer: Transfer
        if self.single_port:
            transfer = Transfer(self, session, addr, listener.send)
        else:
            try:
                transfer = self.transport.start(session, addr)
            except OSError as exc:
                self.log.error("cannot open a transfer socket: {error}", error=str(exc))
                session.cancel(self.reactor.seconds(), "Server error")
                for datagram in session.datagrams_to_send(0.0):
                    listener.send(datagram, addr)
                self.stats.refused += 1
                return None
        self.transfers[addr] = transfer
        self.admission.add(addr, session)
        self.stats.active += 1
        return transfer

    # ------------------------------------------------- reports from the transport

    def malformed(self, client: Address, error: MalformedPacket) -> None:
        """A transfer's client sent a datagram that does not decode: count and log it."""
        self.stats.malformed += 1
        self.log.info("dropped malformed datagram from {client}: {error}", client=client,
                      error=str(error))

    def foreign_tid(self, data: bytes, address: Address,
                    send: Callable[[Datagram, Address], Any]) -> None:
        """RFC 1350 §4: a packet from another TID gets ERROR 5; the transfer goes on."""
        self.stats.foreign_tid += 1
        self.log.debug("datagram from foreign TID {source}", source=address)
        if len(data) >= 2 and data[0] == 0 and data[1] == OP_ERROR:
            return  # never answer an ERROR (RFC 1350 §7)
        with contextlib.suppress(OSError):
            send(UNKNOWN_TID_DATAGRAM, address)

    def transfer_finished(self, transfer: Transfer) -> None:
        """*transfer* ended: free its slot, count and log the outcome, report its stats."""
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
        self.transport.stop()


def _socket_transport_factory(host: str,
                              socket_factory: Callable[[str], TransferSocket] | None, *,
                              inline: bool, segmentation: bool, multiplex: bool,
                              connected: bool) -> TransportFactory:
    """The default transport: connected sockets unless a custom *socket_factory* is given."""
    def factory(owner: TransferOwner) -> TransferTransport:
        return SocketTransport(
            owner, host=host, open_socket=socket_factory,
            open_connected=(open_connected_transfer_sockets
                            if connected and socket_factory is None else None),
            inline=inline, segmentation=segmentation, multiplex=multiplex)

    return factory


__all__ = [
    "DESCRIPTORS_PER_CONNECTED_TRANSFER",
    "MAX_DATAGRAM",
    "TftpListener",
    "TftpServer",
    "TransferSocket",
    "open_connected_transfer_sockets",
    "open_transfer_socket",
]
