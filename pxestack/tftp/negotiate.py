"""Pure TFTP option negotiation (RFC 2347, 2348, 2349, 7440).

:func:`negotiate` takes the options a client put in its request, what the server allows, and
the file's size if known, and returns the values the transfer will use plus the OACK to send.
It never raises on client input: RFC 2347 §2 lets a server ignore any option it does not
accept, so garbage, out-of-range and unknown options are simply left out of the OACK.

Rules, with the client behaviour each one serves:

* Only options the client asked for are acknowledged, in the client's order: some clients
  reject an OACK carrying an option they did not send (PyPXE#125/#128).  A request with no
  acceptable option gets no OACK at all, and the transfer starts with DATA 1 (RFC 2347 §3).
* A repeated option is read once (its first occurrence); later copies are ignored.
* ``blksize`` (RFC 2348 §2): 8..65464.  Larger requests are clamped to 65464, then to the
  configured maximum.  iPXE asks for 1432 and OVMF for 1468 (docs/reference/pxe-wire.md);
  many boot ROMs cannot reassemble IP fragments, so the default maximum (1468) keeps one
  block in one Ethernet frame.  Below 8 the option is ignored.  An OACK for blksize is sent
  even when no tsize was asked (tftpy PR#63: U-Boot needs it).
* ``tsize`` (RFC 2349 §4): on a read, answered with the real size only when it is known
  (dynamic content may not know it); on a write, the client's announced size is echoed.
* ``timeout`` (RFC 2349 §3): 1..255 seconds, echoed; other values are ignored.  tftp-hpa's
  ``utimeout`` extension is not supported and therefore ignored.
* ``windowsize`` (RFC 7440 §2): 1..65535, clamped to the configured maximum.  OVMF asks for 4,
  atftp for whatever its user sets.
* The encoded OACK always fits in 512 octets, the smallest buffer RFC 1350 lets a client
  have; options that would not fit are dropped from the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from pxestack.errors import ApiMisuse
from pxestack.wire.tftp import BLKSIZE_MAX, BLKSIZE_MIN, DEFAULT_BLKSIZE, Options

#: RFC 2349 §3: "Valid values range between 1 and 255 seconds, inclusive."
TIMEOUT_MIN = 1
TIMEOUT_MAX = 255
#: RFC 7440 §2: "Valid values range between 1 and 65535 blocks, inclusive."
WINDOWSIZE_MIN = 1
WINDOWSIZE_MAX = 65535
#: RFC 1350 §1 DATA size; an OACK must fit a client buffer of that size (2 octets opcode).
OACK_LIMIT = 512
# Decimal numbers longer than this are garbage (the largest value we accept has 5 digits;
# tsize may be up to 2**64).  Bounding the length bounds the cost of int().
_MAX_DIGITS = 20


@dataclass(frozen=True, slots=True)
class NegotiationLimits:
    """What the server allows; built from the ``tftp:`` config section.

    *allow_blksize* and *allow_windowsize* switch an option off entirely, for clients that
    ask for it and then misbehave (dnsmasq's ``tftp-no-blocksize``, tftp-hpa ``-r blksize``).
    """

    max_blksize: int = 1468
    max_windowsize: int = 16
    allow_blksize: bool = True
    allow_windowsize: bool = True
    allow_timeout: bool = True

    def __post_init__(self) -> None:
        if not BLKSIZE_MIN <= self.max_blksize <= BLKSIZE_MAX:
            raise ApiMisuse(f"max_blksize must be {BLKSIZE_MIN}..{BLKSIZE_MAX}")
        if not WINDOWSIZE_MIN <= self.max_windowsize <= WINDOWSIZE_MAX:
            raise ApiMisuse(f"max_windowsize must be {WINDOWSIZE_MIN}..{WINDOWSIZE_MAX}")


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome: the values the transfer uses and the OACK options (empty: no OACK)."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    #: The client's retransmission timeout in seconds, when it asked and we agreed.
    timeout: int | None = None
    #: The size reported in (read) or announced by the client for (write) the OACK.
    tsize: int | None = None
    oack: Options = ()


def _number(text: str) -> int | None:
    """A plain non-negative decimal, or None (signs, spaces, hex and overlong are garbage)."""
    if not text or len(text) > _MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def negotiate(
    requested: Options,
    *,
    limits: NegotiationLimits,
    file_size: int | None = None,
    write: bool = False,
) -> Negotiated:
    """Decide the transfer options for a request carrying *requested* (see module doc).

    *file_size* is the size of the file being read, when known.  *write* is true for a
    WRQ, where tsize is the client's announcement rather than a question.
    """
    seen: set[str] = set()
    blksize = DEFAULT_BLKSIZE
    windowsize = 1
    timeout: int | None = None
    tsize: int | None = None
    oack: list[tuple[str, str]] = []
    for name, raw in requested:
        if name in seen:
            continue
        seen.add(name)
        value = _number(raw)
        if value is None:
            continue
        if name == "blksize" and limits.allow_blksize and value >= BLKSIZE_MIN:
            blksize = min(value, BLKSIZE_MAX, limits.max_blksize)
            oack.append((name, str(blksize)))
        elif name == "tsize":
            size = value if write else file_size
            if size is not None:
                tsize = size
                oack.append((name, str(size)))
        elif name == "timeout" and limits.allow_timeout and TIMEOUT_MIN <= value <= TIMEOUT_MAX:
            timeout = value
            oack.append((name, str(value)))
        elif name == "windowsize" and limits.allow_windowsize and value >= WINDOWSIZE_MIN:
            windowsize = min(value, WINDOWSIZE_MAX, limits.max_windowsize)
            oack.append((name, str(windowsize)))
    while oack and _oack_length(oack) > OACK_LIMIT:
        # Cannot happen with the four options above (their names and values are short),
        # but the bound is part of the contract, so enforce it rather than assume it.
        name, _ = oack.pop()
        if name == "blksize":
            blksize = DEFAULT_BLKSIZE
        elif name == "windowsize":
            windowsize = 1
        elif name == "timeout":
            timeout = None
        elif name == "tsize":
            tsize = None
    return Negotiated(
        blksize=blksize, windowsize=windowsize, timeout=timeout, tsize=tsize, oack=tuple(oack)
    )


def _oack_length(options: list[tuple[str, str]]) -> int:
    return 2 + sum(len(name) + len(value) + 2 for name, value in options)


__all__ = [
    "OACK_LIMIT",
    "TIMEOUT_MAX",
    "TIMEOUT_MIN",
    "WINDOWSIZE_MAX",
    "WINDOWSIZE_MIN",
    "Negotiated",
    "NegotiationLimits",
    "negotiate",
]
