"""Boot-storm admission (pxestack.dhcp.admission): the rule, driven with plain times, and
its one seam in the DHCP server's DISCOVER path."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pxestack.dhcp import admission as admission_module
from pxestack.dhcp.admission import (
    BACKLOGGED,
    FULL,
    IN_PROGRESS,
    LAGGING,
    LATER_PHASE,
    QUEUED,
    AdmissionSettings,
    BootAdmission,
)
from pxestack.dhcp.client import Firmware
from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Subnet
from pxestack.dhcp.policy import StaticBootPolicy
from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo, ServerSettings, SubnetSettings
from pxestack.errors import ApiMisuse
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage
from pxestack.wire.dhcp_options import DhcpOptions

PXE, IPXE, HTTP, OS = Firmware.PXE, Firmware.IPXE, Firmware.HTTP_CLIENT, Firmware.OS


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, n >> 8, n & 0xFF])


def gate(**knobs: float) -> BootAdmission:
    return BootAdmission(AdmissionSettings(**knobs))  # type: ignore[arg-type]


# -- the rule ------------------------------------------------------------------------------


def test_new_machines_wait_while_the_starting_ones_fill_the_limit() -> None:
    admission = gate(max_starting=2)
    assert admission.admit(mac(1), PXE, 0.0).admit
    assert admission.admit(mac(2), HTTP, 0.1).admit
    held = admission.admit(mac(3), PXE, 0.2)
    assert not held.admit and held.reason == FULL and held.log
    # Its retransmission is deferred again, without another info line.
    again = admission.admit(mac(3), PXE, 4.2)
    assert not again.admit and not again.log
    assert admission.starting == 2 and admission.waiting == 1
    assert admission.counters == {"admitted": 2, "deferred": 2, "start_timeouts": 0}


def test_waiting_machines_are_released_oldest_first_while_they_listen() -> None:
    admission = gate(max_starting=1)
    assert admission.admit(mac(1), PXE, 0.0).admit
    assert not admission.admit(mac(2), PXE, 1.0, "two").admit
    assert not admission.admit(mac(3), PXE, 2.0, "three").admit
    assert admission.release(2.5) == []  # no room yet
    assert admission.admit(mac(1), IPXE, 3.0).admit  # room for one
    # Machine 2 asked first and still listens (4 s after its only DISCOVER, with margin).
    assert admission.release(3.1) == [(mac(2), "two", pytest.approx(2.1))]
    assert admission.admit(mac(2), PXE, 3.2).reason == IN_PROGRESS  # the answer goes out
    assert admission.admit(mac(2), IPXE, 4.0).admit
    # Machine 3's only DISCOVER was at 2.0: by 5.7 it no longer listens (4 s, with a
    # margin), so it is skipped, not forgotten; a newcomer still queues behind it.
    assert admission.release(5.7) == []
    assert admission.waiting == 1
    assert admission.admit(mac(4), PXE, 5.8).reason == QUEUED
    # Machine 3 asks again: the oldest waiting, and there is room.
    assert admission.admit(mac(3), PXE, 6.0).admit


def test_a_waiting_machine_listens_longer_after_each_retransmission() -> None:
    admission = gate(max_starting=1)
    assert admission.admit(mac(1), PXE, 0.0).admit
    assert not admission.admit(mac(2), PXE, 1.0, "first").admit
    assert not admission.admit(mac(2), PXE, 5.0, "second").admit
    assert admission.admit(mac(1), IPXE, 6.0).admit
    # After DISCOVERs 4 s apart its firmware waits 8 s for the next: 7.2 s with the margin.
    assert admission.release(12.0) == [(mac(2), "second", pytest.approx(11.0))]


def test_new_machines_queue_behind_the_waiting_ones() -> None:
    admission = gate(max_starting=1)
    assert admission.admit(mac(1), PXE, 0.0).admit
    assert not admission.admit(mac(2), PXE, 0.5).admit
    assert admission.admit(mac(1), IPXE, 1.0).admit  # room, but machine 2 came first
    late = admission.admit(mac(3), PXE, 1.1)
    assert not late.admit and late.reason == QUEUED
    # The oldest waiting machine asking again takes the room at once.
    assert admission.admit(mac(2), PXE, 1.2).admit
    assert admission.waiting == 1


def test_silent_waiting_machines_are_forgotten() -> None:
    admission = gate(max_starting=1)
    assert admission.admit(mac(1), PXE, 0.0).admit
    assert not admission.admit(mac(2), PXE, 0.5).admit
    assert admission.admit(mac(1), IPXE, 1.0).admit
    assert admission.release(1000.0) == []
    assert admission.waiting == 0
    assert admission.admit(mac(3), PXE, 1000.0).admit


def test_a_machine_reaching_ipxe_frees_its_slot_for_a_waiting_one() -> None:
    admission = gate(max_starting=1)
    assert admission.admit(mac(1), PXE, 0.0).admit
    assert not admission.admit(mac(2), PXE, 1.0).admit
    # Machine 1 loaded iPXE: its second DHCP is never held back, and it is no longer starting.
    assert admission.admit(mac(1), IPXE, 3.0) .reason == IN_PROGRESS
    assert admission.starting == 0
    verdict = admission.admit(mac(2), PXE, 5.0)
    assert verdict.admit and verdict.log and verdict.waited == pytest.approx(4.0)
    assert admission.waiting == 0


def test_a_kernel_dhcp_after_grub_or_pxelinux_frees_the_slot_too() -> None:
    """GRUB and PXELINUX reuse the firmware's lease and never send an iPXE DISCOVER; the
    booted kernel's own DHCP (an OS client) is the sign that the machine is past its
    first step, so a Secure Boot fleet is not paced by ``start_timeout``."""
    admission = gate(max_starting=1)
    assert admission.admit(mac(1), PXE, 0.0).admit
    assert not admission.admit(mac(2), PXE, 1.0).admit
    assert admission.admit(mac(1), OS, 20.0).reason == IN_PROGRESS
    assert admission.starting == 0
    assert admission.admit(mac(2), PXE, 21.0).admit
    assert admission.counters["start_timeouts"] == 0


def test_machines_in_progress_and_later_phases_are_never_held_back() -> None:
    admission = gate(max_starting=1, max_loop_lag=0.5)
    assert admission.admit(mac(1), PXE, 0.0).admit
    admission.observe_lag(10.0)  # saturated on both signals from now on
    assert admission.saturated(1.0) == FULL
    # The admitted machine's retransmitted DISCOVER, and a reboot after it got iPXE.
    assert admission.admit(mac(1), PXE, 1.0).reason == IN_PROGRESS
    assert admission.admit(mac(1), IPXE, 2.0).admit
    assert admission.admit(mac(1), PXE, 3.0).reason == IN_PROGRESS
    # iPXE and plain OS clients never seen before: a later phase (e.g. a server restart).
    assert admission.admit(mac(7), IPXE, 3.0).reason == LATER_PHASE
    assert admission.admit(mac(8), OS, 3.0).reason == LATER_PHASE
    assert not admission.admit(mac(9), PXE, 3.0).admit


def test_a_start_that_never_reaches_ipxe_stops_counting_after_the_timeout() -> None:
    admission = gate(max_starting=1, start_timeout=60.0)
    assert admission.admit(mac(1), PXE, 0.0).admit
    assert not admission.admit(mac(2), PXE, 59.0).admit
    assert admission.admit(mac(2), PXE, 60.5).admit
    assert admission.counters["start_timeouts"] == 1
    # Machine 1 keeps its admission: if it comes back, it is answered.
    assert admission.admit(mac(1), PXE, 61.0).reason == IN_PROGRESS


def test_event_loop_lag_holds_new_machines_until_it_recovers() -> None:
    admission = gate(max_starting=100, max_loop_lag=0.5)
    for _ in range(5):
        admission.observe_lag(2.0)
    verdict = admission.admit(mac(1), PXE, 0.0)
    assert not verdict.admit and verdict.reason == LAGGING
    for _ in range(20):
        admission.observe_lag(0.0)
    assert admission.lag < 0.5
    assert admission.admit(mac(1), PXE, 1.0).admit


def test_a_provisioning_backlog_holds_new_machines() -> None:
    admission = gate(max_starting=100, max_backlog=4)
    admission.observe_backlog(4)
    held = admission.admit(mac(1), PXE, 0.0)
    assert not held.admit and held.reason == BACKLOGGED
    assert admission.admit(mac(9), IPXE, 0.0).admit  # later phases go on
    admission.observe_backlog(3)
    assert admission.admit(mac(1), PXE, 1.0).admit
    off = gate(max_backlog=0)
    off.observe_backlog(10_000)
    assert off.admit(mac(1), PXE, 0.0).admit


def test_lag_signal_off() -> None:
    admission = gate(max_starting=100, max_loop_lag=0.0)
    admission.observe_lag(100.0)
    assert admission.admit(mac(1), PXE, 0.0).admit


def test_admissions_are_forgotten_after_the_memory_time() -> None:
    admission = gate(max_starting=1, start_timeout=10.0)
    assert admission.admit(mac(1), PXE, 0.0).admit
    assert admission.admit(mac(1), IPXE, 5.0).admit
    assert admission.admit(mac(2), PXE, 6.0).admit
    later = 6.0 + admission_module.ADMISSION_MEMORY + 1
    admission.expire(later)
    # Forgotten: machine 1 is new again, and competes for the (free) slot.
    assert admission.admit(mac(1), PXE, later).reason != IN_PROGRESS


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission_module, "MAX_ADMITTED", 4)
    monkeypatch.setattr(admission_module, "MAX_WAITING", 3)
    admission = gate(max_starting=2, start_timeout=1000.0)
    for n in range(10):
        admission.admit(mac(n), IPXE, float(n))
    assert len(admission._admitted) == 4
    full = gate(max_starting=1, start_timeout=1000.0)
    full.admit(mac(0), PXE, 0.0)
    for n in range(1, 10):
        full.admit(mac(n), PXE, float(n))
    assert full.waiting == 3


@pytest.mark.parametrize("knobs", [{"max_starting": 0}, {"start_timeout": 0.0},
                                   {"max_loop_lag": -1.0}, {"max_backlog": -1}])
def test_bad_settings_are_refused(knobs: dict[str, float]) -> None:
    with pytest.raises(ApiMisuse):
        AdmissionSettings(**knobs)  # type: ignore[arg-type]


class AdmissionMachine(RuleBasedStateMachine):
    """Any order of DISCOVERs from any firmware: later phases and machines in progress are
    always answered, and a new machine is admitted only below the limits."""

    LIMIT = 3

    def __init__(self) -> None:
        super().__init__()
        self.admission = gate(max_starting=self.LIMIT, start_timeout=20.0, max_loop_lag=1.0)
        self.now = 0.0
        self.admitted: set[bytes] = set()

    @rule(n=st.integers(0, 15), firmware=st.sampled_from([PXE, IPXE, HTTP, OS]),
          step=st.floats(0.0, 8.0))
    def discover(self, n: int, firmware: Firmware, step: float) -> None:
        self.now += step
        new = mac(n) not in self.admitted
        reason = self.admission.saturated(self.now)
        starting = self.admission.starting
        verdict = self.admission.admit(mac(n), firmware, self.now, n)
        if firmware in (IPXE, OS) or not new:
            assert verdict.admit
        elif verdict.admit:  # a new machine: only below both limits
            assert reason == "" and starting < self.LIMIT
        else:
            assert verdict.reason in (FULL, LAGGING, QUEUED)
        if verdict.admit and firmware is not OS:
            self.admitted.add(mac(n))

    @rule(step=st.floats(0.0, 3.0))
    def release(self, step: float) -> None:
        self.now += step
        lagging = self.admission.saturated(self.now) == LAGGING  # expires old starts too
        free = self.LIMIT - self.admission.starting
        released = self.admission.release(self.now)
        assert len(released) <= (0 if lagging else max(free, 0))
        for machine, payload, waited in released:
            assert machine == mac(payload) and waited >= 0  # type: ignore[arg-type]
            assert machine not in self.admitted
            self.admitted.add(machine)

    @rule(lag=st.floats(0.0, 3.0))
    def lag(self, lag: float) -> None:
        self.admission.observe_lag(lag)

    @precondition(lambda self: self.admission.starting > 0)
    @rule()
    def time_passes(self) -> None:
        self.now += 25.0
        self.admission.expire(self.now)
        assert self.admission.starting == 0

    @invariant()
    def bounded(self) -> None:
        assert self.admission.waiting <= 16


TestAdmissionMachine = AdmissionMachine.TestCase
TestAdmissionMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# -- the seam in the DHCP server -----------------------------------------------------------

NET = IPv4Network("198.18.0.0/24")
SERVER = IPv4Address("198.18.0.1")
IFACE = InterfaceInfo("veth0", SERVER, NET)


def pxe_message(kind: int, n: int, *, ipxe: bool = False, **extra: bytes) -> DhcpMessage:
    items = {
        c.OPT_MESSAGE_TYPE: bytes((kind,)),
        c.OPT_VENDOR_CLASS_ID: b"PXEClient:Arch:00000:UNDI:002001",
        c.OPT_CLIENT_ARCH: b"\x00\x00",
    }
    if ipxe:
        items[c.OPT_USER_CLASS] = b"iPXE"
    if "requested" in extra:
        items[c.OPT_REQUESTED_IP] = extra["requested"]
        items[c.OPT_SERVER_ID] = SERVER.packed
    return DhcpMessage(op=c.BOOTREQUEST, xid=0x2000 + n, chaddr=mac(n),
                       options=DhcpOptions(items))


def make_core(limit: int) -> tuple[DhcpServerCore, BootAdmission]:
    subnet = Subnet(NET, (AddressRange(IPv4Address("198.18.0.100"),
                                       IPv4Address("198.18.0.199")),))
    store = InMemoryLeaseStore([subnet], ())
    core = DhcpServerCore(
        ServerSettings((SubnetSettings(subnet, lease_time=3600),)), store,
        StaticBootPolicy(),
        BootDefaults(server_address=IPv4Address(0),
                     ipxe_script_url="http://198.18.0.1:8080/boot.ipxe"),
    )
    admission = gate(max_starting=limit)
    core.admission = lambda message, interface, firmware, now: admission.admit(
        message.chaddr, firmware, now, message).admit
    return core, admission


def test_the_server_defers_the_offer_but_never_a_request_or_ipxe() -> None:
    core, admission = make_core(limit=1)
    first = core.handle(pxe_message(c.DHCPDISCOVER, 1), IFACE, 0.0)
    assert [r.message.message_type for r in first] == [c.DHCPOFFER]
    address = first[0].message.yiaddr
    # A second new machine is held back: no OFFER, and no address held for it.
    assert core.handle(pxe_message(c.DHCPDISCOVER, 2), IFACE, 0.5) == []
    assert core.counters["offers"] == 1
    # The admitted machine goes on: REQUEST acked, then iPXE's DORA answered.
    ack = core.handle(pxe_message(c.DHCPREQUEST, 1, requested=address.packed), IFACE, 1.0)
    assert [r.message.message_type for r in ack] == [c.DHCPACK]
    again = core.handle(pxe_message(c.DHCPDISCOVER, 1, ipxe=True), IFACE, 9.0)
    assert [r.message.message_type for r in again] == [c.DHCPOFFER]
    # Now machine 2's retransmission gets its OFFER.
    later = core.handle(pxe_message(c.DHCPDISCOVER, 2), IFACE, 12.0)
    assert [r.message.message_type for r in later] == [c.DHCPOFFER]
    assert admission.counters["deferred"] == 1


def test_without_the_hook_every_discover_is_answered() -> None:
    core, _ = make_core(limit=1)
    core.admission = None
    for n in range(1, 6):
        assert core.handle(pxe_message(c.DHCPDISCOVER, n), IFACE, float(n))


def test_hold_replaces_the_payload_of_a_waiting_machine_only() -> None:
    """A caller builds the payload it keeps only for a machine made to wait (hold); an
    admitted machine or one not waiting is left as it is."""
    gate = BootAdmission(AdmissionSettings(max_starting=1, max_loop_lag=0.0))
    assert gate.admit(b"\x01" * 6, Firmware.PXE, 0.0).admit
    assert not gate.admit(b"\x02" * 6, Firmware.PXE, 0.0).admit
    gate.hold(b"\x02" * 6, b"datagram")
    gate.hold(b"\x01" * 6, b"not kept")  # admitted, not waiting
    gate.hold(b"\x03" * 6, b"not kept")  # unknown
    assert gate.admit(b"\x01" * 6, Firmware.IPXE, 1.0).admit  # frees the slot
    released = gate.release(1.0)
    assert [(mac, payload) for mac, payload, _ in released] == [(b"\x02" * 6, b"datagram")]
