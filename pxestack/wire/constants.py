"""Protocol constants named as the RFCs name them.

Sources: RFC 951 and RFC 1542 (BOOTP), RFC 2131 (DHCP), RFC 2132 (options), RFC 3004
(user class), RFC 3046 (relay agent information), RFC 3396 (long options), RFC 3397
(domain search), RFC 4578 (PXE options 93, 94, 97), the PXE 2.1 specification (option 43
sub-options), the IANA "Processor Architecture Types" registry, and iPXE's
``include/ipxe/dhcp.h`` (option 175 encapsulation).
"""

from __future__ import annotations

from typing import Final

# --- UDP ports -------------------------------------------------------------------------------

#: RFC 2131 §4.1: servers listen on 67, clients on 68.
DHCP_SERVER_PORT: Final = 67
DHCP_CLIENT_PORT: Final = 68
#: PXE 2.1 §2.2.4: the proxyDHCP/boot-server port a PXE client sends DHCPREQUEST to.
PXE_PROXY_PORT: Final = 4011

# --- BOOTP fixed header (RFC 2131 §2, Figure 1) ---------------------------------------------

BOOTREQUEST: Final = 1
BOOTREPLY: Final = 2
#: RFC 1700 hardware type for Ethernet (10 Mb and everything since).
HTYPE_ETHERNET: Final = 1
#: Length of the fixed BOOTP header, before the magic cookie.
BOOTP_HEADER_LENGTH: Final = 236
#: RFC 2131 §3: the first four option octets.
MAGIC_COOKIE: Final = b"\x63\x82\x53\x63"
#: RFC 951 / RFC 1542 §2.1: a BOOTP message is at least 300 octets; short replies are padded.
BOOTP_MIN_LENGTH: Final = 300
#: RFC 2131 §2: a client must accept at least 576-octet IP datagrams; minus the 20-octet IP
#: and 8-octet UDP headers that leaves 548 octets of DHCP message.
DHCP_MIN_MAX_MESSAGE: Final = 576
IP_UDP_HEADER_LENGTH: Final = 28
#: RFC 2131 §2: the broadcast bit is the most significant bit of ``flags``.
FLAG_BROADCAST: Final = 0x8000
SNAME_LENGTH: Final = 64
FILE_LENGTH: Final = 128
CHADDR_LENGTH: Final = 16

# --- DHCP message types (RFC 2132 §9.6, RFC 4388) -------------------------------------------

DHCPDISCOVER: Final = 1
DHCPOFFER: Final = 2
DHCPREQUEST: Final = 3
DHCPDECLINE: Final = 4
DHCPACK: Final = 5
DHCPNAK: Final = 6
DHCPRELEASE: Final = 7
DHCPINFORM: Final = 8

MESSAGE_TYPE_NAMES: Final[dict[int, str]] = {
    DHCPDISCOVER: "DHCPDISCOVER",
    DHCPOFFER: "DHCPOFFER",
    DHCPREQUEST: "DHCPREQUEST",
    DHCPDECLINE: "DHCPDECLINE",
    DHCPACK: "DHCPACK",
    DHCPNAK: "DHCPNAK",
    DHCPRELEASE: "DHCPRELEASE",
    DHCPINFORM: "DHCPINFORM",
}

# --- option codes (RFC 2132 unless noted) ---------------------------------------------------

OPT_PAD: Final = 0
OPT_SUBNET_MASK: Final = 1
OPT_TIME_OFFSET: Final = 2
OPT_ROUTER: Final = 3
OPT_TIME_SERVER: Final = 4
OPT_NAME_SERVER: Final = 5
OPT_DNS_SERVER: Final = 6
OPT_LOG_SERVER: Final = 7
OPT_HOST_NAME: Final = 12
OPT_BOOT_FILE_SIZE: Final = 13
OPT_DOMAIN_NAME: Final = 15
OPT_ROOT_PATH: Final = 17
OPT_INTERFACE_MTU: Final = 26
OPT_BROADCAST_ADDRESS: Final = 28
OPT_NTP_SERVER: Final = 42
OPT_VENDOR_SPECIFIC: Final = 43
OPT_REQUESTED_IP: Final = 50
OPT_LEASE_TIME: Final = 51
OPT_OVERLOAD: Final = 52
OPT_MESSAGE_TYPE: Final = 53
OPT_SERVER_ID: Final = 54
OPT_PARAMETER_REQUEST_LIST: Final = 55
OPT_MESSAGE: Final = 56
OPT_MAX_MESSAGE_SIZE: Final = 57
OPT_RENEWAL_TIME: Final = 58
OPT_REBINDING_TIME: Final = 59
OPT_VENDOR_CLASS_ID: Final = 60
OPT_CLIENT_ID: Final = 61
OPT_TFTP_SERVER_NAME: Final = 66
OPT_BOOTFILE_NAME: Final = 67
#: RFC 3004.
OPT_USER_CLASS: Final = 77
#: RFC 4702 (client FQDN).
OPT_CLIENT_FQDN: Final = 81
#: RFC 3046.
OPT_RELAY_AGENT_INFO: Final = 82
#: RFC 4578 §2.1, §2.2, §2.3.
OPT_CLIENT_ARCH: Final = 93
OPT_CLIENT_NDI: Final = 94
OPT_CLIENT_UUID: Final = 97
#: RFC 3397.
OPT_DOMAIN_SEARCH: Final = 119
#: iPXE's encapsulated option space (``DHCP_EB_ENCAP`` in iPXE's ``dhcp.h``).
OPT_IPXE_ENCAP: Final = 175
#: RFC 5071 §5: PXELINUX's path prefix (where it reads its modules and configs).
OPT_PXELINUX_PATH_PREFIX: Final = 210
OPT_END: Final = 255

# --- option 52 overload values (RFC 2132 §9.3) ----------------------------------------------

OVERLOAD_FILE: Final = 1
OVERLOAD_SNAME: Final = 2
OVERLOAD_BOTH: Final = 3

# --- option 43 PXE vendor sub-options (PXE 2.1 §2.4, table 2-1) ------------------------------

PXE_MTFTP_IP: Final = 1
PXE_MTFTP_CPORT: Final = 2
PXE_MTFTP_SPORT: Final = 3
PXE_MTFTP_TMOUT: Final = 4
PXE_MTFTP_DELAY: Final = 5
PXE_DISCOVERY_CONTROL: Final = 6
PXE_DISCOVERY_MCAST_ADDR: Final = 7
PXE_BOOT_SERVERS: Final = 8
PXE_BOOT_MENU: Final = 9
PXE_MENU_PROMPT: Final = 10
PXE_BOOT_ITEM: Final = 71

#: Discovery-control bits (PXE 2.1 §2.4.6): bit 3 (value 8) means "download the boot file
#: named in this packet, do no boot-server discovery".
PXE_DISCOVERY_NO_BROADCAST: Final = 0x01
PXE_DISCOVERY_NO_MULTICAST: Final = 0x02
PXE_DISCOVERY_SERVER_LIST_ONLY: Final = 0x04
PXE_DISCOVERY_USE_BOOTFILE: Final = 0x08

# --- option 175 iPXE encapsulated sub-options (iPXE include/ipxe/dhcp.h) --------------------

IPXE_PRIORITY: Final = 1
IPXE_KEEP_SAN: Final = 8
IPXE_SKIP_SAN_BOOT: Final = 9
IPXE_SYSLOGS: Final = 85
IPXE_CERT: Final = 91
IPXE_PRIVKEY: Final = 92
IPXE_CROSSCERT: Final = 93
#: ``DHCP_EB_NO_PXEDHCP``: when non-zero iPXE stops waiting for a ProxyDHCP offer.
IPXE_NO_PXEDHCP: Final = 176
IPXE_BUS_ID: Final = 177
IPXE_USE_CACHED: Final = 178
IPXE_SAN_FILENAME: Final = 188
IPXE_BIOS_DRIVE: Final = 189
IPXE_USERNAME: Final = 190
IPXE_PASSWORD: Final = 191
IPXE_REVERSE_USERNAME: Final = 192
IPXE_REVERSE_PASSWORD: Final = 193
IPXE_VERSION: Final = 235

#: iPXE feature-flag sub-options of option 175 (``DHCP_EB_FEATURE_*``): present with a
#: one-byte value (usually 1) when the build includes the feature.
IPXE_FEATURES: Final[dict[int, str]] = {
    0x10: "pxeext",
    0x11: "iscsi",
    0x12: "aoe",
    0x13: "http",
    0x14: "https",
    0x15: "tftp",
    0x16: "ftp",
    0x17: "dns",
    0x18: "bzimage",
    0x19: "multiboot",
    0x1A: "slam",
    0x1B: "srp",
    0x20: "nbi",
    0x21: "pxe",
    0x22: "elf",
    0x23: "comboot",
    0x24: "efi",
    0x25: "fcoe",
    0x26: "vlan",
    0x27: "menu",
    0x28: "sdi",
    0x29: "nfs",
}

# --- RFC 4578 §2.1 / IANA "Processor Architecture Types" (option 93) -------------------------

ARCH_X86_BIOS: Final = 0
ARCH_NEC_PC98: Final = 1
ARCH_ITANIUM: Final = 2
ARCH_DEC_ALPHA: Final = 3
ARCH_ARC_X86: Final = 4
ARCH_INTEL_LEAN_CLIENT: Final = 5
ARCH_EFI_IA32: Final = 6
ARCH_EFI_X64: Final = 7
ARCH_EFI_XSCALE: Final = 8
#: RFC 4578 names 9 "EFI BC", but its table swapped 7 and 9 (errata 4624); real x86-64 UEFI
#: firmware (OVMF included) sends 7, some older firmware sends 9.
ARCH_EFI_BC: Final = 9
ARCH_EFI_ARM32: Final = 10
ARCH_EFI_ARM64: Final = 11
ARCH_EFI_X86_HTTP: Final = 15
ARCH_EFI_X64_HTTP: Final = 16
ARCH_EFI_BC_HTTP: Final = 17
ARCH_EFI_ARM32_HTTP: Final = 18
ARCH_EFI_ARM64_HTTP: Final = 19
ARCH_X86_BIOS_HTTP: Final = 20
ARCH_EFI_RISCV32: Final = 25
ARCH_EFI_RISCV32_HTTP: Final = 26
ARCH_EFI_RISCV64: Final = 27
ARCH_EFI_RISCV64_HTTP: Final = 28
ARCH_ARM_RPIBOOT: Final = 41

__all__ = [name for name in dir() if name.isupper()]
