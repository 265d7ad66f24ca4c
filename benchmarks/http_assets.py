"""Benchmark: pxestack's asset server against nginx and Twisted's static.File, in one run.

    .venv/bin/python -m benchmarks.http_assets [--runs 3] [--clients 1,16] [--size-mib 32]

Method:

* one random file of ``--size-mib`` MiB on tmpfs (``/dev/shm``), served by three servers on
  their own loopback ports, started by this script and stopped at the end:

  - nginx (Debian ``nginx-light``): one worker, ``sendfile on``, ``access_log off``;
  - pxestack: ``python -m pxestack http --root DIR --listen 127.0.0.1:PORT``;
  - Twisted's ``twisted.web.static.File`` in a plain ``Site`` (the baseline to beat by 4x);

* for each run (``--runs``, default 3) and each client count (``--clients``, default 1 and
  16), every server in turn gets that many concurrent ``curl`` processes, each fetching the
  whole file once.  The aggregate rate is (clients x size) / (wall time from starting the
  first curl to the exit of the last one);
* every downloaded body is checked: status 200, the full size, and (unless ``--discard``)
  its SHA-256, computed after the clock has stopped.  With ``--discard`` the timed bodies go
  to /dev/null and a separate verification round hashes one download per server;
* servers are interleaved inside each run so that a noisy neighbour hurts them alike;
* printed and written to ``benchmarks/results/http_assets.json``: per server and client
  count the median with min-max of the runs, and the ratios of pxestack's median to
  nginx's and to static.File's.

Every wait is bounded (``--timeout`` per curl; server start-up 15 s).  Only processes this
script started are stopped, by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "http_assets.json"
FILE_NAME = "asset.bin"

STATIC_FILE_SERVER = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor
    from twisted.web.server import Site
    from twisted.web.static import File
    reactor.listenTCP(int(sys.argv[2]), Site(File(sys.argv[1])), interface="127.0.0.1")
    reactor.run()
    """
)

NGINX_CONF = textwrap.dedent(
    """
    worker_processes 1;
    daemon off;
    pid {work}/nginx.pid;
    error_log {work}/nginx-error.log warn;
    events {{ worker_connections 1024; }}
    http {{
        sendfile on;
        tcp_nopush on;
        access_log off;
        keepalive_timeout 65;
        client_body_temp_path {work}/body;
        proxy_temp_path {work}/proxy;
        fastcgi_temp_path {work}/fastcgi;
        uwsgi_temp_path {work}/uwsgi;
        scgi_temp_path {work}/scgi;
        default_type application/octet-stream;
        server {{
            listen 127.0.0.1:{port};
            root {root};
        }}
    }}
    """
)


@dataclass
class Server:
    """One server under test: how to start it and where it listens."""

    name: str
    argv: list[str]
    port: int
    url_path: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        """The URL of the benchmark file on this server."""
        return f"http://127.0.0.1:{self.port}{self.url_path}"


@dataclass
class Measurement:
    """One timed round: *clients* concurrent downloads from one server."""

    server: str
    clients: int
    run: int
    seconds: float
    bytes: int
    cpu_seconds: float

    @property
    def mb_per_s(self) -> float:
        """Aggregate throughput in MB/s (10^6 bytes per second)."""
        return self.bytes / self.seconds / 1e6


@dataclass
class Summary:
    """Median and spread of one (server, clients) cell."""

    server: str
    clients: int
    rates: list[float] = field(default_factory=list)
    cpu_per_gb: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {
            "server": self.server,
            "clients": self.clients,
            "median_mb_s": round(statistics.median(self.rates), 1),
            "min_mb_s": round(min(self.rates), 1),
            "max_mb_s": round(max(self.rates), 1),
            "runs_mb_s": [round(rate, 1) for rate in self.rates],
            "server_cpu_s_per_gb_median": round(statistics.median(self.cpu_per_gb), 3),
        }


def free_port() -> int:
    """A currently unused loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(server: Server, deadline: float) -> None:
    """Poll the server's URL with a HEAD request until it answers 200 (bounded)."""
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}; see {server.log_path}"
            )
        try:
            request = urllib.request.Request(server.url, method="HEAD")
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError as exc:
            last_error = exc
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not become ready: {last_error}")


def start(server: Server, work: Path) -> None:
    """Start *server* as a subprocess with its output in a log file."""
    server.log_path = work / f"{server.name}.log"
    log = server.log_path.open("wb")
    server.process = subprocess.Popen(
        server.argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
        start_new_session=True,
    )
    log.close()
    wait_ready(server, time.monotonic() + 15)


def stop(server: Server) -> None:
    """Stop the process this script started (SIGTERM, then SIGKILL after 5 s)."""
    process = server.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def download_round(
    server: Server,
    clients: int,
    out_dir: Path,
    size: int,
    digest: str,
    timeout: float,
    discard: bool,
) -> float:
    """Run *clients* concurrent curls against *server*; return the wall time in seconds.

    Raises RuntimeError if any download is not a complete, byte-exact copy.
    """
    outputs = [
        os.devnull if discard else str(out_dir / f"{server.name}-{i}.bin") for i in range(clients)
    ]
    argv_for = [
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            str(timeout),
            "--output",
            output,
            "--write-out",
            "%{http_code} %{size_download}",
            server.url,
        ]
        for output in outputs
    ]
    began = time.perf_counter()
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argv_for
    ]
    results = [process.communicate(timeout=timeout + 10) for process in processes]
    elapsed = time.perf_counter() - began
    for process, (out, err) in zip(processes, results, strict=True):
        code, _, got = out.decode().partition(" ")
        if process.returncode != 0 or code != "200" or int(got or 0) != size:
            raise RuntimeError(
                f"{server.name}: curl rc={process.returncode} status={code} "
                f"size={got} {err.decode().strip()}"
            )
    if not discard:
        for output in outputs:
            if sha256_of(Path(output)) != digest:
                raise RuntimeError(f"{server.name}: {output} has the wrong SHA-256")
            os.unlink(output)
    return elapsed


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by *pid* and its direct children (nginx's worker).

    Read from ``/proc/<pid>/schedstat`` (nanoseconds on a CPU, see the kernel's
    sched-stats.rst), which is far finer than the 10 ms ticks of ``/proc/<pid>/stat``.
    """
    total_ns = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            if int(entry.name) != pid and parent != pid:
                continue
            total_ns += int((entry / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total_ns / 1e9


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def make_servers(root: Path, work: Path, only: list[str]) -> list[Server]:
    """The servers to compare, each on a fresh loopback port."""
    python = sys.executable
    servers = []
    if "nginx" in only:
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=work, port=port, root=root))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        servers.append(
            Server(
                "nginx",
                [nginx, "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log")],
                port,
                f"/{FILE_NAME}",
            )
        )
    if "pxestack" in only:
        port = free_port()
        servers.append(
            Server(
                "pxestack",
                [
                    python,
                    "-m",
                    "pxestack",
                    "http",
                    "--root",
                    str(root),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--log-level",
                    "warn",
                ],
                port,
                f"/assets/{FILE_NAME}",
            )
        )
    if "pxestack-copy" in only:
        port = free_port()
        servers.append(
            Server(
                "pxestack-copy",
                [
                    python,
                    "-m",
                    "pxestack",
                    "http",
                    "--root",
                    str(root),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--log-level",
                    "warn",
                    "--no-sendfile",
                ],
                port,
                f"/assets/{FILE_NAME}",
            )
        )
    if "static.File" in only:
        port = free_port()
        script = work / "static_file_server.py"
        script.write_text(STATIC_FILE_SERVER)
        servers.append(
            Server(
                "static.File", [python, str(script), str(root), str(port)], port, f"/{FILE_NAME}"
            )
        )
    return servers


def ratio(numerator: Summary | None, denominator: Summary | None) -> float | None:
    """Median over median, or None when a side is missing."""
    if numerator is None or denominator is None:
        return None
    return round(statistics.median(numerator.rates) / statistics.median(denominator.rates), 2)


#: The HTTP targets, on the 16-client medians: (ratio name, minimum).
TARGETS = (("pxestack/nginx", 0.8), ("pxestack/static.File", 4.0))


def targets(ratios: dict[str, dict[str, float | None]]) -> dict[str, object]:
    """Whether each HTTP target holds in this run (None if not measured)."""
    at16 = ratios.get("16", {})
    out: dict[str, object] = {}
    for name, minimum in TARGETS:
        value = at16.get(name)
        out[f"{name} >= {minimum} at 16 clients"] = None if value is None else value >= minimum
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 1 if a download failed verification."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one run instead of --runs (for `python -m benchmarks --quick`)",
    )
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts")
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per curl")
    parser.add_argument(
        "--servers",
        default="nginx,pxestack,static.File",
        help="comma-separated: nginx, pxestack, pxestack-copy, static.File",
    )
    parser.add_argument(
        "--discard",
        action="store_true",
        help="timed bodies go to /dev/null (verified in a separate round)",
    )
    parser.add_argument(
        "--cpus",
        default=None,
        help="pin this script, the servers and the clients to these CPUs "
        "(comma-separated), e.g. 0 to make them share one vCPU",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    if args.cpus is not None:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
    client_counts = [int(part) for part in args.clients.split(",")]
    wanted = [part.strip() for part in args.servers.split(",")]
    size = args.size_mib * 1024 * 1024

    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="pxt-http-bench-", dir=shm))
    servers: list[Server] = []
    try:
        work.chmod(0o755)
        root = work / "root"
        out_dir = work / "out"
        root.mkdir(mode=0o755)
        out_dir.mkdir()
        asset = root / FILE_NAME
        asset.write_bytes(os.urandom(size))
        asset.chmod(0o644)
        digest = sha256_of(asset)
        servers = make_servers(root, work, wanted)
        for server in servers:
            start(server, work)
            # Warm-up and (for --discard) the verification round: one full, hashed copy.
            download_round(server, 1, out_dir, size, digest, args.timeout, discard=False)
        measurements: list[Measurement] = []
        for run in range(1, args.runs + 1):
            for clients in client_counts:
                for server in servers:
                    assert server.process is not None
                    cpu_before = process_tree_cpu_seconds(server.process.pid)
                    seconds = download_round(
                        server, clients, out_dir, size, digest, args.timeout, args.discard
                    )
                    cpu = process_tree_cpu_seconds(server.process.pid) - cpu_before
                    measurement = Measurement(
                        server.name, clients, run, seconds, clients * size, cpu
                    )
                    measurements.append(measurement)
                    print(
                        f"run {run} clients {clients:>2} {server.name:<14} "
                        f"{measurement.mb_per_s:8.1f} MB/s  server CPU "
                        f"{cpu / (measurement.bytes / 1e9):6.3f} s/GB",
                        flush=True,
                    )
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            stop(server)
        shutil.rmtree(work, ignore_errors=True)

    cells: dict[tuple[str, int], Summary] = {}
    for m in measurements:
        cell = cells.setdefault((m.server, m.clients), Summary(m.server, m.clients))
        cell.rates.append(m.mb_per_s)
        cell.cpu_per_gb.append(m.cpu_seconds / (m.bytes / 1e9))
    print()
    print(
        f"{'clients':>7} {'server':<14} {'median MB/s':>12} {'min-max':>17} {'server CPU s/GB':>16}"
    )
    ratios: dict[str, dict[str, float | None]] = {}
    for clients in client_counts:
        for server in servers:
            cell = cells[(server.name, clients)]
            d = cell.as_dict()
            print(
                f"{clients:>7} {server.name:<14} {d['median_mb_s']:>12} "
                f"{d['min_mb_s']:>8}-{d['max_mb_s']:<8} "
                f"{d['server_cpu_s_per_gb_median']:>16}"
            )
        mine = cells.get(("pxestack", clients))
        ratios[str(clients)] = {
            "pxestack/nginx": ratio(mine, cells.get(("nginx", clients))),
            "pxestack/static.File": ratio(mine, cells.get(("static.File", clients))),
        }
        print(f"{'':>7} ratios: {ratios[str(clients)]}")
    document = {
        "benchmark": "http_assets",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg": os.getloadavg(),
        },
        "method": {
            "size_bytes": size,
            "runs": args.runs,
            "clients": client_counts,
            "pinned_cpus": args.cpus,
            "output": "/dev/null (verified separately)"
            if args.discard
            else "tmpfs files, SHA-256 checked after timing",
            "servers": {s.name: " ".join(s.argv) for s in servers},
        },
        "results": [cell.as_dict() for cell in cells.values()],
        "ratios_of_medians": ratios,
        "targets": targets(ratios),
    }
    for name, met in document["targets"].items():  # type: ignore[attr-defined]
        print(f"target {name}: {'met' if met else 'NOT met' if met is False else 'n/a'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
