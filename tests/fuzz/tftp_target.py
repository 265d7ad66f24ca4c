"""Fuzz target: the TFTP decoder, option negotiation and the read session.

For one input: :func:`~pxestack.wire.tftp.decode_tftp`; for a request, the file name
normalisation the file sources apply (:func:`~pxestack.paths.normalize_request_path`, whose
documented refusal is :class:`~pxestack.paths.PathRefused`) and
:func:`~pxestack.tftp.negotiate.negotiate` under several server limits (it never raises on
client input, stays within the limits, answers only options the client sent and keeps the
OACK within 512 octets); a :class:`ReadSession` started by a read request; the datagram fed to
a running read session as the client's next packet; and the round trip
``decode_tftp(encode_tftp(p)) == p``.
"""

from __future__ import annotations

import contextlib

from pxestack.errors import MalformedPacket
from pxestack.paths import PathRefused, normalize_request_path
from pxestack.tftp.negotiate import OACK_LIMIT, NegotiationLimits, negotiate
from pxestack.tftp.session import ReadSession
from pxestack.tftp.source import BytesReader
from pxestack.wire.tftp import (
    BLKSIZE_MAX,
    BLKSIZE_MIN,
    Ack,
    OptionAck,
    ReadRequest,
    TftpPacket,
    WriteRequest,
    ack_block,
    decode_tftp,
    encode_tftp,
)

LIMITS = (
    NegotiationLimits(),
    NegotiationLimits(max_blksize=BLKSIZE_MAX, max_windowsize=65535),
    NegotiationLimits(max_blksize=BLKSIZE_MIN, max_windowsize=1, allow_blksize=False,
                      allow_windowsize=False, allow_timeout=False),
)
#: A file spanning a few blocks of the smallest sizes, for the read sessions.
CONTENT = bytes(range(256)) * 12
STARTER = ReadRequest("ipxe.efi", "octet", (("blksize", "512"), ("windowsize", "4")))


def _negotiate(request: ReadRequest | WriteRequest) -> None:
    write = isinstance(request, WriteRequest)
    asked = {name for name, _value in request.options}
    for limits in LIMITS:
        for file_size in (None, 0, len(CONTENT), 1 << 40):
            result = negotiate(request.options, limits=limits, file_size=file_size, write=write)
            assert BLKSIZE_MIN <= result.blksize <= max(limits.max_blksize, 512)
            assert 1 <= result.windowsize <= limits.max_windowsize
            assert result.timeout is None or 1 <= result.timeout <= 255
            names = [name for name, _value in result.oack]
            assert len(names) == len(set(names)) and set(names) <= asked, names
            oack = encode_tftp(OptionAck(result.oack))
            assert len(oack) <= OACK_LIMIT
            assert decode_tftp(oack) == OptionAck(result.oack)


def _read_session(request: ReadRequest) -> None:
    """Serve *request* as the server would after the source opened the file."""
    session = ReadSession(request, BytesReader(CONTENT), 0.0)
    for datagram in session.datagrams_to_send(0.0):
        decode_tftp(bytes(datagram))
    session.on_deadline(10.0)
    session.cancel(20.0)


def _as_next_packet(data: bytes) -> None:
    """The datagram arriving on a running read transfer's TID."""
    session = ReadSession(STARTER, BytesReader(CONTENT), 0.0)
    session.datagrams_to_send(0.0)
    with contextlib.suppress(MalformedPacket):
        session.receive(data, 0.1)
    session.datagrams_to_send(0.2)
    session.cancel(1.0)


def _round_trip(packet: TftpPacket) -> None:
    assert decode_tftp(encode_tftp(packet)) == packet


def one_input(data: bytes) -> None:
    """Feed one datagram through the decoder and its consumers."""
    block = ack_block(data)
    try:
        packet = decode_tftp(data)
    except MalformedPacket:
        assert block is None
        _as_next_packet(data)
        return
    # The per-block fast path agrees with the decoder on what is an ACK.
    assert block == (packet.block if isinstance(packet, Ack) else None)
    if isinstance(packet, ReadRequest | WriteRequest):
        with contextlib.suppress(PathRefused):
            normalize_request_path(packet.filename)
        _negotiate(packet)
        if isinstance(packet, ReadRequest):
            _read_session(packet)
    _as_next_packet(data)
    _round_trip(packet)
