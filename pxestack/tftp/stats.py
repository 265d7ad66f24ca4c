"""Statistics of TFTP transfers: one value per finished transfer, counters per server.

This follows fbtftp's shape: the server hands a :class:`SessionStats` to a callback when a
transfer ends (whatever the outcome), and keeps :class:`ServerStats` counters that a
metrics exporter can read at any time.  Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum

from pxestack._types import Address


class Outcome(Enum):
    """How a transfer ended."""

    #: Every block was acknowledged.
    COMPLETE = "complete"
    #: The client sent an ERROR.  Normal for OVMF's and PXELINUX's size probe.
    ABORTED = "aborted"
    #: The client stopped answering: retransmissions ran out (RFC 1350 §2 time-out).
    TIMED_OUT = "timed-out"
    #: The overall transfer deadline passed (a requester that trickles).
    DEADLINE = "deadline"
    #: The request was refused or the file could not be read; an ERROR went to the client.
    FAILED = "failed"
    #: The server stopped the transfer (shutdown).
    CANCELLED = "cancelled"
    #: The server was full and ended this transfer, never acknowledged or stalled, to
    #: admit another (``pxestack.tftp.admission``); the client got no ERROR.
    EVICTED = "evicted"


@dataclass(frozen=True, slots=True)
class SessionStats:
    """What one transfer did; handed to the stats callback when it ends."""

    client: Address
    path: str
    outcome: Outcome
    #: Payload octets the client acknowledged (the file bytes delivered).
    bytes_acked: int
    #: Every DATA/OACK datagram sent, first transmissions and retransmissions.
    datagrams_sent: int
    #: DATA/OACK datagrams sent again after a time-out or an RFC 7440 window restart.
    retransmits: int
    blksize: int
    windowsize: int
    #: The size announced in the OACK (RFC 2349), if any.
    tsize: int | None
    started: float
    finished: float
    #: Smoothed round-trip time in seconds (RFC 6298 SRTT), when any sample was taken.
    srtt: float | None = None
    #: The client's or the server's error message, when the transfer did not complete.
    error: str = ""

    @property
    def duration(self) -> float:
        """Seconds from the request to the end of the transfer."""
        return self.finished - self.started


#: Receives one :class:`SessionStats` per finished transfer (fbtftp's session callback).
StatsCallback = Callable[[SessionStats], None]


@dataclass(slots=True)
class ServerStats:
    """Running counters of one TFTP server (mutable; read with :meth:`snapshot`)."""

    requests: int = 0
    refused: int = 0
    active: int = 0
    completed: int = 0
    aborted: int = 0
    failed: int = 0
    bytes_acked: int = 0
    retransmits: int = 0
    foreign_tid: int = 0
    malformed: int = 0
    over_limit: int = 0
    #: Transfers ended to admit another (never acknowledged or stalled).
    evicted: int = 0

    def record(self, stats: SessionStats) -> None:
        """Fold one finished transfer into the counters."""
        self.bytes_acked += stats.bytes_acked
        self.retransmits += stats.retransmits
        if stats.outcome is Outcome.COMPLETE:
            self.completed += 1
        elif stats.outcome is Outcome.ABORTED:
            self.aborted += 1
        elif stats.outcome is Outcome.EVICTED:
            self.evicted += 1
        else:
            self.failed += 1

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain mapping (for logs and metrics exporters)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


__all__ = ["Outcome", "ServerStats", "SessionStats", "StatsCallback"]
