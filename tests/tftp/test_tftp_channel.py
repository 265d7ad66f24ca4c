"""The frame codec between TFTP worker processes and the main process."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxestack.errors import MalformedPacket
from pxestack.tftp.channel import (
    MAX_FRAME,
    Frame,
    FrameDecoder,
    FrameKind,
    decode_body,
    encode_frame,
)


def test_round_trip_with_header_and_payload() -> None:
    frame = Frame(FrameKind.DATA, 7, {"handle": 3}, b"\x00\x01payload")
    [decoded] = FrameDecoder().feed(encode_frame(frame))
    assert decoded == frame


def test_frames_split_and_joined_anywhere() -> None:
    frames = [Frame(FrameKind.OPEN, 1, {"path": "a/b.cfg", "client": ["10.0.0.1", 2000],
                                        "server": None}),
              Frame(FrameKind.STATS, 0, {"counters": {"requests": 5}, "transfers": []}),
              Frame(FrameKind.DATA, 2, {}, bytes(range(256)) * 10)]
    stream = b"".join(encode_frame(frame) for frame in frames)
    decoder = FrameDecoder()
    seen: list[Frame] = []
    for offset in range(0, len(stream), 5):
        seen.extend(decoder.feed(stream[offset:offset + 5]))
    assert seen == frames
    assert decoder.pending == 0


@given(kind=st.sampled_from(list(FrameKind)), request=st.integers(0, 0xFFFFFFFF),
       header=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8),
                              max_size=4),
       payload=st.binary(max_size=64))
def test_any_frame_round_trips(kind: FrameKind, request: int, header: dict[str, object],
                               payload: bytes) -> None:
    frame = Frame(kind, request, header, payload)
    assert FrameDecoder().feed(encode_frame(frame)) == [frame]


@pytest.mark.parametrize("body", [
    b"",                                          # truncated fixed part
    struct.pack("!BIH", 99, 0, 0),                # unknown kind
    struct.pack("!BIH", 1, 0, 10) + b"{}",        # header runs past the frame
    struct.pack("!BIH", 1, 0, 2) + b"[]",         # not an object
    struct.pack("!BIH", 1, 0, 3) + b"\xff{}",     # not UTF-8
])
def test_garbled_frames_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode_body(body)


def test_oversized_length_prefix_is_refused_before_buffering() -> None:
    with pytest.raises(MalformedPacket):
        FrameDecoder().feed(struct.pack("!I", MAX_FRAME + 1))


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(ValueError):
        encode_frame(Frame(FrameKind.LOG, 0, {"text": "x" * 70000}))
