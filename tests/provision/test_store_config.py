"""``provision.store``: the git directory by default, PostgreSQL on request; bad values are
named by their key."""

from __future__ import annotations

import pytest

from pxestack.config import load_config
from pxestack.errors import ConfigError


def _load(store):
    return load_config({"provision": {"store": store}})


def _problems(store):
    with pytest.raises(ConfigError) as caught:
        _load(store)
    return {p.path: p.message for p in caught.value.problems}


def test_the_default_is_the_git_directory():
    prov = load_config({"provision": {}}).provision
    assert prov is not None and prov.store.kind == "git" and prov.store.dsn is None


def test_postgresql_with_a_dsn_and_pool():
    prov = _load({"kind": "postgresql", "dsn": "host=/run/postgresql dbname=pxestack",
                  "pool": 8, "connect_timeout": 3}).provision
    assert prov is not None
    assert (prov.store.kind, prov.store.dsn, prov.store.pool, prov.store.connect_timeout) == (
        "postgresql", "host=/run/postgresql dbname=pxestack", 8, 3.0)


def test_postgresql_needs_a_dsn():
    assert "is required" in _problems({"kind": "postgresql"})["provision.store.dsn"]


def test_a_dsn_libpq_cannot_parse_is_named_without_echoing_it():
    problems = _problems({"kind": "postgresql", "dsn": "host=x password=s3cret dbname"})
    message = problems["provision.store.dsn"]
    assert "not a libpq connection string" in message and "s3cret" not in message


def test_unknown_kind_and_keys_of_the_other_kind():
    assert "provision.store.kind" in _problems({"kind": "mysql"})
    problems = _problems({"dsn": "dbname=x", "pool": 3})
    assert problems["provision.store.dsn"] == "is only used with kind: postgresql"
    assert problems["provision.store.pool"] == "is only used with kind: postgresql"
    assert "provision.store.colour" in _problems({"kind": "git", "colour": 1})


def test_pool_bounds():
    assert "provision.store.pool" in _problems({"kind": "postgresql", "dsn": "dbname=x",
                                                "pool": 0})
