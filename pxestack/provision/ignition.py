"""A structural validator for Ignition configs of spec 3.0.0 to 3.5.0.

mayu decoded its rendered Ignition into typed Go structs and silently dropped every key that
did not match (in mayu's templates: ``command: start`` in a unit, ``wipeFileSystem`` for
``wipeFilesystem``), so a typo produced a machine without the unit.  pxestack checks every
config it renders against the spec of the version the config declares, and refuses it with
the JSON path of the first problem:

* the document is an object whose ``ignition.version`` is a 3.x spec this module knows;
* every object has only the keys its spec version defines (keys added in a later version
  are refused with the version that introduced them), and its required keys;
* every value has the spec's type (strings, integers, booleans, lists, objects);
* values Ignition would reject at boot: relative paths, file modes outside 0..0o7777, unit
  names without a unit type suffix, malformed ``data:`` URLs and verification hashes, and
  the same path or unit declared twice.

It covers the structure of the spec, not the semantics Ignition checks against a running
machine (whether a device exists, whether a Clevis pin works).  The key tables were written
from the Ignition configuration specifications v3.0 to v3.5; nothing here does network I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union
from urllib.parse import unquote_to_bytes

#: The spec versions this validator knows (Flatcar's and Fedora CoreOS's Ignition accept them).
SUPPORTED_VERSIONS = ("3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0")


class IgnitionError(ValueError):
    """The config does not follow its declared Ignition spec; the message names the path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '$'}: {message}")
        self.path = path
        self.reason = message


@dataclass(frozen=True, slots=True)
class ListOf:
    """A JSON array whose items all have the type *item*."""

    item: Kind


@dataclass(frozen=True, slots=True)
class Obj:
    """A JSON object: key -> (kind, first spec minor version that has the key)."""

    name: str
    fields: Mapping[str, tuple[Kind, int]]
    required: tuple[str, ...] = ()


#: ``str``, ``int``, ``bool``, a list or an object; ``"mode"``, ``"abspath"``, ``"unit"``,
#: ``"source"`` and ``"hash"`` are strings or integers with an extra check.
Kind = Union[str, ListOf, Obj]  # noqa: UP007 - a recursive alias needs Union at runtime

# -- the spec tables ------------------------------------------------------------------------

_RESOURCE = Obj(
    "resource",
    {
        "source": ("source", 0),
        "compression": ("str", 0),
        "httpHeaders": (
            ListOf(Obj("httpHeader", {"name": ("str", 1), "value": ("str", 1)}, ("name",))),
            1,
        ),
        "verification": (Obj("verification", {"hash": ("hash", 0)}), 0),
    },
)
_NODE_USER = Obj("nodeUser", {"id": ("int", 0), "name": ("str", 0)})
_NODE_GROUP = Obj("nodeGroup", {"id": ("int", 0), "name": ("str", 0)})
_NODE: dict[str, tuple[Kind, int]] = {
    "path": ("abspath", 0),
    "overwrite": ("bool", 0),
    "user": (_NODE_USER, 0),
    "group": (_NODE_GROUP, 0),
}
_FILE = Obj(
    "file",
    {**_NODE, "contents": (_RESOURCE, 0), "append": (ListOf(_RESOURCE), 0), "mode": ("mode", 0)},
    ("path",),
)
_DIRECTORY = Obj("directory", {**_NODE, "mode": ("mode", 0)}, ("path",))
_LINK = Obj("link", {**_NODE, "target": ("str", 0), "hard": ("bool", 0)}, ("path",))
_PARTITION = Obj(
    "partition",
    {
        "label": ("str", 0),
        "number": ("int", 0),
        "sizeMiB": ("int", 0),
        "startMiB": ("int", 0),
        "typeGuid": ("str", 0),
        "guid": ("str", 0),
        "wipePartitionEntry": ("bool", 0),
        "shouldExist": ("bool", 0),
        "resize": ("bool", 2),
    },
)
_DISK = Obj(
    "disk",
    {"device": ("str", 0), "wipeTable": ("bool", 0), "partitions": (ListOf(_PARTITION), 0)},
    ("device",),
)
_RAID = Obj(
    "raid",
    {
        "name": ("str", 0),
        "level": ("str", 0),
        "devices": (ListOf("str"), 0),
        "spares": ("int", 0),
        "options": (ListOf("str"), 0),
    },
    ("name",),
)
_FILESYSTEM = Obj(
    "filesystem",
    {
        "device": ("str", 0),
        "format": ("str", 0),
        "path": ("abspath", 0),
        "wipeFilesystem": ("bool", 0),
        "label": ("str", 0),
        "uuid": ("str", 0),
        "options": (ListOf("str"), 0),
        "mountOptions": (ListOf("str"), 1),
    },
    ("device",),
)
_TANG = Obj(
    "tang",
    {"url": ("str", 2), "thumbprint": ("str", 2), "advertisement": ("str", 4)},
    ("url",),
)
_CLEVIS = Obj(
    "clevis",
    {
        "tang": (ListOf(_TANG), 2),
        "tpm2": ("bool", 2),
        "threshold": ("int", 2),
        "custom": (
            Obj(
                "clevisCustom",
                {"pin": ("str", 2), "config": ("str", 2), "needsNetwork": ("bool", 2)},
            ),
            2,
        ),
    },
)
_LUKS = Obj(
    "luks",
    {
        "name": ("str", 2),
        "device": ("str", 2),
        "keyFile": (_RESOURCE, 2),
        "label": ("str", 2),
        "uuid": ("str", 2),
        "options": (ListOf("str"), 2),
        "wipeVolume": ("bool", 2),
        "clevis": (_CLEVIS, 2),
        "discard": ("bool", 3),
        "openOptions": (ListOf("str"), 3),
        "cex": (Obj("cex", {"enabled": ("bool", 4)}), 4),
    },
    ("name",),
)
_USER = Obj(
    "user",
    {
        "name": ("str", 0),
        "passwordHash": ("str", 0),
        "sshAuthorizedKeys": (ListOf("str"), 0),
        "uid": ("int", 0),
        "gecos": ("str", 0),
        "homeDir": ("str", 0),
        "noCreateHome": ("bool", 0),
        "primaryGroup": ("str", 0),
        "groups": (ListOf("str"), 0),
        "noUserGroup": ("bool", 0),
        "noLogInit": ("bool", 0),
        "shell": ("str", 0),
        "system": ("bool", 0),
        "shouldExist": ("bool", 2),
    },
    ("name",),
)
_GROUP = Obj(
    "group",
    {
        "name": ("str", 0),
        "gid": ("int", 0),
        "passwordHash": ("str", 0),
        "system": ("bool", 0),
        "shouldExist": ("bool", 2),
    },
    ("name",),
)
_DROPIN = Obj("dropin", {"name": ("str", 0), "contents": ("str", 0)}, ("name",))
_UNIT = Obj(
    "unit",
    {
        "name": ("unit", 0),
        "enabled": ("bool", 0),
        "mask": ("bool", 0),
        "contents": ("str", 0),
        "dropins": (ListOf(_DROPIN), 0),
    },
    ("name",),
)
_IGNITION = Obj(
    "ignition",
    {
        "version": ("str", 0),
        "config": (
            Obj("ignitionConfig", {"merge": (ListOf(_RESOURCE), 0), "replace": (_RESOURCE, 0)}),
            0,
        ),
        "timeouts": (
            Obj("timeouts", {"httpResponseHeaders": ("int", 0), "httpTotal": ("int", 0)}),
            0,
        ),
        "security": (
            Obj(
                "security",
                {
                    "tls": (
                        Obj("tls", {"certificateAuthorities": (ListOf(_RESOURCE), 0)}),
                        0,
                    )
                },
            ),
            0,
        ),
        "proxy": (
            Obj(
                "proxy",
                {
                    "httpProxy": ("str", 1),
                    "httpsProxy": ("str", 1),
                    "noProxy": (ListOf("str"), 1),
                },
            ),
            1,
        ),
    },
    ("version",),
)
ROOT = Obj(
    "config",
    {
        "ignition": (_IGNITION, 0),
        "kernelArguments": (
            Obj(
                "kernelArguments",
                {"shouldExist": (ListOf("str"), 3), "shouldNotExist": (ListOf("str"), 3)},
            ),
            3,
        ),
        "passwd": (Obj("passwd", {"users": (ListOf(_USER), 0), "groups": (ListOf(_GROUP), 0)}), 0),
        "storage": (
            Obj(
                "storage",
                {
                    "disks": (ListOf(_DISK), 0),
                    "raid": (ListOf(_RAID), 0),
                    "filesystems": (ListOf(_FILESYSTEM), 0),
                    "files": (ListOf(_FILE), 0),
                    "directories": (ListOf(_DIRECTORY), 0),
                    "links": (ListOf(_LINK), 0),
                    "luks": (ListOf(_LUKS), 2),
                },
            ),
            0,
        ),
        "systemd": (Obj("systemd", {"units": (ListOf(_UNIT), 0)}), 0),
    },
    ("ignition",),
)

#: Unit types systemd knows (systemd.unit(5)); Ignition refuses a name without one.
UNIT_SUFFIXES = (
    ".service", ".socket", ".device", ".mount", ".automount", ".swap", ".target", ".path",
    ".timer", ".slice", ".scope",
)
_URL_SCHEMES = ("data", "http", "https", "tftp", "s3", "gs", "arn")
_HASH = re.compile(r"(sha512-[0-9a-f]{128}|sha256-[0-9a-f]{64})")
_VERSION = re.compile(r"3\.(\d+)\.0")


def spec_minor(document: object) -> int:
    """The minor spec version the config declares (``3.<minor>.0``); raises otherwise."""
    if not isinstance(document, Mapping):
        raise IgnitionError("", "an Ignition config must be a JSON object")
    ignition = document.get("ignition")
    version = ignition.get("version") if isinstance(ignition, Mapping) else None
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise IgnitionError(
            "ignition.version",
            f"{version!r} is not a supported spec version ({', '.join(SUPPORTED_VERSIONS)})",
        )
    match = _VERSION.fullmatch(version)
    assert match is not None  # SUPPORTED_VERSIONS all match
    return int(match.group(1))


def validate(document: object) -> str:
    """Check *document* (parsed JSON) against its declared spec; returns the version.

    Raises :class:`IgnitionError` naming the JSON path of the first problem.
    """
    minor = spec_minor(document)
    _check(document, ROOT, "", minor)
    _check_unique(document)
    return f"3.{minor}.0"


def _check(value: object, kind: Kind, path: str, minor: int) -> None:
    if isinstance(kind, Obj):
        if not isinstance(value, Mapping):
            raise IgnitionError(path, f"must be an object ({kind.name})")
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            spec = kind.fields.get(key)
            if spec is None:
                raise IgnitionError(where, f"is not a key of {kind.name} in spec 3.{minor}.0")
            sub, since = spec
            if since > minor:
                raise IgnitionError(where, f"needs spec 3.{since}.0 (config is 3.{minor}.0)")
            if item is None:
                continue  # Ignition treats null as "not set"
            _check(item, sub, where, minor)
        for key in kind.required:
            if value.get(key) is None:
                raise IgnitionError(f"{path}.{key}" if path else key, "is required")
        return
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            raise IgnitionError(path, "must be a list")
        for index, item in enumerate(value):
            _check(item, kind.item, f"{path}[{index}]", minor)
        return
    _check_scalar(value, kind, path)


def _check_scalar(value: object, kind: str, path: str) -> None:
    if kind in ("int", "mode"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise IgnitionError(path, "must be an integer")
        if kind == "mode" and not 0 <= value <= 0o7777:
            raise IgnitionError(path, f"{value} is not a file mode (0 to 4095, i.e. 0o7777)")
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise IgnitionError(path, "must be true or false")
        return
    if not isinstance(value, str):
        raise IgnitionError(path, "must be a string")
    if kind == "abspath" and not value.startswith("/"):
        raise IgnitionError(path, f"{value!r} is not an absolute path")
    if kind == "unit" and not value.endswith(UNIT_SUFFIXES):
        raise IgnitionError(path, f"{value!r} has no unit type suffix such as .service")
    if kind == "hash" and not _HASH.fullmatch(value):
        raise IgnitionError(path, f"{value!r} is not sha512-<hex> or sha256-<hex>")
    if kind == "source" and value:
        _check_source(value, path)


def _check_source(url: str, path: str) -> None:
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.lower() not in _URL_SCHEMES:
        raise IgnitionError(path, f"{url[:40]!r} is not a data, http(s), tftp, s3, gs or arn URL")
    if scheme.lower() != "data":
        return
    # RFC 2397 §3: data:[<mediatype>][;base64],<data>
    header, comma, data = rest.partition(",")
    if not comma:
        raise IgnitionError(path, "a data: URL needs a ',' before its data")
    if any(c.isspace() for c in data):
        raise IgnitionError(path, "a data: URL must not contain unencoded whitespace")
    if re.search(r"%(?![0-9A-Fa-f]{2})", data):
        raise IgnitionError(path, "a data: URL has a malformed %-escape")
    if header.endswith(";base64"):
        import base64
        import binascii

        try:
            base64.b64decode(unquote_to_bytes(data), validate=True)
        except (binascii.Error, ValueError):
            raise IgnitionError(path, "a data: URL's base64 does not decode") from None


def _check_unique(document: object) -> None:
    """Ignition refuses a path declared twice (files, directories, links) or a unit twice."""
    assert isinstance(document, Mapping)
    storage = document.get("storage") or {}
    seen: dict[str, str] = {}
    for section in ("files", "directories", "links"):
        for index, node in enumerate(storage.get(section) or []):
            node_path = node.get("path")
            where = f"storage.{section}[{index}].path"
            if node_path in seen:
                raise IgnitionError(where, f"{node_path!r} is also declared at {seen[node_path]}")
            seen[node_path] = where
    names: dict[str, str] = {}
    for index, unit in enumerate((document.get("systemd") or {}).get("units") or []):
        where = f"systemd.units[{index}].name"
        name = unit["name"]
        if name in names:
            raise IgnitionError(where, f"{name!r} is also declared at {names[name]}")
        names[name] = where


def decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:`` URL (RFC 2397), e.g. to read a rendered file back in tests."""
    scheme, _, rest = url.partition(":")
    if scheme.lower() != "data" or "," not in rest:
        raise ValueError(f"{url[:40]!r} is not a data: URL")
    header, _, data = rest.partition(",")
    raw = unquote_to_bytes(data)
    if header.endswith(";base64"):
        import base64

        return base64.b64decode(raw)
    return raw


__all__ = [
    "ROOT",
    "SUPPORTED_VERSIONS",
    "UNIT_SUFFIXES",
    "IgnitionError",
    "ListOf",
    "Obj",
    "decode_data_url",
    "spec_minor",
    "validate",
]
