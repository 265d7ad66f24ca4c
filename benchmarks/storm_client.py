"""The boot-storm load generator: N simulated machines, run inside the client namespace.

Started by :mod:`benchmarks.bootstorm` as ``python benchmarks/storm_client.py SPEC.json``;
prints one JSON report on stdout.  Each simulated machine walks the whole network-boot and
install flow a real one does (docs/reference/mayu.md), one asyncio task per machine, started at the
configured arrival rate:

1. ``dhcp_pxe``: DHCP DISCOVER/OFFER/REQUEST/ACK as a PXE ROM (option 60 ``PXEClient``,
   93 = x86 BIOS, 97 = its UUID).  The client namespace has one address, so the machines
   talk through one socket on 198.18.0.2:67 acting as a DHCP relay agent (giaddr), the
   way perfdhcp does; the server answers giaddr:67 and replies are matched by xid.
2. ``tftp``: the boot file named in the ACK (``undionly.kpxe``) over TFTP, blksize 1432 as
   iPXE asks, from the machine's *own* leased address: the address is added to the client
   interface once leased, so per-client limits in the server apply per machine.
3. ``dhcp_ipxe``: DORA again as iPXE (option 77 ``iPXE``, option 175); the ACK's boot file
   must be the HTTP script URL.
4. ``script``: ``GET`` the script URL, then the machine-specific script
   (``/ipxebootscript?serial=..&uuid=..&mac=..``).
5. ``enrol``: ``GET /first-stage-script/<serial>``: the server enrols the machine (profile,
   address, git commit) and returns the installer script holding the per-host token.
6. ``hostdata``: ``POST /final-ignition-config.json`` with the host data, token as bearer.
7. ``installed``: ``PUT /admin/host/<serial>/set_installed`` with the token.

Every wait is bounded (per-request time-outs, retries with a cap, an overall deadline).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, cast

from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

PHASES = ("dhcp_pxe", "tftp", "dhcp_ipxe", "script", "enrol", "hostdata", "installed")
#: iPXE's own option 175 contents as captured from real firmware, abbreviated: bus id, version.
IPXE_ENCAP = bytes.fromhex("b105018086100eeb030100001701011501011301011101")


class StormError(Exception):
    """One machine's flow failed (the message says where)."""


class TftpRefusedError(StormError):
    """The TFTP server answered the request with an ERROR packet."""


@dataclass
class Machine:
    """One simulated machine and what it measured."""

    index: int
    mac: bytes
    uuid: bytes
    serial: str
    address: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    error: str = ""
    finished: float = 0.0
    tftp_refusals: int = 0

    @property
    def mac_text(self) -> str:
        return self.mac.hex(":")


class DhcpRelay(asyncio.DatagramProtocol):
    """One UDP socket on the relay address; replies are routed to the waiting xid."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[int, int], asyncio.Future[DhcpMessage]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.stray = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython 3.11's selector UDP transport is not a DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = decode_dhcp(data)
        except Exception:
            self.stray += 1
            return
        future = self.waiting.get((message.xid, message.message_type or 0))
        if future is not None and not future.done():
            future.set_result(message)
        else:
            self.stray += 1

    async def exchange(
        self, packet: bytes, xid: int, expect: tuple[int, ...], server: str, tries: int = 4
    ) -> DhcpMessage:
        """Send *packet* until a reply of a type in *expect* arrives (1 s, then doubling)."""
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        timeout = 1.0
        for _ in range(tries):
            futures = {kind: loop.create_future() for kind in expect}
            for kind, future in futures.items():
                self.waiting[(xid, kind)] = future
            self.transport.sendto(packet, (server, 67))
            done, _ = await asyncio.wait(
                futures.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for kind in futures:
                self.waiting.pop((xid, kind), None)
            if done:
                return next(iter(done)).result()
            timeout *= 2
        raise StormError(f"no DHCP answer to xid {xid:#x} after {tries} tries")


def _request_options(machine: Machine, ipxe: bool, kind: int) -> list[tuple[int, bytes]]:
    options = [
        (c.OPT_MESSAGE_TYPE, bytes([kind])),
        (c.OPT_MAX_MESSAGE_SIZE, (1472).to_bytes(2, "big")),
        (c.OPT_CLIENT_ARCH, b"\x00\x00"),
        (c.OPT_CLIENT_NDI, b"\x01\x02\x01"),
        (c.OPT_VENDOR_CLASS_ID, b"PXEClient:Arch:00000:UNDI:002001"),
        (c.OPT_CLIENT_UUID, b"\x00" + machine.uuid),
        (c.OPT_PARAMETER_REQUEST_LIST, bytes([1, 3, 6, 12, 15, 43, 60, 66, 67, 119, 175])),
    ]
    if ipxe:
        options += [(c.OPT_USER_CLASS, b"iPXE"), (c.OPT_IPXE_ENCAP, IPXE_ENCAP)]
    return options


async def dora(
    relay: DhcpRelay, machine: Machine, spec: dict[str, Any], *, ipxe: bool
) -> DhcpMessage:
    """DISCOVER -> OFFER -> REQUEST -> ACK through the relay socket; returns the ACK."""
    xid = random.getrandbits(32)
    giaddr = IPv4Address(spec["relay_ip"])
    discover = DhcpMessage(
        op=c.BOOTREQUEST, xid=xid, chaddr=machine.mac, hops=1, giaddr=giaddr,
        options=DhcpOptions(_request_options(machine, ipxe, c.DHCPDISCOVER)),
    )  # fmt: skip
    offer = await relay.exchange(encode_dhcp(discover), xid, (c.DHCPOFFER,), spec["server_ip"])
    server_id = offer.options.raw(c.OPT_SERVER_ID)
    if server_id is None:
        raise StormError("OFFER without server identifier")
    request_options = [
        *_request_options(machine, ipxe, c.DHCPREQUEST),
        (c.OPT_REQUESTED_IP, offer.yiaddr.packed),
        (c.OPT_SERVER_ID, server_id),
    ]
    request = DhcpMessage(
        op=c.BOOTREQUEST, xid=xid, chaddr=machine.mac, hops=1, giaddr=giaddr,
        options=DhcpOptions(request_options),
    )  # fmt: skip
    ack = await relay.exchange(encode_dhcp(request), xid, (c.DHCPACK, c.DHCPNAK), spec["server_ip"])
    if ack.message_type != c.DHCPACK:
        raise StormError(f"REQUEST for {offer.yiaddr} got a NAK")
    return ack


def boot_file(message: DhcpMessage) -> str:
    """Option 67, else the ``file`` field."""
    raw = message.options.raw(c.OPT_BOOTFILE_NAME)
    value = raw if raw is not None else message.file
    return value.rstrip(b"\x00").decode("latin-1")


#: iPXE's retransmission timer bounds (``DEFAULT_MIN_TIMEOUT`` = 1/4 s, ``DEFAULT_MAX_TIMEOUT``
#: = 10 s in iPXE's core/retry.c).
TFTP_MIN_TIMEOUT = 0.25
TFTP_MAX_TIMEOUT = 10.0


class TftpDownload(asyncio.DatagramProtocol):
    """A lock-step TFTP read (RFC 1350 with RFC 2347/2348 blksize), bounded retries."""

    def __init__(self, blksize: int) -> None:
        self.blksize = blksize
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython 3.11's selector UDP transport is not a DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    async def _next(self, timeout: float) -> tuple[bytes, tuple[str, int]] | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def fetch(self, server: str, path: str, deadline: float) -> int:
        """Download *path*; returns its size.  StormError on ERROR or time-out."""
        assert self.transport is not None
        rrq = (b"\x00\x01" + path.encode() + b"\x00octet\x00blksize\x00"
               + str(self.blksize).encode() + b"\x00tsize\x000\x00")  # fmt: skip
        last_sent, destination = rrq, (server, 69)
        self.transport.sendto(rrq, destination)
        expected, received, blksize = 1, 0, 512
        timeout = TFTP_MIN_TIMEOUT
        peer: tuple[str, int] | None = None
        while time.monotonic() < deadline:
            item = await self._next(timeout)
            if item is None:
                # iPXE's retry timer (core/retry.c): double the timeout after each expiry and
                # give up once it would exceed the maximum (about 16 s of silence in all).
                timeout *= 2
                if timeout > TFTP_MAX_TIMEOUT:
                    raise StormError(f"TFTP {path}: timed out at block {expected}")
                self.transport.sendto(last_sent, destination)
                continue
            timeout = TFTP_MIN_TIMEOUT
            data, addr = item
            if peer is None:
                peer, destination = addr, addr
            elif addr != peer:
                continue
            opcode = int.from_bytes(data[:2], "big")
            if opcode == 6:  # OACK
                fields = data[2:].split(b"\x00")
                options = dict(zip(fields[0::2], fields[1::2], strict=False))
                blksize = int(options.get(b"blksize", b"512"))
                last_sent = b"\x00\x04\x00\x00"
            elif opcode == 3:  # DATA
                block = int.from_bytes(data[2:4], "big")
                if block == expected & 0xFFFF:
                    received += len(data) - 4
                    expected += 1
                    last_sent = b"\x00\x04" + data[2:4]
                    if len(data) - 4 < blksize:
                        self.transport.sendto(last_sent, destination)
                        return received
                else:
                    continue  # a duplicate: the ACK already sent stands
            elif opcode == 5:
                raise TftpRefusedError(f"TFTP {path}: ERROR {data[4:-1]!r}")
            else:
                continue
            self.transport.sendto(last_sent, destination)
        raise StormError(f"TFTP {path}: over the deadline")


async def http_request(
    method: str, url: str, *, source: str, token: str | None = None,
    body: bytes = b"", timeout: float = 30.0,
) -> tuple[int, bytes]:  # fmt: skip
    """One HTTP/1.1 request (``Connection: close``) from *source*; returns (status, body)."""
    assert url.startswith("http://")
    hostport, _, path = url[len("http://") :].partition("/")
    host, _, port = hostport.partition(":")
    headers = [
        f"{method} /{path} HTTP/1.1", f"Host: {hostport}", "Connection: close",
        "User-Agent: pxestack-bootstorm", f"Content-Length: {len(body)}",
    ]  # fmt: skip
    if token:
        headers.append(f"Authorization: Bearer {token}")
    if body:
        headers.append("Content-Type: application/json")
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(
            host, int(port or 80), local_addr=(source, 0)
        )
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read(-1)
        finally:
            writer.close()

    raw = await asyncio.wait_for(exchange(), timeout)
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2:
        raise StormError(f"{method} {url}: no HTTP status line")
    if b"transfer-encoding: chunked" in head.lower():
        payload = _dechunk(payload)
    return int(status_line[1]), payload


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


class AddressAdder:
    """Adds each leased address to the client interface through one ``ip -batch -``."""

    def __init__(self, ifname: str, prefix: int) -> None:
        self.ifname, self.prefix = ifname, prefix
        self.process = subprocess.Popen(
            ["ip", "-force", "-batch", "-"], stdin=subprocess.PIPE, text=True
        )

    async def add(self, address: str) -> None:
        """Add *address* and wait (bounded) until a socket can bind to it."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"addr add {address}/{self.prefix} dev {self.ifname}\n")
        self.process.stdin.flush()
        for _ in range(200):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind((address, 0))
                return
            except OSError:
                await asyncio.sleep(0.01)
            finally:
                probe.close()
        raise StormError(f"address {address} never became usable")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


#: How often a refused TFTP transfer is tried again, and the back-off before each try.
TFTP_ATTEMPTS = 6
TFTP_RETRY_DELAY = (1.0, 3.0)


async def fetch_with_retries(
    machine: Machine, spec: dict[str, Any], filename: str, deadline: float
) -> int:
    """TFTP-download *filename*; a refusal (server ERROR) is retried after 1-3 s.

    PXE firmware that fails to load its boot file starts over after a pause (and a rack's
    worth of ROMs do exactly that when a server sheds load), so a refusal counts in
    ``tftp_refusals`` but does not fail the machine until :data:`TFTP_ATTEMPTS` are spent.
    """
    loop = asyncio.get_running_loop()
    for attempt in range(1, TFTP_ATTEMPTS + 1):
        transport, download = await loop.create_datagram_endpoint(
            lambda: TftpDownload(spec["tftp_blksize"]), local_addr=(machine.address, 0)
        )
        try:
            return await download.fetch(spec["server_ip"], filename, deadline)
        except TftpRefusedError:
            machine.tftp_refusals += 1
            if attempt == TFTP_ATTEMPTS:
                raise
        finally:
            transport.close()
        await asyncio.sleep(random.uniform(*TFTP_RETRY_DELAY))
    raise StormError("unreachable")  # pragma: no cover - the loop returns or raises


async def run_machine(
    machine: Machine, spec: dict[str, Any], relay: DhcpRelay, adder: AddressAdder
) -> None:
    """The whole flow of one machine; records phase durations or the first error."""
    deadline = time.monotonic() + spec["machine_deadline"]
    phase = "dhcp_pxe"
    try:
        started = time.monotonic()
        ack = await dora(relay, machine, spec, ipxe=False)
        machine.address = str(ack.yiaddr)
        filename = boot_file(ack)
        machine.phases["dhcp_pxe"] = time.monotonic() - started

        phase = "tftp"
        started = time.monotonic()
        await adder.add(machine.address)
        size = await fetch_with_retries(machine, spec, filename, deadline)
        if size != spec["boot_file_size"]:
            raise StormError(f"TFTP {filename}: {size} bytes, expected {spec['boot_file_size']}")
        machine.phases["tftp"] = time.monotonic() - started

        phase = "dhcp_ipxe"
        started = time.monotonic()
        ack = await dora(relay, machine, spec, ipxe=True)
        script_url = boot_file(ack)
        if not script_url.startswith("http://"):
            raise StormError(f"iPXE got boot file {script_url!r}, not an HTTP URL")
        if str(ack.yiaddr) != machine.address:
            raise StormError(f"iPXE DHCP gave {ack.yiaddr}, the ROM had {machine.address}")
        machine.phases["dhcp_ipxe"] = time.monotonic() - started

        source = machine.address
        phase = "script"
        started = time.monotonic()
        status, _ = await http_request("GET", script_url, source=source)
        if status != 200:
            raise StormError(f"GET {script_url}: {status}")
        mac_dashes = machine.mac_text.replace(":", "-")
        url = (f"{spec['base_url']}/ipxebootscript?serial={machine.serial}"
               f"&uuid={machine.uuid.hex()}&mac={mac_dashes}")  # fmt: skip
        status, body = await http_request("GET", url, source=source)
        if status != 200 or b"first-stage-script" not in body:
            raise StormError(f"GET machine script: {status} {body[:120]!r}")
        machine.phases["script"] = time.monotonic() - started

        phase = "enrol"
        started = time.monotonic()
        status, body = await http_request(
            "GET", f"{spec['base_url']}/first-stage-script/{machine.serial}", source=source
        )
        if status != 200:
            raise StormError(f"first-stage-script: {status} {body[:200]!r}")
        token = ""
        for line in body.decode("utf-8", "replace").splitlines():
            if line.startswith("TOKEN="):
                token = line.split("=", 1)[1].strip("'\"")
        if not token:
            raise StormError("installer script without TOKEN=")
        machine.phases["enrol"] = time.monotonic() - started

        phase = "hostdata"
        started = time.monotonic()
        host_data = {
            "Serial": machine.serial,
            "NetDevs": [{"Name": "eno1", "MacAddress": machine.mac_text}],
            "ConnectedNIC": "eno1",
            "IPMIAddress": "",
        }
        status, body = await http_request(
            "POST", f"{spec['base_url']}/final-ignition-config.json", source=source,
            token=token, body=json.dumps(host_data).encode(),
        )  # fmt: skip
        if status != 200:
            raise StormError(f"host data: {status} {body[:200]!r}")
        machine.phases["hostdata"] = time.monotonic() - started

        phase = "installed"
        started = time.monotonic()
        status, body = await http_request(
            "PUT", f"{spec['base_url']}/admin/host/{machine.serial.lower()}/set_installed",
            source=source, token=token,
        )  # fmt: skip
        if status != 202:
            raise StormError(f"set_installed: {status} {body[:200]!r}")
        machine.phases["installed"] = time.monotonic() - started
        machine.finished = time.monotonic()
    except Exception as exc:  # any failure of one machine is recorded, never fatal
        where = traceback.extract_tb(exc.__traceback__)[-1]
        machine.error = f"{phase}: {type(exc).__name__}: {exc} (line {where.lineno})"


async def storm(spec: dict[str, Any]) -> dict[str, Any]:
    """Start every machine at the arrival rate; wait for all (bounded by the deadline)."""
    loop = asyncio.get_running_loop()
    relay_transport, relay = await loop.create_datagram_endpoint(
        DhcpRelay, local_addr=(spec["relay_ip"], 67)
    )
    adder = AddressAdder(spec["ifname"], spec["prefix"])
    machines = [
        Machine(
            index=i,
            mac=bytes.fromhex("525400") + (0x100000 + i).to_bytes(3, "big"),
            uuid=os.urandom(16),
            serial=f"BS-{i:06d}",
        )
        for i in range(spec["machines"])
    ]
    start = time.monotonic()
    tasks = []
    interval = 1.0 / spec["arrival_rate"]
    for machine in machines:
        due = start + machine.index * interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(run_machine(machine, spec, relay, adder)))
    remaining = spec["storm_deadline"] - (time.monotonic() - start)
    _, pending = await asyncio.wait(tasks, timeout=max(remaining, 1.0))
    for task in pending:
        task.cancel()
    for machine, task in zip(machines, tasks, strict=True):
        if task in pending and not machine.error:
            machine.error = "cancelled at the storm deadline"
    relay_transport.close()
    adder.close()
    finished = [m.finished for m in machines if m.finished]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
        "start": start,
        "wall_s": (max(finished) - start) if finished else None,
        "stray_dhcp_replies": relay.stray,
        "machines": [_machine_report(m, start + m.index * interval) for m in machines],
    }


def _machine_report(machine: Machine, arrival: float) -> dict[str, Any]:
    """One machine's JSON record; ``total_s`` counts from its scheduled arrival."""
    return {
        "serial": machine.serial,
        "mac": machine.mac_text,
        "address": machine.address,
        "phases": machine.phases,
        "error": machine.error,
        "tftp_refusals": machine.tftp_refusals,
        "total_s": (machine.finished - arrival) if machine.finished else None,
    }


def main() -> None:
    """Read the spec file named on the command line, run the storm, print the JSON report."""
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    print(json.dumps(asyncio.run(storm(spec))))


if __name__ == "__main__":
    main()
