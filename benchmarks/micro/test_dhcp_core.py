"""DHCP sans-IO cores: address allocation for a boot storm and a proxyDHCP answer."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Subnet
from pxestack.dhcp.policy import StaticBootPolicy
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage
from pxestack.wire.dhcp_options import DhcpOptions

SUBNET = Subnet(
    IPv4Network("198.18.0.0/15"),
    (AddressRange(IPv4Address("198.19.0.1"), IPv4Address("198.19.255.254")),),
)
CLIENTS = 10_000
MACS = [bytes.fromhex("0c0000") + n.to_bytes(3, "big") for n in range(CLIENTS)]


def _allocate_all() -> int:
    """Offer and bind an address for each of 10 000 new clients; returns distinct addresses."""
    store = InMemoryLeaseStore([SUBNET])
    addresses = set()
    now = 1000.0
    for mac in MACS:
        offered = store.offer(mac, mac, None, SUBNET, None, now, 30.0)
        assert offered is not None
        store.bind(mac, mac, None, offered.address, now, 604800.0)
        addresses.add(offered.address)
        now += 0.0001
    return len(addresses)


def test_lease_store_10k_new_clients(benchmark) -> None:
    # Pedantic: one storm per round, so each round starts from an empty store.
    distinct = benchmark.pedantic(_allocate_all, rounds=3, iterations=1)
    assert distinct == CLIENTS


def test_proxy_answers_pxe_discover(benchmark) -> None:
    core = ProxyDhcpCore(BootDefaults(server_address=IPv4Address("198.18.0.1")), StaticBootPolicy())
    discover = DhcpMessage(
        op=c.BOOTREQUEST,
        xid=0x1234,
        chaddr=MACS[7],
        flags=c.FLAG_BROADCAST,
        options=DhcpOptions(
            [
                (c.OPT_MESSAGE_TYPE, bytes([c.DHCPDISCOVER])),
                (c.OPT_CLIENT_ARCH, b"\x00\x00"),
                (c.OPT_CLIENT_NDI, b"\x01\x02\x01"),
                (c.OPT_VENDOR_CLASS_ID, b"PXEClient:Arch:00000:UNDI:002001"),
                (c.OPT_CLIENT_UUID, bytes(17)),
            ]
        ),
    )
    replies = benchmark(core.handle, discover, "pxs0", 0.0)
    assert len(replies) == 1
    assert replies[0].message.message_type == c.DHCPOFFER
