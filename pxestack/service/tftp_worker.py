"""One TFTP worker process: ``python -m pxestack.service.tftp_worker`` (started by the pool).

:class:`~pxestack.service.tftp_workers.TftpWorkerPool` starts each worker with the same
Python, hands it two descriptors and its settings on the command line:

* ``--listen-fd``: its own UDP socket bound by the main process to the TFTP port with
  ``SO_REUSEPORT`` (the kernel spreads requests over the workers' sockets by the
  client's address and port);
* ``--channel-fd``: its end of a Unix stream socket to the main process for requests to
  a dynamic source (blocking: the worker waits for the answer);
* ``--events-fd``: its end of a second one for counters, finished transfers and log
  events (through the reactor: never blocks the worker).  Both carry the frames of
  :mod:`pxestack.tftp.channel`.

The worker runs an ordinary :class:`~pxestack.tftp.protocol.TftpServer` in its own
reactor.  Files under the configured root are read here; when the main process serves
TFTP from a dynamic source (an embedder's or a higher layer's
:class:`~pxestack.tftp.source.FileSource`), every name is asked of the main process
(:class:`ChannelSource`).  Counters, finished transfers and log events go to the main
process over the channel, which feeds them to its ``/metrics`` and its log.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner
from zope.interface import implementer

from pxestack.config.tftp import TftpConfig
from pxestack.errors import MalformedPacket, PxeStackError
from pxestack.paths import PathNotFound, PathRefused
from pxestack.service.logs import is_twisted_chatter
from pxestack.tftp.channel import MAX_PAYLOAD, Frame, FrameDecoder, FrameKind, encode_frame
from pxestack.tftp.source import FilesystemSource, TftpClient, UploadDirectory
from pxestack.tftp.stats import SessionStats

#: Seconds a worker waits for the main process to answer one source request.
CHANNEL_TIMEOUT = 5.0
#: Octets asked of the main process per READ of a dynamic file.
READ_CHUNK = 64 * 1024
#: Seconds between a transfer's end and the STATS frame that carries it to the main
#: process (transfers that end meanwhile share the frame).
TRANSFER_PUSH_DELAY = 0.1
#: Finished transfers sent in one STATS frame at most (the counters still count all).
MAX_TRANSFERS_PER_PUSH = 2000
_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error}
_ORDER = frozenset(LogLevel.iterconstants())


class ChannelError(PxeStackError):
    """The main process did not answer, or answered with an error (ERROR 0 to the client)."""


class WorkerLink:
    """The worker's end of the channel: blocking, used from the reactor thread only.

    The main process only ever answers the worker's requests, so a request can wait for
    its answer with a plain blocking ``recv`` (bounded by :data:`CHANNEL_TIMEOUT`); an
    answer that arrives after its request timed out is recognised by its id and dropped.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = FrameDecoder()
        self._next_request = 0
        self.broken = False

    def send(self, frame: Frame) -> None:
        """Send *frame*; raises :class:`ChannelError` when the channel is gone."""
        if self.broken:
            raise ChannelError("the channel to the main process is closed")
        try:
            self.sock.sendall(encode_frame(frame))
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                self.broken = True
            raise ChannelError(f"cannot reach the main process: {exc}") from exc

    def request(self, kind: FrameKind, header: dict[str, Any]) -> Frame:
        """Send a request and wait for its answer."""
        self._next_request = (self._next_request % 0xFFFFFFFF) + 1
        request = self._next_request
        self.send(Frame(kind, request, header))
        deadline = time.monotonic() + CHANNEL_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelError("the main process did not answer in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(MAX_PAYLOAD + 4096)
            except TimeoutError:
                raise ChannelError("the main process did not answer in time") from None
            except OSError as exc:
                self.broken = True
                raise ChannelError(f"cannot reach the main process: {exc}") from exc
            finally:
                self.sock.settimeout(CHANNEL_TIMEOUT)
            if not data:
                self.broken = True
                raise ChannelError("the main process closed the channel")
            try:
                frames = self._decoder.feed(data)
            except MalformedPacket as exc:
                self.broken = True
                raise ChannelError(f"garbled answer from the main process: {exc}") from exc
            for frame in frames:
                if frame.request == request:
                    return frame


class EventSink(Protocol):
    """The worker's end of the event channel: counters, finished transfers and log
    events, written through the reactor so that a busy main process never blocks the
    worker (the transport buffers; the request channel stays blocking)."""

    def send(self, frame: Frame) -> None:
        """Queue *frame*; raises :class:`ChannelError` once the main process is gone."""
        if self.transport is None or not self.connected:
            raise ChannelError("the event channel to the main process is closed")
        self.transport.write(encode_frame(frame))


class ChannelReader:
    """A file the main process opened; read in chunks of :data:`READ_CHUNK`."""

    def __init__(self, link: WorkerLink, handle: int, size: int | None) -> None:
        self._link = link
        self._handle = handle
        self._size = size
        self._chunk = b""
        self._offset = 0
        self._eof = False
        self._closed = False

    def size(self) -> int | None:
        """The length the main process's reader reported."""
        return self._size

    def readinto(self, buffer: memoryview) -> int:
        """Fill *buffer* in order; short only at the end of the file."""
        filled = 0
        wanted = len(buffer)
        while filled < wanted:
            if self._offset >= len(self._chunk):
                if self._eof:
                    break
                answer = self._link.request(FrameKind.READ, {
                    "handle": self._handle,
                    "size": min(MAX_PAYLOAD, max(READ_CHUNK, wanted - filled)),
                })
                if answer.kind is not FrameKind.DATA:
                    raise ChannelError(str(answer.header.get("reason", "read failed")))
                self._chunk, self._offset = answer.payload, 0
                if not self._chunk:
                    self._eof = True
                    break
            count = min(wanted - filled, len(self._chunk) - self._offset)
            buffer[filled:filled + count] = self._chunk[self._offset:self._offset + count]
            filled += count
            self._offset += count
        return filled

    def close(self) -> None:
        """Tell the main process to release the file (no answer awaited)."""
        if self._closed:
            return
        self._closed = True
        # If the main process is gone or resetting, it closes the file itself.
        with contextlib.suppress(ChannelError):
            self._link.send(Frame(FrameKind.CLOSE, 0, {"handle": self._handle}))


class ChannelSource:
    """A :class:`~pxestack.tftp.source.FileSource` that asks the main process."""

    def __init__(self, link: WorkerLink) -> None:
        self._link = link

    def open(self, path: str, client: TftpClient) -> ChannelReader:
        """Ask the main process to open *path* for *client*."""
        answer = self._link.request(FrameKind.OPEN, {
            "path": path,
            "client": list(client.address),
            "server": list(client.server) if client.server is not None else None,
        })
        if answer.kind is FrameKind.OPENED:
            size = answer.header.get("size")
            return ChannelReader(self._link, int(answer.header["handle"]),
                                 int(size) if isinstance(size, int) else None)
        reason = str(answer.header.get("reason", "refused"))
        error = answer.header.get("error")
        if error == "not-found":
            raise PathNotFound(reason)
        if error == "refused":
            raise PathRefused(reason)
        raise ChannelError(reason)


def _json_safe(value: Any) -> Any:
    """*value* if it survives JSON as itself (tuples become lists), else ``None``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list) and len(value) <= 8:
        items = [_json_safe(item) for item in value]
        pairs = zip(items, value, strict=True)
        if all(item is not None or original is None for item, original in pairs):
            return items
    return None


@implementer(ILogObserver)
class ChannelLogObserver:
    """Sends every log event at or above *level* to the main process as a LOG frame.

    The text is formatted here (the main process cannot format events whose fields do
    not survive JSON); fields that do survive are sent along for JSON logs.  If the
    channel is gone, the line goes to stderr instead.
    """

    def __init__(self, link: EventSink, level: str, worker: int) -> None:
        self._link = link
        self._level = _LEVELS.get(level, LogLevel.info)
        self._worker = worker
        self._sending = False

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        if self._sending or level not in _ORDER or level < self._level:
            return
        if self._level > LogLevel.debug and is_twisted_chatter(event):
            return  # shown only at log_level: debug, as in the main process
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        fields = {}
        for key, value in event.items():
            if key.startswith("log_") or key in ("format", "level"):
                continue
            safe = _json_safe(value)
            if safe is not None:
                fields[key] = safe
        header = {"level": level.name, "namespace": str(event.get("log_namespace", "")),
                  "text": text[:16000], "fields": fields}
        self._sending = True
        try:
            self._link.send(Frame(FrameKind.LOG, 0, header))
        except (ChannelError, ValueError):
            print(f"[tftp worker {self._worker}] {text}", file=sys.stderr, flush=True)
        finally:
            self._sending = False


def transfer_record(stats: SessionStats) -> list[Any]:
    """A finished transfer as the list a STATS frame carries (see :func:`transfer_from`)."""
    return [stats.client[0], stats.client[1], stats.path, stats.outcome.value,
            stats.bytes_acked, stats.datagrams_sent, stats.retransmits, stats.blksize,
            stats.windowsize, stats.tsize, stats.started, stats.finished, stats.srtt,
            stats.error]


def tftp_config_from(data: dict[str, Any]) -> TftpConfig:
    """The :class:`TftpConfig` the main process validated and sent as JSON."""
    values = dict(data)
    values["listen"] = (str(values["listen"][0]), int(values["listen"][1]))
    values["root"] = Path(values["root"])
    if values.get("upload_dir") is not None:
        values["upload_dir"] = Path(values["upload_dir"])
    return TftpConfig(**values)


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the main process exits (Linux ``PR_SET_PDEATHSIG``), and exit at
    once if it is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:
        sys.exit(0)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line the pool builds (not meant for people)."""
    parser = argparse.ArgumentParser(prog="python -m pxestack.service.tftp_worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--settings", required=True, help="JSON from the pool")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve TFTP on the inherited socket until SIGTERM."""
    args = parse_arguments(argv)
    _die_with_parent(args.parent)
    settings = json.loads(args.settings)
    tftp = tftp_config_from(settings["tftp"])
    channel = socket.socket(fileno=args.channel_fd)
    channel.settimeout(CHANNEL_TIMEOUT)
    link = WorkerLink(channel)

    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    from pxestack.service.tftp import TftpService, session_settings
    from pxestack.tftp.protocol import TftpServer

    events = EventSink()
    events_socket = socket.socket(fileno=args.events_fd)
    events_socket.setblocking(False)
    reactor.adoptStreamConnection(events_socket.fileno(), socket.AF_UNIX,
                                  Factory.forProtocol(lambda: events))
    events_socket.close()  # adoptStreamConnection dup()s it
    globalLogBeginner.beginLoggingTo(
        [ChannelLogObserver(events, str(settings.get("log_level", "info")), args.index)],
        redirectStandardIO=False, discardBuffer=True)
    source: Any = (ChannelSource(link) if settings.get("remote_source")
                   else FilesystemSource(tftp.root, lowercase=tftp.lowercase))
    server = TftpServer(
        source,
        settings=session_settings(tftp),
        upload=UploadDirectory(tftp.upload_dir) if tftp.upload_dir is not None else None,
        single_port=tftp.single_port,
        per_client_limit=int(settings["per_client_limit"]),
        max_transfers=int(settings["max_transfers"]),
        transfer_host=tftp.listen[0],
    )
    finished: list[SessionStats] = []
    pending_push: list[Any] = []

    def transfer_finished(stats: SessionStats) -> None:
        # Finished transfers are boot steps on the dashboard: send them within a tenth of
        # a second (one frame for all that finish meanwhile), not at the next counter push.
        finished.append(stats)
        if not pending_push:
            pending_push.append(reactor.callLater(TRANSFER_PUSH_DELAY, push_stats))

    server.on_stats = transfer_finished
    tftp_service = TftpService(server, tftp.listen)
    tftp_service.adopt_fd = args.listen_fd

    def push_stats() -> None:
        for call in pending_push:
            if call.active():
                call.cancel()
        pending_push.clear()
        records = [transfer_record(stats) for stats in finished[:MAX_TRANSFERS_PER_PUSH]]
        finished.clear()
        # A failure means the main process is going away (PR_SET_PDEATHSIG ends us).
        with contextlib.suppress(ChannelError):
            events.send(Frame(FrameKind.STATS, 0, {"counters": server.stats.snapshot(),
                                                   "transfers": records}))

    def stop() -> Any:
        result = tftp_service.stopService()
        push_stats()
        return result

    tftp_service.privilegedStartService()
    tftp_service.startService()
    LoopingCall(push_stats).start(float(settings.get("stats_interval", 1.0)), now=False)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    try:
        events.send(Frame(FrameKind.READY, 0, {"pid": os.getpid(), "worker": args.index}))
    except ChannelError:
        return 1
    reactor.run()
    return 0


__all__ = [
    "ChannelError",
    "ChannelLogObserver",
    "ChannelReader",
    "ChannelSource",
    "EventSink",
    "WorkerLink",
    "main",
    "tftp_config_from",
    "transfer_record",
]

if __name__ == "__main__":
    sys.exit(main())
