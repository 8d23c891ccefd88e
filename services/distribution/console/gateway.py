"""The console reads through the management API's own handlers and authorization, in-process.

A page asks `read(request, handler, ...)` for what `GET /v1/registry/...` would answer: the handler's route
is looked up in the route table, its requirement checked by management_api.authorize (the caller is the
console session's principal, set on the request, so the same key limits and grants apply), and the handler
called with a Call like the API's. Pages that list content (repositories, tags, a manifest) check their
requirement with `require` and read the content model directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from services.core.auth.model import valid_namespace
from services.core.errors import NameInvalidError, RegistryError
from services.core.oci.names import RepositoryName
from services.distribution.auth_access import PRINCIPAL, AuthPrincipal
from services.distribution.management import ROUTES
from services.distribution.management_api import Call, Caller, Handler, Requirement, Route, authorize, token_access

M = TypeVar("M", bound=BaseModel)


@dataclass
class ConsoleCall(Call):
    """A Call whose path parameters come from the page, not from the API's URL."""

    params: Mapping[str, str] = field(default_factory=dict)

    def param(self, name: str) -> str:
        return self.params[name]


def _route(handler: Handler, *, namespace: str | None, repository: str | None) -> Route:
    """The GET route `handler` serves with these path names (a handler may serve a namespace's route and a
    repository's, as the policy handler does)."""
    for route in ROUTES:
        if route.method != "GET" or route.handler is not handler:
            continue
        by_repository, by_namespace = "{repository" in route.path, "{namespace}" in route.path
        if (by_repository, by_namespace) == (repository is not None, namespace is not None and repository is None):
            return route
    raise LookupError(f"no GET route of {handler.__name__} for these path names")


def repository_name(value: str) -> str:
    try:
        return str(RepositoryName(value))
    except (RegistryError, ValueError):
        raise NameInvalidError(f"repository name {value[:200]!r} is invalid") from None


def namespace_name(value: str) -> str:
    if not valid_namespace(value):
        raise NameInvalidError(f"namespace {value[:100]!r} is invalid")
    return value


def _call(
    request: web.Request,
    *,
    namespace: str | None,
    repository: str | None,
    params: Mapping[str, str] | None = None,
    query: Any = None,
) -> ConsoleCall:
    call = ConsoleCall(request, None, query=query, params=dict(params or {}))
    if repository is not None:
        call.repository = repository_name(repository)
        call.namespace = call.repository.partition("/")[0]
    elif namespace is not None:
        call.namespace = namespace_name(namespace)
    return call


async def _noop(call: Call) -> None:  # pragma: no cover - never called: the route only carries a requirement
    return None


async def require(
    request: web.Request, requirement: Requirement, *, namespace: str | None = None, repository: str | None = None
) -> Caller:
    """Raise DeniedError/UnauthorizedError unless the session's caller meets `requirement` (as the API
    decides it); the caller."""
    call = _call(request, namespace=namespace, repository=repository)
    await authorize(Route("GET", "", _noop, requirement, ""), call)
    return call.who


async def read(
    request: web.Request,
    handler: Handler,
    response: type[M],
    *,
    namespace: str | None = None,
    repository: str | None = None,
    params: Mapping[str, str] | None = None,
    query: Any = None,
) -> M:
    """What the management API's GET route served by `handler` answers this caller (its errors raised)."""
    route = _route(handler, namespace=namespace, repository=repository)
    call = _call(request, namespace=namespace, repository=repository, params=params, query=query)
    await authorize(route, call)
    result = await handler(call)
    assert isinstance(result, response), f"{route.path} answered {type(result)}"
    return result


async def write(
    request: web.Request,
    handler: Handler,
    response: type[Any],
    *,
    body: BaseModel | None = None,
    params: Mapping[str, str] | None = None,
) -> Any:
    """What the management API's (non-GET) route served by `handler` does for this caller (its errors raised):
    the same requirement, the same handler, the request's body already parsed into the route's model."""
    route = next((r for r in ROUTES if r.handler is handler and r.method != "GET"), None)
    if route is None:
        raise LookupError(f"no route of {handler.__name__} that writes")
    call = _call(request, namespace=None, repository=None, params=params)
    await authorize(route, call)
    result = await (handler(call, body) if body is not None else handler(call))
    assert isinstance(result, response), f"{route.path} answered {type(result)}"
    return result


def use_principal(request: web.Request, principal: AuthPrincipal) -> None:
    """Authenticate the request as `principal` for everything that asks (TokenAccess.authenticate returns it)."""
    request[PRINCIPAL] = principal


async def caller(request: web.Request) -> Caller:
    """Who the session's principal is (DeniedError/UnauthorizedError for a user or key gone since)."""
    return await require(request, Requirement.USER)


__all__ = ["caller", "read", "require", "token_access", "use_principal", "write"]
