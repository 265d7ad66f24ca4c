"""The router-advertisement responder adapter, driven by a fake socket and ``task.Clock``."""

from __future__ import annotations

import random
import socket
import struct
from ipaddress import IPv6Address
from typing import Any

import pytest
from fake_reactor import FdReactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pxestack.ra import (
    MAX_PENDING_UNICAST,
    RouterAdvertisementService,
    hop_limit_of,
    icmp6_filter_passing,
)
from pxestack.wire.icmpv6 import (
    MAX_RA_DELAY_TIME,
    MIN_DELAY_BETWEEN_RAS,
    RouterAdvertisement,
    RouterSolicitation,
    decode_router_advertisement,
    encode_router_solicitation,
)

#: The solicitation QEMU's iPXE ROM sent on the test bridge (see tests/wire/test_icmpv6.py).
IPXE_RS = bytes.fromhex("850018be000000000101525400e2e001")
IPXE_SOURCE = "fe80::5054:ff:fee2:e001"
SCOPE = 7


def hop_limit(value: int) -> list[tuple[int, int, bytes]]:
    """Ancillary data as recvmsg returns it for IPV6_RECVHOPLIMIT."""
    return [(socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("@i", value))]


class FakeSocket:
    """A raw ICMPv6 socket: queued datagrams in, recorded datagrams out."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.inbox: list[Any] = []
        self.sent: list[tuple[bytes, tuple[str, int, int, int]]] = []
        self.closed = False
        self.send_error: OSError | None = None

    def fileno(self) -> int:
        return 42

    def deliver(self, data: bytes, source: str = IPXE_SOURCE, hops: int = 255) -> None:
        self.inbox.append((data, hop_limit(hops), 0, (source, 0, 0, SCOPE)))

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> Any:
        if not self.inbox:
            raise BlockingIOError
        item = self.inbox.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def sendto(self, data: bytes, address: tuple[str, int, int, int]) -> int:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append((data, address))
        return len(data)

    def close(self) -> None:
        self.closed = True


class ResponderTests(SynchronousTestCase):
    """What the service sends, when, and what it refuses."""

    def make(self, **kwargs: Any) -> tuple[RouterAdvertisementService, FdReactor]:
        self.reactor = FdReactor()
        self.sockets: dict[str, FakeSocket] = {}

        def factory(interface: str) -> FakeSocket:
            self.sockets[interface] = FakeSocket(interface)
            return self.sockets[interface]

        service = RouterAdvertisementService(
            kwargs.pop("interfaces", ["br0"]),
            reactor=self.reactor,
            random=random.Random(4),
            socket_factory=factory,
            scope_id_of=lambda name: SCOPE,
            **kwargs,
        )
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        return service, self.reactor

    def read(self) -> None:
        for reader in list(self.reactor.readers):
            reader.doRead()

    def test_a_solicitation_is_answered_by_unicast_within_the_rfc_delay(self) -> None:
        self.make()
        sock = self.sockets["br0"]
        sock.deliver(IPXE_RS)
        self.read()
        self.assertEqual(sock.sent, [])  # RFC 4861 §6.2.6: a random delay first
        self.reactor.advance(MAX_RA_DELAY_TIME)
        [(wire, address)] = sock.sent
        self.assertEqual(address, (IPXE_SOURCE, 0, 0, SCOPE))
        advertisement = decode_router_advertisement(wire)
        self.assertEqual(advertisement, RouterAdvertisement())
        self.assertFalse(advertisement.managed or advertisement.other)

    def test_retransmitted_solicitations_share_one_pending_answer(self) -> None:
        self.make()
        sock = self.sockets["br0"]
        for _ in range(3):
            sock.deliver(IPXE_RS)
        self.read()
        self.reactor.advance(MAX_RA_DELAY_TIME)
        self.assertEqual(len(sock.sent), 1)

    def test_multicast_answers_are_coalesced_and_rate_limited(self) -> None:
        self.make(unicast=False, max_delay=0.0)
        sock = self.sockets["br0"]
        sock.deliver(IPXE_RS)
        sock.deliver(IPXE_RS, source="fe80::2")
        self.read()
        self.reactor.advance(0)
        self.assertEqual([a[0] for _, a in sock.sent], ["ff02::1"])  # one RA for both
        sock.deliver(IPXE_RS)
        self.read()
        self.reactor.advance(MIN_DELAY_BETWEEN_RAS - 0.01)
        self.assertEqual(len(sock.sent), 1)  # §6.2.6: not sooner than 3 s after the last
        self.reactor.advance(0.02)
        self.assertEqual(len(sock.sent), 2)

    def test_solicitation_from_unspecified_is_answered_to_all_nodes(self) -> None:
        self.make()
        sock = self.sockets["br0"]
        sock.deliver(encode_router_solicitation(RouterSolicitation()), source="::")
        self.read()
        self.reactor.advance(MAX_RA_DELAY_TIME)
        self.assertEqual([a[0] for _, a in sock.sent], ["ff02::1"])

    def test_wrong_hop_limit_is_dropped(self) -> None:
        # RFC 4861 §6.1.1: only hop limit 255 proves the RS was not forwarded.
        self.make()
        sock = self.sockets["br0"]
        sock.deliver(IPXE_RS, hops=64)
        self.read()
        self.reactor.advance(10)
        self.assertEqual(sock.sent, [])

    def test_malformed_solicitation_is_logged_and_dropped(self) -> None:
        self.make()
        sock = self.sockets["br0"]
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        sock.deliver(IPXE_RS[:8] + b"\x01\x00" + bytes(6))  # option length 0
        sock.deliver(IPXE_RS)
        self.read()
        self.reactor.advance(MAX_RA_DELAY_TIME)
        self.assertEqual(len(sock.sent), 1)  # the good one after the bad one still answered
        dropped = [e for e in events if "malformed" in e.get("log_format", "")]
        self.assertEqual(len(dropped), 1)
        self.assertEqual(dropped[0]["log_level"], LogLevel.info)

    def test_socket_errors_never_reach_the_reactor(self) -> None:
        self.make()
        sock = self.sockets["br0"]
        sock.inbox.append(OSError(100, "network is down"))
        self.read()
        sock.deliver(IPXE_RS)
        sock.send_error = OSError(101, "unreachable")
        self.read()
        self.reactor.advance(MAX_RA_DELAY_TIME)
        self.assertEqual(sock.sent, [])

    def test_answer_policy_can_refuse(self) -> None:
        asked: list[tuple[IPv6Address, bytes | None]] = []

        def only_known(source: IPv6Address, mac: bytes | None) -> bool:
            asked.append((source, mac))
            return mac == bytes.fromhex("525400e2e0ff")

        self.make(answer=only_known)
        sock = self.sockets["br0"]
        sock.deliver(IPXE_RS)
        self.read()
        self.reactor.advance(10)
        self.assertEqual(sock.sent, [])
        self.assertEqual(asked, [(IPv6Address(IPXE_SOURCE), bytes.fromhex("525400e2e001"))])

    def test_pending_unicast_answers_are_bounded(self) -> None:
        self.make()
        sock = self.sockets["br0"]
        for index in range(MAX_PENDING_UNICAST + 10):
            sock.deliver(IPXE_RS, source=f"fe80::{index + 1:x}")
            self.read()
        self.reactor.advance(MAX_RA_DELAY_TIME)
        self.assertEqual(len(sock.sent), MAX_PENDING_UNICAST)

    def test_stop_cancels_pending_answers_and_closes_sockets(self) -> None:
        service, reactor = self.make(interfaces=["br0", "br1"])
        self.assertEqual(len(reactor.readers), 2)
        self.sockets["br1"].deliver(IPXE_RS)
        self.read()
        service.stopService()
        self.assertEqual(reactor.readers, [])
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertTrue(all(s.closed for s in self.sockets.values()))
        self.assertEqual(self.sockets["br1"].sent, [])

    def test_a_flood_is_read_in_bounded_turns(self) -> None:
        self.make()
        sock = self.sockets["br0"]
        for _ in range(100):
            sock.deliver(IPXE_RS)
        self.reactor.readers[0].doRead()
        self.assertEqual(len(sock.inbox), 100 - 32)


def test_icmp6_filter_passes_only_the_named_types() -> None:
    words = struct.unpack("=8I", icmp6_filter_passing(133))
    blocked = {t for t in range(256) if words[t >> 5] & (1 << (t & 31))}
    assert blocked == set(range(256)) - {133}


@pytest.mark.parametrize(
    ("ancillary", "expected"),
    [
        (hop_limit(255), 255),
        ([], None),
        ([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, bytes(20))], None),
    ],
)
def test_hop_limit_of(ancillary: list[tuple[int, int, bytes]], expected: int | None) -> None:
    assert hop_limit_of(ancillary) == expected


def test_no_interfaces_is_refused() -> None:
    with pytest.raises(ValueError):
        RouterAdvertisementService([])


# -- real sockets in a network namespace ------------------------------------------------------

PROBE = r"""
import select, socket, struct, sys
from ipaddress import IPv6Address
from pxestack.wire.icmpv6 import (RouterSolicitation, decode_router_advertisement,
                                  encode_router_solicitation)
iface, hops = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
mac = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
rs = encode_router_solicitation(RouterSolicitation(source_link_layer=mac))
for attempt in range(3):
    sock.sendto(rs, ("ff02::2", 0, 0, socket.if_nametoindex(iface)))
    while select.select([sock], [], [], 1.5)[0]:
        data, anc, _, (source, *_rest) = sock.recvmsg(1500, socket.CMSG_SPACE(4))
        if data[0] != 134:
            continue
        hop = struct.unpack("@i", anc[0][2][:4])[0] if anc else None
        ra = decode_router_advertisement(data)
        print(f"RA from={source} hop={hop} M={ra.managed} O={ra.other} "
              f"lifetime={ra.router_lifetime} options={len(ra.options)}")
        sys.exit(0)
print("no RA")
sys.exit(1)
"""


@pytest.mark.netns
def test_real_router_solicitation_gets_the_advertisement(tmp_path: Any) -> None:
    """Kernel sockets end to end: filter, all-routers group, hop-limit check, unicast RA."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from conftest import require_root_and_tools

    require_root_and_tools("ip")
    root = Path(__file__).resolve().parent.parent
    ns = f"pxt-ra-{os.getpid()}"

    def ip(*argv: str) -> None:
        subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True)

    def in_ns(*argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    subprocess.run(["ip", "netns", "add", ns], check=True)
    responder = None
    try:
        # No DAD delay, and no router solicitations of the kernel's own: only the probe's.
        for setting in ("accept_dad=0", "router_solicitations=0"):
            for key in ("all", "default"):
                subprocess.run(in_ns("sysctl", "-qw", f"net.ipv6.conf.{key}.{setting}"),
                               check=True)
        ip("link", "add", "ra-srv", "type", "veth", "peer", "name", "ra-cli")
        for name in ("lo", "ra-srv", "ra-cli"):
            ip("link", "set", name, "up")
        log = tmp_path / "responder.log"
        with log.open("w") as out:
            responder = subprocess.Popen(
                in_ns(sys.executable, str(root / "examples" / "router_advertisements.py"),
                      "ra-srv"),
                stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.time() + 15
        while "answering router solicitations" not in log.read_text() and time.time() < deadline:
            time.sleep(0.1)
        forwarded = subprocess.run(in_ns(sys.executable, "-c", PROBE, "ra-cli", "64"),
                                   capture_output=True, text=True, timeout=30)
        answered = subprocess.run(in_ns(sys.executable, "-c", PROBE, "ra-cli", "255"),
                                  capture_output=True, text=True, timeout=30)
    finally:
        if responder is not None:
            responder.terminate()
            responder.wait(10)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    # RFC 4861 §6.1.1: a solicitation that may have been forwarded (hop limit != 255) is
    # dropped; a proper one is answered from the link-local address with hop limit 255.
    assert forwarded.stdout.strip() == "no RA", forwarded.stdout + forwarded.stderr
    line = answered.stdout.strip()
    assert line.startswith("RA from=fe80::"), answered.stdout + answered.stderr
    assert "hop=255 M=False O=False lifetime=0 options=0" in line
    assert "hop limit 64" in log.read_text()
