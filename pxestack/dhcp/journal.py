"""The lease journal: bindings survive ``kill -9`` and power loss.

Format (built to survive power loss in the middle of a record).  The file starts with
:data:`FILE_MAGIC`; then come records, each appended with one ``write()`` (continued if
the kernel takes less)::

    RECORD_MAGIC (2 bytes) | payload length (u32, big-endian) | CRC-32 of payload (u32) | payload

The payload is compact JSON, one of::

    {"t": "b", "a": address, "k": client key (hex), "m": mac (hex), "i": client id (hex) or null,
     "h": hostname or null, "e": expires}                       # a binding (DHCPACK)
    {"t": "f", "a": address, "k": client key (hex), "e": when}  # a release
    {"t": "d", "a": address, "u": quarantined until}            # a decline

Durability: a binding and a decline are ``fdatasync``-ed before the server sends the ACK,
so it never ACKs a lease that a crash could lose.  Either :meth:`LeaseJournal.bound` syncs
before returning, or, with group commit (:meth:`LeaseJournal.begin_batch` /
:meth:`LeaseJournal.commit`), the records of one batch of datagrams are written with one
``write()`` and synced with one ``fdatasync`` and the adapter holds that batch's ACKs until
the commit returns.  A release is written but not synced: losing one only means the
client's old binding comes back until it expires.

Loading keeps every valid record.  A torn last record (a crash mid-``write``) is skipped; a
damaged record in the middle is skipped too, by scanning forward for the next record whose
magic, length and checksum all check out.  Bad bytes are counted and reported, never fatal
(Kea CVE-2019-6474 refused to start on a bad lease file).

Every write is checked: ``os.write`` may write less than asked, and the rest of a record
is written before the record counts as durable (:func:`pxestack._fs.write_all`).
Compaction writes the live state to a temporary file, fsyncs it, renames it over the journal
and fsyncs the directory (:func:`pxestack._fs.atomic_write`), so at every instant either the
old or the new file is complete.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from pxestack._fs import atomic_write, write_all
from pxestack.dhcp.leases import Decline, Lease, LeaseState

#: First bytes of a journal file (format version 1).
FILE_MAGIC = b"PXSLJ1\n"
#: First bytes of every record.
RECORD_MAGIC = b"\xd1\x0c"
_HEADER = struct.Struct(">2sII")
#: Largest payload the loader accepts; anything longer is damage, not a record.
MAX_PAYLOAD = 4096


def encode_record(payload: dict[str, object]) -> bytes:
    """One framed record for *payload* (magic, length, CRC-32, compact JSON)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _HEADER.pack(RECORD_MAGIC, len(body), zlib.crc32(body)) + body


def _dotted(address: int) -> str:
    """Dotted-quad text of an IPv4 address given as an integer (``str(IPv4Address)``
    costs several times more, and this runs for every DHCPACK)."""
    return f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}.{address & 255}"


def _json_number(value: float) -> str:
    """*value* exactly as ``json.dumps`` writes it (``repr`` for finite numbers)."""
    return repr(value) if math.isfinite(value) else json.dumps(value)


def bind_record(lease: Lease) -> bytes:
    """The framed record of a binding.

    The payload is formatted directly rather than through ``json.dumps`` of a dict (it is
    written for every DHCPACK); the bytes are identical to what :func:`encode_record` would
    produce for the same mapping (tests/dhcp/test_journal.py checks this), so the loader
    does not care.  Only the host name, the one free-text field, goes through the JSON
    encoder for its escaping.
    """
    client_id = lease.client_id
    hostname = lease.hostname
    body = (
        f'{{"t":"b","a":"{_dotted(int(lease.address))}","k":"{lease.client.hex()}",'
        f'"m":"{lease.mac.hex()}",'
        f'"i":{"null" if client_id is None else chr(34) + client_id.hex() + chr(34)},'
        f'"h":{"null" if hostname is None else json.dumps(hostname)},'
        f'"e":{_json_number(lease.expires)}}}'
    ).encode()
    return _HEADER.pack(RECORD_MAGIC, len(body), zlib.crc32(body)) + body


def free_record(lease: Lease) -> bytes:
    """The framed record of a release."""
    return encode_record(
        {"t": "f", "a": str(lease.address), "k": lease.client.hex(), "e": lease.expires}
    )


def decline_record(decline: Decline) -> bytes:
    """The framed record of a decline (quarantine)."""
    return encode_record({"t": "d", "a": str(decline.address), "u": decline.until})


@dataclass
class JournalContents:
    """What :func:`load_journal` recovered."""

    #: The last binding (state BOUND) or release (state FREE) per address, in file order.
    leases: dict[IPv4Address, Lease] = field(default_factory=dict)
    #: The last quarantine per address.
    declines: dict[IPv4Address, Decline] = field(default_factory=dict)
    #: How many records were applied.
    records: int = 0
    #: How many bytes were skipped as damaged or torn.
    skipped_bytes: int = 0


def _decode_payload(body: bytes) -> Lease | Decline | tuple[IPv4Address, bytes, float]:
    """Turn one checked payload into a value; raises ValueError/KeyError/TypeError if odd."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("payload is not an object")
    kind = data["t"]
    address = IPv4Address(data["a"])
    if kind == "b":
        client_id = data["i"]
        hostname = data["h"]
        expires = data["e"]
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise ValueError("expires is not a number")
        if hostname is not None and not isinstance(hostname, str):
            raise ValueError("hostname is not a string")
        return Lease(
            address=address,
            client=bytes.fromhex(data["k"]),
            mac=bytes.fromhex(data["m"]),
            state=LeaseState.BOUND,
            expires=float(expires),
            client_id=bytes.fromhex(client_id) if client_id is not None else None,
            hostname=hostname,
        )
    if kind == "f":
        when = data["e"]
        if not isinstance(when, int | float) or isinstance(when, bool):
            raise ValueError("time is not a number")
        return (address, bytes.fromhex(data["k"]), float(when))
    if kind == "d":
        until = data["u"]
        if not isinstance(until, int | float) or isinstance(until, bool):
            raise ValueError("until is not a number")
        return Decline(address, float(until))
    raise ValueError(f"unknown record type {kind!r}")


def parse_journal(data: bytes) -> JournalContents:
    """Replay the journal bytes *data*; never raises on damaged content."""
    contents = JournalContents()
    by_client: dict[bytes, IPv4Address] = {}
    # A file whose magic was damaged is still scanned for records.
    offset = len(FILE_MAGIC) if data.startswith(FILE_MAGIC) else 0
    end = len(data)
    header_size = _HEADER.size
    while offset < end:
        value: Lease | Decline | tuple[IPv4Address, bytes, float] | None = None
        size = 0
        if end - offset >= header_size:
            magic, length, checksum = _HEADER.unpack_from(data, offset)
            if (
                magic == RECORD_MAGIC
                and length <= MAX_PAYLOAD
                and end - offset - header_size >= length
            ):
                body = data[offset + header_size : offset + header_size + length]
                if zlib.crc32(body) == checksum:
                    try:
                        value = _decode_payload(body)
                    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                        value = None
                    size = header_size + length
        if value is None:
            # Damaged or torn: resynchronise on the next record magic.
            following = data.find(RECORD_MAGIC, offset + 1)
            next_offset = end if following < 0 else following
            contents.skipped_bytes += next_offset - offset
            offset = next_offset
            continue
        offset += size
        contents.records += 1
        if isinstance(value, Lease):
            previous = by_client.get(value.client)
            if previous is not None and previous != value.address:
                old = contents.leases.get(previous)
                if old is not None and old.client == value.client:
                    del contents.leases[previous]
            by_client[value.client] = value.address
            contents.leases[value.address] = value
            contents.declines.pop(value.address, None)
        elif isinstance(value, Decline):
            contents.declines[value.address] = value
            dropped = contents.leases.pop(value.address, None)
            if dropped is not None and by_client.get(dropped.client) == value.address:
                del by_client[dropped.client]
        else:
            address, client, when = value
            held = contents.leases.get(address)
            if held is not None and held.client == client:
                contents.leases[address] = Lease(
                    address=held.address,
                    client=held.client,
                    mac=held.mac,
                    state=LeaseState.FREE,
                    expires=when,
                    client_id=held.client_id,
                    hostname=held.hostname,
                )
    return contents


def load_journal(path: Path) -> JournalContents:
    """Read and replay the journal at *path* (an absent file is an empty journal)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return JournalContents()
    return parse_journal(data)


def write_snapshot(path: Path, leases: Iterable[Lease], declines: Iterable[Decline]) -> int:
    """Atomically replace *path* with a journal holding exactly *leases* and *declines*.

    Temp file, fsync, rename, fsync of the directory: a crash at any point leaves either the
    old journal or the new one.  Only BOUND leases are written (offers are not durable and
    FREE records only help reuse).  Returns the number of records written.
    """
    parts = [FILE_MAGIC]
    for lease in leases:
        if lease.state is LeaseState.BOUND:
            parts.append(bind_record(lease))
    for decline in declines:
        parts.append(decline_record(decline))
    atomic_write(path, b"".join(parts), mode=0o600)
    return len(parts) - 1


class LeaseJournal:
    """An append-only lease journal; a :class:`~pxestack.dhcp.leases.LeaseListener`.

    Use :meth:`open` to recover the contents and start a fresh, compacted file.

    Two ways to make bindings durable:

    * one at a time (the default): :meth:`bound` writes the record and ``fdatasync``-s it
      before returning, so the caller may send its DHCPACK right after;
    * **group commit**: between :meth:`begin_batch` and :meth:`commit` records are only
      collected; :meth:`commit` writes them with one ``write()`` and makes them durable with
      one ``fdatasync``.  The caller must not send an ACK produced inside the batch before
      :meth:`commit` returns (:class:`~pxestack.dhcp.protocol.DhcpServerProtocol` holds
      them back while :attr:`pending` is true).  A crash before the commit loses only
      bindings that were never acknowledged.

    :param sync: ``fdatasync`` bindings and declines (turn off only for tests and benchmarks
        that measure something else).
    """

    def __init__(self, path: Path, *, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size == 0:
            write_all(self._fd, FILE_MAGIC)
        #: Records appended since the last compaction.
        self.appended = 0
        self._batching = False
        self._held: list[bytes] = []
        self._held_durable = False

    @classmethod
    def open(cls, path: Path, *, sync: bool = True) -> tuple[LeaseJournal, JournalContents]:
        """Recover *path*, rewrite it compacted (dropping any damage), and open it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        contents = load_journal(path)
        write_snapshot(
            path,
            (lease for lease in contents.leases.values() if lease.state is LeaseState.BOUND),
            contents.declines.values(),
        )
        return cls(path, sync=sync), contents

    def _descriptor(self) -> int:
        if self._fd is None:
            raise ValueError(f"lease journal {self.path} is closed")
        return self._fd

    def _append(self, record: bytes, durable: bool) -> None:
        self.appended += 1
        if self._batching:
            self._held.append(record)
            self._held_durable = self._held_durable or durable
            return
        fd = self._descriptor()
        # A short write must not leave half a record: replay skips a torn record, so the
        # binding would be lost although the ACK promising it goes out after the sync.
        write_all(fd, record)
        if durable and self.sync:
            os.fdatasync(fd)

    @property
    def pending(self) -> bool:
        """Whether a batch holds a binding or decline that is not durable yet."""
        return self._held_durable

    def begin_batch(self) -> None:
        """Collect records in memory until :meth:`commit` (group commit)."""
        self._batching = True

    def commit(self) -> None:
        """End the batch: one ``write()`` of every held record, one ``fdatasync`` if any of
        them must be durable.  Raises ``OSError`` when the disk refuses; the held records
        are dropped then (their ACKs must not be sent)."""
        self._batching = False
        if not self._held:
            return
        data = b"".join(self._held)
        durable = self._held_durable
        self._held.clear()
        self._held_durable = False
        fd = self._descriptor()
        write_all(fd, data)
        if durable and self.sync:
            os.fdatasync(fd)

    def bound(self, lease: Lease) -> None:
        """Record a binding durably (fdatasync before returning, or at :meth:`commit`)."""
        self._append(bind_record(lease), durable=True)

    def freed(self, lease: Lease) -> None:
        """Record a release (written, not synced)."""
        self._append(free_record(lease), durable=False)

    def declined(self, decline: Decline) -> None:
        """Record a quarantine durably."""
        self._append(decline_record(decline), durable=True)

    def compact(self, leases: Iterable[Lease], declines: Iterable[Decline]) -> int:
        """Replace the journal by a snapshot of the live state; returns records written."""
        if self._batching or self._held:
            self.commit()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        written = write_snapshot(self.path, leases, declines)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.appended = 0
        return written

    def flush(self) -> None:
        """Make everything written so far durable (releases and any open batch included)."""
        if self._batching or self._held:
            self.commit()
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Write any held records, sync and close the file."""
        if self._batching or self._held:
            self.commit()
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


__all__ = [
    "FILE_MAGIC",
    "MAX_PAYLOAD",
    "RECORD_MAGIC",
    "JournalContents",
    "LeaseJournal",
    "bind_record",
    "decline_record",
    "encode_record",
    "free_record",
    "load_journal",
    "parse_journal",
    "write_snapshot",
]
