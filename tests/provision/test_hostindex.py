"""The host index: its counts always equal a recount of its records, its address search
equals the plain search over the list, and the file store keeps it current."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address

import pygit2
from hypothesis import given, settings
from hypothesis import strategies as st
from provision_helpers import provision_config

from pxestack.config.provision import IPRange
from pxestack.provision import assign
from pxestack.provision.audit import CHECK_SPACING, GitAudit
from pxestack.provision.hostindex import HostIndex
from pxestack.provision.model import Host, HostState
from pxestack.provision.store import SCAN_SPACING, FileHostStore, atomic_write

START = int(IPv4Address("198.18.0.1"))
SERIALS = [f"sn-{n}" for n in range(8)]
MACS = [f"52:54:00:00:00:{n:02x}" for n in range(6)]

host_st = st.builds(
    lambda serial, profile, state, address, macs: Host(
        serial=serial,
        profile=profile,
        state=state,
        internal_addr=None if address is None else IPv4Address(START + address),
        mac_addresses=tuple(dict.fromkeys(macs)),
    ),
    st.sampled_from(SERIALS),
    st.sampled_from(["", "core", "worker", "default"]),
    st.sampled_from(list(HostState)),
    st.one_of(st.none(), st.integers(0, 12)),
    st.lists(st.sampled_from(MACS), max_size=3),
)
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("put"), host_st),
        st.tuples(st.just("discard"), st.sampled_from(SERIALS)),
        st.tuples(st.just("allocate"), st.integers(0, 4)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops_st)
def test_counts_and_address_search_equal_a_recount_after_any_changes(ops):
    index = HostIndex()
    reference: dict[str, Host] = {}
    for op, arg in ops:
        if op == "put":
            index.put(arg)
            reference[arg.serial] = arg
        elif op == "discard":
            assert index.discard(arg) == reference.pop(arg, None)
        else:
            ip_range = IPRange(IPv4Address(START + arg), IPv4Address(START + 10))
            used = [h.internal_addr for h in reference.values() if h.internal_addr is not None]
            try:
                expected: IPv4Address | None = assign.allocate_address(ip_range, used)
            except assign.AddressPoolExhausted:
                expected = None
            found = index.lowest_free_address(int(ip_range.start), int(ip_range.end))
            assert found == (None if expected is None else int(expected))
        hosts = list(reference.values())
        assert sorted(index, key=lambda h: h.serial) == sorted(hosts, key=lambda h: h.serial)
        assert len(index) == len(hosts)
        assert index.profile_counts() == assign.profile_counts(hosts)
        for state in HostState:
            assert index.count_state(state) == sum(1 for h in hosts if h.state is state)
        for mac in MACS:
            owners = {h.serial for h in hosts if mac in h.mac_addresses}
            owner = index.mac_owner(mac)
            assert (owner is None) if not owners else (owner in owners)
        for number in range(13):
            address = IPv4Address(START + number)
            taken = {h.serial for h in hosts if h.internal_addr == address}
            assert index.address_taken(address) == bool(taken)
            owner = index.address_owner(address)
            assert (owner is None) if not taken else (owner in taken)


def test_new_host_given_an_index_decides_as_with_the_list(tmp_path):
    config = provision_config(tmp_path / "c")
    index = HostIndex()
    listed: list[Host] = []
    for number in range(8):
        serial = f"sn-{number}"
        from_index = assign.new_host(serial, index, config, random_bytes=bytes, default_token="t")
        from_list = assign.new_host(serial, listed, config, random_bytes=bytes, default_token="t")
        assert from_index == from_list
        index.put(from_index)
        listed.append(from_list)
    assert Counter(h.profile for h in listed) == {"core": 3, "worker": 2, "default": 3}


def _recount_matches(store: FileHostStore) -> None:
    hosts = store.hosts()  # a full re-scan, the reference
    index = store._index
    assert sorted(h.serial for h in index) == sorted(h.serial for h in hosts)
    assert index.profile_counts() == assign.profile_counts(hosts)


def test_the_file_store_keeps_its_index_current(tmp_path):
    config = provision_config(tmp_path / "c")
    store = FileHostStore(tmp_path / "c", git=False)

    def make(serial):
        return lambda existing: assign.new_host(
            serial, existing, config, random_bytes=bytes, default_token="t")

    for serial in ("sn-a", "sn-b", "sn-c"):
        store.enrol(serial, make(serial), ["host created"])
    assert store._index.profile_counts() == {"core": 3}
    store.update("sn-b", lambda h: (h.evolve(profile="worker"), "moved", ()))
    assert store._index.profile_counts() == {"core": 2, "worker": 1}
    store.remove("sn-a", "removed")
    # The next machine takes the freed address and the freed core slot.
    created, _ = store.enrol("sn-d", make("sn-d"), ["host created"])
    assert created.host.profile == "core"
    assert created.host.internal_addr == IPv4Address("198.18.10.10")
    _recount_matches(store)


def test_a_hand_edit_reaches_the_index_on_lookup_and_on_the_periodic_rescan(tmp_path):
    root = tmp_path / "c"
    config = provision_config(root)
    store = FileHostStore(root, git=False)
    made = assign.new_host("sn-a", [], config, random_bytes=bytes, default_token="t")
    store.enrol("sn-a", lambda _e: made, ["host created"])
    # An operator moves the host to another address and adds a host by hand.
    atomic_write(root / "sn-a" / "conf.json",
                 made.evolve(internal_addr=IPv4Address("198.18.10.50")).to_bytes())
    (root / "sn-z").mkdir()
    atomic_write(root / "sn-z" / "conf.json",
                 made.evolve(serial="sn-z", internal_addr=IPv4Address("198.18.10.10"),
                             mac_addresses=("52:54:00:aa:bb:cc",)).to_bytes())
    assert store.read("sn-a").host.internal_addr == IPv4Address("198.18.10.50")
    assert store._index.address_taken(IPv4Address("198.18.10.50"))
    assert store.host_for_mac("52:54:00:aa:bb:cc") is None  # not looked up, not scanned yet
    store.refresh()
    assert store.host_for_mac("52:54:00:aa:bb:cc").serial == "sn-z"
    nxt, _ = store.enrol("sn-b", lambda e: assign.new_host(
        "sn-b", e, config, random_bytes=bytes, default_token="t"), ["host created"])
    assert nxt.host.internal_addr == IPv4Address("198.18.10.11")  # .10 is the hand-made host's
    (root / "sn-z" / "conf.json").unlink()
    (root / "sn-z").rmdir()
    store.refresh()
    assert store.host_for_mac("52:54:00:aa:bb:cc") is None
    _recount_matches(store)


class _SteppingClock:
    """Each reading is one second after the previous one (a check seems to take 1 s)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_slow_work_tree_check_is_spaced_out_but_never_skipped_for_good(tmp_path):
    clock = _SteppingClock()
    audit = GitAudit(tmp_path / "c", name="t", email="t@example.invalid", clock=clock)
    calls: list[bool] = []
    real = audit._dirty

    def counting() -> bool:
        calls.append(True)
        return real()

    audit._dirty = counting  # type: ignore[method-assign]
    assert audit.retry() is True  # the first check always runs
    assert len(calls) == 1
    (tmp_path / "c" / "NOTES").write_text("rack 4\n")
    assert audit.retry() is True  # 1 s check, asked 1 s later: not yet due
    assert len(calls) == 1
    clock.now += CHECK_SPACING
    assert audit.retry() is True
    assert len(calls) == 2
    repo = pygit2.Repository(str(tmp_path / "c"))
    assert "NOTES" in repo.head.peel(pygit2.Commit).tree


def test_enrolment_and_update_look_at_their_own_record_only(tmp_path, monkeypatch):
    """The per-enrolment path never walks the hosts on record (a boot storm of N machines
    would cost N²): one lookup of the serial being enrolled or updated, whatever N is."""
    config = provision_config(tmp_path / "c")
    store = FileHostStore(tmp_path / "c", git=False)

    def make(serial):
        return lambda existing: assign.new_host(
            serial, existing, config, random_bytes=bytes, default_token="t")

    for number in range(30):
        store.enrol(f"sn-{number}", make(f"sn-{number}"), ["host created"])
    looked_up: list[str] = []
    real_load = FileHostStore._load

    def counting_load(self: FileHostStore, serial: str):
        looked_up.append(serial)
        return real_load(self, serial)

    monkeypatch.setattr(FileHostStore, "_load", counting_load)
    created, is_new = store.enrol("sn-new", make("sn-new"), ["host created"])
    assert is_new and created.host.internal_addr == IPv4Address("198.18.10.40")
    store.update("sn-new", lambda h: (h.evolve(state=HostState.RUNNING), "running", ()))
    assert looked_up == ["sn-new", "sn-new"]


def test_a_slow_rescan_is_spaced_out_but_never_skipped_for_good(tmp_path):
    """The periodic re-scan (one stat per record) is repeated only after SCAN_SPACING times
    its duration once it took SLOW_SCAN or more; a hand-made host is then counted by the
    next re-scan that is due, and a lookup of its serial finds it at once."""
    clock = _SteppingClock()  # every reading advances 1 s: each scan "takes" 1 s
    store = FileHostStore(tmp_path / "c", git=False, clock=clock)
    scans: list[bool] = []
    real = store._scan

    def counting() -> list:
        scans.append(True)
        return real()

    store._scan = counting  # type: ignore[method-assign]
    store.refresh()  # the first periodic re-scan always runs
    assert len(scans) == 1
    (tmp_path / "c" / "sn-hand").mkdir()
    atomic_write(tmp_path / "c" / "sn-hand" / "conf.json",
                 Host(serial="sn-hand", machine_id="ab" * 16).to_bytes())
    store.refresh()  # a 1 s scan, asked 1 s later: not yet due
    assert len(scans) == 1
    assert store.health()["hosts"] == 0
    clock.now += SCAN_SPACING
    store.refresh()
    assert len(scans) == 2
    assert store.health()["hosts"] == 1
    assert store.read("sn-hand") is not None
