"""Serve per-MAC generated boot files over TFTP, with a static directory behind them.

Two kinds of dynamic content, both through pxestack's ``FileSource`` seam:

* ``pxelinux.cfg/01-aa-bb-cc-dd-ee-ff``: PXELINUX asks for its config under the client's
  MAC (hardware type 01 + MAC, dash-separated).  The MAC is in the path, so the callable
  just parses it.
* ``boot.ipxe``: the same name for every client, rendered per machine.  The TFTP server only
  knows the client's IP, so the MAC comes from the kernel's neighbour table (after a DHCP
  exchange and the TFTP request itself the client is in it).

Anything else falls through to the static directory (``--root``), looked up with the same
safe path rules as ``pxestack tftp``.

Run it (port 69 needs root; any high port works for a try-out)::

    python examples/tftp_per_mac.py --root /tmp/tftproot --listen 127.0.0.1:10069
    curl -s tftp://127.0.0.1:10069/pxelinux.cfg/01-52-54-00-12-34-56
    curl -s tftp://127.0.0.1:10069/boot.ipxe
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from pxestack.tftp.protocol import TftpServer
from pxestack.tftp.session import SessionSettings
from pxestack.tftp.source import CallableSource, ChainSource, FilesystemSource, TftpClient

#: What each known machine should boot; unknown MACs get the installer.
MACHINES = {
    "52:54:00:12:34:56": {"hostname": "web-1", "kernel": "vmlinuz-6.1", "role": "web"},
    "52:54:00:ab:cd:ef": {"hostname": "db-1", "kernel": "vmlinuz-6.1", "role": "database"},
}
DEFAULT = {"hostname": "new-machine", "kernel": "installer/vmlinuz", "role": "installer"}

PXELINUX_NAME = re.compile(r"^pxelinux\.cfg/01-((?:[0-9a-f]{2}-){5}[0-9a-f]{2})$")


def mac_of_ip(ip: str, table: Path = Path("/proc/net/arp")) -> str | None:
    """The MAC the kernel's neighbour table holds for *ip* (Linux), if any."""
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[0] == ip and fields[3] != "00:00:00:00:00:00":
            return fields[3].lower()
    return None


def pxelinux_config(mac: str) -> str:
    """A PXELINUX config for one machine."""
    machine = MACHINES.get(mac, DEFAULT)
    return (
        "DEFAULT linux\n"
        "LABEL linux\n"
        f"  KERNEL {machine['kernel']}\n"
        f"  APPEND initrd=initrd.img hostname={machine['hostname']} role={machine['role']}\n"
    )


def ipxe_script(mac: str | None) -> str:
    """An iPXE script for one machine (installer when the MAC is unknown)."""
    machine = MACHINES.get(mac or "", DEFAULT)
    return (
        "#!ipxe\n"
        f"echo Booting {machine['hostname']} ({mac or 'unknown MAC'})\n"
        f"kernel {machine['kernel']} hostname={machine['hostname']}\n"
        "boot\n"
    )


def per_mac(client: TftpClient, path: str) -> str | None:
    """The CallableSource callable: generated text, or None to fall through."""
    match = PXELINUX_NAME.match(path.lower())
    if match:
        return pxelinux_config(match.group(1).replace("-", ":"))
    if path == "boot.ipxe":
        return ipxe_script(mac_of_ip(client.host))
    return None


def main() -> int:
    """Parse the arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("tftproot"))
    parser.add_argument("--listen", default="127.0.0.1:10069", metavar="ADDR:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    args.root.mkdir(parents=True, exist_ok=True)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    source = ChainSource(CallableSource(per_mac), FilesystemSource(args.root))
    server = TftpServer(source, settings=SessionSettings(), transfer_host=host)
    reactor.listenUDP(int(port), server.listener(), interface=host)  # type: ignore[attr-defined]
    print(f"serving per-MAC TFTP content on {host}:{port} (root {args.root})", file=sys.stderr)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
