"""The machinery of the management API: one route table entry per operation, holding its path, its
pydantic models and its authorization requirement; registration checks the requirement, validates path,
query and body, and renders the handler's model. The OpenAPI document is generated from the same table
(services/distribution/openapi.py), so what is documented is what runs.

Validation errors become the registry's 400 INVALID_REQUEST naming the field (`field 'role': ...`);
they are rendered, like every error, by services/distribution/middleware.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import yaml
from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.core.auth.errors import InvalidRequestError
from services.core.auth.model import ROLE_ACTIONS, Grant, Role, Subject, valid_namespace
from services.core.auth.policy import holds
from services.core.auth.scopes import PULL
from services.core.errors import DeniedError, NameInvalidError, RegistryError
from services.core.oci.names import RepositoryName
from services.core.policy.document import PolicyInvalidError, load_yaml, problems_of
from services.distribution.auth_access import AuthPrincipal, TokenAccess, source_address
from services.distribution.keys import ACCESS

PREFIX = "/v1/registry"
MAX_BODY = 64 * 1024
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})


class Requirement(StrEnum):
    """Who may call an operation. Every requirement but ANONYMOUS needs an authenticated user, and a
    registry access token (via == "token") may only read: the OCI API's short-lived scopes never change
    the registry's settings."""

    ANONYMOUS = "anonymous"
    USER = "user"
    """Any authenticated user."""
    SELF_OR_ADMIN = "self-or-admin"
    """The user named by {user}, or a registry admin."""
    KEY_MANAGER = "key-manager"
    """An unrestricted API key (no namespace or role limit; never a token) of the user named by {user}, or
    of a registry admin: a new key must never hold more than the credential that made it."""
    NAMESPACE_READER = "namespace-reader"
    """Any grant on the namespace ({namespace}, or {repository}'s) or one of its repositories."""
    NAMESPACE_WRITER = "namespace-writer"
    """Role writer or admin on the whole namespace."""
    NAMESPACE_ADMIN = "namespace-admin"
    """Role admin on the whole namespace ({namespace}, or {repository}'s)."""
    REPOSITORY_READER = "repository-reader"
    """Pull on {repository} (for a token: in its access claim)."""
    REGISTRY_ADMIN = "registry-admin"
    """A registry admin using an unrestricted credential (Caller.admin)."""


class Caller:
    def __init__(self, principal: AuthPrincipal, subject: Subject, source: str) -> None:
        self.principal = principal
        self.subject = subject
        self.source = source

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def admin(self) -> bool:
        s = self.subject
        return s.admin and s.key_namespaces is None and s.key_role in (None, Role.ADMIN)

    @property
    def unrestricted_key(self) -> bool:
        """An API key with no namespace or role limit: the only credential that may manage keys, since a
        new key must never hold more than the credential that made it."""
        s = self.subject
        return self.principal.via == "key" and s.key_namespaces is None and s.key_role in (None, Role.ADMIN)


@dataclass
class Call:
    """What a handler gets: the request, who called (None for ANONYMOUS routes), the validated query,
    and the namespace/repository of the path (validated)."""

    request: web.Request
    caller: Caller | None
    query: Any = None
    namespace: str | None = None
    repository: str | None = None

    @property
    def access(self) -> TokenAccess:
        return token_access(self.request)

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def who(self) -> Caller:
        assert self.caller is not None
        return self.caller


Handler = Callable[..., Awaitable[BaseModel | None]]


@dataclass(frozen=True)
class Route:
    """One operation. `path` is below PREFIX in aiohttp syntax ({repository:.+} for a name with
    slashes); `body` and `query` are the request models; `response` the model answered with `status`
    (None: no content); `errors` the statuses besides 400/401/403/429 the operation may answer."""

    method: str
    path: str
    handler: Handler
    requirement: Requirement
    summary: str
    status: int = 200
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    yaml: bool = False
    """Also takes a `Content-Type: application/yaml` body, and answers YAML to `Accept: application/yaml`."""
    headers: Mapping[str, str] = field(default_factory=dict)
    base_errors: tuple[int, ...] = (400, 401, 403, 429)
    body_media: str = "application/json"
    documented: bool = True
    prefix: str = PREFIX

    @property
    def full_path(self) -> str:
        return self.prefix + self.path

    @property
    def router_path(self) -> str:
        """`full_path` for aiohttp, whose `re.fullmatch` lets `.` stop at a newline: a name holding a `%0A` must
        still reach its handler (NAME_INVALID, 400) or the catch-all (a JSON 404), never aiohttp's text 404."""
        return self.full_path.replace(":.+}", r":[\s\S]+}").replace(":.*}", r":[\s\S]*}")

    @property
    def template(self) -> str:
        """The OpenAPI path ({repository:.+} becomes {repository})."""
        out: list[str] = []
        name: list[str] = []
        depth = 0
        for ch in self.full_path:
            if ch == "{":
                depth, name = 1, []
                continue
            if depth and ch == "}":
                depth = 0
                out.append("{" + "".join(name).split(":", 1)[0] + "}")
                continue
            (name if depth else out).append(ch)
        return "".join(out)


def token_access(request: web.Request) -> TokenAccess:
    access = request.app[ACCESS]
    assert isinstance(access, TokenAccess)
    return access


# authorization


async def _caller(request: web.Request) -> Caller:
    access = token_access(request)
    principal = await access.authenticate(request)
    assert isinstance(principal, AuthPrincipal)
    if principal.anonymous:
        raise access.challenge(request, "authentication required")
    subject = await access.subject(principal)
    if subject.user is None:
        raise access.challenge(request, "authentication required", error="invalid_token")
    if principal.via == "token" and request.method not in ("GET", "HEAD"):
        # A registry access token carries repository scopes for the OCI API and lives minutes; letting it
        # change users, keys, permissions or policies would turn it into lasting power it was never issued for.
        raise DeniedError("registry access tokens cannot change the registry's settings; use an API key")
    return Caller(principal, subject, source_address(request))


def _namespace_role(subject: Subject, namespace: str, grants: list[Grant], *, whole: bool) -> Role | None:
    """The strongest role `subject` holds on `namespace` (on the whole namespace only, or also through a
    repository grant), narrowed by the key's limits; None for none."""
    if subject.key_namespaces is not None and namespace not in subject.key_namespaces:
        return None
    roles = [g.role for g in grants
             if g.namespace == namespace and (g.repository is None or not whole) and holds(subject, g)]
    if not roles:
        return None
    best = max(roles, key=lambda r: len(ROLE_ACTIONS[r]))
    if subject.key_role is not None and len(ROLE_ACTIONS[subject.key_role]) < len(ROLE_ACTIONS[best]):
        return subject.key_role
    return best


async def authorize(route: Route, call: Call) -> None:
    """Raise UnauthorizedError/DeniedError unless the caller meets `route.requirement`."""
    need = route.requirement
    if need is Requirement.ANONYMOUS:
        return
    request = call.request
    caller = call.caller = await _caller(request)
    service = call.access.service
    if need is Requirement.USER:
        return
    if need is Requirement.REGISTRY_ADMIN:
        if not caller.admin:
            raise DeniedError("only registry admins may do this")
        return
    if need is Requirement.SELF_OR_ADMIN:
        if not caller.admin and caller.name != call.param("user"):
            raise DeniedError("only registry admins may manage other users")
        return
    if need is Requirement.KEY_MANAGER:
        if not caller.unrestricted_key:
            raise DeniedError("API keys are managed with an API key that has no namespace or role limit")
        if not caller.admin and caller.name != call.param("user"):
            raise DeniedError("only registry admins may manage other users' keys")
        return
    if need is Requirement.REPOSITORY_READER:
        assert call.repository is not None
        if not caller.admin:
            await call.access.authorize(request, caller.principal, call.repository, {PULL})
        return
    namespace = call.namespace
    assert namespace is not None
    if caller.admin:
        return
    if need is Requirement.NAMESPACE_ADMIN:
        if not await service.manages(caller.subject, namespace):
            raise DeniedError(f"only admins of namespace {namespace} may do this")
        return
    grants = await service.store.grants_for(namespace)
    role = _namespace_role(caller.subject, namespace, grants, whole=need is Requirement.NAMESPACE_WRITER)
    if need is Requirement.NAMESPACE_WRITER and role not in (Role.WRITER, Role.ADMIN):
        raise DeniedError(f"only writers of namespace {namespace} may do this")
    if need is Requirement.NAMESPACE_READER and role is None:
        raise DeniedError(f"{caller.name} holds no role in namespace {namespace}")


# validation


def invalid(problems: list[tuple[str, str]], *, what: str = "field") -> InvalidRequestError:
    message = "; ".join(f"{what} {f!r}: {m}" if f else m for f, m in problems[:5])
    detail = [{"field": f, "message": m} for f, m in problems[:20]]
    return InvalidRequestError(message[:1000] or "invalid request", detail=detail)


def _path_names(call: Call) -> None:
    info = call.request.match_info
    if "namespace" in info:
        namespace = info["namespace"]
        if not valid_namespace(namespace):
            raise NameInvalidError(f"namespace {namespace[:100]!r} is invalid")
        call.namespace = namespace
    if "repository" in info:
        try:
            call.repository = str(RepositoryName(info["repository"]))
        except (RegistryError, ValueError):
            raise NameInvalidError(f"repository name {info['repository'][:200]!r} is invalid") from None
        call.namespace = call.repository.partition("/")[0]


def _query(route: Route, request: web.Request) -> Any:
    if route.query is None:
        return None
    data = {k: request.query.get(k) for k in route.query.model_fields if k in request.query}
    try:
        return route.query.model_validate(data)
    except ValidationError as exc:
        raise invalid(problems_of(exc), what="query parameter") from None


async def _body(route: Route, request: web.Request) -> BaseModel:
    assert route.body is not None
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InvalidRequestError(f"the request body is limited to {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidRequestError(f"the request body is limited to {MAX_BODY} bytes")
    try:
        if route.yaml and request.content_type in YAML_TYPES:
            data = load_yaml(raw)
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise InvalidRequestError("the request body must be a mapping")
            body = route.body.model_validate(data, strict=True)
        else:
            body = route.body.model_validate_json(raw if raw.strip() else b"{}", strict=True)
    except PolicyInvalidError as exc:
        raise invalid(exc.problems) from None
    except ValidationError as exc:
        problems = problems_of(exc)
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            problems = [("", "the request body must be a JSON object")]
        raise invalid(problems) from None
    where = _nul_in(body.model_dump(mode="json"), "")
    if where is not None:
        # Every DocumentStore refuses it in the top-level fields it compares (docvalues.check_text), and in no text
        # of this API does it mean anything: refused here, by name, for every field, rather than a 500 from the store.
        raise invalid([(where, "text must not contain the character U+0000")])
    return body


def _nul_in(value: Any, path: str) -> str | None:
    """The dotted path of the first string (value or key) holding U+0000, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        here = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return here
        found = _nul_in(item, here)
        if found is not None:
            return found
    return None


def wants_yaml(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return any(part.split(";")[0].strip().lower() in YAML_TYPES for part in accept.split(","))


def _render(route: Route, request: web.Request, result: BaseModel | None) -> web.Response:
    if route.response is None:
        assert result is None, f"{route.method} {route.path} answers no content"
        return web.Response(status=route.status, headers=dict(route.headers))
    assert isinstance(result, route.response), f"{route.method} {route.path} must answer {route.response}"
    data = result.model_dump(mode="json", exclude_unset=True)
    if route.yaml and wants_yaml(request):
        return web.Response(text=yaml.safe_dump(data, sort_keys=False), status=route.status,
                            content_type="application/yaml", headers=dict(route.headers))
    return web.json_response(data, status=route.status, headers=dict(route.headers))


def endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler of one Route; the route stays reachable as the handler's `route` attribute
    (route_of), for the test that every management route declares its requirement."""

    async def handle(request: web.Request) -> web.Response:
        call = Call(request, None)
        _path_names(call)
        await authorize(route, call)
        call.query = _query(route, request)
        args: list[Any] = [call]
        if route.body is not None:
            args.append(await _body(route, request))
        return _render(route, request, await route.handler(*args))

    handle.__name__ = route.handler.__name__
    setattr(handle, ROUTE_ATTRIBUTE, route)
    return handle


ROUTE_ATTRIBUTE = "route"


def route_of(handler: object) -> Route | None:
    """The Route an aiohttp handler serves (None for a handler not made by `endpoint`)."""
    route = getattr(handler, ROUTE_ATTRIBUTE, None)
    return route if isinstance(route, Route) else None


def register(app: web.Application, routes: list[Route]) -> None:
    for route in routes:
        if route.method == "GET":
            app.router.add_get(route.router_path, endpoint(route))  # and HEAD
        else:
            app.router.add_route(route.method, route.router_path, endpoint(route))
