"""Counters of the HTTP asset service: per asset, in total, and per connection outcome.

The counters are plain mutable objects updated on the reactor thread; a metrics exporter
reads them (``AssetStats.snapshot()``) or subscribes to one :class:`TransferRecord` per
finished or aborted transfer through :attr:`AssetStats.observers`, in the manner of
fbtftp's session-stats callback.  Nothing here imports Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class AssetCounters:
    """Counters for one asset (or the total over all assets)."""

    #: GET/HEAD requests that resolved to this file (including 304 and 416 answers).
    requests: int = 0
    #: Body transfers that sent their last byte.
    completed: int = 0
    #: Body transfers cut short: the client went away, stalled, or the server stopped.
    aborted: int = 0
    #: Body bytes handed to the kernel (headers not included).
    bytes_sent: int = 0
    #: Of ``bytes_sent``, the bytes that went through ``os.sendfile`` (zero-copy path).
    sendfile_bytes: int = 0
    #: Of ``bytes_sent``, the bytes that were read into memory and written (fallback path).
    copied_bytes: int = 0
    #: Answers 304 Not Modified.
    not_modified: int = 0
    #: Answers 206 Partial Content.
    partial: int = 0

    def copy(self) -> AssetCounters:
        """An independent copy (for snapshots)."""
        return AssetCounters(
            self.requests, self.completed, self.aborted, self.bytes_sent,
            self.sendfile_bytes, self.copied_bytes, self.not_modified, self.partial,
        )


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """What happened to one body transfer; handed to every observer when it ends."""

    #: The asset's path below the root, ``/``-separated (e.g. ``"coreos/vmlinuz"``).
    asset: str
    #: The client's IP address.
    client: str
    #: First byte offset and number of bytes the response promised.
    offset: int
    length: int
    #: Bytes actually handed to the kernel.
    sent: int
    #: ``"sendfile"`` or ``"copy"``.
    method: str
    #: ``"completed"``, ``"client-gone"``, ``"stalled"`` or ``"stopped"``.
    outcome: str
    #: Seconds from the first to the last byte (reactor clock).
    duration: float


@dataclass(slots=True)
class ConnectionCounters:
    """Counters of the connection gate in front of the site."""

    #: Connections accepted and handed to the HTTP parser.
    accepted: int = 0
    #: Connections answered 503 because the total cap was reached.
    refused_total: int = 0
    #: Connections answered 503 because the client's own cap was reached.
    refused_per_client: int = 0
    #: Connections currently open (accepted minus closed).
    open: int = 0
    #: Transfers aborted by the slow-client watchdog.
    stalled: int = 0
    #: Connections answered 408 because their request head did not arrive in time.
    head_timeouts: int = 0
    #: Head-pending connections closed to make room for a newer connection.
    evicted: int = 0
    #: Requests answered 413 because their body was over the resource's limit.
    bodies_refused: int = 0


@dataclass
class AssetStats:
    """All counters of one asset service.  Read them; do not write them."""

    totals: AssetCounters = field(default_factory=AssetCounters)
    per_asset: dict[str, AssetCounters] = field(default_factory=dict)
    connections: ConnectionCounters = field(default_factory=ConnectionCounters)
    #: Called with a :class:`TransferRecord` after each body transfer ends.  An observer
    #: that raises is removed (and logged by the caller); it must not break serving.
    observers: list[Callable[[TransferRecord], None]] = field(default_factory=list)

    def counters_for(self, asset: str) -> AssetCounters:
        """The counters of *asset*, created on first use.

        Only paths that resolved to a real file get an entry, so the mapping is bounded by
        the number of files under the root, not by what clients ask for.
        """
        counters = self.per_asset.get(asset)
        if counters is None:
            counters = self.per_asset[asset] = AssetCounters()
        return counters

    def snapshot(self) -> dict[str, AssetCounters]:
        """A copy of the per-asset counters plus ``"*"`` for the totals."""
        out = {name: counters.copy() for name, counters in self.per_asset.items()}
        out["*"] = self.totals.copy()
        return out


__all__ = ["AssetCounters", "AssetStats", "ConnectionCounters", "TransferRecord"]
