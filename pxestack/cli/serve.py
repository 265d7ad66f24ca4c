"""``pxestack serve``: run every service the configuration file enables."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from pxestack.cli import EXIT_FAILURE, EXIT_USAGE, print_problems
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
        if config.extensions:
            from pxestack.extensions import check_extensions

            problems = [*problems, *check_extensions(config)]
        if problems:
            print_problems(args.config or "<embedded quickstart>", problems)
            return EXIT_USAGE
        print(f"{config.source}: configuration is valid")
        return 0
    from pxestack.app import build_root_service, prepare_admin_token
    from pxestack.cli._run import run_service, start_logging
    from pxestack.provision.hoststore import StoreError
    from pxestack.provision.statelock import StateLocked

    try:
        try:
            new_token = prepare_admin_token(config)
            root = build_root_service(config)
        except (ConfigError, StateLocked, StoreError, OSError):
            # The warnings logged while building (held in twisted.logger's start-up buffer
            # until the log format is known) explain a failure as often as the error itself:
            # write them before the error, as a successful start would.
            start_logging(config.log_format, config.log_level)
            raise
    except ConfigError as exc:
        # Problems found while building (a token file that cannot be read, ...).
        print_problems(args.config or "<embedded quickstart>", exc.problems)
        return EXIT_USAGE
    except (StateLocked, StoreError) as exc:
        # Another server holds the cluster directory, or the shared database is unusable.
        print(f"pxestack: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        key = "provision.api.token_file"
        print(f"pxestack: {key}: cannot create it: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_service(root, config, on_running=lambda: print_banner(config, new_token))


def dashboard_url(config: Config) -> str | None:
    """The URL of the web dashboard (``/`` of the HTTP service), or None without HTTP."""
    http = config.http
    if http is None:
        return None
    if http.public_url:
        return http.public_url.rstrip("/") + "/"
    host, port = http.listen
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/"


def print_banner(config: Config, new_token: str | None, stream: TextIO | None = None) -> None:
    """Where to look once the server runs: the dashboard and the admin token.

    A token generated at this start is printed here, once; later starts name its file.
    """
    out = stream or sys.stdout
    url = dashboard_url(config)
    lines = ["", "pxestack is running."]
    if url is not None:
        lines.append(f"  dashboard:    {url}")
    prov = config.provision
    if prov is not None:
        token_file = prov.api.token_file
        if new_token is not None:
            lines.append(f"  admin token:  {new_token}")
            lines.append(f"                (shown only now; kept in {token_file}, mode 0600)")
        elif token_file is not None:
            lines.append(f"  admin token:  in {token_file}")
        elif prov.api.token:
            lines.append("  admin token:  provision.api.token in the configuration")
        if config.dhcp is not None and config.source == "<embedded quickstart>":
            lines.append("  next:         pxestack simulate --machines 5, then pxestack ctl list")
    out.write("\n".join(lines) + "\n\n")
    out.flush()
