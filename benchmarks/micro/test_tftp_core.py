"""TFTP codec and sans-IO read session: the per-block cost of a transfer without any I/O.

A whole 1 MiB transfer is driven through :class:`~pxestack.tftp.session.ReadSession` with a
perfectly behaved in-memory client (every block acknowledged at once), lock-step and with
windowsize 8.  What remains is the server's own per-block CPU cost, the part of the lock-step
TFTP benchmark that pxestack controls.
"""

from __future__ import annotations

from pxestack.tftp.session import ReadSession
from pxestack.tftp.source import BytesReader
from pxestack.wire.tftp import ReadRequest, ack_block, decode_tftp, encode_tftp

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
RRQ = encode_tftp(
    ReadRequest("pxelinux.0", "octet", (("blksize", "1468"), ("tsize", "0"), ("timeout", "3")))
)


def _ack(block: int) -> bytes:
    return bytes((0, 4, (block >> 8) & 0xFF, block & 0xFF))


def _transfer(windowsize: int) -> int:
    """Serve PAYLOAD to an ideal client; returns the bytes delivered."""
    options = [("blksize", "1468"), ("tsize", "0")]
    if windowsize > 1:
        options.append(("windowsize", str(windowsize)))
    session = ReadSession(ReadRequest("f", "octet", tuple(options)), BytesReader(PAYLOAD), 0.0)
    now = 0.0
    delivered = 0
    # Bounded: 1 MiB at 1468 octets is 715 blocks; allow generous slack, then stop.
    for _ in range(10_000):
        if session.finished:
            break
        outgoing = session.datagrams_to_send(now)
        last_block = 0
        for datagram in outgoing:
            if datagram[1] == 3:  # DATA
                delivered += len(datagram) - 4
                last_block = (datagram[2] << 8) | datagram[3]
        now += 0.0001
        session.receive(_ack(last_block), now)
    assert session.finished
    return delivered


def test_decode_rrq(benchmark) -> None:
    packet = benchmark(decode_tftp, RRQ)
    assert isinstance(packet, ReadRequest)
    assert packet.option("blksize") == "1468"


def test_ack_block_hot_path(benchmark) -> None:
    assert benchmark(ack_block, _ack(4242)) == 4242


def test_session_1mib_lockstep(benchmark) -> None:
    assert benchmark(_transfer, 1) == len(PAYLOAD)


def test_session_1mib_windowsize_8(benchmark) -> None:
    assert benchmark(_transfer, 8) == len(PAYLOAD)
