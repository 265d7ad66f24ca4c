"""The sans-IO read session, driven by hand with explicit ``now`` values (no Twisted)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tftp_simclient import SimClient

from pxestack.errors import ApiMisuse, MalformedPacket
from pxestack.paths import PathNotFound, PathRefused
from pxestack.tftp.negotiate import NegotiationLimits
from pxestack.tftp.session import (
    ReadSession,
    SessionSettings,
    error_datagram,
    refusal_for,
    wrap_for_mode,
)
from pxestack.tftp.source import BytesReader, FileReader
from pxestack.tftp.stats import Outcome
from pxestack.wire.tftp import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    decode_tftp,
    encode_tftp,
)


class TrackingReader(BytesReader):
    """A BytesReader that records whether it was closed (and can fail on demand)."""

    def __init__(self, data: bytes, *, fail_after: int | None = None,
                 known_size: bool = True) -> None:
        super().__init__(data)
        self.closed = False
        self.reads = 0
        self.fail_after = fail_after
        self.known_size = known_size

    def size(self) -> int | None:
        return super().size() if self.known_size else None

    def readinto(self, buffer: memoryview) -> int:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise OSError(5, "Input/output error")
        return super().readinto(buffer)

    def close(self) -> None:
        assert not self.closed, "reader closed twice"
        self.closed = True


class BatchReader(TrackingReader):
    """A TrackingReader with ``readv``, so the session reads ahead in batches."""

    def readv(self, buffers: list[memoryview]) -> int:
        total = 0
        for buffer in buffers:
            got = self.readinto(buffer)
            total += got
            if got < len(buffer):
                break
        return total


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def sent(session: ReadSession, now: float = 0.0) -> list[bytes]:
    return [bytes(d) for d in session.datagrams_to_send(now)]


def run_lossless(session: ReadSession, client: SimClient, now: float = 0.0) -> None:
    """Move datagrams between session and client until neither has anything to say."""
    outgoing = sent(session, now)
    while outgoing:
        replies = [reply for datagram in outgoing for reply in client.handle(datagram)]
        for reply in replies:
            session.receive(reply, now)
        outgoing = sent(session, now)


def test_lock_step_without_options() -> None:
    """RFC 1350: no options -> DATA 1 at 512 octets straight away, no OACK."""
    data = payload(1300)
    reader = TrackingReader(data)
    session = ReadSession(ReadRequest("f"), reader, 0.0)
    first = sent(session)
    assert [decode_tftp(d) for d in first] == [Data(1, data[:512])]
    client = SimClient()
    for reply in client.handle(first[0]):
        session.receive(reply, 0.0)
    run_lossless(session, client)
    assert bytes(client.received) == data
    assert session.outcome is Outcome.COMPLETE
    assert reader.closed
    assert session.stats().bytes_acked == len(data)
    assert session.next_deadline() is None


def test_oack_then_data() -> None:
    """RFC 2347 §3 + iPXE's request: OACK, ACK 0, then 1432-octet blocks."""
    data = payload(5000)
    request = ReadRequest("undionly.kpxe", "octet", (("blksize", "1432"), ("tsize", "0")))
    session = ReadSession(request, TrackingReader(data), 0.0)
    first = sent(session)
    assert [decode_tftp(d) for d in first] == [
        OptionAck((("blksize", "1432"), ("tsize", "5000")))
    ]
    client = SimClient()
    for reply in client.handle(first[0]):
        session.receive(reply, 0.0)
    run_lossless(session, client)
    assert bytes(client.received) == data
    assert session.outcome is Outcome.COMPLETE
    stats = session.stats()
    assert (stats.blksize, stats.windowsize, stats.tsize) == (1432, 1, 5000)


def test_exact_multiple_ends_with_empty_block() -> None:
    """RFC 1350 §6: a file that fills its last block is ended by a zero-length DATA."""
    data = payload(1024)
    session = ReadSession(ReadRequest("f"), TrackingReader(data), 0.0)
    client = SimClient()
    datagrams: list[bytes] = []
    outgoing = sent(session)
    while outgoing:
        datagrams += outgoing
        for d in outgoing:
            for reply in client.handle(d):
                session.receive(reply, 0.0)
        outgoing = sent(session)
    assert decode_tftp(datagrams[-1]) == Data(3, b"")
    assert session.outcome is Outcome.COMPLETE


def test_unknown_size_offers_no_tsize() -> None:
    """RFC 2349: tsize only when the size is known (dynamic content may not know it)."""
    reader = TrackingReader(b"x", known_size=False)
    session = ReadSession(ReadRequest("f", "octet", (("tsize", "0"),)), reader, 0.0)
    assert [decode_tftp(d) for d in sent(session)] == [Data(1, b"x")]


def test_duplicate_ack_never_resends() -> None:
    """Sorcerer's Apprentice (RFC 1123 §4.2.3.1): a duplicate ACK is ignored."""
    session = ReadSession(ReadRequest("f"), TrackingReader(payload(4000)), 0.0)
    sent(session)
    session.receive(encode_tftp(Ack(1)), 0.001)
    assert [decode_tftp(d).block for d in sent(session)] == [2]  # type: ignore[union-attr]
    for _ in range(5):
        session.receive(encode_tftp(Ack(1)), 0.002)
        assert sent(session) == []
    assert session.retransmits == 0


@pytest.mark.parametrize("block", [0, 3, 500, 65535])
def test_stale_and_future_acks_are_ignored(block: int) -> None:
    """An ACK for a block not in flight changes nothing."""
    session = ReadSession(ReadRequest("f"), TrackingReader(payload(4000)), 0.0)
    sent(session)
    session.receive(encode_tftp(Ack(1)), 0.0)
    sent(session)
    deadline = session.next_deadline()
    session.receive(encode_tftp(Ack(block)), 0.0)
    assert sent(session) == []
    assert session.next_deadline() == deadline
    assert not session.finished


def test_timeout_resends_with_backoff_then_gives_up() -> None:
    """Retransmit only on time-out, doubling the RTO (RFC 6298 §5.5), bounded retries."""
    settings_ = SessionSettings(max_retries=3, unconfirmed_retries=3, initial_rto=1.0,
                                min_rto=0.05, max_rto=3.0)
    reader = TrackingReader(payload(100))
    session = ReadSession(ReadRequest("f"), reader, 0.0, settings=settings_)
    first = sent(session)
    waits = []
    now = 0.0
    for _ in range(3):
        deadline = session.next_deadline()
        assert deadline is not None
        session.on_deadline(deadline - 0.001)  # early: nothing happens
        assert sent(session) == []
        waits.append(deadline - now)
        now = deadline
        session.on_deadline(now)
        assert sent(session) == first
    assert waits == [1.0, 2.0, 3.0]
    deadline = session.next_deadline()
    assert deadline is not None
    session.on_deadline(deadline)
    # The client never acknowledged anything: it gets no ERROR either.
    assert sent(session) == []
    assert session.outcome is Outcome.TIMED_OUT
    assert session.retransmits == 3
    assert reader.closed


def test_spoofed_request_gets_few_resends() -> None:
    """A requester that never answers gets few resends (amplification)."""
    request = ReadRequest("f", "octet", (("blksize", "1468"), ("tsize", "0")))
    session = ReadSession(request, TrackingReader(payload(100_000)), 0.0,
                          settings=SessionSettings(max_retries=8, unconfirmed_retries=3))
    bytes_out = sum(len(d) for d in session.datagrams_to_send(0.0))
    while not session.finished:
        deadline = session.next_deadline()
        assert deadline is not None
        session.on_deadline(deadline)
        bytes_out += sum(len(d) for d in session.datagrams_to_send(deadline))
    assert session.outcome is Outcome.TIMED_OUT
    assert session.retransmits == 3
    request_size = len(encode_tftp(request))
    assert bytes_out / request_size < 10


def test_confirmed_transfer_keeps_all_retries() -> None:
    settings_ = SessionSettings(max_retries=5, unconfirmed_retries=1)
    session = ReadSession(ReadRequest("f"), TrackingReader(payload(5000)), 0.0,
                          settings=settings_)
    sent(session)
    session.receive(encode_tftp(Ack(1)), 0.01)
    now = 0.01
    while not session.finished:
        deadline = session.next_deadline()
        assert deadline is not None
        now = deadline
        session.on_deadline(now)
    assert session.retransmits == 5


def test_overall_deadline() -> None:
    """A client that trickles ACKs is cut off at the deadline."""
    settings_ = SessionSettings(deadline=10.0, initial_rto=1.0, max_rto=1.0, min_rto=0.5)
    session = ReadSession(ReadRequest("f"), TrackingReader(payload(512 * 1000)), 0.0,
                          settings=settings_)
    now = 0.0
    block = 0
    client_done = False
    while not session.finished:
        sent(session, now)
        now += 0.9
        block += 1
        session.receive(encode_tftp(Ack(block)), now)
        deadline = session.next_deadline()
        if deadline is not None and deadline <= now:
            session.on_deadline(now)
        client_done = now > 20
        assert not client_done
    assert session.outcome is Outcome.DEADLINE
    assert isinstance(decode_tftp(sent(session)[0]), Error)


def test_rollover_wraps_to_zero() -> None:
    """Past block 65535 the number wraps to 0 (tftp-hpa, curl, atftp)."""
    blocks = 65536 + 10
    data = payload(8 * blocks + 3)
    request = ReadRequest("big", "octet", (("blksize", "8"),))
    session = ReadSession(request, TrackingReader(data), 0.0,
                          settings=SessionSettings(limits=NegotiationLimits(max_blksize=8)))
    client = SimClient()
    numbers = []
    outgoing = sent(session)
    while outgoing:
        for d in outgoing:
            if d[1] == 3:
                numbers.append(int.from_bytes(d[2:4], "big"))
            for reply in client.handle(d):
                session.receive(reply, 0.0)
        outgoing = sent(session)
    assert session.outcome is Outcome.COMPLETE
    assert hashlib.sha256(client.received).digest() == hashlib.sha256(data).digest()
    assert numbers[65534:65538] == [65535, 0, 1, 2]


def test_ovmf_size_probe_then_abort_then_second_request() -> None:
    """OVMF asks tsize+blksize+windowsize, aborts, then asks again."""
    data = payload(850528 // 100)
    probe = ReadRequest("ipxe.efi", "octet",
                        (("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")))
    reader = TrackingReader(data)
    session = ReadSession(probe, reader, 0.0)
    oack = decode_tftp(sent(session)[0])
    assert isinstance(oack, OptionAck)
    assert dict(oack.options)["tsize"] == str(len(data))
    session.receive(error_datagram(0, "User aborted the transfer."), 0.01)
    assert sent(session) == []  # RFC 1350 §7: an ERROR is never answered
    assert session.outcome is Outcome.ABORTED
    assert reader.closed
    second = ReadSession(ReadRequest("ipxe.efi", "octet",
                                     (("blksize", "1468"), ("windowsize", "4"))),
                         TrackingReader(data), 0.02)
    client = SimClient()
    for reply in client.handle(sent(second)[0]):
        second.receive(reply, 0.03)
    run_lossless(second, client, 0.03)
    assert bytes(client.received) == data
    assert second.outcome is Outcome.COMPLETE


def test_window_sends_windowsize_blocks_and_restarts_after_partial_ack() -> None:
    """RFC 7440 §4: an ACK short of the window end restarts the window after it."""
    request = ReadRequest("f", "octet", (("blksize", "512"), ("windowsize", "4")))
    session = ReadSession(request, TrackingReader(payload(512 * 20)), 0.0)
    sent(session)
    session.receive(encode_tftp(Ack(0)), 0.001)
    assert [d[3] for d in sent(session)] == [1, 2, 3, 4]
    session.receive(encode_tftp(Ack(2)), 0.002)  # 3 and 4 were lost
    assert [d[3] for d in sent(session)] == [3, 4, 5, 6]
    assert session.retransmits == 2
    session.receive(encode_tftp(Ack(6)), 0.003)
    assert [d[3] for d in sent(session)] == [7, 8, 9, 10]


def test_rto_adapts_to_measured_round_trips() -> None:
    """RFC 6298: after fast ACKs the RTO falls to the floor instead of seconds."""
    settings_ = SessionSettings(initial_rto=1.0, min_rto=0.05, max_rto=4.0)
    session = ReadSession(ReadRequest("f"), TrackingReader(payload(512 * 50)), 0.0,
                          settings=settings_)
    assert session.rto == 1.0
    now = 0.0
    for block in range(1, 20):
        sent(session, now)
        now += 0.001
        session.receive(encode_tftp(Ack(block)), now)
    assert session.rto == pytest.approx(0.05)
    assert session.srtt == pytest.approx(0.001)
    deadline = session.next_deadline()
    assert deadline is not None and deadline - now == pytest.approx(0.05)


def test_karn_no_sample_from_retransmitted_block() -> None:
    """Karn's rule: an ACK of a resent block gives no RTT sample (it is ambiguous)."""
    session = ReadSession(ReadRequest("f"), TrackingReader(payload(2000)), 0.0)
    sent(session)
    session.on_deadline(1.0)
    sent(session, 1.0)
    session.receive(encode_tftp(Ack(1)), 1.5)
    assert session.srtt is None
    assert session.rto == 2.0  # still backed off


def test_negotiated_timeout_caps_rto() -> None:
    """RFC 2349 §3: never wait longer than the timeout the client asked for."""
    request = ReadRequest("f", "octet", (("timeout", "1"),))
    session = ReadSession(request, TrackingReader(payload(10)), 0.0,
                          settings=SessionSettings(initial_rto=2.0, max_rto=8.0))
    assert session.rto == 1.0


def test_illegal_operation_ends_transfer() -> None:
    session = ReadSession(ReadRequest("f"), TrackingReader(payload(2000)), 0.0)
    sent(session)
    session.receive(encode_tftp(Data(1, b"x")), 0.0)
    reply = decode_tftp(sent(session)[0])
    assert reply == Error(ErrorCode.ILLEGAL_OPERATION, "Illegal TFTP operation")
    assert session.outcome is Outcome.FAILED


def test_malformed_datagram_raises_and_changes_nothing() -> None:
    session = ReadSession(ReadRequest("f"), TrackingReader(payload(2000)), 0.0)
    sent(session)
    deadline = session.next_deadline()
    with pytest.raises(MalformedPacket):
        session.receive(b"\x00\x09junk", 0.0)
    assert not session.finished
    assert session.next_deadline() == deadline


def test_read_error_sends_error_0() -> None:
    reader = TrackingReader(payload(5000), fail_after=2)
    session = ReadSession(ReadRequest("f"), reader, 0.0)
    sent(session)
    session.receive(encode_tftp(Ack(1)), 0.0)
    sent(session)
    session.receive(encode_tftp(Ack(2)), 0.0)
    reply = decode_tftp(sent(session)[0])
    assert isinstance(reply, Error) and reply.code == 0
    assert session.outcome is Outcome.FAILED
    assert reader.closed


def test_cancel() -> None:
    session = ReadSession(ReadRequest("f"), TrackingReader(payload(5000)), 0.0)
    sent(session)
    session.cancel(1.0)
    assert isinstance(decode_tftp(sent(session)[0]), Error)
    assert session.outcome is Outcome.CANCELLED
    session.cancel(2.0)
    assert sent(session) == []


def test_netascii_conversion() -> None:
    """RFC 1350 §1 / RFC 764: LF -> CR LF, CR -> CR NUL (tftp-hpa's default mode)."""
    reader = wrap_for_mode(BytesReader(b"a\nb\rc"), "netascii")
    session = ReadSession(ReadRequest("f", "netascii", (("tsize", "0"),)), reader, 0.0)
    client = SimClient()
    run_lossless(session, client)
    assert bytes(client.received) == b"a\r\nb\r\x00c"
    with pytest.raises(ApiMisuse):
        wrap_for_mode(BytesReader(b""), "mail")


@pytest.mark.parametrize(
    ("exc", "code"),
    [(PathNotFound("x"), 1), (PathRefused("x"), 2), (RuntimeError("x"), 0)],
)
def test_refusal_codes(exc: Exception, code: int) -> None:
    assert refusal_for(exc)[0] == code


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": 0}, {"min_rto": 0.0}, {"initial_rto": 5.0, "max_rto": 4.0},
     {"deadline": 0.0}],
)
def test_settings_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ApiMisuse):
        SessionSettings(**kwargs)  # type: ignore[arg-type]


class SessionAgainstClient(RuleBasedStateMachine):
    """Random loss, duplication and reordering between the session and a simulated client.

    Invariants: the client's data is always a prefix of the file; acknowledged blocks only
    grow; retransmissions stay bounded; a duplicate ACK never produces a datagram; when the
    session completes the client holds the whole file.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.data = b""
        self.session: ReadSession | None = None
        self.client = SimClient()
        self.to_client: list[bytes] = []
        self.to_server: list[bytes] = []
        self.last_acked = 0
        self.acks_seen: set[int] = set()

    @precondition(lambda self: self.session is None)
    @rule(size=st.integers(0, 6000), blksize=st.sampled_from([8, 512, 1000]),
          window=st.integers(1, 5), options=st.booleans(), batched=st.booleans())
    def start(self, size: int, blksize: int, window: int, options: bool,
              batched: bool) -> None:
        self.data = payload(size, seed=size)
        opts = (("blksize", str(blksize)), ("windowsize", str(window)), ("tsize", "0"))
        request = ReadRequest("f", "octet", opts if options else ())
        settings_ = SessionSettings(max_retries=1000, deadline=1e9)
        reader = (BatchReader if batched else TrackingReader)(self.data)
        self.session = ReadSession(request, reader, self.now, settings=settings_)
        self._collect()

    def _collect(self) -> None:
        assert self.session is not None
        self.to_client += [bytes(d) for d in self.session.datagrams_to_send(self.now)]

    @precondition(lambda self: self.session is not None and self.to_client)
    @rule(index=st.integers(0, 20), duplicate=st.booleans())
    def deliver_to_client(self, index: int, duplicate: bool) -> None:
        datagram = self.to_client[index % len(self.to_client)]
        if not duplicate:
            self.to_client.remove(datagram)
        self.to_server += self.client.handle(datagram)

    @precondition(lambda self: self.session is not None and self.to_server)
    @rule(index=st.integers(0, 20), duplicate=st.booleans(), fast=st.booleans())
    def deliver_to_server(self, index: int, duplicate: bool, fast: bool) -> None:
        assert self.session is not None
        datagram = self.to_server[index % len(self.to_server)]
        if not duplicate:
            self.to_server.remove(datagram)
        block = int.from_bytes(datagram[2:4], "big")
        repeated = block in self.acks_seen and self.session._oack is None
        self.acks_seen.add(block)
        before = self.session.stats().bytes_acked
        self.now += 0.001
        quick = self.session.next_after_ack(datagram, self.now) if fast else None
        if quick is not None:
            # The adapter's lock-step fast path must behave like the general path.
            out = [bytes(quick)]
        else:
            self.session.receive(datagram, self.now)
            out = [bytes(d) for d in self.session.datagrams_to_send(self.now)]
        if repeated and self.session.stats().bytes_acked == before:
            assert out == [], "a duplicate ACK must never trigger a resend"
        self.to_client += out

    @precondition(lambda self: self.to_client or self.to_server)
    @rule(toward_client=st.booleans())
    def drop(self, toward_client: bool) -> None:
        queue = self.to_client if toward_client else self.to_server
        if queue:
            queue.pop(0)

    @precondition(lambda self: self.session is not None and not self.session.finished)
    @rule()
    def server_timeout(self) -> None:
        assert self.session is not None
        deadline = self.session.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.session.on_deadline(self.now)
        self._collect()

    @precondition(lambda self: self.session is not None and not self.client.done)
    @rule()
    def client_timeout(self) -> None:
        self.to_server += self.client.on_timeout()

    @rule()
    def wait(self) -> None:
        """Time passes with nothing on the wire (always possible, so a run never stalls)."""
        self.now += 0.01

    @invariant()
    def client_holds_a_prefix(self) -> None:
        assert self.data.startswith(bytes(self.client.received))

    @invariant()
    def progress_is_monotonic_and_bounded(self) -> None:
        if self.session is None:
            return
        acked = self.session.bytes_acked
        assert acked >= self.last_acked
        self.last_acked = acked
        assert self.session.stats().blksize in (8, 512, 1000)
        if self.session.outcome is Outcome.COMPLETE:
            assert bytes(self.client.received) == self.data


SessionAgainstClient.TestCase.settings = settings(max_examples=60, stateful_step_count=60,
                                                  deadline=None)
test_session_against_client = SessionAgainstClient.TestCase


def test_session_completes_under_random_loss() -> None:
    """10 % loss both ways, seeded: the transfer still completes with the right bytes."""
    rng = random.Random(7)
    data = payload(200_000)
    request = ReadRequest("f", "octet", (("blksize", "1468"), ("windowsize", "4")))
    session = ReadSession(request, TrackingReader(data), 0.0)
    client = SimClient()
    now = 0.0
    for _ in range(100_000):
        if session.finished:
            break
        out = [bytes(d) for d in session.datagrams_to_send(now)]
        replies = []
        for datagram in out:
            if rng.random() >= 0.1:
                replies += client.handle(datagram)
        delivered = [r for r in replies if rng.random() >= 0.1]
        now += 0.0005
        for reply in delivered:
            session.receive(reply, now)
        if not out and not delivered:
            deadline = session.next_deadline()
            assert deadline is not None
            now = max(now, deadline)
            session.on_deadline(now)
            if rng.random() < 0.3:
                for reply in client.on_timeout():
                    session.receive(reply, now)
    assert session.outcome is Outcome.COMPLETE
    assert bytes(client.received) == data
    assert session.retransmits > 0
    # The adaptive RTO keeps each loss cheap: far below one second per lost block.
    assert session.rto < 1.0


class ChoppyReader(BytesReader):
    """A reader with ``readv`` that returns short reads mid-file (a network filesystem)."""

    def readv(self, buffers: list[memoryview]) -> int:
        return self.readinto(buffers[0][: max(1, len(buffers[0]) // 3)])


@pytest.mark.parametrize("windowsize", [1, 3])
@pytest.mark.parametrize("blocks", [0, 1, 43, 44, 45, 88, 200])
@pytest.mark.parametrize("extra", [0, 1])
def test_batched_file_reads(tmp_path: Path, windowsize: int, blocks: int, extra: int) -> None:
    """The readv read-ahead path (FileReader) around batch boundaries, with 5 % loss."""
    data = payload(1468 * blocks + extra, seed=blocks)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    request = ReadRequest("f", "octet", (("blksize", "1468"), ("windowsize", str(windowsize))))
    session = ReadSession(request, FileReader(fd), 0.0)
    assert session._batch == 44
    client = lossy_exchange(session, random.Random(blocks), loss=0.05)
    assert session.outcome is Outcome.COMPLETE
    assert bytes(client.received) == data
    assert session.bytes_acked == len(data)


def test_short_reads_from_readv_are_completed() -> None:
    data = payload(5000)
    session = ReadSession(ReadRequest("f"), ChoppyReader(data), 0.0)
    client = SimClient()
    run_lossless(session, client)
    assert bytes(client.received) == data


def lossy_exchange(session: ReadSession, rng: random.Random, loss: float) -> SimClient:
    """Drive *session* against a SimClient with random loss both ways until it ends."""
    client = SimClient()
    now = 0.0
    for _ in range(200_000):
        if session.finished:
            break
        out = [bytes(d) for d in session.datagrams_to_send(now)]
        replies = [r for d in out if rng.random() >= loss for r in client.handle(d)]
        delivered = [r for r in replies if rng.random() >= loss]
        now += 0.0005
        for reply in delivered:
            session.receive(reply, now)
        if not out and not delivered:
            deadline = session.next_deadline()
            assert deadline is not None
            now = max(now, deadline)
            session.on_deadline(now)
    return client
