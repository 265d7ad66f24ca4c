"""docs/configuration.md documents every configuration key the loader accepts."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

import pxestack.config

ROOT = Path(__file__).resolve().parents[2]
#: Dataclass fields that are not keys of the YAML file.
NOT_KEYS = {"source", "base_dir"}


def config_dataclasses() -> list[type]:
    """Every dataclass defined in a pxestack.config module."""
    found: list[type] = []
    for info in pkgutil.iter_modules(pxestack.config.__path__, "pxestack.config."):
        module = importlib.import_module(info.name)
        found.extend(
            obj for obj in vars(module).values()
            if dataclasses.is_dataclass(obj) and isinstance(obj, type)
            and obj.__module__ == module.__name__
        )
    found.append(pxestack.config.Config)
    return found


def test_every_key_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", text))
    missing = sorted(
        f"{cls.__name__}.{f.name}"
        for cls in config_dataclasses()
        for f in dataclasses.fields(cls)
        if f.name not in NOT_KEYS and f.name not in documented
    )
    assert not missing, f"undocumented configuration keys: {missing}"
