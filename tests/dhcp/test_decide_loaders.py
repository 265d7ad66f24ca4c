"""Loaders as choices of the one boot decision: shim/GRUB, PXELINUX and iPXE."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest
from dhcp_samples import SAMPLES, VM_MAC
from hypothesis import given
from hypothesis import strategies as st

from pxestack.dhcp.client import Arch, ClientInfo
from pxestack.dhcp.decide import (
    IPXE_NO_PXEDHCP_OPTION,
    LOADER_ARCHES,
    BootDefaults,
    BootKind,
    decide_boot,
    effective_loader,
)
from pxestack.dhcp.policy import BootSpec, Loader
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage
from pxestack.wire.dhcp_options import DhcpOptions

SERVER = IPv4Address("198.18.0.1")
SCRIPT = "http://198.18.0.1:8080/ipxebootscript"
BASE = BootDefaults(
    server_address=SERVER,
    ipxe_script_url=SCRIPT,
    http_boot_base_url="http://198.18.0.1:8080/boot",
)
GRUB = replace(BASE, efi_x64_loader=Loader.GRUB, efi_arm64_loader=Loader.GRUB)
PXELINUX = replace(BASE, bios_loader=Loader.PXELINUX,
                   pxelinux_prefix="http://198.18.0.1:8080/pxelinux/")


def info_of(sample: str) -> ClientInfo:
    return ClientInfo.from_message(SAMPLES[sample]())


def info_with(options: dict[int, bytes]) -> ClientInfo:
    message = DhcpMessage(op=c.BOOTREQUEST, xid=9, chaddr=VM_MAC,
                          options=DhcpOptions({c.OPT_MESSAGE_TYPE: b"\x01", **options}))
    return ClientInfo.from_message(message)


PXE_BIOS = {c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00000:UNDI:002001",
            c.OPT_CLIENT_ARCH: b"\x00\x00"}
PXE_ARM64 = {c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00011:UNDI:003000",
             c.OPT_CLIENT_ARCH: b"\x00\x0b"}
HTTP_CLIENT_X64 = {c.OPT_VENDOR_CLASS_ID: b"HTTPClient:Arch:00016:UNDI:003000",
                   c.OPT_CLIENT_ARCH: b"\x00\x10"}


def test_ovmf_pxe_gets_the_signed_shim_when_the_loader_is_grub() -> None:
    decision = decide_boot(info_of("ovmf_native_pxe_discover"), BootSpec(), GRUB)
    assert decision.kind is BootKind.TFTP
    assert decision.options.get(c.OPT_BOOTFILE_NAME) == b"shimx64.efi"
    assert decision.file == b"shimx64.efi"
    assert decision.siaddr == SERVER
    assert not decision.chainload  # not iPXE: nothing to remember
    assert c.OPT_IPXE_ENCAP not in decision.options


def test_arm64_grub_gets_its_own_shim() -> None:
    decision = decide_boot(info_with(PXE_ARM64), BootSpec(), GRUB)
    assert decision.options.get(c.OPT_BOOTFILE_NAME) == b"shimaa64.efi"


def test_a_profile_loader_overrides_the_architecture_default() -> None:
    info = info_of("ovmf_native_pxe_discover")
    assert decide_boot(info, BootSpec(loader=Loader.GRUB), BASE).options.get(
        c.OPT_BOOTFILE_NAME) == b"shimx64.efi"
    assert decide_boot(info, BootSpec(loader=Loader.IPXE), GRUB).options.get(
        c.OPT_BOOTFILE_NAME) == b"ipxe.efi"


def test_a_loader_that_cannot_run_on_the_architecture_is_ignored() -> None:
    # pxelinux is BIOS-only: a UEFI machine of a pxelinux profile still gets iPXE.
    decision = decide_boot(info_of("ovmf_native_pxe_discover"),
                           BootSpec(loader=Loader.PXELINUX), BASE)
    assert decision.options.get(c.OPT_BOOTFILE_NAME) == b"ipxe.efi"


def test_bios_pxe_gets_lpxelinux_with_an_http_path_prefix() -> None:
    decision = decide_boot(info_with(PXE_BIOS), BootSpec(), PXELINUX)
    assert decision.options.get(c.OPT_BOOTFILE_NAME) == b"lpxelinux.0"
    assert decision.options.get(c.OPT_PXELINUX_PATH_PREFIX) == (
        b"http://198.18.0.1:8080/pxelinux/")


def test_a_nic_ipxe_rom_is_handed_the_loader_but_our_ipxe_keeps_its_script() -> None:
    rom = decide_boot(info_of("seabios_ipxe_rom_discover"), BootSpec(), PXELINUX)
    assert rom.kind is BootKind.TFTP
    assert rom.options.get(c.OPT_BOOTFILE_NAME) == b"lpxelinux.0"
    assert rom.options.get(c.OPT_IPXE_ENCAP) == IPXE_NO_PXEDHCP_OPTION  # no ProxyDHCP wait
    ours = info_with({c.OPT_USER_CLASS: b"pxestack",
                      c.OPT_IPXE_ENCAP: bytes.fromhex("130101")})
    assert decide_boot(ours, BootSpec(), PXELINUX).kind is BootKind.IPXE_SCRIPT
    again = decide_boot(info_of("seabios_ipxe_rom_discover"), BootSpec(), PXELINUX,
                        recently_chainloaded=True)
    assert again.kind is BootKind.IPXE_SCRIPT


def test_proxy_loader_offers_carry_pxeclient_and_discovery_control() -> None:
    decision = decide_boot(info_of("ovmf_native_pxe_discover"), BootSpec(), GRUB, proxy=True)
    assert decision.options.get(c.OPT_VENDOR_CLASS_ID) == b"PXEClient"
    assert c.OPT_VENDOR_SPECIFIC in decision.options


def test_uefi_http_boot_gets_the_shim_url() -> None:
    decision = decide_boot(info_with(HTTP_CLIENT_X64), BootSpec(), GRUB)
    assert decision.kind is BootKind.HTTP_BOOT
    assert decision.options.get(c.OPT_BOOTFILE_NAME) == b"http://198.18.0.1:8080/boot/shimx64.efi"


def test_ignore_still_wins() -> None:
    assert decide_boot(info_of("ovmf_native_pxe_discover"), None, GRUB).kind is BootKind.IGNORE


ARCHES = st.sampled_from(list(Arch))
LOADERS = st.sampled_from(list(Loader))
OPTIONAL_LOADERS = st.one_of(st.none(), LOADERS)


@given(arch=ARCHES, wanted=OPTIONAL_LOADERS, bios=LOADERS, x64=LOADERS, arm64=LOADERS)
def test_the_effective_loader_always_runs_on_the_architecture(
    arch: Arch, wanted: Loader | None, bios: Loader, x64: Loader, arm64: Loader
) -> None:
    defaults = replace(BASE, bios_loader=bios, efi_x64_loader=x64, efi_arm64_loader=arm64)
    loader = effective_loader(arch, BootSpec(loader=wanted), defaults)
    assert loader is Loader.IPXE or arch in LOADER_ARCHES[loader]
    if wanted is not None and (wanted is Loader.IPXE or arch in LOADER_ARCHES[wanted]):
        assert loader is wanted  # a usable profile choice always wins
    if loader is not Loader.IPXE:
        assert defaults.loader_file(arch, loader) is not None


@given(wanted=OPTIONAL_LOADERS, x64=LOADERS, proxy=st.booleans())
def test_pxe_firmware_never_gets_an_ipxe_binary_when_the_loader_is_not_ipxe(
    wanted: Loader | None, x64: Loader, proxy: bool
) -> None:
    defaults = replace(BASE, efi_x64_loader=x64)
    spec = BootSpec(loader=wanted)
    decision = decide_boot(info_of("ovmf_native_pxe_discover"), spec, defaults, proxy=proxy)
    loader = effective_loader(Arch.EFI_X64, spec, defaults)
    name = decision.options.get(c.OPT_BOOTFILE_NAME)
    assert name == (b"shimx64.efi" if loader is Loader.GRUB else b"ipxe.efi")
    assert decision.chainload is (loader is Loader.IPXE)


@pytest.mark.parametrize("loader", list(Loader))
def test_bios_files(loader: Loader) -> None:
    name = BASE.loader_file(Arch.X86_BIOS, loader)
    assert name == {Loader.IPXE: "undionly.kpxe", Loader.GRUB: None,
                    Loader.PXELINUX: "lpxelinux.0"}[loader]


def test_config_loaders_reach_the_boot_defaults() -> None:
    from pxestack.config import load_config
    from pxestack.service.dhcp import boot_defaults

    config = load_config({"dhcp": {"mode": "proxy", "boot": {
        "loader": {"efi_x64": "grub", "bios": "pxelinux"}, "shim_file": "efi/shim.efi"}}})
    defaults = boot_defaults(config, SERVER)
    assert defaults.efi_x64_loader is Loader.GRUB
    assert defaults.bios_loader is Loader.PXELINUX
    assert defaults.efi_arm64_loader is Loader.IPXE
    assert defaults.shim_file == "efi/shim.efi"


@pytest.mark.parametrize("boot", [
    {"loader": {"bios": "grub"}},
    {"loader": {"efi_x64": "pxelinux"}},
    {"loader": {"sparc": "ipxe"}},
    {"shim_file": "../shim.efi"},
])
def test_impossible_loader_settings_are_refused(boot: dict[str, object]) -> None:
    from pxestack.config import ConfigError, load_config

    with pytest.raises(ConfigError):
        load_config({"dhcp": {"mode": "proxy", "boot": boot}})
