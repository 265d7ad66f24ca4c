"""Pure boot decisions, reply destinations and reply sizes (shared by the full server and the
proxyDHCP core).

Decision order of :func:`decide_boot` (smee's ``Bootfile`` order, with pxestack's additions):

0. The policy returned ``None``: **ignore** the client (no reply at all).
1. A plain OS client (no PXE/iPXE/HTTPClient marker): **no boot information**.
2. iPXE (option 77 ``iPXE`` or option 175):

   a. **Chainload-loop breaker**: it carries our own user class (default ``pxestack``, set
      by our iPXE script/build), or the caller says we chainloaded this MAC moments ago
      (``recently_chainloaded``; see :class:`ChainloadMemory`).  Captures show why the
      user class alone is not enough: Debian's ``undionly.kpxe`` comes from the same iPXE
      snapshot as QEMU's ROM and sends identical options 77/175, only the broadcast flag
      differs (docs/reference/pxe-wire.md, "Boot paths").  Either way it gets the **HTTP
      script URL**, never another binary.
   b. An iPXE with HTTP support gets the **HTTP script URL** (option 67).
   c. A stripped iPXE without HTTP (its option 175 lacks the HTTP feature) is
      **chainloaded** to our full iPXE binary by TFTP, like plain PXE.

   Every iPXE reply also carries option 175 with sub-option 176 (no-pxedhcp) = 1, which
   ends iPXE's 2-3 s ProxyDHCP wait (docs/reference/pxe-wire.md, "iPXE's two idle waits").
3. UEFI HTTP Boot (option 60 ``HTTPClient``): an **HTTP URL** of the iPXE binary for its
   architecture, with option 60 ``HTTPClient`` echoed (UEFI 2.5 §24.7: HTTP boot clients
   ignore replies without it).
4. Plain PXE firmware (option 60 ``PXEClient``): **TFTP** of the iPXE binary for its
   architecture (``undionly.kpxe`` for BIOS, ``ipxe.efi``/``snponly.efi`` for x64, ...), in
   the BOOTP ``file`` field and option 67, with siaddr and option 66 naming the TFTP server
   (some clients, the Raspberry Pi 4 among them, read only options).  In the full server
   **no option 60 PXEClient** goes to such firmware: without option 43 discovery control 8
   (or a port 4011 answer) OVMF's EDK2 client treats it as a BINL offer and fails
   (verified with OVMF; see docs/reference/pxe-wire.md).  In proxy mode option 60 is
   required, so option 43 with 43.6 = 8 is always sent with it, and the proxy also answers
   on port 4011.

**Loaders.**  Steps 2 to 4 hand out iPXE by default.  ``dhcp.boot.loader`` chooses another
loader per architecture, and a profile's ``loader`` (``BootSpec.loader``) per machine
(:func:`effective_loader`: a loader that cannot run on the architecture is ignored):

* ``grub`` (UEFI x64/arm64): PXE firmware gets Debian's signed **shim** by TFTP (it then
  loads ``grubx64.efi`` from the same directory, and GRUB reads ``grub/grub.cfg``); UEFI HTTP
  Boot clients get the shim's HTTP URL.
* ``pxelinux`` (BIOS): PXE firmware gets **lpxelinux.0** by TFTP, with option 210 (PXELINUX
  path prefix, RFC 5071) naming an HTTP URL when one is configured, so that lpxelinux fetches
  ``ldlinux.c32`` and ``pxelinux.cfg/01-<mac>`` over HTTP.

A foreign iPXE (a NIC's iPXE ROM, such as QEMU's) is handed the loader file too, as it runs
PXE programs; our own iPXE (its user class, or just chainloaded) still gets its script.

Where replies go and how large they may be is :mod:`pxestack.dhcp.outgoing`.
"""

from __future__ import annotations

import enum
import functools
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import Final

from pxestack._types import Now
from pxestack.dhcp.client import Arch, ClientInfo, Firmware
from pxestack.dhcp.policy import BootSpec, Loader
from pxestack.errors import ApiMisuse
from pxestack.wire import constants as c
from pxestack.wire.dhcp_options import DhcpOptions, encode_suboptions, ipv4_address

_ZERO: Final = ipv4_address(0)  # the shared object the decoder uses too
_BROADCAST: Final = IPv4Address("255.255.255.255")

#: BOOTP ``file`` holds 128 octets including the terminating NUL (names longer
#: than 127 octets go only in option 67).
MAX_FILE_FIELD: Final = 127

#: Distinct boot answers remembered (they depend on configuration, not on the client).
_DECISION_MEMO_SIZE: Final = 256

#: Option 175 with sub-option 176 (``DHCP_EB_NO_PXEDHCP``) = 1: ``b0 01 01``.
IPXE_NO_PXEDHCP_OPTION: Final = encode_suboptions({c.IPXE_NO_PXEDHCP: b"\x01"}, end=False)
#: Option 43 with PXE discovery control = 8 ("boot the file in this packet") and END.
PXE_USE_BOOTFILE_OPTION: Final = encode_suboptions(
    {c.PXE_DISCOVERY_CONTROL: bytes((c.PXE_DISCOVERY_USE_BOOTFILE,))}
)


@dataclass(frozen=True, slots=True)
class BootDefaults:
    """Configured defaults of the boot decision (names follow ``config.dhcp.BootConfig``).

    The cores take these as plain values; they never import :mod:`pxestack.config`.

    The defaults of the ``*_file`` fields are the one source of the default boot-file
    names: the configuration (``dhcp.boot``), ``pxestack images loaders`` and the mayu
    importer read them through :data:`BOOT_FILE_DEFAULTS`.
    """

    #: Our own address: option 54 and the default TFTP next-server.
    server_address: IPv4Address
    #: iPXE clients get this script URL.  None: iPXE clients get no boot information.
    ipxe_script_url: str | None = None
    #: iPXE clients whose policy says ``local_boot`` get this script URL.
    local_boot_script_url: str | None = None
    #: UEFI HTTP Boot clients get ``<this>/<per-arch file>``.  None: they are not served.
    http_boot_base_url: str | None = None
    #: TFTP next-server; None means :attr:`server_address`.
    tftp_server: IPv4Address | None = None
    bios_file: str = "undionly.kpxe"
    efi_x64_file: str = "ipxe.efi"
    efi_ia32_file: str = "ipxe.efi"
    efi_arm64_file: str = "ipxe-arm64.efi"
    #: User class our own iPXE script sets; a client sending it is never chainloaded again.
    ipxe_user_class: str = "pxestack"
    #: The loader of each architecture (``dhcp.boot.loader``).
    bios_loader: Loader = Loader.IPXE
    efi_x64_loader: Loader = Loader.IPXE
    efi_ia32_loader: Loader = Loader.IPXE
    efi_arm64_loader: Loader = Loader.IPXE
    #: The signed shim handed to UEFI x64 machines whose loader is ``grub``.
    shim_file: str = "shimx64.efi"
    #: The signed shim handed to UEFI arm64 machines whose loader is ``grub``.
    shim_arm64_file: str = "shimaa64.efi"
    #: The GRUB image shim loads from beside itself.  Not handed out by DHCP; the default
    #: lives here with the other boot files.
    grub_file: str = "grubx64.efi"
    #: What BIOS machines whose loader is ``pxelinux`` get.
    pxelinux_file: str = "lpxelinux.0"
    #: PXELINUX's path prefix (option 210), e.g. ``http://host:port/pxelinux/``: lpxelinux.0
    #: then reads its modules and configs from there.  None: the boot file's TFTP directory.
    pxelinux_prefix: str | None = None

    def loader_for(self, arch: Arch) -> Loader:
        """The configured loader of ``arch`` (iPXE for architectures without a choice)."""
        if arch is Arch.X86_BIOS:
            return self.bios_loader
        if arch is Arch.EFI_X64:
            return self.efi_x64_loader
        if arch is Arch.EFI_IA32:
            return self.efi_ia32_loader
        if arch is Arch.EFI_ARM64:
            return self.efi_arm64_loader
        return Loader.IPXE

    def loader_file(self, arch: Arch, loader: Loader) -> str | None:
        """The first file ``loader`` needs on ``arch`` (None: that loader cannot run there)."""
        if loader is Loader.IPXE:
            return self.file_for(arch)
        if loader is Loader.GRUB:
            if arch is Arch.EFI_X64:
                return self.shim_file
            if arch is Arch.EFI_ARM64:
                return self.shim_arm64_file
            return None
        return self.pxelinux_file if arch is Arch.X86_BIOS else None

    def file_for(self, arch: Arch) -> str | None:
        """The iPXE binary for ``arch``, or None when we have none (ARM32, RISC-V, Pi...)."""
        if arch is Arch.X86_BIOS:
            return self.bios_file
        if arch is Arch.EFI_X64:
            return self.efi_x64_file
        if arch is Arch.EFI_IA32:
            return self.efi_ia32_file
        if arch is Arch.EFI_ARM64:
            return self.efi_arm64_file
        return None


#: The default of every boot-file field of :class:`BootDefaults`, by field name
#: (``bios_file``: ``undionly.kpxe``, ``shim_file``: ``shimx64.efi``, ...).
BOOT_FILE_DEFAULTS: Mapping[str, str] = MappingProxyType({
    item.name: str(item.default) for item in fields(BootDefaults)
    if item.name.endswith("_file")
})


class BootKind(enum.Enum):
    """What kind of answer the decision produced."""

    #: Policy said ignore: send nothing.
    IGNORE = "ignore"
    #: Address only (full server) / nothing (proxy): not a network-boot client, or nothing
    #: configured for it.
    NONE = "none"
    #: Download an iPXE binary by TFTP.
    TFTP = "tftp"
    #: iPXE: fetch a script over HTTP.
    IPXE_SCRIPT = "ipxe-script"
    #: UEFI HTTP Boot: fetch an EFI binary over HTTP.
    HTTP_BOOT = "http-boot"


#: Which loaders can run on which architecture (iPXE: wherever we have a binary).
LOADER_ARCHES: Final = {
    Loader.GRUB: (Arch.EFI_X64, Arch.EFI_ARM64),
    Loader.PXELINUX: (Arch.X86_BIOS,),
}


def effective_loader(arch: Arch, spec: BootSpec, defaults: BootDefaults) -> Loader:
    """The loader ``arch``'s machine gets: the spec's (a profile's) if it can run on
    ``arch``, else the configured one if it can, else iPXE."""
    wanted = spec.loader
    if wanted is not None and wanted is not Loader.IPXE and arch in LOADER_ARCHES[wanted]:
        return wanted
    if wanted is Loader.IPXE:
        return Loader.IPXE
    configured = defaults.loader_for(arch)
    if configured is not Loader.IPXE and arch in LOADER_ARCHES[configured]:
        return configured
    return Loader.IPXE


#: The kinds of :class:`BootDecision` that carry boot information (a tuple: ``in`` tests
#: identity first, where a set would hash the members in Python).
_BOOTING_KINDS: Final = (BootKind.TFTP, BootKind.IPXE_SCRIPT, BootKind.HTTP_BOOT)


@dataclass(frozen=True, slots=True)
class BootDecision:
    """The boot part of a reply: ``siaddr``, ``file`` and options to merge into it."""

    kind: BootKind
    #: Why, in a few words, for structured logs.
    reason: str
    siaddr: IPv4Address = _ZERO
    #: The BOOTP ``file`` field (empty when the name only fits option 67).
    file: bytes = b""
    #: Boot options (60, 43, 66, 67, 175) to add to the reply.
    options: DhcpOptions = field(default_factory=DhcpOptions)
    #: The client is being sent an iPXE binary: record it in :class:`ChainloadMemory`.
    chainload: bool = False

    @property
    def boots(self) -> bool:
        """Whether there is boot information to send."""
        return self.kind in _BOOTING_KINDS


def decide_boot(
    info: ClientInfo,
    spec: BootSpec | None,
    defaults: BootDefaults,
    *,
    proxy: bool = False,
    recently_chainloaded: bool = False,
) -> BootDecision:
    """Decide what ``info``'s machine boots (see the module docstring for the order).

    ``proxy`` selects proxyDHCP replies (option 60 ``PXEClient`` plus 43.6 = 8 for PXE
    firmware).  ``recently_chainloaded`` is the caller's per-client memory (a pure function
    keeps none): True when this MAC was sent an iPXE binary moments ago.
    """
    if spec is None:
        return BootDecision(BootKind.IGNORE, "policy ignores this machine")
    firmware = info.firmware
    if firmware is Firmware.OS:
        return BootDecision(BootKind.NONE, "not a network-boot client")
    next_server = spec.next_server or defaults.tftp_server or defaults.server_address
    loader = effective_loader(info.arch, spec, defaults)

    if firmware is Firmware.IPXE:
        own_script = info.has_user_class(defaults.ipxe_user_class)
        if own_script or recently_chainloaded:
            reason = "our own iPXE (user class)" if own_script else "iPXE we just chainloaded"
            return _ipxe_script(spec, defaults, next_server, reason, proxy=proxy)
        if loader is not Loader.IPXE:
            # A NIC's iPXE ROM runs PXE programs (lpxelinux.0, shim) like any PXE firmware.
            return _loader(info.arch, loader, defaults, next_server, proxy=proxy, ipxe=True)
        if info.ipxe_supports_http:
            return _ipxe_script(spec, defaults, next_server, "iPXE with HTTP", proxy=proxy)
        # A stripped iPXE without HTTP is chainloaded to our full build.
        return _tftp(info, spec, defaults, next_server, proxy=proxy, ipxe=True)

    if firmware is Firmware.HTTP_CLIENT:
        return _http_boot(info, defaults, loader)

    if loader is not Loader.IPXE:
        return _loader(info.arch, loader, defaults, next_server, proxy=proxy, ipxe=False)
    return _tftp(info, spec, defaults, next_server, proxy=proxy, ipxe=False)


def _loader(arch: Arch, loader: Loader, defaults: BootDefaults, next_server: IPv4Address,
            *, proxy: bool, ipxe: bool) -> BootDecision:
    name = defaults.loader_file(arch, loader)
    if name is None:  # effective_loader only picks loaders that run on arch
        return _no_boot_file(arch)
    prefix = defaults.pxelinux_prefix if loader is Loader.PXELINUX else None
    return _loader_decision(loader, name, next_server, proxy, prefix, ipxe)


@functools.lru_cache(maxsize=_DECISION_MEMO_SIZE)
def _loader_decision(loader: Loader, name: str, next_server: IPv4Address, proxy: bool,
                     prefix: str | None, ipxe: bool) -> BootDecision:
    """The TFTP answer for a non-iPXE loader (memoised: decisions are immutable values)."""
    raw = name.encode()
    items: dict[int, bytes] = {}
    if proxy:
        items[c.OPT_VENDOR_CLASS_ID] = b"PXEClient"
        items[c.OPT_VENDOR_SPECIFIC] = PXE_USE_BOOTFILE_OPTION
    items[c.OPT_TFTP_SERVER_NAME] = str(next_server).encode()
    items[c.OPT_BOOTFILE_NAME] = raw
    if prefix is not None:
        items[c.OPT_PXELINUX_PATH_PREFIX] = prefix.encode()
    if ipxe:  # a NIC's iPXE ROM: end its ProxyDHCP wait, as for the iPXE answers
        items[c.OPT_IPXE_ENCAP] = IPXE_NO_PXEDHCP_OPTION
    return BootDecision(
        BootKind.TFTP,
        f"{loader.value} loader: {name}",
        siaddr=next_server,
        file=raw if len(raw) <= MAX_FILE_FIELD else b"",
        options=DhcpOptions(items),
    )


def _ipxe_script(spec: BootSpec, defaults: BootDefaults, next_server: IPv4Address,
                 reason: str, *, proxy: bool) -> BootDecision:
    url = (
        (spec.ipxe_script_url or defaults.local_boot_script_url) if spec.local_boot
        else spec.ipxe_script_url
    ) or defaults.ipxe_script_url
    if url is None:
        return BootDecision(BootKind.NONE, "no iPXE script URL configured")
    return _ipxe_script_decision(url, next_server, reason, proxy, spec.local_boot)


@functools.lru_cache(maxsize=_DECISION_MEMO_SIZE)
def _ipxe_script_decision(url: str, next_server: IPv4Address, reason: str, proxy: bool,
                          local_boot: bool) -> BootDecision:
    """The iPXE-script answer (memoised: decisions are immutable values)."""
    items: dict[int, bytes] = {}
    if proxy:
        # iPXE counts a packet as a ProxyDHCP offer only if option 60 starts with
        # "PXEClient" (dhcp_discovery_rx, iPXE @ 36a4c85); siaddr + filename in the same
        # packet make dhcp_has_pxeopts() true, so it does not also ask port 4011.
        items[c.OPT_VENDOR_CLASS_ID] = b"PXEClient"
    items[c.OPT_BOOTFILE_NAME] = url.encode()
    items[c.OPT_IPXE_ENCAP] = IPXE_NO_PXEDHCP_OPTION
    return BootDecision(
        BootKind.IPXE_SCRIPT,
        reason + (" (local boot)" if local_boot else ""),
        siaddr=next_server,
        # dnsmasq leaves ``file`` empty for iPXE and iPXE reads option 67.
        file=b"",
        options=DhcpOptions(items),
    )


def _http_boot(info: ClientInfo, defaults: BootDefaults, loader: Loader) -> BootDecision:
    name = defaults.loader_file(info.arch, loader)
    if defaults.http_boot_base_url is None or name is None:
        return BootDecision(BootKind.NONE, f"no HTTP boot file for {info.arch.value}")
    return _http_boot_decision(defaults.http_boot_base_url, name)


@functools.lru_cache(maxsize=_DECISION_MEMO_SIZE)
def _http_boot_decision(base_url: str, name: str) -> BootDecision:
    """The UEFI HTTP Boot answer (memoised: decisions are immutable values, and the server
    caches reply options by the identity of a decision's options)."""
    url = f"{base_url.rstrip('/')}/{name}"
    raw = url.encode()
    return BootDecision(
        BootKind.HTTP_BOOT,
        "UEFI HTTP boot",
        file=raw if len(raw) <= MAX_FILE_FIELD else b"",
        options=DhcpOptions(
            {
                # UEFI 2.5 §24.7.2: the reply must carry option 60 "HTTPClient".
                c.OPT_VENDOR_CLASS_ID: b"HTTPClient",
                c.OPT_BOOTFILE_NAME: raw,
            }
        ),
    )


def _tftp(info: ClientInfo, spec: BootSpec, defaults: BootDefaults, next_server: IPv4Address,
          *, proxy: bool, ipxe: bool) -> BootDecision:
    name = spec.boot_file or defaults.file_for(info.arch)
    if name is None:
        # Option 93 may be missing or wrong: unknown arch gets no boot answer, never a crash.
        return _no_boot_file(info.arch)
    return _tftp_decision(name, next_server, proxy, ipxe)


@functools.lru_cache(maxsize=len(Arch))
def _no_boot_file(arch: Arch) -> BootDecision:
    """The "no boot file for this architecture" answer (memoised per architecture)."""
    return BootDecision(BootKind.NONE, f"no boot file for architecture {arch.value}")


@functools.lru_cache(maxsize=_DECISION_MEMO_SIZE)
def _tftp_decision(name: str, next_server: IPv4Address, proxy: bool, ipxe: bool
                   ) -> BootDecision:
    """The TFTP answer for boot file *name* (memoised: decisions are immutable values)."""
    raw = name.encode()
    items: dict[int, bytes] = {}
    if proxy:
        # Proxy offers need option 60 "PXEClient" (PXE clients skip them otherwise); with 43.6 = 8
        # EDK2 boots the file in this packet instead of asking port 4011, and BIOS PXE ROMs
        # need option 43 in proxy offers at all.
        items[c.OPT_VENDOR_CLASS_ID] = b"PXEClient"
        items[c.OPT_VENDOR_SPECIFIC] = PXE_USE_BOOTFILE_OPTION
    items[c.OPT_TFTP_SERVER_NAME] = str(next_server).encode()
    items[c.OPT_BOOTFILE_NAME] = raw
    if ipxe:
        items[c.OPT_IPXE_ENCAP] = IPXE_NO_PXEDHCP_OPTION
    return BootDecision(
        BootKind.TFTP,
        ("chainload full iPXE (no HTTP)" if ipxe else "PXE firmware") + f": {name}",
        siaddr=next_server,
        file=raw if len(raw) <= MAX_FILE_FIELD else b"",
        options=DhcpOptions(items),
        chainload=True,
    )


class ChainloadMemory:
    """Bounded memory of "we sent this MAC an iPXE binary in transaction X at time T"
    (sans-IO: ``now`` is an argument).  Feeds ``recently_chainloaded`` to :func:`decide_boot`.

    The transaction id matters: the firmware that was told to chainload still finishes its
    own exchange (a retransmitted DISCOVER, then REQUEST, same xid) and must get the same
    answer; only a *new* transaction from that MAC is the chainloaded iPXE.  Bounded by
    ``capacity`` (oldest evicted first, so a flood of MACs cannot grow memory) and by
    ``window`` seconds.
    """

    def __init__(self, *, window: float = 300.0, capacity: int = 4096) -> None:
        """``window``: how long after a chainload a returning iPXE counts as chainloaded."""
        if window <= 0 or capacity <= 0:
            raise ApiMisuse("window and capacity must be positive")
        self.window = window
        self.capacity = capacity
        self._entries: OrderedDict[bytes, tuple[int, Now]] = OrderedDict()

    def note(self, chaddr: bytes, xid: int, now: Now) -> None:
        """Remember that ``chaddr`` was sent an iPXE binary in transaction ``xid``."""
        self._entries.pop(chaddr, None)
        self._entries[chaddr] = (xid, now)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def recent(self, chaddr: bytes, xid: int, now: Now) -> bool:
        """Whether a *new* transaction ``xid`` from ``chaddr`` follows a chainload within the
        window."""
        entry = self._entries.get(chaddr)
        if entry is None:
            return False
        chainload_xid, when = entry
        if now - when > self.window:
            del self._entries[chaddr]
            return False
        return xid != chainload_xid

    def __len__(self) -> int:
        return len(self._entries)


__all__ = [
    "BOOT_FILE_DEFAULTS",
    "IPXE_NO_PXEDHCP_OPTION",
    "LOADER_ARCHES",
    "MAX_FILE_FIELD",
    "PXE_USE_BOOTFILE_OPTION",
    "BootDecision",
    "BootDefaults",
    "BootKind",
    "ChainloadMemory",
    "decide_boot",
    "effective_loader",
]
