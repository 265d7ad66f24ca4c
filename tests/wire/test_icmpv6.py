"""Router solicitation / advertisement codec (RFC 4861 §4.1, §4.2) and ICMPv6 checksum."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxestack.errors import ApiMisuse, Invalid, MalformedPacket, Truncated
from pxestack.wire.icmpv6 import (
    ALL_NODES,
    ALL_ROUTERS,
    FLAG_MANAGED,
    FLAG_OTHER,
    OPTION_SOURCE_LINK_LAYER_ADDRESS,
    ROUTER_ADVERTISEMENT,
    UNSPECIFIED,
    NdpOption,
    RouterAdvertisement,
    RouterSolicitation,
    decode_router_advertisement,
    decode_router_solicitation,
    encode_router_advertisement,
    encode_router_solicitation,
    icmpv6_checksum,
)

IPXE_LINK_LOCAL = IPv6Address("fe80::5054:ff:fee2:e001")
IPXE_MAC = bytes.fromhex("525400e2e001")

#: The router solicitation iPXE 1.0.0+git-20190125 (QEMU's pxe-virtio ROM, MAC
#: 52:54:00:e2:e0:01) sent on the test bridge, as the raw ICMPv6 socket read it: type 133,
#: code 0, checksum, 4 reserved bytes, one Source Link-Layer Address option.
IPXE_RS = bytes.fromhex("850018be00000000" "0101525400e2e001")

addresses = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
option_types = st.integers(0, 255).filter(lambda t: t != OPTION_SOURCE_LINK_LAYER_ADDRESS)
option_bodies = st.integers(0, 6).flatmap(lambda units: st.binary(min_size=units * 8 + 6,
                                                                  max_size=units * 8 + 6))
other_options = st.lists(st.builds(NdpOption, option_types, option_bodies), max_size=4).map(tuple)
link_layer = st.none() | option_bodies

advertisements = st.builds(
    RouterAdvertisement,
    cur_hop_limit=st.integers(0, 255),
    managed=st.booleans(),
    other=st.booleans(),
    router_lifetime=st.integers(0, 0xFFFF),
    reachable_time=st.integers(0, 0xFFFFFFFF),
    retrans_timer=st.integers(0, 0xFFFFFFFF),
    source_link_layer=link_layer,
    options=other_options,
)
solicitations = st.builds(RouterSolicitation, source_link_layer=link_layer, options=other_options)


def test_the_ipxe_solicitation_decodes_with_its_mac() -> None:
    solicitation = decode_router_solicitation(IPXE_RS, IPXE_LINK_LOCAL)
    assert solicitation.source_link_layer == IPXE_MAC
    assert solicitation.options == ()


def test_the_ipxe_solicitation_checksum_verifies() -> None:
    # RFC 4443 §2.3: summing a received message with its checksum in place gives 0 (the
    # complement of 0xffff); iPXE sent it to ff02::2 from its link-local address.
    assert icmpv6_checksum(IPXE_LINK_LOCAL, ALL_ROUTERS, IPXE_RS) in (0, 0xFFFF)


def test_the_default_advertisement_is_the_one_that_ends_ipxes_wait() -> None:
    """M=0, O=0, router lifetime 0, no prefix: the RA that ends iPXE's IPv6 wait."""
    wire = encode_router_advertisement(RouterAdvertisement())
    assert wire == bytes([ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0]) + bytes(8)
    decoded = decode_router_advertisement(wire)
    assert not decoded.managed and not decoded.other
    assert decoded.router_lifetime == 0 and decoded.options == ()


def test_flags_are_the_top_bits_of_the_flags_octet() -> None:
    wire = encode_router_advertisement(RouterAdvertisement(managed=True, other=True))
    assert wire[5] == FLAG_MANAGED | FLAG_OTHER == 0xC0


def test_source_link_layer_option_is_one_8_octet_unit() -> None:
    wire = encode_router_advertisement(RouterAdvertisement(source_link_layer=IPXE_MAC))
    assert wire[16:] == bytes([OPTION_SOURCE_LINK_LAYER_ADDRESS, 1]) + IPXE_MAC


@given(advertisements, addresses, addresses)
def test_advertisement_round_trip_with_valid_checksum(
    advertisement: RouterAdvertisement, source: IPv6Address, destination: IPv6Address
) -> None:
    wire = encode_router_advertisement(advertisement, source, destination)
    assert decode_router_advertisement(wire) == advertisement
    assert icmpv6_checksum(source, destination, wire) in (0, 0xFFFF)


@given(solicitations)
def test_solicitation_round_trip(solicitation: RouterSolicitation) -> None:
    assert decode_router_solicitation(encode_router_solicitation(solicitation)) == solicitation


@given(advertisements, addresses, addresses, st.integers(0, 10_000))
def test_any_flipped_bit_breaks_the_checksum(
    advertisement: RouterAdvertisement, source: IPv6Address, destination: IPv6Address,
    bit: int,
) -> None:
    wire = bytearray(encode_router_advertisement(advertisement, source, destination))
    bit %= len(wire) * 8
    wire[bit // 8] ^= 1 << (bit % 8)
    # A single flipped bit changes the one's complement sum by 2**k, never by a multiple
    # of 0xffff, so verification no longer yields (either representation of) zero.
    assert icmpv6_checksum(source, destination, bytes(wire)) not in (0, 0xFFFF)


def _decodes_stably_or_is_malformed(data: bytes) -> None:
    """Either MalformedPacket, or a value that survives an encode/decode round trip."""
    try:
        solicitation = decode_router_solicitation(data)
    except MalformedPacket:
        pass
    else:
        assert decode_router_solicitation(encode_router_solicitation(solicitation)) == solicitation
    try:
        advertisement = decode_router_advertisement(data)
    except MalformedPacket:
        pass
    else:
        again = decode_router_advertisement(encode_router_advertisement(advertisement))
        assert again == advertisement


@given(st.binary(max_size=80))
def test_arbitrary_bytes_decode_or_raise_malformed(data: bytes) -> None:
    _decodes_stably_or_is_malformed(data)


@given(st.sampled_from([133, 134]), st.binary(min_size=4, max_size=64))
def test_arbitrary_bodies_decode_or_raise_malformed(message_type: int, tail: bytes) -> None:
    _decodes_stably_or_is_malformed(bytes([message_type, 0, 0, 0]) + tail)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (IPXE_RS[:7], Truncated),  # shorter than the fixed part
        (bytes([133, 1]) + IPXE_RS[2:], Invalid),  # §6.1.1: ICMP code must be 0
        (bytes([134]) + IPXE_RS[1:], Invalid),  # not a solicitation
        (IPXE_RS[:8] + b"\x01\x00" + bytes(6), Invalid),  # §4.6: option length 0
        (IPXE_RS[:8] + b"\x01\x02" + bytes(6), Truncated),  # option runs past the end
        (IPXE_RS + b"\x01", Truncated),  # half an option header
    ],
    ids=["short", "code", "type", "zero-length-option", "long-option", "stray-byte"],
)
def test_bad_solicitations_are_rejected(data: bytes, error: type[MalformedPacket]) -> None:
    with pytest.raises(error):
        decode_router_solicitation(data)


def test_solicitation_from_unspecified_must_not_carry_a_link_layer_address() -> None:
    # RFC 4861 §6.1.1.
    with pytest.raises(Invalid):
        decode_router_solicitation(IPXE_RS, UNSPECIFIED)
    bare = encode_router_solicitation(RouterSolicitation())
    assert decode_router_solicitation(bare, UNSPECIFIED) == RouterSolicitation()


def test_unknown_options_are_kept_not_rejected() -> None:
    # RFC 4861 §4.1: receivers ignore options they do not recognise.
    nonce = NdpOption(14, bytes(6))
    wire = encode_router_solicitation(RouterSolicitation(IPXE_MAC, (nonce,)))
    assert decode_router_solicitation(wire).options == (nonce,)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RouterAdvertisement(router_lifetime=0x10000),
        lambda: RouterAdvertisement(cur_hop_limit=-1),
        lambda: RouterAdvertisement(source_link_layer=b"\x01"),
        lambda: RouterAdvertisement(options=(NdpOption(1, IPXE_MAC),)),
        lambda: NdpOption(3, b"\x00"),
        lambda: NdpOption(256, bytes(6)),
        lambda: NdpOption(3, bytes(256 * 8 - 2)),
        lambda: encode_router_advertisement(RouterAdvertisement(), source=ALL_NODES),
    ],
    ids=["lifetime", "hop-limit", "lla-length", "lla-in-options", "option-units",
         "option-type", "option-too-long", "half-checksum"],
)
def test_impossible_values_are_api_misuse(make: object) -> None:
    with pytest.raises(ApiMisuse):
        make()  # type: ignore[operator]


def test_checksum_matches_an_independent_computation() -> None:
    """RFC 1071 sum written out longhand over the pseudo-header fields."""
    message = encode_router_advertisement(RouterAdvertisement())
    words = (
        list(struct.unpack("!8H", IPXE_LINK_LOCAL.packed))
        + list(struct.unpack("!8H", ALL_NODES.packed))
        + [0, len(message), 0, 58]
        + list(struct.unpack(f"!{len(message) // 2}H", message))
    )
    total = sum(words)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    assert icmpv6_checksum(IPXE_LINK_LOCAL, ALL_NODES, message) == (~total & 0xFFFF)
