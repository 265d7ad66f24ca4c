"""``pxestack simulate``: watch N simulated machines boot and install against a running pxestack.

Each machine walks the whole flow a real one does (:mod:`pxestack.simulate`): DHCP as a
PXE ROM, TFTP of the boot file, DHCP as iPXE, the iPXE script, enrolment through the
first-stage script, the host-data POST and ``set_installed``.  The defaults fit the
quickstart (``pxestack serve`` with no ``--config``): DHCP on 127.0.0.1:6767 answering
port 6768, TFTP on 6969, HTTP on 8080, so no root is needed.

While the machines boot, a line a second counts them per phase; at the end a table gives
each phase's latency and any machine that failed.  Exit status: 0 when every machine
reached ``installed``, 1 when one did not, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any, TextIO

from pxestack.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from pxestack.simulate import (
    DONE,
    FAILED,
    PHASES,
    WAITING,
    Machine,
    StormSpec,
    make_machines,
    percentiles,
    phase_counts,
    storm,
)
from pxestack.wire import constants as c

#: The quickstart's servers.
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_DHCP = "127.0.0.1:6767"
QUICKSTART_TFTP_PORT = 6969
#: Bounds that keep one command from flooding a server by a typo.
MAX_MACHINES = 10_000
MAX_RATE = 1000.0

#: What the live line calls each state (``installed`` is the set_installed call in flight).
LABELS = {
    WAITING: "waiting",
    "dhcp_pxe": "dhcp-pxe",
    "tftp": "tftp",
    "dhcp_ipxe": "dhcp-ipxe",
    "script": "script",
    "enrol": "enrol",
    "hostdata": "host-data",
    "installed": "set-installed",
    DONE: "installed",
    FAILED: "failed",
}


class UsageError(Exception):
    """A bad option; the message names it."""


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand."""
    parser = subparsers.add_parser(
        "simulate",
        help="boot simulated machines against a running pxestack",
        description="Drive simulated machines through the whole boot (DHCP as a PXE ROM, "
        "TFTP, DHCP as iPXE, the script, enrolment, host data, set_installed) against a "
        "running pxestack.  The defaults fit the quickstart on loopback; no root needed.  "
        "Exit status: 0 when every machine is installed, 1 otherwise, 2 usage error.",
    )
    parser.add_argument("--machines", "-n", type=int, default=5, metavar="N",
                        help=f"how many machines boot (default 5, at most {MAX_MACHINES})")
    parser.add_argument("--rate", type=float, default=10.0, metavar="R",
                        help="machines started per second (default 10)")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the server's HTTP base URL (default {DEFAULT_URL})")
    parser.add_argument("--dhcp-server", default=DEFAULT_DHCP, metavar="HOST:PORT",
                        help=f"where DHCP requests go (default {DEFAULT_DHCP})")
    parser.add_argument("--dhcp-client-port", type=int, metavar="PORT",
                        help="the port replies come back to (default: 68 when the server "
                        "port is 67, else the server port + 1, as pxestack answers)")
    parser.add_argument("--tftp-server", metavar="HOST",
                        help="the TFTP server (default: the next-server of the DHCP answer)")
    parser.add_argument("--tftp-port", type=int, metavar="PORT",
                        help=f"the TFTP port (default: 69 when the DHCP port is 67, else "
                        f"{QUICKSTART_TFTP_PORT}, the quickstart's)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="give up on machines still booting after this long (default: "
                        "60 s plus the time to start them all)")
    parser.add_argument("--require-boot-file", action="store_true",
                        help="fail a machine whose boot file is missing on the TFTP server "
                        "(by default it carries on, like a NIC whose ROM is iPXE, and the "
                        "summary says so)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow servers that are not on loopback (the machines' DHCP "
                        "then needs port 68 and a segment the server answers on)")
    parser.add_argument("--json", action="store_true",
                        help="print the final report as JSON instead of a table")
    parser.set_defaults(func=simulate)


def _host_port(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise UsageError(f"{option} {text!r} is not HOST:PORT")
    try:
        number = int(port)
        ipaddress.IPv4Address(host)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not an IPv4 HOST:PORT") from None
    if not 0 < number < 65536:
        raise UsageError(f"{option} port {number} is not between 1 and 65535")
    return host, number


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_spec(args: argparse.Namespace) -> StormSpec:
    """The storm the command line asks for; :class:`UsageError` names a bad option."""
    if not 1 <= args.machines <= MAX_MACHINES:
        raise UsageError(f"--machines {args.machines} is not between 1 and {MAX_MACHINES}")
    if not 0 < args.rate <= MAX_RATE:
        raise UsageError(f"--rate {args.rate:g} is not above 0 and at most {MAX_RATE:g}")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout:g} is not above 0")
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        raise UsageError(f"--url {args.url!r} is not an http://HOST:PORT URL")
    dhcp = _host_port(args.dhcp_server, "--dhcp-server")
    client_port = args.dhcp_client_port
    if client_port is None:
        client_port = c.DHCP_CLIENT_PORT if dhcp[1] == c.DHCP_SERVER_PORT else dhcp[1] + 1
    if not 0 < client_port < 65536:
        raise UsageError(f"--dhcp-client-port {client_port} is not between 1 and 65535")
    tftp_port = args.tftp_port
    if tftp_port is None:
        tftp_port = 69 if dhcp[1] == c.DHCP_SERVER_PORT else QUICKSTART_TFTP_PORT
    if not 0 < tftp_port < 65536:
        raise UsageError(f"--tftp-port {tftp_port} is not between 1 and 65535")
    hosts = {"--url": url.hostname, "--dhcp-server": dhcp[0]}
    if args.tftp_server:
        hosts["--tftp-server"] = args.tftp_server
    loopback = all(_is_loopback(host) for host in hosts.values())
    if not loopback and not args.allow_remote:
        remote = ", ".join(f"{option} {host}" for option, host in hosts.items()
                           if not _is_loopback(host))
        raise UsageError(f"{remote} is not on loopback; pass --allow-remote to boot "
                         "simulated machines against another host")
    start_time = args.machines / args.rate
    timeout = args.timeout if args.timeout is not None else 60.0 + start_time
    run = random.getrandbits(16)
    return StormSpec(
        machines=args.machines,
        arrival_rate=args.rate,
        base_url=args.url.rstrip("/"),
        dhcp_server=dhcp,
        client_port=client_port,
        tftp_server=args.tftp_server,
        tftp_port=tftp_port,
        # On loopback every leased 127.x address is this host's own: use it as the source.
        bind_leased=loopback,
        missing_boot_file_ok=not args.require_boot_file,
        machine_deadline=timeout,
        storm_deadline=max(timeout, start_time + 1.0),
        # Distinct per run, so a second run boots new machines, not installed ones.
        serial_prefix=f"SIM{run:04X}",
        mac_prefix=bytes([0x02]) + run.to_bytes(2, "big"),  # locally administered
        mac_offset=0,
    )


def count_line(machines: Sequence[Machine]) -> str:
    """``waiting 3 · dhcp-pxe 3 · tftp 5 · ... · installed 5`` (empty phases left out,
    except installed)."""
    counts = phase_counts(machines)
    parts = [f"{LABELS[state]} {number}" for state, number in counts.items()
             if number or state == DONE]
    return " · ".join(parts)


def final_table(report: dict[str, Any], spec: StormSpec) -> str:
    """The summary: installed count, per-phase latency, failures and notes."""
    machines = report["machines"]
    installed = sum(1 for m in machines if not m["error"] and m["total_s"] is not None)
    wall = report["wall_s"]
    lines = [f"{installed} of {spec.machines} machines installed"
             + (f" in {wall:.1f} s" if wall is not None else "")]
    lines.append(f"  {'phase':<14}{'done':>6}{'p50 s':>9}{'p90 s':>9}{'max s':>9}")
    for phase in PHASES:
        values = [m["phases"][phase] for m in machines if phase in m["phases"]]
        stats = percentiles(values)
        if stats:
            lines.append(f"  {LABELS[phase]:<14}{len(values):>6}{stats['p50']:>9.3f}"
                         f"{stats['p90']:>9.3f}{stats['max']:>9.3f}")
        else:
            lines.append(f"  {LABELS[phase]:<14}{0:>6}{'-':>9}{'-':>9}{'-':>9}")
    totals = [m["total_s"] for m in machines if m["total_s"] is not None]
    if totals:
        stats = percentiles(totals)
        lines.append(f"  {'total':<14}{len(totals):>6}{stats['p50']:>9.3f}"
                     f"{stats['p90']:>9.3f}{stats['max']:>9.3f}")
    missing = sorted({m["boot_file_missing"] for m in machines if m["boot_file_missing"]})
    if missing:
        lines.append(f"note: the TFTP server has no {', '.join(missing)}; the machines carried "
                     "on as if their ROM were iPXE.  Put the iPXE binaries in tftp.root (see "
                     "docs/getting-started.md) to boot real PXE ROMs.")
    failed = [m for m in machines if m["error"]]
    if failed:
        lines.append(f"{len(failed)} machine(s) failed:")
        lines += [f"  {m['serial']} ({m['mac']}): {m['error']}" for m in failed[:10]]
        if len(failed) > 10:
            lines.append(f"  ... and {len(failed) - 10} more")
    if failed and not any("dhcp_pxe" in m["phases"] for m in machines):
        host, port = spec.dhcp_server
        lines.append(f"no machine got a DHCP answer from {host}:{port}: is pxestack serve "
                     "running there (--dhcp-server)?")
    if report["stray_dhcp_replies"]:
        lines.append(f"{report['stray_dhcp_replies']} DHCP replies matched no machine "
                     "(another client on the same port?)")
    return "\n".join(lines)


class LiveLine:
    """Prints the per-phase counts: rewritten in place on a terminal, a line each on a pipe."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def __call__(self, machines: Sequence[Machine]) -> None:
        line = count_line(machines)
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
        elif line != self.last:
            self.stream.write(line + "\n")
        self.last = line
        self.stream.flush()

    def close(self) -> None:
        """End the rewritten line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def simulate(args: argparse.Namespace) -> int:
    """Run the simulated machines; exit 0 when all reached installed."""
    try:
        spec = build_spec(args)
    except UsageError as exc:
        print(f"pxestack simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    live = LiveLine(out)
    out.write(f"booting {spec.machines} simulated machines ({spec.serial_prefix}-000000 ...) "
              f"against {spec.base_url}, DHCP {spec.dhcp_server[0]}:{spec.dhcp_server[1]}\n")
    out.flush()
    machines = make_machines(spec)
    try:
        report = asyncio.run(storm(spec, progress=live, machines=machines))
    except OSError as exc:
        live.close()
        print(f"pxestack simulate: cannot open the DHCP client socket on port "
              f"{spec.client_port} (--dhcp-client-port): {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        live.close()
        print("pxestack simulate: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    live.close()
    if args.json:
        out.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        out.write(final_table(report, spec) + "\n")
    all_installed = all(m["error"] == "" and m["total_s"] is not None for m in report["machines"])
    return EXIT_OK if all_installed else EXIT_FAILURE


__all__ = ["build_spec", "count_line", "final_table", "register", "simulate"]
