"""``pxestack extensions list``: which extensions are installed and which the file enables."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pxestack.cli import EXIT_OK, EXIT_USAGE
from pxestack.cli.serve import load_or_report


def register(subparsers: Any) -> None:
    """Add the ``extensions`` subcommand."""
    parser = subparsers.add_parser(
        "extensions",
        help="list the installed and enabled extensions",
        description="Extensions add servers, HTTP resources and event consumers to "
        "pxestack serve and twistd pxestack (docs/extensions.md).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser(
        "list", help="installed extensions (entry-point group pxestack.extensions) and "
        "the ones the configuration enables",
    )
    listing.add_argument("--config", "-c", metavar="FILE",
                         help="YAML configuration file (default: the embedded quickstart)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=list_extensions)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def list_extensions(args: argparse.Namespace) -> int:
    """Print one line per extension: name, enabled, distribution, description."""
    from pxestack.extensions import describe

    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    rows = describe(config)
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    if not rows:
        print("no extension is installed (entry-point group pxestack.extensions)")
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)
    status = EXIT_OK
    for row in rows:
        state = f"enabled ({row['key']})" if row["enabled"] else "installed"
        text = row["description"] or row["target"] or ""
        print(f"{row['name']:<{width}}  {state:<22}  {row['distribution'] or '-'}  {text}")
        if row["error"]:
            print(f"{'':<{width}}  problem: {row['error']}", file=sys.stderr)
            if row["enabled"]:
                status = EXIT_USAGE
    return status


__all__ = ["list_extensions", "register"]
