"""``pxestack db``: the PostgreSQL host store's schema, and moving a cluster in and out.

* ``pxestack db upgrade``: apply the schema migrations the database lacks (servers do it
  too at start; this is for a maintenance window, before the servers are updated);
* ``pxestack db import-cluster DIR``: copy a mayu or pxestack cluster directory, with its
  git history, into the database (the directory is locked meanwhile, so a server still
  running on it is detected and the import refused);
* ``pxestack db export-cluster DIR``: write the database's hosts as a new cluster
  directory with one git commit;
* ``pxestack db import-leases JOURNAL``: copy the live DHCP leases and quarantines of a
  lease journal (``dhcp.lease_file``) into the shared lease table
  (``dhcp.lease_store: postgresql``).

The database is ``--dsn`` or ``provision.store.dsn`` of ``--config`` (for
``import-leases``: ``dhcp.lease_store``'s, which defaults to that one).
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
    leases = actions.add_parser(
        "import-leases", help="copy a DHCP lease journal's live leases into the lease table")
    leases.add_argument("journal", type=Path, help="the lease journal (dhcp.lease_file)")
    common(leases)
    leases.set_defaults(func=run_import_leases)
    parser.set_defaults(func=lambda args: _usage(parser))


#: What every subcommand says when the ``postgresql`` extra is missing.
NO_PSYCOPG = ("pxestack db: psycopg is not installed: install pxestack with the postgresql "
              "extra (pip install 'pxestack[postgresql]')")


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
        print(NO_PSYCOPG, file=sys.stderr)
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


def run_import_leases(args: argparse.Namespace) -> int:
    """Copy a journal's live bindings and quarantines into ``dhcp_leases``; print a
    summary, and every lease the table refused (its address held by another client)."""
    import time

    from pxestack.config import load_config_file
    from pxestack.dhcp.journal import load_journal
    from pxestack.dhcp.leases import LeaseState

    journal: Path = args.journal
    if not journal.is_file():
        print(f"pxestack db import-leases: {journal} is not a file", file=sys.stderr)
        return EXIT_USAGE
    dsn = args.dsn
    if dsn is None and args.config:
        try:
            config = load_config_file(args.config)
        except ConfigError as exc:
            return print_problems(args.config, exc.problems)
        if config.dhcp is not None and config.dhcp.lease_store.kind == "postgresql":
            dsn = config.dhcp.lease_store.dsn
        elif config.provision is not None and config.provision.store.kind == "postgresql":
            dsn = config.provision.store.dsn
    if not dsn:
        print("pxestack db import-leases: give --dsn, or --config with dhcp.lease_store "
              "postgresql", file=sys.stderr)
        return EXIT_USAGE
    try:
        from pxestack.dhcp.sharedleases import Claim, ClaimKind
        from pxestack.service.pgleases import LeaseStoreStartError, PostgresLeaseTable
    except ImportError:
        print(NO_PSYCOPG, file=sys.stderr)
        return EXIT_FAILURE
    now = time.time()
    contents = load_journal(journal)
    claims = [
        Claim(ClaimKind.BIND, lease.client, lease.address, lease.mac, lease.client_id,
              lease.hostname, lease.expires)
        for lease in contents.leases.values()
        if lease.state is LeaseState.BOUND and lease.expires > now
    ]
    bindings = len(claims)
    claims += [Claim(ClaimKind.DECLINE, b"", decline.address, expires=decline.until)
               for decline in contents.declines.values() if decline.until > now]
    table = PostgresLeaseTable(dsn, pool_size=1, server="pxestack db import-leases")
    try:
        table.open(now)
        answers = table.apply(claims, now) if claims else []
    except LeaseStoreStartError as exc:
        print(f"pxestack db import-leases: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        table.close()
    refused = {index for index, _ in answers}
    print(f"imported {bindings - len(refused)} lease(s) and {len(claims) - bindings} "
          f"quarantine(s) from {journal}; {contents.skipped_bytes} damaged bytes skipped")
    for index, holder in answers:
        print(f"  {claims[index].address}: held by another client in the table ({holder}); "
              "not imported", file=sys.stderr)
    return EXIT_OK
