"""IPv4/UDP framing for DHCP replies sent by link-layer unicast.

A client without an address yet (RFC 2131 §4.1, broadcast flag clear) cannot be reached
through an ordinary UDP socket: the kernel has no ARP entry for ``yiaddr``.  The DHCP
adapter then writes the IPv4 packet itself to an ``AF_PACKET``/``SOCK_DGRAM`` socket, and
the kernel only adds the Ethernet header.  This module builds that packet; dpkt's Internet
checksum (RFC 1071) fills in the IPv4 header checksum and the UDP checksum.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from typing import Final

import dpkt

from pxestack.errors import ApiMisuse

#: RFC 790 / IANA protocol numbers: UDP.
IP_PROTOCOL_UDP: Final = 17
#: RFC 791 §3.1: header length without options; RFC 768: UDP header length.
IPV4_HEADER_LENGTH: Final = 20
UDP_HEADER_LENGTH: Final = 8
#: RFC 791 §3.1: the Total Length field is 16 bits, so this is the longest UDP payload.
MAX_UDP_PAYLOAD: Final = 0xFFFF - IPV4_HEADER_LENGTH - UDP_HEADER_LENGTH
#: RFC 791 §3.1: version/IHL, TOS, total length, identification, flags/fragment offset,
#: TTL, protocol, header checksum, source, destination.
_IPV4_HEADER: Final = struct.Struct("!BBHHHBBH4s4s")
_IPV4_CHECKSUM_OFFSET: Final = 10
#: RFC 791 §3.1 flags: Don't Fragment, fragment offset 0.
_DONT_FRAGMENT: Final = 0x4000
#: RFC 768: source port, destination port, length, checksum.
_UDP_HEADER: Final = struct.Struct("!HHHH")
#: RFC 768 pseudo-header: source, destination, zero, protocol, UDP length.
_PSEUDO_HEADER: Final = struct.Struct("!4s4sxBH")


def ipv4_udp_packet(
    source: IPv4Address,
    destination: IPv4Address,
    source_port: int,
    destination_port: int,
    payload: bytes,
    *,
    ttl: int = 64,
) -> bytes:
    """An IPv4 header and a UDP header around *payload*, both checksums filled in.

    The IPv4 header (RFC 791 §3.1) has no options, type of service 0, identification 0,
    Don't Fragment set, fragment offset 0, time to live *ttl*, protocol 17 and its header
    checksum.  The UDP header (RFC 768) carries the checksum over the pseudo-header,
    header and payload; a checksum that computes to 0 is sent as 0xFFFF, as RFC 768
    ("Fields", Checksum) requires, since 0 means "no checksum".

    The kernel adds the Ethernet header when the packet goes out on an ``AF_PACKET``
    ``SOCK_DGRAM`` socket with the client's MAC as link-layer destination.  Ports outside
    0..65535, a *ttl* outside 0..255 or a payload longer than :data:`MAX_UDP_PAYLOAD`
    raise :class:`~pxestack.errors.ApiMisuse`.
    """
    for name, value, limit in (
        ("source_port", source_port, 0xFFFF),
        ("destination_port", destination_port, 0xFFFF),
        ("ttl", ttl, 0xFF),
    ):
        if not 0 <= value <= limit:
            raise ApiMisuse(f"{name}={value} does not fit its field (0..{limit})")
    if len(payload) > MAX_UDP_PAYLOAD:
        raise ApiMisuse(f"UDP payload of {len(payload)} bytes exceeds {MAX_UDP_PAYLOAD}")
    # The headers are packed with struct and only the checksums come from dpkt
    # (``dpkt.in_cksum``): building ``dpkt.ip.IP``/``dpkt.udp.UDP`` objects costs about
    # 15 µs more per reply, and this runs for every OFFER/ACK to a PXE ROM in a boot storm.
    udp_length = UDP_HEADER_LENGTH + len(payload)
    source_octets = source.packed
    destination_octets = destination.packed
    pseudo_header = _PSEUDO_HEADER.pack(source_octets, destination_octets, IP_PROTOCOL_UDP,
                                        udp_length)
    unsummed = _UDP_HEADER.pack(source_port, destination_port, udp_length, 0)
    # RFC 768: a computed checksum of 0 is sent as all ones (0 means "none").
    checksum = dpkt.in_cksum(pseudo_header + unsummed + payload) or 0xFFFF
    udp_header = _UDP_HEADER.pack(source_port, destination_port, udp_length, checksum)
    header = bytearray(_IPV4_HEADER.pack(
        0x45, 0, IPV4_HEADER_LENGTH + udp_length, 0, _DONT_FRAGMENT, ttl, IP_PROTOCOL_UDP, 0,
        source_octets, destination_octets,
    ))
    struct.pack_into("!H", header, _IPV4_CHECKSUM_OFFSET, dpkt.in_cksum(bytes(header)))
    return bytes(header) + udp_header + payload


__all__ = ["IP_PROTOCOL_UDP", "MAX_UDP_PAYLOAD", "ipv4_udp_packet"]
