"""A small validation toolkit for the YAML configuration.

:class:`Section` wraps one mapping from ``yaml.safe_load`` together with its key path.  Every
getter checks one key, records a :class:`~pxestack.errors.ConfigProblem` when the value is
wrong (and returns the default so that reading can go on), and remembers which keys were
read.  :meth:`Section.finish` then reports every key nobody asked for as unknown.  The result
is smee's ``wrapNonNil`` idea: one pass finds *all* mistakes, each named by its path, e.g.
``dhcp.pools[0].start: '10.0.0.300' is not an IPv4 address``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from pxestack.errors import ConfigProblem

T = TypeVar("T")

_MISSING: Any = object()


def _show(value: object) -> str:
    """Render a YAML value for an error message: strings quoted, the rest as Python shows it."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    return repr(value)


def parse_listen(text: str, default_host: str | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (or ``:PORT`` / ``PORT`` when *default_host* is given).

    Raises :class:`ValueError` with a message suitable for an operator.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if not host:
        if default_host is None:
            raise ValueError("expected HOST:PORT")
        host = default_host
    try:
        IPv4Address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv4 address") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


class Section:
    """A mapping at a key path, read with typed getters that collect problems."""

    def __init__(
        self,
        data: object,
        path: str,
        problems: list[ConfigProblem],
        base_dir: Path,
    ) -> None:
        self.where = path
        self.problems = problems
        self.base_dir = base_dir
        self._read: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.problem("", f"expected a mapping, got {_show(data)}")
            data = {}
        self._data: Mapping[object, object] = data

    # -- bookkeeping -------------------------------------------------------------------

    def key_path(self, key: str) -> str:
        """The dotted path of *key* inside this section."""
        return f"{self.where}.{key}" if self.where else key

    def problem(self, key: str, message: str) -> None:
        """Record a problem at *key* (or at the section itself when *key* is empty)."""
        self.problems.append(ConfigProblem(self.key_path(key) if key else self.where, message))

    def has(self, key: str) -> bool:
        """Whether *key* is present (marks it as known)."""
        self._read.add(key)
        return key in self._data

    def raw(self, key: str, default: object = None) -> object:
        """The untyped value at *key*, or *default*; marks the key as known."""
        self._read.add(key)
        return self._data.get(key, default)

    def finish(self) -> None:
        """Report every key that no getter asked for as unknown."""
        for key in self._data:
            if not isinstance(key, str):
                self.problems.append(ConfigProblem(self.where, f"key {_show(key)} is not a string"))
            elif key not in self._read:
                self.problem(key, "unknown key")

    # -- typed getters -----------------------------------------------------------------

    def _get(
        self,
        key: str,
        default: T,
        convert: Callable[[object], T],
        required: bool = False,
    ) -> T:
        self._read.add(key)
        if key not in self._data or self._data[key] is None:
            if required:
                self.problem(key, "is required")
            return default
        value = self._data[key]
        try:
            return convert(value)
        except ValueError as exc:
            self.problem(key, f"{_show(value)} {exc}")
            return default

    def str(self, key: str, default: Any = _MISSING, choices: Iterable[str] | None = None) -> Any:
        """A string; with *choices*, one of them."""
        allowed = tuple(choices) if choices is not None else None

        def convert(value: object) -> str:
            if not isinstance(value, str):
                raise ValueError("is not a string")
            if allowed is not None and value not in allowed:
                raise ValueError("is not one of " + ", ".join(allowed))
            return value

        return self._get(key, None if default is _MISSING else default, convert,
                         required=default is _MISSING)

    def int(
        self,
        key: str,
        default: Any = _MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        """An integer within [*minimum*, *maximum*]."""

        def convert(value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("is not an integer")
            if minimum is not None and value < minimum:
                raise ValueError(f"is below the minimum {minimum}")
            if maximum is not None and value > maximum:
                raise ValueError(f"is above the maximum {maximum}")
            return value

        return self._get(key, None if default is _MISSING else default, convert,
                         required=default is _MISSING)

    def float(self, key: str, default: Any = _MISSING, minimum: float | None = None) -> Any:
        """A number (int or float) of at least *minimum*."""

        def convert(value: object) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("is not a number")
            if minimum is not None and value < minimum:
                raise ValueError(f"is below the minimum {minimum}")
            return float(value)

        return self._get(key, None if default is _MISSING else default, convert,
                         required=default is _MISSING)

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        """A YAML boolean (``true``/``false``; strings are refused)."""

        def convert(value: object) -> bool:
            if not isinstance(value, bool):
                raise ValueError("is not true or false")
            return value

        return self._get(key, None if default is _MISSING else default, convert,
                         required=default is _MISSING)

    def ipv4(self, key: str, default: Any = _MISSING) -> Any:
        """An IPv4 address."""
        return self._get(key, None if default is _MISSING else default, to_ipv4,
                         required=default is _MISSING)

    def ipv4_network(self, key: str, default: Any = _MISSING) -> Any:
        """An IPv4 network in CIDR form (host bits must be zero)."""

        def convert(value: object) -> IPv4Network:
            if not isinstance(value, str):
                raise ValueError("is not a CIDR network such as 198.18.0.0/15")
            try:
                return IPv4Network(value)
            except ValueError:
                raise ValueError("is not a CIDR network such as 198.18.0.0/15") from None

        return self._get(key, None if default is _MISSING else default, convert,
                         required=default is _MISSING)

    def ipv4_list(self, key: str, default: Any = ()) -> Any:
        """A list of IPv4 addresses (a single address is accepted as a list of one)."""
        self._read.add(key)
        value = self._data.get(key)
        if value is None:
            return tuple(default)
        items = value if isinstance(value, list) else [value]
        out: list[IPv4Address] = []
        for index, item in enumerate(items):
            try:
                out.append(to_ipv4(item))
            except ValueError as exc:
                self.problem(f"{key}[{index}]", f"{_show(item)} {exc}")
        return tuple(out)

    def str_list(self, key: str, default: Any = ()) -> Any:
        """A list of strings (a single string is accepted as a list of one)."""
        self._read.add(key)
        value = self._data.get(key)
        if value is None:
            return tuple(default)
        items = value if isinstance(value, list) else [value]
        out: list[str] = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                out.append(item)
            else:
                self.problem(f"{key}[{index}]", f"{_show(item)} is not a string")
        return tuple(out)

    def path(self, key: str, default: Any = _MISSING) -> Any:
        """A filesystem path; relative paths are taken from the config file's directory."""

        def convert(value: object) -> Path:
            if not isinstance(value, str) or not value or "\0" in value:
                raise ValueError("is not a path")
            path = Path(value).expanduser()
            return path if path.is_absolute() else self.base_dir / path

        if default is not _MISSING and isinstance(default, str):
            default = convert(default)
        return self._get(key, None if default is _MISSING else default, convert,
                         required=default is _MISSING)

    def listen(self, key: str, default: Any = _MISSING) -> Any:
        """A listening address ``HOST:PORT`` as a ``(host, port)`` tuple."""

        def convert(value: object) -> tuple[str, int]:
            if isinstance(value, int) and not isinstance(value, bool):
                value = f"0.0.0.0:{value}"
            if not isinstance(value, str):
                raise ValueError("is not HOST:PORT")
            return parse_listen(value, default_host="0.0.0.0")

        return self._get(key, None if default is _MISSING else default, convert,
                         required=default is _MISSING)

    def mapping(self, key: str) -> Section:
        """The nested mapping at *key* (an empty one when absent)."""
        self._read.add(key)
        return Section(self._data.get(key), self.key_path(key), self.problems, self.base_dir)

    def sections(self, key: str) -> list[Section]:
        """The list of mappings at *key*, each as a :class:`Section` named ``key[i]``."""
        self._read.add(key)
        value = self._data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(key, f"expected a list, got {_show(value)}")
            return []
        return [
            Section(item, f"{self.key_path(key)}[{index}]", self.problems, self.base_dir)
            for index, item in enumerate(value)
        ]


def to_ipv4(value: object) -> IPv4Address:
    """Convert a YAML scalar to an IPv4 address or raise ``ValueError('is not ...')``."""
    if not isinstance(value, str):
        raise ValueError("is not an IPv4 address")
    try:
        return IPv4Address(value)
    except ValueError:
        raise ValueError("is not an IPv4 address") from None


__all__ = ["Section", "parse_listen", "to_ipv4"]
