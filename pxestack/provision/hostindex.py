"""An in-memory index of host records whose enrolment questions cost the same at any size.

An enrolment decision needs every host on record: how many hosts hold each profile, which
addresses are taken, which MACs are known, how many machines wait for approval.  Asking a
list of 10 000 hosts those questions on every enrolment makes a boot storm of N machines
cost N²; :class:`HostIndex` keeps the answers current as records are put and dropped, so
each question costs the same with 100 hosts as with 10 000.

It is a :class:`~collections.abc.Sequence` of :class:`~pxestack.provision.model.Host` too,
so a decision written for a plain list of hosts still works on it; the enrolment functions
of :mod:`pxestack.provision.assign` use its counts when they are given an index.  It is not
thread-safe: the store that owns it changes and reads it under its own lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from ipaddress import IPv4Address
from typing import TypeVar, overload

from pxestack.provision.model import Host, HostState

_K = TypeVar("_K")


class HostIndex(Sequence[Host]):
    """Hosts by serial with profile, state, address and MAC counts kept current."""

    def __init__(self, hosts: Iterable[Host] = ()) -> None:
        self._hosts: dict[str, Host] = {}
        self._profiles: Counter[str] = Counter()
        self._states: Counter[HostState] = Counter()
        self._addresses: Counter[int] = Counter()
        #: MAC -> serials holding it (more than one only after a hand edit).
        self._macs: dict[str, dict[str, None]] = {}
        self._list: list[Host] | None = None
        #: Per address range start: every address from the start up to (not including)
        #: this number was taken when last looked; the next search starts here.
        self._cursors: dict[int, int] = {}
        for host in hosts:
            self.put(host)

    # -- changes ---------------------------------------------------------------------------

    def put(self, host: Host) -> None:
        """Record *host*, replacing the record of the same serial."""
        old = self._hosts.get(host.serial)
        if old is host:
            return
        if old is not None:
            self._forget(old)
        self._hosts[host.serial] = host
        self._list = None
        if host.profile:
            self._profiles[host.profile] += 1
        self._states[host.state] += 1
        if host.internal_addr is not None:
            self._addresses[int(host.internal_addr)] += 1
        for mac in host.mac_addresses:
            self._macs.setdefault(mac, {})[host.serial] = None

    def discard(self, serial: str) -> Host | None:
        """Forget *serial*'s record; returns it, or ``None`` when there was none."""
        old = self._hosts.pop(serial, None)
        if old is not None:
            self._list = None
            self._forget(old)
        return old

    def _forget(self, host: Host) -> None:
        if host.profile:
            _decrement(self._profiles, host.profile)
        _decrement(self._states, host.state)
        if host.internal_addr is not None:
            number = int(host.internal_addr)
            _decrement(self._addresses, number)
            if number not in self._addresses:
                for start, cursor in self._cursors.items():
                    if start <= number < cursor:
                        self._cursors[start] = number
        for mac in host.mac_addresses:
            owners = self._macs.get(mac)
            if owners is not None:
                owners.pop(host.serial, None)
                if not owners:
                    del self._macs[mac]

    # -- questions -------------------------------------------------------------------------

    def get(self, serial: str) -> Host | None:
        """The record of *serial*, or ``None``."""
        return self._hosts.get(serial)

    def serials(self) -> set[str]:
        """Every serial on record (a copy)."""
        return set(self._hosts)

    def profile_counts(self) -> Counter[str]:
        """How many hosts hold each profile (a copy; empty profiles are not counted)."""
        return Counter(self._profiles)

    def count_state(self, state: HostState) -> int:
        """How many hosts are in *state*."""
        return self._states[state]

    def address_taken(self, address: IPv4Address) -> bool:
        """Whether a host on record has *address* as its internal address."""
        return int(address) in self._addresses

    def address_owner(self, address: IPv4Address) -> str | None:
        """A serial of a host with internal address *address* (``None`` if free).

        Costs one pass over the hosts; only operator requests ask it, never enrolment.
        """
        if int(address) not in self._addresses:
            return None
        for host in self._hosts.values():
            if host.internal_addr == address:
                return host.serial
        return None

    def mac_owner(self, mac: str) -> str | None:
        """A serial of a host listing *mac* (the first recorded when several do)."""
        owners = self._macs.get(mac)
        return next(iter(owners)) if owners else None

    def lowest_free_address(self, start: int, end: int) -> int | None:
        """The lowest number in ``start..end`` no host has (multicast skipped), or ``None``.

        A cursor per range start remembers where the taken run from *start* ended, so a
        range filled in order is not searched from its start again on every enrolment; a
        dropped record below the cursor moves the cursor back.
        """
        number = max(start, self._cursors.get(start, start))
        taken = self._addresses
        while number <= end:
            if number not in taken and not IPv4Address(number).is_multicast:
                self._cursors[start] = number
                return number
            number += 1
        self._cursors[start] = number
        return None

    # -- Sequence --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._hosts)

    def __iter__(self) -> Iterator[Host]:
        return iter(list(self._hosts.values()))

    def __contains__(self, value: object) -> bool:
        return isinstance(value, Host) and self._hosts.get(value.serial) == value

    @overload
    def __getitem__(self, index: int) -> Host: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Host]: ...

    def __getitem__(self, index: int | slice) -> Host | Sequence[Host]:
        if self._list is None:
            self._list = list(self._hosts.values())
        return self._list[index]


def _decrement(counter: Counter[_K], key: _K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


__all__ = ["HostIndex"]
