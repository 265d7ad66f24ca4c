"""The provisioning API's route table, read from its OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from provision_helpers import make_rig

from pxestack.provision import api as api_module
from pxestack.provision.routes import (
    Auth,
    Found,
    RouteError,
    RouteTable,
    WrongMethod,
    auth_of,
    load_document,
    load_routes,
)

ADMIN = [{"adminToken": []}, {"clientCertificate": []}]
MACHINE = [{"hostToken": []}, {"hostTokenQuery": []}, {"adminToken": []}]
DOCUMENT = {
    "openapi": "3.1.0",
    "security": [],
    "paths": {
        "/admin/hosts": {
            "get": {"operationId": "listHosts", "security": ADMIN},
            "post": {"operationId": "addHost", "security": ADMIN, "requestBody": {}},
        },
        "/admin/host/{serial}": {
            "get": {"operationId": "getHost", "security": ADMIN},
        },
        "/admin/host/{serial}/set_installed": {
            "put": {"operationId": "setInstalled", "security": MACHINE},
        },
        "/admin/host/hosts": {"get": {"operationId": "literal"}},
        "/images/{file}": {"get": {"operationId": "image"}, "head": {"operationId": "headImage"}},
        "/other": {"get": {"operationId": "notMine"}},
    },
}


def table(segment: str) -> RouteTable:
    return RouteTable(r for r in load_routes(DOCUMENT, ["admin", "images"])
                      if r.first_segment == segment)


def test_only_the_paths_under_the_given_segments_are_routes() -> None:
    ids = {r.operation_id for r in load_routes(DOCUMENT, ["admin", "images"])}
    assert "notMine" not in ids
    assert {"listHosts", "addHost", "getHost", "setInstalled", "image", "headImage"} <= ids


def test_security_maps_to_the_three_rules_and_others_are_refused() -> None:
    assert auth_of([], "op") is Auth.NONE
    assert auth_of(ADMIN, "op") is Auth.ADMIN
    assert auth_of(MACHINE, "op") is Auth.MACHINE
    # The document must say everything a rule accepts: a partial list is refused.
    with pytest.raises(RouteError, match="op: security"):
        auth_of([{"adminToken": []}], "op")
    with pytest.raises(RouteError, match="op: security"):
        auth_of([{"hostToken": []}, {"adminToken": []}], "op")
    with pytest.raises(RouteError, match="op: security"):
        auth_of([{"dashboardSession": []}], "op")
    with pytest.raises(RouteError, match="op: security"):
        auth_of([{"clientCertificate": []}], "op")
    with pytest.raises(RouteError):
        auth_of("adminToken", "op")


def test_lookup_finds_the_route_and_its_parameters() -> None:
    found = table("admin").lookup(b"GET", ["admin", "host", "sn-1"])
    assert isinstance(found, Found)
    assert found.route.operation_id == "getHost" and found.params == {"serial": "sn-1"}
    assert found.route.auth is Auth.ADMIN
    machine = table("admin").lookup(b"PUT", ["admin", "host", "sn-1", "set_installed"])
    assert isinstance(machine, Found) and machine.route.auth is Auth.MACHINE


def test_a_literal_path_wins_over_a_parameter() -> None:
    found = table("admin").lookup(b"GET", ["admin", "host", "hosts"])
    assert isinstance(found, Found) and found.route.operation_id == "literal"


def test_a_wrong_method_names_the_allowed_ones_and_head_follows_get() -> None:
    wrong = table("admin").lookup(b"DELETE", ["admin", "hosts"])
    assert wrong == WrongMethod((b"GET", b"HEAD", b"POST"))
    head = table("admin").lookup(b"HEAD", ["admin", "hosts"])
    assert isinstance(head, Found) and head.route.operation_id == "listHosts"
    own_head = table("images").lookup(b"HEAD", ["images", "vmlinuz"])
    assert isinstance(own_head, Found) and own_head.route.operation_id == "headImage"


def test_unknown_paths_and_empty_parameters_are_no_route() -> None:
    admin = table("admin")
    assert admin.lookup(b"GET", ["admin", "nothing"]) is None
    assert admin.lookup(b"GET", ["admin", "host", ""]) is None
    assert admin.lookup(b"GET", ["admin", "host", "sn", "extra", "more"]) is None
    assert admin.guarded_by_admin and not table("images").guarded_by_admin


def test_a_body_is_admitted_only_for_a_method_with_a_documented_body() -> None:
    assert table("admin").body_limit(b"POST", 4096) == 4096
    assert table("admin").body_limit(b"GET", 4096) == 0
    assert table("admin").body_limit(b"PUT", 4096) == 0


@given(st.lists(st.text(max_size=12), max_size=6))
def test_any_path_gets_a_route_a_wrong_method_or_nothing(segments: list[str]) -> None:
    result = table("admin").lookup(b"GET", ["admin", *segments])
    assert result is None or isinstance(result, Found | WrongMethod)
    if isinstance(result, Found):
        assert result.route.match(["admin", *segments]) == result.params
        assert all(result.params.values())


def test_the_shipped_document_is_the_one_in_docs() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
    import yaml

    assert load_document() == yaml.safe_load(docs.read_text(encoding="utf-8"))


def test_an_operation_no_resource_answers_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = make_rig(tmp_path / "cluster")
    extra = load_routes(
        {"paths": {"/admin/new": {"get": {"operationId": "brandNew", "security": ADMIN}}}},
        ["admin"],
    )
    monkeypatch.setattr(rig.api, "routes", (*rig.api.routes, *extra))
    with pytest.raises(RouteError, match=r"brandNew .* AdminResource does not answer it"):
        rig.api.children()


def test_an_answer_for_an_undocumented_operation_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = make_rig(tmp_path / "cluster")
    operations = {**api_module.AdminResource.operations, "retiredOperation": "list_hosts"}
    monkeypatch.setattr(api_module.AdminResource, "operations", operations)
    with pytest.raises(RouteError, match="retiredOperation"):
        rig.api.children()


@pytest.mark.filterwarnings(
    # twisted.web's own 405/501 pages, which the requests provoke on purpose
    "ignore:twisted.web.resource._UnsafeErrorPage.__init__ was deprecated:DeprecationWarning"
)
def test_the_api_answers_by_the_document(tmp_path: Path) -> None:
    """Through the resources: a documented path with another method is refused as a method
    (405 with Allow, 501 for methods twisted.web does not know), an unknown admin path is
    401 for a stranger and 404 for an admin, HEAD follows GET, admin auth comes first."""
    from provision_helpers import ADMIN_TOKEN

    rig = make_rig(tmp_path / "cluster")
    client = rig.client
    wrong = client.request("POST", "/admin/health", b"{}", token=ADMIN_TOKEN)
    assert wrong.code == 405
    assert set((wrong.header("allow") or "").replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert client.request("DELETE", "/admin/hosts", token=ADMIN_TOKEN).code == 501
    assert client.request("PATCH", "/admin/hosts", token=ADMIN_TOKEN).code == 501
    assert client.request("GET", "/admin/no-such-thing").code == 401
    unknown = client.request("GET", "/admin/no-such-thing", token=ADMIN_TOKEN)
    assert (unknown.code, unknown.body) == (404, b"not found\n")
    assert client.request("GET", "/admin/hosts").code == 401
    head = client.request("HEAD", "/admin/hosts", token=ADMIN_TOKEN)
    assert (head.code, head.body) == (200, b"")
    assert client.request("GET", "/first-stage-script").code == 404
    assert client.request("POST", "/ipxebootscript", b"x").code == 405
