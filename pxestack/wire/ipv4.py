"""IPv4/UDP framing for DHCP replies sent by link-layer unicast.

A client without an address yet (RFC 2131 §4.1, broadcast flag clear) cannot be reached
through an ordinary UDP socket: the kernel has no ARP entry for ``yiaddr``.  The DHCP
adapter then writes the IPv4 packet itself to an ``AF_PACKET``/``SOCK_DGRAM`` socket, and
the kernel only adds the Ethernet header.  This module builds that packet.

dpkt builds it: :class:`Ipv4UdpTemplate` has ``dpkt.ip.IP`` and ``dpkt.udp.UDP`` lay out the
headers of one source address and port once, and each packet is that template with the
fields that differ written in place (destination, destination port, the two lengths) and
the two RFC 1071 checksums computed by dpkt's ``in_cksum``.  Building the dpkt objects for
every packet gives the same bytes (a test compares them) but costs several times as much,
and this runs for every OFFER and ACK to a PXE ROM during a boot storm.
"""

from __future__ import annotations

import functools
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
#: Offsets, in the 28 octets of IPv4 header (RFC 791 §3.1, no options) and UDP header
#: (RFC 768), of the fields a packet writes into its template.
_IPV4_LENGTH_OFFSET: Final = 2
_IPV4_CHECKSUM_OFFSET: Final = 10
_IPV4_DESTINATION_OFFSET: Final = 16
_UDP_DESTINATION_PORT_OFFSET: Final = IPV4_HEADER_LENGTH + 2
_UDP_CHECKSUM_OFFSET: Final = IPV4_HEADER_LENGTH + 6
_U16: Final = struct.Struct("!H")
#: RFC 768: destination port, then length.
_PORT_AND_LENGTH: Final = struct.Struct("!HH")
#: RFC 768 pseudo-header: source, destination, zero, protocol, UDP length.
_PSEUDO_HEADER: Final = struct.Struct("!4s4sxBH")
#: Templates :func:`ipv4_udp_packet` keeps, least recently used dropped first.  A server
#: replies from one source address and port per interface, so it needs a few; the bound
#: keeps memory fixed whatever the callers pass.
TEMPLATES_KEPT: Final = 64


def _check_field(name: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise ApiMisuse(f"{name}={value} does not fit its field (0..{limit})")


class Ipv4UdpTemplate:
    """The IPv4 and UDP headers of every packet from *source*:*source_port*, laid out once
    by dpkt; :meth:`packet` fills in what differs per packet.

    The IPv4 header (RFC 791 §3.1) has no options, type of service 0, identification 0,
    Don't Fragment set, fragment offset 0, time to live *ttl* and protocol 17 (UDP).  Its
    header checksum and the UDP checksum (RFC 768, over the pseudo-header, the header and
    the payload) are computed per packet.  A *source_port* outside 0..65535 or a *ttl*
    outside 0..255 raises :class:`~pxestack.errors.ApiMisuse`.
    """

    __slots__ = ("_header", "_source", "source", "source_port", "ttl")

    def __init__(self, source: IPv4Address, source_port: int, *, ttl: int = 64) -> None:
        _check_field("source_port", source_port, 0xFFFF)
        _check_field("ttl", ttl, 0xFF)
        self.source = source
        self.source_port = source_port
        self.ttl = ttl
        self._source = source.packed
        udp = dpkt.udp.UDP(sport=source_port, dport=0, ulen=UDP_HEADER_LENGTH, sum=0)
        ip = dpkt.ip.IP(src=self._source, dst=bytes(4), p=dpkt.ip.IP_PROTO_UDP, ttl=ttl,
                        tos=0, id=0, df=1, data=udp)
        # dpkt fills in the length and both checksums when the packet becomes bytes; the
        # checksums are zeroed again, since every packet computes its own.
        header = bytearray(bytes(ip))
        if len(header) != IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH:
            raise AssertionError(f"dpkt laid out {len(header)} header octets, not 28")
        header[_IPV4_CHECKSUM_OFFSET:_IPV4_CHECKSUM_OFFSET + 2] = bytes(2)
        header[_UDP_CHECKSUM_OFFSET:_UDP_CHECKSUM_OFFSET + 2] = bytes(2)
        self._header = bytes(header)

    def packet(self, destination: IPv4Address, destination_port: int, payload: bytes) -> bytes:
        """The packet to *destination*:*destination_port* carrying *payload*.

        A *destination_port* outside 0..65535 or a payload longer than
        :data:`MAX_UDP_PAYLOAD` raises :class:`~pxestack.errors.ApiMisuse`.
        """
        if not 0 <= destination_port <= 0xFFFF:
            _check_field("destination_port", destination_port, 0xFFFF)
        if len(payload) > MAX_UDP_PAYLOAD:
            raise ApiMisuse(f"UDP payload of {len(payload)} bytes exceeds {MAX_UDP_PAYLOAD}")
        udp_length = UDP_HEADER_LENGTH + len(payload)
        destination_octets = destination.packed
        header = bytearray(self._header)
        _U16.pack_into(header, _IPV4_LENGTH_OFFSET, IPV4_HEADER_LENGTH + udp_length)
        header[_IPV4_DESTINATION_OFFSET:_IPV4_DESTINATION_OFFSET + 4] = destination_octets
        _PORT_AND_LENGTH.pack_into(header, _UDP_DESTINATION_PORT_OFFSET, destination_port,
                                   udp_length)
        _U16.pack_into(header, _IPV4_CHECKSUM_OFFSET,
                       dpkt.in_cksum(header[:IPV4_HEADER_LENGTH]))
        checksum: int = dpkt.in_cksum(
            _PSEUDO_HEADER.pack(self._source, destination_octets, IP_PROTOCOL_UDP, udp_length)
            + header[IPV4_HEADER_LENGTH:] + payload)
        # RFC 768: a computed checksum of 0 is sent as all ones (0 means "none").
        _U16.pack_into(header, _UDP_CHECKSUM_OFFSET, checksum or 0xFFFF)
        return bytes(header) + payload


@functools.lru_cache(maxsize=TEMPLATES_KEPT)
def _template(source: int, source_port: int, ttl: int) -> Ipv4UdpTemplate:
    # Keyed by the address as an integer: hashing an IPv4Address formats it as text.
    return Ipv4UdpTemplate(IPv4Address(source), source_port, ttl=ttl)


def ipv4_udp_packet(
    source: IPv4Address,
    destination: IPv4Address,
    source_port: int,
    destination_port: int,
    payload: bytes,
    *,
    ttl: int = 64,
) -> bytes:
    """An IPv4 header and a UDP header around *payload*, both checksums filled in: the
    packet of :class:`Ipv4UdpTemplate`, whose template for *source*:*source_port* is built
    once (at most :data:`TEMPLATES_KEPT` are kept).

    The kernel adds the Ethernet header when the packet goes out on an ``AF_PACKET``
    ``SOCK_DGRAM`` socket with the client's MAC as link-layer destination.  Ports outside
    0..65535, a *ttl* outside 0..255 or a payload longer than :data:`MAX_UDP_PAYLOAD`
    raise :class:`~pxestack.errors.ApiMisuse`.
    """
    return _template(int(source), source_port, ttl).packet(destination, destination_port,
                                                           payload)


__all__ = ["IP_PROTOCOL_UDP", "MAX_UDP_PAYLOAD", "TEMPLATES_KEPT", "Ipv4UdpTemplate",
           "ipv4_udp_packet"]
