"""The frames a TFTP worker process and the main process exchange (sans-IO codec).

A worker (``pxestack.service.tftp_worker``) and the main process share two Unix stream
sockets.  Over the first the worker asks the main process for the bytes of names a
dynamic :class:`~pxestack.tftp.source.FileSource` serves (``OPEN``, ``READ``, ``CLOSE``;
answered by ``OPENED``, ``DATA`` or ``FAILED``); over the second it pushes its counters,
finished transfers and log events (``STATS``, ``LOG``, ``READY``).  This module only
turns frames into bytes and back; it does no I/O.

One frame on the wire::

    u32 length of what follows | u8 kind | u32 request id | u16 header length
    | header: a JSON object, UTF-8 | payload: raw bytes (DATA only)

Both ends are pxestack's own processes, but a frame is still checked as if it came from
the network: an unknown kind, an oversized frame or a header that is not a JSON object
raises :class:`~pxestack.errors.MalformedPacket`, and the receiver drops the channel.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from pxestack.errors import MalformedPacket

#: The fixed part after the length prefix: kind, request id, header length.
_HEAD = struct.Struct("!BIH")
_LENGTH = struct.Struct("!I")
#: Largest header (JSON) a frame may carry.
MAX_HEADER = 0xFFFF
#: Largest payload of one DATA frame (a READ never asks for more).
MAX_PAYLOAD = 1 << 20
#: Largest frame, length prefix excluded.
MAX_FRAME = _HEAD.size + MAX_HEADER + MAX_PAYLOAD


class FrameKind(IntEnum):
    """What a frame means; the direction is in the comment."""

    #: worker -> main: open *path* for *client* (header ``path``, ``client``, ``server``).
    OPEN = 1
    #: worker -> main: up to ``size`` more octets of the open ``handle``.
    READ = 2
    #: worker -> main: the transfer ended; release ``handle`` (never answered).
    CLOSE = 3
    #: main -> worker: the name opened as ``handle``; ``size`` is its length or null.
    OPENED = 4
    #: main -> worker: the next octets of a handle (empty payload: end of file).
    DATA = 5
    #: main -> worker: ``error`` is ``not-found``, ``refused`` or ``error``; ``reason``.
    FAILED = 6
    #: worker -> main: running ``counters`` and the ``transfers`` finished since last time.
    STATS = 7
    #: worker -> main: one log event (``level``, ``namespace``, ``text``, ``fields``).
    LOG = 8
    #: worker -> main: the worker serves its port (``pid``).
    READY = 9


@dataclass(frozen=True, slots=True)
class Frame:
    """One message of the channel."""

    kind: FrameKind
    #: Pairs an answer with its request (0 for messages that expect none).
    request: int = 0
    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""


def encode_frame(frame: Frame) -> bytes:
    """The wire form of *frame*; raises ``ValueError`` when it is too large."""
    header = json.dumps(frame.header, separators=(",", ":"), allow_nan=False).encode()
    if len(header) > MAX_HEADER:
        raise ValueError(f"channel frame header of {len(header)} octets is too large")
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"channel frame payload of {len(frame.payload)} octets is too large")
    body = _HEAD.pack(int(frame.kind), frame.request & 0xFFFFFFFF, len(header))
    length = len(body) + len(header) + len(frame.payload)
    return b"".join((_LENGTH.pack(length), body, header, frame.payload))


def decode_body(body: bytes) -> Frame:
    """One frame from what follows its length prefix."""
    if len(body) < _HEAD.size:
        raise MalformedPacket(f"channel frame of {len(body)} octets is truncated")
    kind_value, request, header_length = _HEAD.unpack_from(body)
    try:
        kind = FrameKind(kind_value)
    except ValueError:
        raise MalformedPacket(f"unknown channel frame kind {kind_value}") from None
    end = _HEAD.size + header_length
    if end > len(body):
        raise MalformedPacket("channel frame header runs past the frame")
    try:
        header = json.loads(body[_HEAD.size:end].decode()) if header_length else {}
    except (UnicodeDecodeError, ValueError):
        raise MalformedPacket("channel frame header is not JSON") from None
    if not isinstance(header, dict):
        raise MalformedPacket("channel frame header is not a JSON object")
    return Frame(kind, request, header, bytes(body[end:]))


class FrameDecoder:
    """Reassembles frames from a byte stream (feed it whatever ``recv`` returned)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by *data*; raises :class:`MalformedPacket` on garbage
        (the stream cannot be resynchronised after that: drop it)."""
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        offset = 0
        while len(buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length > MAX_FRAME:
                raise MalformedPacket(f"channel frame of {length} octets is too large")
            start = offset + _LENGTH.size
            if len(buffer) - start < length:
                break
            frames.append(decode_body(bytes(buffer[start:start + length])))
            offset = start + length
        del buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        """Octets of an incomplete frame held back."""
        return len(self._buffer)


__all__ = [
    "MAX_FRAME",
    "MAX_HEADER",
    "MAX_PAYLOAD",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "decode_body",
    "encode_frame",
]
