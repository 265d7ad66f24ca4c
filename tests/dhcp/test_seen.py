"""What pxestack's DHCP saw recently: lease sightings, proxy sightings, the ARP lookup."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from dhcp_samples import SAMPLES, VM_MAC

from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Subnet
from pxestack.dhcp.policy import StaticBootPolicy
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.dhcp.seen import DhcpSightings, LeaseSightings, ProxySightings
from pxestack.netif import neighbour_mac

SUBNET = Subnet(
    IPv4Network("198.18.0.0/24"),
    (AddressRange(IPv4Address("198.18.0.100"), IPv4Address("198.18.0.110")),),
)
MAC = bytes.fromhex("525400aa0001")
WINDOW = 1800.0


def test_an_offer_and_a_lease_are_seen_until_the_window_after_they_end() -> None:
    store = InMemoryLeaseStore([SUBNET])
    sightings = LeaseSightings(store)
    offered = store.offer(b"M" + MAC, MAC, None, SUBNET, None, now=1000.0, hold=60.0)
    assert offered is not None
    address = offered.address
    assert sightings.seen(address, 1001.0, WINDOW)
    assert not sightings.seen(IPv4Address("198.18.0.109"), 1001.0, WINDOW)
    store.bind(b"M" + MAC, MAC, None, address, now=1002.0, lease_time=3600.0)
    assert sightings.seen(address, 1002.0 + 3000, WINDOW)  # held
    store.expire(1002.0 + 3600)
    assert sightings.seen(address, 1002.0 + 3600 + WINDOW - 1, WINDOW)
    assert not sightings.seen(address, 1002.0 + 3600 + WINDOW + 1, WINDOW)


def test_asking_changes_nothing_in_the_lease_store() -> None:
    store = InMemoryLeaseStore([SUBNET])
    offered = store.offer(b"M" + MAC, MAC, None, SUBNET, None, now=0.0, hold=60.0)
    assert offered is not None
    LeaseSightings(store).seen(offered.address, 10_000.0, WINDOW)
    assert store.outstanding_offers == 1  # no expiry was applied by the question


def test_the_proxy_notes_the_mac_it_answered_and_the_address_maps_through_arp() -> None:
    arp = {IPv4Address("198.18.0.141"): VM_MAC}
    sightings = ProxySightings(arp.get, capacity=4)
    proxy = ProxyDhcpCore(
        BootDefaults(server_address=IPv4Address("198.18.0.1"),
                     ipxe_script_url="http://198.18.0.1:8080/boot.ipxe"),
        StaticBootPolicy(), sightings=sightings,
    )
    assert not sightings.seen(IPv4Address("198.18.0.141"), 5.0, WINDOW)
    assert proxy.handle(SAMPLES["ovmf_native_pxe_discover"](), "eth0", 5.0)
    assert sightings.seen(IPv4Address("198.18.0.141"), 6.0, WINDOW)
    assert not sightings.seen(IPv4Address("198.18.0.141"), 5.0 + WINDOW + 1, WINDOW)
    assert not sightings.seen(IPv4Address("198.18.0.142"), 6.0, WINDOW)  # no ARP entry


def test_proxy_sightings_are_bounded() -> None:
    sightings = ProxySightings(None, capacity=3)
    for i in range(10):
        sightings.note_address(IPv4Address(f"198.18.0.{i + 1}"), float(i))
    assert not sightings.seen(IPv4Address("198.18.0.1"), 10.0, WINDOW)
    assert sightings.seen(IPv4Address("198.18.0.10"), 10.0, WINDOW)


def test_without_a_source_nothing_was_seen_and_any_source_counts() -> None:
    hub = DhcpSightings()
    address = IPv4Address("198.18.0.5")
    assert not hub.seen(address, 0.0, WINDOW)
    proxy = ProxySightings(None)
    hub.attach(LeaseSightings(InMemoryLeaseStore([SUBNET])))
    hub.attach(proxy)
    proxy.note_address(address, 0.0)
    assert hub.attached and hub.seen(address, 1.0, WINDOW)


def test_neighbour_mac_reads_complete_entries_of_the_arp_table(tmp_path: Path) -> None:
    table = tmp_path / "arp"
    table.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "198.18.0.141     0x1         0x2         52:54:00:e2:e0:01     *        br0\n"
        "198.18.0.142     0x1         0x0         00:00:00:00:00:00     *        br0\n"
        "198.18.0.143     0x1         0x2         garbage               *        br0\n"
        "short line\n"
    )
    assert neighbour_mac(IPv4Address("198.18.0.141"), table) == bytes.fromhex("525400e2e001")
    assert neighbour_mac(IPv4Address("198.18.0.142"), table) is None  # incomplete
    assert neighbour_mac(IPv4Address("198.18.0.143"), table) is None
    assert neighbour_mac(IPv4Address("198.18.0.144"), table) is None
    assert neighbour_mac(IPv4Address("198.18.0.141"), tmp_path / "missing") is None
