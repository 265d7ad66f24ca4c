"""Builders for the provisioning tests: config, git-backed store, in-memory HTTP client."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.web.resource import Resource

from pxestack.config import load_config
from pxestack.config.provision import ProvisionConfig
from pxestack.provision.api import ProvisioningApi
from pxestack.provision.provisioner import Provisioner, callback_key
from pxestack.provision.store import FileHostStore

BASE_URL = "http://198.18.0.1:8080"
ADMIN_TOKEN = "admin-secret-token-0123456789abcdef"


def provision_config(cluster_dir: Path, **overrides: Any) -> ProvisionConfig:
    """A ``provision:`` section with two small profiles and a tiny address range."""
    section: dict[str, Any] = {
        "cluster_dir": str(cluster_dir),
        "default_os_version": "3975.2.0",
        "network": {
            "ip_range": {"start": "198.18.10.10", "end": "198.18.10.200"},
            "subnet_size": 24,
            "subnet_gateway": "198.18.10.1",
            "dns": ["198.18.10.1"],
        },
        "profiles": [
            {"name": "core", "quantity": 3, "tags": ["role=core"]},
            {"name": "worker", "quantity": 2, "tags": ["role=worker"]},
        ],
        "templates_env": {"ssh_authorized_keys": ["ssh-ed25519 AAAAC3Nza test@example"]},
    }
    section.update(overrides)
    config = load_config({"provision": section})
    assert config.provision is not None
    return config.provision


@dataclass
class Response:
    """What a test needs from an HTTP answer."""

    code: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None


class Client:
    """Drives a twisted.web resource in memory through treq's StubTreq."""

    def __init__(self, resource: Resource) -> None:
        self.stub = StubTreq(resource)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> Response:
        data: bytes | None
        if isinstance(body, Mapping | list):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        all_headers = {k.encode(): [v.encode()] for k, v in (headers or {}).items()}
        if token is not None:
            all_headers[b"Authorization"] = [b"Bearer " + token.encode()]
        results: list[Any] = []
        d = self.stub.request(method, BASE_URL + path, data=data, headers=all_headers)
        d.addCallback(
            lambda r: treq.content(r).addCallback(lambda b: Response(r.code, r.headers, b))
        )
        d.addBoth(results.append)
        self.stub.flush()
        assert results, f"no answer to {method} {path}"
        if not isinstance(results[0], Response):
            results[0].raiseException()
        return results[0]


@dataclass
class Rig:
    """Everything of one provisioning installation in a temporary directory."""

    config: ProvisionConfig
    store: FileHostStore
    provisioner: Provisioner
    api: ProvisioningApi
    client: Client


def make_rig(
    cluster_dir: Path,
    *,
    admin_token: str | None = ADMIN_TOKEN,
    compat: bool = False,
    images: Resource | None = None,
    **overrides: Any,
) -> Rig:
    """A config, a git-backed store, the provisioner and an in-memory HTTP client."""
    config = provision_config(cluster_dir, **overrides)
    store = FileHostStore(cluster_dir)
    provisioner = Provisioner(config, store, base_url=BASE_URL, key=callback_key(cluster_dir))
    api = ProvisioningApi(
        provisioner,
        admin_token=admin_token,
        images=images,
        accept_unauthenticated_callbacks=compat,
        max_body_bytes=4096,
        max_json_depth=8,
    )
    return Rig(config, store, provisioner, api, Client(api.root()))


def host_data(serial: str, macs: list[str], nic: str = "eno1") -> dict[str, Any]:
    """mayu's host-data POST body."""
    return {
        "Serial": serial,
        "NetDevs": [{"Name": f"eno{i + 1}", "MacAddress": mac} for i, mac in enumerate(macs)],
        "ConnectedNIC": nic,
        "IPMIAddress": "198.18.20.5",
    }


def token_from_script(script: str) -> str:
    """The per-host callback token rendered into an installer script."""
    for line in script.splitlines():
        if line.startswith("TOKEN="):
            return line.split("=", 1)[1].strip("'")
    raise AssertionError("no TOKEN= line in the installer script")
