"""Client classification: who is asking, from one DHCP message (pure).

:meth:`ClientInfo.from_message` reads architecture (option 93, RFC 4578 §2.1 and the IANA
registry), firmware kind (PXE ROM, iPXE with its option-175 feature flags, UEFI HTTP Boot,
a plain OS client), UUID (option 97), client identifier (option 61), MAC, user class
(option 77, both forms) and vendor class (option 60).  It never raises on peer data: every
malformed option becomes a line in :attr:`ClientInfo.errors` and the field falls back to
"unknown", so the boot decision can still send a default (bad-inputs D6-D8).

The shape follows smee's ``Info``: classification is separate from the decision in
:mod:`pxestack.dhcp.decide`.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final, TypeVar

from pxestack.errors import MalformedPacket
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage

_T = TypeVar("_T")


class Arch(enum.Enum):
    """The CPU/firmware family a boot binary must be built for."""

    X86_BIOS = "x86-bios"
    EFI_IA32 = "efi-ia32"
    EFI_X64 = "efi-x64"
    EFI_ARM32 = "efi-arm32"
    EFI_ARM64 = "efi-arm64"
    EFI_RISCV32 = "efi-riscv32"
    EFI_RISCV64 = "efi-riscv64"
    #: The Raspberry Pi boot ROM / EEPROM bootloader (not UEFI; it TFTPs its own firmware).
    RPI = "rpi"
    UNKNOWN = "unknown"


class Firmware(enum.Enum):
    """What kind of software sent the message."""

    #: A PXE ROM / UEFI PXE client (option 60 ``PXEClient...``) that is not iPXE.
    PXE = "pxe"
    #: iPXE: option 77 ``iPXE`` or option 175 present (ROM, chainloaded, or our own script).
    IPXE = "ipxe"
    #: UEFI HTTP Boot (option 60 ``HTTPClient...``, UEFI 2.5 §24.7).
    HTTP_CLIENT = "uefi-http"
    #: Anything else: an installed OS or installer DHCP client.
    OS = "os"


#: RFC 4578 §2.1 / IANA processor architecture types -> (arch, is an HTTP boot variant).
ARCH_TYPES: Final[dict[int, tuple[Arch, bool]]] = {
    c.ARCH_X86_BIOS: (Arch.X86_BIOS, False),
    c.ARCH_EFI_IA32: (Arch.EFI_IA32, False),
    # RFC 4578 errata 4624: 7 is x64 in practice (OVMF sends 7, firmware.md §2-3), and 9
    # ("EFI BC") is also sent by x86-64 firmware; matching only one of them made xcat loop.
    c.ARCH_EFI_X64: (Arch.EFI_X64, False),
    c.ARCH_EFI_BC: (Arch.EFI_X64, False),
    c.ARCH_EFI_ARM32: (Arch.EFI_ARM32, False),
    c.ARCH_EFI_ARM64: (Arch.EFI_ARM64, False),
    c.ARCH_EFI_X86_HTTP: (Arch.EFI_IA32, True),
    c.ARCH_EFI_X64_HTTP: (Arch.EFI_X64, True),
    c.ARCH_EFI_BC_HTTP: (Arch.EFI_X64, True),
    c.ARCH_EFI_ARM32_HTTP: (Arch.EFI_ARM32, True),
    c.ARCH_EFI_ARM64_HTTP: (Arch.EFI_ARM64, True),
    c.ARCH_X86_BIOS_HTTP: (Arch.X86_BIOS, True),
    c.ARCH_EFI_RISCV32: (Arch.EFI_RISCV32, False),
    c.ARCH_EFI_RISCV32_HTTP: (Arch.EFI_RISCV32, True),
    c.ARCH_EFI_RISCV64: (Arch.EFI_RISCV64, False),
    c.ARCH_EFI_RISCV64_HTTP: (Arch.EFI_RISCV64, True),
    c.ARCH_ARM_RPIBOOT: (Arch.RPI, False),
}

#: Raspberry Pi Ltd / Foundation OUIs.  The Pi 4/5 EEPROM bootloader reports arch 0 in
#: option 93 (firmware.md quirk 4; smee overrides the arch by OUI for the same reason).
RASPBERRY_PI_OUIS: Final = frozenset(
    bytes.fromhex(oui) for oui in ("b827eb", "dca632", "e45f01", "28cdc1", "d83add", "2ccf67")
)

_PXE_VENDOR_ARCH = re.compile(r"^(?:PXEClient|HTTPClient):Arch:(\d{5})(?::|$)")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_IPXE_USER_CLASS: Final = b"iPXE"


@dataclass(frozen=True, slots=True)
class IpxeDebugSecs:
    """iPXE's ``dhcp_tx()`` (iPXE @ 36a4c85) misuses BOOTP ``secs`` as a debug field:
    ``(count << 2) | (have offer ? 2 : 0) | (have proxy offer ? 1 : 0)`` (firmware.md,
    "What ends iPXE's two idle waits").  So 4, 8/10 and 14-18 are state, not seconds."""

    transmissions: int
    has_offer: bool
    has_proxy_offer: bool

    @classmethod
    def from_secs(cls, secs: int) -> IpxeDebugSecs:
        """Decode the field."""
        return cls(secs >> 2, bool(secs & 2), bool(secs & 1))


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Everything the boot decision needs to know about the sender of one message."""

    mac: str
    chaddr: bytes
    message_type: int | None
    arch: Arch
    #: The first option-93 value (or the one parsed from option 60), None when absent.
    arch_code: int | None
    #: The arch code is one of the UEFI HTTP Boot variants (RFC 4578 registry 15-20, 26, 28).
    http_boot_arch: bool
    firmware: Firmware
    vendor_class: str | None
    user_classes: tuple[bytes, ...]
    #: Names (``IPXE_FEATURES``) of the option 175 feature flags with a non-zero value.
    ipxe_features: frozenset[str]
    ipxe_version: tuple[int, ...] | None
    uuid: uuid.UUID | None
    client_id: bytes | None
    hostname: str | None
    max_message_size: int | None
    broadcast: bool
    giaddr: IPv4Address
    raspberry_pi: bool
    #: Present only for iPXE (see :class:`IpxeDebugSecs`).
    ipxe_secs: IpxeDebugSecs | None
    #: One line per malformed or suspicious option; never raised.
    errors: tuple[str, ...]

    @property
    def is_pxe(self) -> bool:
        """Option 60 starts with ``PXEClient`` (quirk 1: a prefix, not an equality)."""
        return self.vendor_class is not None and self.vendor_class.startswith("PXEClient")

    @property
    def is_ipxe(self) -> bool:
        """The sender is iPXE."""
        return self.firmware is Firmware.IPXE

    @property
    def ipxe_supports_http(self) -> bool:
        """Whether this iPXE can fetch an HTTP script.

        Stripped iPXE builds send user class ``iPXE`` without HTTP (quirk 1; warewulf3#104,
        netboot#55), so with option 175 present its ``http`` flag decides.  An iPXE that sends
        no option 175 at all is assumed to be a full build.
        """
        if not self.ipxe_features and self.ipxe_version is None:
            return True
        return "http" in self.ipxe_features

    def has_user_class(self, name: str) -> bool:
        """Whether option 77 carries ``name`` (exact octets)."""
        return name.encode("utf-8", "replace") in self.user_classes

    @classmethod
    def from_message(cls, message: DhcpMessage) -> ClientInfo:
        """Classify the sender of ``message``; never raises on what the peer sent."""
        options = message.options
        errors: list[str] = []

        def read(getter: Callable[[], _T], what: str) -> _T | None:
            try:
                return getter()
            except MalformedPacket as exc:
                errors.append(f"{what}: {exc}")
                return None

        vendor_class = read(lambda: options.text(c.OPT_VENDOR_CLASS_ID), "option 60")
        user_classes = options.user_classes()
        ipxe_sub = read(options.ipxe_suboptions, "option 175")
        features: set[str] = set()
        version: tuple[int, ...] | None = None
        if ipxe_sub is not None:
            for code, value in ipxe_sub.items():
                name = c.IPXE_FEATURES.get(code)
                if name is not None and len(value) == 1 and value[0]:
                    features.add(name)
            raw_version = ipxe_sub.get(c.IPXE_VERSION)
            if raw_version:
                version = tuple(raw_version)

        firmware = _firmware_kind(vendor_class, user_classes, ipxe_sub is not None)

        arch_code: int | None = None
        arches = read(options.client_architectures, "option 93")
        if arches:
            arch_code = arches[0]
        elif vendor_class is not None:
            match = _PXE_VENDOR_ARCH.match(vendor_class)
            if match:
                arch_code = int(match.group(1))
        arch, http_boot_arch = (
            (Arch.UNKNOWN, False) if arch_code is None
            else ARCH_TYPES.get(arch_code, (Arch.UNKNOWN, False))
        )
        if arch_code is not None and arch is Arch.UNKNOWN:
            # bad-inputs D8 / quirk 4: unknown arch means "default", never a crash.
            errors.append(f"option 93: unknown architecture type {arch_code}")

        raspberry_pi = message.chaddr[:3] in RASPBERRY_PI_OUIS and message.hlen == 6
        if raspberry_pi and arch in (Arch.X86_BIOS, Arch.UNKNOWN) and firmware is Firmware.PXE:
            # Quirk 4: the Pi 4/5 EEPROM bootloader claims arch 0; its MAC OUI tells the truth.
            arch = Arch.RPI

        client_uuid = None
        if options.raw(c.OPT_CLIENT_UUID) == b"":
            # Quirk 3: some Intel PXE ROMs send option 97 with no GUID at all (pixiecore#21).
            errors.append("option 97: empty, no client UUID")
        else:
            client_uuid = read(options.client_uuid, "option 97")

        client_id = options.raw(c.OPT_CLIENT_ID)
        if client_id is not None and not 2 <= len(client_id) <= 255:
            # RFC 2132 §9.14: at least 2 octets; bad-inputs D6: fall back to chaddr.
            errors.append(f"option 61: {len(client_id)} octets is not a valid client identifier")
            client_id = None

        hostname = read(lambda: options.text(c.OPT_HOST_NAME), "option 12")
        if hostname is not None and not _valid_hostname(hostname):
            # bad-inputs D7: never let a NUL, "/", ".." or spaces through as a host name.
            errors.append("option 12: not an RFC 1123 host name, ignored")
            hostname = None

        max_size = read(lambda: options.u16(c.OPT_MAX_MESSAGE_SIZE), "option 57")

        return cls(
            mac=message.mac,
            chaddr=message.chaddr,
            message_type=message.message_type,
            arch=arch,
            arch_code=arch_code,
            http_boot_arch=http_boot_arch,
            firmware=firmware,
            vendor_class=vendor_class,
            user_classes=user_classes,
            ipxe_features=frozenset(features),
            ipxe_version=version,
            uuid=client_uuid,
            client_id=client_id,
            hostname=hostname,
            max_message_size=max_size,
            broadcast=message.broadcast,
            giaddr=message.giaddr,
            raspberry_pi=raspberry_pi,
            ipxe_secs=IpxeDebugSecs.from_secs(message.secs)
            if firmware is Firmware.IPXE
            else None,
            errors=tuple(errors),
        )


def _firmware_kind(vendor_class: str | None, user_classes: tuple[bytes, ...],
                   has_ipxe_encap: bool) -> Firmware:
    """iPXE first (user class ``iPXE`` or option 175: Mellanox FlexBoot, an iPXE derivative,
    sends 175 without user class ``iPXE``, warewulf3#104; our own script replaces the user
    class but 175 stays), then HTTPClient, then PXEClient, else an OS client."""
    if _IPXE_USER_CLASS in user_classes or has_ipxe_encap:
        return Firmware.IPXE
    if vendor_class is not None:
        if vendor_class.startswith("HTTPClient"):
            return Firmware.HTTP_CLIENT
        if vendor_class.startswith("PXEClient"):
            return Firmware.PXE
    return Firmware.OS


def _valid_hostname(name: str) -> bool:
    """RFC 1123 §2.1 host name: dot-separated labels of letters, digits and hyphens."""
    if not name or len(name) > 253:
        return False
    return all(_HOST_LABEL.match(label) for label in name.rstrip(".").split("."))


__all__ = ["ARCH_TYPES", "RASPBERRY_PI_OUIS", "Arch", "ClientInfo", "Firmware", "IpxeDebugSecs"]
