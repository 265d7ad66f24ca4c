"""Two pxestack DHCP servers sharing one lease table, in memory: the helpers of
tests/dhcp/test_shared_leases.py (an in-memory table) and tests/dhcp/test_pg_leases.py
(PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.leases import AddressRange, Decline, Lease, LeaseState, Subnet
from pxestack.dhcp.policy import StaticBootPolicy
from pxestack.dhcp.protocol import DhcpServerProtocol
from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo, ServerSettings, SubnetSettings
from pxestack.dhcp.sharedleases import Answer, Claim, ClaimKind, SharedLeaseStore
from pxestack.service.pgleases import LeaseDatabaseDown, LeaseGroupCommit
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

NET = IPv4Network("198.18.0.0/24")
FIRST = IPv4Address("198.18.0.100")
LAST = IPv4Address("198.18.0.109")
SERVER_A = IPv4Address("198.18.0.1")
SERVER_B = IPv4Address("198.18.0.2")
START = 1_700_000_000.0


class MemoryLeaseTable:
    """The rules of ``pxestack_dhcp_claims`` (migration 0003) over a dictionary."""

    def __init__(self) -> None:
        self.rows: dict[IPv4Address, Lease | Decline] = {}
        self.calls = 0
        self.down = False

    def _answer(self, index: int, address: IPv4Address) -> Answer:
        return (index, self.rows[address])

    def _free_or_own(self, row: Lease | Decline, client: bytes, now: float) -> bool:
        if isinstance(row, Decline):
            return row.until <= now
        return row.client == client or row.state is LeaseState.FREE or row.expires <= now

    def apply(self, claims: list[Claim], now: float) -> list[Answer]:
        if self.down:
            raise LeaseDatabaseDown("connection refused")
        self.calls += 1
        answers: list[Answer] = []
        for index, claim in enumerate(claims):
            kind, address, client = claim.kind, claim.address, claim.client
            if kind is ClaimKind.FIND:
                mine = [r for r in self.rows.values() if isinstance(r, Lease)
                        and r.client == client and r.state is LeaseState.BOUND
                        and r.expires > now]
                if mine:
                    answers.append((index, max(mine, key=lambda r: r.expires)))
                continue
            assert address is not None
            if kind is ClaimKind.OFFER:
                elsewhere = [r for r in self.rows.values() if isinstance(r, Lease)
                             and r.client == client and r.address != address
                             and r.state is LeaseState.BOUND and r.expires > now
                             and (claim.network is None
                                  or r.address in IPv4Network(claim.network))]
                if elsewhere:
                    answers.append((index, elsewhere[0]))
                    continue
            row = self.rows.get(address)
            if kind in (ClaimKind.OFFER, ClaimKind.BIND):
                if row is not None and not self._free_or_own(row, client, now):
                    answers.append(self._answer(index, address))
                    continue
                state = LeaseState.OFFERED if kind is ClaimKind.OFFER else LeaseState.BOUND
                expires = claim.expires
                if (kind is ClaimKind.OFFER and isinstance(row, Lease)
                        and row.client == client and row.state is LeaseState.BOUND
                        and row.expires > now):
                    state, expires = LeaseState.BOUND, row.expires
                self.rows[address] = Lease(address, client, claim.mac, state, expires,
                                           claim.client_id, claim.hostname)
                if kind is ClaimKind.BIND:
                    for other, held in list(self.rows.items()):
                        if (other != address and isinstance(held, Lease)
                                and held.client == client and held.expires > now
                                and held.state is not LeaseState.FREE):
                            self.rows[other] = replace(held, state=LeaseState.FREE,
                                                       expires=now)
            elif kind in (ClaimKind.FREE, ClaimKind.WITHDRAW):
                ends = ((LeaseState.OFFERED,) if kind is ClaimKind.WITHDRAW
                        else (LeaseState.OFFERED, LeaseState.BOUND))
                if (isinstance(row, Lease) and row.client == client
                        and row.state in ends):
                    self.rows[address] = replace(row, state=LeaseState.FREE,
                                                 expires=claim.expires)
            elif kind is ClaimKind.DECLINE and (
                row is None or self._free_or_own(row, client, now)
            ):
                self.rows[address] = Decline(address, claim.expires)
        return answers

    def probe(self) -> None:
        if self.down:
            raise LeaseDatabaseDown("connection refused")

    def bound(self, now: float) -> dict[IPv4Address, bytes]:
        return {a: r.client for a, r in self.rows.items() if isinstance(r, Lease)
                and r.state is LeaseState.BOUND and r.expires > now}


class Transport:
    def __init__(self) -> None:
        self.written: list[DhcpMessage] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append(decode_dhcp(data))

    def take(self) -> list[DhcpMessage]:
        out, self.written = self.written, []
        return out


class Deferring:
    """Runs the table's work later, when the test says so (a thread finishing)."""

    def __init__(self) -> None:
        self.queue: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        done: defer.Deferred[Any] = defer.Deferred()
        self.queue.append((done, function, args))
        return done

    def finish(self) -> None:
        while self.queue:
            done, function, args = self.queue.pop(0)
            try:
                result = function(*args)
            except Exception as exc:
                done.errback(exc)
            else:
                done.callback(result)


class Server:
    """One pxestack DHCP server: core, shared store, group commit, protocol."""

    def __init__(self, address: IPv4Address, table: Any, clock: Clock,
                 run: Deferring, *, authoritative: bool = False, spread: bool = False) -> None:
        subnet = SubnetSettings(Subnet(NET, (AddressRange(FIRST, LAST),)))
        # Without *spread* both servers hand out addresses in the same order, so the tests
        # can make their offers collide; with it, as the DHCP service runs them.
        self.store = SharedLeaseStore([subnet.subnet], spread=spread)
        self.core = DhcpServerCore(
            ServerSettings((subnet,), offer_hold=30.0, authoritative=authoritative),
            self.store, StaticBootPolicy(),
            BootDefaults(server_address=IPv4Address(0)),
        )
        self.commit = LeaseGroupCommit(self.store, table, clock, max_inflight=1, run=run)
        self.protocol = DhcpServerProtocol(
            self.core, InterfaceInfo("eth0", address, NET), claims=self.commit,
            reactor=clock, client_port=68,
        )
        self.transport = Transport()
        self.protocol.transport = self.transport  # type: ignore[assignment]
        self.address = address
        self.run = run

    def bind(self, mac: int) -> IPv4Address:
        """DISCOVER, OFFER, REQUEST and ACK of client *mac* with this server alone; the
        address it was granted."""
        self.protocol.receive_batch([message(c.DHCPDISCOVER, mac)])
        self.run.finish()
        offer, = self.transport.take()
        self.protocol.receive_batch([message(c.DHCPREQUEST, mac, requested=offer.yiaddr,
                                             server=self.address)])
        self.run.finish()
        ack, = self.transport.take()
        assert kind_of(ack) == c.DHCPACK
        return offer.yiaddr


def message(kind: int, mac: int, *, requested: IPv4Address | None = None,
            server: IPv4Address | None = None, ciaddr: IPv4Address | None = None,
            xid: int = 1) -> tuple[bytes, tuple[str, int]]:
    options: dict[int, bytes] = {c.OPT_MESSAGE_TYPE: bytes((kind,))}
    if requested is not None:
        options[c.OPT_REQUESTED_IP] = requested.packed
    if server is not None:
        options[c.OPT_SERVER_ID] = server.packed
    packet = DhcpMessage(op=c.BOOTREQUEST, xid=xid, chaddr=mac.to_bytes(6, "big"),
                         ciaddr=ciaddr or IPv4Address(0), options=DhcpOptions(options))
    return encode_dhcp(packet), ("0.0.0.0", 68)


def kind_of(reply: DhcpMessage) -> int:
    return reply.options.items_view()[c.OPT_MESSAGE_TYPE][0]
