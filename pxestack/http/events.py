"""Boot steps over HTTP: a JSON list, or a Server-Sent Events stream.

:class:`EventFeed` answers one request for the steps a
:class:`~pxestack.bootevents.BootEventRecorder` keeps:

* ``Accept: text/event-stream``: an SSE stream (the WHATWG HTML "server-sent events"
  format).  It starts with the kept steps after ``?since=`` (or after the ``Last-Event-ID``
  a reconnecting browser sends, when that is newer), then every new step as it is
  recorded, one ``event: boot`` message each (``event: image`` for image-fetch
  progress), whose ``id`` is the step's ``seq`` and whose
  ``data`` is its JSON.  A comment line every ``heartbeat`` seconds keeps proxies from
  closing an idle stream and finds clients that went away.
* anything else: a JSON array of the kept steps after ``?since=`` (at most ``limit``, the
  newest), for tools that poll.

Log lines (:data:`~pxestack.bootevents.LOG`) are not boot steps: the default feed leaves
them out; a feed made with ``select`` and ``accept`` (``/admin/host/<serial>/logs``) serves
one machine's lines instead, as ``event: log`` messages.

Authentication is the caller's: the admin API checks its bearer token, the dashboard its
session, before handing the request here.

Streams are bounded: at most the recorder's ``max_subscribers`` at once (more get 503), and a
client that stops reading is dropped once ``max_buffer`` bytes wait for it.  Steps are
recorded from the provisioning thread pool too; they reach the stream through
``reactor.callFromThread``, in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import NOT_DONE_YET, Request

from pxestack.bootevents import IMAGE_PHASE, LOG, PHASES, BootEvent, BootEventRecorder

log = Logger()

#: Seconds between keep-alive comments on an idle stream.
HEARTBEAT = 15.0
#: Bytes that may wait for a slow stream reader before the stream is dropped.
MAX_BUFFER = 1 << 20
#: Steps in one JSON answer (the newest ones after ``since``).
JSON_LIMIT = 1000


def sse_message(event: BootEvent) -> bytes:
    """One SSE message for *event* (``id``, ``event: boot`` -- ``event: image`` for an
    image-fetch step -- and one ``data`` line)."""
    data = json.dumps(event.to_json(), separators=(",", ":"))
    kind = "log" if event.phase == LOG else "image" if event.phase == IMAGE_PHASE else "boot"
    return f"id: {event.seq}\nevent: {kind}\ndata: {data}\n\n".encode()


def parse_since(request: Request) -> int | None:
    """The larger of ``?since=`` and the ``Last-Event-ID`` header (a reconnecting
    ``EventSource`` repeats its URL's ``since`` but sends the newer id), as a non-negative
    integer, 0 when both are absent; None when one is given but is not such a number."""
    values = (request.args or {}).get(b"since")
    found = 0
    for raw in (values[0] if values else None, request.getHeader(b"last-event-id")):
        if raw is None or raw == b"":
            continue
        if not raw.isdigit() or len(raw) > 18:
            return None
        found = max(found, int(raw))
    return found


def wants_stream(request: Request) -> bool:
    """Whether the client asked for ``text/event-stream``."""
    accept = request.getHeader(b"accept") or b""
    return b"text/event-stream" in accept.lower()


class EventFeed:
    """Serves the steps of *recorder* (see the module documentation)."""

    def __init__(self, recorder: BootEventRecorder, *, reactor: Any = None,
                 heartbeat: float = HEARTBEAT, max_buffer: int = MAX_BUFFER,
                 limit: int = JSON_LIMIT,
                 select: Callable[[int, int], list[BootEvent]] | None = None,
                 accept: Callable[[BootEvent], bool] | None = None) -> None:
        self.recorder = recorder
        #: ``select(since, limit)``: the kept events a request starts with.
        self.select = select or recorder.since
        #: Which new events a stream sends (default: every boot step, no log line or notice).
        self.accept = accept or (lambda event: event.phase in PHASES)
        self._reactor = reactor
        self.heartbeat = heartbeat
        self.max_buffer = max_buffer
        self.limit = limit

    @property
    def reactor(self) -> Any:
        """The reactor streams are written from."""
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def render(self, request: Request) -> bytes | int:
        """Answer *request* with the JSON list or the SSE stream."""
        since = parse_since(request)
        if since is None:
            request.setResponseCode(http.BAD_REQUEST)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"since must be a non-negative integer\n"
        if not wants_stream(request):
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
            steps = self.select(since, self.limit)
            return json.dumps([s.to_json() for s in steps], indent=1).encode() + b"\n"
        return _Stream(self, request, since).start()


def _waiting_bytes(transport: Any) -> int:
    """Bytes written to *transport* that the kernel has not taken yet (a TCP transport's
    buffers; 0 for transports that do not say)."""
    buffered = getattr(transport, "dataBuffer", b"") or b""
    pending = getattr(transport, "_tempDataLen", 0) or 0
    try:
        return len(buffered) + int(pending)
    except TypeError:
        return 0


class _Stream:
    """One open SSE answer."""

    def __init__(self, feed: EventFeed, request: Request, since: int) -> None:
        self.feed = feed
        self.request = request
        self.since = since
        self.closed = False
        self._unsubscribe: Any = None
        self._timer: Any = None
        self._last = since

    def start(self) -> bytes | int:
        request = self.request
        unsubscribe = self.feed.recorder.subscribe(self._from_any_thread)
        if unsubscribe is None:
            log.info("refusing an event stream: {n} are open already",
                     n=self.feed.recorder.subscribers)
            request.setResponseCode(http.SERVICE_UNAVAILABLE)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"Retry-After", b"10")
            return b"too many event streams\n"
        self._unsubscribe = unsubscribe
        request.notifyFinish().addBoth(self._finished)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.write(b"retry: 2000\n\n")
        for step in self.feed.select(self.since, self.feed.limit):
            self._write(step)
        self._timer = self.feed.reactor.callLater(self.feed.heartbeat, self._beat)
        return NOT_DONE_YET

    def _from_any_thread(self, event: BootEvent) -> None:
        if not self.closed and self.feed.accept(event):
            self.feed.reactor.callFromThread(self._write, event)

    def _write(self, event: BootEvent) -> None:
        if self.closed or event.seq <= self._last:
            return  # a step sent in the catch-up as well as live
        self._last = event.seq
        self._send(sse_message(event))

    def _beat(self) -> None:
        self._timer = None
        if self.closed:
            return
        self._send(b": keep-alive\n\n")
        if not self.closed:
            self._timer = self.feed.reactor.callLater(self.feed.heartbeat, self._beat)

    def _send(self, data: bytes) -> None:
        transport = getattr(getattr(self.request, "channel", None), "transport", None)
        if transport is not None and _waiting_bytes(transport) > self.feed.max_buffer:
            log.info("dropping an event stream whose client stopped reading")
            self._close()
            transport.loseConnection()
            return
        try:
            self.request.write(data)
        except Exception:
            self._close()

    def _finished(self, _result: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


__all__ = ["HEARTBEAT", "JSON_LIMIT", "MAX_BUFFER", "EventFeed", "parse_since",
           "sse_message", "wants_stream"]
