"""Jinja2 templates for iPXE scripts, the installer script and the final Ignition config.

Every template is rendered with ``StrictUndefined`` (a missing variable is an error, not
mayu's ``<no value>``), and every ``{{ value }}`` is checked for the context it lands in,
chosen by the template's file name:

* ``*.ipxe.j2``: the value must be a safe iPXE word (:func:`pxestack.http.ipxe.ipxe_word`)
  unless it went through ``|ipxe_url`` (percent-encoding) or ``|ipxe``;
* ``*.sh.j2``: the value must consist of ``[A-Za-z0-9._,:/=@+%-]`` unless it went through
  ``|sh`` (POSIX single-quoting);
* ``*.json.j2``: the value may not contain quotes, backslashes or control characters unless
  it went through ``|tojson``; the output must parse as JSON and, for Ignition (a template
  whose name contains ``ignition``), follow the Ignition spec version it declares
  (:mod:`pxestack.provision.ignition`);
* ``*.yaml.j2``: as for JSON (a ``|tojson`` value is a valid YAML flow scalar), and the output
  must parse as YAML; a document starting with ``#cloud-config`` must be a mapping.

So a template that forgets to escape fails loudly on hostile data instead of injecting it
(a host record holds whatever a machine sent).  Templates are looked up in
``provision.templates_dir`` first, then in the shipped ``pxestack/provision/templates``;
``snippets/<name>`` resolves in ``provision.snippets_dir`` first, then in the shipped
snippets (mayu's snippets directory).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml

from pxestack.http.ipxe import ipxe_url_component, ipxe_word, is_safe_word
from pxestack.provision import ignition

SHIPPED = Path(__file__).resolve().parent / "templates"

_SHELL_SAFE = re.compile(r"[A-Za-z0-9._,:/=@+%-]*")
_JSON_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')
#: Control characters (a newline above all) end a line of a boot loader config.
_CONFIG_LINE_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
#: An interface name or glob as a systemd unit / NetworkManager keyfile value: printable
#: ASCII without whitespace, so a machine-reported ConnectedNIC or a configured match can
#: never end the line and add keys or sections of its own.
_IFNAME_SAFE = re.compile(r"[!-~]{1,128}")
#: Characters that can change the structure of a YAML document around a plain value.
_YAML_UNSAFE = re.compile(r'["\'\\\x00-\x1f\x7f#{}\[\],&*!|>%@`]|: |:$')
#: Top-level keys of an Ignition spec 3.x config.
IGNITION_KEYS = frozenset({"ignition", "kernelArguments", "passwd", "storage", "systemd"})


class TemplateRenderError(Exception):
    """A template could not be rendered, or its output is not valid for its context."""


class UnsafeTemplateValue(TemplateRenderError):  # noqa: N818
    """A value would change the meaning of the script or document it is inserted into."""


class _Escaped(str):
    """A value already escaped for one context (the subclass names which)."""

    __slots__ = ()


class IpxeText(_Escaped):
    """Escaped for an iPXE script."""

    __slots__ = ()


class ShellText(_Escaped):
    """Quoted for a POSIX shell."""

    __slots__ = ()


class JsonText(_Escaped):
    """Encoded as a JSON value."""

    __slots__ = ()


class GrubText(_Escaped):
    """Quoted for a GRUB script."""

    __slots__ = ()


def grub_quote(value: object) -> GrubText:
    """One GRUB word: single-quoted (``'`` written as ``'\\''``), as in a POSIX shell."""
    text = _plain(value)
    if _CONFIG_LINE_UNSAFE.search(text):
        raise UnsafeTemplateValue(f"{text!r} cannot be written into a boot loader config")
    return GrubText("'" + text.replace("'", "'\\''") + "'")


def _finalize_grub(value: object) -> str:
    if isinstance(value, GrubText):
        return str(value)
    text = _plain(value)
    if not _SHELL_SAFE.fullmatch(text):
        raise UnsafeTemplateValue(f"{text!r} is not safe in a GRUB script; use |grub")
    return text


def _finalize_pxelinux(value: object) -> str:
    # PXELINUX has no quoting: a value is one word on one line, or refused.
    text = _plain(value)
    if _CONFIG_LINE_UNSAFE.search(text) or any(ch.isspace() for ch in text):
        raise UnsafeTemplateValue(f"{text!r} is not safe in a PXELINUX config")
    return text


def _plain(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _finalize_ipxe(value: object) -> str:
    if isinstance(value, IpxeText):
        return str(value)
    text = _plain(value)
    if text and not is_safe_word(text):
        raise UnsafeTemplateValue(f"{text!r} is not safe in an iPXE script; use |ipxe_url")
    return text


def _finalize_shell(value: object) -> str:
    if isinstance(value, ShellText):
        return str(value)
    text = _plain(value)
    if not _SHELL_SAFE.fullmatch(text):
        raise UnsafeTemplateValue(f"{text!r} is not safe in a shell script; use |sh")
    return text


def _finalize_json(value: object) -> str:
    if isinstance(value, JsonText):
        return str(value)
    text = _plain(value)
    if _JSON_UNSAFE.search(text):
        raise UnsafeTemplateValue(f"{text!r} is not safe in a JSON document; use |tojson")
    return text


def _finalize_yaml(value: object) -> str:
    if isinstance(value, JsonText):
        return str(value)
    text = _plain(value)
    if _YAML_UNSAFE.search(text) or text != text.strip() or text.startswith(("-", "?")):
        raise UnsafeTemplateValue(f"{text!r} is not safe in a YAML document; use |tojson")
    return text


def _ifname(value: object) -> str:
    """*value* checked as an interface name or glob for a unit file (the ``ifname`` filter)."""
    text = _plain(value)
    if not _IFNAME_SAFE.fullmatch(text):
        raise UnsafeTemplateValue(f"{text!r} is not an interface name or glob")
    return text


def _tojson(value: object, indent: int | None = None) -> JsonText:
    return JsonText(json.dumps(value, indent=indent, sort_keys=False, ensure_ascii=True))


def validate_ignition(document: object) -> None:
    """Check *document* against the Ignition spec it declares (mayu dropped bad keys, §8.3)."""
    try:
        ignition.validate(document)
    except ignition.IgnitionError as exc:
        raise TemplateRenderError(f"invalid Ignition config: {exc}") from None


def validate_cloud_config(text: str) -> object:
    """Parse YAML output; a ``#cloud-config`` document must be a mapping (cloud-init)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateRenderError(f"did not produce valid YAML: {exc}") from None
    if text.startswith("#cloud-config") and not isinstance(document, dict):
        raise TemplateRenderError("a #cloud-config document must be a YAML mapping")
    return document


class Templates:
    """The template set of one installation (shipped defaults + the operator's overrides)."""

    def __init__(self, templates_dir: Path | None = None, snippets_dir: Path | None = None) -> None:
        main: list[jinja2.BaseLoader] = []
        snippets: list[jinja2.BaseLoader] = []
        if templates_dir is not None:
            main.append(jinja2.FileSystemLoader(str(templates_dir)))
        if snippets_dir is not None:
            snippets.append(jinja2.FileSystemLoader(str(snippets_dir)))
        snippets.append(jinja2.FileSystemLoader(str(SHIPPED / "snippets")))
        main.append(jinja2.FileSystemLoader(str(SHIPPED)))
        loader = jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader({"snippets": jinja2.ChoiceLoader(snippets)}),
                *main,
            ]
        )
        self._envs = {
            kind: self._environment(loader, finalize)
            for kind, finalize in (
                ("ipxe", _finalize_ipxe),
                ("sh", _finalize_shell),
                ("json", _finalize_json),
                ("yaml", _finalize_yaml),
                ("grub", _finalize_grub),
                ("pxelinux", _finalize_pxelinux),
            )
        }

    @staticmethod
    def _environment(loader: jinja2.BaseLoader, finalize: Any) -> jinja2.Environment:
        env = jinja2.Environment(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            finalize=finalize,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,  # noqa: S701 - escaping is per context, via finalize
        )
        env.filters["ipxe"] = lambda v: IpxeText(ipxe_word(v))
        env.filters["grub"] = grub_quote
        env.filters["ipxe_url"] = lambda v: IpxeText(ipxe_url_component(v))
        env.filters["sh"] = lambda v: ShellText(shlex.quote(_plain(v)))
        env.filters["tojson"] = _tojson
        env.filters["ifname"] = _ifname
        env.filters["has_tag"] = lambda tags, tag: tag.lower() in (t.lower() for t in tags)
        return env

    @staticmethod
    def kind_of(name: str) -> str:
        """The escaping context of template *name* (from its suffix)."""
        for kind in ("ipxe", "sh", "json", "yaml", "grub", "pxelinux"):
            if name.endswith(f".{kind}.j2"):
                return kind
        raise TemplateRenderError(
            f"template {name!r} must end in .ipxe.j2, .sh.j2, .json.j2, .yaml.j2, .grub.j2 "
            "or .pxelinux.j2"
        )

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """Render template *name*; raises :class:`TemplateRenderError` with the reason."""
        kind = self.kind_of(name)
        try:
            text = self._envs[kind].get_template(name).render(**context)
        except UnsafeTemplateValue:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateRenderError(f"{name}: {exc}") from exc
        if kind == "json":
            try:
                document = json.loads(text)
            except ValueError as exc:
                raise TemplateRenderError(f"{name} did not produce valid JSON: {exc}") from exc
            if "ignition" in name:
                validate_ignition(document)
            return json.dumps(document, separators=(",", ":")) + "\n"
        if kind == "yaml":
            try:
                validate_cloud_config(text)
            except TemplateRenderError as exc:
                raise TemplateRenderError(f"{name}: {exc}") from None
        return text


__all__ = [
    "IGNITION_KEYS",
    "SHIPPED",
    "TemplateRenderError",
    "Templates",
    "UnsafeTemplateValue",
    "validate_cloud_config",
    "validate_ignition",
]
