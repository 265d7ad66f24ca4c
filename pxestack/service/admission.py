"""Boot-storm admission wired into the DHCP server: the periodic tick, log lines, metrics.

:class:`AdmissionWiring` builds a :class:`~pxestack.dhcp.admission.BootAdmission` from
``dhcp.admission`` and installs it as the DHCP core's ``admission`` hook.  A timer armed
every ``lag_interval`` seconds does two things:

* it notes how late it fires: that lateness is the event-loop lag, the signal that the
  main process (HTTP, enrolment, the git audit, TFTP when it runs in this process) has
  more work than it can do;
* it asks the gate which waiting machines may start now and answers their last DISCOVER
  at once (the DISCOVER goes through the DHCP server's protocol again, exactly as if it
  had just arrived, and the gate now admits it), so a machine that waits its turn gets
  its OFFER while its firmware is still listening, without having to ask again.

Each machine's first deferral and its admission after waiting are logged at info level;
the counts, the machines starting and waiting, and the lag are metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from pxestack.config.admission import AdmissionConfig
from pxestack.dhcp.admission import AdmissionSettings, BootAdmission
from pxestack.dhcp.client import Firmware
from pxestack.dhcp.server import InterfaceInfo
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, encode_dhcp

log = Logger()

#: Answers a released DISCOVER again: called with the DISCOVER's datagram and the
#: interface's name.
Replay = Callable[[bytes, str], None]


class AdmissionWiring:
    """One :class:`BootAdmission` with its periodic tick, for one DHCP server core."""

    def __init__(self, config: AdmissionConfig, reactor: Any,
                 backlog: Callable[[], int] | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.gate = BootAdmission(AdmissionSettings(
            max_starting=config.max_starting,
            start_timeout=config.start_timeout,
            max_loop_lag=config.max_loop_lag,
            max_backlog=config.max_backlog,
        ))
        #: Reads the higher layers' backlog (provisioning jobs), or None.
        self.backlog = backlog
        #: Where released DISCOVERs are answered (:meth:`replay_through`); None: nowhere.
        self.replay: Replay | None = None
        self._call: Any = None
        self._due = 0.0

    def attach(self, core: Any, metrics: Any = None) -> None:
        """Make *core* (a ``DhcpServerCore``) ask the gate before each OFFER."""
        core.admission = self.admit
        if metrics is not None:
            metrics.watch_counters("pxestack_dhcp_admission", "Boot-storm admission of new "
                                   "PXE clients: admitted, deferred, start time-outs",
                                   lambda: self.gate.counters)
            metrics.watch_gauge("pxestack_dhcp_admission_starting",
                                "Machines admitted and not yet at their iPXE DHCP",
                                lambda: self.gate.starting)
            metrics.watch_gauge("pxestack_dhcp_admission_waiting",
                                "New machines whose DISCOVER was deferred, not admitted since",
                                lambda: self.gate.waiting)
            metrics.watch_gauge("pxestack_dhcp_admission_backlog",
                                "Work the provisioning layer accepted and has not finished",
                                lambda: self.gate.backlog)
            metrics.watch_gauge("pxestack_event_loop_lag_seconds",
                                "Smoothed lateness of a periodic timer of the main process",
                                lambda: self.gate.lag)

    def replay_through(self, protocols: dict[str, Any]) -> None:
        """Answer released DISCOVERs through the DHCP protocol of their interface (by name):
        the DISCOVER is handed to it again as a datagram from the client port."""

        def replay(datagram: bytes, interface: str) -> None:
            protocol = protocols.get(interface)
            if protocol is not None:
                protocol.receive_batch(((datagram, ("0.0.0.0", c.DHCP_CLIENT_PORT)),))

        self.replay = replay

    def admit(self, message: DhcpMessage, interface: InterfaceInfo, firmware: Firmware,
              now: float) -> bool:
        """The core's hook: the gate's verdict, logged when it concerns a machine's fate."""
        mac = message.chaddr
        verdict = self.gate.admit(mac, firmware, now)
        if not verdict.admit:
            # A waiting machine keeps its last DISCOVER as a datagram (a few hundred bytes)
            # rather than the parsed message (several times that): thousands wait during a
            # storm of thousands of machines.
            self.gate.hold(mac, (encode_dhcp(message), interface.name))
        if verdict.log:
            if verdict.admit:
                self._log_admitted(mac, verdict.waited)
            else:
                log.info("dhcp admission: OFFER to {mac} deferred ({reason}: {starting} of "
                         "{limit} starting, {waiting} waiting, event-loop lag {lag:.2f} s, "
                         "backlog {backlog}); it gets its turn while its firmware listens",
                         mac=mac.hex(":"), reason=verdict.reason, starting=self.gate.starting,
                         limit=self.config.max_starting, waiting=self.gate.waiting,
                         lag=self.gate.lag, backlog=self.gate.backlog)
        return verdict.admit

    def _log_admitted(self, mac: bytes, waited: float) -> None:
        log.info("dhcp admission: {mac} admitted after waiting {waited:.1f} s "
                 "({starting} machines starting)", mac=mac.hex(":"), waited=waited,
                 starting=self.gate.starting)

    # -- the periodic tick -------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic tick."""
        if self._call is None:
            self._arm()

    def stop(self) -> None:
        """Stop the tick."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _arm(self) -> None:
        interval = self.config.lag_interval
        self._due = self.reactor.seconds() + interval
        self._call = self.reactor.callLater(interval, self.tick)

    def tick(self) -> None:
        """Note the lag, answer the machines whose turn it is, re-arm.  Never raises."""
        now = self.reactor.seconds()
        try:
            if self.config.max_loop_lag:
                self.gate.observe_lag(now - self._due)
            if self.backlog is not None:
                self.gate.observe_backlog(self.backlog())
            for mac, payload, waited in self.gate.release(now):
                self._log_admitted(mac, waited)
                if self.replay is not None and isinstance(payload, tuple):
                    datagram, interface = payload
                    self.replay(datagram, interface)
        except Exception:
            log.failure("boot-storm admission tick failed (a bug in pxestack)")
        finally:
            self._arm()


__all__ = ["AdmissionWiring", "Replay"]
