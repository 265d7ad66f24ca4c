"""pxestack.http.ipxe: script builders and the iPXE allow-list (no newline, no ${...})."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxestack.http.ipxe import (
    UnsafeIpxeValue,
    chain_script,
    ipxe_url_component,
    ipxe_word,
    is_safe_word,
    kernel_boot_script,
    local_boot_script,
)


@given(st.text())
def test_url_components_are_always_safe_words(value):
    encoded = ipxe_url_component(value)
    assert encoded == "" or is_safe_word(encoded)


@pytest.mark.parametrize("value", ["a b", "a\nb", "${x}", "a#b", 'a"b', "a\\b", "a\tb", ""])
def test_unsafe_words_are_refused(value):
    with pytest.raises(UnsafeIpxeValue):
        ipxe_word(value)


def test_kernel_boot_script_shape():
    script = kernel_boot_script(
        "http://h/vmlinuz", ["http://h/initrd"], ["initrd=initrd", "console=ttyS0,115200n8"]
    )
    assert script.splitlines() == [
        "#!ipxe",
        "kernel http://h/vmlinuz initrd=initrd console=ttyS0,115200n8",
        "initrd http://h/initrd",
        "boot",
    ]
    with pytest.raises(UnsafeIpxeValue):
        kernel_boot_script("http://h/vmlinuz", [], ["a\nshell"])


def test_local_boot_and_chain():
    assert "sanboot --no-describe --drive 0x80 || exit" in local_boot_script()
    assert chain_script("http://h/x?s=${serial}").endswith(
        "chain --autofree http://h/x?s=${serial}\n"
    )
    with pytest.raises(UnsafeIpxeValue):
        chain_script("http://h/ x")
