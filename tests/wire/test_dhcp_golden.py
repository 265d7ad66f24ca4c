"""Golden packets reconstructed from the firmware captures in docs/reference/pxe-wire.md.

Each ``tests/golden/dhcp/<name>.hex`` must (1) equal what the builder in
``tests/dhcp_samples.py`` encodes, (2) decode back to the builder's message, and (3) show the
facts ``expected.json`` transcribes from the capture notes.
"""

from __future__ import annotations

import json
import uuid
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from dhcp_samples import GOLDEN_DIR, SAMPLES, sample_bytes

from pxestack.wire import constants as c
from pxestack.wire.dhcp import decode_dhcp, encode_dhcp

EXPECTED: dict[str, dict[str, Any]] = {
    name: facts
    for name, facts in json.loads((GOLDEN_DIR / "expected.json").read_text()).items()
    if not name.startswith("_")
}


def test_every_sample_has_a_golden_file_and_expectations() -> None:
    on_disk = {path.stem for path in Path(GOLDEN_DIR).glob("*.hex")}
    assert on_disk == set(SAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_bytes_match_the_builder(name: str) -> None:
    """A change to the builder or the encoder shows up here as a golden diff."""
    golden = sample_bytes(name)
    assert encode_dhcp(SAMPLES[name](), max_size=1500) == golden
    assert decode_dhcp(golden) == SAMPLES[name]()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_packets_decode_to_the_captured_facts(name: str) -> None:
    facts = EXPECTED[name]
    message = decode_dhcp(sample_bytes(name))
    options = message.options
    assert message.op == facts["op"]
    assert message.message_type == facts["message_type"]
    assert message.broadcast is facts["broadcast"]
    checks = {
        "secs": lambda: message.secs,
        "option_order": lambda: list(options),
        "max_message_size": lambda: options.u16(c.OPT_MAX_MESSAGE_SIZE),
        "arch": lambda: list(options.client_architectures() or ()),
        "ndi": lambda: (options.raw(c.OPT_CLIENT_NDI) or b"").hex(),
        "vendor_class": lambda: options.text(c.OPT_VENDOR_CLASS_ID),
        "user_classes": lambda: [x.decode() for x in options.user_classes()],
        "parameter_request_list": lambda: list(options.parameter_request_list()),
        "ipxe_bus_id": lambda: (options.ipxe_suboptions() or {})[c.IPXE_BUS_ID].hex(),
        "ipxe_version": lambda: (options.ipxe_suboptions() or {})[c.IPXE_VERSION].hex(),
        "ipxe_features": lambda: {
            c.IPXE_FEATURES[code]: value[0]
            for code, value in (options.ipxe_suboptions() or {}).items()
            if code in c.IPXE_FEATURES
        },
        "client_id": lambda: (options.raw(c.OPT_CLIENT_ID) or b"").hex(),
        "uuid": lambda: str(options.client_uuid()),
        "server_id": lambda: str(options.ip(c.OPT_SERVER_ID)),
        "requested_ip": lambda: str(options.ip(c.OPT_REQUESTED_IP)),
        "siaddr": lambda: str(message.siaddr),
        "file": lambda: message.file.decode(),
        "bootfile_name": lambda: options.text(c.OPT_BOOTFILE_NAME),
        "absent": lambda: [code for code in facts["absent"] if code in options],
    }
    checked = 0
    for key, read in checks.items():
        if key in facts:
            expected = [] if key == "absent" else facts[key]
            assert read() == expected, key
            checked += 1
    assert checked >= 3, "every golden packet pins several facts"


def test_uuid_golden_value_reads_in_smbios_order() -> None:
    """The BIOS ROM's wire shows ...-0000-0040-8000-..., the SMBIOS uuid is -4000-."""
    raw = decode_dhcp(sample_bytes("seabios_ipxe_rom_discover")).options[c.OPT_CLIENT_UUID]
    assert raw[1:].hex()[12:16] == "0040"
    assert uuid.UUID(bytes_le=raw[1:]) == uuid.UUID("00000000-0000-4000-8000-e2e000000001")


def test_dnsmasq_offer_leaves_file_empty_and_sets_siaddr() -> None:
    message = decode_dhcp(sample_bytes("dnsmasq_offer_to_ipxe"))
    assert message.file == b"" and message.siaddr == IPv4Address("198.18.0.1")
