"""build_dhcp_services: sockets per interface, the lease journal across restarts, proxy mode."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from fake_reactor import MemorySockets, MemoryUdpPort
from twisted.internet.task import Clock

from pxestack.config import load_config
from pxestack.dhcp.leases import LeaseState
from pxestack.dhcp.policy import BootSpec, StaticBootPolicy
from pxestack.dhcp.protocol import DhcpServerProtocol, ProxyDhcpProtocol
from pxestack.netif import InterfaceError, NetInterface
from pxestack.service import Extensions, build_service
from pxestack.service.dhcp import DhcpService, build_dhcp_services
from pxestack.service.ports import UdpPortService
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

MAC = bytes.fromhex("020000000042")


class FakeUdpReactor(Clock):
    """task.Clock with the in-memory socket factory the DHCP service is given: its ports
    run pxestack's own batching code (tests/fake_reactor.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.advance(1_700_000_000)
        self.sockets = MemorySockets(self)

    @property
    def ports(self) -> list[tuple[MemoryUdpPort, Any]]:
        return [(port, port.protocol) for port in self.sockets.ports]


class Transport:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))


def config(tmp_path: Path, **dhcp: object) -> Any:
    section: dict[str, object] = {
        "listen": "127.0.0.1:6767",
        "proxy_port": 0,
        "fsync": False,
        "pools": [{"subnet": "127.0.0.0/8", "start": "127.0.10.10", "end": "127.0.10.20",
                   "router": "127.0.0.1", "dns": ["127.0.0.1"]}],
    }
    section.update(dhcp)
    return load_config(
        {"state_dir": str(tmp_path / "state"), "dhcp": section,
         "http": {"public_url": "http://127.0.0.1:8080"}},
        base_dir=tmp_path,
    )


def packet(kind: int, **options: bytes) -> bytes:
    items = {c.OPT_MESSAGE_TYPE: bytes((kind,))}
    items.update({int(k[1:]): v for k, v in options.items()})
    return encode_dhcp(DhcpMessage(op=c.BOOTREQUEST, xid=99, chaddr=MAC,
                                   flags=c.FLAG_BROADCAST, options=DhcpOptions(items)))


def start(cfg: Any, reactor: FakeUdpReactor, ext: Extensions | None = None) -> DhcpService:
    [svc] = build_dhcp_services(cfg, ext or Extensions(), reactor=reactor,
                                sockets=reactor.sockets)
    assert isinstance(svc, DhcpService)
    svc.privilegedStartService()
    svc.startService()
    return svc


def test_server_on_loopback_leases_survive_a_restart(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    reactor = FakeUdpReactor()
    svc = start(cfg, reactor)
    [(port, protocol)] = reactor.ports
    assert (port.port, port.interface, port.broadcast) == (6767, "127.0.0.1", True)
    assert isinstance(protocol, DhcpServerProtocol) and protocol.transport is port
    port.receive((packet(c.DHCPDISCOVER), ("127.0.0.1", 6768)))
    offer = decode_dhcp(protocol.transport.written[-1][0])  # type: ignore[union-attr]
    # Loopback quickstart: replies go to the network broadcast on client port 6768.
    assert protocol.transport.written[-1][1] == ("127.255.255.255", 6768)  # type: ignore[union-attr]
    port.receive((
        packet(c.DHCPREQUEST, o50=offer.yiaddr.packed, o54=IPv4Address("127.0.0.1").packed),
        ("127.0.0.1", 6768),
    ))
    ack = decode_dhcp(protocol.transport.written[-1][0])  # type: ignore[union-attr]
    assert ack.message_type == c.DHCPACK and ack.yiaddr == offer.yiaddr
    stopped = svc.stopService()
    assert stopped.called and not port.listening
    assert (tmp_path / "state" / "dhcp-leases.journal").exists()

    again = start(cfg, FakeUdpReactor())
    assert again.store is not None
    lease = again.store.lookup(b"M" + MAC, FakeUdpReactor().seconds())
    assert lease is not None and lease.address == offer.yiaddr
    assert lease.state is LeaseState.BOUND
    again.stopService()


def test_offer_expiry_runs_on_the_reactor_clock(tmp_path: Path) -> None:
    reactor = FakeUdpReactor()
    svc = start(config(tmp_path, offer_hold=10), reactor)
    [(_, protocol)] = reactor.ports
    protocol.datagramReceived(packet(c.DHCPDISCOVER), ("127.0.0.1", 6768))
    assert svc.store is not None and svc.store.outstanding_offers == 1
    reactor.advance(11)
    assert svc.store.outstanding_offers == 0
    svc.stopService()


def test_one_socket_per_interface_bound_to_its_device(tmp_path: Path) -> None:
    nics = {
        "pxt0": NetInterface("pxt0", IPv4Address("198.18.0.1"), IPv4Network("198.18.0.0/24"),
                             IPv4Address("198.18.0.255"), b"\x02" * 6, 7),
        "pxt1": NetInterface("pxt1", IPv4Address("198.18.1.1"), IPv4Network("198.18.1.0/24"),
                             IPv4Address("198.18.1.255"), b"\x04" * 6, 8),
    }
    cfg = config(
        tmp_path, listen="0.0.0.0:67", interfaces=["pxt0", "pxt1"],
        pools=[{"subnet": "198.18.0.0/24", "start": "198.18.0.10", "end": "198.18.0.20"},
               {"subnet": "198.18.1.0/24", "start": "198.18.1.10", "end": "198.18.1.20"}],
    )
    opened: list[str] = []

    def frames(name: str) -> None:
        opened.append(name)
        return None

    svc = DhcpService(cfg, StaticBootPolicy(), reactor=FakeUdpReactor(),
                      sockets=MemorySockets(frame_senders=frames), lookup=nics.__getitem__)
    svc._prepare()
    ports = [child for child in svc if isinstance(child, UdpPortService)]
    assert [(p.port_number, p.device, p.interface) for p in ports] == [
        (67, "pxt0", ""), (67, "pxt1", "")
    ]
    assert opened == ["pxt0", "pxt1"]
    infos = [p.protocol.interface for p in ports]  # type: ignore[attr-defined]
    assert [(i.name, i.address) for i in infos] == [
        ("pxt0", IPv4Address("198.18.0.1")), ("pxt1", IPv4Address("198.18.1.1"))
    ]
    # Each interface's clients get addresses from its own subnet, from one lease database.
    for port in ports:
        port.protocol.makeConnection(Transport())
        port.protocol.datagramReceived(packet(c.DHCPDISCOVER), ("0.0.0.0", 68))
        offer = decode_dhcp(port.protocol.transport.written[-1][0])  # type: ignore[attr-defined]
        assert offer.yiaddr in port.protocol.interface.network  # type: ignore[attr-defined]
    assert svc.journal is not None
    svc.journal.close()


def test_missing_interface_fails_the_start_naming_it(tmp_path: Path) -> None:
    cfg = config(tmp_path, interfaces=["pxt-nonexistent0"])
    [svc] = build_dhcp_services(cfg, Extensions(), reactor=FakeUdpReactor())
    with pytest.raises(InterfaceError, match="pxt-nonexistent0"):
        svc.privilegedStartService()


def test_proxy_mode_answers_only_pxe_clients_with_the_policy_from_extensions(
    tmp_path: Path,
) -> None:
    policy = StaticBootPolicy(BootSpec(ipxe_script_url="http://example.test/x.ipxe"))
    cfg = config(tmp_path, mode="proxy", listen="127.0.0.1:0", pools=None)
    reactor = FakeUdpReactor()
    svc = start(cfg, reactor, Extensions(boot_policy=policy))
    [(_, protocol)] = reactor.ports
    assert isinstance(protocol, ProxyDhcpProtocol)
    protocol.datagramReceived(packet(c.DHCPDISCOVER), ("127.0.0.1", 68))
    assert protocol.transport.written == []  # type: ignore[union-attr]
    ipxe = packet(c.DHCPDISCOVER, o60=b"PXEClient:Arch:00000:UNDI:002001", o77=b"iPXE",
                  o93=b"\x00\x00", o175=bytes.fromhex("1301011001 02".replace(" ", "")))
    protocol.datagramReceived(ipxe, ("127.0.0.1", 68))
    reply = decode_dhcp(protocol.transport.written[-1][0])  # type: ignore[union-attr]
    assert reply.options.text(c.OPT_BOOTFILE_NAME) == "http://example.test/x.ipxe"
    assert reply.yiaddr == IPv4Address(0)
    svc.stopService()


#: An interface carrying two addresses: the site DHCP server's first, pxestack's second.
TWO_ADDRESSES = NetInterface(
    "pxt0", IPv4Address("198.18.0.1"), IPv4Network("198.18.0.0/15"),
    IPv4Address("198.19.255.255"), b"\x02" * 6, 7,
    addresses=(IPv4Interface("198.18.0.1/15"), IPv4Interface("198.18.0.2/15")),
)
PXE_ROM = {"o60": b"PXEClient:Arch:00007:UNDI:003016", "o93": b"\x00\x07",
           "o94": b"\x01\x03\x10"}


def proxy_on(tmp_path: Path, nic: NetInterface, **dhcp: object) -> ProxyDhcpProtocol:
    """A proxy service on the fake interface *nic*; returns its port-67 protocol."""
    cfg = config(tmp_path, mode="proxy", listen="0.0.0.0:67", interfaces=[nic.name],
                 pools=None, **dhcp)
    svc = DhcpService(cfg, StaticBootPolicy(), reactor=FakeUdpReactor(),
                      lookup={nic.name: nic}.__getitem__)
    svc._prepare()
    [protocol] = svc.protocols
    assert isinstance(protocol, ProxyDhcpProtocol)
    protocol.makeConnection(Transport())  # type: ignore[arg-type]
    return protocol


@pytest.mark.parametrize(("server_address", "expected"), [
    (None, "198.18.0.1"),  # the interface's first (primary) address
    ("198.18.0.2", "198.18.0.2"),  # the configured one, though it is listed second
])
def test_proxy_names_the_configured_server_address(
    tmp_path: Path, server_address: str | None, expected: str
) -> None:
    extra = {"server_address": server_address} if server_address else {}
    protocol = proxy_on(tmp_path, TWO_ADDRESSES, **extra)
    protocol.datagramReceived(packet(c.DHCPDISCOVER, **PXE_ROM), ("0.0.0.0", 68))
    [(data, _)] = protocol.transport.written  # type: ignore[union-attr]
    offer = decode_dhcp(data)
    assert offer.message_type == c.DHCPOFFER and offer.yiaddr == IPv4Address(0)
    assert offer.options.ip(c.OPT_SERVER_ID) == IPv4Address(expected)
    assert offer.siaddr == IPv4Address(expected)
    assert protocol.interface.network == IPv4Network("198.18.0.0/15")  # type: ignore[attr-defined]
    # The firmware's REQUEST for the site server's address offer is not ours to answer,
    # whichever server identifier it names.
    for server_id in ("198.18.0.1", "198.18.0.2"):
        protocol.datagramReceived(
            packet(c.DHCPREQUEST, o50=IPv4Address("198.18.0.141").packed,
                   o54=IPv4Address(server_id).packed, **PXE_ROM),
            ("0.0.0.0", 68),
        )
    assert len(protocol.transport.written) == 1  # type: ignore[union-attr]


def test_server_address_not_on_the_interface_is_used_with_a_warning(tmp_path: Path) -> None:
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        protocol = proxy_on(tmp_path, TWO_ADDRESSES, server_address="198.18.7.7")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert protocol.interface.address == IPv4Address("198.18.7.7")  # type: ignore[attr-defined]
    warnings = [e for e in seen if "is not an address of interface" in e.get("log_format", "")]
    assert warnings and warnings[0]["address"] == "198.18.7.7"


def test_build_service_includes_dhcp(tmp_path: Path) -> None:
    root = build_service(config(tmp_path), reactor=FakeUdpReactor())
    assert root.getServiceNamed("dhcp") is not None


def _discover_from(n: int) -> bytes:
    mac = bytes((2, 0, 0, 0, 1, n))
    return encode_dhcp(DhcpMessage(op=c.BOOTREQUEST, xid=n, chaddr=mac, flags=c.FLAG_BROADCAST,
                                   options=DhcpOptions({c.OPT_MESSAGE_TYPE: b"\x01"})))


def test_a_burst_is_read_in_bounded_batches_with_one_journal_commit_each(
    tmp_path: Path,
) -> None:
    """The port the service opens reads a readiness event's datagrams in batches of at most
    ``max_batch`` and the server commits its lease journal once per batch."""
    reactor = FakeUdpReactor()
    reactor.sockets.max_batch = 4
    svc = start(config(tmp_path), reactor)
    [(port, protocol)] = reactor.ports
    assert reactor.sockets.ports[0].datagrams.max_batch == 4
    batches: list[int] = []
    handle = protocol.receive_batch

    def counting(datagrams: Any) -> None:
        datagrams = list(datagrams)
        batches.append(len(datagrams))
        handle(datagrams)

    protocol.receive_batch = counting
    commits: list[int] = []
    journal = protocol.journal
    commit = journal.commit

    def counting_commit() -> None:
        commits.append(len(batches))
        commit()

    journal.commit = counting_commit
    port.socket.inbox.extend((_discover_from(n), ("127.0.0.1", 6768)) for n in range(10))
    for _ in range(3):
        port.doRead()  # one readiness event each; the last one stops at EAGAIN
    assert batches == [4, 4, 2]
    assert commits == [1, 2, 3]  # one commit per batch, after it
    offers = [decode_dhcp(data) for data, _ in port.written]
    assert [offer.xid for offer in offers] == list(range(10))
    assert all(offer.message_type == c.DHCPOFFER for offer in offers)
    port.doRead()  # nothing queued: no empty batch
    assert batches == [4, 4, 2]
    svc.stopService()


def test_send_errors_are_handled_as_the_kernel_port_handles_them(tmp_path: Path) -> None:
    """EINTR is retried, ECONNREFUSED dropped; any other error is logged by the adapter and
    never raised into the reactor."""
    import errno

    reactor = FakeUdpReactor()
    svc = start(config(tmp_path), reactor)
    [(port, _)] = reactor.ports
    port.socket.send_errors = [errno.EINTR]
    port.receive((_discover_from(1), ("127.0.0.1", 6768)))
    assert len(port.written) == 1
    port.socket.send_errors = [errno.ECONNREFUSED]
    port.receive((_discover_from(2), ("127.0.0.1", 6768)))
    assert len(port.written) == 1
    port.socket.send_errors = [errno.ENETUNREACH]
    port.receive((_discover_from(3), ("127.0.0.1", 6768)))
    assert len(port.written) == 1
    port.receive((_discover_from(4), ("127.0.0.1", 6768)))
    assert decode_dhcp(port.written[-1][0]).xid == 4
    svc.stopService()
