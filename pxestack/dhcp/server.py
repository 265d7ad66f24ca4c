"""The full DHCP server (RFC 2131), sans-IO: ``handle(message, interface, now) -> [Outgoing]``.

:class:`DhcpServerCore` gets decoded messages with the interface they arrived on and the
time; it returns the replies to send.  It never touches a socket or a clock, so every rule
below is tested with plain values (tests/dhcp/test_server*.py).

Per message type:

* **DHCPDISCOVER** (§4.3.1): choose an address from the :class:`~pxestack.dhcp.leases.LeaseStore`
  (reservation, the client's current or previous address, option 50, then a fresh one), hold
  it for ``offer_hold`` seconds and answer DHCPOFFER.  A retransmitted DISCOVER (iPXE sends
  two per boot with the same xid) finds the held offer and gets the same answer.
* **DHCPREQUEST** (§4.3.2), told apart by the fields the client fills in (§4.3.2's list):

  - *SELECTING*: option 54 present.  Another server's id means the client chose that
    server: our offer is withdrawn, no reply.  Ours: ACK the requested address (option 50)
    if the store grants it, else NAK.
  - *INIT-REBOOT*: no option 54, option 50 present, ciaddr 0.  NAK when the address is on
    the wrong network or belongs to someone else; ACK when it is the client's own binding;
    with no record of the client, stay silent ("MUST remain silent"), unless
    ``authoritative``, in which case a free address in the range is granted (a restarted
    server whose journal was lost) and any other is NAKed.
  - *RENEWING* / *REBINDING*: no option 54, no option 50, ciaddr set.  Extend the client's
    own binding; NAK an address held by someone else; an unknown client is answered only
    when ``authoritative`` (as for INIT-REBOOT).

* **DHCPDECLINE** (§4.3.3): the address is quarantined for ``decline_quarantine`` seconds.
* **DHCPRELEASE** (§4.3.4): the binding is freed (the client keeps a claim on it until
  someone else needs it).
* **DHCPINFORM** (§4.3.5): DHCPACK with configuration options only: no yiaddr, no lease time.

Relays (RFC 2131 §4.1, RFC 3046): a message with ``giaddr`` set is answered only if giaddr
is a configured relay (never a reflector for spoofed giaddrs), the subnet is the one containing
giaddr, the reply goes to giaddr:67 and option 82 is echoed as the last option (RFC 3046
§2.2).  A message for which no configured subnet matches is dropped, without an assertion.

Boot information: network-boot clients (PXE, iPXE, UEFI HTTP) get a
:class:`~pxestack.dhcp.policy.BootSpec` from the :class:`~pxestack.dhcp.policy.BootPolicy`
on every packet and :func:`~pxestack.dhcp.decide.decide_boot` turns it into options; a
policy answer of ``None`` means no reply at all.  Plain OS clients are served addresses only
and the policy is not asked.

Reply options honour the client's parameter request list (option 55, RFC 2132 §9.8):
configuration options beyond the essential ones (53, 54, 51, 58, 59, 1) are sent only when
requested (or when the client sent no list); boot options are always sent to boot clients.
Replies fit the client's option 57 (RFC 2132 §9.10); options that would not fit are left
out, least important first.

Peer data that turns out malformed while handling (an option with a bad length read through
a typed getter) raises :class:`~pxestack.errors.MalformedPacket`, which the adapter logs and
drops exactly like a decoding error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from typing import ClassVar, Final

from pxestack._types import Now
from pxestack.dhcp.client import (
    Arch,
    ClientInfo,
    Firmware,
    ModelFacts,
    model_facts,
    read_hostname,
)
from pxestack.dhcp.decide import (
    BootDecision,
    BootDefaults,
    BootKind,
    ChainloadMemory,
    Outgoing,
    decide_boot,
    encoded_outgoing,
    new_outgoing,
    reply_destination,
    reply_size_limit,
    size_limit,
)
from pxestack.dhcp.leases import Lease, LeaseState, LeaseStore, Subnet, client_key
from pxestack.dhcp.policy import BootPolicy, BootSpec, Machine
from pxestack.errors import ApiMisuse
from pxestack.wire import constants as c
from pxestack.wire.dhcp import (
    DhcpMessage,
    PreEncodedOptions,
    build_reply,
    encode_dhcp,
    encode_reply,
    pre_encoded_options,
)
from pxestack.wire.dhcp_options import DhcpOptions, encode_domain_search, ipv4_address

_ZERO: Final = ipv4_address(0)  # the shared object the decoder uses too
#: ``bytes((n,))`` for every octet value (option 53 values without building them).
_ONE_OCTET: Final = tuple(bytes((n,)) for n in range(256))
#: Bound of the address -> subnet memo.
_SUBNET_MEMO_ENTRIES: Final = 4096
#: Bound of the pre-encoded reply options cache (entries; cleared when full: bounded memory).
_REPLY_OPTIONS_CACHE_ENTRIES: Final = 1024
#: Bound of the boot decision memo (entries; cleared when full, so memory stays bounded).
_DECISION_MEMO_ENTRIES: Final = 1024
#: Largest peer-supplied part of a decision memo key (user classes, iPXE version; octets).
_DECISION_MEMO_KEY_OCTETS: Final = 512
#: Longest option 55 whose replies are cached (longer lists take the general path).
_CACHED_REQUEST_LIST_OCTETS: Final = 64

#: Counter names of :attr:`DhcpServerCore.counters` (a fixed set: bounded memory).
COUNTERS: Final = (
    "offers",
    "acks",
    "naks",
    "informs",
    "releases",
    "declines",
    "expired",
    "ignored_message",
    "ignored_relay",
    "ignored_no_subnet",
    "ignored_by_policy",
    "ignored_other_server",
    "ignored_unknown_client",
    "pool_exhausted",
    "reply_too_large",
)

#: Kinds of :class:`LeaseEvent`.
EVENT_KINDS: Final = frozenset(
    {"offered", "bound", "released", "declined", "expired", "nak", "pool-exhausted"}
)

#: Options always sent in OFFER/ACK (RFC 2131 §4.3.1 Table 3 and §4.4.5 T1/T2).
_ESSENTIAL: Final = frozenset(
    {c.OPT_MESSAGE_TYPE, c.OPT_SERVER_ID, c.OPT_LEASE_TIME, c.OPT_RENEWAL_TIME,
     c.OPT_REBINDING_TIME, c.OPT_SUBNET_MASK, c.OPT_RELAY_AGENT_INFO}
)
#: Boot options (from decide_boot), dropped only after every configuration option.
_BOOT: Final = frozenset(
    {c.OPT_VENDOR_CLASS_ID, c.OPT_VENDOR_SPECIFIC, c.OPT_TFTP_SERVER_NAME,
     c.OPT_BOOTFILE_NAME, c.OPT_IPXE_ENCAP, c.OPT_CLIENT_UUID, c.OPT_PXELINUX_PATH_PREFIX}
)

#: Lowest lease time granted, whatever shorter time a client asks for in option 51 (seconds).
MIN_LEASE_TIME: Final = 10


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """The interface a message arrived on, as the adapter knows it.

    ``address`` is this server's address there: option 54 (server identifier) and the
    source of replies.  ``network`` selects the subnet for clients on the link.
    """

    name: str
    address: IPv4Address
    network: IPv4Network
    #: Interface MTU, caps reply sizes (None: only the client's option 57 counts).
    mtu: int | None = None
    #: ``address.packed``, option 54 of every reply (derived; computed once).
    packed_address: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed_address", self.address.packed)


@dataclass(frozen=True, slots=True)
class SubnetSettings:
    """One subnet: its address ranges (inside :attr:`subnet`) and the options handed out."""

    subnet: Subnet
    lease_time: int = 3600
    routers: tuple[IPv4Address, ...] = ()
    dns: tuple[IPv4Address, ...] = ()
    ntp: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    domain_search: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Behaviour switches of :class:`DhcpServerCore` (the caller maps them from config)."""

    subnets: tuple[SubnetSettings, ...]
    #: giaddr values whose relayed messages are answered (no others: never a reflector).
    relays: frozenset[IPv4Address] = frozenset()
    #: Seconds an offered address is held for its client.
    offer_hold: float = 30.0
    #: Key leases on option 61 instead of chaddr (see :func:`~pxestack.dhcp.leases.client_key`).
    match_client_id: bool = False
    #: Answer clients we have no record of in INIT-REBOOT/RENEWING/REBINDING (see module doc).
    authoritative: bool = False
    #: Seconds a declined address stays unused (RFC 2131 §4.3.3).
    decline_quarantine: float = 600.0


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """A lease change, for logs and metrics (given to the ``on_event`` callback)."""

    kind: str
    lease: Lease | None
    xid: int
    mac: bytes
    interface: str
    detail: str = ""


#: "Not read yet" for the lazily read values of a :class:`_Context`.
_UNREAD: Final = object()


@dataclass(slots=True)
class _Context:
    """What the handlers of one message share.

    The full classification (:meth:`classify`) and the host name are read on first use: a
    plain OS client gets no boot decision, so its messages only need the firmware kind and
    option 57 (:attr:`facts`, memoised per firmware model), and a network-boot client needs
    the whole :class:`ClientInfo` only when the boot decision is not memoised.  Both are
    pure functions of :attr:`message` that never raise, so reading them later gives the
    same values.
    """

    message: DhcpMessage
    interface: InterfaceInfo
    now: Now
    settings: SubnetSettings
    server_id: IPv4Address
    client: bytes
    client_id: bytes | None
    facts: ModelFacts
    _info: ClientInfo | None = None
    _hostname: object = _UNREAD

    def classify(self) -> ClientInfo:
        """:meth:`ClientInfo.from_message` of the message, built once, on first use."""
        info = self._info
        if info is None:
            info = self._info = ClientInfo.from_message(self.message)
        return info

    @property
    def hostname(self) -> str | None:
        """The client's option 12 as :attr:`ClientInfo.hostname` has it (read once)."""
        hostname = self._hostname
        if hostname is _UNREAD:
            if self._info is not None:
                hostname = self._info.hostname
            elif c.OPT_HOST_NAME in self.message.options.items_view():
                hostname = read_hostname(self.message.options)[0]
            else:
                hostname = None
            self._hostname = hostname
        return hostname  # type: ignore[return-value]


class DhcpServerCore:
    """The full DHCP server state machine.  See the module docstring for the rules.

    :param settings: subnets and behaviour switches.
    :param store: the lease database (an :class:`~pxestack.dhcp.leases.InMemoryLeaseStore`
        whose subnets are those of *settings*).
    :param policy: the boot policy asked for every network-boot client.
    :param boot: boot defaults (URLs, file names).  Its ``server_address`` is ignored: each
        interface's own address is used as server identifier and TFTP next-server.
    :param on_event: called with a :class:`LeaseEvent` for every lease change.
    :param event_kinds: only these kinds reach *on_event* (None: all of :data:`EVENT_KINDS`);
        the others are not even built, which keeps the hot path lean when logs are quiet.
    """

    def __init__(
        self,
        settings: ServerSettings,
        store: LeaseStore,
        policy: BootPolicy,
        boot: BootDefaults,
        *,
        chainloads: ChainloadMemory | None = None,
        on_event: Callable[[LeaseEvent], None] | None = None,
        event_kinds: frozenset[str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.boot = boot
        self.chainloads = chainloads if chainloads is not None else ChainloadMemory()
        self.on_event = on_event
        self.event_kinds = EVENT_KINDS if event_kinds is None else event_kinds
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        #: Called with ``(bound, chaddr, now)`` for every OFFER (``bound`` False) and every
        #: ACK that grants a lease (True), whatever *event_kinds* holds: the cheap hook the
        #: metrics' per-machine DHCP phase uses (no :class:`LeaseEvent` is built for it).
        self.on_progress: Callable[[bool, bytes, Now], None] | None = None
        #: Asked with ``(message, interface, firmware, now)`` before each OFFER; False: no
        #: answer now (:mod:`pxestack.dhcp.admission`).  None: every DISCOVER answered.
        self.admission: Callable[[DhcpMessage, InterfaceInfo, Firmware, Now], bool] | None = None
        self._by_network: dict[IPv4Network, SubnetSettings] = {
            s.subnet.network: s for s in settings.subnets
        }
        self._boot_by_server: dict[int, BootDefaults] = {}
        #: The last (server address object, defaults) of :meth:`_defaults_for`.
        self._last_defaults: tuple[IPv4Address, BootDefaults] | None = None
        #: Encoded options of each configured subnet, by ``id()`` of its settings (hashing
        #: the settings or their IPv4Network costs more than encoding a few options).
        self._options_cache: dict[
            int, tuple[SubnetSettings, tuple[bytes, tuple[tuple[int, bytes], ...]]]
        ] = {id(s): (s, _encode_subnet_options(s)) for s in settings.subnets}
        self._subnet_memo: dict[int, SubnetSettings | None] = {}
        self._relays = frozenset(int(relay) for relay in settings.relays)
        #: See :meth:`_relay_entry`; bounded in size.
        self._relay_memo: dict[int, tuple[IPv4Address, SubnetSettings | None, bool]] = {}
        #: Boot decisions by (server, model facts, policy answer, recently chainloaded);
        #: see :meth:`_decide`.
        self._decision_memo: dict[tuple[object, ...], tuple[IPv4Address, BootDecision]] = {}
        #: Pre-encoded reply options by (type, server id, lease time, id(subnet settings),
        #: option 55, id(boot options)); see :meth:`_cached_reply_options`.
        self._reply_options_cache: dict[
            tuple[int, bytes, int | None, int, bytes | None, int],
            tuple[SubnetSettings, DhcpOptions | None, DhcpOptions, int],
        ] = {}

    # -- entry point -----------------------------------------------------------------

    def handle(self, message: DhcpMessage, interface: InterfaceInfo, now: Now) -> list[Outgoing]:
        """Process one decoded message that arrived on *interface* at *now*."""
        items = message.options.items_view()  # read-only; ``items.get`` spares a call
        raw_type = items.get(c.OPT_MESSAGE_TYPE)  # DhcpMessage.message_type, inlined
        message_type = raw_type[0] if raw_type is not None and len(raw_type) == 1 else None
        if message.op != c.BOOTREQUEST or message_type is None or not message.chaddr:
            # BOOTP without option 53 is not served; an empty chaddr names nobody.
            self.counters["ignored_message"] += 1
            return []
        handler = self._handlers.get(message_type)
        if handler is None:
            self.counters["ignored_message"] += 1
            return []
        giaddr = message.giaddr
        relayed = None
        if giaddr is not _ZERO:
            relayed = self._relay_memo.get(id(giaddr))
            if relayed is None or relayed[0] is not giaddr:
                relayed = self._relay_entry(giaddr)
        if relayed is not None:
            if not relayed[2]:
                self.counters["ignored_relay"] += 1
                return []
            settings = relayed[1]
        elif message.ciaddr is not _ZERO and message.ciaddr != _ZERO and message_type in (
            c.DHCPREQUEST, c.DHCPINFORM, c.DHCPRELEASE
        ):
            # RFC 2131 §4.3.2 RENEWING: "the DHCP server will trust the value in 'ciaddr'".
            settings = self._settings_for(message.ciaddr)
        else:
            settings = self._settings_for(interface.address)
        if settings is None:
            self.counters["ignored_no_subnet"] += 1  # no subnet: ignored, not an error
            return []
        # A zero-length client identifier is ignored; chaddr identifies the client.
        client_id = items.get(c.OPT_CLIENT_ID) or None
        context = _Context(  # positional: the field order of _Context
            message,
            interface,
            now,
            settings,
            interface.address,
            client_key(message.chaddr, client_id, match_client_id=self.settings.match_client_id),
            client_id,
            model_facts(items),
        )
        return handler(self, context)

    def _relay_entry(
        self, giaddr: IPv4Address
    ) -> tuple[IPv4Address, SubnetSettings | None, bool] | None:
        """``(giaddr, its subnet settings, whether it is a configured relay)``, or None for
        an unset giaddr; remembered by ``id`` of the decoder's shared address object, so a
        relay seen before costs no IPv4Address comparison or ``int()`` (Python-level calls).
        The entry holds *giaddr*, so its ``id`` is not reused while the entry lives."""
        if giaddr is _ZERO or giaddr == _ZERO:
            return None
        relay = int(giaddr)
        known = relay in self._relays
        entry = (giaddr, self._settings_for(giaddr, relay) if known else None, known)
        memo = self._relay_memo
        if len(memo) >= _SUBNET_MEMO_ENTRIES:
            memo.clear()
        memo[id(giaddr)] = entry
        return entry

    def _settings_for(self, address: IPv4Address, key: int | None = None
                      ) -> SubnetSettings | None:
        """The subnet containing *address* (giaddr, ciaddr or the interface address);
        *key* is ``int(address)`` when the caller has it.

        Memoised per address: the anchors are few (relays, interfaces) except ciaddr in
        renewals, and the memo is bounded in size."""
        memo = self._subnet_memo
        if key is None:
            key = int(address)  # an int hashes in C; an IPv4Address in Python
        if key in memo:
            return memo[key]
        settings = next(
            (s for network, s in self._by_network.items() if address in network), None
        )
        if len(memo) >= _SUBNET_MEMO_ENTRIES:
            memo.clear()
        memo[key] = settings
        return settings

    # -- timers ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`on_deadline` next has work (offer holds, lease expiry)."""
        return self.store.next_deadline()

    def on_deadline(self, now: Now) -> list[Lease]:
        """Expire what is due; returns the leases and offers that ended."""
        ended = self.store.expire(now)
        self.counters["expired"] += len(ended)
        for lease in ended:
            self._event("expired", lease, 0, lease.mac, "")
        return ended

    # -- message handlers --------------------------------------------------------------

    def _discover(self, ctx: _Context) -> list[Outgoing]:
        message = ctx.message
        boot = self._boot(ctx)
        if boot is None:
            return []
        if self.admission is not None and not self.admission(
            message, ctx.interface, ctx.facts.firmware, ctx.now
        ):
            return []
        requested = ctx.message.options.ip(c.OPT_REQUESTED_IP)
        lease = self.store.offer(
            ctx.client,
            message.chaddr,
            ctx.client_id,
            ctx.settings.subnet,
            requested,
            ctx.now,
            self.settings.offer_hold,
        )
        if lease is None:
            self.counters["pool_exhausted"] += 1
            self._event("pool-exhausted", None, message.xid, message.chaddr,
                        ctx.interface.name, str(ctx.settings.subnet.network))
            return []
        self.counters["offers"] += 1
        if self.on_progress is not None:
            self.on_progress(False, message.chaddr, ctx.now)
        if self.on_event is not None:  # the per-packet events: skip the call when unheard
            self._event("offered", lease, message.xid, message.chaddr, ctx.interface.name)
        reply = self._reply(ctx, c.DHCPOFFER, lease, boot)
        return [] if reply is None else [reply]

    def _request(self, ctx: _Context) -> list[Outgoing]:
        message = ctx.message
        options = message.options
        server_id = options.ip(c.OPT_SERVER_ID)
        requested = options.ip(c.OPT_REQUESTED_IP)
        if server_id is not None:
            # SELECTING (RFC 2131 §4.3.2).
            if server_id != ctx.server_id:
                # The client chose another server: our offer is withdrawn.
                self._withdraw_offer(ctx)
                self.counters["ignored_other_server"] += 1
                return []
            if requested is None or (message.ciaddr is not _ZERO and message.ciaddr != _ZERO):
                return self._nak(ctx, "SELECTING request without option 50")
            return self._grant(ctx, requested, known_required=False)
        if requested is not None and message.ciaddr == _ZERO:
            # INIT-REBOOT: "SHOULD send a DHCPNAK ... if the requested IP address is
            # incorrect, or is on the wrong network".
            if requested not in ctx.settings.subnet.network:
                return self._nak(ctx, f"{requested} is on the wrong network")
            return self._grant(ctx, requested, known_required=True)
        if message.ciaddr != _ZERO:
            # RENEWING (unicast) or REBINDING (broadcast).
            return self._grant(ctx, message.ciaddr, known_required=True)
        self.counters["ignored_message"] += 1
        return []

    def _grant(
        self, ctx: _Context, address: IPv4Address, *, known_required: bool
    ) -> list[Outgoing]:
        """ACK *address* if the client may have it; NAK or stay silent otherwise."""
        message = ctx.message
        current = self.store.lookup(ctx.client, ctx.now)
        # ``is`` first: the offered and the requested address are usually the one shared
        # object of the decoder's memo, and IPv4Address.__eq__ is a Python-level call.
        known = current is not None and (current.address is address or current.address == address)
        if known_required and not known:
            if current is not None:
                # We know this client under another address: its idea is wrong.
                return self._nak(ctx, f"client's address is {current.address}, not {address}")
            if not self.settings.authoritative:
                # RFC 2131 §4.3.2: "If the DHCP server has no record of this client, then
                # it MUST remain silent".
                self.counters["ignored_unknown_client"] += 1
                return []
        boot = self._boot(ctx)
        if boot is None:
            return []
        requested_time = message.options.u32(c.OPT_LEASE_TIME)
        lease_time = ctx.settings.lease_time
        if requested_time is not None:
            lease_time = max(MIN_LEASE_TIME, min(lease_time, requested_time))
        lease = self.store.bind(
            ctx.client,
            message.chaddr,
            ctx.client_id,
            address,
            ctx.now,
            lease_time,
            ctx.hostname,
        )
        if lease is None:
            return self._nak(ctx, f"{address} is not available to this client")
        self.counters["acks"] += 1
        if self.on_progress is not None:
            self.on_progress(True, message.chaddr, ctx.now)
        if self.on_event is not None:
            self._event("bound", lease, message.xid, message.chaddr, ctx.interface.name)
        reply = self._reply(ctx, c.DHCPACK, lease, boot)
        return [] if reply is None else [reply]

    def _withdraw_offer(self, ctx: _Context) -> None:
        current = self.store.lookup(ctx.client, ctx.now)
        if current is not None and current.state is LeaseState.OFFERED:
            self.store.release(ctx.client, current.address, ctx.now)

    def _decline(self, ctx: _Context) -> list[Outgoing]:
        options = ctx.message.options
        server_id = options.ip(c.OPT_SERVER_ID)
        address = options.ip(c.OPT_REQUESTED_IP)
        if address is None or (server_id is not None and server_id != ctx.server_id):
            self.counters["ignored_message"] += 1
            return []
        decline = self.store.decline(
            ctx.client, address, ctx.now, self.settings.decline_quarantine
        )
        if decline is not None:
            self.counters["declines"] += 1
            self._event("declined", None, ctx.message.xid, ctx.message.chaddr,
                        ctx.interface.name, str(address))
        return []

    def _release(self, ctx: _Context) -> list[Outgoing]:
        server_id = ctx.message.options.ip(c.OPT_SERVER_ID)
        if server_id is not None and server_id != ctx.server_id:
            self.counters["ignored_other_server"] += 1
            return []
        freed = self.store.release(ctx.client, ctx.message.ciaddr, ctx.now)
        if freed is not None:
            self.counters["releases"] += 1
            self._event("released", freed, ctx.message.xid, ctx.message.chaddr,
                        ctx.interface.name)
        return []

    def _inform(self, ctx: _Context) -> list[Outgoing]:
        if ctx.message.ciaddr == _ZERO:
            self.counters["ignored_message"] += 1
            return []
        boot = self._boot(ctx)
        if boot is None:
            return []
        self.counters["informs"] += 1
        return _one(self._reply(ctx, c.DHCPACK, None, boot))

    _handlers: ClassVar[dict[int, Callable[[DhcpServerCore, _Context], list[Outgoing]]]] = {
        c.DHCPDISCOVER: _discover,
        c.DHCPREQUEST: _request,
        c.DHCPDECLINE: _decline,
        c.DHCPRELEASE: _release,
        c.DHCPINFORM: _inform,
    }

    # -- replies -----------------------------------------------------------------------

    def _boot(self, ctx: _Context) -> BootDecision | _NoBoot | None:
        """Boot options for a network-boot client; ``None`` = policy says ignore.

        The policy is asked on every packet (a policy change acts on the next one); what
        :func:`decide_boot` makes of its answer is memoised (:meth:`_decide`)."""
        facts = ctx.facts
        firmware = facts.firmware  # ClientInfo.firmware, without building ClientInfo
        if firmware is Firmware.OS:
            return _NO_BOOT
        message = ctx.message
        # The same Machine as Machine.from_client(ctx.classify(), ...), without ClientInfo.
        machine = Machine.from_message(message, facts, hostname=ctx.hostname,
                                       interface=ctx.interface.name)
        spec = self.policy.boot_spec(machine)
        recently = firmware is Firmware.IPXE and self.chainloads.recent(
            message.chaddr, message.xid, ctx.now
        )
        if spec is None:  # decide_boot's first rule: the policy ignores this machine
            self.counters["ignored_by_policy"] += 1
            return None
        decision = self._decide(facts, machine.arch, spec, ctx.server_id, recently,
                                ctx.classify)
        if decision.kind is BootKind.IGNORE:
            self.counters["ignored_by_policy"] += 1
            return None
        if decision.chainload:
            self.chainloads.note(message.chaddr, message.xid, ctx.now)
        if not decision.boots:
            return _NO_BOOT
        return decision

    def _decide(self, facts: ModelFacts, arch: Arch, spec: BootSpec,
                server: IPv4Address, recently: bool,
                classify: Callable[[], ClientInfo]) -> BootDecision:
        """``decide_boot(info, spec, self._defaults_for(server), recently_chainloaded=...)``,
        memoised by everything it reads.

        *info* is ``classify()``, called only when the memo has no answer; the key reads
        *facts* (its :func:`~pxestack.dhcp.client.model_facts`) and *arch* (``info.arch``).

        :func:`decide_boot` is a pure function of the client's firmware, architecture, user
        classes and iPXE features/version (the same for every machine of a model), the
        policy's answer, the boot defaults of *server* and *recently*.  The answer is keyed
        by the policy answer's *value* (a policy may build a new spec per packet), the
        client's model facts and the identity of *server* (an interface's address, one
        long-lived object, kept in the entry so its ``id`` is not reused while the entry
        lives).  Bounded in entries (cleared when full) and in the peer-supplied size of a
        key, so a flood of distinct large keys cannot grow memory.
        """
        next_server = spec.next_server
        key = (
            id(server),
            id(facts.firmware),  # enum members live forever; their hash runs Python code
            id(arch),
            facts.user_classes,
            facts.ipxe_features,
            facts.ipxe_version,
            spec.ipxe_script_url,
            spec.boot_file,
            None if next_server is None else next_server.packed,
            spec.local_boot,
            id(spec.loader),  # None or an enum member: both live forever
            recently,
        )
        memo = self._decision_memo
        entry = memo.get(key)
        if entry is not None and entry[0] is server:
            return entry[1]
        decision = decide_boot(classify(), spec, self._defaults_for(server),
                               recently_chainloaded=recently)
        version = facts.ipxe_version
        if sum(map(len, facts.user_classes)) + (0 if version is None else len(version)) <= (
            _DECISION_MEMO_KEY_OCTETS
        ):  # peer-sized parts of the key: a flood of large distinct ones is not kept
            if len(memo) >= _DECISION_MEMO_ENTRIES:
                memo.clear()
            memo[key] = (server, decision)
        return decision

    def _defaults_for(self, server: IPv4Address) -> BootDefaults:
        """The boot defaults with *server* as server address (cached per interface).

        The last answer is kept by identity first: *server* is an interface's address, one
        long-lived object, so most packets skip ``int()`` (a Python-level call)."""
        last = self._last_defaults
        if last is not None and last[0] is server:
            return last[1]
        key = int(server)  # an int hashes in C; an IPv4Address in Python
        defaults = self._boot_by_server.get(key)
        if defaults is None:
            defaults = replace(self.boot, server_address=server)
            self._boot_by_server[key] = defaults
        self._last_defaults = (server, defaults)
        return defaults

    def _reply(
        self,
        ctx: _Context,
        reply_type: int,
        lease: Lease | None,
        boot: BootDecision | _NoBoot,
    ) -> Outgoing | None:
        message = ctx.message
        settings = ctx.settings
        request_items = message.options.items_view()
        lease_time: int | None = None
        if lease is not None:
            lease_time = max(0, round(lease.expires - ctx.now)) if (
                lease.state is LeaseState.BOUND
            ) else settings.lease_time
        # Option 55 as raw octets: ``code in wanted`` works on bytes, no set to build.
        wanted = request_items.get(c.OPT_PARAMETER_REQUEST_LIST)
        host_name = None
        if lease is not None and lease.hostname and lease.hostname != ctx.hostname:
            # A reservation's host name (RFC 2132 §3.14), when the client did not send it.
            host_name = lease.hostname
        relay_info = request_items.get(c.OPT_RELAY_AGENT_INFO)
        giaddr = message.giaddr
        if relay_info is not None and (giaddr is _ZERO or giaddr == _ZERO):
            relay_info = None
        decision = boot if isinstance(boot, BootDecision) else None
        if host_name is None and relay_info is None and (
            wanted is None or len(wanted) <= _CACHED_REQUEST_LIST_OCTETS
        ):
            # Every other input of the options is configuration: the set is encoded once.
            reply_options, options_size = self._cached_reply_options(
                reply_type, ctx.interface.packed_address, lease_time, settings, wanted,
                decision,
            )
        else:
            items = self._reply_items(
                reply_type, ctx.interface.packed_address, lease_time, settings, wanted,
                decision, host_name, relay_info,
            )
            reply_options = DhcpOptions._trusted(items)
            options_size = _encoded_size(items)
        # Option 57 as the classification read it (a malformed one counts as absent there
        # too), so the options are not parsed again: reply_size_limit's rule.
        max_size = size_limit(ctx.facts.max_message_size, ctx.interface.mtu)
        yiaddr = lease.address if lease is not None else _ZERO
        siaddr = _ZERO if decision is None else decision.siaddr
        # RFC 2131 Table 3: ciaddr is copied into ACKs to INFORM and renewals.
        ciaddr = message.ciaddr if reply_type == c.DHCPACK else _ZERO
        file = b"" if decision is None else decision.file
        if type(reply_options) is PreEncodedOptions and (
            reply_options.area_size <= max_size - 241
        ):
            # The cached options fit: pack the header straight from the request (the same
            # octets as encode_dhcp(build_reply(...)); no reply DhcpMessage is built).
            return encoded_outgoing(
                encode_reply(message, reply_options, yiaddr=yiaddr, siaddr=siaddr,
                             ciaddr=ciaddr, file=file),
                message, reply_options, yiaddr, siaddr, ciaddr, file,
                reply_destination(message, reply_type, yiaddr=yiaddr),
                max_size,
                c.DHCP_SERVER_PORT,
                ctx.interface.name,
            )
        draft = build_reply(message, reply_options, yiaddr=yiaddr, siaddr=siaddr,
                            ciaddr=ciaddr, file=file)
        reply = draft if options_size <= max_size - 241 else _fit(
            draft, max_size, None if wanted is None else frozenset(wanted)
        )
        if reply is None:
            self.counters["reply_too_large"] += 1
            return None
        return new_outgoing(
            reply,
            reply_destination(message, reply_type, yiaddr=yiaddr),
            max_size,
            c.DHCP_SERVER_PORT,
            ctx.interface.name,
        )

    def _reply_items(
        self,
        reply_type: int,
        server_id: bytes,
        lease_time: int | None,
        settings: SubnetSettings,
        wanted: bytes | None,
        decision: BootDecision | None,
        host_name: str | None = None,
        relay_info: bytes | None = None,
    ) -> dict[int, bytes]:
        """The options of an OFFER or ACK, in wire order (53 first, 82 last).

        *lease_time* None: no lease options (an ACK to INFORM).  *wanted*: the client's
        option 55 (None: it sent none, so every configuration option goes out).
        """
        items: dict[int, bytes] = {
            c.OPT_MESSAGE_TYPE: _ONE_OCTET[reply_type],
            c.OPT_SERVER_ID: server_id,
        }
        if lease_time is not None:
            (items[c.OPT_LEASE_TIME], items[c.OPT_RENEWAL_TIME],
             items[c.OPT_REBINDING_TIME]) = _lease_time_values(lease_time)
        mask, optional = self._subnet_options(settings)
        items[c.OPT_SUBNET_MASK] = mask
        if host_name is not None:
            optional = (*optional, (c.OPT_HOST_NAME, host_name.encode()))
        for code, value in optional:
            if wanted is None or code in wanted:
                items[code] = value
        if decision is not None:
            items.update(decision.options)
        if relay_info is not None:
            # RFC 3046 §2.2: echo the whole option, after every other option.
            items.pop(c.OPT_RELAY_AGENT_INFO, None)
            items[c.OPT_RELAY_AGENT_INFO] = relay_info
        return items

    def _cached_reply_options(
        self,
        reply_type: int,
        server_id: bytes,
        lease_time: int | None,
        settings: SubnetSettings,
        wanted: bytes | None,
        decision: BootDecision | None,
    ) -> tuple[DhcpOptions, int]:
        """The reply options for inputs that are all configuration, with their encoded size.

        Built by :meth:`_reply_items` and pre-encoded (:func:`pre_encoded_options`) once per
        distinct key; the encoder then only writes the header.  Settings and boot options
        are keyed by identity (they are long-lived, memoised values) and kept in the entry,
        so an ``id`` cannot be reused while its entry lives.  Bounded in entries.
        """
        boot_options = None if decision is None else decision.options
        key = (reply_type, server_id, lease_time, id(settings), wanted, id(boot_options))
        cache = self._reply_options_cache
        entry = cache.get(key)
        if entry is not None and entry[0] is settings and entry[1] is boot_options:
            return entry[2], entry[3]
        items = self._reply_items(reply_type, server_id, lease_time, settings, wanted,
                                  decision)
        reply_options = pre_encoded_options(items)
        size = _encoded_size(items)
        if len(cache) >= _REPLY_OPTIONS_CACHE_ENTRIES:
            cache.clear()
        cache[key] = (settings, boot_options, reply_options, size)
        return reply_options, size

    def _subnet_options(
        self, settings: SubnetSettings
    ) -> tuple[bytes, tuple[tuple[int, bytes], ...]]:
        """The subnet mask and the encoded configuration options of *settings* (encoded once
        per configured subnet: they are the same for every reply in it)."""
        cached = self._options_cache.get(id(settings))
        if cached is not None and cached[0] is settings:
            return cached[1]
        return _encode_subnet_options(settings)

    def _nak(self, ctx: _Context, reason: str) -> list[Outgoing]:
        """DHCPNAK (RFC 2131 §4.3.2, Table 3): 53, 54, 56 and the echoed option 82."""
        message = ctx.message
        items: dict[int, bytes] = {
            c.OPT_MESSAGE_TYPE: bytes((c.DHCPNAK,)),
            c.OPT_SERVER_ID: ctx.server_id.packed,
            c.OPT_MESSAGE: reason.encode()[:200],
        }
        relay_info = message.options.raw(c.OPT_RELAY_AGENT_INFO)
        if relay_info is not None and message.giaddr != _ZERO:
            items[c.OPT_RELAY_AGENT_INFO] = relay_info
        flags = message.flags
        if message.giaddr != _ZERO:
            # §4.3.2: "The server MUST set the broadcast bit in the DHCPNAK" for relays.
            flags |= c.FLAG_BROADCAST
        reply = build_reply(message, DhcpOptions._trusted(items), flags=flags)
        self.counters["naks"] += 1
        self._event("nak", None, message.xid, message.chaddr, ctx.interface.name, reason)
        return [
            Outgoing(
                message=reply,
                destination=reply_destination(message, c.DHCPNAK),
                max_size=reply_size_limit(message, mtu=ctx.interface.mtu),
                interface=ctx.interface.name,
            )
        ]

    def _event(
        self, kind: str, lease: Lease | None, xid: int, mac: bytes, interface: str,
        detail: str = "",
    ) -> None:
        if self.on_event is not None and kind in self.event_kinds:
            self.on_event(LeaseEvent(kind, lease, xid, mac, interface, detail))


def _one(reply: Outgoing | None) -> list[Outgoing]:
    return [] if reply is None else [reply]


class _NoBoot:
    """Marker: answer with an address but no boot information."""


_NO_BOOT: Final = _NoBoot()


def _encode_subnet_options(
    settings: SubnetSettings,
) -> tuple[bytes, tuple[tuple[int, bytes], ...]]:
    """The subnet mask and the encoded configuration options of one subnet."""
    network = settings.subnet.network
    optional: list[tuple[int, bytes]] = []
    if settings.routers:
        optional.append((c.OPT_ROUTER, b"".join(a.packed for a in settings.routers)))
    if settings.dns:
        optional.append((c.OPT_DNS_SERVER, b"".join(a.packed for a in settings.dns)))
    if settings.domain:
        optional.append((c.OPT_DOMAIN_NAME, settings.domain.encode()))
    optional.append((c.OPT_BROADCAST_ADDRESS, network.broadcast_address.packed))
    if settings.ntp:
        optional.append((c.OPT_NTP_SERVER, b"".join(a.packed for a in settings.ntp)))
    if settings.domain_search:
        optional.append((c.OPT_DOMAIN_SEARCH, encode_domain_search(settings.domain_search)))
    return network.netmask.packed, tuple(optional)


_LEASE_TIME_MEMO: dict[int, tuple[bytes, bytes, bytes]] = {}


def _lease_time_values(lease_time: int) -> tuple[bytes, bytes, bytes]:
    """Options 51, 58 and 59 for *lease_time* (memoised: the values repeat).

    RFC 2131 §4.4.5: T1 = 0.5 and T2 = 0.875 of the lease time.
    """
    values = _LEASE_TIME_MEMO.get(lease_time)
    if values is None:
        values = (
            lease_time.to_bytes(4, "big"),
            (lease_time // 2).to_bytes(4, "big"),
            (lease_time * 7 // 8).to_bytes(4, "big"),
        )
        if len(_LEASE_TIME_MEMO) >= 1024:
            _LEASE_TIME_MEMO.clear()
        _LEASE_TIME_MEMO[lease_time] = values
    return values


def _encoded_size(items: dict[int, bytes]) -> int:
    """Octets the options take on the wire, with RFC 3396 splits of long values.

    Every value costs two octets of code and length; a value over 255 octets is split into
    ``ceil(size / 255)`` pieces with two more per extra piece.  Summed with ``map`` (in C):
    this runs for every reply, and only a total over 255 can hide a long value.
    """
    values = items.values()
    total = sum(map(len, values)) + 2 * len(items)
    if total > 255:
        total += sum(2 * ((len(value) - 1) // 255) for value in values if len(value) > 255)
    return total


def _sacrifice_order(items: dict[int, bytes], wanted: frozenset[int] | None) -> list[int]:
    """Options that may be left out, least important first (see :func:`_fit`)."""

    def rank(code: int) -> int:
        if code in _BOOT:
            return 2
        return 1 if wanted is not None and code in wanted else 0

    return sorted((code for code in items if code not in _ESSENTIAL), key=rank)


def _fit(reply: DhcpMessage, max_size: int, wanted: frozenset[int] | None) -> DhcpMessage | None:
    """*reply*, with options left out until it encodes within *max_size*; None if it can't.

    RFC 2132 §9.10; a long option 55 list cannot make it larger.  The common case
    (everything fits the options area) costs one sum; only an oversized reply is
    trial-encoded (the encoder may still overload an empty ``file``/``sname``).  Order of
    sacrifice: configuration options the client did not ask for, then those it asked for,
    then boot options; the essential ones never.
    """
    items = dict(reply.options)
    if _encoded_size(items) <= max_size - 241:
        return reply
    order = _sacrifice_order(items, wanted)
    while True:
        candidate = replace(reply, options=DhcpOptions._trusted(dict(items)))
        try:
            encode_dhcp(candidate, max_size=max_size)
        except ApiMisuse:
            if not order:
                return None
            del items[order.pop(0)]
            continue
        return candidate


__all__ = [
    "COUNTERS",
    "EVENT_KINDS",
    "MIN_LEASE_TIME",
    "DhcpServerCore",
    "InterfaceInfo",
    "LeaseEvent",
    "ServerSettings",
    "SubnetSettings",
]
