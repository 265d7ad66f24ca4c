"""The registry: one :class:`Metrics` object and the hooks that move its metrics.

The protocol adapters and the provisioning layer report events to a :class:`Metrics`
object through small, cheap calls (no I/O, no locks beyond prometheus_client's own);
``/metrics`` (:class:`~pxestack.metrics.resource.MetricsResource`) renders them in the
Prometheus text format, or OpenMetrics when the scraper asks for it.  Each hook is shaped
like the callback its caller already has, so wiring is one line per adapter:

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
:meth:`Metrics.watch_profiles`   provisioning wiring, once                         pull
:meth:`Metrics.watch_store`      provisioning wiring, once                         pull
:meth:`Metrics.host_changed`     an ``ObservedHostStore`` observer, after each     per change
                                 stored change (:mod:`pxestack.metrics.hosts`)
:meth:`Metrics.boot_event`       ``/ipxebootscript?mac=`` (``boot_script``)        per event
===============================  ================================================  =========

The ``attach_*`` methods do the wiring for a whole adapter object in one call
(:meth:`Metrics.attach_dhcp_server`, :meth:`~Metrics.attach_dhcp_protocol`,
:meth:`~Metrics.attach_tftp_server`, :meth:`~Metrics.attach_site`); they compose with any
callback the object already has.

"Pull" sources are callables read at scrape time, so a gauge can never go stale or drift
from the truth (leases in use, hosts per state).  A pull source that raises is logged and
skipped: a broken source never breaks the scrape or the server.

Names follow Prometheus' conventions: the unit is the last word of the name (``_seconds``,
``_bytes``, ``_datagrams``), ``_total`` ends counters and only counters, bytes have
counters of their own (never a label value of an events counter), and no fact is counted
by two families.  Label values are lower-case words joined by ``_``.  prometheus_client's
``_created`` series are switched off (:func:`prometheus_client.disable_created_metrics`):
they double the series count and no dashboard or alert reads them.

Every label value is taken from a fixed set or from the operator's configuration (pool
networks, profile names), never verbatim from a client: a hostile client must not be able
to create unbounded time series (bounded memory; see docs/reference/hostile-inputs.md).

This package is in layer 4 (beside :mod:`pxestack.service`): it may use the sans-IO value
types below it but never :mod:`pxestack.provision`; the provisioning layer calls in.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from twisted.logger import Logger

from pxestack import __version__
from pxestack.metrics.phases import (
    BOOT_EVENTS,
    DURATION_BUCKETS,
    BootPhaseTracker,
    PhaseHistogram,
)

if TYPE_CHECKING:
    from pxestack.metrics.hosts import HostChange

# A process-wide switch of prometheus_client: no ``<name>_created`` series for counters and
# histograms (see the module documentation).  The function is untyped in prometheus_client.
disable_created_metrics()  # type: ignore[no-untyped-call]

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
                "pool_exhausted")

#: First path segments that get their own ``endpoint`` label; the rest are "other".
#: (Bare asset paths such as ``/ipxe.efi`` are file names: unbounded, so "other".)
DEFAULT_HTTP_ENDPOINTS = frozenset({
    "ipxebootscript", "first-stage-script", "first-stage-ignition.json",
    "final-ignition-config.json", "ignition", "images", "admin", "assets", "healthz",
    "metrics", "installer-ignition", "script", "boot.ipxe", "dashboard",
    "first-stage-cloudconfig.yaml", "final-cloud-config.yaml",
})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


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
            "pxestack_tftp_acked_bytes", "TFTP payload bytes acknowledged by clients",
            registry=reg)
        self.tftp_datagrams = Counter(
            "pxestack_tftp_sent_datagrams", "TFTP DATA/OACK datagrams sent, retransmissions "
            "included", registry=reg)
        self.tftp_retransmits = Counter(
            "pxestack_tftp_retransmitted_datagrams", "TFTP DATA/OACK datagrams sent again",
            registry=reg)
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
        self._pull.sources.append(_build_info)
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
        label = _label_value(kind)
        if label not in LEASE_EVENTS:
            label = "other"
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
        label = _label_value(str(getattr(outcome, "value", outcome)))
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
        outcome = _label_value(str(getattr(record, "outcome", "other")))
        if outcome not in ("completed", "client_gone", "stalled", "stopped"):
            outcome = "other"
        method = str(getattr(record, "method", "other"))
        if method not in ("sendfile", "copy"):
            method = "other"
        self.http_transfers.labels(outcome, method).inc()
        self.http_transfer_bytes.labels(method).inc(max(0, int(getattr(record, "sent", 0))))

    # -- provisioning ----------------------------------------------------------------------

    def watch_hosts(self, source: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Export ``pxestack_hosts{state}`` and ``pxestack_profile_hosts{profile}``.

        *source* yields ``(state, profile)`` per host at scrape time, e.g.
        ``lambda: [(h.state.value, h.profile) for h in provisioner.hosts()]``.
        """

        def families() -> Iterator[Metric]:
            by_state: dict[str, int] = dict.fromkeys(
                ("pending", "unknown", "configured", "installing", "installed", "running"), 0)
            by_profile: dict[str, int] = {}
            for state, profile in source():
                by_state[state] = by_state.get(state, 0) + 1
                by_profile[profile or "-"] = by_profile.get(profile or "-", 0) + 1
            states = GaugeMetricFamily("pxestack_hosts", "Provisioned hosts per state",
                                       labels=["state"])
            for state, count in sorted(by_state.items()):
                states.add_metric([state], count)
            profiles = GaugeMetricFamily("pxestack_profile_hosts",
                                         "Hosts per assigned profile (\"-\": none yet)",
                                         labels=["profile"])
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

    def host_changed(self, change: HostChange) -> None:
        """A stored host change (an :class:`~pxestack.metrics.hosts.ObservedHostStore`
        observer): enrolment is the ``enrolled`` boot event, else the new state is.

        ``installing``, ``installed``, ``running`` and ``configured`` end and start
        phases; ``pending`` and ``unknown`` do nothing.
        """
        if change.enrolled:
            self.boot_event(change.serial, "enrolled", change.time)
        elif change.state in BOOT_EVENTS:
            self.boot_event(change.serial, change.state, change.time)

    def watch_profiles(self, source: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Export ``pxestack_profile_quantity{profile}``: how many machines each configured
        profile takes (mayu's ``quantity``; 0 means it is never assigned automatically).

        *source* yields ``(name, quantity)`` per configured profile at scrape time; with
        ``pxestack_profile_hosts{profile}`` (:meth:`watch_hosts`) it gives each profile's
        capacity and use, so an alert can fire before the machines of a rack run out of
        profiles.
        """

        def families() -> Iterator[Metric]:
            quantity = GaugeMetricFamily(
                "pxestack_profile_quantity",
                "Machines a configured profile takes (its quantity)", labels=["profile"])
            for name, count in sorted(source()):
                quantity.add_metric([name], count)
            yield quantity

        self._pull.sources.append(families)

    def watch_store(self, health: Callable[[], Mapping[str, Any]]) -> None:
        """Export the host store's health, read at scrape time from its ``health()``.

        ``pxestack_store_healthy`` is 1 when the store works (its ``ok``: git audit up to
        date, every record readable, not damaged) and 0 when it is degraded;
        ``pxestack_store_read_only`` is 1 when damage made the host records read-only
        (every write refused until an operator repairs the cluster directory).
        """

        def families() -> Iterator[Metric]:
            report = health()
            yield GaugeMetricFamily(
                "pxestack_store_healthy", "1 when the host store and its git audit work, "
                "0 when degraded (see /admin/health)", value=1 if report.get("ok") else 0)
            yield GaugeMetricFamily(
                "pxestack_store_read_only", "1 when the cluster directory is damaged and "
                "host records are read-only", value=1 if report.get("read_only") else 0)

        self._pull.sources.append(families)

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
        # The lease-changing counters are pxestack_dhcp_lease_events_total; the rest
        # (informs, the reasons a message was ignored) are counted here, each fact once.
        self.watch_counters("pxestack_dhcp_server_events", "DHCP server core counters that "
                            "are not lease events: informs and ignored messages, by reason",
                            lambda: core.counters,
                            exclude=frozenset(_LEASE_EVENT_COUNTERS.values()))

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
        # Transfers by outcome, bytes and retransmissions have families of their own (from
        # on_stats); the server's running counters add what happens outside a transfer.
        self.watch_counters("pxestack_tftp_server_events", "TFTP requests and datagrams "
                            "outside a transfer: requests, refusals, malformed or foreign "
                            "datagrams, requests over the limit",
                            server.stats.snapshot, exclude=_TFTP_COUNTED_ELSEWHERE)
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


def _build_info() -> Iterator[Metric]:
    """``pxestack_build_info{version}``: always 1; the version is in the label (the usual
    way to put a build's identity beside its metrics, e.g. to see a rollout)."""
    family = GaugeMetricFamily("pxestack_build_info", "The running pxestack's version",
                               labels=["version"])
    family.add_metric([__version__], 1)
    yield family


def _label_value(text: str) -> str:
    """A label value spelt the one way the metrics use: lower-case, words joined by ``_``
    (the lease event ``pool-exhausted`` and the outcome ``timed-out`` are written so)."""
    return text.lower().replace("-", "_")


#: Keys of the TFTP server's running counters that other families count already:
#: ``active`` is the gauge ``pxestack_tftp_active_transfers``, the outcomes are
#: ``pxestack_tftp_transfers_total{outcome}``, and bytes and retransmissions have
#: counters of their own.
_TFTP_COUNTED_ELSEWHERE = frozenset({
    "active", "completed", "aborted", "failed", "evicted", "bytes_acked", "retransmits",
})


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
    "expired": "expired", "nak": "naks", "pool_exhausted": "pool_exhausted",
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
    "DEFAULT_HTTP_ENDPOINTS",
    "DHCP_MESSAGE_TYPES",
    "DHCP_OUTCOMES",
    "HTTP_METHODS",
    "LEASE_EVENTS",
    "Metrics",
    "instrument_site",
    "leases_by_pool",
    "mac_text",
]
