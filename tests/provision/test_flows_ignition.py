"""The Ignition spec validator: what each spec version allows, types, required keys, values
Ignition refuses at boot; and a property test: hostile template data either renders a
config that validates or is refused, never an invalid config."""

from __future__ import annotations

import copy

import pytest
from flow_helpers import flow_provisioner, loads, sample_host
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pxestack.provision.ignition import (
    SUPPORTED_VERSIONS,
    IgnitionError,
    decode_data_url,
    validate,
)
from pxestack.provision.templates import UnsafeTemplateValue

GOOD = {
    "ignition": {"version": "3.3.0", "timeouts": {"httpTotal": 30}},
    "kernelArguments": {"shouldExist": ["console=ttyS0"]},
    "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA k"]}]},
    "storage": {
        "files": [
            {"path": "/etc/hostname", "mode": 0o644, "overwrite": True,
             "contents": {"source": "data:,node-1",
                          "verification": {"hash": "sha256-" + "a" * 64}}},
            {"path": "/opt/b64", "contents": {"source": "data:;base64,aGVsbG8="}},
        ],
        "directories": [{"path": "/opt/x", "mode": 0o755}],
        "links": [{"path": "/opt/l", "target": "/opt/x"}],
        "filesystems": [{"device": "/dev/sdb", "format": "xfs", "path": "/var/data",
                         "mountOptions": ["noatime"]}],
    },
    "systemd": {"units": [{"name": "a.service", "enabled": True, "contents": "[Unit]\n",
                           "dropins": [{"name": "10.conf", "contents": "[Service]\n"}]}]},
}


def test_a_full_config_validates():
    assert validate(GOOD) == "3.3.0"


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["ignition"].update(version="2.2.0"), "ignition.version"),
        (lambda d: d["ignition"].update(version="3.3"), "ignition.version"),
        (lambda d: d.update(storagee={}), "storagee"),
        (lambda d: d["systemd"]["units"][0].update(command="start"), "systemd.units[0].command"),
        (lambda d: d["storage"]["files"][0].update(path="etc/hostname"),
         "storage.files[0].path"),
        (lambda d: d["storage"]["files"][0].update(mode="0644"), "storage.files[0].mode"),
        (lambda d: d["storage"]["files"][0].update(mode=0o17777), "storage.files[0].mode"),
        (lambda d: d["storage"]["files"][0].update(overwrite="yes"),
         "storage.files[0].overwrite"),
        (lambda d: d["storage"]["filesystems"][0].update(wipeFileSystem=True),
         "storage.filesystems[0].wipeFileSystem"),
        (lambda d: d["systemd"]["units"][0].update(name="a"), "systemd.units[0].name"),
        (lambda d: d["systemd"]["units"][0].pop("name"), "systemd.units[0].name"),
        (lambda d: d["passwd"]["users"][0].update(sshAuthorizedKeys="k"),
         "passwd.users[0].sshAuthorizedKeys"),
        (lambda d: d["storage"]["files"][0]["contents"].update(source="data:no-comma"),
         "storage.files[0].contents.source"),
        (lambda d: d["storage"]["files"][0]["contents"].update(source="data:,a b"),
         "storage.files[0].contents.source"),
        (lambda d: d["storage"]["files"][0]["contents"].update(source="data:,%zz"),
         "storage.files[0].contents.source"),
        (lambda d: d["storage"]["files"][1]["contents"].update(source="data:;base64,!!"),
         "storage.files[1].contents.source"),
        (lambda d: d["storage"]["files"][0]["contents"].update(source="file:///etc/x"),
         "storage.files[0].contents.source"),
        (lambda d: d["storage"]["files"][0]["contents"]["verification"].update(hash="md5-1"),
         "storage.files[0].contents.verification.hash"),
        (lambda d: d["storage"]["directories"][0].update(path="/etc/hostname"),
         "storage.directories[0].path"),
        (lambda d: d["systemd"]["units"].append({"name": "a.service"}), "systemd.units[1].name"),
        (lambda d: d.update(passwd=[]), "passwd"),
    ],
)
def test_what_mayu_silently_dropped_is_refused_with_its_path(mutate, path):
    document = copy.deepcopy(GOOD)
    mutate(document)
    with pytest.raises(IgnitionError) as caught:
        validate(document)
    assert caught.value.path == path


def test_keys_are_gated_by_the_declared_spec_version():
    for version, ok in (("3.2.0", False), ("3.3.0", True), ("3.4.0", True)):
        document = {"ignition": {"version": version}, "kernelArguments": {"shouldExist": []}}
        if ok:
            validate(document)
        else:
            with pytest.raises(IgnitionError, match=r"needs spec 3\.3\.0"):
                validate(document)
    proxy = {"ignition": {"version": "3.0.0", "proxy": {"httpProxy": "http://p"}}}
    with pytest.raises(IgnitionError, match=r"needs spec 3\.1\.0"):
        validate(proxy)
    luks = {"ignition": {"version": "3.1.0"}, "storage": {"luks": [{"name": "x"}]}}
    with pytest.raises(IgnitionError, match=r"needs spec 3\.2\.0"):
        validate(luks)
    assert validate({"ignition": {"version": "3.2.0"}, "storage": {"luks": [{"name": "x"}]}})


def test_every_supported_version_accepts_the_minimal_config():
    for version in SUPPORTED_VERSIONS:
        assert validate({"ignition": {"version": version}}) == version


def test_data_urls_decode():
    assert decode_data_url("data:,a%20b%0A") == b"a b\n"
    assert decode_data_url("data:text/plain;base64,aGVsbG8=") == b"hello"
    with pytest.raises(ValueError):
        decode_data_url("https://example/x")


_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=_TEXT, disk=_TEXT, nic=_TEXT)
def test_hostile_data_never_yields_an_invalid_config(tmp_path, key, disk, nic):
    prov = flow_provisioner(tmp_path)
    overrides = {"ssh_authorized_keys": [key], "install_disk": disk}
    for profile in ("flatcar-pxe", "fcos-pxe", "fcos-disk", "flatcar-disk"):
        host = sample_host(profile, overrides=overrides, connected_nic=nic)
        for render in (prov.render_final, prov.render_installer_config):
            try:
                text = render(host)
            except UnsafeTemplateValue:
                continue  # refused loudly: fine
            except Exception as exc:  # "no installer" for flows without one
                assert "has no installer" in str(exc)
                continue
            validate(loads(text))
