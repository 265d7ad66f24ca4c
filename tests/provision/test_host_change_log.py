"""The operator's log: one info line per enrolment, state change and admin action, naming
the machine, what happened and who did it; no token in any of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provision_helpers import ADMIN_TOKEN, Client, host_data, provision_config, token_from_script
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from pxestack.bootevents import BootEventRecorder
from pxestack.metrics import Metrics, ObservedHostStore, boot_steps, log_host_change
from pxestack.provision.api import ProvisioningApi
from pxestack.provision.hoststore import CURRENT_ACTOR
from pxestack.provision.provisioner import Provisioner, callback_key
from pxestack.provision.store import FileHostStore

OPS_TOKEN = "ops-token-" + "0123456789abcdef" * 2


def rig(cluster: Path) -> tuple[Client, Provisioner]:
    """The provisioning API over the store wired as provisioning_extensions wires it."""
    store = FileHostStore(cluster)
    events = BootEventRecorder()
    hosts = ObservedHostStore(
        store, [Metrics(process_metrics=False).host_changed, boot_steps(events),
                log_host_change], actor=CURRENT_ACTOR.get)
    provisioner = Provisioner(provision_config(cluster), hosts,
                              base_url="http://198.18.0.1:8080", key=callback_key(cluster))
    api = ProvisioningApi(provisioner, admin_token=None,
                          admin_tokens={"ops-carol": OPS_TOKEN, "admin": ADMIN_TOKEN},
                          max_body_bytes=4096, max_json_depth=8)
    return Client(api.root()), provisioner


class Captured:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Captured:
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def info(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.info]


def test_enrolment_state_changes_and_admin_actions_each_have_an_info_line(
    tmp_path: Path,
) -> None:
    client, _ = rig(tmp_path / "cluster")
    with Captured() as log:
        script = client.request("GET", "/first-stage-script/sn-1")
        token = token_from_script(script.body.decode())
        assert client.request("POST", "/final-ignition-config.json",
                              host_data("sn-1", ["52:54:00:00:00:01"]), token=token).code == 200
        assert client.request("PUT", "/admin/host/sn-1/set_installed?token=" + token).code == 202
        assert client.request("PUT", "/admin/host/sn-1/set_state", {"State": "configured"},
                              token=OPS_TOKEN).code == 202
    lines = log.info()
    assert "host sn-1 enrolled on its first contact: profile core, state unknown " \
           "(as machine:sn-1)" in lines
    assert "host sn-1 state unknown -> installing (by machine:sn-1)" in lines
    assert "host sn-1 state installing -> installed (by machine:sn-1)" in lines
    assert "host sn-1 state installed -> configured (by ops-carol)" in lines
    assert "admin action set_state on host sn-1 by ops-carol: done" in lines
    # The machine's own callback is a state change, not an admin action.
    assert not [line for line in lines if line.startswith("admin action set_installed")]
    # Fields for JSON logs, and no secret anywhere in the events.
    changed = [e for e in log.events if e.get("state") == "configured"]
    assert changed and changed[0]["serial"] == "sn-1" and changed[0]["actor"] == "ops-carol"
    assert not [e for e in log.events if token in repr(e) or OPS_TOKEN in repr(e)]


def test_a_pending_machine_is_logged_as_waiting_then_enrolled_by_its_approver(
    tmp_path: Path,
) -> None:
    client, provisioner = rig(tmp_path / "cluster")
    with Captured() as log:
        # What the first contact does under provision.enrolment: approve.
        provisioner.first_contact("sn-7", pending=True)
        assert client.request("PUT", "/admin/host/sn-7/approve", token=OPS_TOKEN).code == 202
    lines = log.info()
    assert ("host sn-7 recorded as pending on its first contact: it waits for approval "
            "(pxestack ctl approve sn-7)") in lines
    assert any(line.startswith("host sn-7 enrolled: approved by ops-carol, profile ")
               for line in lines), lines
    assert "admin action approve on host sn-7 by ops-carol: done" in lines
