"""TFTP on every CPU: worker processes sharing the request port (``tftp.workers > 1``).

:class:`TftpWorkerPool` is the TFTP service of the main process when ``tftp.workers`` is
more than 1.  It does not serve TFTP itself; it

* binds one UDP socket per worker to the TFTP port with ``SO_REUSEPORT``, all of them
  before any worker serves, while still privileged (port 69), and keeps them: a worker
  that dies leaves its socket in the port's group, so requests the kernel hashes to it
  wait in its buffer instead of being lost, and its replacement serves the same socket;
* starts each worker (``python -m pxestack.service.tftp_worker``, the same interpreter)
  with its socket and two Unix stream sockets (frames of :mod:`pxestack.tftp.channel`):
  one for the worker's source requests, one for its events; a transfer stays on the
  worker that accepted its RRQ, whose transfer sockets are its own;
* restarts a worker that exits while the pool runs, after a growing delay
  (:class:`RestartBackoff`); the clients of its transfers time out and resend their
  request, which a live or the restarted worker serves;
* answers the workers' source requests from the main process's
  :class:`~pxestack.tftp.source.FileSource` when the service has a dynamic one (see
  ``docs/tftp.md``, "Worker processes", for why it runs here);
* folds the workers' counters and finished transfers into one
  :class:`~pxestack.tftp.stats.ServerStats`-shaped view and ``on_stats`` callback (what
  :meth:`pxestack.metrics.Metrics.attach_tftp_server` reads), and re-emits their log events
  in the main process's log with a ``worker`` field;
* on stop, sends SIGTERM to each worker by its PID and waits for every one to exit
  (SIGKILL after :data:`STOP_TIMEOUT`).

Limits: ``max_transfers`` is split over the workers and ``per_client_limit`` becomes
``ceil(per_client_limit / workers)`` in each (see :func:`split_limits`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from pxestack.config import Config
from pxestack.config.tftp import TftpConfig
from pxestack.errors import ApiMisuse, MalformedPacket
from pxestack.paths import PathNotFound, PathRefused
from pxestack.tftp.channel import MAX_PAYLOAD, Frame, FrameDecoder, FrameKind, encode_frame
from pxestack.tftp.source import FileSource, Reader, TftpClient
from pxestack.tftp.stats import Outcome, ServerStats, SessionStats, StatsCallback

log = Logger()

#: Seconds between a worker's pushes of its counters to the main process.
STATS_INTERVAL = 1.0
#: Seconds the pool waits for its workers to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0
#: Open dynamic files one worker may hold in the main process.
MAX_HANDLES_PER_WORKER = 4096


def split_limits(max_transfers: int, per_client_limit: int, workers: int,
                 index: int) -> tuple[int, int]:
    """The ``(max_transfers, per_client_limit)`` worker *index* of *workers* enforces.

    ``max_transfers`` is divided (the remainder to the first workers, at least 1 each),
    so the workers together never hold more.  The kernel spreads one source's requests
    over the workers by its source port, so each worker holds a source to
    ``ceil(per_client_limit / workers)``: about ``per_client_limit`` in total, up to
    ``workers - 1`` more when the division is not exact, and a source whose ports hash
    unevenly may be refused by one worker while another has room.  The fair share of a
    full server is computed per worker over that worker's slots.
    """
    if workers < 1 or not 0 <= index < workers:
        raise ApiMisuse("worker index out of range")
    share = max(1, max_transfers // workers + (1 if index < max_transfers % workers else 0))
    return share, max(1, math.ceil(per_client_limit / workers))


class RestartBackoff:
    """The delay before a dead worker is started again.

    The first restart waits *initial* seconds; each further one, while the worker keeps
    dying within *stable* seconds of its start, waits *factor* times longer, up to
    *maximum*.  A worker that ran for *stable* seconds starts the sequence again.
    """

    def __init__(self, initial: float = 0.5, factor: float = 2.0, maximum: float = 30.0,
                 stable: float = 10.0) -> None:
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.stable = stable
        self._next = initial

    def delay(self, started: float, ended: float) -> float:
        """The delay after a worker started at *started* ended at *ended*."""
        if ended - started >= self.stable:
            self._next = self.initial
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay


class AggregateStats:
    """The counters of every worker as one ``ServerStats``-shaped view (read-only).

    ``snapshot()`` sums the workers' last reports and those of workers that ended (so
    the counters never go back after a restart); ``active`` sums the live ones.
    """

    def __init__(self) -> None:
        self._retired = ServerStats().snapshot()
        self._live: dict[int, dict[str, int]] = {}

    def report(self, worker: int, counters: dict[str, Any]) -> None:
        """Worker *worker*'s latest counters."""
        known = self._retired.keys()
        self._live[worker] = {key: int(value) for key, value in counters.items()
                              if key in known and isinstance(value, int)}

    def retire(self, worker: int) -> None:
        """Worker *worker* ended: keep its totals, drop its active transfers."""
        counters = self._live.pop(worker, None)
        if counters is None:
            return
        for key, value in counters.items():
            if key != "active":
                self._retired[key] += value

    def snapshot(self) -> dict[str, int]:
        """The summed counters."""
        total = dict(self._retired)
        for counters in self._live.values():
            for key, value in counters.items():
                total[key] += value
        return total

    @property
    def active(self) -> int:
        """Transfers running now, over every live worker."""
        return sum(counters.get("active", 0) for counters in self._live.values())


def transfer_from(record: list[Any]) -> SessionStats:
    """A finished transfer from a STATS frame (the worker's ``transfer_record``)."""
    (host, port, path, outcome, acked, sent, retransmits, blksize, windowsize, tsize,
     started, finished, srtt, error) = record
    return SessionStats(
        client=(str(host), int(port)), path=str(path), outcome=Outcome(outcome),
        bytes_acked=int(acked), datagrams_sent=int(sent), retransmits=int(retransmits),
        blksize=int(blksize), windowsize=int(windowsize),
        tsize=int(tsize) if tsize is not None else None, started=float(started),
        finished=float(finished), srtt=float(srtt) if srtt is not None else None,
        error=str(error))


class _Channel(Protocol):
    """The main process's end of one worker's channel."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.decoder = FrameDecoder()
        self.readers: dict[int, Reader] = {}
        self._next_handle = 0

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except MalformedPacket as exc:
            log.error("tftp worker {worker}: dropped its garbled channel: {error}",
                      worker=self.worker.index, error=str(exc))
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for frame in frames:
            try:
                self.worker.pool.frame(self, frame)
            except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
                log.warn("tftp worker {worker}: dropped a malformed {kind} frame: {error}",
                         worker=self.worker.index, kind=frame.kind.name, error=repr(exc))

    def send(self, frame: Frame) -> None:
        if self.transport is not None:
            self.transport.write(encode_frame(frame))

    def open_reader(self, reader: Reader) -> int | None:
        if len(self.readers) >= MAX_HANDLES_PER_WORKER:
            return None
        self._next_handle += 1
        self.readers[self._next_handle] = reader
        return self._next_handle

    def close_reader(self, handle: int) -> None:
        reader = self.readers.pop(handle, None)
        if reader is not None:
            try:
                reader.close()
            except Exception:
                log.failure("closing a TFTP source reader failed")

    def connectionLost(self, reason: Failure | None = None) -> None:
        for handle in list(self.readers):
            self.close_reader(handle)


class _WorkerProcess(ProcessProtocol):
    def __init__(self, worker: _Worker) -> None:
        self.worker = worker

    def processEnded(self, reason: Failure) -> None:
        self.worker.pool.exited(self.worker, reason)


@dataclasses.dataclass(eq=False)
class _Worker:
    """One worker slot: its listening socket (kept across restarts) and current process."""

    pool: TftpWorkerPool
    index: int
    listen: socket.socket | None = None
    process: Any = None
    pid: int | None = None
    #: The source-request channel and the event channel of the current process.
    channel: _Channel | None = None
    events: _Channel | None = None
    started: float = 0.0
    restart: IDelayedCall | None = None
    backoff: RestartBackoff = dataclasses.field(default_factory=RestartBackoff)


class TftpWorkerPool(service.Service):
    """The ``tftp`` service when ``tftp.workers > 1`` (module doc).

    :ivar stats: the workers' counters summed (``snapshot()``, ``active``).
    :ivar on_stats: called with a :class:`SessionStats` per transfer a worker finished
        (at most :data:`STATS_INTERVAL` late).
    """

    def __init__(self, config: Config, *, source: FileSource | None = None,
                 reactor: Any = None, stats_interval: float = STATS_INTERVAL) -> None:
        if config.tftp is None:
            raise ApiMisuse("TftpWorkerPool needs a config with a tftp section")
        self.tftp: TftpConfig = config.tftp
        self.log_level = config.log_level
        #: The main process's dynamic source, asked over the channel; ``None``: the
        #: workers read the configured root themselves.
        self.source = source
        self._reactor = reactor
        self.stats_interval = stats_interval
        self.stats = AggregateStats()
        self.on_stats: StatsCallback | None = None
        self.workers = [_Worker(self, index) for index in range(self.tftp.workers)]
        self.stopping = False
        self._stopped: defer.Deferred[None] | None = None
        self._kill: IDelayedCall | None = None
        #: Called with (worker index, pid) when a worker reports it serves (tests).
        self.on_ready: Callable[[int, int], None] | None = None
        self.setName("tftp")

    @property
    def reactor(self) -> Any:
        """The reactor that runs the pool."""
        if self._reactor is None:
            from twisted.internet import reactor

            return reactor
        return self._reactor

    @property
    def pids(self) -> list[int]:
        """PIDs of the running workers."""
        return [worker.pid for worker in self.workers if worker.pid is not None]

    # ---------------------------------------------------------------- lifecycle

    def privilegedStartService(self) -> None:
        """Bind every worker's socket (as root, for port 69) and make room for the
        descriptors the workers' connected transfers need (inherited limits)."""
        if self.workers[0].listen is None:
            from pxestack.service.tftp import ensure_transfer_descriptors

            host, port = self.tftp.listen
            bound: list[socket.socket] = []
            try:
                for worker in self.workers:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    bound.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    sock.bind((host, port))
                    if port == 0:  # tests: every worker on the port the first one got
                        port = sock.getsockname()[1]
                    sock.setblocking(False)
                    worker.listen = sock
            except BaseException:
                for sock in bound:
                    sock.close()
                for worker in self.workers:
                    worker.listen = None
                raise
            share, _ = split_limits(self.tftp.max_transfers, self.tftp.per_client_limit,
                                    len(self.workers), 0)
            ensure_transfer_descriptors(share)
        service.Service.privilegedStartService(self)

    @property
    def port(self) -> int:
        """The UDP port the workers share."""
        listen = self.workers[0].listen
        return listen.getsockname()[1] if listen is not None else self.tftp.listen[1]

    def startService(self) -> None:
        """Start every worker (binding first if ``privilegedStartService`` was skipped)."""
        if self.workers[0].listen is None:
            self.privilegedStartService()
        service.Service.startService(self)
        self.stopping = False
        for worker in self.workers:
            self.spawn(worker)
        log.info("tftp: {count} worker processes on udp {host}:{port}",
                 count=len(self.workers), host=self.tftp.listen[0], port=self.port)

    def stopService(self) -> defer.Deferred[None]:
        """SIGTERM every worker by PID; fires once every one has exited."""
        service.Service.stopService(self)
        self.stopping = True
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
        self._stopped = defer.Deferred()
        if not self.pids:
            self._finish_stop()
            return self._stopped
        for worker in self.workers:
            self._signal(worker, "TERM")
        self._kill = self.reactor.callLater(STOP_TIMEOUT, self._kill_stragglers)
        return self._stopped

    def _signal(self, worker: _Worker, name: str) -> None:
        """Send signal *name* (``"TERM"``, ``"KILL"``) to the worker's process, by PID."""
        if worker.process is None:
            return
        with contextlib.suppress(ProcessExitedAlready, OSError):
            worker.process.signalProcess(name)

    def _kill_stragglers(self) -> None:
        self._kill = None
        for worker in self.workers:
            if worker.pid is not None:
                log.warn("tftp worker {worker} (pid {pid}) ignored SIGTERM; killing it",
                         worker=worker.index, pid=worker.pid)
                self._signal(worker, "KILL")

    def _finish_stop(self) -> None:
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        for worker in self.workers:
            if worker.listen is not None:
                worker.listen.close()
                worker.listen = None
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)

    # ---------------------------------------------------------------- processes

    def worker_settings(self, worker: _Worker) -> dict[str, Any]:
        """What worker *worker* is told on its command line."""
        share, per_client = split_limits(self.tftp.max_transfers, self.tftp.per_client_limit,
                                         len(self.workers), worker.index)
        tftp = dataclasses.asdict(self.tftp)
        tftp["root"] = str(self.tftp.root)
        tftp["upload_dir"] = (str(self.tftp.upload_dir)
                              if self.tftp.upload_dir is not None else None)
        return {"tftp": tftp, "max_transfers": share, "per_client_limit": per_client,
                "remote_source": self.source is not None, "log_level": self.log_level,
                "stats_interval": self.stats_interval}

    def spawn(self, worker: _Worker) -> None:
        """Start worker *worker*'s process on its socket, with a fresh channel."""
        worker.restart = None
        if worker.listen is None or self.stopping:
            return
        pairs: list[tuple[socket.socket, socket.socket]] = []
        try:
            for _ in range(2):  # source requests, then events
                pairs.append(socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
        except OSError as exc:
            for pair in pairs:
                for end in pair:
                    end.close()
            self._retry(worker, f"cannot open its channel: {exc}")
            return
        channel, events = _Channel(worker), _Channel(worker)
        try:
            for protocol, (mine, _) in zip((channel, events), pairs, strict=True):
                self.reactor.adoptStreamConnection(
                    mine.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda p=protocol: p))
            argv = [sys.executable, "-m", "pxestack.service.tftp_worker",
                    "--index", str(worker.index), "--parent", str(os.getpid()),
                    "--listen-fd", "3", "--channel-fd", "4", "--events-fd", "5",
                    "--settings", json.dumps(self.worker_settings(worker))]
            worker.process = self.reactor.spawnProcess(
                _WorkerProcess(worker), sys.executable, argv, env=os.environ.copy(),
                childFDs={0: "w", 1: 1, 2: 2, 3: worker.listen.fileno(),
                          4: pairs[0][1].fileno(), 5: pairs[1][1].fileno()})
        except OSError as exc:
            for protocol in (channel, events):
                if protocol.transport is not None:
                    protocol.transport.loseConnection()
            self._retry(worker, f"cannot start: {exc}")
            return
        finally:
            for pair in pairs:  # adoptStreamConnection dup()s ours; the child has its own
                for end in pair:
                    end.close()
        worker.events = events
        worker.channel = channel
        worker.pid = worker.process.pid
        worker.started = self.reactor.seconds()
        with contextlib.suppress(OSError):
            worker.process.closeStdin()

    def exited(self, worker: _Worker, reason: Failure) -> None:
        """Worker *worker*'s process ended: restart it, or finish stopping."""
        pid, worker.pid, worker.process = worker.pid, None, None
        self.stats.retire(worker.index)
        for channel in (worker.channel, worker.events):
            if channel is not None and channel.transport is not None:
                channel.transport.loseConnection()
        worker.channel = worker.events = None
        if self.stopping:
            if not self.pids:
                self._finish_stop()
            return
        self._retry(worker, f"(pid {pid}) exited ({reason.getErrorMessage()})")

    def _retry(self, worker: _Worker, what: str) -> None:
        """Start worker *worker* again after its back-off delay."""
        delay = worker.backoff.delay(worker.started, self.reactor.seconds())
        log.warn("tftp worker {worker} {what}; restarting it in {delay}s",
                 worker=worker.index, what=what, delay=delay)
        worker.restart = self.reactor.callLater(delay, self.spawn, worker)

    # ---------------------------------------------------------------- channel

    def frame(self, channel: _Channel, frame: Frame) -> None:
        """Handle one frame from a worker."""
        kind = frame.kind
        if kind is FrameKind.LOG:
            self._log(channel.worker, frame.header)
        elif kind is FrameKind.STATS:
            self._stats(channel.worker, frame.header)
        elif kind is FrameKind.OPEN:
            channel.send(self._open(channel, frame))
        elif kind is FrameKind.READ:
            channel.send(self._read(channel, frame))
        elif kind is FrameKind.CLOSE:
            channel.close_reader(int(frame.header["handle"]))
        elif kind is FrameKind.READY:
            pid = int(frame.header.get("pid", 0))
            log.info("tftp worker {worker} serving (pid {pid})", worker=channel.worker.index,
                     pid=pid)
            if self.on_ready is not None:
                self.on_ready(channel.worker.index, pid)
        else:
            log.warn("tftp worker {worker}: unexpected {kind} frame dropped",
                     worker=channel.worker.index, kind=kind.name)

    def _log(self, worker: _Worker, header: dict[str, Any]) -> None:
        try:
            level = LogLevel.levelWithName(str(header.get("level", "info")))
        except Exception:
            level = LogLevel.info
        fields = header.get("fields")
        fields = dict(fields) if isinstance(fields, dict) else {}
        fields.pop("worker", None)
        fields.pop("worker_text", None)
        Logger(namespace=str(header.get("namespace") or "pxestack.tftp")).emit(
            level, "[tftp worker {worker}] {worker_text}", **fields,
            worker=worker.index, worker_text=str(header.get("text", "")))

    def _stats(self, worker: _Worker, header: dict[str, Any]) -> None:
        counters = header.get("counters")
        if isinstance(counters, dict):
            self.stats.report(worker.index, counters)
        callback = self.on_stats
        records = header.get("transfers")
        if callback is None or not isinstance(records, list):
            return
        for record in records:
            try:
                stats = transfer_from(record)
            except (TypeError, ValueError):
                log.warn("tftp worker {worker}: dropped a malformed transfer record",
                         worker=worker.index)
                continue
            try:
                callback(stats)
            except Exception:
                log.failure("TFTP stats callback failed")

    def _open(self, channel: _Channel, frame: Frame) -> Frame:
        header = frame.header
        if self.source is None:
            return Frame(FrameKind.FAILED, frame.request,
                         {"error": "error", "reason": "no dynamic source in the main process"})
        address = header["client"]
        server = header.get("server")
        client = TftpClient((str(address[0]), int(address[1])),
                            (str(server[0]), int(server[1])) if server else None)
        try:
            reader = self.source.open(str(header["path"]), client)
        except PathNotFound as exc:
            return Frame(FrameKind.FAILED, frame.request,
                         {"error": "not-found", "reason": exc.reason})
        except PathRefused as exc:
            return Frame(FrameKind.FAILED, frame.request,
                         {"error": "refused", "reason": exc.reason})
        except Exception as exc:
            log.failure("TFTP source failed to open {path!r} for {client}",
                        path=header["path"], client=client.address)
            return Frame(FrameKind.FAILED, frame.request, {"error": "error",
                                                           "reason": repr(exc)})
        handle = channel.open_reader(reader)
        if handle is None:
            reader.close()
            return Frame(FrameKind.FAILED, frame.request,
                         {"error": "error", "reason": "too many open files in the worker"})
        try:
            size = reader.size()
        except Exception:
            size = None
        return Frame(FrameKind.OPENED, frame.request, {"handle": handle, "size": size})

    def _read(self, channel: _Channel, frame: Frame) -> Frame:
        handle = int(frame.header["handle"])
        reader = channel.readers.get(handle)
        if reader is None:
            return Frame(FrameKind.FAILED, frame.request,
                         {"error": "error", "reason": "unknown handle"})
        size = max(0, min(MAX_PAYLOAD, int(frame.header["size"])))
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        try:
            while filled < size:
                count = reader.readinto(view[filled:]) or 0
                if count <= 0:
                    break
                filled += count
        except Exception as exc:
            log.failure("TFTP source reader failed")
            channel.close_reader(handle)
            return Frame(FrameKind.FAILED, frame.request, {"error": "error",
                                                           "reason": repr(exc)})
        return Frame(FrameKind.DATA, frame.request, {}, bytes(view[:filled]))


__all__ = [
    "STATS_INTERVAL",
    "STOP_TIMEOUT",
    "AggregateStats",
    "RestartBackoff",
    "TftpWorkerPool",
    "split_limits",
    "transfer_from",
]
