"""Policy documents over the management API: GET|PUT|DELETE of a namespace's or a repository's policy,
and a repository's effective policy (`?effective=true`). JSON, or YAML with `Content-Type`/`Accept:
application/yaml`. Reading needs a role in the namespace (pull on the repository); writing needs
namespace admin; every change is audited and announced (services/core/policy/service.py).
"""

from __future__ import annotations

from aiohttp import web

from services.core.policy.document import PolicyDocument
from services.core.policy.service import PolicyService
from services.core.policy.store import PolicyStore, PolicyTarget
from services.distribution.auth_access import TokenAccess
from services.distribution.keys import ACCESS, GATES, SETTINGS
from services.distribution.management_api import Call, Requirement, Route
from services.distribution.management_models import PolicyQuery

POLICY = web.AppKey("policy_service", PolicyService)


def install(app: web.Application) -> None:
    """Build the PolicyService on the auth service's document store and outbox; set it up at start."""

    async def setup(app: web.Application) -> None:
        access, settings = app[ACCESS], app[SETTINGS]
        assert isinstance(access, TokenAccess)
        auth = access.service
        service = PolicyService(store=PolicyStore(auth.store.docs), outbox=auth.outbox, topics=settings.topics,
                                default=settings.policy.default)
        await service.setup()
        app[POLICY] = service

    app.on_startup.append(setup)


def _service(call: Call) -> PolicyService:
    return call.request.app[POLICY]


def _target(call: Call) -> PolicyTarget:
    assert call.namespace is not None
    return PolicyTarget(call.namespace, call.repository)


async def get_policy(call: Call) -> PolicyDocument:
    service = _service(call)
    query = call.query
    if call.repository is not None and isinstance(query, PolicyQuery) and query.effective:
        assert call.namespace is not None
        found = await service.effective(call.namespace, call.repository)
        return PolicyDocument.model_validate(found.dump_all())
    return (await service.get(_target(call))).document


async def put_policy(call: Call, body: PolicyDocument) -> PolicyDocument:
    stored = await _service(call).put(_target(call), body, actor=call.who.name, source=call.who.source)
    _changed(call)
    return stored.document


def _changed(call: Call) -> None:
    """This replica's pull gates see the change at once (others within registry.pull_gate_cache_seconds)."""
    assert call.namespace is not None
    call.request.app[GATES].invalidate(namespace=call.namespace)


async def delete_policy(call: Call) -> None:
    await _service(call).delete(_target(call), actor=call.who.name, source=call.who.source)
    _changed(call)


def policy_routes() -> list[Route]:
    routes: list[Route] = []
    for where, path, reader, what in (
        ("namespace", "/namespaces/{namespace}/policy", Requirement.NAMESPACE_READER, "a namespace"),
        ("repository", "/repositories/{repository:.+}/policy", Requirement.REPOSITORY_READER, "a repository"),
    ):
        routes += [
            Route("GET", path, get_policy, reader,
                  f"The policy document of {what}"
                  + (" (?effective=true: the policy in force, merged field by field)" if where == "repository"
                     else ""),
                  response=PolicyDocument, query=PolicyQuery if where == "repository" else None, errors=(404,),
                  yaml=True),
            Route("PUT", path, put_policy, Requirement.NAMESPACE_ADMIN,
                  f"Set (replace) the policy document of {what}", response=PolicyDocument, body=PolicyDocument,
                  errors=(409,), yaml=True),
            Route("DELETE", path, delete_policy, Requirement.NAMESPACE_ADMIN,
                  f"Delete the policy document of {what} (it then inherits everything)", status=204,
                  errors=(404, 409)),
        ]
    return routes

