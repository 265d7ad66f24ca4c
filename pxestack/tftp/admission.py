"""Admission of new TFTP transfers: who gets a slot, and who loses one (sans-IO).

A flood of requests from new source ports must not starve the real machines on the
segment.  One rule decides every request, here and nowhere else; the Twisted adapter
only applies the :class:`Decision` (end the named transfer, start the new one, answer or
drop).  The rule, in the order it is applied (``docs/tftp.md`` states it for operators):

1. **Each source address has a limit**: ``per_client_limit`` while there is a free slot,
   and its *fair share* while the server is full: ``max_transfers`` divided by the number
   of source addresses holding slots (the requester counted), at least 1.
2. **A source at its limit competes only with itself.**  Its oldest transfer that is
   *evictable* (never acknowledged, or stalled) is ended and the new one takes its place:
   a firmware that retries its request from a new port replaces its own dead attempt.
   If it has nothing evictable, the request is refused; with an ERROR when the source is
   at the hard ``per_client_limit`` (no boot ROM runs that many transfers), silently when
   it is only at its fair share (the firmware resends, and is served once slots free).
3. **A source under its limit, on a full server,** takes the slot of the oldest
   evictable transfer of the source holding the most slots (only sources holding more
   than the requester are asked to give one up).  If there is none, the request is
   dropped silently, as before: every slot carries a healthy transfer.

A transfer is *evictable* when its client never acknowledged anything (its address may be
spoofed, and such a transfer only ever sends its first window and two resends) or when
it is *stalled* (two consecutive time-outs without an ACK).  Acknowledged, progressing
transfers are never ended to admit someone else.

Everything here runs per request, never per DATA or ACK: finding a victim walks the
source addresses (at most ``max_transfers``) and, within one, its transfers oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pxestack._types import Address, Now
from pxestack.errors import ApiMisuse

#: Seconds between two info-level refusal lines for one source address (the rest go to
#: debug), so a flood cannot flood the log.
REFUSAL_LOG_INTERVAL = 10.0
#: Source addresses remembered for that throttle before the memory is cleared.
MAX_LOG_MEMORY = 4096


class Evictable(Protocol):
    """What admission needs to know of a running transfer (its session provides it)."""

    @property
    def evictable(self) -> bool:
        """Never acknowledged by the client, or stalled."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request."""

    #: Start the transfer.
    admit: bool
    #: End this transfer (silently) first: the new one takes its slot.
    evict: Address | None = None
    #: Why a request was refused or a transfer evicted (for the log).
    reason: str = ""
    #: A refused request gets an ERROR (``True``) or no answer (``False``).
    answer: bool = False
    #: Log the refusal at info level (``False``: debug, the source was logged recently).
    log: bool = False


ADMIT = Decision(True)


class Admission:
    """Slots of a TFTP server, per source address, and the admission rule (module doc)."""

    def __init__(self, max_transfers: int, per_client_limit: int) -> None:
        if max_transfers < 1 or per_client_limit < 1:
            raise ApiMisuse("max_transfers and per_client_limit must be at least 1")
        self.max_transfers = max_transfers
        self.per_client_limit = per_client_limit
        #: Per source address: its transfers by client address, oldest first.
        self._hosts: dict[str, dict[Address, Evictable]] = {}
        self._count = 0
        self._logged: dict[str, float] = {}

    def __len__(self) -> int:
        return self._count

    def held(self, host: str) -> int:
        """Slots the source address *host* holds."""
        mine = self._hosts.get(host)
        return len(mine) if mine else 0

    def limit(self, host: str) -> int:
        """The most slots *host* may hold right now (rule 1)."""
        if self._count < self.max_transfers:
            return self.per_client_limit
        holders = len(self._hosts) + (0 if host in self._hosts else 1)
        return max(1, min(self.per_client_limit, self.max_transfers // holders))

    def add(self, client: Address, transfer: Evictable) -> None:
        """A transfer for *client* started (after an admitting :class:`Decision`)."""
        mine = self._hosts.get(client[0])
        if mine is None:
            mine = self._hosts[client[0]] = {}
        if client not in mine:
            self._count += 1
        mine[client] = transfer

    def remove(self, client: Address) -> None:
        """The transfer for *client* ended (whatever the reason)."""
        mine = self._hosts.get(client[0])
        if mine is None or client not in mine:
            return
        del mine[client]
        self._count -= 1
        if not mine:
            del self._hosts[client[0]]

    def decide(self, client: Address, now: Now) -> Decision:
        """Admit, admit in place of another transfer, or refuse *client*'s request."""
        host = client[0]
        mine = self._hosts.get(host)
        held = len(mine) if mine else 0
        if held < self.per_client_limit and self._count < self.max_transfers:
            return ADMIT
        if held >= self.limit(host):
            victim = _oldest_evictable(mine) if mine else None
            if victim is not None:
                return Decision(True, victim, "replaced by a newer request of its source")
            hard = held >= self.per_client_limit
            return self._refuse(
                host, now,
                "per-client transfer limit" if hard else "fair share of a full server",
                answer=hard)
        victim = self._victim(held)
        if victim is not None:
            return Decision(True, victim, "evicted for a source holding fewer transfers")
        victim = _oldest_evictable(mine) if mine else None
        if victim is not None:
            return Decision(True, victim, "replaced by a newer request of its source")
        return self._refuse(host, now, "server transfer limit", answer=False)

    def _victim(self, held: int) -> Address | None:
        """The oldest evictable transfer of the source holding the most slots (> *held*)."""
        best: Address | None = None
        best_count = held
        for transfers in self._hosts.values():
            count = len(transfers)
            if count <= best_count:
                continue
            victim = _oldest_evictable(transfers)
            if victim is not None:
                best, best_count = victim, count
        return best

    def _refuse(self, host: str, now: Now, reason: str, *, answer: bool) -> Decision:
        last = self._logged.get(host)
        log = last is None or now - last >= REFUSAL_LOG_INTERVAL
        if log:
            if len(self._logged) >= MAX_LOG_MEMORY:
                self._logged.clear()
            self._logged[host] = now
        return Decision(False, None, reason, answer, log)


def _oldest_evictable(transfers: dict[Address, Evictable]) -> Address | None:
    for client, transfer in transfers.items():
        if transfer.evictable:
            return client
    return None


__all__ = ["ADMIT", "REFUSAL_LOG_INTERVAL", "Admission", "Decision", "Evictable"]
