"""decode_dhcp's fast path (docs/dhcp.md §11) against a straightforward decoder.

The decoder skips ``sname``/``file`` in its header unpack and parses the options area in
place (``parse_option_area(..., start=240)``) instead of copying it out first.  The
reference below is the plain algorithm (one unpack of every header field, the options area
sliced out, ``sname``/``file`` taken from the unpacked fields); both must agree on every
input: the same message, or the same error class and text.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pxestack.errors import Invalid, MalformedPacket, Truncated
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions, parse_option_area

_FULL_HEADER = struct.Struct("!BBBBIHHIIII16s64s128s4s")
_ZERO_HEADER = bytes(236)


def _c_string(raw: bytes) -> bytes:
    end = raw.find(b"\x00")
    return raw if end < 0 else raw[:end]


def reference_decode(data: bytes) -> DhcpMessage:
    """The straightforward decoder: the rules of decode_dhcp without its shortcuts."""
    if len(data) < 240:
        raise Truncated(f"{len(data)} octets is shorter than a BOOTP header and cookie")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr_raw,
     sname_raw, file_raw, cookie) = _FULL_HEADER.unpack_from(data)
    if cookie != c.MAGIC_COOKIE:
        raise Invalid("no DHCP magic cookie (plain BOOTP is not served)")
    if op not in (c.BOOTREQUEST, c.BOOTREPLY):
        raise Invalid(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > c.CHADDR_LENGTH:
        raise Invalid(f"hlen {hlen} exceeds the 16-octet chaddr field")
    items: dict[int, bytes] = {}
    parse_option_area(data[240:], items, require_end=True)
    overload_value = items.pop(c.OPT_OVERLOAD, None)
    sname = _c_string(sname_raw)
    file = _c_string(file_raw)
    if overload_value is not None:
        if len(overload_value) != 1 or overload_value[0] not in (1, 2, 3):
            raise Invalid(f"option 52 overload value {overload_value!r} is not 1, 2 or 3")
        if overload_value[0] & c.OVERLOAD_FILE:
            parse_option_area(file_raw, items, require_end=False, where="file")
            items.pop(c.OPT_OVERLOAD, None)
            file = b""
        if overload_value[0] & c.OVERLOAD_SNAME:
            parse_option_area(sname_raw, items, require_end=False, where="sname")
            items.pop(c.OPT_OVERLOAD, None)
            sname = b""
    message_type = items.get(c.OPT_MESSAGE_TYPE)
    if message_type is not None and len(message_type) != 1:
        raise Invalid("option 53 must be one octet")
    return DhcpMessage(
        op=op, xid=xid, chaddr=chaddr_raw[:hlen], options=DhcpOptions(items), htype=htype,
        hlen=hlen, hops=hops, secs=secs, flags=flags, ciaddr=IPv4Address(ciaddr),
        yiaddr=IPv4Address(yiaddr), siaddr=IPv4Address(siaddr), giaddr=IPv4Address(giaddr),
        sname=sname, file=file,
    )


def _outcome(decoder: Callable[[bytes], DhcpMessage], data: bytes) -> tuple[str, object]:
    try:
        return "ok", decoder(data)
    except MalformedPacket as exc:
        return type(exc).__name__, str(exc)


def _packet(head: bytes, sname: bytes, file: bytes, area: bytes, cookie: bytes) -> bytes:
    fixed = (head + _ZERO_HEADER)[:44]
    return fixed + sname.ljust(64, b"\x00")[:64] + file.ljust(128, b"\x00")[:128] + cookie + area


_OPTION = st.tuples(st.sampled_from((0, 1, 12, 52, 53, 55, 60, 61, 224, 255)),
                    st.binary(max_size=6)).map(lambda t: bytes((t[0], len(t[1]))) + t[1])
_AREA = st.lists(_OPTION, max_size=8).map(b"".join)


@settings(max_examples=400)
@given(
    head=st.binary(min_size=0, max_size=44),
    sname=st.one_of(_AREA, st.binary(max_size=64)),
    file=st.one_of(_AREA, st.binary(max_size=128)),
    area=st.one_of(_AREA.map(lambda a: a + b"\xff"), _AREA, st.binary(max_size=80)),
    cookie=st.sampled_from((c.MAGIC_COOKIE, b"\x63\x82\x53\x00")),
)
@example(head=bytes((1, 1, 6)), sname=b"host\x00x", file=b"boot.efi", area=b"\x35\x01\x01\xff",
         cookie=c.MAGIC_COOKIE)
@example(head=bytes((1, 1, 6)), sname=bytes((224, 1, 69, 255)), file=bytes((224, 1, 70)),
         area=bytes((52, 1, 3, 224, 1, 68, 255)), cookie=c.MAGIC_COOKIE)
def test_decoder_agrees_with_the_straightforward_decoder(
    head: bytes, sname: bytes, file: bytes, area: bytes, cookie: bytes
) -> None:
    """Same message (all fields, option order included) or the same error, for any input."""
    data = _packet(head, sname, file, area, cookie)
    for cut in (len(data), 239, 240, 241):
        fast = _outcome(decode_dhcp, data[:cut])
        slow = _outcome(reference_decode, data[:cut])
        assert fast == slow
        if fast[0] == "ok":
            assert list(fast[1].options) == list(slow[1].options)  # type: ignore[attr-defined]


@settings(max_examples=300)
@given(st.binary(max_size=120), st.integers(0, 130), st.booleans())
def test_parse_option_area_at_an_offset_equals_parsing_a_copy(
    data: bytes, start: int, require_end: bool
) -> None:
    """``start=k`` parses exactly what a copy of ``data[k:]`` would (values and errors)."""
    at_offset: dict[int, bytes] = {}
    copied: dict[int, bytes] = {}

    def run(parse: Callable[[], None]) -> tuple[str, str]:
        try:
            parse()
        except MalformedPacket as exc:
            return type(exc).__name__, str(exc)
        return "ok", ""

    first = run(lambda: parse_option_area(data, at_offset, require_end=require_end,
                                          start=start))
    second = run(lambda: parse_option_area(data[start:], copied, require_end=require_end))
    assert first == second
    assert list(at_offset.items()) == list(copied.items())
