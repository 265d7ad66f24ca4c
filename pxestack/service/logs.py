"""What pxestack's log looks like: the text and JSON observers and the level filter.

Three things are decided here, for ``pxestack serve``, the quick-mode subcommands and the
TFTP worker processes alike:

* **JSON lines an operator's tools can read** (:class:`JsonLineObserver`): one object per
  event with the message already rendered (``message``), the time in ISO 8601 UTC, the
  level and the logger's namespace, and every field of the event as a flat key of its own
  (``serial``, ``client``, ``actor``, ...).  twisted.logger's own JSON format
  (``jsonFileLogObserver``) is a serialisation for reloading events into Twisted: it keeps
  the unrendered template, nests the level as an object and repeats every field under
  ``log_flattened``, which a log shipper cannot use.
* **No Twisted chatter at info level** (:func:`is_twisted_chatter`): Twisted announces every
  port and protocol it starts or stops ("Starting protocol <... object at 0x...>",
  "DhcpServerProtocol starting on 6767", "(UDP Port 6767 Closed)").  pxestack says the same
  once, in words ("listening on udp 127.0.0.1:6767"), so those lines are shown only at
  ``log_level: debug``.
* **The level filter** (:func:`level_filter`): events below the configured level are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

#: ``log_level`` settings by name.
LEVELS: Mapping[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

#: What Twisted logs through its legacy ``log.msg`` when a port or a protocol starts or
#: stops.  Only legacy events are matched, so a pxestack message never is.
_CHATTER = re.compile(
    r"(?:Starting|Stopping) (?:protocol|factory) <.*>"
    r"|\S+ starting on \d+"
    r"|\((?:TCP|UDP|Unix) Port \S+ Closed\)"
)
#: Keys of an event from Twisted's legacy log system that are not fields of its message.
_LEGACY_KEYS = frozenset({"message", "system", "time", "isError", "format", "why", "failure"})
#: The keys :class:`JsonLineObserver` writes itself; a field of that name gets a ``_``.
_OWN_KEYS = ("time", "level", "namespace", "message")
#: The most characters of one field value in a JSON line (a field is a name, an address, a
#: path; anything longer is cut, so one event cannot make a line of unbounded length).
FIELD_CHARS_MAX = 2000


def is_twisted_chatter(event: Mapping[str, Any]) -> bool:
    """True for Twisted's own start/stop announcements of ports and protocols."""
    if event.get("log_namespace") != "log_legacy":
        return False
    text = event.get("log_text")
    if not isinstance(text, str):
        message = event.get("message")
        text = " ".join(str(part) for part in message) if isinstance(message, tuple) else ""
    return _CHATTER.fullmatch(text) is not None


@implementer(ILogFilterPredicate)
class _LevelPredicate:
    """Drops events below *level*, and Twisted's chatter unless *level* is debug."""

    def __init__(self, level: LogLevel) -> None:
        self._by_level = LogLevelFilterPredicate(defaultLogLevel=level)
        self._chatter_shown = level <= LogLevel.debug

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        if not self._chatter_shown and is_twisted_chatter(event):
            return cast(PredicateResult, PredicateResult.no)
        return cast(PredicateResult, self._by_level(event))  # untyped in twisted.logger


def level_filter(level: str) -> ILogFilterPredicate:
    """The predicate of ``log_level: <level>`` (``debug``, ``info``, ``warn``, ``error``)."""
    return _LevelPredicate(LEVELS[level])


def _field_value(value: Any) -> Any:
    """*value* as JSON: numbers, booleans, None and short text as they are, the rest as
    their text (an address, a path, an enum member)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif isinstance(value, list | tuple) and all(isinstance(v, str | int) for v in value):
        return [_field_value(v) for v in value[:64]]
    text = value if isinstance(value, str) else str(getattr(value, "value", value))
    return text if len(text) <= FIELD_CHARS_MAX else text[:FIELD_CHARS_MAX] + "..."


def json_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object of one event: ``time``, ``level``, ``namespace``, the rendered
    ``message`` (with the traceback of a failure in ``traceback``), then the event's fields."""
    out: dict[str, Any] = {}
    legacy = event.get("log_namespace") == "log_legacy"
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        out[f"{key}_" if key in _OWN_KEYS else key] = _field_value(value)
    when = event.get("log_time")
    level = event.get("log_level")
    head: dict[str, Any] = {
        "time": (datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
                 if isinstance(when, int | float) else None),
        "level": str(getattr(level, "name", "info")),
        "namespace": str(event.get("log_namespace", "-")),
        "message": formatEvent(dict(event)),
    }
    system = event.get("log_system")
    if isinstance(system, str) and system != "-":
        head["system"] = system
    failure = event.get("log_failure")
    if failure is not None:
        try:
            head["traceback"] = failure.getTraceback()
        except Exception:
            head["traceback"] = repr(failure)
    return {**head, **out}


@implementer(ILogObserver)
class JsonLineObserver:
    """Writes each event to *stream* as one JSON object and a newline (:func:`json_fields`)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(json_fields(event), ensure_ascii=False, default=str)
        self._stream.write(line + "\n")
        self._stream.flush()


def make_observer(log_format: str, level: str, stream: IO[str]) -> ILogObserver:
    """A text or JSON (``log_format``) observer on *stream* that keeps events at or above
    *level*, without Twisted's chatter unless *level* is ``debug``."""
    observer: ILogObserver = (
        JsonLineObserver(stream) if log_format == "json" else textFileLogObserver(stream)
    )
    return FilteringLogObserver(observer, [level_filter(level)])


__all__ = [
    "FIELD_CHARS_MAX",
    "LEVELS",
    "JsonLineObserver",
    "is_twisted_chatter",
    "json_fields",
    "level_filter",
    "make_observer",
]
