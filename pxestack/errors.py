"""Exception hierarchy.

Errors say whose fault they are, as h11 does with ``RemoteProtocolError`` and
``LocalProtocolError``:

* :class:`MalformedPacket` (and its subclasses): the peer sent bytes we cannot accept.
  Protocol adapters catch exactly this, log it and drop the datagram.
* :class:`ApiMisuse`: the calling code used an API wrongly; a bug in the caller.
* :class:`ConfigError`: the operator's configuration is wrong; it carries every problem found.
"""

from __future__ import annotations

from collections.abc import Sequence


class PxeStackError(Exception):
    """Base class of every exception pxestack raises on purpose."""


class MalformedPacket(PxeStackError):  # noqa: N818 - the protocol term reads better
    """A datagram from the network could not be decoded; the peer's fault."""


class Truncated(MalformedPacket):
    """The datagram ended before a field or option it announced."""


class Invalid(MalformedPacket):
    """A field holds a value the protocol does not allow."""


class ApiMisuse(PxeStackError):  # noqa: N818
    """The calling code broke an API contract (for example encoding an impossible value)."""


class ConfigProblem:
    """One configuration mistake: the key path and what was wrong with the value there."""

    __slots__ = ("message", "path")

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def __repr__(self) -> str:
        return f"ConfigProblem({self.path!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ConfigProblem)
            and (self.path, self.message) == (other.path, other.message)
        )

    def __hash__(self) -> int:
        return hash((self.path, self.message))


class ConfigError(PxeStackError):
    """The configuration has one or more problems; :attr:`problems` lists every one."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


__all__ = [
    "ApiMisuse",
    "ConfigError",
    "ConfigProblem",
    "Invalid",
    "MalformedPacket",
    "PxeStackError",
    "Truncated",
]
