"""Unit tests of the benchmark harness's pure parts: parsing, the rate search, targets.

Run with ``.venv/bin/pytest benchmarks/test_harness.py`` (the default test run only
collects ``tests/``).  No namespaces, no servers, no timing.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.bootstorm import dropped_in_the_middle, percentiles, profile_plan, verify
from benchmarks.common import PXESTACK, Results, Summary
from benchmarks.dhcp_bench import PerfdhcpRun, parse_perfdhcp, search_sustained, servers
from benchmarks.floor_dhcp import FloorResponder
from benchmarks.peers import Peers
from benchmarks.report import TARGETS, evaluate_targets, render_markdown_tables, render_text
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

#: The tail of a real perfdhcp 2.2 report (Kea at 1000 DORA/s for 4 s in the lab).
PERFDHCP_REPORT = """\
***Rate statistics***
Rate: 929.789 4-way exchanges/second, expected rate: 1000

***Malformed Packets***
Malformed packets: 0
***Statistics for: DISCOVER-OFFER***
sent packets: 3999
received packets: 3990
drops: 9
drops ratio: 0.2 %
orphans: 0
rejected leases: 0
non unique addresses: 0

min delay: 0.096 ms
avg delay: 0.144 ms
max delay: 3.867 ms
std deviation: 0.119 ms
collected packets: 0

***Statistics for: REQUEST-ACK***
sent packets: 3990
received packets: 3980
drops: 10
drops ratio: 0.250 %
orphans: 0
rejected leases: 0
non unique addresses: 0

min delay: 0.097 ms
avg delay: 0.170 ms
max delay: 3.580 ms
std deviation: 0.106 ms
collected packets: 0
"""


def test_parse_perfdhcp_report() -> None:
    run = PerfdhcpRun(target_rate=1000, period=4)
    parse_perfdhcp(PERFDHCP_REPORT, run)
    assert (run.discover_sent, run.offers_received) == (3999, 3990)
    assert (run.requests_sent, run.acks_received) == (3990, 3980)
    assert run.do_avg_ms == pytest.approx(0.144)
    assert run.ra_max_ms == pytest.approx(3.580)
    assert run.completed == 3980
    assert run.incomplete_fraction == pytest.approx(19 / 3999)
    assert run.avg_latency_ms == pytest.approx(0.144 + 0.170)
    assert run.max_latency_ms == pytest.approx(3.867)
    # 3980 / 4 s = 995/s >= 95 % of 1000, and 0.48 % incomplete <= 1 %.
    assert run.passes()


def test_parse_perfdhcp_discover_offer_only() -> None:
    report = PERFDHCP_REPORT.split("***Statistics for: REQUEST-ACK***")[0]
    run = PerfdhcpRun(target_rate=1000, period=4, full_exchange=False)
    parse_perfdhcp(report, run)
    assert run.completed == 3990
    assert run.avg_latency_ms == pytest.approx(0.144)
    assert run.requests_sent == 0


def test_a_step_fails_on_goodput_even_without_losses() -> None:
    run = PerfdhcpRun(target_rate=1000, period=4, discover_sent=3000, acks_received=3000)
    assert run.incomplete_fraction == 0
    assert not run.passes()  # 750/s is below 95 % of the target


def _fake_step(capacity: int, tried: list[int]) -> Callable[[int], PerfdhcpRun]:
    def step(rate: int) -> PerfdhcpRun:
        tried.append(rate)
        done = min(rate, capacity) * 4
        return PerfdhcpRun(target_rate=rate, period=4, discover_sent=rate * 4, acks_received=done)

    return step


@given(st.integers(min_value=1, max_value=40_000))
def test_search_finds_a_passing_rate_within_the_last_bracket(capacity: int) -> None:
    rates = (250, 500, 1000, 2000, 4000, 8000, 16000)
    tried: list[int] = []
    outcome = search_sustained(_fake_step(capacity, tried), rates, bisections=2)
    assert len(tried) <= len(rates) + 2
    best = outcome.sustained_rate
    # A pass allows 1 % incomplete, so the best rate is within 1 % of the capacity at most;
    # every higher rate tried failed.
    assert best * 0.99 <= capacity
    assert all(rate * 0.99 > capacity for rate in tried if rate > best)
    if capacity >= rates[-1]:
        assert best == rates[-1]
        assert outcome.capped


def test_search_bisects_below_the_first_step() -> None:
    tried: list[int] = []
    outcome = search_sustained(_fake_step(190, tried), (250, 500), bisections=2)
    assert tried == [250, 125, 187]
    assert outcome.sustained_rate == 187


def test_summary_median_and_range() -> None:
    summary = Summary((3.0, 1.0, 2.0))
    assert (summary.median, summary.low, summary.high) == (2.0, 1.0, 3.0)
    assert summary.format() == "2.00 (1.00-3.00)"


def _results() -> Results:
    results = Results(meta={})
    for server, values in ((PXESTACK, [90, 100, 110]), ("tftpd-hpa", [80]), ("atftpd", [95])):
        results.case("tftp", "lockstep_1468", server, "MB/s").values.extend(values)
    for server, seconds in ((PXESTACK, [3.0, 2.0, 4.0]), ("tftpd-hpa", [10.0, 11.0, 12.0])):
        results.case("tftp", "lossy_1pct", server, "s", higher_is_better=False).values.extend(
            seconds
        )
    results.case("dhcp", "dora_sustained", PXESTACK, "DORA/s").values.extend([9000.0])
    results.case("dhcp", "dora_sustained", "kea", "DORA/s").values.extend([4000.0])
    results.case("dhcp", "dora_naks", PXESTACK, "NAKs", higher_is_better=False).values.extend(
        [0.0, 2.0]
    )
    return results


def test_targets_against_the_fastest_peer_and_for_times() -> None:
    targets = {t["case"]: t for t in evaluate_targets(_results())}
    lockstep = targets["lockstep_1468"]
    assert lockstep["peer"] == "atftpd"  # the faster of the two peers
    assert lockstep["ratio"] == pytest.approx(100 / 95)
    assert lockstep["met"] is True
    lossy = targets["lossy_1pct"]
    assert lossy["ratio"] == pytest.approx(3.0 / 11.0)
    assert lossy["met"] is True  # 0.27 <= 0.3
    assert targets["window8_1468"]["met"] is None  # never measured


def test_dora_target_needs_zero_naks() -> None:
    targets = {t["case"]: t for t in evaluate_targets(_results())}
    dora = targets["dora_sustained"]
    assert dora["ratio"] == pytest.approx(2.25)
    assert dora["pxestack_naks"] == 2.0
    assert dora["met"] is False


def test_text_report_shows_ratios_and_verdicts() -> None:
    results = _results()
    results.targets = evaluate_targets(results)
    text = render_text(results)
    assert "tftp/lockstep_1468 [MB/s, higher is better]" in text
    assert "1.05x" in text  # pxestack / atftpd
    assert "NOT MET" in text and "not measured" in text
    assert "| lossy_1pct (s) |" in render_markdown_tables(results)


# -- boot storm ----------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=5000))
def test_profile_plan_accounts_for_every_machine(machines: int) -> None:
    plan = profile_plan(machines)
    assert sum(plan.values()) == machines
    assert plan["core"] == min(3, machines)
    assert all(count >= 0 for count in plan.values())


def test_percentiles_pick_ranked_values() -> None:
    stats = percentiles([float(v) for v in range(1, 101)])
    assert (stats["p50"], stats["p99"], stats["max"]) == (51.0, 99.0, 100.0)
    assert percentiles([]) == {}


def _storm(machines: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    plan = profile_plan(machines)
    profiles = [name for name, count in plan.items() for _ in range(count)]
    report = {
        "machines": [
            {"serial": f"BS-{i}", "address": f"198.19.0.{i + 1}", "error": ""}
            for i in range(machines)
        ]
    }
    hosts = [
        {"Serial": f"bs-{i}", "State": "installed", "InternalAddr": f"198.18.100.{i + 1}",
         "Profile": profiles[i]}
        for i in range(machines)
    ]  # fmt: skip
    return report, hosts


def test_verify_accepts_a_clean_storm() -> None:
    report, hosts = _storm(20)
    assert verify(report, hosts, 20) == []


def test_verify_names_every_broken_invariant() -> None:
    report, hosts = _storm(20)
    report["machines"][1]["address"] = report["machines"][0]["address"]
    report["machines"][2]["error"] = "tftp: timed out"
    hosts[3]["State"] = "installing"
    hosts[4]["Profile"] = "core"
    hosts[5]["InternalAddr"] = hosts[6]["InternalAddr"]
    problems = " | ".join(verify(report, hosts, 20))
    assert "1 of 20 machines failed" in problems
    assert "addresses to several machines" in problems
    assert "not installed" in problems
    assert "duplicate InternalAddr" in problems
    assert "profile counts" in problems


def test_verify_fails_a_machine_dropped_after_its_first_dhcp() -> None:
    report, hosts = _storm(20)
    report["machines"][0]["restarts"] = {"dhcp_pxe": 2}  # held back: fine
    assert verify(report, hosts, 20) == []
    report["machines"][1]["restarts"] = {"tftp": 1, "dhcp_pxe": 1}
    report["machines"][2]["restarts"] = {"dhcp_ipxe": 2}
    assert dropped_in_the_middle(report) == {"tftp": 1, "dhcp_ipxe": 2}
    assert "3 boots failed after their first DHCP" in " ".join(verify(report, hosts, 20))


def test_storm_curve_keeps_one_point_per_key(tmp_path: Path) -> None:
    from benchmarks.storm_curve import load_points, plot, save_point

    results = tmp_path / "curve.json"
    base = {"machines": 1000, "git": True, "tftp_workers": 2, "admission": True,
            "checks_passed": True, "time_to_provision_all_s": 50.0}
    save_point(results, {**base, "arrival_rate": 200.0, "goodput_per_s": 18.0})
    save_point(results, {**base, "arrival_rate": 100.0, "goodput_per_s": 17.0})
    save_point(results, {**base, "arrival_rate": 200.0, "goodput_per_s": 19.0})
    points = load_points(results)
    assert [(p["arrival_rate"], p["goodput_per_s"]) for p in points] == [(100.0, 17.0),
                                                                          (200.0, 19.0)]
    # (Drawing needs matplotlib, from the bench extra: the sweep itself draws the plot.)
    assert plot([], tmp_path / "none.png") is None


FLOOR_SERVER = IPv4Address("198.18.0.1")
FLOOR_RELAY = IPv4Address("198.18.0.2")


def _floor() -> FloorResponder:
    return FloorResponder(
        FLOOR_SERVER, IPv4Address("198.19.0.1"), IPv4Address("198.19.0.2"), FLOOR_RELAY,
        netmask=IPv4Address("255.254.0.0"), lease_seconds=600,
    )  # fmt: skip


def _request(kind: int, mac_last: int, *, first: dict[int, bytes] | None = None,
             **fields: object) -> bytes:  # fmt: skip
    """A relayed DHCP request encoded by pxestack's own codec (which writes option 53 first)."""
    items = dict(first or {})
    items[c.OPT_MESSAGE_TYPE] = bytes((kind,))
    message = DhcpMessage(
        op=c.BOOTREQUEST, xid=0x1000 + mac_last, chaddr=bytes((2, 0, 0, 0, 0, mac_last)),
        hops=1, flags=0x8000, giaddr=FLOOR_RELAY, options=DhcpOptions(items),
    ).replace(**fields)  # fmt: skip
    return encode_dhcp(message)


def _decoded(reply: bytearray | None) -> DhcpMessage:
    assert reply is not None
    return decode_dhcp(bytes(reply))


def test_floor_offers_then_acks_the_same_address() -> None:
    floor = _floor()
    offer = _decoded(floor.answer(_request(c.DHCPDISCOVER, 7)))
    assert (offer.op, offer.xid, offer.chaddr, offer.flags) == (
        c.BOOTREPLY, 0x1007, bytes((2, 0, 0, 0, 0, 7)), 0x8000,
    )  # fmt: skip
    assert (offer.message_type, offer.yiaddr, offer.giaddr) == (
        c.DHCPOFFER, IPv4Address("198.19.0.1"), FLOOR_RELAY,
    )  # fmt: skip
    assert offer.options.raw(c.OPT_SERVER_ID) == FLOOR_SERVER.packed
    assert offer.options.raw(c.OPT_SUBNET_MASK) == IPv4Address("255.254.0.0").packed
    assert offer.options.raw(c.OPT_LEASE_TIME) == (600).to_bytes(4, "big")
    # A second client gets the next address; the first one's retransmission keeps its own.
    second = _decoded(floor.answer(_request(c.DHCPDISCOVER, 8)))
    assert second.yiaddr == IPv4Address("198.19.0.2")
    assert _decoded(floor.answer(_request(c.DHCPDISCOVER, 7))).yiaddr == offer.yiaddr
    ack = _decoded(floor.answer(_request(c.DHCPREQUEST, 7)))
    assert (ack.message_type, ack.xid, ack.yiaddr) == (c.DHCPACK, 0x1007, offer.yiaddr)
    # The pool wraps around when exhausted.
    assert _decoded(floor.answer(_request(c.DHCPDISCOVER, 9))).yiaddr == offer.yiaddr


def test_floor_acks_the_requested_address_and_scans_for_option_53() -> None:
    requested = IPv4Address("198.19.7.7")
    encoded = _request(c.DHCPREQUEST, 3, first={c.OPT_REQUESTED_IP: requested.packed})
    # pxestack's encoder writes option 53 first: put a PAD and an option 60 before it.
    datagram = encoded[:240] + b"\0" + bytes((60, 9)) + b"PXEClient" + encoded[240:]
    ack = _decoded(_floor().answer(datagram))
    assert (ack.message_type, ack.yiaddr) == (c.DHCPACK, requested)


def test_floor_ignores_garbage_replies_and_foreign_relays() -> None:
    floor = _floor()
    discover = _request(c.DHCPDISCOVER, 1)
    for datagram in (
        b"", b"\x01" * 239, bytes(300), discover[:236] + b"\0\0\0\0" + discover[240:],
        b"\x02" + discover[1:],  # a BOOTREPLY
        _request(c.DHCPDISCOVER, 1, giaddr=IPv4Address("10.0.0.1")),
        _request(8, 1),  # DHCPINFORM
        _request(c.DHCPREQUEST, 99),  # unknown client, no option 50, no ciaddr
    ):  # fmt: skip
        assert floor.answer(datagram) is None
    assert floor.addresses == {}


def test_python_floor_runs_last_and_is_no_target_peer() -> None:
    names = [server.name for server in servers(Peers(paths={}, versions={}))]
    assert names[-1] == "python-floor"
    assert all(target.peer != "python-floor" for target in TARGETS)


def test_perfdhcp_runs_in_the_chosen_thread_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The -g mode reaches perfdhcp's command line; an unknown mode is refused up front."""
    import contextlib

    from benchmarks import dhcp_bench

    class _Result:
        returncode = 0
        stdout = ""
        stderr = ""

    class _Host:
        ifname = "pxc0"
        argv: list[str] = []

        def run(self, argv: list[str], **_kwargs: object) -> _Result:
            self.argv = argv
            return _Result()

    class _Lab:
        client = _Host()

    lab = _Lab()
    monkeypatch.setattr(dhcp_bench, "_reply_counters",
                        lambda _lab: {"offer": 0, "ack": 0, "nak": 0})
    with contextlib.suppress(RuntimeError):  # an empty report; only the argv matters here
        dhcp_bench.run_perfdhcp(lab, 1000, 1, full_exchange=False, threads="single")
    argv = lab.client.argv
    assert argv[argv.index("-g") + 1] == "single"
    with pytest.raises(ValueError, match="thread mode"):
        dhcp_bench.run_perfdhcp(lab, 1000, 1, full_exchange=False, threads="many")
    assert dhcp_bench.SearchPlan.full().perfdhcp_threads == "multi"


#: ``perf script -F ip,sym,dso`` of five samples, shaped like those of the veth lab.
PERF_SCRIPT = """\

\t           ff2ce _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)
\t    7fd858fc1d40 [unknown] ([unknown])

\tffffffff814317d2 ktime_get_mono_fast_ns ([kernel.kallsyms])
\tffffffff820994d5 udp_send_skb ([kernel.kallsyms])
\tffffffff8209e140 udp_sendmsg ([kernel.kallsyms])
\t          10acb3 __libc_sendto (/usr/lib/x86_64-linux-gnu/libc.so.6)

\tffffffff82048e55 ip_route_input_slow ([kernel.kallsyms])
\tffffffff81eb1bfe net_rx_action ([kernel.kallsyms])
\tffffffff81369c4d handle_softirqs ([kernel.kallsyms])
\tffffffff8209e140 udp_sendmsg ([kernel.kallsyms])

\tffffffff81e00000 __sys_recvfrom ([kernel.kallsyms])

\tffffffff81e00100 __schedule+0x1f ([kernel.kallsyms])
\t          10acb3 __libc_write (/usr/lib/x86_64-linux-gnu/libc.so.6)
"""


def test_perf_split_sorts_samples_by_where_the_time_went() -> None:
    from benchmarks.dhcp_profile import PERF_CATEGORIES, perf_time_split

    split = perf_time_split(PERF_SCRIPT)
    assert list(split) == list(PERF_CATEGORIES)
    assert split == {
        "sendto: peer's receive (softirq)": 0.2,
        "sendto: send path": 0.2,
        "recvfrom": 0.2,
        "epoll_wait": 0.0,
        "other kernel": 0.2,
        "user space": 0.2,
    }
    assert perf_time_split("") == dict.fromkeys(PERF_CATEGORIES, 0.0)
