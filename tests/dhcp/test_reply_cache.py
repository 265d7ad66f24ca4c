"""The pre-encoded reply options give the same octets as the general encoder.

The server caches the options of OFFERs and ACKs whose inputs are all configuration
(:meth:`~pxestack.dhcp.fastpath.FastPath.reply_options`), pre-encoded once
(:func:`~pxestack.wire.dhcp.pre_encoded_options`); the encoder then copies the area behind
the header.  These tests hold the cached path to the general one, byte for byte.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

import pytest
from dhcp_samples import SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from test_server import IFACE, RELAY, make_core, message

from pxestack.dhcp.outgoing import (
    Destination,
    DestinationKind,
    Outgoing,
    encoded_outgoing,
    new_outgoing,
)
from pxestack.dhcp.protocol import DhcpServerProtocol
from pxestack.dhcp.server import DhcpServerCore
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
from pxestack.wire.dhcp_options import DhcpOptions

NOW = 1_000_000.0

option_items = st.dictionaries(
    st.integers(1, 254), st.binary(max_size=300), max_size=10,
)
addresses = st.sampled_from([IPv4Address(0), IPv4Address("198.18.0.7"),
                             IPv4Address("255.255.255.255")])


def _general(reply: DhcpMessage) -> DhcpMessage:
    """*reply* with its options as a plain DhcpOptions (the encoder's general path)."""
    return reply.replace(options=DhcpOptions(dict(reply.options)))


def _encode_or_error(message: DhcpMessage, max_size: int) -> bytes | type[Exception]:
    try:
        return encode_dhcp(message, max_size=max_size)
    except ApiMisuse as exc:
        return type(exc)


@settings(max_examples=200, deadline=None)
@given(
    items=option_items,
    max_size=st.sampled_from([300, 548, 576, 1472]),
    xid=st.integers(0, 2**32 - 1),
    chaddr=st.binary(min_size=0, max_size=16),
    yiaddr=addresses,
    giaddr=addresses,
    file=st.binary(max_size=130).filter(lambda raw: b"\x00" not in raw),
)
def test_pre_encoded_options_encode_like_plain_options(
    items: dict[int, bytes], max_size: int, xid: int, chaddr: bytes, yiaddr: IPv4Address,
    giaddr: IPv4Address, file: bytes,
) -> None:
    plain = DhcpOptions(items)
    pre = pre_encoded_options(items)
    assert pre == plain
    request = DhcpMessage(op=c.BOOTREQUEST, xid=xid, chaddr=chaddr, hlen=len(chaddr),
                          giaddr=giaddr, flags=c.FLAG_BROADCAST)
    reply_plain = build_reply(request, plain, yiaddr=yiaddr, file=file)
    reply_pre = build_reply(request, pre, yiaddr=yiaddr, file=file)
    assert reply_pre == reply_plain
    assert _encode_or_error(reply_pre, max_size) == _encode_or_error(reply_plain, max_size)


def test_only_one_pass_areas_are_pre_encoded() -> None:
    assert isinstance(pre_encoded_options({c.OPT_MESSAGE_TYPE: b"\x02", 1: bytes(4)}),
                      PreEncodedOptions)
    # A value to split (RFC 3396) or a codec-managed code keeps the general path.
    assert type(pre_encoded_options({c.OPT_BOOTFILE_NAME: bytes(300)})) is DhcpOptions
    assert type(pre_encoded_options({c.OPT_OVERLOAD: b"\x01"})) is DhcpOptions
    with pytest.raises(ApiMisuse):
        encode_dhcp(DhcpMessage(op=c.BOOTREPLY, xid=1, chaddr=bytes(6),
                                options=pre_encoded_options({c.OPT_OVERLOAD: b"\x01"})))


def _requests() -> list[tuple[str, DhcpMessage]]:
    """The sample clients (on-link and relayed) and the edge cases of the options."""
    cases: list[tuple[str, DhcpMessage]] = []
    for name, build in SAMPLES.items():
        sample = build()
        if sample.op != c.BOOTREQUEST:
            continue
        cases.append((name, sample))
        cases.append((f"{name} relayed", sample.replace(giaddr=RELAY, hops=1)))
    prl = bytes((1, 3, 6, 15, 28, 51, 54))
    cases += [
        ("no prl", message(c.DHCPDISCOVER, 1)),
        ("prl", message(c.DHCPDISCOVER, 2, prl=prl)),
        ("other prl order", message(c.DHCPDISCOVER, 3, prl=bytes(reversed(prl)))),
        ("long prl", message(c.DHCPDISCOVER, 4, prl=bytes(range(1, 120)))),
        ("relay info", message(c.DHCPDISCOVER, 5, giaddr=RELAY, relay_info=b"\x01\x02ab")),
        ("small max size", message(c.DHCPDISCOVER, 6, max_size=(576).to_bytes(2, "big"))),
        ("short lease", message(c.DHCPDISCOVER, 7, lease_time=(60).to_bytes(4, "big"))),
    ]
    return cases


def _exchange(core: DhcpServerCore, request: DhcpMessage) -> list[Outgoing]:
    return core.handle(request, IFACE, NOW)


@pytest.mark.parametrize(("name", "request_message"), _requests(), ids=lambda v: str(v)[:40])
def test_cached_replies_match_the_general_encoder(name: str,
                                                  request_message: DhcpMessage) -> None:
    core, _, _ = make_core()
    for _ in range(2):  # the second DISCOVER hits the cache and gets the same offer
        replies = _exchange(core, request_message)
        for reply in replies:
            cached = encode_dhcp(reply.message, max_size=reply.max_size)
            assert cached == encode_dhcp(_general(reply.message), max_size=reply.max_size)
    offers = [r for r in replies if r.message.message_type == c.DHCPOFFER]
    if not offers:
        return
    offer = offers[0].message
    ack_request = request_message.replace(options=DhcpOptions({
        **dict(request_message.options),
        c.OPT_MESSAGE_TYPE: bytes((c.DHCPREQUEST,)),
        c.OPT_REQUESTED_IP: offer.yiaddr.packed,
        c.OPT_SERVER_ID: IFACE.address.packed,
    }))
    acks = _exchange(core, ack_request)
    assert [r.message.message_type for r in acks] == [c.DHCPACK]
    ack = acks[0]
    assert encode_dhcp(ack.message, max_size=ack.max_size) == encode_dhcp(
        _general(ack.message), max_size=ack.max_size
    )


def test_cache_keys_keep_replies_apart() -> None:
    """Clients that differ in what the options depend on never share a cached set."""
    core, _, _ = make_core()
    relay_info = b"\x01\x03abc"
    first = _exchange(core, message(c.DHCPDISCOVER, 1, prl=bytes((1, 3))))[0].message
    second = _exchange(core, message(c.DHCPDISCOVER, 2, prl=bytes((1, 6))))[0].message
    relayed = _exchange(core, message(c.DHCPDISCOVER, 3, giaddr=RELAY,
                                      relay_info=relay_info))[0].message
    assert c.OPT_ROUTER in first.options and c.OPT_DNS_SERVER not in first.options
    assert c.OPT_DNS_SERVER in second.options and c.OPT_ROUTER not in second.options
    assert list(relayed.options)[-1] == c.OPT_RELAY_AGENT_INFO
    assert relayed.options[c.OPT_RELAY_AGENT_INFO] == relay_info
    again = _exchange(core, message(c.DHCPDISCOVER, 4, prl=bytes((1, 3))))[0].message
    assert again.options is first.options  # a cache hit: the same immutable value
    assert isinstance(first.options, PreEncodedOptions)


# --- replies encoded by the core (docs/dhcp.md §11) ----------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    items=option_items,
    max_size=st.sampled_from([300, 548, 576, 1472]),
    xid=st.integers(0, 2**32 - 1),
    chaddr=st.binary(min_size=0, max_size=16),
    hlen_matches=st.booleans(),
    htype=st.integers(0, 255),
    flags=st.integers(0, 0xFFFF),
    yiaddr=addresses,
    siaddr=addresses,
    ciaddr=addresses,
    giaddr=addresses,
    file=st.binary(max_size=130).filter(lambda raw: b"\x00" not in raw),
)
def test_encode_reply_gives_the_octets_of_build_reply_and_encode_dhcp(
    items: dict[int, bytes], max_size: int, xid: int, chaddr: bytes, hlen_matches: bool,
    htype: int, flags: int, yiaddr: IPv4Address, siaddr: IPv4Address, ciaddr: IPv4Address,
    giaddr: IPv4Address, file: bytes,
) -> None:
    """``encode_reply`` packs the header from the request: the same octets (or the same
    error) as building the reply and encoding it, whenever the pre-encoded area fits."""
    items.pop(c.OPT_MESSAGE_TYPE, None)
    options = pre_encoded_options({c.OPT_MESSAGE_TYPE: b"\x02", **items})
    if not isinstance(options, PreEncodedOptions) or options.area_size > max_size - 241:
        return  # the server takes the general path for these
    request = DhcpMessage(op=c.BOOTREQUEST, xid=xid, chaddr=chaddr, htype=htype,
                          hlen=len(chaddr), giaddr=giaddr, flags=flags, hops=3, secs=9)
    if not hlen_matches:
        object.__setattr__(request, "hlen", len(chaddr) + 1)  # a bug's message: refused
    reply = build_reply(request, options, yiaddr=yiaddr, siaddr=siaddr, ciaddr=ciaddr,
                        file=file)
    expected = _encode_or_error(reply, max_size)
    try:
        direct: bytes | type[Exception] = encode_reply(
            request, options, yiaddr=yiaddr, siaddr=siaddr, ciaddr=ciaddr, file=file)
    except ApiMisuse as exc:
        direct = type(exc)
    assert direct == expected
    if isinstance(direct, bytes):
        outgoing = encoded_outgoing(direct, (request, options, yiaddr, siaddr, ciaddr, file),
                                    _DESTINATION, max_size, 67, "veth0")
        assert outgoing.encoded() is direct
        assert outgoing.reply_type == b"\x02"
        assert outgoing.message == reply  # built on first use, from the same inputs
        assert outgoing == new_outgoing(reply, _DESTINATION, max_size, 67, "veth0")
        assert hash(outgoing) == hash(Outgoing(reply, _DESTINATION, max_size, 67, "veth0"))


_DESTINATION = Destination(DestinationKind.RELAY, IPv4Address("198.18.0.2"), 67)


def test_outgoing_is_immutable_and_encodes_its_message() -> None:
    core, _, _ = make_core()
    offer = core.handle(message(c.DHCPDISCOVER, 1), IFACE, NOW)[0]
    assert offer.encoded() == encode_dhcp(offer.message, max_size=offer.max_size)
    with pytest.raises(dataclasses.FrozenInstanceError):
        offer.max_size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del offer.destination
    general = Outgoing(offer.message, offer.destination, offer.max_size, interface="veth0")
    assert general == offer and general.reply_type == offer.reply_type == b"\x02"
    assert general.encoded() == offer.encoded()
    assert "Outgoing(message=DhcpMessage(" in repr(offer)


def test_adapter_sends_the_core_encoded_octets() -> None:
    """The adapter sends what the core encoded, for a cached OFFER and ACK alike."""
    core, _, _ = make_core()
    protocol = DhcpServerProtocol(core, IFACE)
    sent: list[bytes] = []

    class _Transport:
        def write(self, data: bytes, addr: tuple[str, int]) -> None:
            sent.append(data)

    protocol.makeConnection(_Transport())  # type: ignore[arg-type]
    discover = message(c.DHCPDISCOVER, 7, giaddr=RELAY)
    expected = core.handle(discover, IFACE, NOW)[0]
    core2, _, _ = make_core()
    protocol.core = core2
    protocol.datagramReceived(encode_dhcp(discover), (str(RELAY), 67))
    assert sent == [encode_dhcp(expected.message, max_size=expected.max_size)]
    assert protocol.outcomes == {(b"\x01", b"\x02"): 1}
