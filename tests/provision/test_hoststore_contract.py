"""Every host-store backend keeps the contract of :class:`HostStore`.

The provisioning code, the API and the dashboard see only the Protocol, so each backend is
run through the same behaviour here; a new backend adds itself to ``BACKENDS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pxestack.provision.hoststore import (
    HostNotFound,
    HostStore,
    PreconditionFailed,
    acting_as,
)
from pxestack.provision.memstore import InMemoryHostStore
from pxestack.provision.model import Host, HostState
from pxestack.provision.store import FileHostStore

BACKENDS: dict[str, Callable[[Path], HostStore]] = {
    "file": lambda root: FileHostStore(root / "cluster", clock=lambda: 1_700_000_000.0),
    "memory": lambda root: InMemoryHostStore(),
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> HostStore:
    return BACKENDS[request.param](tmp_path)


def _make(serial: str, *macs: str) -> Callable[[Sequence[Host]], Host]:
    def make(existing: Sequence[Host]) -> Host:
        return Host(serial=serial, machine_id=f"{len(existing):032x}",
                    hostname=f"{len(existing):016x}", mac_addresses=macs)

    return make


def _state(state: HostState) -> Callable[[Host], tuple[Host, str, Sequence[str]]]:
    return lambda host: (host.evolve(state=state), "updated host state", ())


@pytest.mark.parametrize("backend", [*sorted(BACKENDS), "postgresql"])
def test_each_backend_has_every_call_of_the_protocol_with_its_signature(backend: str) -> None:
    # The PostgreSQL store's behaviour is tested against a real server in test_pgstore.py;
    # its signatures are checked here with the others, no database needed.
    from pxestack.provision.pgstore import PostgresHostStore

    cls: type = {"file": FileHostStore, "memory": InMemoryHostStore,
                 "postgresql": PostgresHostStore}[backend]
    for name, member in vars(HostStore).items():
        if name.startswith("_"):
            continue
        implemented = getattr(cls, name, None)
        assert implemented is not None, f"{cls.__name__} lacks {name}"
        if isinstance(member, property):
            assert isinstance(implemented, property), name
            continue
        wanted = list(inspect.signature(member).parameters)
        assert list(inspect.signature(implemented).parameters) == wanted, name


def test_enrol_creates_once_and_make_sees_every_host(store: HostStore) -> None:
    first, created = store.enrol("a", _make("a", "52:54:00:00:00:01"), ["host created"])
    assert created and first.host.machine_id == f"{0:032x}"
    again, created = store.enrol("a", _make("a"), ["host created"])
    assert not created and again == first
    second, _ = store.enrol("b", _make("b"), ["host created"])
    assert second.host.machine_id == f"{1:032x}"
    assert sorted(h.serial for h in store.hosts()) == ["a", "b"]
    assert store.read("a") == first
    assert store.read("nobody") is None
    found = store.host_for_mac("52:54:00:00:00:01")
    assert found is not None and found.serial == "a"
    assert store.host_for_mac("52:54:00:00:00:99") is None


def test_update_checks_the_etag_and_changes_it(store: HostStore) -> None:
    created, _ = store.enrol("a", _make("a"), ["host created"])
    updated = store.update("a", _state(HostState.INSTALLING), if_match=created.etag)
    assert updated.host.state is HostState.INSTALLING
    assert updated.etag != created.etag
    with pytest.raises(PreconditionFailed) as failed:
        store.update("a", _state(HostState.RUNNING), if_match=created.etag)
    assert failed.value.current_etag == updated.etag
    with pytest.raises(HostNotFound):
        store.update("nobody", _state(HostState.RUNNING))


def test_remove_returns_the_record_and_forgets_it(store: HostStore) -> None:
    created, _ = store.enrol("a", _make("a", "52:54:00:00:00:01"), ["host created"])
    with pytest.raises(PreconditionFailed):
        store.remove("a", "host removed", if_match='"stale"')
    assert store.remove("a", "host removed", if_match=created.etag) == created
    assert store.read("a") is None
    assert store.hosts() == []
    with pytest.raises(HostNotFound):
        store.remove("a", "host removed")


def test_history_is_newest_first_and_names_the_actor(store: HostStore) -> None:
    store.enrol("a", _make("a"), ["host created"])
    with acting_as("admin"):
        store.update("a", _state(HostState.RUNNING))
    entries = store.history("a")
    assert [e.message.splitlines()[0] for e in entries] == ["a: updated host state",
                                                            "a: host created"]
    assert entries[0].author == "admin"
    assert store.history("a", limit=1) == entries[:1]
    assert store.history("nobody") == []


def test_health_refresh_and_retry_on_a_sound_store(store: HostStore) -> None:
    store.enrol("a", _make("a"), ["host created"])
    store.refresh()
    assert store.retry_audit() is True
    health = store.health()
    assert health["ok"] is True
    assert health["hosts"] == 1
    assert isinstance(store.default_etcd_token, str) and store.default_etcd_token
