"""pxestack.metrics: the numbers move when events are recorded, and /metrics parses.

The exposition is always read back with prometheus_client's own parser, so every test also
checks that the output is valid Prometheus text.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
import pytest_twisted
import treq
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.web.server import Site

from pxestack.config import load_config
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Subnet
from pxestack.dhcp.server import LeaseEvent
from pxestack.http.site import build_site
from pxestack.http.stats import AssetStats, TransferRecord
from pxestack.metrics import (
    BOOT_PHASES,
    DURATION_BUCKETS,
    BootPhaseTracker,
    HostChange,
    Metrics,
    MetricsResource,
    ObservedHostStore,
    PhaseHistogram,
    instrument_site,
    leases_by_pool,
)
from pxestack.provision.api import ProvisioningApi
from pxestack.provision.provisioner import Provisioner, callback_key
from pxestack.provision.store import FileHostStore
from pxestack.tftp.stats import Outcome, SessionStats

MAC = b"\x52\x54\x00\x12\x34\x56"


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text exposition, parsed: (name, sorted labels) -> value."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process_metrics=False)


# -- DHCP ----------------------------------------------------------------------------------


def test_dhcp_packets_by_type_and_outcome(metrics):
    metrics.dhcp_replies(1, [2])  # DISCOVER -> OFFER
    metrics.dhcp_replies(3, [5])  # REQUEST -> ACK
    metrics.dhcp_replies(3, [5])
    metrics.dhcp_replies(3, [6])  # REQUEST -> NAK
    metrics.dhcp_replies(8, [])  # INFORM ignored
    metrics.dhcp_packet(None, "malformed")
    metrics.dhcp_packet(99, "error")  # unknown type, bug
    metrics.dhcp_packet(1, "made-up outcome")  # never a new label value
    s = scrape(metrics)
    assert value(s, "pxestack_dhcp_packets_total", type="discover", outcome="offer") == 1
    assert value(s, "pxestack_dhcp_packets_total", type="request", outcome="ack") == 2
    assert value(s, "pxestack_dhcp_packets_total", type="request", outcome="nak") == 1
    assert value(s, "pxestack_dhcp_packets_total", type="inform", outcome="ignored") == 1
    assert value(s, "pxestack_dhcp_packets_total", type="none", outcome="malformed") == 1
    assert value(s, "pxestack_dhcp_packets_total", type="other", outcome="error") == 1
    assert value(s, "pxestack_dhcp_packets_total", type="discover", outcome="other") == 1


def test_lease_events_count_and_time_the_dhcp_phase(metrics):
    metrics.dhcp_lease_event(LeaseEvent("offered", None, 1, MAC, "eth0"), now=100.0)
    metrics.dhcp_lease_event(LeaseEvent("bound", None, 1, MAC, "eth0"), now=102.5)
    metrics.dhcp_lease_event(LeaseEvent("bound", None, 2, MAC, "eth0"), now=3000.0)  # renewal
    metrics.dhcp_lease_event(LeaseEvent("weird", None, 3, MAC, "eth0"))
    s = scrape(metrics)
    assert value(s, "pxestack_dhcp_lease_events_total", event="offered") == 1
    assert value(s, "pxestack_dhcp_lease_events_total", event="bound") == 2
    assert value(s, "pxestack_dhcp_lease_events_total", event="other") == 1
    # One DORA measured; the renewal has no offer before it and is not a boot.
    assert value(s, "pxestack_boot_phase_duration_seconds_count", phase="dhcp") == 1
    assert value(s, "pxestack_boot_phase_duration_seconds_sum", phase="dhcp") == 2.5


def test_leases_in_use_per_pool_follow_the_store(metrics):
    pool_a = Subnet(IPv4Network("198.18.0.0/24"),
                    (AddressRange(IPv4Address("198.18.0.100"), IPv4Address("198.18.0.109")),))
    pool_b = Subnet(IPv4Network("198.18.1.0/24"),
                    (AddressRange(IPv4Address("198.18.1.10"), IPv4Address("198.18.1.13")),))
    store = InMemoryLeaseStore([pool_a, pool_b])
    clock = [0.0]
    metrics.watch_leases(lambda: leases_by_pool(store, clock[0]))
    s = scrape(metrics)
    assert value(s, "pxestack_dhcp_leases_in_use", pool="198.18.0.0/24") == 0
    assert value(s, "pxestack_dhcp_pool_addresses", pool="198.18.0.0/24") == 10
    assert value(s, "pxestack_dhcp_pool_addresses", pool="198.18.1.0/24") == 4
    for i in range(3):
        mac = bytes([0x52, 0x54, 0, 0, 0, i])
        lease = store.offer(mac, mac, None, pool_a, None, now=0.0, hold=30.0)
        assert lease is not None
        store.bind(mac, mac, None, lease.address, now=1.0, lease_time=600.0)
    other = b"\x52\x54\x00\x00\x01\x01"
    assert store.offer(other, other, None, pool_b, None, now=0.0, hold=30.0) is not None
    clock[0] = 10.0
    s = scrape(metrics)
    assert value(s, "pxestack_dhcp_leases_in_use", pool="198.18.0.0/24") == 3
    assert value(s, "pxestack_dhcp_leases_in_use", pool="198.18.1.0/24") == 1
    clock[0] = 100.0  # the offer hold lapsed; the bindings last
    s = scrape(metrics)
    assert value(s, "pxestack_dhcp_leases_in_use", pool="198.18.1.0/24") == 0
    assert value(s, "pxestack_dhcp_leases_in_use", pool="198.18.0.0/24") == 3


# -- TFTP ----------------------------------------------------------------------------------


def transfer(outcome: Outcome, acked: int, sent: int, retransmits: int, duration: float):
    return SessionStats(client=("198.18.0.5", 2000), path="ipxe.efi", outcome=outcome,
                        bytes_acked=acked, datagrams_sent=sent, retransmits=retransmits,
                        blksize=1468, windowsize=1, tsize=acked, started=10.0,
                        finished=10.0 + duration)


def test_tftp_transfers_bytes_and_retransmits(metrics):
    metrics.tftp_transfer(transfer(Outcome.COMPLETE, 1_000_000, 700, 3, 0.8))
    metrics.tftp_transfer(transfer(Outcome.COMPLETE, 500_000, 341, 0, 0.3))
    metrics.tftp_transfer(transfer(Outcome.ABORTED, 0, 1, 0, 0.01))  # OVMF's size probe
    metrics.tftp_transfer(transfer(Outcome.TIMED_OUT, 2936, 12, 10, 30.0))
    s = scrape(metrics)
    assert value(s, "pxestack_tftp_transfers_total", outcome="complete") == 2
    assert value(s, "pxestack_tftp_transfers_total", outcome="aborted") == 1
    assert value(s, "pxestack_tftp_transfers_total", outcome="timed_out") == 1
    assert value(s, "pxestack_tftp_acked_bytes_total") == 1_502_936
    assert value(s, "pxestack_tftp_retransmitted_datagrams_total") == 13
    assert value(s, "pxestack_tftp_sent_datagrams_total") == 1054
    assert value(s, "pxestack_tftp_transfer_duration_seconds_count") == 4
    assert value(s, "pxestack_tftp_transfer_duration_seconds_bucket", le="1.0") == 3


def test_watch_counters_exports_an_adapters_running_counters(metrics):
    from pxestack.tftp.stats import ServerStats

    stats = ServerStats()
    metrics.watch_counters("pxestack_tftp_server_events", "TFTP server counters",
                           stats.snapshot, exclude=("active",))
    metrics.watch_gauge("pxestack_tftp_active_transfers", "TFTP transfers running",
                        lambda: stats.active)
    stats.requests += 5
    stats.malformed += 2
    stats.active = 3
    s = scrape(metrics)
    assert value(s, "pxestack_tftp_server_events_total", event="requests") == 5
    assert value(s, "pxestack_tftp_server_events_total", event="malformed") == 2
    assert ("pxestack_tftp_server_events_total", (("event", "active"),)) not in s
    assert value(s, "pxestack_tftp_active_transfers") == 3
    stats.active = 0
    assert value(scrape(metrics), "pxestack_tftp_active_transfers") == 0
    with pytest.raises(ValueError):
        metrics.watch_counters("tftp", "no prefix", dict)
    with pytest.raises(ValueError):
        metrics.watch_gauge("pxestack_Bad Name", "spaces", lambda: 0)


def test_a_failing_source_is_left_out_not_fatal(metrics):
    def broken():
        raise RuntimeError("store is gone")

    metrics.watch_hosts(broken)
    metrics.dhcp_packet(1, "offer")
    s = scrape(metrics)
    assert value(s, "pxestack_dhcp_packets_total", type="discover", outcome="offer") == 1
    assert not any(name == "pxestack_hosts" for name, _ in s)


# -- HTTP ----------------------------------------------------------------------------------


def test_http_transfer_records(metrics):
    def record(outcome, method, sent):
        return TransferRecord(asset="flatcar/vmlinuz", client="198.18.0.5", offset=0,
                              length=100, sent=sent, method=method, outcome=outcome,
                              duration=0.1)

    metrics.http_transfer(record("completed", "sendfile", 100))
    metrics.http_transfer(record("client-gone", "copy", 40))
    metrics.http_transfer(record("bogus", "bogus", 5))
    s = scrape(metrics)
    assert value(s, "pxestack_http_asset_transfers_total", outcome="completed",
                 method="sendfile") == 1
    assert value(s, "pxestack_http_asset_transfers_total", outcome="client_gone",
                 method="copy") == 1
    assert value(s, "pxestack_http_asset_transfers_total", outcome="other", method="other") == 1
    assert value(s, "pxestack_http_asset_bytes_total", method="sendfile") == 100


@pytest.mark.parametrize(("path", "endpoint"), [
    (b"/metrics", "metrics"),
    (b"/admin/host/sn-1/set_state", "admin"),
    (b"/images/sn-1/vmlinuz", "images"),
    (b"/ipxebootscript?serial=x", "ipxebootscript"),
    (b"/", "root"),
    (b"/ipxe.efi", "other"),  # bare asset names are unbounded: one label for all
    (b"/%00%ff/../../etc/passwd", "other"),
])
def test_endpoint_labels_are_bounded(metrics, path, endpoint):
    assert metrics.endpoint_of(path) == endpoint


@pytest_twisted.inlineCallbacks
def test_site_requests_are_counted_and_the_endpoint_parses(tmp_path):
    metrics = Metrics()  # with process metrics: they must parse too
    (tmp_path / "ipxe.efi").write_bytes(b"x" * 5000)
    site = build_site(tmp_path, children={b"metrics": MetricsResource(metrics)}, reactor=reactor)
    instrument_site(site, metrics)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        for path in ("/assets/ipxe.efi", "/ipxe.efi", "/missing", "/metrics"):
            response = yield treq.get(base + path, persistent=False)
            yield treq.content(response)
        response = yield treq.get(base + "/metrics", persistent=False)
        body = yield treq.content(response)
        om = yield treq.get(base + "/metrics", persistent=False, headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        om_body = yield treq.content(om)
    finally:
        yield port.stopListening()
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(samples, "pxestack_http_requests_total", endpoint="assets", method="GET",
                 status="200") == 1
    assert value(samples, "pxestack_http_requests_total", endpoint="other", method="GET",
                 status="200") == 1
    assert value(samples, "pxestack_http_requests_total", endpoint="other", method="GET",
                 status="404") == 1
    assert value(samples, "pxestack_http_requests_total", endpoint="metrics", method="GET",
                 status="200") == 1
    assert value(samples, "pxestack_http_response_bytes_total", endpoint="assets") == 5000
    assert value(samples, "pxestack_http_asset_bytes_total", method="sendfile") + value(
        samples, "pxestack_http_asset_bytes_total", method="copy") == 10000
    # Per asset file (the two URLs name one file): a series per real file, none for /missing.
    per_file = {labels: v for (name, labels), v in samples.items()
                if name == "pxestack_http_asset_file_bytes_total"}
    assert per_file == {(("asset", "ipxe.efi"),): 10000}
    assert value(samples, "pxestack_http_asset_file_requests_total", asset="ipxe.efi") == 2
    assert any(name.startswith("process_") for name, _ in samples)
    assert om.headers.getRawHeaders("content-type")[0].startswith("application/openmetrics-text")
    assert om_body.rstrip().endswith(b"# EOF")


@pytest_twisted.inlineCallbacks
def test_metrics_token(metrics):
    port = reactor.listenTCP(0, Site(MetricsResource(metrics, token="scrape-me")),
                             interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}/"
    try:
        refused = yield treq.get(base, persistent=False)
        yield treq.content(refused)
        allowed = yield treq.get(base, persistent=False,
                                 headers={"Authorization": "Bearer scrape-me"})
        yield treq.content(allowed)
    finally:
        yield port.stopListening()
    assert (refused.code, allowed.code) == (401, 200)


# -- provisioning: hosts and boot phases ---------------------------------------------------


def test_boot_phases_of_an_install_to_disk(metrics):
    metrics.boot_event("SN-1", "enrolled", 0.0)
    metrics.boot_event("sn-1", "installing", 40.0)
    metrics.boot_event("sn-1", "installed", 340.0)
    metrics.boot_event("sn-1", "running", 400.0)
    metrics.boot_event("sn-1", "running", 90000.0)  # a later reboot: nothing new measured
    s = scrape(metrics)
    expected = {"installer_boot": 40.0, "install": 300.0, "first_boot": 60.0,
                "installing_to_running": 360.0, "provision": 400.0}
    for phase, seconds in expected.items():
        assert value(s, "pxestack_boot_phase_duration_seconds_count", phase=phase) == 1
        assert value(s, "pxestack_boot_phase_duration_seconds_sum", phase=phase) == seconds
    with pytest.raises(ValueError):
        metrics.boot_event("sn-1", "exploded", 1.0)


def test_host_transitions_and_the_firmware_phase(metrics):
    """The provisioning hook by state, and iPXE's hyphenated MAC matching DHCP's bytes."""
    metrics.dhcp_lease_event(LeaseEvent("bound", None, 1, MAC, "eth0"), now=10.0)
    metrics.boot_event("52-54-00-12-34-56", "boot_script", 13.0)  # ${mac:hexhyp}
    def change(state: str, previous: str | None, now: float) -> HostChange:
        return HostChange("sn-9", state, previous, "core", (), None, now)

    metrics.host_changed(change("unknown", None, 20.0))  # enrolled on first contact
    metrics.host_changed(change("installing", "unknown", 50.0))
    metrics.host_changed(change("unknown", "installing", 60.0))  # no phase boundary
    metrics.host_changed(change("running", "unknown", 80.0))  # PXE-every-boot: no "installed"
    s = scrape(metrics)
    assert value(s, "pxestack_boot_phase_duration_seconds_sum", phase="firmware") == 3.0
    assert value(s, "pxestack_boot_phase_duration_seconds_sum", phase="installer_boot") == 30.0
    assert value(s, "pxestack_boot_phase_duration_seconds_sum",
                 phase="installing_to_running") == 30.0
    assert value(s, "pxestack_boot_phase_duration_seconds_count", phase="first_boot") == 0


def test_reinstall_discards_unfinished_phases(metrics):
    metrics.boot_event("sn-1", "installing", 0.0)
    metrics.boot_event("sn-1", "configured", 10.0)  # operator asked for a reinstall
    metrics.boot_event("sn-1", "installed", 20.0)
    s = scrape(metrics)
    assert value(s, "pxestack_boot_phase_duration_seconds_count", phase="install") == 0


EVENTS = sorted({e for p in BOOT_PHASES for e in (p.start, p.end)} | {"configured"})


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from(EVENTS),
                          st.floats(0, 1e6, allow_nan=False)), max_size=200))
def test_tracker_is_bounded_and_never_observes_negative_time(steps):
    observed: list[tuple[str, float]] = []
    tracker = BootPhaseTracker(lambda phase, seconds: observed.append((phase, seconds)),
                               max_machines=8, max_age=5e5)
    for machine, event, now in steps:
        tracker.event(f"m{machine}", event, now)
        assert len(tracker) <= 8
    assert all(0 <= seconds <= 5e5 for _, seconds in observed)
    assert {phase for phase, _ in observed} <= {p.name for p in BOOT_PHASES}


@pytest_twisted.inlineCallbacks
def test_hosts_per_state_and_profile_move_as_a_machine_provisions(tmp_path):
    """A machine walks through mayu's flow over real HTTP; the scrape follows it."""
    cluster = tmp_path / "cluster"
    config = load_config({"provision": {
        "cluster_dir": str(cluster), "default_os_version": "3975.2.0",
        "network": {"ip_range": {"start": "198.18.10.10", "end": "198.18.10.50"},
                    "subnet_size": 24, "subnet_gateway": "198.18.10.1"},
        "profiles": [{"name": "core", "quantity": 1}],
    }}).provision
    metrics = Metrics(process_metrics=False)
    clock = [1000.0]
    store = ObservedHostStore(FileHostStore(cluster), [metrics.host_changed],
                              clock=lambda: clock[0])
    provisioner = Provisioner(config, store, base_url="http://198.18.0.1:8080",
                              key=callback_key(cluster))
    metrics.watch_hosts(lambda: [(h.state.value, h.profile) for h in provisioner.hosts()])
    api = ProvisioningApi(provisioner, admin_token=None)
    children = dict(api.children())
    children[b"metrics"] = MetricsResource(metrics)
    site = build_site(None, children=children, reactor=reactor)
    instrument_site(site, metrics)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"

    def call(method, path, body=None):
        d = treq.request(method, base + path, persistent=False,
                         data=json.dumps(body).encode() if body is not None else None)
        return d.addCallback(lambda r: treq.content(r).addCallback(lambda _: r.code))

    def scrape_http():
        d = treq.get(base + "/metrics", persistent=False)
        d.addCallback(treq.content)

        def parse(body):
            out = {}
            for family in text_string_to_metric_families(body.decode()):
                for sample in family.samples:
                    out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            return out

        return d.addCallback(parse)

    try:
        states = []
        assert (yield call("GET", "/first-stage-script/sn-1")) == 200
        states.append((yield scrape_http()))
        host_data = {"Serial": "sn-1", "NetDevs": [
            {"Name": "eno1", "MacAddress": "52:54:00:00:00:01"}], "ConnectedNIC": "eno1"}
        clock[0] += 45  # the live installer boots
        assert (yield call("POST", "/final-ignition-config.json", host_data)) == 200
        states.append((yield scrape_http()))
        clock[0] += 200  # the disk is written
        assert (yield call("PUT", "/admin/host/sn-1/set_installed")) == 202
        clock[0] += 70  # reboot into the installed OS
        assert (yield call("PUT", "/admin/host/sn-1/boot_complete", {})) == 202
        clock[0] += 86400  # a reboot a day later: nothing new to measure
        assert (yield call("PUT", "/admin/host/sn-1/boot_complete", {})) == 202
        states.append((yield scrape_http()))
    finally:
        yield port.stopListening()
    per_state = [{st: value(s, "pxestack_hosts", state=st)
                  for st in ("unknown", "installing", "running")} for s in states]
    assert per_state == [{"unknown": 1, "installing": 0, "running": 0},
                         {"unknown": 0, "installing": 1, "running": 0},
                         {"unknown": 0, "installing": 0, "running": 1}]
    assert value(states[-1], "pxestack_profile_hosts", profile="core") == 1
    last = states[-1]
    assert value(last, "pxestack_http_requests_total", endpoint="first-stage-script",
                 method="GET", status="200") == 1
    assert value(last, "pxestack_http_requests_total", endpoint="admin", method="PUT",
                 status="202") == 3
    phases = {p: (value(last, "pxestack_boot_phase_duration_seconds_count", phase=p),
                  value(last, "pxestack_boot_phase_duration_seconds_sum", phase=p))
              for p in ("installer_boot", "install", "first_boot", "provision")}
    assert phases == {"installer_boot": (1, 45), "install": (1, 200), "first_boot": (1, 70),
                      "provision": (1, 315)}
    # Before the machine went further, nothing had been measured.
    assert value(states[0], "pxestack_boot_phase_duration_seconds_count",
                 phase="installer_boot") == 0


# -- one-call wiring against the real adapters ---------------------------------------------


def _dhcp_server(clock, event_kinds=None):
    from pxestack.dhcp.decide import BootDefaults
    from pxestack.dhcp.policy import StaticBootPolicy
    from pxestack.dhcp.protocol import DeadlineTimer, DhcpServerProtocol
    from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo, ServerSettings, SubnetSettings

    net = IPv4Network("198.18.0.0/24")
    subnet = SubnetSettings(Subnet(net, (AddressRange(IPv4Address("198.18.0.100"),
                                                      IPv4Address("198.18.0.109")),)))
    store = InMemoryLeaseStore([subnet.subnet])
    seen = []
    core = DhcpServerCore(
        ServerSettings((subnet,), offer_hold=30.0), store, StaticBootPolicy(),
        BootDefaults(server_address=IPv4Address(0),
                     ipxe_script_url="http://198.18.0.1:8080/boot.ipxe"),
        on_event=seen.append, event_kinds=event_kinds)
    protocol = DhcpServerProtocol(core, InterfaceInfo("veth0", IPv4Address("198.18.0.1"), net),
                                  timer=DeadlineTimer(core, clock), reactor=clock)

    class Transport:
        def __init__(self):
            self.written = []

        def write(self, data, addr):
            self.written.append(data)

    transport = Transport()
    protocol.makeConnection(transport)
    return core, store, protocol, transport, seen


def _request_datagram(kind, options=()):
    """A broadcast DHCP request of option 53 *kind* from MAC, with *options* added."""
    from pxestack.wire import constants as c
    from pxestack.wire.dhcp import DhcpMessage, encode_dhcp
    from pxestack.wire.dhcp_options import DhcpOptions

    opts = {c.OPT_MESSAGE_TYPE: bytes((kind,)), **dict(options)}
    return encode_dhcp(DhcpMessage(op=c.BOOTREQUEST, xid=9, chaddr=MAC,
                                   flags=c.FLAG_BROADCAST, options=DhcpOptions(opts)))


def _dora(protocol, transport, clock, seconds):
    """DISCOVER, wait *seconds*, then REQUEST the offered address (SELECTING)."""
    from pxestack.wire import constants as c
    from pxestack.wire.dhcp import decode_dhcp

    protocol.datagramReceived(_request_datagram(c.DHCPDISCOVER), ("0.0.0.0", 68))
    offer = decode_dhcp(transport.written[-1])
    clock.advance(seconds)
    protocol.datagramReceived(_request_datagram(c.DHCPREQUEST, [
        (c.OPT_REQUESTED_IP, offer.yiaddr.packed),
        (c.OPT_SERVER_ID, IPv4Address("198.18.0.1").packed)]), ("0.0.0.0", 68))


def test_attach_dhcp_counts_real_packets_leases_and_the_dora_time(metrics):
    from twisted.internet.task import Clock

    from pxestack.wire import constants as c

    clock = Clock()
    clock.advance(1_000_000)
    core, store, protocol, transport, seen = _dhcp_server(clock)
    metrics.attach_dhcp_server(core, store, clock.seconds)
    metrics.attach_dhcp_protocol(protocol)
    _dora(protocol, transport, clock, 1.5)
    protocol.datagramReceived(b"\x01" * 100, ("198.18.0.9", 68))  # malformed
    # What a batching UDP port hands over: two more malformed datagrams in one batch.
    protocol.receive_batch([(b"", ("198.18.0.9", 68)), (b"\x02" * 50, ("198.18.0.9", 68))])
    protocol.datagramReceived(_request_datagram(c.DHCPINFORM), ("198.18.0.9", 68))
    assert [e.kind for e in seen][:2] == ["offered", "bound"]  # the core's own callback kept
    s = scrape(metrics)
    assert value(s, "pxestack_dhcp_packets_total", type="discover", outcome="offer") == 1
    assert value(s, "pxestack_dhcp_packets_total", type="request", outcome="ack") == 1
    assert value(s, "pxestack_dhcp_packets_total", type="none", outcome="malformed") == 3
    assert protocol.malformed == 3
    assert sum(v for (name, labels), v in s.items()
               if name == "pxestack_dhcp_packets_total" and ("type", "inform") in labels) == 1
    assert value(s, "pxestack_dhcp_leases_in_use", pool="198.18.0.0/24") == 1
    assert value(s, "pxestack_dhcp_pool_addresses", pool="198.18.0.0/24") == 10
    # Each fact is counted once: ACKs are lease events, not server events.
    assert value(s, "pxestack_dhcp_lease_events_total", event="bound") == core.counters["acks"] == 1
    assert ("pxestack_dhcp_server_events_total", (("event", "acks"),)) not in s
    lease_counters = {"offers", "acks", "naks", "releases", "declines", "expired",
                      "pool_exhausted"}
    assert {key: value(s, "pxestack_dhcp_server_events_total", event=key)
            for key in core.counters if key not in lease_counters} == {
        key: count for key, count in core.counters.items() if key not in lease_counters}
    assert value(s, "pxestack_boot_phase_duration_seconds_sum", phase="dhcp") == 1.5


def test_attach_dhcp_counts_lease_events_and_phases_whatever_the_log_level(metrics):
    """At log level warn the core builds no "offered"/"bound" events (event_kinds): the
    metrics still count them (from the core's counters) and time the DHCP phase."""
    from twisted.internet.task import Clock

    from pxestack.wire import constants as c

    clock = Clock()
    clock.advance(1_000_000)
    core, store, protocol, transport, seen = _dhcp_server(
        clock, event_kinds=frozenset({"nak", "pool-exhausted"}))
    metrics.attach_dhcp_server(core, store, clock.seconds)
    metrics.attach_dhcp_protocol(protocol)
    _dora(protocol, transport, clock, 0.75)
    protocol.datagramReceived(_request_datagram(c.DHCPREQUEST, [
        (c.OPT_REQUESTED_IP, IPv4Address("198.18.0.200").packed),
        (c.OPT_SERVER_ID, IPv4Address("198.18.0.1").packed)]), ("0.0.0.0", 68))  # NAK
    assert [e.kind for e in seen] == ["nak"]
    s = scrape(metrics)
    assert value(s, "pxestack_dhcp_lease_events_total", event="offered") == 1
    assert value(s, "pxestack_dhcp_lease_events_total", event="bound") == 1
    assert value(s, "pxestack_dhcp_lease_events_total", event="nak") == 1
    assert value(s, "pxestack_dhcp_packets_total", type="request", outcome="nak") == 1
    assert value(s, "pxestack_boot_phase_duration_seconds_sum", phase="dhcp") == 0.75
    # The offer hold and the lease run out: expiry is counted too.
    clock.advance(10 * 86400)
    assert value(scrape(metrics), "pxestack_dhcp_lease_events_total", event="expired") == 1


def test_dhcp_phase_memory_is_bounded(metrics):
    """A flood of DISCOVERs from distinct MACs keeps at most max_machines offer times."""
    limit = metrics.boot_phases.max_machines
    for n in range(limit + 50):
        metrics.dhcp_progress(False, n.to_bytes(6, "big"), float(n))
    assert len(metrics._offered_at) == limit
    metrics.dhcp_progress(True, (0).to_bytes(6, "big"), 1e5)  # its start was dropped
    metrics.dhcp_progress(True, (limit + 49).to_bytes(6, "big"), limit + 52.0)
    s = scrape(metrics)
    assert value(s, "pxestack_boot_phase_duration_seconds_count", phase="dhcp") == 1
    assert value(s, "pxestack_boot_phase_duration_seconds_sum", phase="dhcp") == 3.0


def test_attach_dhcp_protocol_counts_a_bug_and_still_never_raises(metrics):
    from twisted.internet.task import Clock

    clock = Clock()
    core, _store, protocol, _transport, _seen = _dhcp_server(clock)
    metrics.attach_dhcp_protocol(protocol)

    def broken(*args):
        raise KeyError("bug")

    core.handle = broken
    from pxestack.wire import constants as c
    from pxestack.wire.dhcp import DhcpMessage, encode_dhcp
    from pxestack.wire.dhcp_options import DhcpOptions

    protocol.datagramReceived(encode_dhcp(DhcpMessage(
        op=c.BOOTREQUEST, xid=1, chaddr=MAC,
        options=DhcpOptions({c.OPT_MESSAGE_TYPE: bytes((c.DHCPDISCOVER,))}))), ("0.0.0.0", 68))
    assert protocol.bugs == 1
    assert value(scrape(metrics), "pxestack_dhcp_packets_total", type="discover",
                 outcome="error") == 1


def test_attach_tftp_server_composes_with_its_callback(metrics, tmp_path):
    from twisted.internet.task import Clock

    from pxestack.tftp.protocol import TftpServer
    from pxestack.tftp.source import FilesystemSource

    earlier = []
    server = TftpServer(FilesystemSource(tmp_path), on_stats=earlier.append, reactor=Clock())
    metrics.attach_tftp_server(server)
    finished = transfer(Outcome.COMPLETE, 4096, 3, 1, 0.2)
    server.on_stats(finished)
    server.stats.record(finished)
    server.stats.requests += 1
    server.stats.active = 2
    assert earlier == [finished]
    s = scrape(metrics)
    assert value(s, "pxestack_tftp_transfers_total", outcome="complete") == 1
    assert value(s, "pxestack_tftp_server_events_total", event="requests") == 1
    # Outcomes, bytes and retransmissions are not repeated as server events.
    assert not {labels for name, labels in s if name == "pxestack_tftp_server_events_total"} & {
        (("event", key),) for key in ("completed", "bytes_acked", "retransmits", "active")}
    assert value(s, "pxestack_tftp_active_transfers") == 2


def test_asset_files_of_several_resources_share_two_families(metrics):
    """The site's assets and the provisioning images: one family each, names kept apart."""
    site_stats, image_stats = AssetStats(), AssetStats()
    site_stats.counters_for("ipxe.efi").requests = 3
    site_stats.counters_for("ipxe.efi").bytes_sent = 3000
    image_stats.counters_for("3975.2.0/vmlinuz").requests = 1
    image_stats.counters_for("3975.2.0/vmlinuz").bytes_sent = 50_000_000
    metrics.watch_asset_stats(site_stats)
    metrics.watch_asset_stats(image_stats, prefix="images/")
    s = scrape(metrics)
    assert value(s, "pxestack_http_asset_file_requests_total", asset="ipxe.efi") == 3
    assert value(s, "pxestack_http_asset_file_bytes_total", asset="ipxe.efi") == 3000
    assert value(s, "pxestack_http_asset_file_bytes_total",
                 asset="images/3975.2.0/vmlinuz") == 50_000_000
    # A transfer of either resource reaches the by-method counters through its observers.
    assert metrics.http_transfer in image_stats.observers
    # Counters are read at scrape time: a later transfer shows in the next scrape.
    image_stats.counters_for("3975.2.0/vmlinuz").bytes_sent += 1
    assert value(scrape(metrics), "pxestack_http_asset_file_bytes_total",
                 asset="images/3975.2.0/vmlinuz") == 50_000_001


def test_mac_keyed_phases_by_text_or_octets_are_one_record(metrics):
    """boot_event with a MAC in text and the core's octets hook feed the same phases."""
    metrics.boot_event("02:00:00:00:00:0A", "dhcp_offered", 1.0)
    metrics.dhcp_progress(True, bytes.fromhex("02000000000a"), 2.5)
    metrics.boot_event("02-00-00-00-00-0a", "boot_script", 4.0)
    metrics.boot_event("not-a-mac", "boot_script", 5.0)  # nothing started: nothing ends
    s = scrape(metrics)
    assert value(s, "pxestack_boot_phase_duration_seconds_sum", phase="dhcp") == 1.5
    assert value(s, "pxestack_boot_phase_duration_seconds_sum", phase="firmware") == 1.5
    assert value(s, "pxestack_boot_phase_duration_seconds_count", phase="firmware") == 1


# -- the boot-phase histogram ---------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(
    st.tuples(st.sampled_from(["dhcp", "firmware", "install"]),
              st.sampled_from(DURATION_BUCKETS[:-1]) | st.floats(0, 5000, allow_nan=False)),
    max_size=40,
))
def test_phase_histogram_exposes_what_a_prometheus_histogram_does(
    observations: list[tuple[str, float]],
) -> None:
    """The lighter histogram gives the samples of prometheus_client's ``Histogram`` fed the
    same durations (values on a bound included), apart from ``_created``."""
    name = "pxestack_boot_phase_duration_seconds"
    reference_registry = CollectorRegistry()
    reference = Histogram(name, "doc", ["phase"], buckets=DURATION_BUCKETS,
                          registry=reference_registry)
    lighter_registry = CollectorRegistry()
    lighter = PhaseHistogram(name, "doc", DURATION_BUCKETS)
    lighter_registry.register(lighter)
    for phase, seconds in observations:
        reference.labels(phase).observe(seconds)
        lighter.observe(phase, seconds)

    def samples(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...],
                                                         float]]:
        return sorted((sample.name, tuple(sorted(sample.labels.items())), sample.value)
                      for family in registry.collect() for sample in family.samples
                      if not sample.name.endswith("_created"))

    assert samples(lighter_registry) == samples(reference_registry)


# -- naming, build info, store health, profile capacity ------------------------------------


def test_no_created_series_and_names_follow_prometheus_conventions():
    """No ``_created`` samples; ``_total`` only on counters; byte counts have counters of
    their own; label values are written one way (``_``, never ``-``)."""
    from pxestack.tftp.stats import ServerStats

    metrics = Metrics(process_metrics=False)
    stats = ServerStats(requests=3, bytes_acked=4096)
    metrics.watch_counters("pxestack_tftp_server_events", "doc", stats.snapshot,
                           exclude=("active", "bytes_acked"))
    metrics.tftp_transfer(transfer(Outcome.TIMED_OUT, 10, 1, 0, 1.0))
    metrics.dhcp_lease_event(LeaseEvent("pool-exhausted", None, 1, MAC, "eth0"))
    metrics.http_transfer(TransferRecord(asset="a", client="198.18.0.5", offset=0, length=1,
                                         sent=1, method="copy", outcome="client-gone",
                                         duration=0.1))
    body = metrics.render()[0].decode()
    families = list(text_string_to_metric_families(body))
    names = {sample.name for family in families for sample in family.samples}
    assert not [name for name in names if name.endswith("_created")]
    for family in families:
        for sample in family.samples:
            if sample.name.endswith("_total"):
                assert family.type == "counter", sample.name
            if family.type == "counter" and "bytes" in sample.name:
                assert sample.name.endswith("_bytes_total"), sample.name
            for label, text in sample.labels.items():
                if label not in ("le", "version", "pool", "asset", "profile", "endpoint"):
                    assert "-" not in text, (sample.name, label, text)
    s = scrape(metrics)
    assert value(s, "pxestack_dhcp_lease_events_total", event="pool_exhausted") == 1
    assert value(s, "pxestack_tftp_transfers_total", outcome="timed_out") == 1


def test_build_info_names_the_running_version(metrics):
    from pxestack import __version__

    assert value(scrape(metrics), "pxestack_build_info", version=__version__) == 1


def test_store_health_follows_the_store(metrics):
    report = {"ok": True, "read_only": False}
    metrics.watch_store(lambda: report)
    s = scrape(metrics)
    assert (value(s, "pxestack_store_healthy"), value(s, "pxestack_store_read_only")) == (1, 0)
    report.update(ok=False)  # e.g. a git commit failed and waits for its retry
    s = scrape(metrics)
    assert (value(s, "pxestack_store_healthy"), value(s, "pxestack_store_read_only")) == (0, 0)
    report.update(read_only=True)  # damage found: records are read-only
    s = scrape(metrics)
    assert (value(s, "pxestack_store_healthy"), value(s, "pxestack_store_read_only")) == (0, 1)


def test_store_health_of_a_damaged_cluster_directory(tmp_path):
    """The gauge reads the real store: a store marked damaged is degraded and read-only."""
    metrics = Metrics(process_metrics=False)
    store = FileHostStore(tmp_path / "cluster")
    metrics.watch_store(store.health)
    assert value(scrape(metrics), "pxestack_store_healthy") == 1
    store.mark_damaged("cluster.json is torn")
    s = scrape(metrics)
    assert (value(s, "pxestack_store_healthy"), value(s, "pxestack_store_read_only")) == (0, 1)


def test_profile_capacity_is_quantity_and_hosts_per_profile(metrics):
    profiles = [("core", 3), ("worker", 0)]
    hosts = [("running", "core"), ("installing", "core"), ("pending", "")]
    metrics.watch_profiles(lambda: profiles)
    metrics.watch_hosts(lambda: hosts)
    s = scrape(metrics)
    assert value(s, "pxestack_profile_quantity", profile="core") == 3
    assert value(s, "pxestack_profile_quantity", profile="worker") == 0
    assert value(s, "pxestack_profile_hosts", profile="core") == 2
    assert value(s, "pxestack_profile_hosts", profile="-") == 1
    assert value(s, "pxestack_hosts", state="pending") == 1
