"""The pxestack ``twisted.web`` site: URL layout, connection gate and limits.

URL layout (see ``docs/http.md``)::

    /assets/<path>     a file under the asset root (canonical form)
    /<path>            the same file, when no mounted child claims the first segment
                       (so firmware can be given short URLs such as /ipxe.efi)
    /healthz           StatusResource: "ok" (or JSON counters with ?format=json)
    /<child>/...       resources mounted by higher layers through ``children``
                       (iPXE scripts, the admin API, /metrics); a child wins over a file
                       of the same name

The gate in :class:`AssetSite` refuses connections beyond ``max_connections`` in total or
``max_connections_per_client`` from one IP address with a short 503, before any HTTP parsing
or resource lookup happens.  ``twisted.web``'s own idle timeout (``HTTPChannel.timeOut``)
closes connections that send nothing; the asset producers' watchdog drops clients that stop
reading while a body is being sent.

A machine on the provisioning segment needs no credentials to open connections, so the
gate also keeps slow or hostile clients from taking the service away from everyone else:

* A request head (request line and headers) must arrive whole within ``header_timeout``
  seconds, or the client gets 408 and the connection is closed; a byte now and then does
  not extend it.  A head over ``max_header_bytes`` gets 400 (also when it is one long line).
* Connections still sending their head may hold at most ``pending_head_share`` of
  ``max_connections``.  A new connection beyond that, or beyond ``max_connections`` while
  head-pending connections exist, evicts the oldest head-pending connection instead of
  being refused, so a flood of half-sent heads cannot lock out a client that sends its head
  at once.  ``reserved_connections`` more connections are kept for the operator segments
  (``/admin``, ``/metrics``, ``/healthz``) when every ordinary slot is busy.
* A request body is checked against the limit of the resource it is addressed to as soon
  as the head is parsed (:func:`request_body_limit`): a ``Content-Length`` over it gets 413
  before a body byte is read, a chunked body gets 413 once it grows over it, and a method
  that takes no body takes no body bytes at all.  Accepted bodies are kept in memory
  (``BytesIO``), never in a temporary file.

Early answers (400, 408, 413, and 503 to a reserved slot used for another path) are written
by the channel itself; the write side is then closed and what the client still sends is
discarded for at most :data:`REFUSAL_READ_TIMEOUT` before the connection is closed, so
the answer is not destroyed by a TCP reset.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from pxestack.errors import ApiMisuse
from pxestack.http.assets import AssetResource
from pxestack.http.resources import PlainNotFound, StatusResource
from pxestack.http.stats import AssetStats

log = Logger()

#: The first path segment under which the asset root is always reachable.
ASSETS_SEGMENT = b"assets"
#: The first path segment of the built-in status resource.
STATUS_SEGMENT = b"healthz"
#: First path segments that may use the reserved connections: operator requests.
RESERVED_SEGMENTS: tuple[bytes, ...] = (b"admin", b"metrics", STATUS_SEGMENT, b"dashboard")
#: Methods whose requests may carry a body at all (when the resource takes one).
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@dataclass(frozen=True, slots=True)
class SiteLimits:
    """Resource limits of the HTTP service (``http:`` keys of the same names)."""

    #: Open connections in total; more are answered 503 and closed.
    max_connections: int = 1024
    #: Open connections from one client IP address; more are answered 503 and closed.
    max_connections_per_client: int = 16
    #: Seconds a connection may sit without sending a request byte (between requests, or
    #: in the middle of a request head) before it is closed.
    idle_timeout: float = 60.0
    #: Seconds a client may accept no body byte before the transfer is dropped.
    stall_timeout: float = 30.0
    #: Bytes of request line plus headers accepted (larger heads get 400 and a close).
    max_header_bytes: int = 16384
    #: Number of header fields accepted in one request.
    max_headers: int = 100
    #: Seconds a client has to send one whole request head, counted from the connection
    #: (or, on a kept-alive connection, from the first byte of the next request); then 408.
    header_timeout: float = 10.0
    #: Fraction of ``max_connections`` that connections still sending a head may hold.
    pending_head_share: float = 0.5
    #: Connections beyond ``max_connections`` kept for :data:`RESERVED_SEGMENTS`.
    reserved_connections: int = 16

    @property
    def max_pending_heads(self) -> int:
        """How many connections may be sending their request head at one time."""
        return max(1, int(self.max_connections * self.pending_head_share))


#: How long a refused client may take to send its request head before it gets the 503
#: anyway, and how long an early answer (400, 408, 413) waits for the client to stop
#: sending before the connection is closed.  Reading first avoids a TCP reset that could
#: eat the answer (closing a socket with unread data makes Linux send RST).
REFUSAL_READ_TIMEOUT = 2.0
#: Bytes discarded after an early answer before the connection is closed at once.
REFUSAL_DISCARD_BYTES = 1 << 20


def early_answer(code: int, message: str) -> bytes:
    """A complete ``Connection: close`` answer with a short ``text/plain`` body."""
    body = message.encode("utf-8") + b"\n"
    reason = http.RESPONSES.get(code, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Cache-Control: no-store\r\n"
        b"Connection: close\r\n"
        b"\r\n" % (code, reason, len(body))
    ) + body


def request_body_limit(resource: object, method: bytes) -> int:
    """The largest body *resource* takes with *method*: 0 unless it says otherwise.

    A resource that accepts bodies defines ``request_body_limit(method) -> int``; every
    other resource (assets, ``/healthz``, scripts) takes none, so a body sent to it is
    refused before it is read.
    """
    if method not in BODY_METHODS:
        return 0
    declared = getattr(resource, "request_body_limit", None)
    if declared is None:
        return 0
    try:
        limit = int(declared(method))
    except Exception:  # a broken resource must not break the channel
        log.failure("request_body_limit of {resource!r} failed", resource=resource)
        return 0
    return max(0, limit)


class BoundedRequest(Request):
    """A ``Request`` whose body lives in memory and may not grow over ``body_limit``.

    :class:`GatedChannel` sets ``body_limit`` before the body starts; a declared
    ``Content-Length`` over it never gets here (the channel answers 413 first), a chunked
    body is cut off with 413 once it passes it.
    """

    body_limit = 0
    _body_size = 0

    def gotLength(self, length: int | None) -> None:
        """Keep the body in memory, whatever its declared size (the channel capped it)."""
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Store one piece of the body, or refuse the request once it is too large."""
        channel = self.channel
        if isinstance(channel, GatedChannel) and channel.refused:
            return
        self._body_size += len(data)
        if self._body_size > self.body_limit:
            if isinstance(channel, GatedChannel):
                if channel.gate is not None:
                    channel.gate.stats.connections.bodies_refused += 1
                channel.refuse(http.REQUEST_ENTITY_TOO_LARGE, "request body too large",
                               why="chunked body over the limit")
            return
        content = self.content
        if content is not None:
            content.write(data)


class GatedChannel(http.HTTPChannel):
    """An ``HTTPChannel`` with the gate's head deadline, body limits and early answers.

    It tells the gate when its head starts and ends (for the head-pending share) and when
    it closes (for the slot counts).
    """

    on_close: Callable[[], None] | None = None
    #: The listener that accepted the connection (:data:`MAIN_LISTENER`, :data:`ADMIN_LISTENER`).
    listener = "main"
    #: The site whose gate admitted this channel (None for a channel built by hand).
    gate: AssetSite | None = None
    #: Admitted on a reserved slot: only :data:`RESERVED_SEGMENTS` may be asked for.
    reserve_only = False
    #: An early answer was written; everything the client still sends is discarded.
    refused = False
    #: Sending a request head (from the connection or the first byte of the next request).
    head_pending = False
    _between_requests = False
    _head_timer: IDelayedCall | None = None
    _linger_timer: IDelayedCall | None = None
    _discarded = 0

    # -- phases ------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Start the idle timer (twisted.web) and the head deadline."""
        super().connectionMade()
        self._begin_head()

    def _begin_head(self) -> None:
        self._between_requests = False
        self.head_pending = True
        gate = self.gate
        if gate is None:
            return
        gate.head_started(self)
        self._head_timer = gate.reactor.callLater(gate.limits.header_timeout,
                                                  self._head_deadline)

    def _end_head(self) -> None:
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None
        if self.head_pending:
            self.head_pending = False
            if self.gate is not None:
                self.gate.head_finished(self)

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self.gate is not None:
            self.gate.stats.connections.head_timeouts += 1
        self.refuse(http.REQUEST_TIMEOUT, "request head not received in time",
                    why="request head deadline passed")

    def dataReceived(self, data: bytes) -> None:
        """Discard after an early answer; a byte after a finished request starts a head."""
        if self.refused:
            self._discard(data)
            return
        if self._between_requests and data:
            self._begin_head()
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        """Body bytes (or pipelined requests); none once an early answer was written."""
        if self.refused:
            self._discard(data)
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        """The head is complete: check the reserved slot and the body limit, then go on."""
        self._end_head()
        method: bytes = getattr(self, "_command", b"")
        path: bytes = getattr(self, "_path", b"")
        gate = self.gate
        if gate is not None:
            if self.reserve_only and first_segment(path) not in gate.reserved_segments:
                self.refuse(http.SERVICE_UNAVAILABLE, "server busy, retry later",
                            why="reserved slot used for another path")
                return
            limit = gate.body_limit(method, path)
            length: int | None = self.length
            if (length is None and limit == 0) or (length is not None and length > limit):
                gate.stats.connections.bodies_refused += 1
                self.refuse(http.REQUEST_ENTITY_TOO_LARGE, "request body too large",
                            why=f"{method!r} body of {length if length is not None else 'chunked'}"
                                f" bytes over the limit of {limit}")
                return
            request = self.requests[-1]
            if isinstance(request, BoundedRequest):
                request.body_limit = limit
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        """Process the request unless it was refused while its body arrived."""
        if self.refused:
            return
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        """Between requests the idle timeout applies; the next byte starts a new head."""
        if self.persistent:
            self._between_requests = True
        super().requestDone(request)

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line longer than ``max_header_bytes``: 400, not a silent close."""
        self.refuse(http.BAD_REQUEST, "request head too large", why="request line too long")

    def _respondToBadRequestAndDisconnect(self) -> None:
        """twisted.web's 400 (malformed or oversized head), through the early answer."""
        self.refuse(http.BAD_REQUEST, "bad request", why="malformed or oversized request head")

    # -- early answers -----------------------------------------------------------------------

    def refuse(self, code: int, message: str, *, why: str) -> None:
        """Answer *code* now, stop parsing, and close once the client stopped sending."""
        if self.refused:
            return
        self._end_head()
        self.refused = True
        self.persistent = False
        self.setTimeout(None)
        transport = self.transport
        log.info("answering {code} to {client} and closing: {why}",
                 code=code, client=self._peer_host(), why=why)
        if transport is None:
            return
        transport.write(early_answer(code, message))
        close_write = getattr(transport, "loseWriteConnection", None)
        if close_write is None or self.gate is None:
            self.loseConnection()
            return
        close_write()
        self._linger_timer = self.gate.reactor.callLater(REFUSAL_READ_TIMEOUT, self._close_now)

    def evict(self) -> None:
        """Give this head-pending connection's slot to a newer one: 503 and close."""
        self._end_head()
        self.refused = True
        release, self.on_close = self.on_close, None
        if release is not None:
            release()
        log.info("evicting {client}: its request head was the oldest one pending",
                 client=self._peer_host())
        transport = self.transport
        if transport is not None:
            transport.write(_REFUSAL)
            self._close_now()

    def _discard(self, data: bytes) -> None:
        self._discarded += len(data)
        if self._discarded > REFUSAL_DISCARD_BYTES:
            self._close_now()

    def _close_now(self) -> None:
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self._linger_timer = None
        transport = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None and getattr(transport, "_writeDisconnected", False):
            abort()  # the answer and the FIN are out; drop what the client still sends
        else:
            self.loseConnection()

    def _peer_host(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(peer, "host", peer))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Release this connection's slot in the gate, then let twisted.web clean up.

        A TLS failure (a client certificate that does not verify, a client that does not
        trust the server, a client speaking plain HTTP to the TLS port) is logged.
        """
        error = getattr(reason, "value", None)
        if error is not None and type(error).__module__.startswith("OpenSSL"):
            log.info("TLS with {client} failed, connection closed: {error}",
                     client=self._peer_host(), error=str(error)[:300])
        self._end_head()
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self._linger_timer = None
        release, self.on_close = self.on_close, None
        if release is not None:
            release()
        super().connectionLost(reason)


#: Query parameters whose values never reach a log line (machine callbacks may carry
#: their per-host token as ``?token=``; a log reader must not be able to replay it).
SENSITIVE_PARAMETERS = frozenset({b"token", b"access_token", b"password", b"secret", b"key"})


def redact_uri(uri: bytes) -> str:
    """*uri* for a log line, with the value of every sensitive query parameter (any name
    in :data:`SENSITIVE_PARAMETERS` or ending in ``token``) replaced by ``REDACTED``."""
    path, sep, query = uri.partition(b"?")
    if not sep:
        return uri.decode("latin-1")
    parts = []
    for item in query.split(b"&"):
        name, eq, _value = item.partition(b"=")
        # Matched as Twisted decodes it, so %74oken= is a token too.
        lowered = unquote_to_bytes(name.replace(b"+", b" ")).lower()
        if eq and (lowered in SENSITIVE_PARAMETERS or lowered.endswith(b"token")):
            item = name + b"=REDACTED"
        parts.append(item)
    return (path + b"?" + b"&".join(parts)).decode("latin-1")


def first_segment(uri: bytes) -> bytes:
    """The first path segment of a request target, percent-decoded as twisted.web does."""
    path = uri.split(b"?", 1)[0]
    if path.startswith((b"http://", b"https://")):  # absolute form
        path = b"/" + path.split(b"/", 3)[-1] if path.count(b"/") >= 3 else b"/"
    return unquote_to_bytes(path[1:].split(b"/", 1)[0])

_REFUSAL_BODY = b"server busy, retry later\n"
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 2\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_REFUSAL_BODY)
) + _REFUSAL_BODY


class RefusingProtocol(Protocol):
    """Answers one connection with 503 Service Unavailable and closes it.

    It waits (at most :data:`REFUSAL_READ_TIMEOUT`) for the end of the request head so the
    client is reading when the answer arrives, but never parses anything.
    """

    def __init__(self, reactor: Any, max_header_bytes: int,
                 on_close: Callable[[], None]) -> None:
        self.reactor = reactor
        self.max_header_bytes = max_header_bytes
        self.on_close: Callable[[], None] | None = on_close
        self._received = 0
        self._tail = b""
        self._timer: IDelayedCall | None = None
        self._answered = False

    def connectionMade(self) -> None:
        """Start the short read timer."""
        self._timer = self.reactor.callLater(REFUSAL_READ_TIMEOUT, self._answer)

    def dataReceived(self, data: bytes) -> None:
        """Answer once the blank line ending the head (or too much data) has arrived."""
        self._received += len(data)
        window = self._tail + data
        self._tail = window[-3:]
        if b"\r\n\r\n" in window or b"\n\n" in window or self._received > self.max_header_bytes:
            self._answer()

    def _answer(self) -> None:
        if self._answered:
            return
        self._answered = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None:
            self.transport.write(_REFUSAL)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel the timer and release the refusal slot."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        release, self.on_close = self.on_close, None
        if release is not None:
            release()


class AssetSite(Site):
    """A ``Site`` with a connection gate, header caps and structured access logging.

    :ivar stats: the :class:`AssetStats` shared with the asset resource; its
        ``connections`` counters are kept here.
    """

    protocol = GatedChannel
    requestFactory = BoundedRequest
    noisy = False  # no "Starting factory" line per listening port

    def __init__(
        self,
        resource: IResource,
        *,
        limits: SiteLimits,
        stats: AssetStats,
        reactor: Any = None,
        reserved_segments: Collection[bytes] = RESERVED_SEGMENTS,
    ) -> None:
        super().__init__(resource, timeout=limits.idle_timeout, reactor=reactor)
        self.limits = limits
        self.stats = stats
        self.reserved_segments = frozenset(reserved_segments)
        self._per_client: dict[str, int] = {}
        self._refusals = 0
        self._reserved_open = 0
        #: Channels sending their head, oldest first.
        self._pending: OrderedDict[int, GatedChannel] = OrderedDict()

    # -- head-pending bookkeeping (called by GatedChannel) -------------------------------------

    def head_started(self, channel: GatedChannel) -> None:
        """*channel* is sending a request head now."""
        self._pending[id(channel)] = channel

    def head_finished(self, channel: GatedChannel) -> None:
        """*channel* finished (or gave up) its request head."""
        self._pending.pop(id(channel), None)

    def pending_heads(self) -> int:
        """How many connections are sending their request head now."""
        return len(self._pending)

    def _evict_oldest_pending(self) -> bool:
        if not self._pending:
            return False
        _key, channel = self._pending.popitem(last=False)
        self.stats.connections.evicted += 1
        channel.evict()
        return True

    def body_limit(self, method: bytes, uri: bytes) -> int:
        """The body limit of the resource *uri* addresses (by its first path segment)."""
        children = getattr(self.resource, "children", None) or {}
        return request_body_limit(children.get(first_segment(uri)), method)

    # -- admission ----------------------------------------------------------------------------

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """Accept the connection as an HTTP channel, or answer 503 when a cap is reached.

        Room for the new connection is made by evicting the oldest head-pending connection
        when head-pending connections hold their whole share, or when every slot is taken
        and some of them are head-pending.  With every ordinary slot busy serving, the new
        connection may take a reserved slot (operator paths only).
        """
        host = str(getattr(addr, "host", addr))
        counters = self.stats.connections
        limits = self.limits
        over_client = self._per_client.get(host, 0) >= limits.max_connections_per_client
        reserve_only = False
        if not over_client:
            if len(self._pending) >= limits.max_pending_heads:
                self._evict_oldest_pending()
            ordinary_open = counters.open - self._reserved_open
            if ordinary_open >= limits.max_connections and self._evict_oldest_pending():
                ordinary_open = counters.open - self._reserved_open
            if ordinary_open >= limits.max_connections:
                reserve_only = True
        over_total = reserve_only and self._reserved_open >= limits.reserved_connections
        if over_total or over_client:
            if over_total:
                counters.refused_total += 1
            else:
                counters.refused_per_client += 1
            log.info("refusing connection from {client}: {cap} connection cap reached",
                     client=host, cap="total" if over_total else "per-client")
            if self._refusals >= limits.max_connections:
                return None  # a flood: close without even the 503
            self._refusals += 1
            return RefusingProtocol(self.reactor, limits.max_header_bytes, self._end_refusal)
        channel = super().buildProtocol(addr)
        if channel is None:  # pragma: no cover - Site always builds one
            return None
        channel.totalHeadersSize = limits.max_header_bytes
        channel.MAX_LENGTH = limits.max_header_bytes
        channel.maxHeaders = limits.max_headers
        counters.accepted += 1
        counters.open += 1
        self._per_client[host] = self._per_client.get(host, 0) + 1
        if isinstance(channel, GatedChannel):
            channel.gate = self
            channel.reserve_only = reserve_only
        if reserve_only:
            self._reserved_open += 1
        channel.on_close = lambda: self._release(host, reserve_only)
        built: Protocol = channel
        return built

    def _release(self, host: str, reserved: bool = False) -> None:
        """One accepted connection from *host* closed (or was evicted)."""
        self.stats.connections.open -= 1
        if reserved:
            self._reserved_open -= 1
        left = self._per_client.get(host, 0) - 1
        if left > 0:
            self._per_client[host] = left
        else:
            self._per_client.pop(host, None)

    def _end_refusal(self) -> None:
        self._refusals -= 1

    def connections_from(self, host: str) -> int:
        """How many accepted connections *host* has open now."""
        return self._per_client.get(host, 0)

    def log(self, request: http.Request) -> None:
        """One structured debug event per request instead of a combined-log-format line."""
        log.debug(
            "{client} {method} {uri} {code} {length}",
            client=str(getattr(request.getClientAddress(), "host", "-")),
            method=request.method.decode("latin-1"),
            uri=redact_uri(request.uri),
            code=request.code,
            length=request.sentLength,
        )


#: The role of ``http.listen``: every path.
MAIN_LISTENER = "main"
#: The role of ``http.admin_listen``: the listener the admin API is confined to.
ADMIN_LISTENER = "admin"


class _Closer(Protocol):
    """Closes a connection at once (what a flooded gate answers under a TLS wrapper)."""

    def connectionMade(self) -> None:
        """Close without a word."""
        if self.transport is not None:
            self.transport.loseConnection()


class ListenerFactory(Factory):
    """One listening port of an :class:`AssetSite`: its channels know which port took them.

    Several ports share one site (one gate, one set of counters); the provisioning API
    reads :func:`listener_of` to confine ``/admin`` to ``http.admin_listen``.
    """

    noisy = False

    def __init__(self, site: AssetSite, role: str) -> None:
        self.site = site
        self.role = role

    def doStart(self) -> None:
        """Start the shared site (counted: it starts once for all its ports)."""
        self.site.doStart()

    def doStop(self) -> None:
        """Stop the shared site once its last port stops."""
        self.site.doStop()

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """The site's channel, marked with this listener's role."""
        built = self.site.buildProtocol(addr)
        if built is None:
            return _Closer()  # a wrapping (TLS) factory cannot take None
        if isinstance(built, GatedChannel):
            built.listener = self.role
        return built


def listener_of(request: http.Request) -> str:
    """The role of the listener *request* arrived on (:data:`MAIN_LISTENER` by default)."""
    return str(getattr(getattr(request, "channel", None), "listener", MAIN_LISTENER))


class SiteRoot(Resource):
    """The root resource: mounted children first, then ``/assets/``, then bare asset paths."""

    def __init__(self, assets: AssetResource | None, *, bare_assets: bool = True) -> None:
        super().__init__()
        self.assets = assets
        self.bare_assets = bare_assets
        self._not_found = PlainNotFound()

    def getChildWithDefault(self, path: bytes, request: http.Request) -> Resource:
        """Route the first path segment; empty segments before it are skipped.

        ``//grubx64.efi`` is ``/grubx64.efi``, as common web servers merge slashes: shim,
        booted over UEFI HTTP Boot, asks for its second stage at the URL of its own
        directory followed by ``/grubx64.efi``, so with shim at the top of the asset root
        it sends ``GET //grubx64.efi``.  A mounted ``/`` (the dashboard) still answers
        ``/`` itself.
        """
        while path == b"" and request.postpath:
            path = request.postpath.pop(0)
            request.prepath[-1:] = [path]
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: http.Request) -> Resource:
        """Route a first path segment that no mounted child claimed."""
        if self.assets is None:
            return self._not_found
        if path == ASSETS_SEGMENT:
            return self.assets
        if self.bare_assets:
            # Give the segment back so that the asset resource sees the whole path:
            # "/ipxe.efi" is the asset "ipxe.efi", "/coreos/vmlinuz" is "coreos/vmlinuz".
            request.prepath.pop()
            request.postpath.insert(0, path)
            return self.assets
        return self._not_found

    def render(self, request: http.Request) -> bytes:
        """``/`` itself: nothing to list."""
        return self._not_found.render(request)


def build_site(
    assets_root: Path | str | None,
    *,
    children: Mapping[bytes, IResource] | None = None,
    limits: SiteLimits | None = None,
    stats: AssetStats | None = None,
    cache_max_age: int = 0,
    use_sendfile: bool = True,
    bare_assets: bool = True,
    reactor: Any = None,
    reserved_segments: Collection[bytes] = RESERVED_SEGMENTS,
) -> AssetSite:
    """Build the HTTP site: assets under *assets_root* plus the *children* higher layers mount.

    :param assets_root: directory of boot assets, or None for a site without assets.
    :param children: resources by first path segment, e.g. ``{b"boot.ipxe": script,
        b"admin": api, b"metrics": exporter}``.  They take precedence over asset files with
        the same first segment; ``b"assets"`` and ``b"healthz"`` may be overridden too.
    :param limits: connection caps and timeouts (defaults: :class:`SiteLimits`).
    :param stats: counters to update; read them later from ``site.stats``.
    :param cache_max_age: see :class:`~pxestack.http.assets.AssetResource`.
    :param use_sendfile: False forces the copy path.
    :param bare_assets: also serve ``/<path>`` from the asset root (not just ``/assets/``).
    :param reactor: for timeouts and the watchdog (tests pass a ``task.Clock``-driven one).
    :param reserved_segments: first path segments that may use the reserved connections.
    """
    limits = limits or SiteLimits()
    stats = stats if stats is not None else AssetStats()
    assets = None
    if assets_root is not None:
        assets = AssetResource(
            assets_root,
            stats=stats,
            reactor=reactor,
            stall_timeout=limits.stall_timeout,
            cache_max_age=cache_max_age,
            use_sendfile=use_sendfile,
        )
    root = SiteRoot(assets, bare_assets=bare_assets)
    root.putChild(STATUS_SEGMENT, StatusResource(stats))
    for name, child in (children or {}).items():
        if not isinstance(name, bytes) or b"/" in name:
            raise ApiMisuse(f"child name {name!r} must be one path segment as bytes")
        root.putChild(name, child)
    return AssetSite(root, limits=limits, stats=stats, reactor=reactor,
                     reserved_segments=reserved_segments)


__all__ = [
    "ADMIN_LISTENER",
    "ASSETS_SEGMENT",
    "BODY_METHODS",
    "MAIN_LISTENER",
    "RESERVED_SEGMENTS",
    "STATUS_SEGMENT",
    "AssetSite",
    "BoundedRequest",
    "GatedChannel",
    "ListenerFactory",
    "RefusingProtocol",
    "SiteLimits",
    "SiteRoot",
    "build_site",
    "early_answer",
    "first_segment",
    "listener_of",
    "redact_uri",
    "request_body_limit",
]
