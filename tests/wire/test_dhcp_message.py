"""DHCP message codec: round trips, overload, RFC 3396 splitting and hostile bytes (D1-D6)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from pxestack.errors import ApiMisuse, Invalid, MalformedPacket, Truncated
from pxestack.wire import constants as c
from pxestack.wire.dhcp import (
    DhcpMessage,
    build_reply,
    decode_dhcp,
    encode_dhcp,
    format_mac,
    max_message_size,
    parse_mac,
)
from pxestack.wire.dhcp_options import MAX_OPTION_LENGTH, DhcpOptions

MAC = bytes.fromhex("525400123456")

addresses = st.integers(min_value=0, max_value=2**32 - 1).map(IPv4Address)
option_codes = st.integers(min_value=1, max_value=254).filter(
    lambda code: code not in (c.OPT_OVERLOAD, c.OPT_MESSAGE_TYPE)
)
option_items = st.dictionaries(option_codes, st.binary(max_size=600), max_size=12)


@st.composite
def messages(draw: st.DrawFn, *, max_value: int = 600) -> DhcpMessage:
    """Arbitrary well-formed messages (no NUL inside sname/file: they are C strings)."""
    items = draw(
        st.dictionaries(option_codes, st.binary(max_size=max_value), max_size=12)
    )
    message_type = draw(st.none() | st.integers(min_value=1, max_value=8))
    if message_type is not None:
        items = {c.OPT_MESSAGE_TYPE: bytes((message_type,)), **items}
    hlen = draw(st.integers(min_value=0, max_value=16))
    def no_nul(limit: int) -> st.SearchStrategy[bytes]:
        return st.binary(max_size=limit).map(lambda b: b.replace(b"\x00", b"\x01"))

    return DhcpMessage(
        op=draw(st.sampled_from((c.BOOTREQUEST, c.BOOTREPLY))),
        htype=draw(st.integers(0, 255)),
        hlen=hlen,
        hops=draw(st.integers(0, 255)),
        xid=draw(st.integers(0, 2**32 - 1)),
        secs=draw(st.integers(0, 0xFFFF)),
        flags=draw(st.integers(0, 0xFFFF)),
        ciaddr=draw(addresses),
        yiaddr=draw(addresses),
        siaddr=draw(addresses),
        giaddr=draw(addresses),
        chaddr=draw(st.binary(min_size=hlen, max_size=hlen)),
        sname=draw(no_nul(64)),
        file=draw(no_nul(128)),
        options=DhcpOptions(items),
    )


def discover(**changes: object) -> DhcpMessage:
    """A small DHCPDISCOVER."""
    message = DhcpMessage(
        op=c.BOOTREQUEST,
        xid=0x1234ABCD,
        chaddr=MAC,
        options=DhcpOptions.build({c.OPT_MESSAGE_TYPE: c.DHCPDISCOVER}),
    )
    return message.replace(**changes)


# --- round trips -----------------------------------------------------------------------------


@settings(max_examples=150)
@given(messages())
def test_round_trip_with_room(message: DhcpMessage) -> None:
    """decode(encode(m)) == m when the size limit is generous (RFC 3396 splits included)."""
    assert decode_dhcp(encode_dhcp(message, max_size=65000)) == message


@settings(max_examples=150)
@given(
    st.dictionaries(option_codes, st.binary(min_size=40, max_size=300), min_size=1, max_size=5),
    st.sampled_from([b"", b"undionly.kpxe"]),
    st.sampled_from([b"", b"boot-server"]),
)
def test_round_trip_through_overload(items: dict[int, bytes], file: bytes,
                                     sname: bytes) -> None:
    """Within 548 octets options overflow into empty file/sname fields with option 52 (a
    field that holds a name is never overloaded), and come back."""
    message = discover(options=DhcpOptions(items), file=file, sname=sname)
    try:
        data = encode_dhcp(message)
    except ApiMisuse:
        assume(False)
        raise
    assert len(data) <= 548
    overloaded = data[240] == c.OPT_OVERLOAD
    event("overloaded" if overloaded else "fits without overload")
    if overloaded:
        assert (data[242] & c.OVERLOAD_FILE == 0) or not file
        assert (data[242] & c.OVERLOAD_SNAME == 0) or not sname
    assert decode_dhcp(data) == message


def test_short_replies_are_padded_to_the_bootp_minimum() -> None:
    """RFC 1542 §2.1: at least 300 octets on the wire."""
    data = encode_dhcp(discover())
    assert len(data) == c.BOOTP_MIN_LENGTH
    assert data[240:243] == bytes((53, 1, 1)) and data[243] == 255


def test_long_option_is_split_into_255_octet_instances() -> None:
    """RFC 3396 §5: a 600-octet value travels as 255 + 255 + 90, contiguous."""
    value = bytes(range(200)) * 3
    data = encode_dhcp(discover(options=DhcpOptions({224: value})), max_size=1500)
    area = data[240:]
    assert area[0:2] == bytes((224, 255))
    assert area[257:259] == bytes((224, 255))
    assert area[514:516] == bytes((224, 90))
    assert decode_dhcp(data).options[224] == value


def test_overload_is_used_only_when_needed_and_only_in_empty_fields() -> None:
    """Options move into ``file`` (then ``sname``) only when the area overflows."""
    small = discover(options=DhcpOptions({224: b"a" * 200}))
    assert c.OPT_OVERLOAD not in _raw_codes(encode_dhcp(small))
    big = discover(options=DhcpOptions({224: b"a" * 250, 225: b"b" * 100}))
    data = encode_dhcp(big)
    assert _raw_codes(data)[0] == c.OPT_OVERLOAD
    assert data[108] == 225  # the file field now starts with option 225
    assert decode_dhcp(data) == big
    with pytest.raises(ApiMisuse):
        encode_dhcp(big.replace(file=b"undionly.kpxe", sname=b"boot"))
    with pytest.raises(ApiMisuse):
        encode_dhcp(big, allow_overload=False)


def test_codec_managed_options_cannot_be_values() -> None:
    with pytest.raises(ApiMisuse):
        DhcpOptions({0: b""})
    with pytest.raises(ApiMisuse):
        encode_dhcp(discover(options=DhcpOptions({c.OPT_OVERLOAD: b"\x01"})))


def test_encode_rejects_inconsistent_fields() -> None:
    with pytest.raises(ApiMisuse):
        encode_dhcp(discover(hlen=7))
    with pytest.raises(ApiMisuse):
        encode_dhcp(discover(file=b"x" * 129))
    with pytest.raises(ApiMisuse):
        encode_dhcp(discover(secs=70000))


# --- decoding rules --------------------------------------------------------------------------


def _raw_codes(data: bytes) -> list[int]:
    codes = []
    index = 240
    while data[index] != 255:
        if data[index] == 0:
            index += 1
            continue
        codes.append(data[index])
        index += 2 + data[index + 1]
    return codes


def _packet(options: bytes, *, sname: bytes = b"", file: bytes = b"", hlen: int = 6) -> bytes:
    header = struct.pack(
        "!BBBBIHHIIII16s64s128s", 1, 1, hlen, 0, 7, 0, 0, 0, 0, 0, 0, MAC, sname, file
    )
    return header + c.MAGIC_COOKIE + options


def test_overloaded_fields_are_parsed_after_the_options_in_rfc3396_order() -> None:
    """RFC 3396 §5: concatenation order is options, file, sname."""
    data = _packet(
        bytes((53, 1, 1, 52, 1, 3, 224, 2)) + b"AB" + b"\xff",
        file=bytes((224, 2)) + b"CD" + b"\xff",
        sname=bytes((224, 2)) + b"EF" + b"\xff",
    )
    message = decode_dhcp(data)
    assert message.options[224] == b"ABCDEF"
    assert message.file == b"" and message.sname == b""
    assert c.OPT_OVERLOAD not in message.options


def test_nested_overload_is_ignored_not_followed() -> None:
    """Option 52 inside ``file`` does not make sname an option area."""
    data = _packet(
        bytes((53, 1, 1, 52, 1, 1)) + b"\xff",
        file=bytes((52, 1, 3, 224, 1)) + b"X" + b"\xff",
        sname=b"server-name",
    )
    message = decode_dhcp(data)
    assert message.options[224] == b"X"
    assert message.sname == b"server-name"


def test_sname_and_file_are_c_strings() -> None:
    message = decode_dhcp(_packet(b"\xff", sname=b"host\x00junk", file=b"ipxe.efi\x00\x01"))
    assert (message.sname, message.file) == (b"host", b"ipxe.efi")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(b"", Truncated, id="D1-empty"),
        pytest.param(_packet(b"\xff")[:239], Truncated, id="D1-short-header"),
        pytest.param(_packet(b"\xff")[:236] + b"\x00\x00\x00\x00\xff", Invalid, id="D1-no-cookie"),
        pytest.param(_packet(bytes((53, 1, 1))), Truncated, id="D2-no-end"),
        pytest.param(_packet(bytes((12, 9)) + b"abc"), Truncated, id="D2-length-past-end"),
        pytest.param(_packet(bytes((12,))), Truncated, id="D2-code-without-length"),
        pytest.param(_packet(b"\x00" * 2000), Truncated, id="D2-pad-flood-without-end"),
        pytest.param(_packet(bytes((52, 1, 4)) + b"\xff"), Invalid, id="D3-bad-overload-value"),
        pytest.param(_packet(bytes((52, 2, 1, 1)) + b"\xff"), Invalid, id="D3-bad-overload-len"),
        pytest.param(
            _packet(bytes((52, 1, 1)) + b"\xff", file=bytes((224, 200))),
            Truncated,
            id="D3-option-runs-out-of-file",
        ),
        pytest.param(
            _packet((bytes((224, 255)) + b"x" * 255) * (MAX_OPTION_LENGTH // 255 + 1) + b"\xff"),
            Invalid,
            id="D4-concatenation-cap",
        ),
        pytest.param(_packet(bytes((53, 2, 1, 1)) + b"\xff"), Invalid, id="bad-message-type"),
        pytest.param(_packet(b"\xff", hlen=17), Invalid, id="D6-hlen-over-16"),
        pytest.param(
            b"\x03" + _packet(b"\xff")[1:], Invalid, id="op-neither-request-nor-reply"
        ),
    ],
)
def test_malformed_packets_raise_one_error_family(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_dhcp(data)


def test_pad_flood_with_end_is_accepted_in_bounded_work() -> None:
    """Thousands of PADs are legal and cost one pass."""
    message = decode_dhcp(_packet(b"\x00" * 5000 + bytes((53, 1, 1)) + b"\xff"))
    assert message.message_type == c.DHCPDISCOVER


def _decode_or_malformed(data: bytes) -> None:
    """Decode; a MalformedPacket is fine, and whatever decodes must survive a re-encode."""
    try:
        message = decode_dhcp(data)
    except MalformedPacket:
        return
    assert decode_dhcp(encode_dhcp(message, max_size=65000)) == message


@settings(max_examples=300)
@given(st.binary(max_size=700))
@example(b"")
@example(_packet(b"\xff"))
def test_arbitrary_bytes_decode_or_raise_malformed(data: bytes) -> None:
    """Anything either decodes or raises MalformedPacket; never IndexError/struct.error."""
    _decode_or_malformed(data)


@settings(max_examples=200)
@given(st.binary(min_size=0, max_size=400), st.binary(max_size=128), st.binary(max_size=64),
       st.integers(0, 255))
def test_arbitrary_option_areas_and_overload(area: bytes, file: bytes, sname: bytes,
                                            overload: int) -> None:
    """Random option bytes behind a valid header, with and without option 52 in front."""
    prefix = bytes((52, 1, overload)) if overload <= 4 else b""
    _decode_or_malformed(_packet(prefix + area, file=file, sname=sname))


@settings(max_examples=40)
@given(messages(max_value=120))
def test_every_truncation_of_a_valid_packet_is_handled(message: DhcpMessage) -> None:
    """Cut a valid packet at every offset; decode returns or raises Malformed."""
    data = encode_dhcp(message, max_size=65000)
    end = data.rindex(b"\xff") if len(data) > 240 else len(data)
    for cut in range(len(data)):
        try:
            decoded = decode_dhcp(data[:cut])
        except MalformedPacket:
            assert cut <= end
        else:
            # Only a cut inside the trailing padding (after END) may still decode, and then
            # it must decode to the same message.
            assert cut > end
            assert decoded == message


# --- helpers ---------------------------------------------------------------------------------


def test_properties_and_mac_helpers() -> None:
    message = discover(flags=c.FLAG_BROADCAST)
    assert message.broadcast and message.message_type == c.DHCPDISCOVER
    assert message.mac == "52:54:00:12:34:56" == format_mac(MAC)
    assert parse_mac("52-54-00-12-34-56") == MAC
    with pytest.raises(ApiMisuse):
        parse_mac("not a mac")
    assert discover(options=DhcpOptions()).message_type is None


@pytest.mark.parametrize(
    ("option57", "limit"),
    [(None, 548), (300, 548), (576, 548), (1472, 1444), (65280, 65252)],
    ids=["absent", "below-minimum", "minimum", "ipxe-1472", "ovmf-request-65280"],
)
def test_max_message_size_follows_rfc2132_9_10(option57: int | None, limit: int) -> None:
    """Option 57 counts the IP datagram and is at least 576 (OVMF asks 65280 in REQUEST)."""
    assert max_message_size(option57) == limit


def test_build_reply_copies_rfc2131_table3_fields() -> None:
    request = discover(
        flags=c.FLAG_BROADCAST, hops=2, secs=9, giaddr=IPv4Address("198.18.5.1"),
        ciaddr=IPv4Address("198.18.0.9"),
    )
    reply = build_reply(
        request, DhcpOptions.build({c.OPT_MESSAGE_TYPE: c.DHCPOFFER}),
        yiaddr=IPv4Address("198.18.0.20"),
    )
    assert reply.op == c.BOOTREPLY and reply.xid == request.xid
    assert reply.chaddr == MAC and reply.flags == c.FLAG_BROADCAST
    assert reply.giaddr == request.giaddr and reply.hops == 0 and reply.secs == 0
    assert reply.ciaddr == IPv4Address(0) and reply.yiaddr == IPv4Address("198.18.0.20")
    assert build_reply(request, reply.options, flags=0).flags == 0
