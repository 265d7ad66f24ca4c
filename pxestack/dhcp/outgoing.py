"""What a DHCP core hands its adapter: the reply, where it goes and how large it may be.

Shared by the full server and the proxyDHCP core.  :func:`reply_destination` implements
RFC 2131 §4.1's destination rules, :func:`reply_size_limit` the client's option 57
(RFC 2132 §9.10), and :class:`Outgoing` is the one value both cores return to the Twisted
adapter, which only carries the destination out.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import FrozenInstanceError, dataclass
from ipaddress import IPv4Address
from typing import Final

from pxestack._records import positional_constructor, slot_filler
from pxestack.errors import MalformedPacket
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, build_reply, encode_dhcp, max_message_size
from pxestack.wire.dhcp_options import DhcpOptions, ipv4_address

_ZERO: Final = ipv4_address(0)
_BROADCAST: Final = IPv4Address("255.255.255.255")


class DestinationKind(enum.Enum):
    """How the adapter must send a reply (RFC 2131 §4.1)."""

    #: To the relay agent at giaddr, server port 67.
    RELAY = "relay"
    #: Ordinary UDP unicast to an address the client already owns (ciaddr, port 4011 peer).
    UNICAST = "unicast"
    #: To 255.255.255.255, client port 68.
    BROADCAST = "broadcast"
    #: To yiaddr at the client's hardware address: needs a raw frame (the client has no
    #: address yet, so no ARP entry); an adapter without raw sockets broadcasts instead.
    LINK_UNICAST = "link-unicast"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a reply goes."""

    kind: DestinationKind
    address: IPv4Address
    port: int
    #: The client's hardware address, for LINK_UNICAST frames.
    chaddr: bytes = b""


#: The inputs of :func:`~pxestack.wire.dhcp.build_reply` an encoded reply was made from:
#: request, options, yiaddr, siaddr, ciaddr, file.
Recipe = tuple[DhcpMessage, DhcpOptions, IPv4Address, IPv4Address, IPv4Address, bytes]


class Outgoing:
    """One reply a sans-IO core asks its adapter to send.

    The adapter sends :meth:`encoded` (``encode_dhcp(message, max_size=max_size)``) from
    ``source_port`` (67, or 4011 for proxy ACKs) on ``interface`` to ``destination``.

    A core may hand a reply over already encoded (:func:`encoded_outgoing`: the server's
    cached option sets, with the header packed straight from the request, see
    :func:`~pxestack.wire.dhcp.encode_reply`); its ``message`` is then built on first use
    from the same inputs, so both forms read the same.  Immutable and compared by value.
    """

    __slots__ = ("_message", "_payload", "_recipe", "destination", "interface", "max_size",
                 "reply_type", "source_port")

    _message: DhcpMessage | None
    _recipe: Recipe | None
    _payload: bytes | None
    destination: Destination
    max_size: int
    source_port: int
    interface: str | None
    #: The reply's option 53 as raw octets (None when absent): what the adapter counts
    #: replies by, read once when the reply is made rather than per reader.
    reply_type: bytes | None

    def __init__(self, message: DhcpMessage, destination: Destination, max_size: int,
                 source_port: int = c.DHCP_SERVER_PORT, interface: str | None = None) -> None:
        """A reply for the adapter to encode."""
        _fill_outgoing(self, message, None, None, destination, max_size, source_port, interface,
                       message.options.by_code.get(c.OPT_MESSAGE_TYPE))

    @property
    def message(self) -> DhcpMessage:
        """The reply (built from the encoder's inputs on first use, for an encoded one)."""
        message = self._message
        if message is None:
            assert self._recipe is not None  # one of the two is always set
            request, options, yiaddr, siaddr, ciaddr, file = self._recipe
            message = build_reply(request, options, yiaddr=yiaddr, siaddr=siaddr,
                                  ciaddr=ciaddr, file=file)
            object.__setattr__(self, "_message", message)
        return message

    def encoded(self) -> bytes:
        """The UDP payload: ``encode_dhcp(message, max_size=max_size)``.

        Raises :class:`~pxestack.errors.ApiMisuse` if the reply cannot be encoded."""
        payload = self._payload
        if payload is None:
            payload = encode_dhcp(self.message, max_size=self.max_size)
        return payload

    def _fields(self) -> tuple[object, ...]:
        return (self.message, self.destination, self.max_size, self.source_port,
                self.interface)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Outgoing:
            return NotImplemented
        assert isinstance(other, Outgoing)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"Outgoing(message={self.message!r}, destination={self.destination!r}, "
                f"max_size={self.max_size!r}, source_port={self.source_port!r}, "
                f"interface={self.interface!r})")

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


#: Every slot of an :class:`Outgoing`, positionally (a reply is built per packet; its own
#: ``__setattr__`` refuses, as a frozen dataclass's does).
_SLOTS: Final = ("_message", "_recipe", "_payload", "destination", "max_size", "source_port",
                 "interface", "reply_type")
_new_outgoing: Final = positional_constructor(Outgoing, _SLOTS)
_fill_outgoing: Final = slot_filler(Outgoing, _SLOTS)


def new_outgoing(message: DhcpMessage, destination: Destination, max_size: int,
                 source_port: int, interface: str | None) -> Outgoing:
    """``Outgoing(...)`` with every field given positionally, without ``__init__``."""
    outgoing: Outgoing = _new_outgoing(message, None, None, destination, max_size,
                                       source_port, interface,
                                       message.options.by_code.get(c.OPT_MESSAGE_TYPE))
    return outgoing


def encoded_outgoing(
    payload: bytes,
    recipe: Recipe,
    destination: Destination,
    max_size: int,
    source_port: int,
    interface: str | None,
) -> Outgoing:
    """An :class:`Outgoing` whose *payload* is ``encode_dhcp(build_reply(*recipe),
    max_size=max_size)``, already encoded (see :func:`~pxestack.wire.dhcp.encode_reply`);
    its ``message`` is that ``build_reply(...)``, built only if someone reads it."""
    outgoing: Outgoing = _new_outgoing(None, recipe, payload, destination, max_size,
                                       source_port, interface,
                                       recipe[1].by_code.get(c.OPT_MESSAGE_TYPE))
    return outgoing


def reply_destination(request: DhcpMessage, reply_type: int, *,
                      yiaddr: IPv4Address = _ZERO) -> Destination:
    """RFC 2131 §4.1 (pixiecore's ``txType``, smee's ``replyDestination``):

    * giaddr set: to the relay, port 67 (the relay keeps the client's broadcast bit);
    * else a DHCPNAK: broadcast ("when giaddr is zero the server broadcasts any DHCPNAK");
    * else ciaddr set: unicast to ciaddr, port 68 (RENEWING client, INFORM);
    * else broadcast flag set, or no yiaddr to send to: broadcast;
    * else unicast to yiaddr at chaddr (LINK_UNICAST; iPXE leaves the flag clear).
    """
    if request.giaddr != _ZERO:
        return Destination(DestinationKind.RELAY, request.giaddr, c.DHCP_SERVER_PORT)
    if reply_type == c.DHCPNAK:
        return Destination(DestinationKind.BROADCAST, _BROADCAST, c.DHCP_CLIENT_PORT)
    if request.ciaddr != _ZERO:
        return Destination(DestinationKind.UNICAST, request.ciaddr, c.DHCP_CLIENT_PORT)
    if request.broadcast or yiaddr == _ZERO:
        return Destination(DestinationKind.BROADCAST, _BROADCAST, c.DHCP_CLIENT_PORT)
    return Destination(DestinationKind.LINK_UNICAST, yiaddr, c.DHCP_CLIENT_PORT,
                       chaddr=request.chaddr)


def reply_size_limit(request: DhcpMessage, *, mtu: int | None = None) -> int:
    """Max DHCP payload for a reply: the client's option 57, at least 576 (RFC 2132 §9.10),
    and no more than the interface MTU allows, whatever the client asks for in option 55.
    A malformed option 57 counts as absent."""
    try:
        client_max = request.options.u16(c.OPT_MAX_MESSAGE_SIZE)
    except MalformedPacket:
        client_max = None
    return size_limit(client_max, mtu)


@functools.lru_cache(maxsize=256)
def size_limit(client_max: int | None, mtu: int | None) -> int:
    """:func:`reply_size_limit` from an already parsed option 57 (None: absent or
    malformed) and the interface MTU; memoised, as the pairs repeat (a pure function of
    two small integers: functools' own bounded cache)."""
    limit = max_message_size(client_max)
    if mtu is not None:
        limit = min(limit, max(mtu, c.DHCP_MIN_MAX_MESSAGE) - c.IP_UDP_HEADER_LENGTH)
    return limit


__all__ = [
    "Destination",
    "DestinationKind",
    "Outgoing",
    "Recipe",
    "encoded_outgoing",
    "new_outgoing",
    "reply_destination",
    "reply_size_limit",
    "size_limit",
]
