"""The boot decision memo (docs/dhcp.md §11) gives the answers of ``decide_boot``.

``DhcpServerCore._decide`` keeps what :func:`~pxestack.dhcp.decide.decide_boot` makes of
the policy's answer, keyed by the client's model facts, the answer's value, the server
address object and the chainload flag.  These tests hold it to the unmemoised function,
for single decisions and for whole exchanges (same reply octets), while the policy's
answers change between packets: the policy is still asked on every packet.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from ipaddress import IPv4Address

from dhcp_samples import SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from test_server import IFACE, RELAY, make_core, message

from pxestack.dhcp.client import ClientInfo, model_facts
from pxestack.dhcp.decide import BootDecision, Outgoing, decide_boot, size_limit
from pxestack.dhcp.policy import BootSpec, Machine
from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

NOW = 1_000_000.0


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


def _memoised(core: DhcpServerCore, request: DhcpMessage, spec: BootSpec,
              server: IPv4Address, recently: bool) -> BootDecision:
    """``core._decide`` for *request*, keyed by its model facts as ``_boot`` keys it; the
    ClientInfo is built only when the memo has no answer."""
    facts = model_facts(request.options.items_view())
    arch = Machine.from_message(request, facts, hostname=None).arch
    return core._decide(facts, arch, spec, server, recently,
                        lambda: ClientInfo.from_message(request))
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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(REQUESTS) - 1), st.integers(0, len(SPECS) - 1),
                          st.booleans(), st.integers(0, 2), st.booleans()),
                min_size=1, max_size=40))
def test_memoised_decision_equals_decide_boot(
    steps: list[tuple[int, int, bool, int, bool]],
) -> None:
    core, _, _ = make_core()
    servers = [IFACE.address, IPv4Address("10.9.9.1")]
    for request_index, spec_index, recently, server_index, fresh in steps:
        info = ClientInfo.from_message(REQUESTS[request_index])
        spec = SPECS[spec_index]
        if spec is None:
            continue  # _boot answers None itself, before any decision
        if fresh:
            spec = _fresh_spec(spec)
            assert spec is not None
        # 2: an equal address that is a new object (the memo keys the object's identity).
        server = servers[server_index] if server_index < 2 else IPv4Address(str(servers[0]))
        expected = decide_boot(info, spec, core._defaults_for(server),
                               recently_chainloaded=recently)
        assert _memoised(core, REQUESTS[request_index], spec, server, recently) == expected
        del server
        gc.collect()  # a later object may get a dead one's id: the memo must not answer


def test_every_model_spec_and_flag_in_one_memo() -> None:
    """Table: every request x spec x flag x server through one core, twice (cold, warm)."""
    core, _, _ = make_core()
    servers = [IFACE.address, IPv4Address("10.9.9.1")]
    for _ in range(2):
        for request in REQUESTS:
            info = ClientInfo.from_message(request)
            for spec in SPECS[1:]:
                for recently in (False, True):
                    for server in servers:
                        expected = decide_boot(info, spec, core._defaults_for(server),
                                               recently_chainloaded=recently)
                        assert _memoised(core, request, _fresh_spec(spec),  # type: ignore[arg-type]
                                         server, recently) == expected


class _ChangingPolicy:
    """Answers from a script of specs, one per packet, each a new object."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.asked = 0

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        spec = SPECS[self.script[self.asked % len(self.script)]]
        self.asked += 1
        return _fresh_spec(spec)


class _UnmemoisedCore(DhcpServerCore):
    """The core with every boot decision made by ``decide_boot`` itself."""

    def _decide(self, facts: object, arch: object, spec: BootSpec, server: IPv4Address,
                recently: bool, classify: Callable[[], ClientInfo]) -> BootDecision:
        return decide_boot(classify(), spec, self._defaults_for(server),
                           recently_chainloaded=recently)


def _wire(replies: list[Outgoing]) -> list[tuple[bytes, object]]:
    return [(encode_dhcp(r.message, max_size=r.max_size), r.destination) for r in replies]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(SPECS) - 1), min_size=1, max_size=8),
       st.lists(st.integers(0, len(REQUESTS) - 1), min_size=1, max_size=30))
def test_exchanges_give_the_same_octets_as_the_unmemoised_core(
    script: list[int], order: list[int],
) -> None:
    memoised, _, _ = make_core(policy=_ChangingPolicy(script))
    plain, _, _ = make_core(policy=_ChangingPolicy(script))
    plain.__class__ = _UnmemoisedCore
    for index in order:
        request = REQUESTS[index]
        assert _wire(memoised.handle(request, IFACE, NOW)) == _wire(
            plain.handle(request, IFACE, NOW)
        )
        # Then the REQUEST of the same client (SELECTING our offer, when there was one).
        lease = memoised.store.lookup(request.chaddr, NOW)
        if lease is None:
            continue
        selecting = request.replace(options=DhcpOptions({
            **dict(request.options),
            c.OPT_MESSAGE_TYPE: bytes((c.DHCPREQUEST,)),
            c.OPT_REQUESTED_IP: lease.address.packed,
            c.OPT_SERVER_ID: IFACE.address.packed,
        }))
        assert _wire(memoised.handle(selecting, IFACE, NOW)) == _wire(
            plain.handle(selecting, IFACE, NOW)
        )
    assert memoised.counters == plain.counters


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
    core, _, _ = make_core()
    base = message(c.DHCPDISCOVER, 90)
    for n in range(3):
        user_class = bytes((250,)) + bytes([n]) * 250  # RFC 3004 form, 250 octets each
        items = {**dict(base.options), c.OPT_USER_CLASS: user_class * 3,
                 c.OPT_VENDOR_CLASS_ID: b"PXEClient"}
        request = base.replace(options=DhcpOptions(items))
        info = ClientInfo.from_message(request)
        assert sum(map(len, info.user_classes)) > 512
        spec = BootSpec()
        assert _memoised(core, request, spec, IFACE.address, False) == decide_boot(
            info, spec, core._defaults_for(IFACE.address))
    assert core._decision_memo == {}


def test_cached_size_limit_follows_option_57_and_the_mtu() -> None:
    """Cached reply options under every option 57 / MTU pair, cold and warm: the size
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
                assert reply.max_size == size_limit(
                    None if client_max is None else client_max, mtu)
                general = reply.message.replace(
                    options=DhcpOptions(dict(reply.message.options)))
                assert encode_dhcp(reply.message, max_size=reply.max_size) == encode_dhcp(
                    general, max_size=reply.max_size)
