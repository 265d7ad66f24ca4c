"""The DHCP server's fast paths give the same answers as the straightforward code.

Covers what the performance work added (docs/dhcp.md, "DHCP performance"): group commit
of the lease journal per batch of datagrams, the batching UDP port, the encoder's one-pass
options area, the hand-formatted journal record, the memoised client classification and
the frozen values built without their ``__init__``.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from dhcp_samples import SAMPLES, SERVER
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pxestack.dhcp.client import ClientInfo, model_facts
from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.fastpath import FastPath, encoded_size
from pxestack.dhcp.journal import LeaseJournal, bind_record, encode_record, load_journal
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Lease, LeaseState, Subnet
from pxestack.dhcp.policy import StaticBootPolicy
from pxestack.dhcp.protocol import BatchingUdpPort, DeadlineTimer, DhcpServerProtocol
from pxestack.dhcp.server import (
    DhcpServerCore,
    InterfaceInfo,
    ServerSettings,
    SubnetSettings,
)
from pxestack.wire import constants as c
from pxestack.wire import dhcp as wire_dhcp
from pxestack.wire.dhcp import DhcpMessage, build_reply, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions, ipv4_address

NET = IPv4Network("198.18.0.0/24")
IFACE = InterfaceInfo("veth0", SERVER, NET)
RELAY = IPv4Address("198.18.0.254")


# --- group commit ----------------------------------------------------------------------


class RecordingJournal:
    """A GroupCommit that logs begin/commit into a shared event list."""

    def __init__(self, events: list[str], *, fail: bool = False) -> None:
        self.events = events
        self.fail = fail
        self._pending = False
        self.store: InMemoryLeaseStore | None = None

    @property
    def pending(self) -> bool:
        return self._pending

    def begin_batch(self) -> None:
        self.events.append("begin")

    def commit(self) -> None:
        self.events.append("commit")
        self._pending = False
        if self.fail:
            raise OSError(28, "No space left on device")

    # LeaseListener: a binding makes the batch pending, like LeaseJournal.
    def bound(self, lease: Lease) -> None:
        self._pending = True

    def freed(self, lease: Lease) -> None:
        """Releases need no durability."""

    def declined(self, decline: Any) -> None:
        self._pending = True


class EventTransport:
    """Logs every reply written (its DHCP message type) into the shared event list."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        kind = decode_dhcp(data).message_type
        self.events.append({c.DHCPOFFER: "offer", c.DHCPACK: "ack", c.DHCPNAK: "nak"}[kind])


def relayed(kind: int, mac_last: int, **options: bytes) -> bytes:
    items = {c.OPT_MESSAGE_TYPE: bytes((kind,))}
    items.update({int(code): value for code, value in options.items()})
    message = DhcpMessage(
        op=c.BOOTREQUEST, xid=mac_last, chaddr=bytes((2, 0, 0, 0, 0, mac_last)), hops=1,
        giaddr=RELAY, options=DhcpOptions(items),
    )
    return encode_dhcp(message)


def request_for(offer: bytes, mac_last: int) -> bytes:
    yiaddr = decode_dhcp(offer).yiaddr
    return relayed(c.DHCPREQUEST, mac_last, **{
        str(c.OPT_REQUESTED_IP): yiaddr.packed, str(c.OPT_SERVER_ID): SERVER.packed,
    })


def group_commit_server(events: list[str], *, fail: bool = False
                        ) -> tuple[DhcpServerProtocol, RecordingJournal]:
    subnet = SubnetSettings(Subnet(NET, (AddressRange(IPv4Address("198.18.0.100"),
                                                        IPv4Address("198.18.0.120")),)))
    journal = RecordingJournal(events, fail=fail)
    store = InMemoryLeaseStore([subnet.subnet], listener=journal)
    core = DhcpServerCore(
        ServerSettings((subnet,), relays=frozenset({RELAY})), store, StaticBootPolicy(),
        BootDefaults(server_address=IPv4Address(0)),
    )
    clock = Clock()
    clock.advance(1_000_000)
    protocol = DhcpServerProtocol(core, IFACE, timer=DeadlineTimer(core, clock),
                                  journal=journal, reactor=clock)
    protocol.makeConnection(EventTransport(events))  # type: ignore[arg-type]
    return protocol, journal


class GroupCommitTests(SynchronousTestCase):
    def offers(self, protocol: DhcpServerProtocol, macs: range) -> dict[int, bytes]:
        """OFFERs for *macs*, captured through a second transport."""
        captured: dict[int, bytes] = {}

        class Capture:
            def write(self, data: bytes, addr: tuple[str, int]) -> None:
                captured[decode_dhcp(data).chaddr[-1]] = data

        original = protocol.transport
        protocol.transport = Capture()  # type: ignore[assignment]
        protocol.receive_batch([(relayed(c.DHCPDISCOVER, n), (str(RELAY), 67)) for n in macs])
        protocol.transport = original
        return captured

    def test_acks_wait_for_the_one_commit_of_their_batch(self) -> None:
        events: list[str] = []
        protocol, _ = group_commit_server(events)
        offers = self.offers(protocol, range(1, 4))
        events.clear()
        batch = [
            (relayed(c.DHCPDISCOVER, 9), (str(RELAY), 67)),  # before any binding: sent now
            (request_for(offers[1], 1), (str(RELAY), 67)),
            (request_for(offers[2], 2), (str(RELAY), 67)),
            (relayed(c.DHCPDISCOVER, 8), (str(RELAY), 67)),  # after one: waits, in order
            (request_for(offers[3], 3), (str(RELAY), 67)),
        ]
        protocol.receive_batch(batch)
        assert events == ["begin", "offer", "commit", "ack", "ack", "offer", "ack"]

    def test_a_failed_commit_sends_none_of_the_held_replies(self) -> None:
        events: list[str] = []
        protocol, journal = group_commit_server(events)
        offers = self.offers(protocol, range(1, 3))
        journal.fail = True
        events.clear()
        protocol.receive_batch([(request_for(offers[n], n), (str(RELAY), 67)) for n in (1, 2)])
        assert events == ["begin", "commit"]
        assert protocol.bugs == 1
        self.flushLoggedErrors(OSError)

    def test_a_single_datagram_is_its_own_batch(self) -> None:
        events: list[str] = []
        protocol, _ = group_commit_server(events)
        offers = self.offers(protocol, range(1, 2))
        events.clear()
        protocol.datagramReceived(request_for(offers[1], 1), (str(RELAY), 67))
        assert events == ["begin", "commit", "ack"]


def test_journal_holds_records_until_commit_and_then_writes_them_all(tmp_path: Path) -> None:
    path = tmp_path / "leases.journal"
    journal, _ = LeaseJournal.open(path)
    size = path.stat().st_size
    leases = [
        Lease(IPv4Address(f"198.18.0.{n}"), b"M" + bytes(6), bytes(6), LeaseState.BOUND, 5e9)
        for n in range(1, 4)
    ]
    journal.begin_batch()
    assert not journal.pending
    for one in leases:
        journal.bound(one)
    assert journal.pending
    assert path.stat().st_size == size  # nothing written before the commit
    journal.commit()
    assert not journal.pending
    assert list(load_journal(path).leases.values()) == leases[-1:]  # one client, last wins
    journal.begin_batch()
    journal.bound(dataclasses.replace(leases[0], client=b"Mother", mac=b"other!"))
    journal.close()  # an open batch is written, not lost
    assert len(load_journal(path).leases) == 2


# --- codec and record fast paths ---------------------------------------------------------

option_values = st.dictionaries(
    st.integers(1, 254).filter(lambda code: code not in (c.OPT_OVERLOAD, c.OPT_MESSAGE_TYPE)),
    st.binary(max_size=300),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(option_values, st.sampled_from([548, 576, 1472]))
def test_one_pass_options_area_matches_the_chunk_packer(items: dict[int, bytes],
                                                        max_size: int) -> None:
    message = DhcpMessage(op=c.BOOTREPLY, xid=1, chaddr=bytes(6), options=DhcpOptions(items))
    capacity = max_size - 241
    area = wire_dhcp._simple_area(items)
    packed, left = wire_dhcp._pack(wire_dhcp._option_chunks(items), capacity)
    if area is not None and len(area) <= capacity:
        assert bytes(area) == packed and not left
    try:
        encoded = encode_dhcp(message, max_size=max_size)
    except Exception as exc:  # too big even with overload: the general path says so too
        assert left, exc
        return
    assert dict(decode_dhcp(encoded).options) == items
    assert len(encoded) <= max(max_size, c.BOOTP_MIN_LENGTH)


@settings(max_examples=150, deadline=None)
@given(option_values)
def test_encoded_size_counts_rfc3396_pieces(items: dict[int, bytes]) -> None:
    expected = sum(len(chunk) for chunk in wire_dhcp._option_chunks(items))
    assert encoded_size(items) == expected


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.binary(min_size=1, max_size=20),
    st.binary(max_size=16),
    st.one_of(st.none(), st.binary(max_size=30)),
    st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.floats(allow_nan=False), st.integers(0, 2**40)),
)
def test_bind_record_is_byte_identical_to_the_json_encoder(
    address: int, client: bytes, mac: bytes, client_id: bytes | None, hostname: str | None,
    expires: float,
) -> None:
    lease = Lease(IPv4Address(address), client, mac, LeaseState.BOUND, expires, client_id,
                  hostname)
    reference = encode_record({
        "t": "b", "a": str(lease.address), "k": client.hex(), "m": mac.hex(),
        "i": client_id.hex() if client_id is not None else None, "h": hostname, "e": expires,
    })
    assert bind_record(lease) == reference
    json.loads(reference[10:])  # and it is JSON


def test_ipv4_address_memo_gives_equal_shared_values() -> None:
    first = ipv4_address(0xC6120001)
    assert first == IPv4Address("198.18.0.1")
    assert ipv4_address(0xC6120001) is first
    for n in range(20_000):  # more than the memo holds: it is cleared, never grows past it
        ipv4_address(n)
    assert ipv4_address(0xC6120001) == first


# --- values built without __init__ ------------------------------------------------------


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_decoded_and_reply_messages_equal_normally_built_ones(sample: str) -> None:
    message = decode_dhcp(encode_dhcp(SAMPLES[sample]()))
    assert message == dataclasses.replace(message)
    assert hash(message) == hash(dataclasses.replace(message))
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.xid = 1  # type: ignore[misc]
    reply = build_reply(message, DhcpOptions({c.OPT_MESSAGE_TYPE: b"\x02"}),
                        yiaddr=IPv4Address("198.18.0.9"))
    assert reply == DhcpMessage(
        op=c.BOOTREPLY, xid=message.xid, chaddr=message.chaddr, htype=message.htype,
        hlen=message.hlen, flags=message.flags, giaddr=message.giaddr,
        yiaddr=IPv4Address("198.18.0.9"), options=DhcpOptions({c.OPT_MESSAGE_TYPE: b"\x02"}),
    )


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_classification_is_the_same_with_a_cold_or_warm_memo(sample: str) -> None:
    message = SAMPLES[sample]()
    fast = FastPath()
    items = message.options.items_view()
    plain = ClientInfo.from_message(message)
    cold = ClientInfo.from_message(message, fast.model_facts(items))
    warm = ClientInfo.from_message(message, fast.model_facts(items))
    assert plain == cold == warm == dataclasses.replace(cold)
    assert fast.model_facts(items) == model_facts(items)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cold.mac = "x"  # type: ignore[misc]


def test_classification_memo_is_bounded() -> None:
    fast = FastPath(entries=16)
    for n in range(40):
        items = {c.OPT_MESSAGE_TYPE: b"\x01", c.OPT_VENDOR_CLASS_ID: b"PXEClient:%d" % n}
        assert fast.model_facts(items).vendor_class == f"PXEClient:{n}"
        assert fast.sizes()["models"] <= 16
    fast = FastPath()
    huge = {c.OPT_MESSAGE_TYPE: b"\x01", c.OPT_VENDOR_CLASS_ID: b"P" * 2000}
    assert fast.model_facts(huge) == model_facts(huge)
    assert fast.sizes()["models"] == 0  # large keys are never remembered


# --- the batching port, on loopback --------------------------------------------------------


class CollectingProtocol(DhcpServerProtocol):
    """Records each batch instead of handling it."""

    def __init__(self) -> None:  # no core needed
        self.batches: list[list[tuple[bytes, tuple[str, int]]]] = []
        self.transport = None

    def receive_batch(self, datagrams: Any) -> None:
        self.batches.append(list(datagrams))


def test_batching_port_drains_the_socket_in_bounded_batches() -> None:
    protocol = CollectingProtocol()
    reactor = MemoryReactorClock()
    port = BatchingUdpPort(0, protocol, "127.0.0.1", reactor=reactor, max_batch=4)
    port.startListening()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        target = ("127.0.0.1", port.getHost().port)
        for n in range(10):
            sender.sendto(b"datagram %d" % n, target)
        for _ in range(4):
            port.doRead()
        sizes = [len(batch) for batch in protocol.batches]
        assert sizes == [4, 4, 2]  # the last read stopped at EAGAIN
        received = [data for batch in protocol.batches for data, _ in batch]
        assert received == [b"datagram %d" % n for n in range(10)]
        port.write(b"reply", sender.getsockname())
        sender.settimeout(5)
        assert sender.recvfrom(100)[0] == b"reply"
    finally:
        sender.close()
        port.stopListening()
        reactor.advance(0)  # runs connectionLost, which closes the socket
