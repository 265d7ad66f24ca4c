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

What a boot storm repeats (the boot decision of each firmware model, the reply options of
each subnet, the subnet of each relay) is remembered by the core's
:class:`~pxestack.dhcp.fastpath.FastPath`; this module states the rules only, and a core
built with ``memo_entries=0`` applies them with nothing remembered (the equivalence tests
hold both to the same octets).  The reply destination and size rules are
:mod:`pxestack.dhcp.outgoing`'s.

Peer data that turns out malformed while handling (an option with a bad length read through
a typed getter) raises :class:`~pxestack.errors.MalformedPacket`, which the adapter logs and
drops exactly like a decoding error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import ClassVar, Final

from pxestack._types import Now
from pxestack.dhcp.client import ClientInfo, Firmware, ModelFacts, read_hostname
from pxestack.dhcp.decide import BootDecision, BootDefaults, BootKind, ChainloadMemory
from pxestack.dhcp.fastpath import DEFAULT_ENTRIES, FastPath, encoded_size, is_set
from pxestack.dhcp.leases import Lease, LeaseState, LeaseStore, client_key
from pxestack.dhcp.outgoing import (
    Outgoing,
    new_outgoing,
    reply_destination,
    reply_size_limit,
    size_limit,
)
from pxestack.dhcp.policy import BootPolicy, Machine
from pxestack.dhcp.settings import InterfaceInfo, ServerSettings, SubnetSettings
from pxestack.errors import ApiMisuse
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, build_reply, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions, ipv4_address

_UNSET: Final = ipv4_address(0)

#: Octets of a reply besides its options: the BOOTP header with the magic cookie (240)
#: and the END option (1).  Options fit a reply of ``max_size`` octets when they take at
#: most ``max_size - REPLY_OVERHEAD``.
REPLY_OVERHEAD: Final = 240 + 1

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
#: Message types whose sender already has an address in ciaddr (RFC 2131 §4.3.2
#: RENEWING: "the DHCP server will trust the value in 'ciaddr'").
#: Option 53 as raw octets, as :meth:`DhcpServerCore.handle` reads it.
_CIADDR_TRUSTED: Final = frozenset(
    bytes((kind,)) for kind in (c.DHCPREQUEST, c.DHCPINFORM, c.DHCPRELEASE)
)

# The enum members the handlers test, as module constants: on CPython 3.11 every attribute
# read on an Enum class (``Firmware.OS``) goes through the hook of ``EnumType.__getattr__``,
# about a thousand machine instructions, where a module constant is one dictionary lookup.
_FIRMWARE_OS: Final = Firmware.OS
_FIRMWARE_IPXE: Final = Firmware.IPXE
_IGNORE: Final = BootKind.IGNORE
_BOUND: Final = LeaseState.BOUND
_OFFERED: Final = LeaseState.OFFERED

#: Lowest lease time granted, whatever shorter time a client asks for in option 51 (seconds).
MIN_LEASE_TIME: Final = 10


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """A lease change, for logs and metrics (given to the ``on_event`` callback)."""

    kind: str
    lease: Lease | None
    xid: int
    mac: bytes
    interface: str
    detail: str = ""


@dataclass(slots=True)
class _Context:
    """What the handlers of one message share.

    The full classification (:meth:`classify`) is built on first use: a plain OS client
    gets no boot decision, so its messages only need the firmware kind and option 57
    (:attr:`facts`), and a network-boot client needs the whole :class:`ClientInfo` only
    when its boot decision is not remembered.  It is a pure function of :attr:`message`
    that never raises, so building it later gives the same value.
    """

    message: DhcpMessage
    interface: InterfaceInfo
    now: Now
    settings: SubnetSettings
    #: Our option 54 on this interface (its address).
    server_id: IPv4Address
    #: The lease key of the client (:func:`~pxestack.dhcp.leases.client_key`).
    client: bytes
    #: Option 61, None when absent or empty (chaddr then identifies the client).
    client_id: bytes | None
    #: What the firmware-describing options say (:func:`~pxestack.dhcp.client.model_facts`).
    facts: ModelFacts
    #: The client's option 12 as :attr:`ClientInfo.hostname` has it (None: absent or invalid).
    hostname: str | None
    _info: ClientInfo | None = None

    def classify(self) -> ClientInfo:
        """:meth:`ClientInfo.from_message` of the message, built once, on first use."""
        info = self._info
        if info is None:
            info = self._info = ClientInfo.from_message(self.message, self.facts)
        return info


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
    :param memo_entries: the bound of each memo of the fast path
        (:class:`~pxestack.dhcp.fastpath.FastPath`); 0 takes the plain path, which remembers
        nothing and gives the same replies.
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
        memo_entries: int = DEFAULT_ENTRIES,
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
        self.fast = FastPath(settings.subnets, settings.relays, entries=memo_entries)
        #: Asked with ``(message, interface, firmware, now)`` before each OFFER; False: no
        #: answer now (:mod:`pxestack.dhcp.admission`).  None: every DISCOVER answered.
        self.admission: Callable[[DhcpMessage, InterfaceInfo, Firmware, Now], bool] | None = None

    # -- entry point -----------------------------------------------------------------

    def handle(self, message: DhcpMessage, interface: InterfaceInfo, now: Now) -> list[Outgoing]:
        """Process one decoded message that arrived on *interface* at *now*."""
        items = message.options.by_code
        # Option 53's raw octets pick the handler: a message without it (BOOTP, not
        # served), a malformed one and an unknown type all find none.
        raw_type = items.get(c.OPT_MESSAGE_TYPE)
        handler = self._handlers.get(raw_type)
        if handler is None or message.op != c.BOOTREQUEST or not message.chaddr:
            self.counters["ignored_message"] += 1  # an empty chaddr names nobody
            return []
        relay = self.fast.relay(message.giaddr)
        if relay is not None and not relay.configured:
            self.counters["ignored_relay"] += 1  # never a reflector for unknown relays
            return []
        if relay is not None:
            settings = relay.settings  # RFC 2131 §4.3.1: the subnet of giaddr
        elif raw_type in _CIADDR_TRUSTED and is_set(message.ciaddr):
            settings = self.fast.subnet_for(message.ciaddr)
        else:
            settings = self.fast.subnet_for(interface.address)
        if settings is None:
            self.counters["ignored_no_subnet"] += 1  # no subnet: ignored, not an error
            return []
        # A zero-length client identifier is ignored; chaddr identifies the client.
        client_id = items.get(c.OPT_CLIENT_ID) or None
        client = client_key(message.chaddr, client_id,
                            match_client_id=self.settings.match_client_id)
        facts = self.fast.model_facts(items)
        hostname = read_hostname(message.options)[0] if c.OPT_HOST_NAME in items else None
        # In field order: a class call with keyword arguments builds a dictionary per call.
        context = _Context(message, interface, now, settings, interface.address, client,
                           client_id, facts, hostname)
        return handler(self, context)

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
        if self.admission is not None and not self.admit_offer(  # no gate: all admitted
            message, ctx.interface, ctx.facts.firmware, ctx.now
        ):
            return []
        requested = message.options.ip(c.OPT_REQUESTED_IP)
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
        if self.on_event is not None:  # a per-packet event: no call when nobody listens
            self._event("offered", lease, message.xid, message.chaddr, ctx.interface.name)
        reply = self._reply(ctx, c.DHCPOFFER, lease, boot)
        return [] if reply is None else [reply]

    def admit_offer(self, message: DhcpMessage, interface: InterfaceInfo, firmware: Firmware,
                    now: Now) -> bool:
        """Whether a DISCOVER that would get an OFFER gets it now; the one place the
        DISCOVER path asks, after the policy and before an address is held.

        Without :attr:`admission` every DISCOVER the policy answers is offered an address.
        During a boot storm larger than the TFTP and HTTP servers can feed, the admission
        gate (:mod:`pxestack.dhcp.admission`) answers False for new machines to defer; the
        client retransmits its DISCOVER (RFC 2131 §4.1), so a deferred client is asked
        again later."""
        admission = self.admission
        return admission is None or admission(message, interface, firmware, now)

    def _request(self, ctx: _Context) -> list[Outgoing]:
        message = ctx.message
        options = message.options
        server_id = options.ip(c.OPT_SERVER_ID)
        requested = options.ip(c.OPT_REQUESTED_IP)
        has_ciaddr = is_set(message.ciaddr)
        if server_id is not None:
            # SELECTING (RFC 2131 §4.3.2).
            if server_id != ctx.server_id:
                # The client chose another server: our offer is withdrawn.
                self._withdraw_offer(ctx)
                self.counters["ignored_other_server"] += 1
                return []
            if requested is None or has_ciaddr:
                return self._nak(ctx, "SELECTING request without option 50")
            return self._grant(ctx, requested, known_required=False)
        if requested is not None and not has_ciaddr:
            # INIT-REBOOT: "SHOULD send a DHCPNAK ... if the requested IP address is
            # incorrect, or is on the wrong network".
            if requested not in ctx.settings.subnet.network:
                return self._nak(ctx, f"{requested} is on the wrong network")
            return self._grant(ctx, requested, known_required=True)
        if has_ciaddr:
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
        # ``is`` first: the offered and the requested address are usually the decoder's
        # one shared object, and ``IPv4Address.__eq__`` runs Python code.
        known = current is not None and (current.address is address or
                                         current.address == address)
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
        if self.on_event is not None:  # a per-packet event: no call when nobody listens
            self._event("bound", lease, message.xid, message.chaddr, ctx.interface.name)
        reply = self._reply(ctx, c.DHCPACK, lease, boot)
        return [] if reply is None else [reply]

    def _withdraw_offer(self, ctx: _Context) -> None:
        current = self.store.lookup(ctx.client, ctx.now)
        if current is not None and current.state is _OFFERED:
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
        if not is_set(ctx.message.ciaddr):
            self.counters["ignored_message"] += 1
            return []
        boot = self._boot(ctx)
        if boot is None:
            return []
        self.counters["informs"] += 1
        return _one(self._reply(ctx, c.DHCPACK, None, boot))

    #: The handler of each message type, keyed by option 53 as raw octets (one octet,
    #: RFC 2132 §9.6), so that reading the option and dispatching are one lookup.
    _handlers: ClassVar[
        dict[bytes | None, Callable[[DhcpServerCore, _Context], list[Outgoing]]]
    ] = {
        bytes((c.DHCPDISCOVER,)): _discover,
        bytes((c.DHCPREQUEST,)): _request,
        bytes((c.DHCPDECLINE,)): _decline,
        bytes((c.DHCPRELEASE,)): _release,
        bytes((c.DHCPINFORM,)): _inform,
    }

    # -- replies -----------------------------------------------------------------------

    def _boot(self, ctx: _Context) -> BootDecision | _NoBoot | None:
        """Boot options for a network-boot client; ``None`` = policy says ignore.

        The policy is asked on every packet (a policy change acts on the next one); what
        :func:`~pxestack.dhcp.decide.decide_boot` makes of its answer is remembered by the
        fast path (:meth:`~pxestack.dhcp.fastpath.FastPath.decide`)."""
        facts = ctx.facts
        if facts.firmware is _FIRMWARE_OS:
            return _NO_BOOT
        message = ctx.message
        machine = Machine.from_message(message, facts, hostname=ctx.hostname,
                                       interface=ctx.interface.name)
        spec = self.policy.boot_spec(machine)
        if spec is None:  # decide_boot's first rule: the policy ignores this machine
            self.counters["ignored_by_policy"] += 1
            return None
        recently = facts.firmware is _FIRMWARE_IPXE and self.chainloads.recent(
            message.chaddr, message.xid, ctx.now
        )
        decision = self.fast.decide(self.boot, facts, machine.arch, spec, ctx.server_id,
                                    recently, ctx.classify)
        if decision.kind is _IGNORE:
            self.counters["ignored_by_policy"] += 1
            return None
        if decision.chainload:
            self.chainloads.note(message.chaddr, message.xid, ctx.now)
        if not decision.boots:
            return _NO_BOOT
        return decision

    def _reply(
        self,
        ctx: _Context,
        reply_type: int,
        lease: Lease | None,
        boot: BootDecision | _NoBoot,
    ) -> Outgoing | None:
        """An OFFER or ACK (RFC 2131 §4.3.1 Table 3) of *lease* with the boot options."""
        message = ctx.message
        settings = ctx.settings
        request_items = message.options.by_code
        lease_time: int | None = None
        if lease is not None:
            lease_time = max(0, round(lease.expires - ctx.now)) if (
                lease.state is _BOUND
            ) else settings.lease_time
        # Option 55 as raw octets: ``code in wanted`` works on bytes, no set to build.
        wanted = request_items.get(c.OPT_PARAMETER_REQUEST_LIST)
        host_name = None
        if lease is not None and lease.hostname and lease.hostname != ctx.hostname:
            # A reservation's host name (RFC 2132 §3.14), when the client did not send it.
            host_name = lease.hostname
        relay_info = request_items.get(c.OPT_RELAY_AGENT_INFO)
        if relay_info is not None and not is_set(message.giaddr):
            relay_info = None  # RFC 3046 §2.2: option 82 is echoed to relays only
        decision = boot if isinstance(boot, BootDecision) else None
        server_id = ctx.interface.packed_address
        if host_name is None and relay_info is None:
            # Every input of the options is configuration: the fast path remembers them.
            options, options_size = self.fast.reply_options(
                self._reply_items, reply_type, server_id, lease_time, settings, wanted,
                decision,
            )
        else:
            items = self._reply_items(reply_type, server_id, lease_time, settings, wanted,
                                      decision, host_name, relay_info)
            options, options_size = DhcpOptions._trusted(items), encoded_size(items)
        # Option 57 as the classification read it (a malformed one counts as absent there
        # too), so the options are not parsed again: reply_size_limit's rule.
        max_size = size_limit(ctx.facts.max_message_size, ctx.interface.mtu)
        yiaddr = lease.address if lease is not None else _UNSET
        siaddr = _UNSET if decision is None else decision.siaddr
        # RFC 2131 Table 3: ciaddr is copied into ACKs to INFORM and renewals.
        ciaddr = message.ciaddr if reply_type == c.DHCPACK else _UNSET
        file = b"" if decision is None else decision.file
        if options_size <= max_size - REPLY_OVERHEAD:
            return self.fast.outgoing(message, reply_type, options, yiaddr, siaddr, ciaddr,
                                      file, max_size, ctx.interface.name)
        draft = build_reply(message, options, yiaddr=yiaddr, siaddr=siaddr, ciaddr=ciaddr,
                            file=file)
        reply = _fit(draft, max_size, None if wanted is None else frozenset(wanted))
        if reply is None:
            self.counters["reply_too_large"] += 1
            return None
        return new_outgoing(reply, self.fast.destination(message, reply_type, yiaddr),
                            max_size, c.DHCP_SERVER_PORT, ctx.interface.name)

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
            c.OPT_MESSAGE_TYPE: bytes((reply_type,)),
            c.OPT_SERVER_ID: server_id,
        }
        if lease_time is not None:
            # RFC 2131 §4.4.5: T1 = 0.5 and T2 = 0.875 of the lease time.
            items[c.OPT_LEASE_TIME] = lease_time.to_bytes(4, "big")
            items[c.OPT_RENEWAL_TIME] = (lease_time // 2).to_bytes(4, "big")
            items[c.OPT_REBINDING_TIME] = (lease_time * 7 // 8).to_bytes(4, "big")
        items[c.OPT_SUBNET_MASK] = settings.mask_option
        optional = settings.optional_options
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

    def _nak(self, ctx: _Context, reason: str) -> list[Outgoing]:
        """DHCPNAK (RFC 2131 §4.3.2, Table 3): 53, 54, 56 and the echoed option 82."""
        message = ctx.message
        relayed = is_set(message.giaddr)
        items: dict[int, bytes] = {
            c.OPT_MESSAGE_TYPE: bytes((c.DHCPNAK,)),
            c.OPT_SERVER_ID: ctx.server_id.packed,
            c.OPT_MESSAGE: reason.encode()[:200],
        }
        relay_info = message.options.raw(c.OPT_RELAY_AGENT_INFO)
        if relay_info is not None and relayed:
            items[c.OPT_RELAY_AGENT_INFO] = relay_info
        flags = message.flags
        if relayed:
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


def _sacrifice_order(items: dict[int, bytes], wanted: frozenset[int] | None) -> list[int]:
    """Options that may be left out, least important first (see :func:`_fit`)."""

    def rank(code: int) -> int:
        if code in _BOOT:
            return 2
        return 1 if wanted is not None and code in wanted else 0

    return sorted((code for code in items if code not in _ESSENTIAL), key=rank)


def _fit(reply: DhcpMessage, max_size: int, wanted: frozenset[int] | None) -> DhcpMessage | None:
    """*reply*, with options left out until it encodes within *max_size*; None if it can't.

    RFC 2132 §9.10; a long option 55 list cannot make it larger.  Only an oversized reply
    gets here; it is trial-encoded (the encoder may still overload an empty
    ``file``/``sname``).  Order of sacrifice: configuration options the client did not ask
    for, then those it asked for, then boot options; the essential ones never.
    """
    items = dict(reply.options)
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
    "REPLY_OVERHEAD",
    "DhcpServerCore",
    "InterfaceInfo",
    "LeaseEvent",
    "ServerSettings",
    "SubnetSettings",
]
