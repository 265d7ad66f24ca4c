"""Pure parts: state parsing, records, identity, the transition table, assignment."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from provision_helpers import provision_config

from pxestack.config.provision import IPRange, ProfileConfig
from pxestack.provision import assign
from pxestack.provision.machine import TRANSITIONS, Event, IllegalTransition, apply
from pxestack.provision.model import (
    BadIdentity,
    Host,
    HostState,
    InvalidHostRecord,
    machine_identity,
    parse_time,
    sanitize_serial,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("text", ["Running", "", "done", " running", None, 1])
def test_state_parsing_is_strict(text):
    with pytest.raises(InvalidHostRecord):
        HostState.parse(text)


@pytest.mark.parametrize("state", list(HostState))
def test_state_parsing_accepts_the_five_names(state):
    assert HostState.parse(state.value) is state


hosts = st.builds(
    Host,
    serial=st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    machine_id=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    cabinet=st.integers(0, 255),
    internal_addr=st.none() | st.ip_addresses(v=4),
    fleet_metadata=st.lists(st.text(max_size=10), max_size=3).map(tuple),
    mac_addresses=st.lists(
        st.from_regex(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", fullmatch=True), max_size=3, unique=True
    ).map(tuple),
    state=st.sampled_from(list(HostState)),
    keep_disk_data=st.booleans(),
    last_boot=st.none() | st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC)),
)


@given(hosts)
@settings(max_examples=50)
def test_host_json_round_trip(host):
    import json

    assert Host.from_json(json.loads(host.to_bytes()), directory=host.serial) == host


def test_unknown_conf_json_keys_survive():
    host = Host.from_json({"Serial": "a", "State": "running", "FutureField": [1, 2]}, directory="a")
    assert host.to_json()["FutureField"] == [1, 2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0001-01-01T00:00:00Z", None),
        ("2017-09-20T12:34:56.123456789+02:00", datetime(2017, 9, 20, 10, 34, 56, 123456, UTC)),
        ("2017-09-20T12:34:56Z", datetime(2017, 9, 20, 12, 34, 56, tzinfo=UTC)),
    ],
)
def test_go_times_parse(text, expected):
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ABC 123", "abc-123"),
        ("  Srv-9 ", "srv-9"),
        ("x:y+z_", "x:y+z_"),
        ("../x", None),
        ("a/b", None),
        (".hidden", None),
        ("a\x00b", None),
        ("é", None),
        ("a" * 129, None),
    ],
)
def test_serial_sanitising(raw, expected):
    if expected is None:
        with pytest.raises(BadIdentity):
            sanitize_serial(raw)
    else:
        assert sanitize_serial(raw) == expected


@pytest.mark.parametrize(
    "serial",
    ["0123456789", "", "To Be Filled By O.E.M.", "VMware-56 4d 1a", "Default string", "0000000"],
)
def test_placeholder_serials_use_the_uuid(serial):
    uuid = "4C4C4544-0042-3510-8051-B7C04F4E3232"
    assert machine_identity(serial, uuid) == uuid.lower()
    with pytest.raises(BadIdentity):
        machine_identity(serial, None)
    with pytest.raises(BadIdentity):
        machine_identity(serial, "00000000-0000-0000-0000-000000000000")


# -- transitions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (HostState.UNKNOWN, Event.HOST_DATA, HostState.INSTALLING),
        (HostState.CONFIGURED, Event.HOST_DATA, HostState.INSTALLING),
        (HostState.INSTALLING, Event.SET_INSTALLED, HostState.INSTALLED),
        (HostState.INSTALLED, Event.SET_INSTALLED, HostState.INSTALLED),  # retried request
        (HostState.INSTALLED, Event.BOOT_COMPLETE, HostState.RUNNING),
        (HostState.INSTALLING, Event.BOOT_COMPLETE, HostState.RUNNING),  # era C
        (HostState.CONFIGURED, Event.BOOT_COMPLETE, HostState.CONFIGURED),  # mayu bug fixed
        (HostState.RUNNING, Event.MARK_FRESH, HostState.CONFIGURED),
    ],
)
def test_transition_table(state, event, expected):
    assert apply(Host(serial="s", state=state), event, now=NOW).host.state is expected


@pytest.mark.parametrize("state", [HostState.UNKNOWN, HostState.CONFIGURED, HostState.RUNNING])
def test_set_installed_outside_installing_is_illegal(state):
    with pytest.raises(IllegalTransition):
        apply(Host(serial="s", state=state), Event.SET_INSTALLED, now=NOW)


def test_set_state_running_stays_running_and_configured_keeps_disk():
    """mayu stored set_state running as configured (bug)."""
    host = Host(serial="s", state=HostState.INSTALLED)
    assert apply(host, Event.SET_STATE, now=NOW, target=HostState.RUNNING).host.state is (
        HostState.RUNNING
    )
    configured = apply(host, Event.SET_STATE, now=NOW, target=HostState.CONFIGURED).host
    assert configured.keep_disk_data is True
    assert apply(configured, Event.MARK_FRESH, now=NOW).host.keep_disk_data is False


def test_boot_complete_sets_last_boot_and_versions():
    out = apply(
        Host(serial="s", state=HostState.INSTALLED),
        Event.BOOT_COMPLETE,
        now=NOW,
        versions={"CoreOSVersion": "1.2.3", "Bogus": "x"},
    )
    assert out.host.last_boot == NOW
    assert dict(out.host.versions) == {"CoreOSVersion": "1.2.3"}
    assert out.message == "updated state to running"


def test_boot_complete_on_a_configured_host_does_not_claim_running():
    out = apply(Host(serial="s", state=HostState.CONFIGURED), Event.BOOT_COMPLETE, now=NOW)
    assert out.host.state is HostState.CONFIGURED and out.host.last_boot == NOW
    assert out.message == "recorded boot; state stays configured"
    assert "running" not in " ".join((out.message, *out.details))


class Lifecycle(RuleBasedStateMachine):
    """Random interleavings of events keep the record consistent with the table."""

    def __init__(self):
        super().__init__()
        self.host = Host(serial="s")

    @rule(event=st.sampled_from([e for e in Event if e is not Event.SET_STATE]))
    def event(self, event):
        before = self.host.state
        allowed = before in TRANSITIONS[event]
        try:
            self.host = apply(self.host, event, now=NOW).host
        except IllegalTransition:
            assert not allowed
            assert self.host.state is before
        else:
            assert allowed
            assert self.host.state is TRANSITIONS[event][before]

    # pending is left only through approve (it assigns an address): not a set_state target.
    @rule(state=st.sampled_from([s for s in HostState if s is not HostState.PENDING]))
    def set_state(self, state):
        self.host = apply(self.host, Event.SET_STATE, now=NOW, target=state).host
        assert self.host.state is state

    @invariant()
    def record_round_trips(self):
        import json

        assert Host.from_json(json.loads(self.host.to_bytes()), directory="s") == self.host


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)


# -- assignment -------------------------------------------------------------------------------


def test_first_profile_not_full_else_default():
    profiles = (ProfileConfig("a", 1), ProfileConfig("b", 2), ProfileConfig("never", 0))
    assert assign.choose_profile(profiles, Counter()) == "a"
    assert assign.choose_profile(profiles, Counter(a=1)) == "b"
    assert assign.choose_profile(profiles, Counter(a=1, b=1)) == "b"
    assert assign.choose_profile(profiles, Counter(a=5, b=2)) == "default"


def test_address_range_end_is_enforced():
    rng = IPRange(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.3"))
    used = [IPv4Address("198.18.0.1"), IPv4Address("198.18.0.3")]
    assert assign.allocate_address(rng, used) == IPv4Address("198.18.0.2")
    with pytest.raises(assign.AddressPoolExhausted):
        assign.allocate_address(rng, [*used, IPv4Address("198.18.0.2")])


def test_new_host_takes_profile_settings(tmp_path):
    config = provision_config(
        tmp_path,
        profiles=[
            {
                "name": "core",
                "quantity": 1,
                "tags": ["role=core"],
                "os_version": "9.9.9",
                "etcd_cluster_token": "tok",
            }
        ],
    )
    host = assign.new_host("s1", [], config, random_bytes=os.urandom, default_token="default")
    assert (host.profile, host.fleet_metadata, host.etcd_cluster_token) == (
        "core",
        ("role=core",),
        "tok",
    )
    assert host.versions["CoreOSVersion"] == "9.9.9"
    assert host.machine_id.startswith("0000") and host.hostname == host.machine_id[:16]
    other = assign.new_host("s2", [host], config, random_bytes=os.urandom, default_token="d")
    assert (other.profile, other.etcd_cluster_token, other.fleet_metadata) == ("default", "d", ())
    assert other.internal_addr == IPv4Address("198.18.10.11")
