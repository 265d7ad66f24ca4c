"""Boot-storm admission wired into the DHCP service (lag probe, log lines, configuration)
and the neighbour-table check at start-up."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from pxestack.config import load_config
from pxestack.config.admission import AdmissionConfig
from pxestack.config.dhcp import PoolConfig
from pxestack.dhcp.client import Firmware
from pxestack.dhcp.server import InterfaceInfo
from pxestack.errors import ConfigError
from pxestack.service.admission import AdmissionWiring
from pxestack.service.neighbours import (
    HEADROOM,
    advice,
    attached_addresses,
    read_limits,
    warn_neighbour_limits,
)
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


IFACE = InterfaceInfo("eth9", IPv4Address("198.18.0.1"), IPv4Network("198.18.0.0/24"))


def discover(n: int) -> DhcpMessage:
    return DhcpMessage(op=c.BOOTREQUEST, xid=n, chaddr=mac(n),
                       options=DhcpOptions({c.OPT_MESSAGE_TYPE: bytes((c.DHCPDISCOVER,))}))


class Core:
    admission: Any = None


def captured(run: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        run()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    return seen


# -- the wiring ----------------------------------------------------------------------------


def test_lag_probe_measures_how_late_its_timer_fires() -> None:
    clock = Clock()
    wiring = AdmissionWiring(AdmissionConfig(max_loop_lag=0.5, lag_interval=0.1), clock)
    wiring.start()
    for _ in range(10):
        clock.advance(0.1)
    assert wiring.gate.lag == pytest.approx(0.0, abs=1e-9)
    # The reactor was busy for 2 s: the timer fired 1.9 s late.
    clock.advance(2.0)
    assert wiring.gate.lag > 0.5
    assert not wiring.admit(discover(1), IFACE, Firmware.PXE, clock.seconds())
    for _ in range(30):
        clock.advance(0.1)
    assert wiring.gate.lag < 0.5
    assert wiring.admit(discover(1), IFACE, Firmware.PXE, clock.seconds())
    wiring.stop()
    assert not clock.getDelayedCalls()


def test_lag_is_ignored_when_the_signal_is_off() -> None:
    clock = Clock()
    wiring = AdmissionWiring(AdmissionConfig(max_loop_lag=0.0), clock)
    wiring.start()
    clock.advance(5.0)  # the tick fires 4.9 s late
    assert wiring.gate.lag == 0.0
    wiring.stop()
    assert not clock.getDelayedCalls()


def test_each_machine_deferred_and_admitted_is_logged_once_at_info() -> None:
    clock = Clock()
    wiring = AdmissionWiring(AdmissionConfig(max_starting=1, max_loop_lag=0.0), clock)
    core = Core()
    wiring.attach(core)

    def run() -> None:
        assert core.admission(discover(1), IFACE, Firmware.PXE, 0.0)
        assert not core.admission(discover(2), IFACE, Firmware.PXE, 1.0)
        assert not core.admission(discover(2), IFACE, Firmware.PXE, 5.0)
        assert core.admission(discover(1), IFACE, Firmware.IPXE, 6.0)
        assert core.admission(discover(2), IFACE, Firmware.PXE, 13.0)

    lines = [e for e in captured(run) if "dhcp admission" in e.get("log_format", "")]
    assert [e["log_level"].name for e in lines] == ["info", "info"]
    assert "deferred" in lines[0]["log_format"] and lines[0]["mac"] == "02:00:00:00:00:02"
    assert "admitted after waiting" in lines[1]["log_format"]
    assert lines[1]["waited"] == pytest.approx(12.0)


def test_metrics_read_the_gate() -> None:
    from pxestack.metrics import Metrics

    metrics = Metrics()
    wiring = AdmissionWiring(AdmissionConfig(max_starting=1), Clock())
    wiring.attach(Core(), metrics)
    wiring.admit(discover(1), IFACE, Firmware.PXE, 0.0)
    wiring.admit(discover(2), IFACE, Firmware.PXE, 0.0)
    text = metrics.render()[0].decode()
    assert 'pxestack_dhcp_admission_total{event="deferred"} 1.0' in text
    assert "pxestack_dhcp_admission_starting 1.0" in text


def test_the_tick_answers_a_waiting_machine_while_it_listens() -> None:
    clock = Clock()
    wiring = AdmissionWiring(AdmissionConfig(max_starting=1, max_loop_lag=0.0,
                                             lag_interval=0.1), clock)
    replayed: list[tuple[int, str]] = []
    # A waiting machine's DISCOVER is kept as its datagram and replayed as such.
    wiring.replay = lambda datagram, interface: replayed.append(
        (decode_dhcp(datagram).xid, interface))
    wiring.start()
    assert wiring.admit(discover(1), IFACE, Firmware.PXE, clock.seconds())
    assert not wiring.admit(discover(2), IFACE, Firmware.PXE, clock.seconds())
    clock.advance(0.1)
    assert replayed == []
    assert wiring.admit(discover(1), IFACE, Firmware.IPXE, clock.seconds())  # room
    clock.advance(0.1)
    assert replayed == [(2, "eth9")]
    # The replayed DISCOVER is now answered.
    assert wiring.admit(discover(2), IFACE, Firmware.PXE, clock.seconds())
    wiring.stop()


def test_the_tick_reads_the_provisioning_backlog() -> None:
    clock = Clock()
    backlog = [40]
    wiring = AdmissionWiring(AdmissionConfig(max_backlog=32), clock, backlog=lambda: backlog[0])
    wiring.start()
    clock.advance(0.1)
    assert wiring.gate.backlog == 40
    assert not wiring.admit(discover(1), IFACE, Firmware.PXE, clock.seconds())
    backlog[0] = 3
    clock.advance(0.1)
    # Machine 1 is waiting and still listening: the tick itself admits it.
    assert wiring.gate.starting == 1
    wiring.stop()


def test_replay_goes_through_the_interfaces_protocol() -> None:
    wiring = AdmissionWiring(AdmissionConfig(), Clock())
    got: list[Any] = []

    class Protocol:
        def receive_batch(self, datagrams: Any) -> None:
            got.extend(datagrams)

    wiring.replay_through({"eth9": Protocol()})
    assert wiring.replay is not None
    wiring.replay(encode_dhcp(discover(5)), "eth9")
    wiring.replay(encode_dhcp(discover(6)), "other")
    assert len(got) == 1 and got[0][1] == ("0.0.0.0", 68)
    assert decode_dhcp(got[0][0]).xid == 5


# -- configuration -------------------------------------------------------------------------


def _dhcp(tmp_path: Path, admission: dict[str, Any]) -> Any:
    return load_config({"dhcp": {
        "pools": [{"subnet": "198.18.0.0/24", "start": "198.18.0.10", "end": "198.18.0.99"}],
        "admission": admission}}, base_dir=tmp_path)


def test_admission_defaults_and_values(tmp_path: Path) -> None:
    config = _dhcp(tmp_path, {})
    assert config.dhcp.admission == AdmissionConfig()
    config = _dhcp(tmp_path, {"max_starting": 10, "max_loop_lag": 0, "enabled": False})
    assert config.dhcp.admission.max_starting == 10
    assert config.dhcp.admission.max_loop_lag == 0.0 and not config.dhcp.admission.enabled


@pytest.mark.parametrize(("admission", "field"), [
    ({"max_starting": 0}, "dhcp.admission.max_starting"),
    ({"max_starting": "many"}, "dhcp.admission.max_starting"),
    ({"start_timeout": 0.5}, "dhcp.admission.start_timeout"),
    ({"max_loop_lag": -1}, "dhcp.admission.max_loop_lag"),
    ({"max_loop_lag": 0.05, "lag_interval": 0.1}, "dhcp.admission.max_loop_lag"),
    ({"lag_interval": 0}, "dhcp.admission.lag_interval"),
    ({"max_backlog": -1}, "dhcp.admission.max_backlog"),
    ({"max_startng": 3}, "dhcp.admission.max_startng"),
])
def test_bad_admission_settings_name_the_field(
    tmp_path: Path, admission: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _dhcp(tmp_path, admission)
    assert field in str(info.value)


# -- the neighbour table -------------------------------------------------------------------


def pool(subnet: str, start: str, end: str) -> PoolConfig:
    return PoolConfig(IPv4Network(subnet), IPv4Address(start), IPv4Address(end))


def limits_dir(tmp_path: Path, scope: str = "default", values: tuple[int, ...] = (128, 512, 1024)
               ) -> Path:
    directory = tmp_path / scope
    directory.mkdir(parents=True)
    for name, value in zip(("gc_thresh1", "gc_thresh2", "gc_thresh3"), values, strict=True):
        (directory / name).write_text(f"{value}\n")
    return tmp_path


def test_only_pools_on_the_served_networks_count() -> None:
    pools = [pool("198.18.0.0/16", "198.18.1.0", "198.18.8.255"),  # 2048 addresses
             pool("198.19.7.0/24", "198.19.7.10", "198.19.7.20")]  # behind a relay
    assert attached_addresses(pools, [IPv4Network("198.18.0.0/15")]) == 2048 + 11
    assert attached_addresses(pools, [IPv4Network("198.18.0.0/16")]) == 2048


def test_advice_names_the_exact_sysctl_and_never_lowers() -> None:
    found = advice(3000, {"gc_thresh1": 128, "gc_thresh2": 4000, "gc_thresh3": 1024},
                   "net.ipv4.neigh.default")
    assert found is not None and found.limit == 1024
    assert found.command == ("sysctl -w net.ipv4.neigh.default.gc_thresh1=1024 "
                             "net.ipv4.neigh.default.gc_thresh2=4000 "
                             "net.ipv4.neigh.default.gc_thresh3=4096")
    assert "neighbor table overflow" in found.message()
    assert advice(1024 - HEADROOM, {"gc_thresh1": 1, "gc_thresh2": 2, "gc_thresh3": 1024},
                  "x") is None


def test_limits_per_interface_win_then_default_then_nothing(tmp_path: Path) -> None:
    root = limits_dir(tmp_path)
    assert read_limits("eth0", root) == (
        {"gc_thresh1": 128, "gc_thresh2": 512, "gc_thresh3": 1024}, "net.ipv4.neigh.default")
    limits_dir(tmp_path, "eth0", (1, 2, 3))
    assert read_limits("eth0", root)[1] == "net.ipv4.neigh.eth0"
    assert read_limits("eth1", tmp_path / "absent") == ({}, "")


def test_start_up_warning(tmp_path: Path) -> None:
    root = limits_dir(tmp_path)
    interfaces = [InterfaceInfo("eth0", IPv4Address("198.18.0.1"), IPv4Network("198.18.0.0/15"))]
    pools = [pool("198.18.0.0/15", "198.19.0.1", "198.19.15.255")]
    seen = captured(lambda: warn_neighbour_limits(pools, interfaces, root))
    warnings = [e for e in seen if e.get("log_level") is not None
                and e["log_level"].name == "warn" and "command" in e]
    assert len(warnings) == 1
    assert "net.ipv4.neigh.default.gc_thresh3=5120" in warnings[0]["command"]
    small = [pool("198.18.0.0/15", "198.19.0.1", "198.19.0.100")]
    assert warn_neighbour_limits(small, interfaces, root) is None
    assert warn_neighbour_limits(pools, interfaces, tmp_path / "absent") is None


def test_the_provisioning_layer_reports_its_backlog(tmp_path: Path) -> None:
    from pxestack.config import load_quickstart
    from pxestack.config.checks import create_token_file
    from pxestack.provision.service import provisioning_extensions

    config = load_quickstart(base_dir=tmp_path)
    assert config.provision is not None and config.provision.api.token_file is not None
    create_token_file(config.provision.api.token_file)
    ext = provisioning_extensions(config)
    assert ext.backlog() == 0
