"""Serve boot assets (kernels, initrds, iPXE binaries) from a directory at sendfile speed.

:class:`AssetResource` is a leaf ``twisted.web`` resource.  For a GET it opens the file with
:func:`pxestack.paths.open_under_root` (the same traversal and symlink rules as the TFTP
root), answers the conditional and Range headers (:mod:`pxestack.http.headers`), and then
hands the body to a push producer registered with the request:

* :class:`SendfileTransfer`, the fast path, moves bytes with ``os.sendfile`` from the file
  descriptor straight into the connection's socket, whenever the socket has room.  No body
  byte is read into Python.
* :class:`CopyTransfer`, the fallback, ``pread``\\s chunks and writes them through
  ``request.write``.  It is used where sendfile cannot be: TLS transports (the bytes must be
  encrypted in user space), platforms other than Linux, and transports without a real
  socket (test fakes, wrappers).

How the fast path cooperates with Twisted
-----------------------------------------

A ``twisted.internet.tcp.Connection`` buffers what ``write`` is given and sends it when the
reactor reports the socket writable (``doWrite``).  When that buffer empties, ``doWrite``
stops watching for writability and, *if its producer was paused*, calls the producer's
``resumeProducing``.  The producer of a TCP transport under ``twisted.web`` is the
``HTTPChannel``, which forwards ``resumeProducing`` to the producer registered by the
current request, i.e. to us.  So :class:`_SocketSink` asks for a wake-up by marking the
transport's producer as paused and calling ``startWriting()``; the next time the socket is
writable and Twisted's own buffer is empty, we are resumed and call ``sendfile`` again.

The same mechanism flushes the response head first: the status line and headers go through
``request.write(b"")`` into Twisted's buffer, and the first ``sendfile`` only happens once
that buffer has drained, so head and body can never be reordered.

Connection loss reaches us as ``stopProducing`` (the transport tells its producer, the
channel tells ours); a write error from ``sendfile`` aborts the transport, which ends in the
same place.  A watchdog drops a client that accepts no byte for ``stall_timeout`` seconds
(``twisted.web`` switches its own idle timeout off while a response is being produced).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from pxestack.http.headers import (
    UNSATISFIABLE,
    ByteRange,
    Precondition,
    content_type_for,
    entity_tag,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    parse_range,
)
from pxestack.http.stats import AssetCounters, AssetStats, TransferRecord
from pxestack.paths import PathNotFound, PathRefused, normalize_request_path, open_under_root

log = Logger()

#: Whether this platform's ``os.sendfile`` can write a file to a non-blocking socket and
#: report partial progress.  Linux can; macOS's and FreeBSD's variants lose the count of a
#: partial send on EAGAIN in Python's wrapper, so they use the copy path.
SENDFILE_SUPPORTED = hasattr(os, "sendfile") and sys.platform.startswith("linux")

#: Most bytes asked of one ``sendfile`` call.  On a non-blocking socket the kernel stops
#: early when the socket buffer is full; a short count tells us to wait for writability.
SENDFILE_CHUNK = 4 * 1024 * 1024

#: Most bytes one transfer sends per reactor wake-up, so that one fast client cannot starve
#: the others (on loopback the socket buffer drains as fast as we fill it).
BYTES_PER_WAKEUP = 8 * 1024 * 1024

#: Chunk size of the copy path: Twisted's ``SEND_LIMIT`` (one ``send`` per ``doWrite``).
COPY_CHUNK = 128 * 1024

#: Most bytes the copy path writes per turn when the transport never pushes back (a
#: transport without flow control), after which it yields to the reactor.
COPY_BUDGET = 1024 * 1024

#: Errors from ``sendfile`` that mean the peer is gone (not a server bug).
_PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN,
                        errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH})

_TEXT_PLAIN = b"text/plain; charset=utf-8"


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _SocketSink:
    """Direct access to the socket under a plain (non-TLS) Twisted TCP transport.

    Built by :func:`socket_sink_for`, which checks every assumption; this class only wraps
    the three operations the fast path needs.
    """

    def __init__(self, transport: tcp.Connection, fd: int) -> None:
        self.transport = transport
        self.fd = fd

    def is_open(self) -> bool:
        """Whether the connection is up and nobody asked to close it.

        After a close the descriptor number may be reused by another file, so no
        ``sendfile`` may be attempted on it then.
        """
        transport = self.transport
        return bool(transport.connected) and not transport.disconnecting and not getattr(
            transport, "_aborting", False
        )

    def has_pending_output(self) -> bool:
        """Whether Twisted still holds bytes (the response head) it has not sent."""
        transport = self.transport
        return bool(transport._tempDataLen) or len(transport.dataBuffer) > transport.offset

    def wake_when_writable(self) -> None:
        """Have the transport call ``resumeProducing`` once its buffer is empty and the
        socket accepts data again (see the module docstring)."""
        transport = self.transport
        transport.producerPaused = True
        transport.startWriting()

    def abort(self) -> None:
        """Drop the connection now (pending data is discarded)."""
        self.transport.abortConnection()


def socket_sink_for(request: http.Request) -> _SocketSink | None:
    """The socket of *request*'s connection if the sendfile fast path can use it, else None.

    Requirements: Linux; the channel's transport is a ``twisted.internet.tcp`` connection
    (not a TLS wrapper, a ``ProtocolWrapper`` or a test fake); TLS was not started on it;
    and the channel is registered as the transport's producer, so that the transport's
    ``resumeProducing`` reaches us through the channel.
    """
    if not SENDFILE_SUPPORTED:
        return None
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if not isinstance(transport, tcp.Connection):
        return None
    if ISSLTransport.providedBy(transport) or getattr(transport, "TLS", False):
        return None
    if transport.producer is not channel or not transport.streamingProducer:
        return None
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
        return None
    fd = sock.fileno()
    if fd < 0:
        return None
    return _SocketSink(transport, fd)


@implementer(IPushProducer)
class _Transfer:
    """One response body: *length* bytes of file descriptor *fd* from offset *first*.

    Owns *fd* and closes it exactly once, whatever happens.  Subclasses implement
    :meth:`_pump`, which moves bytes until the connection pushes back.
    """

    method = ""

    def __init__(
        self,
        request: http.Request,
        fd: int,
        byte_range: ByteRange,
        *,
        asset: str,
        counters: AssetCounters,
        stats: AssetStats,
        reactor: Any,
        stall_timeout: float,
    ) -> None:
        self.request = request
        self.fd = fd
        self.first = byte_range.first
        self.offset = byte_range.first
        self.remaining = byte_range.length
        self.asset = asset
        self.counters = counters
        self.stats = stats
        self.reactor = reactor
        self.stall_timeout = stall_timeout
        self.paused = False
        self.done = False
        self.started_at = 0.0
        self.last_progress = 0.0
        self._watchdog: IDelayedCall | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Register with the request, queue the response head, and start moving bytes."""
        self.started_at = self.last_progress = self.reactor.seconds()
        self._watchdog = self.reactor.callLater(self.stall_timeout, self._check_stalled)
        self.request.registerProducer(self, True)
        self.request.write(b"")  # the status line and headers, into Twisted's buffer
        self.request.notifyFinish().addErrback(self._request_lost)
        self._pump()

    def _account(self, sent: int) -> None:
        """Record *sent* body bytes as handed to the kernel."""
        self.offset += sent
        self.remaining -= sent
        self.counters.bytes_sent += sent
        self.stats.totals.bytes_sent += sent
        self.last_progress = self.reactor.seconds()

    def _complete(self) -> None:
        """Every byte is out: release the file and finish the response."""
        self._end("completed")
        self.request.unregisterProducer()
        self.request.finish()

    def _end(self, outcome: str) -> None:
        """Close the file, stop the watchdog, and count and report the outcome (once)."""
        if self.done:
            return
        self.done = True
        os.close(self.fd)
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        sent = self.offset - self.first
        self.request.sentLength = sent
        if outcome == "completed":
            self.counters.completed += 1
            self.stats.totals.completed += 1
        else:
            self.counters.aborted += 1
            self.stats.totals.aborted += 1
            log.info(
                "asset {asset} to {client}: {outcome} after {sent} of {total} bytes",
                asset=self.asset, client=_client_of(self.request), outcome=outcome,
                sent=sent, total=sent + self.remaining,
            )
        record = TransferRecord(
            asset=self.asset, client=_client_of(self.request), offset=self.first,
            length=sent + self.remaining, sent=sent, method=self.method, outcome=outcome,
            duration=self.reactor.seconds() - self.started_at,
        )
        for observer in list(self.stats.observers):
            try:
                observer(record)
            except Exception:
                log.failure("asset stats observer {observer!r} failed; removed",
                            observer=observer)
                self.stats.observers.remove(observer)

    def _abort_connection(self) -> None:
        """Drop the connection; ``stopProducing`` / ``notifyFinish`` clean up after it."""
        transport = getattr(self.request.channel, "transport", None)
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def _request_lost(self, reason: Any) -> None:
        """The connection went away before the response finished."""
        self._end("client-gone")

    def _check_stalled(self) -> None:
        """Watchdog: drop a client that accepted no byte for ``stall_timeout`` seconds."""
        self._watchdog = None
        if self.done:
            return
        idle = self.reactor.seconds() - self.last_progress
        if idle < self.stall_timeout:
            self._watchdog = self.reactor.callLater(
                self.stall_timeout - idle, self._check_stalled
            )
            return
        self.stats.connections.stalled += 1
        self._end("stalled")
        self._abort_connection()

    # -- IPushProducer -------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The connection's buffer is full; stop until ``resumeProducing``."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The connection can take more bytes."""
        self.paused = False
        if not self.done:
            self.last_progress = self.reactor.seconds()
            self._pump()

    def stopProducing(self) -> None:
        """The connection is closing: give up the file."""
        self._end("client-gone")

    def _pump(self) -> None:
        raise NotImplementedError


class SendfileTransfer(_Transfer):
    """The zero-copy body producer: ``os.sendfile`` from the file into the socket."""

    method = "sendfile"

    def __init__(self, *args: Any, sink: _SocketSink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink

    def _pump(self) -> None:
        """Send until the socket is full, the budget is used, or the body is complete."""
        if self.done or self.paused:
            return
        sink = self.sink
        if not sink.is_open():
            return  # closing: stopProducing or notifyFinish will end the transfer
        if sink.has_pending_output():
            sink.wake_when_writable()  # flush Twisted's buffer (the head) first
            return
        budget = BYTES_PER_WAKEUP
        sent_now = 0
        while self.remaining > 0:
            count = min(self.remaining, SENDFILE_CHUNK, budget - sent_now)
            try:
                sent = os.sendfile(sink.fd, self.fd, self.offset, count)
            except BlockingIOError:
                sink.wake_when_writable()
                break
            except OSError as exc:
                self._send_failed(exc)
                return
            if sent == 0:
                # The file is shorter than it was at stat() time: it was truncated while
                # being served.  The promised Content-Length can no longer be met.
                log.warn("asset {asset} shrank while being sent; dropping the connection",
                         asset=self.asset)
                self._end("truncated")
                sink.abort()
                return
            self._account(sent)
            self.counters.sendfile_bytes += sent
            self.stats.totals.sendfile_bytes += sent
            sent_now += sent
            if sent < count or sent_now >= budget:
                if self.remaining > 0:
                    sink.wake_when_writable()
                break
        if self.remaining == 0:
            self._complete()

    def _send_failed(self, exc: OSError) -> None:
        """``sendfile`` failed: the peer is gone, or (rarely) the file could not be read."""
        if exc.errno in _PEER_GONE:
            self._end("client-gone")
        else:
            log.error("sendfile of {asset} failed: {error}", asset=self.asset, error=exc)
            self._end("error")
        self.sink.abort()


class CopyTransfer(_Transfer):
    """The fallback body producer: ``pread`` chunks and ``request.write`` them."""

    method = "copy"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._again: IDelayedCall | None = None

    def resumeProducing(self) -> None:
        """The connection can take more bytes (cancels a pending self-scheduled turn)."""
        if self._again is not None and self._again.active():
            self._again.cancel()
        self._again = None
        super().resumeProducing()

    def _pump(self) -> None:
        """Write chunks until the transport pauses us or this turn's budget is used."""
        self._again = None
        written = 0
        while not self.done and not self.paused and self.remaining > 0:
            if written >= COPY_BUDGET:
                self._again = self.reactor.callLater(0, self._pump)
                break
            try:
                data = os.pread(self.fd, min(self.remaining, COPY_CHUNK), self.offset)
            except OSError as exc:
                log.error("reading {asset} failed: {error}", asset=self.asset, error=exc)
                self._end("error")
                self._abort_connection()
                return
            if not data:
                log.warn("asset {asset} shrank while being sent; dropping the connection",
                         asset=self.asset)
                self._end("truncated")
                self._abort_connection()
                return
            self._account(len(data))
            self.counters.copied_bytes += len(data)
            self.stats.totals.copied_bytes += len(data)
            written += len(data)
            self.request.write(data)  # may call pauseProducing() synchronously
        if not self.done and self.remaining == 0:
            self._complete()

    def _end(self, outcome: str) -> None:
        if self._again is not None and self._again.active():
            self._again.cancel()
        self._again = None
        super()._end(outcome)


def _client_of(request: http.Request) -> str:
    """The client's IP address, for logs and records."""
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))


class AssetResource(Resource):
    """A leaf resource serving the regular files under *root* (GET and HEAD only).

    :param root: the asset directory.  Requests are resolved with
        :func:`pxestack.paths.open_under_root`: no ``..``, no symlink leaving the root, no
        directories (no listings), no device nodes.  Anything refused is answered 404.
    :param stats: counters to update (a fresh :class:`AssetStats` by default).
    :param stall_timeout: drop a client that accepts no body byte for this many seconds.
    :param cache_max_age: 0 sends ``Cache-Control: no-cache`` (cache, but revalidate with
        the ETag every time: boot assets are often replaced in place); a positive value
        sends ``public, max-age=N``.
    :param use_sendfile: False forces the copy path (for comparisons and debugging).
    """

    isLeaf = True

    def __init__(
        self,
        root: Path | str,
        *,
        stats: AssetStats | None = None,
        reactor: Any = None,
        stall_timeout: float = 30.0,
        cache_max_age: int = 0,
        use_sendfile: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.stats = stats if stats is not None else AssetStats()
        self._reactor = reactor
        self.stall_timeout = stall_timeout
        self.cache_control = (
            b"public, max-age=%d" % cache_max_age if cache_max_age > 0 else b"no-cache"
        )
        self.use_sendfile = use_sendfile

    @property
    def reactor(self) -> Any:
        """The reactor used for the stall watchdog."""
        return self._reactor if self._reactor is not None else _default_reactor()

    def getChild(self, path: bytes, request: http.Request) -> Resource:
        """Never called: this resource is a leaf and reads ``request.postpath`` itself."""
        return self

    def render(self, request: http.Request) -> bytes | int:
        """Answer a GET or HEAD for the file named by ``request.postpath``."""
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"Allow", b"GET, HEAD")
            return _plain(request, b"method not allowed\n")
        requested = _requested_path(request)
        if requested is None:
            return _not_found(request)
        try:
            asset = "/".join(normalize_request_path(requested))
            fd, info = open_under_root(self.root, requested)
        except PathNotFound:
            return _not_found(request)
        except PathRefused as exc:
            # 404 rather than 403: a traversal probe learns nothing about what exists.
            log.info("refused {path!r} from {client}: {reason}", path=requested,
                     client=_client_of(request), reason=exc.reason)
            return _not_found(request)
        try:
            return self._respond(request, fd, info, asset)
        except BaseException:
            os.close(fd)
            raise

    def _respond(
        self, request: http.Request, fd: int, info: os.stat_result, asset: str
    ) -> bytes | int:
        """Headers, preconditions and Range for an opened file; starts the body transfer.

        Takes ownership of *fd*: it is closed here unless a transfer takes it over.
        """
        counters = self.stats.counters_for(asset)
        counters.requests += 1
        self.stats.totals.requests += 1
        size = info.st_size
        mtime = int(info.st_mtime)
        etag = entity_tag(size, info.st_mtime_ns, info.st_ino)
        request.setHeader(b"Last-Modified", http_date(mtime))
        request.setHeader(b"ETag", etag)
        request.setHeader(b"Cache-Control", self.cache_control)
        request.setHeader(b"Accept-Ranges", b"bytes")

        verdict = evaluate_preconditions(
            if_none_match=_list_header(request, b"If-None-Match"),
            if_modified_since=_header(request, b"If-Modified-Since"),
            etag=etag,
            mtime=mtime,
        )
        if verdict is Precondition.NOT_MODIFIED:
            os.close(fd)
            counters.not_modified += 1
            self.stats.totals.not_modified += 1
            request.setResponseCode(http.NOT_MODIFIED)
            request.write(b"")
            request.finish()
            return NOT_DONE_YET

        request.setHeader(b"Content-Type", content_type_for(asset).encode("ascii"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        byte_range: ByteRange | None = ByteRange(0, size - 1) if size else None
        # RFC 9110 §14.2: Range is defined for GET only; HEAD gets the full-length headers.
        if request.method == b"GET" and if_range_allows(
            _header(request, b"If-Range"), etag=etag, mtime=mtime
        ):
            wanted = parse_range(_header(request, b"Range"), size)
            if wanted is UNSATISFIABLE:
                os.close(fd)
                request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
                request.setHeader(b"Content-Range", b"bytes */%d" % size)
                return _plain(request, b"range not satisfiable\n")
            if isinstance(wanted, ByteRange):
                request.setResponseCode(http.PARTIAL_CONTENT)
                request.setHeader(b"Content-Range", wanted.content_range(size))
                counters.partial += 1
                self.stats.totals.partial += 1
                byte_range = wanted
        length = byte_range.length if byte_range is not None else 0
        request.setHeader(b"Content-Length", b"%d" % length)
        if request.method == b"HEAD" or byte_range is None:
            os.close(fd)
            request.write(b"")
            request.finish()
            if byte_range is None:  # an empty file: the (empty) body is complete
                counters.completed += 1
                self.stats.totals.completed += 1
            return NOT_DONE_YET
        self._start_transfer(request, fd, byte_range, asset, counters)
        return NOT_DONE_YET

    def _start_transfer(
        self,
        request: http.Request,
        fd: int,
        byte_range: ByteRange,
        asset: str,
        counters: AssetCounters,
    ) -> None:
        """Pick the sendfile or copy producer for this connection and start it."""
        common: dict[str, Any] = {
            "asset": asset,
            "counters": counters,
            "stats": self.stats,
            "reactor": self.reactor,
            "stall_timeout": self.stall_timeout,
        }
        sink = socket_sink_for(request) if self.use_sendfile else None
        transfer: _Transfer
        if sink is not None:
            transfer = SendfileTransfer(request, fd, byte_range, sink=sink, **common)
        else:
            transfer = CopyTransfer(request, fd, byte_range, **common)
        transfer.start()


def _requested_path(request: http.Request) -> str | None:
    """The ``/``-joined remaining path segments as text, or None if not UTF-8.

    Twisted has already percent-decoded each segment, so an encoded ``%2F`` or ``%2E%2E``
    arrives here as a literal ``/`` or ``..`` and meets the same checks as a plain one.
    """
    try:
        return "/".join(segment.decode("utf-8") for segment in request.postpath)
    except UnicodeDecodeError:
        return None


def _header(request: http.Request, name: bytes) -> bytes | None:
    """The last value of request header *name*, or None."""
    value: bytes | None = request.getHeader(name)
    return value


def _list_header(request: http.Request, name: bytes) -> bytes | None:
    """All field lines of a list-valued header joined with commas (RFC 9110 §5.3)."""
    values: list[bytes] | None = request.requestHeaders.getRawHeaders(name)
    return b", ".join(values) if values else None


def _plain(request: http.Request, body: bytes) -> bytes:
    """A short text/plain body; ``twisted.web`` adds Content-Length and drops it for HEAD."""
    request.setHeader(b"Content-Type", _TEXT_PLAIN)
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def _not_found(request: http.Request) -> bytes:
    """A 404 answer without revealing why."""
    request.setResponseCode(http.NOT_FOUND)
    return _plain(request, b"not found\n")


__all__ = [
    "SENDFILE_SUPPORTED",
    "AssetResource",
    "CopyTransfer",
    "SendfileTransfer",
    "socket_sink_for",
]
