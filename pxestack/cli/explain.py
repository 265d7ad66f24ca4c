"""``pxestack explain CAPTURE``: what a packet capture says about each machine's network boot.

The analysis is :mod:`pxestack.explain`; this module reads the capture file and maps the
configuration (``--config``) to :class:`~pxestack.explain.ExplainSettings`.
"""

from __future__ import annotations

import argparse
import json
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pxestack.cli import EXIT_FAILURE, EXIT_OK, print_problems
from pxestack.errors import ConfigError, MalformedPacket


def register(subparsers: Any) -> None:
    """Add the ``explain`` subcommand."""
    parser = subparsers.add_parser(
        "explain",
        help="explain each machine's boot in a packet capture",
        description="Read a pcap or pcapng capture and print, per machine, what it asked "
        "(firmware, architecture, user class), what answered (pxestack or another DHCP "
        "server), what pxestack with --config would answer and why, its TFTP transfers and "
        "HTTP requests, and the problems found: two DHCP servers answering, a DHCPDECLINE, "
        "option 60 without option 43, an iPXE chainload loop, a stalled TFTP transfer, a "
        "script URL never fetched.  See docs/cli.md.",
    )
    parser.add_argument("capture", type=Path, help="the capture file (pcap or pcapng)")
    parser.add_argument("--config", type=Path,
                        help="pxestack's configuration: show what it would answer")
    parser.add_argument("--mac", action="append", default=[],
                        help="only this machine (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run_explain)


def _settings(path: Path) -> Any:
    """:class:`~pxestack.explain.ExplainSettings` from a configuration file (None when the
    configuration has no DHCP service)."""
    from pxestack.config import load_config_file
    from pxestack.dhcp.decide import BootDefaults
    from pxestack.dhcp.policy import StaticBootPolicy
    from pxestack.explain import ExplainSettings
    from pxestack.service.dhcp import boot_defaults

    config = load_config_file(path)
    dhcp = config.dhcp
    if dhcp is None:
        return None
    notes = []
    if config.provision is not None:
        notes.append("provisioning is configured: per-machine boot specs from the host store "
                      "are not consulted, every machine is shown with the configured defaults")

    def defaults_for(address: IPv4Address) -> BootDefaults:
        return boot_defaults(config, address)

    return ExplainSettings(
        mode=dhcp.mode, defaults_for=defaults_for, policy=StaticBootPolicy(),
        server_address=dhcp.server_address, proxy_port=dhcp.proxy_port or 4011,
        relays=tuple(dhcp.relays), source=str(path), notes=tuple(notes),
    )


def run_explain(args: argparse.Namespace) -> int:
    """Read, analyse, print."""
    from pxestack.explain import explain, format_text, to_json
    from pxestack.wire.capture import read_capture

    settings = None
    if args.config is not None:
        try:
            settings = _settings(args.config)
        except ConfigError as exc:
            return print_problems(str(args.config), exc.problems)
        if settings is None:
            print(f"pxestack: {args.config} enables no DHCP service; showing the capture "
                  "only", file=sys.stderr)
    try:
        data = args.capture.read_bytes()
    except OSError as exc:
        print(f"pxestack: cannot read {args.capture}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        capture = read_capture(data)
    except MalformedPacket as exc:
        print(f"pxestack: {args.capture}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    explanation = explain(capture, settings, macs=args.mac)
    if args.json:
        sys.stdout.write(json.dumps(to_json(explanation), indent=2) + "\n")
    else:
        sys.stdout.write(format_text(explanation))
    return EXIT_OK
