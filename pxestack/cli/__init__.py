"""The ``pxestack`` command line.

Subcommands live in their own modules, each with a ``register(subparsers)`` function:
``serve`` (everything the config file enables), the quick modes ``dhcp``, ``tftp`` and
``http``, ``ctl`` (the mayuctl-style client), ``simulate`` (simulated machines),
``explain`` (packet captures) and ``db`` (the PostgreSQL host store).  Exit status:
0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence

from pxestack import __version__

#: Subcommand modules under ``pxestack.cli``, in the order ``--help`` lists them.
SUBCOMMANDS = ("serve", "dhcp", "tftp", "http", "ctl", "simulate", "images", "migrate", "explain",
               "extensions", "db")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="pxestack",
        description="A pure-Python network-boot stack: DHCP, proxyDHCP, TFTP, HTTP and "
        "mayu-style provisioning.",
    )
    parser.add_argument("--version", action="version", version=f"pxestack {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"pxestack.cli.{name}")
        module.register(subparsers)
    return parser


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-format text|json`` and ``--log-level`` for the quick-mode subcommands."""
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines as text or as one JSON object each (default text)")
    parser.add_argument("--log-level", choices=("debug", "info", "warn", "error"),
                        default="info", help="the lowest level logged (default info)")


def print_problems(where: str, problems: Iterable[object]) -> int:
    """Print every configuration problem on one screen; returns :data:`EXIT_USAGE`."""
    unique = list(dict.fromkeys(str(problem) for problem in problems))
    print(f"pxestack: {len(unique)} problem(s) in {where}:", file=sys.stderr)
    for problem in unique:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE


def subcommand_names() -> list[str]:
    """The names of every registered subcommand (as typed on the command line)."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    status: int = args.func(args)
    return status


def entry_point() -> None:
    """Console-script entry: ``sys.exit(main())``."""
    sys.exit(main())


__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_logging_arguments",
    "build_parser",
    "main",
    "print_problems",
    "subcommand_names",
]
