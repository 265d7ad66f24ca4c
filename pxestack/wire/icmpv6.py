"""ICMPv6 router discovery messages (RFC 4861 §4.1, §4.2) and the ICMPv6 checksum.

pxestack answers router solicitations with the mildest router advertisement there is (M=0,
O=0, router lifetime 0, no prefix information) because that is what ends iPXE's IPv6
autoconfiguration wait: iPXE's ``ifconf`` holds the boot for ~13 s after the DHCPv4 ACK
until its ``ipv6`` configurator either hears a router advertisement or times out (iPXE
1.0.0+git-20190125, ``src/net/ndp.c``; see docs/firmware-testing.md).

The codec works on the ICMPv6 message only (what a raw ``IPPROTO_ICMPV6`` socket reads and
writes); the IPv6 header is the kernel's business.  Decoding is strict: anything RFC 4861
§6.1 says to discard raises :class:`~pxestack.errors.MalformedPacket`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Final

import dpkt

from pxestack.errors import ApiMisuse, Invalid, Truncated

#: RFC 4861 §4.1 / §4.2: ICMPv6 types.
ROUTER_SOLICITATION: Final = 133
ROUTER_ADVERTISEMENT: Final = 134

#: RFC 4861 §4.6: option types used here.
OPTION_SOURCE_LINK_LAYER_ADDRESS: Final = 1
OPTION_PREFIX_INFORMATION: Final = 3

#: RFC 4861 §4.2: the M ("managed address configuration") and O ("other configuration")
#: flag bits of the RA flags octet.
FLAG_MANAGED: Final = 0x80
FLAG_OTHER: Final = 0x40

#: RFC 4861 §6.1.1 / §6.1.2: neighbour discovery packets are only valid with IP hop limit
#: 255 (proof they were not forwarded by a router), and are sent with it.
NDP_HOP_LIMIT: Final = 255

#: RFC 4861 §10 router constants (for the adapter's scheduling).
MAX_RA_DELAY_TIME: Final = 0.5
MIN_DELAY_BETWEEN_RAS: Final = 3.0

ALL_NODES: Final = IPv6Address("ff02::1")
ALL_ROUTERS: Final = IPv6Address("ff02::2")
UNSPECIFIED: Final = IPv6Address("::")

_HEADER = struct.Struct("!BBH")  # type, code, checksum
_RS_BODY = struct.Struct("!I")  # reserved
_RA_BODY = struct.Struct("!BBHII")  # cur hop limit, flags, router lifetime, reachable, retrans
ICMPV6_NEXT_HEADER: Final = 58
#: Bytes of the message summed before the running checksum is folded (even, see below).
_CHECKSUM_CHUNK: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class NdpOption:
    """One neighbour discovery option (RFC 4861 §4.6): type and the bytes after the length."""

    type: int
    body: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 255:
            raise ApiMisuse(f"option type {self.type} is not an octet")
        if (len(self.body) + 2) % 8:
            raise ApiMisuse(
                f"option {self.type} body of {len(self.body)} bytes does not fill 8-octet units"
            )
        if len(self.body) + 2 > 255 * 8:
            # RFC 4861 §4.6: the length octet counts 8-octet units, so at most 255 of them.
            raise ApiMisuse(f"option {self.type} is longer than 255 8-octet units")


@dataclass(frozen=True, slots=True)
class RouterSolicitation:
    """A router solicitation (RFC 4861 §4.1)."""

    #: The body of the (first) Source Link-Layer Address option, if any: for Ethernet
    #: (RFC 2464 §6) exactly the 6-byte MAC.
    source_link_layer: bytes | None = None
    #: The other options in order, including ones this codec does not interpret (§4.1:
    #: "Receivers MUST silently ignore any options they do not recognize").
    options: tuple[NdpOption, ...] = ()

    def __post_init__(self) -> None:
        _check_link_layer_fields(self.source_link_layer, self.options)


@dataclass(frozen=True, slots=True)
class RouterAdvertisement:
    """A router advertisement (RFC 4861 §4.2).

    The defaults are pxestack's "no router here, nothing to configure" advertisement: M=0
    and O=0 (so iPXE does not start DHCPv6 and wait for it again), router lifetime 0 (§4.2:
    "not a default router"), no prefix information, and zero for the unspecified timers.
    """

    cur_hop_limit: int = 0
    managed: bool = False
    other: bool = False
    router_lifetime: int = 0
    reachable_time: int = 0
    retrans_timer: int = 0
    #: The body of the Source Link-Layer Address option (the 6-byte MAC on Ethernet).
    source_link_layer: bytes | None = None
    #: The other options, in order.
    options: tuple[NdpOption, ...] = ()

    def __post_init__(self) -> None:
        _check_link_layer_fields(self.source_link_layer, self.options)
        for name, value, limit in (
            ("cur_hop_limit", self.cur_hop_limit, 0xFF),
            ("router_lifetime", self.router_lifetime, 0xFFFF),
            ("reachable_time", self.reachable_time, 0xFFFFFFFF),
            ("retrans_timer", self.retrans_timer, 0xFFFFFFFF),
        ):
            if not 0 <= value <= limit:
                raise ApiMisuse(f"{name}={value} does not fit its field (0..{limit})")


def _check_link_layer_fields(
    source_link_layer: bytes | None, options: tuple[NdpOption, ...]
) -> None:
    """The link-layer field must be encodable, and must be the *first* such option."""
    if source_link_layer is not None:
        NdpOption(OPTION_SOURCE_LINK_LAYER_ADDRESS, source_link_layer)  # validates the length
    elif any(o.type == OPTION_SOURCE_LINK_LAYER_ADDRESS for o in options):
        raise ApiMisuse("put the first source link-layer address in source_link_layer")


def icmpv6_checksum(source: IPv6Address, destination: IPv6Address, message: bytes) -> int:
    """The ICMPv6 checksum of *message* (RFC 4443 §2.3) with the RFC 8200 §8.1 pseudo-header.

    *message* must hold zero in its checksum field when computing; verifying a received
    message by summing it with its checksum in place yields 0.  The RFC 1071 sum is dpkt's
    (``dpkt.in_cksum_add`` / ``dpkt.in_cksum_done``).
    """
    pseudo = (
        source.packed
        + destination.packed
        + struct.pack("!IxxxB", len(message), ICMPV6_NEXT_HEADER)
    )
    total: int = dpkt.in_cksum_add(0, pseudo)
    # in_cksum_done folds the carries twice, which is exact while the sum stays below 2**32;
    # folding after every 64 KiB keeps it there for any message length (RFC 2675 jumbograms
    # included).  The chunks are even-sized, so the odd final byte is padded only at the end.
    for start in range(0, len(message), _CHECKSUM_CHUNK):
        total = dpkt.in_cksum_add(total, message[start : start + _CHECKSUM_CHUNK])
        total = (total & 0xFFFF) + (total >> 16)
    checksum: int = dpkt.in_cksum_done(total)
    return checksum


def _decode_options(data: bytes) -> tuple[NdpOption, ...]:
    """Split *data* into options; RFC 4861 §4.6: a length of 0 is invalid."""
    options: list[NdpOption] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 2:
            raise Truncated(f"option header cut short at offset {offset}")
        option_type, units = data[offset], data[offset + 1]
        if units == 0:
            # RFC 4861 §4.6 and §6.1.1/§6.1.2: "all included options have a length that is
            # greater than zero" or the packet is silently discarded.
            raise Invalid(f"option {option_type} at offset {offset} has length 0")
        end = offset + units * 8
        if end > len(data):
            raise Truncated(f"option {option_type} announces {units * 8} bytes, "
                            f"{len(data) - offset} remain")
        options.append(NdpOption(option_type, data[offset + 2 : end]))
        offset = end
    return tuple(options)


def _split_source_link_layer(
    options: tuple[NdpOption, ...],
) -> tuple[bytes | None, tuple[NdpOption, ...]]:
    """The body of the first Source Link-Layer Address option (§4.6.1), and the rest."""
    for index, option in enumerate(options):
        if option.type == OPTION_SOURCE_LINK_LAYER_ADDRESS:
            return option.body, options[:index] + options[index + 1 :]
    return None, options


def _check_header(data: bytes, expected_type: int, minimum: int) -> None:
    if len(data) < minimum:
        raise Truncated(f"ICMPv6 type {expected_type} needs {minimum} bytes, got {len(data)}")
    message_type, code, _checksum = _HEADER.unpack_from(data)
    if message_type != expected_type:
        raise Invalid(f"ICMPv6 type {message_type}, expected {expected_type}")
    if code != 0:
        # RFC 4861 §6.1.1 / §6.1.2: "ICMP Code is 0".
        raise Invalid(f"ICMPv6 type {expected_type} with code {code}")


def decode_router_solicitation(
    data: bytes, source: IPv6Address | None = None
) -> RouterSolicitation:
    """Decode a router solicitation, validating it as RFC 4861 §6.1.1 requires.

    The IP-level checks (hop limit 255, checksum) belong to the caller, which has the IP
    header; when *source* is given, the rule "if the IP source address is the unspecified
    address, there is no source link-layer address option" is checked too.
    """
    _check_header(data, ROUTER_SOLICITATION, _HEADER.size + _RS_BODY.size)
    options = _decode_options(data[_HEADER.size + _RS_BODY.size :])
    source_link_layer, others = _split_source_link_layer(options)
    if source == UNSPECIFIED and source_link_layer is not None:
        raise Invalid("router solicitation from :: carries a source link-layer address")
    return RouterSolicitation(source_link_layer=source_link_layer, options=others)


def decode_router_advertisement(data: bytes) -> RouterAdvertisement:
    """Decode a router advertisement (RFC 4861 §4.2, field checks of §6.1.2)."""
    _check_header(data, ROUTER_ADVERTISEMENT, _HEADER.size + _RA_BODY.size)
    hop_limit, flags, lifetime, reachable, retrans = _RA_BODY.unpack_from(data, _HEADER.size)
    options = _decode_options(data[_HEADER.size + _RA_BODY.size :])
    source_link_layer, others = _split_source_link_layer(options)
    return RouterAdvertisement(
        cur_hop_limit=hop_limit,
        managed=bool(flags & FLAG_MANAGED),
        other=bool(flags & FLAG_OTHER),
        router_lifetime=lifetime,
        reachable_time=reachable,
        retrans_timer=retrans,
        source_link_layer=source_link_layer,
        options=others,
    )


def _encode_option(option: NdpOption) -> bytes:
    return bytes([option.type, (len(option.body) + 2) // 8]) + option.body


def _encode_options(source_link_layer: bytes | None, options: tuple[NdpOption, ...]) -> bytes:
    """The Source Link-Layer Address option first (if any), then the others in order."""
    listed = list(options)
    if source_link_layer is not None:
        listed.insert(0, NdpOption(OPTION_SOURCE_LINK_LAYER_ADDRESS, source_link_layer))
    return b"".join(_encode_option(o) for o in listed)


def _fill_checksum(
    message: bytearray, source: IPv6Address | None, destination: IPv6Address | None
) -> bytes:
    if source is not None and destination is not None:
        struct.pack_into("!H", message, 2, icmpv6_checksum(source, destination, bytes(message)))
    elif (source is None) != (destination is None):
        raise ApiMisuse("give both source and destination for the checksum, or neither")
    return bytes(message)


def encode_router_advertisement(
    advertisement: RouterAdvertisement,
    source: IPv6Address | None = None,
    destination: IPv6Address | None = None,
) -> bytes:
    """Encode *advertisement*.

    With *source* and *destination* the checksum is filled in; without them it is left 0
    for the kernel, which computes it on raw ``IPPROTO_ICMPV6`` sockets (RFC 3542 §3.1).
    """
    flags = (FLAG_MANAGED if advertisement.managed else 0) | (
        FLAG_OTHER if advertisement.other else 0
    )
    message = bytearray(
        _HEADER.pack(ROUTER_ADVERTISEMENT, 0, 0)
        + _RA_BODY.pack(
            advertisement.cur_hop_limit,
            flags,
            advertisement.router_lifetime,
            advertisement.reachable_time,
            advertisement.retrans_timer,
        )
        + _encode_options(advertisement.source_link_layer, advertisement.options)
    )
    return _fill_checksum(message, source, destination)


def encode_router_solicitation(
    solicitation: RouterSolicitation,
    source: IPv6Address | None = None,
    destination: IPv6Address | None = None,
) -> bytes:
    """Encode *solicitation* (for tests and tools; pxestack itself never solicits)."""
    message = bytearray(
        _HEADER.pack(ROUTER_SOLICITATION, 0, 0)
        + _RS_BODY.pack(0)
        + _encode_options(solicitation.source_link_layer, solicitation.options)
    )
    return _fill_checksum(message, source, destination)


__all__ = [
    "ALL_NODES",
    "ALL_ROUTERS",
    "FLAG_MANAGED",
    "FLAG_OTHER",
    "MAX_RA_DELAY_TIME",
    "MIN_DELAY_BETWEEN_RAS",
    "NDP_HOP_LIMIT",
    "OPTION_SOURCE_LINK_LAYER_ADDRESS",
    "ROUTER_ADVERTISEMENT",
    "ROUTER_SOLICITATION",
    "UNSPECIFIED",
    "NdpOption",
    "RouterAdvertisement",
    "RouterSolicitation",
    "decode_router_advertisement",
    "decode_router_solicitation",
    "encode_router_advertisement",
    "encode_router_solicitation",
    "icmpv6_checksum",
]
