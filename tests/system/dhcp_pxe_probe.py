"""A small PXE-style DHCP client for the system tests (run inside a client namespace).

It behaves like PXE firmware beside a proxyDHCP (PXE 2.1 §2.2): broadcast a DISCOVER with
option 60 ``PXEClient:Arch:00000:UNDI:002001`` and option 93, collect every OFFER for a
moment, take the address from the offer that has one, REQUEST it, configure it on the
interface, then ask the proxy on port 4011 for the boot file.  It prints one JSON object
with what it saw, for the test to check.

Usage: ``python dhcp_pxe_probe.py IFNAME``
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

from pxestack.errors import MalformedPacket
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

VENDOR = b"PXEClient:Arch:00000:UNDI:002001"


def pxe_options(kind: int, extra: dict[int, bytes] | None = None) -> DhcpOptions:
    items = {
        c.OPT_MESSAGE_TYPE: bytes((kind,)),
        c.OPT_MAX_MESSAGE_SIZE: (1472).to_bytes(2, "big"),
        c.OPT_CLIENT_ARCH: (0).to_bytes(2, "big"),
        c.OPT_CLIENT_NDI: b"\x01\x02\x01",
        c.OPT_VENDOR_CLASS_ID: VENDOR,
        c.OPT_PARAMETER_REQUEST_LIST: bytes([1, 3, 6, 43, 54, 60, 66, 67, 97]),
        c.OPT_CLIENT_UUID: b"\x00" + bytes(range(16)),
    }
    items.update(extra or {})
    return DhcpOptions(items)


def collect(sock: socket.socket, xid: int, seconds: float) -> list[DhcpMessage]:
    found: list[DhcpMessage] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(4096)
        except TimeoutError:
            break
        try:
            message = decode_dhcp(data)
        except MalformedPacket:
            continue
        if message.op == c.BOOTREPLY and message.xid == xid:
            found.append(message)
    return found


def summary(message: DhcpMessage) -> dict[str, object]:
    options = message.options
    return {
        "type": message.message_type,
        "yiaddr": str(message.yiaddr),
        "siaddr": str(message.siaddr),
        "server_id": str(options.ip(c.OPT_SERVER_ID)),
        "vendor": (options.raw(c.OPT_VENDOR_CLASS_ID) or b"").decode(errors="replace"),
        "file": message.file.decode(errors="replace"),
        "bootfile_option": (options.raw(c.OPT_BOOTFILE_NAME) or b"").decode(errors="replace"),
    }


def main(ifname: str) -> int:
    mac_text = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
    mac = bytes.fromhex(mac_text.replace(":", ""))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    sock.bind(("0.0.0.0", 68))
    xid = int.from_bytes(os.urandom(4), "big")
    base = DhcpMessage(op=c.BOOTREQUEST, xid=xid, chaddr=mac, flags=c.FLAG_BROADCAST,
                       options=pxe_options(c.DHCPDISCOVER))
    result: dict[str, object] = {}
    offers: list[DhcpMessage] = []
    for _ in range(3):  # retransmit like firmware does
        sock.sendto(encode_dhcp(base), ("255.255.255.255", 67))
        offers = collect(sock, xid, 2.0)
        if any(o.yiaddr != IPv4Address(0) for o in offers) and any(
            o.yiaddr == IPv4Address(0) for o in offers
        ):
            break
    result["offers"] = [summary(o) for o in offers]
    address_offer = next((o for o in offers if o.yiaddr != IPv4Address(0)), None)
    if address_offer is None:
        print(json.dumps(result))
        return 1
    request = base.replace(options=pxe_options(c.DHCPREQUEST, {
        c.OPT_REQUESTED_IP: address_offer.yiaddr.packed,
        c.OPT_SERVER_ID: address_offer.options.raw(c.OPT_SERVER_ID) or b"",
    }))
    sock.sendto(encode_dhcp(request), ("255.255.255.255", 67))
    acks = [m for m in collect(sock, xid, 2.0) if m.message_type == c.DHCPACK]
    result["acks"] = [summary(m) for m in acks]
    address = address_offer.yiaddr
    subprocess.run(["ip", "addr", "add", f"{address}/15", "dev", ifname], check=True)
    proxy = next((o for o in offers if o.yiaddr == IPv4Address(0)), None)
    if proxy is not None:
        # PXE 2.1 §2.2.4: the boot server request goes to port 4011, from the new address.
        boot = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        boot.bind((str(address), 0))
        boot_request = base.replace(ciaddr=address, flags=0, options=pxe_options(c.DHCPREQUEST))
        boot.sendto(encode_dhcp(boot_request), (str(proxy.options.ip(c.OPT_SERVER_ID)), 4011))
        result["boot_acks"] = [summary(m) for m in collect(boot, xid, 2.0)]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
