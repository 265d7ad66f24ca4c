"""The Twisted adapters, in memory: fake transport, task.Clock, captured log events."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import dpkt
from dhcp_samples import SERVER, ovmf_native_pxe_discover, seabios_ipxe_rom_discover
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Subnet
from pxestack.dhcp.policy import StaticBootPolicy
from pxestack.dhcp.protocol import (
    DeadlineTimer,
    DhcpServerProtocol,
    ProxyDhcpProtocol,
    ipv4_udp_packet,
)
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo, ServerSettings, SubnetSettings
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

NET = IPv4Network("198.18.0.0/24")
IFACE = InterfaceInfo("veth0", SERVER, NET)
RELAY = IPv4Address("198.18.0.254")
SCRIPT = "http://198.18.0.1:8080/boot.ipxe"


class FakeTransport:
    """Records what the protocol writes."""

    def __init__(self, fail: OSError | None = None) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.fail = fail

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.fail is not None:
            raise self.fail
        self.written.append((data, addr))


class FakeFrames:
    """A FrameSender that records frames instead of opening an AF_PACKET socket."""

    def __init__(self, works: bool = True) -> None:
        self.works = works
        self.sent: list[tuple[bytes, IPv4Address, IPv4Address, bytes, int]] = []

    def send(self, payload: bytes, source: IPv4Address, destination: IPv4Address,
             mac: bytes, destination_port: int) -> bool:
        self.sent.append((payload, source, destination, mac, destination_port))
        return self.works


def discover(*, flags: int = 0, giaddr: IPv4Address = IPv4Address(0)) -> bytes:  # noqa: B008
    message = DhcpMessage(
        op=c.BOOTREQUEST, xid=7, chaddr=bytes.fromhex("020000000001"), flags=flags,
        giaddr=giaddr, hops=1 if giaddr != IPv4Address(0) else 0,
        options=DhcpOptions({c.OPT_MESSAGE_TYPE: bytes((c.DHCPDISCOVER,))}),
    )
    return encode_dhcp(message)


def server(clock: Clock, frames: Any = None) -> tuple[DhcpServerProtocol, FakeTransport]:
    subnet = SubnetSettings(Subnet(NET, (AddressRange(IPv4Address("198.18.0.100"),
                                                        IPv4Address("198.18.0.110")),)))
    core = DhcpServerCore(
        ServerSettings((subnet,), relays=frozenset({RELAY}), offer_hold=30.0),
        InMemoryLeaseStore([subnet.subnet]),
        StaticBootPolicy(),
        BootDefaults(server_address=IPv4Address(0), ipxe_script_url=SCRIPT),
    )
    protocol = DhcpServerProtocol(core, IFACE, timer=DeadlineTimer(core, clock),
                                  reactor=clock, frames=frames)
    transport = FakeTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    return protocol, transport


class ServerProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_malformed_datagram_is_logged_and_dropped(self) -> None:
        protocol, transport = server(self.clock)
        # Empty, garbage, a header cut short, options without END (D1, D2).
        for junk in (b"", b"\x01" * 100, discover()[:239], discover()[:243]):
            protocol.datagramReceived(junk, ("198.18.0.9", 68))
        assert transport.written == []
        assert protocol.malformed == 4
        dropped = [e for e in self.events if "malformed" in e.get("log_format", "")]
        assert len(dropped) == 4
        assert dropped[0]["peer"] == "198.18.0.9" and dropped[0]["iface"] == "veth0"
        # Still alive: a good packet is answered.
        protocol.datagramReceived(discover(flags=c.FLAG_BROADCAST), ("0.0.0.0", 68))
        assert len(transport.written) == 1

    def test_a_bug_in_the_core_is_logged_as_a_bug_and_never_raised(self) -> None:
        protocol, transport = server(self.clock)

        def broken(*args: object) -> list[Any]:
            raise KeyError("oops")

        protocol.core.handle = broken  # type: ignore[method-assign]
        protocol.datagramReceived(discover(), ("0.0.0.0", 68))
        assert protocol.bugs == 1 and transport.written == []
        assert len(self.flushLoggedErrors(KeyError)) == 1

    def test_broadcast_flag_reply_goes_to_the_broadcast_address(self) -> None:
        protocol, transport = server(self.clock)
        protocol.datagramReceived(discover(flags=c.FLAG_BROADCAST), ("0.0.0.0", 68))
        [(data, addr)] = transport.written
        assert addr == ("255.255.255.255", 68)
        reply = decode_dhcp(data)
        assert reply.message_type == c.DHCPOFFER and reply.xid == 7

    def test_address_less_unicast_uses_a_raw_frame(self) -> None:
        frames = FakeFrames()
        protocol, transport = server(self.clock, frames)
        protocol.datagramReceived(discover(), ("0.0.0.0", 68))
        assert transport.written == []
        [(payload, source, destination, mac, port)] = frames.sent
        assert (source, mac, port) == (SERVER, bytes.fromhex("020000000001"), 68)
        assert decode_dhcp(payload).yiaddr == destination

    def test_without_a_raw_socket_the_reply_is_broadcast(self) -> None:
        protocol, transport = server(self.clock, FakeFrames(works=False))
        protocol.datagramReceived(discover(), ("0.0.0.0", 68))
        [(_, addr)] = transport.written
        assert addr == ("255.255.255.255", 68)

    def test_relayed_reply_goes_to_the_relay_port_67(self) -> None:
        protocol, transport = server(self.clock)
        protocol.datagramReceived(discover(giaddr=RELAY), (str(RELAY), 67))
        [(_, addr)] = transport.written
        assert addr == (str(RELAY), 67)

    def test_send_errors_are_logged_not_raised(self) -> None:
        protocol, transport = server(self.clock)
        transport.fail = OSError(101, "Network is unreachable")
        protocol.datagramReceived(discover(flags=c.FLAG_BROADCAST), ("0.0.0.0", 68))
        assert any(e.get("log_level") == LogLevel.warn for e in self.events)

    def test_offer_hold_expires_through_the_timer(self) -> None:
        protocol, _ = server(self.clock)
        store = protocol.core.store
        protocol.datagramReceived(discover(flags=c.FLAG_BROADCAST), ("0.0.0.0", 68))
        assert store.outstanding_offers == 1  # type: ignore[attr-defined]
        assert len(self.clock.getDelayedCalls()) == 1
        self.clock.advance(29)
        assert store.outstanding_offers == 1  # type: ignore[attr-defined]
        self.clock.advance(2)
        assert store.outstanding_offers == 0  # type: ignore[attr-defined]
        assert self.clock.getDelayedCalls() == []

    def test_timer_is_not_rescheduled_for_later_deadlines(self) -> None:
        protocol, _ = server(self.clock)
        protocol.datagramReceived(discover(flags=c.FLAG_BROADCAST), ("0.0.0.0", 68))
        [first] = self.clock.getDelayedCalls()
        self.clock.advance(5)
        other = discover(flags=c.FLAG_BROADCAST).replace(b"\x02\x00\x00\x00\x00\x01",
                                                         b"\x02\x00\x00\x00\x00\x02")
        protocol.datagramReceived(other, ("0.0.0.0", 68))
        assert self.clock.getDelayedCalls() == [first]


def test_ipv4_udp_packet_is_valid() -> None:
    payload = b"hello dhcp"
    raw = ipv4_udp_packet(SERVER, IPv4Address("198.18.0.100"), 67, 68, payload)
    ip = dpkt.ip.IP(raw)
    assert ip.src == SERVER.packed and ip.p == 17 and ip.len == len(raw)
    # A correct header sums to 0xffff in one's complement.
    words = sum(struct.unpack("!10H", raw[:20]))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    assert words == 0xFFFF
    udp = ip.data
    assert (udp.sport, udp.dport, udp.data) == (67, 68, payload)
    check = ip.src + ip.dst + struct.pack("!BBH", 0, 17, udp.ulen) + raw[20:]
    if len(check) % 2:
        check += b"\x00"
    total = sum(struct.unpack(f"!{len(check) // 2}H", check))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF


class ProxyProtocolTests(SynchronousTestCase):
    def make(self, port: int) -> tuple[ProxyDhcpProtocol, FakeTransport]:
        core = ProxyDhcpCore(BootDefaults(server_address=SERVER, ipxe_script_url=SCRIPT),
                             StaticBootPolicy())
        protocol = ProxyDhcpProtocol(core, IFACE, port=port, reactor=Clock())
        transport = FakeTransport()
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        return protocol, transport

    def test_port_67_offer_is_broadcast_with_pxeclient(self) -> None:
        protocol, transport = self.make(67)
        protocol.datagramReceived(encode_dhcp(seabios_ipxe_rom_discover()), ("0.0.0.0", 68))
        [(data, addr)] = transport.written
        assert addr == ("255.255.255.255", 68)
        reply = decode_dhcp(data)
        assert reply.yiaddr == IPv4Address(0)
        assert reply.options.text(c.OPT_BOOTFILE_NAME) == SCRIPT

    def test_port_4011_request_is_answered_to_its_sender(self) -> None:
        protocol, transport = self.make(4011)
        request = ovmf_native_pxe_discover().replace(
            ciaddr=IPv4Address("198.18.0.150"),
            options=DhcpOptions({**ovmf_native_pxe_discover().options,
                                 c.OPT_MESSAGE_TYPE: bytes((c.DHCPREQUEST,))}),
        )
        protocol.datagramReceived(encode_dhcp(request), ("198.18.0.150", 4011))
        [(data, addr)] = transport.written
        assert addr == ("198.18.0.150", 4011)
        assert decode_dhcp(data).message_type == c.DHCPACK

    def test_non_pxe_clients_are_not_answered(self) -> None:
        protocol, transport = self.make(67)
        protocol.datagramReceived(discover(), ("0.0.0.0", 68))
        assert transport.written == []
