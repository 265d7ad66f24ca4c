"""Who acted: every audit commit made through the API names its actor as git author.

In memory (treq's StubTreq, client address 127.0.0.1): the single token is ``admin``,
named tokens are their names, a trusted network is ``trusted:<address>``, machine
callbacks are ``machine:<serial>``, an open loopback API is ``local:<address>``; the
committer stays the configured identity.  Over real TLS: tests/service/test_https_admin.py.
"""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pygit2
from provision_helpers import ADMIN_TOKEN, Client, host_data, make_rig, token_from_script

from pxestack.provision.api import ProvisioningApi
from pxestack.provision.audit import author_identity

OPS_TOKEN = "ops-token-" + "0123456789abcdef" * 2


def last_commit(cluster: Path) -> pygit2.Commit:
    repo = pygit2.Repository(str(cluster))
    commit: pygit2.Commit = repo.head.peel(pygit2.Commit)
    return commit


def api_with(rig, **kwargs) -> Client:  # type: ignore[no-untyped-def]
    api = ProvisioningApi(rig.provisioner, admin_token=kwargs.pop("admin_token", None),
                          max_body_bytes=4096, max_json_depth=8, **kwargs)
    return Client(api.root())


def test_tokens_and_machine_callbacks_author_their_commits(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster"
    rig = make_rig(cluster)
    script = rig.client.request("GET", "/first-stage-script/sn-1")
    assert last_commit(cluster).author.name == "machine:sn-1"
    token = token_from_script(script.body.decode())
    assert rig.client.request("POST", "/final-ignition-config.json",
                              host_data("sn-1", ["52:54:00:00:00:01"]), token=token).code == 200
    assert last_commit(cluster).author.name == "machine:sn-1"

    assert rig.client.request("PUT", "/admin/host/sn-1/set_provider_id",
                              {"ProviderId": "p1"}, token=ADMIN_TOKEN).code == 202
    commit = last_commit(cluster)
    assert (commit.author.name, commit.author.email) == ("admin", "admin@pxestack.invalid")
    assert commit.committer.name == "mayu commiter"

    named = api_with(rig, admin_tokens={"ops-carol": OPS_TOKEN, "admin": ADMIN_TOKEN})
    assert named.request("PUT", "/admin/host/sn-1/set_provider_id", {"ProviderId": "p2"},
                         token=OPS_TOKEN).code == 202
    assert last_commit(cluster).author.name == "ops-carol"
    assert named.request("PUT", "/admin/host/sn-1/set_provider_id", {"ProviderId": "p3"},
                         token="wrong-" + OPS_TOKEN).code == 401
    # The machine's own callback, even on an API that also knows admin tokens.
    assert named.request("PUT", "/admin/host/sn-1/set_installed?token=" + token).code == 202
    assert last_commit(cluster).author.name == "machine:sn-1"


def test_trusted_networks_and_the_open_loopback_api(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster"
    rig = make_rig(cluster)
    rig.client.request("GET", "/first-stage-script/sn-1")
    trusted = api_with(rig, trusted_networks=[ip_network("127.0.0.0/8")])
    assert trusted.request("PUT", "/admin/host/sn-1/set_cabinet", {"Cabinet": 2}).code == 202
    assert last_commit(cluster).author.name == "trusted:127.0.0.1"
    elsewhere = api_with(rig, trusted_networks=[ip_network("10.0.0.0/8")])
    assert elsewhere.request("PUT", "/admin/host/sn-1/set_cabinet", {"Cabinet": 3}).code == 401
    open_api = api_with(rig)
    assert open_api.request("PUT", "/admin/host/sn-1/set_cabinet", {"Cabinet": 4}).code == 202
    assert last_commit(cluster).author.name == "local:127.0.0.1"


def test_an_admin_listener_confines_the_admin_api(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster"
    rig = make_rig(cluster)
    script = rig.client.request("GET", "/first-stage-script/sn-1")
    token = token_from_script(script.body.decode())
    confined = api_with(rig, admin_token=ADMIN_TOKEN, admin_listener_only=True)
    refused = confined.request("GET", "/admin/hosts", token=ADMIN_TOKEN)
    assert refused.code == 403
    assert b"admin_listen" in refused.body
    # Machine callbacks under /admin/host are not admin requests: they keep working (409:
    # this host has not sent its host data yet; not 401 or 403).
    assert confined.request("PUT", "/admin/host/sn-1/set_installed?token=" + token).code == 409


def test_author_identities_are_safe() -> None:
    assert author_identity("cert:CN=ops-alice,O=Example") == (
        "cert:CN=ops-alice,O=Example", "cert-cn-ops-alice-o-example@pxestack.invalid")
    name, email = author_identity("cert:CN=evil <x@y>\nAuthor: z")
    assert "<" not in name and ">" not in name and "\n" not in name
    assert email == "cert-cn-evil-x-y-author-z@pxestack.invalid"
