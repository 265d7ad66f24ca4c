"""TFTP codec: round trips, real-client requests and hostile bytes (names, options)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxestack.errors import ApiMisuse, Invalid, MalformedPacket, Truncated
from pxestack.wire.tftp import (
    BLKSIZE_MAX,
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    TftpPacket,
    WriteRequest,
    ack_block,
    data_header,
    decode_tftp,
    encode_tftp,
)

blocks = st.integers(min_value=0, max_value=65535)
names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789_-"), min_size=1,
                max_size=12)
values = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=20)
option_lists = st.lists(st.tuples(names, values), max_size=6).map(tuple)
filenames = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=60)
modes = st.sampled_from(["octet", "netascii", "mail"])

packets: st.SearchStrategy[TftpPacket] = st.one_of(
    st.builds(ReadRequest, filenames, modes, option_lists),
    st.builds(WriteRequest, filenames, modes, option_lists),
    st.builds(Data, blocks, st.binary(max_size=2000)),
    st.builds(Ack, blocks),
    st.builds(Error, blocks, st.text(st.characters(blacklist_categories=("Cs",),
                                                   blacklist_characters="\x00"), max_size=40)),
    st.builds(OptionAck, option_lists),
)


@given(packets)
def test_round_trip(packet: TftpPacket) -> None:
    assert decode_tftp(encode_tftp(packet)) == packet


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_malformed(raw: bytes) -> None:
    try:
        packet = decode_tftp(raw)
    except MalformedPacket:
        return
    assert isinstance(packet, ReadRequest | WriteRequest | Data | Ack | Error | OptionAck)


@given(st.sampled_from([1, 2, 3, 4, 5, 6]), st.binary(max_size=120))
def test_valid_opcode_with_garbage_body(opcode: int, body: bytes) -> None:
    """A known opcode with any body decodes to that opcode's packet type, or is refused."""
    raw = opcode.to_bytes(2, "big") + body
    try:
        packet = decode_tftp(raw)
    except MalformedPacket:
        return
    kinds = {1: ReadRequest, 2: WriteRequest, 3: Data, 4: Ack, 5: Error, 6: OptionAck}
    assert type(packet) is kinds[opcode]


def test_ipxe_request() -> None:
    """iPXE: RRQ undionly.kpxe octet blksize=1432 tsize=0."""
    raw = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001432\x00tsize\x000\x00"
    assert decode_tftp(raw) == ReadRequest(
        "undionly.kpxe", "octet", (("blksize", "1432"), ("tsize", "0"))
    )


def test_ovmf_request_and_abort() -> None:
    """OVMF: size probe with windowsize=4, then ERROR 'User aborted'."""
    raw = b"\x00\x01ipxe.efi\x00OCTET\x00TSIZE\x000\x00BlkSize\x001468\x00windowsize\x004\x00"
    request = decode_tftp(raw)
    assert isinstance(request, ReadRequest)
    assert request.mode == "octet"
    assert request.option("blksize") == "1468"
    assert request.option("WindowSize") == "4"
    abort = b"\x00\x05\x00\x00User aborted the transfer.\x00"
    assert decode_tftp(abort) == Error(0, "User aborted the transfer.")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # NUL padding after the options (PXE ROMs that pad the request).
        (b"\x00\x01f\x00octet\x00blksize\x00512\x00\x00\x00",
         ReadRequest("f", "octet", (("blksize", "512"),))),
        # A dangling option name without value is dropped.
        (b"\x00\x01f\x00octet\x00tsize\x00", ReadRequest("f", "octet", ())),
        # Unterminated garbage after the mode is ignored.
        (b"\x00\x01f\x00octet\x00junk", ReadRequest("f", "octet", ())),
        # ERROR without its final NUL still reports the abort.
        (b"\x00\x05\x00\x01nope", Error(1, "nope")),
        (b"\x00\x05\x00\x00", Error(0, "")),
        (b"\x00\x03\x00\x01", Data(1, b"")),
        (b"\x00\x06", OptionAck(())),
    ],
)
def test_tolerated_forms(raw: bytes, expected: TftpPacket) -> None:
    assert decode_tftp(raw) == expected


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", Truncated),
        (b"\x00", Truncated),
        (b"\x00\x04\x00", Truncated),
        (b"\x00\x04\x00\x01\x00", Invalid),
        (b"\x00\x03\x00", Truncated),
        (b"\x00\x05\x00", Truncated),
        (b"\x00\x01file-without-nul", Truncated),
        (b"\x00\x01file\x00mode-without-nul", Truncated),
        (b"\x00\x01f\x00\x00", Invalid),
        (b"\x00\x01f\x00oct\xe9t\x00", Invalid),
        (b"\x00\x06blksize\x00", Invalid),
        (b"\x00\x06blksize\x00512", Truncated),
        (b"\x00\x06\x00512\x00", Invalid),
        (b"\x00\x07", Invalid),
        (b"\x00\x00", Invalid),
        (b"\x00\x03\x00\x01" + b"x" * (BLKSIZE_MAX + 1), Invalid),
    ],
)
def test_malformed(raw: bytes, error: type[MalformedPacket]) -> None:
    with pytest.raises(error):
        decode_tftp(raw)


@pytest.mark.parametrize(
    "packet",
    [
        Ack(65536),
        Ack(-1),
        Data(70000, b""),
        Data(1, b"x" * (BLKSIZE_MAX + 1)),
        Error(1, "a\x00b"),
        OptionAck((("", "1"),)),
        OptionAck((("blksize", "\u20ac"),)),
        ReadRequest("a\x00b"),
        ReadRequest("f", ""),
    ],
)
def test_encode_refuses_impossible_values(packet: TftpPacket) -> None:
    with pytest.raises(ApiMisuse):
        encode_tftp(packet)


def test_filename_bytes_round_trip() -> None:
    raw = b"\x00\x01caf\xe9\xff.bin\x00octet\x00"
    request = decode_tftp(raw)
    assert isinstance(request, ReadRequest)
    assert encode_tftp(request) == raw


@given(st.binary(max_size=8))
def test_ack_block_agrees_with_decoder(raw: bytes) -> None:
    try:
        packet = decode_tftp(raw)
    except MalformedPacket:
        packet = None
    expected = packet.block if isinstance(packet, Ack) else None
    assert ack_block(raw) == expected


@given(blocks)
def test_data_header(block: int) -> None:
    assert decode_tftp(data_header(block)) == Data(block, b"")


def test_error_codes_match_rfc() -> None:
    assert [int(code) for code in ErrorCode] == list(range(9))
    assert ErrorCode.UNKNOWN_TID == 5
    assert ErrorCode.OPTION_REFUSED == 8
