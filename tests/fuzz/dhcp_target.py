"""Fuzz target: the DHCP decoder and everything the DHCP and proxyDHCP servers do with its
result.

For one input: :func:`~pxestack.wire.dhcp.decode_dhcp`; then every option accessor of
:class:`~pxestack.wire.dhcp_options.DhcpOptions` (PXE, iPXE and relay sub-options, RFC 3396
concatenated values, option 119 names ...); the classification the cores make
(:meth:`ClientInfo.from_message`, :meth:`Machine.from_message`, the reply size limit); a
fresh :class:`ProxyDhcpCore` (port 67 and port 4011) and :class:`DhcpServerCore` answering
the message, with their replies encoded; and the round trip
``decode_dhcp(encode_dhcp(m)) == m``, without overload (room for everything) and within
548 octets with overload (RFC 2132 §9.3), which the codec promises for every decoded message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from pxestack.dhcp.client import ClientInfo, model_facts, read_hostname
from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Subnet
from pxestack.dhcp.outgoing import Outgoing, reply_size_limit
from pxestack.dhcp.policy import Machine, StaticBootPolicy
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo, ServerSettings, SubnetSettings
from pxestack.errors import ApiMisuse, MalformedPacket
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import MAX_OPTION_LENGTH, DhcpOptions

SERVER = IPv4Address("198.18.0.1")
NETWORK = IPv4Network("198.18.0.0/24")
RELAY = IPv4Address("198.19.7.1")
INTERFACE = InterfaceInfo("fuzz0", SERVER, NETWORK)
DEFAULTS = BootDefaults(server_address=SERVER, ipxe_script_url="http://198.18.0.1/boot.ipxe")
#: Large enough for any decoded message without overload: the fuzzer's inputs are far smaller
#: than this, and every option value is at most MAX_OPTION_LENGTH.
NO_LIMIT = 1 << 20


def _accessors(options: DhcpOptions) -> None:
    """Every typed getter and option view on every present code; Invalid/Truncated only."""
    getters: list[Callable[[int], object]] = [
        options.raw, options.u8, options.u16, options.u32, options.ip, options.ips,
        options.text, options.u8_list, options.u16_list,
    ]
    for code in list(options):
        assert 1 <= code <= 254 and code != c.OPT_OVERLOAD, code
        assert isinstance(options[code], bytes) and len(options[code]) <= MAX_OPTION_LENGTH
        for getter in getters:
            with contextlib.suppress(MalformedPacket):
                getter(code)
    views: list[Callable[[], object]] = [
        options.parameter_request_list, options.client_architectures, options.client_uuid,
        options.user_classes, options.pxe_suboptions, options.ipxe_suboptions,
        options.relay_agent_suboptions, options.domain_search,
    ]
    for view in views:
        with contextlib.suppress(MalformedPacket):
            view()


def _classify(message: DhcpMessage) -> None:
    """What both cores read from a message before deciding anything; never raises."""
    info = ClientInfo.from_message(message)
    assert info.chaddr == message.chaddr
    assert all(isinstance(line, str) for line in info.errors)
    _ = (info.is_pxe, info.is_ipxe, info.ipxe_supports_http, info.has_user_class("iPXE"))
    items = message.options.items_view()
    facts = model_facts(items)
    hostname, _problem = read_hostname(message.options)
    assert hostname == info.hostname
    machine = Machine.from_message(message, facts, hostname=hostname, interface="fuzz0")
    assert machine == Machine.from_client(info, interface="fuzz0")
    limit = reply_size_limit(message, mtu=1500)
    assert 548 <= limit <= 1472, limit


def _serve(message: DhcpMessage) -> None:
    """A fresh proxyDHCP core on both ports and a fresh DHCP server answer the message; every
    reply must encode within its size limit and decode again.

    A core may raise MalformedPacket (the server drops a REQUEST whose option 50 is not an
    address, for example): the protocol adapter counts that as a malformed datagram, as it
    does for the decoder's.  Any other exception is what the adapter counts as a bug.
    """
    replies: list[Outgoing] = []
    proxy = ProxyDhcpCore(DEFAULTS, StaticBootPolicy(), relays=(RELAY,), efi_via_4011=True)
    with contextlib.suppress(MalformedPacket):
        replies += proxy.handle(message, "fuzz0", 0.0)
    with contextlib.suppress(MalformedPacket):
        replies += proxy.handle(message, "fuzz0", 1.0, port=c.PXE_PROXY_PORT,
                                source=("198.18.0.141", 68))
    subnet = Subnet(NETWORK, (AddressRange(IPv4Address("198.18.0.100"),
                                           IPv4Address("198.18.0.109")),))
    settings = ServerSettings((SubnetSettings(subnet, routers=(SERVER,), dns=(SERVER,),
                                              domain="lab.test"),),
                              relays=frozenset({RELAY}))
    server = DhcpServerCore(settings, InMemoryLeaseStore([subnet]), StaticBootPolicy(),
                            DEFAULTS)
    with contextlib.suppress(MalformedPacket):
        replies += server.handle(message, INTERFACE, 0.0)
    for outgoing in replies:
        wire = outgoing.encoded()  # ApiMisuse here is a bug: the adapter counts it as one
        assert len(wire) <= outgoing.max_size, (len(wire), outgoing.max_size)
        assert decode_dhcp(wire) == outgoing.message


def _round_trip(message: DhcpMessage) -> None:
    """decode(encode(m)) == m, with room for everything and within 548 octets + overload."""
    wire = encode_dhcp(message, max_size=NO_LIMIT, allow_overload=False)
    assert decode_dhcp(wire) == message, "round trip without overload"
    try:
        small = encode_dhcp(message)
    except ApiMisuse:
        return  # does not fit 548 octets even with overload: the encoder says so
    assert len(small) <= 548
    assert decode_dhcp(small) == message, "round trip with overload"


def one_input(data: bytes) -> None:
    """Feed one datagram through the decoder and its consumers."""
    try:
        message = decode_dhcp(data)
    except MalformedPacket:
        return
    assert message.op in (c.BOOTREQUEST, c.BOOTREPLY)
    assert len(message.chaddr) == message.hlen <= c.CHADDR_LENGTH
    assert c.OPT_PAD not in message.options and c.OPT_END not in message.options
    _accessors(message.options)
    _classify(message)
    _serve(message)
    _round_trip(message)
