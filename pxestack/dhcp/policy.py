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
from dataclasses import dataclass, fields
from ipaddress import IPv4Address
from typing import Protocol, runtime_checkable

from pxestack.dhcp.client import (
    CLIENT_ID_LENGTHS,
    Arch,
    ClientInfo,
    Firmware,
    ModelFacts,
    effective_arch,
    read_client_uuid,
)
from pxestack.wire import constants as c
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
        """Build from a classified client.

        Built for every packet, so filled through the slot descriptors rather than the
        frozen dataclass ``__init__`` (the same value at about half the cost, as
        ``ClientInfo``).
        """
        machine: Machine = _new_object(cls)
        _set_mac(machine, info.mac)
        _set_arch(machine, info.arch)
        _set_firmware(machine, info.firmware)
        _set_uuid(machine, info.uuid)
        _set_client_id(machine, info.client_id)
        _set_user_classes(machine, info.user_classes)
        _set_vendor_class(machine, info.vendor_class)
        _set_hostname(machine, info.hostname)
        _set_interface(machine, interface)
        _set_relay(machine, info.giaddr)
        return machine

    @classmethod
    def from_message(
        cls,
        message: DhcpMessage,
        facts: ModelFacts,
        *,
        hostname: str | None,
        interface: str | None = None,
    ) -> Machine:
        """``Machine.from_client(ClientInfo.from_message(message), interface=interface)``
        without building the :class:`ClientInfo` (the DHCP server asks the policy for every
        packet of a network-boot client; the whole classification is needed only when the
        boot decision is not memoised).

        *facts* is :func:`~pxestack.dhcp.client.model_facts` of the message's options and
        *hostname* its option 12 as :func:`~pxestack.dhcp.client.read_hostname` reads it.
        Never raises on what the peer sent (the same rules as ``ClientInfo``, shared).
        """
        options = message.options
        items = options.items_view()
        client_uuid = None
        if c.OPT_CLIENT_UUID in items:
            client_uuid = read_client_uuid(options)[0]
        client_id = items.get(c.OPT_CLIENT_ID)
        if client_id is not None and len(client_id) not in CLIENT_ID_LENGTHS:
            client_id = None  # as ClientInfo.client_id
        machine: Machine = _new_object(cls)
        _set_mac(machine, message.chaddr.hex(":"))  # DhcpMessage.mac, inlined
        _set_arch(machine, effective_arch(facts, message)[0])
        _set_firmware(machine, facts.firmware)
        _set_uuid(machine, client_uuid)
        _set_client_id(machine, client_id)
        _set_user_classes(machine, facts.user_classes)
        _set_vendor_class(machine, facts.vendor_class)
        _set_hostname(machine, hostname)
        _set_interface(machine, interface)
        _set_relay(machine, message.giaddr)
        return machine


_new_object = object.__new__
_MACHINE_FIELDS = (
    "mac", "arch", "firmware", "uuid", "client_id", "user_classes", "vendor_class",
    "hostname", "interface", "relay",
)
(
    _set_mac, _set_arch, _set_firmware, _set_uuid, _set_client_id, _set_user_classes,
    _set_vendor_class, _set_hostname, _set_interface, _set_relay,
) = (Machine.__dict__[name].__set__ for name in _MACHINE_FIELDS)
if tuple(f.name for f in fields(Machine)) != _MACHINE_FIELDS:  # a field was added
    raise ImportError("update the setters above for Machine's fields")


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
