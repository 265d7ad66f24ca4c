"""The ``provision:`` section of the configuration (mayu's concepts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pxestack.config._reader import Section


@dataclass(frozen=True, slots=True)
class ProvisionConfig:
    """Settings of the provisioning layer."""

    enabled: bool = True
    cluster_dir: Path = Path("pxestack-state/cluster")
    git: bool = True


def read_provision(section: Section, state_dir: Path) -> ProvisionConfig:
    """Validate the ``provision:`` mapping; paths default to places under *state_dir*."""
    config = ProvisionConfig(
        enabled=section.bool("enabled", True),
        cluster_dir=section.path("cluster_dir", str(state_dir / "cluster")),
        git=section.bool("git", True),
    )
    section.finish()
    return config
