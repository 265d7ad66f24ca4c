"""Enrolment admission: dhcp-seen, approve, open, the first-contact rate, removal, 401s."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pygit2
import pytest
from fake_reactor import MemorySockets
from provision_helpers import ADMIN_TOKEN, Client, Rig, host_data, make_rig, token_from_script
from twisted.internet import address
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource

from pxestack.config import load_config
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Subnet
from pxestack.dhcp.seen import DhcpSightings, LeaseSightings
from pxestack.errors import ConfigError
from pxestack.provision.enrolment import (
    Admission,
    EnrolmentGate,
    EnrolmentRefused,
    FirstContactLimiter,
)

SEEN = "198.18.0.100"  # holds a lease from pxestack's DHCP
STRANGER = "198.18.0.66"  # never talked to pxestack's DHCP
MAC = bytes.fromhex("525400aa0001")
SUBNET = Subnet(IPv4Network("198.18.0.0/24"), (AddressRange(IPv4Address(SEEN), IPv4Address(SEEN)),))


class FromSource(Resource):
    """Sends every request as if it came from ``self.source`` (StubTreq's is fixed)."""

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self.inner = inner
        self.source = STRANGER

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        request.client = address.IPv4Address("TCP", self.source, 40000)
        child: Resource = self.inner.getChildWithDefault(path, request)
        return child


class Gated:
    """A provisioning rig behind an enrolment gate, with a settable source address."""

    def __init__(self, rig: Rig, gate: EnrolmentGate, clock: Clock) -> None:
        self.rig, self.gate, self.clock = rig, gate, clock
        rig.api.enrolment = gate
        rig.api.clock = clock.seconds
        self.front = FromSource(rig.api.root())
        self.client = Client(self.front)

    def request(self, method: str, path: str, source: str = STRANGER, **kwargs: Any) -> Any:
        self.front.source = source
        return self.client.request(method, path, **kwargs)

    def commits(self) -> int:
        audit = self.rig.store.audit
        assert audit is not None
        repo = audit.repo
        return sum(1 for _ in repo.walk(repo.head.target, pygit2.enums.SortMode.NONE))


def gated(tmp_path: Path, mode: str, *, rate: float = 0, sightings: Any = None,
          **overrides: Any) -> Gated:
    clock = Clock()
    clock.advance(1_700_000_000)
    rig = make_rig(tmp_path / "cluster", **overrides)
    gate = EnrolmentGate(mode, sightings=sightings, window=1800.0,
                         limiter=FirstContactLimiter(rate))
    return Gated(rig, gate, clock)


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def leased_sightings(now: float) -> DhcpSightings:
    """Sightings over a real lease store in which ``SEEN`` is bound."""
    leases = InMemoryLeaseStore([SUBNET])
    assert leases.bind(b"M" + MAC, MAC, None, IPv4Address(SEEN), now, 3600.0) is not None
    hub = DhcpSightings()
    hub.attach(LeaseSightings(leases))
    return hub


# -- dhcp-seen -------------------------------------------------------------------------------


def test_a_thousand_made_up_serials_create_nothing_and_a_dhcp_seen_machine_enrols(
    tmp_path: Path, logged: list[dict[str, Any]]
) -> None:
    clock_start = 1_700_000_000.0
    rig = gated(tmp_path, "dhcp-seen", rate=10, sightings=leased_sightings(clock_start),
                network={"ip_range": {"start": "198.18.10.10", "end": "198.18.10.12"}})
    before = rig.commits()
    for n in range(1000):
        path = f"/first-stage-script/fake-{n:04d}" if n % 2 else f"/ipxebootscript?serial=f{n}"
        answer = rig.request("GET", path)
        assert answer.code == 403, (path, answer.body)
    assert rig.rig.store.hosts() == []
    assert rig.commits() == before
    assert sorted(p.name for p in (tmp_path / "cluster").iterdir() if not p.name.startswith(".")) \
        == ["cluster.json"]
    refusals = [e for e in logged if "enrolment refused" in str(e.get("log_format", ""))]
    assert refusals and refusals[0]["source"] == STRANGER and refusals[0]["serial"] == "f0"

    real = rig.request("GET", "/first-stage-script/real-1", source=SEEN)
    assert real.code == 200, real.body
    host = rig.rig.provisioner.get("real-1")
    assert host is not None and str(host.host.internal_addr) == "198.18.10.10"
    assert rig.commits() == before + 1
    # A known machine is not a first contact: it is answered from anywhere.
    assert rig.request("GET", "/ipxebootscript?serial=real-1").code == 200


def test_the_window_after_a_lease_ends_is_enforced(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    leases = InMemoryLeaseStore([SUBNET])
    leases.bind(b"M" + MAC, MAC, None, IPv4Address(SEEN), now, 60.0)
    leases.expire(now + 60)
    hub = DhcpSightings()
    hub.attach(LeaseSightings(leases))
    gate = EnrolmentGate("dhcp-seen", sightings=hub, window=1800.0)
    assert gate.admit(SEEN, "a", now + 60 + 1799) is Admission.ENROL
    with pytest.raises(EnrolmentRefused) as refused:
        gate.admit(SEEN, "b", now + 60 + 1801)
    assert refused.value.code == 403
    # IPv4-mapped IPv6 sources are the same address; garbage is refused.
    assert gate.admit(f"::ffff:{SEEN}", "c", now + 61) is Admission.ENROL
    with pytest.raises(EnrolmentRefused):
        gate.admit("not-an-address", "d", now + 61)


# -- the first-contact rate and the pending cap ----------------------------------------------


def test_first_contacts_are_rate_limited_per_source_on_the_reactor_clock(tmp_path: Path) -> None:
    rig = gated(tmp_path, "open", rate=3)
    for n in range(3):
        assert rig.request("GET", f"/first-stage-script/s{n}").code == 200
    over = rig.request("GET", "/first-stage-script/s3")
    assert over.code == 429 and over.header("Retry-After") == "20"
    assert rig.rig.provisioner.get("s3") is None
    assert rig.request("GET", "/first-stage-script/s0").code == 200  # known: not limited
    assert rig.request("GET", "/first-stage-script/other", source=SEEN).code == 200
    rig.clock.advance(19)
    assert rig.request("GET", "/first-stage-script/s3").code == 429
    rig.clock.advance(1)
    assert rig.request("GET", "/first-stage-script/s3").code == 200


def test_the_limiter_forgets_the_least_recently_used_source() -> None:
    limiter = FirstContactLimiter(1, capacity=2)
    assert limiter.allow("a", 0.0) and not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0) and limiter.allow("c", 0.0)
    assert limiter.allow("a", 0.0)  # "a" was forgotten: a full bucket again
    assert FirstContactLimiter(0).allow("x", 0.0)


def test_pending_hosts_are_capped(tmp_path: Path, logged: list[dict[str, Any]]) -> None:
    rig = gated(tmp_path, "approve", max_pending=2)
    for serial in ("p1", "p2"):
        assert rig.request("GET", f"/ipxebootscript?serial={serial}").code == 200
    third = rig.request("GET", "/first-stage-script/p3")
    assert third.code == 503, third.body
    assert rig.rig.provisioner.get("p3") is None
    assert any("max_pending" in str(e.get("error", "")) for e in logged)


# -- approve ---------------------------------------------------------------------------------


def test_an_approved_host_gets_profile_and_address_in_one_commit(tmp_path: Path) -> None:
    rig = gated(tmp_path, "approve")
    script = rig.request("GET", "/ipxebootscript?serial=new-1&mac=52:54:00:aa:00:01")
    assert script.code == 200
    text = script.body.decode()
    assert "sleep 60" in text and "/ipxebootscript?serial=" in text and "kernel" not in text
    pending = rig.rig.provisioner.get("new-1")
    assert pending is not None
    host = pending.host
    assert (host.state.value, host.internal_addr, host.profile, host.machine_id) == (
        "pending", None, "", ""
    )
    # No installer, no config and no token while pending.
    assert rig.request("GET", "/first-stage-script/new-1").code == 403
    assert rig.request("GET", "/ignition?serial=new-1").code == 403
    # Only approve leaves pending.
    assert rig.request("PUT", "/admin/host/new-1/set_state", body={"State": "unknown"},
                       token=ADMIN_TOKEN).code == 409
    assert rig.request("PUT", "/admin/host/new-1/approve").code == 401
    commits = rig.commits()
    approved = rig.request("PUT", "/admin/host/new-1/approve", token=ADMIN_TOKEN)
    assert approved.code == 202 and approved.header("ETag")
    assert rig.commits() == commits + 1
    host = rig.rig.provisioner.get("new-1").host  # type: ignore[union-attr]
    assert (host.state.value, str(host.internal_addr), host.profile) == (
        "unknown", "198.18.10.10", "core"
    )
    assert len(host.machine_id) == 32
    history = rig.rig.store.history("new-1")
    assert history[0].message.startswith("new-1: host approved")
    assert "updated host InternalAddr" in history[0].message
    assert rig.request("PUT", "/admin/host/new-1/approve", token=ADMIN_TOKEN).code == 409
    installer = rig.request("GET", "/first-stage-script/new-1")
    assert installer.code == 200 and token_from_script(installer.body.decode())


# -- remove ----------------------------------------------------------------------------------


def test_remove_frees_the_address_and_the_profile_slot_in_one_commit(tmp_path: Path) -> None:
    rig = gated(tmp_path, "open",
                profiles=[{"name": "core", "quantity": 1}, {"name": "worker", "quantity": 1}])
    assert rig.request("GET", "/first-stage-script/sn-a").code == 200
    assert rig.request("GET", "/first-stage-script/sn-b").code == 200
    assert rig.request("DELETE", "/admin/host/sn-a").code == 401
    commits = rig.commits()
    gone = rig.request("DELETE", "/admin/host/sn-a", token=ADMIN_TOKEN)
    assert gone.code == 202, gone.body
    assert rig.commits() == commits + 1
    assert rig.rig.provisioner.get("sn-a") is None
    assert not (tmp_path / "cluster" / "sn-a").exists()
    audit = rig.rig.store.audit
    assert audit is not None
    head = audit.repo.head.peel(pygit2.Commit)
    assert head.message.startswith("sn-a: host removed")
    assert "sn-a" not in [entry.name for entry in head.tree]
    assert rig.request("GET", "/first-stage-script/sn-c").code == 200
    host = rig.rig.provisioner.get("sn-c").host  # type: ignore[union-attr]
    assert (str(host.internal_addr), host.profile) == ("198.18.10.10", "core")
    missing = rig.request("DELETE", "/admin/host/sn-a", token=ADMIN_TOKEN)
    assert (missing.code, missing.body) == (400, b"host doesn't exist\n")


# -- callbacks for unknown serials -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/admin/host/{serial}/set_installed", None),
        ("PUT", "/admin/host/{serial}/boot_complete", b""),
        ("POST", "/final-ignition-config.json", "host-data"),
    ],
)
def test_a_callback_for_an_unknown_serial_is_401_like_a_wrong_token(
    tmp_path: Path, method: str, path: str, body: Any
) -> None:
    rig = make_rig(tmp_path / "cluster")
    assert rig.client.request("GET", "/first-stage-script/known").code == 200
    answers = []
    for serial in ("known", "unknown"):
        data = host_data(serial, ["52:54:00:00:00:01"]) if body == "host-data" else body
        answers.append(rig.client.request(method, path.format(serial=serial), data))
    assert [a.code for a in answers] == [401, 401]
    assert answers[0].body == answers[1].body


# -- configuration ---------------------------------------------------------------------------


def test_the_default_follows_whether_pxestack_runs_dhcp() -> None:
    dhcp = {"listen": "127.0.0.1:6767", "server_address": "127.0.0.1",
            "pools": [{"subnet": "127.0.0.0/8", "start": "127.0.10.10", "end": "127.0.10.20"}]}
    with_dhcp = load_config({"dhcp": dhcp, "provision": {}}).provision
    without = load_config({"provision": {}}).provision
    assert with_dhcp is not None and with_dhcp.enrolment == "dhcp-seen"
    assert without is not None and without.enrolment == "approve"
    with pytest.raises(ConfigError, match=r"provision\.enrolment"):
        load_config({"provision": {"enrolment": "dhcp-seen"}})
    with pytest.raises(ConfigError, match=r"provision\.enrolment"):
        load_config({"provision": {"enrolment": "everyone"}})


# -- the service composition: pxestack's DHCP lease admits the machine -----------------------


def test_the_dhcp_service_and_the_api_share_the_sightings(tmp_path: Path) -> None:
    from pxestack.app import build_root_service
    from pxestack.provision.api import synchronous_runner
    from pxestack.wire import constants as c
    from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
    from pxestack.wire.dhcp_options import DhcpOptions

    config = load_config(
        {
            "state_dir": str(tmp_path / "state"),
            "dhcp": {"listen": "127.0.0.1:6767", "server_address": "127.0.0.1", "proxy_port": 0,
                     "fsync": False,
                     "pools": [{"subnet": "127.0.0.0/8", "start": "127.0.10.10",
                                "end": "127.0.10.20"}]},
            "http": {"listen": "127.0.0.1:0", "public_url": "http://127.0.0.1:8080"},
            "provision": {"cluster_dir": str(tmp_path / "cluster"),
                          "api": {"token": ADMIN_TOKEN},
                          "network": {"ip_range": {"start": "198.18.10.10",
                                                   "end": "198.18.10.20"}}},
        },
        base_dir=tmp_path,
    )
    assert config.provision is not None and config.provision.enrolment == "dhcp-seen"
    reactor = Clock()
    reactor.advance(1_700_000_000)
    sockets = MemorySockets(reactor)  # the DHCP ports run their batching code in memory
    root = build_root_service(config, reactor=reactor, dhcp_sockets=sockets)
    dhcp = root.getServiceNamed("dhcp")
    dhcp.privilegedStartService()
    dhcp.startService()
    [port] = sockets.ports
    protocol = port.protocol

    def send(kind: int, **options: bytes) -> DhcpMessage:
        items = {c.OPT_MESSAGE_TYPE: bytes((kind,))}
        items.update({int(k[1:]): v for k, v in options.items()})
        port.receive((
            encode_dhcp(DhcpMessage(op=c.BOOTREQUEST, xid=7, chaddr=MAC, flags=c.FLAG_BROADCAST,
                                    options=DhcpOptions(items))), ("127.0.0.1", 6768)))
        return decode_dhcp(protocol.transport.written[-1][0])

    offer = send(c.DHCPDISCOVER)
    send(c.DHCPREQUEST, o50=offer.yiaddr.packed, o54=IPv4Address("127.0.0.1").packed)
    site_root = root.getServiceNamed("http").site.resource
    site_root.children[b"admin"].api.run = synchronous_runner
    front = FromSource(site_root)
    client = Client(front)
    front.source = "127.0.10.99"
    assert client.request("GET", "/first-stage-script/stranger-1").code == 403
    front.source = str(offer.yiaddr)
    assert client.request("GET", "/first-stage-script/leased-1").code == 200
    dhcp.stopService()


def test_a_pending_host_counts_as_enrolled_when_it_is_approved(tmp_path: Path) -> None:
    """One rule for every observer: a pending record is a change, but not an enrolment;
    the approval enrols the machine, and the dashboard's timeline and the metrics agree."""
    from pxestack.bootevents import BootEventRecorder
    from pxestack.metrics import HostChange, Metrics, ObservedHostStore, boot_steps
    from pxestack.provision.memstore import InMemoryHostStore
    from pxestack.provision.provisioner import Provisioner, callback_key

    changes: list[HostChange] = []
    events = BootEventRecorder()
    metrics = Metrics(process_metrics=False)
    rig = make_rig(tmp_path / "cluster")
    store = ObservedHostStore(InMemoryHostStore(),
                              [changes.append, boot_steps(events), metrics.host_changed],
                              clock=lambda: 0.0, actor=lambda: "ops")
    provisioner = Provisioner(rig.config, store, base_url="http://x",
                              key=callback_key(tmp_path / "cluster"))
    provisioner.first_contact("p1", pending=True)
    assert [(c.serial, c.previous, c.state, c.enrolled) for c in changes] == [
        ("p1", None, "pending", False)]
    assert [e.phase for e in events.since()] == []
    provisioner.approve("p1")
    assert [(c.previous, c.state, c.enrolled, c.actor) for c in changes[1:]] == [
        ("pending", "unknown", True, "ops")]
    assert [e.phase for e in events.since()] == ["enrolled"]
    assert len(metrics.boot_phases) == 1  # the enrolled start of installer_boot, provision
    provisioner.remove("p1")
    assert provisioner.get("p1") is None


def test_mayus_unauthenticated_host_data_is_subject_to_the_policy_too(tmp_path: Path) -> None:
    rig = gated(tmp_path, "approve", compat=True)
    body = host_data("legacy-1", ["52:54:00:00:00:09"])
    assert rig.request("POST", "/final-ignition-config.json", body=body).code == 403
    pending = rig.rig.provisioner.get("legacy-1")
    assert pending is not None and pending.host.state.value == "pending"
    assert rig.request("POST", "/final-ignition-config.json", body=body).code == 403
    assert rig.request("PUT", "/admin/host/legacy-1/approve", token=ADMIN_TOKEN).code == 202
    assert rig.request("POST", "/final-ignition-config.json", body=body).code == 200
    seen = gated(tmp_path / "other", "dhcp-seen", compat=True, sightings=DhcpSightings())
    assert seen.request("POST", "/final-ignition-config.json", body=body).code == 403
    assert seen.rig.provisioner.get("legacy-1") is None
