"""The lease journal: round trip, torn tails, damage in the middle, compaction, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxestack.dhcp.journal import (
    FILE_MAGIC,
    LeaseJournal,
    bind_record,
    decline_record,
    free_record,
    load_journal,
    parse_journal,
)
from pxestack.dhcp.leases import (
    AddressRange,
    Decline,
    InMemoryLeaseStore,
    Lease,
    LeaseState,
    Subnet,
)

ROOT = Path(__file__).resolve().parents[2]


def lease(n: int, expires: float = 1000.0, client: int | None = None) -> Lease:
    who = n if client is None else client
    return Lease(
        address=IPv4Address(f"198.18.1.{n}"),
        client=b"M" + bytes([0x52, 0x54, 0, 0, 0, who]),
        mac=bytes([0x52, 0x54, 0, 0, 0, who]),
        state=LeaseState.BOUND,
        expires=expires,
        client_id=b"\x01" + bytes([0x52, 0x54, 0, 0, 0, who]) if who % 2 else None,
        hostname=f"host-{who}" if who % 3 else None,
    )


def journal_bytes(records: list[bytes]) -> bytes:
    return FILE_MAGIC + b"".join(records)


def test_round_trip_of_every_record_kind() -> None:
    a, b = lease(1), lease(2)
    freed = Lease(b.address, b.client, b.mac, LeaseState.FREE, 50.0, b.client_id, b.hostname)
    quarantine = Decline(lease(3).address, 9.0)
    data = journal_bytes(
        [bind_record(a), bind_record(b), free_record(freed), decline_record(quarantine)]
    )
    contents = parse_journal(data)
    assert contents.records == 4 and contents.skipped_bytes == 0
    assert contents.leases[a.address] == a
    assert contents.leases[b.address].state is LeaseState.FREE
    assert contents.declines[lease(3).address].until == 9.0


def test_a_client_that_moved_keeps_only_its_newest_binding() -> None:
    old, new = lease(1, client=7), lease(2, client=7)
    contents = parse_journal(journal_bytes([bind_record(old), bind_record(new)]))
    assert list(contents.leases) == [new.address]


ALL = [lease(n, expires=100.0 + n) for n in range(1, 8)]
RECORDS = [bind_record(x) for x in ALL]
FULL = journal_bytes(RECORDS)
BOUNDARIES = [len(FILE_MAGIC)]
for record in RECORDS:
    BOUNDARIES.append(BOUNDARIES[-1] + len(record))


def test_truncation_at_every_offset_keeps_the_complete_prefix() -> None:
    """A last record torn by power loss is skipped, never fatal."""
    for cut in range(len(FULL) + 1):
        contents = parse_journal(FULL[:cut])
        complete = sum(1 for end in BOUNDARIES[1:] if end <= cut)
        assert contents.records == complete, cut
        assert list(contents.leases.values()) == ALL[:complete]


@given(
    position=st.integers(min_value=0, max_value=len(FULL) - 1),
    junk=st.binary(min_size=1, max_size=40),
)
@settings(max_examples=200)
def test_damage_in_the_middle_loses_only_the_damaged_records(position: int, junk: bytes) -> None:
    damaged = FULL[:position] + junk + FULL[position + len(junk) :]
    contents = parse_journal(damaged)
    # Every record entirely outside the damaged span is recovered.
    damaged_span = range(position, position + len(junk))
    for index, value in enumerate(ALL):
        start, end = BOUNDARIES[index], BOUNDARIES[index + 1]
        untouched = end <= damaged_span.start or start >= damaged_span.stop
        if untouched:
            assert contents.leases.get(value.address) == value
    # Nothing is invented: every recovered binding is one that was written.
    for value in contents.leases.values():
        assert value in ALL


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    contents = parse_journal(data)
    assert contents.records >= 0
    assert contents.skipped_bytes <= len(data)


def test_open_compacts_and_drops_damage(tmp_path: Path) -> None:
    path = tmp_path / "leases.journal"
    path.write_bytes(FULL + b"\xd1\x0c\x00\x00\x00\x10garbage")
    journal, contents = LeaseJournal.open(path)
    try:
        assert len(contents.leases) == len(ALL)
        assert contents.skipped_bytes > 0
        # The file was rewritten clean.
        reread = load_journal(path)
        assert reread.skipped_bytes == 0 and len(reread.leases) == len(ALL)
        journal.bound(lease(50))
    finally:
        journal.close()
    assert lease(50).address in load_journal(path).leases


def test_store_with_journal_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "leases.journal"
    subnet = Subnet(
        IPv4Network("198.18.0.0/24"),
        (AddressRange(IPv4Address("198.18.0.10"), IPv4Address("198.18.0.40")),),
    )
    journal, _ = LeaseJournal.open(path)
    first = InMemoryLeaseStore([subnet], listener=journal)
    granted = {}
    for n in range(10):
        mac = bytes([2, 0, 0, 0, 0, n])
        offer = first.offer(b"M" + mac, mac, None, subnet, None, 0.0, 30.0)
        assert offer is not None
        bound = first.bind(b"M" + mac, mac, None, offer.address, 0.0, 3600.0)
        assert bound is not None
        granted[bound.client] = bound.address
    released, declined = b"M" + bytes([2, 0, 0, 0, 0, 0]), b"M" + bytes([2, 0, 0, 0, 0, 1])
    first.release(released, granted[released], 5)
    first.decline(declined, granted[declined], 5, 60)
    journal.compact(first.leases(), first.declines())
    # Written after the compaction: appended to the new file.
    late = first.bind(b"M" + b"\x02" * 6, b"\x02" * 6, None, IPv4Address("198.18.0.40"), 6, 60.0)
    assert late is not None
    journal.close()

    journal2, contents = LeaseJournal.open(path)
    journal2.close()
    second = InMemoryLeaseStore([subnet])
    second.restore(contents.leases.values(), contents.declines.values(), 10.0)
    for client, address in list(granted.items())[2:]:
        held = second.lookup(client, 10.0)
        assert held is not None and held.address == address and held.state is LeaseState.BOUND
    assert second.quarantined(granted[declined], 10.0)
    assert second.lookup(released, 10.0) is None
    assert second.lookup(late.client, 10.0) == late


WRITER = r"""
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from pxestack.dhcp.journal import LeaseJournal
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Subnet

path = Path(sys.argv[1])
journal, contents = LeaseJournal.open(path)
subnet = Subnet(IPv4Network("198.19.0.0/16"),
                (AddressRange(IPv4Address("198.19.0.1"), IPv4Address("198.19.255.254")),))
store = InMemoryLeaseStore([subnet], listener=journal, max_offers=100000)
store.restore(contents.leases.values(), contents.declines.values(), 0.0)
start = int(sys.argv[2])
for n in range(start, start + 100000):
    mac = n.to_bytes(6, "big")
    offer = store.offer(b"M" + mac, mac, None, subnet, None, 0.0, 30.0)
    lease = store.bind(b"M" + mac, mac, None, offer.address, 0.0, 1e9)
    # The ACK is "sent" only now, after bind() returned: report it.
    sys.stdout.write(f"{mac.hex()} {lease.address}\n")
    sys.stdout.flush()
    if n % 97 == 0:
        journal.compact(store.leases(), store.declines())
"""


@given(delays=st.lists(st.floats(min_value=0.05, max_value=0.6), min_size=3, max_size=3))
@settings(max_examples=3, deadline=None)
def test_every_acked_lease_survives_sigkill(tmp_path_factory: object, delays: list[float]) -> None:
    """kill -9 at random moments; each restart has every ACKed lease."""
    directory = Path(tmp_path_factory.mktemp("journal"))  # type: ignore[attr-defined]
    path = directory / "leases.journal"
    acked: dict[str, str] = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for round_number, delay in enumerate(delays):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(round_number * 1_000_000)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            # Wait for the first ACK (interpreter start-up varies a lot on a busy machine),
            # then let it run for the random delay and kill it mid-stream.
            assert process.stdout is not None
            first = process.stdout.readline()
            time.sleep(delay)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            out, _ = process.communicate(timeout=30)
        for line in (first + out).decode().splitlines():
            parts = line.split()
            if len(parts) == 2:  # the last line may itself be torn
                acked[parts[0]] = parts[1]
        contents = load_journal(path)
        recovered = {value.mac.hex(): str(value.address) for value in contents.leases.values()}
        missing = {mac: address for mac, address in acked.items() if recovered.get(mac) != address}
        assert not missing, f"round {round_number}: {len(missing)} ACKed leases lost"
        assert len(set(recovered.values())) == len(recovered)
    assert len(acked) >= len(delays), "the writer ACKed nothing in some round"


def test_payload_is_compact_json() -> None:
    """The record format documented in journal.py: header then JSON, readable by humans."""
    record = bind_record(lease(1))
    body = json.loads(record[10:])
    assert body["t"] == "b" and body["a"] == "198.18.1.1"


class ShortWrites:
    """``os.write`` as a busy or nearly full file system does it: at most *limit* bytes a
    call, and (with *stall*) no progress at all once."""

    def __init__(self, limit: int, *, stall: bool = False) -> None:
        self.limit = limit
        self.stall = stall
        self.calls = 0
        self.real = os.write

    def __call__(self, fd: int, data: bytes) -> int:
        self.calls += 1
        if self.stall:
            return 0
        return self.real(fd, bytes(memoryview(data)[: self.limit]))


@settings(max_examples=25, deadline=None)
@given(limit=st.integers(min_value=1, max_value=40))
def test_short_writes_never_tear_a_record(limit: int) -> None:
    """Each ``os.write`` writes at most *limit* bytes: every record still lands whole, in
    one-at-a-time mode, in a group commit and in the compacted snapshot.  (Patched by
    hand, not with the monkeypatch fixture, which Hypothesis does not reset per example.)"""
    with tempfile.TemporaryDirectory(prefix="pxestack-journal-") as directory:
        path = Path(directory) / "leases.journal"
        short = ShortWrites(limit)
        original = os.write
        os.write = short  # type: ignore[assignment]
        try:
            journal, _ = LeaseJournal.open(path, sync=False)
            journal.bound(lease(60))
            journal.begin_batch()
            journal.bound(lease(61))
            journal.declined(Decline(IPv4Address("198.18.0.99"), 9e9))
            journal.commit()
            journal.bound(lease(62))
            journal.close()
        finally:
            os.write = original
        assert short.calls > 4  # the writes really were cut short
        contents = load_journal(path)
        assert contents.skipped_bytes == 0
        assert {lease(n).address for n in (60, 61, 62)} <= set(contents.leases)
        assert IPv4Address("198.18.0.99") in contents.declines
        os.write = short  # type: ignore[assignment]
        try:
            journal, contents = LeaseJournal.open(path, sync=False)  # compacts: atomic_write
            journal.close()
        finally:
            os.write = original
        reread = load_journal(path)
        assert reread.skipped_bytes == 0 and len(reread.leases) == 3


def test_a_write_that_makes_no_progress_raises(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that keeps returning 0 raises ``OSError`` instead of looping for ever; the
    caller (the DHCP adapter) then withholds the ACK."""
    path = tmp_path / "leases.journal"
    journal, _ = LeaseJournal.open(path, sync=False)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "write", ShortWrites(1, stall=True))
            with pytest.raises(OSError, match="no progress"):
                journal.bound(lease(63))
    finally:
        journal.close()
