"""The fast path gives the replies of the plain RFC path (the seam of pxestack.dhcp.fastpath).

:class:`~pxestack.dhcp.server.DhcpServerCore` built with ``memo_entries=0`` remembers
nothing (no boot decision, reply options, subnet or relay answer is reused, and replies are
encoded in full by the general encoder); the default core remembers all of them, and a core
with two entries per memo forgets them all the time.  These tests feed the same packets to
such cores and compare what goes on the wire: octets, destination, size limit and counters,
while the policy's answers change between packets and the address objects are fresh,
equal or reused ones.
"""

from __future__ import annotations

import dataclasses
import gc
from ipaddress import IPv4Address, IPv4Network

from dhcp_samples import SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from test_server import IFACE, NET, RELAY, REMOTE, make_core, message

from pxestack._memo import BoundedMemo
from pxestack.dhcp.client import ClientInfo, model_facts
from pxestack.dhcp.decide import BootDefaults, decide_boot
from pxestack.dhcp.fastpath import FastPath
from pxestack.dhcp.outgoing import Outgoing, reply_destination, size_limit
from pxestack.dhcp.policy import BootSpec, Machine
from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

NOW = 1_000_000.0
OTHER_SERVER = IPv4Address("10.9.9.1")


def _requests() -> list[DhcpMessage]:
    """The real-client samples (on-link and relayed) and synthetic firmware models."""
    cases: list[DhcpMessage] = []
    for build in SAMPLES.values():
        sample = build()
        if sample.op == c.BOOTREQUEST:
            cases += [sample, sample.replace(giaddr=RELAY, hops=1)]
    models: list[dict[int, bytes]] = [
        {c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00000:UNDI:002001"},
        {c.OPT_VENDOR_CLASS_ID: b"PXEClient", c.OPT_CLIENT_ARCH: b"\x00\x07"},
        {c.OPT_VENDOR_CLASS_ID: b"PXEClient", c.OPT_CLIENT_ARCH: b"\x00\x0b"},
        {c.OPT_VENDOR_CLASS_ID: b"PXEClient", c.OPT_CLIENT_ARCH: b"\x00\x63"},
        {c.OPT_VENDOR_CLASS_ID: b"HTTPClient:Arch:00016", c.OPT_CLIENT_ARCH: b"\x00\x10"},
        {c.OPT_USER_CLASS: b"iPXE", c.OPT_CLIENT_ARCH: b"\x00\x00"},
        {c.OPT_USER_CLASS: b"pxestack"},
        {c.OPT_USER_CLASS: b"\x04iPXE\x08pxestack"},  # RFC 3004 form: our own script
        {c.OPT_USER_CLASS: b"iPXE", c.OPT_IPXE_ENCAP: b"\x13\x01\x01"},  # has HTTP
        {c.OPT_USER_CLASS: b"iPXE", c.OPT_IPXE_ENCAP: b"\x15\x01\x01"},  # no HTTP
        {c.OPT_IPXE_ENCAP: b"\xeb\x03\x01\x02\x03"},  # version only
        {},  # an OS client
    ]
    for n, extra in enumerate(models):
        base = message(c.DHCPDISCOVER, 40 + n, prl=bytes((1, 3, 6, 66, 67)))
        items = {**dict(base.options), **extra}
        cases.append(base.replace(options=DhcpOptions(items)))
        cases.append(base.replace(options=DhcpOptions(items), giaddr=RELAY, hops=1))
    return cases


REQUESTS = _requests()

SPECS = [
    None,
    BootSpec(),
    BootSpec(ipxe_script_url="http://10.0.0.9/other.ipxe"),
    BootSpec(boot_file="custom.efi"),
    BootSpec(next_server=IPv4Address("10.0.0.77")),
    BootSpec(local_boot=True),
    BootSpec(ipxe_script_url="http://10.0.0.9/x.ipxe", local_boot=True,
             next_server=IPv4Address("10.0.0.78")),
]


def _fresh_spec(spec: BootSpec | None) -> BootSpec | None:
    """An equal spec that is a distinct object (as a policy building one per packet)."""
    if spec is None:
        return None
    next_server = None if spec.next_server is None else IPv4Address(str(spec.next_server))
    return BootSpec(spec.ipxe_script_url, spec.boot_file, next_server, spec.local_boot)




def _fresh_spec(spec: BootSpec | None) -> BootSpec | None:
    """An equal spec that is a distinct object (as a policy building one per packet)."""
    if spec is None:
        return None
    next_server = None if spec.next_server is None else IPv4Address(str(spec.next_server))
    return BootSpec(spec.ipxe_script_url, spec.boot_file, next_server, spec.local_boot)


class _ChangingPolicy:
    """Answers from a script of specs, one per packet, each a new object."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.asked = 0

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        spec = SPECS[self.script[self.asked % len(self.script)]]
        self.asked += 1
        return _fresh_spec(spec)


def _cores(script: list[int], **switches: object) -> list[DhcpServerCore]:
    """The plain core first, then the remembering one and one that forgets all the time."""
    cores = []
    for entries in (0, 1024, 2):
        core, _, _ = make_core(policy=_ChangingPolicy(script), **switches)
        core.fast = FastPath(core.settings.subnets, core.settings.relays, entries=entries)
        cores.append(core)
    return cores


def _wire(replies: list[Outgoing]) -> list[tuple[bytes, object, int, object, object]]:
    """What the adapter sends: the payload, where, under which size limit, on which port,
    and the reply type it counts the reply under (which must be the payload's option 53,
    however the reply was made)."""
    for reply in replies:
        sent = decode_dhcp(reply.encoded()).options.by_code.get(c.OPT_MESSAGE_TYPE)
        assert reply.reply_type == sent
    return [(r.encoded(), r.destination, r.max_size, r.source_port, r.reply_type)
            for r in replies]


def _same_everywhere(cores: list[DhcpServerCore], request: DhcpMessage,
                     interface: InterfaceInfo = IFACE, now: float = NOW) -> list[Outgoing]:
    replies = [core.handle(request, interface, now) for core in cores]
    plain = _wire(replies[0])
    for other in replies[1:]:
        assert _wire(other) == plain
        # The general encoder agrees with whatever form the reply was handed over in.
        assert [encode_dhcp(r.message, max_size=r.max_size) for r in other] == [
            p for p, *_ in plain]
    return replies[0]


def _decision(fast: FastPath, request: DhcpMessage, spec: BootSpec, server: IPv4Address,
              recently: bool) -> object:
    facts = fast.model_facts(request.options.items_view())
    arch = Machine.from_message(request, facts, hostname=None).arch
    return fast.decide(BOOT, facts, arch, spec, server, recently,
                       lambda: ClientInfo.from_message(request))


BOOT = BootDefaults(server_address=IPv4Address(0), ipxe_script_url="http://198.18.0.1/b.ipxe")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(REQUESTS) - 1), st.integers(1, len(SPECS) - 1),
                          st.booleans(), st.integers(0, 2), st.booleans()),
                min_size=1, max_size=40))
def test_remembered_decision_equals_decide_boot(
    steps: list[tuple[int, int, bool, int, bool]],
) -> None:
    fast = FastPath()
    servers = [IFACE.address, OTHER_SERVER]
    for request_index, spec_index, recently, server_index, fresh in steps:
        info = ClientInfo.from_message(REQUESTS[request_index])
        spec = SPECS[spec_index]
        assert spec is not None
        if fresh:
            spec = _fresh_spec(spec)
            assert spec is not None
        # 2: an equal address that is a new object (the memo keys the object's identity).
        server = servers[server_index] if server_index < 2 else IPv4Address(str(servers[0]))
        expected = decide_boot(info, spec, dataclasses.replace(BOOT, server_address=server),
                               recently_chainloaded=recently)
        assert _decision(fast, REQUESTS[request_index], spec, server, recently) == expected
        del server
        gc.collect()  # a later object may get a dead one's id: the memo must not answer


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(SPECS) - 1), min_size=1, max_size=8),
       st.lists(st.tuples(st.integers(0, len(REQUESTS) - 1),
                          st.sampled_from(("select", "renew", "release", "inform", "decline",
                                           "other-server", "none"))),
                min_size=1, max_size=30))
def test_exchanges_give_the_plain_path_octets(
    script: list[int], steps: list[tuple[int, str]],
) -> None:
    cores = _cores(script)
    for index, follow_up in steps:
        request = REQUESTS[index]
        _same_everywhere(cores, request)
        lease = cores[0].store.lookup(request.chaddr, NOW)
        leases = [core.store.lookup(request.chaddr, NOW) for core in cores]
        assert leases[1:] == leases[:1] * 2
        if lease is None or follow_up == "none":
            continue
        items = dict(request.options)
        ciaddr = IPv4Address(0)
        if follow_up in ("select", "other-server", "decline"):
            items[c.OPT_MESSAGE_TYPE] = bytes((
                c.DHCPDECLINE if follow_up == "decline" else c.DHCPREQUEST,))
            items[c.OPT_REQUESTED_IP] = lease.address.packed
            items[c.OPT_SERVER_ID] = (
                OTHER_SERVER if follow_up == "other-server" else IFACE.address).packed
        else:
            items[c.OPT_MESSAGE_TYPE] = bytes(({
                "renew": c.DHCPREQUEST, "release": c.DHCPRELEASE, "inform": c.DHCPINFORM,
            }[follow_up],))
            ciaddr = lease.address
        _same_everywhere(cores, request.replace(options=DhcpOptions(items), ciaddr=ciaddr))
    assert cores[1].counters == cores[0].counters == cores[2].counters


@settings(max_examples=40, deadline=None)
@given(st.integers(0, len(REQUESTS) - 1),
       st.one_of(st.none(), st.binary(min_size=1, max_size=120)),
       st.one_of(st.none(), st.binary(min_size=1, max_size=40)),
       st.one_of(st.none(), st.integers(0, 70000)),
       st.sampled_from((None, 576, 600, 1500)),
       st.booleans())
def test_per_client_options_and_size_limits_give_the_plain_path_octets(
    index: int, wanted: bytes | None, relay_info: bytes | None, client_max: int | None,
    mtu: int | None, relayed: bool,
) -> None:
    """Option 55 (short, long, absent), option 82, option 57 and the MTU: the remembered
    options, the per-client ones and the options left out of a reply too large all match."""
    cores = _cores([1])
    request = REQUESTS[index]
    items = dict(request.options)
    for code, value in ((c.OPT_PARAMETER_REQUEST_LIST, wanted),
                        (c.OPT_RELAY_AGENT_INFO, relay_info),
                        (c.OPT_MAX_MESSAGE_SIZE,
                         None if client_max is None else client_max.to_bytes(3, "big")[1:])):
        if value is not None:
            items[code] = value
    giaddr = RELAY if relayed else IPv4Address(0)
    interface = InterfaceInfo(IFACE.name, IFACE.address, IFACE.network, mtu=mtu)
    for _ in range(2):  # cold, then warm
        _same_everywhere(cores, request.replace(options=DhcpOptions(items), giaddr=giaddr,
                                                hops=int(relayed)), interface)


def test_a_policy_change_acts_on_the_next_packet() -> None:
    core, _, _ = make_core()
    request = REQUESTS[0]  # an iPXE ROM: gets the script URL in option 67
    first = core.handle(request, IFACE, NOW)
    assert first and first[0].message.options.raw(c.OPT_BOOTFILE_NAME) is not None
    core.policy.spec = BootSpec(ipxe_script_url="http://10.0.0.9/changed.ipxe")  # type: ignore[attr-defined]
    second = core.handle(request, IFACE, NOW)
    assert second[0].message.options.raw(c.OPT_BOOTFILE_NAME) == b"http://10.0.0.9/changed.ipxe"
    core.policy.ignore(request.mac)  # type: ignore[attr-defined]
    assert core.handle(request, IFACE, NOW) == []


def test_large_peer_supplied_keys_are_not_kept() -> None:
    fast = FastPath()
    base = message(c.DHCPDISCOVER, 90)
    for n in range(3):
        user_class = bytes((250,)) + bytes([n]) * 250  # RFC 3004 form, 250 octets each
        items = {**dict(base.options), c.OPT_USER_CLASS: user_class * 3,
                 c.OPT_VENDOR_CLASS_ID: b"PXEClient"}
        request = base.replace(options=DhcpOptions(items))
        info = ClientInfo.from_message(request)
        assert sum(map(len, info.user_classes)) > 512
        spec = BootSpec()
        assert _decision(fast, request, spec, IFACE.address, False) == decide_boot(
            info, spec, dataclasses.replace(BOOT, server_address=IFACE.address))
        assert fast.model_facts(items) == model_facts(items)
    assert fast.sizes()["decisions"] == 0
    assert fast.sizes()["models"] == 0


def test_every_memo_is_bounded() -> None:
    """Thousands of distinct clients, relays and models through a core with 8 entries per
    memo: no memo holds more, and the replies are still the plain path's."""
    plain, _, _ = make_core()
    plain.fast = FastPath(plain.settings.subnets, plain.settings.relays, entries=0)
    small, _, _ = make_core()
    small.fast = FastPath(small.settings.subnets, small.settings.relays, entries=8)
    for n in range(300):
        items = {c.OPT_VENDOR_CLASS_ID: b"PXEClient:%d" % n,
                 c.OPT_PARAMETER_REQUEST_LIST: bytes((1, 3, n % 250 + 1))}
        request = message(c.DHCPDISCOVER, n, giaddr=IPv4Address(0x0A000000 + n % 40))
        request = request.replace(options=DhcpOptions({**dict(request.options), **items}))
        assert _wire(small.handle(request, IFACE, NOW)) == _wire(plain.handle(request, IFACE, NOW))
        assert max(small.fast.sizes().values()) <= 8
    assert all(size == 0 for size in plain.fast.sizes().values())
    assert small.counters == plain.counters


def test_bounded_memo_forgets_everything_when_full() -> None:
    memo: BoundedMemo[int, str] = BoundedMemo(3)
    for n in range(3):
        assert memo.put(n, str(n)) == str(n)
    assert [memo.get(n) for n in range(3)] == ["0", "1", "2"]
    memo.put(3, "3")
    assert len(memo) == 1 and memo.get(0) is None and memo.get(3) == "3"
    nothing: BoundedMemo[int, str] = BoundedMemo(0)
    assert nothing.put(1, "1") == "1" and nothing.get(1) is None and len(nothing) == 0


def test_size_limit_follows_option_57_and_the_mtu() -> None:
    """Remembered reply options under every option 57 / MTU pair, cold and warm: the size
    limit is :func:`size_limit`'s and the octets are the general encoder's."""
    core, _, _ = make_core()
    n = 100
    for _ in range(2):
        for client_max in (None, 300, 576, 1500, 65535):
            for mtu in (None, 576, 1500, 9000):
                interface = InterfaceInfo(IFACE.name, IFACE.address, IFACE.network, mtu=mtu)
                n += 1
                extra = {} if client_max is None else {
                    "max_size": client_max.to_bytes(2, "big")}
                request = message(c.DHCPDISCOVER, n, prl=bytes(range(1, 80)), **extra)
                (reply,) = core.handle(request, interface, NOW)
                assert reply.max_size == size_limit(client_max, mtu)
                general = reply.message.replace(
                    options=DhcpOptions(dict(reply.message.options)))
                assert reply.encoded() == encode_dhcp(general, max_size=reply.max_size)


def _fresh(text: str) -> IPv4Address:
    """A new IPv4Address object (never one of the decoder's shared ones)."""
    return IPv4Address(text)


def test_relay_answers_hold_for_every_giaddr_object() -> None:
    """Equal but distinct giaddr objects, objects whose id is reused, unknown relays and an
    unset giaddr built as a new object get the answers of the plain path."""
    plain, _, _ = make_core()
    plain.fast = FastPath(plain.settings.subnets, plain.settings.relays, entries=0)
    core, _, _ = make_core()
    cases = [(RELAY, "offer"), (IPv4Address("198.19.7.9"), "ignored_relay"),
             (IPv4Address(0), "offer")]
    for round_ in range(3):
        for n, (address, expected) in enumerate(cases * 2):
            giaddr = _fresh(str(address))
            request = message(c.DHCPDISCOVER, 100 + n, giaddr=giaddr)
            replies = core.handle(request, IFACE, 1000.0 + round_)
            assert _wire(replies) == _wire(plain.handle(request, IFACE, 1000.0 + round_))
            if expected == "offer":
                assert len(replies) == 1
                subnet = REMOTE if giaddr == RELAY else NET
                assert replies[0].message.yiaddr in subnet
                assert replies[0].destination == reply_destination(
                    request, c.DHCPOFFER, yiaddr=replies[0].message.yiaddr)
            else:
                assert replies == []
            del giaddr, replies, request
            if round_:
                gc.collect()  # let ids be reused by the next object
    assert core.counters == plain.counters


def test_boot_defaults_follow_the_server_address_across_interfaces() -> None:
    fast = FastPath()
    for server in (IFACE.address, OTHER_SERVER, _fresh(str(IFACE.address)), OTHER_SERVER,
                   IFACE.address):
        defaults = fast.boot_defaults(BOOT, server)
        assert defaults.server_address == server
        assert defaults == fast.boot_defaults(BOOT, _fresh(str(server)))
        other = InterfaceInfo("eth9", OTHER_SERVER, IPv4Network("10.9.9.0/24"))
        assert fast.boot_defaults(BOOT, other.address).server_address == OTHER_SERVER
