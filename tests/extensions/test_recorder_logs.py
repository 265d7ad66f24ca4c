"""The recorder's log lines: bounded, apart from the steps, merged when a MAC is linked."""

from __future__ import annotations

from pxestack.bootevents import LOG, LOG_LINE_MAX, BootEventRecorder


def test_log_lines_are_bounded_and_cleaned() -> None:
    recorder = BootEventRecorder(per_machine_logs=3, log_backlog=4, max_machines=2)
    for i in range(5):
        recorder.log(f"line {i}\x1b[31m\n", float(i), serial="s1")
    assert [e.detail for e in recorder.logs("s1")] == ["line 2?[31m?", "line 3?[31m?",
                                                       "line 4?[31m?"]
    assert recorder.log("x" * 5000, 9.0, serial="s1").detail == "x" * LOG_LINE_MAX  # type: ignore[union-attr]
    assert recorder.log("no machine", 9.0) is None
    assert recorder.log("bad mac", 9.0, mac="zz") is None
    assert recorder.dropped == 2
    recorder.log("a", 10.0, serial="s2")
    recorder.log("b", 11.0, serial="s3")
    assert recorder.logs("s1") == []  # the least recently seen machine went first
    assert recorder.steps("s3") == [] and recorder.since(0) == []
    assert recorder.logs("s3")[0].phase == LOG


def test_lines_by_mac_join_the_serial_and_since_filters() -> None:
    recorder = BootEventRecorder()
    mac = "52:54:00:00:00:01"
    first = recorder.log("early", 1.0, mac=mac, ip="10.0.0.1")
    recorder.record("script", 2.0, serial="node", mac=mac, ip="10.0.0.1")
    recorder.log("late", 3.0, mac=mac)
    assert [e.detail for e in recorder.logs("node")] == ["early", "late"]
    assert first is not None
    assert [e.detail for e in recorder.logs("node", since=first.seq)] == ["late"]
    assert recorder.machine_of_ip("10.0.0.1") == ("node", mac)
    assert recorder.machine_of_ip("10.0.0.2") is None


def test_notices_reach_subscribers_and_are_not_kept() -> None:
    recorder = BootEventRecorder()
    seen = []
    recorder.subscribe(seen.append)
    assert recorder.announce("admin", 1.0, serial="node", detail="set_state by admin") is not None
    assert recorder.announce("reboot", 1.0, serial="node") is None
    assert [e.phase for e in seen] == ["admin"]
    assert recorder.since(0) == [] and recorder.steps("node") == []
