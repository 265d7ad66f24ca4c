"""Jinja2 templates for iPXE scripts, the installer script and the final Ignition config.

Every template is rendered with ``StrictUndefined`` (a missing variable is an error, not
mayu's ``<no value>``), and every ``{{ value }}`` is checked for the context it lands in,
chosen by the template's file name:

* ``*.ipxe.j2``: the value must be a safe iPXE word (:func:`pxestack.http.ipxe.ipxe_word`)
  unless it went through ``|ipxe_url`` (percent-encoding) or ``|ipxe``;
* ``*.sh.j2``: the value must consist of ``[A-Za-z0-9._,:/=@+%-]`` unless it went through
  ``|sh`` (POSIX single-quoting);
* ``*.json.j2``: the value may not contain quotes, backslashes or control characters unless
  it went through ``|tojson``; the output must parse as JSON and, for Ignition, carry a
  spec 3.x ``ignition.version`` and only keys the spec defines.

So a template that forgets to escape fails loudly on hostile data instead of injecting it
(bad-inputs W2).  Templates are looked up in ``provision.templates_dir`` first, then in the
shipped ``pxestack/provision/templates``; ``snippets/<name>`` resolves in
``provision.snippets_dir`` first, then in the shipped snippets (mayu's snippets directory).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from pxestack.http.ipxe import ipxe_url_component, ipxe_word, is_safe_word

SHIPPED = Path(__file__).resolve().parent / "templates"

_SHELL_SAFE = re.compile(r"[A-Za-z0-9._,:/=@+%-]*")
_JSON_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')
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


def _tojson(value: object, indent: int | None = None) -> JsonText:
    return JsonText(json.dumps(value, indent=indent, sort_keys=False, ensure_ascii=True))


def validate_ignition(document: object) -> None:
    """Check the parts of an Ignition spec 3.x config that mayu silently dropped (§8.3)."""
    if not isinstance(document, dict):
        raise TemplateRenderError("an Ignition config must be a JSON object")
    unknown = set(document) - IGNITION_KEYS
    if unknown:
        raise TemplateRenderError(f"unknown Ignition keys: {', '.join(sorted(unknown))}")
    version = (
        document.get("ignition", {}).get("version")
        if isinstance(document.get("ignition"), dict)
        else None
    )
    if not isinstance(version, str) or not re.fullmatch(r"3\.\d+\.\d+", version):
        raise TemplateRenderError(f"ignition.version {version!r} is not a spec 3.x version")
    for unit in document.get("systemd", {}).get("units", []):
        if not isinstance(unit, dict) or not isinstance(unit.get("name"), str):
            raise TemplateRenderError(f"systemd unit without a name: {unit!r}")
        unknown = set(unit) - {"name", "enabled", "mask", "contents", "dropins"}
        if unknown:
            raise TemplateRenderError(f"unit {unit['name']}: unknown keys {sorted(unknown)}")
    for entry in document.get("storage", {}).get("files", []):
        if not isinstance(entry, dict) or not str(entry.get("path", "")).startswith("/"):
            raise TemplateRenderError(f"storage file without an absolute path: {entry!r}")


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
        env.filters["ipxe_url"] = lambda v: IpxeText(ipxe_url_component(v))
        env.filters["sh"] = lambda v: ShellText(shlex.quote(_plain(v)))
        env.filters["tojson"] = _tojson
        env.filters["has_tag"] = lambda tags, tag: tag.lower() in (t.lower() for t in tags)
        return env

    @staticmethod
    def kind_of(name: str) -> str:
        """The escaping context of template *name* (from its suffix)."""
        for kind in ("ipxe", "sh", "json"):
            if name.endswith(f".{kind}.j2"):
                return kind
        raise TemplateRenderError(f"template {name!r} must end in .ipxe.j2, .sh.j2 or .json.j2")

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
        return text


__all__ = [
    "IGNITION_KEYS",
    "SHIPPED",
    "TemplateRenderError",
    "Templates",
    "UnsafeTemplateValue",
    "validate_ignition",
]
