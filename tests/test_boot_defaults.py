"""``BootDefaults`` is the one source of the default boot-file names.

The configuration, the CLI and the importers read the defaults from
:data:`pxestack.dhcp.decide.BOOT_FILE_DEFAULTS`; a second spelling of ``undionly.kpxe`` in
code would drift from it the day one of them changes.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from pxestack.config import load_config
from pxestack.config.dhcp import BootConfig
from pxestack.dhcp.decide import BOOT_FILE_DEFAULTS, BootDefaults
from pxestack.service.dhcp import boot_defaults

ROOT = Path(__file__).resolve().parent.parent
#: The module that owns the defaults.
OWNER = ROOT / "pxestack" / "dhcp" / "decide.py"
SOURCES = sorted(p for pattern in ("pxestack/**/*.py", "pxestack_*/**/*.py")
                 for p in ROOT.glob(pattern) if p != OWNER)


def test_every_boot_file_field_has_a_default() -> None:
    names = {item.name for item in fields(BootDefaults) if item.name.endswith("_file")}
    assert set(BOOT_FILE_DEFAULTS) == names
    assert BOOT_FILE_DEFAULTS["bios_file"] == "undionly.kpxe"
    assert BOOT_FILE_DEFAULTS["efi_x64_file"] == "ipxe.efi"


def test_the_configuration_defaults_are_the_boot_decisions() -> None:
    config = BootConfig()
    for name, default in BOOT_FILE_DEFAULTS.items():
        assert getattr(config, name) == default, name
    decided = boot_defaults(load_config({"dhcp": {"mode": "proxy"}}), IPv4Address("198.18.0.1"))
    for name, default in BOOT_FILE_DEFAULTS.items():
        assert getattr(decided, name) == default, name


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants of *tree* that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_other_module_spells_a_default_boot_file(path: Path) -> None:
    """Words of string literals (not docstrings, not comments, not paths such as
    ``usr/lib/PXELINUX/lpxelinux.0``) never name a default boot file outside decide.py."""
    defaults = set(BOOT_FILE_DEFAULTS.values())
    found = [
        f"{path.relative_to(ROOT)}:{line}: {word}"
        for line, text in _strings(ast.parse(path.read_text(encoding="utf-8")))
        for word in re.findall(r"[\w./-]+", text)
        if word.rstrip(".") in defaults
    ]
    assert not found, "use BOOT_FILE_DEFAULTS: " + ", ".join(found)
