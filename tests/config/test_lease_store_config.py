"""``dhcp.lease_store``: the journal by default, PostgreSQL as a word or a mapping; every
mistake is reported at the key that holds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pxestack.config import load_config, load_config_file
from pxestack.errors import ConfigError

POOL = {"subnet": "198.18.0.0/24", "start": "198.18.0.10", "end": "198.18.0.200"}
DSN = "host=/run/postgresql dbname=pxestack user=pxestack"


def dhcp(**extra: Any) -> dict[str, Any]:
    return {"dhcp": {"pools": [POOL], **extra}}


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_config(data)
    return {p.path: p.message for p in caught.value.problems}


def test_the_journal_is_the_default() -> None:
    config = load_config(dhcp())
    assert config.dhcp is not None and config.dhcp.lease_store.kind == "journal"


def test_a_mapping_with_its_own_dsn() -> None:
    config = load_config(dhcp(lease_store={"kind": "postgresql", "dsn": DSN, "pool": 3,
                                           "server_name": "pxe-a"}))
    assert config.dhcp is not None
    store = config.dhcp.lease_store
    assert (store.kind, store.dsn, store.pool, store.server_name) == (
        "postgresql", DSN, 3, "pxe-a")


def test_the_word_takes_the_host_stores_dsn() -> None:
    data = dhcp(lease_store="postgresql")
    data["provision"] = {"store": {"kind": "postgresql", "dsn": DSN}}
    config = load_config(data)
    assert config.dhcp is not None and config.dhcp.lease_store.dsn == DSN


def test_no_dsn_anywhere_names_the_key() -> None:
    found = problems(dhcp(lease_store="postgresql"))
    assert "provision.store" in found["dhcp.lease_store.dsn"]


@pytest.mark.parametrize(
    ("lease_store", "key", "words"),
    [
        ("sqlite", "dhcp.lease_store", "not one of"),
        ({"kind": "postgresql", "dsn": DSN, "pool": 0}, "dhcp.lease_store.pool", "minimum"),
        ({"kind": "postgresql", "dsn": "host='unterminated"}, "dhcp.lease_store.dsn",
         "connection string"),
        ({"kind": "journal", "dsn": DSN}, "dhcp.lease_store.dsn", "only used"),
        ({"kind": "postgresql", "dsn": DSN, "poool": 2}, "dhcp.lease_store.poool",
         "unknown key"),
    ],
)
def test_mistakes_are_named(lease_store: Any, key: str, words: str) -> None:
    assert words in problems(dhcp(lease_store=lease_store))[key]


def test_postgresql_leases_need_server_mode_and_no_journal_file() -> None:
    found = problems(dhcp(lease_store={"kind": "postgresql", "dsn": DSN},
                          lease_file="leases.journal"))
    assert "not used" in found["dhcp.lease_file"]
    found = problems({"dhcp": {"mode": "proxy",
                               "lease_store": {"kind": "postgresql", "dsn": DSN}}})
    assert "proxy" in found["dhcp.lease_store"]


def test_the_scale_out_example_puts_hosts_and_leases_in_one_database() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "scale-out.yaml"
    config = load_config_file(example)
    assert config.dhcp is not None and config.provision is not None
    assert config.provision.store.kind == "postgresql"
    assert config.dhcp.lease_store.kind == "postgresql"
    assert config.dhcp.lease_store.dsn == config.provision.store.dsn
