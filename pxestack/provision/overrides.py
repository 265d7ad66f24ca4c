"""Per-host overrides are checked when they are written, not when a machine boots.

``PUT /admin/host/<serial>/override`` (``mayuctl override S KEY VALUE``) merges keys into
the host's ``Overrides``, which go into the templates' ``TemplatesEnv`` and, for a few
keys, choose files and URLs: ``CoreOSVersion``/``FlatcarVersion`` name the image
directory (``/images/<serial>/...`` and every kernel URL), ``install_disk`` the disk the
installer writes.  mayu stored any value, so ``override S CoreOSVersion ../../etc`` was
committed and the host could no longer boot (its templates refused the value, or worse).
Here a value that cannot be used is refused with the key's name and nothing is written:

* known keys have types (:data:`KNOWN_KEYS`): a version is a version, a disk is a
  ``/dev/`` path, SSH keys are a list of one-line keys;
* every other key is free-form template data, and any of it may reach a path, a URL or a
  kernel argument through a custom template, so a string value must be a *safe word*
  (:func:`pxestack.http.ipxe.is_safe_word`: letters, digits and ``._~:/?=&%,@+-[]``,
  without ``..``); numbers, booleans and lists of such values are accepted too;
* an empty string is accepted everywhere (it means "no value": the host falls back to its
  profile and the defaults).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pxestack.http.ipxe import is_safe_word

#: An override key: what a template can name (``TemplatesEnv.<key>``).
KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
#: An OS version directory: ``3975.2.0`` (Flatcar), ``899.13.0`` (CoreOS) or ``current``.
VERSION_PATTERN = re.compile(r"current|[0-9]{1,9}(\.[0-9]{1,9}){1,3}")
#: A block device path (no ``..``, checked separately).
DISK_PATTERN = re.compile(r"/dev/[A-Za-z0-9._/:-]{1,200}")
#: The longest free-form string value.
MAX_VALUE_LENGTH = 256
#: The most elements a list value may have.
MAX_LIST_LENGTH = 64


class InvalidOverride(ValueError):  # noqa: N818 - reads well at raise sites
    """An override value that cannot be used; the message names ``Overrides.<key>``."""


def _version(key: str, value: object) -> str:
    if not isinstance(value, str) or (value and not VERSION_PATTERN.fullmatch(value)):
        raise InvalidOverride(
            f"Overrides.{key}: {value!r} is not an OS version "
            "(digits and dots such as 3975.2.0, or current)"
        )
    return value


def _disk(key: str, value: object) -> str:
    if not isinstance(value, str) or (
        value and (not DISK_PATTERN.fullmatch(value) or ".." in value)
    ):
        raise InvalidOverride(f"Overrides.{key}: {value!r} is not a /dev/ path")
    return value


def _ssh_keys(key: str, value: object) -> list[str]:
    if isinstance(value, str):
        value = [value] if value else []
    if not isinstance(value, list) or len(value) > MAX_LIST_LENGTH:
        raise InvalidOverride(f"Overrides.{key}: expected a list of SSH public keys")
    for index, item in enumerate(value):
        if (
            not isinstance(item, str)
            or not item.strip()
            or len(item) > 16384
            or any(ord(c) < 32 or ord(c) == 127 for c in item)
        ):
            raise InvalidOverride(
                f"Overrides.{key}[{index}]: not a one-line SSH public key"
            )
    return list(value)


#: Keys whose values pxestack itself uses, with their checks.
KNOWN_KEYS: Mapping[str, Callable[[str, object], Any]] = {
    "CoreOSVersion": _version,
    "FlatcarVersion": _version,
    "install_disk": _disk,
    "ssh_authorized_keys": _ssh_keys,
}


def _free_form(path: str, value: object, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if value and (
            len(value) > MAX_VALUE_LENGTH or not is_safe_word(value) or ".." in value
        ):
            raise InvalidOverride(
                f"{path}: {value!r} is not a safe word (letters, digits and ._~:/?=&%,@+-[] "
                f"only, no '..', at most {MAX_VALUE_LENGTH} characters)"
            )
        return value
    if isinstance(value, list) and depth == 0 and len(value) <= MAX_LIST_LENGTH:
        return [_free_form(f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value)]
    raise InvalidOverride(f"{path}: expected a string, a number, true/false or a flat list")


def validate_overrides(overrides: object) -> dict[str, Any]:
    """The overrides to merge, checked; :class:`InvalidOverride` names the first bad key."""
    if not isinstance(overrides, Mapping) or not overrides:
        raise InvalidOverride("nothing to override")
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise InvalidOverride(
                f"Overrides: key {key!r} is not a name (letters, digits, _ . -; at most 64)"
            )
        check = KNOWN_KEYS.get(key)
        checked[key] = check(key, value) if check is not None else _free_form(
            f"Overrides.{key}", value
        )
    return checked


__all__ = ["KNOWN_KEYS", "InvalidOverride", "validate_overrides"]
