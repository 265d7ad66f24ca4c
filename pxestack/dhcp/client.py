"""Client classification: who is asking, from one DHCP message (pure).

:meth:`ClientInfo.from_message` reads architecture (option 93, RFC 4578 §2.1 and the IANA
registry), firmware kind (PXE ROM, iPXE with its option-175 feature flags, UEFI HTTP Boot,
a plain OS client), UUID (option 97), client identifier (option 61), MAC, user class
(option 77, both forms) and vendor class (option 60).  It never raises on peer data: every
malformed option becomes a line in :attr:`ClientInfo.errors` and the field falls back to
"unknown", so the boot decision can still send a default to a broken or hostile client.

The shape follows smee's ``Info``: classification is separate from the decision in
:mod:`pxestack.dhcp.decide`.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final, TypeVar

from pxestack._records import positional_constructor
from pxestack.errors import MalformedPacket
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage
from pxestack.wire.dhcp_options import DhcpOptions

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
    # RFC 4578 errata 4624: 7 is x64 in practice (OVMF sends 7, docs/reference/pxe-wire.md), and 9
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
#: option 93, so the OUI tells the truth (smee overrides the arch by OUI for the same reason).
RASPBERRY_PI_OUIS: Final = frozenset(
    bytes.fromhex(oui) for oui in ("b827eb", "dca632", "e45f01", "28cdc1", "d83add", "2ccf67")
)

_PXE_VENDOR_ARCH = re.compile(r"^(?:PXEClient|HTTPClient):Arch:(\d{5})(?::|$)")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_IPXE_USER_CLASS: Final = b"iPXE"


@dataclass(frozen=True, slots=True)
class IpxeDebugSecs:
    """iPXE's ``dhcp_tx()`` (iPXE @ 36a4c85) misuses BOOTP ``secs`` as a debug field:
    ``(count << 2) | (have offer ? 2 : 0) | (have proxy offer ? 1 : 0)`` (read from
    iPXE's source, see docs/reference/pxe-wire.md).  So 4, 8/10 and 14-18 are state, not seconds."""

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
        """Option 60 starts with ``PXEClient`` (a prefix: clients append their arch and UNDI)."""
        return self.vendor_class is not None and self.vendor_class.startswith("PXEClient")

    @property
    def is_ipxe(self) -> bool:
        """The sender is iPXE."""
        return self.firmware is Firmware.IPXE

    @property
    def ipxe_supports_http(self) -> bool:
        """Whether this iPXE can fetch an HTTP script.

        Stripped iPXE builds send user class ``iPXE`` without HTTP (warewulf3#104,
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
    def from_message(cls, message: DhcpMessage, facts: ModelFacts | None = None) -> ClientInfo:
        """Classify the sender of ``message``; never raises on what the peer sent.

        *facts* is :func:`model_facts` of the message's options when the caller has it
        (a core that memoises them per firmware model: in a boot storm every machine of
        one model sends the same options 60, 77, 93, 175 and 57); None reads them here.
        The per-machine options (97 UUID, 61 client identifier, 12 host name) and the
        header fields are read for every message.
        """
        options = message.options
        items = options.by_code
        if facts is None:
            facts = model_facts(items)
        firmware = facts.firmware
        arch, raspberry_pi = effective_arch(facts, message)

        client_uuid, client_id, problems = read_identity(options)
        errors = (*facts.errors_head, *problems) if problems else facts.errors_head

        hostname = None
        if c.OPT_HOST_NAME in items:
            hostname, problem = read_hostname(options)
            if problem is not None:
                errors = (*errors, problem)
        if facts.errors_tail:
            errors = (*errors, *facts.errors_tail)

        chaddr = message.chaddr
        raw_type = items.get(c.OPT_MESSAGE_TYPE)
        return _new_client_info(
            chaddr.hex(":"),  # message.mac, without the property call
            chaddr,
            raw_type[0] if raw_type is not None and len(raw_type) == 1 else None,
            arch,
            facts.arch_code,
            facts.http_boot_arch,
            firmware,
            facts.vendor_class,
            facts.user_classes,
            facts.ipxe_features,
            facts.ipxe_version,
            client_uuid,
            client_id,
            hostname,
            facts.max_message_size,
            bool(message.flags & c.FLAG_BROADCAST),
            message.giaddr,
            raspberry_pi,
            IpxeDebugSecs.from_secs(message.secs) if firmware is Firmware.IPXE else None,
            errors,
        )


def effective_arch(facts: ModelFacts, message: DhcpMessage) -> tuple[Arch, bool]:
    """The client's architecture and whether its MAC is a Raspberry Pi's (by OUI).

    The Pi 4/5 EEPROM bootloader is a PXE client claiming arch 0 (x86 BIOS); its
    MAC OUI tells the truth, so such a client is :attr:`Arch.RPI`.
    """
    arch = facts.arch
    raspberry_pi = message.hlen == 6 and message.chaddr[:3] in RASPBERRY_PI_OUIS
    if raspberry_pi and arch in (Arch.X86_BIOS, Arch.UNKNOWN) and (
        facts.firmware is Firmware.PXE
    ):
        arch = Arch.RPI
    return arch, raspberry_pi


def read_identity(
    options: DhcpOptions,
) -> tuple[uuid.UUID | None, bytes | None, tuple[str, ...]]:
    """The per-machine identity of a message: option 97 (client UUID) and option 61 (client
    identifier) as :class:`ClientInfo` has them, and the problems found; never raises.

    An option 61 that is not 2-255 octets long is dropped (see :data:`CLIENT_ID_LENGTHS`).
    """
    items = options.by_code
    problems: tuple[str, ...] = ()
    client_uuid = None
    if c.OPT_CLIENT_UUID in items:
        client_uuid, problem = read_client_uuid(options)
        if problem is not None:
            problems = (problem,)
    client_id = items.get(c.OPT_CLIENT_ID)
    if client_id is not None and len(client_id) not in CLIENT_ID_LENGTHS:
        problems = (*problems, invalid_client_id_problem(client_id))
        client_id = None
    return client_uuid, client_id, problems


def read_client_uuid(options: DhcpOptions) -> tuple[uuid.UUID | None, str | None]:
    """Option 97 as :attr:`ClientInfo.uuid` has it, and the problem found, if any.

    ``(None, None)`` when the option is absent; never raises.
    """
    raw_uuid = options.by_code.get(c.OPT_CLIENT_UUID)
    if raw_uuid == b"":
        # Some Intel PXE ROMs send option 97 with no GUID at all (pixiecore#21).
        return None, "option 97: empty, no client UUID"
    try:
        return options.client_uuid(), None
    except MalformedPacket as exc:
        return None, f"option 97: {exc}"


#: Lengths of a valid option 61 (RFC 2132 §9.14: at least 2 octets); another is ignored
#: and chaddr identifies the client, so a hostile identifier cannot split or merge clients.
CLIENT_ID_LENGTHS: Final = range(2, 256)


def invalid_client_id_problem(client_id: bytes) -> str:
    """The problem line for an option 61 that is not 2-255 octets long.

    RFC 2132 §9.14: a client identifier has at least 2 octets; a shorter or garbage value
    is ignored and chaddr identifies the client.
    """
    return f"option 61: {len(client_id)} octets is not a valid client identifier"


def read_hostname(options: DhcpOptions) -> tuple[str | None, str | None]:
    """Option 12 as :attr:`ClientInfo.hostname` has it, and the problem found, if any.

    ``(None, None)`` when the option is absent.  A name that is not valid UTF-8 or not an
    RFC 1123 host name is dropped with a problem line; never raises.
    """
    try:
        hostname = options.text(c.OPT_HOST_NAME)
    except MalformedPacket as exc:
        return None, f"option 12: {exc}"
    if hostname is not None and not _valid_hostname(hostname):
        # The name may end up in paths and scripts: never let a NUL, "/", ".." or spaces through.
        return None, "option 12: not an RFC 1123 host name, ignored"
    return hostname, None


#: ``ClientInfo(...)`` with every field given positionally (built for every packet).
_new_client_info: Final = positional_constructor(ClientInfo)


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the firmware-describing options say (the same for every machine of a model)."""

    vendor_class: str | None
    user_classes: tuple[bytes, ...]
    ipxe_features: frozenset[str]
    ipxe_version: tuple[int, ...] | None
    firmware: Firmware
    arch_code: int | None
    arch: Arch
    http_boot_arch: bool
    max_message_size: int | None
    #: Problems with options 60, 175 and 93 (reported before those of 97, 61 and 12) ...
    errors_head: tuple[str, ...]
    #: ... and with option 57 (reported last).
    errors_tail: tuple[str, ...]


#: The options :func:`model_facts` reads (60, 77, 175, 93, 57): the facts are a pure
#: function of their raw values, so a core may remember them keyed by those values.
MODEL_OPTIONS: Final = (
    c.OPT_VENDOR_CLASS_ID,
    c.OPT_USER_CLASS,
    c.OPT_IPXE_ENCAP,
    c.OPT_CLIENT_ARCH,
    c.OPT_MAX_MESSAGE_SIZE,
)

#: The model facts' key of a message: the raw values of :data:`MODEL_OPTIONS`, in order.
ModelKey = tuple[bytes | None, ...]


def model_key(items: Mapping[int, bytes]) -> ModelKey:
    """The raw options :func:`model_facts` reads (:data:`MODEL_OPTIONS`); equal keys give
    equal facts."""
    get = items.get
    return (
        get(c.OPT_VENDOR_CLASS_ID),
        get(c.OPT_USER_CLASS),
        get(c.OPT_IPXE_ENCAP),
        get(c.OPT_CLIENT_ARCH),
        get(c.OPT_MAX_MESSAGE_SIZE),
    )


def model_facts(items: Mapping[int, bytes]) -> ModelFacts:
    """What options 60, 77, 93, 175 and 57 of one message say (the facts of the firmware
    model, the same for every machine of a model); never raises.

    A pure function of :func:`model_key`, so a core may remember it by that key
    (:class:`~pxestack.dhcp.fastpath.ModelMemo`).  Cheaper than
    :meth:`ClientInfo.from_message` when only the firmware kind or option 57 is needed:
    the DHCP server reads these first and builds the whole :class:`ClientInfo` only for
    network-boot firmware (a plain OS client gets no boot decision).
    """
    return _read_model_facts(DhcpOptions._trusted(dict(items)))


def _read_model_facts(options: DhcpOptions) -> ModelFacts:
    """Read options 60, 77, 175, 93 and 57; malformed ones become errors, never raise."""
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
        # Option 93 may be missing or wrong: unknown arch means "default", never a crash.
        errors.append(f"option 93: unknown architecture type {arch_code}")
    head = tuple(errors)
    errors.clear()
    max_size = read(lambda: options.u16(c.OPT_MAX_MESSAGE_SIZE), "option 57")
    return ModelFacts(
        vendor_class=vendor_class,
        user_classes=user_classes,
        ipxe_features=frozenset(features),
        ipxe_version=version,
        firmware=firmware,
        arch_code=arch_code,
        arch=arch,
        http_boot_arch=http_boot_arch,
        max_message_size=max_size,
        errors_head=head,
        errors_tail=tuple(errors),
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


__all__ = [
    "ARCH_TYPES",
    "CLIENT_ID_LENGTHS",
    "MODEL_OPTIONS",
    "RASPBERRY_PI_OUIS",
    "Arch",
    "ClientInfo",
    "Firmware",
    "IpxeDebugSecs",
    "ModelFacts",
    "ModelKey",
    "effective_arch",
    "invalid_client_id_problem",
    "model_facts",
    "model_key",
    "read_client_uuid",
    "read_hostname",
    "read_identity",
]
