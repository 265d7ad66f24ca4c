"""IPv4/UDP frames built with dpkt (RFC 791, RFC 768) and the dpkt-based ICMPv6 checksum.

Every expectation is checked against a reference written out here from the RFCs (a plain
RFC 1071 one's-complement sum and ``struct``-packed headers), independent of dpkt; the
per-packet patching of dpkt's template is also checked against dpkt building each packet.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import dpkt
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pxestack.errors import ApiMisuse
from pxestack.wire.icmpv6 import icmpv6_checksum
from pxestack.wire.ipv4 import MAX_UDP_PAYLOAD, Ipv4UdpTemplate, ipv4_udp_packet

ipv4_addresses = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
ipv6_addresses = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
ports = st.integers(0, 0xFFFF)
payloads = st.binary(min_size=0, max_size=1500)
ttls = st.integers(0, 255)


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071 §4.1: 16-bit big-endian words, odd byte padded with zero, carries folded."""
    padded = data + b"\x00" * (len(data) % 2)
    total = 0
    for (word,) in struct.iter_unpack("!H", padded):
        total += word
        if total > 0xFFFF:
            total = (total & 0xFFFF) + 1
    return total


def reference_packet(
    source: IPv4Address, destination: IPv4Address, source_port: int, destination_port: int,
    payload: bytes, ttl: int,
) -> bytes:
    """The packet written field by field from RFC 791 §3.1 and RFC 768."""
    udp_length = 8 + len(payload)
    pseudo = source.packed + destination.packed + bytes([0, 17]) + udp_length.to_bytes(2, "big")
    unsummed = struct.pack("!HHHH", source_port, destination_port, udp_length, 0) + payload
    udp_checksum = 0xFFFF ^ ones_complement_sum(pseudo + unsummed)
    segment = (struct.pack("!HHHH", source_port, destination_port, udp_length,
                           udp_checksum if udp_checksum else 0xFFFF) + payload)
    version_ihl, tos, identification, flags_fragment = 0x45, 0, 0, 0b010 << 13  # DF only
    header = struct.pack("!BBHHHBB", version_ihl, tos, 20 + udp_length, identification,
                         flags_fragment, ttl, 17) + b"\x00\x00" + source.packed + destination.packed
    header_checksum = 0xFFFF ^ ones_complement_sum(header)
    return header[:10] + header_checksum.to_bytes(2, "big") + header[12:] + segment


def udp_pseudo_header(packet: bytes) -> bytes:
    """RFC 768 pseudo-header of *packet*: source, destination, zero, protocol, UDP length."""
    return packet[12:20] + b"\x00\x11" + packet[24:26]


@given(ipv4_addresses, ipv4_addresses, ports, ports, payloads, ttls)
@example(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.100"), 67, 68, b"", 64)
@example(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.100"), 67, 68, b"\x01", 64)
@example(IPv4Address("255.255.255.255"), IPv4Address("255.255.255.255"), 0xFFFF, 0xFFFF,
         b"\xff" * 1500, 255)
@example(IPv4Address("0.0.0.0"), IPv4Address("0.0.0.0"), 0, 0, b"\xff" * 1499, 0)
def test_packet_equals_the_reference(
    source: IPv4Address, destination: IPv4Address, source_port: int, destination_port: int,
    payload: bytes, ttl: int,
) -> None:
    packet = ipv4_udp_packet(source, destination, source_port, destination_port, payload,
                             ttl=ttl)
    assert packet == reference_packet(source, destination, source_port, destination_port,
                                      payload, ttl)


@given(ipv4_addresses, ipv4_addresses, ports, ports, payloads, ttls)
def test_both_checksums_verify(
    source: IPv4Address, destination: IPv4Address, source_port: int, destination_port: int,
    payload: bytes, ttl: int,
) -> None:
    packet = ipv4_udp_packet(source, destination, source_port, destination_port, payload,
                             ttl=ttl)
    header, segment = packet[:20], packet[20:]
    assert ones_complement_sum(header) == 0xFFFF
    assert ones_complement_sum(udp_pseudo_header(packet) + segment) == 0xFFFF
    assert segment[6:8] != b"\x00\x00"  # 0 would mean "no checksum" (RFC 768)
    assert struct.unpack("!HH", packet[2:4] + segment[4:6]) == (len(packet), len(segment))
    assert (packet[0], packet[6:8], packet[8], packet[9]) == (0x45, b"\x40\x00", ttl, 17)
    assert segment[8:] == payload


def dpkt_packet(
    source: IPv4Address, destination: IPv4Address, source_port: int, destination_port: int,
    payload: bytes, ttl: int,
) -> bytes:
    """The packet as dpkt builds it when every field is set on its objects, per packet."""
    udp = dpkt.udp.UDP(sport=source_port, dport=destination_port, ulen=8 + len(payload),
                       data=payload)
    ip = dpkt.ip.IP(src=source.packed, dst=destination.packed, p=dpkt.ip.IP_PROTO_UDP,
                    ttl=ttl, tos=0, id=0, df=1, data=udp)
    return bytes(ip)


@given(ipv4_addresses, ipv4_addresses, ports, ports, payloads, ttls)
@example(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.100"), 67, 68, b"", 64)
def test_the_template_patched_per_packet_equals_dpkt_building_every_packet(
    source: IPv4Address, destination: IPv4Address, source_port: int, destination_port: int,
    payload: bytes, ttl: int,
) -> None:
    """The fast path (dpkt's template, fields written in place) is byte for byte what dpkt
    gives when it builds the whole packet, and dpkt reads back every field."""
    template = Ipv4UdpTemplate(source, source_port, ttl=ttl)
    packet = template.packet(destination, destination_port, payload)
    assert packet == dpkt_packet(source, destination, source_port, destination_port, payload,
                                 ttl)
    parsed = dpkt.ip.IP(packet)
    assert (parsed.src, parsed.dst, parsed.ttl, parsed.df, parsed.len) == (
        source.packed, destination.packed, ttl, 1, len(packet))
    assert (parsed.data.sport, parsed.data.dport, parsed.data.data) == (
        source_port, destination_port, payload)


def test_one_template_serves_many_packets_unchanged() -> None:
    template = Ipv4UdpTemplate(IPv4Address("198.18.0.1"), 67)
    first = template.packet(IPv4Address("198.18.0.100"), 68, b"offer")
    template.packet(IPv4Address("198.18.0.200"), 4011, b"x" * 600)
    assert template.packet(IPv4Address("198.18.0.100"), 68, b"offer") == first
    assert first == ipv4_udp_packet(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.100"),
                                    67, 68, b"offer")


def payload_with_zero_udp_checksum(source: IPv4Address, destination: IPv4Address,
                                   source_port: int, destination_port: int) -> bytes:
    """A 2-byte payload whose UDP checksum computes to 0 (the sum of the rest is 0xFFFF).

    The rest of the covered data (pseudo-header and UDP header) sums to some r in
    1..0xFFFF; the payload word 0xFFFF - r brings the sum to 0xFFFF without a carry, and
    its complement, the checksum, to 0.
    """
    udp_length = 10
    rest = ones_complement_sum(
        source.packed + destination.packed + struct.pack("!BBH", 0, 17, udp_length)
        + struct.pack("!HHHH", source_port, destination_port, udp_length, 0)
    )
    payload = (0xFFFF - rest).to_bytes(2, "big")
    assert ones_complement_sum(
        source.packed + destination.packed + struct.pack("!BBH", 0, 17, udp_length)
        + struct.pack("!HHHH", source_port, destination_port, udp_length, 0) + payload
    ) == 0xFFFF
    return payload


@given(ipv4_addresses, ipv4_addresses, ports, ports)
@example(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.100"), 67, 68)
def test_a_udp_checksum_that_computes_to_zero_is_sent_as_all_ones(
    source: IPv4Address, destination: IPv4Address, source_port: int, destination_port: int,
) -> None:
    payload = payload_with_zero_udp_checksum(source, destination, source_port, destination_port)
    packet = ipv4_udp_packet(source, destination, source_port, destination_port, payload)
    assert packet[26:28] == b"\xff\xff"
    # All ones is the other zero of one's complement, so the checksum still verifies.
    assert ones_complement_sum(udp_pseudo_header(packet) + packet[20:]) == 0xFFFF
    assert packet == reference_packet(source, destination, source_port, destination_port,
                                      payload, 64)


def test_the_longest_payload_fits_and_one_more_byte_does_not() -> None:
    source, destination = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.100")
    packet = ipv4_udp_packet(source, destination, 67, 68, bytes(MAX_UDP_PAYLOAD))
    assert len(packet) == 0xFFFF
    assert packet == reference_packet(source, destination, 67, 68, bytes(MAX_UDP_PAYLOAD), 64)
    with pytest.raises(ApiMisuse):
        ipv4_udp_packet(source, destination, 67, 68, bytes(MAX_UDP_PAYLOAD + 1))


@pytest.mark.parametrize(
    ("source_port", "destination_port", "ttl"),
    [(-1, 68, 64), (0x10000, 68, 64), (67, -1, 64), (67, 0x10000, 64), (67, 68, -1),
     (67, 68, 256)],
)
def test_values_that_do_not_fit_their_fields_are_api_misuse(
    source_port: int, destination_port: int, ttl: int
) -> None:
    with pytest.raises(ApiMisuse):
        ipv4_udp_packet(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.100"), source_port,
                        destination_port, b"x", ttl=ttl)


def reference_icmpv6_checksum(source: IPv6Address, destination: IPv6Address,
                              message: bytes) -> int:
    """RFC 4443 §2.3 over the RFC 8200 §8.1 pseudo-header, summed longhand."""
    pseudo = (source.packed + destination.packed + len(message).to_bytes(4, "big")
              + b"\x00\x00\x00" + bytes([58]))
    return 0xFFFF ^ ones_complement_sum(pseudo + message)


@given(ipv6_addresses, ipv6_addresses, st.binary(max_size=1500))
@example(IPv6Address(0), IPv6Address(0), b"")
@example(IPv6Address(2**128 - 1), IPv6Address(2**128 - 1), b"\xff" * 1499)
def test_icmpv6_checksum_equals_the_reference(
    source: IPv6Address, destination: IPv6Address, message: bytes
) -> None:
    assert icmpv6_checksum(source, destination, message) == reference_icmpv6_checksum(
        source, destination, message
    )


@pytest.mark.parametrize(
    "message",
    [
        # Found by search: dpkt's in_cksum_done alone folds twice and drops a carry here
        # (it returns 0xFFFF); icmpv6_checksum folds as it goes.  Messages this long are
        # only possible as RFC 2675 jumbograms, but the function takes any length.
        b"\xff" * 379612 + struct.pack("<H", 57909),
        b"\xff" * 131073,
        bytes(range(256)) * 1024,
    ],
    ids=["carry-lost-by-a-double-fold", "odd-length-over-128k", "256k-pattern"],
)
def test_icmpv6_checksum_is_exact_for_messages_longer_than_64k(message: bytes) -> None:
    source, destination = IPv6Address(0), IPv6Address(0)
    assert icmpv6_checksum(source, destination, message) == reference_icmpv6_checksum(
        source, destination, message
    )
