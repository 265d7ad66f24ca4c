"""Packet captures (pcap and pcapng) <-> IPv4 UDP datagrams and TCP segments.

:func:`read_capture` turns the bytes of a capture file into :class:`Segment` values, the
only thing ``pxestack explain`` needs: who sent which UDP or TCP payload to whom, when.
dpkt reads the file format and the Ethernet, VLAN, Linux "cooked" (SLL, SLL2) and raw-IP
link layers.  A capture is hostile input: a frame dpkt cannot parse, a truncated IPv4 or
UDP header, a fragment or a file cut short becomes a :class:`CaptureProblem`, never an
exception (only a file that is neither pcap nor pcapng raises
:class:`~pxestack.errors.MalformedPacket`).

:func:`write_pcap` builds a small Ethernet pcap from :class:`Segment` values (the test
captures under ``tests/golden/explain/`` are made with it).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Final

import dpkt

from pxestack.errors import MalformedPacket

UDP: Final = "udp"
TCP: Final = "tcp"

#: TCP flag bits (RFC 9293 §3.1).
TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_PUSH: Final = 0x08
TCP_ACK: Final = 0x10

_PCAPNG_MAGIC: Final = b"\x0a\x0d\x0d\x0a"
_PCAP_MAGICS: Final = frozenset({
    b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4",  # microseconds, either byte order
    b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",  # nanoseconds
})
# Link types (tcpdump.org/linktypes.html).
_LINK_ETHERNET: Final = 1
_LINK_RAW: Final = (101, 228, 12, 14)
_LINK_SLL: Final = 113
_LINK_SLL2: Final = 276

#: Errors dpkt (and struct, underneath it) raise on malformed frames.
_PARSE_ERRORS: Final = (dpkt.Error, struct.error, ValueError, IndexError, TypeError,
                        KeyError, AttributeError)


@dataclass(frozen=True, slots=True)
class Segment:
    """One UDP datagram or TCP segment of a capture (IPv4 only)."""

    #: 1-based frame number in the capture (as Wireshark counts).
    frame: int
    #: Capture timestamp, seconds.
    time: float
    #: :data:`UDP` or :data:`TCP`.
    protocol: str
    source: IPv4Address
    source_port: int
    destination: IPv4Address
    destination_port: int
    payload: bytes
    #: Ethernet source address (``aa:bb:...``), None when the link layer has none.
    source_mac: str | None = None
    destination_mac: str | None = None
    #: TCP only: the flag bits and the sequence number.
    tcp_flags: int = 0
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class CaptureProblem:
    """A frame (or the file's tail) that could not be read."""

    #: 1-based frame number; 0 for the file itself.
    frame: int
    reason: str


@dataclass(frozen=True, slots=True)
class Capture:
    """What :func:`read_capture` found."""

    #: ``pcap`` or ``pcapng``.
    format: str
    #: Frames read (including those that were not IPv4 UDP/TCP).
    frames: int
    segments: tuple[Segment, ...]
    problems: tuple[CaptureProblem, ...]


def read_capture(data: bytes) -> Capture:
    """Every IPv4 UDP datagram and TCP segment of a pcap or pcapng file's bytes.

    Raises :class:`MalformedPacket` only when *data* is not a capture at all."""
    head = data[:4]
    handle = io.BytesIO(data)
    reader: Any
    try:
        if head == _PCAPNG_MAGIC:
            kind, reader = "pcapng", dpkt.pcapng.Reader(handle)
        elif head in _PCAP_MAGICS:
            kind, reader = "pcap", dpkt.pcap.Reader(handle)
        else:
            raise MalformedPacket("not a pcap or pcapng capture (unknown magic number)")
    except _PARSE_ERRORS as exc:
        raise MalformedPacket(f"unreadable capture header: {exc}") from None
    link = int(reader.datalink())
    segments: list[Segment] = []
    problems: list[CaptureProblem] = []
    frames = 0
    packets = _packets(reader)
    while True:
        try:
            item = next(packets)
        except StopIteration:
            break
        except _PARSE_ERRORS as exc:
            problems.append(CaptureProblem(0, f"capture cut short after frame {frames}: "
                                              f"{type(exc).__name__} {exc}".rstrip()))
            break
        frames += 1
        timestamp, frame = item
        try:
            segment = _segment(frames, float(timestamp), link, frame)
        except _PARSE_ERRORS as exc:
            problems.append(CaptureProblem(frames, f"unparseable frame ({type(exc).__name__})"))
            continue
        except MalformedPacket as exc:
            problems.append(CaptureProblem(frames, str(exc)))
            continue
        if segment is not None:
            segments.append(segment)
    left = len(data) - handle.tell()
    if left > 0 and not any(problem.frame == 0 for problem in problems):
        problems.append(CaptureProblem(0, f"capture cut short after frame {frames}: "
                                          f"{left} trailing bytes"))
    return Capture(kind, frames, tuple(segments), tuple(problems))


def _packets(reader: Any) -> Iterator[tuple[float, bytes]]:
    yield from reader


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def _segment(number: int, timestamp: float, link: int, frame: bytes) -> Segment | None:
    """The IPv4 UDP/TCP content of one frame; None for anything else (ARP, IPv6, ...)."""
    source_mac = destination_mac = None
    if link == _LINK_ETHERNET:
        ethernet = dpkt.ethernet.Ethernet(frame)
        source_mac, destination_mac = _mac(ethernet.src), _mac(ethernet.dst)
        ip = ethernet.data
    elif link == _LINK_SLL:
        cooked = dpkt.sll.SLL(frame)
        if cooked.hlen == 6:
            source_mac = _mac(cooked.hdr[:6])
        ip = cooked.data
    elif link == _LINK_SLL2:
        cooked2 = dpkt.sll2.SLL2(frame)
        if cooked2.hlen == 6:
            source_mac = _mac(cooked2.hdr[:6])
        ip = cooked2.data
    elif link in _LINK_RAW:
        if not frame or frame[0] >> 4 != 4:
            return None
        ip = dpkt.ip.IP(frame)
    else:
        raise MalformedPacket(f"link type {link} is not supported")
    if not isinstance(ip, dpkt.ip.IP):
        return None
    if ip.offset or ip.mf:
        raise MalformedPacket("IPv4 fragment (reassembly is not supported)")
    transport = ip.data
    source, destination = IPv4Address(ip.src), IPv4Address(ip.dst)
    if isinstance(transport, dpkt.udp.UDP):
        payload = bytes(transport.data)
        if transport.ulen < 8 or len(payload) < transport.ulen - 8:
            raise MalformedPacket("truncated UDP datagram")
        return Segment(number, timestamp, UDP, source, transport.sport, destination,
                       transport.dport, payload[: transport.ulen - 8], source_mac,
                       destination_mac)
    if isinstance(transport, dpkt.tcp.TCP):
        return Segment(number, timestamp, TCP, source, transport.sport, destination,
                       transport.dport, bytes(transport.data), source_mac, destination_mac,
                       tcp_flags=int(transport.flags), sequence=int(transport.seq))
    if ip.p in (dpkt.ip.IP_PROTO_UDP, dpkt.ip.IP_PROTO_TCP):
        raise MalformedPacket("truncated UDP or TCP header")
    return None


# --- writing (test captures) -------------------------------------------------------------------

_BROADCAST_MAC: Final = b"\xff" * 6


def _frame(segment: Segment) -> bytes:
    """An Ethernet/IPv4 frame carrying *segment*, checksums filled in by dpkt."""
    transport: dpkt.Packet
    if segment.protocol == UDP:
        transport = dpkt.udp.UDP(sport=segment.source_port, dport=segment.destination_port,
                                 data=segment.payload)
        transport.ulen = 8 + len(segment.payload)
        proto = dpkt.ip.IP_PROTO_UDP
    else:
        transport = dpkt.tcp.TCP(sport=segment.source_port, dport=segment.destination_port,
                                 seq=segment.sequence, flags=segment.tcp_flags or TCP_ACK,
                                 data=segment.payload)
        proto = dpkt.ip.IP_PROTO_TCP
    ip = dpkt.ip.IP(src=segment.source.packed, dst=segment.destination.packed, p=proto,
                    ttl=64, data=transport)
    ip.len = 20 + len(bytes(transport))
    source = bytes.fromhex((segment.source_mac or "02:00:00:00:00:01").replace(":", ""))
    destination = (bytes.fromhex(segment.destination_mac.replace(":", ""))
                   if segment.destination_mac else _BROADCAST_MAC)
    ethernet = dpkt.ethernet.Ethernet(src=source, dst=destination,
                                      type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    return bytes(ethernet)


def write_pcap(segments: Iterable[Segment]) -> bytes:
    """An Ethernet pcap file holding *segments* in order (each at its own ``time``)."""
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, linktype=dpkt.pcap.DLT_EN10MB)
    for segment in segments:
        writer.writepkt(_frame(segment), ts=segment.time)
    return out.getvalue()


__all__ = [
    "TCP",
    "TCP_ACK",
    "TCP_FIN",
    "TCP_PUSH",
    "TCP_RST",
    "TCP_SYN",
    "UDP",
    "Capture",
    "CaptureProblem",
    "Segment",
    "read_capture",
    "write_pcap",
]
