"""DhcpOptions: typed getters, builders and the encapsulated option spaces (43, 77, 82, 97,
119, 175)."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxestack.errors import ApiMisuse, Invalid, MalformedPacket, Truncated
from pxestack.wire import constants as c
from pxestack.wire.dhcp_options import (
    DhcpOptions,
    decode_domain_search,
    decode_suboptions,
    decode_user_class,
    encode_domain_search,
    encode_suboptions,
    encode_user_class,
    parse_option_area,
)

ROUTER = IPv4Address("198.18.0.1")


def test_build_encodes_by_option_code() -> None:
    options = DhcpOptions.build(
        {
            c.OPT_MESSAGE_TYPE: c.DHCPOFFER,
            c.OPT_LEASE_TIME: 3600,
            c.OPT_MAX_MESSAGE_SIZE: 1472,
            c.OPT_SUBNET_MASK: IPv4Address("255.255.255.0"),
            c.OPT_ROUTER: [ROUTER],
            c.OPT_DNS_SERVER: [ROUTER, IPv4Address("198.18.0.2")],
            c.OPT_BOOTFILE_NAME: "http://198.18.0.1:8080/boot.ipxe",
            c.OPT_CLIENT_ARCH: [7, 9],
            c.OPT_PARAMETER_REQUEST_LIST: [1, 3, 6],
            c.OPT_DOMAIN_SEARCH: ["example.test"],
            200: b"\x01\x02",
        }
    )
    assert options[c.OPT_MESSAGE_TYPE] == b"\x02"
    assert options.u32(c.OPT_LEASE_TIME) == 3600
    assert options.u16(c.OPT_MAX_MESSAGE_SIZE) == 1472
    assert options.ip(c.OPT_SUBNET_MASK) == IPv4Address("255.255.255.0")
    assert options.ips(c.OPT_ROUTER) == (ROUTER,)
    assert options.ips(c.OPT_DNS_SERVER) == (ROUTER, IPv4Address("198.18.0.2"))
    assert options.text(c.OPT_BOOTFILE_NAME) == "http://198.18.0.1:8080/boot.ipxe"
    assert options.client_architectures() == (7, 9)
    assert options.parameter_request_list() == (1, 3, 6)
    assert options.domain_search() == ("example.test",)
    assert options.raw(200) == b"\x01\x02"
    assert next(iter(options)) == c.OPT_MESSAGE_TYPE


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (c.OPT_LEASE_TIME, 2**32),
        (c.OPT_MESSAGE_TYPE, 256),
        (c.OPT_MAX_MESSAGE_SIZE, -1),
        (c.OPT_ROUTER, 7),
        (201, 5),
        (c.OPT_DOMAIN_SEARCH, ["bad..name"]),
    ],
)
def test_build_refuses_values_it_cannot_encode(code: int, value: object) -> None:
    with pytest.raises(ApiMisuse):
        DhcpOptions.build({code: value})  # type: ignore[dict-item]


def test_options_are_immutable_values() -> None:
    options = DhcpOptions.build({c.OPT_LEASE_TIME: 60})
    changed = options.with_option(c.OPT_LEASE_TIME, 120).with_option(c.OPT_HOST_NAME, "pc")
    assert options.u32(c.OPT_LEASE_TIME) == 60
    assert changed.u32(c.OPT_LEASE_TIME) == 120 and changed.text(c.OPT_HOST_NAME) == "pc"
    assert changed.without(c.OPT_HOST_NAME) == DhcpOptions.build({c.OPT_LEASE_TIME: 120})
    assert hash(options) == hash(DhcpOptions.build({c.OPT_LEASE_TIME: 60}))
    assert options == {c.OPT_LEASE_TIME: b"\x00\x00\x00\x3c"}
    assert "DhcpOptions" in repr(options)
    with pytest.raises(TypeError):
        options[c.OPT_LEASE_TIME] = b""  # type: ignore[index]


@pytest.mark.parametrize(
    ("getter", "value"),
    [
        ("u8", b""),
        ("u16", b"\x01"),
        ("u32", b"\x01\x02\x03"),
        ("ip", b"\x01\x02\x03\x04\x05"),
        ("ips", b""),
        ("ips", b"\x01\x02\x03\x04\x05"),
        ("u16_list", b"\x00"),
        ("text", b"\xff\xfe"),
    ],
)
def test_typed_getters_raise_invalid_on_bad_lengths(getter: str, value: bytes) -> None:
    """Present but malformed options raise Invalid, so classification can collect it."""
    options = DhcpOptions({200: value})
    with pytest.raises(Invalid):
        getattr(options, getter)(200)


def test_typed_getters_return_none_when_absent() -> None:
    options = DhcpOptions()
    for getter in ("raw", "u8", "u16", "u32", "ip", "ips", "text", "u8_list", "u16_list"):
        assert getattr(options, getter)(200) is None
    assert options.client_uuid() is None and options.user_classes() == ()
    assert options.pxe_suboptions() is None and options.ipxe_suboptions() is None
    assert options.relay_agent_suboptions() is None and options.domain_search() is None


def test_text_drops_trailing_nul() -> None:
    """Some clients NUL-terminate text options despite RFC 2132 §2."""
    assert DhcpOptions({12: b"host\x00"}).text(12) == "host"


def test_parameter_request_list_removes_duplicates() -> None:
    """A 255-entry list full of duplicates is bounded to the distinct codes."""
    options = DhcpOptions({c.OPT_PARAMETER_REQUEST_LIST: bytes([1, 3, 1, 6, 3] * 51)})
    assert options.parameter_request_list() == (1, 3, 6)


# --- option 97 -------------------------------------------------------------------------------


def test_client_uuid_is_read_in_smbios_byte_order() -> None:
    """The BIOS ROM's SMBIOS uuid 00000000-0000-4000-8000-e2e000000001 arrives with its
    first three fields little-endian, so the wire reads ...-0000-0040-8000-...."""
    wire = bytes.fromhex("00" + "00000000" + "0000" + "0040" + "8000" + "e2e000000001")
    options = DhcpOptions({c.OPT_CLIENT_UUID: wire})
    assert options.client_uuid() == uuid.UUID("00000000-0000-4000-8000-e2e000000001")
    rebuilt = DhcpOptions.build({c.OPT_CLIENT_UUID: options.client_uuid()})  # type: ignore[dict-item]
    assert rebuilt[c.OPT_CLIENT_UUID] == wire


@pytest.mark.parametrize("value", [b"\x00" * 16, b"\x01" + b"\x00" * 16, b"\x00" * 18])
def test_client_uuid_wrong_shape_is_invalid(value: bytes) -> None:
    """Option 97 of the wrong length or type."""
    with pytest.raises(Invalid):
        DhcpOptions({c.OPT_CLIENT_UUID: value}).client_uuid()


def test_client_uuid_zero_length_is_tolerated() -> None:
    assert DhcpOptions({c.OPT_CLIENT_UUID: b""}).client_uuid() is None


# --- option 77 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "classes"),
    [
        (b"iPXE", (b"iPXE",)),  # iPXE's raw form, not RFC 3004
        (b"pxestack", (b"pxestack",)),  # our own script's `set user-class`
        (b"\x04iPXE", (b"iPXE",)),  # RFC 3004 §4, one class
        (b"\x03abc\x02de", (b"abc", b"de")),  # RFC 3004, two classes
        (b"\x05abc", (b"\x05abc",)),  # length runs past: not RFC 3004, so raw
        (b"\x00abc", (b"\x00abc",)),  # zero-length class is illegal in RFC 3004
        (b"", ()),
    ],
)
def test_user_class_both_forms(raw: bytes, classes: tuple[bytes, ...]) -> None:
    assert decode_user_class(raw) == classes
    assert DhcpOptions({c.OPT_USER_CLASS: raw}).user_classes() == classes


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=5))
def test_user_class_rfc3004_round_trip(classes: list[bytes]) -> None:
    assert decode_user_class(encode_user_class(classes)) == tuple(classes)


def test_user_class_raw_form() -> None:
    assert encode_user_class([b"iPXE"], rfc3004=False) == b"iPXE"
    with pytest.raises(ApiMisuse):
        encode_user_class([b"a", b"b"], rfc3004=False)
    with pytest.raises(ApiMisuse):
        encode_user_class([b""])


# --- encapsulated spaces: 43, 175, 82 ---------------------------------------------------------


def test_pxe_vendor_options_discovery_control() -> None:
    """PXE 2.1 §2.4: 43.6 = 8 ('use the boot file in this packet') plus END."""
    raw = encode_suboptions({c.PXE_DISCOVERY_CONTROL: b"\x08"})
    assert raw == bytes((6, 1, 8, 255))
    options = DhcpOptions({c.OPT_VENDOR_SPECIFIC: raw})
    assert options.pxe_suboptions() == {c.PXE_DISCOVERY_CONTROL: b"\x08"}


def test_ipxe_encapsulated_options_as_captured() -> None:
    """The BIOS ROM's 175: bus-id, version, then one-byte feature flags; iPXE's 176 = 1 reply."""
    raw = bytes.fromhex("b1 05 01 1a f4 10 00 eb 03 01 00 00 17 01 01 13 01 01 10 01 02")
    options = DhcpOptions({c.OPT_IPXE_ENCAP: raw})
    sub = options.ipxe_suboptions()
    assert sub == {
        c.IPXE_BUS_ID: bytes.fromhex("011af41000"),
        c.IPXE_VERSION: b"\x01\x00\x00",
        0x17: b"\x01",
        0x13: b"\x01",
        0x10: b"\x02",
    }
    assert encode_suboptions({c.IPXE_NO_PXEDHCP: b"\x01"}, end=False) == bytes.fromhex("b00101")


def test_relay_agent_information_has_no_pad_or_end() -> None:
    """RFC 3046 §2.0: sub-option 0 is a real code there, not PAD."""
    raw = bytes((1, 3)) + b"eth" + bytes((2, 2)) + b"\x00\xff"
    options = DhcpOptions({c.OPT_RELAY_AGENT_INFO: raw})
    assert options.relay_agent_suboptions() == {1: b"eth", 2: b"\x00\xff"}
    assert options.raw(c.OPT_RELAY_AGENT_INFO) == raw  # echoed verbatim


@pytest.mark.parametrize("raw", [b"\x06", b"\x06\x05\x01", b"\x09\xff" + b"x" * 10])
def test_malformed_suboptions_are_truncated(raw: bytes) -> None:
    """Option 43 sub-options that run past the option."""
    with pytest.raises(Truncated):
        DhcpOptions({c.OPT_VENDOR_SPECIFIC: raw}).pxe_suboptions()


@given(st.dictionaries(st.integers(1, 254), st.binary(max_size=255), max_size=10),
       st.booleans())
def test_suboptions_round_trip(items: dict[int, bytes], end: bool) -> None:
    encoded = encode_suboptions(items, end=end)
    assert decode_suboptions(encoded, what="test") == items


@given(st.binary(max_size=300))
def test_arbitrary_suboptions_decode_or_raise_malformed(raw: bytes) -> None:
    for allow in (True, False):
        try:
            decoded = decode_suboptions(raw, what="fuzz", allow_pad_end=allow)
        except MalformedPacket:
            continue
        assert sum(len(value) for value in decoded.values()) <= len(raw)


def test_suboption_encoder_refuses_reserved_codes_and_long_values() -> None:
    with pytest.raises(ApiMisuse):
        encode_suboptions({0: b""})
    with pytest.raises(ApiMisuse):
        encode_suboptions({1: b"x" * 256})


# --- option 119 ------------------------------------------------------------------------------

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)


@settings(max_examples=100)
@given(st.lists(domains, min_size=1, max_size=5))
def test_domain_search_round_trip(names: list[str]) -> None:
    assert decode_domain_search(encode_domain_search(names)) == tuple(names)


def test_domain_search_with_compression_pointer() -> None:
    """RFC 3397 §2 example shape: the second name points into the first."""
    first = encode_domain_search(["eng.apple.com"])
    second = bytes((3,)) + b"foo" + bytes((0xC0, 4))  # foo + pointer to "apple.com"
    assert decode_domain_search(first + second) == ("eng.apple.com", "foo.apple.com")


@pytest.mark.parametrize(
    "raw",
    [b"\xc0\x00", b"\x03ab", b"\x03abc", b"\x03abc\xc0", b"\x40abc\x00", b"\x01a\xc0\x00"],
)
def test_domain_search_rejects_loops_and_truncation(raw: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode_domain_search(raw)


@given(st.binary(max_size=200))
def test_arbitrary_domain_search_decode_or_raise_malformed(raw: bytes) -> None:
    try:
        names = decode_domain_search(raw)
    except MalformedPacket:
        return
    assert all(isinstance(name, str) for name in names)


# --- option area parsing ---------------------------------------------------------------------


def test_parse_option_area_concatenates_across_calls() -> None:
    """RFC 3396 §5: the caller feeds options, file, sname in order; values concatenate."""
    items: dict[int, bytes] = {}
    parse_option_area(bytes((224, 1)) + b"a" + b"\xff", items, require_end=True)
    parse_option_area(bytes((224, 1)) + b"b", items, require_end=False)
    assert items == {224: b"ab"}
