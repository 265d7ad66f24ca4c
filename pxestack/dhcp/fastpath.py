"""The DHCP server's fast path: every memo of the hot path, owned by one core instance.

:class:`~pxestack.dhcp.server.DhcpServerCore` states RFC 2131's rules; this module makes
them cheap to apply in a boot storm, where thousands of machines of a few firmware models
arrive through a few relays and get the same boot answer and the same reply options.  Each
memo here remembers a pure function of its key, so a hit gives exactly what computing it
again would; :class:`FastPath` with ``entries=0`` remembers nothing and is the plain path
(the equivalence tests run both and compare the replies octet for octet).

Every memo is a :class:`~pxestack._memo.BoundedMemo`: it holds at most ``entries``
answers and forgets all of them when full, so a flood of distinct keys costs bounded memory
and a steady state refills it in a few packets.  Keys that hold what a peer sent are also
bounded in size (:data:`MAX_PEER_KEY_OCTETS`): an answer with a larger key is computed but
not kept.

Some memos are keyed by ``id()`` of an address object.  The decoder hands out one shared
:class:`~ipaddress.IPv4Address` per value (:func:`~pxestack.wire.dhcp_options.ipv4_address`),
an ``id`` is a C call where hashing an ``IPv4Address`` runs Python code, and each entry
holds the object itself and is used only when it ``is`` that object, so an ``id`` reused
after the object died can never give another address's answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Final, NamedTuple

from pxestack._memo import BoundedMemo
from pxestack.dhcp.client import Arch, ClientInfo, ModelFacts, model_facts
from pxestack.dhcp.decide import BootDecision, BootDefaults, decide_boot
from pxestack.dhcp.outgoing import (
    Destination,
    DestinationKind,
    Outgoing,
    encoded_outgoing,
    new_outgoing,
    reply_destination,
)
from pxestack.dhcp.policy import BootSpec
from pxestack.dhcp.settings import SubnetSettings
from pxestack.wire import constants as c
from pxestack.wire.dhcp import (
    DhcpMessage,
    PreEncodedOptions,
    build_reply,
    encode_reply,
    pre_encoded_options,
)
from pxestack.wire.dhcp_options import DhcpOptions, ipv4_address

#: Answers each memo keeps by default.
DEFAULT_ENTRIES: Final = 1024
#: Largest peer-supplied part of a memo key, in octets (user classes, iPXE version, the
#: raw firmware options): a flood of large distinct values is answered but not remembered.
MAX_PEER_KEY_OCTETS: Final = 512
#: Longest option 55 whose replies are remembered (longer lists take the plain path).
MAX_REMEMBERED_REQUEST_LIST: Final = 64

#: The unset address as the decoder shares it.
_UNSET: Final = ipv4_address(0)


def is_set(address: IPv4Address) -> bool:
    """Whether a header address (ciaddr, giaddr, ...) is anything but 0.0.0.0.

    The decoder's unset addresses are one shared object, so the identity test answers
    almost every packet; the comparison covers addresses built elsewhere."""
    return address is not _UNSET and address != _UNSET


class RelayAnswer(NamedTuple):
    """What the server makes of a relayed message's giaddr."""

    #: The giaddr object the answer was made for (see the module docstring on ``id()``).
    giaddr: IPv4Address
    #: Whether giaddr is a configured relay (others are never answered).
    configured: bool
    #: The subnet containing giaddr, or None.
    settings: SubnetSettings | None


class ReplyOptions(NamedTuple):
    """The options of one reply and the octets they take on the wire."""

    options: DhcpOptions
    size: int


#: Builds the options of a reply: ``(reply_type, server_id, lease_time, settings, wanted,
#: decision) -> items`` (:meth:`DhcpServerCore._reply_items`, whose rules these are).
ReplyItemsBuilder = Callable[
    [int, bytes, "int | None", SubnetSettings, "bytes | None", "BootDecision | None"],
    dict[int, bytes],
]


class FastPath:
    """The memos of one :class:`~pxestack.dhcp.server.DhcpServerCore` (see the module
    docstring).  *subnets* and *relays* are the server's configuration; *entries* bounds
    every memo (0: the plain path, nothing remembered, replies encoded in full)."""

    def __init__(
        self,
        subnets: Iterable[SubnetSettings] = (),
        relays: Iterable[IPv4Address] = (),
        *,
        entries: int = DEFAULT_ENTRIES,
    ) -> None:
        self.remembers = entries > 0
        self._by_network = {s.subnet.network: s for s in subnets}
        self._relays = frozenset(int(relay) for relay in relays)
        self._models: BoundedMemo[tuple[bytes | None, ...], ModelFacts] = BoundedMemo(entries)
        self._subnets: BoundedMemo[int, SubnetSettings | None] = BoundedMemo(entries)
        self._relay_answers: BoundedMemo[int, RelayAnswer] = BoundedMemo(entries)
        self._destinations: BoundedMemo[int, Destination] = BoundedMemo(entries)
        self._defaults: BoundedMemo[int, tuple[IPv4Address, BootDefaults]] = (
            BoundedMemo(entries)
        )
        self._decisions: BoundedMemo[
            tuple[object, ...], tuple[IPv4Address, BootDecision]
        ] = BoundedMemo(entries)
        self._replies: BoundedMemo[
            tuple[object, ...],
            tuple[SubnetSettings, DhcpOptions | None, ReplyOptions],
        ] = BoundedMemo(entries)

    # -- what the client is --------------------------------------------------------------

    def model_facts(self, items: Mapping[int, bytes]) -> ModelFacts:
        """:func:`~pxestack.dhcp.client.model_facts`, remembered per firmware model."""
        get = items.get  # model_key(items), inlined: this runs for every packet
        key = (get(c.OPT_VENDOR_CLASS_ID), get(c.OPT_USER_CLASS), get(c.OPT_IPXE_ENCAP),
               get(c.OPT_CLIENT_ARCH), get(c.OPT_MAX_MESSAGE_SIZE))
        facts = self._models.entries.get(key)
        if facts is None:
            facts = model_facts(items)
            if sum(len(value) for value in key if value is not None) <= MAX_PEER_KEY_OCTETS:
                self._models.put(key, facts)
        return facts

    def classify(self, message: DhcpMessage) -> ClientInfo:
        """:meth:`ClientInfo.from_message <pxestack.dhcp.client.ClientInfo.from_message>`
        with the firmware model's facts remembered."""
        return ClientInfo.from_message(message, self.model_facts(message.options.by_code))

    def sizes(self) -> dict[str, int]:
        """Answers each memo holds now (each at most the ``entries`` it was made with)."""
        return {
            "models": len(self._models),
            "subnets": len(self._subnets),
            "relays": len(self._relay_answers),
            "destinations": len(self._destinations),
            "boot_defaults": len(self._defaults),
            "decisions": len(self._decisions),
            "reply_options": len(self._replies),
        }

    # -- which subnet --------------------------------------------------------------------

    def subnet_for(self, address: IPv4Address) -> SubnetSettings | None:
        """The configured subnet containing *address*, or None."""
        key = int(address)  # an int hashes in C; an IPv4Address in Python
        settings = self._subnets.entries.get(key)
        if settings is None:
            settings = next(
                (s for network, s in self._by_network.items() if address in network), None
            )
            if settings is not None:
                self._subnets.put(key, settings)
        return settings

    def relay(self, giaddr: IPv4Address) -> RelayAnswer | None:
        """What *giaddr* says about the message: None when unset (not relayed)."""
        answer = self._relay_answers.entries.get(id(giaddr))
        if answer is not None and answer.giaddr is giaddr:
            return answer
        if not is_set(giaddr):
            return None
        configured = int(giaddr) in self._relays
        answer = RelayAnswer(giaddr, configured,
                             self.subnet_for(giaddr) if configured else None)
        return self._relay_answers.put(id(giaddr), answer)

    # -- the boot decision ---------------------------------------------------------------

    def boot_defaults(self, boot: BootDefaults, server: IPv4Address) -> BootDefaults:
        """*boot* with *server* (an interface's address) as its server address."""
        entry = self._defaults.entries.get(id(server))
        if entry is not None and entry[0] is server:
            return entry[1]
        return self._defaults.put(id(server), (server, replace(boot, server_address=server)))[1]

    def decide(
        self,
        boot: BootDefaults,
        facts: ModelFacts,
        arch: Arch,
        spec: BootSpec,
        server: IPv4Address,
        recently: bool,
        classify: Callable[[], ClientInfo],
    ) -> BootDecision:
        """``decide_boot(classify(), spec, boot_defaults(boot, server), recently_...)``.

        :func:`~pxestack.dhcp.decide.decide_boot` is a pure function of the client's
        firmware, architecture, user classes and iPXE features and version (the same for
        every machine of a model), the policy's answer, the boot defaults of *server* and
        *recently*; the answer is remembered by those values (the policy's answer by value:
        a policy may build a new spec per packet), and *classify* is called only when it
        is not.  Enum members are keyed by ``id`` (they live as long as the program; their
        hash runs Python code).
        """
        next_server = spec.next_server
        key = (
            id(server),
            id(facts.firmware),
            id(arch),
            facts.user_classes,
            facts.ipxe_features,
            facts.ipxe_version,
            spec.ipxe_script_url,
            spec.boot_file,
            None if next_server is None else next_server.packed,
            spec.local_boot,
            id(spec.loader),
            recently,
        )
        entry = self._decisions.entries.get(key)
        if entry is not None and entry[0] is server:
            return entry[1]
        decision = decide_boot(classify(), spec, self.boot_defaults(boot, server),
                               recently_chainloaded=recently)
        version = facts.ipxe_version
        peer_octets = sum(map(len, facts.user_classes)) + (0 if version is None else len(version))
        if peer_octets <= MAX_PEER_KEY_OCTETS:
            self._decisions.put(key, (server, decision))
        return decision

    # -- the reply -----------------------------------------------------------------------

    def reply_options(
        self,
        build: ReplyItemsBuilder,
        reply_type: int,
        server_id: bytes,
        lease_time: int | None,
        settings: SubnetSettings,
        wanted: bytes | None,
        decision: BootDecision | None,
    ) -> ReplyOptions:
        """The options ``build(reply_type, ..., decision)`` makes, with their size.

        Every input is configuration (or a remembered boot decision), so the options are
        built and their area encoded once per distinct input
        (:func:`~pxestack.wire.dhcp.pre_encoded_options`).  Settings and boot options are
        keyed by identity (long-lived, remembered values) and held in the entry."""
        boot_options = None if decision is None else decision.options
        if not self.remembers or (wanted is not None and
                                  len(wanted) > MAX_REMEMBERED_REQUEST_LIST):
            items = build(reply_type, server_id, lease_time, settings, wanted, decision)
            return ReplyOptions(DhcpOptions._trusted(items), encoded_size(items))
        key = (reply_type, server_id, lease_time, id(settings), wanted, id(boot_options))
        entry = self._replies.entries.get(key)
        if entry is not None and entry[0] is settings and entry[1] is boot_options:
            return entry[2]
        items = build(reply_type, server_id, lease_time, settings, wanted, decision)
        answer = ReplyOptions(pre_encoded_options(items), encoded_size(items))
        self._replies.put(key, (settings, boot_options, answer))
        return answer

    def destination(self, request: DhcpMessage, reply_type: int,
                    yiaddr: IPv4Address) -> Destination:
        """:func:`~pxestack.dhcp.outgoing.reply_destination`; a relay's destination is one
        remembered value per relay."""
        giaddr = request.giaddr
        known = self._destinations.entries.get(id(giaddr))
        if known is not None and known.address is giaddr:
            return known
        destination = reply_destination(request, reply_type, yiaddr=yiaddr)
        if destination.kind is DestinationKind.RELAY and self.remembers:
            self._destinations.put(id(giaddr), destination)
        return destination

    def outgoing(
        self,
        request: DhcpMessage,
        reply_type: int,
        options: DhcpOptions,
        yiaddr: IPv4Address,
        siaddr: IPv4Address,
        ciaddr: IPv4Address,
        file: bytes,
        max_size: int,
        interface: str | None,
    ) -> Outgoing:
        """The reply ``build_reply(request, options, ...)`` whose options fit *max_size*,
        sent where :meth:`destination` says.

        Pre-encoded options (:meth:`reply_options`) are written behind a header packed
        straight from the request (:func:`~pxestack.wire.dhcp.encode_reply`: the same
        octets, no reply message built unless someone reads it)."""
        # The hit of destination(), without the call.
        destination = self._destinations.entries.get(id(request.giaddr))
        if destination is None or destination.address is not request.giaddr:
            destination = self.destination(request, reply_type, yiaddr)
        if isinstance(options, PreEncodedOptions):
            return encoded_outgoing(
                encode_reply(request, options, yiaddr=yiaddr, siaddr=siaddr, ciaddr=ciaddr,
                             file=file),
                (request, options, yiaddr, siaddr, ciaddr, file),
                destination, max_size, c.DHCP_SERVER_PORT, interface,
            )
        reply = build_reply(request, options, yiaddr=yiaddr, siaddr=siaddr, ciaddr=ciaddr,
                            file=file)
        return new_outgoing(reply, destination, max_size, c.DHCP_SERVER_PORT, interface)


def encoded_size(items: Mapping[int, bytes]) -> int:
    """Octets the options take on the wire, with RFC 3396 splits of long values.

    Every value costs two octets of code and length; a value over 255 octets is split into
    ``ceil(size / 255)`` pieces with two more per extra piece."""
    values = items.values()
    total = sum(map(len, values)) + 2 * len(items)
    if total > 255:
        total += sum(2 * ((len(value) - 1) // 255) for value in values if len(value) > 255)
    return total


__all__ = [
    "DEFAULT_ENTRIES",
    "MAX_PEER_KEY_OCTETS",
    "MAX_REMEMBERED_REQUEST_LIST",
    "BoundedMemo",
    "FastPath",
    "RelayAnswer",
    "ReplyItemsBuilder",
    "ReplyOptions",
    "encoded_size",
    "is_set",
]
