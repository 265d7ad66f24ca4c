"""Admission of new machines during a boot storm: whom to offer now, whom to let wait (sans-IO).

When thousands of machines power on at once, a server that answers every one of them
serves each a little and most of them too late: firmware times out in the middle of its
TFTP download, starts over, and the storm collapses into retries.  A server that admits
only as many machines as its later stages can carry keeps its goodput at capacity and
lets the late arrivals queue, which the firmware does by itself: a PXE ROM that gets no
OFFER sends its DISCOVER again (after 4, 8, 16 and 32 seconds) and then, on servers set to
retry their boot order, starts the whole network boot over.

The DHCP server asks :meth:`BootAdmission.admit` for every DISCOVER it is about to answer
with an OFFER, and answers only when it says yes.  The rule (``docs/dhcp.md`` states it
for operators):

1. Only a machine's **first step** is ever held back: a DISCOVER from a PXE ROM or a UEFI
   HTTP Boot client whose MAC holds no admission.  iPXE's DISCOVER (the second DHCP of a
   machine that already loaded iPXE), every REQUEST, and everything a plain OS client
   sends are always answered.  A machine in progress is never dropped.
2. An admitted machine holds its admission (by MAC) for :data:`ADMISSION_MEMORY` seconds:
   its retransmitted DISCOVERs, a reboot and any later DHCP are answered without asking.
3. A machine admitted at its first step counts as **starting** until a DISCOVER of a later
   phase is seen from it (iPXE's, or where the loader is GRUB or PXELINUX the booted
   kernel's: its TFTP download is over) or ``start_timeout`` seconds pass.  A new machine is
   admitted while fewer than ``max_starting`` machines are starting and the event loop's
   lag (:meth:`observe_lag`, fed by the service) is below ``max_loop_lag`` and the work
   the layers above have accepted and not finished (:meth:`observe_backlog`: provisioning
   jobs, each an HTTP request of a machine in its later phases) is below ``max_backlog``:
   the first bounds the TFTP stage, the other two what the main process and its
   provisioning threads do (HTTP, enrolment, the git audit).  Otherwise its DISCOVER gets
   no answer now: it **waits**.
4. Waiting machines are served in the order they first asked.  A PXE ROM listens for an
   OFFER the whole time between two DISCOVERs (4, 8, 16 and 32 s), so a waiting machine
   need not ask again to get its turn: :meth:`release`, called periodically, hands out
   the room that has freed to the oldest waiting machines that are still listening, and
   the service answers their last DISCOVER then.  A machine counts as listening until
   90 % of its expected next retransmission: 4 s after its first DISCOVER, then twice the
   last gap between two.  While anyone waits, a new machine joins the end of the queue.
5. So a machine's later phases always come before another machine's first phase: they
   are never deferred and they are what frees the starting slots.

Memory is bounded: at most :data:`MAX_ADMITTED` admissions and :data:`MAX_WAITING`
waiting machines are remembered (the oldest are forgotten first).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from pxestack._types import Now
from pxestack.dhcp.client import Firmware
from pxestack.errors import ApiMisuse

#: Seconds a machine keeps its admission after it was last seen.
ADMISSION_MEMORY: Final = 3600.0
#: Most admissions remembered (least recently seen forgotten first).
MAX_ADMITTED: Final = 100_000
#: Most waiting (deferred) machines remembered, for their waiting time in the log.
MAX_WAITING: Final = 100_000
#: Weight of a new lag sample in the smoothed lag (exponential moving average).
LAG_SMOOTHING: Final = 0.3
#: A PXE ROM's first DISCOVER timer (seconds): how long any of them listens after one send.
FIRST_LISTEN: Final = 4.0
#: The longest a PXE ROM listens after one DISCOVER (its last timer, seconds).
LONGEST_LISTEN: Final = 32.0
#: Share of the expected listening time in which a late OFFER is still sent.
LISTEN_MARGIN: Final = 0.9
#: Seconds after its last DISCOVER a waiting machine is forgotten (it went elsewhere).
WAITING_MEMORY: Final = 120.0
#: Waiting entries :meth:`BootAdmission.release` looks at per call, at most.
RELEASE_SCAN: Final = 1024

#: Firmware whose DISCOVER is a machine's first step (rule 1).
FIRST_STEP_FIRMWARE: Final = frozenset({Firmware.PXE, Firmware.HTTP_CLIENT})

#: Reasons of a :class:`Verdict`.
ADMITTED, IN_PROGRESS, LATER_PHASE = "admitted", "in progress", "later phase"
FULL, LAGGING = "starting machines at the limit", "event loop lagging"
BACKLOGGED = "provisioning backlog at the limit"
QUEUED = "queued behind machines waiting longer"


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """The knobs of :class:`BootAdmission` (``dhcp.admission`` in the configuration)."""

    #: Machines admitted at their first step that have not reached iPXE yet, at most.
    max_starting: int = 64
    #: Seconds after which an admitted machine that never reached iPXE stops counting.
    start_timeout: float = 60.0
    #: Smoothed event-loop lag (seconds) at or above which no new machine is admitted;
    #: 0 turns the lag signal off.
    max_loop_lag: float = 1.0
    #: Work the layers above accepted and have not finished (provisioning jobs) at or above
    #: which no new machine is admitted; 0 turns the signal off.
    max_backlog: int = 32

    def __post_init__(self) -> None:
        if self.max_starting < 1:
            raise ApiMisuse("max_starting must be at least 1")
        if self.start_timeout <= 0 or self.max_loop_lag < 0 or self.max_backlog < 0:
            raise ApiMisuse("start_timeout must be positive, max_loop_lag and max_backlog "
                            "not negative")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :meth:`BootAdmission.admit` decided, and whether it is worth an info line."""

    admit: bool
    reason: str
    #: Log at info level: a machine's first deferral or its admission after waiting.
    log: bool = False
    #: Seconds this machine had been waiting when admitted (0 when it never waited).
    waited: float = 0.0


@dataclass(slots=True)
class _Waiting:
    first: Now
    last: Now
    #: The DISCOVER before the last one (None: it asked once).
    previous: Now | None
    #: What the service needs to answer the last DISCOVER later.
    payload: object

    def listening(self, now: Now) -> bool:
        """Whether the machine still waits for an answer to its last DISCOVER."""
        if self.previous is None:
            window = FIRST_LISTEN
        else:
            window = min(LONGEST_LISTEN, max(FIRST_LISTEN, 2 * (self.last - self.previous)))
        return now < self.last + LISTEN_MARGIN * window


@dataclass(slots=True)
class _Admission:
    admitted: Now
    seen: Now
    #: Still starting (admitted at its first step, iPXE not seen yet).
    starting: bool


class BootAdmission:
    """The admission rule of the module docstring, for one DHCP server."""

    def __init__(self, settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self._admitted: OrderedDict[bytes, _Admission] = OrderedDict()
        #: Starting machines by MAC, oldest admission first.
        self._starting: OrderedDict[bytes, Now] = OrderedDict()
        #: Deferred machines by MAC, in the order they first asked.
        self._waiting: OrderedDict[bytes, _Waiting] = OrderedDict()
        self.lag = 0.0
        #: The last backlog reported (:meth:`observe_backlog`).
        self.backlog = 0
        #: Cumulative counts (for metrics): admitted, deferred, expired starts.
        self.counters = {"admitted": 0, "deferred": 0, "start_timeouts": 0}

    # -- signals ---------------------------------------------------------------------

    def observe_lag(self, lag: float) -> None:
        """One event-loop lag sample (seconds late of a periodic timer)."""
        self.lag += LAG_SMOOTHING * (max(lag, 0.0) - self.lag)

    def observe_backlog(self, backlog: int) -> None:
        """The work the layers above have accepted and not finished, now."""
        self.backlog = backlog

    @property
    def starting(self) -> int:
        """Machines starting now (as of the last :meth:`admit` or :meth:`expire`)."""
        return len(self._starting)

    @property
    def waiting(self) -> int:
        """Machines deferred and not admitted since (remembered ones)."""
        return len(self._waiting)

    def saturated(self, now: Now) -> str:
        """Why no new machine would be admitted now, or ``""`` when one would."""
        self.expire(now)
        settings = self.settings
        if len(self._starting) >= settings.max_starting:
            return FULL
        if settings.max_loop_lag and self.lag >= settings.max_loop_lag:
            return LAGGING
        if settings.max_backlog and self.backlog >= settings.max_backlog:
            return BACKLOGGED
        return ""

    # -- the decision ----------------------------------------------------------------

    def admit(self, mac: bytes, firmware: Firmware, now: Now, payload: object = None) -> Verdict:
        """Whether to answer this DISCOVER from *mac*, sent by *firmware*, at *now*.

        When the machine is made to wait, *payload* (what the caller needs to answer this
        DISCOVER later) is kept for :meth:`release`."""
        known = self._admitted.get(mac)
        if known is not None:
            known.seen = now
            self._admitted.move_to_end(mac)
            if firmware not in FIRST_STEP_FIRMWARE:
                # iPXE, or the booted kernel's own DHCP where the loader is GRUB or
                # PXELINUX (they reuse the firmware's lease): past its first step.
                self._started(mac, known)
            elif not known.starting:
                # A machine in progress booting again: answered, and counted again.
                known.starting, known.admitted = True, now
                self._starting[mac] = now
            return Verdict(True, IN_PROGRESS)
        if firmware not in FIRST_STEP_FIRMWARE:
            if firmware is Firmware.IPXE:
                self._remember(mac, _Admission(now, now, starting=False))
            return Verdict(True, LATER_PHASE)
        reason = self.saturated(now)
        waiting = self._waiting
        entry = waiting.get(mac)
        if not reason and waiting and next(iter(waiting)) != mac:
            reason = QUEUED  # others asked first: they go first (release)
        if reason:
            self.counters["deferred"] += 1
            if entry is None:
                if len(waiting) >= MAX_WAITING:
                    waiting.popitem(last=False)
                waiting[mac] = _Waiting(now, now, None, payload)
            else:
                entry.previous, entry.last, entry.payload = entry.last, now, payload
            return Verdict(False, reason, log=entry is None)
        if entry is not None:
            del waiting[mac]
        return self._admit_new(mac, now, entry)

    def hold(self, mac: bytes, payload: object) -> None:
        """Keep *payload* for :meth:`release` instead of the one :meth:`admit` was given,
        if *mac* is waiting: a caller can pass nothing to :meth:`admit` on the hot path and
        build a compact payload only for a machine that was made to wait."""
        entry = self._waiting.get(mac)
        if entry is not None:
            entry.payload = payload

    def release(self, now: Now) -> list[tuple[bytes, object, float]]:
        """Admit the oldest waiting machines still listening, as far as there is room.

        Returns ``(mac, payload, seconds waited)`` for each: the caller answers its last
        DISCOVER now.  Machines silent for :data:`WAITING_MEMORY` are forgotten."""
        room = self.settings.max_starting - len(self._starting) if not self.saturated(now) else 0
        released: list[tuple[bytes, object, float]] = []
        if room <= 0 or not self._waiting:
            return released
        waiting = self._waiting
        forget = now - WAITING_MEMORY
        for mac, entry in list(itertools.islice(waiting.items(), RELEASE_SCAN)):
            if entry.last < forget:
                del waiting[mac]
            elif entry.listening(now):
                del waiting[mac]
                verdict = self._admit_new(mac, now, entry)
                released.append((mac, entry.payload, verdict.waited))
                if len(released) >= room:
                    break
        return released

    def _admit_new(self, mac: bytes, now: Now, entry: _Waiting | None) -> Verdict:
        self.counters["admitted"] += 1
        self._remember(mac, _Admission(now, now, starting=True))
        self._starting[mac] = now
        waited = 0.0 if entry is None else now - entry.first
        return Verdict(True, ADMITTED, log=entry is not None, waited=waited)

    def expire(self, now: Now) -> None:
        """Stop counting starts older than ``start_timeout``; forget stale admissions."""
        limit = now - self.settings.start_timeout
        starting = self._starting
        while starting:
            mac, since = next(iter(starting.items()))
            if since > limit:
                break
            del starting[mac]
            entry = self._admitted.get(mac)
            if entry is not None:
                entry.starting = False
            self.counters["start_timeouts"] += 1
        stale = now - ADMISSION_MEMORY
        admitted = self._admitted
        while admitted:
            mac, entry = next(iter(admitted.items()))
            if entry.seen > stale:
                break
            del admitted[mac]
            starting.pop(mac, None)

    def _started(self, mac: bytes, entry: _Admission) -> None:
        if entry.starting:
            entry.starting = False
            self._starting.pop(mac, None)

    def _remember(self, mac: bytes, entry: _Admission) -> None:
        admitted = self._admitted
        if len(admitted) >= MAX_ADMITTED:
            old, _ = admitted.popitem(last=False)
            self._starting.pop(old, None)
        admitted[mac] = entry


__all__ = [
    "ADMISSION_MEMORY",
    "ADMITTED",
    "BACKLOGGED",
    "FIRST_STEP_FIRMWARE",
    "FULL",
    "IN_PROGRESS",
    "LAGGING",
    "LATER_PHASE",
    "QUEUED",
    "AdmissionSettings",
    "BootAdmission",
    "Verdict",
]
