"""``pxestack explain`` on captures built from the real OVMF exchanges
(``tests/explain_captures.py``)."""

from __future__ import annotations

import io
import json
import random
from ipaddress import IPv4Address
from pathlib import Path

import dpkt
import pytest
from explain_captures import DEFAULTS, GOLDEN, PROXY, SCENARIOS

from pxestack import explain as ex
from pxestack.cli import main
from pxestack.dhcp.policy import StaticBootPolicy
from pxestack.errors import MalformedPacket
from pxestack.wire.capture import Capture, Segment, read_capture

SETTINGS = ex.ExplainSettings(mode="proxy", defaults_for=lambda _address: DEFAULTS,
                              policy=StaticBootPolicy(), server_address=PROXY,
                              source="test settings")


def run(name: str, settings: ex.ExplainSettings | None = SETTINGS) -> ex.Explanation:
    return ex.explain(read_capture(SCENARIOS[name]()), settings)


def kinds(explanation: ex.Explanation) -> list[str]:
    return [finding.kind for finding in explanation.findings]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_committed_captures_are_what_the_script_builds(name: str) -> None:
    assert (GOLDEN / f"{name}.pcap").read_bytes() == SCENARIOS[name](), (
        "regenerate with: python tests/explain_captures.py --write")


def test_healthy_proxy_boot_has_no_problems() -> None:
    explanation = run("healthy")
    assert kinds(explanation) == []
    (machine,) = explanation.machines
    first, second = machine.transactions
    assert [a.message_type for a in first.asked] == ["DISCOVER", "REQUEST"]
    assert first.asked[0].firmware == "pxe" and first.asked[0].arch == "efi-x64"
    assert [(a.message_type, a.by) for a in first.answers] == [
        ("OFFER", "another DHCP server"), ("OFFER", "pxestack"), ("ACK", "another DHCP server")]
    # What pxestack would answer, and why: the real proxy core on the captured requests.
    discover, request = first.would
    assert (discover.answer, discover.boot_file, discover.option_43) == ("OFFER", "ipxe.efi",
                                                                         True)
    assert discover.reason == "PXE firmware: ipxe.efi"
    assert request.answer == "nothing" and "port 4011" in request.reason
    assert second.asked[0].firmware == "ipxe" and second.asked[0].user_classes == ("iPXE",)
    assert second.would[0].boot_file == "http://198.18.0.2:8080/boot.ipxe"
    (transfer,) = machine.tftp
    assert transfer.status == "complete" and transfer.blksize == 1468
    (get,) = machine.http
    assert (get.path, get.status) == ("/boot.ipxe", 200)
    assert "no problems found" in ex.format_text(explanation)


def test_extra_proxy_ack_and_decline_are_named() -> None:
    explanation = run("proxy_ack_and_decline")
    assert kinds(explanation) == [ex.TWO_SERVERS, ex.DECLINE]
    two = explanation.findings[0].message
    assert "198.18.0.2 (pxestack: yiaddr 0.0.0.0, a proxyDHCP ACK on port 67" in two
    assert "198.18.0.1 (another DHCP server: address 198.18.0.138" in two
    assert "the client then declined" in two
    # With this configuration pxestack would not ACK the port-67 REQUEST.
    request_would = explanation.machines[0].transactions[0].would[1]
    assert request_would.asked == "REQUEST" and request_would.answer == "nothing"


def test_option_60_without_43() -> None:
    explanation = run("option_60_without_43")
    assert kinds(explanation) == [ex.NO_OPTION_43]
    assert "never did" in explanation.findings[0].message


def test_chainload_loop() -> None:
    explanation = run("chainload_loop")
    assert kinds(explanation) == [ex.CHAINLOAD_LOOP]
    assert "ipxe.efi again (2 time(s)" in explanation.findings[0].message
    # pxestack would hand the chainloaded iPXE the script instead.
    would = [t.would[0] for t in explanation.machines[0].transactions]
    assert [w.boot_file for w in would] == ["ipxe.efi", *2 * ["http://198.18.0.2:8080/boot.ipxe"]]


def test_tftp_stall() -> None:
    explanation = run("tftp_stalled")
    assert kinds(explanation) == [ex.TFTP_STALLED]
    assert "last DATA block 5, last ACK for block 4" in explanation.findings[0].message


def test_script_never_requested() -> None:
    explanation = run("script_never_requested")
    assert kinds(explanation) == [ex.SCRIPT_NOT_FETCHED]
    assert "http://198.18.0.2:8080/boot.ipxe" in explanation.findings[0].message


def test_without_settings_servers_are_named_by_role() -> None:
    explanation = run("proxy_ack_and_decline", None)
    assert kinds(explanation) == [ex.TWO_SERVERS, ex.DECLINE]
    answers = explanation.machines[0].transactions[0].answers
    assert [a.by for a in answers] == ["DHCP server", "proxyDHCP", "proxyDHCP", "DHCP server"]
    assert explanation.machines[0].transactions[0].would == []


def test_pcapng_is_read() -> None:
    pcap = read_capture(SCENARIOS["healthy"]())
    out = io.BytesIO()
    writer = dpkt.pcapng.Writer(out)
    for _, frame in dpkt.pcap.Reader(io.BytesIO(SCENARIOS["healthy"]())):
        writer.writepkt(frame, ts=1.0)
    ng = read_capture(out.getvalue())
    assert ng.format == "pcapng"
    assert [s.payload for s in ng.segments] == [s.payload for s in pcap.segments]


def test_not_a_capture_is_refused() -> None:
    with pytest.raises(MalformedPacket):
        read_capture(b"GIF89a not a capture")


def test_hostile_captures_never_raise() -> None:
    """Cut, flipped and garbage frames become malformed-packet findings, not tracebacks."""
    rng = random.Random(7)
    base = SCENARIOS["healthy"]()
    frames = list(dpkt.pcap.Reader(io.BytesIO(base)))
    for _ in range(60):
        out = io.BytesIO()
        writer = dpkt.pcap.Writer(out)
        for ts, frame in frames:
            data = bytearray(frame)
            if rng.random() < 0.3:
                for _ in range(rng.randint(1, 8)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.1:
                data = data[: rng.randrange(len(data))]
            writer.writepkt(bytes(data), ts=ts)
        blob = out.getvalue()
        if rng.random() < 0.2:
            blob = blob[: rng.randrange(24, len(blob))]
        explanation = ex.explain(read_capture(blob), SETTINGS)
        ex.format_text(explanation)
        json.dumps(ex.to_json(explanation))


def test_malformed_dhcp_is_reported() -> None:
    capture = read_capture(SCENARIOS["healthy"]())
    bad = capture.segments[0].__class__(
        99, 1.0, "udp", capture.segments[0].source, 68, capture.segments[0].destination, 67,
        b"\x01\x01\x06")
    broken = capture.__class__(capture.format, capture.frames + 1,
                               (*capture.segments, bad), ())
    explanation = ex.explain(broken, SETTINGS)
    assert kinds(explanation) == [ex.MALFORMED]
    assert "frame 99: malformed DHCP message" in explanation.findings[0].message


def test_cli_text_json_config_and_mac(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    config = tmp_path / "pxestack.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "dhcp:\n  mode: proxy\n  server_address: 198.18.0.2\n"
        "http:\n  public_url: http://198.18.0.2:8080\n")
    capture = GOLDEN / "proxy_ack_and_decline.pcap"
    assert main(["explain", str(capture), "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "[two-dhcp-servers]" in text and "[dhcp-decline]" in text
    assert "pxestack's DHCP address: 198.18.0.2 (dhcp.server_address in" in text
    assert "REQUEST: nothing (a REQUEST on port 67" in text
    assert main(["explain", str(capture), "--json", "--mac", "52-54-00-E2-E0-04"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["kind"] for f in data["findings"]] == ["two-dhcp-servers", "dhcp-decline"]
    assert main(["explain", str(capture), "--json", "--mac", "52:54:00:00:00:99"]) == 0
    assert json.loads(capsys.readouterr().out)["machines"] == []


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(tmp_path / "missing.pcap")]) == 1
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"junk")
    assert main(["explain", str(junk)]) == 1
    assert "not a pcap or pcapng capture" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("dhcp:\n  mode: sideways\n")
    assert main(["explain", str(GOLDEN / "healthy.pcap"), "--config", str(bad)]) == 2


def test_server_mode_runs_the_full_servers_boot_decision() -> None:
    """In server mode PXE firmware gets the file without option 60 (what the full server
    sends), where the other server sent option 60 without 43."""
    settings = ex.ExplainSettings(mode="server", defaults_for=lambda _address: DEFAULTS,
                                  policy=StaticBootPolicy(), server_address=PROXY)
    explanation = run("option_60_without_43", settings)
    would = explanation.machines[0].transactions[0].would[0]
    assert (would.answer, would.boot_file, would.vendor_class) == ("OFFER", "ipxe.efi", None)
    assert would.reason == "PXE firmware: ipxe.efi"
    ignoring = ex.ExplainSettings(
        mode="server", defaults_for=lambda _address: DEFAULTS, server_address=PROXY,
        policy=StaticBootPolicy(ignored_macs=[explanation.machines[0].mac]))
    would = run("option_60_without_43", ignoring).machines[0].transactions[0].would[0]
    assert (would.answer, would.reason) == ("nothing", "policy ignores this machine")


def tftp_segments(*packets: tuple[bool, bytes]) -> Capture:
    """A capture of one TFTP exchange: (from the client?, payload) in order."""
    client, server = IPv4Address("198.18.0.138"), IPv4Address("198.18.0.2")
    segments = []
    for i, (from_client, payload) in enumerate(packets, 1):
        if payload.startswith(b"\x00\x01"):  # a read request goes to port 69
            segments.append(Segment(i, float(i), "udp", client, 1700, server, 69, payload))
        elif from_client:
            segments.append(Segment(i, float(i), "udp", client, 1700, server, 50000, payload))
        else:
            segments.append(Segment(i, float(i), "udp", server, 50000, client, 1700, payload))
    return Capture("pcap", len(segments), tuple(segments), ())


RRQ = b"\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00"
OACK = b"\x00\x06tsize\x00100\x00"


def test_tftp_size_probe_error_and_silence() -> None:
    probe = ex.explain(tftp_segments((True, RRQ), (False, OACK),
                                     (True, b"\x00\x05\x00\x08abort\x00")))
    assert kinds(probe) == []
    assert probe.machines[0].tftp[0].status == "size probe"
    refused = ex.explain(tftp_segments((True, RRQ), (False, b"\x00\x05\x00\x01no such file\x00")))
    assert kinds(refused) == [ex.TFTP_ERROR]
    assert "server error 1: no such file" in refused.findings[0].message
    silent = ex.explain(tftp_segments((True, RRQ), (True, RRQ)))
    assert kinds(silent) == [ex.TFTP_UNANSWERED]
    assert "1 retransmissions" in silent.findings[0].message
