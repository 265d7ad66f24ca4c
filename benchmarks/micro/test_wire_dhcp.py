"""DHCP codec: decoding a PXE DISCOVER and encoding an OFFER (the per-packet wire cost)."""

from __future__ import annotations

from ipaddress import IPv4Address

from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, build_reply, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

MAC = bytes.fromhex("525400e2e001")
SERVER = IPv4Address("198.18.0.1")
RELAY = IPv4Address("198.18.0.2")

IPXE_REQUEST_LIST = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 175, 203])

#: A relayed PXE DISCOVER shaped like an iPXE ROM's (docs/reference/pxe-wire.md): vendor class,
#: architecture 0, UUID, a long parameter request list.
DISCOVER = DhcpMessage(
    op=c.BOOTREQUEST,
    xid=0x6B4C2A01,
    chaddr=MAC,
    hops=1,
    giaddr=RELAY,
    options=DhcpOptions(
        [
            (c.OPT_MESSAGE_TYPE, bytes([c.DHCPDISCOVER])),
            (c.OPT_MAX_MESSAGE_SIZE, (1472).to_bytes(2, "big")),
            (c.OPT_CLIENT_ARCH, b"\x00\x00"),
            (c.OPT_CLIENT_NDI, b"\x01\x02\x01"),
            (c.OPT_VENDOR_CLASS_ID, b"PXEClient:Arch:00000:UNDI:002001"),
            (
                c.OPT_PARAMETER_REQUEST_LIST,
                bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 175, 203]),
            ),
            (c.OPT_CLIENT_UUID, bytes(17)),
            (c.OPT_IPXE_ENCAP, b"\xb1\x05\x01\x80\x86\x10\x0e\xeb\x03\x01\x00\x00\x17\x01\x01"),
        ]
    ),
)
DISCOVER_BYTES = encode_dhcp(DISCOVER)

OFFER_OPTIONS = DhcpOptions.build(
    {
        c.OPT_MESSAGE_TYPE: c.DHCPOFFER,
        c.OPT_SERVER_ID: SERVER,
        c.OPT_LEASE_TIME: 604800,
        c.OPT_SUBNET_MASK: IPv4Address("255.254.0.0"),
        c.OPT_ROUTER: [SERVER],
        c.OPT_BOOTFILE_NAME: "undionly.kpxe",
    }
)


def test_decode_discover(benchmark) -> None:
    message = benchmark(decode_dhcp, DISCOVER_BYTES)
    assert message.message_type == c.DHCPDISCOVER
    assert message.chaddr == MAC


def test_encode_offer(benchmark) -> None:
    request = decode_dhcp(DISCOVER_BYTES)

    def build_and_encode() -> bytes:
        reply = build_reply(request, OFFER_OPTIONS, yiaddr=IPv4Address("198.19.0.7"))
        return encode_dhcp(reply, max_size=1472)

    encoded = benchmark(build_and_encode)
    assert decode_dhcp(encoded).message_type == c.DHCPOFFER
