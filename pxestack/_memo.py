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

from collections.abc import Hashable
from typing import TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class BoundedMemo(dict[_K, _V]):
    """A dictionary of at most :attr:`capacity` remembered answers, emptied when full.

    Read it as a dictionary (``get(key)`` is None when absent); store only through
    :meth:`put`, which keeps the bound.  A capacity of 0 remembers nothing.  It is a
    ``dict`` subclass rather than a wrapper so that a lookup is the dictionary's own method
    call, which CPython specialises (the memos are read several times per packet).
    """

    __slots__ = ("capacity",)

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def put(self, key: _K, value: _V) -> _V:
        """Remember *value* under *key* (forgetting everything first when full)."""
        if len(self) >= self.capacity:
            self.clear()
            if not self.capacity:
                return value
        self[key] = value
        return value


__all__ = ["BoundedMemo"]
