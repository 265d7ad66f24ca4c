"""``pxestack tftp``: serve a directory over TFTP, nothing else.

Quick mode, like ``dhcp`` and ``http``: no configuration file, no provisioning.  The command
line becomes the same :class:`~pxestack.config.Config` a file would give (``load_config``),
so validation and defaults are those of ``pxestack serve``::

    pxestack tftp --root /srv/tftp --listen 0.0.0.0:69 --max-blksize 1468
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pxestack.cli import EXIT_FAILURE, EXIT_USAGE, add_logging_arguments, print_problems
from pxestack.config import Config, ConfigError, load_config

DEFAULT_LISTEN = "0.0.0.0:69"


def register(subparsers: Any) -> None:
    """Add the ``tftp`` subcommand."""
    parser = subparsers.add_parser(
        "tftp",
        help="serve a directory over TFTP (quick mode)",
        description="Serve the files under --root over TFTP (RFC 1350) with blksize, tsize, "
        "timeout and windowsize options (RFC 2347-2349, 7440).  Uploads are refused.",
    )
    parser.add_argument("--root", required=True, metavar="DIR", help="directory to serve")
    parser.add_argument("--create", action="store_true",
                        help="create --root (and its parents) when it does not exist")
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument("--max-blksize", type=int, metavar="N",
                        help="largest block size granted, 8..65464 (default 1468)")
    parser.add_argument("--max-windowsize", type=int, metavar="N",
                        help="largest RFC 7440 window granted (default 16)")
    parser.add_argument("--per-client-limit", type=int, metavar="N",
                        help="concurrent transfers per client IP (default 64)")
    parser.add_argument("--single-port", action="store_true",
                        help="serve every transfer from the listening port (firewalls, NAT)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes serving transfers, sharing the port with SO_REUSEPORT "
                        "(default: the CPUs this process may use; 1: one process)")
    add_logging_arguments(parser)
    parser.set_defaults(func=tftp_command)


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration the command line describes; raises :class:`ConfigError`."""
    tftp: dict[str, object] = {
        "listen": args.listen,
        "root": args.root,
        "single_port": bool(args.single_port),
    }
    if args.max_blksize is not None:
        tftp["max_blksize"] = args.max_blksize
    if args.per_client_limit is not None:
        tftp["per_client_limit"] = args.per_client_limit
    if args.max_windowsize is not None:
        tftp["max_windowsize"] = args.max_windowsize
    if args.workers is not None:
        tftp["workers"] = args.workers
    return load_config(
        {"log_format": args.log_format, "log_level": args.log_level, "tftp": tftp},
        base_dir=Path.cwd(),
        source="pxestack tftp",
    )


def tftp_command(args: argparse.Namespace) -> int:
    """Validate the arguments, then run the TFTP service until interrupted."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return print_problems("the pxestack tftp arguments", exc.problems)
    assert config.tftp is not None
    if config.tftp.root.exists() and not config.tftp.root.is_dir():
        print(f"pxestack tftp: --root {config.tftp.root} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    if not config.tftp.root.exists():
        if not args.create:
            print(f"pxestack tftp: --root {config.tftp.root} does not exist (create it, or "
                  "pass --create)", file=sys.stderr)
            return EXIT_USAGE
        try:
            config.tftp.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"pxestack tftp: --create: cannot create {config.tftp.root}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"pxestack tftp: created --root {config.tftp.root} (empty)", file=sys.stderr)
    from pxestack.cli._run import run_service
    from pxestack.service import build_service

    return run_service(build_service(config), config)


__all__ = ["config_from_args", "register", "tftp_command"]
