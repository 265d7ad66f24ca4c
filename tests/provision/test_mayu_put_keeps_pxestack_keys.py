"""PUT /admin/mayu_config replaces mayu's concepts but keeps pxestack-only profile keys."""

from __future__ import annotations

from pathlib import Path

from pxestack.config import load_config
from pxestack.provision.mayu_import import apply_mayu_text


def test_pxestack_only_profile_settings_survive_a_mayu_config_put(tmp_path: Path) -> None:
    config = load_config(
        {
            "provision": {
                "default_os_version": "3975.2.0",
                "profiles": [
                    {"name": "core", "quantity": 3, "install": "pxe",
                     "kernel_args": ["console=ttyS0"]},
                    {"name": "worker", "quantity": 5},
                ],
            }
        },
        base_dir=tmp_path,
    ).provision
    assert config is not None
    text = (
        "default_coreos_version: 4000.0.0\n"
        "profiles:\n"
        "  - {name: core, quantity: 4, tags: [role=master]}\n"
        "  - {name: edge, quantity: 1}\n"
    )
    updated = apply_mayu_text(text, config)
    core, edge = updated.profiles
    assert (core.name, core.quantity, core.tags) == ("core", 4, ("role=master",))
    assert core.install == "pxe" and core.kernel_args == ("console=ttyS0",)
    assert edge.name == "edge" and edge.install == "disk"
    assert updated.default_os_version == "4000.0.0"
