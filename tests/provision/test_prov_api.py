"""The HTTP API's contract: mayu's paths and codes, auth, limits, ETag/If-Match (S4, S8)."""

from __future__ import annotations

import pytest
from provision_helpers import ADMIN_TOKEN, host_data, make_rig, token_from_script


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path / "cluster")


def enrol(rig, serial="sn-1"):
    script = rig.client.request("GET", f"/first-stage-script/{serial}")
    assert script.code == 200, script.body
    return token_from_script(script.body.decode())


def test_admin_hosts_is_a_top_level_array_for_mayuctl(rig):
    empty = rig.client.request("GET", "/admin/hosts", token=ADMIN_TOKEN)
    assert (empty.code, empty.json()) == (200, [])
    enrol(rig, "SN-B")
    enrol(rig, "sn-a")
    hosts = rig.client.request("GET", "/admin/hosts", token=ADMIN_TOKEN).json()
    assert [h["Serial"] for h in hosts] == ["sn-a", "sn-b"]  # lower-cased, as mayuctl expects
    for host in hosts:
        assert host["State"] in ("unknown", "configured", "installing", "installed", "running")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/hosts"),
        ("GET", "/admin/host/sn-1"),
        ("GET", "/admin/host/sn-1/history"),
        ("PUT", "/admin/host/sn-1/set_state"),
        ("PUT", "/admin/host/sn-1/mark_fresh"),
        ("GET", "/admin/mayu_config"),
    ],
)
def test_admin_api_needs_the_bearer_token(rig, method, path):
    enrol(rig)
    assert rig.client.request(method, path, {"State": "configured"}).code == 401
    assert rig.client.request(method, path, {"State": "configured"}, token="wrong").code == 401


def test_machine_callbacks_need_the_hosts_own_token(rig):
    token_1 = enrol(rig, "sn-1")
    token_2 = enrol(rig, "sn-2")
    assert token_1 != token_2
    # Serial or MAC alone is not enough; another host's token is not enough either.
    assert (
        rig.client.request(
            "POST", "/final-ignition-config.json", host_data("sn-1", ["52:54:00:00:00:01"])
        ).code
        == 401
    )
    assert (
        rig.client.request(
            "POST",
            "/final-ignition-config.json",
            host_data("sn-1", ["52:54:00:00:00:01"]),
            token=token_2,
        ).code
        == 401
    )
    ok = rig.client.request(
        "POST",
        "/final-ignition-config.json",
        host_data("sn-1", ["52:54:00:00:00:01"]),
        token=token_1,
    )
    assert ok.code == 200
    assert rig.client.request("PUT", "/admin/host/sn-1/set_installed").code == 401
    assert rig.client.request("PUT", "/admin/host/sn-1/set_installed?token=" + token_2).code == 401
    assert rig.client.request("PUT", "/admin/host/sn-1/set_installed?token=" + token_1).code == 202


def test_compat_switch_accepts_mayus_unauthenticated_callbacks(tmp_path):
    rig = make_rig(tmp_path / "cluster", compat=True)
    posted = rig.client.request(
        "POST", "/final-ignition-config.json", host_data("legacy-1", ["52:54:00:00:00:09"])
    )
    assert posted.code == 200
    assert rig.client.request("PUT", "/admin/host/legacy-1/set_installed").code == 202
    assert rig.client.request("PUT", "/admin/host/legacy-1/boot_complete", b"").code == 202
    # The admin API itself still needs the token.
    assert rig.client.request("GET", "/admin/hosts").code == 401


def test_no_admin_token_means_open_admin_api(tmp_path):
    """Only allowed when HTTP listens on loopback (checked by provisioning_extensions)."""
    rig = make_rig(tmp_path / "cluster", admin_token=None)
    assert rig.client.request("GET", "/admin/hosts").code == 200


def test_unknown_serial_is_mayus_400(rig):
    answer = rig.client.request(
        "PUT", "/admin/host/nope/set_state", {"State": "configured"}, token=ADMIN_TOKEN
    )
    assert (answer.code, answer.body) == (400, b"host doesn't exist\n")


@pytest.mark.parametrize(
    ("action", "body", "field", "expected"),
    [
        ("set_metadata", {"FleetMetadata": ["a=b", "c=d"]}, "FleetMetadata", ["a=b", "c=d"]),
        ("set_provider_id", {"ProviderId": "rack-7"}, "ProviderId", "rack-7"),
        ("set_ipmi_addr", {"IPMIAddr": "198.18.30.3"}, "IPMIAddr", "198.18.30.3"),
        ("set_cabinet", {"Cabinet": 4}, "Cabinet", 4),
        ("set_etcd_cluster_token", {"EtcdClusterToken": "abc"}, "EtcdClusterToken", "abc"),
        (
            "override",
            {"Overrides": {"CoreOSVersion": "1.2.3"}},
            "Overrides",
            {"CoreOSVersion": "1.2.3"},
        ),
    ],
)
def test_mayuctl_setters(rig, action, body, field, expected):
    enrol(rig)
    # mayuctl sends whole Host objects with extra keys; they are ignored.
    payload = {"ConnectedNIC": "", "LastBoot": "0001-01-01T00:00:00Z", "State": "unknown", **body}
    answer = rig.client.request("PUT", f"/admin/host/sn-1/{action}", payload, token=ADMIN_TOKEN)
    assert (answer.code, answer.body) == (202, b"")
    host = rig.client.request("GET", "/admin/host/sn-1", token=ADMIN_TOKEN).json()
    assert host[field] == expected
    message = rig.store.history("sn-1")[0].message
    assert message.startswith("sn-1: updated host ")


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("set_state", {"State": "bogus"}),
        ("set_state", {"State": 3}),
        ("set_ipmi_addr", {"IPMIAddr": "not-an-ip"}),
        ("set_cabinet", {"Cabinet": -1}),
        ("set_metadata", {"FleetMetadata": "a=b"}),
        ("override", {"Overrides": {}}),
        ("set_provider_id", {"ProviderId": 5}),  # a missing key is the zero value
    ],
)
def test_bad_values_are_400_and_change_nothing(rig, action, body):
    enrol(rig)
    before = rig.store.read("sn-1")
    answer = rig.client.request("PUT", f"/admin/host/sn-1/{action}", body, token=ADMIN_TOKEN)
    assert answer.code == 400
    assert rig.store.read("sn-1") == before


def test_illegal_transition_is_409(rig):
    enrol(rig)
    answer = rig.client.request("PUT", "/admin/host/sn-1/set_installed", token=ADMIN_TOKEN)
    assert answer.code == 409  # unknown -> installed skips installing
    assert rig.provisioner.get("sn-1").host.state.value == "unknown"


def test_if_match_detects_concurrent_edits(rig):
    enrol(rig)
    first = rig.client.request("GET", "/admin/host/sn-1", token=ADMIN_TOKEN)
    etag = first.header("ETag")
    assert etag and etag.startswith('"')
    ok = rig.client.request(
        "PUT",
        "/admin/host/sn-1/set_provider_id",
        {"ProviderId": "a"},
        token=ADMIN_TOKEN,
        headers={"If-Match": etag},
    )
    assert ok.code == 202
    assert ok.header("ETag") != etag
    stale = rig.client.request(
        "PUT",
        "/admin/host/sn-1/set_provider_id",
        {"ProviderId": "b"},
        token=ADMIN_TOKEN,
        headers={"If-Match": etag},
    )
    assert stale.code == 412
    assert rig.provisioner.get("sn-1").host.provider_id == "a"


def test_body_size_and_json_depth_are_capped(rig):
    enrol(rig)
    big = rig.client.request(
        "PUT", "/admin/host/sn-1/set_provider_id", {"ProviderId": "x" * 5000}, token=ADMIN_TOKEN
    )
    assert big.code == 413
    deep = '{"Overrides": ' + "[" * 50 + "]" * 50 + "}"
    assert (
        rig.client.request("PUT", "/admin/host/sn-1/override", deep, token=ADMIN_TOKEN).code == 400
    )
    assert (
        rig.client.request("PUT", "/admin/host/sn-1/override", "{not json", token=ADMIN_TOKEN).code
        == 400
    )
    assert (
        rig.client.request("PUT", "/admin/host/sn-1/override", "[1]", token=ADMIN_TOKEN).code == 400
    )


@pytest.mark.parametrize("serial", ["../etc", "a/b", "..", ".hidden", "x\x00y", "é"])
def test_hostile_serials_never_become_paths(rig, serial):
    from urllib.parse import quote

    answer = rig.client.request("GET", "/first-stage-script/" + quote(serial, safe=""))
    assert answer.code in (400, 404)
    assert [p.name for p in rig.store.root.iterdir() if not p.name.startswith(".")] == [
        "cluster.json"
    ]


def test_known_bad_serial_falls_back_to_the_uuid(rig):
    uuid = "4c4c4544-0042-3510-8051-b7c04f4e3232"
    answer = rig.client.request("GET", f"/first-stage-script/0123456789?uuid={uuid}")
    assert answer.code == 200
    assert rig.provisioner.get(uuid) is not None
    assert rig.client.request("GET", "/first-stage-script/0123456789").code == 400


def test_installed_host_gets_no_installer_script(rig):
    token = enrol(rig)
    rig.client.request(
        "POST", "/final-ignition-config.json", host_data("sn-1", ["52:54:00:00:00:01"]), token=token
    )
    rig.client.request("PUT", "/admin/host/sn-1/set_installed", token=token)
    assert rig.client.request("GET", "/first-stage-script/sn-1").code == 409


def test_health_and_mayu_config_roundtrip(rig):
    health = rig.client.request("GET", "/admin/health", token=ADMIN_TOKEN)
    assert health.code == 200 and health.json()["git_ok"] is True
    text = rig.client.request("GET", "/admin/mayu_config", token=ADMIN_TOKEN)
    # Not wired in this rig (no importer/exporter): 404 rather than a crash.
    assert text.code == 404


def test_pxe_profile_gets_ignition_every_boot(tmp_path):
    rig = make_rig(
        tmp_path / "cluster", profiles=[{"name": "ram", "quantity": 5, "install": "pxe"}]
    )
    script = rig.client.request("GET", "/ipxebootscript?serial=sn-r&uuid=&mac=")
    # The first identified request enrols the machine, so even its first script is the RAM
    # boot of its profile (never the Flatcar disk installer).
    assert "first-stage-script" not in script.body.decode()
    assert "ignition.config.url=http://198.18.0.1:8080/ignition?serial=sn-r" in script.body.decode()
    assert rig.provisioner.get("sn-r").host.profile == "ram"
    config = rig.client.request("GET", "/ignition?serial=sn-r&uuid=")
    assert config.code == 200
    assert rig.provisioner.get("sn-r").host.state.value == "installing"
    script = rig.client.request("GET", "/ipxebootscript?serial=sn-r&uuid=&mac=")
    assert "ignition.config.url=http://198.18.0.1:8080/ignition?serial=sn-r" in script.body.decode()
    token = config.json()["storage"]["files"][2]["contents"]["source"].split("PXESTACK_TOKEN%3D")[
        1
    ][:40]
    assert rig.client.request("PUT", "/admin/host/sn-r/boot_complete", b"", token=token).code == 202
    assert rig.provisioner.get("sn-r").host.state.value == "running"
    # Running, but a PXE profile: it must still get the RAM boot, never a local boot.
    script = rig.client.request("GET", "/ipxebootscript?serial=sn-r&uuid=&mac=")
    assert "ignition.config.url" in script.body.decode()


def test_health_includes_the_dhcp_lease_table(rig):
    # What DhcpService.lease_health reports with dhcp.lease_store: postgresql.
    report = {"lease_db_ok": True, "lease_db_error": None, "lease_db_conflicts": 2}
    rig.api.health_reports.append(lambda: dict(report))
    health = rig.client.request("GET", "/admin/health", token=ADMIN_TOKEN)
    assert health.code == 200
    assert health.json()["lease_db_ok"] is True and health.json()["lease_db_conflicts"] == 2
    report.update(ok=False, lease_db_ok=False, lease_db_error="connection refused")
    health = rig.client.request("GET", "/admin/health", token=ADMIN_TOKEN)
    assert health.code == 503
    body = health.json()
    assert body["ok"] is False and body["lease_db_error"] == "connection refused"
    assert body["git_ok"] is True  # the store's own report is kept
