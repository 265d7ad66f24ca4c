"""Packet captures for ``pxestack explain``, built from the real OVMF exchanges.

The DHCP exchange comes from ``tests/golden/proxy_exchange/ovmf_pxe_own_address.txt``
(tcpdump on the QEMU proxy test's bridge: site server dnsmasq on 198.18.0.1, pxestack's proxy
on 198.18.0.2); the firmware requests of the other scenarios are the golden packets of
``tests/golden/dhcp/``.  What a scenario needs beyond those (the extra proxy ACK and the
DECLINE, TFTP, TCP/HTTP) is synthesised here, minimally.  pxestack's own answers to the
iPXE requests come from :class:`~pxestack.dhcp.proxy.ProxyDhcpCore`.

``python tests/explain_captures.py --write`` regenerates ``tests/golden/explain/*.pcap``
(small Ethernet pcaps an operator can try ``pxestack explain`` on); a test checks that the
committed files equal what this module builds.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from dhcp_samples import sample_bytes

from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.policy import StaticBootPolicy
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.wire import constants as c
from pxestack.wire.capture import TCP, TCP_ACK, TCP_PUSH, UDP, Segment, write_pcap
from pxestack.wire.dhcp import DhcpMessage, build_reply, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "golden" / "explain"
EXCHANGE = TESTS / "golden" / "proxy_exchange" / "ovmf_pxe_own_address.txt"

SITE = IPv4Address("198.18.0.1")
PROXY = IPv4Address("198.18.0.2")
#: The address the site server offered in the captured exchange.
OFFERED = IPv4Address("198.18.0.138")
ZERO = IPv4Address("0.0.0.0")
BROADCAST = IPv4Address("255.255.255.255")
SCRIPT = "http://198.18.0.2:8080/boot.ipxe"
SITE_MAC = "52:54:00:00:00:01"
PROXY_MAC = "52:54:00:00:00:02"
DEFAULTS = BootDefaults(server_address=PROXY, ipxe_script_url=SCRIPT,
                        http_boot_base_url="http://198.18.0.2:8080")


class Builder:
    """Segments in capture order, 10 ms apart."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.time = 1_700_000_000.0

    def add(self, protocol: str, source: IPv4Address, sport: int, destination: IPv4Address,
            dport: int, payload: bytes, mac: str, tcp_flags: int = 0) -> None:
        self.time += 0.01
        self.segments.append(Segment(len(self.segments) + 1, round(self.time, 6), protocol,
                                     source, sport, destination, dport, payload,
                                     source_mac=mac, tcp_flags=tcp_flags))

    def dhcp(self, source: IPv4Address, sport: int, destination: IPv4Address, dport: int,
             message: DhcpMessage | bytes, mac: str) -> None:
        payload = message if isinstance(message, bytes) else encode_dhcp(message, max_size=1472)
        self.add(UDP, source, sport, destination, dport, payload, mac)

    def pcap(self) -> bytes:
        return write_pcap(self.segments)


def golden_exchange() -> list[tuple[IPv4Address, int, IPv4Address, int, bytes]]:
    """The five captured datagrams of the OVMF proxy exchange."""
    rows = []
    for line in EXCHANGE.read_text().splitlines():
        source, destination, payload = line.split()
        s_ip, s_port = source.rsplit(":", 1)
        d_ip, d_port = destination.rsplit(":", 1)
        rows.append((IPv4Address(s_ip), int(s_port), IPv4Address(d_ip), int(d_port),
                     bytes.fromhex(payload)))
    return rows


def client_mac(payload: bytes) -> str:
    return decode_dhcp(payload).mac


def add_exchange(builder: Builder, extra: Callable[[Builder, int], None] | None = None) -> None:
    """The captured exchange; *extra* is called after each datagram with its index."""
    rows = golden_exchange()
    mac = client_mac(rows[0][4])
    for i, (source, sport, destination, dport, payload) in enumerate(rows):
        sender = mac if sport == 68 else (SITE_MAC if i != 2 else PROXY_MAC)
        builder.dhcp(source, sport, destination, dport, payload, sender)
        if extra is not None:
            extra(builder, i)


def site_reply(request: DhcpMessage, kind: int) -> DhcpMessage:
    """dnsmasq's address-only answer (synthesised: options 53, 54, 51, 1, 3)."""
    return build_reply(request, DhcpOptions({
        c.OPT_MESSAGE_TYPE: bytes((kind,)), c.OPT_SERVER_ID: SITE.packed,
        c.OPT_LEASE_TIME: struct.pack("!I", 3600), c.OPT_SUBNET_MASK: bytes((255, 255, 255, 0)),
        c.OPT_ROUTER: SITE.packed}), yiaddr=OFFERED)


def with_mac(message: DhcpMessage, mac: str, xid: int) -> DhcpMessage:
    return message.replace(chaddr=bytes.fromhex(mac.replace(":", "")), xid=xid)


def ipxe_exchange(builder: Builder, mac: str, xid: int, sample: str) -> DhcpMessage:
    """An iPXE DISCOVER/REQUEST beside the site server, answered by pxestack's proxy core."""
    discover = with_mac(decode_dhcp(sample_bytes(sample)), mac, xid)
    builder.dhcp(ZERO, 68, BROADCAST, 67, discover, mac)
    builder.dhcp(SITE, 67, BROADCAST, 68, site_reply(discover, c.DHCPOFFER), SITE_MAC)
    proxy = ProxyDhcpCore(DEFAULTS, StaticBootPolicy())
    (offer,) = proxy.handle(discover, "br0", 0.0)
    builder.dhcp(PROXY, 67, BROADCAST, 68, offer.message, PROXY_MAC)
    request = discover.replace(options=DhcpOptions({
        **discover.options, c.OPT_MESSAGE_TYPE: bytes((c.DHCPREQUEST,)),
        c.OPT_SERVER_ID: SITE.packed, c.OPT_REQUESTED_IP: OFFERED.packed}))
    builder.dhcp(ZERO, 68, BROADCAST, 67, request, mac)
    builder.dhcp(SITE, 67, BROADCAST, 68, site_reply(request, c.DHCPACK), SITE_MAC)
    return offer.message


def tftp(builder: Builder, mac: str, name: str, *, blocks: int, final: bool) -> None:
    """RRQ with blksize/tsize, OACK, then *blocks* full blocks (+ a short one if *final*)."""
    client, cport, tid, size = OFFERED, 1700, 50000, 1468
    rrq = b"\x00\x01" + name.encode() + b"\x00octet\x00blksize\x001468\x00tsize\x000\x00"
    total = blocks * size + (100 if final else 0)
    builder.add(UDP, client, cport, PROXY, 69, rrq, mac)
    builder.add(UDP, PROXY, tid, client, cport,
                b"\x00\x06blksize\x001468\x00tsize\x00" + str(total).encode() + b"\x00",
                PROXY_MAC)
    builder.add(UDP, client, cport, PROXY, tid, b"\x00\x04\x00\x00", mac)
    for block in range(1, blocks + 1 + (1 if final else 0)):
        length = size if block <= blocks else 100
        builder.add(UDP, PROXY, tid, client, cport,
                    struct.pack("!HH", 3, block) + b"\xa5" * length, PROXY_MAC)
        if final or block < blocks:
            builder.add(UDP, client, cport, PROXY, tid, struct.pack("!HH", 4, block), mac)


def http_get(builder: Builder, mac: str, path: str, status: int) -> None:
    """One GET and its answer, as two data segments (no handshake: enough for explain)."""
    request = (f"GET {path} HTTP/1.1\r\nHost: 198.18.0.2:8080\r\n"
               "User-Agent: iPXE/1.21.1\r\n\r\n").encode()
    builder.add(TCP, OFFERED, 40001, PROXY, 8080, request, mac, TCP_ACK | TCP_PUSH)
    reply = f"HTTP/1.1 {status} OK\r\nContent-Length: 7\r\n\r\n#!ipxe\n".encode()
    builder.add(TCP, PROXY, 8080, OFFERED, 40001, reply, PROXY_MAC, TCP_ACK | TCP_PUSH)


def healthy() -> bytes:
    """OVMF: the captured proxy exchange, TFTP of ipxe.efi, iPXE's exchange, the script."""
    builder = Builder()
    add_exchange(builder)
    mac = client_mac(golden_exchange()[0][4])
    tftp(builder, mac, "ipxe.efi", blocks=3, final=True)
    ipxe_exchange(builder, mac, 0x11223344, "ovmf_chainloaded_ipxe_efi_discover")
    http_get(builder, mac, "/boot.ipxe", 200)
    return builder.pcap()


def proxy_ack_and_decline() -> bytes:
    """The failure before the fix: the proxy ACKs the port-67 REQUEST (yiaddr 0.0.0.0)
    beside the site's ACK; EDK2 takes it and sends DHCPDECLINE."""
    rows = golden_exchange()
    proxy_offer = decode_dhcp(rows[2][4])
    request = decode_dhcp(rows[3][4])

    def extra(builder: Builder, i: int) -> None:
        if i == 3:
            ack = proxy_offer.replace(options=DhcpOptions({
                **proxy_offer.options, c.OPT_MESSAGE_TYPE: bytes((c.DHCPACK,))}))
            builder.dhcp(SITE, 67, BROADCAST, 68, ack, PROXY_MAC)
        if i == 4:
            decline = request.replace(options=DhcpOptions({
                c.OPT_MESSAGE_TYPE: bytes((c.DHCPDECLINE,)), c.OPT_SERVER_ID: SITE.packed,
                c.OPT_REQUESTED_IP: OFFERED.packed}))
            builder.dhcp(ZERO, 68, BROADCAST, 67, decline, client_mac(rows[0][4]))

    builder = Builder()
    add_exchange(builder, extra)
    return builder.pcap()


def option_60_without_43() -> bytes:
    """OVMF's PXE client and a full DHCP server sending 60 PXEClient with no option 43."""
    builder = Builder()
    discover = decode_dhcp(sample_bytes("ovmf_native_pxe_discover"))
    builder.dhcp(ZERO, 68, BROADCAST, 67, discover, discover.mac)
    offer = build_reply(discover, DhcpOptions({
        c.OPT_MESSAGE_TYPE: bytes((c.DHCPOFFER,)), c.OPT_SERVER_ID: SITE.packed,
        c.OPT_LEASE_TIME: struct.pack("!I", 3600), c.OPT_VENDOR_CLASS_ID: b"PXEClient",
        c.OPT_BOOTFILE_NAME: b"ipxe.efi"}), yiaddr=OFFERED, siaddr=SITE, file=b"ipxe.efi")
    builder.dhcp(SITE, 67, BROADCAST, 68, offer, SITE_MAC)
    builder.dhcp(ZERO, 68, BROADCAST, 67, discover.replace(secs=4), discover.mac)
    return builder.pcap()


def chainload_loop() -> bytes:
    """A server that hands every client ipxe.efi, iPXE included: OVMF, then iPXE twice."""
    builder = Builder()
    samples = ["ovmf_native_pxe_discover", "ovmf_chainloaded_ipxe_efi_discover",
               "ovmf_chainloaded_ipxe_efi_discover"]
    for n, sample in enumerate(samples):
        discover = decode_dhcp(sample_bytes(sample)).replace(xid=0x51000000 + n)
        builder.dhcp(ZERO, 68, BROADCAST, 67, discover, discover.mac)
        offer = build_reply(discover, DhcpOptions({
            c.OPT_MESSAGE_TYPE: bytes((c.DHCPOFFER,)), c.OPT_SERVER_ID: SITE.packed,
            c.OPT_LEASE_TIME: struct.pack("!I", 3600), c.OPT_BOOTFILE_NAME: b"ipxe.efi"}),
            yiaddr=OFFERED, siaddr=SITE, file=b"ipxe.efi")
        builder.dhcp(SITE, 67, BROADCAST, 68, offer, SITE_MAC)
    return builder.pcap()


def tftp_stalled() -> bytes:
    """The healthy exchange, then a TFTP transfer of ipxe.efi that stops after block 5."""
    builder = Builder()
    add_exchange(builder)
    tftp(builder, client_mac(golden_exchange()[0][4]), "ipxe.efi", blocks=5, final=False)
    return builder.pcap()


def script_never_requested() -> bytes:
    """QEMU's iPXE ROM under OVMF gets the script URL from the proxy; no HTTP follows."""
    builder = Builder()
    discover = decode_dhcp(sample_bytes("ovmf_ipxe_rom_discover"))
    ipxe_exchange(builder, discover.mac, discover.xid, "ovmf_ipxe_rom_discover")
    return builder.pcap()


SCENARIOS: dict[str, Callable[[], bytes]] = {
    "healthy": healthy,
    "proxy_ack_and_decline": proxy_ack_and_decline,
    "option_60_without_43": option_60_without_43,
    "chainload_loop": chainload_loop,
    "tftp_stalled": tftp_stalled,
    "script_never_requested": script_never_requested,
}


def write_golden() -> None:
    """Regenerate ``tests/golden/explain/*.pcap``."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, build in SCENARIOS.items():
        (GOLDEN / f"{name}.pcap").write_bytes(build())


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/explain_captures.py --write")
    sys.path.insert(0, str(TESTS))
    write_golden()
