"""docs/provisioning.md shows the Butane input of the shipped Fedora CoreOS config; this keeps
the two in sync by translating the documented Butane (the subset it uses, the way Butane's
fcos 1.5.0 variant does) and comparing it with the config rendered for the same host."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from flow_helpers import flow_provisioner, ignition_files, ignition_units, loads, sample_host

from pxestack import __version__
from pxestack.provision import ignition

DOCS = Path(__file__).resolve().parents[2] / "docs" / "provisioning.md"
#: Butane fcos 1.5.0 translates to Ignition spec 3.4.0.
BUTANE_TO_SPEC = {("fcos", "1.5.0"): "3.4.0"}


def documented_butane() -> dict[str, Any]:
    """The first ```yaml block of the docs that is a Butane fcos config."""
    for block in re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S):
        if block.startswith("variant: fcos"):
            # The version line of /etc/mayu-env follows pxestack's version.
            block = re.sub(r"MAYU_VERSION=\S+", f"MAYU_VERSION={__version__}", block)
            return yaml.safe_load(block)
    raise AssertionError("no Butane fcos block in docs/provisioning.md")


def translate(butane: dict[str, Any]) -> dict[str, Any]:
    """Butane -> the comparable content of an Ignition config (subset used by the docs)."""
    known = {"variant", "version", "passwd", "storage", "systemd"}
    assert set(butane) <= known, set(butane) - known
    users = [
        {"name": u["name"], "sshAuthorizedKeys": u.get("ssh_authorized_keys", [])}
        for u in butane.get("passwd", {}).get("users", [])
    ]
    files = {
        f["path"]: (f.get("mode"), f.get("overwrite", False), f["contents"]["inline"])
        for f in butane.get("storage", {}).get("files", [])
    }
    units = {
        u["name"]: (u.get("enabled"), u.get("contents"))
        for u in butane.get("systemd", {}).get("units", [])
    }
    return {
        "version": BUTANE_TO_SPEC[(butane["variant"], butane["version"])],
        "users": users,
        "files": files,
        "units": units,
    }


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    contents = ignition_files(document)
    return {
        "version": document["ignition"]["version"],
        "users": document["passwd"]["users"],
        "files": {
            f["path"]: (f.get("mode"), f.get("overwrite", False), contents[f["path"]])
            for f in document["storage"]["files"]
        },
        "units": {
            name: (unit.get("enabled"), unit.get("contents"))
            for name, unit in ignition_units(document).items()
        },
    }


def test_documented_butane_produces_the_shipped_fcos_config(tmp_path):
    prov = flow_provisioner(tmp_path)
    document = loads(prov.render_final(sample_host("fcos-disk")))
    ignition.validate(document)
    assert translate(documented_butane()) == comparable(document)
