"""``pxestack migrate-mayu``: turn a mayu ``config.yaml`` into pxestack's ``provision:`` section."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from pxestack.cli import EXIT_FAILURE, EXIT_OK, print_problems
from pxestack.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``migrate-mayu`` subcommand."""
    parser = subparsers.add_parser(
        "migrate-mayu",
        help="convert a mayu config.yaml into a provision: section",
        description="Read mayu's config.yaml and print the equivalent pxestack `provision:` "
        "section as YAML on stdout.  Keys that belong to pxestack's dhcp/tftp/http sections "
        "are reported as notes on stderr; what cannot be represented is an error naming the "
        "mayu key path (exit status 2).  See docs/provisioning.md, 'Migrating from mayu'.",
    )
    parser.add_argument("mayu_config", type=Path, help="mayu's config.yaml")
    parser.add_argument(
        "--cluster-dir", help="mayu's --cluster-directory, reused as provision.cluster_dir"
    )
    parser.set_defaults(func=migrate)


def migrate(args: argparse.Namespace) -> int:
    """Convert and print; problems go to stderr."""
    from pxestack.provision.mayu_import import mayu_to_provision

    try:
        data = yaml.safe_load(args.mayu_config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        print(f"pxestack: cannot read {args.mayu_config}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        mapping, notes = mayu_to_provision(data)
    except ConfigError as exc:
        return print_problems(str(args.mayu_config), exc.problems)
    if args.cluster_dir:
        mapping = {"cluster_dir": args.cluster_dir, **mapping}
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump({"provision": mapping}, sort_keys=False))
    return EXIT_OK
