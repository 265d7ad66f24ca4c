"""A two-host network lab for system tests and benchmarks: two namespaces on one veth pair.

:func:`two_hosts` creates a *server* and a *client* network namespace joined by a veth
pair, brings the links (and ``lo``) up, gives each end an address in the benchmarking range
198.18.0.0/15 (RFC 2544), and yields a :class:`Lab`.  Everything it made is torn down when
the ``with`` block ends, also on error: processes started through :meth:`Namespace.popen` are
terminated by PID, then any process still inside one of the lab's namespaces (a child the
started process forked, e.g. in.tftpd's per-transfer workers) is killed by PID, and the
namespaces are deleted, which removes the veth pair and any nftables rules with them.

Namespace names are ``pxt-<tag>-<pid>-s`` / ``-c``, so parallel test runs and other users
of the machine never collide.  The interfaces inside are always ``pxs0`` (server) and
``pxc0`` (client): the veth pair is created directly inside the two namespaces, so the short
fixed names cannot clash with anything in the root namespace.

Loss: this kernel has no ``sch_netem``, so :meth:`Lab.set_loss` installs an nftables
``numgen random`` drop rule on each end's *ingress* hook (netdev family, before
defragmentation, so a fragment is dropped on its own as a real lossy link would).

Usage::

    with two_hosts("tftp") as lab:
        server = lab.server.popen(pxestack_argv("tftp", "--root", str(root),
                                                 "--listen", f"{lab.server.ip}:69"))
        lab.server.wait_udp_port(69, timeout=10, process=server)
        lab.set_loss(1.0)
        lab.client.run(["atftp", "--get", "-r", "f", "-l", str(out), lab.server.ip],
                       timeout=60)

Needs root, ``ip`` (iproute2), ``nft`` (for loss), ``ss`` and ``taskset``.  Tests using it
call ``require_root_and_tools("ip", "nft")`` first and are marked ``@pytest.mark.netns``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Interface name of the server end of the veth pair (inside the server namespace).
SERVER_IFNAME = "pxs0"
#: Interface name of the client end of the veth pair (inside the client namespace).
CLIENT_IFNAME = "pxc0"
#: Name of the nftables table :meth:`Lab.set_loss` manages in each namespace.
LOSS_TABLE = "pxt_loss"
#: Prefix of every namespace this module creates.
NAMESPACE_PREFIX = "pxt-"

_IP_TIMEOUT = 15.0
_active_lock = threading.Lock()
_active_namespaces: set[str] = set()


class LabError(RuntimeError):
    """A lab could not be built or a helper command failed (the message says which)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` in the root namespace; raise :class:`LabError` on failure if *check*."""
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False
    )
    if check and result.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_pids(name: str) -> list[int]:
    """PIDs of every process whose network namespace is *name* (``ip netns pids``)."""
    result = _ip("netns", "pids", name, check=False)
    return [int(token) for token in result.stdout.split() if token.isdigit()]


def _existing_namespaces() -> set[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    result = _ip("netns", "list", check=False)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def _kill_pids(pids: Sequence[int], grace: float) -> None:
    """SIGTERM each PID, wait up to *grace* seconds, then SIGKILL the survivors."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    remaining = list(pids)
    while remaining and time.monotonic() < deadline:
        remaining = [pid for pid in remaining if _pid_alive(pid) and not _is_zombie(pid)]
        if remaining:
            time.sleep(0.02)
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    """Whether *pid* has exited but not been reaped (state ``Z`` in /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def cleanup_stale(tag: str) -> list[str]:
    """Delete ``pxt-<tag>-<pid>-*`` namespaces whose creating process is gone.

    A test run killed with SIGKILL cannot tear its lab down; the next run with the same tag
    removes the leftovers here.  Only namespaces of *this* tag whose PID is dead are touched,
    so labs of live processes (other test runs) are left alone.  Returns the names removed.
    """
    removed: list[str] = []
    prefix = f"{NAMESPACE_PREFIX}{tag}-"
    for name in sorted(_existing_namespaces()):
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix) :].rsplit("-", 1)[0]
        if not pid_text.isdigit():
            continue
        if int(pid_text) == os.getpid():
            with _active_lock:
                if name in _active_namespaces:
                    continue
        elif _pid_alive(int(pid_text)):
            continue
        _kill_pids(_netns_pids(name), grace=1.0)
        _ip("netns", "delete", name, check=False)
        removed.append(name)
    return removed


class Namespace:
    """One end of the lab: a network namespace with one veth interface.

    :ivar name: the namespace name (for ``ip netns exec``).
    :ivar ifname: the veth interface inside it (``pxs0`` or ``pxc0``).
    :ivar ip: its IPv4 address, or ``None`` when it was created without one (a DHCP client).
    :ivar prefix: the prefix length of :attr:`ip`.
    :ivar mac: the interface's MAC address, lower-case ``aa:bb:..`` form.
    """

    def __init__(self, name: str, ifname: str, ip: str | None, prefix: int) -> None:
        self.name = name
        self.ifname = ifname
        self.ip = ip
        self.prefix = prefix
        self.mac = ""
        self._processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, ifname={self.ifname!r}, ip={self.ip!r})"

    def argv(self, argv: Sequence[str], *, cpu: int | None = None) -> list[str]:
        """The full command line that runs *argv* in this namespace, optionally pinned to *cpu*."""
        pinned = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return ["ip", "netns", "exec", self.name, *pinned, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        cpu: int | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run *argv* in the namespace and wait for it (``subprocess.run``).

        Output is captured as text unless the caller passes its own ``stdout``/``stderr``/
        ``capture_output`` or ``text``/``encoding`` arguments.  With *check*, a non-zero exit
        raises :class:`subprocess.CalledProcessError` (its ``stderr`` holds the output).
        """
        if not {"stdout", "stderr", "capture_output"} & kw.keys():
            kw["capture_output"] = True
        if not {"text", "encoding", "errors", "universal_newlines"} & kw.keys():
            kw["text"] = True
        return subprocess.run(self.argv(argv, cpu=cpu), timeout=timeout, check=check, **kw)

    def popen(
        self, argv: Sequence[str], *, cpu: int | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start *argv* in the namespace without waiting; it is killed (by PID) at lab exit.

        ``ip netns exec`` and ``taskset`` both exec the next program, so the returned
        ``Popen``'s PID is the program itself.  Pass ``stdout``/``stderr`` as usual; by
        default they are inherited.
        """
        process = subprocess.Popen(self.argv(argv, cpu=cpu), **kw)
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[Any], grace: float = 3.0) -> int | None:
        """Terminate one process started with :meth:`popen` (SIGTERM, then SIGKILL).

        Returns its exit status.  Safe to call on a process that has already exited.
        """
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=grace)
        with contextlib.suppress(ValueError):
            self._processes.remove(process)
        return process.returncode

    def _port_listening(self, protocol: str, port: int) -> bool:
        """Whether a socket in this namespace listens on *port* (``ss -l``)."""
        flag = "-Hlun" if protocol == "udp" else "-Hltn"
        result = self.run(["ss", flag, f"sport = :{port}"], timeout=5, check=False)
        return result.returncode == 0 and bool(result.stdout.strip())

    def _wait_port(
        self,
        protocol: str,
        port: int,
        timeout: float,
        process: subprocess.Popen[Any] | None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._port_listening(protocol, port):
                return
            if process is not None and process.poll() is not None:
                raise LabError(
                    f"process {process.args!r} exited with {process.returncode} before "
                    f"{protocol} port {port} was listening in {self.name}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"nothing listened on {protocol} port {port} in {self.name} within {timeout} s"
                )
            time.sleep(0.05)

    def wait_udp_port(
        self, port: int, timeout: float, *, process: subprocess.Popen[Any] | None = None
    ) -> None:
        """Poll until a UDP socket listens on *port*; fail early if *process* exits.

        Raises :class:`TimeoutError` after *timeout* seconds, :class:`LabError` if
        *process* (the server being waited for) exits first.
        """
        self._wait_port("udp", port, timeout, process)

    def wait_tcp_port(
        self, port: int, timeout: float, *, process: subprocess.Popen[Any] | None = None
    ) -> None:
        """Poll until a TCP socket listens on *port* (see :meth:`wait_udp_port`)."""
        self._wait_port("tcp", port, timeout, process)

    def add_broadcast_route(self) -> None:
        """Route 255.255.255.255 out of the veth interface.

        A socket that is not bound to a device finds no route for the limited broadcast
        address in a namespace without a default route (``sendto`` fails with
        ENETUNREACH); servers that broadcast without ``SO_BINDTODEVICE`` need this.
        """
        _ip("-n", self.name, "route", "replace", "255.255.255.255/32", "dev", self.ifname)

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f -``) in this namespace."""
        result = self.run(["nft", "-f", "-"], input=ruleset, timeout=10, check=False)
        if result.returncode != 0:
            raise LabError(f"nft failed in {self.name}: {result.stderr.strip()}\n{ruleset}")

    def _terminate_all(self) -> None:
        """Stop every tracked process, then kill whatever else still runs in the namespace."""
        tracked = [p for p in self._processes if p.poll() is None]
        _kill_pids([p.pid for p in tracked], grace=3.0)
        for process in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2)
        self._processes.clear()
        # Children forked by what we started (in.tftpd workers, dhclient's script...) are
        # still in our namespace; they are ours too, so kill them by PID.
        leftovers = [pid for pid in _netns_pids(self.name) if pid != os.getpid()]
        if leftovers:
            _kill_pids(leftovers, grace=1.0)


class Lab:
    """A server and a client :class:`Namespace` joined by a veth pair."""

    def __init__(self, server: Namespace, client: Namespace) -> None:
        self.server = server
        self.client = client
        self.loss_percent = 0.0

    def __repr__(self) -> str:
        return f"Lab(server={self.server!r}, client={self.client!r})"

    def set_loss(self, percent: float) -> None:
        """Drop *percent* % of the packets arriving on each end (both directions); 0 removes.

        An nftables ``numgen random mod 10000 < N drop`` rule on the netdev ingress hook of
        both veth ends, with a resolution of 0.01 %.  Replaces any earlier loss setting.
        Only IPv4 is dropped: ARP passes, because a dropped ARP request marks the neighbour
        as failed and turns random loss into an outage of seconds (every send then fails
        with EHOSTUNREACH), which is not the loss the tests mean to model.
        """
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"loss percent must be within 0..100, got {percent}")
        threshold = round(percent * 100)
        for namespace in (self.server, self.client):
            namespace.run(["nft", "delete", "table", "netdev", LOSS_TABLE], timeout=10, check=False)
            if threshold == 0:
                continue
            namespace.nft(
                f"table netdev {LOSS_TABLE} {{\n"
                f"  chain ingress {{\n"
                f'    type filter hook ingress device "{namespace.ifname}" priority -500;\n'
                f"    policy accept;\n"
                f"    meta protocol ip numgen random mod 10000 < {threshold} counter drop\n"
                f"  }}\n"
                f"}}\n"
            )
        self.loss_percent = percent

    def dropped_packets(self) -> int:
        """How many packets the loss rules have dropped so far, both ends together."""
        total = 0
        for namespace in (self.server, self.client):
            result = namespace.run(
                ["nft", "-j", "list", "table", "netdev", LOSS_TABLE], timeout=10, check=False
            )
            if result.returncode != 0:
                continue
            for item in json.loads(result.stdout).get("nftables", []):
                for expression in item.get("rule", {}).get("expr", []):
                    if "counter" in expression:
                        total += int(expression["counter"]["packets"])
        return total


def _read_mac(namespace: str, ifname: str) -> str:
    """The MAC address of *ifname* inside *namespace*."""
    result = _ip("-n", namespace, "-j", "link", "show", "dev", ifname)
    return str(json.loads(result.stdout)[0]["address"]).lower()


@contextmanager
def two_hosts(
    tag: str,
    *,
    server_ip: str | None = "198.18.0.1",
    client_ip: str | None = "198.18.0.2",
    prefix: int = 15,
) -> Iterator[Lab]:
    """Build a server and a client namespace on a veth pair; always tear them down.

    *tag* names the area (``dhcp``, ``tftp``, ``bench``...) and becomes part of the namespace
    names ``pxt-<tag>-<pid>-s`` and ``pxt-<tag>-<pid>-c``.  Pass ``client_ip=None`` for a
    client end without an address (for DHCP clients), likewise ``server_ip``.
    """
    if not tag or not all(ch.isalnum() or ch in "_" for ch in tag):
        raise ValueError(f"tag must be alphanumeric (underscores allowed), got {tag!r}")
    for tool in ("ip", "ss"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is not installed")
    base = f"{NAMESPACE_PREFIX}{tag}-{os.getpid()}"
    server = Namespace(f"{base}-s", SERVER_IFNAME, server_ip, prefix)
    client = Namespace(f"{base}-c", CLIENT_IFNAME, client_ip, prefix)
    lab = Lab(server, client)
    with _active_lock:
        if server.name in _active_namespaces:
            raise LabError(f"a lab with tag {tag!r} is already open in this process")
        _active_namespaces.update((server.name, client.name))
    created: list[Namespace] = []
    try:
        cleanup_stale(tag)
        for namespace in (server, client):
            _ip("netns", "add", namespace.name)
            created.append(namespace)
        _ip(
            "link",
            "add",
            SERVER_IFNAME,
            "netns",
            server.name,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IFNAME,
            "netns",
            client.name,
        )
        for namespace in (server, client):
            _ip("-n", namespace.name, "link", "set", "lo", "up")
            if namespace.ip is not None:
                _ip(
                    "-n",
                    namespace.name,
                    "addr",
                    "add",
                    f"{namespace.ip}/{namespace.prefix}",
                    "dev",
                    namespace.ifname,
                )
            _ip("-n", namespace.name, "link", "set", namespace.ifname, "up")
            namespace.mac = _read_mac(namespace.name, namespace.ifname)
        yield lab
    finally:
        for namespace in reversed(created):
            try:
                namespace._terminate_all()
            finally:
                _ip("netns", "delete", namespace.name, check=False)
        with _active_lock:
            _active_namespaces.difference_update((server.name, client.name))


#: The kernel's IPv4 neighbour-table thresholds.  The table and these limits are the
#: machine's: a network namespace other than the first has no such files.
NEIGH_DEFAULT = Path("/proc/sys/net/ipv4/neigh/default")
_NEIGH_THRESHOLDS = ("gc_thresh1", "gc_thresh2", "gc_thresh3")


@contextmanager
def neighbour_table(entries: int, root: Path = NEIGH_DEFAULT) -> Iterator[dict[str, int]]:
    """Let the kernel's neighbour table hold at least *entries* while the block runs.

    A lab whose client namespace holds thousands of addresses needs as many neighbour
    entries in the server namespace; past ``gc_thresh3`` (1024 by default) the kernel
    drops packets to new neighbours.  The limits are machine-wide (shared by every
    namespace), so they are only ever raised (1:2:4 of the hard limit, as the kernel's
    defaults are), and on exit each one is put back only if it still holds the value set
    here (another lab may have raised it further meanwhile).  Yields the values in force.
    """
    before: dict[str, int] = {}
    for name in _NEIGH_THRESHOLDS:
        before[name] = int((root / name).read_text().split()[0])
    wanted = {"gc_thresh1": entries // 4, "gc_thresh2": entries // 2, "gc_thresh3": entries}
    written: dict[str, int] = {}
    for name in reversed(_NEIGH_THRESHOLDS):  # the hard limit first: thresh1 <= 2 <= 3
        if wanted[name] > before[name]:
            (root / name).write_text(f"{wanted[name]}\n")
            written[name] = wanted[name]
    try:
        yield {**before, **written}
    finally:
        for name in _NEIGH_THRESHOLDS:
            if name in written:
                with contextlib.suppress(OSError, ValueError):
                    if int((root / name).read_text().split()[0]) == written[name]:
                        (root / name).write_text(f"{before[name]}\n")


def pxestack_argv(*args: str) -> list[str]:
    """The command line that runs ``pxestack ARGS`` with this interpreter's installation.

    Prefers the ``pxestack`` console script next to :data:`sys.executable` (the venv's),
    falling back to importing the CLI entry point with the same interpreter.
    """
    script = Path(sys.executable).with_name("pxestack")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *args]
    return [
        sys.executable,
        "-c",
        "from pxestack.cli import entry_point; entry_point()",
        *args,
    ]


__all__ = [
    "CLIENT_IFNAME",
    "SERVER_IFNAME",
    "Lab",
    "LabError",
    "Namespace",
    "cleanup_stale",
    "neighbour_table",
    "pxestack_argv",
    "two_hosts",
]
