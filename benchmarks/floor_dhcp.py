"""The "python-floor" peer of the DHCP benchmark: the least Python work per DHCP packet.

This is a measuring stick, NOT a DHCP server.  It follows none of RFC 2131's rules beyond
the packet layout: no lease database (nothing is written anywhere), no lease expiry, no
NAKs, no address conflict checks, no per-packet logging, no options beyond 53 (message
type), 54 (server identifier), 51 (lease time) and 1 (subnet mask).  Its purpose is to show
what pure Python achieves on this machine when a packet costs one blocking ``recvfrom``, a
few slices and comparisons, one dict lookup and one ``sendto``: if even this floor cannot
reach a peer's rate, the gap is the interpreter's and the kernel's, not pxestack's design.

Usage (stdlib only, single process, single thread; SIGTERM exits cleanly)::

    python benchmarks/floor_dhcp.py SERVER_IP POOL_START POOL_END RELAY_IP \\
        [--netmask 255.254.0.0] [--lease-time 604800] [--interface pxs0]

It binds ``0.0.0.0:67`` (a relay such as perfdhcp sends its DISCOVERs to
255.255.255.255:67, which a socket bound to the unicast address would not receive).  A
DISCOVER gets an OFFER of the client's remembered address or the next one of the pool (the
pool wraps around when exhausted); a REQUEST gets an ACK of the remembered address, else the
requested one (option 50), else ``ciaddr``.  Requests relayed through RELAY_IP are answered
to RELAY_IP:67; direct requests (``giaddr`` 0) to 255.255.255.255:68; other relays are
ignored.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from ipaddress import IPv4Address
from types import FrameType
from typing import NoReturn

SERVER_PORT = 67
CLIENT_PORT = 68
#: BOOTP fixed fields (236 octets) plus the magic cookie.
HEADER_LENGTH = 240
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTREQUEST = 1
BOOTREPLY = 2
DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPACK = 5
OPTION_PAD = 0
OPTION_SUBNET_MASK = 1
OPTION_REQUESTED_ADDRESS = 50
OPTION_LEASE_TIME = 51
OPTION_MESSAGE_TYPE = 53
OPTION_SERVER_ID = 54
OPTION_END = 255
#: How many options the message-type scan looks at before giving up.
MAX_OPTIONS_SCANNED = 16
#: The receive buffer pxestack's DHCP server asks for (pxestack/dhcp/protocol.py).
RECEIVE_BUFFER = 1 << 20
NO_ADDRESS = bytes(4)
DEFAULT_NETMASK = IPv4Address("255.255.255.0")
DEFAULT_LEASE_SECONDS = 7 * 24 * 3600


def option_value(datagram: bytes, code: int) -> bytes | None:
    """The value of option *code* in the options area (no overload, at most a few options)."""
    index = HEADER_LENGTH
    end = len(datagram)
    for _ in range(MAX_OPTIONS_SCANNED):
        if index >= end:
            return None
        found = datagram[index]
        if found == OPTION_PAD:
            index += 1
            continue
        if found == OPTION_END or index + 1 >= end:
            return None
        start = index + 2
        index = start + datagram[index + 1]
        if found == code:
            return datagram[start:index] if index <= end else None
    return None


def reply_template(
    message_type: int, server: IPv4Address, netmask: IPv4Address, lease_seconds: int
) -> bytearray:
    """A complete BOOTREPLY with zero xid, flags, yiaddr, giaddr and chaddr, ready to patch."""
    header = bytearray(HEADER_LENGTH)
    header[0:3] = bytes((BOOTREPLY, 1, 6))  # op, htype Ethernet, hlen 6 (patched with chaddr)
    header[236:240] = MAGIC_COOKIE
    options = (
        bytes((OPTION_MESSAGE_TYPE, 1, message_type))
        + bytes((OPTION_SERVER_ID, 4)) + server.packed
        + bytes((OPTION_LEASE_TIME, 4)) + lease_seconds.to_bytes(4, "big")
        + bytes((OPTION_SUBNET_MASK, 4)) + netmask.packed
        + bytes((OPTION_END,))
    )  # fmt: skip
    return header + options


class FloorResponder:
    """The sans-IO part: one request datagram in, the reply datagram (or None) out.

    Keeps only a ``chaddr -> address`` dict and a counter over the pool, in memory.
    """

    def __init__(
        self,
        server: IPv4Address,
        pool_start: IPv4Address,
        pool_end: IPv4Address,
        relay: IPv4Address,
        *,
        netmask: IPv4Address = DEFAULT_NETMASK,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
    ) -> None:
        """Prebuild the OFFER and ACK templates for *server* handing out the pool."""
        if int(pool_end) < int(pool_start):
            raise ValueError(f"empty pool {pool_start} - {pool_end}")
        self.pool_first = int(pool_start)
        self.pool_last = int(pool_end)
        self.next_address = self.pool_first
        self.relay = relay.packed
        self.addresses: dict[bytes, bytes] = {}
        self.offer = reply_template(DHCPOFFER, server, netmask, lease_seconds)
        self.ack = reply_template(DHCPACK, server, netmask, lease_seconds)

    def allocate(self, chaddr: bytes) -> bytes:
        """The next pool address (wrapping around), remembered for *chaddr*."""
        address = self.next_address.to_bytes(4, "big")
        self.next_address = (
            self.pool_first if self.next_address >= self.pool_last else self.next_address + 1
        )
        self.addresses[chaddr] = address
        return address

    def answer(self, datagram: bytes) -> bytearray | None:
        """The OFFER for a DISCOVER, the ACK for a REQUEST, None for anything else."""
        if (
            len(datagram) < HEADER_LENGTH
            or datagram[0] != BOOTREQUEST
            or datagram[236:240] != MAGIC_COOKIE
        ):
            return None
        giaddr = datagram[24:28]
        if giaddr != self.relay and giaddr != NO_ADDRESS:
            return None
        # Nearly every client puts option 53 first: check there before scanning.
        if datagram[240:242] == b"\x35\x01" and len(datagram) > 242:
            message_type = datagram[242]
        else:
            value = option_value(datagram, OPTION_MESSAGE_TYPE)
            if value is None or len(value) != 1:
                return None
            message_type = value[0]
        # The whole 16-octet chaddr field is the key: no hlen handling needed.
        chaddr = datagram[28:44]
        if message_type == DHCPDISCOVER:
            address = self.addresses.get(chaddr) or self.allocate(chaddr)
            reply = self.offer[:]
        elif message_type == DHCPREQUEST:
            found = self.addresses.get(chaddr) or option_value(datagram, OPTION_REQUESTED_ADDRESS)
            if found is None or len(found) != 4:
                found = datagram[12:16]  # ciaddr: a renewing client
            if found == NO_ADDRESS:
                return None
            address = found
            reply = self.ack[:]
        else:
            return None
        reply[2] = datagram[2]  # hlen
        reply[4:8] = datagram[4:8]  # xid
        reply[10:12] = datagram[10:12]  # flags
        reply[16:20] = address  # yiaddr
        reply[24:44] = datagram[24:44]  # giaddr and chaddr
        return reply


def open_socket(interface: str | None) -> socket.socket:
    """A UDP socket on 0.0.0.0:67 that may broadcast, with a 1 MiB receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise OSError("no SO_RCVBUFFORCE")
        sock.setsockopt(socket.SOL_SOCKET, force, RECEIVE_BUFFER)
    except OSError:  # unprivileged: SO_RCVBUF, capped by net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    if interface:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
    sock.bind(("0.0.0.0", SERVER_PORT))
    return sock


def serve(sock: socket.socket, responder: FloorResponder, relay: IPv4Address) -> NoReturn:
    """Answer datagrams forever: blocking recvfrom, answer, sendto."""
    recvfrom = sock.recvfrom
    sendto = sock.sendto
    answer = responder.answer
    to_relay = (str(relay), SERVER_PORT)
    to_broadcast = ("255.255.255.255", CLIENT_PORT)
    while True:
        datagram = recvfrom(2048)[0]
        reply = answer(datagram)
        if reply is not None:
            # answer() only replies to giaddr 0 or the relay.
            sendto(reply, to_broadcast if datagram[24:28] == NO_ADDRESS else to_relay)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Leave the blocking recvfrom through SystemExit (PEP 475 re-raises from handlers)."""
    raise SystemExit(0)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line: server, pool and relay addresses, plus the optional knobs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("server_ip", type=IPv4Address, help="server identifier (option 54)")
    parser.add_argument("pool_start", type=IPv4Address)
    parser.add_argument("pool_end", type=IPv4Address)
    parser.add_argument("relay_ip", type=IPv4Address, help="the only relay (giaddr) answered")
    parser.add_argument("--netmask", type=IPv4Address, default=DEFAULT_NETMASK)
    parser.add_argument("--lease-time", type=int, default=DEFAULT_LEASE_SECONDS, help="seconds")
    parser.add_argument("--interface", help="SO_BINDTODEVICE to this interface")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until SIGTERM or Ctrl-C."""
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    responder = FloorResponder(
        args.server_ip, args.pool_start, args.pool_end, args.relay_ip,
        netmask=args.netmask, lease_seconds=args.lease_time,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sock = open_socket(args.interface)
    try:
        serve(sock, responder, args.relay_ip)
    except (SystemExit, KeyboardInterrupt):
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
