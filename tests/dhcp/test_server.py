"""DhcpServerCore (RFC 2131) driven with plain values: no sockets, no clock."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from dhcp_samples import (
    SERVER,
    busybox_udhcpc_discover,
    ovmf_native_pxe_discover,
    seabios_ipxe_rom_discover,
)
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.leases import (
    AddressRange,
    InMemoryLeaseStore,
    LeaseState,
    Reservation,
    Subnet,
)
from pxestack.dhcp.outgoing import DestinationKind, Outgoing
from pxestack.dhcp.policy import BootSpec, StaticBootPolicy
from pxestack.dhcp.server import (
    DhcpServerCore,
    InterfaceInfo,
    LeaseEvent,
    ServerSettings,
    SubnetSettings,
)
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

NET = IPv4Network("198.18.0.0/24")
ZERO = IPv4Address(0)
RANGE = AddressRange(IPv4Address("198.18.0.100"), IPv4Address("198.18.0.149"))
REMOTE = IPv4Network("198.19.7.0/24")
REMOTE_RANGE = AddressRange(IPv4Address("198.19.7.10"), IPv4Address("198.19.7.20"))
RELAY = IPv4Address("198.19.7.1")
IFACE = InterfaceInfo("veth0", SERVER, NET)
SCRIPT = "http://198.18.0.1:8080/boot.ipxe"
LEASE_TIME = 3600


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, n >> 8, n & 0xFF])


def make_core(**switches: object) -> tuple[DhcpServerCore, InMemoryLeaseStore, list[LeaseEvent]]:
    subnets = (
        SubnetSettings(
            Subnet(NET, (RANGE,)),
            lease_time=LEASE_TIME,
            routers=(SERVER,),
            dns=(SERVER,),
            domain="lab.test",
        ),
        SubnetSettings(Subnet(REMOTE, (REMOTE_RANGE,)), lease_time=LEASE_TIME,
                       routers=(RELAY,)),
    )
    reservations = switches.pop("reservations", ())
    policy = switches.pop("policy", None) or StaticBootPolicy()
    store = InMemoryLeaseStore([s.subnet for s in subnets], reservations)  # type: ignore[arg-type]
    events: list[LeaseEvent] = []
    settings = ServerSettings(subnets, relays=frozenset({RELAY}), **switches)  # type: ignore[arg-type]
    core = DhcpServerCore(
        settings,
        store,
        policy,  # type: ignore[arg-type]
        BootDefaults(server_address=IPv4Address(0), ipxe_script_url=SCRIPT),
        on_event=events.append,
    )
    return core, store, events


def message(
    kind: int,
    n: int = 1,
    *,
    xid: int = 0x1000,
    ciaddr: IPv4Address = ZERO,
    giaddr: IPv4Address = ZERO,
    flags: int = 0,
    **options: bytes,
) -> DhcpMessage:
    items = {c.OPT_MESSAGE_TYPE: bytes((kind,))}
    names = {
        "requested": c.OPT_REQUESTED_IP,
        "server_id": c.OPT_SERVER_ID,
        "prl": c.OPT_PARAMETER_REQUEST_LIST,
        "max_size": c.OPT_MAX_MESSAGE_SIZE,
        "relay_info": c.OPT_RELAY_AGENT_INFO,
        "client_id": c.OPT_CLIENT_ID,
        "lease_time": c.OPT_LEASE_TIME,
    }
    for name, value in options.items():
        items[names[name]] = value
    return DhcpMessage(
        op=c.BOOTREQUEST,
        xid=xid + n,
        chaddr=mac(n),
        ciaddr=ciaddr,
        giaddr=giaddr,
        flags=flags,
        hops=1 if giaddr != IPv4Address(0) else 0,
        options=DhcpOptions(items),
    )


def only(replies: list[Outgoing]) -> Outgoing:
    assert len(replies) == 1, replies
    # Every reply must encode within its limit and decode back (a real client reads it).
    wire = encode_dhcp(replies[0].message, max_size=replies[0].max_size)
    assert len(wire) <= max(replies[0].max_size, c.BOOTP_MIN_LENGTH)
    assert decode_dhcp(wire).xid == replies[0].message.xid
    return replies[0]


def kind_of(reply: Outgoing) -> int | None:
    return reply.message.message_type


def dora(core: DhcpServerCore, n: int, now: float = 0.0) -> IPv4Address:
    offer = only(core.handle(message(c.DHCPDISCOVER, n), IFACE, now))
    address = offer.message.yiaddr
    ack = only(core.handle(
        message(c.DHCPREQUEST, n, requested=address.packed, server_id=SERVER.packed),
        IFACE, now,
    ))
    assert kind_of(ack) == c.DHCPACK and ack.message.yiaddr == address
    return address


def test_discover_gets_an_offer_with_the_essential_options() -> None:
    core, store, events = make_core()
    reply = only(core.handle(message(c.DHCPDISCOVER), IFACE, 0.0))
    m = reply.message
    assert kind_of(reply) == c.DHCPOFFER and m.op == c.BOOTREPLY
    assert m.yiaddr in RANGE
    assert m.options.ip(c.OPT_SERVER_ID) == SERVER
    assert m.options.u32(c.OPT_LEASE_TIME) == LEASE_TIME
    assert m.options.u32(c.OPT_RENEWAL_TIME) == LEASE_TIME // 2
    assert m.options.u32(c.OPT_REBINDING_TIME) == LEASE_TIME * 7 // 8
    assert m.options.ip(c.OPT_SUBNET_MASK) == NET.netmask
    # No option 55: every configured option is sent.
    assert m.options.ips(c.OPT_ROUTER) == (SERVER,)
    assert m.options.text(c.OPT_DOMAIN_NAME) == "lab.test"
    # RFC 2131 §4.1: flag clear, no ciaddr -> unicast to yiaddr at chaddr.
    assert reply.destination.kind is DestinationKind.LINK_UNICAST
    assert reply.destination.chaddr == mac(1) and reply.destination.address == m.yiaddr
    assert store.lookup(b"M" + mac(1), 0.0).state is LeaseState.OFFERED  # type: ignore[union-attr]
    assert [e.kind for e in events] == ["offered"]


def test_broadcast_flag_makes_the_reply_broadcast() -> None:
    core, _, _ = make_core()
    reply = only(core.handle(message(c.DHCPDISCOVER, flags=c.FLAG_BROADCAST), IFACE, 0.0))
    assert reply.destination.kind is DestinationKind.BROADCAST
    assert reply.destination.address == IPv4Address("255.255.255.255")
    assert reply.destination.port == c.DHCP_CLIENT_PORT


def test_parameter_request_list_limits_optional_options() -> None:
    core, _, _ = make_core()
    reply = only(core.handle(message(c.DHCPDISCOVER, prl=bytes([1, 3])), IFACE, 0.0))
    options = reply.message.options
    assert c.OPT_ROUTER in options
    assert c.OPT_DNS_SERVER not in options and c.OPT_DOMAIN_NAME not in options
    assert c.OPT_LEASE_TIME in options  # essential, never filtered


def test_retransmitted_discover_gets_the_same_answer() -> None:
    """iPXE retransmits its DISCOVER after 1 s with the same xid."""
    core, _, _ = make_core()
    first = only(core.handle(message(c.DHCPDISCOVER), IFACE, 0.0))
    second = only(core.handle(message(c.DHCPDISCOVER), IFACE, 1.0))
    assert first.message == second.message


def test_full_dora_then_renew_rebind_and_release() -> None:
    core, store, events = make_core()
    address = dora(core, 1)
    # RENEWING: unicast, ciaddr set, no 50/54; the reply goes to ciaddr:68 with ciaddr copied.
    renew = only(core.handle(message(c.DHCPREQUEST, ciaddr=address), IFACE, 1000.0))
    assert kind_of(renew) == c.DHCPACK and renew.message.ciaddr == address
    assert renew.destination.kind is DestinationKind.UNICAST
    assert (renew.destination.address, renew.destination.port) == (address, 68)
    lease = store.lookup(b"M" + mac(1), 1000.0)
    assert lease is not None and lease.expires == 1000.0 + LEASE_TIME
    # REBINDING: the same fields, broadcast by the client.
    rebind = only(core.handle(
        message(c.DHCPREQUEST, ciaddr=address, flags=c.FLAG_BROADCAST), IFACE, 3200.0
    ))
    assert kind_of(rebind) == c.DHCPACK
    assert core.handle(message(c.DHCPRELEASE, ciaddr=address), IFACE, 3300.0) == []
    released = store.lookup(b"M" + mac(1), 3300.0)
    assert released is not None and released.state is LeaseState.FREE
    assert [e.kind for e in events][-1] == "released"


def test_client_asking_for_a_shorter_lease_gets_it() -> None:
    core, _, _ = make_core()
    offer = only(core.handle(message(c.DHCPDISCOVER), IFACE, 0.0))
    ack = only(core.handle(message(
        c.DHCPREQUEST, requested=offer.message.yiaddr.packed, server_id=SERVER.packed,
        lease_time=(600).to_bytes(4, "big"),
    ), IFACE, 0.0))
    assert ack.message.options.u32(c.OPT_LEASE_TIME) == 600


def test_selecting_another_server_withdraws_our_offer() -> None:
    core, store, _ = make_core()
    offer = only(core.handle(message(c.DHCPDISCOVER), IFACE, 0.0))
    other = IPv4Address("198.18.0.2")
    assert core.handle(message(
        c.DHCPREQUEST, requested=offer.message.yiaddr.packed, server_id=other.packed
    ), IFACE, 1.0) == []
    assert store.outstanding_offers == 0
    assert core.counters["ignored_other_server"] == 1


def test_selecting_an_address_someone_else_holds_is_nakked() -> None:
    core, _, _ = make_core()
    taken = dora(core, 1)
    nak = only(core.handle(
        message(c.DHCPREQUEST, 2, requested=taken.packed, server_id=SERVER.packed), IFACE, 1.0
    ))
    assert kind_of(nak) == c.DHCPNAK
    assert nak.message.yiaddr == IPv4Address(0)
    # RFC 2131 §4.1: with giaddr 0, a NAK is broadcast.
    assert nak.destination.kind is DestinationKind.BROADCAST
    assert nak.message.options.ip(c.OPT_SERVER_ID) == SERVER


@pytest.mark.parametrize("authoritative", [False, True])
def test_init_reboot(authoritative: bool) -> None:
    core, _, _ = make_core(authoritative=authoritative)
    address = dora(core, 1)
    # The client's own address: ACK.
    ack = only(core.handle(message(c.DHCPREQUEST, requested=address.packed), IFACE, 5.0))
    assert kind_of(ack) == c.DHCPACK
    # Wrong network: NAK.
    wrong = IPv4Address("10.1.2.3")
    nak = only(core.handle(message(c.DHCPREQUEST, requested=wrong.packed), IFACE, 5.0))
    assert kind_of(nak) == c.DHCPNAK
    # Someone else's address, from a client we know: NAK.
    dora(core, 2)
    nak = only(core.handle(message(c.DHCPREQUEST, 2, requested=address.packed), IFACE, 5.0))
    assert kind_of(nak) == c.DHCPNAK
    # A client we have no record of: silent (RFC 2131 §4.3.2), or served if authoritative.
    free = IPv4Address("198.18.0.140")
    replies = core.handle(message(c.DHCPREQUEST, 3, requested=free.packed), IFACE, 5.0)
    if authoritative:
        assert kind_of(only(replies)) == c.DHCPACK
        held = IPv4Address(address)
        replies = core.handle(message(c.DHCPREQUEST, 4, requested=held.packed), IFACE, 5.0)
        assert kind_of(only(replies)) == c.DHCPNAK
    else:
        assert replies == []
        assert core.counters["ignored_unknown_client"] == 1


def test_decline_quarantines_and_the_next_discover_gets_another_address() -> None:
    core, store, _ = make_core()
    address = dora(core, 1)
    assert core.handle(message(
        c.DHCPDECLINE, requested=address.packed, server_id=SERVER.packed
    ), IFACE, 10.0) == []
    assert store.quarantined(address, 11.0)
    again = only(core.handle(message(c.DHCPDISCOVER, 1, xid=0x2000), IFACE, 11.0))
    assert again.message.yiaddr != address


def test_inform_gets_configuration_but_no_address_or_lease() -> None:
    core, _, _ = make_core()
    here = IPv4Address("198.18.0.7")
    reply = only(core.handle(message(c.DHCPINFORM, ciaddr=here), IFACE, 0.0))
    m = reply.message
    assert kind_of(reply) == c.DHCPACK
    assert m.yiaddr == IPv4Address(0) and c.OPT_LEASE_TIME not in m.options
    assert m.options.ips(c.OPT_DNS_SERVER) == (SERVER,)
    assert (reply.destination.address, reply.destination.port) == (here, 68)


def test_relayed_discover_uses_the_relay_subnet_and_echoes_option_82() -> None:
    core, _, _ = make_core()
    agent_info = bytes.fromhex("0104 00000001 0206 020000000001".replace(" ", ""))
    reply = only(core.handle(
        message(c.DHCPDISCOVER, giaddr=RELAY, relay_info=agent_info), IFACE, 0.0
    ))
    assert reply.message.yiaddr in REMOTE_RANGE
    assert reply.message.giaddr == RELAY
    assert reply.destination.kind is DestinationKind.RELAY
    assert (reply.destination.address, reply.destination.port) == (RELAY, 67)
    assert reply.message.options.raw(c.OPT_RELAY_AGENT_INFO) == agent_info
    assert list(reply.message.options)[-1] == c.OPT_RELAY_AGENT_INFO
    assert reply.message.options.ips(c.OPT_ROUTER) == (RELAY,)


def test_unconfigured_relay_and_unknown_subnet_are_dropped() -> None:
    """Unconfigured relays get no answer (no reflector); unicasts matching no subnet are ignored."""
    core, _, _ = make_core()
    spoofed = IPv4Address("203.0.113.9")
    assert core.handle(message(c.DHCPDISCOVER, giaddr=spoofed), IFACE, 0.0) == []
    elsewhere = InterfaceInfo("eth9", IPv4Address("10.9.9.1"), IPv4Network("10.9.9.0/24"))
    assert core.handle(message(c.DHCPDISCOVER), elsewhere, 0.0) == []
    stray = IPv4Address("10.20.30.40")
    assert core.handle(message(c.DHCPREQUEST, ciaddr=stray), IFACE, 0.0) == []
    assert core.counters["ignored_relay"] == 1 and core.counters["ignored_no_subnet"] == 2


def test_relayed_nak_goes_to_the_relay_with_the_broadcast_bit() -> None:
    core, _, _ = make_core()
    nak = only(core.handle(message(
        c.DHCPREQUEST, giaddr=RELAY, requested=IPv4Address("198.18.0.120").packed
    ), IFACE, 0.0))
    assert kind_of(nak) == c.DHCPNAK
    assert nak.destination.kind is DestinationKind.RELAY
    assert nak.message.flags & c.FLAG_BROADCAST


def test_reservation_by_client_id_is_honoured() -> None:
    reserved = IPv4Address("198.18.0.50")
    core, _, _ = make_core(
        reservations=[Reservation(reserved, client_id=b"\x01" + mac(9), hostname="node9")]
    )
    offer = only(core.handle(message(c.DHCPDISCOVER, 9, client_id=b"\x01" + mac(9)), IFACE, 0))
    assert offer.message.yiaddr == reserved
    assert offer.message.options.text(c.OPT_HOST_NAME) == "node9"


def test_pool_exhaustion_is_counted_and_answered_with_silence() -> None:
    core, _, events = make_core()
    for n in range(len(RANGE)):
        only(core.handle(message(c.DHCPDISCOVER, n), IFACE, 0.0))
    assert core.handle(message(c.DHCPDISCOVER, 999), IFACE, 0.0) == []
    assert core.counters["pool_exhausted"] == 1 and events[-1].kind == "pool-exhausted"


def test_ipxe_client_gets_the_script_url_and_its_address() -> None:
    core, _, _ = make_core()
    reply = only(core.handle(seabios_ipxe_rom_discover(), IFACE, 0.0))
    assert reply.message.yiaddr in RANGE
    assert reply.message.options.text(c.OPT_BOOTFILE_NAME) == SCRIPT
    # Full server: no option 60 PXEClient (decide.py explains the EDK2 BINL trap).
    assert c.OPT_VENDOR_CLASS_ID not in reply.message.options


def test_pxe_firmware_gets_a_tftp_boot_file_from_this_interface() -> None:
    core, _, _ = make_core()
    reply = only(core.handle(ovmf_native_pxe_discover(), IFACE, 0.0))
    assert reply.message.file == b"ipxe.efi"
    assert reply.message.siaddr == SERVER  # the interface's own address
    assert reply.destination.kind is DestinationKind.BROADCAST  # EDK2 sets the flag


def test_policy_ignore_means_no_reply_at_all() -> None:
    policy = StaticBootPolicy(BootSpec(), ignored_macs=[seabios_ipxe_rom_discover().mac])
    core, _, _ = make_core(policy=policy)
    assert core.handle(seabios_ipxe_rom_discover(), IFACE, 0.0) == []
    assert core.counters["ignored_by_policy"] == 1
    # A policy change acts on the next packet.
    policy.unignore(seabios_ipxe_rom_discover().mac)
    assert core.handle(seabios_ipxe_rom_discover(), IFACE, 1.0) != []


def test_plain_os_client_gets_an_address_without_boot_information() -> None:
    core, _, _ = make_core()
    reply = only(core.handle(busybox_udhcpc_discover(), IFACE, 0.0))
    assert reply.message.file == b"" and c.OPT_BOOTFILE_NAME not in reply.message.options


def test_reply_fits_the_client_limit_by_leaving_out_unrequested_options() -> None:
    """The reply is capped by option 57 (at least 576)."""
    core, _, _ = make_core()
    agent_info = bytes([1, 250]) + bytes(250)
    full = only(core.handle(message(c.DHCPDISCOVER, giaddr=RELAY, relay_info=agent_info,
                                    prl=bytes([1, 3])), IFACE, 0.0))
    assert full.max_size == 548
    assert full.message.options.raw(c.OPT_RELAY_AGENT_INFO) == agent_info
    # Sent without a 55 every option would be wanted; the unrequested extras went first.
    assert len(encode_dhcp(full.message, max_size=548)) <= 548


def test_reply_that_cannot_fit_is_dropped_not_raised() -> None:
    core, _, _ = make_core()
    huge = bytes([1, 255]) + bytes(255) + bytes([2, 200]) + bytes(200)
    assert core.handle(message(
        c.DHCPDISCOVER, giaddr=RELAY, relay_info=huge, max_size=(576).to_bytes(2, "big")
    ), IFACE, 0.0) == []
    assert core.counters["reply_too_large"] == 1


def test_lease_timers_expire_offers() -> None:
    core, store, _ = make_core()
    only(core.handle(message(c.DHCPDISCOVER), IFACE, 0.0))
    deadline = core.next_deadline()
    assert deadline == core.settings.offer_hold
    ended = core.on_deadline(deadline)
    assert [lease.state for lease in ended] == [LeaseState.FREE]
    assert store.outstanding_offers == 0


def test_ignored_messages() -> None:
    core, _, _ = make_core()
    reply = message(c.DHCPDISCOVER).replace(op=c.BOOTREPLY)
    bootp = message(c.DHCPDISCOVER).replace(options=DhcpOptions())
    offer = message(c.DHCPOFFER)
    for m in (reply, bootp, offer):
        assert core.handle(m, IFACE, 0.0) == []
    assert core.counters["ignored_message"] == 3


class ServerMachine(RuleBasedStateMachine):
    """Random clients doing random legal and illegal things: lease invariants hold."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved = IPv4Address("198.18.0.105")
        self.core, self.store, _ = make_core(
            reservations=[Reservation(self.reserved, mac=mac(3))]
        )
        self.now = 0.0
        self.acked: dict[bytes, IPv4Address] = {}

    clients = st.integers(min_value=0, max_value=70)
    addresses = st.integers(min_value=95, max_value=155).map(
        lambda n: IPv4Address(f"198.18.0.{n}")
    )

    def _handle(self, m: DhcpMessage) -> list[Outgoing]:
        replies = self.core.handle(m, IFACE, self.now)
        for reply in replies:
            if kind_of(reply) == c.DHCPACK and reply.message.yiaddr != IPv4Address(0):
                self.acked[reply.message.chaddr] = reply.message.yiaddr
        return replies

    @rule(n=clients)
    def discover_and_select(self, n: int) -> None:
        for offer in self._handle(message(c.DHCPDISCOVER, n)):
            self._handle(message(
                c.DHCPREQUEST, n, requested=offer.message.yiaddr.packed,
                server_id=SERVER.packed,
            ))

    @rule(n=clients)
    def discover_only(self, n: int) -> None:
        self._handle(message(c.DHCPDISCOVER, n))

    @rule(n=clients, address=addresses)
    def init_reboot(self, n: int, address: IPv4Address) -> None:
        self._handle(message(c.DHCPREQUEST, n, requested=address.packed))

    @rule(n=clients, address=addresses)
    def select_arbitrary(self, n: int, address: IPv4Address) -> None:
        self._handle(message(c.DHCPREQUEST, n, requested=address.packed,
                             server_id=SERVER.packed))

    @rule(n=clients, address=addresses)
    def renew(self, n: int, address: IPv4Address) -> None:
        self._handle(message(c.DHCPREQUEST, n, ciaddr=address))

    @rule(n=clients, address=addresses)
    def release(self, n: int, address: IPv4Address) -> None:
        self._handle(message(c.DHCPRELEASE, n, ciaddr=address))

    @rule(n=clients, address=addresses)
    def decline(self, n: int, address: IPv4Address) -> None:
        self._handle(message(c.DHCPDECLINE, n, requested=address.packed))

    @rule(seconds=st.sampled_from([1.0, 29.0, 31.0, 600.0, 3601.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.core.on_deadline(self.now)

    @invariant()
    def never_two_clients_with_one_address(self) -> None:
        active = [lease for lease in self.store.leases() if lease.active(self.now)]
        assert len({lease.address for lease in active}) == len(active)

    @invariant()
    def reserved_only_to_its_owner_and_pool_bounds_respected(self) -> None:
        for lease in self.store.leases():
            if lease.active(self.now):
                if lease.address == self.reserved:
                    assert lease.mac == mac(3)
                else:
                    assert lease.address in RANGE

    @invariant()
    def every_live_ack_matches_the_store(self) -> None:
        for chaddr, address in self.acked.items():
            lease = self.store.lookup(b"M" + chaddr, self.now)
            if lease is not None and lease.state is LeaseState.BOUND and lease.active(self.now):
                assert lease.address == address


TestServerMachine = ServerMachine.TestCase
TestServerMachine.settings = settings(max_examples=40, stateful_step_count=40)
