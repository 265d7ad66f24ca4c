"""Simulated machines: N clients that walk the whole network boot against a running pxestack.

Each machine does what real hardware with a PXE ROM does, then what the iPXE binary and the
installer do (docs/reference/mayu-api.md), one asyncio task per machine, started at a given
arrival rate.  The phases, in order (:data:`PHASES`):

1. ``dhcp_pxe``: DISCOVER/OFFER/REQUEST/ACK as a PXE ROM (option 60 ``PXEClient``,
   93 = x86 BIOS, 97 = its UUID).
2. ``tftp``: the boot file the ACK names, over TFTP (blksize 1432, as iPXE asks), from the
   machine's own leased address when it can bind it (always on loopback).
3. ``dhcp_ipxe``: DORA again as iPXE (option 77 ``iPXE``, option 175); the ACK's boot file
   must be the HTTP script URL.
4. ``script``: ``GET`` that URL, then the machine's own script
   (``/ipxebootscript?serial=..&uuid=..&mac=..``), which must chain the first stage.
5. ``enrol``: ``GET /first-stage-script/<serial>``: the server enrols the machine and answers
   the installer script holding the per-host token.
6. ``hostdata``: ``POST /final-ignition-config.json`` with the host data, token as bearer.
7. ``installed``: ``PUT /admin/host/<serial>/set_installed`` with the token.

The DHCP side has two shapes (:class:`StormSpec`):

* **client** (``relay_ip`` unset): one socket on ``client_port`` that receives the server's
  broadcast replies, as a machine on the segment would.  On the loopback quickstart the
  server listens on 127.0.0.1:6767 and answers port 6768, so no privileges are needed.
* **relay** (``relay_ip`` set): one socket on ``relay_ip``:67 acting as a DHCP relay agent
  (giaddr) for every machine, the way perfdhcp does; the boot-storm benchmark runs so.

Machines wait and retry as real firmware does (docs/reference/boot-timers.md): a PXE ROM's
DISCOVER waits 4, 8, 16 and 32 s, iPXE's DHCP and TFTP follow iPXE's retry timer, and a
failed boot is followed by another one after a pause when :attr:`StormSpec.boot_attempts`
allows (firmware that retries its boot order), so a machine counted as failed is one a real
machine would have been.  Each machine records its boots and where the failed ones failed.

This module speaks only the wire (:mod:`pxestack.wire`) and the standard library's asyncio:
it never imports the servers it exercises.  ``pxestack simulate`` is its command line.
Every wait is bounded: per-request time-outs, capped retries, a per-machine and an overall
deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, cast

from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

#: The phases of one machine's boot, in order.
PHASES = ("dhcp_pxe", "tftp", "dhcp_ipxe", "script", "enrol", "hostdata", "installed")
#: What a machine is doing: not started yet, one of :data:`PHASES`, done, or failed.
WAITING, DONE, FAILED = "waiting", "done", "failed"
#: iPXE's own option 175 contents as captured from real firmware, abbreviated: bus id, version.
IPXE_ENCAP = bytes.fromhex("b105018086100eeb030100001701011501011301011101")
#: TFTP error code 1 (RFC 1350): file not found.
TFTP_FILE_NOT_FOUND = 1

#: iPXE's retransmission timer bounds (``DEFAULT_MIN_TIMEOUT`` = 1/4 s, ``DEFAULT_MAX_TIMEOUT``
#: = 10 s in iPXE's core/retry.c).
TFTP_MIN_TIMEOUT = 0.25
TFTP_MAX_TIMEOUT = 10.0
#: How often a refused TFTP transfer is tried again, and the back-off before each try.
TFTP_ATTEMPTS = 6
TFTP_RETRY_DELAY = (1.0, 3.0)

#: The DHCP retransmission timers of the firmware, seconds to wait after each send (the
#: machine gives up when the last one expires; docs/reference/boot-timers.md has the sources):
#: a PXE ROM's DISCOVER (PXE 2.1: four tries, 4, 8, 16 and 32 s) and REQUEST (1, 2, 3, 4 s) ...
PXE_DISCOVER_TIMEOUTS = (4.0, 8.0, 16.0, 32.0)
PXE_REQUEST_TIMEOUTS = (1.0, 2.0, 3.0, 4.0)
#: ... and iPXE's (config/dhcp.h and core/retry.c: discovery starts at 1 s and doubles up
#: to the 10 s limit; a request starts at the retry timer's 1/4 s minimum).
IPXE_DISCOVER_TIMEOUTS = (1.0, 2.0, 4.0, 8.0)
IPXE_REQUEST_TIMEOUTS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Seconds between a failed network boot and the next try of a machine whose firmware
#: retries its boot order (the other boot devices are tried, then the network again).
BOOT_RETRY_DELAY = (5.0, 15.0)
#: The timers without :attr:`StormSpec.firmware_timers`: 1 s, doubling, four tries.
QUICK_TIMEOUTS = (1.0, 2.0, 4.0, 8.0)


class StormError(Exception):
    """One machine's flow failed (the message says where)."""


class TftpRefusedError(StormError):
    """The TFTP server answered the request with an ERROR packet."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StormSpec:
    """Where the servers are and how the machines behave.

    :param machines: how many machines boot.
    :param arrival_rate: machines started per second.
    :param base_url: the provisioning base URL (``http://host:port``).
    :param dhcp_server: the DHCP server's (address, port).
    :param client_port: client shape: the port replies arrive on (68 on a real link).
    :param relay_ip: relay shape: the giaddr, bound on port 67 (needs privileges).
    :param tftp_server: the TFTP server's address (default: the ACK's next-server).
    :param tftp_port: the TFTP server's port.
    :param bind_leased: send TFTP and HTTP from the leased address (it must be local:
        always true on loopback; the benchmark adds each address to its interface).
    :param boot_file_size: when set, the TFTP download must have exactly this size.
    :param missing_boot_file_ok: a TFTP "file not found" is noted on the machine, which
        carries on as a machine whose ROM is iPXE would; otherwise the machine fails.
    :param serial_prefix: serials are ``<prefix>-<index>`` (six digits).
    :param mac_prefix: the first three bytes of every MAC; the last three count up from
        *mac_offset*.
    """

    machines: int
    arrival_rate: float
    base_url: str
    dhcp_server: tuple[str, int] = ("127.0.0.1", 6767)
    client_port: int = 6768
    relay_ip: str | None = None
    tftp_server: str | None = None
    tftp_port: int = 69
    tftp_blksize: int = 1432
    bind_leased: bool = True
    boot_file_size: int | None = None
    missing_boot_file_ok: bool = False
    machine_deadline: float = 240.0
    storm_deadline: float = 300.0
    #: Network boots a machine tries before it counts as failed; 0: as many as fit in
    #: *machine_deadline* (firmware set to retry its boot order, as servers usually are).
    boot_attempts: int = 1
    #: Use the firmware's DHCP timers (:data:`PXE_DISCOVER_TIMEOUTS`...); False: 1 s
    #: doubling, four tries, for quick tests against a local server.
    firmware_timers: bool = True
    serial_prefix: str = "BS"
    mac_prefix: bytes = bytes.fromhex("525400")
    mac_offset: int = 0x100000

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StormSpec:
        """A spec from the benchmark's JSON (``server_ip`` names DHCP and TFTP, ports 67/69)."""
        data = dict(values)
        server = data.pop("server_ip", None)
        for unused in ("ifname", "prefix"):
            data.pop(unused, None)
        if server is not None:
            data.setdefault("dhcp_server", (server, c.DHCP_SERVER_PORT))
            data.setdefault("tftp_server", server)
        if "dhcp_server" in data:
            host, port = data["dhcp_server"]
            data["dhcp_server"] = (str(host), int(port))
        if isinstance(data.get("mac_prefix"), str):
            data["mac_prefix"] = bytes.fromhex(data["mac_prefix"])
        return cls(**data)


@dataclass
class Machine:
    """One simulated machine and what it measured."""

    index: int
    mac: bytes
    uuid: bytes
    serial: str
    address: str = ""
    #: :data:`WAITING`, a phase of :data:`PHASES`, :data:`DONE` or :data:`FAILED`.
    phase: str = WAITING
    phases: dict[str, float] = field(default_factory=dict)
    error: str = ""
    started: float = 0.0
    finished: float = 0.0
    tftp_refusals: int = 0
    boot_file_missing: str = ""
    #: Network boots started (1 when the first one went through).
    attempts: int = 0
    #: Failed boots by the phase they failed in (each was followed by another boot).
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def mac_text(self) -> str:
        """The MAC as ``aa:bb:cc:dd:ee:ff``."""
        return self.mac.hex(":")


def make_machines(spec: StormSpec) -> list[Machine]:
    """The machines of *spec*: distinct MACs and serials, random UUIDs."""
    return [
        Machine(
            index=i,
            mac=spec.mac_prefix + (spec.mac_offset + i).to_bytes(3, "big"),
            uuid=os.urandom(16),
            serial=f"{spec.serial_prefix}-{i:06d}",
        )
        for i in range(spec.machines)
    ]


# -- DHCP ----------------------------------------------------------------------------------


class DhcpSocket(asyncio.DatagramProtocol):
    """One UDP socket for every machine's DHCP; replies are routed to the waiting xid.

    Each try is sent to *server*, and also to *also* (a relay agent forwarding to several
    servers, each of which may answer first)."""

    def __init__(self, server: tuple[str, int], also: Sequence[tuple[str, int]] = ()) -> None:
        self.server = server
        self.destinations = [server, *also]
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
        elif message.op == c.BOOTREPLY:
            self.stray += 1

    async def exchange(
        self, packet: bytes, xid: int, expect: tuple[int, ...],
        timeouts: Sequence[float] = QUICK_TIMEOUTS,
    ) -> DhcpMessage:
        """Send *packet* until a reply of a type in *expect* arrives, waiting each of
        *timeouts* in turn after a send."""
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        for timeout in timeouts:
            futures = {kind: loop.create_future() for kind in expect}
            for kind, future in futures.items():
                self.waiting[(xid, kind)] = future
            for destination in self.destinations:
                self.transport.sendto(packet, destination)
            done, _ = await asyncio.wait(
                futures.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for kind in futures:
                self.waiting.pop((xid, kind), None)
            if done:
                reply: DhcpMessage = next(iter(done)).result()
                return reply
        raise StormError(
            f"no DHCP answer from {self.server[0]}:{self.server[1]} to xid {xid:#x} "
            f"after {len(timeouts)} tries"
        )


#: Kept for callers of the benchmark's name.
DhcpRelay = DhcpSocket


async def open_dhcp_socket(
    spec: StormSpec,
) -> tuple[asyncio.DatagramTransport, DhcpSocket]:
    """The socket of *spec*'s shape: on ``relay_ip``:67, or on ``client_port`` for replies."""
    loop = asyncio.get_running_loop()
    if spec.relay_ip is not None:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: DhcpSocket(spec.dhcp_server), local_addr=(spec.relay_ip, c.DHCP_SERVER_PORT)
        )
        return transport, protocol
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("", spec.client_port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: DhcpSocket(spec.dhcp_server), sock=sock
    )
    return transport, protocol


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
    dhcp: DhcpSocket, machine: Machine, spec: StormSpec, *, ipxe: bool
) -> DhcpMessage:
    """DISCOVER -> OFFER -> REQUEST -> ACK; returns the ACK."""
    xid = random.getrandbits(32)
    relay = spec.relay_ip is not None
    giaddr = IPv4Address(spec.relay_ip) if spec.relay_ip is not None else IPv4Address(0)
    hops = 1 if relay else 0
    discover = DhcpMessage(
        op=c.BOOTREQUEST, xid=xid, chaddr=machine.mac, hops=hops, giaddr=giaddr,
        options=DhcpOptions(_request_options(machine, ipxe, c.DHCPDISCOVER)),
    )  # fmt: skip
    discover_timeouts: Sequence[float]
    request_timeouts: Sequence[float]
    if not spec.firmware_timers:
        discover_timeouts = request_timeouts = QUICK_TIMEOUTS
    elif ipxe:
        discover_timeouts, request_timeouts = IPXE_DISCOVER_TIMEOUTS, IPXE_REQUEST_TIMEOUTS
    else:
        discover_timeouts, request_timeouts = PXE_DISCOVER_TIMEOUTS, PXE_REQUEST_TIMEOUTS
    offer = await dhcp.exchange(encode_dhcp(discover), xid, (c.DHCPOFFER,), discover_timeouts)
    server_id = offer.options.raw(c.OPT_SERVER_ID)
    if server_id is None:
        raise StormError("OFFER without server identifier")
    request_options = [
        *_request_options(machine, ipxe, c.DHCPREQUEST),
        (c.OPT_REQUESTED_IP, offer.yiaddr.packed),
        (c.OPT_SERVER_ID, server_id),
    ]
    request = DhcpMessage(
        op=c.BOOTREQUEST, xid=xid, chaddr=machine.mac, hops=hops, giaddr=giaddr,
        options=DhcpOptions(request_options),
    )  # fmt: skip
    ack = await dhcp.exchange(encode_dhcp(request), xid, (c.DHCPACK, c.DHCPNAK),
                              request_timeouts)
    if ack.message_type != c.DHCPACK:
        raise StormError(f"REQUEST for {offer.yiaddr} got a NAK")
    return ack


def boot_file(message: DhcpMessage) -> str:
    """Option 67, else the ``file`` field."""
    raw = message.options.raw(c.OPT_BOOTFILE_NAME)
    value = raw if raw is not None else message.file
    return value.rstrip(b"\x00").decode("latin-1")


# -- TFTP ----------------------------------------------------------------------------------


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

    async def fetch(self, server: tuple[str, int], path: str, deadline: float) -> int:
        """Download *path*; returns its size.  StormError on ERROR or time-out."""
        assert self.transport is not None
        rrq = (b"\x00\x01" + path.encode() + b"\x00octet\x00blksize\x00"
               + str(self.blksize).encode() + b"\x00tsize\x000\x00")  # fmt: skip
        last_sent, destination = rrq, server
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
                code = int.from_bytes(data[2:4], "big")
                message = data[4:].rstrip(b"\x00").decode("utf-8", "replace")
                raise TftpRefusedError(f"TFTP {path}: ERROR {code} {message!r}", code)
            else:
                continue
            self.transport.sendto(last_sent, destination)
        raise StormError(f"TFTP {path}: over the deadline")


def _source(machine: Machine, spec: StormSpec) -> str | None:
    return machine.address if spec.bind_leased and machine.address else None


async def fetch_with_retries(
    machine: Machine, spec: StormSpec, server: tuple[str, int], filename: str, deadline: float
) -> int:
    """TFTP-download *filename*; a refusal (server ERROR) is retried after 1-3 s.

    PXE firmware that fails to load its boot file starts over after a pause (and a rack's
    worth of ROMs do exactly that when a server sheds load), so a refusal counts in
    ``tftp_refusals`` but does not fail the machine until :data:`TFTP_ATTEMPTS` are spent.
    "File not found" is final at once: no retry brings the file.
    """
    loop = asyncio.get_running_loop()
    for attempt in range(1, TFTP_ATTEMPTS + 1):
        transport, download = await loop.create_datagram_endpoint(
            lambda: TftpDownload(spec.tftp_blksize),
            local_addr=(_source(machine, spec) or "0.0.0.0", 0),
        )
        try:
            return await download.fetch(server, filename, deadline)
        except TftpRefusedError as exc:
            if exc.code == TFTP_FILE_NOT_FOUND:
                raise
            machine.tftp_refusals += 1
            if attempt == TFTP_ATTEMPTS:
                raise
        finally:
            transport.close()
        await asyncio.sleep(random.uniform(*TFTP_RETRY_DELAY))  # noqa: S311 - a back-off
    raise StormError("unreachable")  # pragma: no cover - the loop returns or raises


# -- HTTP ----------------------------------------------------------------------------------


async def http_request(
    method: str, url: str, *, source: str | None, token: str | None = None,
    body: bytes = b"", timeout: float = 30.0,
) -> tuple[int, bytes]:  # fmt: skip
    """One HTTP/1.1 request (``Connection: close``) from *source*; returns (status, body)."""
    if not url.startswith("http://"):
        raise StormError(f"{url!r} is not an http:// URL")
    hostport, _, path = url[len("http://") :].partition("/")
    host, _, port = hostport.partition(":")
    headers = [
        f"{method} /{path} HTTP/1.1", f"Host: {hostport}", "Connection: close",
        "User-Agent: pxestack-simulate", f"Content-Length: {len(body)}",
    ]  # fmt: skip
    if token:
        headers.append(f"Authorization: Bearer {token}")
    if body:
        headers.append("Content-Type: application/json")
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(
            host, int(port or 80), local_addr=(source, 0) if source else None
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


# -- one machine, then all of them ---------------------------------------------------------

#: Makes a leased address usable as a source address (the benchmark adds it to its
#: interface); None: the address is usable as it is (loopback) or not bound at all.
AddressHook = Callable[[str], Awaitable[None]]


async def run_machine(
    machine: Machine, spec: StormSpec, dhcp: DhcpSocket, add_address: AddressHook | None = None
) -> None:
    """The whole flow of one machine, booting again after a failure as its firmware would
    (:attr:`StormSpec.boot_attempts`); records phase durations or the last error."""
    deadline = time.monotonic() + spec.machine_deadline
    machine.started = time.monotonic()
    while True:
        machine.attempts += 1
        machine.phases = {}
        await _boot_once(machine, spec, dhcp, add_address, deadline)
        if machine.phase != FAILED:
            return
        failed_in = machine.error.split(":", 1)[0]
        pause = random.uniform(*BOOT_RETRY_DELAY)  # noqa: S311 - not a secret
        out_of_tries = spec.boot_attempts and machine.attempts >= spec.boot_attempts
        if out_of_tries or time.monotonic() + pause >= deadline:
            return
        machine.restarts[failed_in] = machine.restarts.get(failed_in, 0) + 1
        machine.error = ""
        await asyncio.sleep(pause)


async def _boot_once(
    machine: Machine, spec: StormSpec, dhcp: DhcpSocket, add_address: AddressHook | None,
    deadline: float,
) -> None:
    """One network boot of *machine*, from its ROM's DISCOVER to ``set_installed``."""
    try:
        machine.phase = "dhcp_pxe"
        started = time.monotonic()
        ack = await dora(dhcp, machine, spec, ipxe=False)
        machine.address = str(ack.yiaddr)
        filename = boot_file(ack)
        machine.phases["dhcp_pxe"] = time.monotonic() - started

        machine.phase = "tftp"
        started = time.monotonic()
        if add_address is not None:
            await add_address(machine.address)
        next_server = str(ack.siaddr) if ack.siaddr != IPv4Address(0) else spec.dhcp_server[0]
        tftp = (spec.tftp_server or next_server, spec.tftp_port)
        try:
            size = await fetch_with_retries(machine, spec, tftp, filename, deadline)
        except TftpRefusedError as exc:
            if exc.code != TFTP_FILE_NOT_FOUND or not spec.missing_boot_file_ok:
                raise
            machine.boot_file_missing = filename
        else:
            if spec.boot_file_size is not None and size != spec.boot_file_size:
                raise StormError(f"TFTP {filename}: {size} bytes, expected {spec.boot_file_size}")
        machine.phases["tftp"] = time.monotonic() - started

        machine.phase = "dhcp_ipxe"
        started = time.monotonic()
        ack = await dora(dhcp, machine, spec, ipxe=True)
        script_url = boot_file(ack)
        if not script_url.startswith("http://"):
            raise StormError(f"iPXE got boot file {script_url!r}, not an HTTP URL")
        if str(ack.yiaddr) != machine.address:
            raise StormError(f"iPXE DHCP gave {ack.yiaddr}, the ROM had {machine.address}")
        machine.phases["dhcp_ipxe"] = time.monotonic() - started

        source = _source(machine, spec)
        machine.phase = "script"
        started = time.monotonic()
        status, _ = await http_request("GET", script_url, source=source)
        if status != 200:
            raise StormError(f"GET {script_url}: {status}")
        mac_dashes = machine.mac_text.replace(":", "-")
        url = (f"{spec.base_url}/ipxebootscript?serial={machine.serial}"
               f"&uuid={machine.uuid.hex()}&mac={mac_dashes}")  # fmt: skip
        status, body = await http_request("GET", url, source=source)
        if status != 200 or b"first-stage-script" not in body:
            raise StormError(f"GET machine script: {status} {body[:120]!r}")
        machine.phases["script"] = time.monotonic() - started

        machine.phase = "enrol"
        started = time.monotonic()
        status, body = await http_request(
            "GET", f"{spec.base_url}/first-stage-script/{machine.serial}", source=source
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

        machine.phase = "hostdata"
        started = time.monotonic()
        host_data = {
            "Serial": machine.serial,
            "NetDevs": [{"Name": "eno1", "MacAddress": machine.mac_text}],
            "ConnectedNIC": "eno1",
            "IPMIAddress": "",
        }
        status, body = await http_request(
            "POST", f"{spec.base_url}/final-ignition-config.json", source=source,
            token=token, body=json.dumps(host_data).encode(),
        )  # fmt: skip
        if status != 200:
            raise StormError(f"host data: {status} {body[:200]!r}")
        machine.phases["hostdata"] = time.monotonic() - started

        machine.phase = "installed"
        started = time.monotonic()
        status, body = await http_request(
            "PUT", f"{spec.base_url}/admin/host/{machine.serial.lower()}/set_installed",
            source=source, token=token,
        )  # fmt: skip
        if status != 202:
            raise StormError(f"set_installed: {status} {body[:200]!r}")
        machine.phases["installed"] = time.monotonic() - started
        machine.finished = time.monotonic()
        machine.phase = DONE
    except Exception as exc:  # any failure of one machine is recorded, never fatal
        where = traceback.extract_tb(exc.__traceback__)[-1]
        machine.error = f"{machine.phase}: {type(exc).__name__}: {exc} (line {where.lineno})"
        machine.phase = FAILED


#: Called with every machine about once a second while the storm runs.
Progress = Callable[[Sequence[Machine]], None]


async def storm(
    spec: StormSpec,
    *,
    add_address: AddressHook | None = None,
    progress: Progress | None = None,
    progress_interval: float = 1.0,
    machines: list[Machine] | None = None,
) -> dict[str, Any]:
    """Start every machine at the arrival rate; wait for all (bounded by the deadline).

    Returns the report: ``wall_s`` (first arrival to last ``set_installed``), the stray
    DHCP replies, the client's CPU time and one record per machine (:func:`machine_report`).
    """
    transport, dhcp = await open_dhcp_socket(spec)
    machines = machines if machines is not None else make_machines(spec)
    start = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    interval = 1.0 / spec.arrival_rate
    reporter: asyncio.Task[None] | None = None
    if progress is not None:
        report_to = progress

        async def report_loop() -> None:
            while True:
                await asyncio.sleep(progress_interval)
                report_to(machines)

        reporter = asyncio.create_task(report_loop())
    try:
        for machine in machines:
            due = start + machine.index * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(run_machine(machine, spec, dhcp, add_address)))
        remaining = spec.storm_deadline - (time.monotonic() - start)
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(remaining, 1.0))
        for task in pending:
            task.cancel()
        for machine, task in zip(machines, tasks, strict=False):
            if task in pending and not machine.error:
                machine.error = f"{machine.phase}: cancelled at the overall deadline"
                machine.phase = FAILED
    finally:
        if reporter is not None:
            reporter.cancel()
        transport.close()
    if progress is not None:
        progress(machines)
    finished = [m.finished for m in machines if m.finished]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
        "start": start,
        "wall_s": (max(finished) - start) if finished else None,
        "stray_dhcp_replies": dhcp.stray,
        "machines": [machine_report(m, start + m.index * interval) for m in machines],
    }


def machine_report(machine: Machine, arrival: float) -> dict[str, Any]:
    """One machine's JSON record; ``total_s`` counts from its scheduled arrival."""
    return {
        "serial": machine.serial,
        "mac": machine.mac_text,
        "address": machine.address,
        "phases": machine.phases,
        "error": machine.error,
        "tftp_refusals": machine.tftp_refusals,
        "boot_file_missing": machine.boot_file_missing,
        "attempts": machine.attempts,
        "restarts": machine.restarts,
        "total_s": (machine.finished - arrival) if machine.finished else None,
    }


def phase_counts(machines: Sequence[Machine]) -> dict[str, int]:
    """How many machines are in each phase now (plus waiting, done and failed)."""
    counts = dict.fromkeys((WAITING, *PHASES, DONE, FAILED), 0)
    for machine in machines:
        counts[machine.phase] = counts.get(machine.phase, 0) + 1
    return counts


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max of *values* (empty dict when there are none)."""
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1]}


__all__ = [
    "DONE",
    "FAILED",
    "PHASES",
    "TFTP_ATTEMPTS",
    "WAITING",
    "AddressHook",
    "DhcpRelay",
    "DhcpSocket",
    "Machine",
    "StormError",
    "StormSpec",
    "TftpDownload",
    "TftpRefusedError",
    "boot_file",
    "dora",
    "fetch_with_retries",
    "http_request",
    "machine_report",
    "make_machines",
    "open_dhcp_socket",
    "percentiles",
    "phase_counts",
    "run_machine",
    "storm",
]
