"""The host lifecycle as a transition table (h11 style: everything that changes state is here).

States are mayu's (reference/mayu-api.md)::

    (first contact) -> unknown --host data--> installing --set_installed--> installed
                                                   \\                          |
                                                    `--boot_complete (pxe)--. boot_complete
                                                                            v  v
                                   configured <--set_state/mark_fresh--  running

An event not listed for a state is illegal and raises :class:`IllegalTransition` (the API
answers 409).  :func:`apply` is pure: it returns the new record and the audit message; the
caller stores and commits both.

Where mayu is buggy the table says so and does the sensible thing instead:

* ``set_state running`` stores ``running`` (mayu stored ``configured``);
* ``boot_complete`` on a host marked ``configured`` (reinstall pending) records the boot
  but keeps the reinstall request (mayu silently cancelled it);
* ``set_installed`` is only accepted while installing (or again when already installed, so
  a retried request is harmless); mayu accepted it in any state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from pxestack.provision.model import VERSION_FIELDS, Host, HostState

S = HostState


class Event(enum.Enum):
    """What can happen to a host; each names the endpoint or action that causes it."""

    HOST_DATA = "host_data"  # installer POSTs its NICs (mayu: /final-*-config)
    PXE_CONFIG = "pxe_config"  # PXE-every-boot machine fetches its config (era C /ignition)
    SET_INSTALLED = "set_installed"  # installer finished writing the disk
    BOOT_COMPLETE = "boot_complete"  # the installed OS booted
    MARK_FRESH = "mark_fresh"  # admin: reinstall from scratch
    SET_STATE = "set_state"  # admin: put the host in an explicit state
    APPROVE = "approve"  # admin: a pending host may enrol (profile and address)


class IllegalTransition(Exception):  # noqa: N818
    """The event is not allowed in the host's current state."""

    def __init__(self, state: HostState, event: Event) -> None:
        self.state = state
        self.event = event
        super().__init__(f"{event.value} is not allowed while the host is {state.value}")


#: Every state an enrolled host can be in; a ``pending`` host waits for an operator and
#: only ``approve`` (or removal) moves it.
_ALL = tuple(s for s in HostState if s is not S.PENDING)

#: state -> event -> new state.  SET_STATE is handled by :func:`apply` (its target is data).
TRANSITIONS: Mapping[Event, Mapping[HostState, HostState]] = MappingProxyType(
    {
        # mayu: any -> installing when the installer posts host data.
        Event.HOST_DATA: MappingProxyType({s: S.INSTALLING for s in _ALL}),
        Event.PXE_CONFIG: MappingProxyType({s: S.INSTALLING for s in _ALL}),
        Event.SET_INSTALLED: MappingProxyType(
            {
                S.INSTALLING: S.INSTALLED,
                S.INSTALLED: S.INSTALLED,  # a retried request after a lost response
            }
        ),
        Event.BOOT_COMPLETE: MappingProxyType(
            {
                S.UNKNOWN: S.RUNNING,  # records made by hand or migrated without a state
                S.INSTALLING: S.RUNNING,  # PXE-every-boot profiles (mayu era C) go straight here
                S.INSTALLED: S.RUNNING,
                S.RUNNING: S.RUNNING,  # sent on every boot
                S.CONFIGURED: S.CONFIGURED,  # reinstall pending: keep it (mayu bug: cancelled it)
            }
        ),
        Event.MARK_FRESH: MappingProxyType({s: S.CONFIGURED for s in _ALL}),
        Event.APPROVE: MappingProxyType({S.PENDING: S.UNKNOWN}),
    }
)

#: mayu's commit message texts (reference/mayu-api.md), after the ``<serial>: `` prefix.
MESSAGES: Mapping[Event, str] = MappingProxyType(
    {
        Event.HOST_DATA: "updated host state to installing",
        Event.PXE_CONFIG: "updated host state to installing",
        Event.SET_INSTALLED: "updated state to installed",
        Event.BOOT_COMPLETE: "updated state to running",
        Event.MARK_FRESH: "host flagged as fresh",
        Event.SET_STATE: "updated host state",
        Event.APPROVE: "host approved",
    }
)


#: The commit of a ``boot_complete`` that does not move the host to ``running`` (a host
#: marked ``configured`` keeps its pending reinstall): mayu's text would claim "running".
BOOT_KEPT_MESSAGE = "recorded boot; state stays {state}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one event: the new record and the lines of its audit message."""

    host: Host
    message: str
    details: tuple[str, ...] = field(default=())


def next_state(state: HostState, event: Event, target: HostState | None = None) -> HostState:
    """The state after *event*; raises :class:`IllegalTransition` when it is not allowed."""
    if event is Event.SET_STATE:
        if target is None:
            raise ValueError("SET_STATE needs a target state")
        if S.PENDING in (state, target):
            # Only approve (which assigns profile and address) leaves pending.
            raise IllegalTransition(state, event)
        return target
    new = TRANSITIONS[event].get(state)
    if new is None:
        raise IllegalTransition(state, event)
    return new


def apply(
    host: Host,
    event: Event,
    *,
    now: datetime,
    target: HostState | None = None,
    versions: Mapping[str, str] | None = None,
) -> Outcome:
    """Apply *event* to *host* with its side effects (mayu's transition table).

    * ``set_state configured`` means "reinstall, keep disk data" (``KeepDiskData`` true);
      ``mark_fresh`` means "reinstall from scratch" (``KeepDiskData`` false).
    * ``boot_complete`` sets ``LastBoot`` to *now* and copies the version fields; as in
      mayu, a field missing from the payload is blanked.
    """
    state = next_state(host.state, event, target)
    changes: dict[str, object] = {"state": state}
    details: list[str] = []
    if event is Event.MARK_FRESH:
        changes["keep_disk_data"] = False
    elif event is Event.SET_STATE and state is S.CONFIGURED:
        changes["keep_disk_data"] = True
    elif event is Event.BOOT_COMPLETE:
        changes["last_boot"] = now
        if versions is not None:
            copied = {k: v for k, v in versions.items() if k in VERSION_FIELDS and v}
            changes["versions"] = MappingProxyType(copied)
    message = MESSAGES[event]
    if event is Event.BOOT_COMPLETE and state is not S.RUNNING:
        # The audit says what happened: the boot is recorded, the state is not "running".
        message = BOOT_KEPT_MESSAGE.format(state=state.value)
        details.append("a reinstall is pending: the next boot installs again")
    if event is Event.SET_STATE:
        details.append(f"state {host.state.value} -> {state.value}")
    return Outcome(host.evolve(**changes), message, tuple(details))


__all__ = [
    "BOOT_KEPT_MESSAGE",
    "MESSAGES",
    "TRANSITIONS",
    "Event",
    "IllegalTransition",
    "Outcome",
    "apply",
    "next_state",
]
