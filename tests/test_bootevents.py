"""The boot-step recorder (pxestack.bootevents) and its feeds: DHCP, TFTP, the provisioning
layer, and ``/admin/events`` as JSON and as a Server-Sent Events stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from pxestack.bootevents import PHASES, BootEventRecorder, normal_mac, normal_serial
from pxestack.http.events import EventFeed, sse_message

MAC = "52:54:00:12:34:56"
OCTETS = bytes.fromhex("525400123456")


def boot(recorder: BootEventRecorder, serial: str = "vm-1", t: float = 100.0) -> None:
    """One whole boot as the servers report it."""
    recorder.dhcp(OCTETS, False, t)
    recorder.dhcp(OCTETS, True, t + 0.1)
    recorder.record("tftp", t + 1.0, mac=OCTETS, ip="10.0.0.5", duration=0.8,
                    detail="undionly.kpxe complete")
    recorder.dhcp(OCTETS, False, t + 1.2)
    recorder.dhcp(OCTETS, True, t + 1.3)
    recorder.record("enrolled", t + 1.4, serial=serial)
    recorder.record("script", t + 1.4, serial=serial, mac=MAC.replace(":", "-"))
    recorder.record("installing", t + 5, serial=serial)
    recorder.record("installed", t + 60, serial=serial)


def test_a_boot_is_told_apart_into_phases_and_joins_the_serial() -> None:
    recorder = BootEventRecorder()
    boot(recorder)
    steps = recorder.steps("vm-1")
    assert [s.phase for s in steps] == [
        "dhcp_pxe", "dhcp_pxe", "tftp", "dhcp_ipxe", "dhcp_ipxe", "enrolled", "script",
        "installing", "installed",
    ]
    assert recorder.serial_of(MAC) == "vm-1"
    assert recorder.steps(MAC) == []  # the MAC's early steps moved to the serial
    # After the link, a MAC-only report is the serial's.
    recorder.dhcp(OCTETS, False, 200.0)
    assert recorder.current()["vm-1"].phase == "dhcp_pxe"
    assert recorder.steps("vm-1")[-1].serial == "vm-1"


def test_ipxe_dhcp_is_told_apart_when_the_tftp_step_comes_late() -> None:
    recorder = BootEventRecorder()
    recorder.dhcp(OCTETS, False, 1.0)
    recorder.dhcp(OCTETS, True, 1.1)
    recorder.dhcp(OCTETS, False, 2.0)  # iPXE's DISCOVER, handled before the last TFTP ACK
    recorder.record("tftp", 2.0, mac=OCTETS, duration=0.8)
    recorder.dhcp(OCTETS, True, 2.1)
    recorder.record("installed", 9.0, mac=OCTETS)
    recorder.dhcp(OCTETS, False, 20.0)  # the next boot starts with the firmware again
    assert [s.phase for s in recorder.steps(MAC)] == [
        "dhcp_pxe", "dhcp_pxe", "dhcp_ipxe", "tftp", "dhcp_ipxe", "installed", "dhcp_pxe"]


def test_hostile_or_broken_values_are_dropped_and_counted() -> None:
    recorder = BootEventRecorder()
    assert recorder.record("dhcp_pxe", 1.0, mac=b"\x00" * 16) is None
    assert recorder.record("script", 1.0, mac="52:54:00:zz:34:56") is None
    assert recorder.record("script", 1.0, serial="<script>") is None
    assert recorder.record("no-such-phase", 1.0, serial="vm-1") is None
    assert recorder.record("tftp", 1.0, ip="10.0.0.1") is None  # nobody to attribute it to
    assert recorder.record("tftp", 1.0, serial="vm-1", duration=-1) is None
    assert recorder.link("nonsense", "vm-1") is False
    assert recorder.dropped == 7
    assert recorder.since(0) == []
    long_detail = recorder.record("kernel", 1.0, serial="vm-1", detail="x\x1b" * 500)
    assert long_detail is not None and len(long_detail.detail) <= 120
    assert "\x1b" not in long_detail.detail


def test_memory_is_bounded() -> None:
    recorder = BootEventRecorder(max_machines=3, per_machine=4, backlog=10)
    for i in range(10):
        for j in range(6):
            recorder.record("kernel", float(j), serial=f"vm-{i}")
    assert len(recorder.current()) == 3
    assert set(recorder.current()) == {"vm-7", "vm-8", "vm-9"}
    assert len(recorder.steps("vm-9")) == 4
    assert len(recorder.since(0)) == 10
    assert recorder.last_seq == 60


def test_subscribers_get_every_step_and_a_broken_one_is_dropped() -> None:
    recorder = BootEventRecorder(max_subscribers=2)
    seen: list[int] = []

    def broken(_event: Any) -> None:
        raise RuntimeError("reader bug")

    stop = recorder.subscribe(lambda e: seen.append(e.seq))
    assert stop is not None
    assert recorder.subscribe(broken) is not None
    assert recorder.subscribe(lambda e: None) is None  # the cap
    recorder.record("enrolled", 1.0, serial="vm-1")
    assert recorder.subscribers == 1
    stop()
    recorder.record("installed", 2.0, serial="vm-1")
    assert seen == [1]


def test_since_and_the_json_form() -> None:
    recorder = BootEventRecorder()
    boot(recorder)
    later = recorder.since(7)
    assert [e.seq for e in later] == [8, 9]
    assert recorder.since(0, limit=2) == later
    data = later[0].to_json()
    assert data["phase"] == "installing" and data["serial"] == "vm-1"
    message = sse_message(later[0]).decode()
    assert message.startswith("id: 8\nevent: boot\ndata: {")
    assert message.endswith("\n\n")


def test_storm_counts_each_machine_once() -> None:
    recorder = BootEventRecorder()
    boot(recorder, "vm-1", t=100.0)
    storm = recorder.storm(buckets=10, now=160.0)
    assert len(storm["times"]) == 10
    totals = [sum(storm["counts"][p][i] for p in PHASES) for i in range(10)]
    assert totals == [1] * 10  # the MAC machine became vm-1, not a second machine
    assert storm["counts"]["installed"][-1] == 1
    assert BootEventRecorder().storm()["times"] == []


def test_normalisers() -> None:
    assert normal_mac(OCTETS) == MAC
    assert normal_mac("52-54-00-12-34-56") == MAC
    assert normal_mac("52:54:00:12:34") is None
    assert normal_serial(" VM-0001 ") == "vm-0001"
    assert normal_serial("a b") is None
    assert normal_serial("x" * 200) is None


# -- /admin/events ---------------------------------------------------------------------------


class ImmediateReactor(Clock):
    """A clock whose callFromThread runs at once (the test is the reactor thread)."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def stream_request(since: str | None = None) -> DummyRequest:
    request = DummyRequest([b"events"])
    request.requestHeaders.setRawHeaders(b"accept", [b"text/event-stream"])
    if since is not None:
        request.args[b"since"] = [since.encode()]
    return request


def test_the_feed_answers_json_without_the_stream_accept_header() -> None:
    recorder = BootEventRecorder()
    boot(recorder)
    request = DummyRequest([b"events"])
    request.args[b"since"] = [b"5"]
    body = EventFeed(recorder, reactor=ImmediateReactor()).render(request)
    assert isinstance(body, bytes)
    assert [e["seq"] for e in json.loads(body)] == [6, 7, 8, 9]
    bad = DummyRequest([b"events"])
    bad.args[b"since"] = [b"-1"]
    EventFeed(recorder).render(bad)
    assert bad.responseCode == 400


def test_the_stream_catches_up_then_pushes_then_stops_on_disconnect() -> None:
    recorder = BootEventRecorder()
    boot(recorder)
    reactor = ImmediateReactor()
    feed = EventFeed(recorder, reactor=reactor, heartbeat=15.0)
    request = stream_request("7")
    feed.render(request)
    assert request.responseHeaders.getRawHeaders(b"content-type") == [
        b"text/event-stream; charset=utf-8"]
    text = b"".join(request.written).decode()
    assert "id: 8\n" in text and "id: 9\n" in text and "id: 7\n" not in text
    recorder.record("running", 70.0, serial="vm-1")
    assert "id: 10\nevent: boot\n" in b"".join(request.written).decode()
    reactor.advance(15.0)
    assert request.written[-1] == b": keep-alive\n\n"
    assert recorder.subscribers == 1
    request.processingFailed(Exception("client went away"))  # fires notifyFinish
    assert recorder.subscribers == 0
    assert not reactor.getDelayedCalls()


def test_last_event_id_is_since_and_streams_are_capped() -> None:
    recorder = BootEventRecorder(max_subscribers=1)
    boot(recorder)
    feed = EventFeed(recorder, reactor=ImmediateReactor())
    first = stream_request()
    first.requestHeaders.setRawHeaders(b"last-event-id", [b"8"])
    feed.render(first)
    assert b"".join(first.written).count(b"event: boot") == 1
    second = stream_request()
    feed.render(second)
    assert second.responseCode == 503
    # a reconnecting EventSource repeats its URL's since but sends the newer id
    reconnect = DummyRequest([b"events"])
    reconnect.args[b"since"] = [b"1"]
    reconnect.requestHeaders.setRawHeaders(b"last-event-id", [b"8"])
    body = feed.render(reconnect)
    assert [e["seq"] for e in json.loads(body)] == [9]


# -- fed by the servers and the provisioning layer -------------------------------------------


def test_the_provisioning_layer_and_the_boot_script_report_steps(tmp_path: Path) -> None:
    from tests.test_openapi import ADMIN_TOKEN, Stack

    stack = Stack(tmp_path)
    answer = stack.request("GET", f"/ipxebootscript?serial=vm-7&mac={MAC}", token=None)
    assert answer.code == 200
    events = json.loads(stack.request("GET", "/admin/events").body)
    assert [(e["phase"], e["serial"]) for e in events] == [
        ("enrolled", "vm-7"), ("script", "vm-7")]
    assert events[1]["mac"] == MAC
    # a step with a hostile MAC in the query is dropped (and the script still served)
    assert stack.request("GET", "/ipxebootscript?serial=vm-7&mac=%3Cx%3E", token=None).code == 200
    assert json.loads(stack.request("GET", "/admin/events?since=2").body) == []
    assert stack.service.events.dropped == 1
    assert stack.request("GET", "/admin/events", token=None).code == 401
    assert stack.request("GET", "/admin/events", token=ADMIN_TOKEN + "x").code == 401
    assert stack.request("GET", "/admin/events?since=abc").code == 400


@pytest.mark.parametrize("bound", [False, True])
def test_the_dhcp_service_reports_offers_and_acks(bound: bool) -> None:
    from pxestack.service.dhcp import record_dhcp_steps

    class Core:
        on_progress: Any = None

    core = Core()
    earlier: list[Any] = []
    core.on_progress = lambda *args: earlier.append(args)
    recorder = BootEventRecorder()
    record_dhcp_steps(core, recorder)  # type: ignore[arg-type]
    core.on_progress(bound, OCTETS, 5.0)
    assert earlier == [(bound, OCTETS, 5.0)]
    [step] = recorder.since(0)
    assert (step.phase, step.mac, step.detail) == ("dhcp_pxe", MAC, "ack" if bound else "offer")


def test_the_tftp_service_reports_transfers_by_the_lease_of_the_address() -> None:
    from pxestack.service.tftp import record_tftp_steps
    from pxestack.tftp.stats import Outcome, SessionStats

    class Server:
        on_stats: Any = None

    server = Server()
    recorder = BootEventRecorder()
    leases = {"10.0.0.5": OCTETS}
    record_tftp_steps(server, recorder, leases.get)  # type: ignore[arg-type]
    for host in ("10.0.0.5", "10.0.0.6"):
        server.on_stats(SessionStats(
            client=(host, 2000), path="undionly.kpxe", outcome=Outcome.COMPLETE,
            bytes_acked=1, datagrams_sent=1, retransmits=0, blksize=1432, windowsize=1,
            tsize=None, started=1.0, finished=1.5))
    [step] = recorder.since(0)
    assert (step.phase, step.mac, step.ip, step.duration) == ("tftp", MAC, "10.0.0.5", 0.5)


def test_a_kernel_download_is_a_step_of_the_host(tmp_path: Path) -> None:
    from tests.test_openapi import SERIAL, Stack

    stack = Stack(tmp_path)
    assert stack.request("GET", f"/first-stage-script/{SERIAL}", token=None).code == 200
    assert stack.request("GET", f"/images/{SERIAL}/vmlinuz", token=None).code == 200
    assert stack.request("HEAD", f"/images/{SERIAL}/vmlinuz", token=None).code == 200
    steps = stack.service.events.steps(SERIAL)
    assert [(s.phase, s.detail) for s in steps] == [("enrolled", ""), ("kernel", "vmlinuz")]


def test_a_step_reported_late_takes_its_place_in_time() -> None:
    """A TFTP worker relays a finished transfer a moment after later steps were recorded:
    the machine's current phase stays its newest step by time, and the storm view counts
    it in time order."""
    recorder = BootEventRecorder()
    mac = "52:54:00:e2:e0:07"
    recorder.record("dhcp_pxe", 10.0, mac=mac, detail="ack")
    recorder.record("script", 12.0, mac=mac)
    recorder.record("tftp", 11.0, mac=mac, duration=0.5, detail="undionly.kpxe complete")
    [current] = recorder.current().values()
    assert current.phase == "script"
    assert [e.phase for e in recorder.steps(mac)] == ["dhcp_pxe", "tftp", "script"]
    storm = recorder.storm(buckets=4, now=12.0)
    assert storm["counts"]["script"][-1] == 1 and storm["counts"]["tftp"][-1] == 0
