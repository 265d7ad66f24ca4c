"""Fuzz target: the ICMPv6 router solicitation parser and the responder that uses it.

For one input: :func:`~pxestack.wire.icmpv6.decode_router_solicitation` (with no source, the
unspecified source and a link-local one), :meth:`SolicitationResponder.solicitation_received`
(which catches only :class:`~pxestack.errors.MalformedPacket`) on a fake socket and clock
with its answers sent, :func:`~pxestack.wire.icmpv6.decode_router_advertisement` on the
same bytes, and the round trips ``decode(encode(m)) == m`` of both message types.
"""

from __future__ import annotations

import random
from ipaddress import IPv6Address

from twisted.internet.task import Clock

from pxestack.errors import MalformedPacket
from pxestack.ra import SolicitationResponder
from pxestack.wire.icmpv6 import (
    NDP_HOP_LIMIT,
    UNSPECIFIED,
    RouterAdvertisement,
    decode_router_advertisement,
    decode_router_solicitation,
    encode_router_advertisement,
    encode_router_solicitation,
)

LINK_LOCAL = IPv6Address("fe80::5054:ff:fee2:e001")


class _FakeSocket:
    """The raw socket of a responder: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int, int, int]]] = []

    def fileno(self) -> int:
        return -1

    def recvmsg(self, bufsize: int, ancbufsize: int = 0,
                flags: int = 0) -> tuple[bytes, list[tuple[int, int, bytes]], int, object]:
        raise BlockingIOError

    def sendto(self, data: bytes, address: tuple[str, int, int, int]) -> int:
        self.sent.append((data, address))
        return len(data)

    def close(self) -> None:
        pass


def _respond(data: bytes) -> None:
    """One solicitation reaching a unicast-answering responder, from :: and a host."""
    for unicast, source in ((True, f"{LINK_LOCAL}%fuzz0"), (False, "::")):
        sock = _FakeSocket()
        clock = Clock()
        responder = SolicitationResponder(
            "fuzz0", sock, 2, clock, advertisement=RouterAdvertisement(), unicast=unicast,
            max_delay=0.5, random=random.Random(0), answer=lambda _source, _mac: True,
        )
        responder.solicitation_received(data, NDP_HOP_LIMIT, source)
        clock.advance(5.0)
        for wire, _address in sock.sent:
            decode_router_advertisement(wire)
        responder.stop()


def _solicitation(data: bytes) -> None:
    for source in (None, UNSPECIFIED, LINK_LOCAL):
        try:
            solicitation = decode_router_solicitation(data, source)
        except MalformedPacket:
            continue
        again = decode_router_solicitation(encode_router_solicitation(solicitation), source)
        assert again == solicitation
        if source == UNSPECIFIED:
            assert solicitation.source_link_layer is None


def _advertisement(data: bytes) -> None:
    try:
        advertisement = decode_router_advertisement(data)
    except MalformedPacket:
        return
    assert decode_router_advertisement(encode_router_advertisement(advertisement)) == (
        advertisement
    )


def one_input(data: bytes) -> None:
    """Feed one ICMPv6 message through the parsers and the responder."""
    _solicitation(data)
    _respond(data)
    _advertisement(data)
