"""``pxestack serve``: run every service the configuration file enables."""

from __future__ import annotations

import argparse
from typing import Any

from pxestack.cli import EXIT_USAGE, print_problems
from pxestack.config import Config, ConfigError, load_config_file, load_quickstart


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run every service the configuration enables",
        description="Run every service the configuration file enables.  Without --config, "
        "run the embedded quickstart (loopback, unprivileged ports, state under "
        "./pxestack-state).",
    )
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    parser.add_argument(
        "--log-format", choices=("text", "json"), help="override the file's log_format"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the configuration and exit"
    )
    parser.set_defaults(func=serve)


def load_or_report(path: str | None, log_format: str | None = None) -> Config | None:
    """Load *path* (or the quickstart); print every problem and return None on error."""
    try:
        config = load_config_file(path) if path else load_quickstart()
    except ConfigError as exc:
        print_problems(path or "<embedded quickstart>", exc.problems)
        return None
    if log_format is not None:
        from dataclasses import replace

        config = replace(config, log_format=log_format)
    return config


def serve(args: argparse.Namespace) -> int:
    """Run the service tree for the configuration."""
    config = load_or_report(args.config, args.log_format)
    if config is None:
        return EXIT_USAGE
    if args.check:
        # The same host checks serve applies before it builds anything (token files,
        # directory modes, run_as), so --check passes only what serve accepts.
        from pxestack.config.checks import serving_problems

        problems = serving_problems(config)
        if problems:
            print_problems(args.config or "<embedded quickstart>", problems)
            return EXIT_USAGE
        print(f"{config.source}: configuration is valid")
        return 0
    from pxestack.app import build_root_service
    from pxestack.cli._run import run_service

    try:
        root = build_root_service(config)
    except ConfigError as exc:
        # Problems found while building (a token file that cannot be read, ...).
        print_problems(args.config or "<embedded quickstart>", exc.problems)
        return EXIT_USAGE
    return run_service(root, config)
