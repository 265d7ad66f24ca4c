"""``pxestack ctl`` against the real provisioning API served on 127.0.0.1, and against a
stand-in that implements only what mayu offers (docs/reference/mayu-api.md), to prove both
directions of mayuctl compatibility: the requests ``ctl`` sends and the answers it understands.

The server runs in the test's reactor (pytest-twisted); each ``ctl`` invocation runs in a
worker thread (it is a blocking urllib client), exactly as an operator's shell would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, threads
from twisted.web.resource import Resource
from twisted.web.server import Site

from pxestack.cli import main
from pxestack.cli.ctl import (
    EXIT_NOT_FOUND,
    CtlUsageError,
    boot_complete_body,
    format_table,
    last_boot_text,
    parse_env_file,
    set_request,
)
from pxestack.config import load_config
from pxestack.provision.api import ProvisioningApi
from pxestack.provision.mayu_import import apply_mayu_text, export_mayu
from pxestack.provision.model import HostState
from pxestack.provision.provisioner import Provisioner, callback_key
from pxestack.provision.store import FileHostStore

ADMIN_TOKEN = "ctl-test-admin-token-0123456789abcdef"


# -- pure helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "action", "body"), [
    # Each mayuctl "set" key and the PUT it becomes.
    ("metadata", "a=b,c=d", "set_metadata", {"FleetMetadata": ["a=b", "c=d"]}),
    ("metadata", "", "set_metadata", {"FleetMetadata": []}),
    ("providerid", "rack-7/u12", "set_provider_id", {"ProviderId": "rack-7/u12"}),
    ("ipmiaddr", "198.18.30.3", "set_ipmi_addr", {"IPMIAddr": "198.18.30.3"}),
    ("cabinet", "4", "set_cabinet", {"Cabinet": 4}),
    ("state", "configured", "set_state", {"State": "configured"}),
    ("etcdtoken", "abc123", "set_etcd_cluster_token", {"EtcdClusterToken": "abc123"}),
    ("STATE", "running", "set_state", {"State": "running"}),  # mayuctl keys are case-blind
])
def test_set_keys_map_to_mayus_requests(key, value, action, body):
    assert set_request(key, value) == (action, body)


@pytest.mark.parametrize(("key", "value"), [
    ("state", "bogus"),  # mayuctl validates states client-side
    ("state", "Running"),
    ("cabinet", "256"),
    ("cabinet", "-1"),
    ("cabinet", "four"),
    ("ipmiaddr", "not-an-ip"),
    ("ipmiaddr", "2001:db8::1"),  # IPMIAddr is an IPv4 field in mayu's schema
    ("colour", "blue"),
])
def test_set_refuses_values_the_server_would_refuse(key, value):
    with pytest.raises(CtlUsageError) as info:
        set_request(key, value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("value", "expected"), [
    ("0001-01-01T00:00:00Z", "-"),  # Go's zero time: never booted
    (None, "-"),
    ("", "-"),
    ("2024-03-05T07:08:09.123456789Z", "2024-03-05 07:08:09"),  # Go's nanoseconds
    ("2024-03-05T09:08:09+02:00", "2024-03-05 07:08:09"),  # shown in UTC
    ("garbage", "garbage"),  # shown as sent rather than hidden
])
def test_last_boot_text(value, expected):
    assert last_boot_text(value) == expected


def test_env_files_parse_like_dotenv_and_os_release():
    text = '# comment\nID=flatcar\nVERSION="3975.2.0"\nexport SERIAL=\'sn-1\'\n\nbad line\n'
    assert parse_env_file(text) == {"ID": "flatcar", "VERSION": "3975.2.0", "SERIAL": "sn-1"}


def test_boot_complete_body_mirrors_mayuctl():
    os_release = {"ID": "flatcar", "VERSION": "3975.2.0"}
    env = {"MAYU_VERSION": "0.4.0", "DOCKER_VERSION": "24.0"}
    assert boot_complete_body("sn-1", os_release, env, update_versions=False) == {"Serial": "sn-1"}
    assert boot_complete_body("sn-1", os_release, env, update_versions=True) == {
        "Serial": "sn-1", "CoreOSVersion": "3975.2.0", "FlatcarVersion": "3975.2.0",
        "MayuVersion": "0.4.0", "DockerVersion": "24.0"}


def test_table_columns_align():
    out = format_table(["A", "LONG HEADER"], [["xyz", "1"], ["w", "22"]])
    lines = out.splitlines()
    assert lines[0] == "A    LONG HEADER"
    assert [line.index(v) for line, v in zip(lines[1:], ["1", "22"], strict=True)] == [5, 5]


# -- the real provisioning API on loopback -------------------------------------------------


@dataclass
class Rig:
    """The provisioning API on 127.0.0.1 and what the test needs to inspect it."""

    base: str
    store: FileHostStore
    provisioner: Provisioner
    port: Any

    def enrol(self, serial: str) -> None:
        """First contact, as ``GET /first-stage-script/<serial>`` does."""
        self.provisioner.first_contact(serial)

    def install(self, serial: str, mac: str) -> None:
        """Walk *serial* to ``installed`` (host data, then set_installed)."""
        self.provisioner.host_data({"Serial": serial, "NetDevs": [
            {"Name": "eno1", "MacAddress": mac}], "ConnectedNIC": "eno1"}, serial_hint=serial)
        self.provisioner.set_installed(serial)

    def host(self, serial: str) -> Any:
        found = self.provisioner.get(serial)
        assert found is not None
        return found.host


def build_rig(tmp_path: Path) -> Rig:
    cluster = tmp_path / "cluster"
    config = load_config({"provision": {
        "cluster_dir": str(cluster),
        "default_os_version": "3975.2.0",
        "network": {
            "ip_range": {"start": "198.18.10.10", "end": "198.18.10.200"},
            "subnet_size": 24, "subnet_gateway": "198.18.10.1", "dns": ["198.18.10.1"],
        },
        "profiles": [
            {"name": "core", "quantity": 1, "tags": ["role=core"]},
            {"name": "worker", "quantity": 5, "tags": ["role=worker"]},
        ],
    }}).provision
    assert config is not None
    store = FileHostStore(cluster)
    provisioner = Provisioner(config, store, base_url="http://198.18.0.1:8080",
                              key=callback_key(cluster))

    def import_config(text: str) -> None:
        provisioner.config = apply_mayu_text(text, provisioner.config)

    api = ProvisioningApi(provisioner, admin_token=ADMIN_TOKEN,
                          config_exporter=lambda: export_mayu(provisioner.config),
                          config_importer=import_config)
    port = reactor.listenTCP(0, Site(api.root()), interface="127.0.0.1")
    return Rig(f"http://127.0.0.1:{port.getHost().port}", store, provisioner, port)


@pytest.fixture
def rig(tmp_path, monkeypatch):
    monkeypatch.setenv("PXESTACK_TOKEN", ADMIN_TOKEN)
    monkeypatch.delenv("PXESTACK_SERVER", raising=False)
    built = build_rig(tmp_path)
    yield built
    built.port.stopListening()


def ctl(rig_or_base: Rig | str, *argv: str):
    """Run ``pxestack ctl --server <base> argv...`` in a thread; a Deferred of the status."""
    base = rig_or_base if isinstance(rig_or_base, str) else rig_or_base.base
    return threads.deferToThread(main, ["ctl", "--server", base, *argv])


#: ``mayuctl list``'s header: the upper-cased default field names.
MAYUCTL_HEADER = ["IP", "SERIAL", "PROFILE", "IPMIADDR", "PROVIDERID", "ETCDTOKEN", "METADATA",
                  "COREOS", "STATE", "LASTBOOT"]


@pytest_twisted.inlineCallbacks
def test_list_defaults_to_mayuctls_columns_quoting_and_times(rig, capsys):
    for serial in ("sn-b", "sn-a", "sn-c"):
        rig.enrol(serial)
    rig.install("sn-b", "52:54:00:00:00:0b")
    rig.provisioner.boot_complete("sn-b", {"CoreOSVersion": "3975.2.0"})
    rig.provisioner.set_field("sn-a", "IPMIAddr", "198.18.20.7")
    assert (yield ctl(rig, "list")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == MAYUCTL_HEADER
    starts = [lines[0].index(name) for name in MAYUCTL_HEADER]
    rows = [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            for line in lines[1:]]
    # mayuctl sorts its rows as strings: the address comes first
    assert [r[0] for r in rows] == sorted(str(rig.host(s).internal_addr)
                                          for s in ("sn-a", "sn-b", "sn-c"))
    by_serial = {r[1]: r for r in rows}
    for serial, row in by_serial.items():
        host = rig.host(serial)
        assert row[2] == host.profile
        assert row[5] == host.etcd_cluster_token
        assert row[6] == ",".join(host.fleet_metadata)
        assert row[8] == f'"{host.state.value}"'  # with its JSON quotes
    assert by_serial["sn-a"][3] == "198.18.20.7" and by_serial["sn-c"][3] == "-"
    assert by_serial["sn-a"][4] == "-"  # no provider id
    assert by_serial["sn-b"][8] == '"running"' and by_serial["sn-b"][7] == "3975.2.0"
    assert by_serial["sn-a"][9] == "0001-01-01 00:00:00"  # Go's zero time: never booted
    assert len(by_serial["sn-b"][9]) == 19 and by_serial["sn-b"][9] != "0001-01-01 00:00:00"


@pytest_twisted.inlineCallbacks
def test_list_wide_shows_pxestacks_columns_sorted_by_serial(rig, capsys):
    for serial in ("sn-b", "sn-a"):
        rig.enrol(serial)
    rig.install("sn-b", "52:54:00:00:00:0b")
    assert (yield ctl(rig, "list", "--wide")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SERIAL", "ADDRESS", "PROFILE", "STATE", "LASTBOOT", "TAGS",
                                "HOSTNAME", "MACS", "OSVERSION"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["sn-a", "sn-b"]
    assert rows[1][3] == "installed" and rows[1][4] == "-"
    assert rows[1][7] == "52:54:00:00:00:0b"


@pytest_twisted.inlineCallbacks
def test_list_fields_filters_and_machine_readable_output(rig, capsys):
    for serial in ("sn-1", "sn-2"):
        rig.enrol(serial)
    rig.install("sn-2", "52:54:00:00:00:02")
    assert (yield ctl(rig, "list", "--fields", "serial,state,ip", "--no-legend",
                      "--state", "installed")) == 0
    assert capsys.readouterr().out.split() == ["sn-2", '"installed"',
                                               str(rig.host("sn-2").internal_addr)]
    assert (yield ctl(rig, "list", "--wide", "--fields", "serial,state", "--no-legend",
                      "--state", "installed")) == 0
    assert capsys.readouterr().out.split() == ["sn-2", "installed"]
    assert (yield ctl(rig, "-o", "json", "list")) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["Serial"] for r in records] == ["sn-1", "sn-2"]
    assert records[1]["MacAddresses"] == ["52:54:00:00:00:02"]
    assert (yield ctl(rig, "list", "--output", "yaml")) == 0
    assert [r["Serial"] for r in yaml.safe_load(capsys.readouterr().out)] == ["sn-1", "sn-2"]
    assert (yield ctl(rig, "list", "--fields", "serial,colour")) == 2
    assert "colour" in capsys.readouterr().err


@pytest_twisted.inlineCallbacks
def test_status_shows_one_host_or_exits_3(rig, capsys):
    rig.enrol("sn-1")
    rig.install("sn-1", "52:54:00:00:00:01")
    assert (yield ctl(rig, "status", "SN-1")) == 0  # serials are stored lower-case
    pairs = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    pairs = {k: v.strip() for k, v in pairs.items()}
    host = rig.host("sn-1")
    assert pairs["Serial"] == "sn-1"
    assert pairs["IP"] == str(host.internal_addr)
    assert pairs["Macs"] == "52:54:00:00:00:01"
    assert pairs["MachineID"] == host.machine_id
    assert pairs["State"] == "installed"
    assert pairs["ETag"] == rig.provisioner.get("sn-1").etag
    assert (yield ctl(rig, "status", "nope")) == EXIT_NOT_FOUND
    assert capsys.readouterr().err.strip() == "pxestack ctl: host 'nope' doesn't exist"
    assert (yield ctl(rig, "status", "sn-1", "-o", "json")) == 0
    assert json.loads(capsys.readouterr().out)["Serial"] == "sn-1"


@pytest_twisted.inlineCallbacks
def test_set_every_key_changes_the_record_and_is_audited(rig, capsys):
    rig.enrol("sn-1")
    for key, value in [("metadata", "role=edge,zone=b"), ("providerid", "rack-7"),
                       ("ipmiaddr", "198.18.30.3"), ("cabinet", "4"), ("etcdtoken", "tok"),
                       ("state", "running")]:
        assert (yield ctl(rig, "set", "sn-1", key, value)) == 0, capsys.readouterr().err
    host = rig.host("sn-1")
    assert host.fleet_metadata == ("role=edge", "zone=b")
    assert (host.provider_id, str(host.ipmi_addr), host.cabinet) == ("rack-7", "198.18.30.3", 4)
    assert (host.etcd_cluster_token, host.state) == ("tok", HostState.RUNNING)
    messages = [e.message for e in rig.store.history("sn-1")]
    assert "sn-1: updated host cabinet" in messages
    assert "sn-1: updated host provider id" in messages
    capsys.readouterr()
    before = rig.provisioner.get("sn-1").etag
    assert (yield ctl(rig, "set", "sn-1", "state", "bogus")) == 2  # never sent
    assert "bogus" in capsys.readouterr().err
    assert rig.provisioner.get("sn-1").etag == before
    assert (yield ctl(rig, "set", "ghost", "state", "configured")) == EXIT_NOT_FOUND


@pytest_twisted.inlineCallbacks
def test_override_reinstall_and_mark_fresh(rig, capsys):
    rig.enrol("sn-1")
    rig.install("sn-1", "52:54:00:00:00:01")
    assert (yield ctl(rig, "override", "sn-1", "CoreOSVersion", "4081.1.0")) == 0
    assert dict(rig.host("sn-1").overrides) == {"CoreOSVersion": "4081.1.0"}
    assert (yield ctl(rig, "reinstall", "sn-1")) == 0
    host = rig.host("sn-1")
    assert (host.state, host.keep_disk_data) == (HostState.CONFIGURED, True)
    assert (yield ctl(rig, "mark-fresh", "sn-1", "-o", "json")) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads("\n".join(out[out.index("{"):]))
    assert result["action"] == "mark_fresh" and result["status"] == 202
    assert result["etag"] == rig.provisioner.get("sn-1").etag
    host = rig.host("sn-1")
    assert (host.state, host.keep_disk_data) == (HostState.CONFIGURED, False)


@pytest_twisted.inlineCallbacks
def test_if_match_guards_against_a_concurrent_change(rig, capsys):
    rig.enrol("sn-1")
    stale = rig.provisioner.get("sn-1").etag
    rig.provisioner.set_field("sn-1", "ProviderId", "someone-else")
    assert (yield ctl(rig, "set", "sn-1", "providerid", "mine", "--if-match", stale)) == 1
    assert "412" in capsys.readouterr().err
    assert rig.host("sn-1").provider_id == "someone-else"
    fresh = rig.provisioner.get("sn-1").etag
    assert (yield ctl(rig, "set", "sn-1", "providerid", "mine", "--if-match", fresh)) == 0
    assert rig.host("sn-1").provider_id == "mine"


@pytest_twisted.inlineCallbacks
def test_history_lists_the_git_audit_trail(rig, capsys):
    rig.enrol("sn-1")
    assert (yield ctl(rig, "set", "sn-1", "cabinet", "2")) == 0
    assert (yield ctl(rig, "reinstall", "sn-1")) == 0
    capsys.readouterr()
    assert (yield ctl(rig, "history", "sn-1")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "COMMIT", "AUTHOR", "MESSAGE"]
    entries = rig.store.history("sn-1")
    assert len(lines) - 1 == len(entries) >= 3
    for line, entry in zip(lines[1:], entries, strict=True):
        assert entry.commit[:12] in line
        assert line.endswith(" ".join(entry.message.split()))
    assert (yield ctl(rig, "history", "sn-1", "-o", "json")) == 0
    assert [e["Commit"] for e in json.loads(capsys.readouterr().out)] == [
        e.commit for e in entries]
    assert (yield ctl(rig, "history", "ghost")) == EXIT_NOT_FOUND


@pytest_twisted.inlineCallbacks
def test_boot_complete_uses_the_nodes_env_files_and_callback_token(rig, tmp_path, capsys,
                                                                     monkeypatch):
    rig.enrol("sn-1")
    rig.install("sn-1", "52:54:00:00:00:01")
    monkeypatch.delenv("PXESTACK_TOKEN")  # the node has only its own callback token
    token = rig.provisioner.callback_token(rig.host("sn-1"))
    mayu_env = tmp_path / "mayu-env"
    mayu_env.write_text(f"SERIAL=sn-1\nPXESTACK_URL={rig.base}\nPXESTACK_TOKEN={token}\n")
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Flatcar Container Linux by Kinvolk"\nID=flatcar\n'
                          "VERSION=3975.2.1\n")
    # No --server: the URL comes from mayu-env, as on a freshly installed node.
    status = yield threads.deferToThread(main, [
        "ctl", "boot-complete", "--update-versions", "--mayu-env", str(mayu_env),
        "--os-release", str(os_release), "--yochu-env", str(tmp_path / "absent")])
    assert status == 0, capsys.readouterr().err
    host = rig.host("sn-1")
    assert host.state is HostState.RUNNING
    assert host.last_boot is not None
    assert host.versions["FlatcarVersion"] == "3975.2.1"
    mayu_env.write_text(f"SERIAL=sn-1\nPXESTACK_URL={rig.base}\nPXESTACK_TOKEN=wrong\n")
    status = yield threads.deferToThread(main, [
        "ctl", "boot-complete", "--mayu-env", str(mayu_env)])
    assert status == 1
    assert "not authorised" in capsys.readouterr().err
    status = yield threads.deferToThread(main, [
        "ctl", "boot-complete", "--mayu-env", str(tmp_path / "absent")])
    assert status == 2


@pytest_twisted.inlineCallbacks
def test_config_show_and_set_round_trip(rig, tmp_path, capsys):
    assert (yield ctl(rig, "config", "show")) == 0
    text = capsys.readouterr().out
    settings = yaml.safe_load(text)
    assert (yield ctl(rig, "config", "show", "-o", "json")) == 0
    assert json.loads(capsys.readouterr().out) == settings
    settings["default_coreos_version"] = "4081.1.0"
    new = tmp_path / "mayu.yaml"
    new.write_text(yaml.safe_dump(settings))
    assert (yield ctl(rig, "config", "set", str(new))) == 0, capsys.readouterr().err
    assert rig.provisioner.config.default_os_version == "4081.1.0"
    new.write_text("key: [unclosed")
    assert (yield ctl(rig, "config", "set", str(new))) == 2


@pytest_twisted.inlineCallbacks
def test_health_reports_the_store(rig, capsys):
    assert (yield ctl(rig, "health", "-o", "json")) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


@pytest_twisted.inlineCallbacks
def test_token_sources_and_authorisation_errors(rig, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PXESTACK_TOKEN")
    assert (yield ctl(rig, "list")) == 1
    assert "not authorised" in capsys.readouterr().err
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    assert (yield ctl(rig, "--token-file", str(token_file), "list")) == 0
    assert (yield ctl(rig, "list", "--token-file", str(tmp_path / "missing"))) == 2
    assert "--token-file" in capsys.readouterr().err
    monkeypatch.setenv("PXESTACK_SERVER", rig.base)
    monkeypatch.setenv("PXESTACK_TOKEN", ADMIN_TOKEN)
    assert (yield threads.deferToThread(main, ["ctl", "list", "-o", "json"])) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest_twisted.inlineCallbacks
def test_unreachable_server_is_exit_1(rig, capsys):
    yield rig.port.stopListening()
    assert (yield ctl(rig, "list")) == 1
    assert capsys.readouterr().err.startswith(f"pxestack ctl: cannot reach {rig.base}")


# -- a server with only mayu's API (docs/reference/mayu-api.md) ------------------------------


class MayuStandIn(Resource):
    """What a real mayu 0.13 answers: only ``GET /admin/hosts`` and the host PUTs.

    Records every request so the test can compare it with what mayuctl sends.
    """

    isLeaf = True

    def __init__(self, hosts: list[dict[str, Any]] | None) -> None:
        super().__init__()
        self.hosts = hosts
        self.requests: list[tuple[bytes, bytes, bytes | None, bytes]] = []

    def render(self, request):
        body = request.content.read()
        self.requests.append((request.method, request.path,
                              request.getHeader(b"content-type"), body))
        if request.method == b"GET" and request.path == b"/admin/hosts":
            return json.dumps(self.hosts).encode()
        parts = request.path.decode().split("/")
        if request.method == b"PUT" and len(parts) == 5 and parts[2] == "host":
            known = {h["Serial"] for h in self.hosts or []}
            if parts[3] not in known:
                request.setResponseCode(400)
                return b"host doesn't exist"
            request.setResponseCode(202)
            return b""
        request.setResponseCode(404)  # mayu's file server: no such file
        return b"404 page not found\n"


def serve_stand_in(stand_in: MayuStandIn):
    port = reactor.listenTCP(0, Site(stand_in), interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}"


@pytest_twisted.inlineCallbacks
def test_against_mayu_requests_match_mayuctls(capsys, monkeypatch):
    monkeypatch.delenv("PXESTACK_TOKEN", raising=False)
    stand_in = MayuStandIn([{
        "Serial": "abc123", "InternalAddr": "10.0.3.31", "Profile": "core",
        "State": "running", "LastBoot": "2017-03-01T10:20:30.123456789Z",
        "FleetMetadata": ["role-core=true"], "CoreOSVersion": "1298.5.0",
    }])
    port, base = serve_stand_in(stand_in)
    try:
        # status works without GET /admin/host/<serial>: falls back to the list.
        assert (yield ctl(base, "status", "abc123")) == 0
        out = capsys.readouterr().out
        assert "2017-03-01 10:20:30" in out and "1298.5.0" in out
        assert (yield ctl(base, "status", "other")) == EXIT_NOT_FOUND
        stand_in.requests.clear()
        assert (yield ctl(base, "set", "abc123", "metadata", "a=b,c=d")) == 0
        assert (yield ctl(base, "set", "abc123", "state", "configured")) == 0
        assert (yield ctl(base, "override", "abc123", "CoreOSVersion", "899.13.0")) == 0
        assert (yield ctl(base, "mark-fresh", "abc123")) == 0
        assert (yield ctl(base, "set", "nope", "cabinet", "1")) == EXIT_NOT_FOUND
        assert (yield ctl(base, "history", "abc123")) == 1
        assert "no history endpoint" in capsys.readouterr().err
    finally:
        yield port.stopListening()
    sent = [(m, p, t, json.loads(b) if b else None) for m, p, t, b in stand_in.requests]
    assert sent[:5] == [
        (b"PUT", b"/admin/host/abc123/set_metadata", b"application/json",
         {"FleetMetadata": ["a=b", "c=d"]}),
        (b"PUT", b"/admin/host/abc123/set_state", b"application/json", {"State": "configured"}),
        (b"PUT", b"/admin/host/abc123/override", b"application/json",
         {"Overrides": {"CoreOSVersion": "899.13.0"}}),
        (b"PUT", b"/admin/host/abc123/mark_fresh", b"application/json", None),
        (b"PUT", b"/admin/host/nope/set_cabinet", b"application/json", {"Cabinet": 1}),
    ]


@pytest_twisted.inlineCallbacks
def test_go_null_host_list_is_empty(capsys, monkeypatch):
    """Go encodes an empty slice as ``null``; mayuctl accepts it."""
    port, base = serve_stand_in(MayuStandIn(None))
    try:
        assert (yield ctl(base, "list", "--no-legend")) == 0
    finally:
        yield port.stopListening()
    assert capsys.readouterr().out == ""


@pytest_twisted.inlineCallbacks
def test_example_reinstall_script(rig, tmp_path):
    """examples/ctl_reinstall_profile.sh marks every running host of a profile."""
    import os
    import subprocess
    import sys

    for serial in ("sn-1", "sn-2", "sn-3"):
        rig.enrol(serial)
        rig.install(serial, f"52:54:00:00:00:0{serial[-1]}")
        rig.provisioner.boot_complete(serial, {})
    by_profile = {s: rig.host(s).profile for s in ("sn-1", "sn-2", "sn-3")}
    workers = sorted(s for s, p in by_profile.items() if p == "worker")
    script = Path(__file__).resolve().parent.parent / "examples" / "ctl_reinstall_profile.sh"
    env = dict(os.environ, PXESTACK_SERVER=rig.base,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = yield threads.deferToThread(
        subprocess.run, ["sh", str(script), "worker"], env=env, capture_output=True,
        text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(line.split(":")[0] for line in done.stdout.splitlines()
                  if "marked for reinstall" in line) == workers
    for serial, profile in by_profile.items():
        expected = HostState.CONFIGURED if profile == "worker" else HostState.RUNNING
        assert rig.host(serial).state is expected


@pytest_twisted.inlineCallbacks
def test_a_server_answering_garbage_is_exit_1(capsys, monkeypatch):
    """mayuctl needs a top-level array; anything else is reported, not crashed."""
    monkeypatch.delenv("PXESTACK_TOKEN", raising=False)
    port, base = serve_stand_in(MayuStandIn({"hosts": []}))  # an object wrapper
    try:
        assert (yield ctl(base, "list")) == 1
    finally:
        yield port.stopListening()
    assert "JSON array" in capsys.readouterr().err


@settings(max_examples=100)
@given(st.text(max_size=60))
def test_last_boot_text_never_raises(text):
    assert isinstance(last_boot_text(text), str)


@settings(max_examples=100)
@given(st.text(max_size=300))
def test_env_file_parser_takes_any_text(text):
    parsed = parse_env_file(text)
    assert all("\n" not in key for key in parsed)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pxestack test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest_twisted.inlineCallbacks
def test_https_server_is_verified_against_cacert(tmp_path, capsys, monkeypatch):
    """mayu's API was TLS; ctl verifies the certificate, with --cacert."""
    from twisted.internet import ssl

    monkeypatch.delenv("PXESTACK_TOKEN", raising=False)
    cert_path, key_path = _self_signed(tmp_path)
    context = ssl.DefaultOpenSSLContextFactory(str(key_path), str(cert_path))
    stand_in = MayuStandIn([{"Serial": "abc", "State": "running"}])
    port = reactor.listenSSL(0, Site(stand_in), context, interface="127.0.0.1")
    base = f"https://127.0.0.1:{port.getHost().port}"
    try:
        assert (yield ctl(base, "list", "--cacert", str(cert_path), "--no-legend",
                          "--fields", "serial,state")) == 0
        assert capsys.readouterr().out.split() == ["abc", '"running"']  # mayuctl's quoting
        assert (yield ctl(base, "list")) == 1  # not in the system trust store
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_approve_and_remove(rig, capsys):
    rig.provisioner.first_contact("new-1", pending=True)
    assert rig.host("new-1").state is HostState.PENDING
    assert (yield ctl(rig, "list", "--state", "pending", "--fields", "serial")) == 0
    assert "new-1" in capsys.readouterr().out
    assert (yield ctl(rig, "approve", "new-1")) == 0
    host = rig.host("new-1")
    assert host.state is HostState.UNKNOWN and host.internal_addr is not None
    assert (yield ctl(rig, "approve", "new-1")) == 1  # no longer pending: 409
    assert (yield ctl(rig, "remove", "new-1", "-o", "json")) == 0
    out = capsys.readouterr().out
    assert '"action": "remove"' in out and '"status": 202' in out
    assert rig.provisioner.get("new-1") is None
    assert rig.store.history("new-1")[0].message.startswith("new-1: host removed")
    assert (yield ctl(rig, "remove", "new-1")) == EXIT_NOT_FOUND


@pytest_twisted.inlineCallbacks
def test_add_and_move(rig, capsys):
    assert (yield ctl(rig, "add", "SN-NEW", "--mac", "52:54:00:aa:00:01", "--mac",
                      "52-54-00-aa-00-02", "--profile", "worker", "--address",
                      "198.18.10.150")) == 0
    assert "sn-new: added (profile worker, address 198.18.10.150)" in capsys.readouterr().out
    host = rig.host("sn-new")
    assert host.mac_addresses == ("52:54:00:aa:00:01", "52:54:00:aa:00:02")
    assert host.extra["ProfilePinned"] is True
    assert rig.store.history("sn-new")[0].message.startswith("sn-new: host added")
    assert (yield ctl(rig, "add", "sn-new")) == 1  # exists: 409
    assert "exists" in capsys.readouterr().err
    assert (yield ctl(rig, "add", "sn-x", "--address", "nope")) == 2
    rig.enrol("sn-core")  # core's quantity is 1: full now
    assert (yield ctl(rig, "move", "sn-new", "core")) == 1
    assert "Force" in capsys.readouterr().err
    assert rig.host("sn-new").profile == "worker"
    assert (yield ctl(rig, "move", "sn-new", "core", "--force", "-o", "json")) == 0
    assert '"action": "move"' in capsys.readouterr().out
    assert rig.host("sn-new").profile == "core"
    assert rig.host("sn-new").fleet_metadata == ("role=core",)
    assert (yield ctl(rig, "move", "nope", "core")) == EXIT_NOT_FOUND
