"""The DHCP/BOOTP message: a frozen value, a strict decoder and an encoder.

Layout: RFC 2131 §2 Figure 1 (fixed 236-octet BOOTP header), magic cookie (RFC 2131 §3),
then the options area.  The header layout is dpkt's (``dpkt.dhcp.DHCP.__hdr__``, checked
against the RFC at import), read and written with one precompiled :mod:`struct` call rather
than through ``dpkt.dhcp.DHCP`` objects: dpkt accepts packets this module must refuse (bad
lengths, missing END, hlen > 16) and its option handling has no RFC 3396 or option 52
support, so wrapping it would mean re-checking every field anyway; a single ``struct``
unpack is also the fastest path for the server's hot loop.

Decoding (:func:`decode_dhcp`) raises only :class:`~pxestack.errors.MalformedPacket`
subclasses.  Option 52 overload (RFC 2132 §9.3) is resolved while decoding: options found in
``file``/``sname`` are merged after the options area (RFC 3396 §5 order: options, file,
sname), option 52 itself is dropped, and an overloaded field reads as empty.  Encoding
(:func:`encode_dhcp`) is the inverse: it splits long options (RFC 3396), overloads empty
``file``/``sname`` fields only when the options do not fit ``max_size``, and pads to the
300-octet BOOTP minimum.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Final

import dpkt.dhcp

from pxestack._records import positional_constructor
from pxestack.errors import ApiMisuse, Invalid, Truncated
from pxestack.wire import constants as c
from pxestack.wire.dhcp_options import DhcpOptions, ipv4_address, parse_option_area


def _bootp_layout() -> str:
    """dpkt's BOOTP/DHCP header as a :mod:`struct` format, the cookie read as 4 octets.

    Checked against RFC 2131 §2 Figure 1 and §3, so a dpkt that changed its definition
    stops the import instead of garbling packets."""
    fields_and_formats = [(name, fmt) for name, fmt, _default in dpkt.dhcp.DHCP.__hdr__]
    expected = [("op", "B"), ("hrd", "B"), ("hln", "B"), ("hops", "B"), ("xid", "I"),
                ("secs", "H"), ("flags", "H"), ("ciaddr", "I"), ("yiaddr", "I"),
                ("siaddr", "I"), ("giaddr", "I"), ("chaddr", "16s"), ("sname", "64s"),
                ("file", "128s"), ("magic", "I")]
    if fields_and_formats != expected or dpkt.dhcp.DHCP_MAGIC.to_bytes(4, "big") != (
        c.MAGIC_COOKIE
    ):
        raise ImportError("dpkt's DHCP header is not the RFC 2131 layout")
    return "!" + "".join(fmt for _name, fmt in fields_and_formats[:-1]) + "4s"


# op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr(16),
# sname(64), file(128), cookie(4)
_HEADER: Final = struct.Struct(_bootp_layout())
_HEADER_WITH_COOKIE_LENGTH: Final = _HEADER.size  # 240
#: The decoder's view of the same header: sname and file are skipped (``192x``) and sliced
#: only when they hold something, so most packets build two bytes objects fewer.
_DECODE_HEADER: Final = struct.Struct(_HEADER.format.replace("64s128s", "192x"))
_SNAME_OFFSET: Final = 44
_FILE_OFFSET: Final = _SNAME_OFFSET + c.SNAME_LENGTH  # 108
if _DECODE_HEADER.size != _HEADER.size or _FILE_OFFSET + c.FILE_LENGTH != 236:
    raise ImportError("the decoder's header layout disagrees with the encoder's")
#: The unset address; one shared object (see ipv4_address), so the encoder can test identity.
_ZERO: Final = ipv4_address(0)
_OVERLOAD_CODE: Final = c.OPT_OVERLOAD


def _c_string(raw: bytes) -> bytes:
    """``sname``/``file`` are NUL-terminated (RFC 2131 §2); keep what precedes the first NUL."""
    end = raw.find(b"\x00")
    return raw if end < 0 else raw[:end]


def format_mac(hardware_address: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff`` form of a hardware address (any length)."""
    return hardware_address.hex(":")


def parse_mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` (or ``-`` separated) into octets; ApiMisuse if malformed."""
    try:
        raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    except ValueError as exc:
        raise ApiMisuse(f"not a hardware address: {text!r}") from exc
    if not 1 <= len(raw) <= c.CHADDR_LENGTH:
        raise ApiMisuse(f"not a hardware address: {text!r}")
    return raw


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    """One BOOTP/DHCP message (RFC 2131 §2).

    ``chaddr`` holds exactly ``hlen`` octets; ``sname`` and ``file`` hold the text before the
    first NUL (empty when overloaded with options); ``options`` never contains PAD, END or
    option 52.
    """

    op: int
    xid: int
    chaddr: bytes
    options: DhcpOptions = field(default_factory=DhcpOptions)
    htype: int = c.HTYPE_ETHERNET
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = _ZERO
    yiaddr: IPv4Address = _ZERO
    siaddr: IPv4Address = _ZERO
    giaddr: IPv4Address = _ZERO
    sname: bytes = b""
    file: bytes = b""

    @property
    def message_type(self) -> int | None:
        """Option 53 (RFC 2132 §9.6), or None for a plain BOOTP message."""
        value = self.options.by_code.get(c.OPT_MESSAGE_TYPE)  # options.raw(), one call less
        return value[0] if value is not None and len(value) == 1 else None

    @property
    def broadcast(self) -> bool:
        """The BROADCAST flag (RFC 2131 §2, Figure 2)."""
        return bool(self.flags & c.FLAG_BROADCAST)

    @property
    def mac(self) -> str:
        """The client hardware address as ``aa:bb:...``."""
        return format_mac(self.chaddr)

    def replace(self, **changes: object) -> DhcpMessage:
        """A copy with the named fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)  # type: ignore[arg-type]


#: ``DhcpMessage(...)`` with every field given positionally, without ``__init__``: the
#: codec builds two messages per packet (the request, the reply).
_new_message: Final = positional_constructor(DhcpMessage)


def decode_dhcp(data: bytes) -> DhcpMessage:
    """Decode one DHCP message; raise only :class:`~pxestack.errors.MalformedPacket`.

    Refused (hostile or broken packets): shorter than 240 octets, wrong magic cookie, op not 1/2,
    hlen > 16, an option running past its area, no END in the options area, option 52 or 53
    of the wrong length or value, option values beyond the RFC 3396 size cap.
    """
    if len(data) < _HEADER_WITH_COOKIE_LENGTH:
        raise Truncated(f"{len(data)} octets is shorter than a BOOTP header and cookie")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr_raw,
     cookie) = _DECODE_HEADER.unpack_from(data)
    if cookie != c.MAGIC_COOKIE:
        raise Invalid("no DHCP magic cookie (plain BOOTP is not served)")
    if op not in (c.BOOTREQUEST, c.BOOTREPLY):
        raise Invalid(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > c.CHADDR_LENGTH:
        # ISC CVE-2010-2156 / CVE-2012-3571 class: never index past the 16-octet field.
        raise Invalid(f"hlen {hlen} exceeds the 16-octet chaddr field")
    items: dict[int, bytes] = {}
    parse_option_area(data, items, require_end=True, start=_HEADER_WITH_COOKIE_LENGTH)
    # ``in`` first: option 52 is rare, and the test is cheaper than ``pop`` with a default.
    overload_value = items.pop(_OVERLOAD_CODE) if _OVERLOAD_CODE in items else None
    # Nearly every client leaves sname and file empty: skip the search then.
    sname = _c_string(data[_SNAME_OFFSET:_FILE_OFFSET]) if data[_SNAME_OFFSET] else b""
    file = (_c_string(data[_FILE_OFFSET:_FILE_OFFSET + c.FILE_LENGTH]) if data[_FILE_OFFSET]
            else b"")
    if overload_value is not None:
        if len(overload_value) != 1 or overload_value[0] not in (1, 2, 3):
            raise Invalid(f"option 52 overload value {overload_value!r} is not 1, 2 or 3")
        overload = overload_value[0]
        # RFC 2132 §9.3 / RFC 3396 §5: file first, then sname; each parsed once, and an
        # option 52 found inside them is ignored rather than followed, so there is no loop.
        if overload & c.OVERLOAD_FILE:
            parse_option_area(data[_FILE_OFFSET:_FILE_OFFSET + c.FILE_LENGTH], items,
                              require_end=False, where="file")
            items.pop(_OVERLOAD_CODE, None)
            file = b""
        if overload & c.OVERLOAD_SNAME:
            parse_option_area(data[_SNAME_OFFSET:_FILE_OFFSET], items, require_end=False,
                              where="sname")
            items.pop(_OVERLOAD_CODE, None)
            sname = b""
    if _MESSAGE_TYPE_CODE in items and len(items[_MESSAGE_TYPE_CODE]) != 1:
        raise Invalid("option 53 must be one octet")
    return _new_message(
        op,
        xid,
        chaddr_raw[:hlen],
        DhcpOptions._trusted(items),
        htype,
        hlen,
        hops,
        secs,
        flags,
        ipv4_address(ciaddr) if ciaddr else _ZERO,
        ipv4_address(yiaddr) if yiaddr else _ZERO,
        ipv4_address(siaddr) if siaddr else _ZERO,
        ipv4_address(giaddr) if giaddr else _ZERO,
        sname,
        file,
    )


_MANAGED_CODES: Final = (c.OPT_PAD, c.OPT_END, c.OPT_OVERLOAD)
#: Octets after the header and cookie of a packet of the 300-octet BOOTP minimum.
_MIN_OPTIONS_TAIL: Final = c.BOOTP_MIN_LENGTH - _HEADER_WITH_COOKIE_LENGTH
_MESSAGE_TYPE_CODE: Final = c.OPT_MESSAGE_TYPE


def _check_codes(items: Mapping[int, bytes]) -> None:
    """PAD, END and option 52 are written by the codec, never taken from the caller."""
    for code in _MANAGED_CODES:
        if code in items:
            raise ApiMisuse(f"option {code} is managed by the codec, not a value")


def _simple_area(items: Mapping[int, bytes]) -> bytearray | None:
    """The options area in one pass, option 53 first; None if a value needs splitting.

    This is the encoder's hot path: a reply whose every value fits one TLV (all of them in
    practice) is written straight into one buffer, with no per-option chunk objects.
    """
    out = bytearray()
    message_type = items.get(_MESSAGE_TYPE_CODE)
    if message_type is not None:
        if len(message_type) > 255:
            return None
        out.append(_MESSAGE_TYPE_CODE)
        out.append(len(message_type))
        out += message_type
    for code, value in items.items():
        if code == _MESSAGE_TYPE_CODE:
            continue
        size = len(value)
        if size > 255:
            return None
        out.append(code)
        out.append(size)
        out += value
    return out


class PreEncodedOptions(DhcpOptions):
    """:class:`DhcpOptions` whose options area is encoded once, for values shared by many
    replies (a server's cached option sets, see :func:`pre_encoded_options`).

    It is an ordinary, immutable :class:`DhcpOptions` (equal to one with the same items);
    :func:`encode_dhcp` only copies :attr:`tail` behind the header instead of writing the
    area again, which gives the same octets (tested).
    """

    __slots__ = ("area_size", "tail")

    #: Octets of the options area without END (what has to fit the reply's capacity).
    area_size: int
    #: The options area, END and the padding to the 300-octet BOOTP minimum.
    tail: bytes


def pre_encoded_options(items: Mapping[int, bytes]) -> DhcpOptions:
    """``DhcpOptions(items)``, with its options area encoded once when it has the one-pass
    form (every value fits one TLV): a :class:`PreEncodedOptions`.

    Anything :func:`encode_dhcp` would refuse or has to split (PAD, END or option 52 as a
    key, a value over 255 octets) stays a plain :class:`DhcpOptions` and takes the general
    path, with the same errors.
    """
    options = DhcpOptions(items)
    plain = options.by_code
    if any(code in plain for code in _MANAGED_CODES):
        return options
    area = _simple_area(plain)
    if area is None:
        return options
    pre: PreEncodedOptions = PreEncodedOptions._trusted(dict(plain))  # type: ignore[assignment]
    pre.area_size = len(area)
    area.append(c.OPT_END)
    if len(area) < _MIN_OPTIONS_TAIL:
        area += bytes(_MIN_OPTIONS_TAIL - len(area))
    pre.tail = bytes(area)
    return pre


def _option_chunks(options: Mapping[int, bytes]) -> list[bytes]:
    """Encoded TLVs, option 53 first, values over 255 octets split (RFC 3396 §5)."""
    chunks: list[bytes] = []
    codes = list(options)
    if c.OPT_MESSAGE_TYPE in options:
        # Not required by RFC 2131, but every server puts 53 first and some clients rely on it.
        codes.remove(c.OPT_MESSAGE_TYPE)
        codes.insert(0, c.OPT_MESSAGE_TYPE)
    for code in codes:
        value = options[code]
        if not value:
            chunks.append(bytes((code, 0)))
            continue
        for start in range(0, len(value), 255):
            part = value[start : start + 255]
            chunks.append(bytes((code, len(part))) + part)
    return chunks


def _pack(chunks: list[bytes], capacity: int) -> tuple[bytes, list[bytes]]:
    """First-fit: take chunks that fit ``capacity``; return (area, chunks left over).

    Chunks of different options may change places, but the pieces of one split option keep
    their order, since RFC 3396 §5 concatenates them in the order options, file, sname.
    """
    out = bytearray()
    left: list[bytes] = []
    blocked: set[int] = set()
    for chunk in chunks:
        code = chunk[0]
        if code not in blocked and len(out) + len(chunk) <= capacity:
            out += chunk
        else:
            blocked.add(code)
            left.append(chunk)
    return bytes(out), left


def _split_layout(
    message: DhcpMessage,
    items: Mapping[int, bytes],
    max_size: int,
    main_capacity: int,
    allow_overload: bool,
) -> tuple[bytes, bytes, bytes]:
    """(options area without END, sname field, file field) for options that need RFC 3396
    splits or do not fit the options area.

    Options that do not fit are moved into an empty ``file`` then an empty ``sname`` field,
    announced by option 52 (RFC 2132 §9.3), when *allow_overload*.
    """
    chunks = _option_chunks(items)
    main, left = _pack(chunks, main_capacity)
    sname_field = message.sname
    file_field = message.file
    if not left:
        return main, sname_field, file_field
    can_use_file = allow_overload and not message.file
    can_use_sname = allow_overload and not message.sname
    if not (can_use_file or can_use_sname):
        raise ApiMisuse(f"options do not fit in {max_size} octets")
    main, left = _pack(chunks, main_capacity - 3)  # room for option 52
    overload = 0
    if can_use_file and left:
        area, left = _pack(left, c.FILE_LENGTH - 1)
        if area:
            file_field = area + b"\xff"
            overload |= c.OVERLOAD_FILE
    if can_use_sname and left:
        area, left = _pack(left, c.SNAME_LENGTH - 1)
        if area:
            sname_field = area + b"\xff"
            overload |= c.OVERLOAD_SNAME
    if left:
        raise ApiMisuse(f"options do not fit in {max_size} octets even with overload")
    return bytes((c.OPT_OVERLOAD, 1, overload)) + main, sname_field, file_field


def max_message_size(client_max: int | None) -> int:
    """The DHCP payload limit for a reply, from the client's option 57 (RFC 2132 §9.10).

    Option 57 counts the whole IP datagram and may not be below 576; a smaller or missing
    value means 576.  The result excludes the 28 octets of IPv4 and UDP headers.
    """
    limit = c.DHCP_MIN_MAX_MESSAGE if client_max is None else max(client_max,
                                                                  c.DHCP_MIN_MAX_MESSAGE)
    return limit - c.IP_UDP_HEADER_LENGTH


def encode_dhcp(message: DhcpMessage, *, max_size: int = 548, allow_overload: bool = True) -> bytes:
    """Encode ``message`` as at most ``max_size`` octets of UDP payload.

    ``max_size`` defaults to 548 (RFC 2131 §2: 576-octet datagrams minus IP and UDP headers);
    use :func:`max_message_size` to derive it from the client's option 57.  Options that do
    not fit are moved into an empty ``file`` then an empty ``sname`` field with option 52
    (RFC 2132 §9.3) when ``allow_overload``; firmware that must never see overload (old PXE
    ROMs, dnsmasq's ``dhcp-no-override``) is protected by the caller putting its boot file in
    ``file``, which is then never overloaded.  Raises :class:`~pxestack.errors.ApiMisuse` if
    a field is out of range or the options cannot fit.
    """
    chaddr = message.chaddr
    if len(chaddr) != message.hlen or message.hlen > c.CHADDR_LENGTH:
        raise ApiMisuse(f"chaddr has {len(chaddr)} octets, hlen says {message.hlen}")
    sname_field = message.sname
    file_field = message.file
    if len(sname_field) > c.SNAME_LENGTH or len(file_field) > c.FILE_LENGTH:
        raise ApiMisuse("sname is at most 64 and file at most 128 octets")
    options = message.options
    main_capacity = max_size - _HEADER_WITH_COOKIE_LENGTH - 1  # minus END
    if type(options) is PreEncodedOptions and options.area_size <= main_capacity:
        # The server's cached option sets: the area, END and padding are already written.
        return _pack_header(message, chaddr, sname_field, file_field) + options.tail
    items = options.by_code
    _check_codes(items)
    main: bytes | bytearray | None = _simple_area(items)
    if main is None or len(main) > main_capacity:
        main, sname_field, file_field = _split_layout(
            message, items, max_size, main_capacity, allow_overload
        )
    packet = _pack_header(message, chaddr, sname_field, file_field) + main + b"\xff"
    if len(packet) < c.BOOTP_MIN_LENGTH:
        packet += bytes(c.BOOTP_MIN_LENGTH - len(packet))
    return packet


def _pack_header(message: DhcpMessage, chaddr: bytes, sname_field: bytes,
                 file_field: bytes) -> bytes:
    """The fixed header and magic cookie of *message*; ApiMisuse if a field is out of range.

    The unset address (``_ZERO``, what the decoder and the servers use) is written without
    ``int()``, a Python-level call on ``IPv4Address``.
    """
    ciaddr = message.ciaddr
    yiaddr = message.yiaddr
    siaddr = message.siaddr
    giaddr = message.giaddr
    try:
        header = _HEADER.pack(
            message.op,
            message.htype,
            message.hlen,
            message.hops,
            message.xid,
            message.secs,
            message.flags,
            0 if ciaddr is _ZERO else int(ciaddr),
            0 if yiaddr is _ZERO else int(yiaddr),
            0 if siaddr is _ZERO else int(siaddr),
            0 if giaddr is _ZERO else int(giaddr),
            chaddr,
            sname_field,
            file_field,
            c.MAGIC_COOKIE,
        )
    except struct.error as exc:
        raise ApiMisuse(f"header field out of range: {exc}") from exc
    return header


def encode_reply(
    request: DhcpMessage,
    options: PreEncodedOptions,
    *,
    yiaddr: IPv4Address = _ZERO,
    siaddr: IPv4Address = _ZERO,
    ciaddr: IPv4Address = _ZERO,
    file: bytes = b"",
) -> bytes:
    """``encode_dhcp(build_reply(request, options, yiaddr=..., siaddr=..., ciaddr=...,
    file=...), max_size=...)`` for pre-encoded *options* whose area fits the size limit
    (the caller checks ``options.area_size`` against it): the same octets, with the header
    packed straight from the request's fields and no reply :class:`DhcpMessage` built.

    Raises :class:`~pxestack.errors.ApiMisuse` where :func:`encode_dhcp` would (chaddr
    and hlen disagree, *file* over 128 octets, a field out of range).
    """
    chaddr = request.chaddr
    hlen = request.hlen
    if len(chaddr) != hlen or hlen > c.CHADDR_LENGTH:
        raise ApiMisuse(f"chaddr has {len(chaddr)} octets, hlen says {hlen}")
    if len(file) > c.FILE_LENGTH:
        raise ApiMisuse("sname is at most 64 and file at most 128 octets")
    giaddr = request.giaddr
    # The layout of _pack_header, written out rather than shared: a call with 14 arguments
    # costs 2 % of an OFFER here.  tests/dhcp/test_reply_cache.py holds the two to the same
    # octets (Hypothesis).
    try:
        header = _HEADER.pack(
            c.BOOTREPLY,
            request.htype,
            hlen,
            0,  # hops (RFC 2131 Table 3)
            request.xid,
            0,  # secs
            request.flags,
            0 if ciaddr is _ZERO else int(ciaddr),
            0 if yiaddr is _ZERO else int(yiaddr),
            0 if siaddr is _ZERO else int(siaddr),
            0 if giaddr is _ZERO else int(giaddr),
            chaddr,
            b"",  # sname
            file,
            c.MAGIC_COOKIE,
        )
    except struct.error as exc:
        raise ApiMisuse(f"header field out of range: {exc}") from exc
    return header + options.tail


def build_reply(
    request: DhcpMessage,
    options: DhcpOptions,
    *,
    yiaddr: IPv4Address = _ZERO,
    siaddr: IPv4Address = _ZERO,
    ciaddr: IPv4Address = _ZERO,
    sname: bytes = b"",
    file: bytes = b"",
    flags: int | None = None,
) -> DhcpMessage:
    """A BOOTREPLY answering ``request`` per RFC 2131 §4.3.1 Table 3.

    xid, htype, hlen, chaddr, giaddr and flags are copied from the request (flags can be
    overridden: PXE proxy replies set the broadcast bit); hops and secs are 0.
    """
    return _new_message(
        c.BOOTREPLY,
        request.xid,
        request.chaddr,
        options,
        request.htype,
        request.hlen,
        0,  # hops
        0,  # secs
        request.flags if flags is None else flags,
        ciaddr,
        yiaddr,
        siaddr,
        request.giaddr,
        sname,
        file,
    )


__all__ = [
    "DhcpMessage",
    "PreEncodedOptions",
    "build_reply",
    "decode_dhcp",
    "encode_dhcp",
    "encode_reply",
    "format_mac",
    "max_message_size",
    "parse_mac",
    "pre_encoded_options",
]
