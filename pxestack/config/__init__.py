"""pxestack's configuration: one YAML file, read once at the edge into frozen dataclasses.

``yaml.safe_load`` turns the file into plain mappings; :func:`load_config` checks every key
and collects *all* problems before raising one :class:`~pxestack.errors.ConfigError`, so an
operator sees every mistake on one screen.  Unknown keys are errors.  Nothing below the
service layer reads files or the environment: the cores get these values as arguments.

Each protocol's section lives in its own module (``dhcp``, ``tftp``, ``http``, ``provision``)
with a ``read_*`` function taking a :class:`~pxestack.config._reader.Section`.
The schema is documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pxestack.config._reader import Section
from pxestack.config.checks import RunAs, read_run_as
from pxestack.config.dhcp import DhcpConfig, read_dhcp
from pxestack.config.http import HttpConfig, read_http
from pxestack.config.provision import ProvisionConfig, read_provision
from pxestack.config.tftp import TftpConfig, read_tftp
from pxestack.errors import ConfigError, ConfigProblem

LOG_FORMATS = ("text", "json")
#: An extension's name (``extensions[i].use``): an entry point name of the
#: ``pxestack.extensions`` group.
EXTENSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LOG_LEVELS = ("debug", "info", "warn", "error")


@dataclass(frozen=True, slots=True)
class ExtensionConfig:
    """One entry of ``extensions:``: which extension to run, with its own section.

    The section is kept as YAML gave it; the extension's own schema reads it when the
    service tree is built (:mod:`pxestack.extensions`), with errors named
    ``extensions[i].config.KEY``.
    """

    #: The extension's entry point name in the ``pxestack.extensions`` group.
    use: str
    #: The extension's own settings (validated by the extension's schema).
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: The directory relative paths of ``config`` are taken from (the file's directory).
    base_dir: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration.  A section is ``None`` when it is not enabled."""

    state_dir: Path
    log_format: str = "text"
    log_level: str = "info"
    dhcp: DhcpConfig | None = None
    tftp: TftpConfig | None = None
    http: HttpConfig | None = None
    provision: ProvisionConfig | None = None
    source: str = "<mapping>"
    #: The user (and group) ``pxestack serve`` switches to once its ports are open.
    run_as: RunAs | None = None
    #: The extensions to run, in order (``extensions:``; see docs/extensions.md).
    extensions: tuple[ExtensionConfig, ...] = ()


def read_extensions(root: Section) -> tuple[ExtensionConfig, ...]:
    """``extensions: [{use: NAME, config: {...}}]``: the shape only (the extension's own
    schema checks its ``config`` when the service tree is built)."""
    found: list[ExtensionConfig] = []
    seen: set[str] = set()
    for section in root.sections("extensions"):
        use = section.str("use")
        raw = section.raw("config")
        if raw is not None and not isinstance(raw, Mapping):
            section.problem("config", "expected a mapping")
            raw = None
        section.finish()
        if use is None:
            continue
        if not EXTENSION_NAME.fullmatch(use):
            section.problem("use", f"{use!r} is not an extension name")
            continue
        if use in seen:
            section.problem("use", f"{use!r} is enabled twice")
            continue
        seen.add(use)
        found.append(ExtensionConfig(use=use, config=dict(raw or {}), base_dir=root.base_dir))
    return tuple(found)


def _lease_store_dsn(root: Section, dhcp: DhcpConfig | None,
                     provision: ProvisionConfig | None) -> DhcpConfig | None:
    """``dhcp.lease_store: postgresql`` without a DSN of its own takes the host store's."""
    if dhcp is None or dhcp.lease_store.kind != "postgresql" or dhcp.lease_store.dsn:
        return dhcp
    store = provision.store if provision is not None and provision.enabled else None
    if store is None or store.kind != "postgresql" or not store.dsn:
        root.problem("dhcp.lease_store.dsn",
                     "is required with kind: postgresql unless provision.store is on "
                     "PostgreSQL too (its dsn is then used)")
        return dhcp
    return replace(dhcp, lease_store=replace(dhcp.lease_store, dsn=store.dsn))


def load_config(
    data: object,
    *,
    base_dir: Path | None = None,
    source: str = "<mapping>",
) -> Config:
    """Validate a mapping (as ``yaml.safe_load`` returns it) into a :class:`Config`.

    Relative paths are resolved against *base_dir* (the config file's directory; the
    current directory when ``None``).  Raises :class:`ConfigError` listing every problem.
    """
    problems: list[ConfigProblem] = []
    base = (base_dir or Path.cwd()).absolute()
    root = Section(data, "", problems, base)
    state_dir = root.path("state_dir", "pxestack-state")
    log_format = root.str("log_format", "text", choices=LOG_FORMATS)
    log_level = root.str("log_level", "info", choices=LOG_LEVELS)
    run_as = read_run_as(root.mapping("run_as")) if root.has("run_as") else None
    dhcp = read_dhcp(root.mapping("dhcp")) if root.has("dhcp") else None
    tftp = read_tftp(root.mapping("tftp")) if root.has("tftp") else None
    http = read_http(root.mapping("http")) if root.has("http") else None
    provision = (
        read_provision(
            root.mapping("provision"), state_dir,
            own_dhcp=dhcp is not None and dhcp.enabled,
        )
        if root.has("provision")
        else None
    )
    extensions = read_extensions(root)
    dhcp = _lease_store_dsn(root, dhcp, provision)
    root.finish()
    if problems:
        raise ConfigError(problems)
    return Config(
        state_dir=state_dir,
        log_format=log_format,
        log_level=log_level,
        dhcp=dhcp if dhcp is not None and dhcp.enabled else None,
        tftp=tftp if tftp is not None and tftp.enabled else None,
        http=http if http is not None and http.enabled else None,
        provision=provision if provision is not None and provision.enabled else None,
        source=source,
        run_as=run_as,
        extensions=extensions,
    )


def parse_yaml(text: str, source: str) -> object:
    """``yaml.safe_load`` *text*; a syntax error becomes a :class:`ConfigError` with its line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem("", f"{where}: invalid YAML: {problem}")]) from None


def load_config_file(path: str | Path) -> Config:
    """Read and validate the YAML file at *path*."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem("", f"cannot read {file}: {exc}")]) from None
    data = parse_yaml(text, str(file))
    return load_config(data, base_dir=file.absolute().parent, source=str(file))


def quickstart_text() -> str:
    """The embedded quickstart configuration (the same text as ``examples/quickstart.yaml``)."""
    return resources.files("pxestack.config").joinpath("quickstart.yaml").read_text("utf-8")


def load_quickstart(base_dir: Path | None = None) -> Config:
    """The embedded quickstart configuration, with paths under *base_dir* (default: cwd)."""
    data = parse_yaml(quickstart_text(), "<embedded quickstart>")
    return load_config(data, base_dir=base_dir, source="<embedded quickstart>")


def merge_overrides(data: object, overrides: Mapping[str, object]) -> object:
    """Return *data* with dotted-path *overrides* applied (used by command-line flags)."""
    if not isinstance(data, dict):
        return data
    merged: dict[str, object] = dict(data)
    for dotted, value in overrides.items():
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[leaf] = value
    return merged


__all__ = [
    "Config",
    "ConfigError",
    "DhcpConfig",
    "ExtensionConfig",
    "HttpConfig",
    "ProvisionConfig",
    "RunAs",
    "TftpConfig",
    "load_config",
    "load_config_file",
    "load_quickstart",
    "merge_overrides",
    "parse_yaml",
    "quickstart_text",
]
