"""One observer of host-store changes: every enrolment and change of ``State``, told once.

:class:`ObservedHostStore` wraps the provisioning layer's host store by delegation and turns
what the store did into :class:`HostChange` values, handed to each observer in turn:

* :meth:`pxestack.metrics.Metrics.host_changed` times the boot phases;
* :func:`boot_steps` feeds the dashboard's timeline (a
  :class:`~pxestack.bootevents.BootEventRecorder`);
* :func:`log_host_change` writes the info line an operator reads.

All three read the same value, so they agree on what happened.  In particular there is
one rule for *enrolled* (:attr:`HostChange.enrolled`): a machine is enrolled when its record
first holds a state other than ``pending``.  Under ``provision.enrolment: open`` or
``dhcp-seen`` that is its first contact; under ``approve`` the first contact records it as
``pending`` (it waits for an operator and gets neither address nor profile) and the
approval enrols it.

The store is typed structurally (:class:`ObservableStore`, :class:`HostRecord`): this
package sits below :mod:`pxestack.provision` and must not import it, and the provisioning
store's own types satisfy these protocols.  The store runs in the provisioning thread pool,
so observers are called from there; an observer that raises is logged and skipped, never
raised into the store's caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from twisted.logger import Logger

from pxestack.bootevents import STATE_PHASES, BootEventRecorder

log = Logger()

#: The state of a host recorded under ``provision.enrolment: approve`` until approved.
PENDING = "pending"


class StateValue(Protocol):
    """A host state: an enum member whose value is its name in the records (``"running"``)."""

    @property
    def value(self) -> str:
        """The state's text."""


class HostRecord(Protocol):
    """What the observers read from a host record (the provisioning layer's ``Host``)."""

    @property
    def serial(self) -> str:
        """The machine's serial number (the record's key)."""

    @property
    def state(self) -> StateValue:
        """The lifecycle state."""

    @property
    def profile(self) -> str:
        """The assigned profile (``""`` when none)."""

    @property
    def mac_addresses(self) -> Sequence[str]:
        """The MAC addresses the installer reported (colon form)."""


class VersionedRecord(Protocol):
    """A stored record with its version (the provisioning layer's ``Versioned``)."""

    @property
    def host(self) -> HostRecord:
        """The record."""


V = TypeVar("V", bound=VersionedRecord)
V_co = TypeVar("V_co", bound=VersionedRecord, covariant=True)


class ObservableStore(Protocol[V_co]):
    """The two writes of a host store that can create a record or change its state."""

    def enrol(
        self, serial: str, make: Callable[[Sequence[Any]], Any], message: Sequence[str]
    ) -> tuple[V_co, bool]:
        """The record of *serial*, created with ``make(all_hosts)`` when absent."""

    def update(
        self, serial: str, change: Callable[[Any], Any], *, if_match: str | None = None
    ) -> V_co:
        """Apply *change* to the record of *serial* atomically."""


@dataclass(frozen=True, slots=True)
class HostChange:
    """A stored change of one host: its creation, or a change of its ``State``."""

    serial: str
    #: The state after the change.
    state: str
    #: The state before it; None when this change created the record.
    previous: str | None
    profile: str
    macs: tuple[str, ...]
    #: Who made the change (``admin``, a token's name, ``cert:<subject>``,
    #: ``trusted:<address>``, ``machine:<serial>``); None when not known.
    actor: str | None
    #: When it was stored (the wrapper's clock, wall-clock seconds by default).
    time: float

    @property
    def created(self) -> bool:
        """This change created the record (the machine's first contact)."""
        return self.previous is None

    @property
    def enrolled(self) -> bool:
        """The machine is enrolled by this change: its record holds a state other than
        ``pending`` for the first time (created so, or approved)."""
        return self.state != PENDING and self.previous in (None, PENDING)


#: Receives every :class:`HostChange`.
HostObserver = Callable[[HostChange], None]


class ObservedHostStore(Generic[V]):
    """A host store that tells its observers about every created record and state change.

    Wraps *store* by delegation: ``enrol`` and ``update`` are observed, everything else
    (``read``, ``hosts``, ``remove``, ``health``, ...) is the store's own.  An update that
    keeps the state (the ``boot_complete`` of every later reboot) is not a change.

    :param observers: called in order with each change, after the store returned.
    :param clock: the time of a change (wall-clock seconds, as the DHCP reactor's).
    :param actor: who is making the current change (the provisioning layer's
        ``CURRENT_ACTOR.get``); None when not known.
    """

    def __init__(
        self,
        store: ObservableStore[V],
        observers: Iterable[HostObserver] = (),
        *,
        clock: Callable[[], float] = time.time,
        actor: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.store = store
        self.observers: list[HostObserver] = list(observers)
        self._clock = clock
        self._actor = actor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def enrol(
        self, serial: str, make: Callable[[Sequence[Any]], Any], message: Sequence[str]
    ) -> tuple[V, bool]:
        """The store's ``enrol``; a created record is a change from nothing."""
        versioned, created = self.store.enrol(serial, make, message)
        if created:
            self._tell(versioned.host, None)
        return versioned, created

    def update(
        self, serial: str, change: Callable[[Any], Any], *, if_match: str | None = None
    ) -> V:
        """The store's ``update``; a change of ``State`` is told after it is stored."""
        before: list[str] = []

        def observed(host: HostRecord) -> Any:
            # The store may call *change* more than once (a retry after a re-read): the
            # last call saw the record the stored change was made from.
            before.append(host.state.value)
            return change(host)

        versioned = self.store.update(serial, observed, if_match=if_match)
        if before and before[-1] != versioned.host.state.value:
            self._tell(versioned.host, before[-1])
        return versioned

    def _tell(self, host: HostRecord, previous: str | None) -> None:
        try:
            change = HostChange(
                serial=host.serial,
                state=host.state.value,
                previous=previous,
                profile=host.profile,
                macs=tuple(host.mac_addresses),
                actor=self._actor(),
                time=self._clock(),
            )
        except Exception:
            log.failure("reading a host change failed", serial=getattr(host, "serial", None))
            return
        for observer in self.observers:
            try:
                observer(change)
            except Exception:
                log.failure("an observer of host changes failed", serial=change.serial)


def boot_steps(events: BootEventRecorder) -> HostObserver:
    """An observer that records each change as a step of the machine's boot timeline.

    Enrolment (:attr:`HostChange.enrolled`) is the ``enrolled`` step; a new state among
    :data:`~pxestack.bootevents.STATE_PHASES` is the step of that name.  The record's MAC
    addresses (known once the installer posted its host data) are linked to the serial,
    so the machine's DHCP and TFTP steps join its timeline.
    """

    def observe(change: HostChange) -> None:
        for mac in change.macs:
            events.link(mac, change.serial)
        if change.enrolled:
            events.record("enrolled", change.time, serial=change.serial)
        elif change.state in STATE_PHASES:
            events.record(change.state, change.time, serial=change.serial)

    return observe


def log_host_change(change: HostChange) -> None:
    """The info line of one change: which machine, what happened, and who did it.

    The fields (``serial``, ``state``, ``previous``, ``profile``, ``actor``) are in the
    event, so a JSON log carries them as fields of their own.
    """
    # Without a known actor a new record is the machine's own first contact (the store's
    # audit commit names it so too); any other change was pxestack's own.
    actor = change.actor or (f"machine:{change.serial}" if change.created else "pxestack")
    fields = {"serial": change.serial, "state": change.state, "previous": change.previous,
              "profile": change.profile or None, "actor": actor}
    if change.created and not change.enrolled:
        log.info("host {serial} recorded as {state} on its first contact: it waits for "
                 "approval (pxestack ctl approve {serial})", **fields)
    elif change.created:
        log.info("host {serial} enrolled on its first contact: profile {profile}, "
                 "state {state} (as {actor})", **fields)
    elif change.enrolled:
        log.info("host {serial} enrolled: approved by {actor}, profile {profile}, "
                 "state {state}", **fields)
    else:
        log.info("host {serial} state {previous} -> {state} (by {actor})", **fields)


__all__ = [
    "PENDING",
    "HostChange",
    "HostObserver",
    "HostRecord",
    "ObservableStore",
    "ObservedHostStore",
    "StateValue",
    "VersionedRecord",
    "boot_steps",
    "log_host_change",
]
