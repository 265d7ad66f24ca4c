"""The one bounded memo of pxestack's hot paths.

A DHCP server in a boot storm sees the same few values over and over (firmware models,
relays, boot answers, addresses), so its hot path remembers answers; a peer can also send
endless distinct values, so no memory may grow without bound.  :class:`BoundedMemo` is
the one helper for that: a dictionary of at most ``capacity`` answers and forgets
all of them when full (a steady state refills it in a few packets, and emptying costs
nothing per hit, unlike keeping an LRU order).  The DHCP server core owns its memos
(:class:`~pxestack.dhcp.fastpath.FastPath`); the codec's table of shared addresses
(:func:`~pxestack.wire.dhcp_options.ipv4_address`) and the adapter's address texts use it
too.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class BoundedMemo(Generic[_K, _V]):
    """At most :attr:`capacity` remembered answers, all forgotten when full.

    Read :attr:`entries`, a plain dictionary (``memo.entries.get(key)`` is None when
    absent); store only through :meth:`put`, which keeps the bound.  A capacity of 0
    remembers nothing.  The memo holds a dictionary rather than being a ``dict`` subclass
    because CPython specialises a method call such as ``get`` only on an exact ``dict``:
    on a subclass every lookup takes the generic call path, and the memos are read
    several times per packet.
    """

    __slots__ = ("capacity", "entries")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[_K, _V] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: _K) -> _V | None:
        """The answer remembered under *key*, or None (hot paths read :attr:`entries`)."""
        return self.entries.get(key)

    def put(self, key: _K, value: _V) -> _V:
        """Remember *value* under *key* (forgetting everything first when full)."""
        entries = self.entries
        if len(entries) >= self.capacity:
            entries.clear()
            if not self.capacity:
                return value
        entries[key] = value
        return value


__all__ = ["BoundedMemo"]
