"""Use only pxestack's boot decision, or its proxyDHCP core, inside another program.

Already have a DHCP server and just want "what should this PXE/iPXE client boot?"  The
decision is a pure function of the decoded packet: no sockets, no Twisted::

    python examples/embed_proxydhcp.py            # classify and decide for sample packets
    python examples/embed_proxydhcp.py --serve    # proxyDHCP on 127.0.0.1:6767 (no root)

See docs/dhcp.md "Embedding" and docs/dhcp-wire.md for the decision order.
"""

from __future__ import annotations

import sys
from ipaddress import IPv4Address, IPv4Network

from pxestack.dhcp.client import ClientInfo
from pxestack.dhcp.decide import BootDefaults, decide_boot
from pxestack.dhcp.policy import BootSpec, Machine, StaticBootPolicy
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

SERVER = IPv4Address("127.0.0.1")
DEFAULTS = BootDefaults(server_address=SERVER,
                        ipxe_script_url="http://127.0.0.1:8080/boot.ipxe")


def sample(vendor: bytes, arch: int, user_class: bytes | None = None) -> bytes:
    """A DISCOVER as a PXE ROM (or iPXE, with user class ``iPXE``) would send it."""
    options = {
        c.OPT_MESSAGE_TYPE: bytes((c.DHCPDISCOVER,)),
        c.OPT_VENDOR_CLASS_ID: vendor,
        c.OPT_CLIENT_ARCH: arch.to_bytes(2, "big"),
    }
    if user_class is not None:
        options[c.OPT_USER_CLASS] = user_class
        # iPXE announces HTTP support in option 175 (feature 0x13).
        options[c.OPT_IPXE_ENCAP] = bytes((0x13, 1, 1))
    return encode_dhcp(DhcpMessage(op=c.BOOTREQUEST, xid=1, chaddr=bytes.fromhex("525400aa0001"),
                                   options=DhcpOptions(options)))


def decide_only() -> None:
    """Bytes in, boot decision out: the part an existing DHCP server can call."""
    policy = StaticBootPolicy(BootSpec())
    for name, packet in (
        ("BIOS PXE ROM", sample(b"PXEClient:Arch:00000:UNDI:002001", 0)),
        ("UEFI x64 PXE", sample(b"PXEClient:Arch:00007:UNDI:003000", 7)),
        ("iPXE", sample(b"PXEClient:Arch:00000:UNDI:002001", 0, b"iPXE")),
    ):
        info = ClientInfo.from_message(decode_dhcp(packet))
        spec = policy.boot_spec(Machine.from_client(info))
        decision = decide_boot(info, spec, DEFAULTS)
        boot_file = decision.options.get(c.OPT_BOOTFILE_NAME, b"").decode()
        print(f"{name:13} -> {decision.kind.value:12} {boot_file}  ({decision.reason})")


def serve() -> None:
    """The proxyDHCP core on a socket: boot information only, beside your DHCP server."""
    from twisted.internet import reactor

    from pxestack.dhcp.protocol import ProxyDhcpProtocol
    from pxestack.dhcp.server import InterfaceInfo

    core = ProxyDhcpCore(DEFAULTS, StaticBootPolicy())
    protocol = ProxyDhcpProtocol(
        core, InterfaceInfo("lo", SERVER, IPv4Network("127.0.0.0/8")), port=6767,
        broadcast_address="127.255.255.255", client_port=6768,
    )
    port = reactor.listenUDP(6767, protocol, interface=str(SERVER))
    port.setBroadcastAllowed(True)
    reactor.run()


if __name__ == "__main__":
    if "--serve" in sys.argv[1:]:
        serve()
    else:
        decide_only()
