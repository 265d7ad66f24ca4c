"""``pxestack explain``: what a packet capture says about each machine's network boot.

:func:`explain` follows every machine's DHCP, TFTP and HTTP exchanges in a capture (read by
:func:`pxestack.wire.capture.read_capture`) and reports, per machine:

* what it asked: the firmware, architecture and user class of each DHCP transaction
  (:class:`~pxestack.dhcp.client.ClientInfo`, as the servers classify it);
* what answered: each OFFER/ACK/NAK by server (option 54, else the source address), named
  pxestack when it comes from the configured server address;
* what pxestack with the given configuration would answer, and why: the real boot decision
  (:func:`~pxestack.dhcp.decide.decide_boot`, and in proxy mode the
  :class:`~pxestack.dhcp.proxy.ProxyDhcpCore` itself) run on the captured requests;
* its TFTP transfers and HTTP requests;

and flags the classic failures (:data:`FINDING_KINDS`): two DHCP servers acknowledging one
request, a DHCPDECLINE, a PXE offer with option 60 ``PXEClient`` but no option 43, an iPXE
chainload loop, a TFTP transfer that failed or stalled, and an iPXE script URL that was
never fetched.

A pure function of its inputs (layer 2: no sockets, no clock, no configuration files); the
command line (:mod:`pxestack.cli.explain`) reads the file and maps the configuration to
:class:`ExplainSettings`.  Hostile captures are tolerated: a packet that cannot be decoded
becomes a ``malformed-packet`` finding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final
from urllib.parse import urlsplit

from pxestack.dhcp.client import ClientInfo, Firmware
from pxestack.dhcp.decide import (
    BootDecision,
    BootDefaults,
    BootKind,
    ChainloadMemory,
    decide_boot,
)
from pxestack.dhcp.policy import BootPolicy, Machine, normalize_mac
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.errors import ApiMisuse, MalformedPacket
from pxestack.wire import constants as c
from pxestack.wire.capture import TCP, UDP, Capture, Segment
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp
from pxestack.wire.tftp import Ack, Data, Error, OptionAck, ReadRequest, decode_tftp

# Finding kinds (stable names, for --json consumers).
TWO_SERVERS: Final = "two-dhcp-servers"
TWO_ADDRESS_SERVERS: Final = "two-address-servers"
DECLINE: Final = "dhcp-decline"
NAK: Final = "dhcp-nak"
NO_OPTION_43: Final = "option-60-without-43"
CHAINLOAD_LOOP: Final = "chainload-loop"
TFTP_STALLED: Final = "tftp-stalled"
TFTP_ERROR: Final = "tftp-error"
TFTP_UNANSWERED: Final = "tftp-unanswered"
SCRIPT_NOT_FETCHED: Final = "script-never-requested"
MALFORMED: Final = "malformed-packet"

FINDING_KINDS: Final = (
    TWO_SERVERS, TWO_ADDRESS_SERVERS, DECLINE, NAK, NO_OPTION_43, CHAINLOAD_LOOP,
    TFTP_STALLED, TFTP_ERROR, TFTP_UNANSWERED, SCRIPT_NOT_FETCHED, MALFORMED,
)

MESSAGE_NAMES: Final = {
    c.DHCPDISCOVER: "DISCOVER", c.DHCPOFFER: "OFFER", c.DHCPREQUEST: "REQUEST",
    c.DHCPDECLINE: "DECLINE", c.DHCPACK: "ACK", c.DHCPNAK: "NAK", c.DHCPRELEASE: "RELEASE",
    c.DHCPINFORM: "INFORM",
}
_TFTP_PORT: Final = 69
_TFTP_DEFAULT_BLKSIZE: Final = 512
_TFTP_ERROR_ABORT: Final = 8  # RFC 2347: the client refuses the OACK (EDK2's size probe)
_HTTP_METHODS: Final = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"PATCH ")
_ZERO: Final = IPv4Address(0)


@dataclass(frozen=True, slots=True)
class ExplainSettings:
    """What pxestack's configuration says, as plain values (the CLI maps the YAML)."""

    #: ``proxy`` or ``server`` (``dhcp.mode``).
    mode: str
    #: The boot defaults for a given server address (``service.dhcp.boot_defaults``).
    defaults_for: Callable[[IPv4Address], BootDefaults]
    policy: BootPolicy
    #: ``dhcp.server_address``; None: inferred from the capture (a proxy's option 54).
    server_address: IPv4Address | None = None
    proxy_port: int = c.PXE_PROXY_PORT
    relays: tuple[IPv4Address, ...] = ()
    #: Where the settings came from (a file name), for the report.
    source: str = "configuration"
    #: One line each: what the analysis cannot model (shown in the report).
    notes: tuple[str, ...] = ()


@dataclass(slots=True)
class Finding:
    """One diagnosed problem."""

    kind: str
    message: str
    mac: str | None = None
    frames: tuple[int, ...] = ()


@dataclass(slots=True)
class Asked:
    """One client DHCP message."""

    frame: int
    time: float
    message_type: str
    port: int
    firmware: str
    arch: str
    arch_code: int | None
    vendor_class: str | None
    user_classes: tuple[str, ...]
    ipxe_features: tuple[str, ...]
    server_id: str | None
    requested_address: str | None


@dataclass(slots=True)
class Answer:
    """One server DHCP reply."""

    frame: int
    time: float
    message_type: str
    server: str
    #: ``pxestack``, ``another DHCP server``, or by role when pxestack's address is unknown.
    by: str
    source_port: int
    yiaddr: str
    siaddr: str
    boot_file: str | None
    vendor_class: str | None
    option_43: bool


@dataclass(slots=True)
class Would:
    """What pxestack, configured as given, answers to one captured request."""

    frame: int
    asked: str
    #: ``OFFER``, ``ACK`` or ``nothing``.
    answer: str
    reason: str
    boot_file: str | None = None
    siaddr: str | None = None
    vendor_class: str | None = None
    option_43: bool = False


@dataclass(slots=True)
class Transaction:
    """One DHCP transaction (a client's xid) and everything said in it."""

    xid: str
    asked: list[Asked] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    would: list[Would] = field(default_factory=list)


@dataclass(slots=True)
class TftpTransfer:
    """One TFTP read request and its transfer."""

    frame: int
    time: float
    client: str
    server: str
    filename: str
    options: dict[str, str] = field(default_factory=dict)
    blksize: int = _TFTP_DEFAULT_BLKSIZE
    tsize: int | None = None
    blocks: int = 0
    octets: int = 0
    last_block: int = 0
    last_ack: int | None = None
    oack: bool = False
    complete: bool = False
    #: A TFTP ERROR (``code: message``, from which side).
    error: str | None = None
    #: The client refused the OACK with error 8 (a size probe: EDK2 asks tsize first).
    size_probe: bool = False
    last_frame: int = 0
    last_time: float = 0.0
    retransmitted_requests: int = 0

    @property
    def status(self) -> str:
        """``complete``, ``size probe``, ``error``, ``no answer`` or ``stalled``."""
        if self.complete:
            return "complete"
        if self.size_probe:
            return "size probe"
        if self.error is not None:
            return "error"
        if not self.blocks and not self.oack:
            return "no answer"
        return "stalled"


@dataclass(slots=True)
class HttpRequest:
    """One HTTP request seen in a TCP segment, and the status line of its answer."""

    frame: int
    time: float
    client: str
    server: str
    port: int
    method: str
    path: str
    host: str | None
    status: int | None = None


@dataclass(slots=True)
class MachineReport:
    """Everything one machine (one MAC) did."""

    mac: str
    addresses: list[str] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    tftp: list[TftpTransfer] = field(default_factory=list)
    http: list[HttpRequest] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


@dataclass(slots=True)
class Explanation:
    """The whole report."""

    capture_format: str
    frames: int
    #: ``proxy``/``server`` and the source of the settings; None without a configuration.
    mode: str | None
    settings_source: str | None
    #: pxestack's DHCP server address, and how it was found.
    server_address: str | None
    server_address_from: str | None
    notes: list[str] = field(default_factory=list)
    machines: list[MachineReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


# --- small readers ------------------------------------------------------------------------------


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("latin-1").rstrip("\x00")


def _boot_file(message: DhcpMessage) -> str | None:
    """Option 67, else the BOOTP ``file`` field; None when neither is set."""
    name = _text(message.options.raw(c.OPT_BOOTFILE_NAME))
    if name:
        return name
    return message.file.decode("latin-1") if message.file else None


def _server_of(message: DhcpMessage, source: IPv4Address) -> str:
    """Option 54 (the server identifier), else the packet's source address."""
    raw = message.options.raw(c.OPT_SERVER_ID)
    if raw is not None and len(raw) == 4:
        return str(IPv4Address(raw))
    return str(source)


def _is_url(name: str | None) -> bool:
    return name is not None and "://" in name


def _type_name(message: DhcpMessage) -> str:
    kind = message.message_type
    if kind is None:
        return "BOOTP"
    return MESSAGE_NAMES.get(kind, f"type {kind}")


# --- the boot decision pxestack would take --------------------------------------------------------


class _Oracle:
    """Runs pxestack's real decision on every captured client message, in capture order."""

    def __init__(self, settings: ExplainSettings, server: IPv4Address) -> None:
        self.settings = settings
        self.defaults = settings.defaults_for(server)
        self.proxy: ProxyDhcpCore | None = None
        self.chainloads = ChainloadMemory()
        if settings.mode == "proxy":
            self.proxy = ProxyDhcpCore(self.defaults, settings.policy,
                                       relays=settings.relays, proxy_port=settings.proxy_port,
                                       chainloads=self.chainloads)

    def decide(self, message: DhcpMessage, info: ClientInfo, now: float) -> BootDecision:
        spec = self.settings.policy.boot_spec(Machine.from_client(info))
        recently = info.is_ipxe and self.chainloads.recent(message.chaddr, message.xid, now)
        return decide_boot(info, spec, self.defaults, proxy=self.settings.mode == "proxy",
                           recently_chainloaded=recently)

    def answer(self, segment: Segment, message: DhcpMessage, info: ClientInfo) -> Would | None:
        asked = _type_name(message)
        port = segment.destination_port
        if self.proxy is not None:
            return self._proxy_answer(segment, message, info, asked, port)
        if message.message_type not in (c.DHCPDISCOVER, c.DHCPREQUEST, c.DHCPINFORM):
            return None
        if port != c.DHCP_SERVER_PORT:
            return Would(segment.frame, asked, "nothing",
                         f"port {port}: the full server listens on port 67 only")
        decision = self.decide(message, info, segment.time)
        if decision.chainload:
            self.chainloads.note(message.chaddr, message.xid, segment.time)
        reply = {c.DHCPDISCOVER: "OFFER", c.DHCPREQUEST: "ACK"}.get(
            message.message_type or 0, "ACK")
        if decision.kind is BootKind.IGNORE:
            return Would(segment.frame, asked, "nothing", decision.reason)
        boot = decision.options.items_view()
        name = _text(boot.get(c.OPT_BOOTFILE_NAME)) or (decision.file.decode("latin-1") or None)
        return Would(
            segment.frame, asked, reply,
            ("address only: " if not decision.boots else "") + decision.reason,
            boot_file=name,
            siaddr=str(decision.siaddr) if decision.boots else None,
            vendor_class=_text(boot.get(c.OPT_VENDOR_CLASS_ID)),
            option_43=c.OPT_VENDOR_SPECIFIC in boot,
        )

    def _proxy_answer(self, segment: Segment, message: DhcpMessage, info: ClientInfo,
                      asked: str, port: int) -> Would | None:
        proxy = self.proxy
        assert proxy is not None
        if message.message_type not in (c.DHCPDISCOVER, c.DHCPREQUEST, c.DHCPINFORM):
            return None
        decision = self.decide(message, info, segment.time)
        before = dict(proxy.counters)
        outgoing = proxy.handle(message, None, segment.time, port=port,
                                source=(str(segment.source), segment.source_port))
        changed = [name for name, value in proxy.counters.items() if value != before[name]]
        if outgoing:
            reply = outgoing[0].message
            return Would(segment.frame, asked, _type_name(reply), decision.reason,
                         boot_file=_boot_file(reply), siaddr=str(reply.siaddr),
                         vendor_class=_text(reply.options.raw(c.OPT_VENDOR_CLASS_ID)),
                         option_43=c.OPT_VENDOR_SPECIFIC in reply.options)
        why = {
            "ignored_relay": f"relayed by {message.giaddr}, which is not a configured relay",
            "ignored_not_pxe": "not a network-boot client",
            "ignored_by_policy": decision.reason,
            "ignored_no_boot": decision.reason,
        }
        reason = next((why[name] for name in changed if name in why), None)
        if reason is None:
            if message.message_type == c.DHCPREQUEST and port == c.DHCP_SERVER_PORT:
                reason = ("a REQUEST on port 67 selects the site server's address offer; "
                          f"the proxy answers REQUESTs only on port {proxy.proxy_port}")
            else:
                reason = (f"the proxy answers DISCOVER on port 67 and REQUEST/INFORM on port "
                          f"{proxy.proxy_port} only")
        return Would(segment.frame, asked, "nothing", reason)


# --- following the capture ----------------------------------------------------------------------


class _Analysis:
    def __init__(self, capture: Capture, settings: ExplainSettings | None) -> None:
        self.capture = capture
        self.settings = settings
        self.machines: dict[str, MachineReport] = {}
        self.transactions: dict[tuple[str, int], Transaction] = {}
        self.address_owner: dict[str, str] = {}
        self.transfers: dict[tuple[str, int], TftpTransfer] = {}
        self.transfer_owner: dict[int, str | None] = {}
        self.connections: dict[tuple[str, int, str, int], list[HttpRequest]] = {}
        self.findings: list[Finding] = []
        self.server, self.server_from = self._server_address()
        self.oracle = (_Oracle(settings, self.server or _ZERO)
                       if settings is not None else None)

    def _server_address(self) -> tuple[IPv4Address | None, str | None]:
        settings = self.settings
        if settings is not None and settings.server_address is not None:
            return settings.server_address, f"dhcp.server_address in {settings.source}"
        if settings is None or settings.mode != "proxy":
            return None, None
        for segment in self.capture.segments:
            if segment.protocol != UDP or segment.source_port not in (
                    c.DHCP_SERVER_PORT, settings.proxy_port):
                continue
            try:
                message = decode_dhcp(segment.payload)
            except MalformedPacket:
                continue
            vendor = _text(message.options.raw(c.OPT_VENDOR_CLASS_ID)) or ""
            if (message.op == c.BOOTREPLY and message.yiaddr == _ZERO
                    and vendor.startswith("PXEClient")):
                return IPv4Address(_server_of(message, segment.source)), (
                    "inferred: the server identifier of the proxyDHCP offer in the capture")
        return None, None

    def machine(self, mac: str) -> MachineReport:
        report = self.machines.get(mac)
        if report is None:
            report = self.machines[mac] = MachineReport(mac)
        return report

    def owner(self, segment: Segment, address: IPv4Address) -> str | None:
        """The machine behind *address* in *segment* (its Ethernet source, else DHCP)."""
        if (segment.source == address and segment.source_mac is not None
                and segment.source_mac in self.machines):
            return segment.source_mac
        return self.address_owner.get(str(address))

    def malformed(self, segment: Segment, what: str, exc: Exception) -> None:
        self.findings.append(Finding(
            MALFORMED, f"frame {segment.frame}: malformed {what} from "
            f"{segment.source}:{segment.source_port}: {exc}", None, (segment.frame,)))

    def run(self) -> None:
        for problem in self.capture.problems:
            where = f"frame {problem.frame}" if problem.frame else "capture"
            self.findings.append(Finding(MALFORMED, f"{where}: {problem.reason}", None,
                                         (problem.frame,) if problem.frame else ()))
        dhcp_ports = {c.DHCP_SERVER_PORT, c.DHCP_CLIENT_PORT}
        if self.settings is not None:
            dhcp_ports.add(self.settings.proxy_port)
        else:
            dhcp_ports.add(c.PXE_PROXY_PORT)
        for segment in self.capture.segments:
            if segment.protocol == UDP:
                if segment.source_port in dhcp_ports and segment.destination_port in dhcp_ports:
                    self.dhcp(segment)
                else:
                    self.tftp(segment)
            elif segment.protocol == TCP and segment.payload:
                self.http(segment)

    # DHCP

    def dhcp(self, segment: Segment) -> None:
        try:
            message = decode_dhcp(segment.payload)
        except MalformedPacket as exc:
            self.malformed(segment, "DHCP message", exc)
            return
        if message.hlen != 6 or len(message.chaddr) != 6:
            self.malformed(segment, "DHCP message",
                           MalformedPacket(f"hardware address length {message.hlen}"))
            return
        mac = message.mac
        report = self.machine(mac)
        key = (mac, message.xid)
        transaction = self.transactions.get(key)
        if transaction is None:
            transaction = self.transactions[key] = Transaction(f"0x{message.xid:08x}")
            report.transactions.append(transaction)
        if message.op == c.BOOTREQUEST:
            self.request(segment, message, report, transaction)
        elif message.op == c.BOOTREPLY:
            self.reply(segment, message, report, transaction)

    def request(self, segment: Segment, message: DhcpMessage, report: MachineReport,
                transaction: Transaction) -> None:
        info = ClientInfo.from_message(message)
        server_id = message.options.raw(c.OPT_SERVER_ID)
        requested = message.options.raw(c.OPT_REQUESTED_IP)
        transaction.asked.append(Asked(
            frame=segment.frame, time=segment.time, message_type=_type_name(message),
            port=segment.destination_port, firmware=info.firmware.value, arch=info.arch.value,
            arch_code=info.arch_code, vendor_class=info.vendor_class,
            user_classes=tuple(u.decode("latin-1") for u in info.user_classes),
            ipxe_features=tuple(sorted(info.ipxe_features)),
            server_id=str(IPv4Address(server_id)) if server_id and len(server_id) == 4
            else None,
            requested_address=str(IPv4Address(requested)) if requested and len(requested) == 4
            else None,
        ))
        if message.message_type == c.DHCPDECLINE:
            declined = transaction.asked[-1].requested_address or "its address"
            report.findings.append(Finding(
                DECLINE, f"DHCPDECLINE of {declined} (frame {segment.frame}): the client "
                "refused what it was given; it gives up or starts over", report.mac,
                (segment.frame,)))
        if segment.source != _ZERO:
            self.address_owner[str(segment.source)] = report.mac
        if self.oracle is not None:
            try:
                would = self.oracle.answer(segment, message, info)
            except (MalformedPacket, ApiMisuse) as exc:
                would = Would(segment.frame, _type_name(message), "nothing",
                              f"pxestack would drop it: {exc}")
            if would is not None:
                transaction.would.append(would)

    def reply(self, segment: Segment, message: DhcpMessage, report: MachineReport,
              transaction: Transaction) -> None:
        server = _server_of(message, segment.source)
        transaction.answers.append(Answer(
            frame=segment.frame, time=segment.time, message_type=_type_name(message),
            server=server, by=self.label(server, message), source_port=segment.source_port,
            yiaddr=str(message.yiaddr), siaddr=str(message.siaddr),
            boot_file=_boot_file(message),
            vendor_class=_text(message.options.raw(c.OPT_VENDOR_CLASS_ID)),
            option_43=c.OPT_VENDOR_SPECIFIC in message.options,
        ))
        if message.yiaddr != _ZERO and message.message_type in (c.DHCPACK, c.DHCPOFFER):
            address = str(message.yiaddr)
            self.address_owner[address] = report.mac
            if message.message_type == c.DHCPACK and address not in report.addresses:
                report.addresses.append(address)
        if message.ciaddr != _ZERO:
            self.address_owner[str(message.ciaddr)] = report.mac

    def label(self, server: str, message: DhcpMessage) -> str:
        if self.server is not None:
            return "pxestack" if server == str(self.server) else "another DHCP server"
        if message.yiaddr == _ZERO and message.message_type in (c.DHCPOFFER, c.DHCPACK):
            return "proxyDHCP"
        return "DHCP server"

    # TFTP

    def tftp(self, segment: Segment) -> None:
        if segment.destination_port == _TFTP_PORT:
            self.tftp_request(segment)
            return
        # The client's endpoint keys the transfer; the server answers from a new port (TID).
        to_client = self.transfers.get((str(segment.destination), segment.destination_port))
        from_client = self.transfers.get((str(segment.source), segment.source_port))
        transfer = to_client if to_client is not None else from_client
        if transfer is None:
            return
        try:
            packet = decode_tftp(segment.payload)
        except MalformedPacket as exc:
            self.malformed(segment, "TFTP packet", exc)
            return
        transfer.last_frame, transfer.last_time = segment.frame, segment.time
        server_side = to_client is not None
        if isinstance(packet, Data) and server_side:
            if packet.block != transfer.last_block:
                transfer.blocks += 1
                transfer.octets += len(packet.payload)
                transfer.last_block = packet.block
            if len(packet.payload) < transfer.blksize:
                transfer.complete = True
        elif isinstance(packet, OptionAck) and server_side:
            transfer.oack = True
            for name, value in packet.options:
                transfer.options[name.lower()] = value
                if name.lower() == "blksize" and value.isdigit():
                    transfer.blksize = int(value)
                elif name.lower() == "tsize" and value.isdigit():
                    transfer.tsize = int(value)
        elif isinstance(packet, Ack) and not server_side:
            transfer.last_ack = packet.block
        elif isinstance(packet, Error):
            side = "server" if server_side else "client"
            if (not server_side and packet.code == _TFTP_ERROR_ABORT and transfer.oack
                    and not transfer.blocks):
                transfer.size_probe = True
            else:
                transfer.error = f"{side} error {packet.code}: {packet.message}"

    def tftp_request(self, segment: Segment) -> None:
        try:
            packet = decode_tftp(segment.payload)
        except MalformedPacket as exc:
            self.malformed(segment, "TFTP request", exc)
            return
        if not isinstance(packet, ReadRequest):
            return
        key = (str(segment.source), segment.source_port)
        known = self.transfers.get(key)
        if (known is not None and known.filename == packet.filename and not known.blocks
                and not known.oack and known.error is None):
            known.retransmitted_requests += 1
            return
        transfer = TftpTransfer(
            frame=segment.frame, time=segment.time,
            client=f"{segment.source}:{segment.source_port}", server=str(segment.destination),
            filename=packet.filename, last_frame=segment.frame, last_time=segment.time,
        )
        self.transfers[key] = transfer
        mac = self.owner(segment, segment.source)
        if mac is not None:
            self.machine(mac).tftp.append(transfer)
        else:
            self.machine(f"unknown ({segment.source})").tftp.append(transfer)

    # HTTP

    def http(self, segment: Segment) -> None:
        payload = segment.payload
        if payload.startswith(_HTTP_METHODS):
            line, _, rest = payload.partition(b"\r\n")
            parts = line.split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
                return
            host = None
            for header in rest.split(b"\r\n"):
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"host":
                    host = value.strip().decode("latin-1")
                    break
            request = HttpRequest(
                frame=segment.frame, time=segment.time, client=str(segment.source),
                server=str(segment.destination), port=segment.destination_port,
                method=parts[0].decode("latin-1"), path=parts[1].decode("latin-1"), host=host)
            key = (str(segment.source), segment.source_port, str(segment.destination),
                   segment.destination_port)
            self.connections.setdefault(key, []).append(request)
            mac = self.owner(segment, segment.source)
            self.machine(mac if mac is not None else f"unknown ({segment.source})"
                         ).http.append(request)
        elif payload.startswith(b"HTTP/1."):
            key = (str(segment.destination), segment.destination_port, str(segment.source),
                   segment.source_port)
            pending = [r for r in self.connections.get(key, ()) if r.status is None]
            status = payload[9:12]
            if pending and status.isdigit():
                pending[0].status = int(status)

    # findings

    def diagnose(self) -> None:
        for report in self.machines.values():
            for transaction in report.transactions:
                self.two_servers(report, transaction)
                self.option_43(report, transaction)
                self.naks(report, transaction)
            self.chainload_loop(report)
            self.tftp_findings(report)
            self.script_fetched(report)
            self.findings.extend(report.findings)
        order = {kind: i for i, kind in enumerate(FINDING_KINDS)}
        self.findings.sort(key=lambda f: (order.get(f.kind, 99), f.frames[:1]))

    def two_servers(self, report: MachineReport, transaction: Transaction) -> None:
        acks = [a for a in transaction.answers if a.message_type == "ACK"]
        by_server = {a.server: a for a in acks}
        if len(by_server) > 1:
            requests = [q for q in transaction.asked if q.message_type == "REQUEST"]
            parts = []
            for answer in by_server.values():
                what = (f"address {answer.yiaddr}" if answer.yiaddr != "0.0.0.0"
                        else "yiaddr 0.0.0.0, a proxyDHCP ACK")
                if answer.yiaddr == "0.0.0.0" and answer.source_port == c.DHCP_SERVER_PORT:
                    what += " on port 67 (a proxy must answer REQUESTs only on port 4011)"
                parts.append(f"{answer.server} ({answer.by}: {what}, frame {answer.frame})")
            selected = requests[0].server_id if requests else None
            declined = any(q.message_type == "DECLINE" for q in transaction.asked)
            report.findings.append(Finding(
                TWO_SERVERS,
                f"two DHCP servers acknowledged one request (xid {transaction.xid}"
                + (f", which selected {selected}" if selected else "") + "): "
                + " and ".join(parts)
                + ("; the client then declined" if declined else
                   "; EDK2 firmware may take the wrong ACK and decline (PXE-E07)"),
                report.mac, tuple(a.frame for a in by_server.values())))
        offers = {a.server: a for a in transaction.answers
                  if a.message_type == "OFFER" and a.yiaddr != "0.0.0.0"}
        if len(offers) > 1:
            listed = ", ".join(f"{a.server} offered {a.yiaddr}" for a in offers.values())
            report.findings.append(Finding(
                TWO_ADDRESS_SERVERS,
                f"two DHCP servers offered addresses (xid {transaction.xid}): {listed}; "
                "only one may hand out addresses on a segment (pxestack beside a site "
                "server belongs in dhcp.mode: proxy)",
                report.mac, tuple(a.frame for a in offers.values())))

    def option_43(self, report: MachineReport, transaction: Transaction) -> None:
        if not any(q.firmware == Firmware.PXE.value for q in transaction.asked):
            return
        for answer in transaction.answers:
            if (answer.message_type in ("OFFER", "ACK") and not answer.option_43
                    and (answer.vendor_class or "").startswith("PXEClient")):
                later_4011 = [q for q in transaction.asked
                              if q.port == c.PXE_PROXY_PORT and q.frame > answer.frame]
                answered = any(a.frame > answer.frame and a.source_port == c.PXE_PROXY_PORT
                               and a.boot_file for a in transaction.answers)
                if later_4011 and answered:
                    continue  # a BINL-style offer that was followed through on port 4011
                report.findings.append(Finding(
                    NO_OPTION_43,
                    f"{answer.server} ({answer.by}) sent the PXE client option 60 PXEClient "
                    f"without option 43 (frame {answer.frame}): PXE firmware takes such a "
                    "reply for a boot-server (BINL) offer and asks port 4011"
                    + ("" if later_4011 else ", but it never did")
                    + "; send option 43 with discovery control 8, or no option 60 at all",
                    report.mac, (answer.frame,)))
                return

    def naks(self, report: MachineReport, transaction: Transaction) -> None:
        for answer in transaction.answers:
            if answer.message_type == "NAK":
                report.findings.append(Finding(
                    NAK, f"{answer.server} ({answer.by}) refused the request with a DHCPNAK "
                    f"(xid {transaction.xid}, frame {answer.frame})", report.mac,
                    (answer.frame,)))

    def chainload_loop(self, report: MachineReport) -> None:
        handed: dict[str, int] = {}
        repeats: list[Answer] = []
        for transaction in report.transactions:
            ipxe = any(q.firmware == Firmware.IPXE.value for q in transaction.asked)
            files = {a.boot_file: a for a in transaction.answers
                     if a.message_type in ("OFFER", "ACK") and a.boot_file
                     and not _is_url(a.boot_file)}
            for name, answer in files.items():
                if ipxe and name in handed:
                    repeats.append(answer)
                handed[name] = handed.get(name, 0) + 1
        if repeats:
            names = sorted({a.boot_file or "" for a in repeats})
            report.findings.append(Finding(
                CHAINLOAD_LOOP,
                f"iPXE chainload loop: iPXE was handed {', '.join(names)} again "
                f"({len(repeats)} time(s), frames {', '.join(str(a.frame) for a in repeats)}) "
                "instead of a script URL; the server must recognise the chainloaded iPXE "
                "(user class iPXE, option 175) and answer it with the script",
                report.mac, tuple(a.frame for a in repeats)))

    def tftp_findings(self, report: MachineReport) -> None:
        for transfer in report.tftp:
            status = transfer.status
            where = f"{transfer.filename} from {transfer.server} (RRQ frame {transfer.frame})"
            if status == "error":
                report.findings.append(Finding(
                    TFTP_ERROR, f"TFTP {where} failed: {transfer.error}", report.mac,
                    (transfer.frame, transfer.last_frame)))
            elif status == "no answer":
                report.findings.append(Finding(
                    TFTP_UNANSWERED,
                    f"TFTP {where} got no answer"
                    + (f" ({transfer.retransmitted_requests} retransmissions)"
                       if transfer.retransmitted_requests else "")
                    + ": no TFTP server there, or a firewall drops port 69",
                    report.mac, (transfer.frame,)))
            elif status == "stalled":
                acked = ("no ACK" if transfer.last_ack is None
                         else f"last ACK for block {transfer.last_ack}")
                report.findings.append(Finding(
                    TFTP_STALLED,
                    f"TFTP {where} stalled: {transfer.blocks} block(s), {transfer.octets} "
                    f"octets, last DATA block {transfer.last_block}, {acked}, and no final "
                    f"short block (blksize {transfer.blksize}"
                    + (f", tsize {transfer.tsize}" if transfer.tsize is not None else "")
                    + f"); the last packet was frame {transfer.last_frame}. Look for a "
                    "blksize above the path MTU, or a dropped ACK path",
                    report.mac, (transfer.frame, transfer.last_frame)))

    def script_fetched(self, report: MachineReport) -> None:
        for transaction in report.transactions:
            if not any(q.firmware == Firmware.IPXE.value for q in transaction.asked):
                continue
            urls = [a for a in transaction.answers
                    if a.message_type in ("OFFER", "ACK") and _is_url(a.boot_file)]
            if not urls:
                continue
            answer = urls[-1]
            url = answer.boot_file or ""
            parts = urlsplit(url)
            if parts.scheme != "http":
                continue  # an https fetch cannot be followed in a capture
            path = parts.path or "/"
            if any(r.frame > answer.frame and r.path.split("?")[0] == path
                   for r in report.http):
                continue
            report.findings.append(Finding(
                SCRIPT_NOT_FETCHED,
                f"iPXE was given the script URL {url} (frame {answer.frame}, from "
                f"{answer.server}) but no HTTP request for it followed: the client could not "
                "reach the host (routing, firewall, DNS) or took another server's answer",
                report.mac, (answer.frame,)))
            return


def explain(capture: Capture, settings: ExplainSettings | None = None, *,
            macs: Iterable[str] = ()) -> Explanation:
    """Follow every machine in *capture*; *macs* limits the report to those machines."""
    analysis = _Analysis(capture, settings)
    analysis.run()
    analysis.diagnose()
    wanted = {normalize_mac(m) for m in macs}
    machines = [m for m in analysis.machines.values() if not wanted or m.mac in wanted]
    findings = [f for f in analysis.findings
                if not wanted or f.mac in wanted or f.kind == MALFORMED]
    return Explanation(
        capture_format=capture.format, frames=capture.frames,
        mode=settings.mode if settings is not None else None,
        settings_source=settings.source if settings is not None else None,
        server_address=str(analysis.server) if analysis.server is not None else None,
        server_address_from=analysis.server_from,
        notes=list(settings.notes) if settings is not None else [],
        machines=machines, findings=findings,
    )


# --- output ------------------------------------------------------------------------------------


def _asked_line(asked: Asked) -> str:
    arch = asked.arch + (f" ({asked.arch_code})" if asked.arch_code is not None else "")
    bits = []
    if asked.message_type in ("DISCOVER", "REQUEST", "INFORM"):
        bits = [f"firmware {asked.firmware}", f"arch {arch}"]
    if asked.requested_address and asked.message_type in ("DECLINE", "RELEASE"):
        bits.append(f"address {asked.requested_address}")
    if asked.vendor_class:
        bits.append(f"vendor class {asked.vendor_class!r}")
    if asked.user_classes:
        bits.append("user class " + ",".join(asked.user_classes))
    if asked.ipxe_features:
        bits.append("iPXE features " + ",".join(asked.ipxe_features))
    if asked.server_id:
        bits.append(f"selects {asked.server_id}")
    return (f"#{asked.frame} {asked.message_type} to port {asked.port}"
            + (": " + ", ".join(bits) if bits else ""))


def _answer_line(answer: Answer) -> str:
    bits = []
    if answer.yiaddr != "0.0.0.0":
        bits.append(f"address {answer.yiaddr}")
    if answer.boot_file:
        bits.append(f"boot {answer.boot_file}"
                    + (f" from {answer.siaddr}" if answer.siaddr != "0.0.0.0" else ""))
    if answer.vendor_class:
        bits.append(f"option 60 {answer.vendor_class}")
    if answer.option_43:
        bits.append("option 43")
    return (f"#{answer.frame} {answer.message_type} from {answer.server} ({answer.by}, "
            f"port {answer.source_port})" + (": " + ", ".join(bits) if bits else ""))


def _would_line(would: Would) -> str:
    if would.answer == "nothing":
        return f"#{would.frame} {would.asked}: nothing ({would.reason})"
    bits = []
    if would.boot_file:
        bits.append(f"boot {would.boot_file}"
                    + (f" from {would.siaddr}" if would.siaddr not in (None, "0.0.0.0") else ""))
    if would.vendor_class:
        bits.append(f"option 60 {would.vendor_class}")
    if would.option_43:
        bits.append("option 43")
    return (f"#{would.frame} {would.asked}: {would.answer}"
            + (" with " + ", ".join(bits) if bits else "") + f" ({would.reason})")


def format_text(explanation: Explanation) -> str:
    """The report for an operator."""
    out: list[str] = []
    out.append(f"capture: {explanation.capture_format}, {explanation.frames} frames, "
               f"{len(explanation.machines)} machine(s)")
    if explanation.mode is None:
        out.append("configuration: none given (--config FILE shows what pxestack would "
                   "answer)")
    else:
        out.append(f"configuration: {explanation.settings_source}, dhcp.mode {explanation.mode}")
    if explanation.server_address:
        out.append(f"pxestack's DHCP address: {explanation.server_address} "
                   f"({explanation.server_address_from})")
    out.extend(f"note: {note}" for note in explanation.notes)
    for machine in explanation.machines:
        out.append("")
        out.append(f"machine {machine.mac}"
                   + (f" (address {', '.join(machine.addresses)})" if machine.addresses
                      else ""))
        for transaction in machine.transactions:
            out.append(f"  DHCP transaction {transaction.xid}")
            for i, asked in enumerate(transaction.asked):
                out.append(("    asked     " if i == 0 else "              ")
                           + _asked_line(asked))
            for i, answer in enumerate(transaction.answers):
                out.append(("    answered  " if i == 0 else "              ")
                           + _answer_line(answer))
            if not transaction.answers:
                out.append("    answered  nothing")
            shown = [w for w in transaction.would if w.asked in ("DISCOVER", "REQUEST",
                                                                  "INFORM")]
            for i, would in enumerate(shown):
                out.append(("    pxestack  " if i == 0 else "              ")
                           + _would_line(would))
        for transfer in machine.tftp:
            line = (f"  TFTP {transfer.filename} from {transfer.server} (#{transfer.frame}): "
                    f"{transfer.status}, {transfer.blocks} block(s), {transfer.octets} octets")
            if transfer.error:
                line += f", {transfer.error}"
            out.append(line)
        for request in machine.http:
            out.append(f"  HTTP {request.method} {request.path} on {request.server}:"
                       f"{request.port} (#{request.frame}): "
                       + (str(request.status) if request.status is not None else "no answer"))
    out.append("")
    if explanation.findings:
        out.append(f"{len(explanation.findings)} problem(s):")
        for finding in explanation.findings:
            who = f"{finding.mac}: " if finding.mac else ""
            out.append(f"  [{finding.kind}] {who}{finding.message}")
    else:
        out.append("no problems found")
    return "\n".join(out) + "\n"


def _plain(value: object) -> object:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        data = {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
        if isinstance(value, TftpTransfer):
            data["status"] = value.status
        return data
    return value


def to_json(explanation: Explanation) -> dict[str, object]:
    """The report as plain JSON values (``--json``)."""
    data = _plain(explanation)
    assert isinstance(data, dict)
    return data


__all__ = [
    "CHAINLOAD_LOOP",
    "DECLINE",
    "FINDING_KINDS",
    "MALFORMED",
    "NAK",
    "NO_OPTION_43",
    "SCRIPT_NOT_FETCHED",
    "TFTP_ERROR",
    "TFTP_STALLED",
    "TFTP_UNANSWERED",
    "TWO_ADDRESS_SERVERS",
    "TWO_SERVERS",
    "Answer",
    "Asked",
    "ExplainSettings",
    "Explanation",
    "Finding",
    "HttpRequest",
    "MachineReport",
    "TftpTransfer",
    "Transaction",
    "Would",
    "explain",
    "format_text",
    "to_json",
]
