"""The PostgreSQL schema shared by the host store and the DHCP lease store.

The schema is versioned SQL shipped in the package (``pxestack/provision/migrations``,
applied in name order and recorded in ``pxestack_schema``).  Whichever part of a server
opens the database first (the host store of ``provision.store``, or the DHCP lease store
of ``dhcp.lease_store``) applies what is missing, under an advisory lock, so servers
starting together apply each migration once.  This module sits below both users, so the
DHCP service needs nothing from the provisioning layer to use the database.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

#: The advisory-lock key schema upgrades hold (any fixed number shared by all servers).
MIGRATION_LOCK = 0x70786573_7461636B & 0x7FFFFFFFFFFFFFFF


def redact_dsn(dsn: str) -> str:
    """*dsn* without its password, for logs and errors."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable DSN)"
    parts.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


def migrations() -> list[tuple[str, str]]:
    """The schema migrations shipped with pxestack: (version, SQL), oldest first."""
    folder = resources.files("pxestack") / "provision" / "migrations"
    found = [
        (entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found)


def upgrade_schema(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the migrations *conn*'s database lacks, in one transaction; return their names.

    The transaction first takes an advisory lock, so servers starting together apply each
    migration once: the others wait, then find it applied.
    """
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pxestack_schema ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM pxestack_schema")}
        for version, sql in migrations():
            if version in done:
                continue
            conn.execute(sql.encode())
            conn.execute("INSERT INTO pxestack_schema (version) VALUES (%s)", (version,))
            applied_now.append(version)
    return applied_now


__all__ = ["MIGRATION_LOCK", "migrations", "redact_dsn", "upgrade_schema"]
