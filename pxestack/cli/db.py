"""``pxestack db``: the PostgreSQL host store's schema, and moving a cluster in and out.

* ``pxestack db upgrade``: apply the schema migrations the database lacks (servers do it
  too at start; this is for a maintenance window, before the servers are updated);
* ``pxestack db import-cluster DIR``: copy a mayu or pxestack cluster directory, with its
  git history, into the database (the directory is locked meanwhile, so a server still
  running on it is detected and the import refused);
* ``pxestack db export-cluster DIR``: write the database's hosts as a new cluster
  directory with one git commit.

The database is ``--dsn`` or ``provision.store.dsn`` of ``--config``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pxestack.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, print_problems
from pxestack.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``db`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "db",
        help="the PostgreSQL host store: schema upgrade, cluster import and export",
        description="Manage the PostgreSQL database several pxestack servers share "
        "(provision.store kind postgresql; see docs/scale-out.md).",
    )
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION")

    def common(action: argparse.ArgumentParser) -> None:
        action.add_argument("--config", metavar="FILE",
                            help="pxestack configuration whose provision.store names the "
                            "database (its profiles are synchronised too)")
        action.add_argument("--dsn", help="libpq connection string or postgresql:// URL "
                            "(instead of --config)")

    upgrade = actions.add_parser("upgrade", help="apply missing schema migrations")
    common(upgrade)
    upgrade.set_defaults(func=run_upgrade)
    imp = actions.add_parser(
        "import-cluster", help="copy a mayu or pxestack cluster directory into the database")
    imp.add_argument("directory", type=Path, help="the cluster directory (provision.cluster_dir)")
    common(imp)
    imp.set_defaults(func=run_import)
    exp = actions.add_parser(
        "export-cluster", help="write the database's hosts as a new cluster directory")
    exp.add_argument("directory", type=Path, help="a new or empty directory")
    common(exp)
    exp.set_defaults(func=run_export)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _open(args: argparse.Namespace) -> Any:
    """The opened store, or an exit status after printing why not."""
    from pxestack.config import load_config_file
    from pxestack.provision.hoststore import StoreError

    profiles: list[tuple[str, int]] = []
    dsn = args.dsn
    git = ("mayu commiter", "support+noise@giantswarm.io")
    if args.config:
        try:
            config = load_config_file(args.config)
        except ConfigError as exc:
            return print_problems(args.config, exc.problems)
        prov = config.provision
        if prov is not None:
            profiles = [(p.name, p.quantity) for p in prov.profiles]
            git = (prov.git_name, prov.git_email)
            if dsn is None and prov.store.kind == "postgresql":
                dsn = prov.store.dsn
    if not dsn:
        print("pxestack db: give --dsn, or --config with provision.store kind postgresql",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        from pxestack.provision.pgstore import PostgresHostStore
    except ImportError:
        print("pxestack db: psycopg is not installed: install pxestack with the postgresql "
              "extra (pip install 'pxestack[postgresql]')", file=sys.stderr)
        return EXIT_FAILURE
    store = PostgresHostStore(dsn, profiles=profiles, pool_size=2)
    try:
        applied = store.open()
    except StoreError as exc:
        print(f"pxestack db: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    args.applied = applied
    args.git_identity = git
    return store


def run_upgrade(args: argparse.Namespace) -> int:
    """Apply the migrations; print what was applied."""
    store = _open(args)
    if isinstance(store, int):
        return store
    store.close()
    if args.applied:
        print(f"applied: {', '.join(args.applied)}")
    else:
        print("the schema is up to date")
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    """Import a cluster directory; print a summary and every problem."""
    from pxestack.provision.pgmove import import_cluster
    from pxestack.provision.statelock import StateLock, StateLocked

    directory: Path = args.directory
    if not directory.is_dir():
        print(f"pxestack db import-cluster: {directory} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    try:
        lock = StateLock.acquire(directory)
    except StateLocked as exc:
        print(f"pxestack db import-cluster: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        store = _open(args)
        if isinstance(store, int):
            return store
        try:
            report = import_cluster(store, directory)
        finally:
            store.close()
    finally:
        lock.release()
    print(f"imported {report.hosts} host(s) and {report.history_entries} history entries "
          f"from {directory}")
    for problem in report.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    """Export into a new cluster directory."""
    from pxestack.provision.pgmove import export_cluster

    store = _open(args)
    if isinstance(store, int):
        return store
    try:
        name, email = args.git_identity
        count = export_cluster(store, args.directory, git_name=name, git_email=email)
    except FileExistsError as exc:
        print(f"pxestack db export-cluster: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()
    print(f"exported {count} host(s) to {args.directory}")
    return EXIT_OK
