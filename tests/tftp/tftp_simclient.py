"""A minimal sans-IO TFTP read client, for driving the server session by hand in tests.

It behaves like the real clients the server meets: it ACKs an OACK with ACK 0, accepts the
next expected block (16-bit numbers, rolling over to 0 like tftp-hpa, curl and atftp),
acknowledges each full window or the final short block, and on anything out of order or on
its own time-out re-acknowledges the last block it has (RFC 7440 §4, RFC 1350 §2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pxestack.wire.tftp import Ack, Data, Error, OptionAck, decode_tftp, encode_tftp


@dataclass
class SimClient:
    """Client-side state of one read transfer."""

    blksize: int = 512
    windowsize: int = 1
    expect_oack: bool = False
    received: bytearray = field(default_factory=bytearray)
    #: Absolute index of the last block accepted (0 = none yet).
    last_block: int = 0
    done: bool = False
    error: Error | None = None
    oack: OptionAck | None = None
    _since_ack: int = 0

    def handle(self, datagram: bytes) -> list[bytes]:
        """Process one datagram from the server; return the datagrams to send back."""
        packet = decode_tftp(bytes(datagram))
        if isinstance(packet, Error):
            self.error = packet
            self.done = True
            return []
        if isinstance(packet, OptionAck):
            if self.last_block:
                return []
            self.oack = packet
            options = dict(packet.options)
            self.blksize = int(options.get("blksize", self.blksize))
            self.windowsize = int(options.get("windowsize", 1))
            return [encode_tftp(Ack(0))]
        if not isinstance(packet, Data):
            raise AssertionError(f"server sent {packet!r}")
        if self.done:
            # The final ACK was lost: answer the resend with the same final ACK.
            return [encode_tftp(Ack(self.last_block & 0xFFFF))]
        expected = (self.last_block + 1) & 0xFFFF
        if packet.block != expected:
            # Duplicate or out of order: re-ACK what we have (starts a new window).
            self._since_ack = 0
            return [encode_tftp(Ack(self.last_block & 0xFFFF))]
        assert len(packet.payload) <= self.blksize
        self.received += packet.payload
        self.last_block += 1
        self._since_ack += 1
        if len(packet.payload) < self.blksize:
            self.done = True
            return [encode_tftp(Ack(packet.block))]
        if self._since_ack >= self.windowsize:
            self._since_ack = 0
            return [encode_tftp(Ack(packet.block))]
        return []

    def on_timeout(self) -> list[bytes]:
        """The client's own retransmission: ACK the last block again."""
        if self.error is not None:
            return []
        if self.last_block == 0 and self.oack is None:
            # Nothing received yet: a real client resends its RRQ (to port 69), not ACK 0,
            # which would accept an OACK it has not seen.
            return []
        self._since_ack = 0
        return [encode_tftp(Ack(self.last_block & 0xFFFF))]
