"""Fair admission under a request flood: the sans-IO rule, the sessions' side of it, and
the adapter applying it (in memory, task.Clock-style fake reactor; no sleeps)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_tftp_protocol import Harness, decoded
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pxestack.tftp.admission import REFUSAL_LOG_INTERVAL, Admission
from pxestack.tftp.session import ReadSession, SessionSettings
from pxestack.tftp.source import BytesReader
from pxestack.tftp.stats import Outcome
from pxestack.wire.tftp import (
    Ack,
    Data,
    Error,
    ErrorCode,
    ReadRequest,
    WriteRequest,
    decode_tftp,
    encode_tftp,
)

# ------------------------------------------------------------------ the sans-IO rule


@dataclass
class Slot:
    """A stand-in transfer: evictable until acknowledged (or when stalled)."""

    evictable: bool = True


def test_below_the_caps_everyone_is_admitted() -> None:
    admission = Admission(max_transfers=4, per_client_limit=2)
    assert admission.decide(("10.0.0.1", 1), 0.0).admit
    admission.add(("10.0.0.1", 1), Slot())
    decision = admission.decide(("10.0.0.1", 2), 0.0)
    assert decision.admit and decision.evict is None


def test_a_source_at_its_limit_replaces_its_own_oldest_unacknowledged_transfer() -> None:
    admission = Admission(max_transfers=10, per_client_limit=2)
    admission.add(("10.0.0.1", 1), Slot(evictable=False))
    admission.add(("10.0.0.1", 2), Slot())
    decision = admission.decide(("10.0.0.1", 3), 0.0)
    assert (decision.admit, decision.evict) == (True, ("10.0.0.1", 2))


def test_a_source_at_its_hard_limit_with_healthy_transfers_gets_an_error() -> None:
    admission = Admission(max_transfers=10, per_client_limit=2)
    for port in (1, 2):
        admission.add(("10.0.0.1", port), Slot(evictable=False))
    decision = admission.decide(("10.0.0.1", 3), 5.0)
    assert (decision.admit, decision.answer, decision.log) == (False, True, True)
    # Logged at info once per source per interval; other sources are logged on their own.
    assert not admission.decide(("10.0.0.1", 4), 6.0).log
    assert admission.decide(("10.0.0.1", 4), 5.0 + REFUSAL_LOG_INTERVAL).log


def test_eight_sources_cannot_starve_a_ninth() -> None:
    """8 addresses x 64 slots fill 512: a new source still gets a slot, taken from the
    oldest never-acknowledged transfer of the biggest holder."""
    admission = Admission(max_transfers=512, per_client_limit=64)
    for host in range(8):
        for port in range(64):
            admission.add((f"10.0.0.{host}", port), Slot())
    decision = admission.decide(("10.0.1.1", 1), 0.0)
    assert decision.admit and decision.evict == ("10.0.0.0", 0)
    admission.remove(("10.0.0.0", 0))
    admission.add(("10.0.1.1", 1), Slot(evictable=False))
    # The flooders are now over their fair share (512 // 9 = 56): each competes only
    # with itself, and the newcomer's acknowledged transfer is never touched.
    decision = admission.decide(("10.0.0.3", 999), 0.0)
    assert decision.evict == ("10.0.0.3", 0)


def test_a_full_server_of_healthy_transfers_drops_silently() -> None:
    admission = Admission(max_transfers=2, per_client_limit=8)
    admission.add(("10.0.0.1", 1), Slot(evictable=False))
    admission.add(("10.0.0.2", 1), Slot(evictable=False))
    decision = admission.decide(("10.0.0.3", 1), 0.0)
    assert (decision.admit, decision.answer) == (False, False)
    assert decision.reason == "server transfer limit"


def test_a_smaller_holder_is_not_evicted_for_a_bigger_one() -> None:
    admission = Admission(max_transfers=3, per_client_limit=8)
    admission.add(("10.0.0.1", 1), Slot(evictable=False))
    admission.add(("10.0.0.1", 2), Slot(evictable=False))
    admission.add(("10.0.0.2", 1), Slot())  # holds 1, fewer than the requester
    assert not admission.decide(("10.0.0.1", 3), 0.0).admit


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.booleans()),
                max_size=80))
def test_admission_invariants(steps: list[tuple[int, int, bool]]) -> None:
    """Whatever the order of requests: the total and per-source caps hold, only
    evictable transfers are evicted, and a full server never refuses a source holding
    nothing while some bigger source holds an evictable transfer."""
    admission = Admission(max_transfers=6, per_client_limit=3)
    slots: dict[tuple[str, int], Slot] = {}
    port = 0
    for host_index, action, flag in steps:
        host = f"10.0.0.{host_index}"
        if action == 0 and slots:  # a transfer ends
            client = sorted(slots)[host_index % len(slots)]
            del slots[client]
            admission.remove(client)
            continue
        if action == 1 and slots:  # a client acknowledges (or stalls again)
            slots[sorted(slots)[host_index % len(slots)]].evictable = flag
            continue
        port += 1
        client = (host, port)
        held = sum(1 for other in slots if other[0] == host)
        bigger_evictable = any(
            slot.evictable and sum(1 for o in slots if o[0] == other[0]) > held
            for other, slot in slots.items())
        decision = admission.decide(client, 0.0)
        if held == 0 and bigger_evictable:
            assert decision.admit
        if not decision.admit:
            continue
        if decision.evict is not None:
            assert slots[decision.evict].evictable
            del slots[decision.evict]
            admission.remove(decision.evict)
        slots[client] = Slot(evictable=True)
        admission.add(client, slots[client])
        assert len(admission) == len(slots) <= 6
        assert admission.held(host) <= 3


# ------------------------------------------------------------------ the sessions' side


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 200_000),
    options=st.lists(st.sampled_from([("blksize", "1468"), ("blksize", "8192"),
                                      ("windowsize", "16"), ("tsize", "0"),
                                      ("timeout", "1")]), unique_by=lambda o: o[0]),
    max_retries=st.integers(1, 20),
)
def test_no_ack_means_at_most_two_resends(size: int, options: list[tuple[str, str]],
                                          max_retries: int) -> None:
    """A request that is answered but never acknowledged draws its first window and at
    most two resends of it, and no ERROR: the bytes an address that never acknowledged
    anything receives are bounded by three first windows (an OACK, or DATA 1)."""
    request = ReadRequest("f", "octet", tuple(options))
    session = ReadSession(request, BytesReader(b"x" * size), 0.0,
                          settings=SessionSettings(max_retries=max_retries))
    first = session.datagrams_to_send(0.0)
    first_bytes = sum(len(d) for d in first)
    total = first_bytes
    while not session.finished:
        deadline = session.next_deadline()
        assert deadline is not None
        session.on_deadline(deadline)
        out = session.datagrams_to_send(deadline)
        assert not any(decode_tftp(bytes(d)).__class__ is Error for d in out)
        total += sum(len(d) for d in out)
    assert session.retransmits <= 2
    assert total <= 3 * first_bytes
    assert session.outcome is Outcome.TIMED_OUT


def test_plain_rrq_amplification_is_bounded() -> None:
    """A 22-octet RRQ without options for a large file: at most 3 DATA of 516 octets."""
    request = ReadRequest("undionly.kpxe", "octet")
    assert len(encode_tftp(request)) == 22
    session = ReadSession(request, BytesReader(b"x" * 100_000), 0.0)
    total = sum(len(d) for d in session.datagrams_to_send(0.0))
    while not session.finished:
        deadline = session.next_deadline()
        assert deadline is not None
        session.on_deadline(deadline)
        total += sum(len(d) for d in session.datagrams_to_send(deadline))
    assert total <= 3 * 516


def test_evictable_follows_acknowledgement_and_stalls() -> None:
    session = ReadSession(ReadRequest("f"), BytesReader(b"x" * 5000), 0.0,
                          settings=SessionSettings(max_retries=8))
    session.datagrams_to_send(0.0)
    assert session.evictable
    session.receive(encode_tftp(Ack(1)), 0.01)
    assert not session.evictable
    for _ in range(2):  # two consecutive time-outs without an ACK: stalled
        deadline = session.next_deadline()
        assert deadline is not None
        session.on_deadline(deadline)
    assert session.evictable
    session.evict(10.0, "test")
    assert session.datagrams_to_send(10.0) == []
    assert session.outcome is Outcome.EVICTED


# ------------------------------------------------------------------ the adapter


class AdmissionAdapterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="pxestack-tftp-admission-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def harness(self, **kwargs: Any) -> Harness:
        return Harness(self.tmp, **kwargs)

    def test_flood_from_eight_sources_does_not_starve_a_real_client(self) -> None:
        """8 addresses x 64 per-client slots fill the default 512; a ninth source's
        request is still served, in place of a never-acknowledged flood transfer."""
        h = self.harness()
        (h.root / "undionly.kpxe").write_bytes(b"u" * 2000)
        for host in range(8):
            for port in range(70):  # more than the per-client limit each
                h.request(ReadRequest("undionly.kpxe"), (f"198.18.1.{host}", 1000 + port))
        self.assertEqual(len(h.server.transfers), 512)
        real = ("198.18.0.77", 2000)
        h.request(ReadRequest("undionly.kpxe"), real)
        self.assertIn(real, h.server.transfers)
        index = len(h.sockets) - 1
        self.assertEqual(decoded(h.sockets[index].sent), [Data(1, b"u" * 512)])
        # The flood goes on: the flooders replace their own transfers, not the real one.
        for port in range(200):
            h.request(ReadRequest("undionly.kpxe"), ("198.18.1.3", 5000 + port))
        for block in range(1, 5):
            h.to_transfer(Ack(block), real, index)
        self.assertEqual([s.outcome for s in h.stats if s.client == real], [Outcome.COMPLETE])
        self.assertEqual(len(h.server.transfers), 511)  # the real one ended
        evicted = [s for s in h.stats if s.outcome is Outcome.EVICTED]
        self.assertEqual(h.server.stats.evicted, len(evicted))
        self.assertGreater(len(evicted), 200)
        # Evicted transfers got no ERROR: each flood socket sent exactly its DATA 1.
        for sock in h.sockets[:index]:
            self.assertEqual(len(sock.sent), 1)

    def test_stalled_transfer_is_evicted_for_a_new_source(self) -> None:
        settings_ = SessionSettings(max_retries=8, initial_rto=1.0, max_rto=4.0)
        h = self.harness(max_transfers=2, settings=settings_)
        (h.root / "f").write_bytes(b"a" * 5000)
        h.request(ReadRequest("f"), ("198.18.0.2", 1))
        h.to_transfer(Ack(1), ("198.18.0.2", 1), 0)
        h.request(ReadRequest("f"), ("198.18.0.3", 1))
        h.to_transfer(Ack(1), ("198.18.0.3", 1), 1)
        h.request(ReadRequest("f"), ("198.18.0.4", 1))
        self.assertNotIn(("198.18.0.4", 1), h.server.transfers)  # both healthy
        h.reactor.advance(0.5)
        h.to_transfer(Ack(2), ("198.18.0.2", 1), 0)  # .2 keeps going, .3 goes quiet
        h.reactor.advance(3.5)  # .3 has now timed out twice in a row: stalled
        h.to_transfer(Ack(3), ("198.18.0.2", 1), 0)
        h.request(ReadRequest("f"), ("198.18.0.4", 1))
        self.assertIn(("198.18.0.4", 1), h.server.transfers)
        self.assertNotIn(("198.18.0.3", 1), h.server.transfers)
        self.assertIn(("198.18.0.2", 1), h.server.transfers)
        self.assertEqual([s.outcome for s in h.stats], [Outcome.EVICTED])

    def test_refusal_at_the_per_client_limit_is_answered_and_logged(self) -> None:
        h = self.harness(per_client_limit=1)
        (h.root / "f").write_bytes(b"a" * 5000)
        h.request(ReadRequest("f"), ("198.18.0.2", 1))
        h.to_transfer(Ack(1), ("198.18.0.2", 1))
        for port in (2, 3):
            h.request(ReadRequest("f"), ("198.18.0.2", port))
        self.assertEqual(decoded(h.transport.written),
                         [Error(ErrorCode.NOT_DEFINED, "Busy")] * 2)
        # The answer is shorter than the shortest request: no amplification.
        self.assertLess(len(h.transport.written[0][0]), len(encode_tftp(ReadRequest("a"))))
        levels = [(e["log_level"], e["client"]) for e in self.events
                  if "refused" in e.get("log_format", "")]
        self.assertEqual(levels, [(LogLevel.info, ("198.18.0.2", 2)),
                                  (LogLevel.debug, ("198.18.0.2", 3))])

    def test_name_with_a_trailing_separator_is_not_the_file(self) -> None:
        h = self.harness()
        (h.root / "undionly.kpxe").write_bytes(b"u" * 100)
        for name in ("undionly.kpxe/", "undionly.kpxe\\", "/undionly.kpxe//"):
            h.request(ReadRequest(name), ("198.18.0.2", len(name)))
        self.assertEqual(decoded(h.transport.written),
                         [Error(ErrorCode.FILE_NOT_FOUND, "File not found")] * 3)
        self.assertEqual(h.sockets, [])
        h.request(ReadRequest("undionly.kpxe"))
        self.assertEqual(len(h.sockets), 1)

    def test_upload_with_a_trailing_separator_is_refused(self) -> None:
        from pxestack.tftp.source import UploadDirectory

        (self.tmp / "up").mkdir()
        h = self.harness(upload=UploadDirectory(self.tmp / "up"))
        h.request(WriteRequest("new.bin/"))
        self.assertEqual(decoded(h.transport.written),
                         [Error(ErrorCode.FILE_NOT_FOUND, "File not found")])
