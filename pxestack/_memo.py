"""The one bounded memo of pxestack's hot paths.

A DHCP server in a boot storm sees the same few values over and over (firmware models,
relays, boot answers, addresses), so its hot path remembers answers; a peer can also send
endless distinct values, so no memory may grow without bound.  :class:`BoundedMemo` is
the one helper for that: a dictionary that holds at most ``capacity`` answers and forgets
all of them when full (a steady state refills it in a few packets, and emptying costs
nothing per hit, unlike keeping an LRU order).  The DHCP server core owns its memos
(:class:`~pxestack.dhcp.fastpath.FastPath`); the codec's table of shared addresses
(:func:`~pxestack.wire.dhcp_options.ipv4_address`) and the adapter's address texts use it
too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class BoundedMemo(Generic[_K, _V]):
    """A dictionary of at most *capacity* remembered answers, emptied when full.

    ``get(key)`` is the dictionary's own lookup (None when absent); :meth:`put` stores and
    returns the value.  A capacity of 0 remembers nothing.
    """

    __slots__ = ("_entries", "capacity", "get")

    def __init__(self, capacity: int) -> None:
        self._entries: dict[_K, _V] = {}
        self.capacity = capacity
        #: The lookup, bound once: a hit costs one C call.
        self.get: Callable[[_K], _V | None] = self._entries.get

    def put(self, key: _K, value: _V) -> _V:
        """Remember *value* under *key* (forgetting everything first when full)."""
        entries = self._entries
        if len(entries) >= self.capacity:
            entries.clear()
            if not self.capacity:
                return value
        entries[key] = value
        return value

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["BoundedMemo"]
