"""mayuctl's requests replayed byte for byte, and the operator actions beside them.

mayuctl marshals a whole host object with ``omitempty``: a zero or empty value is left out
(docs/reference/mayu-api.md, "What mayuctl sends and expects").  The envelope every PUT carries
is ``{"ConnectedNIC":"","LastBoot":"0001-01-01T00:00:00Z","State":"unknown"}``; the bodies
below are those bytes plus the field a command sets.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from provision_helpers import ADMIN_TOKEN, Rig, make_rig

from pxestack.provision.model import HostState

#: The body of ``mayuctl set S cabinet 0`` (and of every other zero value): the envelope.
ENVELOPE = b'{"ConnectedNIC":"","LastBoot":"0001-01-01T00:00:00Z","State":"unknown"}'


def with_field(field: bytes) -> bytes:
    """The envelope with one more field first (``"Key":value``), as mayuctl writes it."""
    return b"{" + field + b"," + ENVELOPE[1:]


def put(rig: Rig, serial: str, action: str, body: bytes) -> Any:
    return rig.client.request(
        "PUT",
        f"/admin/host/{serial}/{action}",
        body,
        headers={"Content-Type": "application/json"},
        token=ADMIN_TOKEN,
    )


def record(rig: Rig, serial: str) -> dict[str, Any]:
    return json.loads((rig.config.cluster_dir / serial / "conf.json").read_bytes())


def log_messages(cluster: Path) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(cluster), "log", "--format=%B%x00"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [m.strip() for m in out.split("\x00") if m.strip()]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    built = make_rig(tmp_path / "cluster")
    built.provisioner.first_contact("sn-1")
    return built


# -- zero values ---------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "field", "value", "key", "cleared"), [
    ("set_cabinet", b'"Cabinet":7', 7, "Cabinet", "cabinet"),
    ("set_provider_id", b'"ProviderId":"rack-1"', "rack-1", "ProviderId", "provider_id"),
    ("set_etcd_cluster_token", b'"EtcdClusterToken":"abc"', "abc", "EtcdClusterToken",
     "etcd_cluster_token"),
    ("set_ipmi_addr", b'"IPMIAddr":"198.18.20.9"', "198.18.20.9", "IPMIAddr", "ipmi_addr"),
    ("set_metadata", b'"FleetMetadata":["a=b"]', ["a=b"], "FleetMetadata", "fleet_metadata"),
])
def test_a_missing_key_clears_the_field_as_mayu_did(rig, action, field, value, key, cleared):
    assert put(rig, "sn-1", action, with_field(field)).code == 202
    assert record(rig, "sn-1")[key] == value
    answer = put(rig, "sn-1", action, ENVELOPE)  # e.g. mayuctl set sn-1 cabinet 0
    assert answer.code == 202, answer.body
    assert key not in record(rig, "sn-1")  # omitted when empty, as mayu writes conf.json
    host = rig.provisioner.get("sn-1")
    assert host is not None and not getattr(host.host, cleared)


def test_empty_tags_are_dropped_and_the_order_kept(rig):
    # mayuctl set sn-1 metadata "b=2,,a=1" and mayuctl set sn-1 metadata ""
    assert put(rig, "sn-1", "set_metadata",
               with_field(b'"FleetMetadata":["b=2","","a=1"]')).code == 202
    assert record(rig, "sn-1")["FleetMetadata"] == ["b=2", "a=1"]
    assert put(rig, "sn-1", "set_metadata", with_field(b'"FleetMetadata":[""]')).code == 202
    assert "FleetMetadata" not in record(rig, "sn-1")


def test_a_bad_value_is_refused_with_its_field_and_nothing_written(rig):
    before = record(rig, "sn-1")
    answer = put(rig, "sn-1", "set_cabinet", with_field(b'"Cabinet":"7; rm -rf /"'))
    assert answer.code == 400 and b"Cabinet" in answer.body
    assert record(rig, "sn-1") == before


# -- overrides -----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [
    ("FlatcarVersion", "../../../../etc"),
    ("CoreOSVersion", "3975.2.0 console=ttyS0"),
    ("CoreOSVersion", "stable"),
    ("install_disk", "/dev/../etc/passwd"),
    ("install_disk", "sda"),
    ("yochu_version", "v1 initrd=http://evil/x"),
    ("anything", "a${b}"),
    ("anything", "../up"),
    ("bad key", "v"),
])
def test_unusable_overrides_are_refused_and_nothing_is_written(rig, key, value):
    commits = log_messages(rig.config.cluster_dir)
    before = record(rig, "sn-1")
    body = json.dumps({"Overrides": {key: value}}, separators=(",", ":")).encode()
    answer = put(rig, "sn-1", "override", with_field(body[1:-1]))
    assert answer.code == 400
    assert key.split()[0].encode() in answer.body or b"key" in answer.body
    assert record(rig, "sn-1") == before
    assert log_messages(rig.config.cluster_dir) == commits


def test_usable_overrides_are_stored_in_one_commit(rig):
    # mayuctl override sn-1 CoreOSVersion 3975.2.0 / yochu_version v0.19.1
    for key, value in (("CoreOSVersion", "3975.2.0"), ("yochu_version", "v0.19.1")):
        body = with_field(b'"Overrides":{"' + key.encode() + b'":"' + value.encode() + b'"}')
        assert put(rig, "sn-1", "override", body).code == 202
    assert record(rig, "sn-1")["Overrides"] == {
        "CoreOSVersion": "3975.2.0", "yochu_version": "v0.19.1"}
    assert log_messages(rig.config.cluster_dir)[0] == (
        "sn-1: updated host overrides: yochu_version")
    # mayu's answer to an empty override, unchanged
    assert put(rig, "sn-1", "override", ENVELOPE).body.strip() == b"nothing to override"


# -- truthful audit ------------------------------------------------------------------------


def test_boot_complete_on_a_configured_host_says_the_state_stays(rig):
    # mayuctl set sn-1 state configured: the envelope's State is the one being set
    body = ENVELOPE.replace(b'"State":"unknown"', b'"State":"configured"')
    assert put(rig, "sn-1", "set_state", body).code == 202
    answer = put(rig, "sn-1", "boot_complete",
                 with_field(b'"Serial":"sn-1","CoreOSVersion":"3975.2.0"'))
    assert answer.code == 202
    assert record(rig, "sn-1")["State"] == "configured"
    message = log_messages(rig.config.cluster_dir)[0]
    assert message.startswith("sn-1: recorded boot; state stays configured")
    assert "running" not in message


# -- add and move --------------------------------------------------------------------------


def add(rig: Rig, body: dict[str, Any]) -> Any:
    return rig.client.request("POST", "/admin/hosts", body, token=ADMIN_TOKEN)


def test_add_pre_registers_a_machine_in_one_commit(rig):
    commits = len(log_messages(rig.config.cluster_dir))
    answer = add(rig, {"Serial": "SN-NEW", "MacAddresses": ["52-54-00-AA-00-01"],
                       "Profile": "worker", "InternalAddr": "198.18.10.150"})
    assert answer.code == 201, answer.body
    assert answer.header("Location") == "/admin/host/sn-new"
    assert answer.header("ETag")
    stored = record(rig, "sn-new")
    assert stored["Profile"] == "worker" and stored["FleetMetadata"] == ["role=worker"]
    assert stored["InternalAddr"] == "198.18.10.150"
    assert stored["MacAddresses"] == ["52:54:00:aa:00:01"]
    assert stored["ProfilePinned"] is True and stored["State"] == "unknown"
    messages = log_messages(rig.config.cluster_dir)
    assert len(messages) == commits + 1
    assert messages[0].startswith("sn-new: host added by an operator")
    assert rig.store.host_for_mac("52:54:00:aa:00:01").serial == "sn-new"
    # the machine's first contact finds its record: same profile and address
    versioned, created = rig.provisioner.first_contact("sn-new")
    assert not created and versioned.host.internal_addr.exploded == "198.18.10.150"


def test_add_without_profile_and_address_gets_what_a_first_contact_would(rig):
    answer = add(rig, {"Serial": "sn-2"})
    assert answer.code == 201
    assert answer.json()["Profile"] == "core" and answer.json()["InternalAddr"] == "198.18.10.11"
    assert "ProfilePinned" not in answer.json()


@pytest.mark.parametrize(("body", "code", "text"), [
    ({"Serial": "sn-1"}, 409, b"exists"),
    ({"Serial": "../etc"}, 400, b"Serial"),
    ({"Serial": "sn-3", "MacAddresses": ["nope"]}, 400, b"MacAddresses[0]"),
    ({"Serial": "sn-3", "Profile": "gpu"}, 400, b"Profile"),
    ({"Serial": "sn-3", "InternalAddr": "10.0.0.1"}, 400, b"InternalAddr"),
    ({"Serial": "sn-3", "InternalAddr": "198.18.10.10"}, 409, b"sn-1"),
    ({"Serial": "sn-3", "Force": "yes"}, 400, b"Force"),
])
def test_add_refuses_clashes_and_bad_input(rig, body, code, text):
    commits = log_messages(rig.config.cluster_dir)
    answer = add(rig, body)
    assert answer.code == code and text in answer.body, answer.body
    assert log_messages(rig.config.cluster_dir) == commits
    assert not (rig.config.cluster_dir / "sn-3").exists()


def test_add_refuses_a_mac_of_another_host(rig):
    assert add(rig, {"Serial": "sn-a", "MacAddresses": ["52:54:00:00:00:01"]}).code == 201
    answer = add(rig, {"Serial": "sn-b", "MacAddresses": ["52:54:00:00:00:01"]})
    assert answer.code == 409 and b"sn-a" in answer.body


def test_move_respects_quantities_unless_forced_and_pins(rig):
    for serial in ("sn-2", "sn-3", "sn-4", "sn-5"):
        rig.provisioner.first_contact(serial)  # core x3 (sn-1..3), worker x2 (sn-4, sn-5)
    full = put(rig, "sn-1", "move", b'{"Profile":"worker"}')
    assert full.code == 409 and b"Force" in full.body
    assert record(rig, "sn-1")["Profile"] == "core"
    assert put(rig, "sn-1", "move", b'{"Profile":"nope"}').code == 400
    assert put(rig, "sn-1", "move", b'{"Profile":"worker","Force":true}').code == 202
    stored = record(rig, "sn-1")
    assert stored["Profile"] == "worker" and stored["FleetMetadata"] == ["role=worker"]
    assert stored["ProfilePinned"] is True
    message = log_messages(rig.config.cluster_dir)[0]
    assert message.startswith("sn-1: updated host profile and metadata")
    assert "core -> worker" in message and "quantity overridden" in message
    # a free slot needs no force: core has sn-2, sn-3 now
    assert put(rig, "sn-4", "move", b'{"Profile":"core"}').code == 202


def test_a_pinned_host_keeps_its_profile_when_quantities_change(rig):
    assert put(rig, "sn-1", "move", b'{"Profile":"worker"}').code == 202
    from pxestack.provision.mayu_import import apply_mayu_text, export_mayu

    text = export_mayu(rig.provisioner.config).replace("quantity: 2", "quantity: 0")
    rig.provisioner.config = apply_mayu_text(text, rig.provisioner.config)
    assert rig.provisioner.config.profile("worker").quantity == 0
    versioned, _ = rig.provisioner.first_contact("sn-9")
    assert versioned.host.profile == "core"  # new machines go elsewhere
    found = rig.provisioner.get("sn-1")
    assert found is not None and found.host.profile == "worker"


def test_move_of_a_pending_host_is_refused(tmp_path: Path):
    rig = make_rig(tmp_path / "cluster")
    rig.provisioner.first_contact("sn-p", pending=True)
    answer = put(rig, "sn-p", "move", b'{"Profile":"core"}')
    assert answer.code == 409 and b"approve" in answer.body
    found = rig.provisioner.get("sn-p")
    assert found is not None and found.host.state is HostState.PENDING


def test_refused_input_is_logged_with_the_field(rig):
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        body = with_field(b'"Overrides":{"FlatcarVersion":"../../../../etc"}')
        assert put(rig, "sn-1", "override", body).code == 400
    finally:
        globalLogPublisher.removeObserver(events.append)
    refusals = [e for e in events if "request refused (400)" in str(e.get("log_format", ""))]
    assert refusals and "Overrides.FlatcarVersion" in refusals[0]["error"]
