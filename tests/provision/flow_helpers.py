"""Shared pieces of the OS-flow tests: a profile per flow, sample hosts, iPXE parsing."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from provision_helpers import BASE_URL, provision_config

from pxestack.http.ipxe import is_safe_word
from pxestack.provision.ignition import decode_data_url
from pxestack.provision.memstore import InMemoryHostStore
from pxestack.provision.model import Host
from pxestack.provision.provisioner import Provisioner

FCOS_VERSION = "41.20250117.3.0"
FLATCAR_VERSION = "3975.2.0"
KEY = b"k" * 32

#: One profile per flow (quantity 1 each, so enrolment order picks them in turn).
FLOW_PROFILES: list[dict[str, Any]] = [
    {"name": "flatcar-disk", "quantity": 1},
    {"name": "flatcar-pxe", "quantity": 1, "install": "pxe"},
    {"name": "fcos-disk", "quantity": 1, "os": "fcos", "os_version": FCOS_VERSION,
     "install_disk": "/dev/nvme0n1"},
    {"name": "fcos-pxe", "quantity": 1, "os": "fcos", "os_version": FCOS_VERSION,
     "install": "pxe"},
    {"name": "generic-disk", "quantity": 1, "os": "generic", "os_version": "12.8",
     "generic": {"image_os": "debian", "kernel": "vmlinuz", "initrd": ["initrd.gz"],
                 "cmdline": ["initrd=initrd.gz", "console=ttyS0", "pxestack.script={script_url}"],
                 "script": "generic/image-to-disk.sh.j2"}},
    {"name": "generic-pxe", "quantity": 1, "os": "generic", "os_version": "24.04",
     "install": "pxe",
     "generic": {"kernel": "https://mirror.example/ubuntu/vmlinuz",
                 "initrd": ["https://mirror.example/ubuntu/initrd"],
                 "cmdline": ["ip=dhcp", "cloud-config-url={script_url}"],
                 "script": "generic/cloud-config.yaml.j2"}},
]
FLOW_NAMES = [p["name"] for p in FLOW_PROFILES]


def flow_provisioner(tmp_path: Path, **overrides: Any) -> Provisioner:
    """A provisioner over an in-memory store with one profile per OS flow."""
    overrides.setdefault("profiles", FLOW_PROFILES)
    config = provision_config(tmp_path, **overrides)
    return Provisioner(config, InMemoryHostStore(), base_url=BASE_URL, key=KEY)


def sample_host(profile: str, **changes: Any) -> Host:
    """A host of *profile* as enrolment would have made it (fixed IDs, static address)."""
    fields: dict[str, Any] = {
        "serial": f"sn-{profile}",
        "machine_id": "0f3a" + "5e" * 14,
        "hostname": ("0f3a" + "5e" * 14)[:16],
        "profile": profile,
        "internal_addr": IPv4Address("198.18.10.10"),
        "connected_nic": "eno1",
    }
    version = next((p.get("os_version") for p in FLOW_PROFILES if p["name"] == profile), None)
    if version:
        fields["versions"] = {"CoreOSVersion": version}
    fields.update(changes)
    return Host(**fields)


def kernel_line(script: str) -> tuple[str, list[str]]:
    """The kernel URL and arguments of an iPXE script (exactly one ``kernel`` line)."""
    lines = [line for line in script.splitlines() if line.startswith("kernel ")]
    assert len(lines) == 1, script
    words = lines[0].split()
    return words[1], words[2:]


def assert_ipxe_words_safe(script: str) -> None:
    """Every word of every command is a safe iPXE word (iPXE ``${...}`` settings aside)."""
    assert script.startswith("#!ipxe\n")
    for line in script.splitlines()[1:]:
        if not line or line.startswith("#"):
            continue
        for word in line.split():
            plain = word.replace("${uuid:uristring}", "").replace("${serial:uristring}", "")
            plain = plain.replace("${mac:hexhyp}", "").replace("${buildarch:uristring}", "")
            assert plain == "" or plain == "||" or is_safe_word(plain), (word, line)


def ignition_files(document: dict[str, Any]) -> dict[str, str]:
    """``path -> decoded contents`` of an Ignition config's files."""
    return {
        entry["path"]: decode_data_url(entry["contents"]["source"]).decode()
        for entry in document.get("storage", {}).get("files", [])
    }


def ignition_units(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``name -> unit`` of an Ignition config."""
    return {unit["name"]: unit for unit in document.get("systemd", {}).get("units", [])}


def loads(text: str) -> Any:
    """JSON text (one line plus newline, as the templates render it)."""
    assert text.endswith("\n") and text.count("\n") == 1
    return json.loads(text)
