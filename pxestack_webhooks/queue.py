"""The webhook delivery queue: one fsync'd file per pending delivery, one FIFO per URL.

A delivery is written to ``<state>/queue/<endpoint>/<seq>.json`` (temporary file, fsync,
rename, fsync of the directory) before anything is sent, and removed only once the receiver
answered 2xx, so a delivery outlives a restart or a crash.  Each endpoint sends its
deliveries in order, one at a time; a failure (no answer, a timeout, any status but 2xx) is
tried again after ``initial_delay * 2**(attempts-1)`` seconds, at most ``max_delay``, until
the delivery is ``retry_window`` seconds old: then it is dropped and logged.  At most
``max_queue`` deliveries wait in all; beyond that a new one is dropped, counted and logged.
Delivery is at least once: a receiver tells repeats apart by ``X-Pxestack-Delivery``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from pxestack.extensions import atomic_write, fsync_dir

log = Logger()

#: The header carrying the body's HMAC-SHA256 with the endpoint's secret.
SIGNATURE_HEADER = "X-Pxestack-Signature"
_NAME = re.compile(r"[0-9]{20}\.json")

#: ``post(url, body, headers) -> Deferred[int]``: the HTTP status, or a failure.
Post = Callable[[str, bytes, Mapping[str, str]], "defer.Deferred[int]"]


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Pxestack-Signature`` value: ``sha256=`` and the hex HMAC of *body*."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def write_durably(path: Path, data: bytes) -> None:
    """Write *path* so that a crash leaves the old file or the new one: temporary file
    (``.NAME...tmp``, removed by :meth:`EndpointQueue.load` if a crash left it), fsync,
    rename, fsync of the directory (pxestack's ``atomic_write``)."""
    atomic_write(path, data, mode=0o600)


@dataclass
class Delivery:
    """One pending POST."""

    path: Path
    id: str
    event: str
    created: float
    body: bytes
    attempts: int = 0

    def to_file(self) -> bytes:
        return json.dumps({"id": self.id, "event": self.event, "created": self.created,
                           "attempts": self.attempts,
                           "body": self.body.decode("utf-8")}).encode()

    @classmethod
    def from_file(cls, path: Path) -> Delivery:
        data = json.loads(path.read_bytes())
        return cls(path=path, id=str(data["id"]), event=str(data["event"]),
                   created=float(data["created"]), attempts=int(data["attempts"]),
                   body=str(data["body"]).encode("utf-8"))


@dataclass
class RetryPolicy:
    """How failed deliveries are tried again."""

    initial_delay: float = 1.0
    max_delay: float = 300.0
    retry_window: float = 86400.0
    timeout: float = 10.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the *attempts*-th failure."""
        return float(min(self.max_delay, self.initial_delay * 2 ** min(attempts - 1, 40)))


@dataclass
class Counts:
    """What became of deliveries (also exported as metrics by the extension)."""

    queued: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    expired: int = 0
    dropped_full: int = 0
    on_change: Callable[[str], None] | None = field(default=None, repr=False)

    def add(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)
        if self.on_change is not None:
            self.on_change(name)


class EndpointQueue:
    """The pending deliveries of one URL, sent in order (see the module documentation)."""

    def __init__(self, url: str, secret: bytes, directory: Path, post: Post, clock: Any,
                 policy: RetryPolicy, counts: Counts, capacity: Callable[[], bool]) -> None:
        self.url = url
        self.secret = secret
        self.directory = directory
        self.post = post
        self.clock = clock
        self.policy = policy
        self.counts = counts
        self._has_room = capacity
        self.pending: deque[Delivery] = deque()
        self._next_seq = 1
        self._timer: Any = None
        self._in_flight: defer.Deferred[int] | None = None
        self.running = False

    def load(self) -> None:
        """Read the deliveries a previous run left (oldest first); unreadable files are
        moved aside as ``*.bad`` and logged."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if not _NAME.fullmatch(path.name):
                continue
            try:
                delivery = Delivery.from_file(path)
            except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
                log.warn("webhooks: {path} cannot be read ({error}); moved aside",
                         path=str(path), error=str(exc))
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
                continue
            self.pending.append(delivery)
            self._next_seq = max(self._next_seq, int(path.stem) + 1)

    def add(self, delivery_id: str, event: str, body: bytes) -> bool:
        """Queue one delivery durably and send it when its turn comes; False when the
        queue is full (the delivery is dropped)."""
        if not self._has_room():
            self.counts.add("dropped_full")
            log.warn("webhooks: the queue is full; a {event} delivery to {url} is dropped",
                     event=event, url=self.url)
            return False
        path = self.directory / f"{self._next_seq:020d}.json"
        self._next_seq += 1
        delivery = Delivery(path, delivery_id, event, self.clock.seconds(), body)
        write_durably(path, delivery.to_file())
        self.pending.append(delivery)
        self.counts.add("queued")
        if self.running and self._in_flight is None and self._timer is None:
            self._send()
        return True

    def start(self) -> None:
        self.running = True
        if self.pending and self._in_flight is None and self._timer is None:
            self._send()

    def stop(self) -> None:
        """Stop sending; what is pending stays on disk for the next start."""
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.cancel()

    def _send(self) -> None:
        self._timer = None
        while self.running and self.pending:
            delivery = self.pending[0]
            if self.clock.seconds() - delivery.created <= self.policy.retry_window:
                break
            self.pending.popleft()
            self.counts.add("expired")
            log.warn("webhooks: a {event} delivery to {url} is dropped: not accepted within "
                     "the retry window ({attempts} attempts)", event=delivery.event,
                     url=self.url, attempts=delivery.attempts)
            self._remove(delivery)
        if not self.running or not self.pending:
            return
        delivery = self.pending[0]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "pxestack-webhooks",
            "X-Pxestack-Event": delivery.event,
            "X-Pxestack-Delivery": delivery.id,
            SIGNATURE_HEADER: signature(self.secret, delivery.body),
        }
        try:
            sent = self.post(self.url, delivery.body, headers)
            sent.addTimeout(self.policy.timeout, self.clock)
        except Exception as exc:
            self._failed(delivery, str(exc))
            return
        self._in_flight = sent
        sent.addCallbacks(lambda status: self._answered(delivery, status, sent),
                          lambda failure: self._errored(delivery, failure, sent))

    def _answered(self, delivery: Delivery, status: int, sent: Any) -> None:
        if self._in_flight is not sent:
            return
        self._in_flight = None
        if 200 <= status < 300:
            self.pending.popleft()
            self.counts.add("delivered")
            self._remove(delivery)
            # The next one from the reactor, not from this call (no deep recursion).
            self._timer = self.clock.callLater(0, self._send)
        else:
            self._failed(delivery, f"HTTP {status}")

    def _errored(self, delivery: Delivery, failure: Any, sent: Any) -> None:
        if self._in_flight is not sent:
            return None  # cancelled by stop()
        self._in_flight = None
        self._failed(delivery, failure.getErrorMessage())
        return None

    def _failed(self, delivery: Delivery, why: str) -> None:
        delivery.attempts += 1
        self.counts.add("failed_attempts")
        delay = self.policy.delay(delivery.attempts)
        log.info("webhooks: {event} delivery to {url} failed ({why}); attempt {n}, next in "
                 "{delay:.1f} s", event=delivery.event, url=self.url, why=why,
                 n=delivery.attempts, delay=delay)
        try:
            write_durably(delivery.path, delivery.to_file())
        except OSError as exc:
            log.warn("webhooks: cannot update {path}: {error}", path=str(delivery.path),
                     error=str(exc))
        if self.running:
            self._timer = self.clock.callLater(delay, self._send)

    def _remove(self, delivery: Delivery) -> None:
        try:
            delivery.path.unlink()
            fsync_dir(self.directory)
        except OSError as exc:
            log.warn("webhooks: cannot remove {path}: {error}", path=str(delivery.path),
                     error=str(exc))


__all__ = ["SIGNATURE_HEADER", "Counts", "Delivery", "EndpointQueue", "RetryPolicy",
           "signature", "write_durably"]
