"""What an operator reads: JSON lines with rendered messages and flat fields, and no
Twisted start/stop chatter at info level (pxestack.service.logs)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from pxestack.service.logs import (
    FIELD_CHARS_MAX,
    is_twisted_chatter,
    json_fields,
    make_observer,
)


def captured(emit: Any) -> list[dict[str, Any]]:
    """The events *emit()* logs."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        emit()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events


def one_event(**fields: Any) -> dict[str, Any]:
    log = Logger(namespace="pxestack.provision.test")
    events = captured(lambda: log.info("host {serial} state {previous} -> {state} (by {actor})",
                                       **fields))
    assert len(events) == 1
    return events[0]


def test_json_has_the_rendered_message_and_flat_fields() -> None:
    event = one_event(serial="sn-1", previous="installing", state="installed",
                      actor="ops-carol")
    line = json_fields(event)
    assert line["message"] == "host sn-1 state installing -> installed (by ops-carol)"
    assert line["level"] == "info"
    assert line["namespace"] == "pxestack.provision.test"
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    assert {k: line[k] for k in ("serial", "previous", "state", "actor")} == {
        "serial": "sn-1", "previous": "installing", "state": "installed", "actor": "ops-carol"}
    assert not [key for key in line if key.startswith("log_")]
    json.dumps(line)  # serialisable as it is


def test_json_fields_are_json_values_and_bounded() -> None:
    from enum import Enum

    class Colour(Enum):
        RED = "red"

    log = Logger(namespace="t")
    events = captured(lambda: log.warn(
        "{message} {time} {n} {raw} {colour} {long} {many}", message="m", time="t", n=3,
        raw=b"\x01ab", colour=Colour.RED, long="x" * (FIELD_CHARS_MAX + 50), many=[1, "a"]))
    line = json_fields(events[0])
    assert line["level"] == "warn"
    # A field named like one of the line's own keys keeps its value under key + "_".
    assert (line["message_"], line["time_"]) == ("m", "t")
    assert line["message"].startswith("m t 3 ")
    assert (line["n"], line["raw"], line["colour"], line["many"]) == (3, "\x01ab", "red",
                                                                      [1, "a"])
    assert len(line["long"]) == FIELD_CHARS_MAX + 3


def test_json_carries_the_traceback_of_a_failure() -> None:
    log = Logger(namespace="t")

    def fail() -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.failure("recording {what} failed", Failure(), what="a step")

    line = json_fields(captured(fail)[0])
    assert line["level"] == "critical"
    assert line["message"] == "recording a step failed"
    assert "RuntimeError: boom" in line["traceback"]


@pytest_twisted.inlineCallbacks
def test_twisted_port_and_protocol_chatter_is_recognised() -> None:
    """The real lines Twisted logs when a UDP port opens and closes."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        yield port.stopListening()
    finally:
        globalLogPublisher.removeObserver(events.append)
    legacy = [e for e in events if e.get("log_namespace") == "log_legacy"]
    texts = {e.get("log_text") for e in legacy}
    assert any(str(t).startswith("Starting protocol <") for t in texts), texts
    assert any(str(t).startswith("(UDP Port") for t in texts), texts
    assert all(is_twisted_chatter(e) for e in legacy), texts
    assert not is_twisted_chatter(one_event(serial="s", previous="a", state="b", actor="c"))


@pytest.mark.parametrize(("log_format", "level", "chatter_shown"), [
    ("text", "info", False), ("json", "info", False), ("json", "debug", True),
    ("text", "debug", True),
])
def test_chatter_only_at_debug(log_format: str, level: str, chatter_shown: bool) -> None:
    from twisted.python import log as legacy_log

    stream = io.StringIO()
    observer = make_observer(log_format, level, stream)
    events = captured(lambda: (
        legacy_log.msg("Starting protocol <pxestack.dhcp.protocol.X object at 0x7f00>"),
        legacy_log.msg("DhcpServerProtocol starting on 6767"),
        legacy_log.msg("(UDP Port 6767 Closed)"),
        Logger(namespace="pxestack.service.ports").info("listening on udp {port}", port=67),
        Logger(namespace="pxestack").debug("a debug line"),
    ))
    for event in events:
        observer(event)
    text = stream.getvalue()
    assert "listening on udp 67" in text
    assert ("Starting protocol" in text) is chatter_shown
    assert ("starting on 6767" in text) is chatter_shown
    assert ("Port 6767 Closed" in text) is chatter_shown
    assert ("a debug line" in text) is (level == "debug")
    if log_format == "json":
        lines = [json.loads(line) for line in text.splitlines()]
        assert all(set(line) >= {"time", "level", "namespace", "message"} for line in lines)
        listening = [line for line in lines if line["message"] == "listening on udp 67"]
        assert [(line["level"], line["port"]) for line in listening] == [("info", 67)]
