"""proxyDHCP beside a site DHCP server, with real firmware (docs/dhcp.md §6).

dnsmasq is the site's DHCP server (addresses only, no boot options) on the bridge's first
address, 198.18.0.1; ``pxestack serve`` runs in ``mode: proxy`` beside it, in two layouts:

* ``own-address``: pxestack has its own address, 198.18.0.2, a second address on the same
  interface (``dhcp.server_address``), so its replies must name .2, not the interface's
  first address;
* ``shared-address``: pxestack and dnsmasq share 198.18.0.1 and port 67 on one host.

Each layout boots SeaBIOS with QEMU's iPXE ROM, OVMF's own UEFI PXE client and OVMF's UEFI
HTTP Boot client (``uefi-http``: its PXE clients switched off, vendor class ``HTTPClient``)
to the first-stage callback (and on to ``installed``).  The HTTP Boot client takes the site
server's address offer and the proxy's offer of ``HTTPClient`` and the boot URL (yiaddr
0.0.0.0), requests the address from the site server and downloads ``ipxe.efi`` over HTTP:
it never asks port 4011.  The DHCP traffic is captured on the bridge
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
from qemu.scenario import BootResult, boot_machines, save_results
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
@pytest.mark.parametrize("firmware", ["uefi-pxe", "bios", "uefi-http"])
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
    if firmware == "uefi-http":
        check_http_boot(packets, tmp_path / "pxestack.log", vm_console(result))


def vm_console(result: BootResult) -> str:
    """The serial console of a finished boot."""
    return Path(result.console_log).read_text(errors="replace")


def check_http_boot(packets: list[Seen], log: Path, console: str) -> None:
    """The HTTP Boot client booted from the proxy's URL over HTTP, without port 4011."""
    text = describe(packets)
    http_offers = [m for s, _, m in packets
                   if s == c.DHCP_SERVER_PORT and m.message_type == c.DHCPOFFER
                   and m.yiaddr == IPv4Address(0)
                   and m.options.get(c.OPT_VENDOR_CLASS_ID) == b"HTTPClient"]
    assert http_offers, text
    url = http_offers[0].options.get(c.OPT_BOOTFILE_NAME)
    assert url is not None and url.endswith(b"/ipxe.efi"), text
    # The firmware's own DHCP exchange: the HTTPClient DISCOVER and REQUEST go to port 67
    # only (the first iPXE packet is the next DISCOVER, with user class iPXE).
    http_client = [(d, m) for _, d, m in packets if m.op == c.BOOTREQUEST
                   and (m.options.get(c.OPT_VENDOR_CLASS_ID) or b"").startswith(b"HTTPClient")]
    assert {m.message_type for _, m in http_client} >= {c.DHCPDISCOVER, c.DHCPREQUEST}, text
    assert all(d == c.DHCP_SERVER_PORT for d, _ in http_client), text
    assert f"URI: {url.decode()}" in console, console[-3000:]
    served = log.read_text(errors="replace")
    assert "GET /ipxe.efi 200" in served
    assert "RRQ" not in served  # HTTP only: no TFTP request at all


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
        # siaddr is the TFTP server: ours, or none at all in an HTTP Boot offer (its file is
        # a URL), never the site server's.
        assert reply.siaddr == ours or (
            reply.siaddr == IPv4Address(0) and reply.file.startswith(b"http://")), text
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
