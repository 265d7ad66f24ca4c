"""Builders of the DHCP packets real firmware sends, as captured in docs/reference/pxe-wire.md.

Importing: this module sits directly in ``tests/``.  pytest's default ``prepend`` import mode
puts the directory of ``tests/conftest.py`` (a rootdir conftest without ``__init__.py``) on
``sys.path``, so any test file can ``from dhcp_samples import ...`` (``tests/netlab.py`` is
imported the same way).

Provenance: the capture notes describe each capture field by field (option order, option
values, flags, ``secs``) but do not ship the raw frames.  Each builder reproduces one
described capture exactly as listed there: the option order, the values, the broadcast flag
and the ``secs`` values.  Values the notes do not spell out are marked "not in the capture
notes" and chosen plainly (the MAC and xid of the test VM, the offered addresses on
198.18.0.0/24).  The encoded bytes are frozen as hex under
``tests/golden/dhcp/`` so a change to a builder or to the encoder shows up as a golden diff;
regenerate with ``python tests/dhcp_samples.py --write`` only on purpose.

Firmware covered:

* ``seabios_ipxe_rom_discover`` / ``_request``: QEMU's iPXE NIC ROM under SeaBIOS (column
  "iPXE ROM, BIOS").
* ``ovmf_ipxe_rom_discover``: QEMU's iPXE EFI NIC ROM under OVMF (column "iPXE ROM, EFI").
* ``ovmf_native_pxe_discover`` / ``_request``: OVMF's own EDK2 PXE client (column "OVMF's own PXE").
* ``ovmf_chainloaded_ipxe_efi_discover``: Debian ``ipxe.efi`` after OVMF TFTPed it (boot path
  "Native PXE, then iPXE").
* ``chainloaded_undionly_discover``: Debian ``undionly.kpxe`` chainloaded by the BIOS ROM:
  identical to the ROM except the broadcast flag ("A chainload loop").
* ``busybox_udhcpc_discover``: the installer's busybox udhcpc (column "busybox udhcpc").
* ``dnsmasq_offer_to_ipxe``: the reference server's OFFER to an iPXE client (the paragraph on
  the reference server).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "dhcp"

#: Not in the capture notes: the test VM's MAC (QEMU's 52:54:00 prefix) and xids.
VM_MAC = bytes.fromhex("525400e2e001")
XID_IPXE = 0x6B4C2A01
XID_OVMF = 0x3C9A0F17
XID_UDHCPC = 0x0E5F1D22

#: The iPXE BIOS ROM's SMBIOS uuid 00000000-0000-4000-8000-e2e000000001, option 97 type 0 + the
#: 16 octets in SMBIOS byte order (first three fields little-endian).
SMBIOS_UUID_TEXT = "00000000-0000-4000-8000-e2e000000001"
OPTION_97 = bytes.fromhex("00" "00000000" "0000" "0040" "8000" "e2e000000001")

SERVER = IPv4Address("198.18.0.1")
#: Not in the capture notes: the address dnsmasq offered (its range was 198.18.0.14x).
OFFERED = IPv4Address("198.18.0.141")

IPXE_PARAMETER_REQUEST_LIST = bytes(
    [1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, *range(128, 136), 175, 203]
)
OVMF_PARAMETER_REQUEST_LIST = bytes(
    [1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59,
     60, 66, 67, 97, *range(128, 136)]
)

_BUS_ID_VIRTIO = bytes.fromhex("b1 05 01 1a f4 10 00")  # 177: PCI 1af4:1000
_VERSION_1_0_0 = bytes.fromhex("eb 03 01 00 00")  # 235: 1.0.0


def _flags(*codes_and_values: tuple[int, int]) -> bytes:
    return b"".join(bytes((code, 1, value)) for code, value in codes_and_values)


#: BIOS ROM feature flags in capture order; pxeext carries 2.
IPXE_BIOS_175 = _BUS_ID_VIRTIO + _VERSION_1_0_0 + _flags(
    (0x17, 1), (0x22, 1), (0x13, 1), (0x11, 1), (0x27, 1), (0x19, 1), (0x29, 1),
    (0x10, 2), (0x21, 1), (0x15, 1), (0x18, 1), (0x12, 1),
)
#: The EFI ROM drops elf/multiboot/pxe/bzimage/pxeext and adds efi.
IPXE_EFI_175 = _BUS_ID_VIRTIO + _VERSION_1_0_0 + _flags(
    (0x17, 1), (0x13, 1), (0x11, 1), (0x27, 1), (0x29, 1), (0x15, 1), (0x12, 1), (0x24, 1),
)
#: Debian's ipxe.efi chainloaded by OVMF also announces srp (0x1b).
IPXE_EFI_CHAINLOADED_175 = IPXE_EFI_175 + _flags((0x1B, 1))


def _request(xid: int, secs: int, flags: int, options: list[tuple[int, bytes]]) -> DhcpMessage:
    return DhcpMessage(
        op=c.BOOTREQUEST,
        xid=xid,
        secs=secs,
        flags=flags,
        chaddr=VM_MAC,
        options=DhcpOptions(options),
    )


def _ipxe_options(message_type: int, arch: int, ndi: bytes, vendor: bytes,
                  encap: bytes) -> list[tuple[int, bytes]]:
    """The BIOS ROM's option order: 53, 57, 93, 94, 60, 77, 55, 175, 61, 97."""
    return [
        (c.OPT_MESSAGE_TYPE, bytes((message_type,))),
        (c.OPT_MAX_MESSAGE_SIZE, (1472).to_bytes(2, "big")),
        (c.OPT_CLIENT_ARCH, arch.to_bytes(2, "big")),
        (c.OPT_CLIENT_NDI, ndi),
        (c.OPT_VENDOR_CLASS_ID, vendor),
        (c.OPT_USER_CLASS, b"iPXE"),  # raw, not RFC 3004 length-prefixed
        (c.OPT_PARAMETER_REQUEST_LIST, IPXE_PARAMETER_REQUEST_LIST),
        (c.OPT_IPXE_ENCAP, encap),
        (c.OPT_CLIENT_ID, b"\x01" + VM_MAC),
        (c.OPT_CLIENT_UUID, OPTION_97),
    ]


def seabios_ipxe_rom_discover() -> DhcpMessage:
    """iPXE ROM, BIOS: first DISCOVER of QEMU's pxe-virtio.rom; broadcast flag 0, secs 4."""
    return _request(
        XID_IPXE, 4, 0,
        _ipxe_options(c.DHCPDISCOVER, c.ARCH_X86_BIOS, b"\x01\x02\x01",
                      b"PXEClient:Arch:00000:UNDI:002001", IPXE_BIOS_175),
    )


def seabios_ipxe_rom_request() -> DhcpMessage:
    """iPXE ROM, BIOS: the REQUEST after the offer (adds 54, 50); secs 14 is iPXE's debug value."""
    options = _ipxe_options(c.DHCPREQUEST, c.ARCH_X86_BIOS, b"\x01\x02\x01",
                            b"PXEClient:Arch:00000:UNDI:002001", IPXE_BIOS_175)
    options += [(c.OPT_SERVER_ID, SERVER.packed), (c.OPT_REQUESTED_IP, OFFERED.packed)]
    return _request(XID_IPXE, 14, 0, options)


def chainloaded_undionly_discover() -> DhcpMessage:
    """A chainload loop: undionly.kpxe from the same iPXE snapshot sends the ROM's
    exact options; the only on-wire difference is the broadcast flag, set to 1."""
    return seabios_ipxe_rom_discover().replace(flags=c.FLAG_BROADCAST)


def ovmf_ipxe_rom_discover() -> DhcpMessage:
    """iPXE ROM, EFI: QEMU's efi-virtio.rom under OVMF; arch 7 (x64 UEFI), NDI 3.10."""
    return _request(
        XID_IPXE, 4, 0,
        _ipxe_options(c.DHCPDISCOVER, c.ARCH_EFI_X64, b"\x01\x03\x0a",
                      b"PXEClient:Arch:00007:UNDI:003010", IPXE_EFI_175),
    )


def ovmf_chainloaded_ipxe_efi_discover() -> DhcpMessage:
    """Native PXE, then iPXE: Debian ipxe.efi after OVMF's TFTP; like the EFI ROM plus the srp
    feature flag."""
    return _request(
        XID_IPXE + 1, 4, 0,
        _ipxe_options(c.DHCPDISCOVER, c.ARCH_EFI_X64, b"\x01\x03\x0a",
                      b"PXEClient:Arch:00007:UNDI:003010", IPXE_EFI_CHAINLOADED_175),
    )


def _ovmf_options(message_type: int, max_size: int) -> list[tuple[int, bytes]]:
    """OVMF's own PXE, option order: 53, 57, 55, 97, 94, 93, 60; no 61, 77 or 175."""
    return [
        (c.OPT_MESSAGE_TYPE, bytes((message_type,))),
        (c.OPT_MAX_MESSAGE_SIZE, max_size.to_bytes(2, "big")),
        (c.OPT_PARAMETER_REQUEST_LIST, OVMF_PARAMETER_REQUEST_LIST),
        (c.OPT_CLIENT_UUID, OPTION_97),
        (c.OPT_CLIENT_NDI, b"\x01\x03\x00"),
        (c.OPT_CLIENT_ARCH, c.ARCH_EFI_X64.to_bytes(2, "big")),
        (c.OPT_VENDOR_CLASS_ID, b"PXEClient:Arch:00007:UNDI:003000"),
    ]


def ovmf_native_pxe_discover() -> DhcpMessage:
    """OVMF's own PXE: EDK2's PXE client; broadcast flag 1, option 57 = 1472.  secs: not in the
    notes."""
    return _request(XID_OVMF, 0, c.FLAG_BROADCAST, _ovmf_options(c.DHCPDISCOVER, 1472))


def ovmf_native_pxe_request() -> DhcpMessage:
    """OVMF's own PXE: EDK2's REQUEST: option 57 jumps to 65280.  Where 54/50 sit is not in
    the notes; they are appended after the listed options."""
    options = _ovmf_options(c.DHCPREQUEST, 65280)
    options += [(c.OPT_SERVER_ID, SERVER.packed), (c.OPT_REQUESTED_IP, OFFERED.packed)]
    return _request(XID_OVMF, 0, c.FLAG_BROADCAST, options)


def busybox_udhcpc_discover() -> DhcpMessage:
    """busybox udhcpc: busybox 1.35 udhcpc as the installer runs it (hostname requested with -x)."""
    return _request(
        XID_UDHCPC, 0, 0,
        [
            (c.OPT_MESSAGE_TYPE, bytes((c.DHCPDISCOVER,))),
            (c.OPT_MAX_MESSAGE_SIZE, (576).to_bytes(2, "big")),
            (c.OPT_PARAMETER_REQUEST_LIST, bytes([1, 3, 6, 12, 15, 28, 42])),
            (c.OPT_HOST_NAME, b"e2e-vm"),  # value not in the capture notes
            (c.OPT_VENDOR_CLASS_ID, b"udhcp 1.35.0"),
            (c.OPT_CLIENT_ID, b"\x01" + VM_MAC),
        ],
    )


def dnsmasq_offer_to_ipxe() -> DhcpMessage:
    """The reference server: dnsmasq's OFFER to an iPXE client: options 53, 54, 51, 67, 58, 59, 1,
    28, 3; siaddr = 198.18.0.1; the script URL in option 67 with ``file`` left empty.
    Lease times and mask are not in the notes (dnsmasq defaults for a 1 h lease)."""
    return DhcpMessage(
        op=c.BOOTREPLY,
        xid=XID_IPXE,
        chaddr=VM_MAC,
        yiaddr=OFFERED,
        siaddr=SERVER,
        options=DhcpOptions.build(
            {
                c.OPT_MESSAGE_TYPE: c.DHCPOFFER,
                c.OPT_SERVER_ID: SERVER,
                c.OPT_LEASE_TIME: 3600,
                c.OPT_BOOTFILE_NAME: "http://198.18.0.1:8080/boot.ipxe",
                c.OPT_RENEWAL_TIME: 1800,
                c.OPT_REBINDING_TIME: 3150,
                c.OPT_SUBNET_MASK: IPv4Address("255.255.255.0"),
                c.OPT_BROADCAST_ADDRESS: IPv4Address("198.18.0.255"),
                c.OPT_ROUTER: [SERVER],
            }
        ),
    )


SAMPLES: dict[str, Callable[[], DhcpMessage]] = {
    "seabios_ipxe_rom_discover": seabios_ipxe_rom_discover,
    "seabios_ipxe_rom_request": seabios_ipxe_rom_request,
    "chainloaded_undionly_discover": chainloaded_undionly_discover,
    "ovmf_ipxe_rom_discover": ovmf_ipxe_rom_discover,
    "ovmf_chainloaded_ipxe_efi_discover": ovmf_chainloaded_ipxe_efi_discover,
    "ovmf_native_pxe_discover": ovmf_native_pxe_discover,
    "ovmf_native_pxe_request": ovmf_native_pxe_request,
    "busybox_udhcpc_discover": busybox_udhcpc_discover,
    "dnsmasq_offer_to_ipxe": dnsmasq_offer_to_ipxe,
}


def sample_bytes(name: str) -> bytes:
    """The frozen wire bytes of sample ``name`` (read from its golden ``.hex`` file)."""
    text = (GOLDEN_DIR / f"{name}.hex").read_text()
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


def _hex_lines(data: bytes) -> str:
    return "".join(f"{data[i:i + 16].hex(' ')}\n" for i in range(0, len(data), 16))


def write_golden() -> None:
    """Regenerate ``tests/golden/dhcp/*.hex`` from the builders (review the diff!)."""
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name, builder in SAMPLES.items():
        data = encode_dhcp(builder(), max_size=1500)
        header = f"# {name}: {builder.__doc__.splitlines()[0] if builder.__doc__ else ''}\n"
        (GOLDEN_DIR / f"{name}.hex").write_text(header + _hex_lines(data))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_golden()
    else:
        print("usage: python tests/dhcp_samples.py --write", file=sys.stderr)
        sys.exit(2)
