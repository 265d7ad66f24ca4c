"""The boot-policy seam: what a machine should boot, decided by replaceable code.

This is pxestack's analogue of pixiecore's ``Booter`` and smee's ``BackendReader``.  The DHCP
cores build a :class:`Machine` from each packet and ask a :class:`BootPolicy` for a
:class:`BootSpec` **on every packet**, so a policy change (a host marked installed, or fresh)
acts on the next packet with no restart.  ``None`` means "ignore this client": no reply at
all, which is what mayu's dnsmasq ignore list did for installed machines.

The provisioning layer (``pxestack.provision.policy``) implements :class:`BootPolicy` from
its host store; :class:`StaticBootPolicy` serves everyone the configured defaults.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol, runtime_checkable

from pxestack._records import positional_constructor
from pxestack.dhcp.client import (
    Arch,
    ClientInfo,
    Firmware,
    ModelFacts,
    effective_arch,
    read_identity,
)
from pxestack.wire.dhcp import DhcpMessage

_ZERO = IPv4Address(0)


def normalize_mac(mac: str) -> str:
    """Lower-case, colon-separated form (``AA-BB-..`` and ``aabb..`` are accepted)."""
    digits = mac.replace(":", "").replace("-", "").replace(".", "").lower()
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


@dataclass(frozen=True, slots=True)
class Machine:
    """The identity of a booting machine as one DHCP packet shows it (a frozen value)."""

    mac: str
    arch: Arch
    firmware: Firmware
    uuid: uuid.UUID | None = None
    client_id: bytes | None = None
    user_classes: tuple[bytes, ...] = ()
    vendor_class: str | None = None
    hostname: str | None = None
    #: The interface the packet arrived on (None when the adapter cannot tell).
    interface: str | None = None
    #: The relay that forwarded the packet (RFC 2131 giaddr), 0.0.0.0 when on-link.
    relay: IPv4Address = _ZERO

    @classmethod
    def from_client(cls, info: ClientInfo, *, interface: str | None = None) -> Machine:
        """Build from a classified client (what the proxyDHCP core and the tools have)."""
        return _new_machine(
            info.mac, info.arch, info.firmware, info.uuid, info.client_id,
            info.user_classes, info.vendor_class, info.hostname, interface, info.giaddr,
        )

    @classmethod
    def from_message(
        cls,
        message: DhcpMessage,
        facts: ModelFacts,
        *,
        hostname: str | None,
        interface: str | None = None,
    ) -> Machine:
        """The same value as ``Machine.from_client(ClientInfo.from_message(message),
        interface=interface)``, read from the message without the whole classification
        (the DHCP server asks the policy on every packet of a network-boot client, and
        needs the rest of :class:`ClientInfo` only when its boot decision is not memoised).

        *facts* is :func:`~pxestack.dhcp.client.model_facts` of the message's options and
        *hostname* its option 12 as :func:`~pxestack.dhcp.client.read_hostname` reads it.
        The identity options are read by the same function :class:`ClientInfo` uses
        (:func:`~pxestack.dhcp.client.read_identity`); never raises on what the peer sent.
        """
        client_uuid, client_id, _problems = read_identity(message.options)
        return _new_machine(
            message.chaddr.hex(":"), effective_arch(facts, message)[0], facts.firmware,
            client_uuid, client_id, facts.user_classes, facts.vendor_class, hostname,
            interface, message.giaddr,
        )


#: ``Machine(...)`` with every field given positionally: the one builder of both
#: constructors above (a machine is built for every packet of a network-boot client).
_new_machine = positional_constructor(Machine)


class Loader(enum.Enum):
    """The first program a network-booting machine is handed (``dhcp.boot.loader``)."""

    #: iPXE (the per-architecture iPXE binary, then the iPXE script).
    IPXE = "ipxe"
    #: UEFI: Debian's signed shim, which loads signed GRUB (Secure Boot), which reads
    #: ``grub/grub.cfg``.
    GRUB = "grub"
    #: BIOS: ``lpxelinux.0``, which reads ``pxelinux.cfg/01-<mac>``.
    PXELINUX = "pxelinux"


@dataclass(frozen=True, slots=True)
class BootSpec:
    """What one machine should get.  Every ``None`` means "use the configured default"."""

    #: iPXE clients get this script URL instead of the default one.
    ipxe_script_url: str | None = None
    #: PXE firmware gets this TFTP file instead of the per-architecture iPXE binary.
    boot_file: str | None = None
    #: TFTP next-server (siaddr, option 66) instead of the default.
    next_server: IPv4Address | None = None
    #: Hand iPXE the "boot from local disk" script (an installed machine that still PXE-boots
    #: first); PXE firmware is chainloaded to iPXE as usual and then gets that script.
    local_boot: bool = False
    #: Boot this loader instead of the architecture's configured one (a profile's
    #: ``loader``); ignored when it cannot run on the machine's architecture.
    loader: Loader | None = None


@runtime_checkable
class BootPolicy(Protocol):
    """Decides, per packet, what a machine boots.  Implementations must be fast (called on
    every DHCP packet) and must not raise; return ``None`` to ignore the machine."""

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        """The boot spec for ``machine``, or None to send it nothing."""
        ...


class StaticBootPolicy:
    """Everyone boots with one :class:`BootSpec`, except MACs in a runtime-mutable ignore set."""

    def __init__(
        self, spec: BootSpec | None = None, ignored_macs: Iterable[str] = ()
    ) -> None:
        """``spec`` defaults to ``BootSpec()`` (all configured defaults)."""
        self.spec = spec if spec is not None else BootSpec()
        self._ignored = {normalize_mac(mac) for mac in ignored_macs}

    def ignore(self, mac: str) -> None:
        """Stop answering ``mac`` from the next packet on."""
        self._ignored.add(normalize_mac(mac))

    def unignore(self, mac: str) -> None:
        """Answer ``mac`` again from the next packet on."""
        self._ignored.discard(normalize_mac(mac))

    @property
    def ignored_macs(self) -> frozenset[str]:
        """The MACs currently ignored."""
        return frozenset(self._ignored)

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        """``None`` for an ignored MAC, else the static spec."""
        if self._ignored and normalize_mac(machine.mac) in self._ignored:
            return None
        return self.spec


__all__ = ["BootPolicy", "BootSpec", "Loader", "Machine", "StaticBootPolicy", "normalize_mac"]
