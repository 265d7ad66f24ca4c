"""``pxestack http``: serve a directory of boot assets over HTTP, nothing else.

Quick mode, like ``dhcp`` and ``tftp``: no configuration file, no provisioning.  The
command line is turned into the same :class:`~pxestack.config.Config` a file would give
(``load_config``), so limits and validation are those of ``pxestack serve``::

    pxestack http --root /srv/boot --listen 0.0.0.0:8080
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pxestack.cli import EXIT_USAGE, add_logging_arguments, print_problems
from pxestack.config import Config, ConfigError, load_config

DEFAULT_LISTEN = "0.0.0.0:8080"


def register(subparsers: Any) -> None:
    """Add the ``http`` subcommand."""
    parser = subparsers.add_parser(
        "http",
        help="serve a directory of boot assets over HTTP (quick mode)",
        description="Serve the files under --root over HTTP with sendfile, Range, ETag and "
        "connection limits.  A file is reachable as /assets/<path> and as /<path>.  "
        "/healthz answers 'ok'.",
    )
    parser.add_argument("--root", required=True, metavar="DIR", help="asset directory")
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free one)",
    )
    parser.add_argument("--max-connections", type=int, metavar="N",
                        help="open connections in total (default 1024)")
    parser.add_argument("--max-connections-per-client", type=int, metavar="N",
                        help="open connections per client IP (default 16)")
    parser.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                        help="drop a client that reads nothing for this long (default 30)")
    parser.add_argument("--header-timeout", type=float, metavar="SECONDS",
                        help="seconds a client has to send a whole request head (default 10)")
    parser.add_argument("--no-sendfile", action="store_true",
                        help="read and write bodies instead of using sendfile")
    add_logging_arguments(parser)
    parser.set_defaults(func=http_command)


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration the command line describes; raises :class:`ConfigError`."""
    http: dict[str, object] = {
        "listen": args.listen,
        "assets_root": args.root,
        "sendfile": not args.no_sendfile,
    }
    optional = {
        "max_connections": args.max_connections,
        "max_connections_per_client": args.max_connections_per_client,
        "stall_timeout": args.stall_timeout,
        "header_timeout": args.header_timeout,
    }
    http.update({key: value for key, value in optional.items() if value is not None})
    return load_config(
        {"log_format": args.log_format, "log_level": args.log_level, "http": http},
        base_dir=Path.cwd(),
        source="pxestack http",
    )


def http_command(args: argparse.Namespace) -> int:
    """Validate the arguments, then run the HTTP service until interrupted."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return print_problems("the pxestack http arguments", exc.problems)
    assert config.http is not None and config.http.assets_root is not None
    if not config.http.assets_root.is_dir():
        print(f"pxestack http: --root {config.http.assets_root} is not a directory",
              file=sys.stderr)
        return EXIT_USAGE
    from pxestack.cli._run import run_service
    from pxestack.service import build_service

    return run_service(build_service(config), config)


__all__ = ["config_from_args", "http_command", "register"]
