"""Templates: strict variables, context escaping for iPXE / shell / JSON."""

from __future__ import annotations

import json

import pytest
from provision_helpers import BASE_URL, provision_config

from pxestack.provision.memstore import InMemoryHostStore
from pxestack.provision.model import Host
from pxestack.provision.provisioner import Provisioner
from pxestack.provision.templates import (
    TemplateRenderError,
    Templates,
    UnsafeTemplateValue,
    validate_ignition,
)

HOSTILE = ["a b", "x\nshell", "${password}", "a;reboot", "`id`", "$(id)", "'quote", '"dq', "a#b"]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return Templates(tmp_path)


@pytest.mark.parametrize("value", HOSTILE)
def test_ipxe_context_refuses_unescaped_values(tmp_path, value):
    templates = _write(tmp_path, "t.ipxe.j2", "#!ipxe\nkernel {{ v }}\n")
    with pytest.raises(UnsafeTemplateValue):
        templates.render("t.ipxe.j2", {"v": value})
    escaped = _write(tmp_path, "u.ipxe.j2", "chain http://x/?s={{ v|ipxe_url }}\n")
    line = escaped.render("u.ipxe.j2", {"v": value})
    assert "\n" not in line.rstrip("\n") and "${" not in line and " " not in line.split(" ", 1)[1]


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_context_refuses_unquoted_values_and_quotes_with_sh(tmp_path, value):
    import subprocess

    templates = _write(tmp_path, "t.sh.j2", "echo {{ v }}\n")
    with pytest.raises(UnsafeTemplateValue):
        templates.render("t.sh.j2", {"v": value})
    quoted = _write(tmp_path, "q.sh.j2", "printf %s {{ v|sh }}\n")
    script = quoted.render("q.sh.j2", {"v": value})
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == value


@pytest.mark.parametrize("value", HOSTILE)
def test_json_context_needs_tojson(tmp_path, value):
    templates = _write(tmp_path, "t.json.j2", '{"a": "{{ v }}"}')
    if any(c in value for c in '"\n'):
        with pytest.raises(UnsafeTemplateValue):
            templates.render("t.json.j2", {"v": value})
    safe = _write(tmp_path, "s.json.j2", '{"a": {{ v|tojson }}}')
    assert json.loads(safe.render("s.json.j2", {"v": value})) == {"a": value}


def test_missing_variables_are_errors(tmp_path):
    templates = _write(tmp_path, "t.sh.j2", "echo {{ missing }}\n")
    with pytest.raises(TemplateRenderError):
        templates.render("t.sh.j2", {})


def test_ignition_validation_rejects_what_mayu_silently_dropped():
    validate_ignition({"ignition": {"version": "3.3.0"}})
    for bad in (
        {"ignition": {"version": "2.2.0"}},
        {
            "ignition": {"version": "3.3.0"},
            "systemd": {"units": [{"name": "a", "command": "start"}]},
        },
        {"ignition": {"version": "3.3.0"}, "storagee": {}},
        {"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "rel"}]}},
    ):
        with pytest.raises(TemplateRenderError):
            validate_ignition(bad)


def test_overrides_never_leak_between_hosts(tmp_path):
    """mayu merged host Overrides into the global templates_env (bug)."""
    config = provision_config(tmp_path, templates_env={"ssh_authorized_keys": ["k1"]})
    prov = Provisioner(config, InMemoryHostStore(), base_url=BASE_URL, key=b"k" * 32)
    one = Host(
        serial="one",
        machine_id="ab" * 16,
        hostname="x",
        overrides={"ssh_authorized_keys": ["override"]},
    )
    two = Host(serial="two", machine_id="cd" * 16, hostname="y")
    first = json.loads(prov.render_final(one))
    second = json.loads(prov.render_final(two))
    assert first["passwd"]["users"][0]["sshAuthorizedKeys"] == ["override"]
    assert second["passwd"]["users"][0]["sshAuthorizedKeys"] == ["k1"]


def test_shipped_templates_render_for_a_hostile_override(tmp_path):
    config = provision_config(tmp_path)
    prov = Provisioner(config, InMemoryHostStore(), base_url=BASE_URL, key=b"k" * 32)
    host = Host(
        serial="s",
        machine_id="ab" * 16,
        hostname="h",
        overrides={"install_disk": "/dev/sda; rm -rf /"},
    )
    script = prov.render_first_stage_script(host)
    assert "DISK='/dev/sda; rm -rf /'" in script
    json.loads(prov.render_first_stage_ignition())


def test_operator_templates_and_snippets_override_the_shipped_ones(tmp_path):
    (tmp_path / "tpl" / "ipxe").mkdir(parents=True)
    (tmp_path / "tpl" / "ipxe" / "localboot.ipxe.j2").write_text("#!ipxe\nexit\n")
    (tmp_path / "snip").mkdir()
    (tmp_path / "snip" / "network.j2").write_text("[Match]\nName=custom\n")
    config = provision_config(
        tmp_path, templates_dir=str(tmp_path / "tpl"), snippets_dir=str(tmp_path / "snip")
    )
    prov = Provisioner(config, InMemoryHostStore(), base_url=BASE_URL, key=b"k" * 32)
    from ipaddress import IPv4Address

    from pxestack.provision.model import HostState

    host = Host(
        serial="s",
        machine_id="ab" * 16,
        hostname="h",
        state=HostState.RUNNING,
        internal_addr=IPv4Address("198.18.10.10"),
    )
    assert prov.boot_script(host, True) == "#!ipxe\nexit\n"
    assert "Name%3Dcustom" in prov.render_final(host)
