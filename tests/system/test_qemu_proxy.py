"""proxyDHCP beside a site DHCP server, with real firmware (docs/dhcp.md §6).

dnsmasq is the site's DHCP server (addresses only, no boot options) on the bridge's first
address, 198.18.0.1; ``pxestack serve`` runs in ``mode: proxy`` beside it, in two layouts:

* ``own-address``: pxestack has its own address, 198.18.0.2, a second address on the same
  interface (``dhcp.server_address``), so its replies must name .2, not the interface's
  first address;
* ``shared-address``: pxestack and dnsmasq share 198.18.0.1 and port 67 on one host.

Each layout boots SeaBIOS with QEMU's iPXE ROM and OVMF's own UEFI PXE client to the
first-stage callback (and on to ``installed``).  The DHCP traffic is captured on the bridge
and checked: the proxy sends OFFERs (DISCOVER, port 67) and ACKs on port 4011 only; every
REQUEST on port 67 gets exactly one ACK, the site's; nobody declines.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from conftest import require, require_root_and_tools
from qemu.artifacts import Artifacts, cache_dir, ensure_artifacts
from qemu.capture import Capture, Seen, describe
from qemu.netns import SERVER_ADDRESS, Segment
from qemu.scenario import boot_machines, save_results
from qemu.servers import PxestackServer, SiteDhcpServer
from qemu.vm import OVMF_CODE, OVMF_VARS, Machine

from pxestack.wire import constants as c

pytestmark = pytest.mark.qemu

TOOLS = ("qemu-system-x86_64", "dnsmasq", "ip", "ss", "curl", "git", "tcpdump", "apt-get",
         "dpkg-deb")
BOOT_TIMEOUT = 180.0
RESULTS = cache_dir() / "results.jsonl"
#: pxestack's own address in the ``own-address`` layout.
OWN_ADDRESS = "198.18.0.2"
LAYOUTS = {"own-address": OWN_ADDRESS, "shared-address": SERVER_ADDRESS}


@pytest.fixture(scope="module")
def artifacts() -> Artifacts:
    """The Debian kernel and first-stage initramfs (built once, cached)."""
    require_root_and_tools(*TOOLS)
    for path in (OVMF_CODE, OVMF_VARS, Path("/usr/lib/ipxe/ipxe.efi")):
        require(path.exists(), f"needs {path} (ovmf, ipxe packages)")
    return ensure_artifacts()


@pytest.fixture
def segment() -> Iterator[Segment]:
    """A fresh namespace with a bridge and one tap; always deleted."""
    created = Segment.create(taps=1)
    try:
        yield created
    finally:
        created.close()


@pytest.mark.timeout(420)
@pytest.mark.parametrize("firmware", ["uefi-pxe", "bios"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_proxy_beside_site_dhcp_boots_real_firmware(
    artifacts: Artifacts, segment: Segment, tmp_path: Path, layout: str, firmware: str
) -> None:
    address = LAYOUTS[layout]
    if address != SERVER_ADDRESS:
        segment.add_address(address)
    site = SiteDhcpServer(segment, tmp_path)
    server = PxestackServer(segment, tmp_path, artifacts, mode="proxy", address=address)
    site.start()
    try:
        server.start()
        capture = Capture(segment, tmp_path / "dhcp.pcap")
        machine = Machine.numbered(4)
        [result] = boot_machines(segment, [(machine, firmware)], tmp_path, f"proxy-{layout}",
                                 BOOT_TIMEOUT)
        packets = capture.stop()
        save_results(RESULTS, [result], scenario=f"proxy-{layout}")
        assert result.ok, result.summary() + "\n" + describe(packets)
        assert result.callback is not None
        [host] = server.hosts()
        assert host["Serial"] == machine.serial.lower() and host["State"] == "installed"
    finally:
        server.stop()
        site.stop()
    check_wire(packets, IPv4Address(address))


def check_wire(packets: list[Seen], ours: IPv4Address) -> None:
    """What the proxy may and may not do on the wire, whatever the firmware."""
    text = describe(packets)
    proxy_replies = [m for s, _, m in packets
                     if m.op == c.BOOTREPLY and m.yiaddr == IPv4Address(0)]
    site_replies = [m for s, _, m in packets
                    if m.op == c.BOOTREPLY and m.yiaddr != IPv4Address(0)]
    assert proxy_replies and site_replies, text
    for reply in proxy_replies:
        # Every proxy reply names pxestack's own address (dhcp.server_address in the
        # own-address layout, though the interface lists the site's address first).
        assert reply.options.ip(c.OPT_SERVER_ID) == ours, text
        assert reply.siaddr == ours, text
    # Port 67: the proxy sends only OFFERs; its ACKs come from port 4011.
    for sport, _, message in packets:
        if message.yiaddr == IPv4Address(0) and message.message_type == c.DHCPACK:
            assert sport == c.PXE_PROXY_PORT, text
    # Each REQUEST on port 67 is answered by the site server alone; nobody declines.
    requests = [m for _, d, m in packets
                if d == c.DHCP_SERVER_PORT and m.message_type == c.DHCPREQUEST]
    assert requests, text
    for request in requests:
        acks = [m for s, _, m in packets if s == c.DHCP_SERVER_PORT and m.xid == request.xid
                and m.message_type == c.DHCPACK]
        assert acks and all(a.yiaddr != IPv4Address(0) for a in acks), text
    assert not any(m.message_type == c.DHCPDECLINE for _, _, m in packets), text
