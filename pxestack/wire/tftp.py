"""The TFTP packets: frozen values, a strict decoder and an encoder.

Packet layouts are RFC 1350 §5 (RRQ/WRQ, DATA, ACK, ERROR) and RFC 2347 §2-3 (options
appended to a request, and the OACK).  Every string field is NUL-terminated.

Decoding (:func:`decode_tftp`) raises only :class:`~pxestack.errors.MalformedPacket`
subclasses, so an adapter can log and drop whatever a hostile peer sends.  Policy decisions
(which options to grant, which modes to serve) are not made here: the codec reports what was
sent and :mod:`pxestack.tftp.negotiate` decides.

Tolerances, each for a real client behaviour:

* option names are case-insensitive (RFC 2347 §2: "the option is not case sensitive"), so
  they are returned lower-cased; values keep their case;
* a request's option area may end in NUL padding or a half option (a name without a
  value): some PXE ROMs pad their RRQ, and tftp-hpa carries a remap rule for ROMs that append
  garbage after the file name.  Such a tail is ignored rather than costing the whole boot;
  the file name and mode themselves must be terminated;
* an ERROR whose message lacks the final NUL is accepted: it is an abort either way, and
  treating it as malformed would leave the transfer running.

File names are decoded as UTF-8 with ``surrogateescape``, so any byte string round-trips
through :func:`os.fsencode` unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeAlias

from pxestack.errors import ApiMisuse, Invalid, Truncated

#: RFC 1350 §5 opcodes and RFC 2347 §3 OACK.
OP_RRQ: Final = 1
OP_WRQ: Final = 2
OP_DATA: Final = 3
OP_ACK: Final = 4
OP_ERROR: Final = 5
OP_OACK: Final = 6

#: RFC 2348 §2: "Valid values range between 8 and 65464 octets, inclusive."
BLKSIZE_MIN: Final = 8
BLKSIZE_MAX: Final = 65464
#: RFC 1350 §1: the block size when no blksize option is negotiated.
DEFAULT_BLKSIZE: Final = 512
#: Block numbers are 16-bit (RFC 1350 §5).
BLOCK_MODULO: Final = 1 << 16

_U16: Final = struct.Struct("!H")
_OP_BLOCK: Final = struct.Struct("!HH")


class ErrorCode(IntEnum):
    """RFC 1350 Appendix "Error Codes", plus RFC 2347 §2 code 8."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    #: RFC 2347 §2: "Request packet was refused because of an option."
    OPTION_REFUSED = 8


#: Ordered (name, value) pairs of a request or an OACK.
Options: TypeAlias = tuple[tuple[str, str], ...]


def first_option(options: Options, name: str) -> str | None:
    """The first value of option *name* in *options* (names are stored lower-cased;
    RFC 2347 makes them case-insensitive), or ``None``."""
    wanted = name.lower()
    for key, value in options:
        if key == wanted:
            return value
    return None


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """RRQ (RFC 1350 §5): *filename*, *mode* (lower-cased) and RFC 2347 *options*."""

    filename: str
    mode: str = "octet"
    options: Options = ()

    def option(self, name: str) -> str | None:
        """The first value of option *name* (case-insensitive), or ``None``."""
        return first_option(self.options, name)


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """WRQ (RFC 1350 §5): same layout as :class:`ReadRequest`."""

    filename: str
    mode: str = "octet"
    options: Options = ()

    def option(self, name: str) -> str | None:
        """The first value of option *name* (case-insensitive), or ``None``."""
        return first_option(self.options, name)


@dataclass(frozen=True, slots=True)
class Data:
    """DATA (RFC 1350 §5): a 16-bit *block* number and up to 65464 octets of *payload*."""

    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK (RFC 1350 §5) of *block*; block 0 acknowledges an OACK (RFC 2347 §3)."""

    block: int


@dataclass(frozen=True, slots=True)
class Error:
    """ERROR (RFC 1350 §5): a numeric *code* and a human-readable *message*."""

    code: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class OptionAck:
    """OACK (RFC 2347 §3): the options the server accepts, in order."""

    options: Options


#: Any decoded TFTP packet.
TftpPacket: TypeAlias = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck


def _split_strings(body: bytes) -> tuple[list[bytes], bytes]:
    """Split *body* on NUL; return the terminated strings and an unterminated tail."""
    parts = body.split(b"\x00")
    return parts[:-1], parts[-1]


def _decode_request(opcode: int, body: bytes) -> ReadRequest | WriteRequest:
    strings, _tail = _split_strings(body)
    if len(strings) < 2:
        raise Truncated("request lacks a NUL-terminated file name and mode")
    raw_name, raw_mode, *raw_options = strings
    try:
        mode = raw_mode.decode("ascii").lower()
    except UnicodeDecodeError:
        raise Invalid("request mode is not ASCII") from None
    if not mode:
        raise Invalid("request mode is empty")
    filename = raw_name.decode("utf-8", "surrogateescape")
    options: list[tuple[str, str]] = []
    # Pairs only; a dangling name or NUL padding at the end is ignored (see module doc).
    for index in range(0, len(raw_options) - 1, 2):
        name, value = raw_options[index], raw_options[index + 1]
        if not name:
            continue
        options.append((name.decode("latin-1").lower(), value.decode("latin-1")))
    cls = ReadRequest if opcode == OP_RRQ else WriteRequest
    return cls(filename=filename, mode=mode, options=tuple(options))


def _decode_oack(body: bytes) -> OptionAck:
    strings, tail = _split_strings(body)
    if tail:
        raise Truncated("OACK ends inside an option")
    if len(strings) % 2:
        raise Invalid("OACK has an option without a value")
    pairs = []
    for index in range(0, len(strings), 2):
        name = strings[index]
        if not name:
            raise Invalid("OACK has an empty option name")
        pairs.append((name.decode("latin-1").lower(), strings[index + 1].decode("latin-1")))
    return OptionAck(tuple(pairs))


def decode_tftp(datagram: bytes) -> TftpPacket:
    """Decode one TFTP datagram; raises only :class:`~pxestack.errors.MalformedPacket`."""
    if len(datagram) < 2:
        raise Truncated("datagram shorter than an opcode")
    opcode = (datagram[0] << 8) | datagram[1]
    if opcode == OP_ACK:
        if len(datagram) != 4:
            raise (Truncated if len(datagram) < 4 else Invalid)("ACK must be 4 octets")
        return Ack(_OP_BLOCK.unpack(datagram)[1])
    if opcode == OP_DATA:
        if len(datagram) < 4:
            raise Truncated("DATA shorter than its header")
        if len(datagram) - 4 > BLKSIZE_MAX:
            raise Invalid("DATA payload larger than the largest block size")
        return Data(_OP_BLOCK.unpack_from(datagram)[1], bytes(datagram[4:]))
    if opcode in (OP_RRQ, OP_WRQ):
        return _decode_request(opcode, bytes(datagram[2:]))
    if opcode == OP_ERROR:
        if len(datagram) < 4:
            raise Truncated("ERROR shorter than its header")
        code = _OP_BLOCK.unpack_from(datagram)[1]
        raw = bytes(datagram[4:])
        end = raw.find(b"\x00")
        message = (raw if end < 0 else raw[:end]).decode("utf-8", "replace")
        return Error(code, message)
    if opcode == OP_OACK:
        return _decode_oack(bytes(datagram[2:]))
    raise Invalid(f"unknown TFTP opcode {opcode}")


def ack_block(datagram: bytes) -> int | None:
    """The block number if *datagram* is a well-formed ACK, else ``None``.

    The per-block hot path of a read transfer: no allocation beyond the int.
    """
    if len(datagram) == 4 and datagram[0] == 0 and datagram[1] == OP_ACK:
        return (datagram[2] << 8) | datagram[3]
    return None


def data_header(block: int) -> bytes:
    """The 4-octet DATA header for *block* (RFC 1350 §5)."""
    return _OP_BLOCK.pack(OP_DATA, block)


def _c_string(text: str, what: str, encoding: str = "latin-1") -> bytes:
    try:
        raw = text.encode(encoding, "surrogateescape" if encoding == "utf-8" else "strict")
    except UnicodeEncodeError:
        raise ApiMisuse(f"{what} {text!r} cannot be encoded as {encoding}") from None
    if b"\x00" in raw:
        raise ApiMisuse(f"{what} {text!r} contains NUL")
    return raw + b"\x00"


def _u16(value: int, what: str) -> bytes:
    if not 0 <= value < BLOCK_MODULO:
        raise ApiMisuse(f"{what} {value} is not a 16-bit number")
    return _U16.pack(value)


def _options(options: Options) -> bytes:
    out = []
    for name, value in options:
        if not name:
            raise ApiMisuse("empty option name")
        out.append(_c_string(name, "option name") + _c_string(value, "option value"))
    return b"".join(out)


def encode_tftp(packet: TftpPacket) -> bytes:
    """Encode *packet*; raises :class:`~pxestack.errors.ApiMisuse` for impossible values."""
    if isinstance(packet, Data):
        if len(packet.payload) > BLKSIZE_MAX:
            raise ApiMisuse("DATA payload larger than the largest block size")
        return _u16(OP_DATA, "opcode") + _u16(packet.block, "block") + bytes(packet.payload)
    if isinstance(packet, Ack):
        return _u16(OP_ACK, "opcode") + _u16(packet.block, "block")
    if isinstance(packet, Error):
        return (
            _u16(OP_ERROR, "opcode")
            + _u16(packet.code, "error code")
            + _c_string(packet.message, "error message", "utf-8")
        )
    if isinstance(packet, OptionAck):
        return _u16(OP_OACK, "opcode") + _options(packet.options)
    if isinstance(packet, ReadRequest | WriteRequest):
        if not packet.mode:
            raise ApiMisuse("empty transfer mode")
        opcode = OP_RRQ if isinstance(packet, ReadRequest) else OP_WRQ
        return (
            _u16(opcode, "opcode")
            + _c_string(packet.filename, "file name", "utf-8")
            + _c_string(packet.mode, "mode", "ascii")
            + _options(packet.options)
        )
    raise ApiMisuse(f"not a TFTP packet: {packet!r}")


__all__ = [
    "BLKSIZE_MAX",
    "BLKSIZE_MIN",
    "BLOCK_MODULO",
    "DEFAULT_BLKSIZE",
    "OP_ACK",
    "OP_DATA",
    "OP_ERROR",
    "OP_OACK",
    "OP_RRQ",
    "OP_WRQ",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "OptionAck",
    "Options",
    "ReadRequest",
    "TftpPacket",
    "WriteRequest",
    "ack_block",
    "data_header",
    "decode_tftp",
    "encode_tftp",
    "first_option",
]
