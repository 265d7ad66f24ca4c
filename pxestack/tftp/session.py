"""The sans-IO TFTP read session: one transfer's state machine, with time passed in.

Shape (aioquic's ``QuicConnection``): the adapter feeds datagrams with :meth:`receive`, asks
what to send with :meth:`datagrams_to_send`, arms one timer at :meth:`next_deadline` and
calls :meth:`on_deadline` when it fires.  No clock, socket or Twisted here; ``now`` is a
float of seconds on the adapter's clock.

Protocol rules implemented:

* RFC 1350 lock-step: DATA *n* is sent, the ACK *n* moves on; a short block ends the file
  (a file whose size is a multiple of the block size ends with an empty DATA).
* RFC 2347 §3: when options were granted, an OACK goes first and DATA 1 follows ACK 0.
* RFC 7440 windowsize: up to *windowsize* blocks are in flight.  An ACK for a block short
  of the last one sent means the client lost what followed (RFC 7440 §4), so the next
  window starts right after it.
* Sorcerer's Apprentice (RFC 1123 §4.2.3.1): a duplicate ACK never triggers a resend; only a
  time-out does.  ACKs for blocks not in flight (stale or future) are ignored.
* Block numbers roll over past 65535 to **0** (what tftp-hpa, curl and
  atftp expect).  ACKs are matched modulo 65536 against the blocks in flight.
* An ERROR from the client ends the transfer without an answer (RFC 1350 §7: errors are
  not acknowledged).  OVMF's size probe is exactly this: RRQ with tsize, OACK, then ERROR 0
  "User aborted the transfer." before a second RRQ (docs/reference/pxe-wire.md), logged as
  ``aborted``.
* Retransmission time-out (RFC 6298 applied to TFTP): the first RTO is conservative
  (:attr:`SessionSettings.initial_rto`); every ACK of a block sent only once gives a
  round-trip sample (Karn's rule: none from retransmitted blocks) for SRTT/RTTVAR
  (RFC 6298 §2.2-2.3), RTO = SRTT + 4·RTTVAR clamped to [min_rto, max_rto]; each time-out
  doubles it (§5.5).  One lost block therefore costs a few round trips, not seconds.
  A client-negotiated ``timeout`` (RFC 2349 §3) caps the RTO: we never wait longer than the
  client agreed to.
* Bounded work, so a requester that never acknowledges cannot make the server an
  amplifier: at most :attr:`SessionSettings.max_retries`
  consecutive time-outs, and an overall :attr:`SessionSettings.deadline` per transfer.

Buffers: a ring of reused ``bytearray`` slots (the window plus a read-ahead batch), each
holding a complete DATA datagram; :meth:`datagrams_to_send` hands out the slots or
``memoryview`` slices of them.  They stay valid until the next :meth:`receive`,
:meth:`next_after_ack` or :meth:`on_deadline` call, so the adapter sends them at once.  A
reader with ``readv`` (files) fills up to 64 KiB of slots with one system call.

:meth:`next_after_ack` is the lock-step fast path for adapters: for the ACK of the block in
flight it updates the state exactly as :meth:`receive` does and returns the next DATA
directly; in every other case it changes nothing and returns ``None``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, TypeAlias

from pxestack._types import Address, Now
from pxestack.errors import ApiMisuse, MalformedPacket
from pxestack.paths import PathNotFound, PathRefused
from pxestack.tftp.negotiate import Negotiated, NegotiationLimits, negotiate
from pxestack.tftp.source import NetasciiReader, Reader, Upload, UploadExists
from pxestack.tftp.stats import Outcome, SessionStats
from pxestack.wire.tftp import (
    OP_ACK,
    OP_DATA,
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    WriteRequest,
    decode_tftp,
    encode_tftp,
)

#: Read-ahead of a reader that supports ``readv``: at most this many octets and blocks
#: per system call (one call per 44 blocks at blksize 1468).
READ_AHEAD_OCTETS = 64 * 1024
MAX_READ_AHEAD_BLOCKS = 64

# DATA header (RFC 1350 §5): opcode, block number.
_DATA_HEADER = struct.Struct("!HH")

#: What :meth:`ReadSession.datagrams_to_send` hands out (reused buffers, see module doc).
Datagram: TypeAlias = bytes | bytearray | memoryview

#: Why a transfer whose client never answered its first window ended (no ERROR is sent).
NO_ANSWER = "no answer to the first window"

#: OVMF's abort message after its tsize probe (docs/reference/pxe-wire.md).
OVMF_ABORT_MESSAGE = "User aborted the transfer"


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Tunables of a read session (from the ``tftp:`` config section)."""

    limits: NegotiationLimits = field(default_factory=NegotiationLimits)
    #: Consecutive time-outs before giving up (RFC 1350 leaves the count to the server).
    max_retries: int = 8
    #: Resends allowed before the client answered anything at all.  A spoofed request
    #: never gets an answer, and every resend to it is traffic reflected at the address
    #: it names, so an unconfirmed transfer gives up after two resends, silently: what
    #: such an address receives is bounded by three copies of the first window (an OACK,
    #: or DATA 1 when no option was granted).
    unconfirmed_retries: int = 2
    #: Consecutive time-outs after which a transfer counts as stalled: it may then be
    #: ended to admit another request when the server is full (``tftp.admission``).
    stall_retries: int = 2
    #: Overall seconds a transfer may take, from the request (bounds a requester that trickles).
    deadline: float = 300.0
    #: RTO before any round trip was measured (RFC 6298 §2.1 says 1 s).
    initial_rto: float = 1.0
    #: Floor of the adaptive RTO.  RFC 6298 §2.4 asks for 1 s on the Internet; a boot LAN
    #: answers in well under a millisecond, and a spurious resend only costs a duplicate
    #: block the client re-acknowledges (and that ACK is ignored, see Sorcerer's Apprentice).
    min_rto: float = 0.05
    #: Ceiling of the RTO, also after back-off.
    max_rto: float = 4.0

    def __post_init__(self) -> None:
        if self.max_retries < 1:
            raise ApiMisuse("max_retries must be at least 1")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ApiMisuse("need 0 < min_rto <= initial_rto <= max_rto")
        if self.deadline <= 0:
            raise ApiMisuse("deadline must be positive")


class SessionState(Enum):
    """Where a session is; everything but ``SENDING`` is final."""

    SENDING = "sending"
    FINISHED = "finished"


#: ``SessionState.SENDING`` as a module constant, for the tests made on every block: on
#: CPython 3.11 reading a member through its Enum class runs the hook of
#: ``EnumType.__getattr__`` (about a thousand machine instructions).
_SENDING: Final = SessionState.SENDING


def error_datagram(code: int, message: str) -> bytes:
    """An encoded ERROR (RFC 1350 §5), for refusals made before a session exists."""
    return encode_tftp(Error(code, message))


#: RFC 1350 §4: the answer to a packet from a TID that is not part of the transfer.
UNKNOWN_TID_DATAGRAM = error_datagram(ErrorCode.UNKNOWN_TID, "Unknown transfer ID")


class _Session:
    """What a read and a write session share: the request, the client, when it started,
    and how it ended."""

    def __init__(
        self, request: ReadRequest | WriteRequest, now: Now,
        settings: SessionSettings | None, client: Address,
    ) -> None:
        self.settings = settings or SessionSettings()
        self.request = request
        self.client = client
        self.started = now
        self.state = _SENDING
        self.outcome: Outcome | None = None
        self.error_message = ""
        self.finished_at: Now | None = None

    @property
    def finished(self) -> bool:
        """Whether the transfer has ended (any outcome)."""
        return self.state is SessionState.FINISHED

    def _mark_finished(self, outcome: Outcome, now: Now, message: str) -> None:
        """Record the end: no more datagrams are taken after this."""
        self.state = SessionState.FINISHED
        self.outcome = outcome
        self.error_message = message
        self.finished_at = now


class ReadSession(_Session):
    """One RRQ being served: negotiation done at construction, then DATA until the end.

    *reader* is owned by the session from here on and closed when it finishes.
    """

    def __init__(
        self,
        request: ReadRequest,
        reader: Reader,
        now: Now,
        *,
        settings: SessionSettings | None = None,
        client: Address = ("0.0.0.0", 0),
    ) -> None:
        super().__init__(request, now, settings, client)
        self.request: ReadRequest = request
        self._reader: Reader | None = reader
        size = reader.size()
        self.negotiated: Negotiated = negotiate(
            request.options, limits=self.settings.limits, file_size=size
        )
        self.blksize = self.negotiated.blksize
        self.windowsize = self.negotiated.windowsize

        # RTO state (RFC 6298).  A client's negotiated timeout caps it (RFC 2349 §3).
        ceiling = self.settings.max_rto
        if self.negotiated.timeout is not None:
            ceiling = min(ceiling, float(self.negotiated.timeout))
        self._max_rto = max(ceiling, self.settings.min_rto)
        self._rto = min(self.settings.initial_rto, self._max_rto)
        self.srtt: float | None = None
        self._rttvar = 0.0

        # Window bookkeeping, all in absolute block indexes (1-based; never wrap).
        self._acked = 0  # highest block the client acknowledged
        self._sent = 0  # highest block sent at least once
        self._final: int | None = None  # index of the last block, once read
        self._read = 0  # highest block read into its slot (read ahead of _sent)
        # Ring of slots: the window plus a read-ahead batch.  A reader with ``readv``
        # (files) fills a whole batch of slots with one system call; each slot keeps 4
        # octets in front of its payload for the DATA header, so a datagram is one
        # contiguous buffer and goes out with a single sendto, without copying.
        self._batch = (
            max(1, min(MAX_READ_AHEAD_BLOCKS, READ_AHEAD_OCTETS // self.blksize))
            if callable(getattr(reader, "readv", None)) else 1
        )
        ring = self.windowsize + self._batch
        self._ring = ring
        self._slots = [bytearray(4 + self.blksize) for _ in range(ring)]
        self._payloads = [memoryview(slot)[4:] for slot in self._slots]
        self._lengths = [0] * ring
        self._send_times = [0.0] * ring
        self._resent = [False] * ring

        self._oack: bytes | None = None
        self._oack_time = now
        self._oack_resent = False
        self._outbox: list[Datagram] = []
        self._retries = 0
        self._retransmit_at: float | None = None
        self._deadline_at = now + self.settings.deadline

        self.datagrams_sent = 0
        self.retransmits = 0

        if self.negotiated.oack:
            # RFC 2347 §3: options granted -> OACK first, DATA 1 after ACK 0.
            self._oack = encode_tftp(OptionAck(self.negotiated.oack))
            self._outbox.append(self._oack)
            self.datagrams_sent += 1
        else:
            self._fill_window(now)
        self._retransmit_at = now + self._rto

    # ----------------------------------------------------------------- public API

    @property
    def bytes_acked(self) -> int:
        """Payload octets the client has acknowledged."""
        if self._acked == 0:
            return 0
        if self._final is not None and self._acked == self._final:
            return (self._acked - 1) * self.blksize + self._lengths[
                (self._acked - 1) % self._ring
            ]
        return self._acked * self.blksize

    @property
    def rto(self) -> float:
        """The current retransmission time-out in seconds."""
        return self._rto

    def receive(self, datagram: bytes, now: Now) -> None:
        """Handle a datagram from the client's TID.

        Raises :class:`~pxestack.errors.MalformedPacket` for undecodable bytes (state
        unchanged: the adapter logs and drops them).
        """
        # Hot path: a well-formed ACK is 4 octets, opcode 4 (RFC 1350 §5).
        if len(datagram) == 4 and datagram[1] == OP_ACK and datagram[0] == 0:
            self._on_ack((datagram[2] << 8) | datagram[3], now)
            return
        packet = decode_tftp(datagram)
        if self.state is not _SENDING:
            return
        if isinstance(packet, Error):
            # RFC 1350 §7: an ERROR ends the transfer and is never answered.  OVMF's
            # "User aborted the transfer." after its tsize probe lands here.
            self._finish(Outcome.ABORTED, now, f"client error {packet.code}: {packet.message}")
            return
        if isinstance(packet, Ack):  # pragma: no cover - caught by the hot path above
            self._on_ack(packet.block, now)
            return
        # A DATA, request or OACK on a read transfer's TID is an illegal operation.
        self._fail(ErrorCode.ILLEGAL_OPERATION, "Illegal TFTP operation", Outcome.FAILED, now)

    def next_after_ack(self, datagram: bytes, now: Now) -> Datagram | None:
        """Lock-step fast path: the DATA that answers *datagram*, or ``None``.

        Handles only the common case of a lock-step transfer (windowsize 1, OACK done):
        *datagram* is the ACK of the block in flight and the next block is already read
        ahead.  Then the state changes exactly as :meth:`receive` would change it, and the
        next DATA datagram is returned for sending at once.  In every other case nothing
        is changed and ``None`` is returned; the caller then uses :meth:`receive` and
        :meth:`datagrams_to_send`.  An adapter calls this first on its per-block path;
        it saves the general path's bookkeeping and list building for each block.
        """
        acked = self._acked + 1
        if (
            acked != self._sent
            or acked >= self._read
            or self.windowsize != 1
            or self._oack is not None
            or self.state is not _SENDING
            or len(datagram) != 4
            or datagram[1] != OP_ACK
            or datagram[0] != 0
            or ((datagram[2] << 8) | datagram[3]) != acked & 0xFFFF
        ):
            return None
        ring = self._ring
        self._acked = acked
        self._retries = 0
        if not acked & 7 or self.srtt is None:
            slot = (acked - 1) % ring  # one RTT sample per 8 blocks, Karn's rule
            if not self._resent[slot]:
                self._sample_rtt(now - self._send_times[slot])
        slot = acked % ring  # the slot of block acked + 1
        buffer = self._slots[slot]
        _DATA_HEADER.pack_into(buffer, 0, OP_DATA, (acked + 1) & 0xFFFF)
        self._send_times[slot] = now
        self._resent[slot] = False
        self._sent = acked + 1
        self.datagrams_sent += 1
        self._retransmit_at = now + self._rto
        count = self._lengths[slot]
        return buffer if count == self.blksize else memoryview(buffer)[: 4 + count]

    def datagrams_to_send(self, now: Now) -> list[Datagram]:
        """The datagrams to send now, in order (valid until the next call into the session)."""
        out = self._outbox
        if out:
            self._outbox = []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`on_deadline` must be called next; ``None`` once finished."""
        if self.state is not _SENDING:
            return None
        if self._retransmit_at is None:
            return self._deadline_at
        return min(self._retransmit_at, self._deadline_at)

    def on_deadline(self, now: Now) -> None:
        """Handle time passing: overall deadline, or a retransmission time-out.

        Calling it early is harmless (nothing is due, nothing happens), so an adapter may
        keep a lazily re-armed timer.
        """
        if self.state is not _SENDING:
            return
        if now >= self._deadline_at:
            self._fail(ErrorCode.NOT_DEFINED, "Transfer time limit exceeded",
                       Outcome.DEADLINE, now)
            return
        if self._retransmit_at is None or now < self._retransmit_at:
            return
        self._retries += 1
        confirmed = self._acked > 0 or (self.negotiated.oack and self._oack is None)
        limit = (
            self.settings.max_retries
            if confirmed
            else min(self.settings.max_retries, self.settings.unconfirmed_retries)
        )
        if self._retries > limit:
            if confirmed:
                self._fail(ErrorCode.NOT_DEFINED, "Timed out waiting for ACK",
                           Outcome.TIMED_OUT, now)
            else:
                # No ERROR to an address that never answered (see unconfirmed_retries).
                self._finish(Outcome.TIMED_OUT, now, NO_ANSWER)
            return
        # RFC 6298 §5.5: back off.
        self._rto = min(self._rto * 2.0, self._max_rto)
        if self._oack is not None:
            self._outbox.append(self._oack)
            self._oack_resent = True
            self.datagrams_sent += 1
            self.retransmits += 1
        else:
            self._resend_from(self._acked + 1)
        self._retransmit_at = now + self._rto

    def cancel(self, now: Now, message: str = "Server shutting down") -> None:
        """Stop the transfer (shutdown); the client gets an ERROR."""
        if self.state is _SENDING:
            self._fail(ErrorCode.NOT_DEFINED, message, Outcome.CANCELLED, now)

    @property
    def acknowledged(self) -> bool:
        """Whether the client acknowledged anything yet (the OACK or a block)."""
        return self._acked > 0 or (bool(self.negotiated.oack) and self._oack is None)

    @property
    def evictable(self) -> bool:
        """Never acknowledged, or stalled: admission may end it for another request."""
        return (self.state is _SENDING
                and (not self.acknowledged or self._retries >= self.settings.stall_retries))

    def evict(self, now: Now, reason: str) -> None:
        """End the transfer without an answer, to free its slot (``tftp.admission``)."""
        if self.state is _SENDING:
            self._outbox = []
            self._finish(Outcome.EVICTED, now, reason)

    def stats(self) -> SessionStats:
        """A :class:`~pxestack.tftp.stats.SessionStats` of the transfer so far."""
        return SessionStats(
            client=self.client,
            path=self.request.filename,
            outcome=self.outcome or Outcome.FAILED,
            bytes_acked=self.bytes_acked,
            datagrams_sent=self.datagrams_sent,
            retransmits=self.retransmits,
            blksize=self.blksize,
            windowsize=self.windowsize,
            tsize=self.negotiated.tsize,
            started=self.started,
            finished=self.finished_at if self.finished_at is not None else self.started,
            srtt=self.srtt,
            error=self.error_message,
        )

    # ----------------------------------------------------------------- internals

    def _on_ack(self, block: int, now: Now) -> None:
        if self.state is not _SENDING:
            return
        if self._oack is not None:
            # Waiting for ACK 0 of the OACK (RFC 2347 §3); anything else is stale.
            if block != 0:
                return
            self._oack = None
            if not self._oack_resent:
                self._sample_rtt(now - self._oack_time)
            self._retries = 0
            self._fill_window(now)
            self._retransmit_at = now + self._rto
            return
        acked = self._acked
        # Match the 16-bit number against the blocks in flight (rollover to 0).
        advance = (block - acked) & 0xFFFF
        if advance == 0 or advance > self._sent - acked:
            # Duplicate (Sorcerer's Apprentice, RFC 1123 §4.2.3.1), stale or future ACK:
            # ignored.  Only a time-out resends.
            return
        acked += advance
        self._acked = acked
        self._retries = 0
        if not acked & 7 or self.srtt is None:
            # RFC 6298 §3 needs at least one sample per round trip; one per 8 blocks is
            # plenty in lock-step and keeps the per-block path short.
            slot = (acked - 1) % self._ring
            if not self._resent[slot]:
                self._sample_rtt(now - self._send_times[slot])  # Karn's rule
        if acked == self._final:
            self._finish(Outcome.COMPLETE, now)
            return
        if acked < self._sent:
            # RFC 7440 §4: the client acknowledged part of the window; restart after it.
            self._resend_from(acked + 1)
        self._fill_window(now)
        self._retransmit_at = now + self._rto

    def _fill_window(self, now: Now) -> None:
        """Queue new blocks until the window is full or the file ends."""
        limit = self._acked + self.windowsize
        final = self._final
        if final is not None and limit > final:
            limit = final
        sent = self._sent
        if sent >= limit:
            return
        ring = self._ring
        slots = self._slots
        lengths = self._lengths
        outbox = self._outbox
        blksize = self.blksize
        first = sent
        while sent < limit:
            sent += 1
            if sent > self._read:
                if not self._read_ahead(now):
                    return
                final = self._final
                if final is not None and limit > final:
                    limit = final
                if sent > self._read:  # the file ended exactly at the previous block
                    sent -= 1
                    break
            slot = (sent - 1) % ring
            buffer = slots[slot]
            _DATA_HEADER.pack_into(buffer, 0, OP_DATA, sent & 0xFFFF)
            self._send_times[slot] = now
            self._resent[slot] = False
            count = lengths[slot]
            outbox.append(buffer if count == blksize else memoryview(buffer)[: 4 + count])
        self.datagrams_sent += sent - first
        self._sent = sent

    def _read_ahead(self, now: Now) -> bool:
        """Read the next batch of blocks into free slots; False if the session failed.

        Sets :attr:`_final` when the reader reaches the end.  A short read is retried
        once more before it is taken as the end (a Reader promises short reads only at the
        end; the extra call costs one system call per file and makes a mistaken short read
        harmless instead of truncating the file).
        """
        reader = self._reader
        if reader is None:  # pragma: no cover - only after finishing
            return False
        first = self._read + 1
        free = self._ring - (self._read - self._acked)
        count = min(self._batch, free)
        ring = self._ring
        blksize = self.blksize
        views = [self._payloads[(index - 1) % ring] for index in range(first, first + count)]
        try:
            total = (
                reader.readv(views)  # type: ignore[attr-defined]
                if count > 1
                else reader.readinto(views[0]) or 0
            )
            wanted = count * blksize
            while total < wanted:
                # Continue where the short read stopped (see docstring).
                index, offset = divmod(total, blksize)
                more = reader.readinto(views[index][offset:]) or 0
                if more == 0:
                    break
                total += more
        except OSError as exc:
            self._fail(ErrorCode.NOT_DEFINED, "Read error", Outcome.FAILED, now,
                       f"read error: {exc}")
            return False
        full, rest = divmod(total, blksize)
        lengths = self._lengths
        for index in range(first, first + full):
            lengths[(index - 1) % ring] = blksize
        if full < count:
            # The end: the block after the last full one is short (possibly empty,
            # RFC 1350 §6) and is the final block.
            last = first + full
            lengths[(last - 1) % ring] = rest
            self._final = last
            self._read = last
        else:
            self._read = first + count - 1
        return True

    def _resend_from(self, first: int) -> None:
        for index in range(first, self._sent + 1):
            slot = (index - 1) % self._ring
            self._resent[slot] = True
            count = self._lengths[slot]
            buffer = self._slots[slot]
            self._outbox.append(
                buffer if count == self.blksize else memoryview(buffer)[: 4 + count]
            )
            self.datagrams_sent += 1
            self.retransmits += 1

    def _sample_rtt(self, sample: float) -> None:
        """RFC 6298 §2.2/§2.3 SRTT/RTTVAR update and RTO = SRTT + 4·RTTVAR, clamped."""
        sample = max(sample, 0.0)
        if self.srtt is None:
            self.srtt = sample
            self._rttvar = sample / 2.0
        else:
            rttvar = 0.75 * self._rttvar + 0.25 * abs(self.srtt - sample)
            # A steady RTT decays RTTVAR geometrically into subnormal floats, whose
            # arithmetic is ~100x slower on x86: flush what is far below any clock tick.
            self._rttvar = rttvar if rttvar > 1e-9 else 0.0
            self.srtt = 0.875 * self.srtt + 0.125 * sample
        rto = self.srtt + 4.0 * self._rttvar
        settings = self.settings
        self._rto = min(max(rto, settings.min_rto), self._max_rto)

    def _fail(
        self, code: int, message: str, outcome: Outcome, now: Now, detail: str = ""
    ) -> None:
        self._outbox = [error_datagram(code, message)]
        self._finish(outcome, now, detail or message)

    def _finish(self, outcome: Outcome, now: Now, message: str = "") -> None:
        self._mark_finished(outcome, now, message)
        self._retransmit_at = None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()


class WriteSession(_Session):
    """One WRQ being received into an :class:`~pxestack.tftp.source.Upload` (RFC 1350).

    Lock-step only (windowsize is not offered for uploads).  The server is the receiver
    here, so a duplicate DATA *is* answered with its ACK again (RFC 1350 §2; the
    Sorcerer's Apprentice rule binds the sender).  The last ACK is resent on time-out.  After
    the final short block the upload is committed and the session *dallies* for one RTO,
    re-acknowledging a repeated final DATA in case the last ACK was lost (RFC 1350 §6).
    """

    def __init__(
        self,
        request: WriteRequest,
        upload: Upload,
        now: Now,
        *,
        settings: SessionSettings | None = None,
        client: Address = ("0.0.0.0", 0),
    ) -> None:
        super().__init__(request, now, settings, client)
        self.request: WriteRequest = request
        self._upload: Upload | None = upload
        limits = self.settings.limits
        self.negotiated = negotiate(
            request.options,
            limits=NegotiationLimits(max_blksize=limits.max_blksize, max_windowsize=1,
                                     allow_blksize=limits.allow_blksize,
                                     allow_windowsize=False,
                                     allow_timeout=limits.allow_timeout),
            write=True,
        )
        self.blksize = self.negotiated.blksize
        self.windowsize = 1
        self.bytes_acked = 0
        self.datagrams_sent = 1
        self.retransmits = 0
        self._received = 0  # absolute index of the last block written
        self._retries = 0
        self._rto = min(self.settings.initial_rto, self.settings.max_rto)
        if self.negotiated.timeout is not None:
            self._rto = min(self._rto, float(self.negotiated.timeout))
        self._deadline_at = now + self.settings.deadline
        self._dally_until: float | None = None
        self._last = (
            encode_tftp(OptionAck(self.negotiated.oack))
            if self.negotiated.oack
            else encode_tftp(Ack(0))
        )
        self._outbox: list[Datagram] = [self._last]
        self._retransmit_at: float | None = now + self._rto

    def receive(self, datagram: bytes, now: Now) -> None:
        """Handle a datagram from the client's TID (MalformedPacket for garbage)."""
        packet = decode_tftp(datagram)
        if self.state is not _SENDING:
            return
        if isinstance(packet, Error):
            self._end(Outcome.ABORTED, now, f"client error {packet.code}: {packet.message}")
            return
        if not isinstance(packet, Data):
            self._fail(ErrorCode.ILLEGAL_OPERATION, "Illegal TFTP operation", now)
            return
        if self._dally_until is not None:
            if packet.block == self._received & 0xFFFF:
                self._outbox.append(self._last)
                self.datagrams_sent += 1
            return
        if packet.block == self._received & 0xFFFF and self._received:
            # Our ACK was lost and the client resent: acknowledge again.
            self._outbox.append(self._last)
            self.datagrams_sent += 1
            self.retransmits += 1
            return
        if packet.block != (self._received + 1) & 0xFFFF:
            return
        if len(packet.payload) > self.blksize:
            self._fail(ErrorCode.ILLEGAL_OPERATION, "Block larger than negotiated", now)
            return
        assert self._upload is not None
        try:
            self._upload.write(packet.payload)
        except OSError as exc:
            self._fail(ErrorCode.DISK_FULL, "Disk full or allocation exceeded", now,
                       f"write error: {exc}")
            return
        self._received += 1
        self.bytes_acked += len(packet.payload)
        self._retries = 0
        self._last = encode_tftp(Ack(packet.block))
        self._outbox.append(self._last)
        self.datagrams_sent += 1
        if len(packet.payload) < self.blksize:
            try:
                self._upload.commit()
            except OSError as exc:
                self._upload = None
                self._fail(ErrorCode.NOT_DEFINED, "Could not store the file", now,
                           f"commit error: {exc}")
                return
            self._upload = None
            self._dally_until = now + self._rto
            self._retransmit_at = None
        else:
            self._retransmit_at = now + self._rto

    def datagrams_to_send(self, now: Now) -> list[Datagram]:
        """The datagrams to send now."""
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`on_deadline` is due; ``None`` once finished."""
        if self.state is not _SENDING:
            return None
        if self._dally_until is not None:
            return self._dally_until
        if self._retransmit_at is None:
            return self._deadline_at
        return min(self._retransmit_at, self._deadline_at)

    def on_deadline(self, now: Now) -> None:
        """End the dally, enforce the deadline, or resend the last ACK."""
        if self.state is not _SENDING:
            return
        if self._dally_until is not None:
            if now >= self._dally_until:
                self._end(Outcome.COMPLETE, now)
            return
        if now >= self._deadline_at:
            self._fail(ErrorCode.NOT_DEFINED, "Transfer time limit exceeded", now,
                       outcome=Outcome.DEADLINE)
            return
        if self._retransmit_at is None or now < self._retransmit_at:
            return
        self._retries += 1
        if self._retries > self.settings.max_retries:
            self._fail(ErrorCode.NOT_DEFINED, "Timed out waiting for DATA", now,
                       outcome=Outcome.TIMED_OUT)
            return
        self._rto = min(self._rto * 2.0, self.settings.max_rto)
        self._outbox.append(self._last)
        self.datagrams_sent += 1
        self.retransmits += 1
        self._retransmit_at = now + self._rto

    @property
    def evictable(self) -> bool:
        """No DATA received yet, or stalled: admission may end it for another request."""
        return (self.state is _SENDING and self._dally_until is None
                and (self._received == 0
                     or self._retries >= self.settings.stall_retries))

    def evict(self, now: Now, reason: str) -> None:
        """End the upload without an answer, to free its slot (partial data discarded)."""
        if self.state is _SENDING:
            self._outbox = []
            self._end(Outcome.EVICTED, now, reason)

    def cancel(self, now: Now, message: str = "Server shutting down") -> None:
        """Stop the transfer; a partial upload is discarded."""
        if self.state is _SENDING:
            if self._dally_until is not None:
                self._end(Outcome.COMPLETE, now)
            else:
                self._fail(ErrorCode.NOT_DEFINED, message, now, outcome=Outcome.CANCELLED)

    def stats(self) -> SessionStats:
        """A :class:`~pxestack.tftp.stats.SessionStats`; bytes_acked counts bytes received."""
        return SessionStats(
            client=self.client,
            path=self.request.filename,
            outcome=self.outcome or Outcome.FAILED,
            bytes_acked=self.bytes_acked,
            datagrams_sent=self.datagrams_sent,
            retransmits=self.retransmits,
            blksize=self.blksize,
            windowsize=1,
            tsize=self.negotiated.tsize,
            started=self.started,
            finished=self.finished_at if self.finished_at is not None else self.started,
            error=self.error_message,
        )

    def _fail(self, code: int, message: str, now: Now, detail: str = "", *,
              outcome: Outcome = Outcome.FAILED) -> None:
        self._outbox = [error_datagram(code, message)]
        self._end(outcome, now, detail or message)

    def _end(self, outcome: Outcome, now: Now, message: str = "") -> None:
        self._mark_finished(outcome, now, message)
        upload, self._upload = self._upload, None
        if upload is not None:
            upload.abort()


#: Transfer modes served (RFC 1350 §1); "mail" is obsolete and refused with ERROR 4.
SUPPORTED_MODES = ("octet", "netascii")


def wrap_for_mode(reader: Reader, mode: str) -> Reader:
    """The reader that produces *mode*'s bytes: netascii is converted (RFC 1350 §1)."""
    if mode == "netascii":
        return NetasciiReader(reader)
    if mode == "octet":
        return reader
    raise ApiMisuse(f"unsupported mode {mode!r}")


def refusal_for(exc: BaseException) -> tuple[ErrorCode, str]:
    """The ERROR code and client-facing message for a source's exception.

    :class:`~pxestack.paths.PathNotFound` -> 1, :class:`~pxestack.paths.PathRefused` -> 2
    (RFC 1350 Appendix), anything else -> 0.  The message never echoes server paths.
    """
    if isinstance(exc, PathNotFound):
        return ErrorCode.FILE_NOT_FOUND, "File not found"
    if isinstance(exc, UploadExists):
        return ErrorCode.FILE_EXISTS, "File already exists"
    if isinstance(exc, PathRefused):
        return ErrorCode.ACCESS_VIOLATION, "Access violation"
    if isinstance(exc, MalformedPacket):
        return ErrorCode.ILLEGAL_OPERATION, "Illegal TFTP operation"
    return ErrorCode.NOT_DEFINED, "Server error"


__all__ = [
    "NO_ANSWER",
    "OVMF_ABORT_MESSAGE",
    "SUPPORTED_MODES",
    "UNKNOWN_TID_DATAGRAM",
    "Datagram",
    "ReadSession",
    "SessionSettings",
    "SessionState",
    "WriteSession",
    "error_datagram",
    "refusal_for",
    "wrap_for_mode",
]
