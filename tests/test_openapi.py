"""docs/openapi.yaml stays true to the HTTP service pxestack actually builds.

* The document is valid OpenAPI 3.1 (openapi-spec-validator).
* Paths and methods: the first path segments are compared with the children mounted on the
  site that :func:`pxestack.app.build_root_service` builds for a sample configuration; the
  provisioning resources route by the document itself, so their route tables must be its
  operations; the other leaf resources' ``render_<METHOD>`` tables are compared with the
  documented methods, the admin API's action tables (``FIELD_SETTERS``,
  ``MACHINE_ACTIONS``) with the documented actions; then every documented (path, method)
  is sent to the site in memory and must be routed, and every undocumented method on a
  documented path must not be.
* A boot-and-administer scenario checks that each answer's status code is documented for
  its operation and that JSON bodies match the documented schemas.
* Fuzzed queries and bodies (hypothesis, bounded example counts) on the machine-facing
  endpoints and the admin mutations get documented status codes, never a 500.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import treq
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from treq.testing import StubTreq
from twisted.web.resource import Resource

from pxestack.app import build_root_service
from pxestack.config import load_config
from pxestack.http.site import ASSETS_SEGMENT
from pxestack.provision.api import FIELD_SETTERS, MACHINE_ACTIONS, SEGMENTS, synchronous_runner

pytestmark = pytest.mark.filterwarnings(
    # twisted.web's own 405/501 pages, which the probes provoke on purpose
    "ignore:twisted.web.resource._UnsafeErrorPage.__init__ was deprecated:DeprecationWarning"
)

SPEC_FILE = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
ADMIN_TOKEN = "openapi-test-admin-token-0123456789ab"
OS_VERSION = "3975.2.0"
SERIAL = "sn-openapi"
#: Methods a probe tries on every documented path.
PROBE_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
#: Methods an OpenAPI path item may document (the ones the comparison looks at).
SPEC_METHODS = ("get", "head", "post", "put", "delete", "patch", "options", "trace")


# -- the document ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    """docs/openapi.yaml, parsed."""
    document = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def documented_operations(spec: Mapping[str, Any]) -> dict[str, set[str]]:
    """Path template -> upper-case methods the document lists for it."""
    return {
        path: {method.upper() for method in item if method in SPEC_METHODS}
        for path, item in spec["paths"].items()
    }


def resolve(node: Any, spec: Mapping[str, Any]) -> Any:
    """*node* with every local ``$ref`` replaced by what it points at (recursively)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target, spec)
        return {key: resolve(value, spec) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, spec) for value in node]
    return node


def test_the_document_is_valid_openapi_3_1(spec):
    validate_openapi(spec)
    assert spec["openapi"].startswith("3.1")


def test_every_operation_has_a_unique_operation_id_and_documented_responses(spec):
    seen: dict[str, str] = {}
    for path, methods in documented_operations(spec).items():
        for method in methods:
            operation = spec["paths"][path][method.lower()]
            op_id = operation["operationId"]
            assert op_id not in seen, f"{op_id} used by {seen.get(op_id)} and {path}"
            seen[op_id] = path
            assert operation["responses"], f"{method} {path} documents no response"


# -- the service built from a sample configuration -------------------------------------------


@dataclass
class Answer:
    """One HTTP answer from the in-memory site."""

    code: int
    headers: Any
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of header *name*, or None."""
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None

    @property
    def media_type(self) -> str:
        """The Content-Type without parameters."""
        return (self.header("content-type") or "").split(";")[0].strip()


class Stack:
    """The HTTP site of a full pxestack service tree, driven in memory."""

    def __init__(self, tmp_path: Path) -> None:
        assets = tmp_path / "assets"
        assets.mkdir()
        (assets / "ipxe.efi").write_bytes(b"MZ" + bytes(1022))
        images = tmp_path / "images" / OS_VERSION
        images.mkdir(parents=True)
        (images / "flatcar_production_pxe.vmlinuz").write_bytes(bytes(range(256)) * 8)
        config = load_config(
            {
                "http": {"listen": "127.0.0.1:0", "assets_root": str(assets)},
                "provision": {
                    "cluster_dir": str(tmp_path / "cluster"),
                    "images_dir": str(tmp_path / "images"),
                    "default_os_version": OS_VERSION,
                    "network": {
                        "ip_range": {"start": "198.18.10.10", "end": "198.18.10.200"},
                        "subnet_size": 24,
                        "subnet_gateway": "198.18.10.1",
                        "dns": ["198.18.10.1"],
                    },
                    "profiles": [{"name": "core", "quantity": 5, "tags": ["role=core"]}],
                    "api": {"token": ADMIN_TOKEN, "max_body_bytes": 4096},
                    # The probe enrols from loopback without DHCP: every first contact enrols.
                    "enrolment": "open",
                    "first_contact_rate": 0,
                },
            }
        )
        self.service = build_root_service(config)
        self.site = self.service.getServiceNamed("http").site
        self.root: Resource = self.site.resource
        # Store work normally runs in the provisioning thread pool; in memory it runs inline.
        self.root.children[b"admin"].api.run = synchronous_runner
        self.stub = StubTreq(self.root)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Mapping[str, Any] | None = None,
        *,
        token: str | None = ADMIN_TOKEN,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request through the site and collect the whole answer."""
        data = json.dumps(body).encode() if isinstance(body, Mapping) else body
        raw = {name.encode(): [value.encode()] for name, value in (headers or {}).items()}
        if token is not None:
            raw[b"Authorization"] = [b"Bearer " + token.encode()]
        results: list[Any] = []
        d = self.stub.request(method, "http://127.0.0.1:8080" + path, data=data, headers=raw)
        d.addCallback(lambda r: treq.content(r).addCallback(lambda b: Answer(r.code, r.headers, b)))
        d.addBoth(results.append)
        self.stub.flush()
        assert results, f"no answer to {method} {path}"
        if not isinstance(results[0], Answer):
            results[0].raiseException()
        answer: Answer = results[0]
        return answer


@pytest.fixture
def stack(tmp_path) -> Stack:
    """A freshly built service tree with one enrolled host, ``SERIAL``."""
    built = Stack(tmp_path)
    assert built.request("GET", f"/first-stage-script/{SERIAL}").code == 200
    return built


# -- paths and methods -----------------------------------------------------------------------

#: Sample values for the path parameters (the host exists, the files exist).
SAMPLE_PARAMETERS = {"serial": SERIAL, "file": "vmlinuz", "path": "ipxe.efi"}


def concrete(template: str) -> str:
    """A documented path template with sample values filled in."""
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PARAMETERS[m.group(1)], template)


def is_unrouted(answer: Answer) -> bool:
    """Whether the site answered "no such route / method" (not an answer of an endpoint).

    twisted.web answers a method a resource has no ``render_<METHOD>`` for with 405 (GET,
    HEAD, POST) or 501 (other methods); the resources' own dispatchers answer unknown
    sub-paths with ``404 not found`` and unknown admin actions with ``404 unknown action``.
    """
    if answer.code in (405, 501):
        return True
    return answer.code == 404 and (
        answer.body.strip() == b"not found" or answer.body.startswith(b"unknown action")
    )


def first_segment(template: str) -> str:
    """The first path segment of a template ("{path}" for the bare asset form)."""
    return template.lstrip("/").split("/")[0]


def test_documented_first_segments_are_the_mounted_children(spec, stack):
    mounted = {name.decode() for name in stack.root.children} | {ASSETS_SEGMENT.decode()}
    documented = {first_segment(path) for path in spec["paths"]} - {"{path}"}
    assert documented == mounted
    assert "/{path}" in spec["paths"], "the bare asset form (SiteRoot.getChild) is undocumented"


def test_documented_methods_match_each_leaf_resources_render_methods(spec, stack):
    operations = documented_operations(spec)
    for name, resource in stack.root.children.items():
        own = {
            attr.removeprefix("render_")
            for attr in dir(type(resource))
            if attr.startswith("render_")
            and attr.removeprefix("render_").isupper()
            # render_HEAD (twisted's, or the provisioning base class's, which answers
            # from render_GET or refuses) is not the resource's own method
            and attr != "render_HEAD"
        }
        if not own:
            continue  # dispatches in render(); covered by the probes below
        documented: set[str] = set()
        for path, methods in operations.items():
            if first_segment(path) == name.decode():
                documented |= methods
        if "GET" in own:
            documented.discard("HEAD")  # twisted.web answers HEAD from render_GET
            own.discard("HEAD")
        assert documented == own, f"/{name.decode()}: documented {documented}, code {own}"


def test_documented_admin_actions_include_every_action_table_entry(spec):
    documented = {
        path.rsplit("/", 1)[1]
        for path, item in spec["paths"].items()
        if path.startswith("/admin/host/{serial}/") and "put" in item
    }
    assert set(FIELD_SETTERS) | set(MACHINE_ACTIONS) <= documented


def test_the_provisioning_routes_are_the_documents_operations(spec, stack):
    """The provisioning resources route by the document itself (pxestack.provision.routes):
    each documented operation under their first segments is answered by a method of the
    resource mounted there, and no resource has a route the document lacks."""
    routed: dict[tuple[str, str], str] = {}
    for resource in stack.root.children.values():
        for route in getattr(resource, "routes", ()):
            name = resource.operations[route.operation_id]
            assert callable(getattr(resource, name)), f"{route.operation_id}: no {name}"
            routed[(route.template, route.method.decode())] = route.operation_id
    documented = {
        (path, method): spec["paths"][path][method.lower()]["operationId"]
        for path, methods in documented_operations(spec).items()
        if first_segment(path) in SEGMENTS
        for method in methods
    }
    assert routed == documented


def probe_cases(spec: Mapping[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(path template, method, documented?) for every probe method on every documented path."""
    for path, methods in documented_operations(spec).items():
        for method in PROBE_METHODS:
            if method == "HEAD" and "HEAD" not in methods:
                # Implied by GET (see the document's description); a HEAD answer has no
                # body, so an unrouted one cannot be told from an endpoint's 404 anyway.
                continue
            yield path, method, method in methods


def test_every_documented_operation_is_routed_and_nothing_else_is(spec, stack):
    wrong = []
    for path, method, documented in probe_cases(spec):
        answer = stack.request(method, concrete(path), b"{}" if method in ("POST", "PUT") else None)
        if documented == is_unrouted(answer):
            wrong.append(
                f"{method} {path}: documented={documented}, got {answer.code} {answer.body[:60]!r}"
            )
    assert not wrong, "\n".join(wrong)


def test_the_probe_recognises_an_unknown_action_and_an_unknown_admin_path(stack):
    assert is_unrouted(stack.request("PUT", f"/admin/host/{SERIAL}/no_such_action", b"{}"))
    assert is_unrouted(stack.request("GET", "/admin/no-such-thing"))
    assert is_unrouted(stack.request("DELETE", f"/admin/host/{SERIAL}/history"))


# -- answers against the documented codes and schemas ----------------------------------------


def match_template(spec: Mapping[str, Any], path: str) -> str:
    """The documented template a concrete *path* belongs to (literal paths win)."""
    path = path.split("?")[0]
    best: tuple[int, str] | None = None
    for template in spec["paths"]:
        pattern = "^" + re.sub(r"\\\{path\\\}", ".+", re.escape(template)) + "$"
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", pattern)
        if re.match(pattern, path):
            literal = len(re.sub(r"\{\w+\}", "", template))
            if best is None or literal > best[0]:
                best = (literal, template)
    assert best is not None, f"{path} matches no documented path"
    return best[1]


def check_answer(spec: Mapping[str, Any], method: str, path: str, answer: Answer) -> None:
    """The status is documented for the operation; a JSON body matches its schema."""
    template = match_template(spec, path)
    operation = spec["paths"][template][method.lower()]
    responses = operation["responses"]
    assert str(answer.code) in responses, (
        f"{method} {template} answered {answer.code}, documented {sorted(responses)}"
    )
    documented = resolve(responses[str(answer.code)], spec)
    content = documented.get("content", {})
    if not content:
        return
    media_type = answer.media_type if answer.media_type in content else "*/*"
    assert media_type in content, (
        f"{method} {template} {answer.code}: {answer.media_type} not in {sorted(content)}"
    )
    schema = content[media_type].get("schema")
    if schema is None or not (media_type == "application/json" or media_type.startswith("text/")):
        return  # a file's bytes: nothing to validate
    value: Any = answer.body.decode("utf-8")
    if answer.media_type == "application/json":
        value = json.loads(value)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(
        value
    )


def schema_of(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A component schema with its references resolved."""
    resolved: dict[str, Any] = resolve(spec["components"]["schemas"][name], spec)
    return resolved


def test_head_on_the_post_only_host_data_endpoint_is_refused_as_a_method(stack):
    assert stack.request("HEAD", "/final-ignition-config.json").code == 405


def test_a_host_installs_and_boots_with_documented_answers(spec, stack):
    def call(method: str, path: str, body: Any = None, **kwargs: Any) -> Answer:
        answer = stack.request(method, path, body, **kwargs)
        check_answer(spec, method, path, answer)
        return answer

    assert call("GET", "/healthz", token=None).body == b"ok\n"
    call("GET", "/healthz?format=json", token=None)
    assert call("GET", "/admin/hosts", token=None).code == 401
    assert call("GET", "/admin/hosts", token="wrong").code == 401

    script = call("GET", f"/first-stage-script/{SERIAL}", token=None).body.decode()
    host_token = next(
        line.split("=", 1)[1].strip("'")
        for line in script.splitlines()
        if line.startswith("TOKEN=")
    )
    host_data = {
        "Serial": SERIAL,
        "NetDevs": [{"Name": "eno1", "MacAddress": "52:54:00:00:00:01"}],
        "ConnectedNIC": "eno1",
        "IPMIAddress": "198.18.20.5",
    }
    jsonschema.validate(host_data, schema_of(spec, "HostData"))
    assert call("POST", "/final-ignition-config.json", host_data, token=None).code == 401
    assert call("POST", "/final-ignition-config.json", host_data, token=host_token).code == 200

    record = call("GET", f"/admin/host/{SERIAL}")
    assert json.loads(record.body)["State"] == "installing"
    stale = record.header("etag")
    assert stale is not None
    assert call("PUT", f"/admin/host/{SERIAL}/set_installed", token=host_token).code == 202
    stale_write = call(
        "PUT", f"/admin/host/{SERIAL}/set_cabinet", {"Cabinet": 2}, headers={"If-Match": stale}
    )
    assert stale_write.code == 412
    done = call(
        "PUT",
        f"/admin/host/{SERIAL}/boot_complete",
        {"FlatcarVersion": OS_VERSION},
        token=host_token,
    )
    assert done.code == 202 and done.body == b"" and done.header("etag")

    hosts = json.loads(call("GET", "/admin/hosts").body)
    assert [h["State"] for h in hosts if h["Serial"] == SERIAL] == ["running"]
    assert call("GET", f"/first-stage-script/{SERIAL}", token=None).code == 409
    assert call("PUT", f"/admin/host/{SERIAL}/set_state", {"State": "bogus"}).code == 400
    assert call("PUT", f"/admin/host/{SERIAL}/set_state", {"State": "configured"}).code == 202
    assert call("GET", "/admin/host/no-such-host").body == b"host doesn't exist\n"
    too_big = {"Overrides": {"x": "y" * 5000}}
    assert call("PUT", f"/admin/host/{SERIAL}/override", too_big).code == 413
    history = json.loads(call("GET", f"/admin/host/{SERIAL}/history").body)
    assert history, "every change above is a commit"
    call("GET", "/admin/health")
    call("GET", "/admin/mayu_config")
    assert b"pxestack_" in call("GET", "/metrics", token=None).body


def test_boot_files_answer_with_documented_codes(spec, stack):
    def call(method: str, path: str, **kwargs: Any) -> Answer:
        answer = stack.request(method, path, token=None, **kwargs)
        check_answer(spec, method, path, answer)
        return answer

    assert call("GET", "/ipxebootscript").body.startswith(b"#!ipxe")
    assert call("GET", f"/ipxebootscript?serial={SERIAL}").body.startswith(b"#!ipxe")
    whole = call("GET", f"/images/{SERIAL}/vmlinuz")
    assert whole.code == 200 and len(whole.body) == 2048
    assert call("GET", "/images/vmlinuz", headers={"Range": "bytes=0-9"}).code == 206
    assert call("GET", "/images/vmlinuz", headers={"Range": "bytes=9999-"}).code == 416
    etag = whole.header("etag")
    assert etag is not None
    assert call("GET", "/images/vmlinuz", headers={"If-None-Match": etag}).code == 304
    assert call("HEAD", f"/images/{SERIAL}/vmlinuz").code == 200
    assert call("GET", "/images/not-a-flow-file").code == 404
    assert call("GET", "/assets/ipxe.efi").body.startswith(b"MZ")
    assert call("GET", "/ipxe.efi").code == 200
    assert call("HEAD", "/ipxe.efi").code == 200
    assert call("GET", "/assets/../etc/passwd").code == 404


# -- fuzzed requests get documented answers --------------------------------------------------

#: Text a machine or a script could put in a serial, a query value or a JSON string.
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
#: Bodies: a JSON object with mayu's keys and junk values, any JSON, or raw bytes.
_BODIES = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            key: _JSON_VALUES
            for key in (
                "Serial",
                "NetDevs",
                "ConnectedNIC",
                "IPMIAddress",
                "State",
                "Overrides",
                "FleetMetadata",
                "Cabinet",
                "IPMIAddr",
                "ProviderId",
            )
        },
    ).map(lambda value: json.dumps(value).encode()),
    _JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
)
_ACTIONS = st.sampled_from(
    sorted({*FIELD_SETTERS, *MACHINE_ACTIONS, "set_state", "mark_fresh", "override"})
)


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory) -> Stack:
    """One service tree shared by the fuzzing examples (they only add hosts)."""
    built = Stack(tmp_path_factory.mktemp("openapi-fuzz"))
    assert built.request("GET", f"/first-stage-script/{SERIAL}").code == 200
    return built


def quoted(text: str) -> str:
    """*text* percent-encoded for a path segment or query value."""
    return urllib.parse.quote(text, safe="")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(serial=_TEXT, uuid=_TEXT, mac=_TEXT)
def test_boot_script_queries_get_documented_answers(spec, fuzz_stack, serial, uuid, mac):
    path = f"/ipxebootscript?serial={quoted(serial)}&uuid={quoted(uuid)}&mac={quoted(mac)}"
    answer = fuzz_stack.request("GET", path, token=None)
    check_answer(spec, "GET", path, answer)
    assert answer.code != 500, answer.body


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_BODIES)
def test_host_data_bodies_get_documented_answers(spec, fuzz_stack, body):
    answer = fuzz_stack.request("POST", "/final-ignition-config.json", body)
    check_answer(spec, "POST", "/final-ignition-config.json", answer)
    assert answer.code != 500, answer.body


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(serial=st.sampled_from([SERIAL, "sn-not-enrolled"]), action=_ACTIONS, body=_BODIES)
def test_admin_mutations_get_documented_answers(spec, fuzz_stack, serial, action, body):
    path = f"/admin/host/{quoted(serial)}/{action}"
    answer = fuzz_stack.request("PUT", path, body)
    check_answer(spec, "PUT", path, answer)
    assert answer.code != 500, answer.body
