"""DHCP hot-path profiling: in-process micro runs and quick perfdhcp runs beside Kea/dnsmasq.

The DHCP performance owner's own measuring script (the full comparative suite is
``python -m benchmarks --only dhcp``).  Two modes:

``micro``
    No sockets.  10 000 perfdhcp-like clients (relayed, option 60 ``PXEClient``) go through
    the real adapter (:class:`~pxestack.dhcp.protocol.DhcpServerProtocol`: decode, core,
    encode) with a lease journal on ``/dev/shm`` and a transport that only keeps the
    payloads (``--metrics`` wires the Prometheus metrics as ``pxestack serve`` does).
    Prints CPU µs (``time.process_time``, so other load on the machine matters
    less) per DISCOVER->OFFER and per REQUEST->ACK; ``--cprofile FILE`` writes a cProfile
    stats file of the same run.

``net``
    The veth lab of ``tests/netlab.py`` (namespaces ``pxt-dhcpprof-<pid>-s/-c``),
    perfdhcp in the client namespace exactly as in the reference method (``-4 -l pxc0 -B -o
    60,PXEClient -R 10000 -r RATE -p PERIOD``), the nftables DNAT rule for broadcast replies
    and the reply counters of ``benchmarks/dhcp_bench.py``.  Each server (pxestack, kea,
    dnsmasq) is started fresh with an empty lease database on tmpfs for every rate and
    repetition; the table shows the median goodput, incomplete share and NAKs.
    ``--search`` runs the suite's sustained-rate search instead of fixed rates;
    ``--py-spy FILE`` records a py-spy profile (``--format raw`` collapsed stacks, or an
    SVG flame graph when FILE ends in .svg) of the pxestack server during each run.
    ``--perf FILE`` records each server with ``perf record -g`` during each run and prints
    where its CPU time went (:func:`perf_time_split`): user space (for pxestack, Python and
    the C library), the UDP ``sendto``/``sendmsg`` of the replies (split into the send
    itself and the peer's receive processing, which the kernel runs as a softirq in the
    sender's context on a veth pair), ``recvfrom``, ``epoll`` and the rest of the kernel
    (Kea's raw-socket sends and dnsmasq's netlink and ioctl calls land there).
    ``--baseline-tree DIR`` adds the pxestack code found in DIR as a fourth server, for
    before/after comparisons in one run.  Besides perfdhcp's figures the table shows the
    server's CPU time (user and system, from ``/proc``) per completed exchange, which
    depends much less on what else the machine is doing than the rates do.

Run as root::

    .venv/bin/python benchmarks/dhcp_profile.py micro
    .venv/bin/python benchmarks/dhcp_profile.py net --rates 2000,4000,6000 --reps 3
    .venv/bin/python benchmarks/dhcp_profile.py net --mode do --search --servers pxestack,dnsmasq
    .venv/bin/python benchmarks/dhcp_profile.py net --rates 6000 --servers pxestack \\
        --py-spy /tmp/dhcp.txt
    .venv/bin/python benchmarks/dhcp_profile.py net --mode do --rates 24000 --reps 1 \\
        --servers pxestack --perf /tmp/dhcp.perf
    git archive <commit> pxestack | tar -x -C /tmp/base   # the code before a change
    .venv/bin/python benchmarks/dhcp_profile.py net --rates 3000 --baseline-tree /tmp/base
"""

from __future__ import annotations

import argparse
import cProfile
import os
import shutil
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks import dhcp_bench as bench
from benchmarks.common import PXESTACK, log, netlab, scratch_dir
from benchmarks.peers import find_peers

CLIENTS = bench.CLIENTS
RELAY = IPv4Address("198.18.0.2")
SERVER = IPv4Address("198.18.0.1")


# --- micro: the adapter without sockets ------------------------------------------------------


class _DiscardTransport:
    """Keeps the last payload written (and counts them); sends nothing."""

    def __init__(self) -> None:
        self.count = 0
        self.last = b""

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count += 1
        self.last = data


def _micro_server(journal_dir: Path, *, metrics: bool = False
                  ) -> tuple[Any, _DiscardTransport, Any]:
    """A DhcpServerProtocol configured like the benchmark's pxestack server; *metrics*
    wires a :class:`~pxestack.metrics.Metrics` to it as ``pxestack serve`` does."""
    from twisted.internet.task import Clock

    from pxestack.config import load_config
    from pxestack.dhcp.journal import LeaseJournal
    from pxestack.dhcp.leases import InMemoryLeaseStore
    from pxestack.dhcp.policy import StaticBootPolicy
    from pxestack.dhcp.protocol import DeadlineTimer, DhcpServerProtocol
    from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo
    from pxestack.service.dhcp import boot_defaults, reservations, server_settings

    path = journal_dir / "micro.yaml"
    path.write_text(
        f"state_dir: {journal_dir}\n"
        "log_level: warn\n"
        "dhcp:\n"
        "  mode: server\n"
        f"  server_address: {SERVER}\n"
        f"  lease_time: {bench.LEASE_SECONDS}\n"
        f"  relays: [{RELAY}]\n"
        f"  max_offers: {CLIENTS + 1024}\n"
        "  pools:\n"
        f"    - subnet: {bench.SUBNET}\n"
        f"      start: {bench.POOL_START}\n"
        f"      end: {bench.POOL_END}\n"
    )
    import yaml

    config = load_config(yaml.safe_load(path.read_text()), source=str(path))
    assert config.dhcp is not None
    clock = Clock()
    clock.advance(1_700_000_000)
    settings = server_settings(config.dhcp)
    journal, _ = LeaseJournal.open(journal_dir / "leases.journal", sync=True)
    store = InMemoryLeaseStore(
        [s.subnet for s in settings.subnets], reservations(config.dhcp),
        max_offers=config.dhcp.max_offers, listener=journal,
    )
    core = DhcpServerCore(settings, store, StaticBootPolicy(), boot_defaults(config, SERVER),
                          event_kinds=frozenset())
    interface = InterfaceInfo("pxs0", SERVER, settings.subnets[0].subnet.network)
    protocol = DhcpServerProtocol(core, interface, timer=DeadlineTimer(core, clock),
                                  reactor=clock)
    if metrics:
        from pxestack.metrics import Metrics

        recorder = Metrics()
        recorder.attach_dhcp_server(core, store, clock.seconds)
        recorder.attach_dhcp_protocol(protocol)
    transport = _DiscardTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    return protocol, transport, journal


#: Offset of the BOOTP ``file`` field (RFC 2131 §2, Figure 1).
_FILE_OFFSET = 108


def _perfdhcp_like(kind: int, mac: bytes, xid: int, extra: dict[int, bytes]) -> bytes:
    """A relayed request shaped like perfdhcp's (giaddr, hops 1, options 53, 55, 60, 61)."""
    from pxestack.wire import constants as c
    from pxestack.wire.dhcp import DhcpMessage, encode_dhcp
    from pxestack.wire.dhcp_options import DhcpOptions

    items = {
        c.OPT_MESSAGE_TYPE: bytes((kind,)),
        c.OPT_PARAMETER_REQUEST_LIST: bytes((1, 28, 2, 3, 15, 6, 12)),
        c.OPT_VENDOR_CLASS_ID: b"PXEClient",
        c.OPT_CLIENT_ID: b"\x01" + mac,
        **extra,
    }
    message = DhcpMessage(op=c.BOOTREQUEST, xid=xid, chaddr=mac, hops=1, giaddr=RELAY,
                          options=DhcpOptions(items))
    return encode_dhcp(message)


#: The client of the packet templates, and the option 50 value the stamps replace.
_MAC = bytes((2, 0, 0xFE, 0xED, 0xFA, 0xCE))
_ADDRESS = bytes((203, 0, 113, 77))


class _Stamp:
    """Per-client copies of one encoded request: xid, chaddr, option 61 and (when the
    template has it) option 50 replaced in place.  Building the clients' packets is then a
    few byte copies, the same whichever pxestack tree is measured, so an instruction count
    of the run (``benchmarks/dhcp_instructions.py``) grows only with the server's work."""

    def __init__(self, template: bytes) -> None:
        self.template = template
        self.client_id = template.index(b"\x3d\x07\x01" + _MAC) + 3
        self.requested = template.find(b"\x32\x04" + _ADDRESS) + 2  # 1: no option 50

    def __call__(self, xid: int, mac: bytes, requested: bytes = b"") -> bytes:
        t, cid, req = self.template, self.client_id, self.requested
        parts = [t[:4], xid.to_bytes(4, "big"), t[8:28], mac, t[34:cid], mac]
        if req > 1:
            parts += [t[cid + 6:req], requested, t[req + 4:]]
        else:
            parts.append(t[cid + 6:])
        return b"".join(parts)


def run_micro(args: argparse.Namespace) -> None:
    """Time DISCOVER->OFFER and REQUEST->ACK through the adapter, 10 000 clients."""
    from pxestack.wire import constants as c

    macs = [bytes((2, 0)) + n.to_bytes(4, "big") for n in range(args.clients)]
    # With --arch the clients are PXE ROMs (option 60 PXEClient and option 93), so every
    # reply carries a boot file: the boot decision's TFTP answer is on the timed path.
    firmware = {} if args.arch is None else {c.OPT_CLIENT_ARCH: args.arch.to_bytes(2, "big")}
    discover = _Stamp(_perfdhcp_like(c.DHCPDISCOVER, _MAC, 0, firmware))
    request = _Stamp(_perfdhcp_like(
        c.DHCPREQUEST, _MAC, 0,
        {c.OPT_REQUESTED_IP: _ADDRESS, c.OPT_SERVER_ID: SERVER.packed, **firmware},
    ))
    discovers = [discover(n, mac) for n, mac in enumerate(macs)]
    for n in range(min(3, args.clients)):  # the stamped copies are the encoder's octets
        assert discovers[n] == _perfdhcp_like(c.DHCPDISCOVER, macs[n], n, firmware)
    profiler = cProfile.Profile() if args.cprofile else None
    results: dict[str, list[float]] = {"discover": [], "request": []}
    for repetition in range(args.reps):
        with scratch_dir(f"dhcpprof-micro-{repetition}") as workdir:
            protocol, transport, journal = _micro_server(workdir, metrics=args.metrics)
            source = (str(RELAY), 67)
            offered: list[bytes] = []
            if profiler:
                profiler.enable()
            started = time.process_time()
            for datagram in discovers:
                protocol.datagramReceived(datagram, source)
                offered.append(transport.last)
            middle = time.process_time()
            if profiler:
                profiler.disable()
            requests = [request(n, mac, offer[16:20])
                        for n, (mac, offer) in enumerate(zip(macs, offered, strict=True))]
            assert requests[0] == _perfdhcp_like(
                c.DHCPREQUEST, macs[0], 0,
                {c.OPT_REQUESTED_IP: offered[0][16:20], c.OPT_SERVER_ID: SERVER.packed,
                 **firmware},
            )
            if profiler:
                profiler.enable()
            begin = time.process_time()
            _feed_requests(protocol, requests, source, args.batch)
            ended = time.process_time()
            if profiler:
                profiler.disable()
            acks = transport.count - len(discovers)
            if acks != len(requests):
                raise SystemExit(f"only {acks} ACKs for {len(requests)} REQUESTs")
            if args.arch is not None and not all(offer[_FILE_OFFSET] for offer in offered):
                raise SystemExit(f"an OFFER to arch {args.arch} has no boot file")
            journal.close()
        results["discover"].append((middle - started) / len(discovers) * 1e6)
        results["request"].append((ended - begin) / len(requests) * 1e6)
    for name, values in results.items():
        print(f"{name:9s} µs/packet median {statistics.median(values):7.1f} "
              f"(min {min(values):.1f} max {max(values):.1f})")
    dora = statistics.median(results["discover"]) + statistics.median(results["request"])
    print(f"DORA      µs median {dora:7.1f}  -> {1e6 / dora:,.0f} DORA/s of pure CPU")
    if profiler and args.cprofile:
        profiler.dump_stats(args.cprofile)
        print(f"cProfile stats written to {args.cprofile}")


def _feed_requests(protocol: Any, requests: list[bytes], source: tuple[str, int],
                   batch: int) -> None:
    """Feed REQUESTs one by one, or in batches when the adapter supports group commit."""
    receive_batch = getattr(protocol, "receive_batch", None)
    if batch <= 1 or receive_batch is None:
        for datagram in requests:
            protocol.datagramReceived(datagram, source)
        return
    for start in range(0, len(requests), batch):
        receive_batch([(datagram, source) for datagram in requests[start:start + batch]])


# --- net: perfdhcp in the veth lab ---------------------------------------------------------


def _py_spy(pid: int, output: str, seconds: int) -> subprocess.Popen[Any]:
    spy = str(Path(sys.executable).with_name("py-spy"))
    fmt = "flamegraph" if output.endswith(".svg") else "raw"
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "250", "--duration", str(seconds),
         "--format", fmt, "--output", output, "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _perf_record(pid: int, output: str, seconds: int) -> subprocess.Popen[Any]:
    """``perf record -g`` of process *pid* for *seconds* into *output*."""
    return subprocess.Popen(
        ["perf", "record", "-g", "--quiet", "-p", str(pid), "-o", output, "--",
         "sleep", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


#: The categories of :func:`perf_time_split`, in the order they are tested and printed.
PERF_CATEGORIES = (
    "sendto: peer's receive (softirq)",
    "sendto: send path",
    "recvfrom",
    "epoll_wait",
    "other kernel",
    "user space",
)


def _perf_category(frames: list[str], in_kernel: bool) -> str:
    """The category of one sample: *frames* are its symbol names, innermost first;
    *in_kernel* says whether the innermost frame is a kernel one."""
    names = set(frames)
    if "udp_sendmsg" in names:
        if names & {"net_rx_action", "handle_softirqs", "__do_softirq"}:
            return PERF_CATEGORIES[0]
        return PERF_CATEGORIES[1]
    if names & {"udp_recvmsg", "__sys_recvfrom"}:
        return PERF_CATEGORIES[2]
    if names & {"do_epoll_wait", "ep_poll"}:
        return PERF_CATEGORIES[3]
    return PERF_CATEGORIES[4] if in_kernel else PERF_CATEGORIES[5]


def perf_time_split(script_output: str) -> dict[str, float]:
    """Share (0..1) of the samples in each of :data:`PERF_CATEGORIES`.

    *script_output* is ``perf script -F ip,sym,dso``: one block of frame lines
    (``ADDRESS SYMBOL (DSO)``, innermost first) per sample, blocks separated by blank lines.
    A frame whose DSO is ``[kernel.kallsyms]`` is a kernel frame.
    """
    counts = dict.fromkeys(PERF_CATEGORIES, 0)
    frames: list[str] = []
    in_kernel = False
    for line in [*script_output.splitlines(), ""]:
        parts = line.split(None, 1)
        if not parts:  # the blank line that ends a sample
            if frames:
                counts[_perf_category(frames, in_kernel)] += 1
            frames, in_kernel = [], False
            continue
        if len(parts) < 2:
            continue
        symbol, _, dso = parts[1].rpartition(" (")
        if not frames:
            in_kernel = dso.startswith("[kernel")
        frames.append(symbol.split("+", 1)[0])
    total = sum(counts.values())
    return {name: (count / total if total else 0.0) for name, count in counts.items()}


def _print_perf_split(output: str) -> None:
    """Print :func:`perf_time_split` of the ``perf record`` file *output*."""
    script = subprocess.run(
        ["perf", "script", "-i", output, "-F", "ip,sym,dso"],
        capture_output=True, text=True, check=False,
    )
    split = perf_time_split(script.stdout)
    log(f"    perf {Path(output).name}: " + ", ".join(
        f"{name} {share * 100:.1f} %" for name, share in split.items()))


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by process *pid* (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _one_net_run(server: Any, lab: Any, rate: int, args: argparse.Namespace,
                 spy_output: str | None, perf_output: str | None = None) -> bench.PerfdhcpRun:
    full = args.mode == "dora"
    with scratch_dir(f"dhcpprof-{server.name}") as workdir:
        process = server.start(lab, workdir)
        try:
            lab.server.wait_udp_port(67, timeout=30, process=process)
            time.sleep(0.5)
            spy = _py_spy(process.pid, spy_output, args.period + 1) if spy_output else None
            perf = _perf_record(process.pid, perf_output, args.period) if perf_output else None
            if args.search:
                step_rates = bench.SearchPlan.quick()
                rates = step_rates.dora_rates if full else step_rates.do_rates

                def step(target: int) -> bench.PerfdhcpRun:
                    one = bench.run_perfdhcp(lab, target, args.period, full_exchange=full,
                                             threads=args.perfdhcp_threads)
                    log(f"    {server.name} step {target}: goodput {one.goodput:.0f} "
                        f"incomplete {one.incomplete_fraction * 100:.2f} % "
                        f"{'pass' if one.passes() else 'fail'}")
                    time.sleep(0.3)
                    return one

                outcome = bench.search_sustained(step, rates, 2)
                run = outcome.best or outcome.steps[0]
            else:
                user, system = _cpu_seconds(process.pid)
                run = bench.run_perfdhcp(lab, rate, args.period, full_exchange=full,
                                         threads=args.perfdhcp_threads)
                user_after, system_after = _cpu_seconds(process.pid)
                # Server CPU per completed exchange: robust against other load on the box.
                done = max(run.completed, 1)
                run.cpu_user_us = (user_after - user) / done * 1e6  # type: ignore[attr-defined]
                run.cpu_sys_us = (system_after - system) / done * 1e6  # type: ignore[attr-defined]
            if spy is not None:
                spy.wait(timeout=60)
            if perf is not None and perf_output is not None:
                perf.wait(timeout=60)
                _print_perf_split(perf_output)
            if process.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {process.returncode}")
            return run
        finally:
            lab.server.stop(process)


class BaselinePxestack(bench.PxestackDhcpServer):
    """pxestack from another source tree (``--baseline-tree``), e.g. the code before a change:
    ``git archive <commit> pxestack | tar -x -C /tmp/base``.  Same configuration; the tree
    comes first on ``PYTHONPATH`` of the server process."""

    name = "pxestack-base"

    def __init__(self, tree: str) -> None:
        self.tree = tree

    def start(self, lab: Any, workdir: Path) -> subprocess.Popen[Any]:
        """Start ``pxestack serve`` importing the baseline tree."""
        previous = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = self.tree
        try:
            return super().start(lab, workdir)
        finally:
            if previous is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = previous


def run_net(args: argparse.Namespace) -> None:
    """Fixed-rate (or searched) perfdhcp runs, servers interleaved per repetition."""
    if args.perf and shutil.which("perf") is None:
        raise SystemExit("--perf needs the perf tool (Debian package linux-perf)")
    peers = find_peers(install=False)
    wanted = [name for name in args.servers.split(",") if name]
    available: list[Any] = list(bench.servers(peers))
    if args.baseline_tree:
        available.append(BaselinePxestack(args.baseline_tree))
        wanted.append(BaselinePxestack.name)
    candidates = [s for s in available if s.name in wanted]
    rates = [int(r) for r in args.rates.split(",")] if not args.search else [0]
    table: dict[tuple[str, int], list[bench.PerfdhcpRun]] = {}
    log(f"load average {os.getloadavg()}")
    with netlab().two_hosts("dhcpprof") as lab:
        bench._install_client_rules(lab)
        for repetition in range(args.reps):
            for rate in rates:
                for server in candidates:
                    spy = perf = None
                    if args.py_spy and server.name == PXESTACK:
                        spy = args.py_spy.replace("{n}", f"{rate}-{repetition}")
                    if args.perf:
                        perf = args.perf.replace("{n}", f"{server.name}-{rate}-{repetition}")
                    run = _one_net_run(server, lab, rate, args, spy, perf)
                    table.setdefault((server.name, rate), []).append(run)
                    label = rate or "search"
                    log(f"  rep {repetition + 1} {server.name} {args.mode} rate {label}: "
                        f"target {run.target_rate} goodput {run.goodput:.0f}/s incomplete "
                        f"{run.incomplete_fraction * 100:.2f} % naks {run.server_naks} "
                        f"latency {run.avg_latency_ms} ms; load {os.getloadavg()[0]:.2f}")
    print(f"\nmode {args.mode}, period {args.period} s, {args.reps} repetitions, "
          f"load average now {os.getloadavg()}")
    print(f"{'server':10s} {'rate':>6s} {'target':>7s} {'goodput':>8s} {'incompl%':>9s} "
          f"{'NAKs':>5s} {'lat ms':>7s} {'usr µs':>7s} {'sys µs':>7s}  (server CPU per exchange)")
    for (name, rate), runs in sorted(table.items(), key=lambda item: (item[0][1], item[0][0])):
        print(f"{name:10s} {rate or 'search':>6} "
              f"{statistics.median(r.target_rate or 0 for r in runs):7.0f} "
              f"{statistics.median(r.goodput for r in runs):8.0f} "
              f"{statistics.median(r.incomplete_fraction for r in runs) * 100:9.2f} "
              f"{statistics.median(r.server_naks for r in runs):5.0f} "
              f"{statistics.median(r.avg_latency_ms or 0 for r in runs):7.2f} "
              f"{statistics.median(getattr(r, 'cpu_user_us', 0.0) for r in runs):7.1f} "
              f"{statistics.median(getattr(r, 'cpu_sys_us', 0.0) for r in runs):7.1f}")


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    micro = sub.add_parser("micro", help="adapter + core + journal without sockets")
    micro.add_argument("--clients", type=int, default=CLIENTS)
    micro.add_argument("--reps", type=int, default=3)
    micro.add_argument("--batch", type=int, default=64,
                       help="REQUESTs per group-commit batch (1: one at a time)")
    micro.add_argument("--cprofile", help="write cProfile stats of the timed parts here")
    micro.add_argument("--metrics", action="store_true",
                       help="wire the Prometheus metrics as pxestack serve does")
    micro.add_argument("--arch", type=int, default=None,
                       help="option 93 the clients send (0: x86 BIOS PXE, 7: EFI x64), so "
                            "every reply carries a boot file (default: none, no boot file)")
    net = sub.add_parser("net", help="perfdhcp in the veth lab")
    net.add_argument("--mode", choices=("dora", "do"), default="dora")
    net.add_argument("--rates", default="2000,4000,6000")
    net.add_argument("--period", type=int, default=4)
    net.add_argument("--reps", type=int, default=3)
    net.add_argument("--servers", default="pxestack,kea")
    net.add_argument("--perfdhcp-threads", choices=bench.PERFDHCP_THREAD_MODES, default="multi",
                     help="perfdhcp's -g mode (see benchmarks/dhcp_bench.py)")
    net.add_argument("--search", action="store_true",
                     help="sustained-rate search (benchmarks.dhcp_bench, quick plan)")
    net.add_argument("--py-spy", help="py-spy output for pxestack ({n} = rate-repetition)")
    net.add_argument("--perf", help="perf record -g output for each server ({n} = "
                     "server-rate-repetition); prints where the server's time went")
    net.add_argument("--baseline-tree",
                     help="also run pxestack from this source tree as 'pxestack-base'")
    args = parser.parse_args(argv)
    if args.command == "micro":
        run_micro(args)
    else:
        run_net(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
