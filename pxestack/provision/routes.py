"""The provisioning API's routes, read from its OpenAPI document.

``docs/openapi.yaml`` (shipped in the package as ``pxestack/provision/openapi.yaml``) is the
one place that says which provisioning paths exist, which methods each takes, whether it
takes a body and who may call it.  :func:`load_routes` turns the document's operations under
the provisioning API's first path segments into :class:`Route` values; the resources of
:mod:`pxestack.provision.api` answer exactly those routes, each by its ``operationId``, so a
path or method the document does not list is never answered (404, 405 or 501), and an
operation without an answer stops the service from being built.

Who may call an operation is its ``security`` list, mapped to one of three rules (:class:`Auth`):

* no requirement: anyone (the machine-facing boot endpoints);
* ``adminToken`` or ``clientCertificate``: an admin, as
  :meth:`pxestack.provision.api._Base.require_admin` checks it (an admin bearer token, a
  verified client certificate, or a trusted network, which OpenAPI cannot express);
* ``hostToken``, ``hostTokenQuery`` or ``adminToken``: the machine named by the
  ``{serial}`` path parameter with its callback token (header or query), or an admin.

A document whose security lists another combination is refused when the routes are loaded,
naming the operation: the API would otherwise guard it by a rule nobody wrote down.

This module reads and matches; it does not touch Twisted, so the route table is tested on
its own and the matching is the same for every resource.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import yaml

#: The document's file name in this package (a link to docs/openapi.yaml in the source tree).
DOCUMENT = "openapi.yaml"
#: The methods an OpenAPI path item may hold.
_METHODS = ("get", "head", "post", "put", "delete", "patch", "options", "trace")
#: The security schemes of an admin operation: every admin credential is accepted for each.
_ADMIN_SCHEMES = frozenset({"adminToken", "clientCertificate"})
#: The security schemes of a machine callback: the machine's token, or an admin token.
_MACHINE_SCHEMES = frozenset({"hostToken", "hostTokenQuery", "adminToken"})


class Auth(enum.Enum):
    """Who may call an operation (see the module documentation)."""

    NONE = "none"
    ADMIN = "admin"
    MACHINE = "machine"


class RouteError(ValueError):
    """The document and the code that answers it disagree (a bug; raised while building)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One documented operation: a method on a path template."""

    method: bytes
    #: The documented path, e.g. ``/admin/host/{serial}/set_state``.
    template: str
    operation_id: str
    auth: Auth
    #: The operation documents a request body (the site then admits one).
    takes_body: bool

    @property
    def segments(self) -> tuple[str, ...]:
        """The template's path segments (``("admin", "host", "{serial}", "set_state")``)."""
        return tuple(self.template.lstrip("/").split("/"))

    @property
    def first_segment(self) -> str:
        """The segment the resource answering the route is mounted at."""
        return self.segments[0]

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The path parameters when *segments* are this route's path, else None."""
        own = self.segments
        if len(own) != len(segments):
            return None
        params: dict[str, str] = {}
        for pattern, value in zip(own, segments, strict=True):
            if pattern.startswith("{") and pattern.endswith("}"):
                if not value:
                    return None
                params[pattern[1:-1]] = value
            elif pattern != value:
                return None
        return params

    @property
    def literal_segments(self) -> int:
        """How many segments are fixed text (a literal path wins over a parameter)."""
        return sum(1 for s in self.segments if not s.startswith("{"))


@dataclass(frozen=True, slots=True)
class Found:
    """The route a request takes and its path parameters."""

    route: Route
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class WrongMethod:
    """The path is documented, the method is not: the methods it takes (``Allow``)."""

    allowed: tuple[bytes, ...]


def load_document() -> dict[str, object]:
    """The OpenAPI document shipped with the package."""
    text = resources.files("pxestack.provision").joinpath(DOCUMENT).read_text("utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise RouteError(f"{DOCUMENT} is not a mapping")
    return document


def auth_of(security: object, operation_id: str) -> Auth:
    """The :class:`Auth` rule of an operation's ``security`` list."""
    if not isinstance(security, list) or not all(isinstance(r, dict) for r in security):
        raise RouteError(f"{operation_id}: security must be a list of requirements")
    schemes = frozenset(str(name) for requirement in security for name in requirement)
    if not schemes:
        return Auth.NONE
    if schemes == _MACHINE_SCHEMES:
        return Auth.MACHINE
    if schemes == _ADMIN_SCHEMES:
        return Auth.ADMIN
    raise RouteError(
        f"{operation_id}: security {sorted(schemes)} is not a rule the provisioning API has"
    )


def load_routes(document: Mapping[str, object], first_segments: Iterable[str]) -> list[Route]:
    """The document's operations on paths under *first_segments*, in document order."""
    wanted = set(first_segments)
    paths = document.get("paths")
    if not isinstance(paths, dict):
        raise RouteError("the document has no paths")
    default_security = document.get("security", [])
    routes: list[Route] = []
    for template, item in paths.items():
        if str(template).lstrip("/").split("/")[0] not in wanted:
            continue
        if not isinstance(item, dict):
            raise RouteError(f"{template}: not a path item")
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            if not isinstance(operation, dict) or not isinstance(
                operation.get("operationId"), str
            ):
                raise RouteError(f"{method.upper()} {template}: no operationId")
            operation_id = operation["operationId"]
            routes.append(
                Route(
                    method=method.upper().encode("ascii"),
                    template=str(template),
                    operation_id=operation_id,
                    auth=auth_of(operation.get("security", default_security), operation_id),
                    takes_body="requestBody" in operation,
                )
            )
    return routes


class RouteTable:
    """The routes under one first path segment, matched against a request's path."""

    def __init__(self, routes: Iterable[Route]) -> None:
        # Literal paths first, so /admin/hosts is never taken for a parameter.
        self.routes = sorted(routes, key=lambda r: -r.literal_segments)

    def lookup(self, method: bytes, segments: Sequence[str]) -> Found | WrongMethod | None:
        """The route of ``method segments``; :class:`WrongMethod` when only the method is
        wrong; None when no documented path matches.

        ``HEAD`` takes a documented ``GET`` when it is not documented itself (twisted.web
        sends the headers of the GET answer without its body).
        """
        candidates: list[Found] = []
        for route in self.routes:
            params = route.match(segments)
            if params is None:
                continue
            if candidates and route.template != candidates[0].route.template:
                break  # a less literal template: the path is the first one's
            candidates.append(Found(route, params))
        if not candidates:
            return None
        by_method = {found.route.method: found for found in candidates}
        if method in by_method:
            return by_method[method]
        if method == b"HEAD" and b"GET" in by_method:
            return by_method[b"GET"]
        allowed = set(by_method)
        if b"GET" in allowed:
            allowed.add(b"HEAD")
        return WrongMethod(tuple(sorted(allowed)))

    def body_limit(self, method: bytes, limit: int) -> int:
        """*limit* when some route takes a body with *method*, else 0."""
        return limit if any(r.takes_body and r.method == method for r in self.routes) else 0

    @property
    def guarded_by_admin(self) -> bool:
        """Whether some route here is admin-only (unknown paths then need an admin too)."""
        return any(r.auth is Auth.ADMIN for r in self.routes)


__all__ = [
    "DOCUMENT",
    "Auth",
    "Found",
    "Route",
    "RouteError",
    "RouteTable",
    "WrongMethod",
    "auth_of",
    "load_document",
    "load_routes",
]
