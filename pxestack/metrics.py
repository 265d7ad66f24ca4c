"""Prometheus metrics: one :class:`Metrics` object, recorder hooks, and the ``/metrics`` page.

The protocol adapters and the provisioning layer report events to a :class:`Metrics`
object through small, cheap calls (no I/O, no locks beyond prometheus_client's own);
``/metrics`` (:class:`MetricsResource`) renders them in the Prometheus text format, or
OpenMetrics when the scraper asks for it.  Each hook is shaped like the callback its caller
already has, so wiring is one line per adapter:

===============================  ================================================  =========
hook                             called by                                         shape
===============================  ================================================  =========
:meth:`Metrics.dhcp_packet`      adapters without counters of their own            per packet
:meth:`Metrics.dhcp_lease_event` ``DhcpServerCore(on_event=...)``                  LeaseEvent
:meth:`Metrics.dhcp_progress`    ``DhcpServerCore.on_progress``                    per offer/ack
:meth:`Metrics.watch_leases`     service wiring, once per lease store              pull
:meth:`Metrics.tftp_transfer`    ``TftpServer(on_stats=...)``                      SessionStats
:meth:`Metrics.watch_counters`   service wiring (``ServerStats.snapshot``,         pull
                                 ``DhcpServerCore.counters``)
:meth:`Metrics.http_request`     ``AssetSite.log`` (or :func:`instrument_site`)    per request
:meth:`Metrics.http_transfer`    ``AssetStats.observers``                          TransferRecord
:meth:`Metrics.watch_gauge`      service wiring (``ServerStats.active``)           pull
:meth:`Metrics.watch_hosts`      provisioning wiring, once                         pull
:meth:`Metrics.host_transition`  provisioning, after each stored state change      per change
                                 (or wrap the store in :class:`MeteredHostStore`)
:meth:`Metrics.boot_event`       ``/ipxebootscript?mac=`` (``boot_script``)        per event
===============================  ================================================  =========

The ``attach_*`` methods do the wiring for a whole adapter object in one call
(:meth:`Metrics.attach_dhcp_server`, :meth:`~Metrics.attach_dhcp_protocol`,
:meth:`~Metrics.attach_tftp_server`, :meth:`~Metrics.attach_site`); they compose with any
callback the object already has.

"Pull" sources are callables read at scrape time, so a gauge can never go stale or drift
from the truth (leases in use, hosts per state).  A pull source that raises is logged and
skipped: a broken source never breaks the scrape or the server.

Every label value is taken from a fixed set or from the operator's configuration (pool
networks, profile names), never verbatim from a client: a hostile client must not be able
to create unbounded time series (bounded memory; see docs/reference/hostile-inputs.md).

This module is in layer 4 (beside :mod:`pxestack.service`): it may use the sans-IO value
types below it but never :mod:`pxestack.provision`; the provisioning layer calls in.
"""

from __future__ import annotations

import hmac
import math
import re
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.logger import Logger
from twisted.web.resource import Resource

log = Logger()

#: DHCP message type names by option 53 value (RFC 2132 §9.6; RFC 4388 adds 10-13).
DHCP_MESSAGE_TYPES: Mapping[int, str] = {
    1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak",
    7: "release", 8: "inform", 10: "leasequery", 11: "leaseunassigned",
    12: "leaseunknown", 13: "leaseactive",
}

#: ``outcome`` label values of ``pxestack_dhcp_packets_total``.
DHCP_OUTCOMES = ("offer", "ack", "nak", "ignored", "malformed", "error")

#: Lease event kinds of ``DhcpServerCore`` (``LeaseEvent.kind``); anything else is "other".
LEASE_EVENTS = ("offered", "bound", "released", "declined", "expired", "nak",
                "pool-exhausted")

#: First path segments that get their own ``endpoint`` label; the rest are "other".
#: (Bare asset paths such as ``/ipxe.efi`` are file names: unbounded, so "other".)
DEFAULT_HTTP_ENDPOINTS = frozenset({
    "ipxebootscript", "first-stage-script", "first-stage-ignition.json",
    "final-ignition-config.json", "ignition", "images", "admin", "assets", "healthz",
    "metrics", "installer-ignition", "script", "boot.ipxe", "dashboard",
    "first-stage-cloudconfig.yaml", "final-cloud-config.yaml",
})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

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
    (the ``dhcp`` phase), so that cost is on its hot path (docs/dhcp.md §11).  The
    provisioning thread pool observes too, hence the one lock.  Exposed as the same family
    (buckets, ``_count``, ``_sum``), without the ``_created`` samples.
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        """*buckets*: the upper bounds (``le``); +Inf is added when missing."""
        bounds = sorted(float(bound) for bound in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(bounds)
        self._labels = tuple(floatToGoString(bound) for bound in self.bounds)
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


class _PullCollector(Collector):
    """Renders metric families from callables at scrape time; a failing callable is skipped."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[Metric]]] = []

    def collect(self) -> Iterator[Metric]:
        """Every source's families (prometheus_client's Collector protocol)."""
        for source in list(self.sources):
            try:
                families = list(source())
            except Exception:
                log.failure("a metrics source failed; its metrics are left out of this scrape")
                continue
            yield from families


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
        # Store work (and so host_transition) runs in the provisioning thread pool.
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


class Metrics:
    """Every pxestack metric in one registry, with the hooks that move them.

    :param registry: where to register (default: a new, private registry, so two
        instances never clash and tests need no global state).
    :param process_metrics: also export ``process_*``, ``python_gc_*`` and
        ``python_info`` (prometheus_client's standard collectors).
    :param http_endpoints: first path segments that get their own ``endpoint`` label.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        process_metrics: bool = True,
        http_endpoints: Iterable[str] = DEFAULT_HTTP_ENDPOINTS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.http_endpoints = frozenset(http_endpoints)
        reg = self.registry
        # DHCP counters are plain dicts and the attached adapters' own counters, summed into
        # families at scrape time (_dhcp_families): the per-packet cost is one dict update
        # in the adapter, with no label lookup and no lock.  Keys come from fixed sets.
        self._dhcp_packet_counts: dict[tuple[str, str], int] = {}
        self._lease_event_counts: dict[str, int] = {}
        self._dhcp_protocols: list[Any] = []
        self._dhcp_cores: list[Any] = []
        #: When each MAC was last offered an address and last bound one: the starts of the
        #: ``dhcp`` and ``firmware`` boot phases, oldest first, bounded like
        #: :class:`BootPhaseTracker`.  Keyed by the octets, so the per-packet path builds
        #: no text (see :meth:`dhcp_progress`).
        self._offered_at: OrderedDict[bytes, float] = OrderedDict()
        self._bound_at: OrderedDict[bytes, float] = OrderedDict()
        self.tftp_transfers = Counter(
            "pxestack_tftp_transfers", "Finished TFTP transfers, by outcome", ["outcome"],
            registry=reg)
        self.tftp_bytes = Counter(
            "pxestack_tftp_bytes", "TFTP payload bytes acknowledged by clients", registry=reg)
        self.tftp_datagrams = Counter(
            "pxestack_tftp_datagrams_sent", "TFTP DATA/OACK datagrams sent, retransmissions "
            "included", registry=reg)
        self.tftp_retransmits = Counter(
            "pxestack_tftp_retransmits", "TFTP DATA/OACK datagrams sent again", registry=reg)
        self.tftp_duration = Histogram(
            "pxestack_tftp_transfer_duration_seconds", "TFTP transfer time, request to end",
            buckets=DURATION_BUCKETS, registry=reg)
        self.http_requests = Counter(
            "pxestack_http_requests", "HTTP requests answered, by endpoint, method and status",
            ["endpoint", "method", "status"], registry=reg)
        self.http_response_bytes = Counter(
            "pxestack_http_response_bytes", "HTTP response body bytes, by endpoint",
            ["endpoint"], registry=reg)
        self.http_transfers = Counter(
            "pxestack_http_asset_transfers", "Asset body transfers, by outcome and method",
            ["outcome", "method"], registry=reg)
        self.http_transfer_bytes = Counter(
            "pxestack_http_asset_bytes", "Asset body bytes handed to the kernel, by method",
            ["method"], registry=reg)
        self.boot_phase_duration = PhaseHistogram(
            "pxestack_boot_phase_duration_seconds", "Duration of each phase of a machine's "
            "boot and provisioning", DURATION_BUCKETS)
        reg.register(self.boot_phase_duration)
        self.boot_phases = BootPhaseTracker(self.boot_phase_duration.observe)
        self._pull = _PullCollector()
        reg.register(self._pull)
        self._pull.sources.append(self._dhcp_families)
        #: (name prefix, ``per_asset`` reader) of every watched asset resource.
        self._asset_sources: list[tuple[str, Callable[[], Mapping[str, Any]]]] = []
        if process_metrics:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

    # -- DHCP ------------------------------------------------------------------------------

    def dhcp_packet(self, received_type: int | None, outcome: str, count: int = 1) -> None:
        """One received datagram: its option 53 type (None when absent) and what came of it.

        *outcome* is one of :data:`DHCP_OUTCOMES`: the type of the reply sent ("offer",
        "ack", "nak"), "ignored" (no reply), "malformed" (dropped undecoded; pass
        ``received_type=None``) or "error" (a bug in pxestack dropped it).  For adapters
        that keep no counts of their own; a ``DhcpDatagramProtocol`` is read at scrape
        time instead (:meth:`attach_dhcp_protocol`).
        """
        key = (_type_label(received_type), outcome if outcome in DHCP_OUTCOMES else "other")
        self._dhcp_packet_counts[key] = self._dhcp_packet_counts.get(key, 0) + count

    def dhcp_replies(self, received_type: int | None, reply_types: Iterable[int | None]) -> None:
        """:meth:`dhcp_packet` for a handled datagram, with the outcome taken from the
        replies' message types (an empty list is "ignored")."""
        outcome = "ignored"
        for reply_type in reply_types:
            name = DHCP_MESSAGE_TYPES.get(reply_type or 0, "")
            if name in DHCP_OUTCOMES:
                outcome = name
        self.dhcp_packet(received_type, outcome)

    def dhcp_lease_event(self, event: Any, now: float | None = None) -> None:
        """A ``DhcpServerCore`` lease event (``on_event`` callback; duck-typed LeaseEvent).

        With *now*, ``offered`` and ``bound`` also feed the ``dhcp`` and ``firmware`` boot
        phases, keyed by the client's MAC address.  A core wired with
        :meth:`attach_dhcp_server` is counted from its own counters instead.
        """
        kind = str(getattr(event, "kind", ""))
        label = kind if kind in LEASE_EVENTS else "other"
        self._lease_event_counts[label] = self._lease_event_counts.get(label, 0) + 1
        mac = getattr(event, "mac", b"")
        if now is not None and kind in ("offered", "bound") and isinstance(mac, bytes) and mac:
            self.dhcp_progress(kind == "bound", mac, now)

    def dhcp_progress(self, bound: bool, mac: bytes, now: float) -> None:
        """An OFFER (*bound* False) or a lease-granting ACK (True) to *mac* at *now*: the
        ``dhcp`` boot phase runs from the last OFFER to the next ACK, and an ACK starts the
        ``firmware`` phase.  The shape of ``DhcpServerCore.on_progress``, called for every
        OFFER, so an OFFER is one ordered-dict update (no text key, no lock)."""
        if not bound:
            self._start_mac_phase(self._offered_at, mac, now)
            return
        self._end_mac_phase(self._offered_at, mac, "dhcp", now)
        self._start_mac_phase(self._bound_at, mac, now)

    def _start_mac_phase(self, starts: OrderedDict[bytes, float], mac: bytes,
                         now: float) -> None:
        """Note *now* as the start of a MAC-keyed phase; the oldest entries go first when
        more than ``boot_phases.max_machines`` are kept (bounded memory)."""
        if mac in starts:
            starts.move_to_end(mac)
        starts[mac] = now
        if len(starts) > self.boot_phases.max_machines:
            starts.popitem(last=False)

    def _end_mac_phase(self, starts: OrderedDict[bytes, float], mac: bytes, phase: str,
                       now: float) -> None:
        """End *phase* for *mac* if it started, at most ``boot_phases.max_age`` ago."""
        started = starts.pop(mac, None)
        if started is not None and 0 <= now - started <= self.boot_phases.max_age:
            self.boot_phase_duration.observe(phase, now - started)

    def _dhcp_families(self) -> Iterator[Metric]:
        """``pxestack_dhcp_packets_total`` and ``pxestack_dhcp_lease_events_total``: the
        counts reported through the hooks plus those of every attached adapter."""
        packets = dict(self._dhcp_packet_counts)
        for protocol in self._dhcp_protocols:
            for (received, reply), count in list(protocol.outcomes.items()):
                key = (_type_label(None if received is None else received[0]),
                       _reply_outcome(reply))
                packets[key] = packets.get(key, 0) + count
            key = ("none", "malformed")
            packets[key] = packets.get(key, 0) + protocol.malformed
        events = dict(self._lease_event_counts)
        for core in self._dhcp_cores:
            counters = core.counters
            for kind, counter in _LEASE_EVENT_COUNTERS.items():
                events[kind] = events.get(kind, 0) + counters.get(counter, 0)
        packet_family = CounterMetricFamily(
            "pxestack_dhcp_packets", "DHCP datagrams received, by message type and outcome",
            labels=["type", "outcome"])
        for (type_name, outcome), count in sorted(packets.items()):
            if count:
                packet_family.add_metric([type_name, outcome], count)
        event_family = CounterMetricFamily(
            "pxestack_dhcp_lease_events", "Lease changes of the DHCP server, by kind",
            labels=["event"])
        for kind, count in sorted(events.items()):
            if count:
                event_family.add_metric([kind], count)
        yield packet_family
        yield event_family

    def watch_leases(self, source: Callable[[], Mapping[str, tuple[int, int]]]) -> None:
        """Export ``pxestack_dhcp_leases_in_use`` and ``pxestack_dhcp_pool_addresses``.

        *source* returns ``{pool: (in_use, size)}`` at scrape time, e.g.
        ``lambda: leases_by_pool(store, reactor.seconds())``.
        """

        def families() -> Iterator[Metric]:
            data = source()
            in_use = GaugeMetricFamily("pxestack_dhcp_leases_in_use",
                                       "Addresses offered or bound now, per pool", labels=["pool"])
            size = GaugeMetricFamily("pxestack_dhcp_pool_addresses",
                                     "Dynamic addresses per pool", labels=["pool"])
            for pool, (used, total) in sorted(data.items()):
                in_use.add_metric([pool], used)
                size.add_metric([pool], total)
            yield in_use
            yield size

        self._pull.sources.append(families)

    # -- TFTP ------------------------------------------------------------------------------

    def tftp_transfer(self, stats: Any) -> None:
        """One finished TFTP transfer (the server's ``on_stats`` callback; a SessionStats)."""
        outcome = getattr(stats, "outcome", None)
        label = str(getattr(outcome, "value", outcome))
        self.tftp_transfers.labels(label).inc()
        self.tftp_bytes.inc(max(0, int(stats.bytes_acked)))
        self.tftp_datagrams.inc(max(0, int(stats.datagrams_sent)))
        self.tftp_retransmits.inc(max(0, int(stats.retransmits)))
        duration = float(stats.finished) - float(stats.started)
        if duration >= 0:
            self.tftp_duration.observe(duration)

    # -- HTTP ------------------------------------------------------------------------------

    def endpoint_of(self, path: bytes | str) -> str:
        """The ``endpoint`` label for a request path: its first segment when known."""
        text = path.decode("latin-1") if isinstance(path, bytes) else path
        first = text.split("?", 1)[0].lstrip("/").split("/", 1)[0]
        if not first:
            return "root"
        return first if first in self.http_endpoints else "other"

    def http_request(self, request: Any) -> None:
        """One finished twisted.web request (call from ``Site.log``; duck-typed Request)."""
        endpoint = self.endpoint_of(getattr(request, "path", b"") or b"")
        raw_method = getattr(request, "method", b"") or b""
        method = raw_method.decode("latin-1") if isinstance(raw_method, bytes) else str(raw_method)
        code = getattr(request, "code", 0)
        status = str(code) if isinstance(code, int) and 100 <= code <= 599 else "other"
        self.http_requests.labels(endpoint, method if method in HTTP_METHODS else "other",
                                  status).inc()
        sent = getattr(request, "sentLength", 0)
        if isinstance(sent, int) and sent > 0:
            self.http_response_bytes.labels(endpoint).inc(sent)

    def http_transfer(self, record: Any) -> None:
        """One asset body transfer (an ``AssetStats.observers`` entry; a TransferRecord)."""
        outcome = str(getattr(record, "outcome", "other"))
        if outcome not in ("completed", "client-gone", "stalled", "stopped"):
            outcome = "other"
        method = str(getattr(record, "method", "other"))
        if method not in ("sendfile", "copy"):
            method = "other"
        self.http_transfers.labels(outcome, method).inc()
        self.http_transfer_bytes.labels(method).inc(max(0, int(getattr(record, "sent", 0))))

    # -- provisioning ----------------------------------------------------------------------

    def watch_hosts(self, source: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Export ``pxestack_hosts{state}`` and ``pxestack_hosts_by_profile{profile}``.

        *source* yields ``(state, profile)`` per host at scrape time, e.g.
        ``lambda: [(h.state.value, h.profile) for h in provisioner.hosts()]``.
        """

        def families() -> Iterator[Metric]:
            by_state: dict[str, int] = dict.fromkeys(
                ("unknown", "configured", "installing", "installed", "running"), 0)
            by_profile: dict[str, int] = {}
            for state, profile in source():
                by_state[state] = by_state.get(state, 0) + 1
                by_profile[profile or "-"] = by_profile.get(profile or "-", 0) + 1
            states = GaugeMetricFamily("pxestack_hosts", "Provisioned hosts per state",
                                       labels=["state"])
            for state, count in sorted(by_state.items()):
                states.add_metric([state], count)
            profiles = GaugeMetricFamily("pxestack_hosts_by_profile",
                                         "Provisioned hosts per profile", labels=["profile"])
            for profile, count in sorted(by_profile.items()):
                profiles.add_metric([profile], count)
            yield states
            yield profiles

        self._pull.sources.append(families)

    def boot_event(self, machine: str, event: str, now: float) -> None:
        """A step in a machine's boot (see :data:`BOOT_PHASES`); ends any phase it closes.

        The provisioning layer reports ``enrolled`` (first contact), ``installing``,
        ``installed``, ``running`` and ``configured`` keyed by serial; the HTTP layer
        reports ``boot_script`` keyed by MAC when the iPXE script request names one.
        MACs may be given as iPXE's ``${mac:hexhyp}`` (``52-54-00-..``) or with colons.
        """
        key = machine.strip().lower()
        if _HYPHEN_MAC.fullmatch(key):
            key = key.replace("-", ":")
        if event in _MAC_PHASE_EVENTS and _COLON_MAC.fullmatch(key):
            # The two MAC-keyed phases live in dicts keyed by the octets (dhcp_progress).
            mac = bytes.fromhex(key.replace(":", ""))
            if event == "boot_script":
                self._end_mac_phase(self._bound_at, mac, "firmware", now)
            else:
                self.dhcp_progress(event == "dhcp_bound", mac, now)
            return
        self.boot_phases.event(key, event, now)

    def host_transition(self, serial: str, state: str, now: float, *,
                        enrolled: bool = False) -> None:
        """A host record changed: *enrolled* on first contact, else its new *state*.

        The provisioning layer's one hook for boot phases: ``installing``, ``installed``,
        ``running`` and ``configured`` end and start phases; ``unknown`` does nothing.
        """
        if enrolled:
            self.boot_event(serial, "enrolled", now)
        elif state in BOOT_EVENTS:
            self.boot_event(serial, state, now)

    # -- one-call wiring for the adapters ----------------------------------------------------

    def attach_dhcp_server(self, core: Any, store: Any, clock: Callable[[], float]) -> None:
        """Wire a ``DhcpServerCore`` and its ``InMemoryLeaseStore``: lease events (read from
        the core's counters at scrape time, whatever its ``event_kinds``), the ``dhcp`` and
        ``firmware`` boot phases (its ``on_progress``, composed with any already set), leases
        in use per pool, the core's counters.

        *clock* is the reactor's ``seconds`` (the same clock the core is driven with).
        """
        previous = core.on_progress
        if previous is None:
            core.on_progress = self.dhcp_progress  # the core's now is *clock*'s time
        else:

            def on_progress(bound: bool, mac: bytes, now: float) -> None:
                previous(bound, mac, now)
                self.dhcp_progress(bound, mac, now)

            core.on_progress = on_progress
        self._dhcp_cores.append(core)
        self.watch_leases(lambda: leases_by_pool(store, clock()))
        self.watch_counters("pxestack_dhcp_server_events", "DHCP server core counters",
                            lambda: core.counters)

    def attach_dhcp_protocol(self, protocol: Any) -> None:
        """Count every datagram a ``DhcpDatagramProtocol`` receives, by type and outcome.

        Reads the protocol's own counters (``outcomes`` and ``malformed``) at scrape time;
        nothing about the protocol or its per-packet path changes.
        """
        self._dhcp_protocols.append(protocol)

    def attach_tftp_server(self, server: Any) -> None:
        """Wire a ``TftpServer``: per-transfer stats (composed with its ``on_stats``), its
        running counters and the number of active transfers."""
        previous = server.on_stats

        def on_stats(stats: Any) -> None:
            if previous is not None:
                previous(stats)
            self.tftp_transfer(stats)

        server.on_stats = on_stats
        self.watch_counters("pxestack_tftp_server_events", "TFTP server counters",
                            server.stats.snapshot, exclude=("active",))
        self.watch_gauge("pxestack_tftp_active_transfers", "TFTP transfers running now",
                         lambda: server.stats.active)

    def attach_site(self, site: Any) -> None:
        """Wire a twisted.web site: see :func:`instrument_site`."""
        instrument_site(site, self)

    # -- generic ---------------------------------------------------------------------------

    def watch_counters(self, name: str, documentation: str,
                       source: Callable[[], Mapping[str, int]], *,
                       exclude: Iterable[str] = ()) -> None:
        """Export a fixed set of running counters as ``<name>_total{event}``.

        For counters an adapter already keeps (``tftp ServerStats.snapshot``,
        ``DhcpServerCore.counters``); *name* must start with ``pxestack_``.  Keys in
        *exclude* (gauges such as ``active``) are left out: export them with
        :meth:`watch_gauge`.
        """
        _check_name(name)
        skipped = frozenset(exclude)

        def families() -> Iterator[Metric]:
            family = CounterMetricFamily(name, documentation, labels=["event"])
            for key, value in sorted(source().items()):
                if key not in skipped:
                    family.add_metric([key], value)
            yield family

        self._pull.sources.append(families)

    def watch_gauge(self, name: str, documentation: str, source: Callable[[], float]) -> None:
        """Export one value read at scrape time (e.g. ``ServerStats.active``) as a gauge."""
        _check_name(name)

        def families() -> Iterator[Metric]:
            yield GaugeMetricFamily(name, documentation, value=source())

        self._pull.sources.append(families)

    def watch_assets(self, source: Callable[[], Mapping[str, Any]], *, prefix: str = "") -> None:
        """Export per-asset counters read at scrape time (``AssetStats.per_asset``).

        ``pxestack_http_asset_file_requests_total{asset}`` and
        ``pxestack_http_asset_file_bytes_total{asset}``: one series per file that a request
        resolved to, so the label set is bounded by the files under the served roots, never
        by what clients ask for (``AssetStats`` keeps entries only for real files).  Several
        asset resources (the site's assets, the provisioning images) share the two families;
        *prefix* keeps their names apart (e.g. ``"images/"``).
        """
        self._asset_sources.append((prefix, source))
        if len(self._asset_sources) == 1:
            self._pull.sources.append(self._asset_families)

    def _asset_families(self) -> Iterator[Metric]:
        """The per-asset families over every watched asset resource."""
        totals: dict[str, tuple[int, int]] = {}
        for prefix, source in self._asset_sources:
            for asset, counters in source().items():
                requests, sent = totals.get(prefix + asset, (0, 0))
                totals[prefix + asset] = (requests + counters.requests, sent + counters.bytes_sent)
        requests_family = CounterMetricFamily(
            "pxestack_http_asset_file_requests",
            "GET/HEAD requests that resolved to this asset file", labels=["asset"])
        bytes_family = CounterMetricFamily(
            "pxestack_http_asset_file_bytes",
            "Body bytes of this asset file handed to the kernel", labels=["asset"])
        for asset, (requests, sent) in sorted(totals.items()):
            requests_family.add_metric([asset], requests)
            bytes_family.add_metric([asset], sent)
        yield requests_family
        yield bytes_family

    def watch_asset_stats(self, stats: Any, *, prefix: str = "") -> None:
        """Count an asset resource's transfers and per-file counters (its ``AssetStats``):
        :func:`instrument_site` does it for a site's stats, the provisioning layer for the
        images resource, which keeps stats of its own."""
        observers = getattr(stats, "observers", None)
        if isinstance(observers, list):
            observers.append(self.http_transfer)
        if isinstance(getattr(stats, "per_asset", None), dict):
            self.watch_assets(lambda: stats.per_asset, prefix=prefix)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


_HYPHEN_MAC = re.compile(r"[0-9a-f]{2}(-[0-9a-f]{2}){5}")
#: A hardware address as :func:`mac_text` writes it (1 to 16 octets, chaddr's size).
_COLON_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){0,15}")
#: The boot events of the two MAC-keyed phases (``dhcp``, ``firmware``).
_MAC_PHASE_EVENTS = frozenset({"dhcp_offered", "dhcp_bound", "boot_script"})


def _check_name(name: str) -> None:
    if not re.fullmatch(r"pxestack_[a-z0-9_]+", name):
        raise ValueError(f"metric name {name!r} must be pxestack_ and lower-case words")


def mac_text(mac: bytes) -> str:
    """A hardware address as lower-case ``aa:bb:..`` (the key boot events use)."""
    return mac.hex(":")


#: ``pxestack_dhcp_lease_events_total`` kinds by the ``DhcpServerCore.counters`` key that
#: counts the same thing (one counter per event the core emits).
_LEASE_EVENT_COUNTERS: Mapping[str, str] = {
    "offered": "offers", "bound": "acks", "released": "releases", "declined": "declines",
    "expired": "expired", "nak": "naks", "pool-exhausted": "pool_exhausted",
}


def _type_label(received_type: int | None) -> str:
    """The ``type`` label of a received option 53 value (``none``, a name or ``other``)."""
    if received_type is None:
        return "none"
    return DHCP_MESSAGE_TYPES.get(received_type, "other")


def _reply_outcome(reply: bytes | None) -> str:
    """The ``outcome`` label of a ``DhcpDatagramProtocol.outcomes`` reply key."""
    if reply is None:
        return "ignored"
    if len(reply) != 1:
        return "error"  # pxestack.dhcp.protocol.BUG (this layer does not import adapters)
    name = DHCP_MESSAGE_TYPES.get(reply[0], "")
    return name if name in DHCP_OUTCOMES else "other"


def leases_by_pool(store: Any, now: float) -> dict[str, tuple[int, int]]:
    """``{pool: (in_use, size)}`` for an ``InMemoryLeaseStore`` (for :meth:`Metrics.watch_leases`).

    A pool is a configured subnet, labelled by its network (``198.18.0.0/24``); *in_use*
    counts addresses offered or bound at *now* inside its dynamic ranges and reservations.
    """
    subnets = list(store.subnets)
    result = {str(s.network): [0, sum(len(r) for r in s.ranges)] for s in subnets}
    for lease in store.leases():
        if not lease.active(now):
            continue
        for subnet in subnets:
            if lease.address in subnet.network:
                result[str(subnet.network)][0] += 1
                break
    return {pool: (used, size) for pool, (used, size) in result.items()}


class MetricsResource(Resource):
    """``GET /metrics``: the registry in Prometheus text (or OpenMetrics) format.

    :param token: when set, scrapes must send ``Authorization: Bearer <token>`` (Prometheus'
        ``authorization`` scrape setting); otherwise the page is open, as usual for metrics
        (they hold counts, never secrets or host names).
    """

    isLeaf = True

    def __init__(self, metrics: Metrics, *, token: str | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web is untyped here
        self.metrics = metrics
        self.token = token

    def render_GET(self, request: Any) -> bytes:
        """The exposition body (HEAD is answered by twisted.web from this)."""
        if self.token is not None:
            header = request.getHeader(b"authorization") or b""
            expected = b"Bearer " + self.token.encode()
            if not hmac.compare_digest(header, expected):
                request.setResponseCode(401)
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="pxestack-metrics"')
                request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
                return b"metrics token required\n"
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics.render(accept.decode("latin-1") if accept else None)
        request.setHeader(b"Content-Type", content_type.encode("latin-1"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body


def _state_name(host: Any) -> str:
    """A host record's state as text (``""`` when it has none)."""
    return str(getattr(getattr(host, "state", None), "value", ""))


class MeteredHostStore:
    """A host store that reports every stored state change to :meth:`Metrics.host_transition`.

    It wraps any ``HostStore`` (``FileHostStore``, ``InMemoryHostStore``) by delegation, so
    the provisioning layer needs no metrics code: build the ``Provisioner`` with
    ``MeteredHostStore(store, metrics)``.  Enrolment reports ``enrolled``; an update that
    changes ``State`` reports the new state (an update that keeps it, such as the
    ``boot_complete`` of every later reboot, reports nothing).  Everything else is passed
    through unchanged.

    :param clock: wall-clock seconds, the clock the DHCP adapters' reactor uses.
    """

    def __init__(self, store: Any, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def enrol(self, serial: str, make: Callable[..., Any], message: Any) -> Any:
        """The store's ``enrol``; a created record is the start of its provisioning."""
        versioned, created = self._store.enrol(serial, make, message)
        if created and _state_name(versioned.host) != "pending":
            # A pending host (enrolment: approve) is enrolled when it is approved.
            self._report(versioned, enrolled=True)
        return versioned, created

    def update(self, serial: str, change: Callable[[Any], Any], *,
               if_match: str | None = None) -> Any:
        """The store's ``update``; a change of ``State`` is reported after it is stored."""
        before: list[Any] = []

        def observed(host: Any) -> Any:
            before.append(getattr(host, "state", None))
            return change(host)

        versioned = self._store.update(serial, observed, if_match=if_match)
        after = getattr(versioned.host, "state", None)
        if before and before[-1] != after:
            approved = getattr(before[-1], "value", None) == "pending"
            self._report(versioned, enrolled=approved)
        return versioned

    def _report(self, versioned: Any, *, enrolled: bool) -> None:
        host = versioned.host
        state = getattr(getattr(host, "state", None), "value", "")
        try:
            self._metrics.host_transition(host.serial, str(state), self._clock(),
                                          enrolled=enrolled)
        except Exception:
            log.failure("recording a host transition failed", serial=host.serial)


def instrument_site(site: Any, metrics: Metrics) -> None:
    """Count every request *site* answers (wraps its ``log`` method, twisted.web's
    per-request completion hook), and every asset transfer when it has ``stats.observers``.

    For wiring without touching the site's class; a site that calls
    :meth:`Metrics.http_request` from its own ``log`` does not need this.
    """
    original = site.log

    def log_and_count(request: Any) -> None:
        original(request)
        try:
            metrics.http_request(request)
        except Exception:
            log.failure("counting an HTTP request failed")

    site.log = log_and_count
    metrics.watch_asset_stats(getattr(site, "stats", None))


__all__ = [
    "BOOT_EVENTS",
    "BOOT_PHASES",
    "DEFAULT_HTTP_ENDPOINTS",
    "DHCP_MESSAGE_TYPES",
    "DHCP_OUTCOMES",
    "BootPhase",
    "BootPhaseTracker",
    "MeteredHostStore",
    "Metrics",
    "MetricsResource",
    "instrument_site",
    "leases_by_pool",
    "mac_text",
]
