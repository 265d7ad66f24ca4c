"""proxyDHCP (PXE 2.1 §2.2.4): boot information beside a site DHCP server (sans-IO).

:class:`ProxyDhcpCore` never hands out an address (yiaddr stays 0.0.0.0).  It answers only
network-boot clients (option 60 ``PXEClient``/``HTTPClient`` prefix, or iPXE), so a proxy
never fights the site's DHCP server: every phone on the LAN is none of our business.

* Port 67 (snooping the broadcast DISCOVER): a proxy **OFFER** with option 60
  ``PXEClient``, option 54 (our address), siaddr and the boot file from
  :func:`~pxestack.dhcp.decide.decide_boot`.  Nothing else on port 67 is ours: a
  DHCPREQUEST there selects the *site* server's address offer (a proxy never offers an
  address), so answering it would put a second ACK, with yiaddr 0.0.0.0, beside the site's.
  EDK2's PXE client (OVMF and most UEFI servers) may take that ACK, sends DHCPDECLINE and
  gives up with PXE-E07.  The PXE specification has the proxy answer REQUESTs only on
  port 4011, and no firmware we know needs an answer on 67 (pixiecore and dnsmasq answer
  only the DISCOVER there too).
* Port 4011: a DHCPREQUEST (or INFORM) from a PXE client that already has its address gets
  a proxy **ACK** sent back to where it came from (BIOS ROMs stop with PXE-E55 otherwise), with
  option 43.71 (boot item) echoed.
* Option 97 (client UUID) is echoed when the client sent it (EDK2 and some Intel ROMs
  drop offers without it).
* ``efi_via_4011`` selects pixiecore's EFI variant: UEFI PXE clients get an OFFER without
  option 43 and without a boot file, so EDK2 asks port 4011 and gets the file there (some
  UEFI firmware ignores 43.6 = 8 offers, netboot#43).  The default sends 43.6 = 8 plus the
  file straight away, which was verified with OVMF (docs/reference/pxe-wire.md).

The core holds only a bounded :class:`~pxestack.dhcp.decide.ChainloadMemory`; ``now`` comes
from the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Final

from pxestack._types import Address, Now
from pxestack.dhcp.client import Arch, ClientInfo, Firmware
from pxestack.dhcp.decide import (
    BootDefaults,
    BootKind,
    ChainloadMemory,
    decide_boot,
)
from pxestack.dhcp.fastpath import FastPath
from pxestack.dhcp.outgoing import (
    Destination,
    DestinationKind,
    Outgoing,
    reply_size_limit,
)
from pxestack.dhcp.policy import BootPolicy, Machine
from pxestack.dhcp.seen import ProxySightings
from pxestack.errors import MalformedPacket
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, build_reply
from pxestack.wire.dhcp_options import DhcpOptions, encode_suboptions, ipv4_address

_ZERO: Final = ipv4_address(0)  # the shared object the decoder uses too
_BROADCAST: Final = IPv4Address("255.255.255.255")
_EFI_ARCHES: Final = frozenset(
    {Arch.EFI_IA32, Arch.EFI_X64, Arch.EFI_ARM32, Arch.EFI_ARM64, Arch.EFI_RISCV32,
     Arch.EFI_RISCV64}
)

#: Counter names of :attr:`ProxyDhcpCore.counters` (a fixed set: bounded memory).
COUNTERS: Final = (
    "offers", "acks", "ignored_not_pxe", "ignored_by_policy", "ignored_no_boot",
    "ignored_message", "ignored_relay",
)


class ProxyDhcpCore:
    """The proxyDHCP state machine: ``handle(message, interface, now) -> [Outgoing]``."""

    def __init__(
        self,
        defaults: BootDefaults,
        policy: BootPolicy,
        *,
        efi_via_4011: bool = False,
        relays: Iterable[IPv4Address] = (),
        proxy_port: int = c.PXE_PROXY_PORT,
        mtu: int | None = None,
        chainloads: ChainloadMemory | None = None,
        sightings: ProxySightings | None = None,
    ) -> None:
        """``defaults`` carries the server address, URLs and boot file names (the caller
        maps them from ``config.dhcp``); ``relays`` are the giaddrs whose relayed requests
        are answered (never a reflector for unknown or spoofed relays); ``sightings``
        notes every client answered (``provision.enrolment: dhcp-seen``)."""
        self.defaults = defaults
        self.policy = policy
        self.efi_via_4011 = efi_via_4011
        self.relays = frozenset(relays)
        self.proxy_port = proxy_port
        self.mtu = mtu
        self.chainloads = chainloads if chainloads is not None else ChainloadMemory()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.sightings = sightings
        #: Remembers what each firmware model's options say (a boot storm is a few models).
        self.fast = FastPath()

    def handle(
        self,
        message: DhcpMessage,
        interface: str | None,
        now: Now,
        *,
        port: int = c.DHCP_SERVER_PORT,
        source: Address | None = None,
    ) -> list[Outgoing]:
        """Answer one decoded message that arrived on ``port`` of ``interface`` from
        ``source`` (needed for port 4011 replies).  Returns the replies to send (0 or 1)."""
        on_proxy_port = port == self.proxy_port
        message_type = message.message_type
        if message.op != c.BOOTREQUEST or not self._wanted(message_type, on_proxy_port):
            self.counters["ignored_message"] += 1
            return []
        if message.giaddr != _ZERO and message.giaddr not in self.relays:
            self.counters["ignored_relay"] += 1
            return []
        info = self.fast.classify(message)
        if info.firmware is Firmware.OS:
            self.counters["ignored_not_pxe"] += 1
            return []
        spec = self.policy.boot_spec(Machine.from_client(info, interface=interface))
        recently = info.is_ipxe and self.chainloads.recent(message.chaddr, message.xid, now)
        decision = decide_boot(
            info, spec, self.defaults, proxy=True, recently_chainloaded=recently
        )
        if decision.kind is BootKind.IGNORE:
            self.counters["ignored_by_policy"] += 1
            return []
        if not decision.boots:
            self.counters["ignored_no_boot"] += 1
            return []
        if decision.chainload:
            self.chainloads.note(message.chaddr, message.xid, now)
        if self.sightings is not None:
            self.sightings.note_mac(message.chaddr, now)
            if on_proxy_port and source is not None and source[0] not in ("0.0.0.0", ""):
                with contextlib.suppress(ValueError):
                    self.sightings.note_address(IPv4Address(source[0]), now)

        reply_type = c.DHCPOFFER if message_type == c.DHCPDISCOVER else c.DHCPACK
        boot_options = decision.options
        siaddr, file = decision.siaddr, decision.file
        if (
            self.efi_via_4011
            and not on_proxy_port
            and reply_type == c.DHCPOFFER
            and info.firmware is Firmware.PXE
            and info.arch in _EFI_ARCHES
        ):
            # pixiecore's EFI variant: a BINL-style offer (60 PXEClient, no 43, no file)
            # sends EDK2 to port 4011 at siaddr, where the ACK carries the boot file.
            boot_options = DhcpOptions({c.OPT_VENDOR_CLASS_ID: b"PXEClient"})
            file = b""
        items: dict[int, bytes] = {
            c.OPT_MESSAGE_TYPE: bytes((reply_type,)),
            c.OPT_SERVER_ID: self.defaults.server_address.packed,
        }
        items.update(boot_options)
        if on_proxy_port:
            boot_item = _boot_item(info, message)
            if boot_item is not None and c.OPT_VENDOR_SPECIFIC in items:
                # PXE 2.1: echo 43.71 (boot item type and layer) in the port 4011 ACK.
                items[c.OPT_VENDOR_SPECIFIC] = encode_suboptions(
                    {c.PXE_DISCOVERY_CONTROL: bytes((c.PXE_DISCOVERY_USE_BOOTFILE,)),
                     c.PXE_BOOT_ITEM: boot_item}
                )
        if info.uuid is not None:
            # Echo option 97 (EDK2 and some Intel ROMs want it) only when present, and only a
            # well-formed one (a hostile 1 KiB "UUID" must not inflate our reply past the
            # client's size).
            items[c.OPT_CLIENT_UUID] = b"\x00" + info.uuid.bytes_le
        reply = build_reply(
            message,
            DhcpOptions(items),
            siaddr=siaddr,
            file=file,
            ciaddr=message.ciaddr if on_proxy_port else _ZERO,
            # Proxy replies carry the broadcast bit (relays keep the client's).
            flags=message.flags if message.giaddr != _ZERO else message.flags | c.FLAG_BROADCAST,
        )
        self.counters["offers" if reply_type == c.DHCPOFFER else "acks"] += 1
        return [
            Outgoing(
                message=reply,
                destination=self._destination(message, on_proxy_port, source),
                max_size=reply_size_limit(message, mtu=self.mtu),
                source_port=self.proxy_port if on_proxy_port else c.DHCP_SERVER_PORT,
                interface=interface,
            )
        ]

    @staticmethod
    def _wanted(message_type: int | None, on_proxy_port: bool) -> bool:
        """DISCOVER on 67 (PXE 2.1 §2.2.4: the proxy OFFER); REQUEST/INFORM on 4011.

        A REQUEST on 67 belongs to the site's DHCP server (see the module docstring)."""
        if on_proxy_port:
            return message_type in (c.DHCPREQUEST, c.DHCPINFORM)
        return message_type == c.DHCPDISCOVER

    @staticmethod
    def _destination(message: DhcpMessage, on_proxy_port: bool,
                     source: Address | None) -> Destination:
        """Relay first (RFC 2131 §4.1); port 4011 answers go back to the sender (PXE 2.1
        §2.2.4); everything else is broadcast, the client has no address we gave it."""
        if message.giaddr != _ZERO:
            return Destination(DestinationKind.RELAY, message.giaddr, c.DHCP_SERVER_PORT)
        if on_proxy_port:
            if source is not None and source[0] not in ("0.0.0.0", ""):
                return Destination(DestinationKind.UNICAST, IPv4Address(source[0]), source[1])
            if message.ciaddr != _ZERO:
                return Destination(DestinationKind.UNICAST, message.ciaddr, c.DHCP_CLIENT_PORT)
        return Destination(DestinationKind.BROADCAST, _BROADCAST, c.DHCP_CLIENT_PORT)


def _boot_item(info: ClientInfo, message: DhcpMessage) -> bytes | None:
    """The client's 43.71 boot item (type, layer; 4 octets), if it sent a well-formed one."""
    if info.firmware is not Firmware.PXE:
        return None
    try:
        sub = message.options.pxe_suboptions()
    except MalformedPacket:
        return None
    item = None if sub is None else sub.get(c.PXE_BOOT_ITEM)
    return item if item is not None and len(item) == 4 else None


__all__ = ["COUNTERS", "ProxyDhcpCore"]
