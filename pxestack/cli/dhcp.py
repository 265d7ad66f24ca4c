"""``pxestack dhcp``: a DHCP server or proxyDHCP from command-line flags alone.

Like dnsmasq's and pixiecore's one-liners::

    pxestack dhcp --interface eth1 --range 198.18.0.100,198.18.0.200,255.255.255.0 \\
        --router 198.18.0.1 --dns 198.18.0.1 --boot-url http://198.18.0.1:8080/boot.ipxe
    pxestack dhcp --interface eth1 --proxy --boot-url http://198.18.0.1:8080/boot.ipxe

The flags are turned into the same mapping a YAML file would hold and validated by
:func:`pxestack.config.load_config`, so mistakes are reported exactly as for ``serve``
(with key paths such as ``dhcp.pools[0].start``); everything here is also available in the
configuration file (docs/dhcp.md).
"""

from __future__ import annotations

import argparse
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pxestack.cli import EXIT_USAGE, add_logging_arguments, print_problems
from pxestack.config import Config, ConfigError, load_config


def register(subparsers: Any) -> None:
    """Add the ``dhcp`` subcommand."""
    parser = subparsers.add_parser(
        "dhcp",
        help="run a DHCP server or proxyDHCP from flags (quick mode)",
        description="Run a DHCP server (or with --proxy a proxyDHCP beside an existing DHCP "
        "server) configured entirely by flags.  See docs/dhcp.md.",
    )
    parser.add_argument("--interface", "-i", action="append", default=[], metavar="IF",
                        help="serve this interface (repeat for several)")
    parser.add_argument("--range", dest="ranges", action="append", default=[],
                        metavar="START,END[,NETMASK]",
                        help="a dynamic address range; the netmask defaults to the "
                        "interface's network (repeat for several)")
    parser.add_argument("--router", metavar="IP", help="option 3 (default gateway)")
    parser.add_argument("--dns", action="append", default=[], metavar="IP",
                        help="option 6 (repeat for several)")
    parser.add_argument("--domain", metavar="NAME", help="option 15 (domain name)")
    parser.add_argument("--lease-time", type=int, metavar="S", help="lease time in seconds")
    parser.add_argument("--boot-url", metavar="URL",
                        help="iPXE script URL handed to iPXE clients")
    parser.add_argument("--tftp-server", metavar="IP",
                        help="next-server for PXE firmware (default: this server)")
    parser.add_argument("--proxy", action="store_true",
                        help="proxyDHCP: boot information only, no addresses")
    parser.add_argument("--server-address", metavar="IP",
                        help="the address replies name as this server (option 54, "
                        "next-server); default: the interface's first address")
    parser.add_argument("--listen", metavar="ADDR:PORT",
                        help="listen address when no --interface is given (e.g. "
                        "127.0.0.1:6767); the port also applies to interfaces")
    parser.add_argument("--relay", action="append", default=[], metavar="IP",
                        help="answer requests relayed by this agent (giaddr)")
    parser.add_argument("--state-dir", metavar="DIR", default="pxestack-state",
                        help="where the lease journal lives (default ./pxestack-state)")
    parser.add_argument("--authoritative", action="store_true",
                        help="NAK/answer clients this server has no record of")
    parser.add_argument("--no-fsync", action="store_true",
                        help="do not fsync the lease journal per ACK (tmpfs, tests)")
    parser.add_argument("--no-admission", action="store_true",
                        help="answer every new PXE client at once (dhcp.admission.enabled: "
                             "false); for load generators whose clients never boot further")
    add_logging_arguments(parser)
    parser.add_argument("--check", action="store_true",
                        help="validate the flags and exit")
    parser.set_defaults(func=dhcp)


def _interface_network(name: str) -> IPv4Network | None:
    """The network of interface *name*, if it exists (used when --range has no netmask)."""
    from pxestack.netif import InterfaceError, lookup_interface

    try:
        return lookup_interface(name).network
    except InterfaceError:
        return None


def _pool(text: str, interfaces: list[str]) -> dict[str, object]:
    """``START,END[,NETMASK]`` as a pool mapping; unparsable parts are passed through so
    that load_config reports them with their key path."""
    parts = [part.strip() for part in text.split(",")]
    pool: dict[str, object] = {"start": parts[0] if parts else ""}
    pool["end"] = parts[1] if len(parts) > 1 else None
    start = parts[0] if parts else ""
    subnet: str | None = None
    try:
        if len(parts) > 2:
            subnet = str(IPv4Network(f"{start}/{parts[2]}", strict=False))
        else:
            for name in interfaces:
                network = _interface_network(name)
                if network is not None and IPv4Address(start) in network:
                    subnet = str(network)
                    break
            if subnet is None:
                subnet = str(IPv4Network(f"{start}/24", strict=False))
    except ValueError:
        subnet = f"{start}/{parts[2] if len(parts) > 2 else '?'}"
    pool["subnet"] = subnet
    return pool


def mapping_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The configuration mapping the flags describe (what a YAML file would contain)."""
    dhcp: dict[str, object] = {"mode": "proxy" if args.proxy else "server"}
    if args.interface:
        dhcp["interfaces"] = list(args.interface)
    if args.listen:
        dhcp["listen"] = args.listen
    elif not args.interface:
        dhcp["listen"] = "0.0.0.0:67"
    if args.proxy:
        dhcp["proxy_port"] = 4011
    else:
        pools = [_pool(text, args.interface) for text in args.ranges]
        for pool in pools:
            if args.router:
                pool["router"] = args.router
            if args.dns:
                pool["dns"] = list(args.dns)
            if args.domain:
                pool["domain"] = args.domain
        dhcp["pools"] = pools
        dhcp["proxy_port"] = 0
    if args.server_address:
        dhcp["server_address"] = args.server_address
    if args.lease_time is not None:
        dhcp["lease_time"] = args.lease_time
    if args.relay:
        dhcp["relays"] = list(args.relay)
    if args.authoritative:
        dhcp["authoritative"] = True
    if args.no_fsync:
        dhcp["fsync"] = False
    if args.no_admission:
        dhcp["admission"] = {"enabled": False}
    boot: dict[str, object] = {}
    if args.boot_url:
        boot["ipxe_script_url"] = args.boot_url
    if args.tftp_server:
        boot["tftp_server"] = args.tftp_server
    if boot:
        dhcp["boot"] = boot
    return {
        "state_dir": args.state_dir,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "dhcp": dhcp,
    }


def config_from_args(args: argparse.Namespace) -> Config | None:
    """Validate the flags; print every problem and return None when there are any."""
    problems: list[str] = []
    if not args.proxy and not args.ranges:
        problems.append("--range: server mode needs at least one range (or use --proxy)")
    try:
        config = load_config(mapping_from_args(args), source="pxestack dhcp (command line)")
    except ConfigError as exc:
        problems.extend(str(problem) for problem in exc.problems)
        config = None
    if problems:
        print_problems("the pxestack dhcp arguments", problems)
        return None
    return config


def dhcp(args: argparse.Namespace) -> int:
    """Run the DHCP service the flags describe."""
    config = config_from_args(args)
    if config is None:
        return EXIT_USAGE
    if args.check:
        print("pxestack dhcp: configuration is valid")
        return 0
    from pxestack.app import build_root_service
    from pxestack.cli._run import run_service

    return run_service(build_root_service(config), config)


__all__ = ["config_from_args", "mapping_from_args", "register"]
