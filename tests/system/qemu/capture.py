"""DHCP traffic captured on the test bridge with tcpdump, read back with dpkt.

:class:`Capture` runs ``tcpdump`` inside the namespace (started and stopped by its own PID)
and :func:`read_dhcp_pcap` turns the file into ``(source port, destination port, message)``
triples, so a test can check what every server actually put on the wire.
"""

from __future__ import annotations

import time
from pathlib import Path

import dpkt

from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp

from .netns import BRIDGE, Segment
from .servers import Process

#: (source port, destination port, decoded message)
Seen = tuple[int, int, DhcpMessage]

MESSAGE_NAMES = {
    c.DHCPDISCOVER: "DISCOVER", c.DHCPOFFER: "OFFER", c.DHCPREQUEST: "REQUEST",
    c.DHCPDECLINE: "DECLINE", c.DHCPACK: "ACK", c.DHCPNAK: "NAK", c.DHCPRELEASE: "RELEASE",
    c.DHCPINFORM: "INFORM",
}


class Capture:
    """tcpdump on the bridge (UDP ports 67, 68 and 4011) into a pcap file."""

    def __init__(self, segment: Segment, path: Path) -> None:
        self.path = path
        self.process = Process(
            "tcpdump",
            segment.command(["tcpdump", "-i", BRIDGE, "-n", "-U", "-s", "0", "-w", str(path),
                             "udp port 67 or udp port 68 or udp port 4011"]),
            path.with_suffix(".log"),
        )
        deadline = time.time() + 10
        while "listening on" not in self.process.log.read_text(errors="replace"):
            self.process.check_alive()
            if time.time() > deadline:
                self.process.stop()
                raise RuntimeError("tcpdump did not start listening within 10 s")
            time.sleep(0.05)

    def stop(self) -> list[Seen]:
        """Stop tcpdump and return every DHCP message it saw."""
        self.process.stop()
        return read_dhcp_pcap(self.path)


def read_dhcp_pcap(path: Path) -> list[Seen]:
    """Every UDP/IPv4 DHCP message of an Ethernet pcap file, in capture order."""
    seen: list[Seen] = []
    with path.open("rb") as handle:
        for _, frame in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            udp = ip.data
            seen.append((udp.sport, udp.dport, decode_dhcp(bytes(udp.data))))
    return seen


def describe(packets: list[Seen]) -> str:
    """One line per message, for assertion messages."""
    lines = []
    for sport, dport, m in packets:
        server_id = m.options.ip(c.OPT_SERVER_ID) if c.OPT_SERVER_ID in m.options else None
        lines.append(
            f"{sport}->{dport} {MESSAGE_NAMES.get(m.message_type or 0, '?')} "
            f"xid={m.xid:08x} yiaddr={m.yiaddr} siaddr={m.siaddr} sid={server_id} "
            f"file={m.file!r}"
        )
    return "\n".join(lines)


__all__ = ["Capture", "Seen", "describe", "read_dhcp_pcap"]
