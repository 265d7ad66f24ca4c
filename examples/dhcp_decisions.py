"""Embed only pxestack's boot decision: classify DHCP packets and build proxyDHCP replies.

Runs without a network or root: it builds the DISCOVERs three kinds of firmware send (shapes
from docs/dhcp-wire.md §2), pushes them through the sans-IO proxyDHCP core with a policy of
our own, and prints what would be sent where.

    python examples/dhcp_decisions.py
"""

from __future__ import annotations

from ipaddress import IPv4Address

from pxestack.dhcp.client import ClientInfo
from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.policy import BootSpec, Machine
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

SERVER = IPv4Address("198.18.0.1")


class InstalledHostsPolicy:
    """A BootPolicy of our own: installed machines are ignored, everyone else boots."""

    def __init__(self, installed: set[str]) -> None:
        self.installed = installed

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        """None (ignore) for installed MACs; defaults for the rest."""
        return None if machine.mac in self.installed else BootSpec()


def discover(mac: str, options: dict[int, bytes], *, broadcast: bool = False) -> bytes:
    """A DHCPDISCOVER as bytes, the way it arrives from the network."""
    message = DhcpMessage(
        op=c.BOOTREQUEST,
        xid=0x1234,
        chaddr=bytes.fromhex(mac.replace(":", "")),
        flags=c.FLAG_BROADCAST if broadcast else 0,
        options=DhcpOptions({c.OPT_MESSAGE_TYPE: bytes((c.DHCPDISCOVER,)), **options}),
    )
    return encode_dhcp(message)


PACKETS = {
    "iPXE ROM (SeaBIOS)": discover("52:54:00:00:00:01", {
        c.OPT_CLIENT_ARCH: b"\x00\x00",
        c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00000:UNDI:002001",
        c.OPT_USER_CLASS: b"iPXE",
        c.OPT_IPXE_ENCAP: bytes.fromhex("130101 150101"),  # http, tftp feature flags
    }),
    "OVMF native PXE": discover("52:54:00:00:00:02", {
        c.OPT_CLIENT_ARCH: b"\x00\x07",
        c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00007:UNDI:003000",
    }, broadcast=True),
    "installed host": discover("52:54:00:00:00:03", {
        c.OPT_CLIENT_ARCH: b"\x00\x07",
        c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00007:UNDI:003000",
    }),
    "Linux DHCP client": discover("52:54:00:00:00:04", {c.OPT_VENDOR_CLASS_ID: b"udhcp 1.35.0"}),
}


def main() -> None:
    """Classify each packet and print the proxyDHCP reply it would get."""
    core = ProxyDhcpCore(
        BootDefaults(server_address=SERVER, ipxe_script_url="http://198.18.0.1:8080/boot.ipxe"),
        InstalledHostsPolicy({"52:54:00:00:00:03"}),
    )
    for name, data in PACKETS.items():
        request = decode_dhcp(data)
        info = ClientInfo.from_message(request)
        print(f"{name}: {info.firmware.value}, {info.arch.value}")
        replies = core.handle(request, "eth0", now=0.0)
        if not replies:
            print("    -> no reply")
        for out in replies:
            reply = out.message
            boot = reply.options.text(c.OPT_BOOTFILE_NAME)
            wire = out.encoded()  # encode_dhcp(reply, max_size=out.max_size)
            print(
                f"    -> {c.MESSAGE_TYPE_NAMES[reply.message_type or 0]} to "
                f"{out.destination.address}:{out.destination.port} "
                f"({out.destination.kind.value}), siaddr {reply.siaddr}, boot {boot!r}, "
                f"{len(wire)} octets"
            )
    print("counters:", core.counters)


if __name__ == "__main__":
    main()
