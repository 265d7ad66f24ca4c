"""ClientInfo classification: captured firmware, the RFC 4578 arch table, hostile options."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address

import pytest
from dhcp_samples import SAMPLES, VM_MAC
from hypothesis import given, settings
from hypothesis import strategies as st

from pxestack.dhcp.client import (
    ARCH_TYPES,
    Arch,
    ClientInfo,
    Firmware,
    IpxeDebugSecs,
    model_facts,
    read_hostname,
)
from pxestack.dhcp.policy import Machine
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

SMBIOS_UUID = uuid.UUID("00000000-0000-4000-8000-e2e000000001")


def client(options: dict[int, bytes], *, chaddr: bytes = VM_MAC, secs: int = 0,
           flags: int = 0) -> ClientInfo:
    message = DhcpMessage(
        op=c.BOOTREQUEST, xid=1, chaddr=chaddr, secs=secs, flags=flags,
        options=DhcpOptions({c.OPT_MESSAGE_TYPE: b"\x01", **options}),
    )
    return ClientInfo.from_message(message)


@pytest.mark.parametrize(
    ("sample", "firmware", "arch", "broadcast"),
    [
        ("seabios_ipxe_rom_discover", Firmware.IPXE, Arch.X86_BIOS, False),  # iPXE ROM, BIOS
        ("chainloaded_undionly_discover", Firmware.IPXE, Arch.X86_BIOS, True),  # chainload
        ("ovmf_ipxe_rom_discover", Firmware.IPXE, Arch.EFI_X64, False),  # iPXE ROM, EFI
        ("ovmf_chainloaded_ipxe_efi_discover", Firmware.IPXE, Arch.EFI_X64, False),  # chainloaded
        ("ovmf_native_pxe_discover", Firmware.PXE, Arch.EFI_X64, True),  # OVMF's own PXE
        ("ovmf_native_pxe_request", Firmware.PXE, Arch.EFI_X64, True),  # OVMF's own PXE
        ("busybox_udhcpc_discover", Firmware.OS, Arch.UNKNOWN, False),  # busybox udhcpc
    ],
)
def test_captured_firmware_is_classified(sample: str, firmware: Firmware, arch: Arch,
                                         broadcast: bool) -> None:
    info = ClientInfo.from_message(decode_dhcp(encode_dhcp(SAMPLES[sample]())))
    assert (info.firmware, info.arch, info.broadcast) == (firmware, arch, broadcast)
    assert info.mac == "52:54:00:e2:e0:01"
    assert info.errors == ()


def test_ipxe_rom_details() -> None:
    """The iPXE BIOS ROM's DISCOVER: 175 features, version 1.0.0, SMBIOS uuid, client-id, secs=4."""
    info = ClientInfo.from_message(SAMPLES["seabios_ipxe_rom_discover"]())
    assert info.is_ipxe and info.is_pxe and info.ipxe_supports_http
    assert {"http", "pxe", "bzimage", "pxeext", "tftp", "dns"} <= info.ipxe_features
    assert "efi" not in info.ipxe_features
    assert info.ipxe_version == (1, 0, 0)
    assert info.uuid == SMBIOS_UUID
    assert info.client_id == b"\x01" + VM_MAC
    assert info.max_message_size == 1472
    assert info.has_user_class("iPXE") and not info.has_user_class("pxestack")
    # secs=4 is iPXE's debug field: first transmission, no offer yet.
    assert info.ipxe_secs == IpxeDebugSecs(transmissions=1, has_offer=False,
                                           has_proxy_offer=False)


def test_ovmf_native_pxe_has_no_ipxe_markers() -> None:
    info = ClientInfo.from_message(SAMPLES["ovmf_native_pxe_discover"]())
    assert info.user_classes == () and info.ipxe_features == frozenset()
    assert info.client_id is None and info.ipxe_secs is None
    assert info.uuid == SMBIOS_UUID
    assert info.vendor_class == "PXEClient:Arch:00007:UNDI:003000"


@pytest.mark.parametrize(
    ("secs", "expected"),
    [
        (4, IpxeDebugSecs(1, False, False)),  # first DISCOVER
        (10, IpxeDebugSecs(2, True, False)),  # retransmit holding an offer
        (14, IpxeDebugSecs(3, True, False)),  # REQUEST after an offer
        (17, IpxeDebugSecs(4, False, True)),
    ],
)
def test_ipxe_secs_debug_field(secs: int, expected: IpxeDebugSecs) -> None:
    """iPXE dhcp_tx(): (count << 2) | offer << 1 | proxy offer."""
    assert client({c.OPT_USER_CLASS: b"iPXE"}, secs=secs).ipxe_secs == expected


@pytest.mark.parametrize(
    ("code", "arch", "http"),
    [
        (0, Arch.X86_BIOS, False),
        (6, Arch.EFI_IA32, False),
        (7, Arch.EFI_X64, False),  # what OVMF and real x64 UEFI send
        (9, Arch.EFI_X64, False),  # RFC 4578 errata: 9 is x64 too (xcat-core#7645)
        (10, Arch.EFI_ARM32, False),
        (11, Arch.EFI_ARM64, False),
        (15, Arch.EFI_IA32, True),
        (16, Arch.EFI_X64, True),
        (19, Arch.EFI_ARM64, True),
        (20, Arch.X86_BIOS, True),
        (27, Arch.EFI_RISCV64, False),
        (41, Arch.RPI, False),
    ],
)
def test_arch_table(code: int, arch: Arch, http: bool) -> None:
    info = client({c.OPT_CLIENT_ARCH: code.to_bytes(2, "big"),
                   c.OPT_VENDOR_CLASS_ID: b"PXEClient"})
    assert (info.arch, info.http_boot_arch, info.arch_code) == (arch, http, code)
    assert ARCH_TYPES[code] == (arch, http)


def test_arch_falls_back_to_option_60() -> None:
    """Option 93 missing: read the Arch field of PXEClient:Arch:AAAAA."""
    info = client({c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00007:UNDI:003000"})
    assert (info.arch, info.arch_code) == (Arch.EFI_X64, 7)


def test_unknown_arch_is_recorded_not_raised() -> None:
    """An unknown arch gets the default answer and a note, never an exception."""
    info = client({c.OPT_CLIENT_ARCH: b"\x01\x2c", c.OPT_VENDOR_CLASS_ID: b"PXEClient"})
    assert info.arch is Arch.UNKNOWN and info.arch_code == 300
    assert any("unknown architecture" in e for e in info.errors)


def test_raspberry_pi_reporting_arch_0_is_a_pi() -> None:
    """Option 93 can lie: the Pi 4/5 bootloader sends arch 0; its OUI overrides."""
    info = client({c.OPT_CLIENT_ARCH: b"\x00\x00", c.OPT_VENDOR_CLASS_ID: b"PXEClient"},
                  chaddr=bytes.fromhex("dca632001122"))
    assert info.raspberry_pi and info.arch is Arch.RPI


@pytest.mark.parametrize(
    ("options", "firmware"),
    [
        ({c.OPT_USER_CLASS: b"iPXE"}, Firmware.IPXE),
        ({c.OPT_USER_CLASS: b"\x04iPXE"}, Firmware.IPXE),  # RFC 3004 form
        ({c.OPT_IPXE_ENCAP: bytes.fromhex("130101")}, Firmware.IPXE),  # FlexBoot: 175, no 77
        ({c.OPT_USER_CLASS: b"pxestack", c.OPT_IPXE_ENCAP: b"\x13\x01\x01"}, Firmware.IPXE),
        ({c.OPT_VENDOR_CLASS_ID: b"HTTPClient:Arch:00016:UNDI:003000"}, Firmware.HTTP_CLIENT),
        ({c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00000:UNDI:002001"}, Firmware.PXE),
        ({c.OPT_VENDOR_CLASS_ID: b"PXEClient"}, Firmware.PXE),  # prefix, not equality
        ({c.OPT_VENDOR_CLASS_ID: b"MSFT 5.0"}, Firmware.OS),
        ({c.OPT_VENDOR_CLASS_ID: b"HW-Client"}, Firmware.OS),
        ({}, Firmware.OS),
    ],
)
def test_firmware_kind(options: dict[int, bytes], firmware: Firmware) -> None:
    assert client(options).firmware is firmware


def test_stripped_ipxe_without_http() -> None:
    """Stripped iPXE builds without HTTP still say iPXE; option 175 tells."""
    info = client({c.OPT_USER_CLASS: b"iPXE", c.OPT_IPXE_ENCAP: bytes.fromhex("150101")})
    assert info.is_ipxe and not info.ipxe_supports_http
    assert client({c.OPT_USER_CLASS: b"iPXE"}).ipxe_supports_http


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({c.OPT_CLIENT_UUID: b"\x00" * 5}, "option 97"),  # D8 wrong length
        ({c.OPT_CLIENT_UUID: b""}, "option 97: empty"),  # Intel ROMs (pixiecore#21)
        ({c.OPT_CLIENT_ARCH: b"\x00"}, "option 93"),
        ({c.OPT_CLIENT_ID: b""}, "option 61"),  # D6 zero-length
        ({c.OPT_CLIENT_ID: b"\x01"}, "option 61"),  # RFC 2132 §9.14 minimum 2
        ({c.OPT_HOST_NAME: b"../etc"}, "option 12"),  # D7
        ({c.OPT_HOST_NAME: b"a b"}, "option 12"),
        ({c.OPT_HOST_NAME: b"\xff\xfe"}, "option 12"),  # not UTF-8
        ({c.OPT_VENDOR_CLASS_ID: b"PXE\xff"}, "option 60"),
        ({c.OPT_IPXE_ENCAP: b"\x13\x05\x01"}, "option 175"),
        ({c.OPT_MAX_MESSAGE_SIZE: b"\x05"}, "option 57"),
    ],
)
def test_malformed_options_are_collected_not_raised(options: dict[int, bytes],
                                                    fragment: str) -> None:
    info = client(options)
    assert any(error.startswith(fragment) for error in info.errors), info.errors


def test_invalid_values_fall_back_to_safe_defaults() -> None:
    info = client({c.OPT_CLIENT_UUID: b"\x00" * 5, c.OPT_HOST_NAME: b"a/b",
                   c.OPT_CLIENT_ID: b""})
    assert info.uuid is None and info.hostname is None and info.client_id is None
    assert client({c.OPT_HOST_NAME: b"node-1.example"}).hostname == "node-1.example"


def test_relay_fields() -> None:
    message = SAMPLES["ovmf_native_pxe_discover"]().replace(giaddr=IPv4Address("198.18.7.1"))
    assert ClientInfo.from_message(message).giaddr == IPv4Address("198.18.7.1")


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from([12, 43, 57, 60, 61, 77, 93, 97, 175, 82]),
                       st.binary(max_size=40), max_size=8),
       st.binary(min_size=0, max_size=16), st.integers(0, 0xFFFF))
def test_classification_never_raises(options: dict[int, bytes], chaddr: bytes,
                                     secs: int) -> None:
    """Hostile or broken options never crash classification; problems land in errors."""
    info = client(options, chaddr=chaddr, secs=secs)
    assert isinstance(info.firmware, Firmware) and isinstance(info.arch, Arch)
    assert all(isinstance(error, str) for error in info.errors)


# --- the server's lighter reads (docs/dhcp.md §11) -------------------------------------------

#: Option values that reach every branch of the shared rules: Raspberry Pi OUIs with arch 0,
#: empty and short UUIDs, 1-octet client identifiers, host names good and bad.
_SPECIAL_VALUES = {
    c.OPT_VENDOR_CLASS_ID: [b"PXEClient", b"PXEClient:Arch:00000:UNDI:002001",
                            b"HTTPClient:Arch:00016", b"\xff\xfe"],
    c.OPT_CLIENT_ARCH: [b"\x00\x00", b"\x00\x07", b"\x00\x0b", b"\x00\x10", b"\x00"],
    c.OPT_CLIENT_UUID: [b"", b"\x00" + SMBIOS_UUID.bytes_le, b"\x01" + bytes(16), b"\x00"],
    c.OPT_CLIENT_ID: [b"", b"\x01", b"\x01\x02\x03", b"\x00" * 7],
    c.OPT_HOST_NAME: [b"node-1", b"bad name", b"\xff", b"a/../b", b""],
    c.OPT_USER_CLASS: [b"iPXE", b"\x04iPXE\x08pxestack", b"\x05"],
    c.OPT_IPXE_ENCAP: [b"\x13\x01\x01", b"\xeb\x03\x01\x02\x03", b"\x13"],
}
_RPI_MAC = bytes.fromhex("dca632000001")


@st.composite
def _client_messages(draw: st.DrawFn) -> DhcpMessage:
    codes = draw(st.sets(st.sampled_from(sorted(_SPECIAL_VALUES)), max_size=7))
    items = {code: draw(st.sampled_from(_SPECIAL_VALUES[code]) | st.binary(max_size=20))
             for code in sorted(codes)}
    chaddr = draw(st.sampled_from([VM_MAC, _RPI_MAC, b"", b"\x01\x02"]) | st.binary(max_size=16))
    giaddr = draw(st.sampled_from([IPv4Address(0), IPv4Address("198.18.7.1")]))
    return DhcpMessage(op=c.BOOTREQUEST, xid=1, chaddr=chaddr, giaddr=giaddr,
                       options=DhcpOptions({c.OPT_MESSAGE_TYPE: b"\x01", **items}))


@settings(max_examples=300)
@given(_client_messages(), st.sampled_from([None, "pxs0"]))
def test_machine_from_message_is_machine_from_client(message: DhcpMessage,
                                                     interface: str | None) -> None:
    """The server asks its policy with ``Machine.from_message`` (no ClientInfo built): the
    same value as ``Machine.from_client`` of the full classification, for every branch of
    the shared rules (Pi OUI, option 97, 61 and 12 problems)."""
    info = ClientInfo.from_message(message)
    facts = model_facts(message.options.items_view())
    hostname = (read_hostname(message.options)[0]
                if c.OPT_HOST_NAME in message.options.items_view() else None)
    assert hostname == info.hostname
    assert facts.firmware is info.firmware
    assert facts.max_message_size == info.max_message_size
    assert (facts.user_classes, facts.ipxe_features, facts.ipxe_version) == (
        info.user_classes, info.ipxe_features, info.ipxe_version)
    assert Machine.from_message(message, facts, hostname=hostname, interface=interface) == (
        Machine.from_client(info, interface=interface))
