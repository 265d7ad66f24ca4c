"""DHCP options: an immutable ordered mapping of option code to value bytes, with typed access.

Decoding rules implemented here (strict where dpkt is lenient):

* RFC 2131 §3 / RFC 2132 §2: the options area is a sequence of ``code, length, value`` TLVs;
  PAD (0) has no length, END (255) stops parsing.  A length that runs past the buffer, or an
  area with no END, raises :class:`~pxestack.errors.Truncated`.
* RFC 3396 §5: several instances of one option code are concatenated, in the order options
  area, ``file``, ``sname``.  A concatenated value longer than :data:`MAX_OPTION_LENGTH`
  raises :class:`~pxestack.errors.Invalid` (bounded work on hostile packets).
* RFC 2132 §9.3 (option 52 overload) is applied by :func:`pxestack.wire.dhcp.decode_dhcp`,
  which feeds the ``file`` and ``sname`` fields through :func:`parse_option_area` once.

Typed getters (``u8``, ``u16``, ``ip``, ``text`` ...) raise :class:`~pxestack.errors.Invalid`
when a present option has the wrong length, so callers classifying a client can collect the
problem instead of crashing.  :meth:`DhcpOptions.build` encodes Python values by option code
using :data:`OPTION_FORMATS`.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from ipaddress import IPv4Address
from typing import Final, TypeAlias

from pxestack._memo import BoundedMemo
from pxestack.errors import ApiMisuse, Invalid, Truncated
from pxestack.wire import constants as c

#: Upper bound of one option's value after RFC 3396 concatenation.  A legal DHCP message is at
#: most a 64 KiB UDP payload, so no honest option comes near this; it bounds memory per packet.
MAX_OPTION_LENGTH: Final = 16384

#: A value :meth:`DhcpOptions.build` accepts: raw bytes, or a Python value encoded per
#: :data:`OPTION_FORMATS`.
OptionValue: TypeAlias = (
    bytes | str | int | IPv4Address | Sequence[IPv4Address] | Sequence[int] | Sequence[str]
    | uuid.UUID
)

# Encoding formats for :meth:`DhcpOptions.build` and the typed getters (RFC 2132 unless noted).
FMT_U8: Final = "u8"
FMT_U16: Final = "u16"
FMT_U32: Final = "u32"
FMT_IP: Final = "ip"
FMT_IPS: Final = "ips"
FMT_TEXT: Final = "text"
FMT_U8_LIST: Final = "u8-list"
FMT_U16_LIST: Final = "u16-list"
FMT_UUID: Final = "uuid"
FMT_DOMAINS: Final = "domains"

#: How :meth:`DhcpOptions.build` encodes a non-bytes value for each known option code.
OPTION_FORMATS: Final[dict[int, str]] = {
    c.OPT_SUBNET_MASK: FMT_IP,
    c.OPT_TIME_OFFSET: FMT_U32,
    c.OPT_ROUTER: FMT_IPS,
    c.OPT_TIME_SERVER: FMT_IPS,
    c.OPT_NAME_SERVER: FMT_IPS,
    c.OPT_DNS_SERVER: FMT_IPS,
    c.OPT_LOG_SERVER: FMT_IPS,
    c.OPT_HOST_NAME: FMT_TEXT,
    c.OPT_BOOT_FILE_SIZE: FMT_U16,
    c.OPT_DOMAIN_NAME: FMT_TEXT,
    c.OPT_ROOT_PATH: FMT_TEXT,
    c.OPT_INTERFACE_MTU: FMT_U16,
    c.OPT_BROADCAST_ADDRESS: FMT_IP,
    c.OPT_NTP_SERVER: FMT_IPS,
    c.OPT_REQUESTED_IP: FMT_IP,
    c.OPT_LEASE_TIME: FMT_U32,
    c.OPT_OVERLOAD: FMT_U8,
    c.OPT_MESSAGE_TYPE: FMT_U8,
    c.OPT_SERVER_ID: FMT_IP,
    c.OPT_PARAMETER_REQUEST_LIST: FMT_U8_LIST,
    c.OPT_MESSAGE: FMT_TEXT,
    c.OPT_MAX_MESSAGE_SIZE: FMT_U16,
    c.OPT_RENEWAL_TIME: FMT_U32,
    c.OPT_REBINDING_TIME: FMT_U32,
    c.OPT_VENDOR_CLASS_ID: FMT_TEXT,
    c.OPT_TFTP_SERVER_NAME: FMT_TEXT,
    c.OPT_BOOTFILE_NAME: FMT_TEXT,
    c.OPT_CLIENT_ARCH: FMT_U16_LIST,
    c.OPT_CLIENT_UUID: FMT_UUID,
    c.OPT_DOMAIN_SEARCH: FMT_DOMAINS,
}

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

#: The shared addresses of :func:`ipv4_address`.  The codec is a set of functions with no
#: instance to own it, so the table is the module's; bounded, so memory cannot grow.
_ADDRESSES: Final[BoundedMemo[int, IPv4Address]] = BoundedMemo(16384)


def ipv4_address(value: int) -> IPv4Address:
    """``IPv4Address(value)`` for an integer already known to be in range, memoised.

    Constructing an ``IPv4Address`` runs several Python-level checks; a DHCP server sees the
    same few giaddr/server-id values and its pool's addresses over and over, and the objects
    are immutable, so they are shared.
    """
    address = _ADDRESSES.entries.get(value)
    if address is None:
        address = _ADDRESSES.put(value, IPv4Address(value))
    return address


# --- value encoders ------------------------------------------------------------------------


def encode_u8(value: int) -> bytes:
    """One unsigned octet."""
    if not 0 <= value <= 0xFF:
        raise ApiMisuse(f"{value} does not fit in one octet")
    return bytes((value,))


def encode_u16(value: int) -> bytes:
    """An unsigned 16-bit integer in network byte order."""
    if not 0 <= value <= 0xFFFF:
        raise ApiMisuse(f"{value} does not fit in 16 bits")
    return _U16.pack(value)


def encode_u32(value: int) -> bytes:
    """An unsigned 32-bit integer in network byte order (lease times, RFC 2132 §9.2)."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise ApiMisuse(f"{value} does not fit in 32 bits")
    return _U32.pack(value)


def encode_ips(addresses: Iterable[IPv4Address]) -> bytes:
    """A list of IPv4 addresses, four octets each (RFC 2132 §3.5 and friends)."""
    return b"".join(address.packed for address in addresses)


def encode_text(value: str) -> bytes:
    """Text as UTF-8 without a NUL terminator (RFC 2132 §2: options are not NUL-terminated)."""
    return value.encode("utf-8")


def encode_client_uuid(value: uuid.UUID) -> bytes:
    """Option 97 (RFC 4578 §2.3): type 0 then the 16 UUID octets in SMBIOS byte order.

    SMBIOS stores the first three UUID fields little-endian, and PXE firmware copies those
    bytes verbatim (captured from SeaBIOS + iPXE and from OVMF; docs/reference/pxe-wire.md).
    """
    return b"\x00" + value.bytes_le


def encode_user_class(classes: Sequence[bytes], *, rfc3004: bool = True) -> bytes:
    """Option 77.

    With ``rfc3004`` each class is length-prefixed (RFC 3004 §4).  Without it the single class
    is sent raw, the way iPXE sends ``iPXE`` and a script's ``set user-class`` value.
    """
    if not rfc3004:
        if len(classes) != 1:
            raise ApiMisuse("the raw (iPXE) user-class form carries exactly one class")
        return bytes(classes[0])
    out = bytearray()
    for item in classes:
        if not 1 <= len(item) <= 255:
            raise ApiMisuse("an RFC 3004 user class is 1..255 octets")
        out.append(len(item))
        out += item
    return bytes(out)


def encode_domain_search(domains: Iterable[str]) -> bytes:
    """Option 119 (RFC 3397 §2) in RFC 1035 §3.1 label form, without compression pointers.

    RFC 3397 permits but does not require compression, and every decoder handles plain names.
    """
    out = bytearray()
    for domain in domains:
        for label in domain.rstrip(".").split("."):
            raw = label.encode("idna") if label else b""
            if not 1 <= len(raw) <= 63:
                raise ApiMisuse(f"bad DNS label {label!r} in {domain!r}")
            out.append(len(raw))
            out += raw
        out.append(0)
    return bytes(out)


def encode_suboptions(items: Mapping[int, bytes] | Iterable[tuple[int, bytes]], *,
                      end: bool = True) -> bytes:
    """Encapsulated sub-options (option 43 PXE space, option 175 iPXE space, option 82).

    Each sub-option is ``code, length, value``; values over 255 octets are rejected (no
    encapsulated space here supports RFC 3396 splitting).  ``end`` appends sub-option 255, as
    PXE 2.1 §2.4 requires for option 43 and RFC 3046 §2.0 forbids for option 82.
    """
    pairs = items.items() if isinstance(items, Mapping) else items
    out = bytearray()
    for code, value in pairs:
        if not 1 <= code <= 254:
            raise ApiMisuse(f"sub-option code {code} is reserved")
        if len(value) > 255:
            raise ApiMisuse(f"sub-option {code} is longer than 255 octets")
        out.append(code)
        out.append(len(value))
        out += value
    if end:
        out.append(c.OPT_END)
    return bytes(out)


def encode_option_value(code: int, value: OptionValue) -> bytes:
    """Encode ``value`` for option ``code``: bytes pass through, others per OPTION_FORMATS."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    fmt = OPTION_FORMATS.get(code)
    if fmt is None and isinstance(value, str):
        fmt = FMT_TEXT
    try:
        if fmt == FMT_U8 and isinstance(value, int):
            return encode_u8(value)
        if fmt == FMT_U16 and isinstance(value, int):
            return encode_u16(value)
        if fmt == FMT_U32 and isinstance(value, int):
            return encode_u32(value)
        if fmt in (FMT_IP, FMT_IPS) and isinstance(value, IPv4Address):
            return value.packed
        if fmt == FMT_IPS and isinstance(value, Sequence) and not isinstance(value, str):
            return encode_ips(IPv4Address(address) for address in value)
        if fmt == FMT_TEXT and isinstance(value, str):
            return encode_text(value)
        if fmt == FMT_U8_LIST and isinstance(value, Sequence) and not isinstance(value, str):
            return bytes(int(item) for item in value)
        if fmt == FMT_U16_LIST and isinstance(value, int):
            return encode_u16(value)
        if fmt == FMT_U16_LIST and isinstance(value, Sequence) and not isinstance(value, str):
            return b"".join(encode_u16(int(item)) for item in value)
        if fmt == FMT_UUID and isinstance(value, uuid.UUID):
            return encode_client_uuid(value)
        if fmt == FMT_DOMAINS and isinstance(value, Sequence) and not isinstance(value, str):
            return encode_domain_search(str(item) for item in value)
    except (ValueError, TypeError) as exc:
        raise ApiMisuse(f"option {code}: cannot encode {value!r}: {exc}") from exc
    raise ApiMisuse(f"option {code}: no encoding for a {type(value).__name__}; pass bytes")


# --- decoders ---------------------------------------------------------------------------------


def parse_option_area(data: bytes, into: dict[int, bytes], *, require_end: bool,
                      where: str = "options", start: int = 0) -> None:
    """Parse one option area (RFC 2132 §2) and append every value to ``into``.

    The area is ``data[start:]`` (the decoder passes the whole packet and the offset
    after the magic cookie rather than copying the area out first).

    Repeated codes are concatenated (RFC 3396 §5), also across calls, which is how the caller
    merges the options, ``file`` and ``sname`` areas in that order.  ``require_end`` makes a
    missing END option an error (the main area, where a missing END means a truncated
    packet); the fixed-size ``file`` and ``sname`` areas may simply end.
    """
    # Runs for every received packet: constants are literals (PAD 0, END 255) and the
    # repeat test is ``in`` (an opcode) rather than ``dict.get`` (a method call).
    index = start
    size = len(data)
    while index < size:
        code = data[index]
        if code == 0:  # PAD
            index += 1
            continue
        if code == 255:  # END
            return
        if index + 1 >= size:
            raise Truncated(f"{where}: option {code} has no length octet")
        length = data[index + 1]
        start = index + 2
        index = start + length
        if index > size:
            raise Truncated(f"{where}: option {code} announces {length} octets past the end")
        if code in into:
            previous = into[code]
            if len(previous) + length > MAX_OPTION_LENGTH:
                raise Invalid(f"option {code} concatenates to more than {MAX_OPTION_LENGTH} octets")
            into[code] = previous + data[start:index]
        else:
            into[code] = data[start:index]
    if require_end:
        raise Truncated(f"{where}: no END option")


def decode_suboptions(data: bytes, *, what: str, allow_pad_end: bool = True) -> dict[int, bytes]:
    """Decode encapsulated ``code, length, value`` sub-options (option 43, 175 or 82).

    PAD (0) and END (255) are honoured when ``allow_pad_end`` (PXE 2.1 and iPXE spaces);
    RFC 3046 §2.0 relay sub-options have neither.  Repeated codes are concatenated.  A length
    that runs past the value raises :class:`~pxestack.errors.Truncated`.
    """
    result: dict[int, bytes] = {}
    index = 0
    size = len(data)
    while index < size:
        code = data[index]
        if allow_pad_end and code == c.OPT_PAD:
            index += 1
            continue
        if allow_pad_end and code == c.OPT_END:
            break
        if index + 1 >= size:
            raise Truncated(f"{what}: sub-option {code} has no length octet")
        length = data[index + 1]
        start = index + 2
        index = start + length
        if index > size:
            raise Truncated(f"{what}: sub-option {code} runs past the option")
        result[code] = result.get(code, b"") + data[start:index]
    return result


def decode_user_class(value: bytes) -> tuple[bytes, ...]:
    """Option 77 in either form.

    RFC 3004 §4 encodes one or more length-prefixed classes.  iPXE (and a script's
    ``set user-class``) sends the bare string, e.g. ``iPXE``; a strict RFC 3004 parser rejects
    that (ipxe#1337, ipxe#1374).  So: if the value parses exactly as RFC 3004 with non-empty
    classes, return those; otherwise the whole value is one class.  The printable strings a
    raw sender uses start with a letter (>= 0x41) that cannot be a valid length for a value
    that short, so the two forms do not collide in practice.
    """
    if not value:
        return ()
    classes: list[bytes] = []
    index = 0
    while index < len(value):
        length = value[index]
        end = index + 1 + length
        if length == 0 or end > len(value):
            return (value,)
        classes.append(value[index + 1 : end])
        index = end
    return tuple(classes)


def decode_domain_search(value: bytes) -> tuple[str, ...]:
    """Option 119 (RFC 3397 §2): RFC 1035 names, compression pointers relative to the value.

    Pointers must point strictly backwards, which bounds the work and excludes loops.
    """
    names: list[str] = []
    index = 0
    while index < len(value):
        labels: list[str] = []
        position = index
        jumped = False
        limit = index
        while True:
            if position >= len(value):
                raise Truncated("option 119: name runs past the option")
            length = value[position]
            if length == 0:
                if not jumped:
                    index = position + 1
                break
            if length & 0xC0 == 0xC0:
                if position + 1 >= len(value):
                    raise Truncated("option 119: truncated compression pointer")
                target = ((length & 0x3F) << 8) | value[position + 1]
                if target >= limit:
                    raise Invalid("option 119: compression pointer does not point backwards")
                if not jumped:
                    index = position + 2
                jumped = True
                limit = target
                position = target
                continue
            if length & 0xC0:
                raise Invalid("option 119: reserved label type")
            label = value[position + 1 : position + 1 + length]
            if len(label) != length:
                raise Truncated("option 119: label runs past the option")
            labels.append(label.decode("ascii", "replace"))
            position += 1 + length
        names.append(".".join(labels))
    return tuple(names)


def _check_length(code: int, value: bytes, expected: int) -> None:
    if len(value) != expected:
        raise Invalid(f"option {code} must be {expected} octets, got {len(value)}")


class DhcpOptions(Mapping[int, bytes]):
    """An immutable, ordered mapping of option code to (concatenated) value bytes.

    PAD, END and option 52 never appear as keys: the codec handles them.  Build with
    :meth:`build` or :meth:`with_option`; decode through
    :func:`pxestack.wire.dhcp.decode_dhcp`.
    """

    __slots__ = ("by_code",)

    #: The option values by code, read-only by contract: the underlying dictionary itself,
    #: no copy and no call (the codec and the DHCP cores read it several times per packet;
    #: an attribute read costs a fraction of a method call).
    by_code: Mapping[int, bytes]

    def __init__(self, items: Mapping[int, bytes] | Iterable[tuple[int, bytes]] = ()) -> None:
        """Wrap raw ``code -> bytes`` items (copied; later changes to the source do not leak)."""
        self.by_code = checked = dict(items)
        for code, value in checked.items():
            if not 1 <= code <= 254:
                raise ApiMisuse(f"option code {code} cannot be carried as a value")
            if not isinstance(value, bytes):
                raise ApiMisuse(f"option {code}: value must be bytes")

    @classmethod
    def _trusted(cls, items: dict[int, bytes]) -> DhcpOptions:
        """Adopt a dict produced by the decoder without re-validating it (hot path)."""
        options = cls.__new__(cls)
        options.by_code = items
        return options

    def items_view(self) -> Mapping[int, bytes]:
        """The underlying mapping, read-only by contract: :attr:`by_code`."""
        return self.by_code

    @classmethod
    def build(cls, items: Mapping[int, OptionValue]) -> DhcpOptions:
        """Encode Python values by option code (see :data:`OPTION_FORMATS`); bytes pass as-is.

        Example: ``DhcpOptions.build({OPT_MESSAGE_TYPE: DHCPOFFER, OPT_LEASE_TIME: 3600,
        OPT_ROUTER: [IPv4Address("198.18.0.1")], OPT_BOOTFILE_NAME: "ipxe.efi"})``.
        """
        return cls((code, encode_option_value(code, value)) for code, value in items.items())

    def with_option(self, code: int, value: OptionValue) -> DhcpOptions:
        """A copy with option ``code`` set (replacing any value; position kept if present)."""
        items = dict(self.by_code)
        items[code] = encode_option_value(code, value)
        return DhcpOptions(items)

    def without(self, *codes: int) -> DhcpOptions:
        """A copy without the given option codes."""
        return DhcpOptions((k, v) for k, v in self.by_code.items() if k not in codes)

    # Mapping protocol

    def __getitem__(self, code: int) -> bytes:
        return self.by_code[code]

    def __iter__(self) -> Iterator[int]:
        return iter(self.by_code)

    def __len__(self) -> int:
        return len(self.by_code)

    def __contains__(self, code: object) -> bool:
        return code in self.by_code

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DhcpOptions):
            return self.by_code == other.by_code
        if isinstance(other, Mapping):
            return self.by_code == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self.by_code.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{code}: {value!r}" for code, value in self.by_code.items())
        return f"DhcpOptions({{{inner}}})"

    # Typed getters: None when absent, Invalid when present but malformed.

    def raw(self, code: int) -> bytes | None:
        """The value octets of ``code`` or None."""
        return self.by_code.get(code)

    def u8(self, code: int) -> int | None:
        """A one-octet unsigned value."""
        value = self.by_code.get(code)
        if value is None:
            return None
        _check_length(code, value, 1)
        return value[0]

    def u16(self, code: int) -> int | None:
        """A two-octet unsigned value in network order."""
        value = self.by_code.get(code)
        if value is None:
            return None
        _check_length(code, value, 2)
        return int(_U16.unpack(value)[0])

    def u32(self, code: int) -> int | None:
        """A four-octet unsigned value in network order."""
        value = self.by_code.get(code)
        if value is None:
            return None
        _check_length(code, value, 4)
        return int(_U32.unpack(value)[0])

    def ip(self, code: int) -> IPv4Address | None:
        """A single IPv4 address."""
        value = self.by_code.get(code)
        if value is None:
            return None
        if len(value) != 4:  # _check_length, inlined: options 50 and 54 of every REQUEST
            _check_length(code, value, 4)
        number = int.from_bytes(value, "big")
        address = _ADDRESSES.entries.get(number)  # ipv4_address's table, looked up inline
        return address if address is not None else ipv4_address(number)

    def ips(self, code: int) -> tuple[IPv4Address, ...] | None:
        """A non-empty list of IPv4 addresses (RFC 2132: length is a multiple of 4, >= 4)."""
        value = self.by_code.get(code)
        if value is None:
            return None
        if not value or len(value) % 4:
            raise Invalid(f"option {code} must be a non-empty multiple of 4 octets")
        return tuple(IPv4Address(value[i : i + 4]) for i in range(0, len(value), 4))

    def text(self, code: int) -> str | None:
        """A text option decoded as UTF-8.

        Trailing NULs are dropped: RFC 2132 §2 says options are not NUL-terminated, but some
        clients (Windows' option 12, several PXE ROMs' option 60) send one anyway.  Invalid
        UTF-8 raises :class:`~pxestack.errors.Invalid` (peer text is never trusted).
        """
        value = self.by_code.get(code)
        if value is None:
            return None
        try:
            return value.rstrip(b"\x00").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Invalid(f"option {code} is not UTF-8") from exc

    def u8_list(self, code: int) -> tuple[int, ...] | None:
        """A list of octets (option 55, RFC 2132 §9.8)."""
        value = self.by_code.get(code)
        return None if value is None else tuple(value)

    def u16_list(self, code: int) -> tuple[int, ...] | None:
        """A non-empty list of 16-bit values (option 93, RFC 4578 §2.1)."""
        value = self.by_code.get(code)
        if value is None:
            return None
        if not value or len(value) % 2:
            raise Invalid(f"option {code} must be a non-empty multiple of 2 octets")
        return tuple(int(n) for (n,) in struct.iter_unpack("!H", value))

    # Option-specific views

    def parameter_request_list(self) -> tuple[int, ...]:
        """Option 55 codes, first occurrence order, duplicates removed (bounded work)."""
        value = self.by_code.get(c.OPT_PARAMETER_REQUEST_LIST, b"")
        return tuple(dict.fromkeys(value))

    def client_architectures(self) -> tuple[int, ...] | None:
        """Option 93 (RFC 4578 §2.1): the client's architecture types, preferred first."""
        return self.u16_list(c.OPT_CLIENT_ARCH)

    def client_uuid(self) -> uuid.UUID | None:
        """Option 97 (RFC 4578 §2.3) as a UUID, read in SMBIOS byte order (``bytes_le``).

        A zero-length value returns None (see :mod:`pxestack.dhcp.client` for the firmware
        that sends it); any other length than 17, or a type octet other than 0, is Invalid.
        """
        value = self.by_code.get(c.OPT_CLIENT_UUID)
        if value is None or not value:
            return None
        if len(value) != 17 or value[0] != 0:
            raise Invalid("option 97 must be type 0 followed by 16 octets")
        return uuid.UUID(bytes_le=value[1:])

    def user_classes(self) -> tuple[bytes, ...]:
        """Option 77 in RFC 3004 or raw iPXE form (see :func:`decode_user_class`)."""
        value = self.by_code.get(c.OPT_USER_CLASS)
        return () if value is None else decode_user_class(value)

    def pxe_suboptions(self) -> dict[int, bytes] | None:
        """Option 43 decoded as PXE 2.1 §2.4 sub-options, or None when absent."""
        value = self.by_code.get(c.OPT_VENDOR_SPECIFIC)
        return None if value is None else decode_suboptions(value, what="option 43")

    def ipxe_suboptions(self) -> dict[int, bytes] | None:
        """Option 175 decoded as iPXE's encapsulated sub-options, or None when absent."""
        value = self.by_code.get(c.OPT_IPXE_ENCAP)
        return None if value is None else decode_suboptions(value, what="option 175")

    def relay_agent_suboptions(self) -> dict[int, bytes] | None:
        """Option 82 (RFC 3046 §2.0) sub-options; the raw option is what a reply echoes."""
        value = self.by_code.get(c.OPT_RELAY_AGENT_INFO)
        if value is None:
            return None
        return decode_suboptions(value, what="option 82", allow_pad_end=False)

    def domain_search(self) -> tuple[str, ...] | None:
        """Option 119 (RFC 3397) as domain names."""
        value = self.by_code.get(c.OPT_DOMAIN_SEARCH)
        return None if value is None else decode_domain_search(value)


__all__ = [
    "MAX_OPTION_LENGTH",
    "OPTION_FORMATS",
    "DhcpOptions",
    "OptionValue",
    "decode_domain_search",
    "decode_suboptions",
    "decode_user_class",
    "encode_client_uuid",
    "encode_domain_search",
    "encode_ips",
    "encode_option_value",
    "encode_suboptions",
    "encode_text",
    "encode_u8",
    "encode_u16",
    "encode_u32",
    "encode_user_class",
    "ipv4_address",
    "parse_option_area",
]
