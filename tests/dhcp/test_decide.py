"""Boot decisions, chainload memory, reply destinations and sizes (table-driven)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from dhcp_samples import SAMPLES, VM_MAC

from pxestack.dhcp.client import ClientInfo
from pxestack.dhcp.decide import (
    IPXE_NO_PXEDHCP_OPTION,
    PXE_USE_BOOTFILE_OPTION,
    BootDefaults,
    BootKind,
    ChainloadMemory,
    decide_boot,
)
from pxestack.dhcp.outgoing import (
    Destination,
    DestinationKind,
    reply_destination,
    reply_size_limit,
)
from pxestack.dhcp.policy import BootSpec
from pxestack.errors import ApiMisuse
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage
from pxestack.wire.dhcp_options import DhcpOptions

SERVER = IPv4Address("198.18.0.1")
SCRIPT = "http://198.18.0.1:8080/boot.ipxe"
DEFAULTS = BootDefaults(
    server_address=SERVER,
    ipxe_script_url=SCRIPT,
    local_boot_script_url="http://198.18.0.1:8080/local.ipxe",
    http_boot_base_url="http://198.18.0.1:8080/ipxe",
)


def info_of(sample: str, **changes: object) -> ClientInfo:
    return ClientInfo.from_message(SAMPLES[sample]().replace(**changes))


def info_with(options: dict[int, bytes]) -> ClientInfo:
    message = DhcpMessage(op=c.BOOTREQUEST, xid=9, chaddr=VM_MAC,
                          options=DhcpOptions({c.OPT_MESSAGE_TYPE: b"\x01", **options}))
    return ClientInfo.from_message(message)


STRIPPED_IPXE = {c.OPT_USER_CLASS: b"iPXE", c.OPT_CLIENT_ARCH: b"\x00\x00",
                 c.OPT_IPXE_ENCAP: bytes.fromhex("150101")}  # tftp only, no http
OUR_IPXE = {c.OPT_USER_CLASS: b"pxestack", c.OPT_IPXE_ENCAP: bytes.fromhex("150101")}
HTTP_CLIENT_X64 = {c.OPT_VENDOR_CLASS_ID: b"HTTPClient:Arch:00016:UNDI:003000",
                   c.OPT_CLIENT_ARCH: b"\x00\x10"}
PXE_ARM64 = {c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00011:UNDI:003000",
             c.OPT_CLIENT_ARCH: b"\x00\x0b"}
PXE_IA32 = {c.OPT_VENDOR_CLASS_ID: b"PXEClient", c.OPT_CLIENT_ARCH: b"\x00\x06"}
PXE_UNKNOWN_ARCH = {c.OPT_VENDOR_CLASS_ID: b"PXEClient", c.OPT_CLIENT_ARCH: b"\x01\x00"}


@pytest.mark.parametrize(
    ("info", "spec", "recent", "kind", "bootfile", "file_field"),
    [
        # QEMU ROMs are iPXE: script URL at once.
        pytest.param(info_of("seabios_ipxe_rom_discover"), BootSpec(), False,
                     BootKind.IPXE_SCRIPT, SCRIPT, b"", id="ipxe-rom-bios-script"),
        pytest.param(info_of("ovmf_ipxe_rom_discover"), BootSpec(), False,
                     BootKind.IPXE_SCRIPT, SCRIPT, b"", id="ipxe-rom-efi-script"),
        # OVMF's own PXE client gets ipxe.efi by TFTP, which then does DHCP as iPXE.
        pytest.param(info_of("ovmf_native_pxe_discover"), BootSpec(), False,
                     BootKind.TFTP, "ipxe.efi", b"ipxe.efi", id="ovmf-native-tftp"),
        pytest.param(info_with(PXE_ARM64), BootSpec(), False,
                     BootKind.TFTP, "ipxe-arm64.efi", b"ipxe-arm64.efi", id="arm64-tftp"),
        pytest.param(info_with(PXE_IA32), BootSpec(), False,
                     BootKind.TFTP, "ipxe.efi", b"ipxe.efi", id="ia32-tftp"),
        # Stripped iPXE without HTTP is chainloaded to the full build ...
        pytest.param(info_with(STRIPPED_IPXE), BootSpec(), False,
                     BootKind.TFTP, "undionly.kpxe", b"undionly.kpxe", id="stripped-ipxe"),
        # ... but never twice in a row (loop breaker by memory) ...
        pytest.param(info_with(STRIPPED_IPXE), BootSpec(), True,
                     BootKind.IPXE_SCRIPT, SCRIPT, b"", id="loop-breaker-memory"),
        # ... nor when our own script's user class is present (loop breaker by user class).
        pytest.param(info_with(OUR_IPXE), BootSpec(), False,
                     BootKind.IPXE_SCRIPT, SCRIPT, b"", id="loop-breaker-user-class"),
        # UEFI HTTP boot: URL of the arch binary.
        pytest.param(info_with(HTTP_CLIENT_X64), BootSpec(), False, BootKind.HTTP_BOOT,
                     "http://198.18.0.1:8080/ipxe/ipxe.efi",
                     b"http://198.18.0.1:8080/ipxe/ipxe.efi", id="uefi-http"),
        # Policy overrides.
        pytest.param(info_of("seabios_ipxe_rom_discover"),
                     BootSpec(ipxe_script_url="http://x/host.ipxe"), False,
                     BootKind.IPXE_SCRIPT, "http://x/host.ipxe", b"", id="script-override"),
        pytest.param(info_of("seabios_ipxe_rom_discover"), BootSpec(local_boot=True), False,
                     BootKind.IPXE_SCRIPT, "http://198.18.0.1:8080/local.ipxe", b"",
                     id="local-boot"),
        pytest.param(info_of("ovmf_native_pxe_discover"), BootSpec(boot_file="snponly.efi"),
                     False, BootKind.TFTP, "snponly.efi", b"snponly.efi",
                     id="boot-file-override"),
        # `file` holds 127 octets + NUL: longer names only go in option 67.
        pytest.param(info_of("ovmf_native_pxe_discover"), BootSpec(boot_file="x" * 128),
                     False, BootKind.TFTP, "x" * 128, b"", id="long-name-option-only"),
        # Not served.
        pytest.param(info_of("busybox_udhcpc_discover"), BootSpec(), False,
                     BootKind.NONE, None, b"", id="os-client"),
        pytest.param(info_with(PXE_UNKNOWN_ARCH), BootSpec(), False,
                     BootKind.NONE, None, b"", id="unknown-arch-D8"),
        pytest.param(info_of("seabios_ipxe_rom_discover"), None, False,
                     BootKind.IGNORE, None, b"", id="policy-ignore"),
    ],
)
def test_decision_table(info: ClientInfo, spec: BootSpec | None, recent: bool,
                        kind: BootKind, bootfile: str | None, file_field: bytes) -> None:
    decision = decide_boot(info, spec, DEFAULTS, recently_chainloaded=recent)
    assert decision.kind is kind, decision.reason
    assert decision.options.text(c.OPT_BOOTFILE_NAME) == bootfile
    assert decision.file == file_field
    assert decision.chainload is (kind is BootKind.TFTP)


def test_ipxe_replies_carry_no_pxedhcp() -> None:
    """175.176 = 1 (af 03 b0 01 01) ends iPXE's ProxyDHCP wait."""
    decision = decide_boot(info_of("seabios_ipxe_rom_discover"), BootSpec(), DEFAULTS)
    assert decision.options[c.OPT_IPXE_ENCAP] == IPXE_NO_PXEDHCP_OPTION == b"\xb0\x01\x01"
    assert decision.siaddr == SERVER
    assert c.OPT_VENDOR_CLASS_ID not in decision.options


def test_full_server_never_sends_pxeclient_to_plain_pxe_firmware() -> None:
    """Option 60 PXEClient without 43 made OVMF fail (PXE-E16)."""
    decision = decide_boot(info_of("ovmf_native_pxe_discover"), BootSpec(), DEFAULTS)
    assert c.OPT_VENDOR_CLASS_ID not in decision.options
    assert c.OPT_VENDOR_SPECIFIC not in decision.options
    # Some clients read only options: `file` and options 66/67 all name it; siaddr is the
    # TFTP server.
    assert decision.options.text(c.OPT_TFTP_SERVER_NAME) == "198.18.0.1"
    assert decision.siaddr == SERVER


@pytest.mark.parametrize("sample", ["ovmf_native_pxe_discover", "seabios_ipxe_rom_discover"])
def test_proxy_replies_pair_pxeclient_with_discovery_control(sample: str) -> None:
    """Proxy offers need 60 PXEClient; PXE firmware also gets 43.6 = 8 (never 60 alone)."""
    info = info_of(sample)
    decision = decide_boot(info, BootSpec(), DEFAULTS, proxy=True)
    assert decision.options[c.OPT_VENDOR_CLASS_ID] == b"PXEClient"
    if not info.is_ipxe:
        assert decision.options[c.OPT_VENDOR_SPECIFIC] == PXE_USE_BOOTFILE_OPTION
        assert decision.options.pxe_suboptions() == {c.PXE_DISCOVERY_CONTROL: b"\x08"}


def test_http_client_echoes_httpclient() -> None:
    decision = decide_boot(info_with(HTTP_CLIENT_X64), BootSpec(), DEFAULTS)
    assert decision.options[c.OPT_VENDOR_CLASS_ID] == b"HTTPClient"


def test_missing_urls_mean_no_boot_information() -> None:
    bare = BootDefaults(server_address=SERVER)
    assert decide_boot(info_of("seabios_ipxe_rom_discover"), BootSpec(),
                       bare).kind is BootKind.NONE
    assert decide_boot(info_with(HTTP_CLIENT_X64), BootSpec(), bare).kind is BootKind.NONE


def test_next_server_precedence() -> None:
    tftp = IPv4Address("198.18.0.2")
    own = IPv4Address("198.18.0.3")
    info = info_of("ovmf_native_pxe_discover")
    defaults = BootDefaults(server_address=SERVER, tftp_server=tftp)
    assert decide_boot(info, BootSpec(), defaults).siaddr == tftp
    assert decide_boot(info, BootSpec(next_server=own), defaults).siaddr == own


# --- chainload memory ------------------------------------------------------------------------


def test_chainload_memory_distinguishes_the_same_transaction() -> None:
    """The ROM told to chainload finishes its own xid unchanged; a new xid is the child."""
    memory = ChainloadMemory(window=60.0, capacity=2)
    memory.note(VM_MAC, 0x11, now=100.0)
    assert not memory.recent(VM_MAC, 0x11, now=101.0)  # the ROM's REQUEST, same xid
    assert memory.recent(VM_MAC, 0x22, now=110.0)  # the chainloaded iPXE
    assert not memory.recent(VM_MAC, 0x22, now=161.0)  # window over
    assert len(memory) == 0


def test_chainload_memory_is_bounded() -> None:
    """A full memo evicts its oldest entry: a flood of new clients cannot grow memory."""
    memory = ChainloadMemory(window=60.0, capacity=2)
    for index in range(3):
        memory.note(bytes([index]) * 6, 1, now=float(index))
    assert len(memory) == 2
    assert not memory.recent(b"\x00" * 6, 2, now=3.0)
    assert memory.recent(b"\x02" * 6, 2, now=3.0)
    with pytest.raises(ApiMisuse):
        ChainloadMemory(window=0)


# --- destination and size --------------------------------------------------------------------

RELAY = IPv4Address("198.18.9.1")
CIADDR = IPv4Address("198.18.0.50")
YIADDR = IPv4Address("198.18.0.60")
BCAST = IPv4Address("255.255.255.255")


@pytest.mark.parametrize(
    ("changes", "reply_type", "yiaddr", "expected"),
    [
        # RFC 2131 §4.1: giaddr set -> relay port 67 (even a NAK).
        ({"giaddr": RELAY}, c.DHCPOFFER, YIADDR,
         Destination(DestinationKind.RELAY, RELAY, 67)),
        ({"giaddr": RELAY}, c.DHCPNAK, YIADDR, Destination(DestinationKind.RELAY, RELAY, 67)),
        # NAK with giaddr 0 -> broadcast.
        ({"ciaddr": CIADDR}, c.DHCPNAK, YIADDR,
         Destination(DestinationKind.BROADCAST, BCAST, 68)),
        # ciaddr set (RENEWING, INFORM) -> unicast ciaddr.
        ({"ciaddr": CIADDR}, c.DHCPACK, CIADDR,
         Destination(DestinationKind.UNICAST, CIADDR, 68)),
        # Broadcast flag (OVMF, undionly.kpxe) -> broadcast.
        ({"flags": c.FLAG_BROADCAST}, c.DHCPOFFER, YIADDR,
         Destination(DestinationKind.BROADCAST, BCAST, 68)),
        # Flag clear (iPXE ROM, udhcpc) -> yiaddr at chaddr, raw frame.
        ({}, c.DHCPOFFER, YIADDR,
         Destination(DestinationKind.LINK_UNICAST, YIADDR, 68, chaddr=VM_MAC)),
        # No yiaddr (proxy reply) -> broadcast.
        ({}, c.DHCPOFFER, IPv4Address(0), Destination(DestinationKind.BROADCAST, BCAST, 68)),
    ],
)
def test_reply_destination_rfc2131_4_1(changes: dict[str, object], reply_type: int,
                                       yiaddr: IPv4Address, expected: Destination) -> None:
    request = SAMPLES["seabios_ipxe_rom_discover"]().replace(**changes)
    assert reply_destination(request, reply_type, yiaddr=yiaddr) == expected


@pytest.mark.parametrize(
    ("option57", "mtu", "limit"),
    [
        (None, None, 548),
        (b"\x05\xc0", None, 1444),  # iPXE 1472
        (b"\xff\x00", None, 65252),  # OVMF REQUEST 65280
        (b"\xff\x00", 1500, 1472),  # ... capped by the link MTU
        (b"\x01\x00", None, 548),  # below the 576 minimum
        (b"\x05", None, 548),  # malformed: treated as absent
    ],
)
def test_reply_size_limit(option57: bytes | None, mtu: int | None, limit: int) -> None:
    options = {c.OPT_MESSAGE_TYPE: b"\x01"}
    if option57 is not None:
        options[c.OPT_MAX_MESSAGE_SIZE] = option57
    request = DhcpMessage(op=1, xid=1, chaddr=VM_MAC, options=DhcpOptions(options))
    assert reply_size_limit(request, mtu=mtu) == limit
