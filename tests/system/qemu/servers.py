"""The servers a boot runs against, each started inside the test namespace.

* :class:`ReferenceServer`: dnsmasq (full DHCP with ``no-ping``, iPXE clients get the HTTP
  script URL, others TFTP ``ipxe.efi``, UEFI HTTP Boot clients the URL of ``ipxe.efi``) plus
  :mod:`refserver` for HTTP and the first-stage callbacks.  With ``loader="grub"`` UEFI
  PXE firmware gets Debian's signed shim, GRUB and a static ``grub/grub.cfg`` by TFTP;
  with ``loader="pxelinux"`` BIOS firmware gets ``lpxelinux.0`` by TFTP and, through
  option 210, ``ldlinux.c32`` and ``pxelinux.cfg/default`` over HTTP.  With
  ``router_advertisements=True`` pxestack's RA responder (:mod:`pxestack.ra`, through
  :mod:`ra_runner`) answers router solicitations beside it.  This is the baseline the
  pxestack timings are compared with.
* :class:`PxestackServer`: ``pxestack serve --config <generated>`` (or ``twistd pxestack``),
  everything from one process; as the full DHCP server or, beside a
  :class:`SiteDhcpServer`, as proxyDHCP; with extensions when asked.
* :class:`SiteDhcpServer`: dnsmasq handing out addresses only (no boot options), the
  "site DHCP server" that a proxyDHCP runs beside.

Every process is started by PID and stopped by that PID only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .artifacts import Artifacts
from .netns import BRIDGE, SERVER_ADDRESS, Segment

HERE = Path(__file__).resolve().parent
HTTP_PORT = 8080
BASE_URL = f"http://{SERVER_ADDRESS}:{HTTP_PORT}"
IPXE_EFI = Path("/usr/lib/ipxe/ipxe.efi")
UNDIONLY = Path("/usr/lib/ipxe/undionly.kpxe")
#: Debian's signed loaders (shim-signed, grub-efi-amd64-signed) and PXELINUX, as
#: ``pxestack images loaders`` copies them: served name -> installed file.
LOADER_FILES = {
    "shimx64.efi": Path("/usr/lib/shim/shimx64.efi.signed"),
    "grubx64.efi": Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
    "lpxelinux.0": Path("/usr/lib/PXELINUX/lpxelinux.0"),
    "ldlinux.c32": Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
}
POOL = ("198.18.0.100", "198.18.0.200")
#: The image "version" directory the harness's kernel and initramfs are filed under.
OS_VERSION = "e2e"
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdefghij"


class Process:
    """A child process with its log file; stopped by its own PID."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has exited."""
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; always reaped."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def wait_for_port(segment: Segment, port: int, timeout: float = 15.0) -> None:
    """Wait until something listens on TCP *port* inside *segment*."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(
            segment.command(["ss", "-Hltn", f"sport = :{port}"]), capture_output=True, text=True
        ).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on tcp port {port} after {timeout} s")


def wait_for_udp(segment: Segment, port: int, timeout: float = 15.0) -> None:
    """Wait until a UDP socket is bound to *port* inside *segment*."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(
            segment.command(["ss", "-Hlun", f"sport = :{port}"]), capture_output=True, text=True
        ).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on udp port {port} after {timeout} s")


@dataclass
class Event:
    """One request the reference HTTP server saw."""

    t: float
    data: dict[str, object]


class ReferenceServer:
    """dnsmasq + the reference HTTP server (+ optionally the RA responder)."""

    name = "dnsmasq"

    def __init__(self, segment: Segment, workdir: Path, artifacts: Artifacts,
                 *, router_advertisements: bool = False, loader: str = "ipxe") -> None:
        if loader not in ("ipxe", "grub", "pxelinux"):
            raise ValueError(f"unknown loader {loader!r}")
        self.segment = segment
        self.workdir = workdir
        self.router_advertisements = router_advertisements
        if router_advertisements:
            self.name = "dnsmasq+ra"
        self.events_path = workdir / "http-events.jsonl"
        self.processes: list[Process] = []
        root = workdir / "http"
        tftp = workdir / "tftp"
        for directory in (root, tftp):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifacts.kernel, root / "vmlinuz")
        shutil.copyfile(artifacts.initrd, root / "initrd.img")
        shutil.copyfile(IPXE_EFI, tftp / "ipxe.efi")
        shutil.copyfile(UNDIONLY, tftp / "undionly.kpxe")
        shutil.copyfile(IPXE_EFI, root / "ipxe.efi")  # UEFI HTTP Boot
        if loader == "grub":
            for name in ("shimx64.efi", "grubx64.efi"):
                shutil.copyfile(LOADER_FILES[name], tftp / name)
            shutil.copyfile(artifacts.kernel, tftp / "vmlinuz")
            shutil.copyfile(artifacts.initrd, tftp / "initrd.img")
            (tftp / "grub").mkdir(exist_ok=True)
            (tftp / "grub" / "grub.cfg").write_text(REFERENCE_GRUB_CFG.format(base=BASE_URL))
        elif loader == "pxelinux":
            shutil.copyfile(LOADER_FILES["lpxelinux.0"], tftp / "lpxelinux.0")
            shutil.copyfile(LOADER_FILES["ldlinux.c32"], root / "ldlinux.c32")
            (root / "pxelinux.cfg").mkdir(exist_ok=True)
            (root / "pxelinux.cfg" / "default").write_text(
                REFERENCE_PXELINUX_CFG.format(base=BASE_URL))
        self.dnsmasq_conf = workdir / "dnsmasq.conf"
        self.dnsmasq_conf.write_text(dnsmasq_config(workdir, tftp, loader))

    def start(self) -> None:
        """Start every process and wait until each listens."""
        self.events_path.unlink(missing_ok=True)
        cmd = self.segment.command
        try:
            self.processes.append(Process(
                "refserver",
                cmd([sys.executable, str(HERE / "refserver.py"), "--port", str(HTTP_PORT),
                     "--root", str(self.workdir / "http"), "--events", str(self.events_path),
                     "--base-url", BASE_URL]),
                self.workdir / "refserver.log",
            ))
            self.processes.append(Process(
                "dnsmasq",
                cmd(["dnsmasq", "--keep-in-foreground", f"--conf-file={self.dnsmasq_conf}"]),
                self.workdir / "dnsmasq.log",
            ))
            if self.router_advertisements:
                self.processes.append(Process(
                    "ra",
                    cmd([sys.executable, str(HERE / "ra_runner.py"), BRIDGE]),
                    self.workdir / "ra.log",
                ))
            wait_for_port(self.segment, HTTP_PORT)
            wait_for_udp(self.segment, 67)
            if self.router_advertisements:
                _wait_for_log(self.processes[-1], "answering router solicitations")
            for process in self.processes:
                process.check_alive()
        except BaseException:
            self.stop()
            raise

    def events(self) -> list[Event]:
        """Every recorded HTTP event so far."""
        if not self.events_path.exists():
            return []
        return [
            Event(float(d.pop("t")), d)
            for d in (json.loads(line) for line in self.events_path.read_text().splitlines())
        ]

    def stop(self) -> None:
        """Stop every process this object started."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def _wait_for_log(process: Process, text: str, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        process.check_alive()
        if text in process.log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not log {text!r} within {timeout} s")


#: The reference's GRUB config: the kernel line the reference iPXE script boots, read over
#: TFTP (Debian's signed GRUB has no HTTP); its echo is the timeline's ``grub_config`` mark.
REFERENCE_GRUB_CFG = """set timeout=0
echo 'pxestack: loading the kernel'
linux (tftp)/vmlinuz console=ttyS0 quiet panic=5 pxestack.url={base}
initrd (tftp)/initrd.img
boot
"""
#: The reference's PXELINUX config (one for every machine), read over HTTP.
REFERENCE_PXELINUX_CFG = """DEFAULT reference
PROMPT 0
TIMEOUT 0
LABEL reference
  KERNEL {base}/vmlinuz
  INITRD {base}/initrd.img
  APPEND console=ttyS0 quiet panic=5 pxestack.url={base}
"""


def dnsmasq_config(workdir: Path, tftp_root: Path, loader: str = "ipxe") -> str:
    """The reference dnsmasq configuration (the reference server of docs/reference/pxe-wire.md).

    *loader* ``grub`` hands UEFI PXE firmware shim instead of ``ipxe.efi``; ``pxelinux``
    hands BIOS firmware (QEMU's iPXE ROM too, which runs PXE programs) ``lpxelinux.0``
    with option 210, the path prefix, naming the HTTP server.
    """
    efi_file = "shimx64.efi" if loader == "grub" else "ipxe.efi"
    if loader == "pxelinux":
        bios = [f"dhcp-boot=tag:!httpboot,tag:!efi64,lpxelinux.0,,{SERVER_ADDRESS}",
                f"dhcp-option-force=tag:!httpboot,tag:!efi64,210,{BASE_URL}/"]
    else:
        bios = [f"dhcp-boot=tag:!ipxe,tag:!httpboot,tag:!efi64,undionly.kpxe,,{SERVER_ADDRESS}"]
    return "\n".join([
        "port=0",
        f"interface={BRIDGE}",
        "bind-interfaces",
        "user=root",
        f"dhcp-range={POOL[0]},{POOL[1]},255.254.0.0,1h",
        # Without no-ping dnsmasq probes the address for ~3 s before its first OFFER.
        "no-ping",
        "dhcp-authoritative",
        f"dhcp-leasefile={workdir / 'dnsmasq.leases'}",
        "log-dhcp",
        f"log-facility={workdir / 'dnsmasq-dhcp.log'}",
        # QEMU's NIC ROMs and the chainloaded ipxe.efi send user class "iPXE": hand them the
        # HTTP script straight away (no TFTP).  OVMF's native PXE client gets ipxe.efi.
        "dhcp-userclass=set:ipxe,iPXE",
        # (with lpxelinux.0 for BIOS, QEMU's BIOS iPXE ROM gets lpxelinux.0 instead)
        f"dhcp-boot=tag:ipxe,{'tag:efi64,' if loader == 'pxelinux' else ''}{BASE_URL}/boot.ipxe",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        # UEFI HTTP Boot (client arch 16): option 60 "HTTPClient" back, and the URL as the
        # boot file (the HTTP Boot client ignores offers without option 60).  dnsmasq uses
        # the last matching dhcp-boot, so every other one excludes the tag.
        "dhcp-vendorclass=set:httpboot,HTTPClient",
        "dhcp-option-force=tag:httpboot,60,HTTPClient",
        f"dhcp-boot=tag:httpboot,{BASE_URL}/ipxe.efi",
        f"dhcp-boot=tag:!ipxe,tag:!httpboot,tag:efi64,{efi_file},,{SERVER_ADDRESS}",
        *bios,
        "enable-tftp",
        f"tftp-root={tftp_root}",
        "",
    ])


class PxestackServer:
    """``pxestack serve --config <generated>`` inside the namespace."""

    name = "pxestack"

    def __init__(self, segment: Segment, workdir: Path, artifacts: Artifacts,
                 profiles: list[dict[str, object]] | None = None,
                 installed_boot: str = "local-boot", *, mode: str = "server",
                 address: str = SERVER_ADDRESS, loader: dict[str, str] | None = None,
                 pxelinux_prefix: str | None = None,
                 extensions: list[dict[str, object]] | None = None,
                 runner: str = "serve") -> None:
        if runner not in ("serve", "twistd"):
            raise ValueError(f"runner {runner!r}: serve or twistd")
        self.runner = runner
        self.segment = segment
        self.workdir = workdir
        self.mode = mode
        self.base_url = f"http://{address}:{HTTP_PORT}"
        self.processes: list[Process] = []
        self.state = workdir / "pxestack-state"
        self.cluster_dir = self.state / "cluster"
        # mayu's image cache layout (docs/reference/mayu-api.md, "Image cache layout"):
        # <images_dir>/<version>/<flatcar names>.
        images = self.state / "images" / OS_VERSION
        tftp = self.state / "tftproot"
        for directory in (self.state / "assets", images, tftp):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifacts.kernel, images / "flatcar_production_pxe.vmlinuz")
        shutil.copyfile(artifacts.initrd, images / "flatcar_production_pxe_image.cpio.gz")
        shutil.copyfile(IPXE_EFI, tftp / "ipxe.efi")
        shutil.copyfile(UNDIONLY, tftp / "undionly.kpxe")
        for name, installed in LOADER_FILES.items():
            if installed.exists():
                shutil.copyfile(installed, tftp / name)
        # UEFI HTTP Boot: the DHCP answer names ``<http.public_url>/<loader file>``, which the
        # asset root serves (iPXE, or shim and GRUB for the ``grub`` loader).
        shutil.copyfile(IPXE_EFI, self.state / "assets" / "ipxe.efi")
        for name in ("shimx64.efi", "grubx64.efi"):
            if LOADER_FILES[name].exists():
                shutil.copyfile(LOADER_FILES[name], self.state / "assets" / name)
        config = pxestack_config(self.state, profiles, installed_boot, mode=mode,
                                 address=address)
        dhcp = config["dhcp"]
        assert isinstance(dhcp, dict)
        if loader:  # dhcp.boot.loader: e.g. {"efi_x64": "grub"}
            boot = dhcp["boot"]
            assert isinstance(boot, dict)
            boot["loader"] = loader
        if pxelinux_prefix is not None:  # lpxelinux.0 reads ldlinux.c32 + config over HTTP
            boot = dhcp["boot"]
            assert isinstance(boot, dict)
            boot["pxelinux_prefix"] = pxelinux_prefix
            shutil.copyfile(LOADER_FILES["ldlinux.c32"], self.state / "assets" / "ldlinux.c32")
        # pxestack's own RA responder ends iPXE's IPv6 wait (docs/reference/pxe-wire.md).
        dhcp["router_advertisements"] = {"enabled": True}
        if extensions:
            config["extensions"] = extensions
        self.config_path = workdir / "pxestack.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> None:
        """Start ``pxestack serve`` and wait for its HTTP and DHCP ports."""
        pxestack = Path(sys.executable).with_name("pxestack")
        argv = [str(pxestack), "serve", "--config", str(self.config_path)]
        if self.runner == "twistd":
            argv = [str(Path(sys.executable).with_name("twistd")), "--nodaemon", "--pidfile=",
                    "pxestack", "--config", str(self.config_path)]
        try:
            self.processes.append(Process(
                "pxestack",
                self.segment.command(argv),
                self.workdir / "pxestack.log",
            ))
            wait_for_port(self.segment, HTTP_PORT)
            # In proxy mode the site server already holds port 67: wait for 4011 instead.
            wait_for_udp(self.segment, 67 if self.mode == "server" else 4011)
            for process in self.processes:
                process.check_alive()
        except BaseException:
            self.stop()
            raise

    def hosts(self) -> list[dict[str, object]]:
        """``GET /admin/hosts`` from inside the namespace (mayu's host records)."""
        out = subprocess.run(
            self.segment.command(["curl", "-sf", "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
                                  f"{self.base_url}/admin/hosts"]),
            capture_output=True, text=True, timeout=15,
        )
        if out.returncode != 0:
            raise RuntimeError(f"GET /admin/hosts failed: {out.stderr}")
        hosts: list[dict[str, object]] = json.loads(out.stdout)
        return hosts

    def host_logs(self, serial: str) -> list[dict[str, object]]:
        """``GET /admin/host/<serial>/logs`` from inside the namespace (the kept log lines)."""
        out = subprocess.run(
            self.segment.command(["curl", "-sf", "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
                                  f"{self.base_url}/admin/host/{serial}/logs"]),
            capture_output=True, text=True, timeout=15,
        )
        if out.returncode != 0:
            raise RuntimeError(f"GET /admin/host/{serial}/logs failed: {out.stderr}")
        lines: list[dict[str, object]] = json.loads(out.stdout)
        return lines

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``pxestack ctl --server <base> ARGS`` from inside the namespace."""
        token = self.workdir / "admin-token"
        token.write_text(ADMIN_TOKEN + "\n")
        token.chmod(0o600)
        pxestack = Path(sys.executable).with_name("pxestack")
        return subprocess.run(
            self.segment.command([str(pxestack), "ctl", "--server", self.base_url,
                                  "--token-file", str(token), *args]),
            capture_output=True, text=True, timeout=60, check=False,
        )

    def dashboard_page(self, path: str) -> str:
        """A dashboard page's HTML, after logging in with the admin token (curl, cookies)."""
        jar = self.workdir / "dashboard-cookies"
        login = subprocess.run(
            self.segment.command(["curl", "-sf", "-c", str(jar), "-o", "/dev/null",
                                  "--data-urlencode", f"token={ADMIN_TOKEN}",
                                  f"{self.base_url}/dashboard/login"]),
            capture_output=True, text=True, timeout=15,
        )
        if login.returncode != 0:
            raise RuntimeError(f"dashboard login failed: {login.stderr}")
        page = subprocess.run(
            self.segment.command(["curl", "-sf", "-b", str(jar), f"{self.base_url}{path}"]),
            capture_output=True, text=True, timeout=15,
        )
        if page.returncode != 0:
            raise RuntimeError(f"GET {path} failed: {page.stderr}")
        return page.stdout

    def git_log(self) -> list[str]:
        """The cluster directory's commit subjects, oldest first (mayu's git audit)."""
        out = subprocess.run(
            ["git", "-C", str(self.cluster_dir), "log", "--reverse", "--format=%s"],
            capture_output=True, text=True, timeout=15, check=True,
        )
        return out.stdout.splitlines()

    def stop(self) -> None:
        """Stop the pxestack process."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def pxestack_config(
    state: Path,
    profiles: list[dict[str, object]] | None,
    installed_boot: str = "local-boot",
    *,
    mode: str = "server",
    address: str = SERVER_ADDRESS,
) -> dict[str, object]:
    """The configuration the harness runs ``pxestack serve`` with.

    The first stage reads ``mayu=`` (rendered by pxestack's install script) and needs the
    serial console and the name of pxestack's host-data endpoint on the kernel line.
    ``mode="proxy"`` runs proxyDHCP (port 67 beside the site server, and 4011) with
    ``address`` as ``dhcp.server_address`` and in every URL.
    """
    base_url = f"http://{address}:{HTTP_PORT}"
    dhcp: dict[str, object] = {
        "mode": mode,
        "interfaces": [BRIDGE],
        "listen": "0.0.0.0:67",
        "server_address": address,
        "boot": {"ipxe_script_url": f"{base_url}/boot.ipxe"},
    }
    if mode == "server":
        dhcp.update({
            "proxy_port": 0,
            "lease_time": 3600,
            "pools": [{"subnet": "198.18.0.0/15", "start": POOL[0], "end": POOL[1]}],
        })
    return {
        "state_dir": str(state),
        "log_format": "text",
        "log_level": "debug",
        "dhcp": dhcp,
        "tftp": {"listen": f"{address}:69", "root": str(state / "tftproot")},
        "http": {
            "listen": f"0.0.0.0:{HTTP_PORT}",
            "public_url": base_url,
            "assets_root": str(state / "assets"),
        },
        "provision": {
            "cluster_dir": str(state / "cluster"),
            "git": True,
            "default_os_version": OS_VERSION,
            "images_dir": str(state / "images"),
            "installed_boot": installed_boot,
            "kernel_args": ["console=ttyS0", "quiet", "panic=5",
                            "pxestack.final=final-ignition-config.json"],
            "api": {"token": ADMIN_TOKEN},
            # provision.enrolment stays at its default, dhcp-seen: in server mode the
            # machines' addresses are pxestack's leases; in proxy mode the proxy answered
            # their MACs and the kernel's ARP table on the shared bridge maps the address
            # the site's dnsmasq gave them back to that MAC.
            **({"profiles": profiles} if profiles else {}),
        },
    }


class SiteDhcpServer:
    """dnsmasq as the site's DHCP server: addresses from :data:`POOL`, no boot options.

    It answers from the bridge's first address (198.18.0.1) and, with ``bind-interfaces``,
    opens port 67 with ``SO_REUSEADDR``, so a proxyDHCP on the same host can share the port.
    """

    name = "site-dnsmasq"

    def __init__(self, segment: Segment, workdir: Path) -> None:
        self.segment = segment
        self.workdir = workdir
        self.process: Process | None = None
        self.conf = workdir / "site-dnsmasq.conf"
        self.conf.write_text("\n".join([
            "port=0",
            f"interface={BRIDGE}",
            "bind-interfaces",
            "user=root",
            f"dhcp-range={POOL[0]},{POOL[1]},255.254.0.0,1h",
            "no-ping",
            "dhcp-authoritative",
            f"dhcp-leasefile={workdir / 'site-dnsmasq.leases'}",
            "log-dhcp",
            "",
        ]))

    def start(self) -> None:
        """Start dnsmasq and wait for port 67."""
        self.process = Process(
            "site-dnsmasq",
            self.segment.command(["dnsmasq", "--keep-in-foreground", f"--conf-file={self.conf}"]),
            self.workdir / "site-dnsmasq.log",
        )
        try:
            wait_for_udp(self.segment, 67)
            self.process.check_alive()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop dnsmasq."""
        if self.process is not None:
            self.process.stop()
            self.process = None


__all__ = ["BASE_URL", "PxestackServer", "ReferenceServer", "SiteDhcpServer", "dnsmasq_config",
           "pxestack_config"]
