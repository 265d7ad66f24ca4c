"""Pure iPXE script building and escaping (sans-IO: text in, text out).

iPXE reads a script line by line; each line is split into words at whitespace, and
``${name}`` anywhere in a word is replaced by the value of an iPXE *setting* before the
command runs.  A value that reaches a script unchecked can therefore

* end the command and start a new one (a newline),
* add or split arguments (spaces, tabs),
* read or inject settings (``${...}``; e.g. leak ``${password}`` into a URL), or
* turn the rest of a line into a comment or an operator (``#``, ``||``, ``&&``).

(Values from DHCP or the API end up in iPXE scripts and kernel command lines; see
docs/reference/hostile-inputs.md.)
iPXE has no quoting that survives every version, so this module does not try to quote: a
value either passes a conservative allow-list and is used verbatim, or it is
percent-encoded (URL components), or it is refused with :class:`UnsafeIpxeValue`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from pxestack.errors import ApiMisuse

#: Characters that mean nothing special to iPXE's word splitting and ``${}`` expansion and
#: are legal in a URL or a kernel argument.  No whitespace, ``$``, ``#``, quotes, ``\``,
#: ``{`` or ``}``.  ``&`` is allowed because ``&&`` is only an operator as its own word.
_SAFE_WORD = re.compile(r"[A-Za-z0-9._~:/?=&%,@+\-\[\]]+")
#: iPXE commands used by :func:`local_boot_script` and friends.
SCRIPT_HEADER = "#!ipxe"
#: iPXE's name for the first BIOS hard disk (INT 13h drive number 0x80).
FIRST_BIOS_DISK = "0x80"


class UnsafeIpxeValue(ApiMisuse):
    """A value cannot be placed in an iPXE script without changing its meaning."""


def is_safe_word(value: str) -> bool:
    """Whether *value* can stand verbatim as (part of) one iPXE word."""
    return bool(_SAFE_WORD.fullmatch(value))


def ipxe_word(value: object, what: str = "value") -> str:
    """*value* as text for an iPXE word; raise :class:`UnsafeIpxeValue` when it is unsafe.

    Used for kernel arguments and whole URLs built by pxestack itself, whose parts may come
    from clients.
    """
    text = str(value)
    if not is_safe_word(text):
        raise UnsafeIpxeValue(f"{what} {text!r} contains characters iPXE would interpret")
    return text


def ipxe_url_component(value: object) -> str:
    """Percent-encode *value* for one URL path segment or query value inside a script.

    Every byte outside RFC 3986's unreserved set (§2.3) is encoded, which also removes
    ``$``, whitespace and ``#`` (so the result always passes :func:`is_safe_word`).
    """
    return quote(str(value), safe="")


def kernel_command_line(args: Iterable[object]) -> str:
    """Join kernel arguments with single spaces, checking every one with :func:`ipxe_word`."""
    return " ".join(ipxe_word(arg, "kernel argument") for arg in args)


def kernel_boot_script(
    kernel_url: str,
    initrd_urls: Sequence[str],
    args: Iterable[object],
    *,
    dhcp_first: bool = False,
) -> str:
    """A script that loads a kernel and initrds over HTTP and boots them.

    ``initrd=<name>`` for each initrd must be among *args* for UEFI kernels (mayu PR #100:
    the EFI stub only passes initrds that the command line names).
    """
    lines = [SCRIPT_HEADER]
    if dhcp_first:
        lines.append("dhcp")
    lines.append(
        f"kernel {ipxe_word(kernel_url, 'kernel URL')} {kernel_command_line(args)}".rstrip()
    )
    lines.extend(f"initrd {ipxe_word(url, 'initrd URL')}" for url in initrd_urls)
    lines.append("boot")
    return "\n".join(lines) + "\n"


def chain_script(url: str) -> str:
    """A script that fetches and runs another script; *url* may contain iPXE ``${...}``.

    *url* comes from pxestack's own templates (not from a client), so settings references
    such as ``${serial:uristring}`` are allowed here and only whitespace is refused.
    """
    if any(ch.isspace() for ch in url) or not url:
        raise UnsafeIpxeValue(f"chain URL {url!r} contains whitespace")
    return f"{SCRIPT_HEADER}\nchain --autofree {url}\n"


def local_boot_script(drive: str = FIRST_BIOS_DISK) -> str:
    """A script that boots the local disk at once instead of waiting for PXE time-outs.

    mayu issue #14: an installed machine that DHCP ignores waits for each NIC's PXE ROM to
    time out.  ``sanboot --no-describe --drive 0x80`` hands control to the first BIOS disk;
    on UEFI (where there is no INT 13h drive) ``sanboot`` fails and ``exit`` returns to the
    firmware's boot manager, which then tries the next boot entry (normally the disk).
    """
    return (
        f"{SCRIPT_HEADER}\n"
        "echo Booting from local disk\n"
        f"sanboot --no-describe --drive {ipxe_word(drive, 'drive')} || exit\n"
    )


__all__ = [
    "FIRST_BIOS_DISK",
    "SCRIPT_HEADER",
    "UnsafeIpxeValue",
    "chain_script",
    "ipxe_url_component",
    "ipxe_word",
    "is_safe_word",
    "kernel_boot_script",
    "kernel_command_line",
    "local_boot_script",
]
