"""The harness's own pure parts: module load order, .modinfo, cpio, console timing, QEMU argv.

These run everywhere (no root, no QEMU): a mistake here would otherwise only show up as a
guest that never finds its NIC.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qemu.artifacts import INIT_SCRIPT, MARK, CpioWriter, build_initramfs, load_order, modinfo
from qemu.scenario import LPXELINUX_STALL, BootResult, Stall
from qemu.vm import ConsoleWatch, Machine, qemu_command

# -- module load order ------------------------------------------------------------------------

#: The real dependency graph of Debian 6.1's NIC modules (from their .modinfo).
DEBIAN_DEPENDS = {
    "virtio_ring": [],
    "virtio": [],
    "failover": [],
    "net_failover": ["failover"],
    "virtio_net": ["net_failover", "virtio", "virtio_ring"],
    "virtio_pci_modern_dev": [],
    "virtio_pci_legacy_dev": [],
    "virtio_pci": ["virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio", "virtio_ring"],
    "e1000": [],
}


def test_load_order_puts_dependencies_first_and_each_once() -> None:
    order = load_order(DEBIAN_DEPENDS, ["virtio_net", "virtio_pci", "e1000"])
    assert sorted(order) == sorted(DEBIAN_DEPENDS)
    for module, dependencies in DEBIAN_DEPENDS.items():
        assert all(order.index(d) < order.index(module) for d in dependencies)


@given(st.dictionaries(st.sampled_from("abcdefgh"), st.sets(st.sampled_from("abcdefgh")),
                       min_size=1))
def test_load_order_on_any_acyclic_graph(raw: dict[str, set[str]]) -> None:
    # keep only edges to "smaller" names: acyclic by construction, every dependency known
    names = set(raw) | {d for deps in raw.values() for d in deps}
    depends = {n: sorted(d for d in raw.get(n, ()) if d < n) for n in names}
    order = load_order(depends, sorted(names))
    assert sorted(order) == sorted(names)
    assert all(order.index(d) < order.index(m) for m, deps in depends.items() for d in deps)


def test_load_order_reports_cycles_and_missing_modules() -> None:
    with pytest.raises(ValueError, match="cycle"):
        load_order({"a": ["b"], "b": ["a"]}, ["a"])
    with pytest.raises(KeyError, match="virtio"):
        load_order({"virtio_net": ["virtio"]}, ["virtio_net"])


# -- .modinfo -----------------------------------------------------------------------------------


def elf_with_sections(sections: dict[str, bytes]) -> bytes:
    """A minimal ELF64 little-endian file holding *sections* (plus .shstrtab)."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    bodies = [*sections.values(), names]
    offsets, data = [], b""
    for body in bodies:
        offsets.append(64 + len(data))
        data += body
    shoff = 64 + len(data)
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                          len(bodies) + 1, len(bodies))
    name_at = 1
    headers = bytes(64)  # the null section
    for name, offset, body in zip([*sections, ".shstrtab"], offsets, bodies, strict=True):
        headers += struct.pack("<IIQQQQIIQQ", name_at, 1, 0, 0, offset, len(body), 0, 0, 1, 0)
        name_at += len(name) + 1
    return header + data + headers


def test_modinfo_reads_depends_from_the_section() -> None:
    elf = elf_with_sections({
        ".text": b"\x90" * 16,
        ".modinfo": b"license=GPL\0depends=net_failover,virtio\0name=virtio_net\0"
                    b"alias=a\0alias=b\0",
    })
    info = modinfo(elf)
    assert info["depends"] == ["net_failover,virtio"]
    assert info["name"] == ["virtio_net"]
    assert info["alias"] == ["a", "b"]


def test_modinfo_rejects_non_modules() -> None:
    with pytest.raises(ValueError):
        modinfo(b"MZ" + bytes(100))
    with pytest.raises(ValueError, match=r"no \.modinfo"):
        modinfo(elf_with_sections({".text": b"\x90"}))


# -- cpio ---------------------------------------------------------------------------------------


def read_newc(archive: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, rdev) of a newc archive, read independently of CpioWriter."""
    entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    offset = 0
    while True:
        assert archive[offset : offset + 6] == b"070701"
        fields = [int(archive[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size = fields[1], fields[6]
        rmajor, rminor, namesize = fields[9], fields[10], fields[11]
        name_start = offset + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        data_start = (name_start + namesize + 3) & ~3
        data = archive[data_start : data_start + size]
        offset = (data_start + size + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data, (rmajor, rminor))


@given(st.dictionaries(st.from_regex(r"[a-z]{1,12}", fullmatch=True), st.binary(max_size=40),
                       max_size=6))
def test_cpio_round_trips_through_an_independent_reader(files: dict[str, bytes]) -> None:
    writer = CpioWriter()
    for name, data in files.items():
        writer.file(name, data, 0o640)
    entries = read_newc(writer.finish())
    assert {n: d for n, (_, d, _) in entries.items()} == files
    assert all(mode == 0o100640 for mode, _, _ in entries.values())


def test_initramfs_holds_init_busybox_console_and_ordered_modules() -> None:
    image = build_initramfs(b"BUSYBOX", {"b": b"B", "a": b"A"}, ["a", "b"])
    entries = read_newc(gzip.decompress(image))
    assert entries["init"][0] == 0o100755 and entries["init"][1] == INIT_SCRIPT.encode()
    assert entries["bin/busybox"][1] == b"BUSYBOX"
    assert entries["dev/console"][0] == 0o020600 and entries["dev/console"][2] == (5, 1)
    assert entries["lib/modules/load-order"][1] == b"a\nb\n"
    assert entries["bin/sh"] == (0o120777, b"busybox", (0, 0))


def test_initramfs_carries_netconsole_and_its_dependencies_apart() -> None:
    modules = {"a": b"A", "configfs": b"C", "netconsole": b"N"}
    entries = read_newc(gzip.decompress(
        build_initramfs(b"BUSYBOX", modules, ["a"], ["configfs"])))
    assert entries["lib/modules/load-order"][1] == b"a\n"  # not loaded at every boot
    assert entries["lib/modules/netconsole-deps"][1] == b"configfs\n"
    assert entries["lib/modules/netconsole.ko"][1] == b"N"
    assert entries["lib/modules/configfs.ko"][1] == b"C"
    # The init loads it with the command line's argument (insmod does not read it).
    assert 'insmod /lib/modules/netconsole.ko "netconsole=$NETCONSOLE"' in INIT_SCRIPT
    assert 'syslogd -R "$SYSLOG"' in INIT_SCRIPT


def test_init_never_uses_wget_dash_t() -> None:
    # busybox-static 1.35 (Debian 12) segfaults in "wget -T N".
    commands = [line for line in INIT_SCRIPT.splitlines() if not line.lstrip().startswith("#")]
    assert not any("wget -T" in line for line in commands)
    assert "timeout 30 wget" in INIT_SCRIPT
    assert f'echo "{MARK} $*"' in INIT_SCRIPT


# -- console timing -----------------------------------------------------------------------------


def test_console_lines_are_timestamped_when_complete(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    watch = ConsoleWatch(log, started=0.0)
    watch.poll()  # no file yet
    log.write_bytes(b"SeaBIOS\r\niPXE half")
    watch.poll()
    assert [line for _, line in watch.lines] == ["SeaBIOS"]
    with log.open("ab") as out:
        out.write(b" line\n")
    watch.poll()
    assert [line for _, line in watch.lines] == ["SeaBIOS", "iPXE half line"]
    assert watch.first(r"iPXE") is not None and watch.first("nothing") is None


def test_a_stall_is_the_milestone_then_silence() -> None:
    watch = ConsoleWatch(Path("/nonexistent"), started=0.0)
    watch.lines = [(0.4, "iPXE Features: DNS HTTP"), (18.6, "PXELINUX 6.04 lwIP 2020")]
    assert LPXELINUX_STALL.matches(watch, now=18.6 + 61.0)
    assert not LPXELINUX_STALL.matches(watch, now=18.6 + 59.0)  # not quiet long enough
    watch.lines.append((20.1, "pxestack-e2e: init started"))
    assert not LPXELINUX_STALL.matches(watch, now=20.1 + 59.0)  # it went on
    silent = ConsoleWatch(Path("/nonexistent"), started=0.0)
    silent.lines = [(0.4, "iPXE Features: DNS HTTP")]
    assert not LPXELINUX_STALL.matches(silent, now=500.0)  # never reached the loader
    with pytest.raises(ValueError, match="unknown milestone"):
        Stall(after="nowhere", quiet=1.0, why="")


def test_a_result_reports_its_power_cycles_and_the_console_tail() -> None:
    result = BootResult(server="dnsmasq", firmware="bios", serial="E2E-SN-0001", mac="m",
                        ok=False, exit=None, milestones={"pxelinux": 18.6},
                        failure="timed out", power_cycles=["hang at 63.6 s"],
                        console_tail=["PXELINUX 6.04 lwIP"])
    line = result.summary()
    assert "FAILED (timed out)" in line and "pxelinux=18.60" in line
    assert "power-cycled: hang at 63.6 s" in line
    assert line.endswith("console ended with: PXELINUX 6.04 lwIP")


# -- QEMU command lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("firmware", "romfile", "pflash"),
    [("bios", None, False), ("uefi", "efi-virtio.rom", True), ("uefi-pxe", "", True)],
)
def test_qemu_command_per_firmware(firmware: str, romfile: str | None, pflash: bool) -> None:
    machine = Machine.numbered(2)
    argv = qemu_command(machine, firmware, "tap1", Path("/tmp/s.log"), Path("/tmp/vars.fd"))
    assert argv[:3] == ["qemu-system-x86_64", "-accel", "tcg"]
    nic = argv[argv.index("-device") + 1]
    assert f"mac={machine.mac}" in nic
    if romfile is None:
        assert "romfile" not in nic
    else:
        assert nic.split("romfile=")[1].split(",")[0].endswith(romfile)
    assert any("if=pflash" in a for a in argv) is pflash
    assert f"serial={machine.serial}" in argv[argv.index("-smbios") + 1]
    with pytest.raises(ValueError):
        qemu_command(machine, "coreboot", "tap1", Path("/tmp/s.log"), None)


@pytest.mark.parametrize("firmware", ["uefi-pxe", "uefi-sb", "uefi-http", "uefi-sb-http"])
def test_http_boot_machines_switch_ovmfs_pxe_off(firmware: str) -> None:
    argv = qemu_command(Machine.numbered(1), firmware, "tap0", Path("/tmp/s.log"),
                        Path("/tmp/vars.fd"))
    switches = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-fw_cfg"]
    http = firmware.endswith("-http")
    assert switches == ([
        "name=opt/org.tianocore/IPv4PXESupport,string=no",
        "name=opt/org.tianocore/IPv6PXESupport,string=no",
    ] if http else [])
    secure = firmware.startswith("uefi-sb")
    assert ("q35,smm=on" in argv) is secure
    assert any(a.endswith("OVMF_CODE_4M.secboot.fd") for a in argv) is secure
    assert argv[argv.index("-device") + 1].endswith(",romfile=")  # no iPXE ROM


# -- the DHCP capture reader ---------------------------------------------------------------


def test_read_dhcp_pcap_returns_ports_and_messages(tmp_path: Path) -> None:
    import dpkt

    from pxestack.wire import constants as c
    from pxestack.wire.dhcp import DhcpMessage, encode_dhcp
    from pxestack.wire.dhcp_options import DhcpOptions
    from qemu.capture import describe, read_dhcp_pcap

    message = DhcpMessage(op=c.BOOTREQUEST, xid=7, chaddr=bytes.fromhex("525400e2e001"),
                          options=DhcpOptions({c.OPT_MESSAGE_TYPE: bytes((c.DHCPDISCOVER,))}))
    udp = dpkt.udp.UDP(sport=68, dport=67, data=encode_dhcp(message))
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=bytes(4), dst=b"\xff" * 4, p=dpkt.ip.IP_PROTO_UDP, data=udp)
    arp = dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=bytes(6),
                                 type=dpkt.ethernet.ETH_TYPE_ARP, data=dpkt.arp.ARP())
    frame = dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=bytes.fromhex("525400e2e001"),
                                   type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    path = tmp_path / "one.pcap"
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        writer.writepkt(bytes(arp), ts=0.0)  # not UDP: skipped
        writer.writepkt(bytes(frame), ts=1.0)
    [(sport, dport, decoded)] = read_dhcp_pcap(path)
    assert (sport, dport, decoded) == (68, 67, message)
    assert "68->67 DISCOVER xid=00000007" in describe([(sport, dport, decoded)])
