"""The boot-phase model: which steps of a machine's boot are timed, and how.

A *phase* runs from one boot event of a machine to a later one (:data:`BOOT_PHASES`).
:class:`BootPhaseTracker` turns a stream of per-machine events into phase durations and
:class:`PhaseHistogram` exposes them as ``pxestack_boot_phase_duration_seconds{phase}``.
Nothing here does I/O or reads a clock: every event carries its ``now``.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: Buckets of the TFTP transfer and boot phase histograms, in seconds: from a sub-second
#: TFTP of an iPXE binary to an hour-long disk install.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800,
                    3600, float("inf"))


@dataclass(frozen=True, slots=True)
class BootPhase:
    """A measured stretch of a machine's boot: from event *start* to event *end*."""

    name: str
    start: str
    end: str
    description: str


#: The phases of ``pxestack_boot_phase_duration_seconds`` (label ``phase``).  Events are
#: keyed per machine: DHCP events by MAC address, provisioning events by serial.
BOOT_PHASES: tuple[BootPhase, ...] = (
    BootPhase("dhcp", "dhcp_offered", "dhcp_bound",
              "DHCPDISCOVER answered to DHCPACK (keyed by MAC)"),
    BootPhase("firmware", "dhcp_bound", "boot_script",
              "DHCPACK to the iPXE script request: TFTP of iPXE, iPXE's own DHCP (by MAC)"),
    BootPhase("installer_boot", "enrolled", "installing",
              "first contact to the installer's host data: the live system boots"),
    BootPhase("install", "installing", "installed",
              "host data to set_installed: the disk is written"),
    BootPhase("first_boot", "installed", "running",
              "set_installed to boot_complete: reboot into the installed OS"),
    BootPhase("installing_to_running", "installing", "running",
              "host data / Ignition fetch to boot_complete (whole install, or a RAM boot "
              "of a PXE-every-boot profile)"),
    BootPhase("provision", "enrolled", "running",
              "first contact to the first boot_complete: the whole provisioning"),
)
BOOT_EVENTS = frozenset(e for p in BOOT_PHASES for e in (p.start, p.end)) | {"configured"}


class PhaseHistogram(Collector):
    """``pxestack_boot_phase_duration_seconds``: one histogram per ``phase`` label, updated
    under one lock per observation.

    prometheus_client's ``Histogram`` takes a lock for its sum and another for the bucket
    on every ``observe``; the DHCP server times every lease-granting ACK into this family
    (the ``dhcp`` phase), so that cost would be on its per-packet path.  The provisioning
    thread pool observes too, hence the one lock.  Exposed as the same family
    (buckets, ``_count``, ``_sum``).
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        """*buckets*: the upper bounds (``le``); +Inf is added when missing."""
        bounds = sorted(float(bound) for bound in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(bounds)
        # prometheus_client's formatter of bucket bounds (untyped there).
        self._labels = tuple(floatToGoString(bound)  # type: ignore[no-untyped-call]
                             for bound in self.bounds)
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, phase: str, seconds: float) -> None:
        """Count one duration of *phase* (its bucket: the first bound >= *seconds*)."""
        index = bisect_left(self.bounds, seconds)
        with self._lock:
            counts = self._counts.get(phase)
            if counts is None:
                counts = self._counts[phase] = [0] * len(self.bounds)
                self._sums[phase] = 0.0
            counts[index] += 1
            self._sums[phase] += seconds

    def collect(self) -> Iterator[Metric]:
        """The family as a scrape shows it: cumulative buckets, count and sum per phase."""
        with self._lock:
            snapshot = [(phase, list(counts), self._sums[phase])
                        for phase, counts in self._counts.items()]
        family = HistogramMetricFamily(self.name, self.documentation, labels=["phase"])
        for phase, counts, total in snapshot:
            cumulative = list(zip(self._labels, accumulate(counts), strict=True))
            family.add_metric([phase], cumulative, total)
        yield family


class BootPhaseTracker:
    """Turns per-machine events into phase durations (see :data:`BOOT_PHASES`).

    A phase is measured when its end event follows its start event for the same machine;
    the start is then consumed, so a later repeat of the end event (``running`` on every
    reboot) is not measured against a stale start.  At most *max_machines* machines are
    remembered (least recently seen dropped first) and starts older than *max_age* seconds
    are ignored, so a stream of unknown MACs cannot grow memory without bound.
    """

    def __init__(self, observe: Callable[[str, float], None], *, max_machines: int = 10000,
                 max_age: float = 86400.0) -> None:
        self._observe = observe
        self.max_machines = max_machines
        self.max_age = max_age
        self._pending: OrderedDict[str, dict[str, float]] = OrderedDict()
        # Store work (and so every host change) runs in the provisioning thread pool.
        self._lock = threading.Lock()
        self._by_start: dict[str, list[BootPhase]] = {}
        self._by_end: dict[str, list[BootPhase]] = {}
        for phase in BOOT_PHASES:
            self._by_start.setdefault(phase.start, []).append(phase)
            self._by_end.setdefault(phase.end, []).append(phase)

    def __len__(self) -> int:
        return len(self._pending)

    def event(self, machine: str, event: str, now: float) -> None:
        """Record *event* for *machine* at *now* (seconds, any monotonic-enough clock)."""
        if event not in BOOT_EVENTS:
            raise ValueError(f"unknown boot event {event!r}; one of {sorted(BOOT_EVENTS)}")
        with self._lock:
            self._event(machine.lower(), event, now)

    def _event(self, key: str, event: str, now: float) -> None:
        pending = self._pending.get(key)
        if pending is not None:
            self._pending.move_to_end(key)
            for phase in self._by_end.get(event, ()):
                started = pending.pop(phase.name, None)
                if started is not None and 0 <= now - started <= self.max_age:
                    self._observe(phase.name, now - started)
            if event == "configured":
                # A reinstall begins: nothing measured before it may end after it.
                pending.clear()
        starts = self._by_start.get(event, ())
        if starts:
            if pending is None:
                pending = self._pending[key] = {}
            for phase in starts:
                pending[phase.name] = now
        if pending is not None and not pending:
            del self._pending[key]
        while len(self._pending) > self.max_machines:
            self._pending.popitem(last=False)


__all__ = [
    "BOOT_EVENTS",
    "BOOT_PHASES",
    "DURATION_BUCKETS",
    "BootPhase",
    "BootPhaseTracker",
    "PhaseHistogram",
]
