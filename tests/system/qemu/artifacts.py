"""Build the guest's kernel and busybox initramfs from Debian packages, once, and cache them.

Everything comes from the Debian archive through ``apt-get download`` (no network access
beyond the configured mirror): ``linux-image-<abi>-amd64`` for ``vmlinuz`` and the NIC
modules, ``busybox-static`` for the userland.  The results live under
``<repo>/.cache/qemu`` (git-ignored; ``PXESTACK_QEMU_CACHE`` overrides it) and are reused
until the init script or the package versions change.

Two Debian facts shape this module:

* Debian's kernel has virtio, virtio_net and e1000 as modules, and the ``.deb`` ships no
  ``modules.dep`` (depmod runs in the postinst).  The load order is therefore computed from
  each module's ``.modinfo`` ELF section (``depends=``).
* busybox-static 1.35 (Debian 12) segfaults in ``wget -T N``; the init wraps wget in
  ``timeout N`` instead.  busybox wget cannot send PUT, so ``set_installed`` (a PUT in mayu's
  API) is written by hand through ``nc``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]

#: Modules the guest needs for its NIC: virtio-net-pci (the default) and e1000 (spare).
NIC_MODULES = ("virtio_net", "virtio_pci", "e1000")
#: Loaded only when the kernel command line has ``netconsole=`` (its dependencies first).
NETCONSOLE_MODULE = "netconsole"

#: Marker every first-stage console line starts with; the harness watches for it.
MARK = "pxestack-e2e:"


def cache_dir() -> Path:
    """Where built artefacts are kept (``PXESTACK_QEMU_CACHE`` or ``<repo>/.cache/qemu``)."""
    override = os.environ.get("PXESTACK_QEMU_CACHE")
    return Path(override) if override else REPO_ROOT / ".cache" / "qemu"


# --------------------------------------------------------------------------------------
# Debian packages


def kernel_package_name() -> str:
    """The ABI-versioned kernel package ``linux-image-amd64`` currently depends on."""
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"],
        check=True, capture_output=True, text=True,
    ).stdout
    match = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-amd64)", out)
    if match is None:
        raise RuntimeError(f"cannot find the kernel package in: {out!r}")
    return match.group(1)


def download_deb(package: str, directory: Path) -> Path:
    """``apt-get download`` *package* into *directory* unless a ``.deb`` of it is there."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = sorted(directory.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    subprocess.run(
        ["apt-get", "download", package], cwd=directory, check=True, capture_output=True
    )
    found = sorted(directory.glob(f"{package}_*.deb"))
    if not found:
        raise RuntimeError(f"apt-get download {package} produced no .deb in {directory}")
    return found[-1]


def deb_members(deb: Path, wanted: re.Pattern[str]) -> dict[str, bytes]:
    """The regular files of *deb*'s data archive whose path matches *wanted*, by path."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        found: dict[str, bytes] = {}
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and wanted.search(name):
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    found[name] = extracted.read()
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed with {proc.returncode}")
    return found


# --------------------------------------------------------------------------------------
# Kernel modules: .modinfo and load order


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The ``key=value`` strings of a kernel module's ``.modinfo`` section, as lists by key.

    Reads the ELF64 little-endian section headers directly (kmod's ``modinfo`` need not be
    installed).  Raises ``ValueError`` for anything that is not such an ELF file.
    """
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not an ELF64 little-endian file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + index * shentsize
        )
        return name, offset, size

    _, names_offset, names_size = section(shstrndx)
    names = elf[names_offset : names_offset + names_size]
    for index in range(shnum):
        name_at, offset, size = section(index)
        name = names[name_at : names.index(b"\0", name_at)]
        if name == b".modinfo":
            info: dict[str, list[str]] = {}
            for entry in elf[offset : offset + size].split(b"\0"):
                key, sep, value = entry.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    raise ValueError("no .modinfo section")


def module_name(path: str) -> str:
    """The kernel's name for the module file at *path* (``-`` becomes ``_``)."""
    return Path(path).name.split(".ko")[0].replace("-", "_")


def load_order(depends: Mapping[str, Iterable[str]], roots: Iterable[str]) -> list[str]:
    """Every module *roots* need, dependencies first (a depth-first topological order).

    *depends* maps a module to the modules it depends on.  A dependency that is not a key
    of *depends* is an error: the caller must have collected every module file.
    """
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(module: str, chain: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        if state.get(module) == "visiting":
            raise ValueError(f"module dependency cycle: {' -> '.join((*chain, module))}")
        if module not in depends:
            raise KeyError(f"module {module!r} (needed by {chain[-1] if chain else 'roots'}) "
                           "is not in the package")
        state[module] = "visiting"
        for dependency in depends[module]:
            visit(dependency, (*chain, module))
        state[module] = "done"
        order.append(module)

    for root in roots:
        visit(root, ())
    return order


# --------------------------------------------------------------------------------------
# cpio (newc) writer


class CpioWriter:
    """Write a ``newc`` cpio archive (the format the kernel unpacks as an initramfs).

    Owners are root, times are zero, so the same inputs give the same bytes.
    """

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._inode = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self._inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0,
        )
        self._inode += 1
        self._out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        """Add a directory."""
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file."""
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link."""
        self._entry(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a character device node (needs no privileges: the kernel creates it)."""
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        """Write the trailer and return the archive."""
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


# --------------------------------------------------------------------------------------
# The first stage

UDHCPC_SCRIPT = """\
#!/bin/sh
# busybox udhcpc hook: configure the address it leased (udhcpc exports ip, mask, router).
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      ip route add default via "${router%% *}" dev "$interface" 2>/dev/null
    fi
    echo "$ip" > /tmp/leased-ip
    ;;
esac
exit 0
"""

INIT_SCRIPT = """\
#!/bin/busybox sh
# pxestack end-to-end first stage, built by tests/system/qemu/artifacts.py.
#
# Does what mayu's installer does, against the URLs on the kernel command line:
#   pxestack.url=<PXE URL>  (or mayu's own mayu=<PXE URL>), pxestack.api=<API URL>
# 1. DHCP with udhcpc, 2. GET  <PXE>/first-stage-script/<serial>  (enrols the host),
# 3. POST <PXE>/final-cloud-config.yaml (or pxestack.final=<path>) with the serial and MACs,
#    receives the final config (with the callback token from the script, if there is one),
# 4. PUT  <API>/admin/host/<serial>/set_installed,  5. poweroff -f.
# Every step prints one "MARK ..." line on the console; the harness times them.
# With the kernel arguments a profile may add, the steps are logged over the network too:
#   pxestack.syslog=HOST[:PORT]  busybox syslogd forwards what "logger" writes (UDP);
#   netconsole=<netconsole's argument>  the kernel's netconsole module sends console
#                                 output, and the steps written to /dev/kmsg (UDP).
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

mark() { echo "MARK $*"; }
fail() { mark "FAIL $*"; sleep 1; poweroff -f; }
mark "init started uptime=$(cut -d' ' -f1 /proc/uptime)"

for arg in $(cat /proc/cmdline); do
  case "$arg" in
    pxestack.url=*) PXE_URL="${arg#pxestack.url=}" ;;
    pxestack.api=*) API_URL="${arg#pxestack.api=}" ;;
    pxestack.final=*) FINAL="${arg#pxestack.final=}" ;;
    mayu=*) MAYU_URL="${arg#mayu=}" ;;
    pxestack.syslog=*) SYSLOG="${arg#pxestack.syslog=}" ;;
    netconsole=*) NETCONSOLE="${arg#netconsole=}" ;;
  esac
done
PXE_URL="${PXE_URL:-$MAYU_URL}"
API_URL="${API_URL:-$PXE_URL}"
FINAL="${FINAL:-final-cloud-config.yaml}"
[ -n "$PXE_URL" ] || fail "no pxestack.url= or mayu= on the kernel command line"

while read -r module; do
  insmod "/lib/modules/$module.ko" || mark "insmod $module failed"
done < /lib/modules/load-order

NIC=""
for attempt in $(seq 1 100); do
  for dev in /sys/class/net/*; do
    [ "${dev##*/}" = lo ] || { NIC="${dev##*/}"; break; }
  done
  [ -n "$NIC" ] && break
  sleep 0.1
done
[ -n "$NIC" ] || fail "no network interface appeared"
ip link set lo up
ip link set "$NIC" up
udhcpc -i "$NIC" -n -q -t 10 -T 1 -s /etc/udhcpc.script -x hostname:pxestack-e2e \\
  || fail "udhcpc got no lease on $NIC"
mark "dhcp ok nic=$NIC ip=$(cat /tmp/leased-ip)"

# Installer logs.  busybox syslogd sends each line logger writes to /dev/log on to the
# server.  netconsole is a module here, and insmod does not read the kernel command line:
# it is loaded with the argument now that the NIC has its address (netconsole's source).
# The console log level goes up so that netconsole sends warnings (and /dev/kmsg lines).
if [ -n "$SYSLOG" ]; then
  syslogd -R "$SYSLOG"
  for attempt in $(seq 1 50); do [ -S /dev/log ] && break; sleep 0.1; done
  [ -S /dev/log ] || mark "syslogd did not start"
fi
if [ -n "$NETCONSOLE" ]; then
  while read -r module; do
    insmod "/lib/modules/$module.ko" || mark "insmod $module failed"
  done < /lib/modules/netconsole-deps
  dmesg -n 7
  insmod /lib/modules/netconsole.ko "netconsole=$NETCONSOLE" || mark "insmod netconsole failed"
fi
say() {
  [ -n "$SYSLOG" ] && logger -t installer "$*"
  [ -n "$NETCONSOLE" ] && echo "installer: $*" > /dev/kmsg
  return 0
}
say "dhcp ok nic=$NIC ip=$(cat /tmp/leased-ip)"

SERIAL="$(cat /sys/class/dmi/id/product_serial)"
[ -n "$SERIAL" ] || fail "no SMBIOS serial"
NETDEVS=""
for dev in /sys/class/net/*; do
  name="${dev##*/}"
  [ "$name" = lo ] && continue
  mac="$(cat "$dev/address")"
  NETDEVS="$NETDEVS${NETDEVS:+,}{\\"Name\\":\\"$name\\",\\"MacAddress\\":\\"$mac\\"}"
done
BODY="{\\"Serial\\":\\"$SERIAL\\",\\"NetDevs\\":[$NETDEVS],\\"ConnectedNIC\\":\\"$NIC\\"}"

# busybox 1.35's "wget -T" segfaults: bound every transfer with timeout(1) instead.
timeout 30 wget -q -O /tmp/first-stage.sh "$PXE_URL/first-stage-script/$SERIAL" \\
  || fail "GET $PXE_URL/first-stage-script/$SERIAL"
mark "enrolled serial=$SERIAL script=$(wc -c < /tmp/first-stage.sh)B"
say "enrolled serial=$SERIAL"
# The rendered installer carries this host's callback token (TOKEN=...), if the server
# issues one; mayu's never did.
TOKEN="$(sed -n 's/^TOKEN=//p' /tmp/first-stage.sh | head -n1 | tr -d "'\\"")"

set -- --header "Content-Type: application/json"
[ -n "$TOKEN" ] && set -- "$@" --header "Authorization: Bearer $TOKEN"
timeout 30 wget -q -O /tmp/final-config "$@" --post-data "$BODY" "$PXE_URL/$FINAL" \\
  || fail "POST $PXE_URL/$FINAL"
mark "host data posted body=$BODY final-config=$(wc -c < /tmp/final-config)B"

# busybox wget has no PUT: write the request by hand (HTTP/1.0, so the server closes).
# busybox nc stops reading once its stdin ends, so the writer stays open until the answer
# has arrived (at most 30 s) instead of ending right after the request.
put() {
  rest="${1#http://}"; hostport="${rest%%/*}"; path="/${rest#*/}"
  host="${hostport%%:*}"; port="${hostport##*:}"
  [ "$port" = "$hostport" ] && port=80
  auth=""
  [ -n "$TOKEN" ] && auth="Authorization: Bearer $TOKEN\\r\\n"
  : > /tmp/put-response
  {
    printf "PUT %s HTTP/1.0\\r\\nHost: %s\\r\\n${auth}Content-Length: 0\\r\\n\\r\\n" \\
      "$path" "$hostport"
    for i in $(seq 1 300); do
      grep -q '^HTTP/' /tmp/put-response && break
      sleep 0.1
    done
  } | timeout 30 nc "$host" "$port" > /tmp/put-response
  head -n1 /tmp/put-response | grep -q '^HTTP/1\\.[01] 2'
}
put "$API_URL/admin/host/$SERIAL/set_installed" \\
  || fail "PUT set_installed: $(head -n1 /tmp/put-response)"
mark "installed serial=$SERIAL uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -n "$SYSLOG$NETCONSOLE" ]; then
  say "installed serial=$SERIAL"
  sleep 0.5  # syslogd and netconsole send asynchronously
fi
poweroff -f
""".replace("MARK", MARK)


@dataclass(frozen=True)
class Artifacts:
    """The guest's kernel and initramfs."""

    kernel: Path
    initrd: Path
    kernel_version: str
    modules: tuple[str, ...]


def build_initramfs(busybox: bytes, modules: Mapping[str, bytes], order: Iterable[str],
                    netconsole_deps: Iterable[str] = ()) -> bytes:
    """A gzip-compressed newc initramfs with busybox, the modules and the first-stage init.

    With *netconsole_deps* (the modules netconsole needs, in load order) the netconsole
    module and those are added too, listed in ``lib/modules/netconsole-deps``.
    """
    cpio = CpioWriter()
    for directory in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "run"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox, 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    ordered = list(order)
    for name in ordered:
        cpio.file(f"lib/modules/{name}.ko", modules[name])
    cpio.file("lib/modules/load-order", "".join(f"{n}\n" for n in ordered).encode())
    deps = list(netconsole_deps)
    if NETCONSOLE_MODULE in modules:
        for name in deps:
            if name not in ordered:
                cpio.file(f"lib/modules/{name}.ko", modules[name])
        cpio.file(f"lib/modules/{NETCONSOLE_MODULE}.ko", modules[NETCONSOLE_MODULE])
        cpio.file("lib/modules/netconsole-deps", "".join(f"{n}\n" for n in deps).encode())
    return gzip.compress(cpio.finish(), mtime=0)


def ensure_artifacts(cache: Path | None = None) -> Artifacts:
    """Build (or reuse) the kernel and initramfs; safe to call from every test."""
    cache = cache or cache_dir()
    debs = cache / "debs"
    kernel_deb = download_deb(_kernel_package(debs), debs)
    busybox_deb = download_deb("busybox-static", debs)
    key = hashlib.sha256(
        b"\0".join([INIT_SCRIPT.encode(), UDHCPC_SCRIPT.encode(), NETCONSOLE_MODULE.encode(),
                    kernel_deb.name.encode(), busybox_deb.name.encode()])
    ).hexdigest()[:12]
    out = cache / f"build-{key}"
    kernel, initrd, manifest = out / "vmlinuz", out / "initrd.img", out / "modules.txt"
    if not (kernel.exists() and initrd.exists() and manifest.exists()):
        tmp = cache / f"build-{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        kernel_files = deb_members(
            kernel_deb,
            re.compile(r"^boot/vmlinuz-|/kernel/(drivers/virtio|drivers/net|net/core)/[^/]*\.ko"
                       r"|/e1000/e1000\.ko|/kernel/fs/configfs/configfs\.ko"),
        )
        vmlinuz = next(data for path, data in kernel_files.items() if path.startswith("boot/"))
        modules = {module_name(p): d for p, d in kernel_files.items() if ".ko" in p}
        depends = {
            name: [d for d in modinfo(data).get("depends", [""])[0].split(",") if d]
            for name, data in modules.items()
        }
        order = load_order(depends, NIC_MODULES)
        netconsole_deps = load_order(depends, [NETCONSOLE_MODULE])[:-1]
        busybox = deb_members(busybox_deb, re.compile(r"^bin/busybox$"))["bin/busybox"]
        (tmp / "vmlinuz").write_bytes(vmlinuz)
        (tmp / "initrd.img").write_bytes(
            build_initramfs(busybox, modules, order, netconsole_deps))
        (tmp / "modules.txt").write_text("\n".join(order) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    version = kernel_deb.name.split("_")[0].removeprefix("linux-image-")
    return Artifacts(kernel, initrd, version, tuple(manifest.read_text().split()))


def _kernel_package(debs: Path) -> str:
    """The kernel package: the cached one if any (no apt query), else the current one."""
    cached = sorted(debs.glob("linux-image-*-amd64_*.deb"))
    if cached:
        return cached[-1].name.split("_")[0]
    return kernel_package_name()


__all__ = [
    "MARK",
    "Artifacts",
    "CpioWriter",
    "build_initramfs",
    "cache_dir",
    "ensure_artifacts",
    "load_order",
    "modinfo",
]
