"""``pxestack migrate-mayu``: turn a mayu ``config.yaml`` into a pxestack configuration
(``dhcp:``, ``tftp:``, ``http:`` and ``provision:``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from pxestack.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, print_problems
from pxestack.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``migrate-mayu`` subcommand."""
    parser = subparsers.add_parser(
        "migrate-mayu",
        help="convert a mayu config.yaml into a pxestack configuration",
        description="Read mayu's config.yaml and print the equivalent pxestack configuration "
        "(dhcp:, tftp:, http: and provision:) as YAML on stdout; what was converted where is "
        "noted on stderr; what cannot be represented is an error naming the mayu key path "
        "(exit status 2).  See docs/provisioning.md, 'Migrating from mayu'.",
    )
    parser.add_argument("mayu_config", type=Path, help="mayu's config.yaml")
    parser.add_argument(
        "--cluster-dir", help="mayu's --cluster-directory, reused as provision.cluster_dir"
    )
    parser.add_argument("--tftp-root", metavar="DIR",
                        help="mayu's TFTP root, reused as tftp.root (default tftproot)")
    parser.add_argument("--images-dir", metavar="DIR",
                        help="mayu's images cache, reused as provision.images_dir")
    parser.add_argument("--http-port", type=int, default=8080, metavar="PORT",
                        help="port of http.listen and http.public_url (default 8080)")
    parser.add_argument("--provision-only", action="store_true",
                        help="print only the provision: section (the dhcp/tftp/http keys "
                        "become notes)")
    parser.set_defaults(func=migrate)


def migrate(args: argparse.Namespace) -> int:
    """Convert and print; problems go to stderr."""
    from pxestack.provision.mayu_import import mayu_to_config, mayu_to_provision

    try:
        data = yaml.safe_load(args.mayu_config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        print(f"pxestack: cannot read {args.mayu_config}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not 0 < args.http_port < 65536:
        print(f"pxestack migrate-mayu: --http-port {args.http_port} is not a port",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.provision_only:
            mapping, notes = mayu_to_provision(data)
            document: dict[str, Any] = {"provision": mapping}
        else:
            document, notes = mayu_to_config(data, tftp_root=args.tftp_root,
                                             images_dir=args.images_dir,
                                             http_port=args.http_port)
    except ConfigError as exc:
        return print_problems(str(args.mayu_config), exc.problems)
    if args.cluster_dir:
        document["provision"] = {"cluster_dir": args.cluster_dir, **document["provision"]}
    if args.provision_only and args.images_dir:
        document["provision"]["images_dir"] = args.images_dir
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump(document, sort_keys=False))
    return EXIT_OK
