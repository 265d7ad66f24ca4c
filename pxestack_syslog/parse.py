"""Syslog messages: RFC 5424 and the older BSD format (RFC 3164), TCP framing (RFC 6587),
and the kernel's netconsole datagrams.

Pure functions over bytes, no I/O.  Everything from the network is checked: a message whose
priority is missing or out of range is refused (None); text is decoded as UTF-8 with
replacement and stripped of control characters by the recorder.

netconsole (the kernel's ``Documentation/networking/netconsole.rst``) sends console output
over UDP without any syslog header: the plain form is the console's text, one kernel record
per datagram, ``[    5.123456] `` in front when the kernel prints times; the extended form
(``netconsole=+...``) is ``<level>,<sequence>,<microseconds>,<flags>;<text>`` as in
``/dev/kmsg``, possibly followed by `` KEY=value`` continuation lines.
:func:`parse_netconsole` reads both; a datagram that is not valid UTF-8 text, or that holds
control characters other than line ends and tabs, is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

_PRI = re.compile(rb"<([0-9]{1,3})>")
# RFC 3164 §4.1.2: "Mmm dd hh:mm:ss" (the day space-padded).
_BSD_TIME = re.compile(
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} ")
_TAG = re.compile(r"([!-9;-~]{1,48}?)(\[[0-9A-Za-z._-]{1,32}\])?: ?")


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    """One parsed message."""

    facility: int
    severity: int
    #: ``rfc5424``, ``rfc3164`` or ``netconsole``.
    format: str
    hostname: str
    app: str
    text: str

    @property
    def severity_name(self) -> str:
        """``err``, ``info``, ..."""
        return SEVERITIES[self.severity]

    def line(self) -> str:
        """The message as the timeline shows it: ``severity app: text``."""
        app = f"{self.app}: " if self.app else ""
        return f"{self.severity_name} {app}{self.text}"


def _field(parts: list[str], index: int) -> str:
    value = parts[index] if index < len(parts) else "-"
    return "" if value == "-" else value


def _skip_structured_data(rest: str) -> str:
    """*rest* after the STRUCTURED-DATA field (``-`` or ``[...]...``), honouring escapes."""
    if rest.startswith("-"):
        return rest[1:].removeprefix(" ")
    index, depth, escaped = 0, 0, False
    while index < len(rest):
        ch = rest[index]
        if depth == 0 and ch != "[":
            break
        if escaped:
            escaped = False
        elif ch == "\\" and depth:
            escaped = True
        elif ch == "[" and depth == 0:
            depth = 1
        elif ch == "]" and depth:
            depth = 0
        index += 1
    return rest[index:].removeprefix(" ")


def parse_message(data: bytes) -> SyslogMessage | None:
    """Parse one message (without TCP framing); None when it has no valid ``<PRI>``."""
    data = data.rstrip(b"\r\n\0")
    match = _PRI.match(data)
    if match is None:
        return None
    pri = int(match.group(1))
    if pri > 191 or (len(match.group(1)) > 1 and match.group(1).startswith(b"0")):
        return None
    facility, severity = divmod(pri, 8)
    text = data[match.end():].decode("utf-8", "replace")
    if text.startswith("1 "):
        # RFC 5424 §6: VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD
        parts = text.split(" ", 6)
        if len(parts) >= 7:
            msg = _skip_structured_data(parts[6]).removeprefix("\ufeff")
            return SyslogMessage(facility, severity, "rfc5424", _field(parts, 2)[:255],
                                 _field(parts, 3)[:48], msg)
        return SyslogMessage(facility, severity, "rfc5424", _field(parts, 2)[:255],
                             _field(parts, 3)[:48], "")
    hostname = ""
    time = _BSD_TIME.match(text)
    if time is not None:
        text = text[time.end():]
        host, sep, rest = text.partition(" ")
        # The HOSTNAME field is optional in what BSD senders really send: a word ending
        # in ':' (or with a "[pid]") is the tag, not a host.
        if sep and host and not host.endswith(":") and "[" not in host:
            hostname, text = host[:255], rest
    tag = _TAG.match(text)
    app = ""
    if tag is not None:
        app, text = tag.group(1), text[tag.end():]
    return SyslogMessage(facility, severity, "rfc3164", hostname, app, text)


_KERNEL_TIME = re.compile(r"\[ *[0-9]{1,10}\.[0-9]{1,9}\] ?")
_EXTENDED = re.compile(r"([0-9]{1,3}),[0-9]{1,20},[0-9]{1,20},[^;,]{0,8}(?:,[^;]{0,64})?;")
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: The kernel's ``LOG_KERN`` facility and a plain line's severity (``info``: the console
#: does not send the record's level).
KERNEL_FACILITY = 0
PLAIN_SEVERITY = 6
#: Lines kept from one datagram (a console record is one line; a few are tolerated).
MAX_NETCONSOLE_LINES = 8


def parse_netconsole(data: bytes) -> list[SyslogMessage]:
    """The kernel console lines of one netconsole datagram (plain or extended form); an
    empty list when it is not text (binary, control characters, blank)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return []
    text = text.replace("\r\n", "\n").rstrip("\n")
    if not text.strip() or _NOT_TEXT.search(text):
        return []
    severity = PLAIN_SEVERITY
    fmt = "netconsole"
    extended = _EXTENDED.match(text)
    if extended is not None:
        severity = int(extended.group(1)) & 7
        # Continuation lines (`` KEY=value``: the device a driver message is about) are
        # metadata, not text.
        body = text[extended.end():].split("\n", 1)[0]
        lines = [body]
    else:
        lines = text.split("\n")
    found = []
    for line in lines[:MAX_NETCONSOLE_LINES]:
        stamp = _KERNEL_TIME.match(line)
        line = (line[stamp.end():] if stamp is not None else line).strip()
        if line:
            found.append(SyslogMessage(KERNEL_FACILITY, severity, fmt, "", "kernel", line))
    return found


class FrameError(ValueError):
    """A TCP stream that breaks the framing or the size limit: close the connection."""


class Framer:
    """Splits a TCP syslog stream into messages (RFC 6587 §3.4): octet counting
    (``LEN SP MSG``) or non-transparent framing (messages ending in LF or NUL), detected
    per message.  A frame longer than *max_bytes* raises :class:`FrameError`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add *data*; return every complete message."""
        self._buffer += data
        found: list[bytes] = []
        while self._buffer:
            first = self._buffer[:1]
            if first.isdigit():
                space = self._buffer.find(b" ", 0, 8)
                if space < 0:
                    if len(self._buffer) >= 8:
                        raise FrameError("an octet count longer than 7 digits")
                    break
                count_text = self._buffer[:space]
                if not count_text.isdigit() or count_text.startswith(b"0"):
                    raise FrameError("a bad octet count")
                count = int(count_text)
                if count > self.max_bytes:
                    raise FrameError(f"a message of {count} bytes (limit {self.max_bytes})")
                end = space + 1 + count
                if len(self._buffer) < end:
                    break
                found.append(self._buffer[space + 1:end])
                self._buffer = self._buffer[end:]
                continue
            if first in (b"\n", b"\r", b"\0", b" "):
                self._buffer = self._buffer[1:]
                continue
            cut = min((i for i in (self._buffer.find(b"\n"), self._buffer.find(b"\0"))
                       if i >= 0), default=-1)
            if cut < 0:
                if len(self._buffer) > self.max_bytes:
                    raise FrameError(f"a line longer than {self.max_bytes} bytes")
                break
            if cut > self.max_bytes:
                raise FrameError(f"a line longer than {self.max_bytes} bytes")
            found.append(self._buffer[:cut])
            self._buffer = self._buffer[cut + 1:]
        return found


__all__ = ["SEVERITIES", "FrameError", "Framer", "SyslogMessage", "parse_message",
           "parse_netconsole"]
