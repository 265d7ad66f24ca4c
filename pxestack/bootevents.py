"""A bounded, in-memory record of what each machine did during its boot.

The servers report the steps they see; the dashboard, ``/admin/events`` and the tests read
them back.  Every step has a *phase* (:data:`PHASES`, in boot order):

==============  ==============================================  ==========================
phase           reported when                                   keyed by
==============  ==============================================  ==========================
``dhcp_pxe``    the DHCP server offers / acknowledges a lease   MAC
``tftp``        a TFTP transfer ends (the client's address is   MAC (looked up from the
                looked up in the DHCP leases)                   lease of the address)
``dhcp_ipxe``   DHCP again, after the machine fetched its        MAC
                network boot program over TFTP
``script``      iPXE asks for its script naming itself          serial and MAC
``kernel``      a kernel, initrd or image file of the host      serial
``enrolled``    the host is enrolled: its record is created,    serial
                or approved when it was ``pending``
``installing``  the installer posted its host data              serial
``installed``   ``set_installed``                               serial
``running``     ``boot_complete``                               serial
``configured``  an operator asked for a reinstall               serial
==============  ==============================================  ==========================

The two DHCP phases are told apart by what the machine did before, not by the request's
options: the DHCP exchange that follows the firmware's (after its ACK or after the TFTP
transfer of the same machine) is iPXE's own, every other one is the firmware's.  A
``script`` step names both the serial and the MAC (iPXE fills in ``${serial}`` and
``${mac}``) and links them, so the MAC-keyed steps before it become part of the serial's
timeline.

Memory is bounded: at most ``max_machines`` machines (least recently seen dropped first),
``per_machine`` steps each, and a backlog of ``backlog`` steps for ``since`` catch-up and the
boot-storm view.  A machine's timeline costs a few KiB (about 17 steps for one install),
so the default keeps the :data:`MAX_MACHINES` most recent machines: a storm of 10 000
machines would otherwise hold tens of MiB of finished timelines.  The MACs, serials,
addresses and details of the steps are interned: a machine's 17 steps share one copy of
each.  Values from the network are checked before they are kept: a MAC that is
not six octets, a serial that is not a short printable word, or an unknown phase make
:meth:`BootEventRecorder.record` return ``None`` and count in ``dropped``; the caller logs.

Besides the boot steps, the recorder keeps each machine's log lines (the :data:`LOG`
kind: an installer's syslog, a kernel's netconsole, as an extension reports them with
:meth:`BootEventRecorder.log`).  They share the ``seq`` stream and reach subscribers like
steps, but are kept apart (``per_machine_logs`` lines per machine, ``log_backlog`` in all)
so that a chatty installer never pushes its boot steps out, and the timeline's phases and
the boot-storm view are not changed by them.  The recorder also remembers the address each
machine last used (``ip_of``/:meth:`BootEventRecorder.machine_of_ip`, bounded like the
machines), so that a line from an address can be given to the machine behind it.

Image fetches started from the admin API report their progress here too, as steps of the
phase :data:`IMAGE_PHASE` (machine ``images``, the fetch's status in ``image``).  They share
the ``seq`` numbering (so ``since`` and SSE ids cover both) but are kept apart, in a backlog
of their own of ``image_backlog`` steps: they never evict a boot step, never count as a
machine and never appear in the boot-storm view.

This module is a sans-IO core (no clock, no sockets, no Twisted): times are passed in, and
subscribers are plain callables called in the reporting thread (the provisioning layer
reports from its thread pool), outside the recorder's lock.
"""

from __future__ import annotations

import re
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The phases of a boot, in order (see the module documentation).
PHASES: tuple[str, ...] = (
    "dhcp_pxe", "tftp", "dhcp_ipxe", "script", "kernel", "enrolled", "installing",
    "installed", "running", "configured",
)
#: The kind of a log line (not a phase: see the module documentation).
LOG = "log"
#: The kind of an admin action notice (:meth:`BootEventRecorder.announce`).
ADMIN = "admin"
#: The kinds of notices: passed to subscribers, never kept.
NOTICES = frozenset({ADMIN})
#: Machines whose timelines are kept by default (least recently seen dropped first).
MAX_MACHINES = 2048
#: The most characters of one log line that are kept.
LOG_LINE_MAX = 1024
#: The phase of image-fetch progress (not a boot phase: see the module documentation).
IMAGE_PHASE = "image_fetch"
#: How the dashboard names each phase.
PHASE_LABELS: Mapping[str, str] = {
    "dhcp_pxe": "DHCP (PXE)",
    "tftp": "TFTP",
    "dhcp_ipxe": "DHCP (iPXE)",
    "script": "iPXE script",
    "kernel": "kernel / initrd",
    "enrolled": "enrolment",
    "installing": "host data",
    "installed": "installed",
    "running": "boot complete",
    "configured": "reinstall requested",
    LOG: "log",
}
#: Host states that are also phases (the provisioning layer reports them by state).
STATE_PHASES = frozenset({"installing", "installed", "running", "configured"})

_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_SERIAL = re.compile(r"[0-9a-z][0-9a-z._:-]{0,127}")
_DETAIL_MAX = 120


def normal_mac(value: bytes | str | None) -> str | None:
    """*value* as ``aa:bb:cc:dd:ee:ff``, or None when it is not a six-octet MAC address.

    Takes the octets (a DHCP ``chaddr``) or text with colons or hyphens (iPXE's
    ``${mac:hexhyp}``).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        if len(value) != 6:
            return None
        return ":".join(f"{b:02x}" for b in value)
    text = value.strip().lower().replace("-", ":")
    return text if _MAC.fullmatch(text) else None


def normal_serial(value: str | None) -> str | None:
    """*value* lower-cased, or None unless it is a short printable identifier."""
    if value is None:
        return None
    text = value.strip().lower()
    return text if _SERIAL.fullmatch(text) else None


def _interned(text: str | None) -> str | None:
    """*text* as the one shared copy of its value (a machine's steps repeat it)."""
    return None if text is None else sys.intern(text)


def _insert_in_time_order(steps: deque[BootEvent], event: BootEvent) -> None:
    """Append *event*, or put it before the steps that ended after it: a machine's steps
    stay in time order, so its newest step is its current phase even when a step is
    reported late (a TFTP worker process relays finished transfers a moment later)."""
    if not steps or steps[-1].time <= event.time:
        steps.append(event)
        return
    ordered = sorted([*steps, event], key=lambda e: (e.time, e.seq))
    steps.clear()
    steps.extend(ordered[-steps.maxlen:] if steps.maxlen is not None else ordered)


def _clean_detail(value: str, limit: int = _DETAIL_MAX) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in value[: limit * 2])
    return text[:limit]


@dataclass(frozen=True, slots=True)
class BootEvent:
    """One step of one machine's boot."""

    #: Position in the recorder's stream (1, 2, ...): ``since`` and SSE ids use it.
    seq: int
    #: When the step ended (seconds since the epoch).
    time: float
    phase: str
    #: The machine's key when the step was recorded: its serial when known, else its MAC.
    machine: str
    serial: str | None = None
    mac: str | None = None
    ip: str | None = None
    #: How long the step took, when it is a span (a DHCP exchange, a TFTP transfer).
    duration: float | None = None
    #: A short word: ``offer``/``ack``, the file name, the TFTP outcome, ...
    detail: str = ""
    #: :data:`IMAGE_PHASE` only: the fetch's status (OS, version, bytes, ETA, ...).
    image: Mapping[str, Any] | None = None

    @property
    def started(self) -> float:
        """When the step began."""
        return self.time - (self.duration or 0.0)

    def to_json(self) -> dict[str, Any]:
        """The step as ``/admin/events`` sends it."""
        return {
            "seq": self.seq,
            "time": round(self.time, 3),
            "phase": self.phase,
            "machine": self.machine,
            "serial": self.serial,
            "mac": self.mac,
            "ip": self.ip,
            "duration": None if self.duration is None else round(self.duration, 3),
            "detail": self.detail,
            **({"image": dict(self.image)} if self.image is not None else {}),
        }


Subscriber = Callable[[BootEvent], None]


class BootEventRecorder:
    """Keeps the recent boot steps of every machine (see the module documentation)."""

    def __init__(self, *, max_machines: int = MAX_MACHINES, per_machine: int = 128,
                 backlog: int = 20000, max_subscribers: int = 64,
                 per_machine_logs: int = 500, log_backlog: int = 20000,
                 image_backlog: int = 500) -> None:
        self.max_machines = max_machines
        self.per_machine = per_machine
        self.per_machine_logs = per_machine_logs
        self._logs: OrderedDict[str, deque[BootEvent]] = OrderedDict()
        self._log_backlog: deque[BootEvent] = deque(maxlen=log_backlog)
        self._machine_of_ip: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self.max_subscribers = max_subscribers
        self._lock = threading.Lock()
        self._seq = 0
        self._backlog: deque[BootEvent] = deque(maxlen=backlog)
        self._images: deque[BootEvent] = deque(maxlen=image_backlog)
        self._machines: OrderedDict[str, deque[BootEvent]] = OrderedDict()
        self._serial_of_mac: OrderedDict[str, str] = OrderedDict()
        self._subscribers: list[Subscriber] = []
        #: Reports refused because a value was not acceptable (hostile or broken input).
        self.dropped = 0

    # -- reporting -----------------------------------------------------------------------

    def record(
        self,
        phase: str,
        now: float,
        *,
        mac: bytes | str | None = None,
        serial: str | None = None,
        ip: str | None = None,
        duration: float | None = None,
        detail: str = "",
    ) -> BootEvent | None:
        """Keep one step; None (and ``dropped`` counts it) when a value is not acceptable."""
        mac_text = _interned(normal_mac(mac))
        serial_text = _interned(normal_serial(serial))
        bad = (
            phase not in PHASES
            or (mac is not None and mac_text is None)
            or (serial is not None and serial_text is None)
            or (mac_text is None and serial_text is None)
            or (duration is not None and not 0 <= duration < 86400)
        )
        if bad:
            with self._lock:
                self.dropped += 1
            return None
        with self._lock:
            if mac_text is not None and serial_text is not None:
                self._link(mac_text, serial_text)
            elif mac_text is not None:
                serial_text = self._serial_of_mac.get(mac_text)
            key = serial_text or mac_text or ""
            if phase in ("dhcp_pxe", "dhcp_ipxe"):
                phase = self._dhcp_phase(key, detail)
            if ip is not None:
                ip = sys.intern(ip)
                self._remember_ip(ip, serial_text, mac_text)
            self._seq += 1
            event = BootEvent(self._seq, now, phase, key, serial_text, mac_text, ip,
                              duration, sys.intern(_clean_detail(detail)))
            self._backlog.append(event)
            steps = self._machines.get(key)
            if steps is None:
                steps = self._machines[key] = deque(maxlen=self.per_machine)
            else:
                self._machines.move_to_end(key)
            _insert_in_time_order(steps, event)
            while len(self._machines) > self.max_machines:
                self._machines.popitem(last=False)
            subscribers = list(self._subscribers)
        self._notify(subscribers, event)
        return event

    def _notify(self, subscribers: list[Subscriber], event: BootEvent) -> None:
        for subscriber in subscribers:
            try:
                subscriber(event)
            except Exception:  # a broken reader must not break the server reporting
                self._unsubscribe(subscriber)

    def _remember_ip(self, ip: str, serial: str | None, mac: str | None) -> None:
        if len(ip) > 45:
            return
        self._machine_of_ip[ip] = (serial, mac)
        self._machine_of_ip.move_to_end(ip)
        while len(self._machine_of_ip) > self.max_machines:
            self._machine_of_ip.popitem(last=False)

    def log(
        self,
        line: str,
        now: float,
        *,
        mac: bytes | str | None = None,
        serial: str | None = None,
        ip: str | None = None,
        detail_limit: int = LOG_LINE_MAX,
    ) -> BootEvent | None:
        """Keep one log line of a machine (the :data:`LOG` kind); None (and ``dropped``
        counts it) when neither a valid MAC nor a valid serial names the machine.

        Non-printable characters become ``?`` and the line is cut to *detail_limit*
        (at most :data:`LOG_LINE_MAX`) characters.
        """
        mac_text = normal_mac(mac)
        serial_text = normal_serial(serial)
        if (mac is not None and mac_text is None) or (serial is not None and serial_text is None) \
                or (mac_text is None and serial_text is None):
            with self._lock:
                self.dropped += 1
            return None
        text = _clean_detail(line, min(detail_limit, LOG_LINE_MAX))
        with self._lock:
            if serial_text is None and mac_text is not None:
                serial_text = self._serial_of_mac.get(mac_text)
            key = serial_text or mac_text or ""
            self._seq += 1
            event = BootEvent(self._seq, now, LOG, key, serial_text, mac_text, ip, None, text)
            self._log_backlog.append(event)
            lines = self._logs.get(key)
            if lines is None:
                lines = self._logs[key] = deque(maxlen=self.per_machine_logs)
            else:
                self._logs.move_to_end(key)
            lines.append(event)
            while len(self._logs) > self.max_machines:
                self._logs.popitem(last=False)
            subscribers = list(self._subscribers)
        self._notify(subscribers, event)
        return event

    def announce(self, kind: str, now: float, *, serial: str | None = None,
                 detail: str = "") -> BootEvent | None:
        """Tell the subscribers about something that is not a boot step (an admin action:
        ``detail`` is ``ACTION by ACTOR``); nothing is kept.  None for an unknown kind."""
        serial_text = normal_serial(serial)
        if kind not in NOTICES or (serial is not None and serial_text is None):
            with self._lock:
                self.dropped += 1
            return None
        with self._lock:
            self._seq += 1
            event = BootEvent(self._seq, now, kind, serial_text or "", serial_text, None, None,
                              None, _clean_detail(detail))
            subscribers = list(self._subscribers)
        self._notify(subscribers, event)
        return event

    def logs(self, machine: str, macs: Iterable[str] = (), since: int = 0,
             limit: int | None = None) -> list[BootEvent]:
        """The kept log lines of *machine* (a serial or a MAC) and of *macs*, oldest first,
        after *since* (the newest *limit*)."""
        keys = {machine.lower()} | {m for m in (normal_mac(x) for x in macs) if m}
        with self._lock:
            found = [e for key in keys for e in self._logs.get(key, ()) if e.seq > since]
        found.sort(key=lambda e: e.seq)
        return found[-limit:] if limit is not None and limit >= 0 else found

    def machine_of_ip(self, ip: str) -> tuple[str | None, str | None] | None:
        """``(serial, mac)`` of the machine last seen at *ip* in a recorded step, or None."""
        with self._lock:
            found = self._machine_of_ip.get(ip)
        if found is None:
            return None
        serial, mac = found
        if serial is None and mac is not None:
            serial = self._serial_of_mac.get(mac)
        return serial, mac

    def record_image(self, now: float, detail: str,
                     status: Mapping[str, Any]) -> BootEvent:
        """Keep one image-fetch step (:data:`IMAGE_PHASE`) and tell the subscribers."""
        image = {str(k): v for k, v in list(status.items())[:32]}
        with self._lock:
            self._seq += 1
            event = BootEvent(self._seq, now, IMAGE_PHASE, "images", detail=_clean_detail(detail),
                              image=image)
            self._images.append(event)
            subscribers = list(self._subscribers)
        self._notify(subscribers, event)
        return event

    def _dhcp_phase(self, key: str, detail: str) -> str:
        """``dhcp_ipxe`` for the exchange that follows the firmware's: after a TFTP transfer,
        after the firmware's ACK (the TFTP step is recorded when the transfer ends, which
        may be just after iPXE's DISCOVER on a busy server), or within iPXE's exchange;
        every other exchange is the firmware's, ``dhcp_pxe``."""
        steps = self._machines.get(key)
        last = steps[-1] if steps else None
        if last is None:
            return "dhcp_pxe"
        if last.phase == "tftp":
            return "dhcp_ipxe"
        if last.phase == "dhcp_pxe" and last.detail == "ack" and detail == "offer":
            return "dhcp_ipxe"
        if last.phase == "dhcp_ipxe" and detail == "ack":
            return "dhcp_ipxe"
        return "dhcp_pxe"

    def _link(self, mac: str, serial: str) -> None:
        """From now on *mac* is *serial*: its MAC-keyed steps join the serial's timeline."""
        if self._serial_of_mac.get(mac) == serial:
            self._serial_of_mac.move_to_end(mac)
            return
        self._serial_of_mac[mac] = serial
        while len(self._serial_of_mac) > self.max_machines:
            self._serial_of_mac.popitem(last=False)
        early_logs = self._logs.pop(mac, None)
        if early_logs:
            lines = self._logs.get(serial)
            merged_logs = sorted([*early_logs, *(lines or ())], key=lambda e: e.seq)
            self._logs[serial] = deque(merged_logs, maxlen=self.per_machine_logs)
        early = self._machines.pop(mac, None)
        if not early:
            return
        steps = self._machines.get(serial)
        merged = sorted([*early, *(steps or ())], key=lambda e: e.seq)
        self._machines[serial] = deque(merged, maxlen=self.per_machine)

    def dhcp(self, mac: bytes, bound: bool, now: float, *, ip: str | None = None) -> None:
        """An OFFER (*bound* False) or a lease-granting ACK to *mac* (``on_progress``'s shape)."""
        self.record("dhcp_pxe", now, mac=mac, ip=ip, detail="ack" if bound else "offer")

    def link(self, mac: str, serial: str) -> bool:
        """Note that *mac* belongs to *serial* (host data); False when either is not valid."""
        mac_text, serial_text = normal_mac(mac), normal_serial(serial)
        if mac_text is None or serial_text is None:
            with self._lock:
                self.dropped += 1
            return False
        with self._lock:
            self._link(mac_text, serial_text)
        return True

    # -- subscribers ---------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None] | None:
        """Call *subscriber* with every new step; returns the way to stop, or None when
        ``max_subscribers`` are already listening."""
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                return None
            self._subscribers.append(subscriber)
        return lambda: self._unsubscribe(subscriber)

    def _unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    @property
    def subscribers(self) -> int:
        """How many subscribers are listening."""
        return len(self._subscribers)

    # -- reading -------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest step (0 before the first)."""
        return self._seq

    def since(self, seq: int = 0, limit: int | None = None) -> list[BootEvent]:
        """Steps after *seq* still in the backlog, oldest first (the newest *limit*)."""
        with self._lock:
            found = [e for e in self._backlog if e.seq > seq]
            images = [e for e in self._images if e.seq > seq]
        if images:
            found = sorted([*found, *images], key=lambda e: e.seq)
        return found[-limit:] if limit is not None and limit >= 0 else found

    def serial_of(self, mac: str) -> str | None:
        """The serial *mac* was linked to, if any."""
        key = normal_mac(mac)
        return None if key is None else self._serial_of_mac.get(key)

    def steps(self, machine: str, macs: Iterable[str] = ()) -> list[BootEvent]:
        """Every kept step of *machine* (a serial or a MAC), with those of *macs* not yet
        linked to it, oldest first."""
        keys = {machine.lower()} | {m for m in (normal_mac(x) for x in macs) if m}
        with self._lock:
            found = [e for key in keys for e in self._machines.get(key, ())]
        return sorted(found, key=lambda e: (e.time, e.seq))

    def current(self) -> dict[str, BootEvent]:
        """The newest step of every machine kept, by machine key."""
        with self._lock:
            return {key: steps[-1] for key, steps in self._machines.items() if steps}

    def storm(self, *, buckets: int = 60, now: float | None = None) -> dict[str, Any]:
        """Machines per phase over time, from the backlog (the boot-storm view).

        The backlog's span (to *now*) is cut into *buckets* equal slices; each slice counts
        the machines whose newest step at its end was in each phase.  A step naming both a
        serial and a MAC moves the MAC's machine to the serial (one machine, not two).
        """
        with self._lock:
            # In time order: a step can arrive after later ones (a TFTP worker process
            # reports its finished transfers a moment after they end).
            events = sorted(self._backlog, key=lambda e: e.time)
        if not events:
            return {"phases": list(PHASES), "times": [], "counts": {p: [] for p in PHASES}}
        start = events[0].started
        end = max(now if now is not None else events[-1].time, events[-1].time)
        step = max((end - start) / max(1, buckets), 1e-3)
        edges = [start + step * (i + 1) for i in range(max(1, buckets))]
        counts: dict[str, list[int]] = {p: [] for p in PHASES}
        where: dict[str, str] = {}
        index = 0
        for edge in edges:
            while index < len(events) and events[index].time <= edge:
                event = events[index]
                if event.serial and event.mac:
                    where.pop(event.mac, None)
                where[event.machine] = event.phase
                index += 1
            tally = dict.fromkeys(PHASES, 0)
            for phase in where.values():
                tally[phase] += 1
            for phase in PHASES:
                counts[phase].append(tally[phase])
        return {"phases": list(PHASES), "times": [round(t, 3) for t in edges],
                "counts": counts}


__all__ = [
    "ADMIN",
    "IMAGE_PHASE",
    "LOG",
    "LOG_LINE_MAX",
    "MAX_MACHINES",
    "NOTICES",
    "PHASES",
    "PHASE_LABELS",
    "STATE_PHASES",
    "BootEvent",
    "BootEventRecorder",
    "normal_mac",
    "normal_serial",
]
