"""examples/full_stack.tac: load its ``application`` the way twistd -y does (without running
the reactor or binding ports) and check the service tree it builds from full_stack.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from twisted.application import service
from twisted.persisted import sob
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from pxestack.config import load_config_file
from pxestack.provision.flows import flow_for
from pxestack.provision.policy import ProvisioningPolicy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def tac_config(tmp_path, monkeypatch):
    """full_stack.yaml copied to *tmp_path* (so its relative state dir lands there)."""
    config = tmp_path / "full_stack.yaml"
    shutil.copy(EXAMPLES / "full_stack.yaml", config)
    (tmp_path / "pxestack-state").mkdir()
    token = tmp_path / "pxestack-state" / "admin-token"
    token.write_text("example-admin-token-0123456789abcdef\n")
    token.chmod(0o600)
    monkeypatch.setenv("PXESTACK_CONFIG", str(config))
    return config


def test_the_tac_builds_the_whole_stack(tac_config, tmp_path):
    application = sob.loadValueFromFile(str(EXAMPLES / "full_stack.tac"), "application")
    (root,) = list(service.IServiceCollection(application))
    assert root.name == "pxestack"
    names = {child.name for child in root}
    assert {"dhcp", "tftp", "http", "provision"} <= names
    assert not root.running  # loading the .tac starts and binds nothing

    # DHCP answers through the provisioning layer's state-driven policy.
    dhcp = root.getServiceNamed("dhcp")
    assert isinstance(dhcp.policy, ProvisioningPolicy)
    assert dhcp.policy.script_url == "http://198.18.0.1:8080/ipxebootscript"
    # The cluster directory (a git repository) was created under the config's state dir.
    assert (tmp_path / "pxestack-state" / "cluster" / ".git").is_dir()

    # The HTTP site has the provisioning endpoints mounted.
    site = root.getServiceNamed("http").site
    for path in (b"/ipxebootscript", b"/ignition", b"/installer-ignition", b"/script/x"):
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        resource = getChildForRequest(site.resource, request)
        assert type(resource).__module__ == "pxestack.provision.api", path


def test_the_example_config_has_one_profile_per_flow(tac_config):
    config = load_config_file(tac_config)
    assert config.provision is not None
    flows = [flow_for(p).name for p in config.provision.profiles]
    assert flows == ["flatcar-disk", "flatcar-disk", "flatcar-pxe", "fcos-disk", "generic-pxe"]
    for address in (config.provision.network.ip_range.start, config.provision.network.ip_range.end):
        assert address.packed[:2] in (b"\xc6\x12", b"\xc6\x13")  # 198.18.0.0/15
